//! `marco bench --kernels`: how fast each one-token chunk kernel streams weight rows from
//! memory on one thread, against a plain read loop, run by run.
//!
//! Why beside `--bandwidth`: a model's decoding share mixes the kernels' own speed with what
//! lies between them (other ops, every matmul starting again after other memory traffic).
//! Here each kernel reads one long run of rows (whole batches up to 144 MiB, far beyond the
//! caches) next to a read loop over 144 MiB, in rounds whose order rotates, and each round's
//! ratio is taken before the median, so this VM's drift from minute to minute moves both sides
//! of a ratio together. The shares still move with the machine's state from run to run (the default
//! model's kernels, weighted: 86-95% in three runs in a row), so kernel versions are best
//! compared in alternating runs. One more thing moves them: where the allocator puts the
//! activation arrays. For `Q4_K` rows of 8960 weights (read one row at a time) the same kernel
//! read at 53% to 87% of the loop over sixteen placements in one process; the 1.5B model's
//! decoding did not change when its kernel read a contiguous copy of the arrays instead
//! (0.99-1.01x, token by token), so the model's own placement was not a bad one.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use marco::backend::cpu::kernels::Kernels;
use marco::backend::cpu::memory::HugeBuf;
use marco_quantize::chunks::{ActChunks, ROW_GROUP};
use marco_quantize::GgmlType;

use super::bench::{mean_sd, median, read_words, weight_tensors};

/// Memory the runs walk round: each run finds nothing of the one before it in the caches.
const BUF_BYTES: usize = 1 << 30;
/// Bytes one run reads (a kernel's run: whole batches of rows up to this).
const RUN_BYTES: usize = 144 << 20;
/// Rows per kernel call, as the CPU backend hands them over (a multiple of `ROW_GROUP`).
const BATCH: usize = 64;
const _: () = assert!(BATCH.is_multiple_of(ROW_GROUP));

/// One kernel to measure: a weight type at a row width the model has.
struct Case {
    ty: GgmlType,
    cols: usize,
    row_bytes: usize,
    /// Bytes of such weights a decoded token reads.
    token_bytes: u64,
    acts: ActChunks,
}

/// Rates of one round, bytes/s: the read loop's and each case's.
struct Round {
    read: f64,
    kernel_rates: Vec<f64>,
}

/// Runs `rounds` rounds (at least one: `bench` checks `--repetitions`) over the chunk kernels
/// for `path`'s matrix weights and prints the table.
pub fn bench_kernels(path: &Path, rounds: usize) -> Result<()> {
    let kernels = Kernels::detect();
    let (cases, token_bytes) = cases(path, &kernels)?;
    if cases.is_empty() {
        println!(
            "The {} path has no chunk kernels for this model's matrix weights: nothing to measure.",
            kernels.name()
        );
        return Ok(());
    }
    let mut mem = HugeBuf::zeroed(BUF_BYTES)?;
    // Bytes of 0x33 decode to ordinary numbers in every type (f16 0x3333 is 0.22), and a
    // kernel's speed does not depend on the values.
    mem.as_mut_slice().fill(0x33);
    let mut offset = 0usize;
    let results: Vec<Round> = (0..rounds)
        .map(|r| round(&kernels, &cases, mem.as_slice(), &mut offset, r))
        .collect();
    print_table(&kernels, &cases, &results, token_bytes);
    Ok(())
}

/// The distinct (type, row width) of the model's matrix weights that have chunk kernels on
/// this path, most bytes first, and the bytes a token reads in all. (Rows so long that one
/// kernel call's batch would not fit a run, over 2 MiB, are left out: no model has them.)
fn cases(path: &Path, kernels: &Kernels) -> Result<(Vec<Case>, u64)> {
    let mut cases: Vec<Case> = Vec::new();
    let mut total = 0u64;
    for t in weight_tensors(path)? {
        total += t.n_bytes;
        let cols = t.dims[0] as usize;
        let row_bytes = t.ty.row_bytes(t.dims[0]).unwrap_or(0) as usize;
        if !kernels.has_chunks(t.ty, cols) || row_bytes == 0 || BATCH * row_bytes > RUN_BYTES {
            continue;
        }
        match cases.iter_mut().find(|c| c.ty == t.ty && c.cols == cols) {
            Some(c) => c.token_bytes += t.n_bytes,
            None => cases.push(Case {
                ty: t.ty,
                cols,
                row_bytes,
                token_bytes: t.n_bytes,
                acts: activations(kernels, cols),
            }),
        }
    }
    cases.sort_by_key(|c| std::cmp::Reverse(c.token_bytes));
    Ok((cases, total))
}

/// One token of `cols` activations in both forms the chunk kernels take.
fn activations(kernels: &Kernels, cols: usize) -> ActChunks {
    let x: Vec<f32> = (0..cols)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 30.0)
        .collect();
    let mut acts = ActChunks::default();
    kernels.quantize_chunks(&x, &mut acts);
    acts.fill_steps();
    acts.fill_q8k(&x);
    acts
}

/// The read loop and every case once, starting one further along the list each round.
fn round(kernels: &Kernels, cases: &[Case], mem: &[u8], offset: &mut usize, r: usize) -> Round {
    let n = cases.len() + 1;
    let mut rates = vec![0.0; n];
    for k in 0..n {
        let which = (r + k) % n;
        let len = match which {
            0 => RUN_BYTES,
            i => run_rows(&cases[i - 1]) * cases[i - 1].row_bytes,
        };
        if *offset + len > mem.len() {
            *offset = 0;
        }
        let run = &mem[*offset..*offset + len];
        *offset += len;
        let t0 = Instant::now();
        match which {
            0 => read_words(run, 1),
            i => stream(kernels, &cases[i - 1], run),
        }
        rates[which] = len as f64 / t0.elapsed().as_secs_f64();
    }
    Round {
        read: rates[0],
        kernel_rates: rates[1..].to_vec(),
    }
}

/// Rows of one run: whole batches, as many as fit in `RUN_BYTES` (`cases` keeps only rows of
/// which a batch fits).
fn run_rows(c: &Case) -> usize {
    RUN_BYTES / c.row_bytes / BATCH * BATCH
}

/// The case's kernel over every row of `run`, a batch per call.
fn stream(kernels: &Kernels, c: &Case, run: &[u8]) {
    let mut out = [0f32; BATCH];
    for batch in run.chunks_exact(BATCH * c.row_bytes) {
        kernels.dot_chunks(c.ty, batch, &c.acts, &mut out);
    }
    std::hint::black_box(out);
}

fn print_table(kernels: &Kernels, cases: &[Case], rounds: &[Round], token_bytes: u64) {
    println!(
        "Chunk kernels on one thread ({}), each over whole batches of rows up to {} MiB in a \
         round with a plain read loop over that many bytes; {} rounds, the order rotating \
         (rates: the means; share: the median of the rounds' own).",
        kernels.name(),
        RUN_BYTES >> 20,
        rounds.len()
    );
    println!("| type | row width | row bytes | of a token's weights | kernel reads | read loop | share |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let reads: Vec<f64> = rounds.iter().map(|r| r.read).collect();
    let read = mean_sd(&reads).0;
    // A token's time over these weights at the measured shares, as a share of the loop's
    // (times per byte add up: the shares combine as a harmonic mean weighted by bytes).
    let (mut covered, mut time) = (0.0, 0.0);
    for (i, c) in cases.iter().enumerate() {
        let rates: Vec<f64> = rounds.iter().map(|r| r.kernel_rates[i]).collect();
        let rate = mean_sd(&rates).0;
        let shares: Vec<f64> = rounds.iter().map(|r| r.kernel_rates[i] / r.read).collect();
        let share = median(&shares);
        let frac = c.token_bytes as f64 / token_bytes.max(1) as f64;
        covered += frac;
        time += frac / share;
        println!(
            "| {} | {} | {} | {:.0}% | {:.1} GB/s | {:.1} GB/s | {:.1}% |",
            c.ty,
            c.cols,
            c.row_bytes,
            100.0 * frac,
            rate / 1e9,
            read / 1e9,
            100.0 * share
        );
    }
    println!(
        "Weighted by a token's bytes, these kernels ({:.0}% of them) stream at {:.1}% of the loop.",
        100.0 * covered,
        100.0 * covered / time
    );
}
