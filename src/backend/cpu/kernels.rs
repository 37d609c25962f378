//! CPU dot-product kernels, chosen once at run time from the CPU's features.
//!
//! The scalar kernels of `marco_quantize::dot` are the reference; SIMD paths (in `super::simd`)
//! must agree with them up to f32 summation order. One x86-64 binary, built for the baseline
//! target, runs everywhere: the AVX2 and AVX-512 code is compiled per function with
//! `#[target_feature]` and only called after `is_x86_feature_detected!` said yes.

use std::sync::OnceLock;

use marco_quantize::act::BlockQ8x32;
use marco_quantize::blocks::BlockQ8K;
use marco_quantize::chunks::{self, ActChunks};
use marco_quantize::dot::{vec_dot_f32, vec_dot_q8, vec_dot_q8k};
use marco_quantize::{GgmlType, QK32};

use super::gemm;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use super::simd;

/// An instruction-set path for the CPU kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, the reference.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C (`vpmaddubsw`/`vpmaddwd` integer dots).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL + VNNI (`vpdpbusd` integer dots, mask registers).
    Avx512Vnni,
    /// aarch64 NEON with the dot-product extension (`sdot`).
    Neon,
}

impl Isa {
    /// Every path, slowest first (tests iterate over it and skip what the CPU lacks).
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Neon];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::Neon => "neon-dotprod",
        }
    }

    /// The path named `name` (as [`Isa::name`] prints it), if any.
    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => has_avx2(),
            Isa::Avx512Vnni => has_avx512_vnni(),
            Isa::Neon => has_neon_dotprod(),
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

#[cfg(target_arch = "x86_64")]
fn has_avx512_vnni() -> bool {
    has_avx2()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx2() -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx512_vnni() -> bool {
    false
}

#[cfg(target_arch = "aarch64")]
fn has_neon_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
        && std::arch::is_aarch64_feature_detected!("dotprod")
}

#[cfg(not(target_arch = "aarch64"))]
fn has_neon_dotprod() -> bool {
    false
}

/// The environment variable that overrides [`Kernels::detect`].
pub const KERNELS_ENV: &str = "MARCO_CPU_KERNELS";

/// The fastest path this CPU supports.
fn best_isa() -> Isa {
    [Isa::Avx512Vnni, Isa::Neon, Isa::Avx2]
        .into_iter()
        .find(|i| i.is_supported())
        .unwrap_or(Isa::Scalar)
}

/// The kernel set in use.
///
/// Invariant: `isa.is_supported()` held when the value was made (only [`Kernels::detect`]
/// and [`Kernels::forced`] make one), which is what makes calling the SIMD code sound.
#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    isa: Isa,
}

impl Kernels {
    /// The best path this CPU supports (decided once per process).
    ///
    /// `MARCO_CPU_KERNELS=<name>` (a name [`Isa::name`] prints) picks a path instead, for
    /// comparisons and bug hunts; a name this CPU cannot run is ignored.
    pub fn detect() -> Kernels {
        static CHOSEN: OnceLock<Isa> = OnceLock::new();
        let isa = *CHOSEN.get_or_init(|| {
            let wanted = std::env::var(KERNELS_ENV).ok();
            wanted
                .as_deref()
                .and_then(Isa::from_name)
                .filter(|i| i.is_supported())
                .unwrap_or_else(best_isa)
        });
        Kernels { isa }
    }

    /// A specific path; `None` when this CPU cannot run it.
    pub fn forced(isa: Isa) -> Option<Kernels> {
        isa.is_supported().then_some(Kernels { isa })
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn name(&self) -> &'static str {
        self.isa.name()
    }

    /// Dot product of a quantized weight row with 8-bit activation blocks.
    ///
    /// `w.len()` must be `ty.row_bytes(32 * x.len())`; on a mismatch only the leading whole
    /// blocks present in both are used (as the reference does).
    #[inline]
    pub fn dot_q8(&self, ty: GgmlType, w: &[u8], x: &[BlockQ8x32]) -> f32 {
        match self.isa {
            // SAFETY (each SIMD arm): the Kernels invariant says the CPU has these features.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { simd::avx2::dot_q8(ty, w, x) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => unsafe { simd::avx512::dot_q8(ty, w, x) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { simd::neon::dot_q8(ty, w, x) },
            _ => vec_dot_q8(ty, w, x),
        }
    }

    /// One weight row against several token rows (prompt processing): `out[t]` is what
    /// `dot_q8` gives for token `t`. The SIMD paths take the tokens four at a time, unpacking
    /// each group of weight blocks once for all four; any number of tokens may be passed (the
    /// last `len % 4` go one by one), so pass all of them in one call.
    ///
    /// Token `t` (`0..out.len()`) has its activation blocks at
    /// `x[t * x_stride..t * x_stride + nb]`, where `nb = cols / 32` is implied by the row
    /// length. `x` must hold all of them (panics otherwise).
    #[inline]
    pub fn dot_q8_multi(
        &self,
        ty: GgmlType,
        w: &[u8],
        x: &[BlockQ8x32],
        x_stride: usize,
        out: &mut [f32],
    ) {
        let nb = row_activation_blocks(ty, w.len());
        let n = out.len();
        if n == 0 {
            return;
        }
        assert!(
            nb <= x_stride && (n - 1) * x_stride + nb <= x.len(),
            "dot_q8_multi: {n} tokens of {nb} blocks (stride {x_stride}) but only {} blocks",
            x.len()
        );
        match self.isa {
            // SAFETY (each SIMD arm): the Kernels invariant says the CPU has these features.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { simd::avx2::dot_q8_multi(ty, w, x, nb, x_stride, out) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => unsafe { simd::avx512::dot_q8_multi(ty, w, x, nb, x_stride, out) },
            _ => {
                for (t, o) in out.iter_mut().enumerate() {
                    *o = self.dot_q8(ty, w, &x[t * x_stride..t * x_stride + nb]);
                }
            }
        }
    }

    /// A tile of dot products: `n_rows` consecutive weight rows (`row_bytes` bytes each, from
    /// the start of `w`) against `n_tokens` token rows, for prompt processing. Afterwards
    /// `out[t * out_stride + r]` is what `dot_q8` gives for row `r` and token `t` (up to f32
    /// summation order). The AVX-512 path works in tiles of 4 rows × 8 tokens, so each unpacked
    /// weight group serves 8 tokens and each activation group's scales and sums serve 4 rows;
    /// other paths (and the edges of a tile) go row by row through [`Kernels::dot_q8_multi`].
    ///
    /// Token `t` has its activation blocks at `x[t * x_stride..][..nb]`, `nb = cols / 32`
    /// implied by `row_bytes`. Panics unless `w`, `x` and `out` hold all of that.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn dot_q8_tile(
        &self,
        ty: GgmlType,
        w: &[u8],
        row_bytes: usize,
        n_rows: usize,
        x: &[BlockQ8x32],
        x_stride: usize,
        n_tokens: usize,
        out: &mut [f32],
        out_stride: usize,
    ) {
        if n_rows == 0 || n_tokens == 0 {
            return;
        }
        let nb = row_activation_blocks(ty, row_bytes);
        assert!(
            n_rows * row_bytes <= w.len()
                && nb <= x_stride
                && (n_tokens - 1) * x_stride + nb <= x.len()
                && n_rows <= out_stride
                && (n_tokens - 1) * out_stride + n_rows <= out.len(),
            "dot_q8_tile: {n_rows} rows × {n_tokens} tokens do not fit the buffers"
        );
        #[cfg(target_arch = "x86_64")]
        if self.isa == Isa::Avx512Vnni {
            // SAFETY: the Kernels invariant says the CPU has these features.
            unsafe {
                simd::avx512::dot_q8_tile(
                    ty, w, row_bytes, n_rows, x, nb, x_stride, n_tokens, out, out_stride,
                )
            };
            return;
        }
        self.tile_by_rows(
            ty,
            w,
            row_bytes,
            0..n_rows,
            x,
            x_stride,
            0..n_tokens,
            out,
            out_stride,
        );
    }

    /// The part `rows × tokens` of a [`Kernels::dot_q8_tile`] call, one row at a time.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn tile_by_rows(
        &self,
        ty: GgmlType,
        w: &[u8],
        row_bytes: usize,
        rows: std::ops::Range<usize>,
        x: &[BlockQ8x32],
        x_stride: usize,
        tokens: std::ops::Range<usize>,
        out: &mut [f32],
        out_stride: usize,
    ) {
        const CHUNK: usize = 16;
        let mut buf = [0.0f32; CHUNK];
        for r in rows {
            let wr = &w[r * row_bytes..(r + 1) * row_bytes];
            let mut t = tokens.start;
            while t < tokens.end {
                let n = (tokens.end - t).min(CHUNK);
                self.dot_q8_multi(ty, wr, &x[t * x_stride..], x_stride, &mut buf[..n]);
                for (i, &d) in buf[..n].iter().enumerate() {
                    out[(t + i) * out_stride + r] = d;
                }
                t += n;
            }
        }
    }

    /// Whether [`dot_q8k`](Self::dot_q8k) has a kernel for `ty` on this path (then one-token
    /// products of `ty` run against `Q8_K` activations).
    pub fn has_q8k_dot(&self, ty: GgmlType) -> bool {
        #[cfg(target_arch = "x86_64")]
        if matches!(self.isa, Isa::Avx2 | Isa::Avx512Vnni) {
            return simd::q8k::supports(ty);
        }
        let _ = ty;
        false
    }

    /// Dot product of a K-quant weight row with `Q8_K` activations (see
    /// `marco_quantize::dot::vec_dot_q8k`, the reference, which other paths use).
    ///
    /// # Panics
    /// If `ty` is not `Q4_K`, `Q5_K` or `Q6_K`.
    #[inline]
    pub fn dot_q8k(&self, ty: GgmlType, w: &[u8], x: &[BlockQ8K]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if self.has_q8k_dot(ty) {
            // SAFETY: both x86 paths imply AVX2, FMA and F16C (see `has_avx2`).
            if let Some(d) = unsafe { simd::q8k::dot(ty, w, x) } {
                return d;
            }
        }
        vec_dot_q8k(ty, w, x).unwrap_or_else(|| panic!("dot_q8k: {ty} is not a K-quant"))
    }

    /// Whether this path decodes rows of `cols` weights of type `ty` from chunks in groups of
    /// rows (`marco_quantize::chunks`: four-block chunks, or `Q6_K` super-blocks in steps):
    /// then the backend repacks those weights once at load and one-token products go through
    /// [`dot_chunks`](Self::dot_chunks).
    pub fn has_chunks(&self, ty: GgmlType, cols: usize) -> bool {
        self.isa == Isa::Avx512Vnni && chunks::supports(ty, cols)
    }

    /// Dot products of `out.len()` chunked weight rows (see [`has_chunks`](Self::has_chunks)),
    /// packed by `chunks::pack_rows` from a group boundary (rows after the last whole group
    /// make a shorter one), with one token's activations in chunk order: `out[r]` for row `r`.
    /// `Q5_0` rows in whole groups of four (`chunks::QuadQ5_0`) take the activations' steps
    /// too (`ActChunks::fill_steps`, after the chunks are filled).
    ///
    /// # Panics
    /// If this path has no chunk kernel for `ty`, `w` is not `out.len()` rows of whole chunks,
    /// a row is longer than the activations, or quads meet activations without steps.
    #[inline]
    pub fn dot_chunks(&self, ty: GgmlType, w: &[u8], x: &ActChunks, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.isa == Isa::Avx512Vnni {
            // SAFETY: the Kernels invariant says this CPU has AVX-512 VNNI.
            if unsafe { simd::chunks512::dot_chunks(ty, w, x, out) }.is_some() {
                return;
            }
        }
        let _ = (w, x, out);
        panic!(
            "dot_chunks: no chunk kernel for {ty} on {}, or rows that do not fit it",
            self.name()
        )
    }

    /// Whether [`gemm_tile`](Self::gemm_tile) handles weights of type `ty` on this path.
    pub fn has_gemm(&self, ty: GgmlType) -> bool {
        self.isa == Isa::Avx512Vnni && gemm::supports(ty)
    }

    /// The prompt GEMM over 8 weight rows of type `ty` and every token of `acts`: calls
    /// `emit(group, sums)` per group of 16 tokens (see `simd::gemm512`).
    ///
    /// # Panics
    /// If [`has_gemm`](Self::has_gemm) is false for `ty`, or a row is not one row of the
    /// activations' width.
    pub fn gemm_tile(
        &self,
        ty: GgmlType,
        rows: [&[u8]; gemm::ROWS],
        acts: &gemm::PackedActs,
        scratch: &mut gemm::Unpacked,
        emit: impl FnMut(usize, &[[f32; gemm::TOKENS]; gemm::ROWS]),
    ) {
        assert!(
            self.has_gemm(ty),
            "gemm_tile: no GEMM for {ty} on {}",
            self.name()
        );
        let row_bytes = ty.row_bytes((acts.blocks() * QK32) as u64);
        assert!(
            rows.iter().all(|r| Some(r.len() as u64) == row_bytes),
            "gemm_tile: rows do not match {} activation blocks",
            acts.blocks()
        );
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `has_gemm` checked that this CPU has AVX-512 VNNI.
        unsafe {
            simd::gemm512::gemm_tile(ty, rows, acts, scratch, emit)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (rows, scratch, emit);
    }

    /// Dot product of a float (F32/F16/BF16) weight row with f32 activations.
    #[inline]
    pub fn dot_f32(&self, ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
        match self.isa {
            // SAFETY (each SIMD arm): the Kernels invariant says the CPU has these features.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { simd::avx2::dot_f32(ty, w, x) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => unsafe { simd::avx512::dot_f32(ty, w, x) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { simd::neon::dot_f32(ty, w, x) },
            _ => vec_dot_f32(ty, w, x),
        }
    }

    /// One query head's attention (see [`attend`](super::attend)); `out.len()` channels.
    ///
    /// # Panics
    /// If the head's positions reach past its cache or `scores` (`Head::fits`).
    pub fn attend(&self, h: &super::attend::Head, scores: &mut [f32], out: &mut [f32]) {
        assert!(
            out.len() == h.q.len()
                && scores.len() >= h.n_ctx.next_multiple_of(super::attend::LANES)
                && h.fits(),
            "attend: head does not fit its buffers"
        );
        match self.isa {
            // SAFETY (each SIMD arm): the Kernels invariant says the CPU has these features.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => unsafe { super::attend::attend_avx512(h, scores, out) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { super::attend::attend_avx2(h, scores, out) },
            _ => super::attend::attend_portable(h, scores, out),
        }
    }

    /// `out[i] = silu(gate[i]) · up[i]` over the common length.
    pub fn swiglu(&self, gate: &[f32], up: &[f32], out: &mut [f32]) {
        use super::elementwise as e;
        match self.isa {
            // SAFETY (each SIMD arm): the Kernels invariant says the CPU has these features.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => unsafe { e::swiglu_avx512(gate, up, out) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { e::swiglu_avx2(gate, up, out) },
            _ => e::swiglu_portable(gate, up, out),
        }
    }

    /// `crate::generate::argmax` (the first index of the largest value), compiled for this
    /// path (same result).
    pub fn argmax(&self, v: &[f32]) -> u32 {
        match self.isa {
            // SAFETY (each SIMD arm): the Kernels invariant says the CPU has these features.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => unsafe { super::elementwise::argmax_avx512(v) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { super::elementwise::argmax_avx2(v) },
            _ => crate::generate::argmax(v),
        }
    }

    /// One token as `Q8_K` blocks into `out` (ggml's quantizer, the reference's results bit
    /// for bit; `x` holds whole blocks of 256).
    pub fn quantize_q8k(&self, x: &[f32], out: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if self.isa == Isa::Avx512Vnni {
            if let Some(blocks) = marco_quantize::blocks::as_blocks_mut(out) {
                // SAFETY: the Kernels invariant says the CPU has AVX-512 (F/BW/VL) and AVX2.
                return unsafe { super::elementwise::quantize_q8k_avx512(x, blocks) };
            }
        }
        marco_quantize::quants::quantize_row(GgmlType::Q8_K, x, out)
    }

    /// One token's activations straight into chunk order for [`dot_chunks`](Self::dot_chunks):
    /// what `ActChunks::fill` makes of [`quantize_activations`](Self::quantize_activations)'s
    /// blocks of `x`, bit for bit. `false`, with nothing written, on paths without chunk
    /// kernels.
    pub fn quantize_chunks(&self, x: &[f32], acts: &mut ActChunks) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self.isa == Isa::Avx512Vnni {
            // SAFETY: the Kernels invariant says this CPU has AVX-512 VNNI (F/BW/VL too).
            unsafe { super::elementwise::quantize_chunks_avx512(x, acts) };
            return true;
        }
        let _ = (x, acts);
        false
    }

    /// `marco_quantize::act::quantize_activations`, compiled for this path (same results).
    pub fn quantize_activations(&self, x: &[f32], out: &mut [BlockQ8x32]) {
        use super::elementwise as e;
        match self.isa {
            // SAFETY (each SIMD arm): the Kernels invariant says the CPU has these features.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => unsafe { e::quantize_avx512(x, out) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { e::quantize_avx2(x, out) },
            _ => e::quantize_portable(x, out),
        }
    }
}

/// Activation blocks per row implied by a weight row of `bytes` bytes of type `ty`.
fn row_activation_blocks(ty: GgmlType, bytes: usize) -> usize {
    bytes / ty.type_size() * ty.block_size() / QK32
}
