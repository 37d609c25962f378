//! Element-wise CPU work: SwiGLU with a polynomial `exp`, written once as a plain loop and
//! compiled per instruction set (`#[target_feature]` wrappers) so LLVM vectorizes it; and the
//! quantization of activations to 8-bit blocks, whose `round` (halves away from zero, C's
//! `roundf`) no x86 instruction does, so LLVM calls libm per value: on AVX-512 it is written
//! out with intrinsics (truncate, then step away from zero where the fraction is ≥ 0.5).

use marco_quantize::act::{quantize_activations, BlockQ8x32};

/// `e^x`, relative error ≈ 2e-7 for x in [-87, 88]: `2^k · e^r` with
/// `k = round(x·log2 e)` and a degree-6 polynomial for `|r| ≤ ln2/2`. Plain arithmetic (the
/// rounding by the 1.5·2^23 trick, the power of two built in the exponent bits) so that it
/// vectorizes. Arguments are clamped to [-87, 88]: below, 2^-126·e^r (≈ 0, never a denormal);
/// above, ≈ 1.7e38 (finite, so `x / (1 + e^-x)` stays finite and near 0 for very negative x).
#[inline(always)]
pub fn exp_poly(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 · 2^23: adding it rounds to an integer.
    const ROUND: f32 = 12_582_912.0;
    // Clamped with comparisons that are false for NaN, so a NaN comes out as NaN.
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let shifted = x * LOG2E + ROUND;
    let k = shifted - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // k as an integer: the low bits of `shifted` (whose exponent is that of 1.5·2^23, so its
    // mantissa counts in units) minus those of ROUND. Not `k as i32`: Rust's saturating cast
    // does not vectorize, and became 16 scalar conversions per vector (most of SwiGLU's time).
    let k_int = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let pow2 = f32::from_bits(k_int.wrapping_add(127) << 23);
    p * pow2
}

/// `out[i] = silu(gate[i]) · up[i]` over the common length.
#[inline(always)]
fn swiglu_body(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp_poly(-g)) * u;
    }
}

/// `crate::generate::argmax` compiled for AVX-512 (16-wide).
///
/// # Safety
/// The CPU must support AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
pub unsafe fn argmax_avx512(v: &[f32]) -> u32 {
    crate::generate::argmax(v)
}

/// `crate::generate::argmax` compiled for AVX2 (8-wide).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub unsafe fn argmax_avx2(v: &[f32]) -> u32 {
    crate::generate::argmax(v)
}

pub fn swiglu_portable(gate: &[f32], up: &[f32], out: &mut [f32]) {
    swiglu_body(gate, up, out)
}

/// # Safety
/// The CPU must support AVX-512 F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn swiglu_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
    swiglu_body(gate, up, out)
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn swiglu_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    swiglu_body(gate, up, out)
}

/// The baseline build of [`quantize_activations`].
pub fn quantize_portable(x: &[f32], out: &mut [BlockQ8x32]) {
    quantize_activations(x, out)
}

/// [`quantize_activations`] in AVX-512 intrinsics, with the same results bit for bit: the
/// same `amax` (NaNs ignored, as `f32::max` does), `d` and `1/d`, products rounded half away
/// from zero (`t = trunc(v)`, plus `±1` where `|v - t| ≥ 0.5`, exact for `|v| < 2^23`), NaN
/// quants 0 and out-of-range ones (infinite when `1/d` overflows) saturated, as the scalar
/// `as i8` does.
///
/// # Safety
/// The CPU must support AVX-512 F/BW and AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub unsafe fn quantize_avx512(x: &[f32], out: &mut [BlockQ8x32]) {
    use std::arch::x86_64::*;
    for (src, o) in x.as_chunks::<32>().0.iter().zip(out) {
        // SAFETY: `src` is 32 readable floats; the loads are unaligned.
        let v = unsafe {
            [
                _mm512_loadu_ps(src.as_ptr()),
                _mm512_loadu_ps(src.as_ptr().add(16)),
            ]
        };
        // max(|v|, m) keeps m where v is NaN.
        let m = _mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_setzero_ps());
        let m = _mm512_max_ps(_mm512_abs_ps(v[1]), m);
        let d = _mm512_reduce_max_ps(m) / 127.0;
        let id = _mm512_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let q = v.map(|v| {
            let v = _mm512_mul_ps(v, id);
            let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
            let frac = _mm512_abs_ps(_mm512_sub_ps(v, t));
            let away = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, _mm512_set1_ps(0.5));
            // ±1 with v's sign, in integer logic: `_mm512_or_ps` and `_mm512_and_ps` are
            // AVX-512 DQ, which this path does not require, so they were calls, not inlined.
            let sign = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(i32::MIN));
            let one = _mm512_castps_si512(_mm512_set1_ps(1.0));
            let step = _mm512_castsi512_ps(_mm512_or_si512(sign, one));
            let r = _mm512_mask_add_ps(t, away, t, step);
            // Saturate like `as i8` (±inf when a block's amax is so tiny that 1/d overflows),
            // and NaN → 0.
            let r = _mm512_min_ps(
                _mm512_max_ps(r, _mm512_set1_ps(-128.0)),
                _mm512_set1_ps(127.0),
            );
            let is_num = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v);
            _mm512_maskz_cvttps_epi32(is_num, r)
        });
        let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q[0], q[1]));
        let bytes = q.map(|q| _mm512_cvtsepi32_epi8(q));
        let mut qs = [0i8; 32];
        // SAFETY: `qs` is 32 writable bytes; the stores are unaligned.
        unsafe {
            _mm_storeu_si128(qs.as_mut_ptr().cast(), bytes[0]);
            _mm_storeu_si128(qs.as_mut_ptr().add(16).cast(), bytes[1]);
        }
        *o = BlockQ8x32 { d, sum, qs };
    }
}

/// [`quantize_activations`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_avx2(x: &[f32], out: &mut [BlockQ8x32]) {
    quantize_activations(x, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 quantizer gives the scalar reference's blocks bit for bit, ties, NaNs,
    /// zeros and huge values included.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn quantize_avx512_equals_the_reference() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")) {
            return; // nothing to compare on this CPU (the kernel tests cover the paths it has)
        }
        let mut x: Vec<f32> = (0..32 * 64)
            .map(|i| (i as f32 * 0.7310).sin() * (1 + i % 13) as f32)
            .collect();
        // A block whose products land exactly on halves: amax 127 makes 1/d = 1.
        for (j, v) in x[..32].iter_mut().enumerate() {
            *v = (j as f32 - 16.0) + 0.5;
        }
        x[31] = 127.0;
        x[40] = f32::NAN;
        x[64..96].fill(0.0);
        x[100] = 3.0e38;
        x[101] = -3.0e38;
        x[130] = f32::INFINITY;
        // A block so small that 1/d overflows to infinity: the quants saturate.
        for (j, v) in x[160..192].iter_mut().enumerate() {
            *v = if j % 3 == 0 {
                0.0
            } else {
                1e-38 * (j as f32 - 16.0)
            };
        }
        let n = x.len() / 32;
        let (mut want, mut got) = (
            vec![BlockQ8x32::default(); n],
            vec![BlockQ8x32::default(); n],
        );
        quantize_activations(&x, &mut want);
        // SAFETY: checked above that the CPU has AVX-512 F/BW (and so AVX2 and FMA).
        unsafe { quantize_avx512(&x, &mut got) };
        for (b, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.qs, w.qs, "block {b}");
            assert_eq!(g.sum, w.sum, "block {b}");
            assert!(
                g.d == w.d || (g.d.is_nan() && w.d.is_nan()),
                "block {b}: {} vs {}",
                g.d,
                w.d
            );
        }
    }

    #[test]
    fn exp_poly_is_close_to_exp() {
        let mut x = 0.0f32;
        while x > -100.0 {
            let (got, want) = (exp_poly(x), x.exp());
            let err = (got - want).abs();
            assert!(err <= 4e-7 * want + 1e-37, "exp({x}) = {got}, want {want}");
            x -= 0.0137;
        }
        assert!(exp_poly(f32::NAN).is_nan());
    }
}
