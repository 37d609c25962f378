//! AVX-512 VNNI decode kernels over four-block chunks (`marco_quantize::chunks`): weight rows
//! against one token, a group of up to four rows at a time. (`Q6_K` rows, super-blocks in
//! steps, go against `Q8_K` activations in the same steps, in groups as well: [`q6_k`].)
//!
//! Per chunk (128 weights): two `vpdpbusd` over the low and high halves leave block `b`'s
//! integer sum spread over the four i32 lanes of 128-bit lane `b`; one conversion and one FMA
//! with the four `d_w·d_x` broadcast per lane add all four blocks. Nothing is reduced
//! horizontally until the row ends. The quant offsets (`w = d·(q - o)`) come out of the
//! integer sums exactly: each i32 lane starts at `-o·Σx` over the 8 activations it meets
//! (`ActChunks::neg_sums`, shifted), so it ends at its true partial dot.
//!
//! `Q5_0` rows in whole groups of four come as quads instead ([`q5_0_quads`]): one i32 lane
//! per row and block, and the scale work done once for the four rows.
//!
//! Rows come in groups whose chunks alternate (`chunks::pack_rows`, `chunks::group_rows`):
//! each chunk of activations is loaded once for the group's rows, and the weights are one
//! sequential stream. Measured here (AMD EPYC, 2 MiB pages), a `Q5_0` loop of this kind reads
//! memory at ~95% of a plain read loop in groups of four, ~85% in pairs, ~78% one row at a
//! time: loads that hit L1 still hold the core's load queue, so fewer of them per weight byte
//! let it keep more misses in flight.

use std::arch::x86_64::*;

use marco_quantize::chunks::{
    as_chunks, as_quads, group_rows, is_quad_group, ActChunks, Chunk, ChunkQ4K, ChunkQ4_0,
    ChunkQ5_0, ChunkQ8_0, Q8KSteps, QuadQ5_0, StepsQ6K, QUAD_ROWS, ROW_GROUP,
};

use super::avx2::{bytes_to_ps, f16_to_f32, load_ps};
use super::k4_scales_mins;
use marco_quantize::GgmlType;

/// `out[r] = dot(row r, x)` for `out.len()` chunked rows of type `ty` in `w`, starting at a
/// group boundary (see `Kernels::dot_chunks`); the rows after the last whole group are one
/// shorter group. `None` for types without chunks, rows that are not whole chunks, rows
/// longer than the activations, or `Q5_0` quads against activations without their steps.
///
/// Why a call per run of rows rather than per row: most decode rows are short (896 weights
/// of Q5_0 are 616 bytes, ten cache lines), and a call, a type dispatch and a horizontal
/// reduction per row cost a quarter of the speed when streaming from memory. Here the type is
/// matched once, each row leaves its accumulator vector, and 16 of those are reduced
/// together ([`reduce16`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn dot_chunks(ty: GgmlType, w: &[u8], x: &ActChunks, out: &mut [f32]) -> Option<()> {
    if out.is_empty() {
        return Some(());
    }
    if !w.len().is_multiple_of(out.len()) {
        return None;
    }
    let row_bytes = w.len() / out.len();
    match ty {
        GgmlType::Q4_0 => legacy::<ChunkQ4_0>(w, row_bytes, x, out, |c| nibbles(&c.qs)),
        // Whole groups of four rows are quads (`chunks::pack_rows`), shorter ones chunks.
        GgmlType::Q5_0 if group_rows(row_bytes) == QUAD_ROWS => quad_rows(w, row_bytes, x, out),
        GgmlType::Q5_0 => q5_0_chunk_rows(w, row_bytes, x, out),
        GgmlType::Q8_0 => legacy::<ChunkQ8_0>(w, row_bytes, x, out, |c| {
            (load512(&c.qs[0]), load512(&c.qs[1]))
        }),
        GgmlType::Q4_K => rows::<ChunkQ4K>(w, row_bytes, out, |r, n| match n {
            4 => q4_k::<4>(r, x),
            3 => q4_k::<3>(r, x).map(|a| widen(a)),
            2 => q4_k::<2>(r, x).map(|a| widen(a)),
            _ => q4_k::<1>(r, x).map(|a| widen(a)),
        }),
        GgmlType::Q6_K => rows::<StepsQ6K>(w, row_bytes, out, |r, n| {
            let x = x.q8k_steps();
            match n {
                4 => q6_k::<4>(r, x),
                3 => q6_k::<3>(r, x).map(|a| widen(a)),
                2 => q6_k::<2>(r, x).map(|a| widen(a)),
                _ => q6_k::<1>(r, x).map(|a| widen(a)),
            }
        }),
        _ => None,
    }
}

/// The rows of a four-block type (`quant` gives a chunk's low and high halves as unsigned
/// bytes).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn legacy<C: Chunk + Scales>(
    w: &[u8],
    row_bytes: usize,
    x: &ActChunks,
    out: &mut [f32],
    quant: impl Fn(&C) -> (__m512i, __m512i),
) -> Option<()> {
    rows::<C>(w, row_bytes, out, |r, n| match n {
        4 => legacy_rows::<C, 4>(r, x, &quant),
        3 => legacy_rows::<C, 3>(r, x, &quant).map(|a| widen(a)),
        2 => legacy_rows::<C, 2>(r, x, &quant).map(|a| widen(a)),
        _ => legacy_rows::<C, 1>(r, x, &quant).map(|a| widen(a)),
    })
}

/// `Q5_0` rows in groups of four (all quads but a shorter last group): each 16 rows are four
/// quads' accumulators, summed by [`reduce_quads`] (about 10 instructions, where expanding them
/// to one accumulator per row for [`reduce16`] takes about 60). The rows after the last 16 go
/// through [`rows`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn quad_rows(w: &[u8], row_bytes: usize, x: &ActChunks, out: &mut [f32]) -> Option<()> {
    let all = as_chunks::<ChunkQ5_0>(w)?;
    let per_row = as_chunks::<ChunkQ5_0>(w.get(..row_bytes)?)?.len();
    let sixteens = out.len() / 16;
    let (whole, rest) = out.split_at_mut(16 * sixteens);
    for (g, out) in whole.chunks_exact_mut(16).enumerate() {
        let quads = |i: usize| {
            let first = (16 * g + QUAD_ROWS * i) * per_row;
            as_quads(all.get(first..first + QUAD_ROWS * per_row)?)
        };
        let accs = [
            q5_0_quads(quads(0)?, x)?,
            q5_0_quads(quads(1)?, x)?,
            q5_0_quads(quads(2)?, x)?,
            q5_0_quads(quads(3)?, x)?,
        ];
        // SAFETY: `out` is 16 writable floats and the store is unaligned.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), reduce_quads(&accs)) };
    }
    if rest.is_empty() {
        return Some(());
    }
    q5_0_chunk_rows(w.get(16 * sixteens * row_bytes..)?, row_bytes, x, rest)
}

/// `Q5_0` rows through [`rows`]: quads for whole groups of four, chunks for shorter ones.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q5_0_chunk_rows(w: &[u8], row_bytes: usize, x: &ActChunks, out: &mut [f32]) -> Option<()> {
    let ty = GgmlType::Q5_0;
    rows::<ChunkQ5_0>(w, row_bytes, out, |r, n| match n {
        n if is_quad_group(ty, row_bytes, n) => {
            let acc = q5_0_quads(as_quads(r)?, x)?;
            Some(std::array::from_fn(|r| {
                _mm512_maskz_mov_ps(0x000F << (4 * r), acc)
            }))
        }
        3 => legacy_rows::<ChunkQ5_0, 3>(r, x, &|c| q5_0_halves(c)).map(|a| widen(a)),
        2 => legacy_rows::<ChunkQ5_0, 2>(r, x, &|c| q5_0_halves(c)).map(|a| widen(a)),
        _ => legacy_rows::<ChunkQ5_0, 1>(r, x, &|c| q5_0_halves(c)).map(|a| widen(a)),
    })
}

/// The 16 row sums of four quad accumulators (row `4i + r`: the four floats of 128-bit lane
/// `r` of `a[i]`), in row order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn reduce_quads(a: &[__m512; 4]) -> __m512 {
    // Per 128-bit lane r: [a0 r0+r2, a1 r0+r2, a0 r1+r3, a1 r1+r3], the same for a2 and a3.
    let pair =
        |x: __m512, y: __m512| _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
    let (lo, hi) = (
        _mm512_castps_pd(pair(a[0], a[1])),
        _mm512_castps_pd(pair(a[2], a[3])),
    );
    // Element 4r + i: the sum of row 4i + r.
    let sums = _mm512_add_ps(
        _mm512_castpd_ps(_mm512_unpacklo_pd(lo, hi)),
        _mm512_castpd_ps(_mm512_unpackhi_pd(lo, hi)),
    );
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_permutexvar_ps(order, sums)
}

/// A `Q5_0` chunk's low and high halves as unsigned 5-bit quants.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q5_0_halves(c: &ChunkQ5_0) -> (__m512i, __m512i) {
    let (lo, hi) = nibbles(&c.qs);
    // The two fifth-bit words in every 128-bit lane, 64-bit lane k rotated right by
    // 4h + k/2, have weight p's bit at bit 4 of byte p (`chunks::q5_bit`): OR it onto
    // the nibble.
    let rotate = [
        _mm512_setr_epi64(0, 0, 1, 1, 2, 2, 3, 3),
        _mm512_setr_epi64(4, 4, 5, 5, 6, 6, 7, 7),
    ];
    let bit4 = _mm512_set1_epi8(16);
    // SAFETY: `qh` is 16 readable bytes and the load is unaligned.
    let words = unsafe { _mm_loadu_si128(c.qh.as_ptr().cast()) };
    let words = _mm512_broadcast_i32x4(words);
    let fifth = |h: usize| _mm512_rorv_epi64(words, rotate[h]);
    (
        _mm512_ternarylogic_epi32::<0xF8>(lo, fifth(0), bit4),
        _mm512_ternarylogic_epi32::<0xF8>(hi, fifth(1), bit4),
    )
}

/// The accumulators of a group of four `Q5_0` rows packed as quads (`chunks::QuadQ5_0`): per
/// quad, eight byte dot products (one per step, against `ActChunks::steps`) leave lane
/// `4r + b` with row `r`'s block `b` integer dot, its offset taken out by the start (`-16·Σx`
/// of the block); one conversion, the 16 scales times the activation scales, and one FMA add
/// the quad. The accumulator holds row `r`'s four partial sums in 128-bit lane `r`.
///
/// Per quad (four rows' 128 weights) that is about 35 vector instructions where four
/// [`ChunkQ5_0`]s take about 50 and four scale conversions: from L1, one thread, 45 GB/s of
/// weights against 37. What it costs most is the fifth bits: the masks' loads into `k`
/// registers and the masked adds (the kernel without them: 54 GB/s; through general
/// registers, or `vgf2p8affineqb` on the bits broadcast: no faster). Why steps of 64 bytes
/// and not 16 broadcast to each lane: a broadcast load takes a shuffle here (AMD Zen 4), 38
/// against 45 GB/s.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q5_0_quads(w: &[QuadQ5_0], x: &ActChunks) -> Option<__m512> {
    let n = w.len();
    let (steps, sums) = x.steps()?;
    let (steps, sums) = (steps.get(..n)?, sums.get(..n)?);
    let xd = x.d.get(..4 * n)?.as_chunks::<4>().0;
    let low4 = _mm512_set1_epi8(0x0F);
    // Hidden from the optimizer: knowing it is 16, which the nibbles lack, it turns each
    // masked add into an OR and a masked move, two instructions in place of one.
    let bit4 = std::hint::black_box(_mm512_set1_epi8(16));
    let mask = |bits: &[u8; 8]| _cvtu64_mask64(u64::from_le_bytes(*bits));
    let mut acc = _mm512_setzero_ps();
    for (((quad, steps), sums), xd) in w.iter().zip(steps).zip(sums).zip(xd) {
        // SAFETY: `sums` is 64 readable bytes and the load is unaligned.
        let start = unsafe { _mm512_loadu_si512(sums.0.as_ptr().cast()) };
        // Two chains of four dependent products, not one of eight.
        let mut s = [_mm512_slli_epi32::<4>(start), _mm512_setzero_si512()];
        for k in 0..4 {
            let q = load512(&quad.qs[k]);
            let lo = _mm512_and_si512(q, low4);
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), low4);
            let lo = _mm512_mask_add_epi8(lo, mask(&quad.qh[2 * k]), lo, bit4);
            let hi = _mm512_mask_add_epi8(hi, mask(&quad.qh[2 * k + 1]), hi, bit4);
            s[0] = _mm512_dpbusd_epi32(s[0], lo, load512(&steps[2 * k]));
            s[1] = _mm512_dpbusd_epi32(s[1], hi, load512(&steps[2 * k + 1]));
        }
        // SAFETY: `d` is 32 readable bytes and the load is unaligned.
        let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(quad.d.as_ptr().cast()) });
        let dx = _mm512_broadcast_f32x4(load4(xd));
        let sum = _mm512_cvtepi32_ps(_mm512_add_epi32(s[0], s[1]));
        acc = _mm512_fmadd_ps(sum, _mm512_mul_ps(dw, dx), acc);
    }
    Some(acc)
}

/// `R` accumulators and zeros after them, as `rows` takes them.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn widen<const R: usize>(a: [__m512; R]) -> [__m512; ROW_GROUP] {
    std::array::from_fn(|r| a.get(r).copied().unwrap_or(_mm512_setzero_ps()))
}

/// Runs `accs` over each group of rows (`n·row_bytes` of alternating chunks `C`, or for a
/// whole group of `Q5_0` rows their quads in the same bytes; `n` rows: `chunks::group_rows`,
/// or fewer in a last group), 16 rows to a reduction. `accs(chunks, n)`
/// gives one accumulator per row (its lanes sum to the row's dot product), zeros after the
/// `n`th.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn rows<C: Chunk>(
    w: &[u8],
    row_bytes: usize,
    out: &mut [f32],
    accs: impl Fn(&[C], usize) -> Option<[__m512; ROW_GROUP]>,
) -> Option<()> {
    let per_row = as_chunks::<C>(w.get(..row_bytes)?)?.len();
    let group = group_rows(row_bytes);
    let all = as_chunks::<C>(w)?;
    // Index loops: `zip` over `chunks` is left as a call here (it divides for its length).
    let n_rows = out.len();
    for g in (0..n_rows).step_by(16) {
        let out = &mut out[g..(g + 16).min(n_rows)];
        let mut sums = [_mm512_setzero_ps(); 16];
        // 16 rows are whole groups: only the run's last group may be shorter.
        for p in (0..out.len()).step_by(group) {
            let n = (out.len() - p).min(group);
            let run = all.get((g + p) * per_row..(g + p + n) * per_row)?;
            let accs = accs(run, n)?;
            // Copies of a constant length are a few register stores; at the group's length,
            // a call to memcpy per group (2.7% of a one-thread token).
            match n {
                4 => sums[p..p + 4].copy_from_slice(&accs),
                3 => sums[p..p + 3].copy_from_slice(&accs[..3]),
                2 => sums[p..p + 2].copy_from_slice(&accs[..2]),
                _ => sums[p] = accs[0],
            }
        }
        let sums = reduce16(&sums);
        let keep = if out.len() == 16 {
            u16::MAX
        } else {
            (1u16 << out.len()) - 1
        };
        // SAFETY: the mask writes only the first out.len() (≤ 16) floats of `out`.
        unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr(), keep, sums) };
    }
    Some(())
}

/// The sums of the 16 vectors in `v`, in order, as one vector: a transposing tree of
/// shuffles and adds (about 46 instructions in place of 16 horizontal reductions of 8 each).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn reduce16(v: &[__m512; 16]) -> __m512 {
    // Pairs of rows: row 2i in 128-bit lanes 0-1, row 2i+1 in lanes 2-3.
    let halves: [__m512; 8] = std::array::from_fn(|i| {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
        )
    });
    // Lane l of quads[i]: four partial sums of row 4i + l.
    let quads: [__m512; 4] = std::array::from_fn(|i| {
        let (a, b) = (halves[2 * i], halves[2 * i + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
        )
    });
    // Each of `quads` is now a quad's accumulator (row 4i + l in lane l): the rest is shared.
    reduce_quads(&quads)
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

/// One chunk of activations in registers, loaded once for the rows that use it.
struct ChunkActs {
    lo: __m512i,
    hi: __m512i,
    /// The i32 lanes' starts, `-o·Σx` (see the module docs).
    start: __m512i,
    d: __m128,
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn chunk_acts(q: &[[i8; 64]; 2], d: &[f32; 4], neg_sums: &[i32; 16], shift: __m128i) -> ChunkActs {
    // SAFETY: `neg_sums` is 64 readable bytes and the load is unaligned.
    let sums = unsafe { _mm512_loadu_si512(neg_sums.as_ptr().cast()) };
    ChunkActs {
        lo: load512(&q[0]),
        hi: load512(&q[1]),
        start: _mm512_sll_epi32(sums, shift),
        d: load4(d),
    }
}

/// The accumulators of a group of `R` rows (`w`: their alternating chunks).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn legacy_rows<C: Chunk + Scales, const R: usize>(
    w: &[C],
    x: &ActChunks,
    quant: &impl Fn(&C) -> (__m512i, __m512i),
) -> Option<[__m512; R]> {
    let shift = _mm_cvtsi32_si128(C::OFFSET.trailing_zeros() as i32);
    let acts = |j: usize| -> Option<ChunkActs> {
        let d = x.d.get(4 * j..4 * j + 4)?.as_chunks::<4>().0.first()?;
        Some(chunk_acts(x.q.get(j)?, d, &x.neg_sums.get(j)?.0, shift))
    };
    let mut acc = [_mm512_setzero_ps(); R];
    for (j, group) in w.as_chunks::<R>().0.iter().enumerate() {
        let x = acts(j)?;
        for (acc, c) in acc.iter_mut().zip(group) {
            *acc = chunk(c, &x, quant, *acc);
        }
    }
    Some(acc)
}

/// One chunk added to the accumulator (the offsets cancel inside the integer sums).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn chunk<C: Chunk + Scales>(
    c: &C,
    x: &ChunkActs,
    quant: &impl Fn(&C) -> (__m512i, __m512i),
    acc: __m512,
) -> __m512 {
    // Lane b of the scale vector: block b's scale, one per 128-bit lane.
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let (lo, hi) = quant(c);
    let s = _mm512_dpbusd_epi32(x.start, lo, x.lo);
    let s = _mm512_dpbusd_epi32(s, hi, x.hi);
    let dw = scales4(c.d());
    let scale = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_mul_ps(dw, x.d)));
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc)
}

/// The accumulators of a group of `R` `Q4_K` rows (alternating super-blocks; `R` is a
/// constant so that each group size compiles to its own straight loop). Each super-block
/// is two chunks of four groups; a group's scale `d·sc·d_x` goes to its lane as in [`chunk`],
/// and its min term `dmin·m·d_x·Σx` into an 8-wide accumulator subtracted from the first half
/// of the lanes at the end. Scales and mins are worked out for all 8 groups at once.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4_k<const R: usize>(w: &[ChunkQ4K], x: &ActChunks) -> Option<[__m512; R]> {
    // Lane b of half h: group 4h + b.
    let spread = [
        _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
        _mm512_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7),
    ];
    let n = w.len() / R;
    let xq = x.q.get(..2 * n)?.as_chunks::<2>().0;
    let xd = x.d.get(..8 * n)?.as_chunks::<8>().0;
    let xs = x.dsum.get(..8 * n)?.as_chunks::<8>().0;
    let zero = _mm512_setzero_ps();
    let mut acc = [[zero; 2]; R];
    let mut mins = [_mm256_setzero_ps(); R];
    let groups = w.as_chunks::<R>().0;
    for (((group, xq), xd), xs) in groups.iter().zip(xq).zip(xd).zip(xs) {
        let q = [0, 1].map(|h| [load512(&xq[h][0]), load512(&xq[h][1])]);
        let (xd, xs) = (load_ps(xd), load_ps(xs));
        for (r, c) in group.iter().enumerate() {
            let (sc, m) = k4_scales_mins(&c.scales);
            let (d, dmin) = scales2(c.d, c.dmin);
            let scale =
                _mm512_castps256_ps512(_mm256_mul_ps(_mm256_mul_ps(bytes_to_ps(sc), d), xd));
            mins[r] = _mm256_fmadd_ps(_mm256_mul_ps(bytes_to_ps(m), dmin), xs, mins[r]);
            for (h, acc) in acc[r].iter_mut().enumerate() {
                let (lo, hi) = nibbles(&c.qs[h]);
                let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, q[h][0]);
                let s = _mm512_dpbusd_epi32(s, hi, q[h][1]);
                let lanes = _mm512_permutexvar_ps(spread[h], scale);
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), lanes, *acc);
            }
        }
    }
    Some(std::array::from_fn(|r| {
        let a = acc[r];
        _mm512_sub_ps(_mm512_add_ps(a[0], a[1]), _mm512_zextps256_ps512(mins[r]))
    }))
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

/// The accumulators of a group of `R` `Q6_K` rows (alternating super-blocks in steps,
/// `chunks::StepsQ6K`) against `Q8_K` activations in the same steps (`chunks::Q8KSteps`), each
/// loaded once for the `R` rows. Per super-block and row: four `vpdpbusd`, one per step of 64
/// quants, leave i32 lane `l` with sub-block `l`'s integer dot, the quants' offset of 32 taken
/// out by the start (`-32·Σx` per sub-block); one multiply by the sixteen sub-block scales, one
/// conversion and one FMA with `d·d_x` add the super-block.
///
/// The products stay exact in i32: a lane's dot is at most 16·63·128 + 32·16·128 < 2^18 in
/// size, times a scale of at most 128.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q6_k<const R: usize>(w: &[StepsQ6K], x: &[Q8KSteps]) -> Option<[__m512; R]> {
    let n = w.len() / R;
    let mut acc = [_mm512_setzero_ps(); R];
    let groups = w.as_chunks::<R>().0;
    for (group, xs) in groups.iter().zip(x.get(..n)?) {
        let xq: [__m512i; 4] = std::array::from_fn(|s| load512(&xs.q[s]));
        // SAFETY: `start` is 64 readable bytes and the load is unaligned.
        let start = unsafe { _mm512_loadu_si512(xs.start.0.as_ptr().cast()) };
        for (acc, b) in acc.iter_mut().zip(group) {
            let q = q6k_steps(b);
            let s = (0..4).fold(start, |s, k| _mm512_dpbusd_epi32(s, q[k], xq[k]));
            // SAFETY: `scales` is 16 readable bytes and the load is unaligned.
            let sc = unsafe { _mm_loadu_si128(b.scales.as_ptr().cast()) };
            let p = _mm512_mullo_epi32(s, _mm512_cvtepi8_epi32(sc));
            let scale = _mm512_set1_ps(f16_to_f32(b.d) * xs.d);
            *acc = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(p), *acc);
        }
    }
    Some(acc)
}

/// A `Q6_K` super-block's four steps of quants (0..64) as bytes: steps 0-2 the low six bits
/// of `q[s]`, step 3 put together from their top two bits (bits 4-5 from `q[0]`, 2-3 from
/// `q[1]`, 0-1 from `q[2]`). The 16-bit shifts move bits across bytes; each select or mask
/// keeps only bits that came from the right byte.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q6k_steps(b: &StepsQ6K) -> [__m512i; 4] {
    let low6 = _mm512_set1_epi8(0x3F);
    let top2 = _mm512_set1_epi8(0xC0u8 as i8);
    let q: [__m512i; 3] = std::array::from_fn(|k| load512(&b.q[k]));
    // `select(a, b)`: the top two bits of each byte from `b`, the rest from `a` (one
    // `vpternlogd`).
    let select = |a: __m512i, b: __m512i| {
        _mm512_or_si512(_mm512_and_si512(b, top2), _mm512_andnot_si512(top2, a))
    };
    // Bits 6-7 of q[2] to bits 4-5, q[1]'s in at 6-7; both down two; q[0]'s in at 6-7; down two.
    let t = select(_mm512_srli_epi16::<2>(q[2]), q[1]);
    let t = select(_mm512_srli_epi16::<2>(t), q[0]);
    let last = _mm512_and_si512(_mm512_srli_epi16::<2>(t), low6);
    [
        _mm512_and_si512(q[0], low6),
        _mm512_and_si512(q[1], low6),
        _mm512_and_si512(q[2], low6),
        last,
    ]
}
