//! Block layouts, dequantization, activation quantization and the reference dot products.

use marco_quantize::act::{dequantize_activations, quantize_activations, BlockQ8x32};
use marco_quantize::blocks::*;
use marco_quantize::dequant::dequantize_row;
use marco_quantize::dot::{activation_kind, vec_dot_f32, vec_dot_q8, ActKind};
use marco_quantize::quants::{quantize_row, quantize_row_weighted};
use marco_quantize::rng::SplitMix64;
use marco_quantize::GgmlType;

/// Small deterministic PRNG (the crate's splitmix64): no dev-dependencies needed.
struct Rng(SplitMix64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(SplitMix64::new(seed))
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
}

const QUANT_TYPES: [GgmlType; 12] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
];

fn h(v: f32) -> LeF16 {
    LeF16::from_f32(v)
}

fn set_scales<B: Block>(row: &mut [u8], rng: &mut Rng, f: impl Fn(&mut B, &mut Rng)) {
    for b in as_blocks_mut::<B>(row).expect("whole blocks") {
        f(b, rng);
    }
}

/// A row of `n` elements of `ty`: random quant bytes, finite scales of sane magnitude.
fn random_row(ty: GgmlType, n: usize, rng: &mut Rng) -> Vec<u8> {
    let len = ty.row_bytes(n as u64).unwrap() as usize;
    let mut row: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
    let r = &mut row;
    match ty {
        GgmlType::F32 => {
            for c in r.chunks_exact_mut(4) {
                c.copy_from_slice(&rng.uniform(-1.0, 1.0).to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for c in r.chunks_exact_mut(2) {
                c.copy_from_slice(&h(rng.uniform(-1.0, 1.0)).0);
            }
        }
        GgmlType::BF16 => {
            for c in r.chunks_exact_mut(2) {
                let v = half::bf16::from_f32(rng.uniform(-1.0, 1.0));
                c.copy_from_slice(&v.to_bits().to_le_bytes());
            }
        }
        GgmlType::Q4_0 => set_scales::<BlockQ4_0>(r, rng, |b, g| b.d = h(g.uniform(-0.1, 0.1))),
        GgmlType::Q4_1 => set_scales::<BlockQ4_1>(r, rng, |b, g| {
            b.d = h(g.uniform(0.0, 0.1));
            b.m = h(g.uniform(-1.0, 0.0));
        }),
        GgmlType::Q5_0 => set_scales::<BlockQ5_0>(r, rng, |b, g| b.d = h(g.uniform(-0.1, 0.1))),
        GgmlType::Q5_1 => set_scales::<BlockQ5_1>(r, rng, |b, g| {
            b.d = h(g.uniform(0.0, 0.1));
            b.m = h(g.uniform(-1.0, 0.0));
        }),
        GgmlType::Q8_0 => set_scales::<BlockQ8_0>(r, rng, |b, g| b.d = h(g.uniform(-0.01, 0.01))),
        GgmlType::Q8_1 => set_scales::<BlockQ8_1>(r, rng, |b, g| {
            b.d = h(g.uniform(-0.01, 0.01));
            b.s = h(g.uniform(-1.0, 1.0));
        }),
        GgmlType::Q2_K => set_scales::<BlockQ2K>(r, rng, |b, g| {
            b.d = h(g.uniform(0.0, 0.05));
            b.dmin = h(g.uniform(0.0, 0.05));
        }),
        GgmlType::Q3_K => set_scales::<BlockQ3K>(r, rng, |b, g| b.d = h(g.uniform(-0.01, 0.01))),
        GgmlType::Q4_K => set_scales::<BlockQ4K>(r, rng, |b, g| {
            b.d = h(g.uniform(0.0, 0.01));
            b.dmin = h(g.uniform(0.0, 0.01));
        }),
        GgmlType::Q5_K => set_scales::<BlockQ5K>(r, rng, |b, g| {
            b.d = h(g.uniform(0.0, 0.01));
            b.dmin = h(g.uniform(0.0, 0.01));
        }),
        GgmlType::Q6_K => set_scales::<BlockQ6K>(r, rng, |b, g| b.d = h(g.uniform(-0.01, 0.01))),
        GgmlType::Q8_K => set_scales::<BlockQ8K>(r, rng, |b, g| {
            b.d = g.uniform(-0.01, 0.01).to_le_bytes();
        }),
    }
    row
}

fn dequant(ty: GgmlType, row: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![f32::NAN; n];
    dequantize_row(ty, row, &mut y);
    y
}

// ---------------------------------------------------------------- layouts

#[test]
fn block_sizes_match_type_sizes() {
    use std::mem::{align_of, size_of};
    fn check<B: Block>() {
        assert_eq!(size_of::<B>(), B::TYPE.type_size(), "{}", B::TYPE);
        assert_eq!(align_of::<B>(), 1, "{}", B::TYPE);
    }
    check::<BlockQ4_0>();
    check::<BlockQ4_1>();
    check::<BlockQ5_0>();
    check::<BlockQ5_1>();
    check::<BlockQ8_0>();
    check::<BlockQ8_1>();
    check::<BlockQ2K>();
    check::<BlockQ3K>();
    check::<BlockQ4K>();
    check::<BlockQ5K>();
    check::<BlockQ6K>();
    check::<BlockQ8K>();
}

#[test]
fn as_blocks_checks_length_and_accepts_any_offset() {
    let bytes = vec![0u8; 2 * 110 + 1];
    assert!(as_blocks::<BlockQ3K>(&bytes).is_none());
    // An odd start offset is fine: every block has alignment 1.
    let v = as_blocks::<BlockQ3K>(&bytes[1..]).unwrap();
    assert_eq!(v.len(), 2);
    assert!(as_blocks::<BlockQ3K>(&[]).unwrap().is_empty());
    let b = BlockQ8_0 {
        d: h(1.5),
        qs: [3; 32],
    };
    let bytes = blocks_as_bytes(std::slice::from_ref(&b));
    assert_eq!(&bytes[..2], &h(1.5).0);
    assert_eq!(as_blocks::<BlockQ8_0>(bytes).unwrap()[0], b);
}

#[test]
fn q3k_scale_unpacking() {
    // Scale j = 10 with raw value 45: low nibble in the high half of byte 2, top bits (2) in
    // byte 8 + 10 % 4 = 10 at shift 2 * (10 / 4) = 4.
    let mut packed = [0u8; 12];
    packed[2] = 13 << 4;
    packed[10] = 2 << 4;
    let s = q3k_scales(&packed);
    assert_eq!(s[10], 45 - 32);
    assert_eq!(s[2], -32);
    assert!(s.iter().enumerate().all(|(j, &v)| j == 10 || v == -32));
}

// ---------------------------------------------------------------- hand-computed values

#[test]
fn dequant_float_types() {
    let f32row: Vec<u8> = [1.5f32, -2.25]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(dequant(GgmlType::F32, &f32row, 2), [1.5, -2.25]);
    let f16row: Vec<u8> = [0x3C00u16, 0xC100]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(dequant(GgmlType::F16, &f16row, 2), [1.0, -2.5]);
    let bf16row: Vec<u8> = [0x3FC0u16, 0xC020]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(dequant(GgmlType::BF16, &bf16row, 2), [1.5, -2.5]);
}

#[test]
fn dequant_legacy_by_hand() {
    let mut b = BlockQ4_0 {
        d: h(0.5),
        qs: [0x88; 16],
    };
    b.qs[0] = 0x3A;
    let y = dequant(GgmlType::Q4_0, blocks_as_bytes(&[b]), 32);
    assert_eq!((y[0], y[16], y[1]), (1.0, -2.5, 0.0));

    let mut b = BlockQ4_1 {
        d: h(0.25),
        m: h(-1.0),
        qs: [0; 16],
    };
    b.qs[1] = 0xF0;
    let y = dequant(GgmlType::Q4_1, blocks_as_bytes(&[b]), 32);
    assert_eq!((y[1], y[17], y[0]), (-1.0, 2.75, -1.0));

    // Fifth bits: bit 0 (weight 0) and bit 17 (weight 17).
    let mut b = BlockQ5_0 {
        d: h(1.0),
        qh: (1u32 | 1 << 17).to_le_bytes(),
        qs: [0; 16],
    };
    b.qs[1] = 0x21;
    let y = dequant(GgmlType::Q5_0, blocks_as_bytes(&[b]), 32);
    assert_eq!((y[0], y[16], y[1], y[17]), (0.0, -16.0, -15.0, 2.0));

    let b = BlockQ5_1 {
        d: h(0.5),
        m: h(1.0),
        qh: (1u32 << 31).to_le_bytes(),
        qs: [0xFF; 16],
    };
    let y = dequant(GgmlType::Q5_1, blocks_as_bytes(&[b]), 32);
    assert_eq!((y[15], y[31]), (15.0 * 0.5 + 1.0, 31.0 * 0.5 + 1.0));

    let mut b = BlockQ8_0 {
        d: h(0.5),
        qs: [0; 32],
    };
    b.qs[3] = -7;
    let y = dequant(GgmlType::Q8_0, blocks_as_bytes(&[b]), 32);
    assert_eq!((y[3], y[4]), (-3.5, 0.0));
}

#[test]
fn dequant_q2k_by_hand() {
    let mut b = BlockQ2K {
        scales: [0; 16],
        qs: [0; 64],
        d: h(1.0),
        dmin: h(0.5),
    };
    // Sub-block 5: first half, shift 4, bytes 16..32. Weight 83 = byte 19.
    b.scales[5] = 0x23;
    b.qs[19] = 0b0010_0000;
    // Sub-block 9: second half, shift 0, bytes 48..64. Weight 144 + 2 = byte 50.
    b.scales[9] = 0x11;
    b.qs[50] = 0b0000_0011;
    let y = dequant(GgmlType::Q2_K, blocks_as_bytes(&[b]), 256);
    assert_eq!(y[83], 3.0 * 2.0 - 0.5 * 2.0);
    assert_eq!(y[84], -0.5 * 2.0);
    assert_eq!(y[146], 3.0 - 0.5);
}

#[test]
fn dequant_q3k_by_hand() {
    let mut b = BlockQ3K {
        hmask: [0xFF; 32],
        qs: [0; 64],
        scales: [0; 12],
        d: h(2.0),
    };
    // Scale 10 = 45 - 32 = 13 (see q3k_scale_unpacking).
    b.scales[2] = 13 << 4;
    b.scales[10] = 2 << 4;
    // Sub-block 10: second half, shift 2, bytes 32..48, high bit 5 of hmask[l].
    b.qs[36] = 0b0000_1100;
    b.hmask[4] &= !(1 << 5);
    let y = dequant(GgmlType::Q3_K, blocks_as_bytes(&[b]), 256);
    assert_eq!(y[164], 2.0 * 13.0 * (3.0 - 4.0));
    assert_eq!(y[165], 0.0);
    b.hmask[5] &= !(1 << 5);
    let y = dequant(GgmlType::Q3_K, blocks_as_bytes(&[b]), 256);
    assert_eq!(y[165], 2.0 * 13.0 * -4.0);
}

fn q45k_scales() -> [u8; 12] {
    // Sub-block 5: scale = (q[9] & 0xF) | (q[1] >> 6) << 4 = 26, min = (q[9] >> 4) | (q[5] >> 6) << 4 = 39.
    let mut s = [0u8; 12];
    s[9] = 0x7A;
    s[1] = 0b0100_0000;
    s[5] = 0b1000_0000;
    // Sub-block 0: scale 3, min 1.
    s[0] |= 3;
    s[4] |= 1;
    s
}

#[test]
fn dequant_q4k_q5k_by_hand() {
    assert_eq!(get_scale_min_k4(5, &q45k_scales()), (26, 39));
    assert_eq!(get_scale_min_k4(1, &q45k_scales()), (0, 0));
    let mut b = BlockQ4K {
        d: h(0.5),
        dmin: h(0.25),
        scales: q45k_scales(),
        qs: [0; 128],
    };
    b.qs[66] = 0x90; // sub-block 5 = high nibbles of bytes 64..96
    b.qs[7] = 0x0F; // sub-block 0 = low nibbles of bytes 0..32
    let y = dequant(GgmlType::Q4_K, blocks_as_bytes(&[b]), 256);
    assert_eq!(y[162], 0.5 * 26.0 * 9.0 - 0.25 * 39.0);
    assert_eq!(y[7], 1.5 * 15.0 - 0.25);

    let mut b = BlockQ5K {
        d: h(0.5),
        dmin: h(0.25),
        scales: q45k_scales(),
        qh: [0; 32],
        qs: [0; 128],
    };
    b.qs[66] = 0x90;
    b.qh[2] = 1 << 5;
    let y = dequant(GgmlType::Q5_K, blocks_as_bytes(&[b]), 256);
    assert_eq!(y[162], 0.5 * 26.0 * 25.0 - 0.25 * 39.0);
}

#[test]
fn dequant_q6k_q8k_by_hand() {
    let mut b = BlockQ6K {
        ql: [0; 128],
        qh: [0; 64],
        scales: [1; 16],
        d: h(0.5),
    };
    // Weight 200: second half, k = 2, l = 8: high nibble of ql[72], bits 4..6 of qh[40].
    b.ql[72] = 0x50;
    b.qh[40] = 0b0010_0000;
    b.scales[12] = -3;
    let y = dequant(GgmlType::Q6_K, blocks_as_bytes(&[b]), 256);
    assert_eq!(y[200], 0.5 * -3.0 * 5.0);
    assert_eq!(y[0], 0.5 * -32.0);

    let mut b = BlockQ8K {
        d: 0.25f32.to_le_bytes(),
        qs: [0; 256],
        bsums: [[0; 2]; 16],
    };
    b.qs[100] = -8;
    let y = dequant(GgmlType::Q8_K, blocks_as_bytes(&[b]), 256);
    assert_eq!((y[100], y[101]), (-2.0, 0.0));
}

// ---------------------------------------------------------------- ggml loop-order references

/// `d, dmin, scales, qh, qs` of a Q4_K (with zero `qh`) or Q5_K block.
type KBlockParts = (LeF16, LeF16, [u8; 12], [u8; 32], [u8; 128]);

/// K-quant dequantizers written in ggml's pointer-walking loop order (an independent
/// formulation of the geometry), compared bitwise with the crate's.
fn loop_order_reference(ty: GgmlType, row: &[u8]) -> Vec<f32> {
    let mut y = Vec::new();
    match ty {
        GgmlType::Q2_K => {
            for b in as_blocks::<BlockQ2K>(row).unwrap() {
                let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
                let mut is = 0;
                for n in [0usize, 32] {
                    for shift in [0, 2, 4, 6] {
                        for off in [0usize, 16] {
                            let sc = b.scales[is];
                            is += 1;
                            let (dl, ml) = (d * (sc & 0xF) as f32, min * (sc >> 4) as f32);
                            for l in 0..16 {
                                y.push(dl * ((b.qs[n + off + l] >> shift) & 3) as f32 - ml);
                            }
                        }
                    }
                }
            }
        }
        GgmlType::Q3_K => {
            for b in as_blocks::<BlockQ3K>(row).unwrap() {
                let d_all = b.d.to_f32();
                // ggml's 32-bit-word unpacking of the scales.
                let mut aux = [0u32; 4];
                for (k, w) in aux.iter_mut().take(3).enumerate() {
                    *w = u32::from_le_bytes(b.scales[4 * k..4 * k + 4].try_into().unwrap());
                }
                let (k1, k2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
                let tmp = aux[2];
                aux[2] = ((aux[0] >> 4) & k2) | (((tmp >> 4) & k1) << 4);
                aux[3] = ((aux[1] >> 4) & k2) | (((tmp >> 6) & k1) << 4);
                aux[0] = (aux[0] & k2) | ((tmp & k1) << 4);
                aux[1] = (aux[1] & k2) | (((tmp >> 2) & k1) << 4);
                let scales: Vec<i8> = aux
                    .iter()
                    .flat_map(|w| w.to_le_bytes())
                    .map(|v| v as i8)
                    .collect();
                let (mut is, mut m) = (0, 1u8);
                for n in [0usize, 32] {
                    for shift in [0, 2, 4, 6] {
                        for off in [0usize, 16] {
                            let dl = d_all * (scales[is] as i32 - 32) as f32;
                            is += 1;
                            for l in 0..16 {
                                let q = ((b.qs[n + off + l] >> shift) & 3) as i32;
                                let hb = if b.hmask[off + l] & m != 0 { 0 } else { 4 };
                                y.push(dl * (q - hb) as f32);
                            }
                        }
                        m <<= 1;
                    }
                }
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let blocks: Vec<KBlockParts> = if ty == GgmlType::Q4_K {
                as_blocks::<BlockQ4K>(row)
                    .unwrap()
                    .iter()
                    .map(|b| (b.d, b.dmin, b.scales, [0; 32], b.qs))
                    .collect()
            } else {
                as_blocks::<BlockQ5K>(row)
                    .unwrap()
                    .iter()
                    .map(|b| (b.d, b.dmin, b.scales, b.qh, b.qs))
                    .collect()
            };
            for (d, dmin, scales, qh, qs) in blocks {
                let (d, min) = (d.to_f32(), dmin.to_f32());
                let (mut u1, mut u2) = (1u8, 2u8);
                for j in 0..4 {
                    let (s1, m1) = get_scale_min_k4(2 * j, &scales);
                    let (s2, m2) = get_scale_min_k4(2 * j + 1, &scales);
                    let (d1, m1) = (d * s1 as f32, min * m1 as f32);
                    let (d2, m2) = (d * s2 as f32, min * m2 as f32);
                    let q = &qs[32 * j..32 * j + 32];
                    for l in 0..32 {
                        let hb = if qh[l] & u1 != 0 { 16 } else { 0 };
                        y.push(d1 * ((q[l] & 0xF) + hb) as f32 - m1);
                    }
                    for l in 0..32 {
                        let hb = if qh[l] & u2 != 0 { 16 } else { 0 };
                        y.push(d2 * ((q[l] >> 4) + hb) as f32 - m2);
                    }
                    u1 <<= 2;
                    u2 <<= 2;
                }
            }
        }
        GgmlType::Q6_K => {
            for b in as_blocks::<BlockQ6K>(row).unwrap() {
                let d = b.d.to_f32();
                let mut out = [0f32; 256];
                for n in 0..2 {
                    let (ql, qh, sc) = (&b.ql[64 * n..], &b.qh[32 * n..], &b.scales[8 * n..]);
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                        out[128 * n + l] = d * sc[is] as f32 * q1 as f32;
                        out[128 * n + l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                        out[128 * n + l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                        out[128 * n + l + 96] = d * sc[is + 6] as f32 * q4 as f32;
                    }
                }
                y.extend_from_slice(&out);
            }
        }
        _ => unreachable!(),
    }
    y
}

#[test]
fn kquant_dequant_matches_ggml_loop_order_bitwise() {
    let mut rng = Rng::new(7);
    for ty in [
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        for _ in 0..20 {
            let row = random_row(ty, 512, &mut rng);
            let got = dequant(ty, &row, 512);
            let want = loop_order_reference(ty, &row);
            let gb: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            let wb: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
            assert_eq!(gb, wb, "{ty}");
        }
    }
}

// ---------------------------------------------------------------- activations and dots

#[test]
fn activation_quantization() {
    let mut x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
    x[40] = -3.0;
    let mut q = vec![BlockQ8x32::default(); 2];
    quantize_activations(&x, &mut q);
    assert_eq!(q[1].d, 3.0 / 127.0);
    assert_eq!(q[1].qs[8], -127);
    for b in &q {
        assert_eq!(b.sum, b.qs.iter().map(|&v| v as i32).sum::<i32>());
    }
    let mut back = vec![0.0; 64];
    dequantize_activations(&q, &mut back);
    for (a, b) in x.iter().zip(&back) {
        assert!((a - b).abs() <= 0.5 * 3.0 / 127.0 + 1e-6);
    }
    // All-zero input: d = 0, no NaN.
    let mut z = [BlockQ8x32::default()];
    quantize_activations(&[0.0; 32], &mut z);
    assert_eq!((z[0].d, z[0].sum, z[0].qs), (0.0, 0, [0; 32]));
}

#[test]
fn activation_kinds() {
    for ty in GgmlType::ALL {
        let want = match ty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => ActKind::F32,
            _ => ActKind::Q8,
        };
        assert_eq!(activation_kind(ty), want, "{ty}");
    }
}

/// Σ w·x in f64, and Σ |w·x| (the scale for a relative tolerance).
fn exact_dot(w: &[f32], x: &[f32]) -> (f64, f64) {
    w.iter().zip(x).fold((0.0, 0.0), |(s, a), (&p, &q)| {
        let t = p as f64 * q as f64;
        (s + t, a + t.abs())
    })
}

#[test]
fn vec_dot_q8_matches_dequantized_dot() {
    let mut rng = Rng::new(42);
    const N: usize = 1024;
    for ty in QUANT_TYPES
        .into_iter()
        .chain([GgmlType::F32, GgmlType::F16, GgmlType::BF16])
    {
        for _ in 0..10 {
            let row = random_row(ty, N, &mut rng);
            let xf: Vec<f32> = (0..N).map(|_| rng.uniform(-2.0, 2.0)).collect();
            let mut xq = vec![BlockQ8x32::default(); N / 32];
            quantize_activations(&xf, &mut xq);
            let mut xd = vec![0.0; N];
            dequantize_activations(&xq, &mut xd);

            let w = dequant(ty, &row, N);
            let (want, mag) = exact_dot(&w, &xd);
            let got = vec_dot_q8(ty, &row, &xq) as f64;
            assert!(
                (got - want).abs() <= 1e-5 * mag + 1e-6,
                "{ty}: got {got}, want {want} (magnitude {mag})"
            );
        }
    }
}

#[test]
fn vec_dot_f32_matches_dequantized_dot() {
    let mut rng = Rng::new(3);
    const N: usize = 512;
    for ty in QUANT_TYPES
        .into_iter()
        .chain([GgmlType::F32, GgmlType::F16, GgmlType::BF16])
    {
        let row = random_row(ty, N, &mut rng);
        let x: Vec<f32> = (0..N).map(|_| rng.uniform(-2.0, 2.0)).collect();
        let w = dequant(ty, &row, N);
        let (want, mag) = exact_dot(&w, &x);
        let got = vec_dot_f32(ty, &row, &x) as f64;
        assert!(
            (got - want).abs() <= 1e-5 * mag + 1e-6,
            "{ty}: got {got}, want {want}"
        );
    }
}

#[test]
fn short_inputs_do_not_panic_in_release() {
    // Length mismatches are caller bugs (debug_assert), but must never index out of bounds.
    if cfg!(debug_assertions) {
        return;
    }
    let mut rng = Rng::new(9);
    for ty in QUANT_TYPES {
        let row = random_row(ty, 256, &mut rng);
        let mut y = vec![0.0; 512];
        dequantize_row(ty, &row[..row.len() - 1], &mut y);
        let xq = vec![BlockQ8x32::default(); 3];
        let _ = vec_dot_q8(ty, &row, &xq);
        let _ = vec_dot_f32(ty, &row[..5], &[1.0; 7]);
    }
}

// ---------------------------------------------------------------- quantizers

/// All types `quantize_row` supports.
const QUANTIZABLE: [GgmlType; 15] = GgmlType::ALL;

/// ggml's test-quantize-fns synthetic data: `0.1 + 2 cos(i + offset)`.
fn synthetic(offset: f32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| 0.1 + 2.0 * (i as f32 + offset).cos())
        .collect()
}

fn quantize(ty: GgmlType, x: &[f32], qw: Option<&[f32]>) -> Vec<u8> {
    let mut q = vec![0xA5u8; ty.row_bytes(x.len() as u64).unwrap() as usize];
    quantize_row_weighted(ty, x, qw, &mut q);
    q
}

/// ggml's test-quantize-fns "RMSE": sqrt(Σ d²) / n.
fn ggml_rmse(a: &[f32], b: &[f32]) -> f64 {
    let sum: f64 = a
        .iter()
        .zip(b)
        .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
        .sum();
    sum.sqrt() / a.len() as f64
}

/// ggml's thresholds for the round-trip error.
fn max_roundtrip_error(ty: GgmlType) -> f64 {
    match ty {
        GgmlType::Q2_K => 0.0075,
        GgmlType::Q3_K => 0.0040,
        _ => 0.002,
    }
}

#[test]
fn quantize_roundtrip_error() {
    const N: usize = 32 * 128;
    let x = synthetic(0.0, N);
    let ones = vec![1.0f32; N];
    for ty in QUANTIZABLE {
        for qw in [None, Some(&ones[..])] {
            let y = dequant(ty, &quantize(ty, &x, qw), N);
            let err = ggml_rmse(&x, &y);
            assert!(
                err < max_roundtrip_error(ty),
                "{ty} (importance {}): {err}",
                qw.is_some()
            );
        }
    }
}

/// Dot of quantized weights with the activations in the form the weight type wants.
fn quantized_dot(ty: GgmlType, w: &[u8], x: &[f32]) -> f64 {
    match activation_kind(ty) {
        ActKind::F32 => vec_dot_f32(ty, w, x) as f64,
        ActKind::Q8 => {
            let mut xq = vec![BlockQ8x32::default(); x.len() / 32];
            quantize_activations(x, &mut xq);
            vec_dot_q8(ty, w, &xq) as f64
        }
    }
}

#[test]
fn quantized_dot_error() {
    const N: usize = 32 * 128;
    let (w, x) = (synthetic(0.0, N), synthetic(1.0, N));
    let exact: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
    for ty in QUANTIZABLE {
        let err = (quantized_dot(ty, &quantize(ty, &w, None), &x) - exact).abs() / N as f64;
        let max = if ty == GgmlType::Q2_K { 0.04 } else { 0.02 };
        assert!(err < max, "{ty}: dot error {err}");
    }
}

#[test]
fn importance_lowers_weighted_error() {
    // Rows of noisy data where a few columns matter much more than the rest: the weighted
    // quantizers must not do worse on the importance-weighted error than the plain ones.
    const N: usize = 1024;
    let mut rng = Rng::new(11);
    let qw: Vec<f32> = (0..N)
        .map(|i| if i % 7 == 0 { 50.0 } else { 0.1 })
        .collect();
    let werr = |x: &[f32], y: &[f32]| -> f64 {
        x.iter()
            .zip(y)
            .zip(&qw)
            .map(|((&a, &b), &w)| w as f64 * (a as f64 - b as f64).powi(2))
            .sum()
    };
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        let (mut plain, mut weighted) = (0.0, 0.0);
        for _ in 0..8 {
            let x: Vec<f32> = (0..N).map(|_| rng.uniform(-1.0, 1.0)).collect();
            plain += werr(&x, &dequant(ty, &quantize(ty, &x, None), N));
            weighted += werr(&x, &dequant(ty, &quantize(ty, &x, Some(&qw)), N));
        }
        assert!(
            weighted < plain,
            "{ty}: weighted {weighted} vs plain {plain}"
        );
    }
}

#[test]
fn quantize_edge_cases_are_finite() {
    // All zeros, a single spike, constant rows and tiny values: no NaN scales, and the
    // round trip of an all-zero row is all zeros.
    let n = 256;
    let mut spike = vec![0.0f32; n];
    spike[77] = -3.0;
    let cases = [
        vec![0.0f32; n],
        spike,
        vec![0.5; n],
        vec![-1e-20; n],
        synthetic(3.0, n),
    ];
    for ty in QUANTIZABLE {
        for (c, x) in cases.iter().enumerate() {
            for qw in [None, Some(&[1.0f32; 256][..])] {
                let y = dequant(ty, &quantize(ty, x, qw), n);
                assert!(y.iter().all(|v| v.is_finite()), "{ty} case {c}");
                if c == 0 {
                    assert!(y.iter().all(|&v| v == 0.0), "{ty}: zero row");
                }
            }
        }
    }
}

#[test]
fn q8_0_requantization_is_idempotent() {
    let mut rng = Rng::new(5);
    let x: Vec<f32> = (0..4096).map(|_| rng.uniform(-3.0, 3.0)).collect();
    let q1 = quantize(GgmlType::Q8_0, &x, None);
    let y = dequant(GgmlType::Q8_0, &q1, x.len());
    let q2 = quantize(GgmlType::Q8_0, &y, None);
    assert_eq!(q1, q2);
    // And the values themselves survive a second round trip unchanged.
    assert_eq!(dequant(GgmlType::Q8_0, &q2, x.len()), y);
}

#[test]
fn quantize_row_is_weighted_without_importance() {
    let x = synthetic(0.5, 512);
    for ty in QUANTIZABLE {
        let mut a = vec![0u8; ty.row_bytes(512).unwrap() as usize];
        quantize_row(ty, &x, &mut a);
        assert_eq!(a, quantize(ty, &x, None), "{ty}");
    }
}

/// Compare with outputs of ggml's C reference quantizers, dumped by an external harness into
/// `$MARCO_GGML_DUMP`: `input.f32` (64 rows of 1024 values), `imatrix.f32` (1024 values),
/// `<TYPE>.bin` (from `quantize_row_*_ref`), `<TYPE>_w.bin` (from `quantize_*` with the
/// imatrix) and `<TYPE>.deq` (ggml's `dequantize_row_*` of `<TYPE>.bin`, f32).
/// Run with `MARCO_GGML_DUMP=dir cargo test -p marco-quantize --test formats -- --ignored`.
#[test]
#[ignore = "needs a dump from ggml's C code (MARCO_GGML_DUMP)"]
fn quantize_matches_ggml_dump() {
    let dir = std::path::PathBuf::from(std::env::var("MARCO_GGML_DUMP").expect("MARCO_GGML_DUMP"));
    let floats = |name: &str| -> Vec<f32> {
        let b = std::fs::read(dir.join(name)).unwrap();
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (x, qw) = (floats("input.f32"), floats("imatrix.f32"));
    let npr = qw.len();
    let mut failures = Vec::new();
    for ty in QUANTIZABLE {
        for (suffix, weighted) in [("", false), ("_w", true)] {
            let Ok(want) = std::fs::read(dir.join(format!("{ty}{suffix}.bin"))) else {
                continue;
            };
            let rb = ty.row_bytes(npr as u64).unwrap() as usize;
            let bad = x
                .chunks_exact(npr)
                .zip(want.chunks_exact(rb))
                .filter(|(row, want)| quantize(ty, row, weighted.then_some(&qw[..])) != *want)
                .count();
            if bad > 0 {
                failures.push(format!("{ty}{suffix}: {bad} rows differ"));
            }
        }
        // ggml's dequantize_row_* of its own `<TYPE>.bin`, as f32 bits.
        let (Ok(q), Ok(deq)) = (
            std::fs::read(dir.join(format!("{ty}.bin"))),
            std::fs::read(dir.join(format!("{ty}.deq"))),
        ) else {
            continue;
        };
        let got: Vec<u8> = dequant(ty, &q, x.len())
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        if got != deq {
            failures.push(format!("{ty}: dequantization differs"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}
