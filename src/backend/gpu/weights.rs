//! Weights on the GPU: the word layout of each format, and the upload.
//!
//! Layout. WGSL storage buffers hold 32-bit words and have no byte type, while GGUF blocks
//! are byte-packed: a `Q5_0` block is 22 bytes, so in the file most blocks start in the middle
//! of a word and a shader would have to splice every field out of two words. Each tensor is
//! therefore re-laid once, at upload, so that every block starts on a word boundary and every
//! field of a block sits inside whole words:
//!
//! | format | GGUF block | on the GPU |
//! | --- | --- | --- |
//! | `Q4_0`, `Q5_0`, `Q8_0` | `d` (f16), then the rest | `d`, two zero bytes, the rest: 20, 24, 36 bytes |
//! | `Q6_K` | 210 bytes, `d` last | the block, two zero bytes: 212 bytes |
//! | `Q4_K` | 144 bytes | unchanged (already word-aligned) |
//! | `F32` | 4 bytes | unchanged |
//! | `F16` | 2 bytes | unchanged, each row padded to a whole word |
//!
//! Keeping scales beside their quants (rather than splitting a tensor into a scale array and a
//! quant array) keeps one row one contiguous range, so a row range of a tensor is a range of
//! words and a large tensor can be cut into chunks at any row. The cost is 2 bytes per block
//! where there is padding (11% for `Q4_0`, 9% for `Q5_0`, 6% for `Q8_0`, 1% for `Q6_K`).
//! Other GGUF types are dequantized to `F32` at load (correct, 4 bytes per weight).
//! 1-D tensors (norms, biases) are always stored as `F32`: they are small and read as floats.
//!
//! Splitting. One binding may not exceed `max_storage_buffer_binding_size` (often 128 MiB),
//! and a model's output matrix can be larger (151936 x 896 `Q8_0` is 153 MB re-laid), so a
//! tensor is cut into chunks of whole rows, each its own buffer of at most that size; the
//! matmul and embedding kernels run once per chunk with the chunk's first row as a parameter.

use anyhow::{bail, ensure, Result};
use marco_quantize::dequant::dequantize_row;
use marco_quantize::GgmlType;

/// A weight format the kernels read (one file in `shaders/quant/` each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    F32,
    F16,
    Q4_0,
    Q5_0,
    Q8_0,
    Q4K,
    Q6K,
}

impl Format {
    /// The format a 2-D tensor of type `ty` is stored in.
    pub fn for_matrix(ty: GgmlType) -> Format {
        match ty {
            GgmlType::F16 => Format::F16,
            GgmlType::Q4_0 => Format::Q4_0,
            GgmlType::Q5_0 => Format::Q5_0,
            GgmlType::Q8_0 => Format::Q8_0,
            GgmlType::Q4_K => Format::Q4K,
            GgmlType::Q6_K => Format::Q6K,
            _ => Format::F32,
        }
    }

    /// The WGSL of `units` and `dequant_unit` for this format.
    pub fn shader(self) -> &'static str {
        match self {
            Format::F32 => include_str!("../../../shaders/quant/f32.wgsl"),
            Format::F16 => include_str!("../../../shaders/quant/f16.wgsl"),
            Format::Q4_0 => include_str!("../../../shaders/quant/q4_0.wgsl"),
            Format::Q5_0 => include_str!("../../../shaders/quant/q5_0.wgsl"),
            Format::Q8_0 => include_str!("../../../shaders/quant/q8_0.wgsl"),
            Format::Q4K => include_str!("../../../shaders/quant/q4_k.wgsl"),
            Format::Q6K => include_str!("../../../shaders/quant/q6_k.wgsl"),
        }
    }

    /// Where each block gets two zero bytes inserted, for the formats that need them.
    fn pad_at(self) -> Option<usize> {
        match self {
            Format::Q4_0 | Format::Q5_0 | Format::Q8_0 => Some(2),
            Format::Q6K => Some(GgmlType::Q6_K.type_size()),
            Format::F32 | Format::F16 | Format::Q4K => None,
        }
    }
}

/// How one tensor is laid out on the GPU.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub format: Format,
    /// The type in the file.
    pub ty: GgmlType,
    pub cols: usize,
    pub rows: usize,
    /// Words per re-laid row.
    pub row_words: usize,
}

impl Layout {
    /// The layout of a `rows` x `cols` tensor of type `ty`; 1-D tensors pass `dense` and are
    /// stored as `F32`.
    pub fn new(ty: GgmlType, cols: usize, rows: usize, dense: bool) -> Result<Layout> {
        let format = if dense {
            Format::F32
        } else {
            Format::for_matrix(ty)
        };
        ensure!(
            cols.is_multiple_of(ty.block_size()),
            "rows of {cols} are not a whole number of {ty} blocks"
        );
        let blocks = cols / ty.block_size();
        let row_bytes = match (format, format.pad_at()) {
            (Format::F32, _) => cols * 4,
            (_, Some(_)) => blocks * (ty.type_size() + 2),
            (_, None) => blocks * ty.type_size(),
        };
        // The kernels index rows and words with u32.
        ensure!(
            cols <= u32::MAX as usize && rows <= u32::MAX as usize,
            "tensor of {rows} x {cols} is too large for the GPU kernels"
        );
        Ok(Layout {
            format,
            ty,
            cols,
            rows,
            row_words: row_bytes.div_ceil(4),
        })
    }

    pub fn row_bytes(&self) -> usize {
        self.row_words * 4
    }

    /// Rows per chunk so that a chunk fits in `max_bytes`.
    pub fn rows_per_chunk(&self, max_bytes: u64) -> Result<usize> {
        let per = (max_bytes / self.row_bytes() as u64) as usize;
        if per == 0 {
            bail!(
                "one row of {} bytes exceeds the GPU's largest binding ({max_bytes} bytes)",
                self.row_bytes()
            );
        }
        // Chunk rows are also indexed as u32 inside a chunk's words.
        let word_cap = (u32::MAX as usize / self.row_words).max(1);
        Ok(per.min(word_cap).min(self.rows))
    }

    /// Re-lays `src` (whole rows in the file's encoding) into `dst` (the same rows re-laid,
    /// `row_bytes()` each). `scratch` is reused for types dequantized at load.
    pub fn relay_rows(&self, src: &[u8], dst: &mut [u8], scratch: &mut Vec<f32>) {
        let src_row = src.len() / (dst.len() / self.row_bytes()).max(1);
        for (s, d) in src
            .chunks_exact(src_row)
            .zip(dst.chunks_exact_mut(self.row_bytes()))
        {
            self.relay_row(s, d, scratch);
        }
    }

    fn relay_row(&self, src: &[u8], dst: &mut [u8], scratch: &mut Vec<f32>) {
        dst.fill(0);
        match (self.format, self.format.pad_at()) {
            (Format::F32, _) if self.ty != GgmlType::F32 => {
                scratch.resize(self.cols, 0.0);
                dequantize_row(self.ty, src, scratch);
                for (d, v) in dst.chunks_exact_mut(4).zip(scratch.iter()) {
                    d.copy_from_slice(&v.to_le_bytes());
                }
            }
            (_, Some(at)) => {
                let size = self.ty.type_size();
                for (s, d) in src.chunks_exact(size).zip(dst.chunks_exact_mut(size + 2)) {
                    d[..at].copy_from_slice(&s[..at]);
                    d[at + 2..].copy_from_slice(&s[at..]);
                }
            }
            (_, None) => dst[..src.len()].copy_from_slice(src),
        }
    }
}

/// Rows `row0..row0 + rows` of a weight, in one buffer.
#[derive(Clone, Copy, Debug)]
pub struct Chunk {
    pub buf: usize,
    pub row0: usize,
    pub rows: usize,
}

/// A weight on the GPU: its layout and its chunks (one unless it exceeds a binding).
#[derive(Clone, Debug)]
pub struct GpuWeight {
    pub layout: Layout,
    pub chunks: Vec<Chunk>,
}

/// Creates a buffer holding rows `row0..row0 + rows` of `data` (the tensor in the file),
/// re-laid. The buffer is written while mapped at creation, in pieces of about 4 MiB, so the
/// upload needs no copy of the whole tensor in host memory.
pub fn upload_chunk(
    device: &wgpu::Device,
    layout: &Layout,
    data: &[u8],
    row0: usize,
    rows: usize,
    label: &str,
) -> wgpu::Buffer {
    let src_row = data.len() / layout.rows;
    let size = (rows * layout.row_bytes()) as u64;
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: true,
    });
    {
        let mut view = buffer
            .get_mapped_range_mut(..)
            .expect("a buffer mapped at creation maps");
        let step = (4 << 20) / layout.row_bytes().max(1) + 1;
        let mut piece = Vec::new();
        let mut scratch = Vec::new();
        let mut r = 0;
        while r < rows {
            let n = step.min(rows - r);
            piece.resize(n * layout.row_bytes(), 0);
            let src = &data[(row0 + r) * src_row..(row0 + r + n) * src_row];
            layout.relay_rows(src, &mut piece, &mut scratch);
            let at = r * layout.row_bytes();
            view.slice(at..at + piece.len()).copy_from_slice(&piece);
            r += n;
        }
    }
    buffer.unmap();
    buffer
}
