//! AVX-512 VNNI matrix-matrix product for prompts: 8 weight rows × 16 tokens per tile, the
//! tokens in the vector lanes.
//!
//! Why a second prompt kernel: the row-dot tiles (`avx512::dot_q8_tile`) reduce every block's
//! products horizontally, and those reductions, not the multiplies, bound them. Here each
//! `vpdpbusd` multiplies 4 weights of one row (broadcast) with the same 4 columns of 16
//! tokens, so a row's sums for 16 tokens build up in one register, with no horizontal work.
//! That needs the activations transposed (once per matmul, [`PackedActs`]) and the weights as
//! plain signed bytes (unpacked once per 8-row tile for all tokens, [`Unpacked`]).
//!
//! `vpdpbusd` multiplies unsigned by signed bytes: the activations go in as `x + 128`
//! (unsigned) and the weights as signed quants, and each sub-block's sum starts at
//! `-128·Σq` (per row, known at unpack time), which cancels the offset exactly. A sub-block
//! (32 weights; 16 for Q6_K, whose scales cover 16) then adds
//! `x_d·(w_d·Σxq + w_m·Σx)` to a row's 16 token sums: `w_m` is the min term of types with one.
//! Integer sums are exact, as in the reference; only the f32 accumulation order differs.

use std::arch::x86_64::*;

use marco_quantize::blocks::{
    as_blocks, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0,
};
use marco_quantize::{GgmlType, QK32};

use crate::backend::cpu::gemm::{sub_len, PackedActs, Unpacked, ROWS, TOKENS};

use super::avx2::{k4_unpack, legacy_nibbles, unpack_q6_k, Kq8};
use super::avx512::{legacy_5bit, unpack_q5_k};

/// Sums of the four 8-byte quarters of 32 unsigned bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn quarter_sums(u: __m256i) -> [i32; 4] {
    let s = _mm256_sad_epu8(u, _mm256_setzero_si256());
    let mut out = [0i64; 4];
    // SAFETY: `out` is 32 writable bytes; the store has no alignment requirement.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), s) };
    out.map(|v| v as i32)
}

/// Where one weight row's unpacked form goes (its slices of an [`Unpacked`]): signed quants,
/// and per sub-block the scale, the min coefficient and the starting sum `-128·Σq`.
struct RowOut<'a> {
    q: &'a mut [i8],
    d: &'a mut [f32],
    m: &'a mut [f32],
    corr: &'a mut [i32],
}

impl RowOut<'_> {
    /// Stores the 32 quants `qu - off` of sub-block `block` with scale `d` and min `m`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    fn put32(&mut self, block: usize, qu: __m256i, off: i32, d: f32, m: f32) {
        // Bytes wrap: `off` = 128 (Q8_0) subtracts as -128 would, the same byte.
        let q = _mm256_sub_epi8(qu, _mm256_set1_epi8(off as i8));
        let dst = &mut self.q[32 * block..32 * block + 32];
        // SAFETY: `dst` is 32 writable bytes; the store has no alignment requirement.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), q) };
        let s = quarter_sums(qu);
        let sum = s.iter().sum::<i32>() - 32 * off;
        self.d[block] = d;
        self.m[block] = m;
        self.corr[block] = -128 * sum;
    }

    /// The same for Q6_K: two sub-blocks of 16 (`2·block`, `2·block + 1`), no min.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    fn put16x2(&mut self, block: usize, qu: __m256i, off: i32, d: [f32; 2]) {
        let q = _mm256_sub_epi8(qu, _mm256_set1_epi8(off as i8));
        let dst = &mut self.q[32 * block..32 * block + 32];
        // SAFETY: `dst` is 32 writable bytes; the store has no alignment requirement.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), q) };
        let s = quarter_sums(qu);
        for h in 0..2 {
            let sum = s[2 * h] + s[2 * h + 1] - 16 * off;
            self.d[2 * block + h] = d[h];
            self.m[2 * block + h] = 0.0;
            self.corr[2 * block + h] = -128 * sum;
        }
    }
}

/// Unpacks `row` (`cols` weights of type `ty`) into `out`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn unpack_row(ty: GgmlType, row: &[u8], out: &mut RowOut) {
    fn blocks<B: marco_quantize::blocks::Block>(row: &[u8]) -> &[B] {
        as_blocks::<B>(row).unwrap_or(&[])
    }
    match ty {
        GgmlType::Q4_0 => {
            for (i, b) in blocks::<BlockQ4_0>(row).iter().enumerate() {
                out.put32(i, legacy_nibbles(&b.qs), 8, b.d.to_f32(), 0.0);
            }
        }
        GgmlType::Q4_1 => {
            for (i, b) in blocks::<BlockQ4_1>(row).iter().enumerate() {
                out.put32(i, legacy_nibbles(&b.qs), 0, b.d.to_f32(), b.m.to_f32());
            }
        }
        GgmlType::Q5_0 => {
            for (i, b) in blocks::<BlockQ5_0>(row).iter().enumerate() {
                out.put32(i, legacy_5bit(&b.qs, b.qh), 16, b.d.to_f32(), 0.0);
            }
        }
        GgmlType::Q5_1 => {
            for (i, b) in blocks::<BlockQ5_1>(row).iter().enumerate() {
                out.put32(i, legacy_5bit(&b.qs, b.qh), 0, b.d.to_f32(), b.m.to_f32());
            }
        }
        GgmlType::Q8_0 => {
            for (i, b) in blocks::<BlockQ8_0>(row).iter().enumerate() {
                // SAFETY: `qs` is 32 readable bytes; the load has no alignment requirement.
                let q = unsafe { _mm256_loadu_si256(b.qs.as_ptr().cast()) };
                // As unsigned (+128) for the sums, then back.
                let qu = _mm256_xor_si256(q, _mm256_set1_epi8(i8::MIN));
                out.put32(i, qu, 128, b.d.to_f32(), 0.0);
            }
        }
        GgmlType::Q4_K => {
            for (i, b) in blocks::<BlockQ4K>(row).iter().enumerate() {
                put_k(out, i, &k4_unpack(b.d, b.dmin, &b.scales, &b.qs));
            }
        }
        GgmlType::Q5_K => {
            for (i, b) in blocks::<BlockQ5K>(row).iter().enumerate() {
                put_k(out, i, &unpack_q5_k(b));
            }
        }
        GgmlType::Q6_K => {
            for (i, b) in blocks::<BlockQ6K>(row).iter().enumerate() {
                let u = unpack_q6_k(b);
                let d = b.d.to_f32();
                for (g, &qu) in u.q.iter().enumerate() {
                    let sc = [b.scales[2 * g], b.scales[2 * g + 1]].map(|s| d * f32::from(s));
                    out.put16x2(8 * i + g, qu, 32, sc);
                }
            }
        }
        _ => {}
    }
}

/// A Q4_K/Q5_K super-block's 8 groups.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn put_k(out: &mut RowOut, i: usize, u: &Kq8) {
    let (mut dsc, mut dm) = ([0f32; 8], [0f32; 8]);
    // SAFETY: both arrays are 32 writable bytes; the stores have no alignment requirement.
    unsafe {
        _mm256_storeu_ps(dsc.as_mut_ptr(), u.dsc);
        _mm256_storeu_ps(dm.as_mut_ptr(), u.dm);
    }
    for g in 0..8 {
        out.put32(8 * i + g, u.q[g], 0, dsc[g], -dm[g]);
    }
}

/// `emit(group, sums)` for each group of 16 tokens, `sums[r][t]` the dot product of weight
/// row `r` (of `rows`, each `acts.blocks()` activation blocks long and of type `ty`, which
/// [`supports`]) with token `16·group + t`. `scratch` is reused between calls.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn gemm_tile(
    ty: GgmlType,
    rows: [&[u8]; ROWS],
    acts: &PackedActs,
    scratch: &mut Unpacked,
    mut emit: impl FnMut(usize, &[[f32; TOKENS]; ROWS]),
) {
    let cols = acts.nb * QK32;
    let l = sub_len(ty);
    let nsub = cols / l;
    scratch.reset(cols, nsub);
    let Unpacked { q, d, m, corr, .. } = scratch;
    let chunks = q
        .chunks_exact_mut(cols)
        .zip(d.chunks_exact_mut(nsub))
        .zip(m.chunks_exact_mut(nsub).zip(corr.chunks_exact_mut(nsub)));
    for (row, ((q, d), (m, corr))) in rows.iter().zip(chunks) {
        // A row shorter than the activations (never, for a checked matmul) leaves zeros.
        q.fill(0);
        corr.fill(0);
        d.fill(0.0);
        m.fill(0.0);
        unpack_row(ty, row, &mut RowOut { q, d, m, corr });
    }
    let has_min = matches!(
        ty,
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K
    );
    let groups = acts.n_tokens.div_ceil(TOKENS);
    // What `tile`'s unchecked reads rely on.
    assert!(
        acts.q.len() >= groups * acts.nb * 8 * TOKENS
            && acts.d.len() >= groups * acts.nb * TOKENS
            && acts.s.len() >= groups * acts.nb * TOKENS
            && scratch.q.len() >= ROWS * cols
            && scratch.corr.len() >= ROWS * nsub
            && nsub * l == cols,
        "gemm_tile: packed activations or scratch do not match"
    );
    let mut sums = [[0f32; TOKENS]; ROWS];
    for g in 0..groups {
        let acc = match (l, has_min) {
            (16, _) => tile::<16, false>(scratch, acts, g),
            (_, false) => tile::<32, false>(scratch, acts, g),
            (_, true) => tile::<32, true>(scratch, acts, g),
        };
        for (s, a) in sums.iter_mut().zip(acc) {
            // SAFETY: `s` is 16 writable f32; the store has no alignment requirement.
            unsafe { _mm512_storeu_ps(s.as_mut_ptr(), a) };
        }
        emit(g, &sums);
    }
}

/// The 8 rows' sums for token group `g`, one register (16 tokens) per row.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn tile<const L: usize, const MIN: bool>(w: &Unpacked, a: &PackedActs, g: usize) -> [__m512; ROWS] {
    let (cols, nsub, nb) = (w.cols, w.nsub, a.nb);
    debug_assert!(w.q.len() >= ROWS * cols && a.q.len() >= (g + 1) * nb * 8 * TOKENS);
    let mut acc = [_mm512_setzero_ps(); ROWS];
    let wq = w.q.as_ptr();
    for s in 0..nsub {
        let gb = g * nb + s * L / QK32;
        let quad0 = (s * L % QK32) / 4;
        // SAFETY (all pointer reads below): sub-block `s` lies in each row's `cols` bytes
        // (`nsub · L = cols`), and group `g`, block `gb` of the packed activations exists
        // (`g` < groups, `gb` < groups · nb); both checked above in debug builds and
        // guaranteed by `gemm_tile`'s sizing.
        let xq = unsafe { a.q.as_ptr().add((gb * 8 + quad0) * TOKENS) };
        let mut ai: [__m512i; ROWS] =
            std::array::from_fn(|r| _mm512_set1_epi32(w.corr[r * nsub + s]));
        for j in 0..L / 4 {
            let x = unsafe { _mm512_loadu_si512(xq.add(j * TOKENS).cast()) };
            for (r, ai) in ai.iter_mut().enumerate() {
                let wv = unsafe {
                    wq.add(r * cols + s * L + 4 * j)
                        .cast::<i32>()
                        .read_unaligned()
                };
                *ai = _mm512_dpbusd_epi32(*ai, x, _mm512_set1_epi32(wv));
            }
        }
        let xd = unsafe { _mm512_loadu_ps(a.d.as_ptr().add(gb * TOKENS)) };
        for (r, (acc, ai)) in acc.iter_mut().zip(ai).enumerate() {
            let scaled = _mm512_mul_ps(_mm512_cvtepi32_ps(ai), xd);
            *acc = _mm512_fmadd_ps(scaled, _mm512_set1_ps(w.d[r * nsub + s]), *acc);
        }
        if MIN {
            let xs = unsafe { _mm512_loadu_ps(a.s.as_ptr().add(gb * TOKENS)) };
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(xs, _mm512_set1_ps(w.m[r * nsub + s]), *acc);
            }
        }
    }
    acc
}
