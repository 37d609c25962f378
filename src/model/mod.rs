//! The Qwen2 model: hyperparameters and the forward pass, written once against
//! [`crate::backend::Backend`].

pub mod config;
pub mod qwen2;

pub use config::Qwen2Config;
pub use qwen2::{Logits, Qwen2Model};
