//! The scale searches of ggml's quantizers (`make_qx_quants`, `make_q3_quants`,
//! `make_qkx2_quants`, `make_qkx3_quants`, `make_qp_quants`).
//!
//! Each keeps ggml's arithmetic order and int → f32 conversion points and uses no fused
//! multiply-add, so that, fed the same inputs, it picks the same quants and scales as ggml's C
//! compiled without FP contraction. Slices are the caller's fixed-size blocks: `x`, the weights
//! and `l` have the same length `n` (checked in debug builds; iteration is by `zip`, so a
//! mismatch shortens the work rather than indexing out of bounds).

/// ggml's `GROUP_MAX_EPS`: groups whose largest magnitude is below this are all-zero.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to the nearest integer, ties to even, as ggml's `nearest_int` does with the
/// 1.5 * 2^23 trick (exact for |v| < 2^22; larger values wrap like ggml's, no panic).
#[inline]
pub(crate) fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// `(max, value at max |x|)` with ggml's strict `>` (the first of equal magnitudes wins).
#[inline]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

/// Symmetric quants `l ∈ [-nmax, nmax)` stored as `l + nmax` in `l_out`, minimizing the
/// weighted error (ggml's `make_qx_quants` with `rmse_type == 1`, weights given explicitly;
/// ggml's `qw == NULL` case is `weights[i] = x[i]*x[i]`). Returns the scale.
pub(crate) fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8], weights: &[f32]) -> f32 {
    debug_assert!(x.len() == l_out.len() && x.len() == weights.len());
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for (&xi, &w) in x.iter().zip(weights) {
            let l = clamp(nearest_int(iscale * xi)) as f32;
            sumlx += w * xi * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let fill = |iscale: f32, l_out: &mut [i8]| {
        for (o, &xi) in l_out.iter_mut().zip(x) {
            *o = (nmax + clamp(nearest_int(iscale * xi))) as i8;
        }
    };
    let iscale = -(nmax as f32) / max;
    fill(iscale, l_out);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            fill(iscale, l_out);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric 3-bit-style quants refined coordinate-wise with weights `x²` (ggml's
/// `make_q3_quants` with `do_rmse`). Stores `l + nmax`; returns the scale.
pub(crate) fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    debug_assert_eq!(x.len(), l_out.len());
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (o, &xi) in l_out.iter_mut().zip(x) {
        let l = nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
        *o = l as i8;
        let w = xi * xi;
        sumlx += w * xi * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (o, &xi) in l_out.iter_mut().zip(x) {
            let w = xi * xi;
            let cur = *o as f32;
            let mut slx = sumlx - w * xi * cur;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * cur * cur;
                let new_l = nearest_int(xi * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != *o as i32 {
                    slx += w * xi * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *o = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for o in l_out.iter_mut() {
        *o += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Parameters of the scale/min grid search of [`make_qkx_quants`].
#[derive(Clone, Copy)]
pub(crate) struct QkxSearch {
    pub nmax: i32,
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    /// Absolute instead of squared error.
    pub use_mad: bool,
    /// `make_qkx3_quants` treats `max <= min` as degenerate, `make_qkx2_quants` `max == min`
    /// (identical except with NaN input; kept to mirror each).
    pub qkx3: bool,
}

/// Asymmetric quants `x ≈ scale * l - the_min`, `l ∈ [0, nmax]` (ggml's `make_qkx2_quants` /
/// `make_qkx3_quants` with explicit weights). Returns `(scale, the_min)`; `the_min >= 0`
/// is the negated offset, as ggml's `*the_min`.
pub(crate) fn make_qkx_quants(
    p: QkxSearch,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    l_aux: &mut [u8],
) -> (f32, f32) {
    debug_assert!(x.len() == weights.len() && x.len() == l_out.len() && x.len() == l_aux.len());
    let (Some(&x0), Some(&w0)) = (x.first(), weights.first()) else {
        return (0.0, 0.0);
    };
    let (mut min, mut max, mut sum_w) = (x0, x0, w0);
    let mut sum_x = sum_w * x0;
    for (&xi, &w) in x.iter().zip(weights).skip(1) {
        if xi < min {
            min = xi;
        }
        if xi > max {
            max = xi;
        }
        sum_w += w;
        sum_x += w * xi;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if (p.qkx3 && max <= min) || (!p.qkx3 && max == min) {
        l_out.fill(0);
        return (0.0, -min);
    }
    let err = |d: f32| if p.use_mad { d.abs() } else { d * d };
    let quant = |iscale: f32, xi: f32, min: f32| nearest_int(iscale * (xi - min)).clamp(0, p.nmax);

    let iscale = p.nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for ((o, &xi), &w) in l_out.iter_mut().zip(x).zip(weights) {
        *o = quant(iscale, xi, min) as u8;
        best_error += w * err(scale * *o as f32 + min - xi);
    }
    if p.nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=p.nstep {
        let iscale = (p.rmin + p.rdelta * is as f32 + p.nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for ((a, &xi), &w) in l_aux.iter_mut().zip(x).zip(weights) {
            let l = quant(iscale, xi, min);
            *a = l as u8;
            let l = l as f32;
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * xi;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for ((&a, &xi), &w) in l_aux.iter().zip(x).zip(weights) {
                cur_error += w * err(this_scale * a as f32 + this_min - xi);
            }
            if cur_error < best_error {
                l_out.copy_from_slice(l_aux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Non-negative quants `l ∈ [0, nmax]` of non-negative `x` (the sub-block scales or mins of
/// the K-quants), weighted by `qw` (ggml's `make_qp_quants`). Returns the scale.
pub(crate) fn make_qp_quants(nmax: i32, x: &[f32], l_out: &mut [u8], qw: &[f32]) -> f32 {
    debug_assert!(x.len() == l_out.len() && x.len() == qw.len());
    let max = x.iter().fold(0.0f32, |m, &v| if m > v { m } else { v });
    if max < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    // ggml stores into uint8_t: the casts below wrap exactly as its implicit conversions.
    let mut iscale = nmax as f32 / max;
    for (o, &xi) in l_out.iter_mut().zip(x) {
        *o = nearest_int(iscale * xi) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for ((&l, &xi), &w) in l_out.iter().zip(x).zip(qw) {
        let diff = xi - scale * l as f32;
        best_mse += w * diff * diff;
    }
    for is in (-4..=4).filter(|&is| is != 0) {
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for (&xi, &w) in x.iter().zip(qw) {
            let l = nearest_int(iscale_is * xi).min(nmax);
            let diff = xi - scale_is * l as f32;
            mse += w * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for ((o, &xi), &w) in l_out.iter_mut().zip(x).zip(qw) {
        let l = nearest_int(iscale * xi).min(nmax);
        *o = l as u8;
        sumlx += w * xi * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for ((o, &xi), &w) in l_out.iter_mut().zip(x).zip(qw) {
            let cur = *o as f32;
            let mut slx = sumlx - w * xi * cur;
            let mut sl2 = suml2 - w * cur * cur;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(xi * sl2 / slx).min(nmax);
                if new_l != *o as i32 {
                    slx += w * xi * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *o = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}
