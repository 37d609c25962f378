//! Tensor descriptions shared by the reader and the writer.

use crate::types::GgmlType;

/// ggml tensors have at most 4 dimensions (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// One tensor as described in a GGUF header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (row) length.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Start of the data, relative to the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes (from `ty` and `dims`).
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Product of the dimensions (the reader has checked that it does not overflow).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Elements per row: `dims[0]`.
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows: the product of `dims[1..]`.
    pub fn n_rows(&self) -> u64 {
        let rest = self.dims.get(1..).unwrap_or(&[]);
        rest.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }
}

/// Byte size of a tensor of type `ty` and shape `dims`, or a description of why the shape is
/// invalid: 1 to 4 dims, none zero, a row a whole number of blocks, no overflow.
pub(super) fn tensor_n_bytes(dims: &[u64], ty: GgmlType) -> Result<u64, String> {
    if dims.is_empty() || dims.len() > MAX_DIMS {
        return Err(format!(
            "has {} dimensions, expected 1 to {MAX_DIMS}",
            dims.len()
        ));
    }
    if let Some(i) = dims.iter().position(|&d| d == 0) {
        return Err(format!("dimension {i} is zero (dims {dims:?})"));
    }
    let row = ty.row_bytes(dims[0]).ok_or_else(|| {
        format!(
            "row length {} is not a multiple of the {ty} block size {} (or its size overflows)",
            dims[0],
            ty.block_size()
        )
    })?;
    let mut total = row;
    for &d in &dims[1..] {
        total = total
            .checked_mul(d)
            .ok_or_else(|| format!("size of dims {dims:?} overflows 64 bits"))?;
    }
    // The element count must fit as well: consumers multiply it out.
    dims.iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("element count of dims {dims:?} overflows 64 bits"))?;
    Ok(total)
}
