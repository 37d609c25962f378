//! The conversion itself: choose every tensor's type, declare the output, then stream tensor by
//! tensor (source rows → f32 → target type) across all cores into the [`GgufWriter`].
//!
//! Memory: one output tensor at a time plus one f32 row per thread; the source stays
//! memory-mapped and the pages of each safetensors tensor are released once it is written, so
//! the peak is about the largest output tensor, whatever the model size.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use memmap2::Mmap;

use super::mix::{llama_order, Fallback, MixModel, MixState};
use super::safetensors::release_pages;
use super::{ConvertOptions, ConvertReport};
use crate::dequant::dequantize_row;
use crate::gguf::{GgufWriter, TensorDecl, Value, DEFAULT_ALIGNMENT};
use crate::quants::quantize_row_weighted;
use crate::types::GgmlType;

/// llama.cpp's `GGML_QNT_VERSION`, stored as `general.quantization_version`.
const QUANTIZATION_VERSION: u32 = 2;

/// Elements per unit of work handed to a thread (llama.cpp's minimum chunk): small enough to
/// balance the cores and move the progress bar smoothly, large enough to amortize the queue.
const CHUNK_ELEMS: usize = 32 * 512;

/// The sink for log lines: the caller's function, or nothing. (Nothing is logged while the
/// progress bar is drawn, so the two never interleave.)
pub struct Log<'a> {
    sink: Option<&'a super::LogFn>,
}

impl<'a> Log<'a> {
    pub fn new(sink: Option<&'a super::LogFn>) -> Log<'a> {
        Log { sink }
    }

    pub fn line(&self, msg: &str) {
        if let Some(sink) = self.sink {
            sink(msg);
        }
    }
}

/// One tensor of the input, already named as in GGUF.
pub struct SourceTensor<'a> {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    /// How `data` is encoded (safetensors dtypes map to F32 / F16 / BF16).
    pub ty: GgmlType,
    pub data: &'a [u8],
    /// The memory map and byte range behind `data`, released after conversion.
    pub pages: Option<(&'a Mmap, usize, usize)>,
}

impl SourceTensor<'_> {
    fn row_len(&self) -> usize {
        self.dims[0] as usize
    }

    fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// Everything the pipeline needs from an input.
pub struct Source<'a> {
    /// Output metadata except `general.file_type` and `general.quantization_version` (set here,
    /// in place when present).
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<SourceTensor<'a>>,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// The files read, which the output must not replace.
    pub files: Vec<PathBuf>,
}

/// One planned output tensor.
struct Job<'s, 'a> {
    src: &'s SourceTensor<'a>,
    ty: GgmlType,
    importance: Option<&'s [f32]>,
}

/// Convert `source` into `output`.
pub fn run(
    mut source: Source<'_>,
    output: &Path,
    opts: &ConvertOptions,
    log: &Log,
) -> Result<ConvertReport> {
    let t0 = Instant::now();
    source.tensors.sort_by(|a, b| llama_order(&a.name, &b.name));
    check_sources(&source.tensors)?;
    let (types, fallbacks) = plan(&source, opts);
    log_fallbacks(&fallbacks, log);
    let imatrix = opts.importance.as_ref();
    check_imatrix(imatrix)?;
    let jobs = jobs(&source.tensors, &types, imatrix, log)?;
    let metadata = output_metadata(std::mem::take(&mut source.metadata), opts);
    let bytes_out = write_file(output, metadata, &jobs, opts)?;
    let report = ConvertReport {
        output: output.to_path_buf(),
        file_type: opts.file_type,
        tensors: jobs.iter().map(|j| (j.src.name.clone(), j.ty)).collect(),
        fallbacks,
        n_elements: jobs.iter().map(|j| j.src.n_elements()).sum(),
        bytes_in: jobs.iter().map(|j| j.src.data.len() as u64).sum(),
        bytes_out,
        seconds: t0.elapsed().as_secs_f64(),
    };
    log.line(&report.summary());
    Ok(report)
}

/// The input's metadata with this file's type and quantization version (in place when
/// present, as llama.cpp updates them) and without an alignment key (the writer uses 32).
fn output_metadata(
    mut metadata: Vec<(String, Value)>,
    opts: &ConvertOptions,
) -> Vec<(String, Value)> {
    set_key(
        &mut metadata,
        "general.file_type",
        opts.file_type.llama_ftype(),
    );
    set_key(
        &mut metadata,
        "general.quantization_version",
        QUANTIZATION_VERSION,
    );
    metadata.retain(|(k, _)| k != crate::gguf::ALIGNMENT_KEY);
    metadata
}

/// Declare every tensor, then convert and append them one by one; the bytes written.
fn write_file(
    output: &Path,
    metadata: Vec<(String, Value)>,
    jobs: &[Job<'_, '_>],
    opts: &ConvertOptions,
) -> Result<u64> {
    let decls = jobs
        .iter()
        .map(|j| TensorDecl::new(j.src.name.clone(), &j.src.dims, j.ty))
        .collect();
    let mut writer = GgufWriter::create(output, metadata, decls, DEFAULT_ALIGNMENT)?;
    let bytes_in = jobs.iter().map(|j| j.src.data.len() as u64).sum();
    let bar = progress_bar(bytes_in, opts.progress);
    let threads = thread_count(opts.threads);
    let mut bytes_out = 0u64;
    for (i, job) in jobs.iter().enumerate() {
        let n = jobs.len();
        bar.set_message(format!("[{}/{n}] {} → {}", i + 1, job.src.name, job.ty));
        let n_bytes = writer.tensors()[i].n_bytes as usize;
        bytes_out += n_bytes as u64;
        write_one(&mut writer, job, n_bytes, threads, &bar)?;
        if let Some((map, offset, len)) = job.src.pages {
            release_pages(map, offset, len);
        }
    }
    writer.finish()?;
    bar.finish_and_clear();
    Ok(bytes_out)
}

/// Each tensor's data is exactly what its type and shape say (both readers guarantee it; a
/// mismatch here is a bug, reported rather than risked).
fn check_sources(tensors: &[SourceTensor<'_>]) -> Result<()> {
    for t in tensors {
        ensure!(!t.dims.is_empty(), "tensor '{}' has no dimensions", t.name);
        let rows: u64 = t.dims[1..].iter().product();
        let want = t.ty.row_bytes(t.dims[0]).and_then(|r| r.checked_mul(rows));
        ensure!(
            want == Some(t.data.len() as u64),
            "tensor '{}' ({} {:?}) has {} bytes of data",
            t.name,
            t.ty,
            t.dims,
            t.data.len()
        );
    }
    Ok(())
}

/// The type of every tensor (in source order) and the fallbacks taken.
fn plan(source: &Source<'_>, opts: &ConvertOptions) -> (Vec<GgmlType>, Vec<(String, Fallback)>) {
    let model = MixModel {
        n_layer: source.n_layer,
        n_head: source.n_head,
        n_head_kv: source.n_head_kv,
        tied_embeddings: !source.tensors.iter().any(|t| t.name == "output.weight"),
        has_imatrix: opts.importance.is_some(),
    };
    let names = source.tensors.iter().map(|t| t.name.as_str());
    let mut mix = MixState::new(opts.file_type, model, names);
    let mut fallbacks = Vec::new();
    let types = source
        .tensors
        .iter()
        .map(|t| {
            let choice = mix.choose(&t.name, &t.dims);
            if let Some(f) = choice.fallback {
                fallbacks.push((t.name.clone(), f));
            }
            choice.ty
        })
        .collect();
    (types, fallbacks)
}

/// One line per kind of fallback: which type, why, and for which tensors.
fn log_fallbacks(fallbacks: &[(String, Fallback)], log: &Log) {
    let mut groups: BTreeMap<(&str, &str, u64), Vec<&str>> = BTreeMap::new();
    for (name, f) in fallbacks {
        groups
            .entry((f.wanted.name(), f.chosen.name(), f.row_len))
            .or_default()
            .push(name);
    }
    for ((wanted, chosen, row_len), names) in groups {
        let shown: Vec<&str> = names.iter().take(4).copied().collect();
        let more = names.len().saturating_sub(shown.len());
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        log.line(&format!(
            "{} tensor(s) get {chosen} instead of {wanted}: rows of {row_len} are not a multiple \
             of {wanted}'s block (llama.cpp's fallback): {}{more}",
            names.len(),
            shown.join(", ")
        ));
    }
}

/// llama.cpp refuses an importance matrix holding NaN or infinity.
fn check_imatrix(imatrix: Option<&HashMap<String, Vec<f32>>>) -> Result<()> {
    for (name, values) in imatrix.into_iter().flatten() {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            bail!(
                "importance data for '{name}': value {i} is {}, not finite",
                values[i]
            );
        }
    }
    Ok(())
}

/// Pair each tensor with its type and importance vector.
fn jobs<'s, 'a>(
    tensors: &'s [SourceTensor<'a>],
    types: &[GgmlType],
    imatrix: Option<&'s HashMap<String, Vec<f32>>>,
    log: &Log,
) -> Result<Vec<Job<'s, 'a>>> {
    let mut missing = Vec::new();
    let mut jobs = Vec::with_capacity(tensors.len());
    for (src, &ty) in tensors.iter().zip(types) {
        let importance = match imatrix {
            Some(m) if uses_importance(ty) && ty != src.ty => {
                importance_for(m, src, log, &mut missing)?
            }
            _ => None,
        };
        jobs.push(Job {
            src,
            ty,
            importance,
        });
    }
    if !missing.is_empty() {
        log.line(&format!(
            "no importance data for {} quantized tensor(s), e.g. {}: quantized without",
            missing.len(),
            missing[0]
        ));
    }
    Ok(jobs)
}

/// Types whose quantizers take an importance vector (the others ignore it, as ggml does).
fn uses_importance(ty: GgmlType) -> bool {
    !matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q8_0
            | GgmlType::Q8_1
            | GgmlType::Q8_K
    )
}

/// The tensor's importance vector: one weight per column. As in llama.cpp a wrong length is an
/// error, except for token_embd, which imatrix tools never cover correctly.
fn importance_for<'m>(
    m: &'m HashMap<String, Vec<f32>>,
    src: &SourceTensor<'_>,
    log: &Log,
    missing: &mut Vec<String>,
) -> Result<Option<&'m [f32]>> {
    let Some(v) = m.get(&src.name) else {
        missing.push(src.name.clone());
        return Ok(None);
    };
    if v.len() == src.row_len() {
        return Ok(Some(v));
    }
    let msg = format!(
        "importance data for '{}' has {} values, expected {} (one per column)",
        src.name,
        v.len(),
        src.row_len()
    );
    if src.name == "token_embd.weight" {
        log.line(&format!("{msg}: ignored"));
        return Ok(None);
    }
    Err(anyhow!(msg))
}

/// Replace `key`'s value where it is, or append it.
fn set_key(metadata: &mut Vec<(String, Value)>, key: &str, value: u32) {
    match metadata.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) => *v = Value::U32(value),
        None => metadata.push((key.to_string(), Value::U32(value))),
    }
}

fn thread_count(requested: usize) -> usize {
    match requested {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// A bar of source bytes; drawn only when asked and stderr is a terminal.
fn progress_bar(total: u64, show: bool) -> ProgressBar {
    let target = if show {
        // indicatif hides a stderr target by itself when stderr is not a terminal.
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    let template = "{elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} eta {eta} {msg}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Convert one tensor and append it to the file.
fn write_one(
    writer: &mut GgufWriter,
    job: &Job<'_, '_>,
    n_bytes: usize,
    threads: usize,
    bar: &ProgressBar,
) -> Result<()> {
    if job.ty == job.src.ty {
        // Same encoding: copy the bytes (llama.cpp does too; re-encoding could only lose).
        writer.write_tensor(&job.src.name, job.src.data)?;
        bar.inc(job.src.data.len() as u64);
        return Ok(());
    }
    let data = encode(job, n_bytes, threads, bar)?;
    writer.write_tensor(&job.src.name, &data)
}

/// The tensor in `job.ty`: rows in chunks, the chunks shared by `threads` workers.
fn encode(job: &Job<'_, '_>, n_bytes: usize, threads: usize, bar: &ProgressBar) -> Result<Vec<u8>> {
    let row_len = job.src.row_len();
    let n_rows = (job.src.n_elements() / row_len as u64) as usize;
    let dst_row = n_bytes / n_rows;
    let rows_per_chunk = (CHUNK_ELEMS / row_len).max(1);
    let mut out = vec![0u8; n_bytes];
    {
        let queue = Mutex::new(out.chunks_mut(rows_per_chunk * dst_row).enumerate());
        let failed = AtomicBool::new(false);
        let work = Work {
            job,
            rows_per_chunk,
            dst_row,
            failed: &failed,
            bar,
        };
        let n_threads = threads.clamp(1, n_rows.div_ceil(rows_per_chunk));
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..n_threads)
                .map(|_| s.spawn(|| work.run(&queue)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("a worker thread panicked")))
                })
                .collect::<Result<Vec<()>>>()
        })
        .map_err(|e| anyhow!("tensor '{}': {e:#}", job.src.name))?;
    }
    Ok(out)
}

/// What every worker shares.
struct Work<'j, 's, 'a> {
    job: &'j Job<'s, 'a>,
    rows_per_chunk: usize,
    dst_row: usize,
    /// Set by a worker that failed, so the others stop early.
    failed: &'j AtomicBool,
    bar: &'j ProgressBar,
}

type Queue<'o> = Mutex<std::iter::Enumerate<std::slice::ChunksMut<'o, u8>>>;

impl Work<'_, '_, '_> {
    /// Take chunks until none are left.
    fn run(&self, queue: &Queue<'_>) -> Result<()> {
        let src = self.job.src;
        let src_row = src.data.len() / (src.n_elements() as usize / src.row_len());
        let mut row = vec![0f32; src.row_len()];
        loop {
            if self.failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let next = queue
                .lock()
                .map_err(|_| anyhow!("work queue poisoned"))?
                .next();
            let Some((chunk, dst)) = next else {
                return Ok(());
            };
            let first = chunk * self.rows_per_chunk;
            for (r, dst_row) in dst.chunks_exact_mut(self.dst_row).enumerate() {
                let i = first + r;
                dequantize_row(src.ty, &src.data[i * src_row..(i + 1) * src_row], &mut row);
                if let Some(c) = row.iter().position(|v| !v.is_finite()) {
                    self.failed.store(true, Ordering::Relaxed);
                    bail!(
                        "row {i}, column {c} holds {}: weights must be finite",
                        row[c]
                    );
                }
                quantize_row_weighted(self.job.ty, &row, self.job.importance, dst_row);
            }
            let rows = dst.len() / self.dst_row;
            self.bar.inc((rows * src_row) as u64);
        }
    }
}
