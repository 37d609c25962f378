//! The CPU backend through the `Backend` trait, on every kernel path this CPU runs:
//! - copied and repacked (four-block chunk) matmul weights: a matmul or embedding of a weight
//!   prepared for matmul gives what the same kernels give on the mapped GGUF rows, for one
//!   token (the chunk kernel) and for prompts (rows unpacked again);
//! - attention over the KV cache (its block-major layout) against a plain f64 reference.

mod common;

use std::sync::Arc;

use marco::backend::cpu::kernels::{Isa, Kernels};
use marco::backend::cpu::CpuBackend;
use marco::backend::{AttnShape, Backend, BufId, MatJob};
use marco::gguf::GgufFile;
use marco_quantize::quants::quantize_row;
use marco_quantize::rng::SplitMix64;
use marco_quantize::GgmlType;

fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| r.next_f32() * 2.0 - 1.0).collect()
}

/// A GGUF with an F32 input table `x` (`n` rows of `cols`) and a `Q4_0` matrix `w4`
/// (`rows` × `cols`).
fn synth(cols: usize, rows: usize, n: usize) -> Arc<GgufFile> {
    let rb = GgmlType::Q4_0.row_bytes(cols as u64).unwrap() as usize;
    let mut q = vec![0u8; rb * rows];
    for (src, dst) in noise(cols * rows, 2)
        .chunks_exact(cols)
        .zip(q.chunks_exact_mut(rb))
    {
        quantize_row(GgmlType::Q4_0, src, dst);
    }
    common::temp_gguf(
        "cpu-ops",
        &[
            (
                "x",
                vec![cols as u64, n as u64],
                GgmlType::F32,
                f32_bytes(&noise(cols * n, 1)),
            ),
            ("w4", vec![cols as u64, rows as u64], GgmlType::Q4_0, q),
        ],
    )
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `weight` of `file` times the first `n` rows of `x`, on a backend with `kernels`, the
/// weight first prepared for matmul (repacked where the path does that) if `prepare`.
fn matmul(
    kernels: Kernels,
    file: &Arc<GgufFile>,
    weight: &str,
    inputs: &Arc<GgufFile>,
    n: usize,
    prepare: bool,
) -> Vec<f32> {
    let mut be = CpuBackend::with_kernels(1, kernels);
    let w = be.load_weight(file, weight).unwrap();
    if prepare {
        be.prepare_matmul(&[w, w]).unwrap();
    }
    let info = file.tensor_info(weight).unwrap();
    let (cols, rows) = (info.row_len() as usize, info.n_rows() as usize);
    let x = input(&mut be, inputs, n, cols);
    let out = be.alloc(n * rows).unwrap();
    let job = MatJob {
        weight: w,
        bias: None,
        out,
        accumulate: false,
    };
    be.matmul(x, n, &[job]).unwrap();
    let mut y = vec![0.0; n * rows];
    be.read(out, 0, &mut y).unwrap();
    y
}

fn input(be: &mut CpuBackend, inputs: &Arc<GgufFile>, n: usize, cols: usize) -> BufId {
    let table = be.load_weight(inputs, "x").unwrap();
    let buf = be.alloc(n * cols).unwrap();
    be.embed(table, &(0..n as u32).collect::<Vec<_>>(), buf)
        .unwrap();
    buf
}

/// sum((got - want)^2) / sum(want^2).
fn nmse(got: &[f32], want: &[f32]) -> f64 {
    let err: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).powi(2))
        .sum();
    err / want
        .iter()
        .map(|&w| (w as f64).powi(2))
        .sum::<f64>()
        .max(1e-30)
}

fn kernel_sets() -> Vec<Kernels> {
    Isa::ALL.into_iter().filter_map(Kernels::forced).collect()
}

#[test]
fn prepared_matmul_weights_give_the_same_products() {
    let model = Arc::new(GgufFile::open(&common::default_model_path()).unwrap());
    // A row count that leaves one row after the last group of four (packed alone), and more
    // rows than one task's batch of kernel calls holds (64) on one thread.
    let small = synth(256, 1041, 20);
    let inputs_896 = synth(896, 8, 20);
    let inputs_4864 = synth(4864, 8, 20);
    let down = |ty| {
        let t = model
            .tensors()
            .iter()
            .find(|t| t.name.ends_with("ffn_down.weight") && t.ty == ty);
        t.expect("the default model has Q4_K and Q6_K ffn_down")
            .name
            .clone()
    };
    let (down_q4k, down_q6k) = (down(GgmlType::Q4_K), down(GgmlType::Q6_K));
    let cases: [(&Arc<GgufFile>, &str, &Arc<GgufFile>); 5] = [
        (&model, "blk.0.attn_q.weight", &inputs_896), // Q5_0
        (&model, "blk.0.attn_v.weight", &inputs_896), // Q8_0
        (&small, "w4", &small),                       // Q4_0
        (&model, &down_q4k, &inputs_4864),            // Q4_K
        (&model, &down_q6k, &inputs_4864),            // Q6_K: super-blocks in steps
    ];
    let mut chunked = 0;
    for k in kernel_sets() {
        for (file, weight, inputs) in cases {
            let info = file.tensor_info(weight).unwrap();
            chunked += usize::from(k.has_chunks(info.ty, info.row_len() as usize));
            for n in [1, 3, 8, 20] {
                let want = matmul(k, file, weight, inputs, n, false);
                let got = matmul(k, file, weight, inputs, n, true);
                let what = format!("{} {weight} ({}) x {n} tokens", k.name(), info.ty);
                if n == 1 {
                    // One token: another kernel. For the 32-value types and Q6_K the same
                    // exact integer sums in another order; for Q4_K also other activations
                    // (32-value blocks instead of the mapped path's Q8_K), so within 8-bit
                    // rounding noise.
                    let bound = if info.ty == GgmlType::Q4_K {
                        1e-4
                    } else {
                        1e-9
                    };
                    let e = nmse(&got, &want);
                    assert!(e <= bound, "{what}: normalized MSE {e:e} > {bound:e}");
                } else {
                    // Prompts: the same kernels on the rows unpacked again, bit for bit.
                    assert_eq!(got, want, "{what}");
                }
            }
        }
    }
    if kernel_sets().iter().any(|k| k.isa() == Isa::Avx512Vnni) {
        assert_eq!(chunked, 5, "every type repacked on the AVX-512 path");
    }
}

#[test]
fn a_prepared_table_embeds_the_same_rows() {
    let small = synth(256, 41, 1);
    for k in kernel_sets() {
        let rows = |prepare: bool| {
            let mut be = CpuBackend::with_kernels(1, k);
            let w = be.load_weight(&small, "w4").unwrap();
            if prepare {
                be.prepare_matmul(&[w, w]).unwrap();
            }
            // Rows of a group, and the last row, which is alone.
            let buf = be.alloc(4 * 256).unwrap();
            be.embed(w, &[0, 39, 40, 7], buf).unwrap();
            let mut y = vec![0.0; 4 * 256];
            be.read(buf, 0, &mut y).unwrap();
            y
        };
        assert_eq!(rows(true), rows(false), "{}", k.name());
    }
}

/// A GGUF of F32 tables (`name`, columns, rows, seed) of noise, with the tables' values.
fn f32_tables(tables: &[(&str, usize, usize, u64)]) -> (Arc<GgufFile>, Vec<Vec<f32>>) {
    let values: Vec<Vec<f32>> = tables
        .iter()
        .map(|&(_, cols, rows, seed)| noise(cols * rows, seed))
        .collect();
    let tensors: Vec<_> = tables
        .iter()
        .zip(&values)
        .map(|(&(n, cols, rows, _), v)| {
            (
                n,
                vec![cols as u64, rows as u64],
                GgmlType::F32,
                f32_bytes(v),
            )
        })
        .collect();
    (common::temp_gguf("cpu-attn", &tensors), values)
}

/// `softmax(q·k / sqrt(hd)) · v` in f64 for every token and head: token `t` (position `t`)
/// attends to positions `0..=t`; `q` rows of `n_head·hd`, `k` and `v` rows of `n_head_kv·hd`.
fn attention_reference(shape: AttnShape, q: &[f32], k: &[f32], v: &[f32], n: usize) -> Vec<f64> {
    let hd = shape.head_dim;
    let (q_dim, kv_dim) = (shape.n_head * hd, shape.n_head_kv * hd);
    let group = shape.n_head / shape.n_head_kv;
    let mut out = vec![0.0; n * q_dim];
    for t in 0..n {
        for h in 0..shape.n_head {
            let kv = (h / group) * hd;
            let qh = &q[t * q_dim + h * hd..][..hd];
            let scores: Vec<f64> = (0..=t)
                .map(|j| {
                    let kj = &k[j * kv_dim + kv..][..hd];
                    let dot: f64 = qh.iter().zip(kj).map(|(&a, &b)| a as f64 * b as f64).sum();
                    dot / (hd as f64).sqrt()
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = p.iter().sum();
            for c in 0..hd {
                let o: f64 = (0..=t).map(|j| p[j] * v[j * kv_dim + kv + c] as f64).sum();
                out[t * q_dim + h * hd + c] = o / sum;
            }
        }
    }
    out
}

/// Prompts and single tokens (`(tokens, first position)` in turn) through `attention`, with
/// grouped-query shapes, a head size that is not a power of two, contexts that are not whole
/// blocks of the cache and chunks that cross a block, on two threads, for two layers in turn
/// with inputs of their own (as a model calls it): every output within 1e-5 of the reference
/// (the sums are f32).
#[test]
fn attention_matches_a_reference_for_prompts_and_single_tokens() {
    let cases = [
        ((6, 2, 40), 70, vec![(65, 0), (1, 65), (4, 66)]),
        ((14, 2, 64), 4096, vec![(9, 0), (1, 9), (60, 10), (1, 70)]),
        ((4, 4, 128), 130, vec![(100, 0), (1, 100), (2, 101)]),
    ];
    const LAYERS: usize = 2;
    for (i, ((n_head, n_head_kv, head_dim), max_ctx, chunks)) in cases.into_iter().enumerate() {
        let shape = AttnShape {
            n_head,
            n_head_kv,
            head_dim,
        };
        let (q_dim, kv_dim) = (n_head * head_dim, n_head_kv * head_dim);
        let total: usize = chunks.iter().map(|c| c.0).sum();
        let seed = 40 + 6 * i as u64;
        let names = [["q0", "k0", "v0"], ["q1", "k1", "v1"]];
        let specs: Vec<(&str, usize, usize, u64)> = (0..LAYERS)
            .flat_map(|l| {
                let seed = seed + 3 * l as u64;
                let [q, k, v] = names[l];
                [
                    (q, q_dim, total, seed),
                    (k, kv_dim, total, seed + 1),
                    (v, kv_dim, total, seed + 2),
                ]
            })
            .collect();
        let (inputs, values) = f32_tables(&specs);
        let want: Vec<Vec<f64>> = (0..LAYERS)
            .map(|l| {
                let [q, k, v] = [0, 1, 2].map(|j| &values[3 * l + j]);
                attention_reference(shape, q, k, v, total)
            })
            .collect();
        for kernels in kernel_sets() {
            let mut be = CpuBackend::with_kernels(2, kernels);
            be.alloc_kv_cache(LAYERS, max_ctx, kv_dim).unwrap();
            let tables = names.map(|layer| layer.map(|n| be.load_weight(&inputs, n).unwrap()));
            let bufs = [q_dim, kv_dim, kv_dim].map(|d| be.alloc(total * d).unwrap());
            let out = be.alloc(total * q_dim).unwrap();
            let mut got = vec![vec![0.0f32; total * q_dim]; LAYERS];
            for &(n, pos0) in &chunks {
                let ids: Vec<u32> = (pos0..pos0 + n).map(|p| p as u32).collect();
                for (l, got) in got.iter_mut().enumerate() {
                    for (table, buf) in tables[l].iter().zip(bufs) {
                        be.embed(*table, &ids, buf).unwrap();
                    }
                    be.attention(l, bufs[0], bufs[1], bufs[2], out, n, pos0, shape)
                        .unwrap();
                    be.read(out, 0, &mut got[pos0 * q_dim..(pos0 + n) * q_dim])
                        .unwrap();
                }
            }
            let (got, want) = (got.concat(), want.concat());
            for (j, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - w).abs() <= 1e-5,
                    "{shape:?}, max_ctx {max_ctx}, {}: layer {}, output {} (token {}) is {g}, \
                     not {w}",
                    kernels.isa().name(),
                    j / (total * q_dim),
                    j % (total * q_dim),
                    j % (total * q_dim) / q_dim
                );
            }
        }
    }
}
