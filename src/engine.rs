//! An engine: a loaded GGUF model, its tokenizer and chat template, on a chosen backend.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::{GpuBackend, GpuOptions};
use crate::backend::{Backend, BackendKind};
use crate::chat::{self, Message};
use crate::generate::{generate, GenerateOptions, StopReason};
use crate::gguf::GgufFile;
use crate::model::{Qwen2Config, Qwen2Model};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// How to load a model.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub backend: BackendKind,
    /// CPU threads; 0 = one per available core.
    pub threads: usize,
    /// Context size in tokens (KV cache capacity).
    pub ctx: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            backend: BackendKind::Cpu,
            threads: 0,
            ctx: 4096,
        }
    }
}

/// A loaded model with its tokenizer.
pub struct Engine {
    pub model: Qwen2Model,
    pub tokenizer: Tokenizer,
    chat_template: Option<String>,
    stop_tokens: Vec<u32>,
}

/// Makes the backend `kind` names.
pub fn make_backend(kind: BackendKind, threads: usize) -> Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Cpu => Ok(Box::new(CpuBackend::new(threads))),
        BackendKind::Gpu => match GpuBackend::new(&GpuOptions::default()) {
            Ok(gpu) => Ok(Box::new(gpu)),
            Err(e) => bail!("--backend gpu: {e}"),
        },
        // Only a real GPU: a software adapter (lavapipe) is far slower than the CPU backend.
        BackendKind::Auto => {
            let opts = GpuOptions {
                allow_software: false,
                ..GpuOptions::default()
            };
            match GpuBackend::new(&opts) {
                Ok(gpu) => Ok(Box::new(gpu)),
                Err(_) => Ok(Box::new(CpuBackend::new(threads))),
            }
        }
    }
}

impl Engine {
    /// Opens `path` (memory-mapped) and loads model and tokenizer.
    pub fn load(path: &Path, opts: &EngineOptions) -> Result<Engine> {
        let file = Arc::new(GgufFile::open(path)?);
        // Refuse other architectures before anything else, with the architecture's name.
        Qwen2Config::from_gguf(&file)?;
        let tokenizer = tokenizer_from_gguf(&file)?;
        let chat_template = file
            .get("tokenizer.chat_template")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let stop_tokens = stop_tokens(&file, &tokenizer)?;
        let backend = make_backend(opts.backend, opts.threads)?;
        let model = Qwen2Model::load(file, backend, opts.ctx)?;
        Ok(Engine {
            model,
            tokenizer,
            chat_template,
            stop_tokens,
        })
    }

    /// Tokens that end generation: the EOS id, `<|im_end|>` and `<|endoftext|>` when present.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop_tokens
    }

    /// The chat prompt for `messages` in the model's template.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<String> {
        chat::render(self.chat_template.as_deref(), messages)
    }

    /// Generates after `prompt_ids` from an empty context, streaming complete UTF-8 text to
    /// `on_text`. Returns the generated ids (with the stop token, if one ended it).
    pub fn generate_streaming(
        &mut self,
        prompt_ids: &[u32],
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<(Vec<u32>, StopReason)> {
        self.model.reset();
        let mut decoder = StreamDecoder::new();
        let tokenizer = &self.tokenizer;
        let result = generate(&mut self.model, prompt_ids, opts, &mut |id| {
            let piece = decoder.push(tokenizer, id);
            if !piece.is_empty() {
                on_text(&piece);
            }
            true
        })?;
        let rest = decoder.finish();
        if !rest.is_empty() {
            on_text(&rest);
        }
        Ok(result)
    }
}

/// Builds the tokenizer from `tokenizer.ggml.*` metadata.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<Tokenizer> {
    let path = file.path_display();
    let model = file.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        bail!("{path}: tokenizer.ggml.model is '{model}', expected 'gpt2' (byte-level BPE)");
    }
    let pre = match file.get("tokenizer.ggml.pre") {
        Some(_) => file.get_str("tokenizer.ggml.pre")?,
        None => "qwen2",
    };
    let tokens: Vec<String> = file
        .get_str_array("tokenizer.ggml.tokens")?
        .into_iter()
        .map(str::to_string)
        .collect();
    let types = match file.get("tokenizer.ggml.token_type") {
        Some(_) => file.get_i32_array("tokenizer.ggml.token_type")?,
        None => vec![1; tokens.len()],
    };
    let merges: Vec<String> = file
        .get_str_array("tokenizer.ggml.merges")?
        .into_iter()
        .map(str::to_string)
        .collect();
    Tokenizer::from_parts(tokens, types, merges, pre)
        .with_context(|| format!("{path}: building the tokenizer from tokenizer.ggml.*"))
}

fn stop_tokens(file: &GgufFile, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    let mut stops = Vec::new();
    if file.get("tokenizer.ggml.eos_token_id").is_some() {
        let eos = file.get_u64("tokenizer.ggml.eos_token_id")?;
        if eos < tokenizer.vocab_size() as u64 {
            stops.push(eos as u32);
        }
    }
    for name in ["<|im_end|>", "<|endoftext|>"] {
        if let Some(id) = tokenizer.token_id(name) {
            if !stops.contains(&id) {
                stops.push(id);
            }
        }
    }
    Ok(stops)
}
