//! aarch64 NEON kernels with the dot-product extension (`sdot`).
//!
//! Compile-checked only (no aarch64 machine in CI): kept simple and close to the scalar
//! reference. Each block's (or group's) integer dot is exact (`sdot`: four i8 products summed
//! into each i32 lane), then scaled in f32 like the reference does. `vdotq_s32` is still
//! unstable in Rust, so `sdot` is one line of inline assembly.

use std::arch::aarch64::*;
use std::arch::asm;

use marco_quantize::act::BlockQ8x32;
use marco_quantize::blocks::{
    BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0,
};
use marco_quantize::dot::{vec_dot_f32, vec_dot_q8};
use marco_quantize::GgmlType;

use super::{k4_scales_mins, row_blocks};

/// Dot product of a weight row of type `ty` with activation blocks (see
/// `Kernels::dot_q8`). Types without a kernel here use the scalar reference.
#[target_feature(enable = "neon,dotprod")]
pub fn dot_q8(ty: GgmlType, w: &[u8], x: &[BlockQ8x32]) -> f32 {
    let n = x.len();
    let k = x.as_chunks::<8>().0;
    match ty {
        GgmlType::Q4_0 => row(row_blocks(w, n, 1), x, |b: &BlockQ4_0, x| {
            let (lo, hi) = nibbles(&b.qs);
            (isum(lo, hi, x) - 8 * x.sum) as f32 * (b.d.to_f32() * x.d)
        }),
        GgmlType::Q4_1 => row(row_blocks(w, n, 1), x, |b: &BlockQ4_1, x| {
            let (lo, hi) = nibbles(&b.qs);
            isum(lo, hi, x) as f32 * (b.d.to_f32() * x.d) + b.m.to_f32() * (x.d * x.sum as f32)
        }),
        GgmlType::Q5_0 => row(row_blocks(w, n, 1), x, |b: &BlockQ5_0, x| {
            let (lo, hi) = nibbles5(&b.qs, u32::from_le_bytes(b.qh));
            (isum(lo, hi, x) - 16 * x.sum) as f32 * (b.d.to_f32() * x.d)
        }),
        GgmlType::Q5_1 => row(row_blocks(w, n, 1), x, |b: &BlockQ5_1, x| {
            let (lo, hi) = nibbles5(&b.qs, u32::from_le_bytes(b.qh));
            isum(lo, hi, x) as f32 * (b.d.to_f32() * x.d) + b.m.to_f32() * (x.d * x.sum as f32)
        }),
        GgmlType::Q8_0 => row(row_blocks(w, n, 1), x, |b: &BlockQ8_0, x| {
            let [lo, hi] = b.qs.as_chunks::<16>().0 else {
                return 0.0;
            };
            isum(load_s8(lo), load_s8(hi), x) as f32 * (b.d.to_f32() * x.d)
        }),
        GgmlType::Q4_K => row(row_blocks(w, n, 8), k, |b: &BlockQ4K, xs| {
            k4_block(b.d.to_f32(), b.dmin.to_f32(), &b.scales, xs, |g| {
                let q = &b.qs.as_chunks::<32>().0[g / 2];
                k4_group(q, g % 2)
            })
        }),
        GgmlType::Q5_K => row(row_blocks(w, n, 8), k, |b: &BlockQ5K, xs| {
            k4_block(b.d.to_f32(), b.dmin.to_f32(), &b.scales, xs, |g| {
                let q = &b.qs.as_chunks::<32>().0[g / 2];
                let (lo, hi) = k4_group(q, g % 2);
                let [h0, h1] = b.qh.as_chunks::<16>().0 else {
                    return (lo, hi);
                };
                (add_bit(lo, h0, g), add_bit(hi, h1, g))
            })
        }),
        GgmlType::Q6_K => row(row_blocks(w, n, 8), k, |b, xs| q6_k_block(b, xs)),
        _ => vec_dot_q8(ty, w, x),
    }
}

/// Dot product of a float weight row with f32 activations (see `Kernels::dot_f32`). F16
/// weights use the reference (NEON's f16 vector types are not stable in Rust yet).
#[target_feature(enable = "neon,dotprod")]
pub fn dot_f32(ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
    match ty {
        GgmlType::F32 => dot_float::<16>(ty, w, x, |p| {
            // SAFETY: `p` is 16 readable bytes; f32 lanes are little-endian like the file.
            unsafe { vreinterpretq_f32_u8(vld1q_u8(p.as_ptr())) }
        }),
        GgmlType::BF16 => dot_float::<8>(ty, w, x, |p| {
            // SAFETY: `p` is 8 readable bytes. bf16 is the top half of an f32 (exact).
            let h = unsafe { vreinterpret_u16_u8(vld1_u8(p.as_ptr())) };
            vreinterpretq_f32_u32(vshll_n_u16::<16>(h))
        }),
        _ => vec_dot_f32(ty, w, x),
    }
}

/// Sum of `f(weight block, activations)` over a row, in row order like the reference.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn row<B, X>(w: &[B], x: &[X], f: impl Fn(&B, &X) -> f32) -> f32 {
    w.iter().zip(x).map(|(b, xb)| f(b, xb)).sum()
}

/// `acc + Σ a·b` per group of four bytes.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: `sdot` only reads and writes these registers; the caller's target features
    // say the CPU has the dot-product extension.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack),
        );
    }
    acc
}

#[inline]
#[target_feature(enable = "neon,dotprod")]
fn load_s8(p: &[i8; 16]) -> int8x16_t {
    // SAFETY: `p` is 16 readable bytes.
    unsafe { vld1q_s8(p.as_ptr()) }
}

#[inline]
#[target_feature(enable = "neon,dotprod")]
fn load_u8(p: &[u8; 16]) -> uint8x16_t {
    // SAFETY: `p` is 16 readable bytes.
    unsafe { vld1q_u8(p.as_ptr()) }
}

/// Exact Σ q·x of a 32-element block given its quants as two halves.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn isum(lo: int8x16_t, hi: int8x16_t, x: &BlockQ8x32) -> i32 {
    let [x0, x1] = x.qs.as_chunks::<16>().0 else {
        return 0;
    };
    vaddvq_s32(sdot(sdot(vdupq_n_s32(0), lo, load_s8(x0)), hi, load_s8(x1)))
}

/// Weights 0..16 (low nibbles) and 16..32 (high nibbles) of a legacy block.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn nibbles(qs: &[u8; 16]) -> (int8x16_t, int8x16_t) {
    let v = load_u8(qs);
    (
        vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F))),
        vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)),
    )
}

/// [`nibbles`] plus the fifth bits: bit j of `qh` adds 16 to weight j.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn nibbles5(qs: &[u8; 16], qh: u32) -> (int8x16_t, int8x16_t) {
    let (lo, hi) = nibbles(qs);
    let bytes = vreinterpretq_u8_u32(vdupq_n_u32(qh));
    let sel: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let sel = load_u8(&sel);
    // Byte i of each half takes byte i/8 of its 16 bits of qh, then tests bit i%8.
    let spread = |first: u8| {
        let idx: [u8; 16] = std::array::from_fn(|i| first + (i / 8) as u8);
        let set = vtstq_u8(vqtbl1q_u8(bytes, load_u8(&idx)), sel);
        vreinterpretq_s8_u8(vandq_u8(set, vdupq_n_u8(0x10)))
    };
    (vorrq_s8(lo, spread(0)), vorrq_s8(hi, spread(2)))
}

/// Group `which` (0: low nibbles, 1: high) of 32 quant bytes of a Q4_K/Q5_K block, as halves.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn k4_group(q: &[u8; 32], which: usize) -> (int8x16_t, int8x16_t) {
    let [q0, q1] = q.as_chunks::<16>().0 else {
        unreachable!("32 bytes are two 16-byte halves")
    };
    let pick = |v: uint8x16_t| {
        let n = if which == 0 {
            vandq_u8(v, vdupq_n_u8(0x0F))
        } else {
            vshrq_n_u8::<4>(v)
        };
        vreinterpretq_s8_u8(n)
    };
    (pick(load_u8(q0)), pick(load_u8(q1)))
}

/// Adds 16 to each quant whose bit `g` is set in the matching `qh` byte (Q5_K).
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn add_bit(q: int8x16_t, qh: &[u8; 16], g: usize) -> int8x16_t {
    let set = vtstq_u8(load_u8(qh), vdupq_n_u8(1 << g));
    vorrq_s8(q, vreinterpretq_s8_u8(vandq_u8(set, vdupq_n_u8(0x10))))
}

/// A Q4_K/Q5_K super-block: `quants(g)` gives group g's quants (as halves).
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn k4_block(
    d: f32,
    dmin: f32,
    scales: &[u8; 12],
    xs: &[BlockQ8x32; 8],
    quants: impl Fn(usize) -> (int8x16_t, int8x16_t),
) -> f32 {
    let (sc, m) = k4_scales_mins(scales);
    let (sc, m) = (sc.to_le_bytes(), m.to_le_bytes());
    let mut acc = 0.0f32;
    for (g, x) in xs.iter().enumerate() {
        let (lo, hi) = quants(g);
        let s = sc[g] as i32 * isum(lo, hi, x);
        acc += x.d * (d * s as f32 - dmin * (m[g] as i32 * x.sum) as f32);
    }
    acc
}

/// A Q6_K super-block.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn q6_k_block(b: &BlockQ6K, xs: &[BlockQ8x32; 8]) -> f32 {
    let d = b.d.to_f32();
    let ql = b.ql.as_chunks::<16>().0;
    let qh = b.qh.as_chunks::<16>().0;
    let mut acc = 0.0f32;
    for (g, x) in xs.iter().enumerate() {
        let (h, k) = (g / 4, g % 4);
        let [x0, x1] = x.qs.as_chunks::<16>().0 else {
            continue;
        };
        let mut sumi = 0;
        // Each 16-weight half l of the group has its own scale.
        for (l, xl) in [x0, x1].into_iter().enumerate() {
            let low = load_u8(&ql[4 * h + 2 * (k % 2) + l]);
            let low = if k < 2 {
                vandq_u8(low, vdupq_n_u8(0x0F))
            } else {
                vshrq_n_u8::<4>(low)
            };
            let top = load_u8(&qh[2 * h + l]);
            let top = vandq_u8(shift_right(top, 2 * k), vdupq_n_u8(3));
            let q = vorrq_u8(low, vshlq_n_u8::<4>(top));
            let q = vsubq_s8(vreinterpretq_s8_u8(q), vdupq_n_s8(32));
            let dot = vaddvq_s32(sdot(vdupq_n_s32(0), q, load_s8(xl)));
            sumi += b.scales[2 * g + l] as i32 * dot;
        }
        acc += x.d * (d * sumi as f32);
    }
    acc
}

/// `v >> s` per byte, for s in 0..8.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn shift_right(v: uint8x16_t, s: usize) -> uint8x16_t {
    vshlq_u8(v, vdupq_n_s8(-(s as i8)))
}

/// Dot product of float weights, 4 elements of `B4` bytes per load.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn dot_float<const B4: usize>(
    ty: GgmlType,
    w: &[u8],
    x: &[f32],
    load4: impl Fn(&[u8; B4]) -> float32x4_t,
) -> f32 {
    let esize = B4 / 4;
    let n = (w.len() / esize).min(x.len());
    let (w4, w_tail) = w[..n * esize].as_chunks::<B4>();
    let (x4, x_tail) = x[..n].as_chunks::<4>();
    let mut acc = [vdupq_n_f32(0.0); 4];
    for (i, (cw, cx)) in w4.iter().zip(x4).enumerate() {
        // SAFETY: `cx` is 4 readable floats.
        let vx = unsafe { vld1q_f32(cx.as_ptr()) };
        acc[i % 4] = vfmaq_f32(acc[i % 4], load4(cw), vx);
    }
    let sum = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    vaddvq_f32(sum) + vec_dot_f32(ty, w_tail, x_tail)
}
