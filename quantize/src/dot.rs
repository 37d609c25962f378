//! Scalar reference dot products of one weight row with one activation row.
//!
//! These define the numerics that the SIMD kernels must reproduce (up to float summation
//! order): within each 32-element activation block the products are summed exactly in `i32`,
//! then scaled once by the weight scale(s) and the activation scale, and the per-block results
//! are summed in f32 in row order.

use crate::act::{dequantize_activations, BlockQ8x32};
use crate::blocks::{
    get_scale_min_k4, q3k_scales, Block, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1,
    BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1,
};
use crate::dequant::{dequantize_row, leading_blocks, q5_high_bits, q6k_quant};
use crate::types::{GgmlType, QK32};

/// The form of activations a weight type is multiplied with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActKind {
    /// Plain f32 activations: [`vec_dot_f32`].
    F32,
    /// 8-bit activation blocks ([`BlockQ8x32`]): [`vec_dot_q8`].
    Q8,
}

/// Which activation form the weights of type `ty` want: float weights keep float activations,
/// quantized weights use 8-bit activation blocks (integer dot products).
pub fn activation_kind(ty: GgmlType) -> ActKind {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => ActKind::F32,
        _ => ActKind::Q8,
    }
}

/// Dot product of a weight row of type `ty` (encoded bytes) with quantized activations.
///
/// The caller ensures `w_row.len() == ty.row_bytes(32 * x.len())` (checked in debug builds);
/// on a mismatch only the leading whole blocks present in both are used. Float types are
/// handled too (by dequantizing the activations), so this is total over [`GgmlType`].
pub fn vec_dot_q8(ty: GgmlType, w_row: &[u8], x: &[BlockQ8x32]) -> f32 {
    debug_assert_eq!(
        ty.row_bytes((QK32 * x.len()) as u64),
        Some(w_row.len() as u64),
        "vec_dot_q8({ty}): {} weight bytes for {} activation blocks",
        w_row.len(),
        x.len()
    );
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            let mut xf = vec![0.0f32; QK32 * x.len()];
            dequantize_activations(x, &mut xf);
            vec_dot_f32(ty, w_row, &xf)
        }
        GgmlType::Q4_0 => dot_blocks::<BlockQ4_0, 1>(w_row, x, dot_q4_0),
        GgmlType::Q4_1 => dot_blocks::<BlockQ4_1, 1>(w_row, x, dot_q4_1),
        GgmlType::Q5_0 => dot_blocks::<BlockQ5_0, 1>(w_row, x, dot_q5_0),
        GgmlType::Q5_1 => dot_blocks::<BlockQ5_1, 1>(w_row, x, dot_q5_1),
        GgmlType::Q8_0 => dot_blocks::<BlockQ8_0, 1>(w_row, x, dot_q8_0),
        GgmlType::Q8_1 => dot_blocks::<BlockQ8_1, 1>(w_row, x, dot_q8_1),
        GgmlType::Q2_K => dot_blocks::<BlockQ2K, 8>(w_row, x, dot_q2_k),
        GgmlType::Q3_K => dot_blocks::<BlockQ3K, 8>(w_row, x, dot_q3_k),
        GgmlType::Q4_K => dot_blocks::<BlockQ4K, 8>(w_row, x, dot_q4_k),
        GgmlType::Q5_K => dot_blocks::<BlockQ5K, 8>(w_row, x, dot_q5_k),
        GgmlType::Q6_K => dot_blocks::<BlockQ6K, 8>(w_row, x, dot_q6_k),
        GgmlType::Q8_K => dot_blocks::<BlockQ8K, 8>(w_row, x, dot_q8_k),
    }
}

/// Dot product of a weight row of type `ty` with f32 activations.
///
/// Direct for F32, F16 and BF16; any other type is dequantized first (a slow fallback that
/// allocates a row). The caller ensures `w_row.len() == ty.row_bytes(x.len())` (checked in
/// debug builds); on a mismatch only the leading elements present in both are used.
pub fn vec_dot_f32(ty: GgmlType, w_row: &[u8], x: &[f32]) -> f32 {
    debug_assert_eq!(
        ty.row_bytes(x.len() as u64),
        Some(w_row.len() as u64),
        "vec_dot_f32({ty}): {} weight bytes for {} activations",
        w_row.len(),
        x.len()
    );
    match ty {
        GgmlType::F32 => dot_f32_with(w_row, x, f32::from_le_bytes),
        GgmlType::F16 => dot_f32_with(w_row, x, |b: [u8; 2]| {
            half::f16::from_bits(u16::from_le_bytes(b)).to_f32()
        }),
        GgmlType::BF16 => dot_f32_with(w_row, x, |b: [u8; 2]| {
            f32::from_bits((u16::from_le_bytes(b) as u32) << 16)
        }),
        _ => {
            // Only whole blocks can be decoded: trim both sides to what they have in common.
            let bs = ty.block_size();
            let blocks = (w_row.len() / ty.type_size()).min(x.len() / bs);
            let mut w = vec![0.0f32; blocks * bs];
            let bytes = w_row.get(..blocks * ty.type_size()).unwrap_or(&[]);
            dequantize_row(ty, bytes, &mut w);
            w.iter().zip(x).map(|(a, b)| a * b).sum()
        }
    }
}

/// f32 dot product of `x` with weights decoded from `N`-byte little-endian elements.
fn dot_f32_with<const N: usize>(w_row: &[u8], x: &[f32], decode: impl Fn([u8; N]) -> f32) -> f32 {
    w_row
        .as_chunks::<N>()
        .0
        .iter()
        .zip(x)
        .map(|(w, v)| decode(*w) * v)
        .sum()
}

/// Sum of a per-block dot over a row: each weight block of `G * 32` elements meets `G`
/// activation blocks.
fn dot_blocks<B: Block, const G: usize>(
    w_row: &[u8],
    x: &[BlockQ8x32],
    f: fn(&B, &[BlockQ8x32; G]) -> f32,
) -> f32 {
    let (xs, _) = x.as_chunks::<G>();
    leading_blocks::<B>(w_row)
        .iter()
        .zip(xs)
        .map(|(b, xg)| f(b, xg))
        .sum()
}

/// Integer dot product of 16 or 32 quant values with activation quants.
#[inline]
fn idot(q: &[i32], xq: &[i8]) -> i32 {
    q.iter().zip(xq).map(|(&a, &b)| a * b as i32).sum()
}

/// The 32 nibble-or-5-bit values of a legacy block, in element order.
#[inline]
fn legacy_quants(qs: &[u8; 16], qh: u32) -> [i32; 32] {
    let mut q = [0i32; 32];
    for (j, &b) in qs.iter().enumerate() {
        let (h0, h1) = q5_high_bits(qh, j);
        q[j] = ((b & 0xF) | h0) as i32;
        q[j + 16] = ((b >> 4) | h1) as i32;
    }
    q
}

fn dot_q4_0(b: &BlockQ4_0, [x]: &[BlockQ8x32; 1]) -> f32 {
    // Σ (q - 8) x = Σ q x - 8 Σ x: the unsigned form the SIMD kernels use.
    let isum = idot(&legacy_quants(&b.qs, 0), &x.qs) - 8 * x.sum;
    isum as f32 * (b.d.to_f32() * x.d)
}

fn dot_q4_1(b: &BlockQ4_1, [x]: &[BlockQ8x32; 1]) -> f32 {
    let isum = idot(&legacy_quants(&b.qs, 0), &x.qs);
    isum as f32 * (b.d.to_f32() * x.d) + b.m.to_f32() * (x.d * x.sum as f32)
}

fn dot_q5_0(b: &BlockQ5_0, [x]: &[BlockQ8x32; 1]) -> f32 {
    let q = legacy_quants(&b.qs, u32::from_le_bytes(b.qh));
    let isum = idot(&q, &x.qs) - 16 * x.sum;
    isum as f32 * (b.d.to_f32() * x.d)
}

fn dot_q5_1(b: &BlockQ5_1, [x]: &[BlockQ8x32; 1]) -> f32 {
    let q = legacy_quants(&b.qs, u32::from_le_bytes(b.qh));
    let isum = idot(&q, &x.qs);
    isum as f32 * (b.d.to_f32() * x.d) + b.m.to_f32() * (x.d * x.sum as f32)
}

fn dot_q8_0(b: &BlockQ8_0, [x]: &[BlockQ8x32; 1]) -> f32 {
    let isum: i32 =
        b.qs.iter()
            .zip(&x.qs)
            .map(|(&a, &c)| a as i32 * c as i32)
            .sum();
    isum as f32 * (b.d.to_f32() * x.d)
}

fn dot_q8_1(b: &BlockQ8_1, [x]: &[BlockQ8x32; 1]) -> f32 {
    let isum: i32 =
        b.qs.iter()
            .zip(&x.qs)
            .map(|(&a, &c)| a as i32 * c as i32)
            .sum();
    isum as f32 * (b.d.to_f32() * x.d)
}

/// The 2-bit quants of 32-group `g` (0..8) of a `Q2_K`/`Q3_K` block: weight `32g + l` is at
/// bits `2*(g%4)` of byte `32*(g/4) + l`.
#[inline]
fn low2_group(qs: &[u8; 64], g: usize) -> [i32; 32] {
    let base = 32 * ((g / 4) & 1);
    let shift = 2 * (g % 4);
    std::array::from_fn(|l| ((qs[base + l] >> shift) & 3) as i32)
}

/// Σ of 16 activation quants (the min term of a 16-element sub-block).
#[inline]
fn xsum16(xq: &[i8]) -> i32 {
    xq.iter().map(|&v| v as i32).sum()
}

fn dot_q2_k(b: &BlockQ2K, x: &[BlockQ8x32; 8]) -> f32 {
    let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
    let mut acc = 0.0f32;
    for (g, xb) in x.iter().enumerate() {
        let q = low2_group(&b.qs, g);
        // Two 16-element sub-blocks per group, each with its own 4-bit scale and min.
        let (mut sumi, mut summ) = (0i32, 0i32);
        for h in 0..2 {
            let sc = b.scales[2 * g + h];
            let r = 16 * h..16 * h + 16;
            sumi += (sc & 0xF) as i32 * idot(&q[r.clone()], &xb.qs[r.clone()]);
            summ += (sc >> 4) as i32 * xsum16(&xb.qs[r]);
        }
        acc += xb.d * (d * sumi as f32 - dmin * summ as f32);
    }
    acc
}

fn dot_q3_k(b: &BlockQ3K, x: &[BlockQ8x32; 8]) -> f32 {
    let d = b.d.to_f32();
    let scales = q3k_scales(&b.scales);
    let mut acc = 0.0f32;
    for (g, xb) in x.iter().enumerate() {
        let mut q = low2_group(&b.qs, g);
        // The high bit of weight 32g + l is bit g of hmask[l]; a cleared bit means "- 4".
        for (l, v) in q.iter_mut().enumerate() {
            if (b.hmask[l] >> g) & 1 == 0 {
                *v -= 4;
            }
        }
        let mut sumi = 0i32;
        for h in 0..2 {
            let r = 16 * h..16 * h + 16;
            sumi += scales[2 * g + h] as i32 * idot(&q[r.clone()], &xb.qs[r]);
        }
        acc += xb.d * (d * sumi as f32);
    }
    acc
}

/// The 4-bit quants of sub-block `g` (0..8) of a `Q4_K`/`Q5_K` block.
#[inline]
fn nibble_group(qs: &[u8; 128], g: usize) -> [i32; 32] {
    let base = 32 * ((g / 2) & 3);
    let shift = 4 * (g % 2);
    std::array::from_fn(|l| ((qs[base + l] >> shift) & 0xF) as i32)
}

fn dot_q4_k(b: &BlockQ4K, x: &[BlockQ8x32; 8]) -> f32 {
    let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
    let mut acc = 0.0f32;
    for (g, xb) in x.iter().enumerate() {
        let (sc, m) = get_scale_min_k4(g, &b.scales);
        let isum = idot(&nibble_group(&b.qs, g), &xb.qs);
        acc += xb.d * (d * (sc as i32 * isum) as f32 - dmin * (m as i32 * xb.sum) as f32);
    }
    acc
}

/// The 5-bit quants of sub-block `g` (0..8) of a `Q5_K` block: nibbles plus the fifth bit
/// of weight 32g + l, which is bit g of qh[l].
#[inline]
fn q5k_group(b: &BlockQ5K, g: usize) -> [i32; 32] {
    let mut q = nibble_group(&b.qs, g);
    for (l, v) in q.iter_mut().enumerate() {
        *v |= (((b.qh[l] >> g) & 1) as i32) << 4;
    }
    q
}

fn dot_q5_k(b: &BlockQ5K, x: &[BlockQ8x32; 8]) -> f32 {
    let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
    let mut acc = 0.0f32;
    for (g, xb) in x.iter().enumerate() {
        let (sc, m) = get_scale_min_k4(g, &b.scales);
        let isum = idot(&q5k_group(b, g), &xb.qs);
        acc += xb.d * (d * (sc as i32 * isum) as f32 - dmin * (m as i32 * xb.sum) as f32);
    }
    acc
}

fn dot_q6_k(b: &BlockQ6K, x: &[BlockQ8x32; 8]) -> f32 {
    let d = b.d.to_f32();
    let mut acc = 0.0f32;
    for (g, xb) in x.iter().enumerate() {
        let q: [i32; 32] = std::array::from_fn(|l| q6k_quant(b, 32 * g + l) as i32);
        let mut sumi = 0i32;
        for h in 0..2 {
            let r = 16 * h..16 * h + 16;
            sumi += b.scales[2 * g + h] as i32 * idot(&q[r.clone()], &xb.qs[r]);
        }
        acc += xb.d * (d * sumi as f32);
    }
    acc
}

fn dot_q8_k(b: &BlockQ8K, x: &[BlockQ8x32; 8]) -> f32 {
    let d = b.d();
    let mut acc = 0.0f32;
    for (wq, xb) in b.qs.as_chunks::<32>().0.iter().zip(x) {
        let isum: i32 = wq
            .iter()
            .zip(&xb.qs)
            .map(|(&a, &c)| a as i32 * c as i32)
            .sum();
        acc += xb.d * (d * isum as f32);
    }
    acc
}

/// Reference dot product of a K-quant weight row (`Q4_K`, `Q5_K` or `Q6_K`) with activations
/// quantized to `Q8_K` blocks (one scale per 256 values and the sums of each 16 quants, as
/// ggml's `vec_dot_*_q8_K` take them); `None` for other types. Whole super-blocks present in
/// both are used. The integer sums are exact; each super-block is scaled once.
pub fn vec_dot_q8k(ty: GgmlType, w_row: &[u8], x: &[BlockQ8K]) -> Option<f32> {
    fn rows<'a, B: Block>(
        w: &'a [u8],
        x: &'a [BlockQ8K],
    ) -> impl Iterator<Item = (&'a B, &'a BlockQ8K)> {
        leading_blocks::<B>(w).iter().zip(x)
    }
    let mut acc = 0.0f32;
    match ty {
        GgmlType::Q4_K => {
            for (b, xb) in rows::<BlockQ4K>(w_row, x) {
                let q = std::array::from_fn(|g| nibble_group(&b.qs, g));
                acc += k4_super_q8k(b.d.to_f32(), b.dmin.to_f32(), &b.scales, &q, xb);
            }
        }
        GgmlType::Q5_K => {
            for (b, xb) in rows::<BlockQ5K>(w_row, x) {
                let q = std::array::from_fn(|g| q5k_group(b, g));
                acc += k4_super_q8k(b.d.to_f32(), b.dmin.to_f32(), &b.scales, &q, xb);
            }
        }
        GgmlType::Q6_K => {
            for (b, xb) in rows::<BlockQ6K>(w_row, x) {
                let mut sumi = 0i32;
                for j in 0..16 {
                    let q: [i32; 16] = std::array::from_fn(|l| q6k_quant(b, 16 * j + l) as i32);
                    sumi += b.scales[j] as i32 * idot(&q, &xb.qs[16 * j..16 * j + 16]);
                }
                acc += xb.d() * b.d.to_f32() * sumi as f32;
            }
        }
        _ => return None,
    }
    Some(acc)
}

/// One Q4_K/Q5_K super-block (scales `d`, `dmin`, packed sub-block scales and mins, the 8
/// groups' quants) against one `Q8_K` block.
fn k4_super_q8k(d: f32, dmin: f32, scales: &[u8; 12], q: &[[i32; 32]; 8], xb: &BlockQ8K) -> f32 {
    let (mut sumi, mut summ) = (0i32, 0i32);
    for (g, q) in q.iter().enumerate() {
        let (sc, m) = get_scale_min_k4(g, scales);
        sumi += sc as i32 * idot(q, &xb.qs[32 * g..32 * g + 32]);
        let bsum =
            i32::from(xb.bsum(2 * g).unwrap_or(0)) + i32::from(xb.bsum(2 * g + 1).unwrap_or(0));
        summ += m as i32 * bsum;
    }
    xb.d() * (d * sumi as f32 - dmin * summ as f32)
}
