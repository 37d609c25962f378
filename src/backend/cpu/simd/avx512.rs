//! AVX-512 (F, BW, VL) + VNNI kernels.
//!
//! Integer dots use `vpdpbusd` (u8 × i8, four products summed straight into i32: no i16
//! saturation), on 256-bit registers: one 32-element block fills one register exactly, and the
//! EVEX encoding still brings 32 registers and byte masks (the fifth bits of Q5 quants are a
//! mask-register merge). Signed Q8_0 weights are made unsigned by adding 128 and subtracting
//! `128·Σx`, which the activation blocks carry. The loop structure (8 blocks per horizontal
//! reduction, weights unpacked once for up to 4 tokens) is the AVX2 module's.

use std::arch::x86_64::*;

use marco_quantize::act::BlockQ8x32;
use marco_quantize::blocks::{
    Block, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0,
};
use marco_quantize::dot::vec_dot_q8;
use marco_quantize::GgmlType;

use super::avx2::{
    self, k4_unpack, kquant_apply, legacy8, legacy_apply, legacy_nibbles, load_i8, load_u8,
    reduce8, totals, zero_acc, Acc, Kq8, Legacy8,
};
use super::{at, in_quads, row_blocks, superblock_x, Groups8, LegacyBlock};

/// Dot product of a weight row of type `ty` with activation blocks (see
/// `Kernels::dot_q8`). Types without a kernel here use the scalar reference.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn dot_q8(ty: GgmlType, w: &[u8], x: &[BlockQ8x32]) -> f32 {
    match q8_rows::<1>(ty, w, [x]) {
        Some([d]) => d,
        None => vec_dot_q8(ty, w, x),
    }
}

/// `out[t] = dot(w, x[t * stride..][..nb])` for each token `t` (see `Kernels::dot_q8_multi`):
/// four tokens at a time share each unpacked weight block.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn dot_q8_multi(
    ty: GgmlType,
    w: &[u8],
    x: &[BlockQ8x32],
    nb: usize,
    stride: usize,
    out: &mut [f32],
) {
    let tok = |t: usize| &x[t * stride..t * stride + nb];
    in_quads(
        out,
        |t| q8_rows::<4>(ty, w, [tok(t), tok(t + 1), tok(t + 2), tok(t + 3)]),
        |t| dot_q8(ty, w, tok(t)),
    );
}

/// Dot product of a float weight row with f32 activations (see `Kernels::dot_f32`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn dot_f32(ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
    avx2::dot_f32(ty, w, x)
}

/// Plain f32 dot product over the common length of `a` and `b`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn dot_plain(a: &[f32], b: &[f32]) -> f32 {
    avx2::dot_plain(a, b)
}

/// The dot products of one weight row with `T` token rows, or `None` for types without a
/// kernel here.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q8_rows<const T: usize>(ty: GgmlType, w: &[u8], xs: [&[BlockQ8x32]; T]) -> Option<[f32; T]> {
    let n = xs.iter().map(|x| x.len()).min().unwrap_or(0);
    Some(match ty {
        GgmlType::Q4_0 => legacy::<_, T, 8, false>(row_blocks(w, n, 1), xs, |w| unpack_q4_0(w)),
        GgmlType::Q4_1 => legacy::<_, T, 0, true>(row_blocks(w, n, 1), xs, |w| unpack_q4_1(w)),
        GgmlType::Q5_0 => legacy::<_, T, 16, false>(row_blocks(w, n, 1), xs, |w| unpack_q5_0(w)),
        GgmlType::Q5_1 => legacy::<_, T, 0, true>(row_blocks(w, n, 1), xs, |w| unpack_q5_1(w)),
        GgmlType::Q8_0 => legacy::<_, T, 128, false>(row_blocks(w, n, 1), xs, |w| unpack_q8_0(w)),
        GgmlType::Q4_K => kquant::<_, T>(row_blocks(w, n, 8), xs, |b: &BlockQ4K| {
            k4_unpack(b.d, b.dmin, &b.scales, &b.qs)
        }),
        GgmlType::Q5_K => kquant::<_, T>(row_blocks(w, n, 8), xs, |b| unpack_q5_k(b)),
        GgmlType::Q6_K => q6_k::<T>(row_blocks(w, n, 8), xs),
        _ => return None,
    })
}

/// i32 lanes summing to Σ u·s (u unsigned, s signed bytes), exact.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
}

/// The legacy kernels' shared loop (see the AVX2 one), with `vpdpbusd`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn legacy<B: LegacyBlock, const T: usize, const OFF: i32, const MIN: bool>(
    w: &[B],
    xs: [&[BlockQ8x32]; T],
    unpack: impl Fn(&[B; 8]) -> Legacy8,
) -> [f32; T] {
    let g = Groups8::new(w, xs);
    let mut acc = zero_acc::<T>();
    for (i, wb) in g.full.iter().enumerate() {
        legacy_step::<T, OFF, MIN>(&mut acc, &unpack(wb), g.x(i));
    }
    if let Some((wb, x)) = g.tail() {
        legacy_step::<T, OFF, MIN>(&mut acc, &unpack(wb), x);
    }
    totals(&acc)
}

/// One group of 8 unpacked blocks against each token.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn legacy_step<const T: usize, const OFF: i32, const MIN: bool>(
    acc: &mut [Acc; T],
    u: &Legacy8,
    xg: [&[BlockQ8x32; 8]; T],
) {
    for (a, x) in acc.iter_mut().zip(xg) {
        let mut p = [_mm256_setzero_si256(); 8];
        for (i, p) in p.iter_mut().enumerate() {
            *p = dot_u8_i8(u.q[i], load_i8(&x[i].qs));
        }
        *a = legacy_apply::<OFF, MIN>(*a, u, reduce8(&p), x);
    }
}

/// Nibbles plus fifth bits (bit j of `qh` → +16 on weight j), merged under a byte mask.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn legacy_5bit(qs: &[u8; 16], qh: [u8; 4]) -> __m256i {
    let hb = _mm256_maskz_mov_epi8(u32::from_le_bytes(qh), _mm256_set1_epi8(0x10));
    _mm256_or_si256(legacy_nibbles(qs), hb)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn unpack_q4_0(w: &[BlockQ4_0; 8]) -> Legacy8 {
    let mut u = legacy8(w, false);
    for (q, b) in u.q.iter_mut().zip(w) {
        *q = legacy_nibbles(&b.qs);
    }
    u
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn unpack_q4_1(w: &[BlockQ4_1; 8]) -> Legacy8 {
    let mut u = legacy8(w, true);
    for (q, b) in u.q.iter_mut().zip(w) {
        *q = legacy_nibbles(&b.qs);
    }
    u
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn unpack_q5_0(w: &[BlockQ5_0; 8]) -> Legacy8 {
    let mut u = legacy8(w, false);
    for (q, b) in u.q.iter_mut().zip(w) {
        *q = legacy_5bit(&b.qs, b.qh);
    }
    u
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn unpack_q5_1(w: &[BlockQ5_1; 8]) -> Legacy8 {
    let mut u = legacy8(w, true);
    for (q, b) in u.q.iter_mut().zip(w) {
        *q = legacy_5bit(&b.qs, b.qh);
    }
    u
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn unpack_q8_0(w: &[BlockQ8_0; 8]) -> Legacy8 {
    // w + 128 is w with its top bit flipped; the -128·Σx comes back through OFF.
    let flip = _mm256_set1_epi8(i8::MIN);
    let mut u = legacy8(w, false);
    for (q, b) in u.q.iter_mut().zip(w) {
        *q = _mm256_xor_si256(load_i8(&b.qs), flip);
    }
    u
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn unpack_q5_k(b: &BlockQ5K) -> Kq8 {
    let mut u = k4_unpack(b.d, b.dmin, &b.scales, &b.qs);
    let qh = load_u8(&b.qh);
    let sixteen = _mm256_set1_epi8(0x10);
    // The fifth bit of group g is bit g of each qh byte: test it into a byte mask.
    for (g, q) in u.q.iter_mut().enumerate() {
        let set = _mm256_test_epi8_mask(qh, _mm256_set1_epi8((1u8 << g) as i8));
        *q = _mm256_or_si256(*q, _mm256_maskz_mov_epi8(set, sixteen));
    }
    u
}

/// The Q4_K/Q5_K loop (see the AVX2 one), with `vpdpbusd`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn kquant<B: Block, const T: usize>(
    w: &[B],
    xs: [&[BlockQ8x32]; T],
    unpack: impl Fn(&B) -> Kq8,
) -> [f32; T] {
    let x8 = superblock_x(xs);
    let mut acc = zero_acc::<T>();
    for (i, b) in w.iter().enumerate() {
        let u = unpack(b);
        for (a, x) in acc.iter_mut().zip(at(&x8, i)) {
            let mut p = [_mm256_setzero_si256(); 8];
            for (g, p) in p.iter_mut().enumerate() {
                *p = dot_u8_i8(u.q[g], load_i8(&x[g].qs));
            }
            *a = kquant_apply(*a, &u, reduce8(&p), x);
        }
    }
    totals(&acc)
}

/// Q6_K: the AVX2 kernel (maddubs/madd applies the i8 sub-block scales in the same step),
/// compiled here for the EVEX encoding's extra registers.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q6_k<const T: usize>(w: &[BlockQ6K], xs: [&[BlockQ8x32]; T]) -> [f32; T] {
    avx2::q6_k(w, xs)
}
