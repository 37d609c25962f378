//! The GPU backend: the whole Qwen2 forward pass as WGSL compute shaders through wgpu
//! (Vulkan, Metal, DX12).
//!
//! - [`weights`]: weights are re-laid into 32-bit words and uploaded once, split into row
//!   chunks where a tensor exceeds the largest storage binding.
//! - [`kernels`]: one pipeline per kernel (and per weight format), compiled on first use.
//! - [`recorder`]: ops are recorded into one command encoder and submitted when something is
//!   read back, so a forward step is one submission; greedy decoding reads back one u32.
//!
//! Activations are f32, and matmuls dequantize weights to f32 and accumulate in f32, so the
//! results track an f32 reference closely (the CPU backend quantizes activations to 8 bits).

mod context;
mod kernels;
mod recorder;
mod weights;

use std::sync::Arc;

use anyhow::{anyhow, bail, ensure, Context, Result};

use self::context::Gpu;
use self::kernels::Kernel;
use self::recorder::Recorder;
use self::weights::{upload_chunk, Chunk, Format, GpuWeight, Layout};
use super::{AttnShape, Backend, BufId, MatJob, WeightId};
use crate::gguf::GgufFile;

pub use self::context::NO_ADAPTER;

/// Tokens per matmul workgroup (`TILE` in shaders/matmul.wgsl).
const MATMUL_TILE: usize = 8;
/// Rows per matvec workgroup (`ROWS` in shaders/matmul.wgsl).
const MATVEC_ROWS: usize = 4;
/// Rows per matmul and matmul_rows workgroup (`WG` in shaders/matmul.wgsl).
const ROWS_WG: usize = 64;
/// Floats each first-pass argmax workgroup reduces (`CHUNK` in shaders/argmax.wgsl).
const ARGMAX_CHUNK: usize = 2048;
/// Threads of the elementwise, RoPE kernels (`WG` in their shaders).
const ELEMENTWISE_WG: usize = 256;
/// Largest head dimension the attention kernel supports (`MAX_HD` in shaders/attention.wgsl).
const MAX_HEAD_DIM: usize = 256;

const ACT_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// How the matmul kernels split the work (see shaders/matmul.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulStyle {
    /// For GPUs: one token is a workgroup-per-rows product reduced in shared memory (weights
    /// read coalesced); more tokens stage activation tiles in shared memory.
    Gpu,
    /// For software adapters: one row per thread and token, where it is 4x faster.
    Software,
}

/// How to open the GPU backend.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Accept a software adapter (lavapipe) when there is no GPU.
    pub allow_software: bool,
    /// The matmul kernels; `None` picks by adapter (`Software` for software ones).
    pub matmul_style: Option<MatmulStyle>,
    /// Cap on a weight chunk's bytes below the device's binding limit (tests use it to
    /// exercise splitting on small tensors).
    pub max_chunk_bytes: Option<u64>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            allow_software: true,
            matmul_style: None,
            max_chunk_bytes: None,
        }
    }
}

/// An activation buffer: its index in the recorder and its length in floats.
#[derive(Clone, Copy)]
struct Act {
    buf: usize,
    len: usize,
}

struct KvCache {
    max_ctx: usize,
    kv_dim: usize,
    k: Vec<usize>,
    v: Vec<usize>,
}

/// A cos/sin table for one (head_dim, freq_base), covering positions `0..n_pos`.
struct RopeTable {
    head_dim: usize,
    freq_bits: u32,
    n_pos: usize,
    buf: usize,
}

/// A buffer that grows on demand (never per token: only when a larger size is first seen).
#[derive(Clone, Copy)]
struct Scratch {
    buf: usize,
    bytes: u64,
}

/// The GPU backend.
pub struct GpuBackend {
    rec: Recorder,
    weights: Vec<GpuWeight>,
    acts: Vec<Act>,
    kv: Option<KvCache>,
    rope: Vec<RopeTable>,
    max_chunk: u64,
    style: MatmulStyle,
    /// Bound as the bias of matmuls without one.
    zeros: usize,
    ids: Scratch,
    partials: Scratch,
    result: usize,
}

impl GpuBackend {
    /// Opens the best adapter (see [`GpuOptions`]).
    pub fn new(opts: &GpuOptions) -> Result<GpuBackend> {
        let gpu = Gpu::open(opts.allow_software)?;
        let device_max = gpu.max_binding_bytes();
        let max_chunk = opts.max_chunk_bytes.unwrap_or(device_max).min(device_max) & !3;
        let software = gpu.info.device_type == wgpu::DeviceType::Cpu;
        let style = opts.matmul_style.unwrap_or(if software {
            MatmulStyle::Software
        } else {
            MatmulStyle::Gpu
        });
        let mut rec = Recorder::new(gpu);
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let zeros = rec.create("zeros", 4, storage)?;
        let ids = rec.create("token ids", 1024, storage)?;
        let partials = rec.create("argmax partials", 1024, storage)?;
        let result = rec.create("argmax", 4, ACT_USAGE)?;
        Ok(GpuBackend {
            rec,
            weights: Vec::new(),
            acts: Vec::new(),
            kv: None,
            rope: Vec::new(),
            max_chunk,
            style,
            zeros,
            ids: Scratch {
                buf: ids,
                bytes: 1024,
            },
            partials: Scratch {
                buf: partials,
                bytes: 1024,
            },
            result,
        })
    }

    /// Whether the adapter is a software rasterizer rather than a GPU.
    pub fn is_software(&self) -> bool {
        self.rec.gpu.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The matmul kernels in use.
    pub fn matmul_style(&self) -> MatmulStyle {
        self.style
    }

    /// Number of buffers weight `id` is split into.
    pub fn weight_chunks(&self, id: WeightId) -> usize {
        self.weights[id.0].chunks.len()
    }

    fn act(&self, id: BufId, len: usize) -> Result<usize> {
        let a = self
            .acts
            .get(id.0)
            .with_context(|| format!("internal: no GPU buffer {}", id.0))?;
        ensure!(len <= a.len, "internal: buffer {} too small", id.0);
        Ok(a.buf)
    }

    /// A 1-D weight (norm gain, bias) of `len` floats.
    fn vector(&self, id: WeightId, len: usize) -> Result<usize> {
        let w = &self.weights[id.0];
        ensure!(
            w.layout.rows == 1 && w.layout.format == Format::F32 && w.layout.cols == len,
            "internal: weight {} is not a vector of {len}",
            id.0
        );
        Ok(w.chunks[0].buf)
    }

    /// Grows `s` to at least `bytes` (a new buffer; recorded work keeps the old one).
    fn grow(&mut self, s: Scratch, bytes: u64) -> Scratch {
        if bytes <= s.bytes {
            return s;
        }
        let bytes = bytes.next_power_of_two();
        let buffer = self.rec.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("scratch"),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.rec.replace(s.buf, buffer);
        Scratch { buf: s.buf, bytes }
    }

    fn upload(&mut self, file: &GgufFile, name: &str, layout: Layout) -> Result<Vec<Chunk>> {
        let info = file
            .tensor_info(name)
            .context("internal: tensor vanished")?;
        let data = file.data_for(info);
        let per = layout.rows_per_chunk(self.max_chunk)?;
        let device = self.rec.gpu.device.clone();
        let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let mut chunks = Vec::new();
        for row0 in (0..layout.rows).step_by(per) {
            let rows = per.min(layout.rows - row0);
            let buffer = upload_chunk(&device, &layout, data, row0, rows, name);
            chunks.push(Chunk {
                buf: self.rec.add(buffer),
                row0,
                rows,
            });
        }
        if let Some(e) = pollster::block_on(scope.pop()) {
            bail!("GPU: out of memory uploading '{name}': {e}");
        }
        Ok(chunks)
    }

    /// The rope table for (head_dim, freq_base) covering `n_pos` positions.
    fn rope_table(&mut self, head_dim: usize, freq_base: f32, n_pos: usize) -> Result<usize> {
        let bits = freq_base.to_bits();
        let found = self
            .rope
            .iter()
            .position(|t| t.head_dim == head_dim && t.freq_bits == bits);
        if let Some(i) = found.filter(|&i| self.rope[i].n_pos >= n_pos) {
            return Ok(self.rope[i].buf);
        }
        let n_pos = n_pos.max(self.kv.as_ref().map_or(0, |kv| kv.max_ctx));
        let table = rope_table(head_dim, freq_base, n_pos);
        let bytes: &[u8] = bytemuck::cast_slice(&table);
        let buf = self.rec.create(
            "rope",
            bytes.len() as u64,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        )?;
        self.rec.write(buf, 0, bytes);
        let entry = RopeTable {
            head_dim,
            freq_bits: bits,
            n_pos,
            buf,
        };
        match found {
            Some(i) => self.rope[i] = entry,
            None => self.rope.push(entry),
        }
        Ok(buf)
    }

    /// One matmul job over all chunks of its weight.
    fn matmul_job(&mut self, x: usize, n_tokens: usize, job: &MatJob) -> Result<()> {
        let l = self.weights[job.weight.0].layout;
        let out = self.act(job.out, n_tokens * l.rows)?;
        let bias = match job.bias {
            Some(b) => Some(self.vector(b, l.rows)?),
            None => None,
        };
        let (kernel, per_group, z) = self.matmul_plan(l.format, n_tokens);
        for i in 0..self.weights[job.weight.0].chunks.len() {
            let c = self.weights[job.weight.0].chunks[i];
            let params = [
                l.cols as u32,
                l.rows as u32,
                c.row0 as u32,
                c.rows as u32,
                n_tokens as u32,
                l.row_words as u32,
                bias.is_some() as u32,
                job.accumulate as u32,
            ];
            let res = [c.buf, x, bias.unwrap_or(self.zeros), out];
            let groups = c.rows.div_ceil(per_group) as u32;
            self.rec.dispatch(kernel, &res, &params, groups, z as u32)?;
        }
        Ok(())
    }

    /// The matmul kernel for `n_tokens`, rows per workgroup and the z of its dispatch.
    fn matmul_plan(&self, format: Format, n_tokens: usize) -> (Kernel, usize, usize) {
        match self.style {
            MatmulStyle::Software => (Kernel::MatmulRows(format), ROWS_WG, n_tokens),
            // One token (or two: cheaper as two passes than as a mostly empty tile) is a
            // matrix-vector product; more share each dequantized row across a tile.
            MatmulStyle::Gpu if n_tokens <= 2 => (Kernel::Matvec(format), MATVEC_ROWS, n_tokens),
            MatmulStyle::Gpu => (
                Kernel::Matmul(format),
                ROWS_WG,
                n_tokens.div_ceil(MATMUL_TILE),
            ),
        }
    }

    fn elementwise(&mut self, kernel: Kernel, res: &[usize], len: usize) -> Result<()> {
        let groups = len.div_ceil(ELEMENTWISE_WG) as u32;
        self.rec.dispatch(kernel, res, &[len as u32], groups, 1)
    }
}

/// (cos, sin) of position `pos` and pair `i` at `[pos * head_dim/2 + i]`, computed exactly as
/// the CPU backend rotates (f64 frequency, f32 angle).
fn rope_table(head_dim: usize, freq_base: f32, n_pos: usize) -> Vec<[f32; 2]> {
    let half = head_dim / 2;
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| (freq_base as f64).powf(-2.0 * i as f64 / head_dim as f64))
        .collect();
    let mut table = Vec::with_capacity(n_pos * half);
    for pos in 0..n_pos {
        for &f in &inv_freq {
            let (sin, cos) = ((pos as f64 * f) as f32).sin_cos();
            table.push([cos, sin]);
        }
    }
    table
}

impl Backend for GpuBackend {
    fn describe(&self) -> String {
        format!("gpu ({})", self.rec.gpu.describe())
    }

    fn load_weight(&mut self, file: &Arc<GgufFile>, name: &str) -> Result<WeightId> {
        let info = file
            .tensor_info(name)
            .with_context(|| format!("{}: missing tensor '{name}'", file.path_display()))?;
        ensure!(
            info.dims.len() <= 2,
            "{}: tensor '{name}' has {} dimensions, expected 1 or 2",
            file.path_display(),
            info.dims.len()
        );
        let (cols, rows) = (info.row_len() as usize, info.n_rows() as usize);
        let layout = Layout::new(info.ty, cols, rows, info.dims.len() == 1)
            .with_context(|| format!("{}: tensor '{name}'", file.path_display()))?;
        let chunks = self.upload(file, name, layout)?;
        self.weights.push(GpuWeight { layout, chunks });
        Ok(WeightId(self.weights.len() - 1))
    }

    fn alloc(&mut self, len: usize) -> Result<BufId> {
        let buf = self.rec.create("activations", len as u64 * 4, ACT_USAGE)?;
        self.acts.push(Act { buf, len });
        Ok(BufId(self.acts.len() - 1))
    }

    fn alloc_kv_cache(&mut self, n_layer: usize, max_ctx: usize, kv_dim: usize) -> Result<()> {
        let bytes = (max_ctx * kv_dim * 4) as u64;
        let mut layer = |label| self.rec.create(label, bytes, ACT_USAGE);
        let k = (0..n_layer)
            .map(|_| layer("k cache"))
            .collect::<Result<_>>()?;
        let v = (0..n_layer)
            .map(|_| layer("v cache"))
            .collect::<Result<_>>()?;
        self.kv = Some(KvCache {
            max_ctx,
            kv_dim,
            k,
            v,
        });
        Ok(())
    }

    fn embed(&mut self, table: WeightId, ids: &[u32], out: BufId) -> Result<()> {
        let l = self.weights[table.0].layout;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= l.rows) {
            bail!(
                "token id {bad} is outside the vocabulary ({} tokens)",
                l.rows
            );
        }
        let out = self.act(out, ids.len() * l.cols)?;
        // The ids buffer is rewritten: work recorded earlier may still read the old ids.
        self.rec.flush();
        self.ids = self.grow(self.ids, (ids.len() * 4) as u64);
        self.rec.write(self.ids.buf, 0, bytemuck::cast_slice(ids));
        for i in 0..self.weights[table.0].chunks.len() {
            let c = self.weights[table.0].chunks[i];
            let params = [
                l.cols as u32,
                c.row0 as u32,
                c.rows as u32,
                ids.len() as u32,
                l.row_words as u32,
            ];
            let res = [c.buf, self.ids.buf, out];
            self.rec
                .dispatch(Kernel::Embed(l.format), &res, &params, ids.len() as u32, 1)?;
        }
        Ok(())
    }

    fn copy(&mut self, src: BufId, src_off: usize, dst: BufId, len: usize) -> Result<()> {
        ensure!(src != dst, "internal: copy within one buffer");
        let s = self.act(src, src_off + len)?;
        let d = self.act(dst, len)?;
        self.rec.copy(s, src_off as u64 * 4, d, 0, len as u64 * 4);
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
        let res = [
            self.act(x, n_tokens * width)?,
            self.vector(weight, width)?,
            self.act(out, n_tokens * width)?,
        ];
        let params = [width as u32, n_tokens as u32, eps.to_bits()];
        self.rec
            .dispatch(Kernel::RmsNorm, &res, &params, n_tokens as u32, 1)
    }

    fn matmul(&mut self, x: BufId, n_tokens: usize, jobs: &[MatJob]) -> Result<()> {
        ensure!(!jobs.is_empty(), "internal: matmul without jobs");
        let cols = self.weights[jobs[0].weight.0].layout.cols;
        ensure!(
            jobs.iter()
                .all(|j| self.weights[j.weight.0].layout.cols == cols && j.out != x),
            "internal: matmul jobs must share the input width"
        );
        let xb = self.act(x, n_tokens * cols)?;
        for job in jobs {
            self.matmul_job(xb, n_tokens, job)?;
        }
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
        ensure!(
            head_dim.is_multiple_of(2),
            "internal: odd head dimension {head_dim}"
        );
        let table = self.rope_table(head_dim, freq_base, pos0 + n_tokens)?;
        let data = self.act(buf, n_tokens * n_heads * head_dim)?;
        let params = [
            n_tokens as u32,
            n_heads as u32,
            head_dim as u32,
            pos0 as u32,
        ];
        let n = n_tokens * n_heads * head_dim / 2;
        let groups = n.div_ceil(ELEMENTWISE_WG) as u32;
        self.rec
            .dispatch(Kernel::Rope, &[table, data], &params, groups, 1)
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
        let kv = self
            .kv
            .as_ref()
            .context("internal: KV cache not allocated")?;
        let (kv_dim, max_ctx) = (kv.kv_dim, kv.max_ctx);
        let (kc, vc) = (kv.k[layer], kv.v[layer]);
        let hd = shape.head_dim;
        ensure!(
            pos0 + n_tokens <= max_ctx,
            "context full: {} tokens exceed the context of {max_ctx}",
            pos0 + n_tokens
        );
        ensure!(
            hd.is_multiple_of(4)
                && hd <= MAX_HEAD_DIM
                && shape.n_head_kv > 0
                && shape.n_head.is_multiple_of(shape.n_head_kv)
                && shape.n_head_kv * hd == kv_dim,
            "GPU attention: unsupported shape {shape:?} (head_dim a multiple of 4 up to \
             {MAX_HEAD_DIM}, heads a multiple of KV heads) for a cache of width {kv_dim}"
        );
        let q_width = shape.n_head * hd;
        let new = (n_tokens * kv_dim) as u64 * 4;
        let at = (pos0 * kv_dim) as u64 * 4;
        let (kb, vb) = (
            self.act(k, n_tokens * kv_dim)?,
            self.act(v, n_tokens * kv_dim)?,
        );
        self.rec.copy(kb, 0, kc, at, new);
        self.rec.copy(vb, 0, vc, at, new);
        let res = [
            self.act(q, n_tokens * q_width)?,
            kc,
            vc,
            self.act(out, n_tokens * q_width)?,
        ];
        let params = [
            n_tokens as u32,
            pos0 as u32,
            shape.n_head as u32,
            shape.n_head_kv as u32,
            hd as u32,
            kv_dim as u32,
            (1.0 / (hd as f32).sqrt()).to_bits(),
        ];
        let tasks = (n_tokens * shape.n_head) as u32;
        self.rec
            .dispatch(Kernel::Attention, &res, &params, tasks, 1)
    }

    fn swiglu(&mut self, gate: BufId, up: BufId, len: usize, out: BufId) -> Result<()> {
        ensure!(
            out != gate && out != up,
            "internal: swiglu output aliases an input"
        );
        let res = [
            self.act(gate, len)?,
            self.act(up, len)?,
            self.act(out, len)?,
        ];
        self.elementwise(Kernel::Swiglu, &res, len)
    }

    fn read(&mut self, buf: BufId, offset: usize, dst: &mut [f32]) -> Result<()> {
        let b = self.act(buf, offset + dst.len())?;
        self.rec
            .read(b, offset as u64 * 4, bytemuck::cast_slice_mut(dst))
    }

    fn argmax(&mut self, buf: BufId, offset: usize, len: usize) -> Result<u32> {
        ensure!(len > 0, "internal: argmax of nothing");
        let x = self.act(buf, offset + len)?;
        let n_partials = len.div_ceil(ARGMAX_CHUNK);
        // Recorded work may still use the partials buffer: a new one if it must grow.
        self.partials = self.grow(self.partials, (n_partials * 8) as u64);
        let params = [offset as u32, len as u32, n_partials as u32];
        let partials = self.partials.buf;
        self.rec.dispatch(
            Kernel::ArgmaxPartial,
            &[x, partials],
            &params,
            n_partials as u32,
            1,
        )?;
        self.rec
            .dispatch(Kernel::ArgmaxFinal, &[partials, self.result], &params, 1, 1)?;
        let mut word = [0u8; 4];
        self.rec.read(self.result, 0, &mut word)?;
        let id = u32::from_le_bytes(word);
        if id as usize >= len {
            return Err(anyhow!("internal: GPU argmax returned {id} of {len}"));
        }
        Ok(id)
    }
}
