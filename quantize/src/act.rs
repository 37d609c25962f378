//! 8-bit activation blocks: the form in which a row of activations meets quantized weights.
//!
//! Like ggml's `block_q8_0`/`block_q8_1` but with an f32 scale (no rounding of the scale to
//! f16) and the integer sum of the quants (for the min/offset terms of `Q4_1`, `Q5_1` and the
//! K-quants with mins).

use crate::types::QK32;

/// 32 activations `x ≈ d * qs`, with `sum = Σ qs`.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Debug)]
pub struct BlockQ8x32 {
    /// Scale: `amax / 127` of the 32 source values.
    pub d: f32,
    /// Sum of `qs`.
    pub sum: i32,
    /// Quants, in `-127..=127`.
    pub qs: [i8; QK32],
}

impl BlockQ8x32 {
    /// Quantize 32 values, as ggml's `quantize_row_q8_0` does but keeping `d` in f32:
    /// `d = amax / 127`, `qs = round(x / d)` (computed as `round(x * (1/d))`, halves away from
    /// zero, like C's `roundf`).
    #[inline]
    pub fn quantize(x: &[f32; QK32]) -> Self {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; QK32];
        for (q, &v) in qs.iter_mut().zip(x) {
            // |v * id| <= 127 up to rounding; the saturating cast also maps NaN to 0.
            *q = (v * id).round() as i8;
        }
        let sum = qs.iter().map(|&q| q as i32).sum();
        BlockQ8x32 { d, sum, qs }
    }

    /// The approximated values `d * qs`.
    pub fn dequantize(&self) -> [f32; QK32] {
        self.qs.map(|q| self.d * q as f32)
    }
}

/// Quantize a row of activations into `out`, one block per 32 values.
///
/// The caller ensures `x.len() == 32 * out.len()` (checked in debug builds); otherwise only the
/// complete pairs of (32 values, block) are processed.
#[inline]
pub fn quantize_activations(x: &[f32], out: &mut [BlockQ8x32]) {
    debug_assert_eq!(
        x.len(),
        QK32 * out.len(),
        "quantize_activations: length mismatch"
    );
    for (chunk, o) in x.as_chunks::<QK32>().0.iter().zip(out) {
        *o = BlockQ8x32::quantize(chunk);
    }
}

/// Dequantize activation blocks into `y` (`y.len() == 32 * x.len()`, checked in debug builds).
pub fn dequantize_activations(x: &[BlockQ8x32], y: &mut [f32]) {
    debug_assert_eq!(
        y.len(),
        QK32 * x.len(),
        "dequantize_activations: length mismatch"
    );
    for (b, out) in x.iter().zip(y.as_chunks_mut::<QK32>().0) {
        *out = b.dequantize();
    }
}
