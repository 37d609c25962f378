//! Hand-written SIMD dot products, one module per instruction set.
//!
//! Every module exposes the entry points `dot_q8` and `dot_f32` (the x86 ones
//! also `dot_q8_multi`) as `#[target_feature]` functions; `super::kernels` calls them only
//! after the CPU was seen to support that set. Weight types a module has no kernel for go to
//! the scalar reference of `marco_quantize::dot`.
//!
//! - `avx2`: AVX2 + FMA + F16C, and the x86 helpers; `avx512`: AVX-512 F/BW/VL + VNNI;
//!   `x86`: the block loops both share (stamped out per feature set) and plain-data helpers.
//! - `neon`: aarch64 NEON + dotprod (compile-checked only).
//!
//! Numerics: within each 32-element activation block the integer products are summed exactly
//! (as the reference does); only the f32 accumulation order differs from the reference.

#[cfg(target_arch = "x86_64")]
#[macro_use]
mod x86;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
#[cfg(target_arch = "x86_64")]
pub mod chunks512;
#[cfg(target_arch = "x86_64")]
pub mod gemm512;
#[cfg(target_arch = "aarch64")]
pub mod neon;
#[cfg(target_arch = "x86_64")]
pub mod q8k;

use marco_quantize::blocks::{as_blocks, Block};

/// The whole weight blocks of `w` that have activations: each weight block meets `per`
/// activation blocks, and a row with too few of either is cut to what both have (as the
/// reference does), so kernels can zip blocks without further checks.
#[inline]
pub(crate) fn row_blocks<B: Block>(w: &[u8], x_blocks: usize, per: usize) -> &[B] {
    let size = std::mem::size_of::<B>();
    let n = (w.len() / size).min(x_blocks / per);
    w.get(..n * size).and_then(as_blocks::<B>).unwrap_or(&[])
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
