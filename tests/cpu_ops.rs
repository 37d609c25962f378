//! The CPU backend's repacked (four-block chunk) weights, through the `Backend` trait: a
//! matmul or embedding of a weight prepared for matmul gives what the same kernels give on
//! the mapped GGUF rows, for one token (the chunk kernel) and for prompts (rows unpacked
//! again), on every kernel path this CPU runs.

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
    let path = std::env::temp_dir().join(format!("marco-cpu-ops-{}.gguf", std::process::id()));
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
        be.prepare_matmul(w).unwrap();
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

fn kernel_sets() -> Vec<Kernels> {
    Isa::ALL.into_iter().filter_map(Kernels::forced).collect()
}

#[test]
fn prepared_matmul_weights_give_the_same_products() {
    let model = Arc::new(GgufFile::open(&common::default_model_path()).unwrap());
    let small = synth(256, 40, 20);
    let inputs_896 = synth(896, 8, 20);
    let cases: [(&Arc<GgufFile>, &str, &Arc<GgufFile>); 3] = [
        (&model, "blk.0.attn_q.weight", &inputs_896), // Q5_0
        (&model, "blk.0.attn_v.weight", &inputs_896), // Q8_0
        (&small, "w4", &small),                       // Q4_0
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
                    // One token: another kernel, the same exact integer sums in another
                    // summation order.
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                            "{what}: {g} vs {w}"
                        );
                    }
                } else {
                    // Prompts: the same kernels on the rows unpacked again, bit for bit.
                    assert_eq!(got, want, "{what}");
                }
            }
        }
    }
    if kernel_sets().iter().any(|k| k.isa() == Isa::Avx512Vnni) {
        assert_eq!(chunked, 3, "every case repacked on the AVX-512 path");
    }
}

#[test]
fn a_prepared_table_embeds_the_same_rows() {
    let small = synth(256, 40, 1);
    for k in kernel_sets() {
        let rows = |prepare: bool| {
            let mut be = CpuBackend::with_kernels(1, k);
            let w = be.load_weight(&small, "w4").unwrap();
            if prepare {
                be.prepare_matmul(w).unwrap();
            }
            let buf = be.alloc(3 * 256).unwrap();
            be.embed(w, &[0, 39, 7], buf).unwrap();
            let mut y = vec![0.0; 3 * 256];
            be.read(buf, 0, &mut y).unwrap();
            y
        };
        assert_eq!(rows(true), rows(false), "{}", k.name());
    }
}
