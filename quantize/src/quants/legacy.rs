//! Quantizers of the 32-element types (`Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`, `Q8_1`).
//!
//! The `*_ref` functions follow ggml's `quantize_row_*_ref` (what llama-quantize uses without
//! an imatrix); the `*_weighted` ones follow `quantize_row_*_impl` with `quant_weights`.

use super::search::{make_qkx_quants, make_qx_quants, QkxSearch};
use crate::blocks::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, LeF16};
use crate::types::QK32;

type Row32<'a> = &'a [f32; QK32];

/// `(amax, value at amax)` with ggml's strict `<` (the first of equal magnitudes wins).
fn signed_absmax(x: Row32) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

fn min_max(x: Row32) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

#[inline]
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Pack 32 five-bit quants into nibbles and the 32-bit fifth-bit mask.
fn pack5(l: &[u8; QK32]) -> ([u8; 16], [u8; 4]) {
    let mut qs = [0u8; 16];
    let mut qh = 0u32;
    for (j, q) in qs.iter_mut().enumerate() {
        let (a, b) = (l[j], l[j + 16]);
        *q = (a & 0x0F) | ((b & 0x0F) << 4);
        qh |= (((a & 0x10) >> 4) as u32) << j;
        qh |= (((b & 0x10) >> 4) as u32) << (j + 16);
    }
    (qs, qh.to_le_bytes())
}

fn pack4(l: &[u8; QK32]) -> [u8; 16] {
    std::array::from_fn(|j| l[j] | (l[j + 16] << 4))
}

/// ggml `quantize_row_q4_0_ref`: `d = max / -8` (signed extreme), `q = min(15, trunc(x/d + 8.5))`.
pub(crate) fn q4_0_ref(x: Row32, y: &mut BlockQ4_0) {
    let (_, max) = signed_absmax(x);
    let d = max / -8.0;
    let id = inverse(d);
    y.d = LeF16::from_f32(d);
    // The float → int8 truncation of ggml; the saturating `as` agrees on its in-range values.
    let l: [u8; QK32] = std::array::from_fn(|j| ((x[j] * id + 8.5) as i8).min(15) as u8);
    y.qs = pack4(&l);
}

/// ggml `quantize_row_q4_1_ref`: `d = (max - min) / 15`, `m = min`.
pub(crate) fn q4_1_ref(x: Row32, y: &mut BlockQ4_1) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    y.d = LeF16::from_f32(d);
    y.m = LeF16::from_f32(min);
    let l: [u8; QK32] = std::array::from_fn(|j| (((x[j] - min) * id + 0.5) as i8).min(15) as u8);
    y.qs = pack4(&l);
}

/// ggml `quantize_row_q5_0_ref`: `d = max / -16`, `q = min(31, trunc(x/d + 16.5))`.
pub(crate) fn q5_0_ref(x: Row32, y: &mut BlockQ5_0) {
    let (_, max) = signed_absmax(x);
    let d = max / -16.0;
    let id = inverse(d);
    y.d = LeF16::from_f32(d);
    let l: [u8; QK32] = std::array::from_fn(|j| ((x[j] * id + 16.5) as i8).min(31) as u8);
    (y.qs, y.qh) = pack5(&l);
}

/// ggml `quantize_row_q5_1_ref`: `d = (max - min) / 31`, `m = min`.
pub(crate) fn q5_1_ref(x: Row32, y: &mut BlockQ5_1) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    y.d = LeF16::from_f32(d);
    y.m = LeF16::from_f32(min);
    let l: [u8; QK32] = std::array::from_fn(|j| ((x[j] - min) * id + 0.5) as u8);
    (y.qs, y.qh) = pack5(&l);
}

/// The 8-bit quants of ggml's `quantize_row_q8_0_ref`/`q8_1_ref` and their scale.
fn q8_quants(x: Row32) -> (f32, [i8; QK32]) {
    let amax = x
        .iter()
        .fold(0.0f32, |m, &v| if m > v.abs() { m } else { v.abs() });
    let d = amax / 127.0;
    let id = inverse(d);
    (d, x.map(|v| (v * id).round() as i8))
}

/// ggml `quantize_row_q8_0_ref`: `d = amax / 127`, `q = round(x / d)`.
pub(crate) fn q8_0_ref(x: Row32, y: &mut BlockQ8_0) {
    let (d, qs) = q8_quants(x);
    y.d = LeF16::from_f32(d);
    y.qs = qs;
}

/// ggml `quantize_row_q8_1_ref`: as `Q8_0`, plus `s = d * Σq`.
pub(crate) fn q8_1_ref(x: Row32, y: &mut BlockQ8_1) {
    let (d, qs) = q8_quants(x);
    let sum: i32 = qs.iter().map(|&q| q as i32).sum();
    y.d = LeF16::from_f32(d);
    y.s = LeF16::from_f32(sum as f32 * d);
    y.qs = qs;
}

/// ggml's weights of the legacy `_impl` quantizers: `qw * sqrt(sigma2 + x²)`, with `sigma2`
/// the mean square of the whole row.
fn impl_weights(x: Row32, qw: Row32, sigma2: f32) -> [f32; QK32] {
    std::array::from_fn(|j| qw[j] * (sigma2 + x[j] * x[j]).sqrt())
}

/// ggml `quantize_row_q4_0_impl` (one block; `sigma2` from the row).
pub(crate) fn q4_0_weighted(x: Row32, qw: Row32, sigma2: f32, y: &mut BlockQ4_0) {
    let w = impl_weights(x, qw, sigma2);
    let mut l = [0i8; QK32];
    let d = make_qx_quants(8, x, &mut l, &w);
    y.d = LeF16::from_f32(d);
    y.qs = pack4(&l.map(|v| v as u8));
}

/// ggml `quantize_row_q5_0_impl` (one block).
pub(crate) fn q5_0_weighted(x: Row32, qw: Row32, sigma2: f32, y: &mut BlockQ5_0) {
    let w = impl_weights(x, qw, sigma2);
    let mut l = [0i8; QK32];
    let d = make_qx_quants(16, x, &mut l, &w);
    y.d = LeF16::from_f32(d);
    (y.qs, y.qh) = pack5(&l.map(|v| v as u8));
}

/// The asymmetric search of the `Q4_1`/`Q5_1` `_impl` quantizers: `(d, m, quants)`.
fn qkx3_block(x: Row32, qw: Row32, sigma2: f32, nmax: i32) -> (f32, f32, [u8; QK32]) {
    let w = impl_weights(x, qw, sigma2);
    let (mut l, mut aux) = ([0u8; QK32], [0u8; QK32]);
    let p = QkxSearch {
        nmax,
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
        qkx3: true,
    };
    let (d, the_min) = make_qkx_quants(p, x, &w, &mut l, &mut aux);
    (d, -the_min, l)
}

/// ggml `quantize_row_q4_1_impl` (one block).
pub(crate) fn q4_1_weighted(x: Row32, qw: Row32, sigma2: f32, y: &mut BlockQ4_1) {
    let (d, m, l) = qkx3_block(x, qw, sigma2, 15);
    y.d = LeF16::from_f32(d);
    y.m = LeF16::from_f32(m);
    y.qs = pack4(&l);
}

/// ggml `quantize_row_q5_1_impl` (one block).
pub(crate) fn q5_1_weighted(x: Row32, qw: Row32, sigma2: f32, y: &mut BlockQ5_1) {
    let (d, m, l) = qkx3_block(x, qw, sigma2, 31);
    y.d = LeF16::from_f32(d);
    y.m = LeF16::from_f32(m);
    (y.qs, y.qh) = pack5(&l);
}
