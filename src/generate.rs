//! Token generation: greedy and sampled decoding with a streaming callback.

use anyhow::Result;
use marco_quantize::rng::SplitMix64;

use crate::model::{Logits, Qwen2Model};

/// Index of the largest value (the first one on ties); 0 for an empty slice.
///
/// Worked out lane-wise, so that it vectorizes (the CPU backend compiles it per instruction
/// set): a decoded token scans 152k logits, and the plain loop (one compare per value, each
/// waiting on the last) took 0.5% of a one-thread token.
#[inline(always)]
pub fn argmax(v: &[f32]) -> u32 {
    const LANES: usize = 16;
    // A NaN first value wins in the plain loop (nothing compares greater than it).
    if v.first().is_none_or(|x| x.is_nan()) {
        return 0;
    }
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    let (mut best, mut at) = ([f32::NEG_INFINITY; LANES], [0u32; LANES]);
    for (c, chunk) in chunks.enumerate() {
        let base = (c * LANES) as u32;
        for (l, &x) in chunk.iter().enumerate() {
            let better = x > best[l];
            best[l] = if better { x } else { best[l] };
            at[l] = if better { base + l as u32 } else { at[l] };
        }
    }
    // Each lane holds its first maximum; of equal lanes the first index wins, and the rest
    // (after every lane's indices) only with a greater value.
    let (mut value, mut index) = (v[0], 0u32);
    for (&x, &i) in best.iter().zip(&at) {
        if x > value || x == value && i < index {
            (value, index) = (x, i);
        }
    }
    let rest_start = (v.len() - rest.len()) as u32;
    for (i, &x) in rest.iter().enumerate() {
        if x > value {
            (value, index) = (x, rest_start + i as u32);
        }
    }
    index
}

/// How to pick each next token. `temperature == 0` means greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: no limit).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1: no limit).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0: no limit).
    pub min_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            seed: 0x5eed,
        }
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// Picks tokens from logits; keeps its scratch space between calls.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    candidates: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = SplitMix64::new(params.seed);
        Sampler {
            params,
            rng,
            candidates: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token for these logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let p = &self.params;
        let c = &mut self.candidates;
        c.clear();
        c.extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
        let k = if p.top_k == 0 {
            c.len()
        } else {
            p.top_k.min(c.len())
        };
        if k < c.len() {
            c.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
            c.truncate(k);
        }
        c.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        // Softmax with temperature, in place: the first value becomes probability.
        let max = c[0].0;
        let mut sum = 0.0f32;
        for e in c.iter_mut() {
            e.0 = ((e.0 - max) / p.temperature).exp();
            sum += e.0;
        }
        c.iter_mut().for_each(|e| e.0 /= sum);
        let floor = p.min_p * c[0].0;
        let mut cumulative = 0.0f32;
        let mut keep = 0;
        for e in c.iter() {
            if keep > 0 && (e.0 < floor || cumulative >= p.top_p) {
                break;
            }
            cumulative += e.0;
            keep += 1;
        }
        c.truncate(keep);
        let mut r = self.rng.next_f32() * cumulative;
        for e in c.iter() {
            if r < e.0 {
                return e.1;
            }
            r -= e.0;
        }
        c[keep - 1].1
    }
}

/// Options of one generation.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends after any of these (the stop token itself is returned but not streamed).
    pub stop_tokens: Vec<u32>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    StopToken,
    MaxTokens,
    ContextFull,
    Callback,
}

/// Feeds `prompt` after the model's current context and generates. `on_token` sees each
/// generated token that is not a stop token and returns `false` to stop early.
pub fn generate(
    model: &mut Qwen2Model,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<(Vec<u32>, StopReason)> {
    let mut sampler = Sampler::new(opts.sampling.clone());
    let mut logits = Vec::new();
    let mut out = Vec::new();
    let mut feed: Vec<u32> = prompt.to_vec();
    while out.len() < opts.max_tokens {
        if model.n_past() + feed.len() > model.max_ctx() {
            return Ok((out, StopReason::ContextFull));
        }
        let next = if sampler.params().is_greedy() {
            model.forward_argmax(&feed)?
        } else {
            model.forward(&feed, Logits::Last, &mut logits)?;
            sampler.sample(&logits)
        };
        out.push(next);
        if opts.stop_tokens.contains(&next) {
            return Ok((out, StopReason::StopToken));
        }
        if !on_token(next) {
            return Ok((out, StopReason::Callback));
        }
        feed.clear();
        feed.push(next);
    }
    Ok((out, StopReason::MaxTokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn greedy_sampler_is_argmax() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.1, 0.5, 0.2]), 1);
    }

    #[test]
    fn top_k_one_is_argmax_at_any_temperature() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 1,
            ..Default::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.1, 0.5, 0.2, 0.45]), 1);
        }
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.5,
            seed: 7,
        });
        // Token 2 has probability e^-10 relative to token 0: always dropped.
        for _ in 0..200 {
            assert_ne!(s.sample(&[10.0, 9.9, 0.0]), 2);
        }
    }

    #[test]
    fn same_seed_same_tokens() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 42,
        };
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone());
            (0..30).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(&p), run(&p));
        let distinct: std::collections::HashSet<_> = run(&p).into_iter().collect();
        assert!(distinct.len() > 3, "sampling at temperature 1 should vary");
    }
}
