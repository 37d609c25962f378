//! `marco synth`: a model with a real model's shapes, types and tokenizer, and random weights,
//! for benchmarks on machines the real weights cannot reach (see `marco_quantize::synth`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use marco_quantize::gguf::GgufFile;
use marco_quantize::synth::{synthesize, tensor_decls, write_shape};

#[derive(Args)]
pub struct SynthArgs {
    /// A GGUF model, or a shape file written by `--shape-only`.
    #[arg(long)]
    like: PathBuf,
    /// The GGUF file to write (written to a temp file, renamed when complete).
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Write only the metadata and the tensor list (a few MB), to expand elsewhere.
    #[arg(long)]
    shape_only: bool,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn synth(a: SynthArgs) -> Result<()> {
    let like = GgufFile::open(&a.like)?;
    if a.shape_only {
        return write_shape(&like, &a.output);
    }
    // For the progress bar only: the writer validates the shapes (overflow included).
    let total = tensor_decls(&like)?
        .iter()
        .filter_map(|d| {
            let rows = d.dims[1..]
                .iter()
                .try_fold(1u64, |a, &b| a.checked_mul(b))?;
            d.ty.row_bytes(d.dims[0])?.checked_mul(rows)
        })
        .fold(0u64, u64::saturating_add);
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    synthesize(&like, &a.output, a.seed, &mut |n| bar.inc(n))?;
    bar.finish_and_clear();
    println!("{}", a.output.display());
    Ok(())
}
