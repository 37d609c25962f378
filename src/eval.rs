//! Quantization accuracy: perplexity, KL-divergence and top-1 agreement of a quantized model
//! against a base model, per language, on FLORES text (like llama-perplexity --kl-divergence).

use std::path::Path;

use anyhow::{ensure, Context, Result};

use crate::engine::Engine;
use crate::lang::Language;
use crate::model::Logits;

/// Accuracy figures for one language (or overall).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KldStats {
    pub label: String,
    pub tokens: usize,
    pub ppl_base: f64,
    pub ppl_model: f64,
    pub kld_mean: f64,
    pub kld_p99: f64,
    /// Fraction of positions where both models' most likely token agree.
    pub top1_agreement: f64,
}

/// Per-position measurements, kept so that overall figures are computed over all positions.
#[derive(Default)]
struct Positions {
    nll_base: Vec<f64>,
    nll_model: Vec<f64>,
    kld: Vec<f64>,
    same_top1: Vec<bool>,
}

impl Positions {
    fn extend(&mut self, other: &Positions) {
        self.nll_base.extend(&other.nll_base);
        self.nll_model.extend(&other.nll_model);
        self.kld.extend(&other.kld);
        self.same_top1.extend(&other.same_top1);
    }

    fn stats(&self, label: &str) -> KldStats {
        let n = self.kld.len().max(1) as f64;
        let mut sorted = self.kld.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let p99 = sorted
            .get(((sorted.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0);
        KldStats {
            label: label.to_string(),
            tokens: self.kld.len(),
            ppl_base: (self.nll_base.iter().sum::<f64>() / n).exp(),
            ppl_model: (self.nll_model.iter().sum::<f64>() / n).exp(),
            kld_mean: self.kld.iter().sum::<f64>() / n,
            kld_p99: p99,
            top1_agreement: self.same_top1.iter().filter(|&&s| s).count() as f64 / n,
        }
    }
}

/// Log-softmax of one row of logits, in f64.
fn log_softmax(row: &[f32], out: &mut Vec<f64>) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    out.clear();
    out.extend(row.iter().map(|&x| x as f64 - log_z));
}

/// The first lines of a FLORES file, joined, cut to `max_tokens` tokens of `engine`'s tokenizer.
pub fn flores_tokens(
    engine: &Engine,
    dir: &Path,
    lang: &Language,
    max_tokens: usize,
) -> Result<Vec<u32>> {
    let path = dir.join(format!("{}.txt", lang.flores));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (FLORES-200 dev text)", path.display()))?;
    let mut ids = Vec::new();
    for line in text.lines() {
        if ids.len() >= max_tokens {
            break;
        }
        ids.extend(engine.tokenizer.encode(line, false));
        ids.extend(engine.tokenizer.encode("\n", false));
    }
    ids.truncate(max_tokens);
    ensure!(ids.len() >= 2, "{}: too little text", path.display());
    Ok(ids)
}

/// Per-position figures of `model` against base log-probabilities `base_logits` (all rows).
fn measure(base_logits: &[f32], model: &mut Engine, ids: &[u32]) -> Result<Positions> {
    let n_vocab = model.model.config().n_vocab;
    let mut lm = Vec::new();
    model.model.reset();
    model.model.forward(ids, Logits::All, &mut lm)?;
    let mut pos = Positions::default();
    let (mut pb, mut pm) = (Vec::new(), Vec::new());
    for i in 0..ids.len() - 1 {
        let rb = &base_logits[i * n_vocab..(i + 1) * n_vocab];
        let rm = &lm[i * n_vocab..(i + 1) * n_vocab];
        log_softmax(rb, &mut pb);
        log_softmax(rm, &mut pm);
        let next = ids[i + 1] as usize;
        pos.nll_base.push(-pb[next]);
        pos.nll_model.push(-pm[next]);
        let kld: f64 = pb.iter().zip(&pm).map(|(&b, &m)| b.exp() * (b - m)).sum();
        pos.kld.push(kld.max(0.0));
        pos.same_top1
            .push(crate::generate::argmax(rb) == crate::generate::argmax(rm));
    }
    Ok(pos)
}

/// KL-divergence of each of `models` against `base` on up to `max_tokens` tokens of each
/// language's FLORES text in `dir`; the base runs once per language for all models. Returns, per
/// model, one row per language and then the overall row.
pub fn kld_per_language(
    base: &mut Engine,
    models: &mut [Engine],
    dir: &Path,
    langs: &[Language],
    max_tokens: usize,
    on_progress: &mut dyn FnMut(usize, &KldStats),
) -> Result<Vec<Vec<KldStats>>> {
    let n_vocab = base.model.config().n_vocab;
    for m in models.iter() {
        ensure!(
            m.model.config().n_vocab == n_vocab,
            "the models have different vocabularies ({} and {} tokens)",
            n_vocab,
            m.model.config().n_vocab
        );
    }
    let mut all: Vec<Positions> = models.iter().map(|_| Positions::default()).collect();
    let mut rows: Vec<Vec<KldStats>> = models.iter().map(|_| Vec::new()).collect();
    let mut base_logits = Vec::new();
    for lang in langs {
        let ids = flores_tokens(base, dir, lang, max_tokens)?;
        base.model.reset();
        base.model.forward(&ids, Logits::All, &mut base_logits)?;
        for (k, model) in models.iter_mut().enumerate() {
            let pos = measure(&base_logits, model, &ids)?;
            let stats = pos.stats(lang.flores);
            on_progress(k, &stats);
            rows[k].push(stats);
            all[k].extend(&pos);
        }
    }
    for (k, a) in all.iter().enumerate() {
        rows[k].push(a.stats("overall"));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_distributions_have_zero_kld() {
        let mut p = Positions::default();
        let row = [1.0f32, 2.0, 0.5];
        let mut lp = Vec::new();
        log_softmax(&row, &mut lp);
        let kld: f64 = lp.iter().zip(&lp).map(|(&b, &m)| b.exp() * (b - m)).sum();
        p.kld.push(kld);
        p.nll_base.push(-lp[1]);
        p.nll_model.push(-lp[1]);
        p.same_top1.push(true);
        let s = p.stats("x");
        assert_eq!(s.kld_mean, 0.0);
        assert!((s.ppl_base - s.ppl_model).abs() < 1e-12);
        assert!((lp.iter().map(|x| x.exp()).sum::<f64>() - 1.0).abs() < 1e-12);
    }
}
