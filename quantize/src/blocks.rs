//! The `#[repr(C)]` block layouts of the GGML quant types, one definition each.
//!
//! Field order and sizes follow `ggml-common.h`. Every multi-byte scalar (the f16 scales, the
//! f32 scale and the i16 sums of `Q8_K`) is stored as little-endian bytes, so every block has
//! alignment 1: a tensor in a memory-mapped GGUF file is only guaranteed to be aligned to its
//! data section, and rows of e.g. `Q3_K` (110 bytes per block) start at arbitrary offsets.
//! That makes [`as_blocks`] succeed on any byte slice whose length is a whole number of blocks.

use crate::types::{GgmlType, QK32, QK_K};
use std::mem::{align_of, size_of};

/// An IEEE half-precision value stored as two little-endian bytes (`ggml_half`).
#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct LeF16(pub [u8; 2]);

impl LeF16 {
    /// The raw bit pattern.
    #[inline]
    pub fn bits(self) -> u16 {
        u16::from_le_bytes(self.0)
    }

    /// The value as f32 (exact: every f16 is representable as f32).
    #[inline]
    pub fn to_f32(self) -> f32 {
        half::f16::from_bits(self.bits()).to_f32()
    }

    /// Round `v` to the nearest f16 (ties to even), as `GGML_FP32_TO_FP16` does.
    #[inline]
    pub fn from_f32(v: f32) -> Self {
        LeF16(half::f16::from_f32(v).to_bits().to_le_bytes())
    }
}

/// A plain-old-data quant block.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, have no padding, alignment 1, and be valid for every bit
/// pattern (only integer arrays and [`LeF16`] fields), so that any `size_of::<Self>()` bytes
/// can be reinterpreted as `Self`.
pub unsafe trait Block: Copy + 'static {
    /// The tensor type whose blocks have this layout.
    const TYPE: GgmlType;

    /// The all-zero block.
    fn zeroed() -> Self {
        // SAFETY: the trait contract says every bit pattern, including all zeros, is valid.
        unsafe { std::mem::zeroed() }
    }
}

/// View `bytes` as a slice of blocks, or `None` if the length is not a whole number of blocks
/// (or, impossible for this crate's blocks, the alignment does not fit).
pub fn as_blocks<B: Block>(bytes: &[u8]) -> Option<&[B]> {
    let size = size_of::<B>();
    if !bytes.len().is_multiple_of(size) || !bytes.as_ptr().cast::<B>().is_aligned() {
        return None;
    }
    // SAFETY: the pointer is aligned for B (checked above), the length covers exactly
    // `len / size` blocks of initialized bytes, and `Block` guarantees every bit pattern is a
    // valid B. The lifetime is tied to `bytes`, which stays borrowed immutably.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / size) })
}

/// Mutable variant of [`as_blocks`], for writing quantized rows in place.
pub fn as_blocks_mut<B: Block>(bytes: &mut [u8]) -> Option<&mut [B]> {
    let size = size_of::<B>();
    if !bytes.len().is_multiple_of(size) || !bytes.as_ptr().cast::<B>().is_aligned() {
        return None;
    }
    // SAFETY: as in `as_blocks`; additionally the borrow is exclusive, and any value written
    // through the block view is a valid byte pattern for `u8`.
    Some(unsafe {
        std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<B>(), bytes.len() / size)
    })
}

/// The bytes of a slice of blocks (e.g. to write them to a file).
pub fn blocks_as_bytes<B: Block>(blocks: &[B]) -> &[u8] {
    // SAFETY: `Block` types have no padding, so every byte is initialized; u8 has alignment 1.
    unsafe {
        std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(blocks))
    }
}

/// `Q4_0`: 32 weights, `x = d * (q - 8)` with 4-bit `q`. 4.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: LeF16,
    /// Nibbles: low nibble of byte `j` is weight `j`, high nibble is weight `j + 16`.
    pub qs: [u8; QK32 / 2],
}

/// `Q4_1`: 32 weights, `x = d * q + m` with 4-bit `q`. 5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: LeF16,
    /// Minimum (offset).
    pub m: LeF16,
    /// Nibbles, laid out as in [`BlockQ4_0`].
    pub qs: [u8; QK32 / 2],
}

/// `Q5_0`: 32 weights, `x = d * (q - 16)` with 5-bit `q`. 5.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct BlockQ5_0 {
    /// Scale.
    pub d: LeF16,
    /// Fifth bits: bit `j` of the little-endian u32 belongs to weight `j`.
    pub qh: [u8; 4],
    /// Low four bits, laid out as in [`BlockQ4_0`].
    pub qs: [u8; QK32 / 2],
}

/// `Q5_1`: 32 weights, `x = d * q + m` with 5-bit `q`. 6 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct BlockQ5_1 {
    /// Scale.
    pub d: LeF16,
    /// Minimum (offset).
    pub m: LeF16,
    /// Fifth bits, as in [`BlockQ5_0`].
    pub qh: [u8; 4],
    /// Low four bits, laid out as in [`BlockQ4_0`].
    pub qs: [u8; QK32 / 2],
}

/// `Q8_0`: 32 weights, `x = d * q` with 8-bit `q`. 8.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: LeF16,
    /// Quants.
    pub qs: [i8; QK32],
}

/// `Q8_1`: 32 values, `x = d * q`, plus `s = d * Σq`. 9 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct BlockQ8_1 {
    /// Scale.
    pub d: LeF16,
    /// `d * sum(qs)`.
    pub s: LeF16,
    /// Quants.
    pub qs: [i8; QK32],
}

/// `Q2_K`: 256 weights in 16 sub-blocks of 16, `x = d*sc*q - dmin*m` with 2-bit `q` and 4-bit
/// `sc`, `m`. 2.625 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlockQ2K {
    /// Per sub-block: scale in the low nibble, min in the high nibble.
    pub scales: [u8; QK_K / 16],
    /// 2-bit quants: byte `l` of each 32-byte half holds weights `l, l+32, l+64, l+96`.
    pub qs: [u8; QK_K / 4],
    /// Super-block scale of the scales.
    pub d: LeF16,
    /// Super-block scale of the mins.
    pub dmin: LeF16,
}

/// `Q3_K`: 256 weights in 16 sub-blocks of 16, `x = d * (sc - 32) * (q - 4)` with 3-bit `q`
/// and 6-bit `sc`. 3.4375 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlockQ3K {
    /// High bit of the quants: bit `b` of byte `m` belongs to weight `32*b + m`.
    pub hmask: [u8; QK_K / 8],
    /// Low two bits, laid out as in [`BlockQ2K`].
    pub qs: [u8; QK_K / 4],
    /// 16 six-bit scales, packed (low nibbles in bytes 0..8, high pairs in bytes 8..12).
    pub scales: [u8; 12],
    /// Super-block scale.
    pub d: LeF16,
}

/// `Q4_K`: 256 weights in 8 sub-blocks of 32, `x = d*sc*q - dmin*m` with 4-bit `q` and
/// 6-bit `sc`, `m`. 4.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlockQ4K {
    /// Super-block scale of the scales.
    pub d: LeF16,
    /// Super-block scale of the mins.
    pub dmin: LeF16,
    /// 8 six-bit scales and 8 six-bit mins, packed as `get_scale_min_k4` reads them.
    pub scales: [u8; 12],
    /// Nibbles: each 32-byte chunk holds sub-block `2c` in low and `2c+1` in high nibbles.
    pub qs: [u8; QK_K / 2],
}

/// `Q5_K`: 256 weights in 8 sub-blocks of 32, `x = d*sc*q - dmin*m` with 5-bit `q`.
/// 5.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlockQ5K {
    /// Super-block scale of the scales.
    pub d: LeF16,
    /// Super-block scale of the mins.
    pub dmin: LeF16,
    /// Packed scales and mins, as in [`BlockQ4K`].
    pub scales: [u8; 12],
    /// Fifth bits: bit `s` of byte `l` belongs to weight `32*s + l`.
    pub qh: [u8; QK_K / 8],
    /// Low four bits, laid out as in [`BlockQ4K`].
    pub qs: [u8; QK_K / 2],
}

/// `Q6_K`: 256 weights in 16 sub-blocks of 16, `x = d * sc * (q - 32)` with 6-bit `q` and
/// 8-bit signed `sc`. 6.5625 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlockQ6K {
    /// Low four bits of the quants.
    pub ql: [u8; QK_K / 2],
    /// High two bits of the quants.
    pub qh: [u8; QK_K / 4],
    /// Sub-block scales.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale.
    pub d: LeF16,
}

/// `Q8_K`: 256 values, `x = d * q`, with f32 `d` and the sums of each 16 quants
/// (an intermediate format of ggml's CPU dot products). 9.125 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlockQ8K {
    /// Scale, f32 little-endian (bytes, to keep alignment 1).
    pub d: [u8; 4],
    /// Quants.
    pub qs: [i8; QK_K],
    /// Sums of each 16 quants, i16 little-endian.
    pub bsums: [[u8; 2]; QK_K / 16],
}

impl BlockQ8K {
    /// The scale.
    #[inline]
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }

    /// The sum of quants `16*i .. 16*i+16`; `None` for `i >= 16`.
    #[inline]
    pub fn bsum(&self, i: usize) -> Option<i16> {
        self.bsums.get(i).map(|b| i16::from_le_bytes(*b))
    }
}

macro_rules! impl_block {
    ($($block:ty => $ty:ident),* $(,)?) => {$(
        // SAFETY: repr(C) struct of u8/i8 arrays and LeF16 only: no padding (checked by the
        // size assertion below), alignment 1, every bit pattern valid.
        unsafe impl Block for $block {
            const TYPE: GgmlType = GgmlType::$ty;
        }
        const _: () = assert!(size_of::<$block>() == GgmlType::$ty.type_size());
        const _: () = assert!(align_of::<$block>() == 1);
    )*};
}

impl_block!(
    BlockQ4_0 => Q4_0,
    BlockQ4_1 => Q4_1,
    BlockQ5_0 => Q5_0,
    BlockQ5_1 => Q5_1,
    BlockQ8_0 => Q8_0,
    BlockQ8_1 => Q8_1,
    BlockQ2K => Q2_K,
    BlockQ3K => Q3_K,
    BlockQ4K => Q4_K,
    BlockQ5K => Q5_K,
    BlockQ6K => Q6_K,
    BlockQ8K => Q8_K,
);

/// Scale and min `j` (0..8) of a `Q4_K`/`Q5_K` packed 12-byte scale array
/// (ggml's `get_scale_min_k4`): the first four pairs are the low 6 bits of bytes `j` and
/// `j+4`; the last four take their low nibbles from byte `j+4` and their top two bits from the
/// spare high bits of bytes `j-4` and `j`.
#[inline]
pub fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    debug_assert!(j < 8);
    let j = j & 7;
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        let d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (d, m)
    }
}

/// The 16 six-bit scales of a `Q3_K` block, unpacked and already offset by -32.
///
/// Packing (ggml): scale `j` has its low nibble in byte `j` (j < 8, low nibble) or byte `j-8`
/// (high nibble), and its top two bits in byte `8 + j%4` at bit `2*(j/4)`.
#[inline]
pub fn q3k_scales(packed: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 {
            packed[j] & 0xF
        } else {
            packed[j - 8] >> 4
        };
        let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = ((low | (high << 4)) as i8) - 32;
    }
    out
}
