//! One query head's attention over the KV cache, written once as plain loops and compiled
//! per instruction set (`#[target_feature]` wrappers), so LLVM vectorizes them 16 wide with
//! AVX-512, 8 wide with AVX2 and 4 wide on the baseline.
//!
//! Why hand-shaped: a dot product per cached position ends in a horizontal reduction, and at
//! prompt lengths those reductions and a libm `exp` per score cost more than the matrix
//! products. Here the keys are stored transposed in blocks of [`KEY_BLOCK`] positions
//! ([`key_index`]), so the scores of all positions build up lane-wise with one broadcast
//! query element per channel; the softmax's `exp` is a polynomial the compiler vectorizes;
//! and the value rows are summed with vector multiply-adds.
//!
//! Why blocks rather than one row of `max_ctx` positions per channel: a head's keys for the
//! first `n` positions are then one contiguous run that grows with the context, and so are
//! its values (a row per position, each KV head's rows together), which the hardware
//! prefetcher streams. Rows of the default context (`max_ctx` 4096: rows 16 KiB apart) put a
//! head's 64 channels in a few cache sets. Measured on one thread, default model, 64 tokens
//! (1-64 positions attended), three alternating runs: 290-314 µs of attention a token with a
//! `max_ctx` of 4096 against 534-593 for rows; with 66, 267-284 against 282-318. The rows
//! needed a software prefetch of the layer's cache before its heads (+2 to +4% tokens/s); with
//! blocks it made no difference (0.99-1.00x in alternating tokens) and was dropped.

use super::elementwise::exp_poly;

/// Most scores worked on at once per lane group (the reductions' width); scores are worked
/// out in whole groups.
pub const LANES: usize = 16;

/// Positions per block of the key cache; their scores stay in registers across channels.
const KEY_BLOCK: usize = 64;

/// Where key channel `d` of position `pos` lies in one KV head's key cache of `head_dim`
/// channels: blocks of [`KEY_BLOCK`] positions, each `head_dim` rows of that many positions.
#[inline(always)]
pub fn key_index(pos: usize, d: usize, head_dim: usize) -> usize {
    (pos / KEY_BLOCK * head_dim + d) * KEY_BLOCK + pos % KEY_BLOCK
}

/// Floats of one KV head's key cache for `n_ctx` positions (whole blocks).
pub fn key_len(n_ctx: usize, head_dim: usize) -> usize {
    n_ctx.div_ceil(KEY_BLOCK) * KEY_BLOCK * head_dim
}

/// `out = softmax(scale · q·K) · V` over the first `n_ctx` positions.
///
/// `k` holds the head's keys as [`key_index`] lays them out, at least
/// [`key_len`]`(n_ctx, q.len())` floats; `v` a row of `q.len()` values per position;
/// `scores` has room for `n_ctx` rounded up to whole lane groups ([`LANES`]).
pub struct Head<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub n_ctx: usize,
    pub scale: f32,
}

#[inline(always)]
fn attend_body(h: &Head, scores: &mut [f32], out: &mut [f32]) {
    // Whole lane groups: the scores of positions past the context (cache slots not written yet,
    // or left by an earlier sequence) are worked out and never used; what they buy is no
    // remainder loop.
    let padded = h.n_ctx.next_multiple_of(LANES);
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

/// `scores[j] = scale · q · K[j]` (`scores`: whole lane groups), a block at a time. A last
/// partial block goes as one call of its length too: a group of [`LANES`] at a time would
/// make each channel's add wait on the one before, a chain of `head_dim` adds per group.
#[inline(always)]
fn qk_scores(h: &Head, scores: &mut [f32]) {
    debug_assert!(scores.len().is_multiple_of(LANES), "whole lane groups");
    for (b, block) in scores.chunks_mut(KEY_BLOCK).enumerate() {
        match block.len() / LANES {
            4 => qk_block::<KEY_BLOCK>(h, b, 0, block),
            // Not one pass of 48: the compiler kept a [f32; 48]'s accumulators on the stack,
            // a store and a reload in every channel's chain of adds (a fifth of attention's
            // time at contexts 33-48). Each score's sum is the same either way.
            3 => {
                let (first, last) = block.split_at_mut(2 * LANES);
                qk_block::<{ 2 * LANES }>(h, b, 0, first);
                qk_block::<LANES>(h, b, 2 * LANES, last);
            }
            2 => qk_block::<{ 2 * LANES }>(h, b, 0, block),
            _ => qk_block::<LANES>(h, b, 0, block),
        }
    }
}

/// The scores of `N` positions of block `b` from its position `first`, accumulated in
/// registers across channels.
#[inline(always)]
fn qk_block<const N: usize>(h: &Head, b: usize, first: usize, scores: &mut [f32]) {
    let hd = h.q.len();
    let mut acc = [0.0f32; N];
    for (d, &qd) in h.q.iter().enumerate() {
        let keys = &h.k[(b * hd + d) * KEY_BLOCK + first..][..N];
        for (a, &k) in acc.iter_mut().zip(keys) {
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
    // Rows as arrays: with slices of unknown length the loop stays scalar.
    for (vr, &p) in h.v.as_chunks::<HD>().0.iter().zip(scores) {
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
    for (vr, &p) in h.v.chunks_exact(out.len().max(1)).zip(scores) {
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
                    .map(|d| h.q[d] as f64 * h.k[key_index(j, d, hd)] as f64)
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
                    .map(|j| p[j] * h.v[j * hd + c] as f64)
                    .sum::<f64>()
                    / sum
            })
            .collect()
    }

    #[test]
    fn key_blocks_hold_each_position_and_channel_once() {
        let hd = 5;
        let n = 2 * KEY_BLOCK;
        let mut seen = vec![false; key_len(n, hd)];
        for pos in 0..n {
            for d in 0..hd {
                let i = key_index(pos, d, hd);
                assert!(!seen[i], "position {pos} channel {d} shares slot {i}");
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|&s| s), "whole blocks leave no slot unused");
        assert_eq!(key_len(1, hd), KEY_BLOCK * hd);
        assert_eq!(key_len(KEY_BLOCK + 1, hd), key_len(n, hd));
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

    /// Every context length around the block sizes, with caches that end with the context's
    /// last block or well after it; cache positions past the context hold NaN, which must not
    /// reach the output.
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
            for n_ctx in (1..=20).chain([31, 32, 33, 48, 63, 64, 65, 100, 129]) {
                for room in [n_ctx, n_ctx + 40] {
                    let q: Vec<f32> = (0..hd).map(|_| unit()).collect();
                    // Slots past the context hold NaN.
                    let mut k = vec![f32::NAN; key_len(room, hd)];
                    for pos in 0..n_ctx {
                        for d in 0..hd {
                            k[key_index(pos, d, hd)] = unit();
                        }
                    }
                    let v: Vec<f32> = (0..room * hd)
                        .map(|i| if i < n_ctx * hd { unit() } else { f32::NAN })
                        .collect();
                    let h = Head {
                        q: &q,
                        k: &k,
                        v: &v,
                        n_ctx,
                        scale: 0.125,
                    };
                    let want = reference(&h);
                    for (name, f) in paths() {
                        let mut scores = vec![f32::NAN; room.next_multiple_of(LANES)];
                        let mut out = vec![0.0f32; hd];
                        // SAFETY: `paths` lists only the paths this CPU supports.
                        unsafe { f(&h, &mut scores, &mut out) };
                        for (c, (&got, &want)) in out.iter().zip(&want).enumerate() {
                            assert!(
                                (got as f64 - want).abs() <= 1e-5,
                                "{name} hd {hd} n_ctx {n_ctx} room {room} channel {c}: \
                                 {got} against {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
