//! Qwen2 hyperparameters, read from GGUF metadata (`qwen2.*`).

use anyhow::{bail, ensure, Result};

use crate::gguf::GgufFile;

/// The shape of a Qwen2 model.
#[derive(Clone, Debug, PartialEq)]
pub struct Qwen2Config {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_vocab: usize,
    pub context_length: usize,
    pub rope_freq_base: f32,
    pub rms_eps: f32,
    /// `output.weight` absent: the output head reuses `token_embd.weight`.
    pub tied_embeddings: bool,
}

/// Upper bound on any dimension we accept from metadata; larger values are a corrupt file,
/// not a model (the largest Qwen2 has n_embd 8192, n_ff 29568).
const MAX_DIM: u64 = 1 << 20;

impl Qwen2Config {
    /// Reads and checks the hyperparameters; the error names the file, the key and what was expected.
    pub fn from_gguf(file: &GgufFile) -> Result<Qwen2Config> {
        let path = file.path_display();
        let arch = file.get_str("general.architecture")?;
        if arch != "qwen2" {
            bail!("{path}: general.architecture is '{arch}', but marco runs only 'qwen2' models");
        }
        let dim = |key: &str| -> Result<usize> {
            let v = file.get_u64(key)?;
            ensure!(
                (1..=MAX_DIM).contains(&v),
                "{path}: {key} = {v} is out of range (expected 1..={MAX_DIM})"
            );
            Ok(v as usize)
        };
        let n_embd = dim("qwen2.embedding_length")?;
        let n_head = dim("qwen2.attention.head_count")?;
        let n_head_kv = match file.get("qwen2.attention.head_count_kv") {
            Some(_) => dim("qwen2.attention.head_count_kv")?,
            None => n_head,
        };
        ensure!(
            n_embd % n_head == 0 && n_head % n_head_kv == 0,
            "{path}: embedding_length {n_embd}, head_count {n_head} and head_count_kv {n_head_kv} \
             do not divide evenly"
        );
        let head_dim = n_embd / n_head;
        ensure!(
            head_dim % 2 == 0,
            "{path}: head dimension {head_dim} is odd"
        );
        let rope_freq_base = match file.get("qwen2.rope.freq_base") {
            Some(_) => file.get_f32("qwen2.rope.freq_base")?,
            None => 10_000.0,
        };
        ensure!(
            rope_freq_base.is_finite() && rope_freq_base > 1.0,
            "{path}: qwen2.rope.freq_base = {rope_freq_base} (expected a finite value > 1)"
        );
        let rms_eps = file.get_f32("qwen2.attention.layer_norm_rms_epsilon")?;
        ensure!(
            rms_eps.is_finite() && rms_eps > 0.0 && rms_eps < 1.0,
            "{path}: qwen2.attention.layer_norm_rms_epsilon = {rms_eps} (expected 0 < eps < 1)"
        );
        let embd = file.tensor_info("token_embd.weight").ok_or_else(|| {
            anyhow::anyhow!("{path}: missing tensor 'token_embd.weight' (the token embedding)")
        })?;
        ensure!(
            embd.dims.len() == 2 && embd.dims[0] as usize == n_embd,
            "{path}: token_embd.weight has shape {:?}, expected [{n_embd}, n_vocab]",
            embd.dims
        );
        Ok(Qwen2Config {
            n_layer: dim("qwen2.block_count")?,
            n_embd,
            n_ff: dim("qwen2.feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab: embd.dims[1] as usize,
            context_length: dim("qwen2.context_length")?,
            rope_freq_base,
            rms_eps,
            tied_embeddings: file.tensor_info("output.weight").is_none(),
        })
    }

    /// Width of K and V per token.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}
