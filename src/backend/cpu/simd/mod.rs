//! Hand-written SIMD dot products, one module per instruction set.
//!
//! Every module exposes the same entry points (`dot_q8`, `dot_q8_multi`, `dot_f32`,
//! `dot_plain`) as `#[target_feature]` functions; `super::kernels` calls them only after the
//! CPU was seen to support that set. Weight types a module has no kernel for go to the scalar
//! reference of `marco_quantize::dot`.
//!
//! Numerics: within each 32-element activation block the integer products are summed exactly
//! (as the reference does); only the f32 accumulation order differs from the reference.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
#[cfg(target_arch = "aarch64")]
pub mod neon;

use marco_quantize::act::BlockQ8x32;
use marco_quantize::blocks::{
    as_blocks, Block, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, LeF16,
};

/// The whole weight blocks of `w` that have activations: each weight block meets `per`
/// activation blocks, and a row with too few of either is cut to what both have (as the
/// reference does), so kernels can zip blocks without further checks.
#[inline]
pub(crate) fn row_blocks<B: Block>(w: &[u8], x_blocks: usize, per: usize) -> &[B] {
    let size = std::mem::size_of::<B>();
    let n = (w.len() / size).min(x_blocks / per);
    w.get(..n * size).and_then(as_blocks::<B>).unwrap_or(&[])
}

/// A row of 32-element weight blocks cut into groups of 8, with the matching activation
/// groups of `T` token rows (each at least as long as the weights). The last, partial group is
/// padded with zero weight and activation blocks, which add nothing to any dot product, so
/// the kernels only need a full-group path.
///
/// (Plain data helpers like this one stay outside the `#[target_feature]` kernels: a closure
/// written inside a kernel inherits its features and then cannot be inlined into a helper
/// compiled without them.)
pub(crate) struct Groups8<'a, B, const T: usize> {
    pub(crate) full: &'a [[B; 8]],
    x: [&'a [[BlockQ8x32; 8]]; T],
    tail: Option<([B; 8], [[BlockQ8x32; 8]; T])>,
}

impl<'a, B: Block, const T: usize> Groups8<'a, B, T> {
    #[inline(always)]
    pub(crate) fn new(w: &'a [B], xs: [&'a [BlockQ8x32]; T]) -> Self {
        let (full, rest) = w.as_chunks::<8>();
        let tail = (!rest.is_empty()).then(|| {
            let (n, start) = (rest.len(), 8 * full.len());
            let mut wp = [B::zeroed(); 8];
            wp[..n].copy_from_slice(rest);
            let xp = xs.map(|x| {
                let mut p = [BlockQ8x32::default(); 8];
                p[..n].copy_from_slice(&x[start..start + n]);
                p
            });
            (wp, xp)
        });
        Groups8 {
            full,
            x: xs.map(|x| x.as_chunks::<8>().0),
            tail,
        }
    }

    /// Each token's activations for full group `i`.
    #[inline(always)]
    pub(crate) fn x(&self, i: usize) -> [&'a [BlockQ8x32; 8]; T] {
        self.x.map(|x| &x[i])
    }

    /// The padded last group, if the row has one.
    #[inline(always)]
    pub(crate) fn tail(&self) -> Option<(&[B; 8], [&[BlockQ8x32; 8]; T])> {
        self.tail
            .as_ref()
            .map(|(w, x)| (w, std::array::from_fn(|t| &x[t])))
    }
}

/// Each token's activations cut into the 8-block groups that meet one super-block each.
#[inline(always)]
pub(crate) fn superblock_x<const T: usize>(xs: [&[BlockQ8x32]; T]) -> [&[[BlockQ8x32; 8]]; T] {
    xs.map(|x| x.as_chunks::<8>().0)
}

/// Each token's activations for super-block `i`.
#[inline(always)]
pub(crate) fn at<'a, const T: usize>(
    x8: &[&'a [[BlockQ8x32; 8]]; T],
    i: usize,
) -> [&'a [BlockQ8x32; 8]; T] {
    x8.map(|x| &x[i])
}

/// A legacy (32-element) block's f16 scale and, where it has one, min.
pub(crate) trait LegacyBlock: Block {
    fn d(&self) -> LeF16;
    fn m(&self) -> LeF16 {
        LeF16::default()
    }
}

macro_rules! legacy_block {
    ($($b:ty: $($m:ident)?;)*) => {$(
        impl LegacyBlock for $b {
            #[inline(always)]
            fn d(&self) -> LeF16 {
                self.d
            }
            $(
            #[inline(always)]
            fn m(&self) -> LeF16 {
                self.$m
            })?
        }
    )*};
}

legacy_block!(BlockQ4_0: ; BlockQ4_1: m; BlockQ5_0: ; BlockQ5_1: m; BlockQ8_0: ;);

/// The scales of 8 legacy blocks.
#[inline(always)]
pub(crate) fn d8<B: LegacyBlock>(w: &[B; 8]) -> [LeF16; 8] {
    std::array::from_fn(|i| w[i].d())
}

/// The mins of 8 legacy blocks.
#[inline(always)]
pub(crate) fn m8<B: LegacyBlock>(w: &[B; 8]) -> [LeF16; 8] {
    std::array::from_fn(|i| w[i].m())
}

/// Fills `out` four tokens at a time with `quad(first token)` where it has a kernel (else, and
/// for the last `len % 4` tokens, one at a time with `single(token)`).
#[inline(always)]
pub(crate) fn in_quads(
    out: &mut [f32],
    quad: impl Fn(usize) -> Option<[f32; 4]>,
    single: impl Fn(usize) -> f32,
) {
    let full = out.len() / 4 * 4;
    let (quads, rest) = out.split_at_mut(full);
    for (c, o) in quads.as_chunks_mut::<4>().0.iter_mut().enumerate() {
        match quad(4 * c) {
            Some(r) => *o = r,
            None => {
                for (i, v) in o.iter_mut().enumerate() {
                    *v = single(4 * c + i);
                }
            }
        }
    }
    for (i, v) in rest.iter_mut().enumerate() {
        *v = single(full + i);
    }
}

/// The 8 six-bit scales and 8 six-bit mins of a `Q4_K`/`Q5_K` block, one byte each (as
/// little-endian u64s), unpacked with a few word operations instead of per-byte branches.
///
/// Layout (see `get_scale_min_k4`): bytes 0..4 hold scales 0..4 in their low 6 bits, bytes
/// 4..8 mins 0..4; bytes 8..12 hold the low nibbles of scales 4..8 (low) and mins 4..8 (high),
/// whose top two bits are the spare high bits of bytes 0..4 and 4..8.
#[inline(always)]
pub(crate) fn k4_scales_mins(q: &[u8; 12]) -> (u64, u64) {
    let word = |i: usize| u32::from_le_bytes([q[i], q[i + 1], q[i + 2], q[i + 3]]);
    let (a, b, c) = (word(0), word(4), word(8));
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let sc_hi = (c & LOW4) | (((a >> 6) & LOW2) << 4);
    let m_hi = ((c >> 4) & LOW4) | (((b >> 6) & LOW2) << 4);
    let sc = (a & LOW6) as u64 | ((sc_hi as u64) << 32);
    let m = (b & LOW6) as u64 | ((m_hi as u64) << 32);
    (sc, m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use marco_quantize::blocks::get_scale_min_k4;

    /// The reference unpacking, one scale/min pair at a time.
    fn k4_scales_mins_reference(q: &[u8; 12]) -> (u64, u64) {
        let (mut sc, mut m) = (0u64, 0u64);
        for j in 0..8 {
            let (s, mm) = get_scale_min_k4(j, q);
            sc |= (s as u64) << (8 * j);
            m |= (mm as u64) << (8 * j);
        }
        (sc, m)
    }

    #[test]
    fn k4_unpacking_matches_reference() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..1000 {
            let mut q = [0u8; 12];
            for b in q.iter_mut() {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                *b = s as u8;
            }
            assert_eq!(k4_scales_mins(&q), k4_scales_mins_reference(&q));
        }
    }
}
