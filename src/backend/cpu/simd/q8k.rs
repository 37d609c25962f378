//! Single-token K-quant dot products against `Q8_K` activations (one scale per 256 values,
//! plus the sums of each 16 quants), AVX2 + FMA; the AVX-512 path uses them too.
//!
//! Why a second activation format for these types: with one activation scale per 32 values
//! (`BlockQ8x32`), each super-block's 8 group dots must be reduced horizontally and scaled in
//! float, and those reductions and scale pick-outs bound the kernel on one token. With one
//! scale per super-block (ggml's `Q8_K`, which its K-quant dots use for the same reason) the
//! sub-block scales multiply the integer dots in i16 lanes (`maddubs` then `madd`), the min
//! or offset terms come from the stored 16-value sums in one `madd`, and a super-block ends
//! in one conversion and one FMA.

use std::arch::x86_64::*;

use marco_quantize::blocks::{BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, LeF16};
use marco_quantize::GgmlType;

use super::avx2::{f16_to_f32, hsum, k4_unpack_quants, q6k_quants};
use super::k4_scales_mins;
use super::row_blocks;

/// Whether [`dot`] handles `ty`.
pub fn supports(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K)
}

/// Dot product of a `ty` weight row with `Q8_K` activations (see
/// `marco_quantize::dot::vec_dot_q8k`); `None` for other types.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot(ty: GgmlType, w: &[u8], x: &[BlockQ8K]) -> Option<f32> {
    // `row_blocks` counts activation blocks of 32; a Q8_K block holds 8 of them.
    let n32 = x.len() * 8;
    Some(match ty {
        GgmlType::Q4_K => k4(row_blocks::<BlockQ4K>(w, n32, 8), x, |b| {
            (b.d, b.dmin, &b.scales, k4_unpack_quants(&b.qs, None))
        }),
        GgmlType::Q5_K => k4(row_blocks::<BlockQ5K>(w, n32, 8), x, |b| {
            (b.d, b.dmin, &b.scales, k4_unpack_quants(&b.qs, Some(&b.qh)))
        }),
        GgmlType::Q6_K => q6(row_blocks::<BlockQ6K>(w, n32, 8), x),
        _ => return None,
    })
}

/// The 32 activation quants of group `g` (0..8).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn xq(x: &BlockQ8K, g: usize) -> __m256i {
    // SAFETY: `qs` has 256 bytes, `g < 8`; the load has no alignment requirement.
    unsafe { _mm256_loadu_si256(x.qs.as_ptr().add(32 * g).cast()) }
}

/// The 16 sums of 16 quants.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bsums(x: &BlockQ8K) -> __m256i {
    // SAFETY: `bsums` is 32 bytes; the load has no alignment requirement.
    unsafe { _mm256_loadu_si256(x.bsums.as_ptr().cast()) }
}

/// Word `k` of each 128-bit half of `v`, broadcast over its half (`pshufb` masks).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn word(v: __m256i, k: usize) -> __m256i {
    // Bytes 2k and 2k+1 in every word of the mask: one broadcast (a constant once unrolled).
    _mm256_shuffle_epi8(v, _mm256_set1_epi16((0x0100 + 0x0202 * k) as i16))
}

type K4Part<'a> = (LeF16, LeF16, &'a [u8; 12], [__m256i; 8]);

/// Q4_K/Q5_K: `part(b)` gives (d, dmin, packed scales, the 8 groups' unsigned quants).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k4<'a, B: 'a>(w: &'a [B], x: &[BlockQ8K], part: impl Fn(&'a B) -> K4Part<'a>) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = _mm_setzero_ps();
    for (b, xb) in w.iter().zip(x) {
        let (d, dmin, scales, q) = part(b);
        let (sc, m) = k4_scales_mins(scales);
        let dx = xb.d();
        // Min terms: Σ_g m_g · (bsum[2g] + bsum[2g+1]).
        let bs = bsums(xb);
        let pairs = _mm_hadd_epi16(
            _mm256_castsi256_si128(bs),
            _mm256_extracti128_si256::<1>(bs),
        );
        let mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(m as i64));
        let prod = _mm_madd_epi16(mins, pairs);
        acc_m = _mm_fmadd_ps(
            _mm_set1_ps(f16_to_f32(dmin) * dx),
            _mm_cvtepi32_ps(prod),
            acc_m,
        );
        // Scales as i16 words 0..8, in both 128-bit halves.
        let sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
        let mut sumi = _mm256_setzero_si256();
        for (g, &q) in q.iter().enumerate() {
            // |pair| ≤ 2·31·128: no saturation.
            let p = _mm256_maddubs_epi16(q, xq(xb, g));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, word(sc16, g)));
        }
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(f16_to_f32(d) * dx),
            _mm256_cvtepi32_ps(sumi),
            acc,
        );
    }
    let m4 = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
    let m = _mm_cvtss_f32(_mm_add_ss(m4, _mm_movehdup_ps(m4)));
    hsum(acc) - m
}

/// Q6_K: unsigned quants 0..64 (the −32 comes back through the 16-value sums), one i8 scale
/// per 16 values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, xb) in w.iter().zip(x) {
        let sumi = q6_sumi(b, &q6_acts(xb));
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(f16_to_f32(b.d) * xb.d()),
            _mm256_cvtepi32_ps(sumi),
            acc,
        );
    }
    hsum(acc)
}

/// A `Q8_K` block in registers for [`q6_sumi`]: its 8 groups of 32 quants and its 16 sums.
struct Q8kActs {
    q: [__m256i; 8],
    bsums: __m256i,
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_acts(xb: &BlockQ8K) -> Q8kActs {
    Q8kActs {
        q: std::array::from_fn(|g| xq(xb, g)),
        bsums: bsums(xb),
    }
}

/// A Q6_K super-block's integer dot with a `Q8_K` block, in the 8 i32 lanes (scaled by
/// `d·d_x` it is the block's share of the row's dot).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_sumi(b: &BlockQ6K, x: &Q8kActs) -> __m256i {
    let q = q6k_quants(b);
    // The 16 scales as i16: words 0..8 in the low half, 8..16 in the high.
    let sc16 = _mm256_cvtepi8_epi16(load_scales(&b.scales));
    // Offset: 32 · Σ_j sc_j · bsum_j.
    let off = _mm256_madd_epi16(sc16, x.bsums);
    let mut sumi = _mm256_slli_epi32::<5>(_mm256_sub_epi32(_mm256_setzero_si256(), off));
    // Group g's scales are 2g (first 16 values) and 2g+1: a register whose low half holds
    // word 2g and high half word 2g+1, taken from the half that holds them.
    let (lo, hi) = (
        _mm256_permute2x128_si256::<0x00>(sc16, sc16),
        _mm256_permute2x128_si256::<0x11>(sc16, sc16),
    );
    for (g, &q) in q.iter().enumerate() {
        let src = if g < 4 { lo } else { hi };
        let k = 2 * (g % 4);
        let pair = _mm256_blend_epi32::<0xF0>(word(src, k), word(src, k + 1));
        // |pair| ≤ 2·63·128: no saturation.
        let p = _mm256_maddubs_epi16(q, x.q[g]);
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, pair));
    }
    sumi
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_scales(s: &[i8; 16]) -> __m128i {
    // SAFETY: `s` is 16 bytes; the load has no alignment requirement.
    unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
}
