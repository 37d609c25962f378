//! AVX2 + FMA + F16C kernels (x86-64 since Haswell and Zen 1).
//!
//! Integer dots use `vpmaddubsw` (u8 × i8 → i16 pair sums) and `vpmaddwd` (→ i32). The
//! unsigned operand is always a weight quant of at most 6 bits (or |q| ≤ 128 for Q8_0) and the
//! signed one an activation in -127..=127, so the i16 pair sums can never saturate.
//!
//! Loop structure (shared with the AVX-512 module through `x86_block_loops!`): blocks go in
//! groups of 8 (a K-quant super-block is such a group). Each block's exact i32 dot stays in
//! its own register until one horizontal reduction turns the group's 8 registers into one
//! vector of 8 block dots; the 8 scales (weight × activation) then apply with one FMA. Scalar
//! per-block scale work (f16 conversion, multiply, broadcast) was the bottleneck before. The
//! weights of a group are unpacked once and applied to up to 4 tokens (`dot_q8_multi`).
//! The helpers below are `pub(super)` for the AVX-512 module, whose features imply these.

use std::arch::x86_64::*;

use marco_quantize::act::BlockQ8x32;
use marco_quantize::blocks::{
    Block, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0,
    LeF16,
};
use marco_quantize::dot::{vec_dot_f32, vec_dot_q8};
use marco_quantize::GgmlType;

use super::x86::{d8, in_quads, m8, LegacyBlock};
use super::{k4_scales_mins, row_blocks};

/// Dot product of a weight row of type `ty` with activation blocks (see
/// `Kernels::dot_q8`). Types without an AVX2 kernel use the scalar reference.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_q8(ty: GgmlType, w: &[u8], x: &[BlockQ8x32]) -> f32 {
    match q8_rows::<1>(ty, w, [x]) {
        Some([d]) => d,
        None => vec_dot_q8(ty, w, x),
    }
}

/// `out[t] = dot(w, x[t * stride..][..nb])` for each token `t` (see `Kernels::dot_q8_multi`):
/// four tokens at a time share each unpacked weight block.
#[target_feature(enable = "avx2,fma,f16c")]
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

/// The dot products of one weight row with `T` token rows, or `None` for types without a
/// kernel here.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_rows<const T: usize>(ty: GgmlType, w: &[u8], xs: [&[BlockQ8x32]; T]) -> Option<[f32; T]> {
    let n = xs.iter().map(|x| x.len()).min().unwrap_or(0);
    let nib = |qs: &[u8; 16]| legacy_nibbles(qs);
    let nib5 = |qs: &[u8; 16], qh: [u8; 4]| {
        _mm256_or_si256(legacy_nibbles(qs), fifth_bits(u32::from_le_bytes(qh)))
    };
    Some(match ty {
        GgmlType::Q4_0 => {
            legacy::<BlockQ4_0, T, 8, false, false>(row_blocks(w, n, 1), xs, |b| nib(&b.qs))
        }
        GgmlType::Q4_1 => {
            legacy::<BlockQ4_1, T, 0, true, false>(row_blocks(w, n, 1), xs, |b| nib(&b.qs))
        }
        GgmlType::Q5_0 => {
            legacy::<BlockQ5_0, T, 16, false, false>(row_blocks(w, n, 1), xs, |b| nib5(&b.qs, b.qh))
        }
        GgmlType::Q5_1 => {
            legacy::<BlockQ5_1, T, 0, true, false>(row_blocks(w, n, 1), xs, |b| nib5(&b.qs, b.qh))
        }
        GgmlType::Q8_0 => {
            legacy::<BlockQ8_0, T, 0, false, true>(row_blocks(w, n, 1), xs, |b| load_i8(&b.qs))
        }
        GgmlType::Q4_K => kquant::<_, T>(row_blocks(w, n, 8), xs, |b: &BlockQ4K| {
            k4_unpack(b.d, b.dmin, &b.scales, &b.qs)
        }),
        GgmlType::Q5_K => kquant::<_, T>(row_blocks(w, n, 8), xs, |b| unpack_q5_k(b)),
        GgmlType::Q6_K => q6_k::<T>(row_blocks(w, n, 8), xs),
        _ => return None,
    })
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
pub(super) fn load_ps(p: &[f32; 8]) -> __m256 {
    // SAFETY: `p` is 8 readable floats and the load has no alignment requirement.
    unsafe { _mm256_loadu_ps(p.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load_i32x8(p: &[i32; 8]) -> __m256i {
    // SAFETY: `p` is 32 readable bytes and the load has no alignment requirement.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
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
    _mm256_and_si256(legacy_nibbles_unmasked(qs), _mm256_set1_epi8(0x0F))
}

/// [`legacy_nibbles`] before masking: each byte's low nibble is the weight, its high nibble
/// is garbage.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn legacy_nibbles_unmasked(qs: &[u8; 16]) -> __m256i {
    // SAFETY: `qs` is 16 readable bytes and the load has no alignment requirement.
    let v = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
    // The 16 bytes in both halves (a load-port broadcast), the high half shifted down by a
    // nibble (a dword shift is fine: the mask drops what crosses between bytes).
    _mm256_srlv_epi32(
        _mm256_broadcastsi128_si256(v),
        _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4),
    )
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

/// The scales and quant sums of a group of 8 activation blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn x_group(xs: &[BlockQ8x32; 8]) -> (__m256, __m256i) {
    let d = _mm256_setr_ps(
        xs[0].d, xs[1].d, xs[2].d, xs[3].d, xs[4].d, xs[5].d, xs[6].d, xs[7].d,
    );
    let sums = _mm256_setr_epi32(
        xs[0].sum, xs[1].sum, xs[2].sum, xs[3].sum, xs[4].sum, xs[5].sum, xs[6].sum, xs[7].sum,
    );
    (d, sums)
}

/// 8 bytes (a little-endian u64) widened to 8 f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bytes_to_ps(v: u64) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v as i64)))
}

/// 8 f16 scales as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn scales8(h: [LeF16; 8]) -> __m256 {
    let h = h.map(|v| v.bits() as i16);
    _mm256_cvtph_ps(_mm_setr_epi16(
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7],
    ))
}

/// Lane `i` of the result is the sum of the 8 lanes of `p[i]` (the exact integer dot of block
/// `i`): one horizontal reduction per 8 blocks, so the scales apply to all 8 with one FMA
/// instead of a broadcast and an FMA per block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn reduce8(p: &[__m256i; 8]) -> __m256i {
    // In-lane pairwise adds leave, per 128-bit half, the half-sums of blocks 0..4 (and 4..8);
    // adding the two halves finishes them.
    let a = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
    let b = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(a, b),
        _mm256_permute2x128_si256::<0x31>(a, b),
    )
}

/// Per-token accumulators: the scaled dot products, and the min terms (legacy `m`, K-quant
/// `dmin`), kept apart so each takes one FMA per 8 blocks.
#[derive(Clone, Copy)]
pub(super) struct Acc {
    pub(super) dot: __m256,
    pub(super) min: __m256,
}

/// `T` zeroed accumulators.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn zero_acc<const T: usize>() -> [Acc; T] {
    let z = _mm256_setzero_ps();
    [Acc { dot: z, min: z }; T]
}

/// The dot products held by the accumulators.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn totals<const T: usize>(acc: &[Acc; T]) -> [f32; T] {
    let mut out = [0.0; T];
    for (o, a) in out.iter_mut().zip(acc) {
        *o = hsum(_mm256_add_ps(a.dot, a.min));
    }
    out
}

/// 8 blocks of 32 weights, unpacked once (and reused for every token): quants, weight
/// scales and (Q4_1/Q5_1) mins.
#[derive(Clone, Copy)]
pub(super) struct Legacy8 {
    pub(super) q: [__m256i; 8],
    pub(super) d: __m256,
    pub(super) m: __m256,
}

/// Scales and mins of 8 legacy blocks (`has_min` false: no mins); quants to be filled in.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn legacy8(d: [LeF16; 8], m: [LeF16; 8], has_min: bool) -> Legacy8 {
    Legacy8 {
        q: [_mm256_setzero_si256(); 8],
        d: scales8(d),
        m: if has_min {
            scales8(m)
        } else {
            _mm256_setzero_ps()
        },
    }
}

/// Adds 8 blocks' exact dots `r` (lane i: block i, before the offset) to `acc`, given the
/// activation scales `xd` and sums of those blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn legacy_apply<const OFF: i32, const MIN: bool>(
    acc: Acc,
    u: &Legacy8,
    r: __m256i,
    xd: __m256,
    sums: __m256i,
) -> Acc {
    let r = if OFF != 0 {
        _mm256_sub_epi32(r, _mm256_mullo_epi32(sums, _mm256_set1_epi32(OFF)))
    } else {
        r
    };
    let min = if MIN {
        _mm256_fmadd_ps(_mm256_mul_ps(u.m, xd), _mm256_cvtepi32_ps(sums), acc.min)
    } else {
        acc.min
    };
    Acc {
        dot: fma_scaled(acc.dot, r, _mm256_mul_ps(u.d, xd)),
        min,
    }
}

/// Scales and (with `has_min`) mins of 8 legacy blocks; quants to be filled in.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn legacy_scales<B: LegacyBlock>(w: &[B; 8], has_min: bool) -> Legacy8 {
    legacy8(d8(w), m8(w), has_min)
}

x86_block_loops!("avx2,fma,f16c", dot_u8_i8);

// ---- 256-element super-block types ----

/// A Q4_K/Q5_K super-block, unpacked: each group's unsigned quants, `d·sc` and `dmin·m`.
#[derive(Clone, Copy)]
pub(super) struct Kq8 {
    pub(super) q: [__m256i; 8],
    pub(super) dsc: __m256,
    pub(super) dm: __m256,
}

/// The scales and the nibbles of a Q4_K/Q5_K super-block: `d·sc_g`, `dmin·m_g`, and 32 bytes
/// per pair of groups holding group 2c (low nibbles) and 2c+1 (high nibbles).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn k4_unpack(d: LeF16, dmin: LeF16, scales: &[u8; 12], qs: &[u8; 128]) -> Kq8 {
    let (sc, m) = k4_scales_mins(scales);
    Kq8 {
        q: k4_unpack_quants(qs, None),
        dsc: _mm256_mul_ps(bytes_to_ps(sc), _mm256_set1_ps(f16_to_f32(d))),
        dm: _mm256_mul_ps(bytes_to_ps(m), _mm256_set1_ps(f16_to_f32(dmin))),
    }
}

/// The 8 groups' unsigned quants of a Q4_K (no `qh`: 0..16) or Q5_K (`qh`, the fifth bits:
/// 0..32) super-block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn k4_unpack_quants(qs: &[u8; 128], qh: Option<&[u8; 32]>) -> [__m256i; 8] {
    let low4 = _mm256_set1_epi8(0x0F);
    let mut q = [_mm256_setzero_si256(); 8];
    for (pair, v) in q
        .as_chunks_mut::<2>()
        .0
        .iter_mut()
        .zip(qs.as_chunks::<32>().0)
    {
        let v = load_u8(v);
        pair[0] = _mm256_and_si256(v, low4);
        pair[1] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low4);
    }
    if let Some(qh) = qh {
        let qh = load_u8(qh);
        let sixteen = _mm256_set1_epi8(0x10);
        // The fifth bit of group g is bit g of each qh byte.
        for (g, q) in q.iter_mut().enumerate() {
            let bit = _mm256_set1_epi8((1u8 << g) as i8);
            let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
            *q = _mm256_or_si256(*q, _mm256_and_si256(set, sixteen));
        }
    }
    q
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_q5_k(b: &BlockQ5K) -> Kq8 {
    let mut u = k4_unpack(b.d, b.dmin, &b.scales, &b.qs);
    u.q = k4_unpack_quants(&b.qs, Some(&b.qh));
    u
}

/// The 8 groups' unsigned quants (0..64) of a Q6_K super-block: two halves of 128 weights,
/// each 64 bytes of low nibbles and 32 bytes of high bit pairs.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q6k_quants(b: &BlockQ6K) -> [__m256i; 8] {
    let ql = b.ql.as_chunks::<32>().0;
    let qh = b.qh.as_chunks::<32>().0;
    let mut q = [_mm256_setzero_si256(); 8];
    for (g, q) in q.iter_mut().enumerate() {
        let (h, k) = (g / 4, g % 4);
        *q = q6k_group(load_u8(&ql[2 * h + k % 2]), load_u8(&qh[h]), k);
    }
    q
}

/// Adds a super-block's group dots `r` (lane g: group g) and its min term to `acc`, given the
/// activation scales `xd` and sums of its 8 groups.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn kquant_apply(acc: Acc, u: &Kq8, r: __m256i, xd: __m256, sums: __m256i) -> Acc {
    let sums = _mm256_cvtepi32_ps(sums);
    Acc {
        dot: fma_scaled(acc.dot, r, _mm256_mul_ps(u.dsc, xd)),
        min: _mm256_fnmadd_ps(_mm256_mul_ps(u.dm, xd), sums, acc.min),
    }
}

/// A Q6_K super-block, unpacked: each group's unsigned 6-bit quants (q + 32) and its pair of
/// sub-block scales spread over i16 lanes (lanes 0..8 and 8..16).
#[derive(Clone, Copy)]
pub(super) struct Q6k8 {
    pub(super) q: [__m256i; 8],
    pub(super) sc: [__m256i; 8],
    pub(super) d: __m256,
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn unpack_q6_k(b: &BlockQ6K) -> Q6k8 {
    let q = q6k_quants(b);
    // SAFETY: `scales` is 16 readable bytes and the load has no alignment requirement.
    let sc16 = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(b.scales.as_ptr().cast()) });
    // Group g uses scales 2g (its first 16 weights) and 2g+1: i32 lane g of sc16 holds that
    // pair; broadcast it, then pick its low i16 for the low 128 bits and its high i16 for the
    // high.
    let pick = _mm256_setr_epi8(
        0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
        2, 3,
    );
    let mut sc = [_mm256_setzero_si256(); 8];
    for (g, sc) in sc.iter_mut().enumerate() {
        let pair = _mm256_permutevar8x32_epi32(sc16, _mm256_set1_epi32(g as i32));
        *sc = _mm256_shuffle_epi8(pair, pick);
    }
    Q6k8 {
        q,
        sc,
        d: _mm256_set1_ps(f16_to_f32(b.d)),
    }
}

/// i32 lanes summing to `sc_lo·Σ(q-32)·x` over the group's first 16 weights plus `sc_hi·…`
/// over its last 16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q6k_dot(q: __m256i, sc: __m256i, x: __m256i) -> __m256i {
    // Per i16 pair: |q·x| ≤ 2·63·127 and |32·x| ≤ 2·32·127, so neither saturates.
    let t = _mm256_sub_epi16(
        _mm256_maddubs_epi16(q, x),
        _mm256_maddubs_epi16(_mm256_set1_epi8(32), x),
    );
    _mm256_madd_epi16(t, sc)
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
