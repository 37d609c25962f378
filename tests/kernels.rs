//! The SIMD CPU kernels against the scalar reference of `marco_quantize::dot`, for every
//! weight type and every instruction-set path this CPU can run.
//!
//! The integer parts of every kernel are exact, so results may differ from the reference only
//! by f32 summation order: the check is `|got - want| ≤ 1e-5 · Σ|wᵢ·xᵢ|`.

use marco::backend::cpu::kernels::{Isa, Kernels};
use marco_quantize::act::{dequantize_activations, quantize_activations, BlockQ8x32};
use marco_quantize::blocks::LeF16;
use marco_quantize::dequant::dequantize_row;
use marco_quantize::dot::{vec_dot_f32, vec_dot_q8};
use marco_quantize::quants::quantize_row;
use marco_quantize::{GgmlType, QK32};

/// Quantized types with a SIMD kernel, then the ones that fall back to the reference.
const Q8_TYPES: [GgmlType; 12] = [
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q6_K,
    GgmlType::Q4_K,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_1,
    GgmlType::Q5_K,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q8_1,
    GgmlType::Q8_K,
];

const FLOAT_TYPES: [GgmlType; 3] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16];

/// Row lengths: single blocks, odd block counts and the model widths.
const COLS_32: [usize; 9] = [32, 64, 96, 224, 32 * 37, 896, 1536, 4864, 8960];
const COLS_256: [usize; 8] = [256, 512, 768, 1280, 1536, 2304, 4864, 8960];

/// Every path this CPU runs (Scalar included, as a check of the harness).
fn kernel_sets() -> Vec<Kernels> {
    Isa::ALL.into_iter().filter_map(Kernels::forced).collect()
}

/// xorshift64: deterministic test data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Byte offsets of the f16 scale fields in a block of `ty` (random bytes there could be
/// Inf/NaN or absurd; everything else of a block is valid for every bit pattern).
fn scale_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 => &[0, 2],
        GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

/// A row of random quants with sane random scales.
fn random_row(rng: &mut Rng, ty: GgmlType, cols: usize) -> Vec<u8> {
    let mut w = rng.bytes(ty.row_bytes(cols as u64).unwrap() as usize);
    for block in w.chunks_exact_mut(ty.type_size()) {
        for &off in scale_offsets(ty) {
            let v = LeF16::from_f32(0.02 * rng.unit());
            block[off..off + 2].copy_from_slice(&v.0);
        }
        if ty == GgmlType::Q8_K {
            block[..4].copy_from_slice(&(0.01 * rng.unit()).to_le_bytes());
        }
    }
    w
}

/// Random activations with a different magnitude per block, quantized.
fn random_acts(rng: &mut Rng, cols: usize) -> Vec<BlockQ8x32> {
    let x: Vec<f32> = (0..cols)
        .map(|i| {
            let block_scale = 1.0 + ((i / QK32) % 7) as f32;
            block_scale * rng.unit()
        })
        .collect();
    let mut q = vec![BlockQ8x32::default(); cols / QK32];
    quantize_activations(&x, &mut q);
    q
}

/// Σ|wᵢ·xᵢ| of the decoded row and activations: the scale of the rounding differences.
fn abs_terms(ty: GgmlType, w: &[u8], x: &[BlockQ8x32]) -> f64 {
    let cols = x.len() * QK32;
    let mut wf = vec![0.0f32; cols];
    dequantize_row(ty, w, &mut wf);
    let mut xf = vec![0.0f32; cols];
    dequantize_activations(x, &mut xf);
    wf.iter()
        .zip(&xf)
        .map(|(&a, &b)| (a as f64 * b as f64).abs())
        .sum()
}

fn check_close(what: &str, got: f32, want: f32, abs_terms: f64) {
    let tol = 1e-5 * abs_terms + 1e-30;
    let err = (got as f64 - want as f64).abs();
    assert!(
        err <= tol,
        "{what}: got {got}, reference {want} (error {err:e}, tolerance {tol:e})"
    );
}

fn check_q8_row(ty: GgmlType, w: &[u8], x: &[BlockQ8x32], label: &str) {
    let want = vec_dot_q8(ty, w, x);
    let terms = abs_terms(ty, w, x);
    for k in kernel_sets() {
        let got = k.dot_q8(ty, w, x);
        check_close(&format!("{} {ty} {label}", k.name()), got, want, terms);
    }
}

fn cols_for(ty: GgmlType) -> &'static [usize] {
    if ty.block_size() == QK32 {
        &COLS_32
    } else {
        &COLS_256
    }
}

#[test]
fn dot_q8_matches_reference_on_random_rows() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for ty in Q8_TYPES {
        for &cols in cols_for(ty) {
            for rep in 0..3 {
                let w = random_row(&mut rng, ty, cols);
                let x = random_acts(&mut rng, cols);
                check_q8_row(ty, &w, &x, &format!("random cols={cols} #{rep}"));
            }
        }
    }
}

#[test]
fn dot_q8_matches_reference_on_quantized_rows() {
    let mut rng = Rng(0x0bad_cafe_f00d_d00d);
    for ty in Q8_TYPES {
        for &cols in cols_for(ty) {
            let src: Vec<f32> = (0..cols).map(|_| 0.1 * rng.unit()).collect();
            let mut w = vec![0u8; ty.row_bytes(cols as u64).unwrap() as usize];
            quantize_row(ty, &src, &mut w);
            let x = random_acts(&mut rng, cols);
            check_q8_row(ty, &w, &x, &format!("quantized cols={cols}"));
        }
    }
}

/// A chunk test checked something wherever a kernel path takes `ty` rows of `cols` in chunks.
/// On a CPU without a chunk path there is nothing to check (the backend then keeps the GGUF
/// layout); this machine has one.
fn assert_checked_where_chunked(checked: usize, ty: GgmlType, cols: usize) {
    if kernel_sets().iter().any(|k| k.has_chunks(ty, cols)) {
        assert!(checked > 0, "no {ty} chunk rows were checked");
    }
}

/// The chunked decode rows (`marco_quantize::chunks`) on every path that repacks, against
/// the reference on the original rows: random, quantized and extreme rows, every width the
/// layout takes.
#[test]
fn dot_chunks_matches_reference() {
    use marco_quantize::chunks::{pack_rows, supports, ActChunks};
    let mut rng = Rng(0xc4c4_0001_2345_6789);
    let mut checked = 0;
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
    ] {
        for cols in [128, 256, 384, 896, 1536, 4864, 8960] {
            if ty == GgmlType::Q4_K && cols % 256 != 0 {
                assert!(!supports(ty, cols));
                continue;
            }
            assert!(supports(ty, cols));
            let src: Vec<f32> = (0..cols).map(|_| 0.1 * rng.unit()).collect();
            let mut quantized = vec![0u8; ty.row_bytes(cols as u64).unwrap() as usize];
            quantize_row(ty, &src, &mut quantized);
            // Every quant byte (and Q4_K scale and min byte) at 0xFF, 0x80 and 0x7F: the
            // extremes of each type (Q8_0: -1, -128, 127); the f16 scales stay finite.
            let scales_end = if ty == GgmlType::Q4_K { 4 } else { 2 };
            let extreme = |fill: u8, rng: &mut Rng| {
                let mut w = random_row(rng, ty, cols);
                for block in w.chunks_exact_mut(ty.type_size()) {
                    block[scales_end..].fill(fill);
                }
                w
            };
            for (label, w) in [
                ("random", random_row(&mut rng, ty, cols)),
                ("quantized", quantized),
                ("extreme 0xFF", extreme(0xFF, &mut rng)),
                ("extreme 0x80", extreme(0x80, &mut rng)),
                ("extreme 0x7F", extreme(0x7F, &mut rng)),
            ] {
                for xq in [None, Some(127i8), Some(-127)] {
                    let mut x = random_acts(&mut rng, cols);
                    if let Some(v) = xq {
                        for b in x.iter_mut() {
                            b.qs = [v; QK32];
                            b.sum = 32 * v as i32;
                        }
                    }
                    let want = vec_dot_q8(ty, &w, &x);
                    let terms = abs_terms(ty, &w, &x);
                    let mut packed = vec![0u8; w.len()];
                    assert!(pack_rows(ty, w.len(), &w, &mut packed));
                    let mut acts = ActChunks::default();
                    acts.fill(&x);
                    acts.fill_steps();
                    for k in kernel_sets().into_iter().filter(|k| k.has_chunks(ty, cols)) {
                        let mut got = [f32::NAN];
                        k.dot_chunks(ty, &packed, &acts, &mut got);
                        let got = got[0];
                        let what = format!("{} {ty} {label} cols={cols} x={xq:?}", k.name());
                        check_close(&what, got, want, terms);
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_checked_where_chunked(checked, GgmlType::Q5_0, 896);
}

/// Runs of chunked rows in one call (groups of alternating chunks, counts ending with a
/// shorter group, runs starting at a later group, more than one reduction
/// group of 16): each output against the reference on its own row.
#[test]
fn dot_chunks_over_runs_of_rows_matches_reference() {
    use marco_quantize::chunks::{pack_rows, ActChunks, ROW_GROUP};
    let mut rng = Rng(0xc4c4_0002_9876_5431);
    let mut checked = 0;
    for (ty, cols) in [
        (GgmlType::Q5_0, 896),
        (GgmlType::Q8_0, 128),
        (GgmlType::Q4_0, 384),
        (GgmlType::Q4_K, 512),
        (GgmlType::Q4_K, 256),
        // Long rows, in smaller groups (`chunks::group_rows`): twos, and alone.
        (GgmlType::Q4_K, 4864),
        (GgmlType::Q4_K, 8960),
        (GgmlType::Q8_0, 8960),
    ] {
        let rb = ty.row_bytes(cols as u64).unwrap() as usize;
        let x = random_acts(&mut rng, cols);
        let mut acts = ActChunks::default();
        acts.fill(&x);
        acts.fill_steps();
        for n_rows in [1, 2, 3, 4, 6, 7, 16, 17, 35] {
            let w = random_row(&mut rng, ty, cols * n_rows);
            let mut packed = vec![0u8; w.len()];
            assert!(pack_rows(ty, rb, &w, &mut packed));
            for k in kernel_sets().into_iter().filter(|k| k.has_chunks(ty, cols)) {
                // The whole run, then the run from the second group on.
                for first in [0, ROW_GROUP].into_iter().filter(|&f| f < n_rows) {
                    let got = dot_chunk_run(k, ty, &packed[first * rb..], &acts, n_rows - first);
                    for (i, &g) in got.iter().enumerate() {
                        let row = &w[(first + i) * rb..(first + i + 1) * rb];
                        let want = vec_dot_q8(ty, row, &x);
                        let what = format!(
                            "{} {ty} cols={cols} rows={n_rows} row {}",
                            k.name(),
                            first + i
                        );
                        check_close(&what, g, want, abs_terms(ty, row, &x));
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_checked_where_chunked(checked, GgmlType::Q5_0, 896);
}

/// `k.dot_chunks` over the first `n` packed rows of `packed`, into a buffer with 16 spare
/// outputs after the run that a partial group's store must not touch.
fn dot_chunk_run(
    k: Kernels,
    ty: GgmlType,
    packed: &[u8],
    acts: &marco_quantize::chunks::ActChunks,
    n: usize,
) -> Vec<f32> {
    let mut buf = vec![f32::NAN; n + 16];
    k.dot_chunks(ty, packed, acts, &mut buf[..n]);
    assert!(
        buf[n..].iter().all(|v| v.is_nan()),
        "{ty}: wrote past the run"
    );
    buf.truncate(n);
    buf
}

/// `Q6_K` chunk rows (super-blocks in steps) against `Q8_K` activations in steps: runs of
/// rows in one call, each output against the reference on its own row.
#[test]
fn q6_k_chunk_runs_match_reference() {
    use marco_quantize::chunks::{pack_rows, ActChunks};
    use marco_quantize::dot::vec_dot_q8k;
    let mut rng = Rng(0xc4c4_0003_5555_0001);
    let ty = GgmlType::Q6_K;
    let mut checked = 0;
    // Groups of four, two (3072) and rows alone (4864, 8960): `chunks::group_rows`.
    for cols in [256, 1536, 3072, 4864, 8960] {
        let rb = ty.row_bytes(cols as u64).unwrap() as usize;
        let xf: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
        let mut acts = ActChunks::default();
        acts.fill_q8k(&xf);
        for n_rows in [1, 2, 3, 5, 7, 17] {
            let w = random_row(&mut rng, ty, cols * n_rows);
            let mut packed = vec![0u8; w.len()];
            assert!(pack_rows(ty, rb, &w, &mut packed));
            for k in kernel_sets().into_iter().filter(|k| k.has_chunks(ty, cols)) {
                let got = dot_chunk_run(k, ty, &packed, &acts, n_rows);
                for (r, &got) in got.iter().enumerate() {
                    let row = &w[r * rb..(r + 1) * rb];
                    let want = vec_dot_q8k(ty, row, acts.q8k()).unwrap();
                    // The same integer dots as the reference, summed in another order: the
                    // rounding scale is Σ|wᵢ·xᵢ| (the activations before 8-bit rounding).
                    let mut wf = vec![0.0f32; cols];
                    dequantize_row(ty, row, &mut wf);
                    let terms: f64 = wf
                        .iter()
                        .zip(&xf)
                        .map(|(&a, &b)| (a * b).abs() as f64)
                        .sum();
                    let what = format!("{} cols={cols} rows={n_rows} row {r}", k.name());
                    check_close(&what, got, want, terms);
                    checked += 1;
                }
            }
        }
    }
    assert_checked_where_chunked(checked, ty, 256);
}

/// Extreme quants against extreme activations: catches i16 saturation in the integer dots.
#[test]
fn dot_q8_extremes_do_not_saturate() {
    let mut rng = Rng(0x5eed_5eed_5eed_5eed);
    for ty in Q8_TYPES {
        let cols = ty.block_size().max(QK32) * 4;
        for fill in [0x00u8, 0xFF, 0x80, 0x7F, 0x88] {
            let mut w = vec![fill; ty.row_bytes(cols as u64).unwrap() as usize];
            for block in w.chunks_exact_mut(ty.type_size()) {
                for &off in scale_offsets(ty) {
                    block[off..off + 2].copy_from_slice(&LeF16::from_f32(0.5).0);
                }
                if ty == GgmlType::Q8_K {
                    block[..4].copy_from_slice(&0.5f32.to_le_bytes());
                }
            }
            for xq in [127i8, -127] {
                let mut x = vec![
                    BlockQ8x32 {
                        d: 0.25,
                        sum: 0,
                        qs: [xq; QK32],
                    };
                    cols / QK32
                ];
                for b in x.iter_mut() {
                    b.sum = b.qs.iter().map(|&q| q as i32).sum();
                }
                check_q8_row(ty, &w, &x, &format!("fill {fill:#x} x={xq}"));
            }
            // Alternating signs too.
            let mut x = random_acts(&mut rng, cols);
            for b in x.iter_mut() {
                for (i, q) in b.qs.iter_mut().enumerate() {
                    *q = if i % 2 == 0 { 127 } else { -127 };
                }
                b.sum = 0;
            }
            check_q8_row(ty, &w, &x, &format!("fill {fill:#x} alternating"));
        }
    }
}

#[test]
fn dot_f32_matches_reference() {
    let mut rng = Rng(0xfeed_beef_1234_4321);
    for ty in FLOAT_TYPES {
        for cols in [1usize, 7, 8, 31, 33, 100, 896, 4864, 4867] {
            let src: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
            let mut w = vec![0u8; ty.row_bytes(cols as u64).unwrap() as usize];
            quantize_row(ty, &src, &mut w);
            let x: Vec<f32> = (0..cols).map(|_| 3.0 * rng.unit()).collect();
            let want = vec_dot_f32(ty, &w, &x);
            let mut wf = vec![0.0f32; cols];
            dequantize_row(ty, &w, &mut wf);
            let terms: f64 = wf.iter().zip(&x).map(|(&a, &b)| (a * b).abs() as f64).sum();
            for k in kernel_sets() {
                let got = k.dot_f32(ty, &w, &x);
                check_close(&format!("{} {ty} cols={cols}", k.name()), got, want, terms);
            }
        }
    }
}

#[test]
fn multi_token_matches_single_token() {
    let mut rng = Rng(0xabcdef);
    for ty in Q8_TYPES {
        let cols = if ty.block_size() == QK32 { 896 } else { 1536 };
        let nb = cols / QK32;
        let stride = nb + 3;
        let w = random_row(&mut rng, ty, cols);
        let x: Vec<BlockQ8x32> = (0..9)
            .flat_map(|_| {
                let mut t = random_acts(&mut rng, cols);
                t.extend(random_acts(&mut rng, 3 * QK32));
                t
            })
            .collect();
        for k in kernel_sets() {
            for n_tok in 0..=9 {
                let mut out = vec![f32::NAN; n_tok];
                k.dot_q8_multi(ty, &w, &x, stride, &mut out);
                for (t, &got) in out.iter().enumerate() {
                    let xt = &x[t * stride..t * stride + nb];
                    let want = vec_dot_q8(ty, &w, xt);
                    let terms = abs_terms(ty, &w, xt);
                    check_close(
                        &format!("{} {ty} token {t}/{n_tok}", k.name()),
                        got,
                        want,
                        terms,
                    );
                }
            }
        }
    }
}

/// `dot_q8_tile` against the reference for every type and path, 1..=9 rows × 1..=9 tokens
/// (whole 4 × 8 tiles and every kind of edge), with padded activation and output strides.
#[test]
fn tile_matches_reference() {
    let mut rng = Rng(0x7153_c0de);
    for ty in Q8_TYPES {
        let cols_list: &[usize] = if ty.block_size() == QK32 {
            &[32 * 5, 32 * 37, 896]
        } else {
            &[256, 1536]
        };
        for &cols in cols_list {
            let nb = cols / QK32;
            let row_bytes = ty.row_bytes(cols as u64).unwrap() as usize;
            let stride = nb + 2;
            let w = random_row(&mut rng, ty, cols * 9);
            let x: Vec<BlockQ8x32> = (0..9)
                .flat_map(|_| {
                    let mut t = random_acts(&mut rng, cols);
                    t.extend(random_acts(&mut rng, 2 * QK32));
                    t
                })
                .collect();
            // The reference of every (row, token) pair.
            let want: Vec<Vec<(f32, f64)>> = (0..9)
                .map(|r| {
                    let wr = &w[r * row_bytes..(r + 1) * row_bytes];
                    (0..9)
                        .map(|t| {
                            let xt = &x[t * stride..t * stride + nb];
                            (vec_dot_q8(ty, wr, xt), abs_terms(ty, wr, xt))
                        })
                        .collect()
                })
                .collect();
            for k in kernel_sets() {
                for n_rows in 1..=9 {
                    for n_tok in 1..=9 {
                        let out_stride = n_rows + 1;
                        let mut out = vec![f32::NAN; n_tok * out_stride];
                        k.dot_q8_tile(
                            ty, &w, row_bytes, n_rows, &x, stride, n_tok, &mut out, out_stride,
                        );
                        for r in 0..n_rows {
                            for t in 0..n_tok {
                                let (want, terms) = want[r][t];
                                check_close(
                                    &format!(
                                        "{} {ty} cols={cols} tile {n_rows}x{n_tok} row {r} token {t}",
                                        k.name()
                                    ),
                                    out[t * out_stride + r],
                                    want,
                                    terms,
                                );
                            }
                            assert!(out[(n_tok - 1) * out_stride + n_rows].is_nan());
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn detection_picks_a_supported_path() {
    let k = Kernels::detect();
    assert!(k.isa().is_supported());
    assert!(Kernels::forced(Isa::Scalar).is_some());
    for isa in Isa::ALL {
        assert_eq!(Isa::from_name(isa.name()), Some(isa));
        assert_eq!(Kernels::forced(isa).is_some(), isa.is_supported());
    }
    #[cfg(target_arch = "x86_64")]
    {
        let has512 = is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw");
        assert_eq!(
            Isa::Avx512Vnni.is_supported(),
            has512 && Isa::Avx2.is_supported()
        );
        if has512 && std::env::var_os(marco::backend::cpu::kernels::KERNELS_ENV).is_none() {
            assert_eq!(k.isa(), Isa::Avx512Vnni);
        }
    }
}

/// Single-thread throughput of `dot_q8` per path, in GB/s of weights read: rows that stay in
/// L2 (compute-bound), one model matrix (L3) and 512 MB of rows (memory-bound, as decoding
/// is); then `dot_q8_multi` with 8 tokens against 8 single-token calls (L2 rows). Prints only:
/// `cargo test --release -p marco --test kernels -- --ignored --nocapture bench`.
#[test]
#[ignore = "a throughput printout for tuning, not a check; run by hand"]
fn bench_dot_q8_throughput() {
    let shapes = [
        (GgmlType::Q5_0, 4864, 896),
        (GgmlType::Q5_0, 896, 4864),
        (GgmlType::Q8_0, 4864, 896),
        (GgmlType::Q8_0, 4864, 1024),
        (GgmlType::Q8_0, 1024, 4864),
        (GgmlType::Q6_K, 896, 4864),
        (GgmlType::Q6_K, 1536, 8960),
        (GgmlType::Q6_K, 151936, 1536),
        (GgmlType::Q4_K, 896, 4864),
        (GgmlType::Q4_K, 8960, 1536),
        (GgmlType::Q4_K, 1536, 8960),
        (GgmlType::Q4_0, 4864, 896),
        (GgmlType::Q5_K, 896, 4864),
    ];
    let mut rng = Rng(99);
    // `BENCH_TYPE=Q5_0` (say) benches one type only.
    let only = std::env::var("BENCH_TYPE").ok();
    for (ty, rows, cols) in shapes {
        if only.as_ref().is_some_and(|o| *o != ty.to_string()) {
            continue;
        }
        let row_bytes = ty.row_bytes(cols as u64).unwrap() as usize;
        let big_rows = (512 << 20) / row_bytes;
        let w: Vec<u8> = (0..big_rows / rows + 1)
            .flat_map(|_| random_row(&mut rng, ty, cols * rows))
            .collect();
        let x: Vec<BlockQ8x32> = (0..8).flat_map(|_| random_acts(&mut rng, cols)).collect();
        for k in kernel_sets() {
            bench_one(k, ty, rows, cols, &w, &x);
        }
    }
}

/// Best GB/s of several runs (the machine may be shared) of `f` over `n_rows` rows.
fn best_gbs(row_bytes: usize, n_rows: usize, reps: usize, runs: usize, mut f: impl FnMut()) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..runs {
        let t = std::time::Instant::now();
        for _ in 0..reps {
            f();
        }
        best = best.max((n_rows * reps * row_bytes) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn bench_one(k: Kernels, ty: GgmlType, rows: usize, cols: usize, w: &[u8], x: &[BlockQ8x32]) {
    use std::hint::black_box;
    let row_bytes = ty.row_bytes(cols as u64).unwrap() as usize;
    let nb = cols / QK32;
    let x1 = &x[..nb];
    // Float activations for the paths that quantize their own (Q8_K).
    let xf: Vec<f32> = (0..cols).map(|i| (i % 7) as f32 - 3.0).collect();
    let single = |n_rows: usize| {
        for r in w.chunks_exact(row_bytes).take(n_rows) {
            black_box(k.dot_q8(ty, black_box(r), x1));
        }
    };
    let l2_rows = (256 << 10) / row_bytes;
    let reps = 10 * rows / l2_rows;
    let l2 = best_gbs(row_bytes, l2_rows, reps, 5, || single(l2_rows));
    let hot = best_gbs(row_bytes, rows, 10, 5, || single(rows));
    let big_rows = w.len() / row_bytes;
    let cold = best_gbs(row_bytes, big_rows, 1, 2, || single(big_rows));
    // Prompt processing: 8 tokens per weight row, as one call or as 8 calls.
    let mut out = [0.0f32; 8];
    let tok8 = best_gbs(8 * row_bytes, l2_rows, reps / 8 + 1, 5, || {
        for r in w.chunks_exact(row_bytes).take(l2_rows) {
            for (t, o) in out.iter_mut().enumerate() {
                *o = k.dot_q8(ty, black_box(r), &x[t * nb..(t + 1) * nb]);
            }
            black_box(&out);
        }
    });
    let mut out = [0.0f32; 8];
    let multi8 = best_gbs(8 * row_bytes, l2_rows, reps / 8 + 1, 5, || {
        for r in w.chunks_exact(row_bytes).take(l2_rows) {
            k.dot_q8_multi(ty, black_box(r), x, nb, &mut out);
            black_box(&out);
        }
    });
    let mut out = [0.0f32; 4 * 8];
    let tile8 = best_gbs(8 * row_bytes, l2_rows / 4 * 4, reps / 8 + 1, 5, || {
        for r in w.chunks_exact(4 * row_bytes).take(l2_rows / 4) {
            k.dot_q8_tile(ty, black_box(r), row_bytes, 4, x, nb, 8, &mut out, 4);
            black_box(&out);
        }
    });
    if k.has_chunks(ty, cols) {
        // In 2 MiB pages, as the CPU backend keeps repacked weights.
        let mut packed_buf =
            marco::backend::cpu::memory::HugeBuf::zeroed(w.len() / row_bytes * row_bytes).unwrap();
        let packed = packed_buf.as_mut_slice();
        let whole = packed.len();
        marco_quantize::chunks::pack_rows(ty, row_bytes, &w[..whole], packed);
        let acts = chunk_acts(x1, &xf);
        let (l2c, coldc) = chunked_gbs(k, ty, row_bytes, packed, &acts, l2_rows, reps);
        println!(
            "  {} chunked: L2 {l2c:6.2}  512MB {coldc:6.2} GB/s",
            k.name()
        );
    }
    if k.has_q8k_dot(ty) {
        let mut bytes = vec![0u8; GgmlType::Q8_K.row_bytes(cols as u64).unwrap() as usize];
        quantize_row(GgmlType::Q8_K, &xf, &mut bytes);
        let x8k =
            marco_quantize::blocks::as_blocks::<marco_quantize::blocks::BlockQ8K>(&bytes).unwrap();
        let q8k = |n_rows: usize| {
            for r in w.chunks_exact(row_bytes).take(n_rows) {
                black_box(k.dot_q8k(ty, black_box(r), x8k));
            }
        };
        let l2k = best_gbs(row_bytes, l2_rows, reps, 5, || q8k(l2_rows));
        let coldk = best_gbs(row_bytes, big_rows, 1, 2, || q8k(big_rows));
        println!(
            "  {} with Q8_K activations: L2 {l2k:6.2}  512MB {coldk:6.2} GB/s",
            k.name()
        );
    }
    println!(
        "{ty} {rows}x{cols} {:>12}: L2 {l2:6.2}  matrix {hot:6.2}  512MB {cold:6.2} GB/s | \
         8 tokens: 8 calls {tok8:6.2}, multi {multi8:6.2}, tile {tile8:6.2} GB/s-equiv",
        k.name()
    );
}

/// The prompt GEMM (AVX-512 VNNI) against the reference for every type it takes: 8 rows
/// (some repeated, as a last partial tile passes them) × 1..=40 tokens (whole and partial
/// groups of 16).
#[test]
fn gemm_matches_reference() {
    use marco::backend::cpu::gemm::{PackedActs, Unpacked, ROWS, TOKENS};
    let Some(k) = Kernels::forced(Isa::Avx512Vnni) else {
        return; // this CPU has no AVX-512 VNNI: there is no GEMM path to check
    };
    let mut rng = Rng(0x6e33_0001);
    let mut scratch = Unpacked::default();
    for ty in Q8_TYPES.into_iter().filter(|&t| k.has_gemm(t)) {
        let cols_list: &[usize] = if ty.block_size() == QK32 {
            &[32 * 5, 896]
        } else {
            &[256, 1536]
        };
        for &cols in cols_list {
            let nb = cols / QK32;
            let row_bytes = ty.row_bytes(cols as u64).unwrap() as usize;
            let w = random_row(&mut rng, ty, cols * ROWS);
            let rows: [&[u8]; ROWS] =
                std::array::from_fn(|r| &w[r.min(5) * row_bytes..(r.min(5) + 1) * row_bytes]);
            for n_tok in [1, 16, 17, 40] {
                let x: Vec<BlockQ8x32> = (0..n_tok)
                    .flat_map(|_| random_acts(&mut rng, cols))
                    .collect();
                let mut acts = PackedActs::default();
                acts.pack(&x, nb, n_tok);
                let mut got = vec![[f32::NAN; ROWS]; n_tok.div_ceil(TOKENS) * TOKENS];
                k.gemm_tile(ty, rows, &acts, &mut scratch, |g, sums| {
                    for (r, s) in sums.iter().enumerate() {
                        for (t, &v) in s.iter().enumerate() {
                            got[g * TOKENS + t][r] = v;
                        }
                    }
                });
                for (r, row) in rows.iter().enumerate() {
                    for t in 0..n_tok {
                        let xt = &x[t * nb..(t + 1) * nb];
                        check_close(
                            &format!("gemm {ty} cols={cols} tokens={n_tok} row {r} token {t}"),
                            got[t][r],
                            vec_dot_q8(ty, row, xt),
                            abs_terms(ty, row, xt),
                        );
                    }
                }
            }
        }
    }
}

/// The one-token K-quant kernels against `Q8_K` activations, on every path this CPU runs,
/// against the scalar reference, on the K-quant row widths.
#[test]
fn q8k_dot_matches_reference() {
    use marco_quantize::blocks::BlockQ8K;
    use marco_quantize::dot::vec_dot_q8k;
    let mut rng = Rng(0x0008_0c0d);
    for ty in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        for cols in COLS_256 {
            let w = random_row(&mut rng, ty, cols);
            let x: Vec<f32> = (0..cols)
                .map(|i| (1.0 + ((i / 256) % 5) as f32) * rng.unit())
                .collect();
            let mut bytes = vec![0u8; GgmlType::Q8_K.row_bytes(cols as u64).unwrap() as usize];
            quantize_row(GgmlType::Q8_K, &x, &mut bytes);
            let xq: Vec<BlockQ8K> = marco_quantize::blocks::as_blocks::<BlockQ8K>(&bytes)
                .unwrap()
                .to_vec();
            let want = vec_dot_q8k(ty, &w, &xq).unwrap();
            // Σ|w·x| of the decoded values: the scale of the rounding differences.
            let mut wf = vec![0.0f32; cols];
            dequantize_row(ty, &w, &mut wf);
            let mut xf = vec![0.0f32; cols];
            dequantize_row(GgmlType::Q8_K, &bytes, &mut xf);
            let terms: f64 = wf
                .iter()
                .zip(&xf)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
            // And the reference agrees with the dot of the decoded values.
            let decoded: f64 = wf.iter().zip(&xf).map(|(&a, &b)| a as f64 * b as f64).sum();
            check_close(
                &format!("reference {ty} cols={cols}"),
                want,
                decoded as f32,
                terms,
            );
            for k in kernel_sets() {
                let label = format!("{} {ty} cols={cols} q8k", k.name());
                check_close(&label, k.dot_q8k(ty, &w, &xq), want, terms);
            }
        }
    }
}

/// `Kernels::argmax` on every path against the plain first-maximum loop: ties, NaN (first
/// included), all −∞, lengths around the lane counts and the vocabulary's.
#[test]
fn argmax_matches_the_plain_loop_on_every_path() {
    fn plain(v: &[f32]) -> u32 {
        let mut best = 0usize;
        for (i, &x) in v.iter().enumerate() {
            if x > v[best] {
                best = i;
            }
        }
        best as u32
    }
    let mut rng = Rng(0xa4a4_0001_0000_0001);
    for len in (1..70).chain([151_936]) {
        for case in 0..8 {
            let mut v: Vec<f32> = (0..len)
                .map(|_| {
                    let r = rng.next();
                    match case {
                        0..3 => (r % 4) as f32,
                        3 | 4 if r.is_multiple_of(11) => f32::NAN,
                        5 => f32::NEG_INFINITY,
                        _ => rng.unit(),
                    }
                })
                .collect();
            if case == 7 {
                v[0] = f32::NAN;
            }
            for k in kernel_sets() {
                assert_eq!(
                    k.argmax(&v),
                    plain(&v),
                    "{} len {len} case {case}",
                    k.name()
                );
            }
        }
    }
}

/// Single-thread GB/s of the one-token chunk kernels alone (the decode path), per chunked
/// type: rows that stay in L2 (compute-bound) and 512 MB of rows in 2 MiB pages (memory-
/// bound). Prints only: `cargo test --release -p marco --test kernels -- --ignored
/// --nocapture chunk_throughput` (`BENCH_TYPE=Q5_0` for one type).
#[test]
#[ignore = "a throughput printout for tuning, not a check; run by hand"]
fn bench_chunk_throughput() {
    use marco_quantize::chunks::pack_rows;
    let Some(k) = Kernels::forced(Isa::Avx512Vnni) else {
        return; // the chunk kernels are AVX-512 VNNI only
    };
    let only = std::env::var("BENCH_TYPE").ok();
    let mut rng = Rng(7);
    for (ty, rows, cols) in [
        (GgmlType::Q5_0, 4864, 896),
        (GgmlType::Q8_0, 4864, 896),
        (GgmlType::Q4_K, 896, 4864),
        (GgmlType::Q6_K, 896, 4864),
    ] {
        if only.as_ref().is_some_and(|o| *o != ty.to_string()) || !k.has_chunks(ty, cols) {
            continue;
        }
        let rb = ty.row_bytes(cols as u64).unwrap() as usize;
        let big_rows = (512 << 20) / rb / 64 * 64;
        let mut buf = marco::backend::cpu::memory::HugeBuf::zeroed(big_rows * rb).unwrap();
        let packed = buf.as_mut_slice();
        for part in packed.chunks_mut(rows * rb) {
            let w = random_row(&mut rng, ty, cols * (part.len() / rb));
            assert!(pack_rows(ty, rb, &w, part));
        }
        let x = random_acts(&mut rng, cols);
        let xf: Vec<f32> = (0..cols).map(|i| (i % 7) as f32 - 3.0).collect();
        let l2_rows = (256 << 10) / rb / 4 * 4;
        let (l2, mem) = chunked_gbs(k, ty, rb, packed, &chunk_acts(&x, &xf), l2_rows, 40);
        println!("{ty} {rows}x{cols} chunked: L2 {l2:6.2}  512MB {mem:6.2} GB/s");
    }
}

/// One token's activations in chunk order and as `Q8_K`, as the CPU backend prepares them.
fn chunk_acts(x: &[BlockQ8x32], xf: &[f32]) -> marco_quantize::chunks::ActChunks {
    let mut acts = marco_quantize::chunks::ActChunks::default();
    acts.fill(x);
    acts.fill_steps();
    acts.fill_q8k(xf);
    acts
}

/// GB/s of the one-token chunk kernel over the packed rows of `rb` bytes in `packed`, 64 rows
/// to a call as the CPU backend decodes: the first `l2_rows` rows `reps` times over (they stay
/// in L2), and all of them once (from memory).
fn chunked_gbs(
    k: Kernels,
    ty: GgmlType,
    rb: usize,
    packed: &[u8],
    acts: &marco_quantize::chunks::ActChunks,
    l2_rows: usize,
    reps: usize,
) -> (f64, f64) {
    use std::hint::black_box;
    let mut out = [0.0f32; 64];
    let mut run = |n_rows: usize| {
        for rows in packed[..n_rows * rb].chunks(64 * rb) {
            let out = &mut out[..rows.len() / rb];
            k.dot_chunks(ty, black_box(rows), acts, out);
            black_box(&out);
        }
    };
    let l2 = best_gbs(rb, l2_rows, reps, 5, || run(l2_rows));
    let all = packed.len() / rb;
    (l2, best_gbs(rb, all, 1, 2, || run(all)))
}
