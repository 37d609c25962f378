//! The CPU backend: weights stay quantized. Matmul weights are copied once at load into one
//! buffer in 2 MiB pages (repacked into four-block chunks for the types its kernels decode that
//! way) and their mapped pages released; other tensors are read from the memory-mapped GGUF.
//! Activations are quantized to 8-bit blocks so the inner loops are integer dot products.

mod attend;
mod elementwise;
pub mod gemm;
pub mod kernels;
pub mod memory;
pub mod pool;
mod simd;

use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use marco_quantize::act::BlockQ8x32;
use marco_quantize::blocks::BlockQ8K;
use marco_quantize::chunks::{self, ActChunks};
use marco_quantize::dequant::dequantize_row;
use marco_quantize::dot::{activation_kind, ActKind};
use marco_quantize::{GgmlType, QK32, QK_K};

use self::gemm::{PackedActs, Unpacked};
use self::kernels::Kernels;
use self::pool::{SharedMut, ThreadPool};
use super::{AttnShape, Backend, BufId, MatJob, WeightId};
use crate::gguf::GgufFile;

/// A weight as the CPU sees it: a view into the mapped file, a copy of a matmul weight made
/// once at load (see `prepare_matmul`: in huge pages, and repacked into four-block chunks for
/// the types the kernels decode that way), or a dequantized copy (1-D tensors such as norms
/// and biases, which are tiny and read as f32 every time).
struct CpuWeight {
    file: Arc<GgufFile>,
    tensor: usize,
    ty: GgmlType,
    cols: usize,
    rows: usize,
    row_bytes: usize,
    dense: Option<Vec<f32>>,
    copy: Option<Copied>,
}

/// Where a matmul weight's copy lives: the buffer shared by all copied weights, where its rows
/// start there, and whether they are chunks (`marco_quantize::chunks`, same row length) or
/// the GGUF layout.
struct Copied {
    buf: Arc<memory::HugeBuf>,
    offset: usize,
    chunked: bool,
}

impl CpuWeight {
    fn is_chunked(&self) -> bool {
        self.copy.as_ref().is_some_and(|c| c.chunked)
    }
    /// The rows as stored: the copy if there is one (chunks or GGUF layout), else the file's.
    fn stored(&self) -> &[u8] {
        match &self.copy {
            Some(c) => &c.buf.as_slice()[c.offset..c.offset + self.rows * self.row_bytes],
            None => self.file.data_for(&self.file.tensors()[self.tensor]),
        }
    }
    /// The rows in the GGUF layout (for weights that are not chunks).
    fn bytes(&self) -> &[u8] {
        assert!(
            !self.is_chunked(),
            "internal: GGUF rows of a chunked weight"
        );
        self.stored()
    }
    /// Row `r` in the GGUF layout, unpacked from chunks into `buf` if need be (with its
    /// group: chunked rows are stored in groups, see `chunks::pack_rows`).
    fn row_in<'a>(&'a self, r: usize, buf: &'a mut Vec<u8>) -> &'a [u8] {
        let rb = self.row_bytes;
        if !self.is_chunked() {
            return &self.stored()[r * rb..(r + 1) * rb];
        }
        let first = chunks::group_start(rb, r);
        let end = (first + chunks::group_rows(rb)).min(self.rows);
        buf.resize((end - first) * rb, 0);
        chunks::unpack_rows(self.ty, rb, &self.stored()[first * rb..end * rb], buf);
        &buf[(r - first) * rb..(r - first + 1) * rb]
    }

    fn dense(&self) -> Result<&[f32]> {
        self.dense
            .as_deref()
            .context("internal: a matrix was used where a vector was expected")
    }
}

/// Every layer's keys and values for `max_ctx` positions (rounded up to whole blocks).
struct KvCache {
    max_ctx: usize,
    kv_dim: usize,
    n_layer: usize,
    /// Keys and values as `attend::KvLayout` places them, in 2 MiB pages (see `memory`).
    mem: memory::HugeBuf,
}

impl KvCache {
    fn new(n_layer: usize, max_ctx: usize, kv_dim: usize) -> Result<KvCache> {
        // The size depends on kv_dim alone, not on how the heads divide it.
        let layout = attend::KvLayout {
            n_layer,
            n_head_kv: 1,
            head_dim: kv_dim,
        };
        let bytes = layout
            .len(max_ctx)
            .and_then(|n| n.checked_mul(std::mem::size_of::<f32>()))
            .with_context(|| {
                format!(
                    "a KV cache for a context of {max_ctx} tokens is too large for this machine"
                )
            })?;
        let mem = memory::HugeBuf::zeroed(bytes).with_context(|| {
            format!("cannot allocate the KV cache for a context of {max_ctx} tokens")
        })?;
        Ok(KvCache {
            max_ctx,
            kv_dim,
            n_layer,
            mem,
        })
    }

    fn floats(&self) -> &[f32] {
        bytemuck::cast_slice(self.mem.as_slice())
    }

    fn floats_mut(&mut self) -> &mut [f32] {
        bytemuck::cast_slice_mut(self.mem.as_mut_slice())
    }
}

/// The CPU backend.
pub struct CpuBackend {
    pool: ThreadPool,
    kernels: Kernels,
    weights: Vec<CpuWeight>,
    bufs: Vec<Vec<f32>>,
    act_q8: Vec<BlockQ8x32>,
    /// A weight row unpacked from chunks (`embed` of a repacked table).
    row_buf: Vec<u8>,
    /// One token's activations for the one-token kernels: in chunk order (chunked weights)
    /// and as `Q8_K` blocks (the K-quant kernels, chunked `Q6_K` included).
    act_chunks: ActChunks,
    /// `act_q8` transposed for the prompt GEMM (when the kernels have one).
    packed: PackedActs,
    kv: Option<KvCache>,
    scratch: Vec<f32>,
    rope: RopeTable,
}

/// RoPE's rotations for the last positions and shape asked for. Each decoded token calls
/// `rope` twice per layer at the same position: a `powf` per frequency each time was 0.3% of
/// a one-thread token, and a `sin_cos` per frequency 0.2%.
#[derive(Default)]
struct RopeTable {
    /// (head size, base, first position, positions) of the rotations.
    key: (usize, f32, usize, usize),
    /// The inverse frequencies for (head size, base) of `key`.
    inv_freq: Vec<f64>,
    /// `sin` and `cos` of position `first + t` at frequency `i`, at `t · head_size / 2 + i`.
    sin: Vec<f32>,
    cos: Vec<f32>,
}

impl RopeTable {
    /// The `(sin, cos)` tables for positions `pos0..pos0 + n`.
    fn rotations(&mut self, head_dim: usize, base: f32, pos0: usize, n: usize) -> (&[f32], &[f32]) {
        let key = (head_dim, base, pos0, n);
        if self.key != key {
            if (self.key.0, self.key.1) != (head_dim, base) {
                self.inv_freq = (0..head_dim / 2)
                    .map(|i| (base as f64).powf(-2.0 * i as f64 / head_dim as f64))
                    .collect();
            }
            self.sin.clear();
            self.cos.clear();
            for t in 0..n {
                let pos = (pos0 + t) as f64;
                for &inv_freq in &self.inv_freq {
                    let (sin, cos) = ((pos * inv_freq) as f32).sin_cos();
                    self.sin.push(sin);
                    self.cos.push(cos);
                }
            }
            self.key = key;
        }
        (&self.sin, &self.cos)
    }
}

impl CpuBackend {
    /// A CPU backend with `n_threads` threads (0: one per available core) and the best kernels
    /// this CPU supports.
    pub fn new(n_threads: usize) -> CpuBackend {
        Self::with_kernels(n_threads, Kernels::detect())
    }

    /// A CPU backend with explicitly chosen kernels (tests force each ISA path).
    pub fn with_kernels(n_threads: usize, kernels: Kernels) -> CpuBackend {
        let n_threads = if n_threads == 0 {
            default_threads()
        } else {
            n_threads
        };
        CpuBackend {
            pool: ThreadPool::new(n_threads),
            kernels,
            weights: Vec::new(),
            bufs: Vec::new(),
            act_q8: Vec::new(),
            row_buf: Vec::new(),
            rope: RopeTable::default(),
            act_chunks: ActChunks::default(),
            packed: PackedActs::default(),
            kv: None,
            scratch: Vec::new(),
        }
    }

    fn weight(&self, id: WeightId) -> &CpuWeight {
        &self.weights[id.0]
    }

    fn buf_ptr(&mut self, id: BufId, len: usize) -> Result<SharedMut<f32>> {
        let b = &mut self.bufs[id.0];
        ensure!(len <= b.len(), "internal: buffer {} too small", id.0);
        Ok(SharedMut(b.as_mut_ptr()))
    }
}

/// Threads used when the user does not say: the available cores.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Backend for CpuBackend {
    fn describe(&self) -> String {
        format!(
            "cpu ({}, {} thread{})",
            self.kernels.name(),
            self.pool.n_threads(),
            if self.pool.n_threads() == 1 { "" } else { "s" }
        )
    }

    fn load_weight(&mut self, file: &Arc<GgufFile>, name: &str) -> Result<WeightId> {
        let tensor = file
            .tensors()
            .iter()
            .position(|t| t.name == name)
            .with_context(|| format!("{}: missing tensor '{name}'", file.path_display()))?;
        let info = &file.tensors()[tensor];
        ensure!(
            info.dims.len() <= 2,
            "{}: tensor '{name}' has {} dimensions, expected 1 or 2",
            file.path_display(),
            info.dims.len()
        );
        let cols = info.row_len() as usize;
        let rows = info.n_rows() as usize;
        let row_bytes =
            info.ty
                .row_bytes(cols as u64)
                .context("internal: row size was validated by the reader")? as usize;
        let dense = if info.dims.len() == 1 {
            let mut v = vec![0.0f32; cols];
            dequantize_row(info.ty, file.data_for(info), &mut v);
            Some(v)
        } else {
            let is_supported =
                matches!(activation_kind(info.ty), ActKind::F32) || cols.is_multiple_of(QK32);
            ensure!(
                is_supported,
                "{}: tensor '{name}' rows of {cols} are not a multiple of {QK32}",
                file.path_display()
            );
            None
        };
        self.weights.push(CpuWeight {
            file: Arc::clone(file),
            tensor,
            ty: info.ty,
            cols,
            rows,
            row_bytes,
            dense,
            copy: None,
        });
        Ok(WeightId(self.weights.len() - 1))
    }

    fn prepare_matmul(&mut self, ws: &[WeightId]) -> Result<()> {
        // The weights to copy (each once), and where each goes in one shared buffer: decoding
        // streams them all every token, and one buffer in 2 MiB pages spares the TLB misses
        // of 4 KiB pages (measured: 1-thread decoding of the default model 45 -> 53 t/s).
        // (weight, offset, whether its kernels take it in chunks)
        let mut todo: Vec<(usize, usize, bool)> = Vec::new();
        let mut total = 0usize;
        for &WeightId(i) in ws {
            let w = &self.weights[i];
            if w.copy.is_none() && w.dense.is_none() && todo.iter().all(|t| t.0 != i) {
                todo.push((i, total, self.kernels.has_chunks(w.ty, w.cols)));
                total = (total + w.rows * w.row_bytes).next_multiple_of(64);
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let mut buf = memory::HugeBuf::zeroed(total)
            .context("cannot allocate the buffer for the matmul weights")?;
        let out = SharedMut(buf.as_mut_slice().as_mut_ptr());
        for &(i, offset, chunked) in &todo {
            let w = &self.weights[i];
            copy_weight(&self.pool, w, chunked, out, offset);
            // The pages that straddled two tasks' rows.
            w.file.release_data(&w.file.tensors()[w.tensor]);
        }
        let buf = Arc::new(buf);
        for &(i, offset, chunked) in &todo {
            self.weights[i].copy = Some(Copied {
                buf: Arc::clone(&buf),
                offset,
                chunked,
            });
        }
        Ok(())
    }

    fn alloc(&mut self, len: usize) -> Result<BufId> {
        self.bufs.push(vec![0.0; len]);
        Ok(BufId(self.bufs.len() - 1))
    }

    fn alloc_kv_cache(&mut self, n_layer: usize, max_ctx: usize, kv_dim: usize) -> Result<()> {
        self.kv = Some(KvCache::new(n_layer, max_ctx, kv_dim)?);
        self.scratch = vec![0.0; self.pool.n_threads() * max_ctx.next_multiple_of(attend::LANES)];
        Ok(())
    }

    fn embed(&mut self, table: WeightId, ids: &[u32], out: BufId) -> Result<()> {
        let w = &self.weights[table.0];
        let out = &mut self.bufs[out.0];
        // (Kept between calls: a chunked table, tied to the output, unpacks rows into it.)
        let buf = &mut self.row_buf;
        for (t, &id) in ids.iter().enumerate() {
            ensure!(
                (id as usize) < w.rows,
                "token id {id} is outside the vocabulary ({} tokens)",
                w.rows
            );
            dequantize_row(
                w.ty,
                w.row_in(id as usize, buf),
                &mut out[t * w.cols..(t + 1) * w.cols],
            );
        }
        Ok(())
    }

    fn copy(&mut self, src: BufId, src_off: usize, dst: BufId, len: usize) -> Result<()> {
        let tmp = std::mem::take(&mut self.bufs[src.0]);
        self.bufs[dst.0][..len].copy_from_slice(&tmp[src_off..src_off + len]);
        self.bufs[src.0] = tmp;
        Ok(())
    }

    fn rms_norm(
        &mut self,
        x: BufId,
        weight: WeightId,
        eps: f32,
        n_tokens: usize,
        width: usize,
        out: BufId,
    ) -> Result<()> {
        ensure!(out != x, "internal: rms_norm output aliases its input");
        let w = self.weights[weight.0].dense()?;
        let mut normed = std::mem::take(&mut self.bufs[out.0]);
        let xs = &self.bufs[x.0][..n_tokens * width];
        for (row, dst) in xs.chunks_exact(width).zip(normed.chunks_exact_mut(width)) {
            let scale = rms_scale(row, eps);
            for ((d, &v), &g) in dst.iter_mut().zip(row).zip(w) {
                *d = v * scale * g;
            }
        }
        self.bufs[out.0] = normed;
        Ok(())
    }

    fn matmul(&mut self, x: BufId, n_tokens: usize, jobs: &[MatJob]) -> Result<()> {
        ensure!(!jobs.is_empty() && jobs.len() <= 4, "internal: 1 to 4 jobs");
        let cols = self.weight(jobs[0].weight).cols;
        ensure!(
            jobs.iter()
                .all(|j| self.weight(j.weight).cols == cols && j.out != x),
            "internal: matmul jobs must share the input width"
        );
        let xs = std::mem::take(&mut self.bufs[x.0]);
        // One token of K-quant products goes against Q8_K activations (see `simd::q8k`): the
        // mapped K-quant rows and the chunked Q6_K ones; other chunked rows take 32-value
        // blocks in chunk order.
        let takes_q8k = |w: &CpuWeight| {
            n_tokens == 1
                && cols.is_multiple_of(QK_K)
                && if w.is_chunked() {
                    w.ty == GgmlType::Q6_K
                } else {
                    self.kernels.has_q8k_dot(w.ty)
                }
        };
        let q8k_ready = jobs.iter().any(|j| takes_q8k(self.weight(j.weight)));
        let needs_q8 = |w: &CpuWeight| activation_kind(w.ty) == ActKind::Q8 && !takes_q8k(w);
        let chunks_ready = n_tokens == 1
            && jobs.iter().any(|j| {
                let w = self.weight(j.weight);
                w.is_chunked() && !takes_q8k(w)
            });
        // One token whose 32-value blocks only chunk kernels take: quantized straight into
        // chunk order, without the blocks.
        let only_chunks = jobs.iter().all(|j| {
            let w = self.weight(j.weight);
            !needs_q8(w) || w.is_chunked()
        });
        let chunks_direct = chunks_ready
            && only_chunks
            && self
                .kernels
                .quantize_chunks(&xs[..cols], &mut self.act_chunks);
        if !chunks_direct && jobs.iter().any(|j| needs_q8(self.weight(j.weight))) {
            let nb = cols / QK32;
            if self.act_q8.len() < n_tokens * nb {
                self.act_q8.resize(n_tokens * nb, BlockQ8x32::default());
            }
            let (kernels, act) = (self.kernels, SharedMut(self.act_q8.as_mut_ptr()));
            let xs = &xs;
            self.pool.run(n_tokens, &|t, _| {
                // SAFETY: each task owns token t's blocks.
                let out = unsafe { act.slice(t * nb, nb) };
                kernels.quantize_activations(&xs[t * cols..(t + 1) * cols], out);
            });
            if n_tokens >= GEMM_MIN_TOKENS
                && jobs
                    .iter()
                    .any(|j| self.kernels.has_gemm(self.weight(j.weight).ty))
            {
                self.packed.pack(&self.act_q8, nb, n_tokens);
            }
        }
        if chunks_ready && !chunks_direct {
            self.act_chunks.fill(&self.act_q8[..cols / QK32]);
        }
        // Chunked Q5_0 rows come in quads (`chunks::QuadQ5_0`), which take the activations in
        // steps as well.
        let quads = chunks_ready
            && jobs.iter().any(|j| {
                let w = self.weight(j.weight);
                let first_group = w.rows.min(chunks::group_rows(w.row_bytes));
                w.is_chunked() && chunks::is_quad_group(w.ty, w.row_bytes, first_group)
            });
        if quads {
            self.act_chunks.fill_steps();
        }
        if q8k_ready {
            // ggml's quantizer, as its K-quant dots use; in steps too for chunked Q6_K rows
            // (`chunks::StepsQ6K`), which are the chunked rows that take Q8_K.
            let steps = jobs.iter().any(|j| {
                let w = self.weight(j.weight);
                w.is_chunked() && takes_q8k(w)
            });
            let kernels = self.kernels;
            self.act_chunks
                .fill_q8k_with(&xs[..cols], steps, |x, out| kernels.quantize_q8k(x, out));
        }
        let mut outs = [SharedMut(std::ptr::null_mut()); 4];
        for (i, j) in jobs.iter().enumerate() {
            let rows = self.weight(j.weight).rows;
            outs[i] = self.buf_ptr(j.out, rows * n_tokens)?;
        }
        // One token: tasks of at least MIN_TASK_BYTES of weights, so that claiming a task
        // stays small beside streaming it.
        let min_rows = if n_tokens == 1 {
            // The shortest rows set the count, so every task holds at least that much.
            let row_bytes = jobs.iter().map(|j| self.weight(j.weight).row_bytes).min();
            MIN_TASK_BYTES / row_bytes.unwrap_or(1).max(1)
        } else {
            0
        };
        let plan = RowPlan::new(
            jobs.iter().map(|j| self.weight(j.weight).rows),
            self.pool.n_threads(),
            n_tokens >= GEMM_MIN_TOKENS,
            min_rows,
        );
        let ctx = MatCtx {
            weights: &self.weights,
            jobs,
            outs: &outs,
            x: &xs[..n_tokens * cols],
            xq: &self.act_q8,
            xc: &self.act_chunks,
            xq8k: q8k_ready.then(|| self.act_chunks.q8k()),
            packed: &self.packed,
            n_tokens,
            kernels: &self.kernels,
        };
        self.pool.run(plan.n_tasks(), &|task, _| {
            let (job, r0, r1) = plan.task(task);
            ctx.run_rows(job, r0, r1);
        });
        self.bufs[x.0] = xs;
        Ok(())
    }

    fn rope(
        &mut self,
        buf: BufId,
        n_tokens: usize,
        n_heads: usize,
        head_dim: usize,
        pos0: usize,
        freq_base: f32,
    ) -> Result<()> {
        let data = &mut self.bufs[buf.0];
        let half = head_dim / 2;
        let (sin, cos) = self.rope.rotations(head_dim, freq_base, pos0, n_tokens);
        // Frequencies innermost: contiguous in the tables and in each half of a head, so the
        // loop vectorizes.
        for t in 0..n_tokens {
            let (sin, cos) = (&sin[t * half..][..half], &cos[t * half..][..half]);
            for head in
                data[t * n_heads * head_dim..][..n_heads * head_dim].chunks_exact_mut(head_dim)
            {
                let (a, b) = head.split_at_mut(half);
                for (((a, b), &sin), &cos) in a.iter_mut().zip(b.iter_mut()).zip(sin).zip(cos) {
                    let (x, y) = (*a, *b);
                    *a = x * cos - y * sin;
                    *b = x * sin + y * cos;
                }
            }
        }
        Ok(())
    }

    fn attention(
        &mut self,
        layer: usize,
        q: BufId,
        k: BufId,
        v: BufId,
        out: BufId,
        n_tokens: usize,
        pos0: usize,
        shape: AttnShape,
    ) -> Result<()> {
        let q_width = shape.n_head * shape.head_dim;
        let out_ptr = self.buf_ptr(out, n_tokens * q_width)?;
        let kv = self
            .kv
            .as_mut()
            .context("internal: KV cache not allocated")?;
        let kv_dim = kv.kv_dim;
        ensure!(
            pos0 + n_tokens <= kv.max_ctx,
            "context full: {} tokens exceed the context of {}",
            pos0 + n_tokens,
            kv.max_ctx
        );
        let hd = shape.head_dim;
        ensure!(
            shape.n_head_kv * hd == kv_dim
                && shape.n_head_kv > 0
                && shape.n_head.is_multiple_of(shape.n_head_kv)
                && hd > 0
                && layer < kv.n_layer,
            "internal: attention shape does not match the KV cache"
        );
        let max_ctx = kv.max_ctx;
        let layout = attend::KvLayout {
            n_layer: kv.n_layer,
            n_head_kv: shape.n_head_kv,
            head_dim: hd,
        };
        let cache = kv.floats_mut();
        let (ks, vs) = (&self.bufs[k.0], &self.bufs[v.0]);
        for t in 0..n_tokens {
            let pos = pos0 + t;
            for kvh in 0..shape.n_head_kv {
                let row = (t * kv_dim + kvh * hd)..(t * kv_dim + (kvh + 1) * hd);
                let head = &mut cache[layout.head_start(layer, kvh)..];
                for (d, &x) in ks[row.clone()].iter().enumerate() {
                    head[layout.key(pos, d)] = x;
                }
                head[layout.value(pos)..][..hd].copy_from_slice(&vs[row]);
            }
        }
        let scratch = SharedMut(self.scratch.as_mut_ptr());
        let cache = kv.floats();
        let kernels = self.kernels;
        let qs = &self.bufs[q.0];
        let group = shape.n_head / shape.n_head_kv;
        let scale = 1.0 / (hd as f32).sqrt();
        let room = max_ctx.next_multiple_of(attend::LANES);
        self.pool.run(n_tokens * shape.n_head, &|task, worker| {
            let (t, h) = (task / shape.n_head, task % shape.n_head);
            let kvh = h / group;
            let head = attend::Head {
                q: &qs[t * q_width + h * hd..][..hd],
                kv: &cache[layout.head_start(layer, kvh)..],
                stride: layout.block_stride(),
                n_ctx: pos0 + t + 1,
                scale,
            };
            // SAFETY: each worker owns its scratch row; each task owns its output head.
            let scores = unsafe { scratch.slice(worker * room, room) };
            let dst = unsafe { out_ptr.slice(t * q_width + h * hd, hd) };
            kernels.attend(&head, scores, dst);
        });
        Ok(())
    }

    fn swiglu(&mut self, gate: BufId, up: BufId, len: usize, out: BufId) -> Result<()> {
        let g = std::mem::take(&mut self.bufs[gate.0]);
        let u = std::mem::take(&mut self.bufs[up.0]);
        let res = if out == gate || out == up {
            Err(anyhow::anyhow!("internal: swiglu output aliases an input"))
        } else {
            let o = SharedMut(self.bufs[out.0][..len].as_mut_ptr());
            let (kernels, g, u) = (self.kernels, &g[..len], &u[..len]);
            // Chunks of 16384: many tasks at prompt sizes, one when decoding (a fork-join for
            // a few microseconds of work would only risk waiting on a descheduled worker).
            const CHUNK: usize = 16384;
            self.pool.run(len.div_ceil(CHUNK), &|task, _| {
                let r = task * CHUNK..((task + 1) * CHUNK).min(len);
                // SAFETY: each task owns its range of the output.
                let out = unsafe { o.slice(r.start, r.len()) };
                kernels.swiglu(&g[r.clone()], &u[r], out);
            });
            Ok(())
        };
        self.bufs[gate.0] = g;
        self.bufs[up.0] = u;
        res
    }

    fn read(&mut self, buf: BufId, offset: usize, dst: &mut [f32]) -> Result<()> {
        dst.copy_from_slice(&self.bufs[buf.0][offset..offset + dst.len()]);
        Ok(())
    }

    fn argmax(&mut self, buf: BufId, offset: usize, len: usize) -> Result<u32> {
        Ok(self.kernels.argmax(&self.bufs[buf.0][offset..offset + len]))
    }
}

/// Copies `w`'s rows to `out + offset` (repacked into chunks if `chunked`), spread over the
/// pool.
fn copy_weight(pool: &ThreadPool, w: &CpuWeight, chunked: bool, out: SharedMut<u8>, offset: usize) {
    const ROWS_PER_TASK: usize = 256;
    const _: () = assert!(ROWS_PER_TASK.is_multiple_of(chunks::ROW_GROUP));
    let (src, ty, rb) = (w.bytes(), w.ty, w.row_bytes);
    pool.run(w.rows.div_ceil(ROWS_PER_TASK), &|task, _| {
        let r0 = task * ROWS_PER_TASK;
        let r1 = (r0 + ROWS_PER_TASK).min(w.rows);
        // SAFETY: the caller reserved rows·row_bytes bytes at `offset` for this weight; each
        // task owns rows r0..r1 of them.
        let d = unsafe { out.slice(offset + r0 * rb, (r1 - r0) * rb) };
        let span = r0 * rb..r1 * rb;
        if chunked {
            // ROWS_PER_TASK is a multiple of ROW_GROUP: each task starts at a group of rows.
            let packed = chunks::pack_rows(ty, rb, &src[span.clone()], d);
            assert!(
                packed,
                "internal: {ty} rows of {rb} bytes have no chunked layout"
            );
        } else {
            d.copy_from_slice(&src[span.clone()]);
        }
        // The copy replaces these mapped rows: their pages leave our memory now, so the peak
        // holds one copy of the weights, not two.
        w.file.release_data_range(&w.file.tensors()[w.tensor], span);
    });
}

/// `1 / sqrt(mean(x²) + eps)`, accumulated in f64 as ggml does (in eight lanes rather than
/// ggml's one running sum, which was a chain of dependent adds: about a microsecond per
/// 896-wide row, 0.3% of a token; in f64 the order changes the result by far less than the
/// f32 rounding at the end).
fn rms_scale(row: &[f32], eps: f32) -> f32 {
    const LANES: usize = 8;
    let (chunks, rest) = row.as_chunks::<LANES>();
    let mut lanes = [0.0f64; LANES];
    for c in chunks {
        for (s, &v) in lanes.iter_mut().zip(c) {
            *s += (v as f64) * (v as f64);
        }
    }
    let tail: f64 = rest.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let sum = lanes.iter().sum::<f64>() + tail;
    (1.0 / (sum / row.len() as f64 + eps as f64).sqrt()) as f32
}

/// The least weight bytes of a one-token matmul task. Claiming a task bounces the pool's
/// counters between cores (a few hundred nanoseconds on this kind of VM); tasks of the
/// decode rows of the default model's attention (one 16th of a thread's share: about 22 KB,
/// under a microsecond of streaming) lost a third of their speed to it on two threads, and
/// 64 KB tasks (about 2 µs) still leave a dozen tasks per op to balance a slow thread.
const MIN_TASK_BYTES: usize = 64 << 10;

/// How the rows of up to four matmul outputs are cut into tasks.
struct RowPlan {
    rows: [usize; 4],
    tasks_before: [usize; 5],
    rows_per_task: usize,
}

impl RowPlan {
    /// `whole_tiles`: tasks of whole 8-row GEMM tiles (prompts).
    /// `min_rows`: the fewest rows a task should have (tasks stay at 4 to 256 rows).
    fn new(
        rows: impl Iterator<Item = usize>,
        n_threads: usize,
        whole_tiles: bool,
        min_rows: usize,
    ) -> RowPlan {
        let mut r = [0usize; 4];
        for (i, n) in rows.enumerate() {
            r[i] = n;
        }
        let total: usize = r.iter().sum();
        // Enough tasks per thread that a descheduled thread only delays a small share,
        // few enough that the per-task overhead stays small.
        let rows_per_task = (total / (n_threads * 16)).max(min_rows).clamp(4, 256);
        // Each task starts at a group of chunked rows (`chunks::pack_rows`), and a tile's
        // rows hold whole groups.
        const _: () = assert!(gemm::ROWS.is_multiple_of(chunks::ROW_GROUP));
        let rows_per_task = rows_per_task.next_multiple_of(if whole_tiles {
            gemm::ROWS
        } else {
            chunks::ROW_GROUP
        });
        let mut tasks_before = [0usize; 5];
        for i in 0..4 {
            tasks_before[i + 1] = tasks_before[i] + r[i].div_ceil(rows_per_task);
        }
        RowPlan {
            rows: r,
            tasks_before,
            rows_per_task,
        }
    }

    fn n_tasks(&self) -> usize {
        self.tasks_before[4]
    }

    /// (job, first row, end row) of a task.
    fn task(&self, task: usize) -> (usize, usize, usize) {
        let job = (0..4)
            .find(|&j| task < self.tasks_before[j + 1])
            .unwrap_or(3);
        let r0 = (task - self.tasks_before[job]) * self.rows_per_task;
        (job, r0, (r0 + self.rows_per_task).min(self.rows[job]))
    }
}

/// Writes one output value, or adds it for a residual job (`MatJob::accumulate`).
///
/// # Safety
/// The caller's task owns element `idx` of `out`.
#[inline(always)]
unsafe fn emit(out: SharedMut<f32>, idx: usize, v: f32, accumulate: bool) {
    // SAFETY: the caller owns the element.
    let o = unsafe { &mut out.slice(idx, 1)[0] };
    if accumulate {
        *o += v;
    } else {
        *o = v;
    }
}

/// Fewest tokens for which the prompt GEMM beats the row-dot tiles.
const GEMM_MIN_TOKENS: usize = 16;

/// Tokens handled by one multi-token kernel call.
const TOKEN_GROUP: usize = 4;

/// Rows of a weight in the GGUF layout: all of them (`first` 0) or a task's rows unpacked
/// from chunks (`first` the task's first row).
struct RowView<'a> {
    ty: GgmlType,
    cols: usize,
    rows: usize,
    row_bytes: usize,
    data: &'a [u8],
    first: usize,
}

impl<'a> RowView<'a> {
    fn new(w: &CpuWeight, data: &'a [u8], first: usize) -> RowView<'a> {
        RowView {
            ty: w.ty,
            cols: w.cols,
            rows: w.rows,
            row_bytes: w.row_bytes,
            data,
            first,
        }
    }

    /// Rows `r0..r1` (absolute indices), consecutive.
    fn span(&self, r0: usize, r1: usize) -> &'a [u8] {
        &self.data[(r0 - self.first) * self.row_bytes..(r1 - self.first) * self.row_bytes]
    }

    fn row(&self, r: usize) -> &'a [u8] {
        self.span(r, r + 1)
    }
}

struct MatCtx<'a> {
    weights: &'a [CpuWeight],
    jobs: &'a [MatJob],
    outs: &'a [SharedMut<f32>; 4],
    x: &'a [f32],
    xq: &'a [BlockQ8x32],
    /// The token in chunk order, when there is one token and a chunked weight.
    xc: &'a ActChunks,
    packed: &'a PackedActs,
    /// The token as `Q8_K` blocks, when there is one token and a K-quant kernel for it.
    xq8k: Option<&'a [BlockQ8K]>,
    n_tokens: usize,
    kernels: &'a Kernels,
}

impl MatCtx<'_> {
    /// Rows `r0..r1` of `w` against all tokens through the prompt GEMM, 8 rows at a time
    /// (a last partial tile repeats its last row and keeps only the real ones).
    fn gemm_rows(
        &self,
        w: &RowView,
        bias: Option<&[f32]>,
        out: SharedMut<f32>,
        acc: bool,
        r0: usize,
        r1: usize,
    ) {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Unpacked> = std::cell::RefCell::default();
        }
        use self::gemm::{ROWS, TOKENS};
        SCRATCH.with_borrow_mut(|scratch| {
            for r in (r0..r1).step_by(ROWS) {
                let nr = (r1 - r).min(ROWS);
                let rows = std::array::from_fn(|i| w.row(r + i.min(nr - 1)));
                self.kernels
                    .gemm_tile(w.ty, rows, self.packed, scratch, |g, sums| {
                        let t0 = g * TOKENS;
                        let nt = (self.n_tokens - t0).min(TOKENS);
                        for (i, sums) in sums[..nr].iter().enumerate() {
                            let b = bias.and_then(|b| b.get(r + i)).copied().unwrap_or(0.0);
                            for (t, &d) in sums[..nt].iter().enumerate() {
                                // SAFETY: each task owns rows r0..r1 of this output; row
                                // r of token t is at t*rows+r.
                                unsafe { emit(out, (t0 + t) * w.rows + r + i, d + b, acc) };
                            }
                        }
                    });
            }
        });
    }

    /// Rows `r0..r1` of job `job`'s output: chunked weights go through the chunk kernel for
    /// one token, and otherwise are unpacked to the GGUF layout for the prompt paths.
    fn run_rows(&self, job: usize, r0: usize, r1: usize) {
        let w = &self.weights[self.jobs[job].weight.0];
        if !w.is_chunked() {
            let view = RowView::new(w, w.bytes(), 0);
            return self.run_rows_on(job, &view, r0, r1);
        }
        let packed = w.stored();
        debug_assert!(
            r0.is_multiple_of(chunks::ROW_GROUP),
            "internal: chunked rows start at a group"
        );
        if self.n_tokens == 1 {
            return self.chunk_rows(job, w, packed, r0, r1);
        }
        thread_local! {
            static ROWS: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::default();
        }
        ROWS.with_borrow_mut(|buf| {
            let rb = w.row_bytes;
            buf.resize((r1 - r0) * rb, 0);
            // Tasks start at a group of rows (RowPlan).
            let unpacked = chunks::unpack_rows(w.ty, rb, &packed[r0 * rb..r1 * rb], buf);
            debug_assert!(unpacked, "internal: chunked rows that do not unpack");
            self.run_rows_on(job, &RowView::new(w, buf, r0), r0, r1);
        });
    }

    /// A job's bias, if it has one.
    fn bias(&self, j: &MatJob) -> Option<&[f32]> {
        j.bias
            .map(|b| self.weights[b.0].dense.as_deref().unwrap_or(&[]))
    }

    /// One token against chunked rows `r0..r1` (`r0` at a group boundary), a batch of rows
    /// per kernel call. The kernel writes the output rows in place; a bias or a residual is
    /// added in a second pass over them (one token's rows `r0..r1` are contiguous).
    fn chunk_rows(&self, job: usize, w: &CpuWeight, packed: &[u8], r0: usize, r1: usize) {
        // A multiple of ROW_GROUP, so each batch starts at a group of rows.
        const BATCH: usize = 64;
        const _: () = assert!(BATCH.is_multiple_of(chunks::ROW_GROUP));
        let j = &self.jobs[job];
        let bias = self.bias(j).and_then(|b| b.get(r0..r1));
        let rb = w.row_bytes;
        // SAFETY: each task owns rows r0..r1 of this output (one token).
        let out = unsafe { self.outs[job].slice(r0, r1 - r0) };
        let mut dots = [0.0f32; BATCH];
        for b0 in (r0..r1).step_by(BATCH) {
            let b1 = (b0 + BATCH).min(r1);
            let rows = &packed[b0 * rb..b1 * rb];
            let out = &mut out[b0 - r0..b1 - r0];
            if !j.accumulate && bias.is_none() {
                self.kernels.dot_chunks(w.ty, rows, self.xc, out);
                continue;
            }
            let dots = &mut dots[..b1 - b0];
            self.kernels.dot_chunks(w.ty, rows, self.xc, dots);
            let bias = bias.map(|b| &b[b0 - r0..b1 - r0]);
            for (i, (o, &d)) in out.iter_mut().zip(dots.iter()).enumerate() {
                let v = d + bias.map_or(0.0, |b| b[i]);
                *o = if j.accumulate { *o + v } else { v };
            }
        }
    }

    fn run_rows_on(&self, job: usize, w: &RowView, r0: usize, r1: usize) {
        let j = &self.jobs[job];
        let bias = self.bias(j);
        let out = self.outs[job];
        let nb = w.cols / QK32;
        let acc = j.accumulate;
        let q8 = activation_kind(w.ty) == ActKind::Q8;
        if q8 && self.n_tokens >= GEMM_MIN_TOKENS && self.kernels.has_gemm(w.ty) {
            self.gemm_rows(w, bias, out, acc, r0, r1);
            return;
        }
        if let (Some(xq8k), true) = (self.xq8k, self.kernels.has_q8k_dot(w.ty)) {
            for r in r0..r1 {
                let b = bias.and_then(|b| b.get(r)).copied().unwrap_or(0.0);
                let d = self.kernels.dot_q8k(w.ty, w.row(r), xq8k);
                // SAFETY: each task owns rows r0..r1 of this output (one token).
                unsafe { emit(out, r, d + b, acc) };
            }
            return;
        }
        if q8 && self.n_tokens >= TOKEN_GROUP {
            // Prompt processing: tiles of TILE_ROWS rows × TILE_TOKENS tokens, so each
            // unpacked weight group serves several tokens and each activation group's scales
            // several rows.
            const TILE_ROWS: usize = 4;
            const TILE_TOKENS: usize = 8;
            let mut buf = [0.0f32; TILE_ROWS * TILE_TOKENS];
            // Rows outer: the tile's weights stay in L1 while the activations stream from L2.
            // (Tokens outer, the activation tile in L1 and the task's weights from L2, measured
            // the same on one thread; this order reads each weight row from memory once.)
            for r in (r0..r1).step_by(TILE_ROWS) {
                let nr = (r1 - r).min(TILE_ROWS);
                for t in (0..self.n_tokens).step_by(TILE_TOKENS) {
                    let nt = (self.n_tokens - t).min(TILE_TOKENS);
                    self.kernels.dot_q8_tile(
                        w.ty,
                        w.span(r, r + nr),
                        w.row_bytes,
                        nr,
                        &self.xq[t * nb..],
                        nb,
                        nt,
                        &mut buf,
                        TILE_ROWS,
                    );
                    for i in 0..nr {
                        let b = bias.and_then(|b| b.get(r + i)).copied().unwrap_or(0.0);
                        for j in 0..nt {
                            // SAFETY: each task owns rows r0..r1 of this output; row r of
                            // token t is at t*rows+r.
                            let v = buf[j * TILE_ROWS + i] + b;
                            unsafe { emit(out, (t + j) * w.rows + r + i, v, acc) };
                        }
                    }
                }
            }
            return;
        }
        for r in r0..r1 {
            let wrow = w.row(r);
            let b = bias.and_then(|b| b.get(r)).copied().unwrap_or(0.0);
            // SAFETY: each task owns rows r0..r1 of this output; row r of token t is at t*rows+r.
            let put = |t: usize, d: f32| unsafe { emit(out, t * w.rows + r, d + b, acc) };
            if q8 {
                // Up to TOKEN_GROUP tokens per call: the weight row is unpacked once for all.
                let mut t = 0;
                while t < self.n_tokens {
                    let n = (self.n_tokens - t).min(TOKEN_GROUP);
                    let mut dots = [0.0f32; TOKEN_GROUP];
                    self.kernels
                        .dot_q8_multi(w.ty, wrow, &self.xq[t * nb..], nb, &mut dots[..n]);
                    for (i, &d) in dots[..n].iter().enumerate() {
                        put(t + i, d);
                    }
                    t += n;
                }
            } else {
                for t in 0..self.n_tokens {
                    let x = &self.x[t * w.cols..(t + 1) * w.cols];
                    put(t, self.kernels.dot_f32(w.ty, wrow, x));
                }
            }
        }
    }
}
