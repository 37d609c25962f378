//! Quant formats of GGML/GGUF and the converter.
//!
//! - [`types`]: tensor type ids and block geometry.
//! - [`blocks`]: the `#[repr(C)]` block layouts, one definition each.
//! - [`dequant`], [`act`], [`dot`]: dequantization, 8-bit activation blocks, scalar reference dots.
//! - [`quants`]: reference quantizers (plain and importance-weighted).
//! - [`gguf`]: GGUF reader (memory-mapped, zero-copy) and streaming writer.
//! - [`convert`]: Hugging Face checkpoint / GGUF to GGUF at a chosen type.

pub mod act;
pub mod blocks;
pub mod chunks;
pub mod convert;
pub mod dequant;
pub mod dot;
pub mod gguf;
pub mod quants;
pub mod rng;
pub mod synth;
pub mod types;

pub use types::{GgmlType, QK32, QK_K};
