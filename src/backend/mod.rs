//! The compute backends behind one narrow interface.
//!
//! The model code ([`crate::model`]) only speaks this trait: it names weights and activation
//! buffers by handle and asks for ops. The CPU backend reads weights from the memory-mapped file
//! and keeps its matmul weights in one copy made at load (2 MiB pages, re-laid for its decode
//! kernels; the mapped pages are released); a GPU backend uploads them once. Neither the model
//! nor the generation loop changes between them.

pub mod cpu;
pub mod gpu;

use std::sync::Arc;

use anyhow::Result;

use crate::gguf::GgufFile;

/// Handle of a weight tensor owned by a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightId(pub usize);

/// Handle of an f32 activation buffer owned by a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufId(pub usize);

/// One output of a (multi-)matmul: `out[t, :] = w · x[t, :] (+ bias)` for every token `t`.
#[derive(Clone, Copy, Debug)]
pub struct MatJob {
    pub weight: WeightId,
    pub bias: Option<WeightId>,
    pub out: BufId,
    /// Add the product to what `out` holds (a residual connection: one pass over the output
    /// instead of a product and a separate add) rather than overwrite it.
    pub accumulate: bool,
}

/// Shapes the attention op needs.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
}

/// Which compute backend to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// The CPU with the best SIMD path this machine has.
    #[default]
    Cpu,
    /// A GPU through wgpu (Vulkan, Metal, DX12).
    Gpu,
    /// A real GPU when there is one, else the CPU.
    Auto,
}

impl std::str::FromStr for BackendKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(BackendKind::Cpu),
            "gpu" => Ok(BackendKind::Gpu),
            "auto" => Ok(BackendKind::Auto),
            other => anyhow::bail!("unknown backend '{other}': expected cpu, gpu or auto"),
        }
    }
}

/// The ops the Qwen2 forward pass needs. Buffers hold row-major `[n_tokens, width]` f32 data.
pub trait Backend: Send {
    /// Human-readable description, e.g. "cpu (avx512-vnni, 2 threads)".
    fn describe(&self) -> String;

    /// Makes a tensor of `file` available to ops (a view of the mapped file on CPU until
    /// [`prepare_matmul`](Self::prepare_matmul), uploaded on GPU).
    fn load_weight(&mut self, file: &Arc<GgufFile>, name: &str) -> Result<WeightId>;

    /// Says that `ws` (from [`load_weight`](Self::load_weight); repeats allowed) will be
    /// matmul weights, so the backend may re-lay them for its kernels once, now (the CPU
    /// decodes some types from four-block chunks). Ops other than `matmul` may still read
    /// them. Pass all of a model's at once: the CPU keeps their copies in one buffer.
    fn prepare_matmul(&mut self, ws: &[WeightId]) -> Result<()> {
        let _ = ws;
        Ok(())
    }

    /// Allocates a zeroed activation buffer of `len` floats.
    fn alloc(&mut self, len: usize) -> Result<BufId>;

    /// Allocates the KV cache: `n_layer` layers of `max_ctx` positions of `kv_dim` floats for K and V
    /// (a backend may round the positions up to its own blocks).
    fn alloc_kv_cache(&mut self, n_layer: usize, max_ctx: usize, kv_dim: usize) -> Result<()>;

    /// `out[t, :] = table[ids[t], :]`, dequantized.
    fn embed(&mut self, table: WeightId, ids: &[u32], out: BufId) -> Result<()>;

    /// Copies `len` floats from `src[src_off..]` to `dst[0..]`.
    fn copy(&mut self, src: BufId, src_off: usize, dst: BufId, len: usize) -> Result<()>;

    /// RMSNorm of each of `n_tokens` rows of `width`, times `weight`.
    fn rms_norm(
        &mut self,
        x: BufId,
        weight: WeightId,
        eps: f32,
        n_tokens: usize,
        width: usize,
        out: BufId,
    ) -> Result<()>;

    /// Several matmuls that share their input `x` (`n_tokens` rows), e.g. Q/K/V or gate/up.
    fn matmul(&mut self, x: BufId, n_tokens: usize, jobs: &[MatJob]) -> Result<()>;

    /// Rotary embedding, NeoX layout (pairs `i`, `i + head_dim/2`), positions `pos0..pos0+n_tokens`.
    fn rope(
        &mut self,
        buf: BufId,
        n_tokens: usize,
        n_heads: usize,
        head_dim: usize,
        pos0: usize,
        freq_base: f32,
    ) -> Result<()>;

    /// Appends `k`, `v` of `n_tokens` tokens at `pos0` to layer `layer`'s cache, then causal
    /// grouped-query attention of `q` over positions `0..=pos0+t`, written to `out`.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;

    /// `out = silu(gate) * up`, elementwise over `len`.
    fn swiglu(&mut self, gate: BufId, up: BufId, len: usize, out: BufId) -> Result<()>;

    /// Reads `dst.len()` floats from `buf[offset..]`.
    fn read(&mut self, buf: BufId, offset: usize, dst: &mut [f32]) -> Result<()>;

    /// Index of the largest of `len` floats at `buf[offset..]` (first on ties).
    fn argmax(&mut self, buf: BufId, offset: usize, len: usize) -> Result<u32> {
        let mut v = vec![0.0; len];
        self.read(buf, offset, &mut v)?;
        Ok(crate::generate::argmax(&v))
    }
}
