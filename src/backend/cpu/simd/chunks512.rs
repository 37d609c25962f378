//! AVX-512 VNNI decode kernels over four-block chunks (`marco_quantize::chunks`): one weight
//! row against one token.
//!
//! Per chunk (128 weights): two `vpdpbusd` over the low and high halves leave block `b`'s
//! integer sum spread over the four i32 lanes of 128-bit lane `b`; one conversion and one FMA
//! with the four `d_w·d_x` broadcast per lane add all four blocks. Nothing is reduced
//! horizontally until the row ends. The quant offsets (`w = d·(q - o)`) come out of the
//! integer sums exactly: each i32 lane starts at `-o·Σx` over the 8 activations it meets
//! (`ActChunks::neg_sums`, shifted), so it ends at its true partial dot.

use std::arch::x86_64::*;

use marco_quantize::chunks::{
    as_chunks, ActChunks, Chunk, ChunkQ4K, ChunkQ4_0, ChunkQ5_0, ChunkQ8_0,
};

use super::k4_scales_mins;
use marco_quantize::GgmlType;

/// `dot(w, x)` for a chunked row of type `ty` (see `Kernels::dot_chunks`); `None` for types
/// without chunks or a row longer than the activations.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn dot_chunks(ty: GgmlType, w: &[u8], x: &ActChunks) -> Option<f32> {
    Some(match ty {
        GgmlType::Q4_0 => row::<ChunkQ4_0>(as_chunks(w)?, x, |c| nibbles(&c.qs))?,
        GgmlType::Q5_0 => row::<ChunkQ5_0>(as_chunks(w)?, x, |c| {
            let (lo, hi) = nibbles(&c.qs);
            // The fifth bits are byte masks as stored: +16 where set.
            let s = _mm512_set1_epi8(16);
            let (klo, khi) = (u64::from_le_bytes(c.qh[0]), u64::from_le_bytes(c.qh[1]));
            (
                _mm512_mask_add_epi8(lo, klo, lo, s),
                _mm512_mask_add_epi8(hi, khi, hi, s),
            )
        })?,
        GgmlType::Q8_0 => {
            row::<ChunkQ8_0>(as_chunks(w)?, x, |c| (load512(&c.qs[0]), load512(&c.qs[1])))?
        }
        GgmlType::Q4_K => q4_k(as_chunks(w)?, x)?,
        _ => return None,
    })
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load512<T>(p: &[T; 64]) -> __m512i {
    // SAFETY: `p` is 64 readable bytes (T is a byte type) and the load is unaligned.
    unsafe { _mm512_loadu_si512(p.as_ptr().cast()) }
}

/// The low and the high nibbles of 64 bytes (a chunk's low and high halves).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn nibbles(qs: &[u8; 64]) -> (__m512i, __m512i) {
    let q = load512(qs);
    let low4 = _mm512_set1_epi8(0x0F);
    (
        _mm512_and_si512(q, low4),
        _mm512_and_si512(_mm512_srli_epi16::<4>(q), low4),
    )
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load4(p: &[f32; 4]) -> __m128 {
    // SAFETY: `p` is 4 readable floats and the load is unaligned.
    unsafe { _mm_loadu_ps(p.as_ptr()) }
}

/// The four f16 scales of a chunk as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn scales4(d: &[marco_quantize::blocks::LeF16; 4]) -> __m128 {
    let bits = u64::from_le_bytes(std::array::from_fn(|i| d[i / 2].0[i % 2]));
    _mm_cvtph_ps(_mm_cvtsi64_si128(bits as i64))
}

/// Trait-free access to a chunk's scales (the chunk types share the field name).
trait Scales {
    fn d(&self) -> &[marco_quantize::blocks::LeF16; 4];
}
macro_rules! scales {
    ($($c:ty),*) => {$(impl Scales for $c {
        #[inline(always)]
        fn d(&self) -> &[marco_quantize::blocks::LeF16; 4] {
            &self.d
        }
    })*};
}
scales!(ChunkQ4_0, ChunkQ5_0, ChunkQ8_0);

/// The row loop: `quant` gives a chunk's low and high halves as unsigned bytes. Even and
/// odd chunks go to separate accumulators, so consecutive FMAs do not wait on each other.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn row<C: Chunk + Scales>(
    w: &[C],
    x: &ActChunks,
    quant: impl Fn(&C) -> (__m512i, __m512i),
) -> Option<f32> {
    let n = w.len();
    let xq = x.q.get(..n)?;
    let xd = x.d.get(..4 * n)?.as_chunks::<4>().0;
    let xs = x.neg_sums.get(..n)?;
    let shift = _mm_cvtsi32_si128(C::OFFSET.trailing_zeros() as i32);
    let (pairs, last) = w.as_chunks::<2>();
    let (mut even, mut odd) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for (i, [c0, c1]) in pairs.iter().enumerate() {
        let j = 2 * i;
        even = chunk(c0, &xq[j], &xd[j], &xs[j], shift, &quant, even);
        odd = chunk(c1, &xq[j + 1], &xd[j + 1], &xs[j + 1], shift, &quant, odd);
    }
    if let Some(c) = last.first() {
        let j = n - 1;
        even = chunk(c, &xq[j], &xd[j], &xs[j], shift, &quant, even);
    }
    Some(_mm512_reduce_add_ps(_mm512_add_ps(even, odd)))
}

/// One chunk added to the accumulator (the offsets cancel inside the integer sums).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn chunk<C: Chunk + Scales>(
    c: &C,
    xq: &[[i8; 64]; 2],
    xd: &[f32; 4],
    neg_sums: &[i32; 16],
    shift: __m128i,
    quant: &impl Fn(&C) -> (__m512i, __m512i),
    acc: __m512,
) -> __m512 {
    // Lane b of the scale vector: block b's scale, one per 128-bit lane.
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let (lo, hi) = quant(c);
    // SAFETY: `neg_sums` is 64 readable bytes and the load is unaligned.
    let start = unsafe { _mm512_loadu_si512(neg_sums.as_ptr().cast()) };
    let s = _mm512_dpbusd_epi32(_mm512_sll_epi32(start, shift), lo, load512(&xq[0]));
    let s = _mm512_dpbusd_epi32(s, hi, load512(&xq[1]));
    let dw = scales4(c.d());
    let scale = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_mul_ps(dw, load4(xd))));
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc)
}

/// `Q4_K` rows: each super-block is two chunks of four groups; a group's scale
/// `d·sc·d_x` goes to its lane as in [`chunk`], and its min term `dmin·m·d_x·Σx` into an
/// 8-wide accumulator subtracted at the end. Scales and mins are worked out for all 8 groups
/// at once.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4_k(w: &[ChunkQ4K], x: &ActChunks) -> Option<f32> {
    let n = w.len();
    let xq = x.q.get(..2 * n)?.as_chunks::<2>().0;
    let xd = x.d.get(..8 * n)?.as_chunks::<8>().0;
    let xs = x.dsum.get(..8 * n)?.as_chunks::<8>().0;
    // Lane b of half h: group 4h + b.
    let spread = [
        _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
        _mm512_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7),
    ];
    let (mut acc, mut mins) = ([_mm512_setzero_ps(); 2], _mm256_setzero_ps());
    for (((c, xq), xd), xs) in w.iter().zip(xq).zip(xd).zip(xs) {
        let (sc, m) = k4_scales_mins(&c.scales);
        let (d, dmin) = scales2(c.d, c.dmin);
        let scale = _mm256_mul_ps(_mm256_mul_ps(bytes8(sc), d), load8(xd));
        let scale = _mm512_castps256_ps512(scale);
        mins = _mm256_fmadd_ps(_mm256_mul_ps(bytes8(m), dmin), load8(xs), mins);
        for (h, acc) in acc.iter_mut().enumerate() {
            let (lo, hi) = nibbles(&c.qs[h]);
            let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, load512(&xq[h][0]));
            let s = _mm512_dpbusd_epi32(s, hi, load512(&xq[h][1]));
            let lanes = _mm512_permutexvar_ps(spread[h], scale);
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), lanes, *acc);
        }
    }
    let mins = _mm_add_ps(
        _mm256_castps256_ps128(mins),
        _mm256_extractf128_ps::<1>(mins),
    );
    let mins = _mm_add_ps(mins, _mm_movehl_ps(mins, mins));
    let mins = _mm_add_ss(mins, _mm_movehdup_ps(mins));
    Some(_mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1])) - _mm_cvtss_f32(mins))
}

/// The 8 bytes of `v` as 8 f32 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn bytes8(v: u64) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v as i64)))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load8(p: &[f32; 8]) -> __m256 {
    // SAFETY: `p` is 8 readable floats and the load is unaligned.
    unsafe { _mm256_loadu_ps(p.as_ptr()) }
}

/// Two f16 values, each broadcast to 8 f32 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn scales2(a: marco_quantize::blocks::LeF16, b: marco_quantize::blocks::LeF16) -> (__m256, __m256) {
    let bits = a.bits() as u32 | (b.bits() as u32) << 16;
    let both = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
    (
        _mm256_broadcastss_ps(both),
        _mm256_broadcastss_ps(_mm_movehdup_ps(both)),
    )
}
