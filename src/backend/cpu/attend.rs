//! One query head's attention over the KV cache, written once as plain loops and compiled
//! per instruction set (`#[target_feature]` wrappers), so LLVM vectorizes them 16 wide with
//! AVX-512, 8 wide with AVX2 and 4 wide on the baseline.
//!
//! Why hand-shaped: a dot product per cached position ends in a horizontal reduction, and at
//! prompt lengths those reductions and a libm `exp` per score cost more than the matrix
//! products. Here the K cache is stored transposed (`[channel][position]`), so the scores of
//! all positions build up lane-wise with one broadcast query element per channel; the
//! softmax's `exp` is a polynomial the compiler vectorizes; and the value rows are summed
//! with vector FMAs.

/// Most positions' scores worked on at once per lane group (the reductions' width).
const LANES: usize = 16;

/// `out = softmax(scale · q·K) · V` over the first `n_ctx` positions.
///
/// `kt` holds `q.len()` rows (one per channel of this head) of `kt_stride` positions; `v` holds
/// a row of `q.len()` values every `v_stride` floats; `scores` has room for `n_ctx`.
pub struct Head<'a> {
    pub q: &'a [f32],
    pub kt: &'a [f32],
    pub kt_stride: usize,
    pub v: &'a [f32],
    pub v_stride: usize,
    pub n_ctx: usize,
    pub scale: f32,
}

#[inline(always)]
fn attend_body(h: &Head, scores: &mut [f32], out: &mut [f32]) {
    let n = h.n_ctx;
    let scores = &mut scores[..n];
    scores.fill(0.0);
    for (d, &qd) in h.q.iter().enumerate() {
        let qd = qd * h.scale;
        let krow = &h.kt[d * h.kt_stride..d * h.kt_stride + n];
        for (s, &k) in scores.iter_mut().zip(krow) {
            *s += qd * k;
        }
    }
    let max = lane_max(scores);
    let sum = exp_in_place(scores, max);
    let inv = 1.0 / sum;
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        let p = p * inv;
        let vr = &h.v[j * h.v_stride..j * h.v_stride + out.len()];
        for (o, &x) in out.iter_mut().zip(vr) {
            *o += p * x;
        }
    }
}

/// Maximum of `v`, reduced in lanes so that it vectorizes.
#[inline(always)]
fn lane_max(v: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &x) in m.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let tail = rest.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    m.iter().copied().fold(tail, f32::max)
}

/// `v[i] = exp(v[i] - max)`; returns the sum (in lanes, so that it vectorizes).
#[inline(always)]
fn exp_in_place(v: &mut [f32], max: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = v.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (a, x) in acc.iter_mut().zip(c.iter_mut()) {
            *x = exp_poly(*x - max);
            *a += *x;
        }
    }
    let mut sum: f32 = 0.0;
    for x in chunks.into_remainder() {
        *x = exp_poly(*x - max);
        sum += *x;
    }
    sum + acc.iter().sum::<f32>()
}

/// `e^x` for `x ≤ 0` (softmax arguments), relative error ≈ 2e-7: `2^k · e^r` with
/// `k = round(x·log2 e)` and a degree-6 polynomial for `|r| ≤ ln2/2`. Plain arithmetic (the
/// rounding by the 1.5·2^23 trick, the power of two built in the exponent bits) so that it
/// vectorizes; below -87 it returns 2^-126·e^r (≈ 0, and never a denormal or NaN).
#[inline(always)]
pub fn exp_poly(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23
    let x = if x > -87.0 { x } else { -87.0 };
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let pow2 = f32::from_bits(((k as i32 + 127) as u32) << 23);
    p * pow2
}

/// The baseline build of [`attend_body`].
pub fn attend_portable(h: &Head, scores: &mut [f32], out: &mut [f32]) {
    attend_body(h, scores, out)
}

/// [`attend_body`] compiled for AVX-512 (16-wide).
///
/// # Safety
/// The CPU must support AVX-512 F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn attend_avx512(h: &Head, scores: &mut [f32], out: &mut [f32]) {
    attend_body(h, scores, out)
}

/// [`attend_body`] compiled for AVX2 (8-wide).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn attend_avx2(h: &Head, scores: &mut [f32], out: &mut [f32]) {
    attend_body(h, scores, out)
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
    }
}
