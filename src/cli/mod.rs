//! Argument parsing and the subcommands.

mod bench;
mod bench_kernels;
mod inspect;
mod kld;
mod quantize;
mod run;
mod synth;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use marco::backend::BackendKind;
use marco::EngineOptions;

#[derive(Parser)]
#[command(
    name = "marco",
    about = "Offline, quantized translation with Qwen2 / Marco-LLM models (GGUF)",
    long_about = "Offline, quantized translation with Qwen2 / Marco-LLM models (GGUF).\n\n\
        Start with `marco fetch` (downloads the default model into $MARCO_HOME, default \
        ~/.cache/marco), then `marco translate --from en --to zh \"Hello\"`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Translate text between any two of 31 languages (argument, stdin or --input file).
    Translate(TranslateArgs),
    /// Generate from a raw prompt (no chat template; special tokens in the prompt are parsed).
    Generate(GenerateArgs),
    /// Tokenize stdin: one output line of space-separated ids per input line.
    Tokenize(TokenizeArgs),
    /// Show a GGUF file's metadata and tensor table.
    Inspect(InspectArgs),
    /// Convert a Hugging Face Qwen2 checkpoint (or requantize a GGUF file) to GGUF at a type.
    Quantize(quantize::QuantizeArgs),
    /// Download a known model into the cache and verify its sha256.
    Fetch(FetchArgs),
    /// List the known models and languages.
    List,
    /// KL-divergence, perplexity and top-1 agreement of a quantized model against its base, per language.
    Kld(kld::KldArgs),
    /// Measure prompt and decode speed (llama-bench compatible output).
    Bench(bench::BenchArgs),
    /// Write a model with another's shapes, types and tokenizer and random weights (for
    /// benchmarks where the real file cannot go), or just its shape file (--shape-only).
    Synth(synth::SynthArgs),
}

/// Options shared by the commands that load a model.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// GGUF model file [default: the cached default model, see `marco fetch`].
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// Compute backend: cpu, gpu or auto.
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
    /// CPU threads [default: one per core].
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
    /// Context size in tokens.
    #[arg(long, default_value_t = 4096)]
    ctx: usize,
}

impl ModelArgs {
    fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            backend: self.backend,
            threads: self.threads,
            ctx: self.ctx,
        }
    }
}

/// Sampling options.
#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 decodes greedily.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens below min-p times the top probability.
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
}

#[derive(Args)]
pub struct TranslateArgs {
    /// Source language: ISO 639-1 (en), ISO 639-3 / FLORES code (eng_Latn) or English name.
    #[arg(long, short = 'f')]
    from: String,
    /// Target language, same forms as --from.
    #[arg(long = "to")]
    to: String,
    /// Text to translate; without it, stdin (or --input) is translated line by line.
    text: Option<String>,
    /// Read the text from this file instead (translated line by line, empty lines kept).
    #[arg(long, short = 'i')]
    input: Option<PathBuf>,
    /// Write the translation to this file (atomically) instead of stdout.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Most tokens generated per translation.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// Print timing and speed to stderr.
    #[arg(long, short = 'v')]
    verbose: bool,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// The prompt, used as is.
    #[arg(long)]
    raw: String,
    /// Tokens to generate.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 128)]
    n: usize,
    /// Print the generated token ids (space-separated) instead of text.
    #[arg(long)]
    ids: bool,
    /// Do not stop at end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
pub struct TokenizeArgs {
    /// GGUF model file [default: the cached default model].
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// Parse special-token text such as <|im_start|> as the special token.
    #[arg(long)]
    special: bool,
}

#[derive(Args)]
pub struct InspectArgs {
    /// GGUF file.
    file: PathBuf,
    /// Print long metadata values (token lists, templates) in full.
    #[arg(long)]
    full: bool,
}

#[derive(Args)]
pub struct FetchArgs {
    /// Model to fetch: default, qwen2.5-coder-0.5b or qwen2.5-coder-1.5b.
    #[arg(default_value = "default")]
    name: String,
    /// Print nothing but errors (without it: progress on stderr, the model's path on stdout).
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// `marco --version`: the version and the CPU kernel path this machine runs.
fn version_string() -> String {
    format!(
        "{} (cpu kernels: {})",
        env!("CARGO_PKG_VERSION"),
        marco::backend::cpu::kernels::Kernels::detect().name()
    )
}

pub fn run() -> Result<()> {
    use clap::{CommandFactory, FromArgMatches};
    // The version line names the kernel path, found at run time; clap wants it 'static.
    let version: &'static str = Box::leak(version_string().into_boxed_str());
    let cli = Cli::from_arg_matches(&Cli::command().version(version).get_matches())?;
    match cli.command {
        Command::Translate(a) => run::translate(a),
        Command::Generate(a) => run::generate(a),
        Command::Tokenize(a) => run::tokenize(a),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Quantize(a) => quantize::quantize(a),
        Command::Fetch(a) => run::fetch(a),
        Command::List => run::list(),
        Command::Bench(a) => bench::bench(a),
        Command::Kld(a) => kld::kld(a),
        Command::Synth(a) => synth::synth(a),
    }
}
