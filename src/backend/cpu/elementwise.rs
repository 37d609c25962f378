//! Element-wise CPU work written once as plain loops and compiled per instruction set
//! (`#[target_feature]` wrappers), so LLVM vectorizes them: SwiGLU with a polynomial `exp`,
//! and the quantization of activations to 8-bit blocks (whose `round` is a libm call in the
//! baseline build and two vector instructions with SSE4.1 and up).

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
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23
                                     // Clamped with comparisons that are false for NaN, so a NaN comes out as NaN.
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let pow2 = f32::from_bits(((k as i32 + 127) as u32) << 23);
    p * pow2
}

/// `out[i] = silu(gate[i]) · up[i]` over the common length.
#[inline(always)]
fn swiglu_body(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp_poly(-g)) * u;
    }
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

/// [`quantize_activations`] compiled for AVX-512 (same results: `round` is exact either way).
///
/// # Safety
/// The CPU must support AVX-512 F/BW and AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub unsafe fn quantize_avx512(x: &[f32], out: &mut [BlockQ8x32]) {
    quantize_activations(x, out)
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
