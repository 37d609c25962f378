//! `marco quantize`: a Hugging Face Qwen2 checkpoint or a GGUF file to GGUF at a chosen type.

use std::path::PathBuf;

use anyhow::Result;
use clap::builder::PossibleValue;
use clap::{Args, ValueEnum};
use marco_quantize::convert::{convert, ConvertOptions, FileType};

use super::run::log;

#[derive(Args)]
pub struct QuantizeArgs {
    /// A Hugging Face Qwen2 checkpoint directory (config.json, model.safetensors or shards with
    /// model.safetensors.index.json, tokenizer.json) or a GGUF file to requantize.
    input: PathBuf,
    /// The GGUF file to write (written to a temp file, renamed when complete).
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Output type: one of llama.cpp's file types, with its per-tensor mix (norms and biases
    /// stay F32; rows that do not fit a K-quant's 256-element blocks fall back as llama.cpp's do).
    #[arg(long = "type", value_enum, ignore_case = true)]
    file_type: TypeArg,
    /// Worker threads [default: one per core].
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
}

/// A [`FileType`] as a clap value, so that `--help` lists each type with its bits per weight.
#[derive(Clone, Copy)]
struct TypeArg(FileType);

/// Every file type, wrapped (`ValueEnum` hands out a `'static` slice).
const VARIANTS: [TypeArg; FileType::ALL.len()] = {
    let mut v = [TypeArg(FileType::F32); FileType::ALL.len()];
    let mut i = 0;
    while i < v.len() {
        v[i] = TypeArg(FileType::ALL[i]);
        i += 1;
    }
    v
};

impl ValueEnum for TypeArg {
    fn value_variants<'a>() -> &'a [Self] {
        &VARIANTS
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        let t = self.0.default_type();
        let help = format!(
            "{:>5.2} bpw {t}; {}",
            t.bits_per_weight(),
            self.0.mix_summary()
        );
        Some(PossibleValue::new(self.0.name()).help(help))
    }
}

pub fn quantize(a: QuantizeArgs) -> Result<()> {
    let opts = ConvertOptions {
        threads: a.threads,
        progress: true,
        log: Some(Box::new(log::info)),
        ..ConvertOptions::new(a.file_type.0)
    };
    convert(&a.input, &a.output, &opts)?;
    Ok(())
}
