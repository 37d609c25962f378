//! CPU dot-product kernels, chosen once at run time from the CPU's features.
//!
//! The scalar kernels of `marco_quantize::dot` are the reference; SIMD paths must agree with them.

use marco_quantize::act::BlockQ8x32;
use marco_quantize::dot::{vec_dot_f32, vec_dot_q8};
use marco_quantize::GgmlType;

/// An instruction-set path for the CPU kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, the reference.
    Scalar,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
        }
    }
}

/// The kernel set in use.
#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    isa: Isa,
}

impl Kernels {
    /// The best path this CPU supports.
    pub fn detect() -> Kernels {
        Kernels { isa: Isa::Scalar }
    }

    /// A specific path; `None` when this CPU cannot run it.
    pub fn forced(isa: Isa) -> Option<Kernels> {
        match isa {
            Isa::Scalar => Some(Kernels { isa }),
        }
    }

    pub fn name(&self) -> &'static str {
        self.isa.name()
    }

    /// Dot product of a quantized weight row with 8-bit activation blocks.
    #[inline]
    pub fn dot_q8(&self, ty: GgmlType, w: &[u8], x: &[BlockQ8x32]) -> f32 {
        vec_dot_q8(ty, w, x)
    }

    /// Dot product of a float (F32/F16/BF16) weight row with f32 activations.
    #[inline]
    pub fn dot_f32(&self, ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
        vec_dot_f32(ty, w, x)
    }
}

/// Plain f32 dot product (attention scores), written so the compiler vectorizes it.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        sum += a[i] * b[i];
    }
    sum
}
