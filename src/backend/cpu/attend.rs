//! One query head's attention over the KV cache, written once as plain loops and compiled
//! per instruction set (`#[target_feature]` wrappers), so LLVM vectorizes them 16 wide with
//! AVX-512, 8 wide with AVX2 and 4 wide on the baseline.
//!
//! Why hand-shaped: a dot product per cached position ends in a horizontal reduction, and at
//! prompt lengths those reductions and a libm `exp` per score cost more than the matrix
//! products. Here the keys are stored transposed in blocks of [`BLOCK`] positions
//! ([`KvLayout`]), so the scores of all positions build up lane-wise with one broadcast
//! query element per channel; the softmax's `exp` is a polynomial the compiler vectorizes;
//! and the value rows are summed with vector multiply-adds.
//!
//! Why blocks rather than one row of `max_ctx` positions per channel: a head's keys and values
//! for a block of positions are then one contiguous tile, which the hardware prefetcher
//! streams. Rows of the default context (`max_ctx` 4096: rows 16 KiB apart) put a head's 64
//! channels in a few cache sets. Measured on one thread, default model, 64 tokens (1-64
//! positions attended), three alternating runs: 290-314 µs of attention a token with a
//! `max_ctx` of 4096 against 534-593 for rows; with 66, 267-284 against 282-318. The rows
//! needed a software prefetch of the layer's cache before its heads (+2 to +4% tokens/s); with
//! blocks it made no difference (0.99-1.00x in alternating tokens) and was dropped.
//!
//! Why block-major, every layer's tiles of a block together: the cache then lives in 2 MiB
//! pages (`memory`) and still only takes memory as the context grows (a block of the default
//! model is 1.5 MiB for all its layers). With each layer's cache in 4 KiB pages, a token's
//! attention paid a TLB miss every 4 KiB of it, after the weights' stream had pushed the
//! page tables out of the caches. On one thread, default model, alternating runs, µs of
//! attention a token: contexts 1-64, 247-264 against 184-206 (`max_ctx` 66) and 252-262
//! against 171-176 (`max_ctx` 4096); contexts 1-300, 718-746 against 566-669.

use super::elementwise::exp_poly;

/// Most scores worked on at once per lane group (the reductions' width); scores are worked
/// out in whole groups.
pub const LANES: usize = 16;

/// Positions per block of the cache; a block's scores stay in registers across channels.
pub const BLOCK: usize = 64;

/// Where the KV cache keeps each layer's and KV head's keys and values. Block `b` of
/// [`BLOCK`] positions holds a tile for every layer and, within a layer, for every KV head in
/// turn; a tile is the head's keys as `head_dim` rows of [`BLOCK`] positions, then its values
/// as a row of `head_dim` per position. How `n_head_kv · head_dim` is split into heads does not
/// change a cache's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    pub n_layer: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
}

/// Floats of one head's tile: its keys, then its values, for [`BLOCK`] positions.
const fn tile_len(head_dim: usize) -> usize {
    2 * BLOCK * head_dim
}

impl KvLayout {
    fn tile(&self) -> usize {
        tile_len(self.head_dim)
    }

    /// Floats from a head's tile in one block to its tile in the next.
    pub fn block_stride(&self) -> usize {
        self.n_layer * self.n_head_kv * self.tile()
    }

    /// Floats of a cache for `max_ctx` positions (whole blocks), or `None` where that does
    /// not fit in a `usize`.
    pub fn len(&self, max_ctx: usize) -> Option<usize> {
        let blocks = max_ctx.checked_next_multiple_of(BLOCK)? / BLOCK;
        let per_block = (2 * BLOCK)
            .checked_mul(self.head_dim)?
            .checked_mul(self.n_head_kv)?
            .checked_mul(self.n_layer)?;
        blocks.checked_mul(per_block)
    }

    /// Where layer `layer`'s KV head `kv_head` starts: its tile in block 0.
    pub fn head_start(&self, layer: usize, kv_head: usize) -> usize {
        (layer * self.n_head_kv + kv_head) * self.tile()
    }

    /// Key channel `d` of position `pos`, from the head's start.
    #[inline(always)]
    pub fn key(&self, pos: usize, d: usize) -> usize {
        pos / BLOCK * self.block_stride() + d * BLOCK + pos % BLOCK
    }

    /// The first of position `pos`'s `head_dim` values, from the head's start.
    #[inline(always)]
    pub fn value(&self, pos: usize) -> usize {
        pos / BLOCK * self.block_stride() + (BLOCK + pos % BLOCK) * self.head_dim
    }
}

/// `out = softmax(scale · q·K) · V` over the first `n_ctx` positions.
///
/// `kv` is the cache from the head's start ([`KvLayout::head_start`]) through at least its
/// tile of the block that holds position `n_ctx - 1`, its tiles `stride` floats apart
/// ([`KvLayout::block_stride`]); `scores` has room for `n_ctx` rounded up to whole lane groups
/// ([`LANES`]).
pub struct Head<'a> {
    pub q: &'a [f32],
    pub kv: &'a [f32],
    pub stride: usize,
    pub n_ctx: usize,
    pub scale: f32,
}

impl<'a> Head<'a> {
    /// The value rows (`head_dim` floats each) of the first `n` positions of block `b`.
    #[inline(always)]
    fn value_rows(&self, b: usize, n: usize) -> &'a [f32] {
        let hd = self.q.len();
        &self.kv[b * self.stride + BLOCK * hd..][..n * hd]
    }

    /// Whether the head's tiles of the blocks up to position `n_ctx - 1` lie inside `kv`,
    /// apart from one another.
    pub fn fits(&self) -> bool {
        let tile = tile_len(self.q.len());
        let last = match self.n_ctx.div_ceil(BLOCK).checked_sub(1) {
            Some(last) => last,
            None => return true,
        };
        self.stride >= tile
            && last
                .checked_mul(self.stride)
                .and_then(|start| start.checked_add(tile))
                .is_some_and(|end| end <= self.kv.len())
    }
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
/// partial block goes in one call of its length too (48 positions: 32 then 16): a group of
/// [`LANES`] at a time would make each channel's add wait on the one before, a chain of
/// `head_dim` adds per group.
#[inline(always)]
fn qk_scores(h: &Head, scores: &mut [f32]) {
    debug_assert!(scores.len().is_multiple_of(LANES), "whole lane groups");
    for (b, block) in scores.chunks_mut(BLOCK).enumerate() {
        match block.len() / LANES {
            4 => qk_block::<BLOCK>(h, b, 0, block),
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
    let mut acc = [0.0f32; N];
    for (d, &qd) in h.q.iter().enumerate() {
        let keys = &h.kv[b * h.stride + d * BLOCK + first..][..N];
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
    for (b, probs) in scores.chunks(BLOCK).enumerate() {
        let rows = h.value_rows(b, probs.len());
        // Rows as arrays: with slices of unknown length the loop stays scalar.
        for (vr, &p) in rows.as_chunks::<HD>().0.iter().zip(probs) {
            for (a, &x) in acc.iter_mut().zip(vr) {
                *a += p * x;
            }
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
    let hd = out.len();
    if hd == 0 {
        return;
    }
    for (b, probs) in scores.chunks(BLOCK).enumerate() {
        for (vr, &p) in h.value_rows(b, probs.len()).chunks_exact(hd).zip(probs) {
            for (o, &x) in out.iter_mut().zip(vr) {
                *o += p * x;
            }
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

    /// `softmax(scale · q·K) · V` in f64, position by position, reading the head's cache
    /// through `layout` (not through the kernel's block walk).
    fn reference(h: &Head, layout: &KvLayout) -> Vec<f64> {
        let hd = h.q.len();
        let scores: Vec<f64> = (0..h.n_ctx)
            .map(|j| {
                let dot: f64 = (0..hd)
                    .map(|d| h.q[d] as f64 * h.kv[layout.key(j, d)] as f64)
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
                    .map(|j| p[j] * h.kv[layout.value(j) + c] as f64)
                    .sum::<f64>()
                    / sum
            })
            .collect()
    }

    #[test]
    fn the_layout_gives_each_key_and_value_one_slot_of_the_cache() {
        let layout = KvLayout {
            n_layer: 3,
            n_head_kv: 2,
            head_dim: 5,
        };
        let n = 2 * BLOCK;
        let len = layout.len(n).unwrap();
        assert_eq!(len, n * 3 * 2 * 5 * 2, "whole blocks, keys and values");
        assert_eq!(layout.len(n - 1), Some(len));
        assert_eq!(layout.len(n + 1), Some(len / 2 * 3));
        let mut seen = vec![false; len];
        let mut mark = |i: usize, what: &str| {
            assert!(!seen[i], "{what} shares slot {i}");
            seen[i] = true;
        };
        for l in 0..3 {
            for h in 0..2 {
                let start = layout.head_start(l, h);
                for pos in 0..n {
                    for d in 0..5 {
                        mark(start + layout.key(pos, d), "a key");
                        mark(start + layout.value(pos) + d, "a value");
                    }
                }
            }
        }
        assert!(seen.iter().all(|&s| s), "whole blocks leave no slot unused");
        assert_eq!(layout.len(usize::MAX - 1), None);
        let wide = KvLayout {
            head_dim: usize::MAX / 64,
            ..layout
        };
        assert_eq!(wide.len(1), None);
    }

    #[test]
    fn a_head_fits_only_a_cache_that_holds_its_last_tile() {
        let layout = KvLayout {
            n_layer: 2,
            n_head_kv: 1,
            head_dim: 4,
        };
        let cache = vec![0.0f32; layout.len(BLOCK + 1).unwrap()];
        let q = [0.0f32; 4];
        let head = |n_ctx: usize, start: usize, stride: usize| Head {
            q: &q,
            kv: &cache[start..],
            stride,
            n_ctx,
            scale: 1.0,
        };
        let (last, stride) = (layout.head_start(1, 0), layout.block_stride());
        assert!(head(BLOCK + 1, last, stride).fits());
        assert!(
            head(0, cache.len(), stride).fits(),
            "no positions, no tiles"
        );
        assert!(
            !head(BLOCK + 1, last + 1, stride).fits(),
            "last tile one float short"
        );
        assert!(
            !head(2 * BLOCK + 1, 0, stride).fits(),
            "a block past the cache"
        );
        assert!(!head(1, 0, 2 * BLOCK * 4 - 1).fits(), "tiles that overlap");
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
                    // The head in the middle of a cache of two layers of three KV heads;
                    // every other slot, and this head's past the context, hold NaN.
                    let layout = KvLayout {
                        n_layer: 2,
                        n_head_kv: 3,
                        head_dim: hd,
                    };
                    let mut cache = vec![f32::NAN; layout.len(room).unwrap()];
                    let start = layout.head_start(1, 1);
                    for pos in 0..n_ctx {
                        for d in 0..hd {
                            cache[start + layout.key(pos, d)] = unit();
                            cache[start + layout.value(pos) + d] = unit();
                        }
                    }
                    let h = Head {
                        q: &q,
                        kv: &cache[start..],
                        stride: layout.block_stride(),
                        n_ctx,
                        scale: 0.125,
                    };
                    let want = reference(&h, &layout);
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
