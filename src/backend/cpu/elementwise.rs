//! Element-wise CPU work: SwiGLU with a polynomial `exp`, written once as a plain loop and
//! compiled per instruction set (`#[target_feature]` wrappers) so LLVM vectorizes it; and the
//! quantization of activations to 8-bit blocks, whose `round` (halves away from zero, C's
//! `roundf`) no x86 instruction does, so LLVM calls libm per value: on AVX-512 it is written
//! out with intrinsics (truncate, then step away from zero where the fraction is ≥ 0.5).

use marco_quantize::act::{quantize_activations, BlockQ8x32};

/// `e^x`, relative error ≈ 2e-7 for x in [-87, 88]: `2^k · e^r` with
/// `k = round(x·log2 e)` and a degree-6 polynomial for `|r| ≤ ln2/2`. Plain arithmetic (the
/// rounding by the 1.5·2^23 trick, the power of two built in the exponent bits) so that it
/// vectorizes. Arguments are clamped to [-87, 88]: below, 2^-126·e^r (≈ 0, never a denormal);
/// above, ≈ 1.7e38 (finite, so `x / (1 + e^-x)` stays finite and near 0 for very negative x).
#[inline(always)]
pub fn exp_poly(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 · 2^23: adding it rounds to an integer.
    const ROUND: f32 = 12_582_912.0;
    // Clamped with comparisons that are false for NaN, so a NaN comes out as NaN.
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let shifted = x * LOG2E + ROUND;
    let k = shifted - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // k as an integer: the low bits of `shifted` (whose exponent is that of 1.5·2^23, so its
    // mantissa counts in units) minus those of ROUND. Not `k as i32`: Rust's saturating cast
    // does not vectorize, and became 16 scalar conversions per vector (most of SwiGLU's time).
    let k_int = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let pow2 = f32::from_bits(k_int.wrapping_add(127) << 23);
    p * pow2
}

/// `out[i] = silu(gate[i]) · up[i]` over the common length.
#[inline(always)]
fn swiglu_body(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp_poly(-g)) * u;
    }
}

/// `crate::generate::argmax` compiled for AVX-512 (16-wide).
///
/// # Safety
/// The CPU must support AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
pub unsafe fn argmax_avx512(v: &[f32]) -> u32 {
    crate::generate::argmax(v)
}

/// `crate::generate::argmax` compiled for AVX2 (8-wide).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub unsafe fn argmax_avx2(v: &[f32]) -> u32 {
    crate::generate::argmax(v)
}

pub fn swiglu_portable(gate: &[f32], up: &[f32], out: &mut [f32]) {
    swiglu_body(gate, up, out)
}

/// # Safety
/// The CPU must support AVX-512 F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn swiglu_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
    swiglu_body(gate, up, out)
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn swiglu_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    swiglu_body(gate, up, out)
}

/// The baseline build of [`quantize_activations`].
pub fn quantize_portable(x: &[f32], out: &mut [BlockQ8x32]) {
    quantize_activations(x, out)
}

/// [`quantize_activations`] in AVX-512 intrinsics, with the same results bit for bit: the
/// same `amax` (NaNs ignored, as `f32::max` does), `d` and `1/d`, products rounded half away
/// from zero (`t = trunc(v)`, plus `±1` where `|v - t| ≥ 0.5`, exact for `|v| < 2^23`), NaN
/// quants 0 and out-of-range ones (infinite when `1/d` overflows) saturated, as the scalar
/// `as i8` does.
///
/// # Safety
/// The CPU must support AVX-512 F/BW and AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub unsafe fn quantize_avx512(x: &[f32], out: &mut [BlockQ8x32]) {
    use std::arch::x86_64::*;
    for (src, o) in x.as_chunks::<32>().0.iter().zip(out) {
        let (d, sum, bytes) = quantize_block_avx512(src);
        let mut qs = [0i8; 32];
        // SAFETY: `qs` is 32 writable bytes; the stores are unaligned.
        unsafe {
            _mm_storeu_si128(qs.as_mut_ptr().cast(), bytes[0]);
            _mm_storeu_si128(qs.as_mut_ptr().add(16).cast(), bytes[1]);
        }
        *o = BlockQ8x32 { d, sum, qs };
    }
}

/// One block of [`quantize_avx512`]: its scale, the sum of its quants, and the quants of
/// elements 0..16 and 16..32 as bytes.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
fn quantize_block_avx512(src: &[f32; 32]) -> (f32, i32, [std::arch::x86_64::__m128i; 2]) {
    use std::arch::x86_64::*;
    // SAFETY: `src` is 32 readable floats; the loads are unaligned.
    let v = unsafe {
        [
            _mm512_loadu_ps(src.as_ptr()),
            _mm512_loadu_ps(src.as_ptr().add(16)),
        ]
    };
    // max(|v|, m) keeps m where v is NaN.
    let m = _mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_setzero_ps());
    let m = _mm512_max_ps(_mm512_abs_ps(v[1]), m);
    let d = _mm512_reduce_max_ps(m) / 127.0;
    let id = _mm512_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    let q = v.map(|v| {
        let v = _mm512_mul_ps(v, id);
        let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
        let frac = _mm512_abs_ps(_mm512_sub_ps(v, t));
        let away = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, _mm512_set1_ps(0.5));
        // ±1 with v's sign, in integer logic: `_mm512_or_ps` and `_mm512_and_ps` are
        // AVX-512 DQ, which this path does not require, so they were calls, not inlined.
        let sign = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(i32::MIN));
        let one = _mm512_castps_si512(_mm512_set1_ps(1.0));
        let step = _mm512_castsi512_ps(_mm512_or_si512(sign, one));
        let r = _mm512_mask_add_ps(t, away, t, step);
        // Saturate like `as i8` (±inf when a block's amax is so tiny that 1/d overflows),
        // and NaN → 0.
        let r = _mm512_min_ps(
            _mm512_max_ps(r, _mm512_set1_ps(-128.0)),
            _mm512_set1_ps(127.0),
        );
        let is_num = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v);
        _mm512_maskz_cvttps_epi32(is_num, r)
    });
    let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q[0], q[1]));
    (d, sum, q.map(|q| _mm512_cvtsepi32_epi8(q)))
}

/// One token straight into chunk order: `acts` as `ActChunks::fill` makes it of
/// [`quantize_avx512`]'s blocks of `x` (whole chunks of 128 values; a last partial one is
/// dropped), without those blocks in between. The quants of each half go from registers into
/// the chunk, and the lanes' sums come from two byte dot products with ones.
///
/// Why: quantizing to blocks and then re-laying them was most of a one-token matmul's
/// preparation (about 1% of a one-thread token of the default model).
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
pub unsafe fn quantize_chunks_avx512(x: &[f32], acts: &mut marco_quantize::chunks::ActChunks) {
    use marco_quantize::chunks::{CHUNK_BLOCKS, CHUNK_LEN};
    use std::arch::x86_64::*;
    let chunks = x.as_chunks::<CHUNK_LEN>().0;
    acts.resize(chunks.len());
    let ones = _mm512_set1_epi8(1);
    for (j, src) in chunks.iter().enumerate() {
        let mut halves = [_mm512_setzero_si512(); 2];
        for (b, block) in src.as_chunks::<32>().0.iter().enumerate() {
            let (d, sum, bytes) = quantize_block_avx512(block);
            // Block b's 16 bytes of each half into 128-bit lane b.
            for (half, bytes) in halves.iter_mut().zip(bytes) {
                *half = match b {
                    0 => _mm512_inserti32x4::<0>(*half, bytes),
                    1 => _mm512_inserti32x4::<1>(*half, bytes),
                    2 => _mm512_inserti32x4::<2>(*half, bytes),
                    _ => _mm512_inserti32x4::<3>(*half, bytes),
                };
            }
            acts.d[CHUNK_BLOCKS * j + b] = d;
            acts.dsum[CHUNK_BLOCKS * j + b] = d * sum as f32;
        }
        // Lane l: the sum of bytes 4l..4l+4 of both halves.
        let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, halves[0]);
        let sums = _mm512_dpbusd_epi32(sums, ones, halves[1]);
        let neg = _mm512_sub_epi32(_mm512_setzero_si512(), sums);
        // SAFETY: each store writes the 64 bytes of one field of chunk j; unaligned stores.
        unsafe {
            _mm512_storeu_si512(acts.q[j][0].as_mut_ptr().cast(), halves[0]);
            _mm512_storeu_si512(acts.q[j][1].as_mut_ptr().cast(), halves[1]);
            _mm512_storeu_si512(acts.neg_sums[j].0.as_mut_ptr().cast(), neg);
        }
    }
}

/// ggml's `Q8_K` quantizer (`marco_quantize`'s reference, which the K-quant dots of the
/// reference and of llama.cpp use) in AVX-512, with the same blocks bit for bit: the scale
/// from the first value of largest magnitude (NaNs skipped), `iscale = -127/max`, each quant
/// `nearest_int(iscale·v)` by the same 1.5·2^23 addition and bit mask, capped at 127 and
/// truncated to a byte, and the 16-value sums of those bytes. `x` holds whole blocks of 256
/// for `out`.
///
/// Why: the reference, one value at a time, was 0.4% of a one-thread token (the Q6_K rows'
/// activations, 5 µs per 4864 values).
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub unsafe fn quantize_q8k_avx512(x: &[f32], out: &mut [marco_quantize::blocks::BlockQ8K]) {
    use marco_quantize::blocks::BlockQ8K;
    use marco_quantize::QK_K;
    use std::arch::x86_64::*;
    for (src, o) in x.as_chunks::<QK_K>().0.iter().zip(out) {
        let v: [__m512; 16] = std::array::from_fn(|i| {
            // SAFETY: `src` is 256 readable floats; the load is unaligned.
            unsafe { _mm512_loadu_ps(src.as_ptr().add(16 * i)) }
        });
        // max(|v|, m) keeps m where v is NaN, as the reference's `>` skips NaNs.
        let amax = _mm512_reduce_max_ps(v.iter().fold(_mm512_setzero_ps(), |m, &v| {
            _mm512_max_ps(_mm512_abs_ps(v), m)
        }));
        if amax <= 0.0 {
            *o = BlockQ8K {
                d: [0; 4],
                qs: [0; QK_K],
                bsums: [[0; 2]; QK_K / 16],
            };
            continue;
        }
        // The reference keeps the first value of that magnitude (a strict `>`).
        let target = _mm512_set1_ps(amax);
        let max = v
            .iter()
            .enumerate()
            .find_map(|(i, &v)| {
                let hit = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_abs_ps(v), target);
                (hit != 0).then(|| src[16 * i + hit.trailing_zeros() as usize])
            })
            .unwrap_or(amax);
        let iscale = -127.0 / max;
        let (is, magic) = (_mm512_set1_ps(iscale), _mm512_set1_ps(12_582_912.0));
        let (mantissa, half) = (
            _mm512_set1_epi32(0x007f_ffff),
            _mm512_set1_epi32(0x0040_0000),
        );
        let mut qs = [0i8; QK_K];
        for (dst, &v) in qs.as_chunks_mut::<16>().0.iter_mut().zip(&v) {
            // nearest_int: the product and the addition rounded apart, as in the reference.
            let t = _mm512_add_ps(_mm512_mul_ps(is, v), magic);
            let q = _mm512_sub_epi32(_mm512_and_si512(_mm512_castps_si512(t), mantissa), half);
            let bytes = _mm512_cvtepi32_epi8(_mm512_min_epi32(q, _mm512_set1_epi32(127)));
            // SAFETY: `dst` is 16 writable bytes; the store is unaligned.
            unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), bytes) };
        }
        o.bsums = sums_of_16(&qs);
        o.qs = qs;
        o.d = (1.0 / iscale).to_le_bytes();
    }
}

/// The sums of each 16 signed bytes of `qs`, as little-endian i16: `vpsadbw` over the bytes
/// offset by 128 (sums of 8), pairs added, the offset taken back.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
fn sums_of_16(qs: &[i8; marco_quantize::QK_K]) -> [[u8; 2]; marco_quantize::QK_K / 16] {
    use std::arch::x86_64::*;
    let quads: [__m128i; 4] = std::array::from_fn(|i| {
        // SAFETY: `qs` is 256 readable bytes; the load is unaligned.
        let z = unsafe { _mm512_loadu_si512(qs.as_ptr().add(64 * i).cast()) };
        let eights = _mm512_sad_epu8(
            _mm512_xor_si512(z, _mm512_set1_epi8(-128)),
            _mm512_setzero_si512(),
        );
        // Sums of 8 (≤ 2040) as i16, then adjacent pairs added: 4 sums of 16, as i32.
        _mm_madd_epi16(_mm512_cvtepi64_epi16(eights), _mm_set1_epi16(1))
    });
    let offset = _mm256_set1_epi16(16 * 128);
    let sums = _mm256_sub_epi16(
        _mm256_setr_m128i(
            _mm_packs_epi32(quads[0], quads[1]),
            _mm_packs_epi32(quads[2], quads[3]),
        ),
        offset,
    );
    let mut out = [[0u8; 2]; marco_quantize::QK_K / 16];
    // SAFETY: `out` is 32 writable bytes; the store is unaligned.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), sums) };
    out
}

/// [`quantize_activations`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_avx2(x: &[f32], out: &mut [BlockQ8x32]) {
    quantize_activations(x, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 64 blocks of activations with the quantizers' edge cases: exact halves, NaN, an
    /// all-zero block, huge and infinite values, and a block so small that `1/d` overflows.
    fn tricky_activations() -> Vec<f32> {
        let mut x: Vec<f32> = (0..32 * 64)
            .map(|i| (i as f32 * 0.7310).sin() * (1 + i % 13) as f32)
            .collect();
        // A block whose products land exactly on halves: amax 127 makes 1/d = 1.
        for (j, v) in x[..32].iter_mut().enumerate() {
            *v = (j as f32 - 16.0) + 0.5;
        }
        x[31] = 127.0;
        x[40] = f32::NAN;
        x[64..96].fill(0.0);
        x[100] = 3.0e38;
        x[101] = -3.0e38;
        x[130] = f32::INFINITY;
        // A block so small that 1/d overflows to infinity: the quants saturate.
        for (j, v) in x[160..192].iter_mut().enumerate() {
            *v = if j % 3 == 0 {
                0.0
            } else {
                1e-38 * (j as f32 - 16.0)
            };
        }
        x
    }

    /// The fused chunk quantizer gives what `ActChunks::fill` makes of the reference's
    /// blocks, bit for bit, also over buffers left longer by an earlier token; a last partial
    /// chunk is dropped by both.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn quantize_chunks_avx512_equals_fill_of_the_reference() {
        if !std::arch::is_x86_feature_detected!("avx512vnni")
            || !std::arch::is_x86_feature_detected!("avx512bw")
            || !std::arch::is_x86_feature_detected!("avx512vl")
        {
            return; // nothing to compare on this CPU (the kernel tests cover the paths it has)
        }
        let mut x = tricky_activations();
        x.extend((0..32).map(|i| i as f32)); // a partial chunk
        let mut blocks = vec![BlockQ8x32::default(); x.len() / 32];
        quantize_activations(&x, &mut blocks);
        let mut want = marco_quantize::chunks::ActChunks::default();
        want.fill(&blocks);
        let mut got = marco_quantize::chunks::ActChunks::default();
        let longer: Vec<f32> = (0..4 * x.len()).map(|i| (i % 251) as f32 - 125.0).collect();
        for input in [&longer, &x] {
            // SAFETY: checked above that the CPU has AVX-512 F/BW/VL/VNNI (and AVX2, FMA).
            unsafe { quantize_chunks_avx512(input, &mut got) };
        }
        assert_eq!(got.q, want.q);
        let lanes = |a: &marco_quantize::chunks::ActChunks| -> Vec<[i32; 16]> {
            a.neg_sums.iter().map(|l| l.0).collect()
        };
        assert_eq!(lanes(&got), lanes(&want));
        let bits = |v: &[f32]| -> Vec<u32> {
            v.iter()
                .map(|f| if f.is_nan() { u32::MAX } else { f.to_bits() })
                .collect()
        };
        assert_eq!(bits(&got.d), bits(&want.d));
        assert_eq!(bits(&got.dsum), bits(&want.dsum));
    }

    /// The AVX-512 quantizer gives the scalar reference's blocks bit for bit, ties, NaNs,
    /// zeros and huge values included.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn quantize_avx512_equals_the_reference() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")) {
            return; // nothing to compare on this CPU (the kernel tests cover the paths it has)
        }
        let x = tricky_activations();
        let n = x.len() / 32;
        let (mut want, mut got) = (
            vec![BlockQ8x32::default(); n],
            vec![BlockQ8x32::default(); n],
        );
        quantize_activations(&x, &mut want);
        // SAFETY: checked above that the CPU has AVX-512 F/BW (and so AVX2 and FMA).
        unsafe { quantize_avx512(&x, &mut got) };
        for (b, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.qs, w.qs, "block {b}");
            assert_eq!(g.sum, w.sum, "block {b}");
            assert!(
                g.d == w.d || (g.d.is_nan() && w.d.is_nan()),
                "block {b}: {} vs {}",
                g.d,
                w.d
            );
        }
    }

    /// The AVX-512 `Q8_K` quantizer gives the reference's blocks bit for bit: ties of
    /// magnitude with both signs, NaNs, infinities, empty and tiny blocks, exact halves.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn quantize_q8k_avx512_equals_the_reference() {
        use marco_quantize::blocks::{as_blocks, BlockQ8K};
        use marco_quantize::{GgmlType, QK_K};
        if !(is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("fma"))
        {
            return; // nothing to compare on this CPU (the kernel tests cover the paths it has)
        }
        let n_blocks = 9;
        let mut x: Vec<f32> = (0..QK_K * n_blocks)
            .map(|i| (i as f32 * 0.3711).sin() * (1 + i % 11) as f32)
            .collect();
        let b = |k: usize| k * QK_K;
        // Block 1: the largest magnitude twice, negative first.
        x[b(1) + 7] = -20.0;
        x[b(1) + 200] = 20.0;
        // Block 2: all zeros; block 3: NaNs only.
        x[b(2)..b(3)].fill(0.0);
        x[b(3)..b(4)].fill(f32::NAN);
        // Block 4: NaNs among values; block 5: an infinity.
        x[b(4) + 3] = f32::NAN;
        x[b(4) + 100] = f32::NAN;
        x[b(5) + 17] = f32::INFINITY;
        // Block 6: values whose products land on halves (the max, -127, gives iscale 1).
        for (j, v) in x[b(6)..b(7)].iter_mut().enumerate() {
            *v = (j % 64) as f32 - 31.5;
        }
        x[b(6) + 255] = -127.0;
        // Block 7: values so tiny that iscale = -127/max overflows to infinity; block 8: tiny
        // values with a finite iscale.
        for (j, v) in x[b(7)..b(8)].iter_mut().enumerate() {
            *v = 1e-39 * (j as f32 - 128.0);
        }
        for (j, v) in x[b(8)..b(9)].iter_mut().enumerate() {
            *v = 1e-30 * (j as f32 - 100.0);
        }
        let bytes = GgmlType::Q8_K.row_bytes(x.len() as u64).unwrap() as usize;
        let mut want = vec![0u8; bytes];
        marco_quantize::quants::quantize_row(GgmlType::Q8_K, &x, &mut want);
        let want = as_blocks::<BlockQ8K>(&want).unwrap();
        let mut got = vec![
            BlockQ8K {
                d: [0xAA; 4],
                qs: [0x55; QK_K],
                bsums: [[0xAA; 2]; QK_K / 16],
            };
            n_blocks
        ];
        // SAFETY: checked above that the CPU has AVX-512 F/BW/VL and FMA (and so AVX2).
        unsafe { quantize_q8k_avx512(&x, &mut got) };
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.d, w.d, "block {i}: scale");
            assert_eq!(g.qs, w.qs, "block {i}: quants");
            assert_eq!(g.bsums, w.bsums, "block {i}: sums");
        }
    }

    #[test]
    fn exp_poly_is_close_to_exp() {
        let mut x = 0.0f32;
        while x > -100.0 {
            let (got, want) = (exp_poly(x), x.exp());
            let err = (got - want).abs();
            assert!(err <= 4e-7 * want + 1e-37, "exp({x}) = {got}, want {want}");
            x -= 0.0137;
        }
        assert!(exp_poly(f32::NAN).is_nan());
    }
}
