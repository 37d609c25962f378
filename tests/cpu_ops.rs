//! The CPU backend's copied and repacked (four-block chunk) matmul weights, through the
//! `Backend` trait: a matmul or embedding of a weight prepared for matmul gives what the same
//! kernels give on the mapped GGUF rows, for one token (the chunk kernel) and for prompts
//! (rows unpacked again), on every kernel path this CPU runs.

mod common;

use std::sync::Arc;

use marco::backend::cpu::kernels::{Isa, Kernels};
use marco::backend::cpu::CpuBackend;
use marco::backend::{Backend, BufId, MatJob};
use marco::gguf::{GgufFile, GgufWriter, TensorDecl};
use marco_quantize::quants::quantize_row;
use marco_quantize::rng::SplitMix64;
use marco_quantize::GgmlType;

fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| r.next_f32() * 2.0 - 1.0).collect()
}

/// A GGUF with an F32 input table `x` (`n` rows of `cols`) and a `Q4_0` matrix `w4`
/// (`rows` × `cols`), written to a temporary file and opened.
fn synth(cols: usize, rows: usize, n: usize) -> Arc<GgufFile> {
    // One file per call: the tests of this file run in parallel in one process.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("marco-cpu-ops-{}-{call}.gguf", std::process::id());
    let path = std::env::temp_dir().join(name);
    let decls = vec![
        TensorDecl::new("x".to_string(), &[cols as u64, n as u64], GgmlType::F32),
        TensorDecl::new(
            "w4".to_string(),
            &[cols as u64, rows as u64],
            GgmlType::Q4_0,
        ),
    ];
    let mut w = GgufWriter::create(&path, Vec::new(), decls, 32).unwrap();
    let x: Vec<u8> = noise(cols * n, 1)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    w.write_tensor("x", &x).unwrap();
    let rb = GgmlType::Q4_0.row_bytes(cols as u64).unwrap() as usize;
    let mut q = vec![0u8; rb * rows];
    for (src, dst) in noise(cols * rows, 2)
        .chunks_exact(cols)
        .zip(q.chunks_exact_mut(rb))
    {
        quantize_row(GgmlType::Q4_0, src, dst);
    }
    w.write_tensor("w4", &q).unwrap();
    w.finish().unwrap();
    let file = GgufFile::open(&path).unwrap();
    std::fs::remove_file(&path).ok();
    Arc::new(file)
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
        (&model, &down_q6k, &inputs_4864),            // Q6_K: blocks grouped as they are
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
