//! marco: an offline, quantized translation runtime for Qwen2 / Marco-LLM models.
//!
//! Layers, bottom up:
//! - [`gguf`] and the quant formats (crate `marco-quantize`): files and block layouts;
//! - [`tokenizer`]: byte-level BPE from GGUF metadata;
//! - [`backend`]: the compute interface and its CPU implementation;
//! - [`model`]: the Qwen2 forward pass, written once against the backend interface;
//! - [`generate`]: greedy and sampled decoding;
//! - [`engine`] and [`translate`]: a loaded model, and translation between 31 languages;
//! - [`models`]: the known models and the cache.

pub mod backend;
pub mod chat;
pub mod engine;
pub mod eval;
pub mod generate;
pub mod lang;
pub mod model;
pub mod models;
pub mod tokenizer;
pub mod translate;

pub use engine::{Engine, EngineOptions};
pub use lang::Language;
pub use marco_quantize::gguf;
pub use translate::Translator;
