//! The Qwen2 forward pass: embedding, per layer RMSNorm → Q/K/V (with biases) → RoPE →
//! grouped-query attention over the KV cache → output projection → residual, RMSNorm → SwiGLU MLP →
//! residual; final RMSNorm and the output head (tied to the embedding when `output.weight` is absent).

use std::sync::Arc;

use anyhow::{ensure, Result};

use super::Qwen2Config;
use crate::backend::{AttnShape, Backend, BufId, MatJob, WeightId};
use crate::gguf::GgufFile;

/// Which logits a forward call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None (prompt prefix whose predictions nobody reads).
    None,
    /// Only for the last token (generation).
    Last,
    /// For every token (teacher forcing, perplexity).
    All,
}

struct LayerWeights {
    attn_norm: WeightId,
    q: MatJob,
    k: MatJob,
    v: MatJob,
    o: MatJob,
    ffn_norm: WeightId,
    gate: MatJob,
    up: MatJob,
    down: MatJob,
}

struct Buffers {
    x: BufId,
    h: BufId,
    q: BufId,
    k: BufId,
    v: BufId,
    attn: BufId,
    gate: BufId,
    up: BufId,
    act: BufId,
    head_in: BufId,
    logits: BufId,
}

/// Most tokens one forward step processes at once (prompts are fed in chunks of this size).
pub const MAX_BATCH: usize = 256;
/// Rows of logits computed at once when all positions are asked for.
const LOGIT_ROWS: usize = 16;

/// A loaded Qwen2 model with its KV cache, on one backend.
pub struct Qwen2Model {
    config: Qwen2Config,
    backend: Box<dyn Backend>,
    file: Arc<GgufFile>,
    token_embd: WeightId,
    output_norm: WeightId,
    output: MatJob,
    layers: Vec<LayerWeights>,
    bufs: Buffers,
    max_ctx: usize,
    n_past: usize,
}

impl Qwen2Model {
    /// Loads the weights of `file` onto `backend` with room for `max_ctx` tokens of context.
    pub fn load(
        file: Arc<GgufFile>,
        mut backend: Box<dyn Backend>,
        max_ctx: usize,
    ) -> Result<Self> {
        let config = Qwen2Config::from_gguf(&file)?;
        let max_ctx = max_ctx.clamp(1, config.context_length);
        let b = backend.as_mut();
        let mut w = |name: &str| b.load_weight(&file, name);
        let token_embd = w("token_embd.weight")?;
        let output_norm = w("output_norm.weight")?;
        let output_weight = if config.tied_embeddings {
            token_embd
        } else {
            w("output.weight")?
        };
        let mut layers = Vec::with_capacity(config.n_layer);
        for l in 0..config.n_layer {
            let mut t = |suffix: &str| w(&format!("blk.{l}.{suffix}"));
            layers.push(LayerWeights {
                attn_norm: t("attn_norm.weight")?,
                q: job(t("attn_q.weight")?, Some(t("attn_q.bias")?)),
                k: job(t("attn_k.weight")?, Some(t("attn_k.bias")?)),
                v: job(t("attn_v.weight")?, Some(t("attn_v.bias")?)),
                o: job(t("attn_output.weight")?, None),
                ffn_norm: t("ffn_norm.weight")?,
                gate: job(t("ffn_gate.weight")?, None),
                up: job(t("ffn_up.weight")?, None),
                down: job(t("ffn_down.weight")?, None),
            });
        }
        let mut matmul_weights: Vec<WeightId> = layers
            .iter()
            .flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down].map(|j| j.weight))
            .collect();
        matmul_weights.push(output_weight);
        backend.prepare_matmul(&matmul_weights)?;
        let bufs = alloc_buffers(backend.as_mut(), &config)?;
        backend.alloc_kv_cache(config.n_layer, max_ctx, config.kv_dim())?;
        let mut model = Qwen2Model {
            config,
            backend,
            file,
            token_embd,
            output_norm,
            output: job(output_weight, None),
            layers,
            bufs,
            max_ctx,
            n_past: 0,
        };
        model.wire_outputs();
        Ok(model)
    }

    /// Points each matmul job at the buffer it writes.
    fn wire_outputs(&mut self) {
        let b = &self.bufs;
        for l in &mut self.layers {
            l.q.out = b.q;
            l.k.out = b.k;
            l.v.out = b.v;
            // The projections add into the residual stream directly.
            (l.o.out, l.o.accumulate) = (b.x, true);
            l.gate.out = b.gate;
            l.up.out = b.up;
            (l.down.out, l.down.accumulate) = (b.x, true);
        }
        self.output.out = b.logits;
    }

    pub fn config(&self) -> &Qwen2Config {
        &self.config
    }

    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// The backend's description, e.g. "cpu (avx512, 2 threads)".
    pub fn backend_description(&self) -> String {
        self.backend.describe()
    }

    /// Tokens in the KV cache.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// Context capacity in tokens.
    pub fn max_ctx(&self) -> usize {
        self.max_ctx
    }

    /// Forgets the context (the cache is overwritten by the next tokens).
    pub fn reset(&mut self) {
        self.n_past = 0;
    }

    /// Feeds `tokens` after the current context. Logits go to `out` (resized, reused across calls):
    /// `n_vocab` floats for `Last`, `tokens.len() * n_vocab` for `All`, nothing for `None`.
    pub fn forward(&mut self, tokens: &[u32], want: Logits, out: &mut Vec<f32>) -> Result<()> {
        ensure!(
            self.n_past + tokens.len() <= self.max_ctx,
            "the context is full: {} + {} tokens exceed {} (raise --ctx)",
            self.n_past,
            tokens.len(),
            self.max_ctx
        );
        let n_vocab = self.config.n_vocab;
        out.clear();
        for (i, chunk) in tokens.chunks(MAX_BATCH).enumerate() {
            self.forward_layers(chunk)?;
            let is_last_chunk = (i + 1) * MAX_BATCH >= tokens.len();
            match want {
                Logits::None => {}
                Logits::Last if is_last_chunk => {
                    out.resize(n_vocab, 0.0);
                    self.head(chunk.len() - 1, 1)?;
                    self.backend.read(self.bufs.logits, 0, out)?;
                }
                Logits::Last => {}
                Logits::All => {
                    for row in (0..chunk.len()).step_by(LOGIT_ROWS) {
                        let n = LOGIT_ROWS.min(chunk.len() - row);
                        self.head(row, n)?;
                        let start = out.len();
                        out.resize(start + n * n_vocab, 0.0);
                        self.backend.read(self.bufs.logits, 0, &mut out[start..])?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Feeds `tokens` and returns the most likely next token, without reading logits back.
    pub fn forward_argmax(&mut self, tokens: &[u32]) -> Result<u32> {
        ensure!(!tokens.is_empty(), "internal: no tokens to feed");
        let mut none = Vec::new();
        let (head, last) = tokens.split_at(tokens.len() - 1);
        if !head.is_empty() {
            self.forward(head, Logits::None, &mut none)?;
        }
        self.forward_layers(last)?;
        self.head(0, 1)?;
        self.backend
            .argmax(self.bufs.logits, 0, self.config.n_vocab)
    }

    /// Runs all layers on up to `MAX_BATCH` tokens; the final hidden states stay in `bufs.x`.
    fn forward_layers(&mut self, tokens: &[u32]) -> Result<()> {
        let c = &self.config;
        let n = tokens.len();
        let (b, be, pos) = (&self.bufs, self.backend.as_mut(), self.n_past);
        let shape = AttnShape {
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
        };
        be.embed(self.token_embd, tokens, b.x)?;
        for (l, lw) in self.layers.iter().enumerate() {
            be.rms_norm(b.x, lw.attn_norm, c.rms_eps, n, c.n_embd, b.h)?;
            be.matmul(b.h, n, &[lw.q, lw.k, lw.v])?;
            be.rope(b.q, n, c.n_head, c.head_dim, pos, c.rope_freq_base)?;
            be.rope(b.k, n, c.n_head_kv, c.head_dim, pos, c.rope_freq_base)?;
            be.attention(l, b.q, b.k, b.v, b.attn, n, pos, shape)?;
            be.matmul(b.attn, n, &[lw.o])?;
            be.rms_norm(b.x, lw.ffn_norm, c.rms_eps, n, c.n_embd, b.h)?;
            be.matmul(b.h, n, &[lw.gate, lw.up])?;
            be.swiglu(b.gate, b.up, n * c.n_ff, b.act)?;
            be.matmul(b.act, n, &[lw.down])?;
        }
        self.n_past += n;
        Ok(())
    }

    /// Logits of `n` rows of the last batch starting at `row`, into `bufs.logits`.
    fn head(&mut self, row: usize, n: usize) -> Result<()> {
        let c = &self.config;
        let (b, be) = (&self.bufs, self.backend.as_mut());
        be.copy(b.x, row * c.n_embd, b.head_in, n * c.n_embd)?;
        be.rms_norm(b.head_in, self.output_norm, c.rms_eps, n, c.n_embd, b.h)?;
        be.matmul(b.h, n, &[self.output])
    }
}

fn job(weight: WeightId, bias: Option<WeightId>) -> MatJob {
    MatJob {
        weight,
        bias,
        out: BufId(usize::MAX),
        accumulate: false,
    }
}

fn alloc_buffers(be: &mut dyn Backend, c: &Qwen2Config) -> Result<Buffers> {
    let q_dim = c.n_head * c.head_dim;
    let mut a = |width: usize| be.alloc(MAX_BATCH * width);
    Ok(Buffers {
        x: a(c.n_embd)?,
        h: a(c.n_embd)?,
        q: a(q_dim)?,
        k: a(c.kv_dim())?,
        v: a(c.kv_dim())?,
        attn: a(q_dim)?,
        gate: a(c.n_ff)?,
        up: a(c.n_ff)?,
        act: a(c.n_ff)?,
        head_in: be.alloc(LOGIT_ROWS * c.n_embd)?,
        logits: be.alloc(LOGIT_ROWS * c.n_vocab)?,
    })
}
