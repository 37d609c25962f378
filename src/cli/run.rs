//! translate, generate, tokenize, fetch, list.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use marco::engine::Engine;
use marco::generate::{GenerateOptions, SamplingParams};
use marco::lang::LANGUAGES;
use marco::models::{self, ModelSpec, MODELS};
use marco::translate::Translator;
use marco::{gguf::GgufFile, Language};

use super::{FetchArgs, GenerateArgs, ModelArgs, SamplingArgs, TokenizeArgs, TranslateArgs};

impl SamplingArgs {
    fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            seed: self.seed,
        }
    }
}

fn load_engine(args: &ModelArgs) -> Result<Engine> {
    let path = models::resolve_model(args.model.as_deref())?;
    let t0 = Instant::now();
    let engine = Engine::load(&path, &args.engine_options())?;
    log::info(&format!(
        "loaded {} on {} in {:.2}s",
        path.display(),
        engine.model.backend_description(),
        t0.elapsed().as_secs_f64()
    ));
    Ok(engine)
}

pub fn translate(a: TranslateArgs) -> Result<()> {
    // Check the languages before the slow model load.
    let (from, to) = (Language::find(&a.from)?, Language::find(&a.to)?);
    let input = match (&a.text, &a.input) {
        (Some(t), None) => Input::Single(t.clone()),
        (None, Some(p)) => Input::Lines(
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        ),
        (None, None) => Input::Lines(read_stdin()?),
        (Some(_), Some(_)) => {
            anyhow::bail!("give the text either as an argument or with --input, not both")
        }
    };
    let mut translator = Translator::new(load_engine(&a.model)?);
    translator.options.max_tokens = a.max_tokens;
    translator.options.sampling = a.sampling.params();
    let t0 = Instant::now();
    let mut out = String::new();
    let mut n_units = 0usize;
    let stream_to_stdout = a.output.is_none();
    let mut run_one = |text: &str, out: &mut String| -> Result<()> {
        let stdout = std::io::stdout();
        let translated =
            translator.translate_streaming(text, from.iso1, to.iso1, &mut |piece| {
                if stream_to_stdout {
                    let mut lock = stdout.lock();
                    let _ = lock.write_all(piece.as_bytes());
                    let _ = lock.flush();
                }
            })?;
        out.push_str(&translated);
        out.push('\n');
        if stream_to_stdout {
            println!();
        }
        Ok(())
    };
    match input {
        Input::Single(text) => {
            run_one(&text, &mut out)?;
            n_units = 1;
        }
        Input::Lines(text) => {
            for line in text.lines() {
                if line.trim().is_empty() {
                    out.push('\n');
                    if stream_to_stdout {
                        println!();
                    }
                } else {
                    run_one(line, &mut out)?;
                    n_units += 1;
                }
            }
        }
    }
    if let Some(path) = &a.output {
        write_atomically(path, out.as_bytes())?;
    }
    if a.verbose {
        log::info(&format!(
            "translated {n_units} segment(s) {} -> {} in {:.2}s",
            from.name,
            to.name,
            t0.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

enum Input {
    Single(String),
    Lines(String),
}

fn read_stdin() -> Result<String> {
    let mut s = String::new();
    for line in std::io::stdin().lock().lines() {
        s.push_str(&line.context("reading stdin (is it UTF-8 text?)")?);
        s.push('\n');
    }
    Ok(s)
}

/// Writes to a temporary file beside `path`, then renames, so readers never see a partial file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().context("output path has no file name")?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let mut engine = load_engine(&a.model)?;
    let prompt = engine.tokenizer.encode(&a.raw, true);
    let opts = GenerateOptions {
        max_tokens: a.n,
        sampling: a.sampling.params(),
        stop_tokens: if a.ignore_eos {
            vec![]
        } else {
            engine.stop_tokens().to_vec()
        },
    };
    let t0 = Instant::now();
    let print_text = !a.ids;
    let (ids, _) = engine.generate_streaming(&prompt, &opts, &mut |piece| {
        if print_text {
            print!("{piece}");
            let _ = std::io::stdout().flush();
        }
    })?;
    if a.ids {
        println!("{}", join_ids(&ids));
    } else {
        println!();
    }
    let secs = t0.elapsed().as_secs_f64();
    log::info(&format!(
        "{} prompt + {} generated tokens in {secs:.2}s",
        prompt.len(),
        ids.len()
    ));
    Ok(())
}

fn join_ids(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let path = models::resolve_model(a.model.as_deref())?;
    let file = GgufFile::open(&path)?;
    let tokenizer = marco::engine::tokenizer_from_gguf(&file)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading stdin (is it UTF-8 text?)")?;
        writeln!(out, "{}", join_ids(&tokenizer.encode(&line, a.special)))?;
    }
    out.flush()?;
    Ok(())
}

pub fn fetch(a: FetchArgs) -> Result<()> {
    let spec = ModelSpec::find(&a.name)?;
    let path = models::fetch(&spec, a.quiet)?;
    if !a.quiet {
        println!("{}", path.display());
    }
    Ok(())
}

pub fn list() -> Result<()> {
    println!(
        "models (marco fetch NAME; cache: {}):",
        models::models_dir()?.display()
    );
    for m in MODELS {
        let cached = if m.cached_path()?.is_file() {
            "cached"
        } else {
            "not fetched"
        };
        println!("  {:<22} {} [{cached}]", m.name, m.description);
    }
    println!("languages (--from/--to take any of these codes or the name):");
    for l in LANGUAGES {
        println!(
            "  {:<3} {:<4} {:<9} {}",
            l.iso1, l.iso3[0], l.flores, l.name
        );
    }
    Ok(())
}

/// Messages for the user on stderr.
pub mod log {
    pub fn info(msg: &str) {
        eprintln!("marco: {msg}");
    }
}
