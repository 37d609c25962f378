//! AVX2 + FMA + F16C kernels (x86-64 since Haswell and Zen 1).
//!
//! Integer dots use `vpmaddubsw` (u8 × i8 → i16 pair sums) and `vpmaddwd` (→ i32). The
//! unsigned operand is always a weight quant of at most 6 bits (or |q| ≤ 128 for Q8_0) and the
//! signed one an activation in -127..=127, so the i16 pair sums can never saturate.
//! Each block's exact i32 lanes are converted to f32 and accumulated with one FMA against the
//! block's combined scale: no horizontal sum per block.

use std::arch::x86_64::*;

use marco_quantize::act::BlockQ8x32;
use marco_quantize::blocks::{
    BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0, LeF16,
};
use marco_quantize::dot::{vec_dot_f32, vec_dot_q8};
use marco_quantize::GgmlType;

use super::{fold2, k4_scales_mins, row_blocks};

/// Dot product of a weight row of type `ty` with activation blocks (see
/// `Kernels::dot_q8`). Types without an AVX2 kernel use the scalar reference.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_q8(ty: GgmlType, w: &[u8], x: &[BlockQ8x32]) -> f32 {
    let n = x.len();
    match ty {
        GgmlType::Q4_0 => dot_q4_0(row_blocks(w, n, 1), x),
        GgmlType::Q4_1 => dot_q4_1(row_blocks(w, n, 1), x),
        GgmlType::Q5_0 => dot_q5_0(row_blocks(w, n, 1), x),
        GgmlType::Q5_1 => dot_q5_1(row_blocks(w, n, 1), x),
        GgmlType::Q8_0 => dot_q8_0(row_blocks(w, n, 1), x),
        GgmlType::Q4_K => dot_q4_k(row_blocks(w, n, 8), x.as_chunks::<8>().0),
        GgmlType::Q5_K => dot_q5_k(row_blocks(w, n, 8), x.as_chunks::<8>().0),
        GgmlType::Q6_K => dot_q6_k(row_blocks(w, n, 8), x.as_chunks::<8>().0),
        _ => vec_dot_q8(ty, w, x),
    }
}

/// Dot product of a float weight row with f32 activations (see `Kernels::dot_f32`).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_f32(ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
    match ty {
        GgmlType::F32 => dot_float::<32, 128>(ty, w, x, |p| load_f32x8(p)),
        GgmlType::F16 => dot_float::<16, 64>(ty, w, x, |p| load_f16x8(p)),
        GgmlType::BF16 => dot_float::<16, 64>(ty, w, x, |p| load_bf16x8(p)),
        _ => vec_dot_f32(ty, w, x),
    }
}

/// Plain f32 dot product over the common length of `a` and `b`.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_plain(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (a32, a_rest) = a.as_chunks::<32>();
    let (b32, b_rest) = b.as_chunks::<32>();
    let mut acc = [_mm256_setzero_ps(); 4];
    for (ca, cb) in a32.iter().zip(b32) {
        let (ca, cb) = (ca.as_chunks::<8>().0, cb.as_chunks::<8>().0);
        for i in 0..4 {
            acc[i] = _mm256_fmadd_ps(load_ps(&ca[i]), load_ps(&cb[i]), acc[i]);
        }
    }
    let (a8, a_tail) = a_rest.as_chunks::<8>();
    let (b8, b_tail) = b_rest.as_chunks::<8>();
    for (ca, cb) in a8.iter().zip(b8) {
        acc[0] = _mm256_fmadd_ps(load_ps(ca), load_ps(cb), acc[0]);
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(p, q)| p * q).sum();
    hsum4(acc) + tail
}

// ---- helpers shared with the AVX-512 module (which implies these features) ----

/// f16 → f32 of one scale (F16C; exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16_to_f32(h: LeF16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.bits() as i32)))
}

/// Sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Sum of four accumulators' lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum4(acc: [__m256; 4]) -> f32 {
    hsum(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load_u8(p: &[u8; 32]) -> __m256i {
    // SAFETY: `p` is 32 readable bytes and the load has no alignment requirement.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load_i8(p: &[i8; 32]) -> __m256i {
    // SAFETY: `p` is 32 readable bytes and the load has no alignment requirement.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_ps(p: &[f32; 8]) -> __m256 {
    // SAFETY: `p` is 8 readable floats and the load has no alignment requirement.
    unsafe { _mm256_loadu_ps(p.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_f32x8(p: &[u8; 32]) -> __m256 {
    _mm256_castsi256_ps(load_u8(p))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_f16x8(p: &[u8; 16]) -> __m256 {
    // SAFETY: `p` is 16 readable bytes and the load has no alignment requirement.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.as_ptr().cast()) })
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_bf16x8(p: &[u8; 16]) -> __m256 {
    // SAFETY: `p` is 16 readable bytes and the load has no alignment requirement.
    let h = unsafe { _mm_loadu_si128(p.as_ptr().cast()) };
    // bf16 is the top half of an f32: widen and shift into place (exact).
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
}

/// The 32 nibbles of a legacy block in element order: byte `j` holds weights `j` (low nibble)
/// and `j + 16` (high nibble).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn legacy_nibbles(qs: &[u8; 16]) -> __m256i {
    // SAFETY: `qs` is 16 readable bytes and the load has no alignment requirement.
    let v = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(v), v);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Byte `i` = 0x10 where bit `i` of `bits` is set, else 0 (the fifth bit of Q5_0/Q5_1).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fifth_bits(bits: u32) -> __m256i {
    // Byte i takes byte i/8 of `bits` (in-lane shuffle of the broadcast word), then tests its
    // bit i%8.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        ),
    );
    let sel = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, sel), sel);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// i32 lanes whose sum is Σ u·s (u unsigned, s signed bytes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// `acc + lanes(p) * scale`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn fma_scaled(acc: __m256, p: __m256i, scale: __m256) -> __m256 {
    _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc)
}

/// Adds `v` to lane 0 of the i32 lanes (the exact offset terms of Q4_0/Q5_0/Q8_0).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn add_lane0(p: __m256i, v: i32) -> __m256i {
    _mm256_add_epi32(p, _mm256_zextsi128_si256(_mm_cvtsi32_si128(v)))
}

/// Lane `g` of `v`, broadcast.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn lane(v: __m256, g: usize) -> __m256 {
    _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(g as i32))
}

/// The scales of the 8 activation blocks of a super-block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn group_d(xs: &[BlockQ8x32; 8]) -> __m256 {
    _mm256_setr_ps(
        xs[0].d, xs[1].d, xs[2].d, xs[3].d, xs[4].d, xs[5].d, xs[6].d, xs[7].d,
    )
}

/// The quant sums of the 8 activation blocks of a super-block, as f32 (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn group_sums(xs: &[BlockQ8x32; 8]) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_setr_epi32(
        xs[0].sum, xs[1].sum, xs[2].sum, xs[3].sum, xs[4].sum, xs[5].sum, xs[6].sum, xs[7].sum,
    ))
}

/// 8 bytes (a little-endian u64) widened to 8 f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bytes_to_ps(v: u64) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v as i64)))
}

/// Per-group scales and the min term of a Q4_K/Q5_K super-block: returns
/// (`d·sc_g·xd_g` for each group g, the block's `dmin·Σ m_g·xd_g·sum_g` added to `accm`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn k4_group_scales(
    d: LeF16,
    dmin: LeF16,
    scales: &[u8; 12],
    xs: &[BlockQ8x32; 8],
    accm: __m256,
) -> (__m256, __m256) {
    let (sc, m) = k4_scales_mins(scales);
    let xd = group_d(xs);
    let sv = _mm256_mul_ps(
        _mm256_mul_ps(bytes_to_ps(sc), _mm256_set1_ps(f16_to_f32(d))),
        xd,
    );
    let mv = _mm256_mul_ps(
        _mm256_mul_ps(bytes_to_ps(m), _mm256_set1_ps(f16_to_f32(dmin))),
        xd,
    );
    (sv, _mm256_fmadd_ps(mv, group_sums(xs), accm))
}

// ---- 32-element block types ----

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_0(w: &[BlockQ4_0], x: &[BlockQ8x32]) -> f32 {
    let (a0, a1) = fold2(w, x, _mm256_setzero_ps(), |acc, b, xb| {
        // Σ (q - 8)·x = Σ q·x - 8·Σ x: unsigned quants suit maddubs, and Σ x is known.
        let p = add_lane0(dot_u8_i8(legacy_nibbles(&b.qs), load_i8(&xb.qs)), -8 * xb.sum);
        fma_scaled(acc, p, _mm256_set1_ps(f16_to_f32(b.d) * xb.d))
    });
    hsum(_mm256_add_ps(a0, a1))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_1(w: &[BlockQ4_1], x: &[BlockQ8x32]) -> f32 {
    let zero = (_mm256_setzero_ps(), 0.0f32);
    let (a0, a1) = fold2(w, x, zero, |(acc, accm), b, xb| {
        let p = dot_u8_i8(legacy_nibbles(&b.qs), load_i8(&xb.qs));
        let acc = fma_scaled(acc, p, _mm256_set1_ps(f16_to_f32(b.d) * xb.d));
        (acc, accm + f16_to_f32(b.m) * (xb.d * xb.sum as f32))
    });
    hsum(_mm256_add_ps(a0.0, a1.0)) + (a0.1 + a1.1)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_0(w: &[BlockQ5_0], x: &[BlockQ8x32]) -> f32 {
    let (a0, a1) = fold2(w, x, _mm256_setzero_ps(), |acc, b, xb| {
        let q = _mm256_or_si256(legacy_nibbles(&b.qs), fifth_bits(u32::from_le_bytes(b.qh)));
        // Σ (q - 16)·x = Σ q·x - 16·Σ x.
        let p = add_lane0(dot_u8_i8(q, load_i8(&xb.qs)), -16 * xb.sum);
        fma_scaled(acc, p, _mm256_set1_ps(f16_to_f32(b.d) * xb.d))
    });
    hsum(_mm256_add_ps(a0, a1))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_1(w: &[BlockQ5_1], x: &[BlockQ8x32]) -> f32 {
    let zero = (_mm256_setzero_ps(), 0.0f32);
    let (a0, a1) = fold2(w, x, zero, |(acc, accm), b, xb| {
        let q = _mm256_or_si256(legacy_nibbles(&b.qs), fifth_bits(u32::from_le_bytes(b.qh)));
        let p = dot_u8_i8(q, load_i8(&xb.qs));
        let acc = fma_scaled(acc, p, _mm256_set1_ps(f16_to_f32(b.d) * xb.d));
        (acc, accm + f16_to_f32(b.m) * (xb.d * xb.sum as f32))
    });
    hsum(_mm256_add_ps(a0.0, a1.0)) + (a0.1 + a1.1)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0(w: &[BlockQ8_0], x: &[BlockQ8x32]) -> f32 {
    let (a0, a1) = fold2(w, x, _mm256_setzero_ps(), |acc, b, xb| {
        // Signed × signed via maddubs: |w| × (x with w's sign). |w| ≤ 128, so pair sums stay
        // within i16.
        let wq = load_i8(&b.qs);
        let p = dot_u8_i8(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(load_i8(&xb.qs), wq));
        fma_scaled(acc, p, _mm256_set1_ps(f16_to_f32(b.d) * xb.d))
    });
    hsum(_mm256_add_ps(a0, a1))
}

// ---- 256-element super-block types ----

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_k(w: &[BlockQ4K], x: &[[BlockQ8x32; 8]]) -> f32 {
    let zero = _mm256_setzero_ps();
    let low4 = _mm256_set1_epi8(0x0F);
    let (mut acc0, mut acc1, mut accm) = (zero, zero, zero);
    for (b, xs) in w.iter().zip(x) {
        let (sv, m) = k4_group_scales(b.d, b.dmin, &b.scales, xs, accm);
        accm = m;
        // Each 32 bytes of quants hold group 2c in the low and group 2c+1 in the high nibbles.
        for (c, (q, xp)) in b.qs.as_chunks::<32>().0.iter().zip(xs.as_chunks::<2>().0).enumerate() {
            let v = load_u8(q);
            let lo = _mm256_and_si256(v, low4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low4);
            acc0 = fma_scaled(acc0, dot_u8_i8(lo, load_i8(&xp[0].qs)), lane(sv, 2 * c));
            acc1 = fma_scaled(acc1, dot_u8_i8(hi, load_i8(&xp[1].qs)), lane(sv, 2 * c + 1));
        }
    }
    hsum(_mm256_sub_ps(_mm256_add_ps(acc0, acc1), accm))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_k(w: &[BlockQ5K], x: &[[BlockQ8x32; 8]]) -> f32 {
    let zero = _mm256_setzero_ps();
    let low4 = _mm256_set1_epi8(0x0F);
    let (mut acc0, mut acc1, mut accm) = (zero, zero, zero);
    for (b, xs) in w.iter().zip(x) {
        let (sv, m) = k4_group_scales(b.d, b.dmin, &b.scales, xs, accm);
        accm = m;
        let qh = load_u8(&b.qh);
        for (c, (q, xp)) in b.qs.as_chunks::<32>().0.iter().zip(xs.as_chunks::<2>().0).enumerate() {
            let v = load_u8(q);
            let lo = _mm256_or_si256(_mm256_and_si256(v, low4), k5_fifth_bits(qh, 2 * c));
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low4);
            let hi = _mm256_or_si256(hi, k5_fifth_bits(qh, 2 * c + 1));
            acc0 = fma_scaled(acc0, dot_u8_i8(lo, load_i8(&xp[0].qs)), lane(sv, 2 * c));
            acc1 = fma_scaled(acc1, dot_u8_i8(hi, load_i8(&xp[1].qs)), lane(sv, 2 * c + 1));
        }
    }
    hsum(_mm256_sub_ps(_mm256_add_ps(acc0, acc1), accm))
}

/// The fifth bits (as 0x10) of group `g` of a Q5_K block: bit `g` of each `qh` byte.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k5_fifth_bits(qh: __m256i, g: usize) -> __m256i {
    let bit = _mm256_set1_epi8((1u8 << g) as i8);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q6_k(w: &[BlockQ6K], x: &[[BlockQ8x32; 8]]) -> f32 {
    let zero = _mm256_setzero_ps();
    let (mut acc0, mut acc1) = (zero, zero);
    for (b, xs) in w.iter().zip(x) {
        let sv = _mm256_mul_ps(group_d(xs), _mm256_set1_ps(f16_to_f32(b.d)));
        let sc16 = q6k_scales_i16(&b.scales);
        // Two halves of 128 weights: 64 bytes of low nibbles, 32 bytes of high bit pairs.
        let ql = b.ql.as_chunks::<32>().0;
        let qh = b.qh.as_chunks::<32>().0;
        for h in 0..2 {
            let (l0, l1, hb) = (load_u8(&ql[2 * h]), load_u8(&ql[2 * h + 1]), load_u8(&qh[h]));
            for k in 0..4 {
                let g = 4 * h + k;
                let q = q6k_group(if k % 2 == 0 { l0 } else { l1 }, hb, k);
                let p = q6k_dot(q, load_i8(&xs[g].qs), sc16, g);
                if k % 2 == 0 {
                    acc0 = fma_scaled(acc0, p, lane(sv, g));
                } else {
                    acc1 = fma_scaled(acc1, p, lane(sv, g));
                }
            }
        }
    }
    hsum(_mm256_add_ps(acc0, acc1))
}

/// The 16 signed sub-block scales of a Q6_K block as i16 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q6k_scales_i16(scales: &[i8; 16]) -> __m256i {
    // SAFETY: `scales` is 16 readable bytes and the load has no alignment requirement.
    _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(scales.as_ptr().cast()) })
}

/// Unsigned 6-bit quants (0..64) of group `k` (0..4) of a Q6_K half: low nibbles of `l` for
/// k < 2, high nibbles for k ≥ 2; top two bits at bit `2k` of `hb`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q6k_group(l: __m256i, hb: __m256i, k: usize) -> __m256i {
    let low4 = _mm256_set1_epi8(0x0F);
    let nib = if k < 2 {
        _mm256_and_si256(l, low4)
    } else {
        _mm256_and_si256(_mm256_srli_epi16::<4>(l), low4)
    };
    // Move bits 2k, 2k+1 of each byte to bits 4, 5 (16-bit shifts: the mask drops what
    // crosses from the neighbouring byte).
    let top = match k {
        0 => _mm256_slli_epi16::<4>(hb),
        1 => _mm256_slli_epi16::<2>(hb),
        2 => hb,
        _ => _mm256_srli_epi16::<2>(hb),
    };
    _mm256_or_si256(nib, _mm256_and_si256(top, _mm256_set1_epi8(0x30)))
}

/// i32 lanes summing to `sc[2g]·Σ(q-32)·x` over the first 16 elements plus `sc[2g+1]·…` over
/// the last 16 of group `g`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q6k_dot(q: __m256i, x: __m256i, sc16: __m256i, g: usize) -> __m256i {
    // Σ (q-32)·x per i16 pair: |q·x pair| ≤ 16002 and |32·x pair| ≤ 8128, so no saturation.
    let t = _mm256_sub_epi16(
        _mm256_maddubs_epi16(q, x),
        _mm256_maddubs_epi16(_mm256_set1_epi8(32), x),
    );
    // i16 lanes 0..8 get scale 2g, lanes 8..16 scale 2g+1: broadcast i32 lane g (which holds
    // that pair), then pick its low i16 in the low 128 bits and its high i16 in the high.
    let pair = _mm256_permutevar8x32_epi32(sc16, _mm256_set1_epi32(g as i32));
    let pick = _mm256_setr_epi8(
        0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
        2, 3,
    );
    _mm256_madd_epi16(t, _mm256_shuffle_epi8(pair, pick))
}

// ---- float weights ----

/// Dot product of float weights, 8 elements of `B8` bytes per load, 32 per iteration.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_float<const B8: usize, const B32: usize>(
    ty: GgmlType,
    w: &[u8],
    x: &[f32],
    load8: impl Fn(&[u8; B8]) -> __m256,
) -> f32 {
    let esize = B8 / 8;
    let n = (w.len() / esize).min(x.len());
    let (w, x) = (&w[..n * esize], &x[..n]);
    let (w32, w_rest) = w.as_chunks::<B32>();
    let (x32, x_rest) = x.as_chunks::<32>();
    let mut acc = [_mm256_setzero_ps(); 4];
    for (cw, cx) in w32.iter().zip(x32) {
        let (cw, cx) = (cw.as_chunks::<B8>().0, cx.as_chunks::<8>().0);
        for i in 0..4 {
            acc[i] = _mm256_fmadd_ps(load8(&cw[i]), load_ps(&cx[i]), acc[i]);
        }
    }
    let (w8, w_tail) = w_rest.as_chunks::<B8>();
    let (x8, x_tail) = x_rest.as_chunks::<8>();
    for (cw, cx) in w8.iter().zip(x8) {
        acc[0] = _mm256_fmadd_ps(load8(cw), load_ps(cx), acc[0]);
    }
    hsum4(acc) + vec_dot_f32(ty, w_tail, x_tail)
}

// ---- several tokens per weight row ----

/// `out[t] = dot(w, x[t * stride..][..nb])` for each token `t` (see `Kernels::dot_q8_multi`).
#[target_feature(enable = "avx2,fma,f16c")]
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
