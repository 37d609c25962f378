//! Reference quantizers: one row of f32 values to the encoded bytes of a [`GgmlType`].
//!
//! These reproduce llama.cpp's `llama-quantize` path per type:
//!
//! | type | without importance | with importance |
//! |------|--------------------|-----------------|
//! | F32, F16, BF16 | exact conversion (round to nearest even) | importance ignored |
//! | Q8_0, Q8_1, Q8_K | `quantize_row_*_ref` | importance ignored (as ggml) |
//! | Q4_0, Q4_1, Q5_0, Q5_1 | `quantize_row_*_ref` | `quantize_row_*_impl` |
//! | Q2_K .. Q6_K | `quantize_row_*_K_ref` | `quantize_row_*_K_impl` |
//!
//! **Bit-exactness.** Every function keeps ggml's formulas, operand order, int/float
//! conversion points, integer wrap-arounds and tie-breaking (`nearest_int` rounds ties to
//! even, `roundf` away from zero, f32 → f16/bf16 to nearest even) and uses no fused
//! multiply-add. The output is therefore bit-identical, for every type above with and without
//! importance, to ggml's C compiled without FP contraction. That includes the x86-64 release
//! builds of llama.cpp: `ggml-quants.c` lives in `ggml-base`, which is compiled for the
//! baseline ISA (no FMA instructions, so gcc's `-ffp-contract=fast` has nothing to contract);
//! only the CPU backend gets `-march=native`. Verified against ggml's own functions on 64 rows
//! of varied data (`quantize_matches_ggml_dump` in `tests/formats.rs`): all bytes equal.
//!
//! Builds where the compiler does contract `a*b + c` into FMA (gcc with `-march=native` on
//! ggml-base, aarch64, Apple clang's default `-ffp-contract=on`) round some intermediate sums
//! of the scale searches differently and can then pick a different scale: there about 10–20% of
//! rows differ in some block for the search-based paths (all K-quants, and Q4_0/Q4_1/Q5_0/Q5_1
//! with importance). F16, BF16, Q8_0, Q8_1, Q8_K and Q4_0/Q4_1/Q5_0/Q5_1 without importance
//! have no contractible sums and match every build.

mod kquants;
mod legacy;
mod search;

use crate::blocks::{as_blocks_mut, Block};
use crate::types::{GgmlType, QK32, QK_K};

/// Quantize one row `src` into `dst` (`dst.len() == ty.row_bytes(src.len())`).
///
/// Same as [`quantize_row_weighted`] without importance.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    quantize_row_weighted(ty, src, None, dst);
}

/// Quantize one row `src` into `dst`, optionally weighting each column's error by
/// `importance` (an imatrix row: one non-negative weight per element of the row).
///
/// The caller ensures `src.len()` is a whole number of blocks,
/// `dst.len() == ty.row_bytes(src.len())` and, if given, `importance.len() == src.len()`
/// (all checked in debug builds). In release builds a mismatch never panics: only the leading
/// whole blocks present in both `src` and `dst` are written, and an importance vector of the
/// wrong length is ignored.
///
/// `importance` is the whole row's vector: the `Q4_0`/`Q4_1`/`Q5_0`/`Q5_1` weighted
/// quantizers also use statistics of the whole row (as ggml's `_impl` functions do), so pass
/// full rows, not pieces.
pub fn quantize_row_weighted(
    ty: GgmlType,
    src: &[f32],
    importance: Option<&[f32]>,
    dst: &mut [u8],
) {
    debug_assert_eq!(
        ty.row_bytes(src.len() as u64),
        Some(dst.len() as u64),
        "quantize_row({ty}): {} bytes for {} elements",
        dst.len(),
        src.len()
    );
    debug_assert!(
        importance.is_none_or(|w| w.len() == src.len()),
        "importance length"
    );
    let qw = importance.filter(|w| w.len() == src.len());
    match ty {
        GgmlType::F32 => write_elems(src, dst, f32::to_le_bytes),
        GgmlType::F16 => write_elems(src, dst, |v| half::f16::from_f32(v).to_bits().to_le_bytes()),
        GgmlType::BF16 => write_elems(src, dst, |v| {
            half::bf16::from_f32(v).to_bits().to_le_bytes()
        }),
        GgmlType::Q8_0 => per_block(src, dst, legacy::q8_0_ref),
        GgmlType::Q8_1 => per_block(src, dst, legacy::q8_1_ref),
        GgmlType::Q8_K => per_block(src, dst, kquants::q8_k_ref),
        GgmlType::Q4_0 => legacy_row(src, qw, dst, legacy::q4_0_ref, legacy::q4_0_weighted),
        GgmlType::Q4_1 => legacy_row(src, qw, dst, legacy::q4_1_ref, legacy::q4_1_weighted),
        GgmlType::Q5_0 => legacy_row(src, qw, dst, legacy::q5_0_ref, legacy::q5_0_weighted),
        GgmlType::Q5_1 => legacy_row(src, qw, dst, legacy::q5_1_ref, legacy::q5_1_weighted),
        GgmlType::Q2_K => k_row(src, qw, dst, kquants::q2_k_ref, kquants::q2_k_weighted),
        GgmlType::Q3_K => k_row(src, qw, dst, kquants::q3_k_ref, kquants::q3_k_weighted),
        GgmlType::Q4_K => k_row(src, qw, dst, kquants::q4_k_ref, kquants::q4_k_weighted),
        GgmlType::Q5_K => k_row(src, qw, dst, kquants::q5_k_ref, kquants::q5_k_weighted),
        GgmlType::Q6_K => k_row(
            src,
            qw,
            dst,
            |x, y| kquants::q6_k(x, None, y),
            |x, w, y| kquants::q6_k(x, Some(w), y),
        ),
    }
}

/// Write each element with its encoding of `N` bytes.
fn write_elems<const N: usize>(src: &[f32], dst: &mut [u8], enc: impl Fn(f32) -> [u8; N]) {
    for (o, &v) in dst.as_chunks_mut::<N>().0.iter_mut().zip(src) {
        *o = enc(v);
    }
}

/// The whole blocks at the start of `bytes` (a trailing partial block is left alone).
fn leading_blocks_mut<B: Block>(bytes: &mut [u8]) -> &mut [B] {
    let whole = bytes.len() - bytes.len() % std::mem::size_of::<B>();
    bytes
        .get_mut(..whole)
        .and_then(as_blocks_mut::<B>)
        .unwrap_or_default()
}

/// Quantize block by block; each output block starts zeroed, so no stale bytes survive.
fn per_block<B: Block, const N: usize>(src: &[f32], dst: &mut [u8], f: fn(&[f32; N], &mut B)) {
    for (x, y) in src
        .as_chunks::<N>()
        .0
        .iter()
        .zip(leading_blocks_mut::<B>(dst))
    {
        *y = B::zeroed();
        f(x, y);
    }
}

/// Block by block with the matching slice of the importance vector.
fn per_block_weighted<B: Block, const N: usize>(
    src: &[f32],
    qw: &[f32],
    dst: &mut [u8],
    f: impl Fn(&[f32; N], &[f32; N], &mut B),
) {
    let xs = src.as_chunks::<N>().0.iter().zip(qw.as_chunks::<N>().0);
    for ((x, w), y) in xs.zip(leading_blocks_mut::<B>(dst)) {
        *y = B::zeroed();
        f(x, w, y);
    }
}

type Ref<B, const N: usize> = fn(&[f32; N], &mut B);
type Weighted<B, const N: usize> = fn(&[f32; N], &[f32; N], &mut B);
type RowWeighted<B> = fn(&[f32; QK32], &[f32; QK32], f32, &mut B);

/// A 32-element type: `_ref` without importance, `_impl` with it (which also needs the mean
/// square of the whole row, `sigma2`).
fn legacy_row<B: Block>(
    src: &[f32],
    qw: Option<&[f32]>,
    dst: &mut [u8],
    plain: Ref<B, QK32>,
    weighted: RowWeighted<B>,
) {
    match qw {
        None => per_block(src, dst, plain),
        Some(qw) => {
            let sum_x2 = src.iter().fold(0.0f32, |s, &v| s + v * v);
            let sigma2 = sum_x2 / src.len() as f32;
            per_block_weighted(src, qw, dst, |x, w, y| weighted(x, w, sigma2, y));
        }
    }
}

/// A K-quant: `_ref` without importance, `_impl` with it.
fn k_row<B: Block>(
    src: &[f32],
    qw: Option<&[f32]>,
    dst: &mut [u8],
    plain: Ref<B, QK_K>,
    weighted: Weighted<B, QK_K>,
) {
    match qw {
        None => per_block(src, dst, plain),
        Some(qw) => per_block_weighted(src, qw, dst, weighted),
    }
}
