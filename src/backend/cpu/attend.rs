//! One query head's attention over the KV cache, written once as plain loops and compiled
//! per instruction set (`#[target_feature]` wrappers), so LLVM vectorizes them 16 wide with
//! AVX-512, 8 wide with AVX2 and 4 wide on the baseline.
//!
//! Why hand-shaped: a dot product per cached position ends in a horizontal reduction, and at
//! prompt lengths those reductions and a libm `exp` per score cost more than the matrix
//! products. Here the K cache is stored transposed (`[channel][position]`), so the scores of
//! all positions build up lane-wise with one broadcast query element per channel; the
//! softmax's `exp` is a polynomial the compiler vectorizes; and the value rows are summed
//! with vector FMAs.

use super::elementwise::exp_poly;

/// Most positions' scores worked on at once per lane group (the reductions' width).
const LANES: usize = 16;

/// `out = softmax(scale · q·K) · V` over the first `n_ctx` positions.
///
/// `kt` holds `q.len()` rows (one per channel of this head) of `kt_stride` positions; `v` holds
/// a row of `q.len()` values every `v_stride` floats; `scores` has room for `n_ctx`.
pub struct Head<'a> {
    pub q: &'a [f32],
    pub kt: &'a [f32],
    pub kt_stride: usize,
    pub v: &'a [f32],
    pub v_stride: usize,
    pub n_ctx: usize,
    pub scale: f32,
}

#[inline(always)]
fn attend_body(h: &Head, scores: &mut [f32], out: &mut [f32]) {
    let padded = padded_len(h, scores.len());
    qk_scores(h, &mut scores[..padded]);
    let scores = &mut scores[..h.n_ctx];
    let max = lane_max(scores);
    let inv = 1.0 / exp_in_place(scores, max);
    // Accumulators in registers for the usual head sizes (a slice would be stored and
    // reloaded for every position: a store-forwarding chain).
    match out.len() {
        64 => weighted_values::<64>(h, scores, inv, out),
        128 => weighted_values::<128>(h, scores, inv, out),
        _ => weighted_values_any(h, scores, inv, out),
    }
}

/// Positions per block of [`qk_scores`], whose scores stay in registers across channels.
const KEY_BLOCK: usize = 64;

/// How many scores [`qk_scores`] works out: `n_ctx` rounded up to whole blocks of [`LANES`]
/// where the cache rows and `scores` (`room` long) have that room. The extra scores (of cache
/// positions not written yet, or left by an earlier sequence) are never used; what they buy is
/// no remainder loop: one-token decoding at short contexts spent most of its attention time on
/// the last partial block of every channel.
fn padded_len(h: &Head, room: usize) -> usize {
    let hd = h.q.len();
    let kt_room = match hd {
        0 => 0,
        _ => {
            h.kt.len()
                .saturating_sub((hd - 1) * h.kt_stride)
                .min(h.kt_stride)
        }
    };
    h.n_ctx
        .next_multiple_of(LANES)
        .min(kt_room)
        .min(room)
        .max(h.n_ctx)
}

/// `scores[j] = scale · q · K[j]`, a block of positions at a time.
#[inline(always)]
fn qk_scores(h: &Head, scores: &mut [f32]) {
    let n = scores.len();
    let mut j0 = 0;
    while j0 + KEY_BLOCK <= n {
        qk_block::<KEY_BLOCK>(h, j0, &mut scores[j0..j0 + KEY_BLOCK]);
        j0 += KEY_BLOCK;
    }
    while j0 + LANES <= n {
        qk_block::<LANES>(h, j0, &mut scores[j0..j0 + LANES]);
        j0 += LANES;
    }
    let tail = &mut scores[j0..];
    tail.fill(0.0);
    for (d, &qd) in h.q.iter().enumerate() {
        let krow = &h.kt[d * h.kt_stride + j0..][..tail.len()];
        for (s, &k) in tail.iter_mut().zip(krow) {
            *s += qd * k;
        }
    }
    tail.iter_mut().for_each(|s| *s *= h.scale);
}

/// The scores of positions `j0..j0 + B`, accumulated in registers across channels.
#[inline(always)]
fn qk_block<const B: usize>(h: &Head, j0: usize, scores: &mut [f32]) {
    let mut acc = [0.0f32; B];
    for (d, &qd) in h.q.iter().enumerate() {
        let krow = &h.kt[d * h.kt_stride + j0..][..B];
        for (a, &k) in acc.iter_mut().zip(krow) {
            *a += qd * k;
        }
    }
    for (s, a) in scores.iter_mut().zip(acc) {
        *s = a * h.scale;
    }
}

/// `out = inv · Σ_j scores[j] · V[j]` for heads of `HD` channels.
#[inline(always)]
fn weighted_values<const HD: usize>(h: &Head, scores: &[f32], inv: f32, out: &mut [f32]) {
    let mut acc = [0.0f32; HD];
    for (j, &p) in scores.iter().enumerate() {
        let vr = &h.v[j * h.v_stride..][..HD];
        for (a, &x) in acc.iter_mut().zip(vr) {
            *a += p * x;
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = a * inv;
    }
}

/// [`weighted_values`] for any head size.
#[inline(always)]
fn weighted_values_any(h: &Head, scores: &[f32], inv: f32, out: &mut [f32]) {
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        let vr = &h.v[j * h.v_stride..][..out.len()];
        for (o, &x) in out.iter_mut().zip(vr) {
            *o += p * x;
        }
    }
    out.iter_mut().for_each(|o| *o *= inv);
}

/// Maximum of `v`, reduced in lanes so that it vectorizes.
#[inline(always)]
fn lane_max(v: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &x) in m.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let tail = rest.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    m.iter().copied().fold(tail, f32::max)
}

/// `v[i] = exp(v[i] - max)`; returns the sum (in lanes, so that it vectorizes).
#[inline(always)]
fn exp_in_place(v: &mut [f32], max: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = v.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (a, x) in acc.iter_mut().zip(c.iter_mut()) {
            *x = exp_poly(*x - max);
            *a += *x;
        }
    }
    let mut sum: f32 = 0.0;
    for x in chunks.into_remainder() {
        *x = exp_poly(*x - max);
        sum += *x;
    }
    sum + acc.iter().sum::<f32>()
}

/// The most bytes of one layer's cache [`prefetch_cache`] asks for (a quarter of this
/// machine's 1 MiB L2 for K and V together; longer contexts stream the rest as usual).
const PREFETCH_BYTES: usize = 256 << 10;

/// Asks for one layer's cached keys and values (`n_ctx` positions; `kt`: `kv_dim` rows of
/// `kt_stride` positions, `v`: a row of `kv_dim` per position) to be brought into L2, before
/// the heads read them.
///
/// Why: decoding streams hundreds of megabytes of weights between two visits of a layer's
/// cache, so every line of it misses, and the heads' loads wait on those misses a few at a
/// time. Asked for together, the lines come at the memory's speed. Measured on one thread,
/// default model, in alternating pairs: +2 to +4% tokens/s at a context of 64 on average
/// (128 generated tokens), within the noise at 32; into L2 rather than L1, which the K and V
/// of a layer (66 KB at that context) would overflow. On targets other than x86-64 a no-op.
pub fn prefetch_cache(kt: &[f32], kt_stride: usize, v: &[f32], kv_dim: usize, n_ctx: usize) {
    let n = n_ctx.min(PREFETCH_BYTES / (8 * kv_dim.max(1)));
    let rows = (0..kv_dim).filter_map(|c| kt.get(c * kt_stride..c * kt_stride + n));
    for part in rows.chain(v.get(..n * kv_dim)) {
        prefetch_l2(part);
    }
}

/// Prefetches every cache line of `v` into L2.
fn prefetch_l2(v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in v.chunks(16) {
        // SAFETY: a prefetch has no effect the program can observe; the address is in `v`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// The baseline build of [`attend_body`].
pub fn attend_portable(h: &Head, scores: &mut [f32], out: &mut [f32]) {
    attend_body(h, scores, out)
}

/// [`attend_body`] compiled for AVX-512 (16-wide).
///
/// # Safety
/// The CPU must support AVX-512 F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn attend_avx512(h: &Head, scores: &mut [f32], out: &mut [f32]) {
    attend_body(h, scores, out)
}

/// [`attend_body`] compiled for AVX2 (8-wide).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn attend_avx2(h: &Head, scores: &mut [f32], out: &mut [f32]) {
    attend_body(h, scores, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `softmax(scale · q·K) · V` in f64, position by position.
    fn reference(h: &Head) -> Vec<f64> {
        let hd = h.q.len();
        let scores: Vec<f64> = (0..h.n_ctx)
            .map(|j| {
                let dot: f64 = (0..hd)
                    .map(|d| h.q[d] as f64 * h.kt[d * h.kt_stride + j] as f64)
                    .sum();
                dot * h.scale as f64
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let p: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = p.iter().sum();
        (0..hd)
            .map(|c| {
                (0..h.n_ctx)
                    .map(|j| p[j] * h.v[j * h.v_stride + c] as f64)
                    .sum::<f64>()
                    / sum
            })
            .collect()
    }

    type Attend = unsafe fn(&Head, &mut [f32], &mut [f32]);

    fn paths() -> Vec<(&'static str, Attend)> {
        fn portable(h: &Head, s: &mut [f32], o: &mut [f32]) {
            attend_portable(h, s, o)
        }
        let mut paths: Vec<(&'static str, Attend)> = vec![("portable", portable)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                paths.push(("avx2", attend_avx2));
            }
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
                paths.push(("avx512", attend_avx512));
            }
        }
        paths
    }

    /// Every context length around the block sizes, with cache rows that end right after the
    /// context (no room to pad) or well after it; cache positions past the context hold NaN,
    /// which must not reach the output.
    #[test]
    fn heads_match_the_reference_and_ignore_positions_past_the_context() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut unit = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        for hd in [64, 128, 40] {
            for n_ctx in (1..=20).chain([31, 32, 33, 63, 64, 65, 100, 129]) {
                for stride in [n_ctx, n_ctx + 3, 160] {
                    let q: Vec<f32> = (0..hd).map(|_| unit()).collect();
                    let kt: Vec<f32> = (0..hd * stride)
                        .map(|i| if i % stride < n_ctx { unit() } else { f32::NAN })
                        .collect();
                    let v_stride = hd + 2;
                    let v: Vec<f32> = (0..n_ctx * v_stride).map(|_| unit()).collect();
                    let h = Head {
                        q: &q,
                        kt: &kt,
                        kt_stride: stride,
                        v: &v,
                        v_stride,
                        n_ctx,
                        scale: 0.125,
                    };
                    let want = reference(&h);
                    for (name, f) in paths() {
                        let mut scores = vec![f32::NAN; stride.max(n_ctx + 5)];
                        let mut out = vec![0.0f32; hd];
                        // SAFETY: `paths` lists only the paths this CPU supports.
                        unsafe { f(&h, &mut scores, &mut out) };
                        for (c, (&got, &want)) in out.iter().zip(&want).enumerate() {
                            assert!(
                                (got as f64 - want).abs() <= 1e-5,
                                "{name} hd {hd} n_ctx {n_ctx} stride {stride} channel {c}: \
                                 {got} against {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
