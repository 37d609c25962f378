//! The converter on tiny synthetic Qwen2 checkpoints: every file type, the metadata and
//! tokenizer, shards, tied embeddings, requantization, threads, importance, and a table of
//! malformed checkpoints that must each fail with a clear message and leave no output.
//!
//! Everything is built in cargo's per-target temp dir, one directory per test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use marco_quantize::convert::{convert, ConvertOptions, ConvertReport, FileType};
use marco_quantize::dequant::dequantize_tensor;
use marco_quantize::gguf::{GgufFile, Value};
use marco_quantize::quants::{quantize_row, quantize_row_weighted};
use marco_quantize::GgmlType;
use serde_json::json;

// ---------------------------------------------------------------------------------------
// building checkpoints

/// A fresh directory for one test.
fn test_dir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("convert-tests")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The shape of a tiny model.
#[derive(Clone, Copy)]
struct Dims {
    hidden: u64,
    ff: u64,
    layers: usize,
    heads: u64,
    kv_heads: u64,
    vocab: u64,
}

/// Rows of 256 so that the K-quants apply without fallback.
const K_DIMS: Dims = Dims {
    hidden: 256,
    ff: 512,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    vocab: 300,
};

/// Rows of 64: every K-quant falls back.
const SMALL_DIMS: Dims = Dims {
    hidden: 64,
    ff: 128,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    vocab: 300,
};

/// One tensor to store: Hugging Face name, dtype, PyTorch shape, bytes.
#[derive(Clone)]
struct St {
    name: String,
    dtype: &'static str,
    shape: Vec<u64>,
    data: Vec<u8>,
}

/// Deterministic values in about [-scale, scale), varied per tensor.
fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
        .collect()
}

/// The Hugging Face tensors of a model of shape `d`, in bf16.
fn model_tensors(d: Dims, tied: bool) -> Vec<St> {
    let kv = d.hidden / d.heads * d.kv_heads;
    let mut shapes: Vec<(String, Vec<u64>)> = vec![
        ("model.embed_tokens.weight".into(), vec![d.vocab, d.hidden]),
        ("model.norm.weight".into(), vec![d.hidden]),
    ];
    if !tied {
        shapes.push(("lm_head.weight".into(), vec![d.vocab, d.hidden]));
    }
    for i in 0..d.layers {
        let p = format!("model.layers.{i}");
        shapes.extend([
            (format!("{p}.input_layernorm.weight"), vec![d.hidden]),
            (
                format!("{p}.post_attention_layernorm.weight"),
                vec![d.hidden],
            ),
            (
                format!("{p}.self_attn.q_proj.weight"),
                vec![d.hidden, d.hidden],
            ),
            (format!("{p}.self_attn.q_proj.bias"), vec![d.hidden]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, d.hidden]),
            (format!("{p}.self_attn.k_proj.bias"), vec![kv]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, d.hidden]),
            (format!("{p}.self_attn.v_proj.bias"), vec![kv]),
            (
                format!("{p}.self_attn.o_proj.weight"),
                vec![d.hidden, d.hidden],
            ),
            (format!("{p}.mlp.gate_proj.weight"), vec![d.ff, d.hidden]),
            (format!("{p}.mlp.up_proj.weight"), vec![d.ff, d.hidden]),
            (format!("{p}.mlp.down_proj.weight"), vec![d.hidden, d.ff]),
        ]);
    }
    shapes
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n = shape.iter().product::<u64>() as usize;
            St {
                name,
                dtype: "BF16",
                shape,
                data: bf16_bytes(&values(i as u64 + 1, n, 0.5)),
            }
        })
        .collect()
}

/// A safetensors file: header (sorted by name, contiguous offsets, padded to 8) and data.
fn safetensors_bytes(tensors: &[St]) -> Vec<u8> {
    let mut sorted: Vec<&St> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for t in &sorted {
        let end = offset + t.data.len();
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut text = serde_json::to_string(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    raw_safetensors(
        &text,
        &sorted
            .iter()
            .flat_map(|t| t.data.clone())
            .collect::<Vec<_>>(),
    )
}

/// A safetensors file from a literal header and data.
fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn config_json(d: Dims, tied: bool) -> serde_json::Value {
    json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": d.hidden,
        "intermediate_size": d.ff,
        "num_hidden_layers": d.layers,
        "num_attention_heads": d.heads,
        "num_key_value_heads": d.kv_heads,
        "vocab_size": d.vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
        "tie_word_embeddings": tied,
        "bos_token_id": 290,
        "eos_token_id": 292,
        "torch_dtype": "bfloat16"
    })
}

/// Vocab "tok0".."tok278" and "[PAD279]" (a placeholder kept as a real entry), ids 280..289
/// missing, four added tokens at 290..293, 294..299 missing.
fn tokenizer_json() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    for i in 0..279 {
        vocab.insert(format!("tok{i}"), json!(i));
    }
    vocab.insert("[PAD279]".into(), json!(279));
    json!({
        "version": "1.0",
        "added_tokens": [
            {"id": 290, "content": "<|endoftext|>", "special": true},
            {"id": 291, "content": "<|im_start|>", "special": true},
            {"id": 292, "content": "<|im_end|>", "special": true},
            {"id": 293, "content": "<tool_call>", "special": false}
        ],
        "model": {"type": "BPE", "vocab": vocab, "merges": ["tok1 tok2", ["tok3", "to k"]]}
    })
}

fn tokenizer_config_json() -> serde_json::Value {
    json!({
        "bos_token": "<|endoftext|>",
        "eos_token": {"content": "<|im_end|>"},
        "pad_token": "<|endoftext|>",
        "add_bos_token": false,
        "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"
    })
}

fn write_json(path: &Path, v: &serde_json::Value) {
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

/// A complete checkpoint in `dir`: one `model.safetensors`, or `shards` shards with an index.
fn write_checkpoint(dir: &Path, d: Dims, tied: bool, shards: usize) -> Vec<St> {
    std::fs::create_dir_all(dir).unwrap();
    write_json(&dir.join("config.json"), &config_json(d, tied));
    write_json(&dir.join("tokenizer.json"), &tokenizer_json());
    write_json(&dir.join("tokenizer_config.json"), &tokenizer_config_json());
    write_json(
        &dir.join("generation_config.json"),
        &json!({"eos_token_id": [291, 290], "pad_token_id": 290}),
    );
    let tensors = model_tensors(d, tied);
    write_shards(dir, &tensors, shards);
    tensors
}

fn write_shards(dir: &Path, tensors: &[St], shards: usize) {
    if shards == 0 {
        std::fs::write(dir.join("model.safetensors"), safetensors_bytes(tensors)).unwrap();
        return;
    }
    let mut map = serde_json::Map::new();
    for s in 0..shards {
        let name = format!("model-{:05}-of-{shards:05}.safetensors", s + 1);
        let part: Vec<St> = tensors.iter().skip(s).step_by(shards).cloned().collect();
        for t in &part {
            map.insert(t.name.clone(), json!(name));
        }
        std::fs::write(dir.join(&name), safetensors_bytes(&part)).unwrap();
    }
    write_json(
        &dir.join("model.safetensors.index.json"),
        &json!({"metadata": {}, "weight_map": map}),
    );
}

fn opts(ft: FileType) -> ConvertOptions {
    ConvertOptions {
        threads: 2,
        ..ConvertOptions::new(ft)
    }
}

/// Options whose log lines are collected.
fn logged(ft: FileType) -> (ConvertOptions, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let o = ConvertOptions {
        log: Some(Box::new(move |l: &str| {
            sink.lock().unwrap().push(l.to_string())
        })),
        ..opts(ft)
    };
    (o, lines)
}

fn run(input: &Path, output: &Path, ft: FileType) -> ConvertReport {
    convert(input, output, &opts(ft)).unwrap()
}

/// The f32 values of a Hugging Face tensor of `tensors` (widened exactly).
fn source_values(tensors: &[St], hf_name: &str) -> Vec<f32> {
    let t = tensors.iter().find(|t| t.name == hf_name).unwrap();
    match t.dtype {
        "F32" => t
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        "F16" => t
            .data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => t
            .data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    }
}

/// All rows of a GGUF tensor, dequantized with our reference dequantizer.
fn dequantized(file: &GgufFile, name: &str) -> Vec<f32> {
    let info = file.tensor_info(name).unwrap();
    dequantize_tensor(info.ty, file.data_for(info), info.n_elements() as usize)
}

// ---------------------------------------------------------------------------------------
// successful conversions

#[test]
fn every_file_type_converts_with_llama_cpp_names_and_types() {
    let dir = test_dir("every_type");
    let ckpt = dir.join("ckpt");
    write_checkpoint(&ckpt, K_DIMS, false, 0);
    for ft in FileType::ALL {
        let out = dir.join(format!("{ft}.gguf"));
        let report = run(&ckpt, &out, ft);
        let file = GgufFile::open(&out).unwrap();
        assert_eq!(file.version(), 3);
        assert_eq!(file.alignment(), 32);
        assert_eq!(file.get_u32("general.file_type").unwrap(), ft.llama_ftype());
        assert_eq!(file.get_u32("general.quantization_version").unwrap(), 2);
        assert_eq!(file.tensors().len(), 3 + 12 * K_DIMS.layers);
        for t in file.tensors() {
            if t.dims.len() == 1 {
                assert_eq!(t.ty, GgmlType::F32, "{ft}: {}", t.name);
            } else if ft != FileType::F32 {
                assert_ne!(t.ty, GgmlType::F32, "{ft}: {}", t.name);
            }
        }
        let ty = |n: &str| file.tensor_info(n).unwrap().ty;
        let expect_output = match ft {
            FileType::F32 | FileType::F16 | FileType::BF16 | FileType::Q8_0 => ft.default_type(),
            _ => GgmlType::Q6_K,
        };
        assert_eq!(ty("output.weight"), expect_output, "{ft}");
        assert_eq!(ty("blk.1.attn_q.weight"), ft.default_type(), "{ft}");
        assert!(report.fallbacks.is_empty(), "{ft}: {:?}", report.fallbacks);
    }
}

#[test]
fn mixes_follow_llama_cpp_per_layer() {
    let dir = test_dir("mixes");
    let ckpt = dir.join("ckpt");
    // 8 layers so that use_more_bits differs between layers: layers 0, 7 and 3 (n/8 = 1,
    // 7n/8 = 7, (i - 1) % 3 == 2 → 3, 6).
    let d = Dims {
        layers: 8,
        ..K_DIMS
    };
    write_checkpoint(&ckpt, d, false, 0);
    let out = dir.join("m.gguf");
    run(&ckpt, &out, FileType::Q4_K_M);
    let file = GgufFile::open(&out).unwrap();
    let ty = |n: String| file.tensor_info(&n).unwrap().ty;
    for i in 0..8 {
        let more = [0, 3, 6, 7].contains(&i);
        let want = if more { GgmlType::Q6_K } else { GgmlType::Q4_K };
        assert_eq!(ty(format!("blk.{i}.attn_v.weight")), want, "attn_v {i}");
        assert_eq!(ty(format!("blk.{i}.ffn_down.weight")), want, "ffn_down {i}");
        assert_eq!(ty(format!("blk.{i}.attn_q.weight")), GgmlType::Q4_K);
    }
    assert_eq!(ty("token_embd.weight".into()), GgmlType::Q4_K);
    assert_eq!(ty("output.weight".into()), GgmlType::Q6_K);
}

/// Store tensor `hf_name` of `tensors` as F16 or F32 instead of BF16 (same values).
fn restore_as(tensors: &mut [St], hf_name: &str, dtype: &'static str) {
    let values = source_values(tensors, hf_name);
    let t = tensors.iter_mut().find(|t| t.name == hf_name).unwrap();
    t.dtype = dtype;
    t.data = match dtype {
        "F16" => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
}

#[test]
fn float_output_holds_the_checkpoint_values_exactly() {
    let dir = test_dir("exact");
    let ckpt = dir.join("ckpt");
    let mut tensors = write_checkpoint(&ckpt, K_DIMS, false, 0);
    // All three float dtypes in one checkpoint (values small enough for f16 to hold exactly).
    restore_as(&mut tensors, "model.layers.1.mlp.down_proj.weight", "F32");
    restore_as(&mut tensors, "model.layers.0.self_attn.k_proj.bias", "F16");
    write_shards(&ckpt, &tensors, 0);
    let out = dir.join("f32.gguf");
    run(&ckpt, &out, FileType::F32);
    let file = GgufFile::open(&out).unwrap();
    for (hf, gguf) in [
        ("model.embed_tokens.weight", "token_embd.weight"),
        (
            "model.layers.1.mlp.down_proj.weight",
            "blk.1.ffn_down.weight",
        ),
        ("model.layers.0.self_attn.k_proj.bias", "blk.0.attn_k.bias"),
    ] {
        assert_eq!(
            dequantized(&file, gguf),
            source_values(&tensors, hf),
            "{gguf}"
        );
    }
    // Shapes are reversed into ggml order.
    let info = file.tensor_info("blk.1.ffn_down.weight").unwrap();
    assert_eq!(info.dims, [K_DIMS.ff, K_DIMS.hidden]);
}

#[test]
fn quantized_rows_equal_the_reference_quantizer() {
    let dir = test_dir("rows");
    let ckpt = dir.join("ckpt");
    let tensors = write_checkpoint(&ckpt, K_DIMS, false, 0);
    let out = dir.join("q.gguf");
    run(&ckpt, &out, FileType::Q4_K_M);
    let file = GgufFile::open(&out).unwrap();
    let (hf, gguf) = (
        "model.layers.0.mlp.gate_proj.weight",
        "blk.0.ffn_gate.weight",
    );
    let src = source_values(&tensors, hf);
    let info = file.tensor_info(gguf).unwrap();
    let rb = info.ty.row_bytes(info.row_len()).unwrap() as usize;
    let mut want = vec![0u8; rb];
    for (row, got) in src
        .chunks_exact(info.row_len() as usize)
        .zip(file.data_for(info).chunks_exact(rb))
    {
        quantize_row(info.ty, row, &mut want);
        assert_eq!(got, &want[..]);
    }
}

#[test]
fn metadata_and_tokenizer_follow_llama_cpp() {
    let dir = test_dir("metadata");
    let ckpt = dir.join("tiny-qwen");
    write_checkpoint(&ckpt, K_DIMS, false, 0);
    let out = dir.join("m.gguf");
    run(&ckpt, &out, FileType::Q8_0);
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.get_str("general.architecture").unwrap(), "qwen2");
    assert_eq!(f.get_str("general.name").unwrap(), "tiny-qwen");
    assert_eq!(f.metadata()[0].0, "general.architecture");
    for (key, want) in [
        ("qwen2.block_count", 2),
        ("qwen2.context_length", 4096),
        ("qwen2.embedding_length", 256),
        ("qwen2.feed_forward_length", 512),
        ("qwen2.attention.head_count", 4),
        ("qwen2.attention.head_count_kv", 2),
    ] {
        assert_eq!(f.get_u32(key).unwrap(), want, "{key}");
    }
    assert_eq!(f.get_f32("qwen2.rope.freq_base").unwrap(), 1e6);
    assert_eq!(
        f.get_f32("qwen2.attention.layer_norm_rms_epsilon").unwrap(),
        1e-6
    );
    assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(f.get_str("tokenizer.ggml.pre").unwrap(), "qwen2");
    let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap();
    let types = f.get_i32_array("tokenizer.ggml.token_type").unwrap();
    assert_eq!(tokens.len(), 300);
    assert_eq!(types.len(), 300);
    assert_eq!((tokens[5], types[5]), ("tok5", 1));
    assert_eq!((tokens[279], types[279]), ("[PAD279]", 5));
    assert_eq!((tokens[285], types[285]), ("[PAD285]", 5));
    assert_eq!((tokens[290], types[290]), ("<|endoftext|>", 3));
    assert_eq!((tokens[292], types[292]), ("<|im_end|>", 3));
    assert_eq!((tokens[293], types[293]), ("<tool_call>", 4));
    assert_eq!((tokens[299], types[299]), ("[PAD299]", 5));
    assert_eq!(
        f.get_str_array("tokenizer.ggml.merges").unwrap(),
        ["tok1 tok2", "tok3 to\u{0120}k"]
    );
    // tokenizer_config.json's token texts win over config.json and generation_config.json.
    assert_eq!(f.get_u32("tokenizer.ggml.bos_token_id").unwrap(), 290);
    assert_eq!(f.get_u32("tokenizer.ggml.eos_token_id").unwrap(), 292);
    assert_eq!(f.get_u32("tokenizer.ggml.padding_token_id").unwrap(), 290);
    assert!(f.get("tokenizer.ggml.unknown_token_id").is_none());
    assert!(!f.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert!(f
        .get_str("tokenizer.chat_template")
        .unwrap()
        .starts_with("{% for m in messages %}"));
}

#[test]
fn special_ids_fall_back_to_config_then_generation_config() {
    let dir = test_dir("special_ids");
    let ckpt = dir.join("ckpt");
    write_checkpoint(&ckpt, K_DIMS, false, 0);
    std::fs::remove_file(ckpt.join("tokenizer_config.json")).unwrap();
    let mut cfg = config_json(K_DIMS, false);
    cfg.as_object_mut().unwrap().remove("eos_token_id");
    write_json(&ckpt.join("config.json"), &cfg);
    let out = dir.join("m.gguf");
    run(&ckpt, &out, FileType::F16);
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.get_u32("tokenizer.ggml.bos_token_id").unwrap(), 290);
    // generation_config.json lists [291, 290]: the first counts.
    assert_eq!(f.get_u32("tokenizer.ggml.eos_token_id").unwrap(), 291);
    assert!(f.get("tokenizer.chat_template").is_none());
}

#[test]
fn shards_give_the_same_file_as_one_safetensors() {
    let dir = test_dir("shards");
    let (one, three) = (dir.join("a/ckpt"), dir.join("b/ckpt"));
    write_checkpoint(&one, K_DIMS, false, 0);
    write_checkpoint(&three, K_DIMS, false, 3);
    let (o1, o3) = (dir.join("one.gguf"), dir.join("three.gguf"));
    run(&one, &o1, FileType::Q5_K_M);
    run(&three, &o3, FileType::Q5_K_M);
    assert_eq!(std::fs::read(&o1).unwrap(), std::fs::read(&o3).unwrap());
}

#[test]
fn tied_embeddings_have_no_output_tensor() {
    let dir = test_dir("tied");
    let ckpt = dir.join("ckpt");
    write_checkpoint(&ckpt, K_DIMS, true, 0);
    let out = dir.join("t.gguf");
    run(&ckpt, &out, FileType::Q4_0);
    let f = GgufFile::open(&out).unwrap();
    assert!(f.tensor_info("output.weight").is_none());
    // The embedding doubles as the output head, so it gets the output's type (llama.cpp).
    assert_eq!(
        f.tensor_info("token_embd.weight").unwrap().ty,
        GgmlType::Q6_K
    );

    // A tied checkpoint that still stores lm_head: skipped, and said so.
    let ckpt2 = dir.join("ckpt2");
    let mut tensors = write_checkpoint(&ckpt2, K_DIMS, true, 0);
    let mut head = tensors[0].clone();
    head.name = "lm_head.weight".into();
    tensors.push(head);
    write_shards(&ckpt2, &tensors, 0);
    let (o, lines) = logged(FileType::Q8_0);
    convert(&ckpt2, &dir.join("t2.gguf"), &o).unwrap();
    let f = GgufFile::open(&dir.join("t2.gguf")).unwrap();
    assert!(f.tensor_info("output.weight").is_none());
    assert!(lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("lm_head.weight: skipped")));
}

#[test]
fn fallbacks_are_logged_and_reported() {
    let dir = test_dir("fallbacks");
    let ckpt = dir.join("ckpt");
    write_checkpoint(&ckpt, SMALL_DIMS, false, 0);
    let (o, lines) = logged(FileType::Q4_K_M);
    let report = convert(&ckpt, &dir.join("f.gguf"), &o).unwrap();
    let f = GgufFile::open(&dir.join("f.gguf")).unwrap();
    assert_eq!(
        f.tensor_info("blk.0.attn_q.weight").unwrap().ty,
        GgmlType::Q5_0
    );
    // With 2 layers only the last one gets more bits: Q6_K, which falls back to Q8_0.
    assert_eq!(
        f.tensor_info("blk.0.attn_v.weight").unwrap().ty,
        GgmlType::Q5_0
    );
    assert_eq!(
        f.tensor_info("blk.1.attn_v.weight").unwrap().ty,
        GgmlType::Q8_0
    );
    assert_eq!(f.tensor_info("output.weight").unwrap().ty, GgmlType::Q8_0);
    assert!(report
        .fallbacks
        .iter()
        .any(|(n, fb)| n == "blk.1.ffn_up.weight" && fb.wanted == GgmlType::Q4_K));
    let lines = lines.lock().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("get Q5_0 instead of Q4_K") && l.contains("rows of 64")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.starts_with("wrote ")), "{lines:?}");

    // Q2_K / Q3_K fall back to Q4_0.
    let report = run(&ckpt, &dir.join("q3.gguf"), FileType::Q3_K_S);
    assert!(report.tensors.iter().any(|(_, t)| *t == GgmlType::Q4_0));
}

#[test]
fn requantizing_an_f32_gguf_equals_converting_the_checkpoint() {
    let dir = test_dir("requant");
    let ckpt = dir.join("ckpt");
    write_checkpoint(&ckpt, K_DIMS, false, 2);
    let f32_file = dir.join("f32.gguf");
    run(&ckpt, &f32_file, FileType::F32);
    for ft in [FileType::Q4_K_M, FileType::Q2_K, FileType::BF16] {
        let (direct, requant) = (dir.join("direct.gguf"), dir.join("requant.gguf"));
        run(&ckpt, &direct, ft);
        run(&f32_file, &requant, ft);
        // The same f32 rows go into the same quantizers, and the metadata is copied with
        // general.file_type updated: byte-identical files.
        assert_eq!(
            std::fs::read(&direct).unwrap(),
            std::fs::read(&requant).unwrap(),
            "{ft}"
        );
    }
    // Requantizing a quantized file works too (with a note) and keeps the metadata.
    let q8 = dir.join("q8.gguf");
    run(&ckpt, &q8, FileType::Q8_0);
    let (o, lines) = logged(FileType::Q4_K_S);
    convert(&q8, &dir.join("q4ks.gguf"), &o).unwrap();
    assert!(lines.lock().unwrap()[0].contains("requantizing already quantized"));
    let f = GgufFile::open(&dir.join("q4ks.gguf")).unwrap();
    assert_eq!(f.get_u32("general.file_type").unwrap(), 14);
    assert_eq!(f.get_str("tokenizer.ggml.pre").unwrap(), "qwen2");
}

#[test]
fn thread_count_does_not_change_the_output() {
    let dir = test_dir("threads");
    let ckpt = dir.join("ckpt");
    write_checkpoint(&ckpt, K_DIMS, false, 0);
    let mut outputs = Vec::new();
    for threads in [1, 3, 8] {
        let out = dir.join(format!("t{threads}.gguf"));
        let o = ConvertOptions {
            threads,
            ..ConvertOptions::new(FileType::Q3_K_M)
        };
        convert(&ckpt, &out, &o).unwrap();
        outputs.push(std::fs::read(&out).unwrap());
    }
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(outputs[0], outputs[2]);
}

#[test]
fn importance_vectors_reach_the_weighted_quantizers() {
    let dir = test_dir("importance");
    let ckpt = dir.join("ckpt");
    let tensors = write_checkpoint(&ckpt, K_DIMS, false, 0);
    let name = "blk.0.attn_q.weight";
    let imp: Vec<f32> = values(99, K_DIMS.hidden as usize, 1.0)
        .iter()
        .map(|v| v.abs() + 0.01)
        .collect();
    let importance = HashMap::from([(name.to_string(), imp.clone())]);
    let o = ConvertOptions {
        importance: Some(importance),
        ..opts(FileType::Q4_K_M)
    };
    let (weighted, plain) = (dir.join("w.gguf"), dir.join("p.gguf"));
    convert(&ckpt, &weighted, &o).unwrap();
    run(&ckpt, &plain, FileType::Q4_K_M);
    let (w, p) = (
        GgufFile::open(&weighted).unwrap(),
        GgufFile::open(&plain).unwrap(),
    );
    assert_ne!(w.tensor_data(name).unwrap(), p.tensor_data(name).unwrap());
    // Tensors without importance data are quantized as without an imatrix.
    let other = "blk.0.attn_k.weight";
    assert_eq!(w.tensor_data(other).unwrap(), p.tensor_data(other).unwrap());
    let src = source_values(&tensors, "model.layers.0.self_attn.q_proj.weight");
    let rb = GgmlType::Q4_K.row_bytes(K_DIMS.hidden).unwrap() as usize;
    let mut want = vec![0u8; rb];
    for (row, got) in src
        .chunks_exact(K_DIMS.hidden as usize)
        .zip(w.tensor_data(name).unwrap().chunks_exact(rb))
    {
        quantize_row_weighted(GgmlType::Q4_K, row, Some(&imp), &mut want);
        assert_eq!(got, &want[..]);
    }

    // Wrong length and non-finite values are refused, naming the tensor.
    for (bad, want) in [
        (vec![1.0; 3], "has 3 values, expected 256"),
        (vec![f32::NAN; 256], "not finite"),
    ] {
        let o = ConvertOptions {
            importance: Some(HashMap::from([(name.to_string(), bad)])),
            ..opts(FileType::Q4_K_M)
        };
        let out = dir.join("bad.gguf");
        let err = format!("{:#}", convert(&ckpt, &out, &o).unwrap_err());
        assert!(err.contains(name) && err.contains(want), "{err}");
        assert!(!out.exists());
    }
}

// ---------------------------------------------------------------------------------------
// refusals

/// Convert `ckpt` into an empty output directory; the error must contain every part of `want`
/// and nothing may be left in the output directory.
fn expect_failure(case: &str, input: &Path, out_dir: &Path, want: &[&str]) {
    std::fs::create_dir_all(out_dir).unwrap();
    let out = out_dir.join("out.gguf");
    let err = match convert(input, &out, &opts(FileType::Q4_K_M)) {
        Ok(_) => panic!("{case}: converted, expected an error containing {want:?}"),
        Err(e) => format!("{e:#}"),
    };
    for w in want {
        assert!(err.contains(w), "{case}: error lacks '{w}': {err}");
    }
    assert!(
        files_in(out_dir).is_empty(),
        "{case}: left {:?}",
        files_in(out_dir)
    );
}

/// A fresh single-file checkpoint for one malformation.
fn fresh(dir: &Path, case: &str) -> (PathBuf, Vec<St>) {
    let ckpt = dir.join(case);
    let t = write_checkpoint(&ckpt, SMALL_DIMS, false, 0);
    (ckpt, t)
}

#[test]
fn malformed_safetensors_are_refused() {
    let dir = test_dir("malformed_st");
    let out = dir.join("out");
    let st = |c: &Path| c.join("model.safetensors");

    let (c, _) = fresh(&dir, "huge_header_len");
    let mut bytes = std::fs::read(st(&c)).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(st(&c), &bytes).unwrap();
    expect_failure(
        "huge header",
        &c,
        &out,
        &["model.safetensors", "exceeds the limit"],
    );

    let (c, _) = fresh(&dir, "header_past_end");
    let mut bytes = std::fs::read(st(&c)).unwrap();
    let len = bytes.len() as u64;
    bytes[..8].copy_from_slice(&len.to_le_bytes());
    std::fs::write(st(&c), &bytes).unwrap();
    expect_failure(
        "header past end",
        &c,
        &out,
        &["model.safetensors", "past the end"],
    );

    let (c, _) = fresh(&dir, "short_file");
    std::fs::write(st(&c), [1u8, 2, 3]).unwrap();
    expect_failure("short file", &c, &out, &["model.safetensors", "too short"]);

    let cases: [(&str, &str, &[&str]); 6] = [
        (
            "offsets_past_end",
            r#"{"model.norm.weight":{"dtype":"BF16","shape":[64],"data_offsets":[0,4096]}}"#,
            &[
                "'model.norm.weight'",
                "outside the data section of 128 bytes",
            ],
        ),
        (
            "shape_mismatch",
            r#"{"model.norm.weight":{"dtype":"BF16","shape":[65],"data_offsets":[0,128]}}"#,
            &["'model.norm.weight'", "needs 130 bytes", "hold 128"],
        ),
        (
            "dtype_mismatch",
            r#"{"model.norm.weight":{"dtype":"F32","shape":[64],"data_offsets":[0,128]}}"#,
            &["'model.norm.weight'", "needs 256 bytes"],
        ),
        (
            "unknown_dtype",
            r#"{"model.norm.weight":{"dtype":"Q4","shape":[64],"data_offsets":[0,128]}}"#,
            &["'model.norm.weight'", "unknown dtype 'Q4'"],
        ),
        (
            "overlap",
            r#"{"a":{"dtype":"BF16","shape":[64],"data_offsets":[0,128]},
                "b":{"dtype":"BF16","shape":[1],"data_offsets":[126,128]}}"#,
            &["'a'", "'b'", "overlap"],
        ),
        (
            "bad_json",
            r#"{"a": {"dtype": "#,
            &["JSON header does not parse"],
        ),
    ];
    for (case, header, want) in cases {
        let (c, _) = fresh(&dir, case);
        std::fs::write(st(&c), raw_safetensors(header, &[0u8; 128])).unwrap();
        let mut want = want.to_vec();
        want.push("model.safetensors");
        expect_failure(case, &c, &out, &want);
    }
}

#[test]
fn malformed_checkpoints_are_refused() {
    let dir = test_dir("malformed_ckpt");
    let out = dir.join("out");

    let (c, _) = fresh(&dir, "wrong_arch");
    let mut cfg = config_json(SMALL_DIMS, false);
    cfg["architectures"] = json!(["LlamaForCausalLM"]);
    write_json(&c.join("config.json"), &cfg);
    expect_failure(
        "arch",
        &c,
        &out,
        &["config.json", "LlamaForCausalLM", "Qwen2ForCausalLM"],
    );

    let (c, _) = fresh(&dir, "bad_config_json");
    std::fs::write(c.join("config.json"), "{\"architectures\": [").unwrap();
    expect_failure("config json", &c, &out, &["config.json", "invalid JSON"]);

    let (c, _) = fresh(&dir, "bad_tokenizer_json");
    std::fs::write(c.join("tokenizer.json"), "[1, 2").unwrap();
    expect_failure(
        "tokenizer json",
        &c,
        &out,
        &["tokenizer.json", "invalid JSON"],
    );

    let (c, _) = fresh(&dir, "bad_hidden_size");
    let mut cfg = config_json(SMALL_DIMS, false);
    cfg["hidden_size"] = json!("big");
    write_json(&c.join("config.json"), &cfg);
    expect_failure("hidden", &c, &out, &["config.json", "'hidden_size'"]);

    let (c, _) = fresh(&dir, "token_id_beyond_vocab");
    let mut tok = tokenizer_json();
    tok["added_tokens"][0]["id"] = json!(300);
    write_json(&c.join("tokenizer.json"), &tok);
    expect_failure(
        "token id",
        &c,
        &out,
        &["tokenizer.json", "<|endoftext|>", "id 300"],
    );

    let (c, mut t) = fresh(&dir, "wrong_shape");
    let i = t
        .iter()
        .position(|t| t.name.ends_with("0.mlp.up_proj.weight"))
        .unwrap();
    t[i].shape = vec![64, 128];
    write_shards(&c, &t, 0);
    expect_failure(
        "shape",
        &c,
        &out,
        &[
            "model.layers.0.mlp.up_proj.weight",
            "[64, 128]",
            "[128, 64]",
        ],
    );

    let (c, mut t) = fresh(&dir, "missing_tensor");
    t.retain(|t| t.name != "model.layers.1.self_attn.v_proj.bias");
    write_shards(&c, &t, 0);
    expect_failure(
        "missing",
        &c,
        &out,
        &["lacks 1 tensor", "blk.1.attn_v.bias"],
    );

    let (c, mut t) = fresh(&dir, "unknown_tensor");
    t.push(St {
        name: "model.vision.proj.weight".into(),
        dtype: "BF16",
        shape: vec![2],
        data: vec![0; 4],
    });
    write_shards(&c, &t, 0);
    expect_failure(
        "unknown",
        &c,
        &out,
        &["model.vision.proj.weight", "not part of a Qwen2"],
    );

    let (c, mut t) = fresh(&dir, "int_dtype");
    let i = t
        .iter()
        .position(|t| t.name == "model.norm.weight")
        .unwrap();
    t[i].dtype = "I16";
    write_shards(&c, &t, 0);
    expect_failure(
        "int",
        &c,
        &out,
        &["'model.norm.weight'", "dtype I16", "expected BF16"],
    );

    let (c, mut t) = fresh(&dir, "nan_weight");
    let i = t
        .iter()
        .position(|t| t.name.ends_with("1.mlp.gate_proj.weight"))
        .unwrap();
    t[i].data[10..12].copy_from_slice(&half::bf16::NAN.to_le_bytes());
    write_shards(&c, &t, 0);
    expect_failure(
        "nan",
        &c,
        &out,
        &["blk.1.ffn_gate.weight", "row 0, column 5", "finite"],
    );

    let (c, _) = fresh(&dir, "no_weights");
    std::fs::remove_file(c.join("model.safetensors")).unwrap();
    expect_failure("no weights", &c, &out, &["neither model.safetensors"]);
}

#[test]
fn sharded_checkpoint_problems_are_refused() {
    let dir = test_dir("malformed_shards");
    let out = dir.join("out");
    let shard2 = "model-00002-of-00002.safetensors";

    let c = dir.join("missing_shard");
    write_checkpoint(&c, SMALL_DIMS, false, 2);
    std::fs::remove_file(c.join(shard2)).unwrap();
    expect_failure("missing shard", &c, &out, &["missing shard", shard2]);

    let c = dir.join("tensor_not_in_shard");
    let t = write_checkpoint(&c, SMALL_DIMS, false, 2);
    let part: Vec<St> = t.iter().skip(1).step_by(2).skip(1).cloned().collect();
    std::fs::write(c.join(shard2), safetensors_bytes(&part)).unwrap();
    expect_failure(
        "not in shard",
        &c,
        &out,
        &[shard2, "is missing", "places it in this shard"],
    );

    let c = dir.join("escaping_shard_name");
    write_checkpoint(&c, SMALL_DIMS, false, 0);
    write_json(
        &c.join("model.safetensors.index.json"),
        &json!({"weight_map": {"model.norm.weight": "../x.safetensors"}}),
    );
    expect_failure("escape", &c, &out, &["not a plain file name"]);
}

#[test]
fn refuses_to_overwrite_an_input() {
    let dir = test_dir("overwrite");
    let ckpt = dir.join("ckpt");
    write_checkpoint(&ckpt, SMALL_DIMS, false, 2);
    let gguf = dir.join("m.gguf");
    run(&ckpt, &gguf, FileType::F16);
    let before = std::fs::read(&gguf).unwrap();
    // The same file under another spelling.
    let alias = dir.join("ckpt/../m.gguf");
    let err = format!(
        "{:#}",
        convert(&gguf, &alias, &opts(FileType::Q8_0)).unwrap_err()
    );
    assert!(err.contains("refusing to overwrite the input"), "{err}");
    assert_eq!(std::fs::read(&gguf).unwrap(), before);
    let shard = ckpt.join("model-00001-of-00002.safetensors");
    let shard_before = std::fs::read(&shard).unwrap();
    let err = format!(
        "{:#}",
        convert(&ckpt, &shard, &opts(FileType::Q8_0)).unwrap_err()
    );
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(&shard).unwrap(), shard_before);
    // Writing next to the input is fine; a missing output directory is an error.
    run(&ckpt, &ckpt.join("inside.gguf"), FileType::Q8_0);
    let err = format!(
        "{:#}",
        convert(&ckpt, &dir.join("nodir/x.gguf"), &opts(FileType::Q8_0)).unwrap_err()
    );
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn files_inside_a_checkpoint_and_non_qwen2_gguf_are_refused() {
    let dir = test_dir("inputs");
    let ckpt = dir.join("ckpt");
    write_checkpoint(&ckpt, SMALL_DIMS, false, 0);
    let out = dir.join("out");
    expect_failure(
        "safetensors file",
        &ckpt.join("model.safetensors"),
        &out,
        &["pass the checkpoint directory"],
    );
    expect_failure("missing", &dir.join("nope"), &out, &["no such file"]);
    // A GGUF of another architecture.
    let llama = dir.join("llama.gguf");
    let w = marco_quantize::gguf::GgufWriter::create(
        &llama,
        vec![("general.architecture".into(), Value::from("llama"))],
        vec![],
        32,
    )
    .unwrap();
    w.finish().unwrap();
    expect_failure("llama gguf", &llama, &out, &["'llama'", "only qwen2"]);
}
