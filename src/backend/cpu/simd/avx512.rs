//! AVX-512 (F, BW, VL) + VNNI kernels.
//!
//! Integer dots use `vpdpbusd` (u8 × i8, four products summed straight into i32: no i16
//! saturation), on 256-bit registers: one 32-element block fills one register exactly, and the
//! EVEX encoding still brings 32 registers and byte masks (the fifth bits of Q5 quants are a
//! mask-register merge). Signed Q8_0 weights are made unsigned by adding 128 and subtracting
//! `128·Σx`, which the activation blocks carry. The loop structure (8 blocks per horizontal
//! reduction, weights unpacked once for up to 4 tokens) is the AVX2 module's, and so are the
//! helpers that pick out a group's scales: 512-bit word permutes of wide loads did that in
//! fewer instructions but ran 10-50% slower per kernel on Zen 4 than AVX2's inserts. (Two
//! blocks per 512-bit register was tried on Zen 4 too: the inserts that pair the blocks ate
//! the gain, and it stayed well behind this grouped loop.)

use std::arch::x86_64::*;

use marco_quantize::act::BlockQ8x32;
use marco_quantize::blocks::{
    Block, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0,
};
use marco_quantize::dot::vec_dot_q8;
use marco_quantize::GgmlType;

use super::avx2::{
    self, fma_scaled, k4_unpack, kquant_apply, legacy8, legacy_apply, legacy_nibbles,
    legacy_nibbles_unmasked, legacy_scales, load_i32x8, load_i8, load_ps, load_u8, q6k_dot,
    reduce8, totals, unpack_q6_k, x_group, zero_acc, Acc, Kq8,
};
use super::row_blocks;
use super::x86::{in_quads, LegacyBlock};

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
    match ty {
        GgmlType::F32 => dot_float::<64, 256>(ty, w, x, |p| {
            // SAFETY: `p` is 64 readable bytes and the load has no alignment requirement.
            unsafe { _mm512_loadu_ps(p.as_ptr().cast()) }
        }),
        GgmlType::F16 => dot_float::<32, 128>(ty, w, x, |p| _mm512_cvtph_ps(load_u8(p))),
        GgmlType::BF16 => dot_float::<32, 128>(ty, w, x, |p| {
            // bf16 is the top half of an f32: widen and shift into place (exact).
            let wide = _mm512_cvtepu16_epi32(load_u8(p));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(wide))
        }),
        _ => avx2::dot_f32(ty, w, x),
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load_ps16(p: &[f32; 16]) -> __m512 {
    // SAFETY: `p` is 16 readable floats and the load has no alignment requirement.
    unsafe { _mm512_loadu_ps(p.as_ptr()) }
}

/// Sum of four accumulators' lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn hsum4(acc: [__m512; 4]) -> f32 {
    let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(s)
}

/// Dot product of float weights, 16 elements of `B16` bytes per load, 64 per iteration; the
/// last `len % 16` go to the AVX2 kernel.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_float<const B16: usize, const B64: usize>(
    ty: GgmlType,
    w: &[u8],
    x: &[f32],
    load16: impl Fn(&[u8; B16]) -> __m512,
) -> f32 {
    let esize = B16 / 16;
    let n = (w.len() / esize).min(x.len());
    let (w64, w_rest) = w[..n * esize].as_chunks::<B64>();
    let (x64, x_rest) = x[..n].as_chunks::<64>();
    let mut acc = [_mm512_setzero_ps(); 4];
    for (cw, cx) in w64.iter().zip(x64) {
        let (cw, cx) = (cw.as_chunks::<B16>().0, cx.as_chunks::<16>().0);
        for (i, acc) in acc.iter_mut().enumerate() {
            *acc = _mm512_fmadd_ps(load16(&cw[i]), load_ps16(&cx[i]), *acc);
        }
    }
    let (w16, w_tail) = w_rest.as_chunks::<B16>();
    let (x16, x_tail) = x_rest.as_chunks::<16>();
    for (cw, cx) in w16.iter().zip(x16) {
        acc[0] = _mm512_fmadd_ps(load16(cw), load_ps16(cx), acc[0]);
    }
    hsum4(acc) + avx2::dot_f32(ty, w_tail, x_tail)
}

/// The dot products of one weight row with `T` token rows, or `None` for types without a
/// kernel here.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q8_rows<const T: usize>(ty: GgmlType, w: &[u8], xs: [&[BlockQ8x32]; T]) -> Option<[f32; T]> {
    let n = xs.iter().map(|x| x.len()).min().unwrap_or(0);
    let nib = |qs: &[u8; 16]| legacy_nibbles(qs);
    // w + 128 is w with its top bit flipped; the -128·Σx comes back through the offset.
    let flip = _mm256_set1_epi8(i8::MIN);
    Some(match ty {
        GgmlType::Q4_0 => {
            legacy::<BlockQ4_0, T, 8, false, false>(row_blocks(w, n, 1), xs, |b| nib(&b.qs))
        }
        GgmlType::Q4_1 => {
            legacy::<BlockQ4_1, T, 0, true, false>(row_blocks(w, n, 1), xs, |b| nib(&b.qs))
        }
        GgmlType::Q5_0 => legacy::<BlockQ5_0, T, 16, false, false>(row_blocks(w, n, 1), xs, |b| {
            legacy_5bit(&b.qs, b.qh)
        }),
        GgmlType::Q5_1 => legacy::<BlockQ5_1, T, 0, true, false>(row_blocks(w, n, 1), xs, |b| {
            legacy_5bit(&b.qs, b.qh)
        }),
        GgmlType::Q8_0 => legacy::<BlockQ8_0, T, 128, false, false>(row_blocks(w, n, 1), xs, |b| {
            _mm256_xor_si256(load_i8(&b.qs), flip)
        }),
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

x86_block_loops!(
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    dot_u8_i8
);

/// Nibbles plus fifth bits (bit j of `qh` → +16 on weight j), merged under a byte mask.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn legacy_5bit(qs: &[u8; 16], qh: [u8; 4]) -> __m256i {
    let hb = _mm256_maskz_mov_epi8(u32::from_le_bytes(qh), _mm256_set1_epi8(0x10));
    // (nibbles & 0x0F) | hb in one ternary-logic op.
    let nib = legacy_nibbles_unmasked(qs);
    _mm256_ternarylogic_epi32::<0xEA>(nib, _mm256_set1_epi8(0x0F), hb)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn unpack_q5_k(b: &BlockQ5K) -> Kq8 {
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

// ---- tiles: several weight rows × several tokens ----

/// Weight rows per tile.
const TILE_R: usize = 4;
/// Tokens per tile (Q6_K takes them four at a time).
const TILE_T: usize = 8;

/// `out[t * out_stride + r] = dot(row r, token t)` for `n_rows` rows of `row_bytes` bytes
/// (consecutive in `w`) and `n_tokens` tokens (see `Kernels::dot_q8_tile`, which checked the
/// sizes): whole 4 × 8 tiles where the type has a tile kernel, the rest row by row.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn dot_q8_tile(
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    n_rows: usize,
    x: &[BlockQ8x32],
    nb: usize,
    stride: usize,
    n_tokens: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let row = |r: usize| &w[r * row_bytes..(r + 1) * row_bytes];
    let tok = |t: usize| &x[t * stride..t * stride + nb];
    // Row by row (four tokens at a time) over rows `rows` and tokens `t0..t1`.
    let by_rows = |out: &mut [f32], rows: std::ops::Range<usize>, t0: usize, t1: usize| {
        let mut buf = [0.0f32; 16];
        for r in rows {
            let mut t = t0;
            while t < t1 {
                let n = (t1 - t).min(16);
                dot_q8_multi(ty, row(r), &x[t * stride..], nb, stride, &mut buf[..n]);
                for (i, &d) in buf[..n].iter().enumerate() {
                    out[(t + i) * out_stride + r] = d;
                }
                t += n;
            }
        }
    };
    let (r4, t4) = (n_rows / TILE_R * TILE_R, n_tokens / TILE_T * TILE_T);
    for r in (0..r4).step_by(TILE_R) {
        for t in (0..t4).step_by(TILE_T) {
            let rows = std::array::from_fn(|i| row(r + i));
            let toks = std::array::from_fn(|i| tok(t + i));
            match q8_tile::<TILE_R, TILE_T>(ty, rows, toks) {
                Some(res) => {
                    for (i, res_r) in res.iter().enumerate() {
                        for (j, &d) in res_r.iter().enumerate() {
                            out[(t + j) * out_stride + r + i] = d;
                        }
                    }
                }
                None => by_rows(out, r..r + TILE_R, t, t + TILE_T),
            }
        }
        by_rows(out, r..r + TILE_R, t4, n_tokens);
    }
    by_rows(out, r4..n_rows, 0, n_tokens);
}

/// The dot products of `R` weight rows with `T` token rows (`[row][token]`), or `None` for
/// types (or rows shorter than 8 blocks) without a tile kernel.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q8_tile<const R: usize, const T: usize>(
    ty: GgmlType,
    w: [&[u8]; R],
    xs: [&[BlockQ8x32]; T],
) -> Option<[[f32; T]; R]> {
    let n = xs.iter().map(|x| x.len()).min().unwrap_or(0);
    let flip = _mm256_set1_epi8(i8::MIN);
    Some(match ty {
        GgmlType::Q4_0 => {
            legacy_tile::<BlockQ4_0, R, T, 8, false>(rows(w, n, 1), xs, |b| legacy_nibbles(&b.qs))?
        }
        GgmlType::Q4_1 => {
            legacy_tile::<BlockQ4_1, R, T, 0, true>(rows(w, n, 1), xs, |b| legacy_nibbles(&b.qs))?
        }
        GgmlType::Q5_0 => legacy_tile::<BlockQ5_0, R, T, 16, false>(rows(w, n, 1), xs, |b| {
            legacy_5bit(&b.qs, b.qh)
        })?,
        GgmlType::Q5_1 => legacy_tile::<BlockQ5_1, R, T, 0, true>(rows(w, n, 1), xs, |b| {
            legacy_5bit(&b.qs, b.qh)
        })?,
        GgmlType::Q8_0 => legacy_tile::<BlockQ8_0, R, T, 128, false>(rows(w, n, 1), xs, |b| {
            // Left to itself, LLVM rebuilt half the blocks' quants from scalar loads here
            // (at half the speed); an opaque pointer keeps it to one vector load.
            let p = std::hint::black_box(b.qs.as_ptr());
            // SAFETY: `p` points to the block's 32 quants; the load is unaligned.
            _mm256_xor_si256(unsafe { _mm256_loadu_si256(p.cast()) }, flip)
        })?,
        GgmlType::Q4_K => kquant_tile::<BlockQ4K, R, T>(rows(w, n, 8), xs, |b| {
            k4_unpack(b.d, b.dmin, &b.scales, &b.qs)
        }),
        GgmlType::Q5_K => kquant_tile::<BlockQ5K, R, T>(rows(w, n, 8), xs, |b| unpack_q5_k(b)),
        GgmlType::Q6_K => {
            // Four tokens at a time: its per-token work is larger (measured faster).
            let w = rows(w, n, 8);
            let mut out = [[0.0; T]; R];
            for k in (0..T).step_by(4).filter(|k| k + 4 <= T) {
                let d = q6_k_tile::<R, 4>(w, std::array::from_fn(|i| xs[k + i]));
                for (o, d) in out.iter_mut().zip(d) {
                    o[k..k + 4].copy_from_slice(&d);
                }
            }
            for k in T / 4 * 4..T {
                let d = q6_k_tile::<R, 1>(w, [xs[k]]);
                for (o, d) in out.iter_mut().zip(d) {
                    o[k] = d[0];
                }
            }
            out
        }
        _ => return None,
    })
}

/// Each row's whole blocks that have activations (see `row_blocks`), all cut to the same
/// length.
#[inline(always)]
fn rows<B: Block, const R: usize>(w: [&[u8]; R], x_blocks: usize, per: usize) -> [&[B]; R] {
    let r = w.map(|w| row_blocks::<B>(w, x_blocks, per));
    let n = r.iter().map(|b| b.len()).min().unwrap_or(0);
    r.map(|b| &b[..n])
}

/// `[[0.0; T]; R]` of horizontal sums of the accumulators.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn tile_totals<const R: usize, const T: usize>(acc: &[[__m256; T]; R]) -> [[f32; T]; R] {
    let mut out = [[0.0; T]; R];
    for (o, a) in out.iter_mut().zip(acc) {
        for (o, &a) in o.iter_mut().zip(a) {
            *o = avx2::hsum(a);
        }
    }
    out
}

/// The legacy tile loop: groups of 8 blocks (a last partial group is the row's last 8 blocks
/// with the ones already counted masked off). Per group, each token's scales and
/// offset-times-sums are worked out once for all `R` rows and each row's quants are unpacked
/// once for all `T` tokens. `None` for rows of fewer than 8 blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn legacy_tile<B: LegacyBlock, const R: usize, const T: usize, const OFF: i32, const MIN: bool>(
    w: [&[B]; R],
    xs: [&[BlockQ8x32]; T],
    quant: impl Fn(&B) -> __m256i,
) -> Option<[[f32; T]; R]> {
    let nb = w[0].len();
    if nb < 8 || xs.iter().any(|x| x.len() < nb) {
        return None;
    }
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    // A last partial group is the row's last 8 blocks, the ones already counted dropped; when
    // that is half a group (rows of 896), their dots are not even computed.
    let rem = nb % 8;
    let n_groups = if rem == 4 { nb / 8 } else { nb.div_ceil(8) };
    for g in 0..n_groups {
        let (start, skip) = if 8 * g + 8 <= nb {
            (8 * g, 0)
        } else {
            (nb - 8, 8 - rem)
        };
        // One call site per variant, so each inlines.
        legacy_tile_group::<B, R, T, OFF, MIN, 0>(&mut acc, &w, &xs, start, skip, &quant)?;
    }
    if rem == 4 {
        legacy_tile_group::<B, R, T, OFF, MIN, 4>(&mut acc, &w, &xs, nb - 8, 4, &quant)?;
    }
    Some(tile_totals(&acc))
}

/// One group of 8 blocks from block `start` of a legacy tile; the first `skip` blocks' lanes
/// are dropped (their activation scales zeroed), and the first `SKIP ≤ skip` not even
/// computed.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn legacy_tile_group<
    B: LegacyBlock,
    const R: usize,
    const T: usize,
    const OFF: i32,
    const MIN: bool,
    const SKIP: usize,
>(
    acc: &mut [[__m256; T]; R],
    w: &[&[B]; R],
    xs: &[&[BlockQ8x32]; T],
    start: usize,
    skip: usize,
    quant: &impl Fn(&B) -> __m256i,
) -> Option<()> {
    let keep = _mm256_cmpgt_epi32(
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        _mm256_set1_epi32(skip as i32 - 1),
    );
    let mut xd = [_mm256_setzero_ps(); T];
    let mut xoff = [_mm256_setzero_si256(); T];
    let mut xm = [_mm256_setzero_ps(); T];
    let mut xg = [xs[0].get(start..)?.first_chunk::<8>()?; T];
    for t in 0..T {
        xg[t] = xs[t].get(start..)?.first_chunk::<8>()?;
        let (d, sums) = x_group(xg[t]);
        xd[t] = if skip > 0 {
            _mm256_and_ps(d, _mm256_castsi256_ps(keep))
        } else {
            d
        };
        if OFF != 0 {
            xoff[t] = _mm256_mullo_epi32(sums, _mm256_set1_epi32(OFF));
        }
        if MIN {
            xm[t] = _mm256_mul_ps(xd[t], _mm256_cvtepi32_ps(sums));
        }
    }
    for (acc_r, wr) in acc.iter_mut().zip(w) {
        let wb = wr.get(start..)?.first_chunk::<8>()?;
        let u = legacy_scales(wb, MIN);
        let mut q = [_mm256_setzero_si256(); 8];
        #[allow(clippy::needless_range_loop)] // constant bounds: unrolled, p in registers
        for i in SKIP..8 {
            q[i] = quant(&wb[i]);
        }
        for t in 0..T {
            let mut p = [_mm256_setzero_si256(); 8];
            #[allow(clippy::needless_range_loop)]
            for i in SKIP..8 {
                p[i] = dot_u8_i8(q[i], load_i8(&xg[t][i].qs));
            }
            let r = reduce8(&p);
            let r = if OFF != 0 {
                _mm256_sub_epi32(r, xoff[t])
            } else {
                r
            };
            let mut a = fma_scaled(acc_r[t], r, _mm256_mul_ps(u.d, xd[t]));
            if MIN {
                a = _mm256_fmadd_ps(u.m, xm[t], a);
            }
            acc_r[t] = a;
        }
    }
    Some(())
}

/// The Q4_K/Q5_K tile loop: per super-block, each token's scales and sums once for all rows,
/// each row unpacked once for all tokens.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn kquant_tile<B: Block, const R: usize, const T: usize>(
    w: [&[B]; R],
    xs: [&[BlockQ8x32]; T],
    unpack: impl Fn(&B) -> Kq8,
) -> [[f32; T]; R] {
    let x8 = xs.map(|x| x.as_chunks::<8>().0);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for i in 0..w[0].len() {
        let mut xd = [_mm256_setzero_ps(); T];
        let mut xm = [_mm256_setzero_ps(); T];
        for t in 0..T {
            let (d, sums) = x_group(&x8[t][i]);
            xd[t] = d;
            xm[t] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(sums));
        }
        for (acc_r, wr) in acc.iter_mut().zip(&w) {
            let u = unpack(&wr[i]);
            for t in 0..T {
                let x = &x8[t][i];
                let mut p = [_mm256_setzero_si256(); 8];
                for (p, (&q, x)) in p.iter_mut().zip(u.q.iter().zip(x)) {
                    *p = dot_u8_i8(q, load_i8(&x.qs));
                }
                let a = fma_scaled(acc_r[t], reduce8(&p), _mm256_mul_ps(u.dsc, xd[t]));
                acc_r[t] = _mm256_fnmadd_ps(u.dm, xm[t], a);
            }
        }
    }
    tile_totals(&acc)
}

/// The Q6_K tile loop: per super-block, each token's scales and `32·x` pair sums once for all
/// rows, each row unpacked once for all tokens.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q6_k_tile<const R: usize, const T: usize>(
    w: [&[BlockQ6K]; R],
    xs: [&[BlockQ8x32]; T],
) -> [[f32; T]; R] {
    let x8 = xs.map(|x| x.as_chunks::<8>().0);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let c32 = _mm256_set1_epi8(32);
    for i in 0..w[0].len() {
        let mut xd = [_mm256_setzero_ps(); T];
        let mut x32 = [[_mm256_setzero_si256(); 8]; T];
        for t in 0..T {
            let x = &x8[t][i];
            xd[t] = x_group(x).0;
            for (g, v) in x32[t].iter_mut().enumerate() {
                *v = _mm256_maddubs_epi16(c32, load_i8(&x[g].qs));
            }
        }
        for (acc_r, wr) in acc.iter_mut().zip(&w) {
            let u = unpack_q6_k(&wr[i]);
            for t in 0..T {
                let x = &x8[t][i];
                let mut p = [_mm256_setzero_si256(); 8];
                for (g, p) in p.iter_mut().enumerate() {
                    // Per i16 pair: |q·x| ≤ 2·63·127 and |32·x| ≤ 2·32·127: no saturation.
                    let d = _mm256_sub_epi16(
                        _mm256_maddubs_epi16(u.q[g], load_i8(&x[g].qs)),
                        x32[t][g],
                    );
                    *p = _mm256_madd_epi16(d, u.sc[g]);
                }
                acc_r[t] = fma_scaled(acc_r[t], reduce8(&p), _mm256_mul_ps(u.d, xd[t]));
            }
        }
    }
    tile_totals(&acc)
}
