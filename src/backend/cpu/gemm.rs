//! The prompt GEMM's data: activations transposed for it ([`PackedActs`]) and weight rows
//! unpacked to signed bytes ([`Unpacked`]). The kernel is `simd::gemm512` (AVX-512 VNNI),
//! whose module docs explain the layout; these types are plain data, so the backend holds them
//! on every architecture.

// Only the AVX-512 kernel reads the unpacked rows; elsewhere the backend never takes this path.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use marco_quantize::act::BlockQ8x32;
use marco_quantize::GgmlType;

/// Weight rows per tile.
pub const ROWS: usize = 8;
/// Tokens per tile (the lanes of a 512-bit register of i32).
pub const TOKENS: usize = 16;

/// Whether this kernel handles weights of type `ty`.
pub fn supports(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K)
}

/// Weights per scale: Q6_K's scales cover 16, every other type's 32.
pub(crate) fn sub_len(ty: GgmlType) -> usize {
    if ty == GgmlType::Q6_K {
        16
    } else {
        32
    }
}

/// Activation blocks (8-bit, see `BlockQ8x32`) of several tokens, transposed for the tile:
/// per group of 16 tokens and activation block, 8 registers of `[column quad][token]` bytes
/// (`x + 128`), then the 16 scales and the 16 `scale · Σx`. Tokens past the end are zero
/// (scale 0), so a group's padding contributes nothing.
#[derive(Default)]
pub struct PackedActs {
    pub(crate) n_tokens: usize,
    pub(crate) nb: usize,
    pub(crate) q: Vec<u32>,
    pub(crate) d: Vec<f32>,
    pub(crate) s: Vec<f32>,
}

impl PackedActs {
    /// Re-lays `n_tokens` tokens of `nb` blocks each (`x[t * nb + b]`), reusing the buffers.
    pub fn pack(&mut self, x: &[BlockQ8x32], nb: usize, n_tokens: usize) {
        let groups = n_tokens.div_ceil(TOKENS);
        self.n_tokens = n_tokens;
        self.nb = nb;
        self.q.clear();
        self.q.resize(groups * nb * 8 * TOKENS, 0x8080_8080);
        self.d.clear();
        self.d.resize(groups * nb * TOKENS, 0.0);
        self.s.clear();
        self.s.resize(groups * nb * TOKENS, 0.0);
        for (t, blocks) in x.chunks_exact(nb).take(n_tokens).enumerate() {
            let (g, lane) = (t / TOKENS, t % TOKENS);
            for (b, blk) in blocks.iter().enumerate() {
                let gb = g * nb + b;
                for (j, quad) in blk.qs.chunks_exact(4).enumerate() {
                    let v = u32::from_le_bytes([
                        quad[0] as u8,
                        quad[1] as u8,
                        quad[2] as u8,
                        quad[3] as u8,
                    ]);
                    self.q[(gb * 8 + j) * TOKENS + lane] = v ^ 0x8080_8080;
                }
                self.d[gb * TOKENS + lane] = blk.d;
                self.s[gb * TOKENS + lane] = blk.d * blk.sum as f32;
            }
        }
    }

    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// Activation blocks per token.
    pub fn blocks(&self) -> usize {
        self.nb
    }
}

/// Up to 8 weight rows as signed byte quants (`[row][column]`) with, per row and sub-block,
/// the scale, the min coefficient and the starting sum `-128·Σq`.
#[derive(Default)]
pub struct Unpacked {
    pub(crate) cols: usize,
    pub(crate) nsub: usize,
    pub(crate) q: Vec<i8>,
    pub(crate) d: Vec<f32>,
    pub(crate) m: Vec<f32>,
    pub(crate) corr: Vec<i32>,
}

impl Unpacked {
    pub(crate) fn reset(&mut self, cols: usize, nsub: usize) {
        self.cols = cols;
        self.nsub = nsub;
        self.q.resize(ROWS * cols, 0);
        self.d.resize(ROWS * nsub, 0.0);
        self.m.resize(ROWS * nsub, 0.0);
        self.corr.resize(ROWS * nsub, 0);
    }
}
