//! `marco bench`: prompt-processing and decoding speed, measured like llama-bench
//! (`-p 512 -n 128 -t 1,2 -r 5`), with llama-bench's JSON field names so tools that read one
//! read the other.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Result};
use clap::Args;
use marco::backend::BackendKind;
use marco::engine::{Engine, EngineOptions};
use marco::model::Logits;
use marco::models;

#[derive(Args)]
pub struct BenchArgs {
    /// GGUF model file [default: the cached default model].
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// Compute backend: cpu, gpu or auto.
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
    /// Prompt lengths to test (comma-separated; 0 skips the prompt tests).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    n_prompt: Vec<usize>,
    /// Generation lengths to test (comma-separated; 0 skips the generation tests).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    n_gen: Vec<usize>,
    /// Thread counts to test (comma-separated) [default: one per core].
    #[arg(short = 't', long = "threads", value_delimiter = ',')]
    threads: Vec<usize>,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    repetitions: usize,
    /// Print JSON (llama-bench's field names) instead of a table.
    #[arg(long)]
    json: bool,
    /// Also measure this machine's memory read bandwidth at each thread count and print what
    /// share of it decoding uses (a token reads every matmul weight once). After each decoded
    /// token a plain read loop reads as many bytes as the token did (up to 1 GiB, its time
    /// scaled to the token's bytes beyond that), from memory of the same kind, on as many
    /// threads: the two alternate every few milliseconds, so they meet the same machine (this
    /// VM's bandwidth drifts by a quarter from minute to minute). The best of five 1 GiB
    /// passes after all tests is shown too. Decode tests' tokens/s then count the tokens' time
    /// alone, each token starting with cold caches and idle worker threads: compare them with
    /// runs without this flag only loosely.
    #[arg(long)]
    bandwidth: bool,
    /// Instead of the model tests: how fast each one-token chunk kernel streams rows of the
    /// model's weight types and widths from memory on one thread, against a plain read loop.
    /// Each kernel reads whole batches of rows up to 144 MiB in a round with the loop over 144
    /// MiB (one thread; -t, -p, -n and --json do not apply); 8 rounds per repetition, the order
    /// rotating, and the share is the median of the rounds' own: the kernels alone, without the
    /// model's other ops, each ratio taken in one moment.
    #[arg(long, conflicts_with_all = ["bandwidth", "json", "threads", "n_prompt", "n_gen"])]
    kernels: bool,
}

struct Sample {
    n_threads: usize,
    n_prompt: usize,
    n_gen: usize,
    backend: String,
    ts: Vec<f64>,
    ns: Vec<f64>,
    /// With `--bandwidth`, decode tests, per repetition: seconds the read loop took to read
    /// what the tokens read, alternating with them (`ns` is the tokens' time alone then).
    read_secs: Vec<f64>,
}

pub fn bench(a: BenchArgs) -> Result<()> {
    ensure!(a.repetitions > 0, "--repetitions must be at least 1");
    ensure!(
        !a.bandwidth || a.backend == BackendKind::Cpu,
        "--bandwidth measures host memory against CPU decoding: it goes with --backend cpu"
    );
    ensure!(
        !a.kernels || a.backend == BackendKind::Cpu,
        "--kernels measures the CPU kernels: it goes with --backend cpu"
    );
    let path = models::resolve_model(a.model.as_deref())?;
    if a.kernels {
        return super::bench_kernels::bench_kernels(&path, 8 * a.repetitions);
    }
    let threads = if a.threads.is_empty() {
        vec![marco::backend::cpu::default_threads()]
    } else {
        a.threads.clone()
    };
    let ctx = a
        .n_prompt
        .iter()
        .chain(&a.n_gen)
        .copied()
        .max()
        .unwrap_or(1)
        + 1;
    let read_loop = if a.bandwidth {
        Some(ReadLoop::new(weight_bytes_per_token(&path)?)?)
    } else {
        None
    };
    let mut samples = Vec::new();
    for &t in &threads {
        let opts = EngineOptions {
            backend: a.backend,
            threads: t,
            ctx,
        };
        let mut engine = Engine::load(&path, &opts)?;
        let backend = engine.model.backend_description();
        for &n in a.n_prompt.iter().filter(|&&n| n > 0) {
            samples.push(run_test(
                &mut engine,
                &backend,
                t,
                n,
                0,
                a.repetitions,
                None,
            )?);
        }
        for &n in a.n_gen.iter().filter(|&&n| n > 0) {
            samples.push(run_test(
                &mut engine,
                &backend,
                t,
                0,
                n,
                a.repetitions,
                read_loop.as_ref(),
            )?);
        }
    }
    let size = std::fs::metadata(&path)?.len();
    if a.json {
        print_json(&samples, &path, size);
    } else {
        print_table(&samples, &path, size);
    }
    if let Some(read_loop) = &read_loop {
        eprintln!(
            "marco: peak RSS {} (with the read loop's {} MiB)",
            peak_rss_text(),
            ReadLoop::BYTES >> 20
        );
        // After JSON the table goes to stderr, so stdout stays one JSON document.
        let table = bandwidth_table(&samples, &threads, read_loop);
        if a.json {
            eprint!("{table}");
        } else {
            print!("{table}");
        }
    } else {
        eprintln!("marco: peak RSS {}", peak_rss_text());
    }
    Ok(())
}

/// Bytes of weights one decoded token reads.
fn weight_bytes_per_token(path: &std::path::Path) -> Result<u64> {
    Ok(weight_tensors(path)?.iter().map(|t| t.n_bytes).sum())
}

/// The weights one decoded token reads whole: every 2-D tensor but the embedding table (of
/// which it reads one row), unless the table doubles as the output matrix.
pub(super) fn weight_tensors(path: &std::path::Path) -> Result<Vec<marco::gguf::TensorInfo>> {
    let file = marco::gguf::GgufFile::open(path)?;
    let tied = file.tensor_info("output.weight").is_none();
    Ok(file
        .tensors()
        .iter()
        .filter(|t| t.dims.len() == 2 && (tied || t.name != "token_embd.weight"))
        .cloned()
        .collect())
}

/// A plain read loop over a buffer far beyond any cache, in the same kind of memory as the CPU
/// backend's weights (2 MiB pages): the bound a decoded token's weight stream is held to.
struct ReadLoop {
    mem: marco::backend::cpu::memory::HugeBuf,
    /// Bytes of weights a decoded token reads.
    per_token: u64,
    /// Bytes each read between tokens reads: as many, up to the buffer's size (beyond it the
    /// rate of a 1 GiB read stands for the rest).
    span: usize,
    /// Where the next read between tokens starts: the reads walk the buffer round, so none
    /// finds the one before it still in the caches.
    next: std::cell::Cell<usize>,
}

impl ReadLoop {
    const BYTES: usize = 1 << 30;

    fn new(per_token: u64) -> Result<ReadLoop> {
        ensure!(
            per_token > 0,
            "--bandwidth: this model's tokens read no matrix weights to compare with"
        );
        let mut mem = marco::backend::cpu::memory::HugeBuf::zeroed(Self::BYTES)?;
        mem.as_mut_slice().fill(1);
        let span = usize::try_from(per_token)
            .unwrap_or(usize::MAX)
            .clamp(64, Self::BYTES)
            / 64
            * 64;
        Ok(ReadLoop {
            mem,
            per_token,
            span,
            next: std::cell::Cell::new(0),
        })
    }

    /// One pass over the whole buffer on `n_threads` threads: bytes/s.
    fn pass(&self, n_threads: usize) -> f64 {
        let t0 = Instant::now();
        read_words(self.mem.as_slice(), n_threads);
        Self::BYTES as f64 / t0.elapsed().as_secs_f64()
    }

    /// The best of five passes.
    fn best(&self, n_threads: usize) -> f64 {
        (0..5).map(|_| self.pass(n_threads)).fold(0.0, f64::max)
    }

    /// Reads what a token reads, from where the last read stopped: the seconds a token's
    /// bytes take at the rate it read them.
    fn read_a_token(&self, n_threads: usize) -> f64 {
        let mut start = self.next.get();
        if start + self.span > Self::BYTES {
            start = 0;
        }
        self.next.set(start + self.span);
        let t0 = Instant::now();
        read_words(&self.mem.as_slice()[start..start + self.span], n_threads);
        t0.elapsed().as_secs_f64() * self.per_token as f64 / self.span as f64
    }
}

/// Sums `bytes` as 64-bit words, split over `n_threads` threads (the calling thread takes the
/// first share, so one thread costs no spawn). Shares are whole 64-byte lines, as
/// [`sum_words`] reads them.
pub(super) fn read_words(bytes: &[u8], n_threads: usize) {
    let words = bytes.as_chunks::<8>().0;
    let share = words
        .len()
        .div_ceil(n_threads.max(1))
        .next_multiple_of(8)
        .max(8);
    let total: u64 = std::thread::scope(|s| {
        let mut parts = words.chunks(share);
        let first = parts.next().unwrap_or_default();
        let others: Vec<_> = parts.map(|part| s.spawn(move || sum_words(part))).collect();
        // Wrapping: the sums are only there to be read, and they overflow.
        others
            .into_iter()
            .map(|h| h.join().unwrap_or(0))
            .fold(sum_words(first), u64::wrapping_add)
    });
    std::hint::black_box(total);
}

fn sum_words(part: &[[u8; 8]]) -> u64 {
    // Eight independent sums, so the loop is bound by loads alone.
    let mut acc = [0u64; 8];
    for c in part.as_chunks::<8>().0 {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(u64::from_ne_bytes(*v));
        }
    }
    acc.iter().fold(0u64, |a, &b| a.wrapping_add(b))
}

/// The share of the read bandwidth decoding uses, per thread count and decode test: the read
/// loop's time for the bytes the tokens read over the tokens' time, with the two alternating
/// token by token, median over repetitions; and decoding's mean rate (the tokens/s of the
/// table above times the bytes of a token) against the best of five passes.
fn bandwidth_table(samples: &[Sample], threads: &[usize], read_loop: &ReadLoop) -> String {
    use std::fmt::Write;
    let per_token = read_loop.per_token as f64;
    let mut out = String::new();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Decoding reads {:.1} MB of weights per token. Read loop: after each token, a read of \
         as many bytes (rates: the mean over repetitions; share: the median of theirs); and \
         the best of five 1 GiB passes after all tests.",
        per_token / 1e6
    );
    let _ = writeln!(
        out,
        "| threads | test | weights read | read loop between tokens | share | best read pass | share of best |"
    );
    let _ = writeln!(out, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &t in threads {
        let best = read_loop.best(t);
        for s in samples
            .iter()
            .filter(|s| s.n_threads == t && s.n_prompt == 0 && !s.read_secs.is_empty())
        {
            let bytes = per_token * s.n_gen as f64;
            let rates: Vec<f64> = s.ns.iter().map(|ns| bytes / (ns * 1e-9)).collect();
            let read_rates: Vec<f64> = s.read_secs.iter().map(|secs| bytes / secs).collect();
            let shares: Vec<f64> = rates.iter().zip(&read_rates).map(|(r, b)| r / b).collect();
            let rate = mean_sd(&rates).0;
            let _ = writeln!(
                out,
                "| {t} | {} | {:.1} GB/s | {:.1} GB/s | {:.0}% | {:.1} GB/s | {:.0}% |",
                test_name(s),
                rate / 1e9,
                mean_sd(&read_rates).0 / 1e9,
                100.0 * median(&shares),
                best / 1e9,
                100.0 * rate / best
            );
        }
    }
    out
}

fn run_test(
    engine: &mut Engine,
    backend: &str,
    n_threads: usize,
    n_prompt: usize,
    n_gen: usize,
    reps: usize,
    read_loop: Option<&ReadLoop>,
) -> Result<Sample> {
    let n_vocab = engine.model.config().n_vocab as u32;
    // Deterministic pseudo-random tokens, like llama-bench's random prompt.
    let prompt: Vec<u32> = (0..n_prompt as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) % n_vocab.min(150_000))
        .collect();
    let mut logits = Vec::new();
    // One repetition: the seconds its tokens took, and with a read loop the seconds the loop
    // took between them (not in the first figure).
    let mut once = |engine: &mut Engine| -> Result<(f64, f64)> {
        engine.model.reset();
        let t0 = Instant::now();
        if n_prompt > 0 {
            engine.model.forward(&prompt, Logits::Last, &mut logits)?;
        }
        // The read loop's time as a token's bytes would take (for the share), and its wall
        // time with the spawning and timing around it (out of the tokens' time).
        let (mut read_secs, mut read_wall) = (0.0, 0.0);
        // Decoding as greedy generation runs it: the logits stay with the backend, which
        // picks the token (llama-bench, too, leaves them where they are computed).
        let mut token = 198u32 % n_vocab;
        for _ in 0..n_gen {
            token = engine.model.forward_argmax(&[token])?;
            if let Some(r) = read_loop {
                let t = Instant::now();
                read_secs += r.read_a_token(n_threads);
                read_wall += t.elapsed().as_secs_f64();
            }
        }
        Ok((t0.elapsed().as_secs_f64() - read_wall, read_secs))
    };
    once(engine)?; // warm-up, as llama-bench does
    let mut ts = Vec::new();
    let mut ns = Vec::new();
    let mut read_secs = Vec::new();
    for _ in 0..reps {
        let (secs, reads) = once(engine)?;
        ts.push((n_prompt + n_gen) as f64 / secs);
        ns.push(secs * 1e9);
        if read_loop.is_some() {
            read_secs.push(reads);
        }
    }
    Ok(Sample {
        n_threads,
        n_prompt,
        n_gen,
        backend: backend.to_string(),
        ts,
        ns,
        read_secs,
    })
}

pub(super) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub(super) fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

fn test_name(s: &Sample) -> String {
    if s.n_gen == 0 {
        format!("pp{}", s.n_prompt)
    } else {
        format!("tg{}", s.n_gen)
    }
}

fn print_table(samples: &[Sample], path: &std::path::Path, size: u64) {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    println!("| model | size | backend | threads | test | t/s |");
    println!("| --- | ---: | --- | ---: | ---: | ---: |");
    for s in samples {
        let (m, sd) = mean_sd(&s.ts);
        println!(
            "| {name} | {:.2} MiB | {} | {} | {} | {m:.2} ± {sd:.2} |",
            size as f64 / (1 << 20) as f64,
            s.backend,
            s.n_threads,
            test_name(s)
        );
    }
}

fn print_json(samples: &[Sample], path: &std::path::Path, size: u64) {
    let rows: Vec<serde_json::Value> = samples
        .iter()
        .map(|s| {
            let (avg_ts, stddev_ts) = mean_sd(&s.ts);
            let (avg_ns, stddev_ns) = mean_sd(&s.ns);
            serde_json::json!({
                "build_commit": "marco",
                "build_number": 0,
                "cpu_info": marco::backend::cpu::kernels::Kernels::detect().name(),
                "backends": s.backend,
                "model_filename": path.display().to_string(),
                "model_size": size,
                "n_threads": s.n_threads,
                "n_prompt": s.n_prompt,
                "n_gen": s.n_gen,
                "avg_ns": avg_ns as u64,
                "stddev_ns": stddev_ns as u64,
                "avg_ts": avg_ts,
                "stddev_ts": stddev_ts,
                "samples_ns": s.ns.iter().map(|&x| x as u64).collect::<Vec<_>>(),
                "samples_ts": s.ts,
            })
        })
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&rows).unwrap_or_default()
    );
}

/// Peak resident set size of this process (Linux: VmHWM), for the record.
pub fn peak_rss_text() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l["VmHWM:".len()..].trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}
