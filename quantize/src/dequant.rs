//! Dequantization of one row, bit-for-bit as ggml's `dequantize_row_*`.
//!
//! Every formula keeps ggml's operand order and its int → f32 conversion points, and uses no
//! fused multiply-add, so the results equal ggml's scalar C code compiled without FP
//! contraction (ggml built with `-march=native` may contract `a*b - c` into an FMA, which can
//! differ in the last bit; the scalar source semantics are what we reproduce).

use crate::blocks::{
    as_blocks, get_scale_min_k4, q3k_scales, Block, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0,
    BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1,
};
use crate::types::{GgmlType, QK32, QK_K};

/// Dequantize a whole tensor of `n_elements` values. Its rows are whole blocks stored back to
/// back, so the tensor is one long row as far as the block layout goes.
pub fn dequantize_tensor(ty: GgmlType, src: &[u8], n_elements: usize) -> Vec<f32> {
    let mut out = vec![0f32; n_elements];
    dequantize_row(ty, src, &mut out);
    out
}

/// Dequantize one row: `src` holds the encoded row of `dst.len()` elements of type `ty`.
///
/// The caller validates that `dst.len()` is a whole number of blocks and that
/// `src.len() == ty.row_bytes(dst.len())`; on a mismatch (checked in debug builds) only the
/// complete blocks present in both are converted and the rest of `dst` is left untouched:
/// this never panics on malformed data.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(
        ty.row_bytes(dst.len() as u64),
        Some(src.len() as u64),
        "dequantize_row({ty}): {} bytes for {} elements",
        src.len(),
        dst.len()
    );
    match ty {
        GgmlType::F32 => row_f32(src, dst),
        GgmlType::F16 => row_f16(src, dst),
        GgmlType::BF16 => row_bf16(src, dst),
        GgmlType::Q4_0 => row_blocks::<BlockQ4_0, QK32>(src, dst, block_q4_0),
        GgmlType::Q4_1 => row_blocks::<BlockQ4_1, QK32>(src, dst, block_q4_1),
        GgmlType::Q5_0 => row_blocks::<BlockQ5_0, QK32>(src, dst, block_q5_0),
        GgmlType::Q5_1 => row_blocks::<BlockQ5_1, QK32>(src, dst, block_q5_1),
        GgmlType::Q8_0 => row_blocks::<BlockQ8_0, QK32>(src, dst, block_q8_0),
        GgmlType::Q8_1 => row_blocks::<BlockQ8_1, QK32>(src, dst, block_q8_1),
        GgmlType::Q2_K => row_blocks::<BlockQ2K, QK_K>(src, dst, block_q2_k),
        GgmlType::Q3_K => row_blocks::<BlockQ3K, QK_K>(src, dst, block_q3_k),
        GgmlType::Q4_K => row_blocks::<BlockQ4K, QK_K>(src, dst, block_q4_k),
        GgmlType::Q5_K => row_blocks::<BlockQ5K, QK_K>(src, dst, block_q5_k),
        GgmlType::Q6_K => row_blocks::<BlockQ6K, QK_K>(src, dst, block_q6_k),
        GgmlType::Q8_K => row_blocks::<BlockQ8K, QK_K>(src, dst, block_q8_k),
    }
}

/// The whole blocks at the start of `bytes` (a trailing partial block is ignored).
pub(crate) fn leading_blocks<B: Block>(bytes: &[u8]) -> &[B] {
    let whole = bytes.len() - bytes.len() % std::mem::size_of::<B>();
    bytes.get(..whole).and_then(as_blocks::<B>).unwrap_or(&[])
}

/// Apply a per-block dequantizer over a row of blocks of `N` elements.
fn row_blocks<B: Block, const N: usize>(src: &[u8], dst: &mut [f32], f: fn(&B, &mut [f32; N])) {
    let (chunks, _) = dst.as_chunks_mut::<N>();
    for (b, out) in leading_blocks::<B>(src).iter().zip(chunks) {
        f(b, out);
    }
}

fn row_f32(src: &[u8], dst: &mut [f32]) {
    for (b, o) in src.as_chunks::<4>().0.iter().zip(dst) {
        *o = f32::from_le_bytes(*b);
    }
}

fn row_f16(src: &[u8], dst: &mut [f32]) {
    for (b, o) in src.as_chunks::<2>().0.iter().zip(dst) {
        *o = half::f16::from_bits(u16::from_le_bytes(*b)).to_f32();
    }
}

fn row_bf16(src: &[u8], dst: &mut [f32]) {
    for (b, o) in src.as_chunks::<2>().0.iter().zip(dst) {
        // bf16 is the top half of an f32: widening is exact.
        *o = f32::from_bits((u16::from_le_bytes(*b) as u32) << 16);
    }
}

/// Dequantize one `Q4_0` block.
pub fn block_q4_0(b: &BlockQ4_0, y: &mut [f32; QK32]) {
    let d = b.d.to_f32();
    for (j, &q) in b.qs.iter().enumerate() {
        y[j] = ((q & 0xF) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// Dequantize one `Q4_1` block.
pub fn block_q4_1(b: &BlockQ4_1, y: &mut [f32; QK32]) {
    let (d, m) = (b.d.to_f32(), b.m.to_f32());
    for (j, &q) in b.qs.iter().enumerate() {
        y[j] = (q & 0xF) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// Dequantize one `Q5_0` block.
pub fn block_q5_0(b: &BlockQ5_0, y: &mut [f32; QK32]) {
    let d = b.d.to_f32();
    let qh = u32::from_le_bytes(b.qh);
    for (j, &q) in b.qs.iter().enumerate() {
        let (h0, h1) = q5_high_bits(qh, j);
        y[j] = (((q & 0xF) | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((q >> 4) | h1) as i32 - 16) as f32 * d;
    }
}

/// Dequantize one `Q5_1` block.
pub fn block_q5_1(b: &BlockQ5_1, y: &mut [f32; QK32]) {
    let (d, m) = (b.d.to_f32(), b.m.to_f32());
    let qh = u32::from_le_bytes(b.qh);
    for (j, &q) in b.qs.iter().enumerate() {
        let (h0, h1) = q5_high_bits(qh, j);
        y[j] = ((q & 0xF) | h0) as f32 * d + m;
        y[j + 16] = ((q >> 4) | h1) as f32 * d + m;
    }
}

/// The fifth bits (as 0 or 0x10) of weights `j` and `j + 16` of a `Q5_0`/`Q5_1` block.
#[inline]
pub(crate) fn q5_high_bits(qh: u32, j: usize) -> (u8, u8) {
    let h0 = ((qh >> j) << 4) & 0x10;
    let h1 = (qh >> (j + 12)) & 0x10;
    (h0 as u8, h1 as u8)
}

/// Dequantize one `Q8_0` block.
pub fn block_q8_0(b: &BlockQ8_0, y: &mut [f32; QK32]) {
    let d = b.d.to_f32();
    for (o, &q) in y.iter_mut().zip(&b.qs) {
        *o = q as f32 * d;
    }
}

/// Dequantize one `Q8_1` block (ggml has no `dequantize_row_q8_1`; this is `d * q`).
pub fn block_q8_1(b: &BlockQ8_1, y: &mut [f32; QK32]) {
    let d = b.d.to_f32();
    for (o, &q) in y.iter_mut().zip(&b.qs) {
        *o = q as f32 * d;
    }
}

/// Dequantize one `Q2_K` block.
pub fn block_q2_k(b: &BlockQ2K, y: &mut [f32; QK_K]) {
    let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
    // Sub-block `s` (16 weights) sits in half `s / 8`, at bit shift `2 * ((s % 8) / 2)`, and
    // uses bytes 0..16 or 16..32 of that half's 32 quant bytes depending on `s % 2`.
    for (s, (out, &sc)) in y
        .as_chunks_mut::<16>()
        .0
        .iter_mut()
        .zip(&b.scales)
        .enumerate()
    {
        let dl = d * (sc & 0xF) as f32;
        let ml = min * (sc >> 4) as f32;
        let shift = 2 * ((s % 8) / 2);
        let base = 32 * (s / 8) + 16 * (s % 2);
        for (o, &q) in out.iter_mut().zip(&b.qs[base..base + 16]) {
            *o = dl * ((q >> shift) & 3) as f32 - ml;
        }
    }
}

/// Dequantize one `Q3_K` block.
pub fn block_q3_k(b: &BlockQ3K, y: &mut [f32; QK_K]) {
    let d_all = b.d.to_f32();
    let scales = q3k_scales(&b.scales);
    // Same geometry as Q2_K for the low bits; the high bit of weight `32*k + m` (k = 0..8) is
    // bit k of hmask[m], and a cleared bit means "subtract 4".
    for (s, (out, &sc)) in y
        .as_chunks_mut::<16>()
        .0
        .iter_mut()
        .zip(&scales)
        .enumerate()
    {
        let dl = d_all * (sc as i32) as f32;
        let shift = 2 * ((s % 8) / 2);
        let base = 32 * (s / 8) + 16 * (s % 2);
        let hbit = 1u8 << (s / 2);
        let lo = 16 * (s % 2);
        for (l, o) in out.iter_mut().enumerate() {
            let q = ((b.qs[base + l] >> shift) & 3) as i32;
            let h = if b.hmask[lo + l] & hbit != 0 { 0 } else { 4 };
            *o = dl * (q - h) as f32;
        }
    }
}

/// Dequantize one `Q4_K` block.
pub fn block_q4_k(b: &BlockQ4K, y: &mut [f32; QK_K]) {
    let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
    for (s, out) in y.as_chunks_mut::<32>().0.iter_mut().enumerate() {
        let (sc, m) = get_scale_min_k4(s, &b.scales);
        let (dl, ml) = (d * sc as f32, min * m as f32);
        let shift = 4 * (s % 2);
        let base = 32 * (s / 2);
        for (o, &q) in out.iter_mut().zip(&b.qs[base..base + 32]) {
            *o = dl * ((q >> shift) & 0xF) as f32 - ml;
        }
    }
}

/// Dequantize one `Q5_K` block.
pub fn block_q5_k(b: &BlockQ5K, y: &mut [f32; QK_K]) {
    let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
    for (s, out) in y.as_chunks_mut::<32>().0.iter_mut().enumerate() {
        let (sc, m) = get_scale_min_k4(s, &b.scales);
        let (dl, ml) = (d * sc as f32, min * m as f32);
        let shift = 4 * (s % 2);
        let base = 32 * (s / 2);
        let hbit = 1u8 << s;
        for (l, o) in out.iter_mut().enumerate() {
            let lo = (b.qs[base + l] >> shift) & 0xF;
            let hi = if b.qh[l] & hbit != 0 { 16 } else { 0 };
            *o = dl * (lo + hi) as f32 - ml;
        }
    }
}

/// Dequantize one `Q6_K` block.
pub fn block_q6_k(b: &BlockQ6K, y: &mut [f32; QK_K]) {
    let d = b.d.to_f32();
    for (i, o) in y.iter_mut().enumerate() {
        let q = q6k_quant(b, i);
        // ggml: `d * sc[is] * q` evaluates as `(d * sc) * q`.
        *o = d * b.scales[i / 16] as f32 * q as f32;
    }
}

/// Weight `i` (0..256) of a `Q6_K` block as a signed 6-bit value in -32..32.
///
/// Within each 128-weight half `h`, weight `32*k + l` (k = 0..4) takes its low nibble from
/// `ql[64h + l + 32*(k%2)]` (low nibble for k < 2, high for k >= 2) and its top two bits from
/// `qh[32h + l]` at shift `2k`.
#[inline]
pub(crate) fn q6k_quant(b: &BlockQ6K, i: usize) -> i8 {
    let (h, k, l) = ((i / 128) & 1, (i % 128) / 32, i % 32);
    let low = (b.ql[64 * h + l + 32 * (k % 2)] >> (4 * (k / 2))) & 0xF;
    let high = (b.qh[32 * h + l] >> (2 * k)) & 3;
    (low | (high << 4)) as i8 - 32
}

/// Dequantize one `Q8_K` block.
pub fn block_q8_k(b: &BlockQ8K, y: &mut [f32; QK_K]) {
    let d = b.d();
    for (o, &q) in y.iter_mut().zip(&b.qs) {
        *o = d * q as f32;
    }
}
