//! Conversion to GGUF at a chosen type: from a Hugging Face Qwen2 checkpoint directory, or from
//! a GGUF file (requantize: dequantize, then quantize with the new mix).
//!
//! ```no_run
//! use marco_quantize::convert::{convert, ConvertOptions, FileType};
//! let opts = ConvertOptions::new(FileType::Q4_K_M);
//! let report = convert("hf-checkpoint/".as_ref(), "model-q4_k_m.gguf".as_ref(), &opts)?;
//! println!("{}", report.summary());
//! # anyhow::Ok(())
//! ```
//!
//! - [`safetensors`]: the validating shard reader;
//! - [`hf`]: config and tokenizer files → GGUF metadata, tensor names → llama.cpp names;
//! - [`mix`]: llama.cpp's file types and per-tensor type choices;
//! - `pipeline`: streaming, threads, progress; `requant`: a GGUF file as input.
//!
//! The output is written to a temp file renamed at the end ([`crate::gguf::GgufWriter`]), so an
//! error or an interruption leaves nothing at the destination.

pub mod hf;
pub mod mix;
mod pipeline;
mod requant;
pub mod safetensors;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub use mix::{Fallback, FileType};
use pipeline::Log;

use crate::gguf::GgufFile;
use crate::types::GgmlType;

/// A function receiving log lines (one line each, no trailing newline).
pub type LogFn = dyn Fn(&str) + Send + Sync;

/// How to convert.
pub struct ConvertOptions {
    pub file_type: FileType,
    /// Worker threads; 0 uses every core.
    pub threads: usize,
    /// Draw a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
    /// Per-tensor importance (an imatrix): GGUF tensor name → one non-negative weight per
    /// column. Tensors without an entry are quantized without.
    pub importance: Option<HashMap<String, Vec<f32>>>,
    /// Where log lines go (fallbacks, notes, the summary); `None` discards them.
    pub log: Option<Box<LogFn>>,
}

impl ConvertOptions {
    /// All cores, no progress bar, no importance, no log.
    pub fn new(file_type: FileType) -> ConvertOptions {
        ConvertOptions {
            file_type,
            threads: 0,
            progress: false,
            importance: None,
            log: None,
        }
    }
}

/// What a conversion did.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    pub output: PathBuf,
    pub file_type: FileType,
    /// Every tensor written and its type, in file order.
    pub tensors: Vec<(String, GgmlType)>,
    /// Tensors whose mix type did not fit their rows.
    pub fallbacks: Vec<(String, Fallback)>,
    pub n_elements: u64,
    /// Tensor bytes read and written.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub seconds: f64,
}

impl ConvertReport {
    /// One line: sizes, bits per weight, time and how many tensors of each type.
    pub fn summary(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, ty) in &self.tensors {
            *counts.entry(ty.name()).or_default() += 1;
        }
        let types: Vec<String> = counts.iter().map(|(t, n)| format!("{n} {t}")).collect();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        format!(
            "wrote {} ({}): {} tensors, {:.1} MiB -> {:.1} MiB, {:.2} bits per weight, in {:.1} s \
             (types: {})",
            self.output.display(),
            self.file_type,
            self.tensors.len(),
            mib(self.bytes_in),
            mib(self.bytes_out),
            self.bytes_out as f64 * 8.0 / self.n_elements.max(1) as f64,
            self.seconds,
            types.join(", ")
        )
    }
}

/// Convert `input` (a checkpoint directory or a GGUF file) to `output` at `opts.file_type`.
pub fn convert(input: &Path, output: &Path, opts: &ConvertOptions) -> Result<ConvertReport> {
    let log = Log::new(opts.log.as_deref());
    if input.is_dir() {
        let ckpt = hf::Checkpoint::open(input, &log)?;
        let source = ckpt.source(&log)?;
        check_output(output, &source.files)?;
        return pipeline::run(source, output, opts, &log);
    }
    check_input_file(input)?;
    let file = GgufFile::open(input)?;
    let source = requant::source(&file, input)?;
    check_output(output, &source.files)?;
    if let Some(t) = source.tensors.iter().find(|t| t.ty.block_size() > 1) {
        log.line(&format!(
            "{}: requantizing already quantized tensors (e.g. {} is {}): converting the original \
             checkpoint gives better quality",
            input.display(),
            t.name,
            t.ty
        ));
    }
    pipeline::run(source, output, opts, &log)
}

/// A file input must be a GGUF file; a file from a checkpoint gets a hint to pass the directory.
fn check_input_file(input: &Path) -> Result<()> {
    if !input.exists() {
        bail!("{}: no such file or directory", input.display());
    }
    let name = input
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    if name.ends_with(".safetensors") || name.ends_with(".json") {
        bail!(
            "{}: pass the checkpoint directory (with config.json and the safetensors shards), \
             not a file inside it",
            input.display()
        );
    }
    Ok(())
}

/// The output must not be one of the input files (both paths canonicalized), and its
/// directory must exist.
pub fn check_output(output: &Path, inputs: &[PathBuf]) -> Result<()> {
    if output.is_dir() {
        bail!(
            "{}: is a directory; give the output file's name",
            output.display()
        );
    }
    let out = canonical_output(output)?;
    for input in inputs {
        let Ok(inp) = input.canonicalize() else {
            continue;
        };
        if inp == out {
            bail!(
                "refusing to overwrite the input {} with the output",
                input.display()
            );
        }
    }
    Ok(())
}

/// `output` canonicalized; for a file that does not exist yet, its canonical directory joined
/// with its name.
fn canonical_output(output: &Path) -> Result<PathBuf> {
    if let Ok(p) = output.canonicalize() {
        return Ok(p);
    }
    let name = output
        .file_name()
        .with_context(|| format!("{}: not a file name", output.display()))?;
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = dir
        .canonicalize()
        .with_context(|| format!("output directory {} does not exist", dir.display()))?;
    Ok(dir.join(name))
}
