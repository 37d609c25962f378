//! Shared helpers of the integration tests: the real default model and the reference files.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use marco::backend::BackendKind;
use marco::engine::{Engine, EngineOptions};
use marco::gguf::{GgufFile, GgufWriter, TensorDecl};
use marco::models::DEFAULT_MODEL;
use marco_quantize::GgmlType;

pub mod checks;

/// `../shared/reference`, beside the repository (as CI lays it out).
pub fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference")
}

pub fn flores_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/flores200-dev")
}

/// The default model in the cache. The test command (`.ci/run`) fetches it first; a missing
/// model is a failure, not a skip.
pub fn default_model_path() -> PathBuf {
    let path = DEFAULT_MODEL.cached_path().expect("cache directory");
    assert!(
        path.is_file(),
        "the default model is missing at {}: run `cargo run --release -- fetch` (the test command \
         .ci/run does this)",
        path.display()
    );
    path
}

/// One engine per test binary, on the CPU, shared by its tests.
pub fn cpu_engine() -> &'static Mutex<Engine> {
    static ENGINE: OnceLock<Mutex<Engine>> = OnceLock::new();
    ENGINE.get_or_init(|| Mutex::new(load_engine(BackendKind::Cpu)))
}

/// A GGUF of `tensors` (name, dims, type, encoded data), written to a temporary file whose
/// name holds `tag`, then opened; the file is removed at once (the mapping stays valid).
pub fn temp_gguf(tag: &str, tensors: &[(&str, Vec<u64>, GgmlType, Vec<u8>)]) -> Arc<GgufFile> {
    // One file per call: the tests of a binary run in parallel in one process.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("marco-{tag}-{}-{call}.gguf", std::process::id());
    let path = std::env::temp_dir().join(name);
    let decls = tensors
        .iter()
        .map(|(n, dims, ty, _)| TensorDecl::new(n.to_string(), dims, *ty))
        .collect();
    let mut w = GgufWriter::create(&path, Vec::new(), decls, 32).unwrap();
    for (n, _, _, data) in tensors {
        w.write_tensor(n, data).unwrap();
    }
    w.finish().unwrap();
    let file = GgufFile::open(&path).unwrap();
    std::fs::remove_file(&path).ok();
    Arc::new(file)
}

pub fn load_engine(backend: BackendKind) -> Engine {
    let opts = EngineOptions {
        backend,
        threads: 0,
        ctx: 1024,
    };
    Engine::load(&default_model_path(), &opts).expect("loading the default model")
}

/// A case of `hf-greedy.json`.
pub struct GreedyCase {
    pub prompt_ids: Vec<u32>,
    pub until_eos: Vec<u32>,
    pub ids_48: Vec<u32>,
    pub margins: Vec<f32>,
    pub greedy_text: String,
    pub user_message: String,
}

pub fn greedy_cases() -> Vec<GreedyCase> {
    let text = std::fs::read_to_string(reference_dir().join("hf-greedy.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| GreedyCase {
            prompt_ids: ids(&c["prompt_ids"]),
            until_eos: ids(&c["greedy_ids_until_eos"]),
            ids_48: ids(&c["greedy_ids_48"]),
            margins: c["step_top1_top2_margin"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect(),
            greedy_text: c["greedy_text"].as_str().unwrap().to_string(),
            user_message: c["user_message"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// Case 0's last prompt position, all logits, from Hugging Face transformers in float32.
pub fn hf_case0_logits() -> Vec<f32> {
    let bytes = std::fs::read(reference_dir().join("hf-case0-last-logits.f32")).unwrap();
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}
