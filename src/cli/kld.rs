//! `marco kld`: how far quantized models are from their base, per language, on FLORES text.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use marco::engine::{Engine, EngineOptions};
use marco::eval::{kld_per_language, KldStats};
use marco::lang::{Language, LANGUAGES};

#[derive(Args)]
pub struct KldArgs {
    /// The reference model (e.g. F16).
    #[arg(long)]
    base: PathBuf,
    /// The quantized model(s) to compare with it (repeat -m to compare several in one run).
    #[arg(long, short = 'm', required = true)]
    model: Vec<PathBuf>,
    /// FLORES-200 dev directory (one <flores_code>.txt per language).
    #[arg(long, default_value = "../shared/data/flores200-dev")]
    data: PathBuf,
    /// Languages, comma-separated codes or names [default: all 31].
    #[arg(long, value_delimiter = ',')]
    langs: Vec<String>,
    /// Tokens of text per language.
    #[arg(short = 'n', long = "tokens", default_value_t = 256)]
    n: usize,
    /// CPU threads [default: one per core].
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn kld(a: KldArgs) -> Result<()> {
    let langs: Vec<Language> = if a.langs.is_empty() {
        LANGUAGES.to_vec()
    } else {
        a.langs
            .iter()
            .map(|l| Language::find(l))
            .collect::<Result<_>>()?
    };
    let opts = EngineOptions {
        threads: a.threads,
        ctx: a.n.max(2),
        ..Default::default()
    };
    let mut base = Engine::load(&a.base, &opts)?;
    let mut models = a
        .model
        .iter()
        .map(|m| Engine::load(m, &opts))
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = a.model.iter().map(|m| m.display().to_string()).collect();
    let rows = kld_per_language(&mut base, &mut models, &a.data, &langs, a.n, &mut |k, s| {
        eprintln!("marco: {} {} mean KLD {:.5}", names[k], s.label, s.kld_mean);
    })?;
    if a.json {
        let all: Vec<_> = names
            .iter()
            .zip(&rows)
            .map(|(n, r)| serde_json::json!({ "model": n, "rows": json_rows(r) }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
    } else {
        for (n, r) in names.iter().zip(&rows) {
            println!("\n{n} against {}:\n", a.base.display());
            print_table(r);
        }
    }
    Ok(())
}

fn print_table(rows: &[KldStats]) {
    println!("| language | tokens | PPL base | PPL model | mean KLD | p99 KLD | same top-1 |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        println!(
            "| {} | {} | {:.3} | {:.3} | {:.5} | {:.5} | {:.2}% |",
            r.label,
            r.tokens,
            r.ppl_base,
            r.ppl_model,
            r.kld_mean,
            r.kld_p99,
            r.top1_agreement * 100.0
        );
    }
}

fn json_rows(rows: &[KldStats]) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|r| {
            serde_json::json!({
                "language": r.label, "tokens": r.tokens, "ppl_base": r.ppl_base,
                "ppl_model": r.ppl_model, "kld_mean": r.kld_mean, "kld_p99": r.kld_p99,
                "top1_agreement": r.top1_agreement,
            })
        })
        .collect()
}
