//! Each GPU op against the CPU backend, both driven through the `Backend` trait, on real
//! tensors of the default model and on small synthetic GGUFs with odd shapes.
//!
//! These run on any Vulkan/Metal/DX12 adapter, lavapipe (software Vulkan) included, and fail,
//! rather than skip, when there is none. Inputs reach both backends the same way: as rows of an
//! F32 table looked up with `embed`, which is exact on both.
//!
//! Bounds: float ops (norm, RoPE, attention, elementwise) within a normalized MSE of 1e-6 of
//! the CPU. Matmuls: tight against an f64 matmul over the dequantized weights (the GPU
//! dequantizes to f32 and accumulates in f32), loose against the CPU (which quantizes the
//! activations to 8 bits).

mod common;

use std::sync::Arc;

use marco::backend::cpu::CpuBackend;
use marco::backend::gpu::{GpuBackend, GpuOptions, MatmulStyle};
use marco::backend::{AttnShape, Backend, BackendKind, BufId, MatJob, WeightId};
use marco::engine::{Engine, EngineOptions};
use marco::gguf::GgufFile;
use marco::model::Logits;
use marco_quantize::dequant::dequantize_row;
use marco_quantize::quants::quantize_row;
use marco_quantize::GgmlType;

const FLOAT_NMSE: f64 = 1e-6;
/// GPU matmul against the f64 matmul of the same dequantized weights: only f32 rounding.
const MATMUL_F32_NMSE: f64 = 1e-9;
/// GPU matmul against the CPU, whose 8-bit activations add about 1e-5 of relative noise.
const MATMUL_CPU_NMSE: f64 = 2e-4;

// ---------------------------------------------------------------- helpers

fn gpu_with(opts: GpuOptions) -> GpuBackend {
    GpuBackend::new(&opts).unwrap_or_else(|e| {
        panic!(
            "no usable GPU adapter ({e:#}): install a Vulkan driver, e.g. \
             `apt-get install mesa-vulkan-drivers` for software Vulkan (lavapipe)"
        )
    })
}

fn gpu() -> GpuBackend {
    gpu_with(GpuOptions::default())
}

fn gpu_styled(style: MatmulStyle, max_chunk_bytes: Option<u64>) -> GpuBackend {
    gpu_with(GpuOptions {
        matmul_style: Some(style),
        max_chunk_bytes,
        ..GpuOptions::default()
    })
}

const STYLES: [MatmulStyle; 2] = [MatmulStyle::Gpu, MatmulStyle::Software];

fn model() -> Arc<GgufFile> {
    Arc::new(GgufFile::open(&common::default_model_path()).expect("opening the default model"))
}

/// Deterministic values in about [-scale, scale] (an LCG: no rand dependency).
fn noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// sum((got - want)^2) / sum(want^2).
fn nmse(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let err: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|&w| (w as f64).powi(2)).sum();
    err / norm.max(1e-30)
}

fn assert_close(what: &str, got: &[f32], want: &[f32], bound: f64) {
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{what}: non-finite output"
    );
    let e = nmse(got, want);
    eprintln!("{what}: normalized MSE {e:.2e}");
    assert!(e <= bound, "{what}: normalized MSE {e:e} > {bound:e}");
}

/// A synthetic tensor: name, (cols, rows) and type, from f32 values.
struct Synth {
    name: String,
    cols: usize,
    rows: usize,
    ty: GgmlType,
    values: Vec<f32>,
    /// Written with one dimension (norms, biases), which backends keep as f32 vectors.
    one_d: bool,
}

impl Synth {
    fn new(name: &str, cols: usize, rows: usize, ty: GgmlType, seed: u64) -> Synth {
        Synth {
            name: name.to_string(),
            cols,
            rows,
            ty,
            values: noise(cols * rows, seed, 1.0),
            one_d: false,
        }
    }

    fn vector(name: &str, values: Vec<f32>) -> Synth {
        Synth {
            name: name.to_string(),
            cols: values.len(),
            rows: 1,
            ty: GgmlType::F32,
            values,
            one_d: true,
        }
    }

    fn dims(&self) -> Vec<u64> {
        if self.one_d {
            vec![self.cols as u64]
        } else {
            vec![self.cols as u64, self.rows as u64]
        }
    }

    fn encode(&self) -> Vec<u8> {
        let row_bytes = self.ty.row_bytes(self.cols as u64).unwrap() as usize;
        let mut out = vec![0u8; row_bytes * self.rows];
        for (src, dst) in self
            .values
            .chunks_exact(self.cols)
            .zip(out.chunks_exact_mut(row_bytes))
        {
            quantize_row(self.ty, src, dst);
        }
        out
    }
}

/// Writes `tensors` to a temporary GGUF and opens it.
fn synth_file(tag: &str, tensors: &[Synth]) -> Arc<GgufFile> {
    let tensors: Vec<_> = tensors
        .iter()
        .map(|t| (t.name.as_str(), t.dims(), t.ty, t.encode()))
        .collect();
    common::temp_gguf(&format!("gpu-ops-{tag}"), &tensors)
}

/// Rows of a tensor dequantized to f32, as a reference.
fn dequantized(file: &GgufFile, name: &str) -> (Vec<f32>, usize, usize) {
    let info = file.tensor_info(name).unwrap();
    let (cols, rows) = (info.row_len() as usize, info.n_rows() as usize);
    let data = file.data_for(info);
    let rb = data.len() / rows;
    let mut out = vec![0.0f32; cols * rows];
    for (src, dst) in data.chunks_exact(rb).zip(out.chunks_exact_mut(cols)) {
        dequantize_row(info.ty, src, dst);
    }
    (out, cols, rows)
}

/// `y[t, r] = w[r, :] . x[t, :] (+ b[r])` in f64.
fn reference_matmul(w: &[f32], cols: usize, x: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let rows = w.len() / cols;
    let mut y = Vec::with_capacity(rows * (x.len() / cols));
    for xt in x.chunks_exact(cols) {
        for (r, wr) in w.chunks_exact(cols).enumerate() {
            let d: f64 = wr.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
            y.push((d + bias.map_or(0.0, |b| b[r] as f64)) as f32);
        }
    }
    y
}

/// A buffer of `be` holding `values` (rows of `width`), via `embed` of an F32 table.
fn input(be: &mut dyn Backend, table: &Arc<GgufFile>, name: &str, n: usize) -> BufId {
    let id = be.load_weight(table, name).unwrap();
    let width = table.tensor_info(name).unwrap().row_len() as usize;
    let buf = be.alloc(n * width).unwrap();
    let ids: Vec<u32> = (0..n as u32).collect();
    be.embed(id, &ids, buf).unwrap();
    buf
}

fn read(be: &mut dyn Backend, buf: BufId, len: usize) -> Vec<f32> {
    let mut v = vec![0.0; len];
    be.read(buf, 0, &mut v).unwrap();
    v
}

/// An F32 table `name` of `n` rows of `width` noise values.
fn table(name: &str, width: usize, n: usize, seed: u64) -> Synth {
    let mut t = Synth::new(name, width, n, GgmlType::F32, seed);
    t.values = noise(width * n, seed, 2.0);
    t
}

// ---------------------------------------------------------------- matmul

/// Runs `weight` (with `bias`) of `file` on `n` tokens of `x` and returns the output.
fn run_matmul(
    be: &mut dyn Backend,
    file: &Arc<GgufFile>,
    weight: &str,
    bias: Option<&str>,
    inputs: &Arc<GgufFile>,
    x_name: &str,
    n: usize,
) -> Vec<f32> {
    let w = be.load_weight(file, weight).unwrap();
    let b = bias.map(|b| be.load_weight(file, b).unwrap());
    let rows = file.tensor_info(weight).unwrap().n_rows() as usize;
    let x = input(be, inputs, x_name, n);
    let out = be.alloc(n * rows).unwrap();
    let job = MatJob {
        weight: w,
        bias: b,
        out,
        accumulate: false,
    };
    be.matmul(x, n, &[job]).unwrap();
    read(be, out, n * rows)
}

fn check_matmul_case(
    file: &Arc<GgufFile>,
    weight: &str,
    bias: Option<&str>,
    token_counts: &[usize],
    max_chunk: Option<u64>,
    vs_cpu: bool,
) {
    let (w, cols, _) = dequantized(file, weight);
    let b = bias.map(|b| dequantized(file, b).0);
    let max_n = *token_counts.iter().max().unwrap();
    let inputs = synth_file(
        &format!("x-{}", weight.replace('.', "_")),
        &[table("x", cols, max_n, 7)],
    );
    let x_all = dequantized(&inputs, "x").0;
    for &n in token_counts {
        let want = reference_matmul(&w, cols, &x_all[..n * cols], b.as_deref());
        let cpu = vs_cpu
            .then(|| run_matmul(&mut CpuBackend::new(0), file, weight, bias, &inputs, "x", n));
        for style in STYLES {
            let mut g = gpu_styled(style, max_chunk);
            let got = run_matmul(&mut g, file, weight, bias, &inputs, "x", n);
            let what = format!("{weight} x {n} tokens, {style:?}");
            assert_close(&what, &got, &want, MATMUL_F32_NMSE);
            if let Some(cpu) = &cpu {
                assert_close(&format!("{what} vs CPU"), &got, cpu, MATMUL_CPU_NMSE);
            }
        }
    }
}

/// The first 2-D tensor of type `ty` in the model.
fn tensor_of_type(file: &GgufFile, ty: GgmlType) -> String {
    file.tensors()
        .iter()
        .find(|t| t.ty == ty && t.dims.len() == 2)
        .unwrap_or_else(|| panic!("the default model has no {ty} matrix"))
        .name
        .clone()
}

#[test]
fn matmul_q5_0_and_q8_0_with_bias_on_model_tensors() {
    let m = model();
    let q = "blk.0.attn_q.weight";
    check_matmul_case(&m, q, Some("blk.0.attn_q.bias"), &[1, 2, 11], None, true);
    let v = "blk.0.attn_v.weight";
    check_matmul_case(&m, v, Some("blk.0.attn_v.bias"), &[1, 9], None, true);
}

#[test]
fn matmul_q6_k_and_q4_k_on_model_tensors() {
    let m = model();
    for ty in [GgmlType::Q6_K, GgmlType::Q4_K] {
        let name = tensor_of_type(&m, ty);
        check_matmul_case(&m, &name, None, &[1, 3], None, true);
    }
}

#[test]
fn matmul_output_matrix_is_split_across_buffers() {
    let m = model();
    let name = "output.weight";
    // A 64 MiB cap cuts the 153 MB (re-laid) Q8_0 matrix into three chunks, whatever the
    // device's own limit; the natural split is checked on devices with 128 MiB bindings.
    for cap in [None, Some(64 << 20)] {
        let mut g = gpu_with(GpuOptions {
            max_chunk_bytes: cap,
            ..GpuOptions::default()
        });
        let w = g.load_weight(&m, name).unwrap();
        eprintln!("{name}: {} chunks with cap {cap:?}", g.weight_chunks(w));
        assert!(g.weight_chunks(w) >= if cap.is_some() { 3 } else { 1 });
    }
    check_matmul_case(&m, name, None, &[1], Some(64 << 20), true);
}

#[test]
fn matmul_every_format_on_odd_shapes_and_split_weights() {
    // (type, cols, rows): rows not a multiple of any workgroup, F32/F16 rows not a multiple
    // of 4 or 16, quantized rows of several blocks.
    let cases = [
        (GgmlType::F32, 13, 37),
        (GgmlType::F16, 33, 29),
        (GgmlType::Q4_0, 96, 37),
        (GgmlType::Q5_0, 96, 37),
        (GgmlType::Q8_0, 96, 37),
        (GgmlType::Q4_K, 512, 19),
        (GgmlType::Q6_K, 512, 19),
    ];
    for (i, &(ty, cols, rows)) in cases.iter().enumerate() {
        let name = format!("w_{ty}");
        let bias = Synth::vector("b.vec", noise(rows, 99, 0.5));
        let file = synth_file(
            &name,
            &[Synth::new(&name, cols, rows, ty, i as u64 + 1), bias],
        );
        // About five rows per chunk: several chunks, the last one short (but room for a row
        // of the F32 input table, which the cap applies to as well).
        let relaid = ty.row_bytes(cols as u64).unwrap() + 2 * (cols / ty.block_size()) as u64;
        let cap = (5 * relaid).max(4 * cols as u64);
        let counts = [1, 2, 3, 11];
        let vs_cpu = cols % 32 == 0;
        check_matmul_case(&file, &name, Some("b.vec"), &counts, None, vs_cpu);
        check_matmul_case(&file, &name, None, &counts, Some(cap), false);
    }
}

#[test]
fn matmul_full_batch_of_256_tokens() {
    let file = synth_file("batch", &[Synth::new("w", 128, 41, GgmlType::Q8_0, 3)]);
    check_matmul_case(&file, "w", None, &[256], None, true);
}

#[test]
fn matmul_with_more_workgroups_than_one_dispatch_dimension_allows() {
    // 300,000 rows at 4 rows per matvec workgroup: 75,000 groups, over the 65,535 a dispatch
    // dimension may hold (the dispatch spreads them over x and y).
    let file = synth_file("tall", &[Synth::new("w", 16, 300_000, GgmlType::F32, 5)]);
    let (w, cols, _) = dequantized(&file, "w");
    let inputs = synth_file("tall_x", &[table("x", cols, 1, 3)]);
    let want = reference_matmul(&w, cols, &dequantized(&inputs, "x").0, None);
    let mut g = gpu_styled(MatmulStyle::Gpu, None);
    let got = run_matmul(&mut g, &file, "w", None, &inputs, "x", 1);
    assert_close("300000 x 16 F32, one token", &got, &want, MATMUL_F32_NMSE);
}

#[test]
fn matmul_of_several_jobs_sharing_the_input() {
    let m = model();
    let inputs = synth_file("jobs", &[table("x", 896, 4, 11)]);
    let names = [
        "blk.1.attn_q.weight",
        "blk.1.attn_k.weight",
        "blk.1.attn_v.weight",
    ];
    let run = |be: &mut dyn Backend| -> Vec<Vec<f32>> {
        let x = input(be, &inputs, "x", 4);
        let jobs: Vec<MatJob> = names
            .iter()
            .map(|n| {
                let rows = m.tensor_info(n).unwrap().n_rows() as usize;
                MatJob {
                    weight: be.load_weight(&m, n).unwrap(),
                    bias: None,
                    out: be.alloc(4 * rows).unwrap(),
                    accumulate: false,
                }
            })
            .collect();
        be.matmul(x, 4, &jobs).unwrap();
        jobs.iter()
            .zip(names)
            .map(|(j, n)| read(be, j.out, 4 * m.tensor_info(n).unwrap().n_rows() as usize))
            .collect()
    };
    let cpu = run(&mut CpuBackend::new(0));
    let got = run(&mut gpu());
    for ((g, c), n) in got.iter().zip(&cpu).zip(names) {
        assert_close(n, g, c, MATMUL_CPU_NMSE);
    }
}

/// A residual job (`accumulate`) adds its product to what the output holds: run once
/// overwriting, then once adding, and the output is twice the product, on both backends, for
/// one token (the decode kernels) and for 20 (the prompt kernels).
#[test]
fn matmul_accumulates_into_its_output() {
    let m = model();
    let inputs = synth_file("acc", &[table("x", 896, 20, 13)]);
    let name = "blk.2.attn_output.weight";
    let rows = m.tensor_info(name).unwrap().n_rows() as usize;
    for n in [1, 20] {
        let run = |be: &mut dyn Backend| -> (Vec<f32>, Vec<f32>) {
            let x = input(be, &inputs, "x", n);
            let weight = be.load_weight(&m, name).unwrap();
            let out = be.alloc(n * rows).unwrap();
            let mut job = MatJob {
                weight,
                bias: None,
                out,
                accumulate: false,
            };
            be.matmul(x, n, &[job]).unwrap();
            let once = read(be, out, n * rows);
            job.accumulate = true;
            be.matmul(x, n, &[job]).unwrap();
            (once, read(be, out, n * rows))
        };
        for (label, (once, twice)) in [
            ("cpu", run(&mut CpuBackend::new(0))),
            ("gpu", run(&mut gpu())),
        ] {
            let doubled: Vec<f32> = once.iter().map(|v| 2.0 * v).collect();
            assert_close(&format!("{label} {n} tokens"), &twice, &doubled, 1e-12);
        }
    }
}

// ---------------------------------------------------------------- embedding

fn embed_rows(be: &mut dyn Backend, file: &Arc<GgufFile>, name: &str, ids: &[u32]) -> Vec<f32> {
    let t = be.load_weight(file, name).unwrap();
    let cols = file.tensor_info(name).unwrap().row_len() as usize;
    let out = be.alloc(ids.len() * cols).unwrap();
    be.embed(t, ids, out).unwrap();
    read(be, out, ids.len() * cols)
}

#[test]
fn embed_matches_cpu_exactly_on_model_tables() {
    let m = model();
    let ids = [0, 1, 9707, 151935, 75000, 1];
    for name in ["token_embd.weight", "output.weight"] {
        let want = embed_rows(&mut CpuBackend::new(0), &m, name, &ids);
        for cap in [None, Some(32 << 20)] {
            let mut g = gpu_with(GpuOptions {
                max_chunk_bytes: cap,
                ..GpuOptions::default()
            });
            assert_eq!(
                embed_rows(&mut g, &m, name, &ids),
                want,
                "{name}, cap {cap:?}"
            );
        }
    }
}

#[test]
fn embed_every_format_from_split_tables() {
    let cases = [
        (GgmlType::F32, 13),
        (GgmlType::F16, 33),
        (GgmlType::Q4_0, 64),
        (GgmlType::Q5_0, 64),
        (GgmlType::Q8_0, 64),
        (GgmlType::Q4_K, 256),
        (GgmlType::Q6_K, 256),
    ];
    let ids = [3, 0, 20, 3, 17, 9];
    for (i, &(ty, cols)) in cases.iter().enumerate() {
        let file = synth_file(
            &format!("embed_{ty}"),
            &[Synth::new("t", cols, 21, ty, 40 + i as u64)],
        );
        let (w, _, _) = dequantized(&file, "t");
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&id| w[id as usize * cols..][..cols].to_vec())
            .collect();
        let row = ty.row_bytes(cols as u64).unwrap() + 8;
        let mut g = gpu_with(GpuOptions {
            max_chunk_bytes: Some(4 * row),
            ..GpuOptions::default()
        });
        assert_eq!(embed_rows(&mut g, &file, "t", &ids), want, "{ty}");
    }
}

#[test]
fn embed_rejects_ids_outside_the_table() {
    let file = synth_file("embed_bad", &[Synth::new("t", 32, 4, GgmlType::Q8_0, 1)]);
    let mut g = gpu();
    let t = g.load_weight(&file, "t").unwrap();
    let out = g.alloc(64).unwrap();
    let err = g.embed(t, &[1, 4], out).unwrap_err().to_string();
    assert!(err.contains("token id 4"), "{err}");
}

// ---------------------------------------------------------------- float ops

/// Runs `f` on the CPU and on the GPU and compares what it returns.
fn compare(what: &str, f: impl Fn(&mut dyn Backend) -> Vec<f32>) {
    let want = f(&mut CpuBackend::new(0));
    let got = f(&mut gpu());
    assert_close(what, &got, &want, FLOAT_NMSE);
}

#[test]
fn rms_norm_matches_cpu() {
    let m = model();
    let inputs = synth_file("norm", &[table("x", 896, 7, 5)]);
    compare("rms_norm", |be| {
        let x = input(be, &inputs, "x", 7);
        let w = be.load_weight(&m, "blk.3.ffn_norm.weight").unwrap();
        let out = be.alloc(7 * 896).unwrap();
        be.rms_norm(x, w, 1e-6, 7, 896, out).unwrap();
        read(be, out, 7 * 896)
    });
    // A width that is not a multiple of the workgroup, with a synthetic gain.
    let odd = synth_file(
        "norm_odd",
        &[
            table("x", 300, 3, 6),
            Synth::vector("g.vec", noise(300, 8, 1.5)),
        ],
    );
    compare("rms_norm width 300", |be| {
        let x = input(be, &odd, "x", 3);
        let w = be.load_weight(&odd, "g.vec").unwrap();
        let out = be.alloc(900).unwrap();
        be.rms_norm(x, w, 1e-5, 3, 300, out).unwrap();
        read(be, out, 900)
    });
}

#[test]
fn rope_matches_cpu() {
    // (tokens, heads, head_dim, pos0, freq_base): the default model's shape near the start
    // and deep into the context, and another head size and base.
    let cases = [
        (5, 14, 64, 0, 1e6),
        (3, 2, 64, 3000, 1e6),
        (4, 3, 128, 17, 1e4),
    ];
    for (i, &(n, heads, hd, pos0, base)) in cases.iter().enumerate() {
        let inputs = synth_file(&format!("rope{i}"), &[table("x", heads * hd, n, 9)]);
        compare(&format!("rope case {i}"), |be| {
            be.alloc_kv_cache(1, 4096, 128).unwrap();
            let x = input(be, &inputs, "x", n);
            be.rope(x, n, heads, hd, pos0, base).unwrap();
            read(be, x, n * heads * hd)
        });
    }
}

/// Feeds `chunks` of (tokens, pos0) through attention of one layer; returns all outputs.
fn run_attention(
    be: &mut dyn Backend,
    inputs: &Arc<GgufFile>,
    shape: AttnShape,
    chunks: &[(usize, usize)],
) -> Vec<f32> {
    let kv_dim = shape.n_head_kv * shape.head_dim;
    let q_dim = shape.n_head * shape.head_dim;
    be.alloc_kv_cache(2, 512, kv_dim).unwrap();
    let total: usize = chunks.iter().map(|c| c.0).sum();
    let q_all = input(be, inputs, "q", total);
    let k_all = input(be, inputs, "k", total);
    let v_all = input(be, inputs, "v", total);
    let (q, k, v, out) = (
        be.alloc(256 * q_dim).unwrap(),
        be.alloc(256 * kv_dim).unwrap(),
        be.alloc(256 * kv_dim).unwrap(),
        be.alloc(256 * q_dim).unwrap(),
    );
    let mut result = Vec::new();
    for &(n, pos0) in chunks {
        be.copy(q_all, pos0 * q_dim, q, n * q_dim).unwrap();
        be.copy(k_all, pos0 * kv_dim, k, n * kv_dim).unwrap();
        be.copy(v_all, pos0 * kv_dim, v, n * kv_dim).unwrap();
        be.attention(1, q, k, v, out, n, pos0, shape).unwrap();
        result.extend(read(be, out, n * q_dim));
    }
    result
}

#[test]
fn attention_matches_cpu_for_prompts_and_single_tokens() {
    // The default model's grouped-query shape; plain multi-head attention with a larger head;
    // a prompt longer than one 64-position tile, then single tokens and a short chunk.
    let shapes = [
        (14, 2, 64, vec![(9, 0), (1, 9), (1, 10), (3, 11)]),
        (4, 4, 128, vec![(100, 0), (1, 100), (2, 101)]),
        (8, 1, 32, vec![(70, 0), (1, 70)]),
    ];
    for (i, (n_head, n_head_kv, head_dim, chunks)) in shapes.into_iter().enumerate() {
        let shape = AttnShape {
            n_head,
            n_head_kv,
            head_dim,
        };
        let total: usize = chunks.iter().map(|c| c.0).sum();
        let inputs = synth_file(
            &format!("attn{i}"),
            &[
                table("q", n_head * head_dim, total, 21),
                table("k", n_head_kv * head_dim, total, 22),
                table("v", n_head_kv * head_dim, total, 23),
            ],
        );
        compare(&format!("attention {shape:?}"), |be| {
            run_attention(be, &inputs, shape, &chunks)
        });
    }
}

#[test]
fn attention_refuses_a_full_context() {
    let mut g = gpu();
    g.alloc_kv_cache(1, 4, 8).unwrap();
    let b = g.alloc(64).unwrap();
    let (q, k, v, o) = (
        b,
        g.alloc(64).unwrap(),
        g.alloc(64).unwrap(),
        g.alloc(64).unwrap(),
    );
    let shape = AttnShape {
        n_head: 2,
        n_head_kv: 2,
        head_dim: 4,
    };
    let err = g.attention(0, q, k, v, o, 2, 3, shape).unwrap_err();
    assert!(err.to_string().contains("context full"), "{err}");
}

#[test]
fn swiglu_and_copy_match_cpu() {
    let inputs = synth_file(
        "elementwise",
        &[table("a", 1000, 3, 31), table("b", 1000, 3, 32)],
    );
    compare("swiglu, copy", |be| {
        let a = input(be, &inputs, "a", 3);
        let b = input(be, &inputs, "b", 3);
        let s = be.alloc(3000).unwrap();
        be.swiglu(a, b, 2999, s).unwrap();
        let c = be.alloc(3000).unwrap();
        be.copy(s, 7, c, 2990).unwrap();
        let mut v = read(be, s, 3000);
        v.extend(read(be, c, 3000));
        v
    });
}

// ---------------------------------------------------------------- argmax and read

/// `values` as a buffer of `be`.
fn put(be: &mut dyn Backend, tag: &str, values: Vec<f32>) -> BufId {
    let n = values.len();
    let file = synth_file(tag, &[Synth::vector("v.vec", values)]);
    let id: WeightId = be.load_weight(&file, "v.vec").unwrap();
    let buf = be.alloc(n).unwrap();
    be.embed(id, &[0], buf).unwrap();
    buf
}

#[test]
fn argmax_matches_cpu_and_prefers_the_first_of_ties() {
    let n = 151_936 + 5;
    let mut v = noise(n, 77, 10.0);
    let cases: [(usize, usize); 4] = [(0, 151_936), (5, 151_936), (3, 7), (1000, 2048)];
    let mut g = gpu();
    let mut cpu = CpuBackend::new(0);
    let gb = put(&mut g, "argmax", v.clone());
    let cb = put(&mut cpu, "argmax_cpu", v.clone());
    for (off, len) in cases {
        let want = cpu.argmax(cb, off, len).unwrap();
        assert_eq!(
            g.argmax(gb, off, len).unwrap(),
            want,
            "offset {off}, len {len}"
        );
    }
    // Ties in different first-pass chunks and within one: the lowest index wins.
    v[100_000] = 50.0;
    v[7_000] = 50.0;
    v[7_001] = 50.0;
    v[140_000] = 50.0;
    let gb = put(&mut g, "argmax_ties", v.clone());
    assert_eq!(g.argmax(gb, 0, n).unwrap(), 7_000);
    assert_eq!(g.argmax(gb, 7_001, 100_000).unwrap(), 0);
    assert_eq!(crate_argmax(&v[7_001..107_001]), 0);
}

fn crate_argmax(v: &[f32]) -> u32 {
    marco::generate::argmax(v)
}

#[test]
fn read_at_an_offset_returns_those_values() {
    let values = noise(1000, 5, 3.0);
    let mut g = gpu();
    let b = put(&mut g, "read", values.clone());
    let mut dst = vec![0.0; 17];
    g.read(b, 501, &mut dst).unwrap();
    assert_eq!(dst, values[501..518]);
}

// ---------------------------------------------------------------- whole model

#[test]
fn engine_loads_on_the_gpu_and_predicts_like_the_cpu() {
    let path = common::default_model_path();
    let opts = |backend| EngineOptions {
        backend,
        threads: 0,
        ctx: 256,
    };
    let mut gpu = Engine::load(&path, &opts(BackendKind::Gpu)).expect("loading on the GPU");
    assert!(gpu.model.backend_description().starts_with("gpu ("));
    let mut cpu = Engine::load(&path, &opts(BackendKind::Cpu)).unwrap();
    let prompt = gpu.tokenizer.encode("The capital of France is", false);
    let (mut lg, mut lc) = (Vec::new(), Vec::new());
    gpu.model.forward(&prompt, Logits::Last, &mut lg).unwrap();
    cpu.model.forward(&prompt, Logits::Last, &mut lc).unwrap();
    assert_close("last-token logits", &lg, &lc, 1e-3);
    let mut next = crate_argmax(&lc);
    assert_eq!(crate_argmax(&lg), next);
    // Greedy steps through the GPU's argmax kernel, fed the CPU's choices; compared where the
    // CPU's top-2 margin is clear (the f32 GPU and the 8-bit-activation CPU may break near
    // ties either way).
    let mut checked = 0;
    for step in 0..4 {
        let got = gpu.model.forward_argmax(&[next]).unwrap();
        cpu.model.forward(&[next], Logits::Last, &mut lc).unwrap();
        next = crate_argmax(&lc);
        if top2_margin(&lc) > 0.1 {
            assert_eq!(got, next, "greedy step {step}");
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "only {checked} greedy steps had a clear margin"
    );
}

fn top2_margin(v: &[f32]) -> f32 {
    let best = crate_argmax(v) as usize;
    let second = v
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .map(|(_, &x)| x)
        .fold(f32::NEG_INFINITY, f32::max);
    v[best] - second
}

#[test]
fn auto_prefers_the_cpu_over_a_software_adapter() {
    let g = gpu();
    let auto = marco::engine::make_backend(BackendKind::Auto, 1).unwrap();
    let on_gpu = auto.describe().starts_with("gpu");
    assert_eq!(on_gpu, !g.is_software(), "auto chose {}", auto.describe());
}
