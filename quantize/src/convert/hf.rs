//! A Hugging Face Qwen2 checkpoint directory: `config.json`, the safetensors shards, and the
//! tokenizer files, turned into GGUF metadata and a list of source tensors with llama.cpp names.
//!
//! Names and metadata keys follow llama.cpp's `convert_hf_to_gguf.py` (`Qwen2Model`, which
//! stores Q and K as Hugging Face does: no permutation, unlike the Llama converter) and
//! gguf-py's `SpecialVocab` (special token ids from `tokenizer_config.json` first, then
//! `config.json`; here also `generation_config.json` last).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Result};
use serde_json::Value as Json;

use super::pipeline::{Log, Source, SourceTensor};
use super::safetensors::{SafeTensors, StTensor};
use crate::gguf::Value;

/// Token types of GGUF `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`).
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

/// Bounds on config values: larger ones are a corrupt file, not a model.
const MAX_DIM: u64 = 1 << 20;
const MAX_VOCAB: u64 = 1 << 22;
const MAX_LAYERS: u64 = 4096;

/// The hyperparameters of `config.json` that the GGUF file carries.
#[derive(Clone, Debug, PartialEq)]
pub struct HfConfig {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_vocab: usize,
    pub context_length: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub tied_embeddings: bool,
    /// YaRN scaling: factor and original context length.
    pub yarn: Option<(f32, usize)>,
}

impl HfConfig {
    fn kv_dim(&self) -> usize {
        self.n_embd / self.n_head * self.n_head_kv
    }
}

/// An opened checkpoint: its config, metadata and memory-mapped shards.
pub struct Checkpoint {
    dir: PathBuf,
    pub config: HfConfig,
    metadata: Vec<(String, Value)>,
    shards: Vec<SafeTensors>,
    /// Hugging Face tensor name → (shard, tensor) for every tensor the index assigns.
    index: BTreeMap<String, (usize, usize)>,
    /// The JSON files read, for the overwrite check.
    files: Vec<PathBuf>,
}

impl Checkpoint {
    /// Read and validate everything but the tensor data.
    pub fn open(dir: &Path, log: &Log) -> Result<Checkpoint> {
        let config_path = dir.join("config.json");
        let config_json = read_json(&config_path)?;
        let config = parse_config(&config_path, &config_json)?;
        let tok = Tokenizer::load(dir, &config, &config_json, log)?;
        let mut metadata = model_metadata(dir, &config);
        metadata.extend(tok.metadata);
        let (shards, index, shard_files) = open_shards(dir)?;
        let mut files = vec![config_path];
        files.extend(tok.files);
        files.extend(shard_files);
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            metadata,
            shards,
            index,
            files,
        })
    }

    /// The tensors with their GGUF names, checked against the config.
    pub fn source(&self, log: &Log) -> Result<Source<'_>> {
        let mut tensors = Vec::new();
        for (hf_name, &(s, t)) in &self.index {
            let Some(name) = gguf_name(hf_name, self.config.n_layer)? else {
                continue;
            };
            if name == "output.weight" && self.config.tied_embeddings {
                log.line(&format!(
                    "{hf_name}: skipped, tie_word_embeddings is true (the output head is \
                     token_embd)"
                ));
                continue;
            }
            tensors.push(self.source_tensor(
                name,
                &self.shards[s],
                &self.shards[s].tensors()[t],
            )?);
        }
        self.check_complete(&tensors)?;
        Ok(Source {
            metadata: self.metadata.clone(),
            tensors,
            n_layer: self.config.n_layer,
            n_head: self.config.n_head,
            n_head_kv: self.config.n_head_kv,
            files: self.files.clone(),
        })
    }

    fn source_tensor<'a>(
        &self,
        name: String,
        shard: &'a SafeTensors,
        t: &StTensor,
    ) -> Result<SourceTensor<'a>> {
        let file = shard.path().display();
        let ty = t.dtype.ggml().ok_or_else(|| {
            anyhow!(
                "{file}: tensor '{}' has dtype {}, expected BF16, F16 or F32",
                t.name,
                t.dtype.name()
            )
        })?;
        let want = expected_shape(&name, &self.config);
        ensure!(
            t.shape == want,
            "{file}: tensor '{}' has shape {:?}, but config.json implies {want:?}",
            t.name,
            t.shape
        );
        Ok(SourceTensor {
            name,
            // ggml order is the reverse of PyTorch's; the bytes are laid out the same.
            dims: t.shape.iter().rev().copied().collect(),
            ty,
            data: shard.data(t),
            pages: Some(shard.map_range(t)),
        })
    }

    /// Every tensor a Qwen2 model needs is present.
    fn check_complete(&self, tensors: &[SourceTensor<'_>]) -> Result<()> {
        let have: std::collections::HashSet<&str> =
            tensors.iter().map(|t| t.name.as_str()).collect();
        let missing: Vec<String> = required_tensors(&self.config)
            .into_iter()
            .filter(|n| !have.contains(n.as_str()))
            .collect();
        ensure!(
            missing.is_empty(),
            "{}: the checkpoint lacks {} tensor(s) a Qwen2 model needs (GGUF names): {}",
            self.dir.display(),
            missing.len(),
            missing
                .iter()
                .take(8)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(())
    }
}

fn read_json(path: &Path) -> Result<Json> {
    let text = fs::read(path).map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| anyhow!("{}: invalid JSON: {e}", path.display()))
}

/// `config.json` → [`HfConfig`]; refuses anything but `Qwen2ForCausalLM`.
pub fn parse_config(path: &Path, json: &Json) -> Result<HfConfig> {
    let file = path.display();
    let archs: Vec<&str> = json
        .get("architectures")
        .and_then(Json::as_array)
        .map(|a| a.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    if !archs.contains(&"Qwen2ForCausalLM") {
        bail!(
            "{file}: architectures is {archs:?}; only Qwen2ForCausalLM checkpoints can be \
             converted"
        );
    }
    let int = |key: &str, max: u64, default: Option<u64>| -> Result<usize> {
        match json.get(key) {
            None | Some(Json::Null) => default,
            Some(v) => v.as_u64(),
        }
        .filter(|v| (1..=max).contains(v))
        .map(|v| v as usize)
        .ok_or_else(|| anyhow!("{file}: '{key}' must be an integer from 1 to {max}"))
    };
    let float = |key: &str, default: f64| -> Result<f64> {
        match json.get(key) {
            None | Some(Json::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| anyhow!("{file}: '{key}' must be a number")),
        }
    };
    let n_head = int("num_attention_heads", MAX_DIM, None)?;
    let config = HfConfig {
        n_layer: int("num_hidden_layers", MAX_LAYERS, None)?,
        n_embd: int("hidden_size", MAX_DIM, None)?,
        n_ff: int("intermediate_size", MAX_DIM, None)?,
        n_head,
        n_head_kv: int("num_key_value_heads", MAX_DIM, Some(n_head as u64))?,
        n_vocab: int("vocab_size", MAX_VOCAB, None)?,
        context_length: int("max_position_embeddings", 1 << 24, Some(32768))?,
        rope_theta: rope_theta(json).unwrap_or(float("rope_theta", 10_000.0)?) as f32,
        rms_eps: float("rms_norm_eps", 1e-6)? as f32,
        tied_embeddings: json
            .get("tie_word_embeddings")
            .and_then(Json::as_bool)
            .unwrap_or(false),
        yarn: yarn(json),
    };
    ensure!(
        config.n_embd.is_multiple_of(config.n_head)
            && config.n_head.is_multiple_of(config.n_head_kv),
        "{file}: hidden_size {}, num_attention_heads {} and num_key_value_heads {} do not divide \
         evenly",
        config.n_embd,
        config.n_head,
        config.n_head_kv
    );
    ensure!(
        config.rope_theta.is_finite() && config.rope_theta > 1.0,
        "{file}: rope_theta {} must be a finite number above 1",
        config.rope_theta
    );
    ensure!(
        config.rms_eps > 0.0 && config.rms_eps < 1.0,
        "{file}: rms_norm_eps {} must lie between 0 and 1",
        config.rms_eps
    );
    Ok(config)
}

/// transformers ≥ 5 keeps rope_theta under `rope_parameters` (and may drop the top-level key).
fn rope_theta(json: &Json) -> Option<f64> {
    json.get("rope_parameters")?.get("rope_theta")?.as_f64()
}

/// YaRN rope scaling, which llama.cpp's Qwen2 converter records.
fn yarn(json: &Json) -> Option<(f32, usize)> {
    let rs = json.get("rope_scaling")?;
    let kind = rs.get("rope_type").or_else(|| rs.get("type"))?.as_str()?;
    if kind != "yarn" {
        return None;
    }
    let factor = rs.get("factor")?.as_f64()? as f32;
    let orig = rs.get("original_max_position_embeddings")?.as_u64()? as usize;
    Some((factor, orig))
}

/// `general.*` and `qwen2.*` keys, in the order llama.cpp's converter writes them.
fn model_metadata(dir: &Path, c: &HfConfig) -> Vec<(String, Value)> {
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".to_string());
    let u32v = |v: usize| Value::U32(v as u32);
    let mut m: Vec<(String, Value)> = vec![
        ("general.architecture".into(), "qwen2".into()),
        ("general.type".into(), "model".into()),
        ("general.name".into(), name.into()),
        ("qwen2.block_count".into(), u32v(c.n_layer)),
        ("qwen2.context_length".into(), u32v(c.context_length)),
        ("qwen2.embedding_length".into(), u32v(c.n_embd)),
        ("qwen2.feed_forward_length".into(), u32v(c.n_ff)),
        ("qwen2.attention.head_count".into(), u32v(c.n_head)),
        ("qwen2.attention.head_count_kv".into(), u32v(c.n_head_kv)),
        ("qwen2.rope.freq_base".into(), Value::F32(c.rope_theta)),
        (
            "qwen2.attention.layer_norm_rms_epsilon".into(),
            Value::F32(c.rms_eps),
        ),
    ];
    if let Some((factor, orig)) = c.yarn {
        m.push(("qwen2.rope.scaling.type".into(), "yarn".into()));
        m.push(("qwen2.rope.scaling.factor".into(), Value::F32(factor)));
        m.push((
            "qwen2.rope.scaling.original_context_length".into(),
            u32v(orig),
        ));
    }
    m
}

/// The shards: `model.safetensors.index.json` with its shards, or one `model.safetensors`.
#[allow(clippy::type_complexity)]
fn open_shards(
    dir: &Path,
) -> Result<(
    Vec<SafeTensors>,
    BTreeMap<String, (usize, usize)>,
    Vec<PathBuf>,
)> {
    let index_path = dir.join("model.safetensors.index.json");
    let single = dir.join("model.safetensors");
    if index_path.is_file() {
        return open_indexed(dir, &index_path);
    }
    ensure!(
        single.is_file(),
        "{}: found neither model.safetensors nor model.safetensors.index.json",
        dir.display()
    );
    let shard = SafeTensors::open(&single)?;
    let index = shard
        .tensors()
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), (0, i)))
        .collect();
    Ok((vec![shard], index, vec![single]))
}

#[allow(clippy::type_complexity)]
fn open_indexed(
    dir: &Path,
    index_path: &Path,
) -> Result<(
    Vec<SafeTensors>,
    BTreeMap<String, (usize, usize)>,
    Vec<PathBuf>,
)> {
    let file = index_path.display();
    let json = read_json(index_path)?;
    let map = json
        .get("weight_map")
        .and_then(Json::as_object)
        .ok_or_else(|| anyhow!("{file}: no 'weight_map' object"))?;
    // Shard file name → the tensors the index puts there.
    let mut by_shard: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (tensor, shard) in map {
        let shard = shard
            .as_str()
            .ok_or_else(|| anyhow!("{file}: weight_map['{tensor}'] is not a file name"))?;
        by_shard.entry(shard).or_default().push(tensor);
    }
    let (mut shards, mut index, mut paths) = (Vec::new(), BTreeMap::new(), vec![index_path.into()]);
    for (shard_name, names) in by_shard {
        let path = shard_path(dir, index_path, shard_name, &names)?;
        let shard = SafeTensors::open(&path)?;
        for name in names {
            let i = shard
                .tensors()
                .iter()
                .position(|t| t.name == name)
                .ok_or_else(|| {
                    anyhow!(
                        "{}: tensor '{name}' is missing, but {file} places it in this shard",
                        path.display()
                    )
                })?;
            index.insert(name.to_string(), (shards.len(), i));
        }
        shards.push(shard);
        paths.push(path);
    }
    Ok((shards, index, paths))
}

/// The path of a shard named by the index: a plain file name inside `dir` that exists.
fn shard_path(dir: &Path, index_path: &Path, shard: &str, names: &[&str]) -> Result<PathBuf> {
    let plain = Path::new(shard).file_name().is_some_and(|n| n == shard) && shard != "..";
    ensure!(
        plain,
        "{}: shard '{shard}' is not a plain file name in the checkpoint directory",
        index_path.display()
    );
    let path = dir.join(shard);
    ensure!(
        path.is_file(),
        "{}: missing shard {shard} (the index places {} tensor(s) there, e.g. '{}')",
        dir.display(),
        names.len(),
        names.first().copied().unwrap_or("")
    );
    Ok(path)
}

/// The GGUF name of a Hugging Face Qwen2 tensor; `None` for tensors llama.cpp skips.
pub fn gguf_name(hf: &str, n_layer: usize) -> Result<Option<String>> {
    let top = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Ok(Some(t.to_string()));
    }
    // Old checkpoints carry the rotary frequencies as a buffer; they are recomputed.
    if hf.ends_with(".rotary_emb.inv_freq") {
        return Ok(None);
    }
    let unknown = || anyhow!("tensor '{hf}' is not part of a Qwen2 model (cannot map it)");
    let rest = hf.strip_prefix("model.layers.").ok_or_else(unknown)?;
    let (layer, part) = rest.split_once('.').ok_or_else(unknown)?;
    let layer: usize = layer.parse().map_err(|_| unknown())?;
    ensure!(
        layer < n_layer,
        "tensor '{hf}': layer {layer} is beyond num_hidden_layers {n_layer}"
    );
    let (module, kind) = part.rsplit_once('.').ok_or_else(unknown)?;
    let gguf = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return Err(unknown()),
    };
    ensure!(kind == "weight" || kind == "bias", unknown());
    Ok(Some(format!("blk.{layer}.{gguf}.{kind}")))
}

/// The shape (PyTorch order) config.json implies for GGUF tensor `name`.
fn expected_shape(name: &str, c: &HfConfig) -> Vec<u64> {
    let (h, kv, ff, v) = (
        c.n_embd as u64,
        c.kv_dim() as u64,
        c.n_ff as u64,
        c.n_vocab as u64,
    );
    let part = name.split('.').skip(2).collect::<Vec<_>>().join(".");
    match (name, part.as_str()) {
        ("token_embd.weight" | "output.weight", _) => vec![v, h],
        ("output_norm.weight", _) => vec![h],
        (_, "attn_norm.weight" | "ffn_norm.weight" | "attn_q.bias") => vec![h],
        (_, "attn_q.weight" | "attn_output.weight") => vec![h, h],
        (_, "attn_k.weight" | "attn_v.weight") => vec![kv, h],
        (_, "attn_k.bias" | "attn_v.bias") => vec![kv],
        (_, "ffn_gate.weight" | "ffn_up.weight") => vec![ff, h],
        (_, "ffn_down.weight") => vec![h, ff],
        _ => vec![],
    }
}

/// Every GGUF tensor a Qwen2 model of this config needs.
fn required_tensors(c: &HfConfig) -> Vec<String> {
    let mut v = vec!["token_embd.weight".to_string(), "output_norm.weight".into()];
    if !c.tied_embeddings {
        v.push("output.weight".into());
    }
    let parts = [
        "attn_norm.weight",
        "attn_q.weight",
        "attn_q.bias",
        "attn_k.weight",
        "attn_k.bias",
        "attn_v.weight",
        "attn_v.bias",
        "attn_output.weight",
        "ffn_norm.weight",
        "ffn_gate.weight",
        "ffn_up.weight",
        "ffn_down.weight",
    ];
    for i in 0..c.n_layer {
        v.extend(parts.iter().map(|p| format!("blk.{i}.{p}")));
    }
    v
}

/// The tokenizer files → `tokenizer.*` metadata.
struct Tokenizer {
    metadata: Vec<(String, Value)>,
    files: Vec<PathBuf>,
}

/// One entry of `added_tokens`.
struct AddedToken {
    id: usize,
    content: String,
    special: bool,
}

impl Tokenizer {
    fn load(dir: &Path, c: &HfConfig, config: &Json, log: &Log) -> Result<Tokenizer> {
        let tok_path = dir.join("tokenizer.json");
        let tok = read_json(&tok_path)?;
        let file = tok_path.display().to_string();
        let model = tok
            .get("model")
            .ok_or_else(|| anyhow!("{file}: no 'model' object"))?;
        let kind = model.get("type").and_then(Json::as_str).unwrap_or("BPE");
        ensure!(
            kind == "BPE",
            "{file}: tokenizer model '{kind}' is not supported (expected BPE)"
        );
        let added = added_tokens(&file, &tok, c.n_vocab)?;
        let (tokens, types) = vocab(&file, model, &added, c.n_vocab)?;
        let merges = merges(&file, model)?;
        let mut metadata: Vec<(String, Value)> = vec![
            ("tokenizer.ggml.model".into(), "gpt2".into()),
            ("tokenizer.ggml.pre".into(), "qwen2".into()),
            ("tokenizer.ggml.tokens".into(), Value::strings(tokens)),
            ("tokenizer.ggml.token_type".into(), Value::i32s(types)),
            ("tokenizer.ggml.merges".into(), Value::strings(merges)),
        ];
        let mut files = vec![tok_path];
        let tc_path = dir.join("tokenizer_config.json");
        let tc = if tc_path.is_file() {
            files.push(tc_path.clone());
            Some(read_json(&tc_path)?)
        } else {
            None
        };
        let special = SpecialSources::read(dir, tc.as_ref(), config, &mut files)?;
        metadata.extend(special.token_ids(&added, c.n_vocab, log));
        metadata.extend(add_flags(tc.as_ref()));
        if let Some(t) = chat_template(dir, tc.as_ref(), &mut files)? {
            metadata.push(("tokenizer.chat_template".into(), t.into()));
        }
        Ok(Tokenizer { metadata, files })
    }
}

fn added_tokens(file: &str, tok: &Json, n_vocab: usize) -> Result<Vec<AddedToken>> {
    let Some(list) = tok.get("added_tokens") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| anyhow!("{file}: 'added_tokens' is not an array"))?;
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let id = t.get("id").and_then(Json::as_u64);
            let content = t.get("content").and_then(Json::as_str);
            let (Some(id), Some(content)) = (id, content) else {
                bail!("{file}: added_tokens[{i}] needs an integer 'id' and a string 'content'");
            };
            ensure!(
                id < n_vocab as u64,
                "{file}: added token '{content}' has id {id}, but vocab_size is {n_vocab}"
            );
            Ok(AddedToken {
                id: id as usize,
                content: content.to_string(),
                special: t.get("special").and_then(Json::as_bool).unwrap_or(false),
            })
        })
        .collect()
}

/// One token string and type per id up to `vocab_size`, as llama.cpp's converter makes them.
fn vocab(
    file: &str,
    model: &Json,
    added: &[AddedToken],
    n_vocab: usize,
) -> Result<(Vec<String>, Vec<i32>)> {
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| anyhow!("{file}: model.vocab is not an object of token → id"))?;
    let mut tokens: Vec<Option<String>> = vec![None; n_vocab];
    let mut types = vec![TOKEN_NORMAL; n_vocab];
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| anyhow!("{file}: model.vocab['{text}'] is not a token id"))?;
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            anyhow!("{file}: token '{text}' has id {id}, but vocab_size is {n_vocab}")
        })?;
        if let Some(other) = slot {
            bail!("{file}: tokens '{other}' and '{text}' share id {id}");
        }
        *slot = Some(text.clone());
    }
    for t in added {
        tokens[t.id] = Some(t.content.clone());
        types[t.id] = if t.special {
            TOKEN_CONTROL
        } else {
            TOKEN_USER_DEFINED
        };
    }
    let tokens = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let pad = format!("[PAD{i}]");
            // Ids without a token become llama.cpp's unused padding placeholders. A vocab that
            // already holds that exact placeholder at that id (transformers' import of a GGUF
            // writes them back) gets the same type, so a round trip is exact.
            if t.as_deref().is_none_or(|t| t == pad) && types[i] == TOKEN_NORMAL {
                types[i] = TOKEN_UNUSED;
            }
            t.unwrap_or(pad)
        })
        .collect();
    Ok((tokens, types))
}

/// `model.merges`: `"a b"` strings, or `["a", "b"]` pairs (transformers ≥ 4.45) whose spaces
/// become U+0120 as gguf-py encodes them, so the GGUF form stays one space-separated string.
fn merges(file: &str, model: &Json) -> Result<Vec<String>> {
    let Some(list) = model.get("merges") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| anyhow!("{file}: model.merges is not an array"))?;
    let encode = |s: &str| s.replace(' ', "\u{0120}");
    list.iter()
        .enumerate()
        .map(|(i, m)| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) => match pair.as_slice() {
                [Json::String(a), Json::String(b)] => Ok(format!("{} {}", encode(a), encode(b))),
                _ => bail!("{file}: model.merges[{i}] is not a pair of strings"),
            },
            _ => bail!("{file}: model.merges[{i}] is neither \"a b\" nor [\"a\", \"b\"]"),
        })
        .collect()
}

/// Where special token ids come from, in priority order.
struct SpecialSources {
    tokenizer_config: Option<Json>,
    config: Json,
    generation: Option<Json>,
}

impl SpecialSources {
    fn read(
        dir: &Path,
        tc: Option<&Json>,
        config: &Json,
        files: &mut Vec<PathBuf>,
    ) -> Result<SpecialSources> {
        let gen_path = dir.join("generation_config.json");
        let generation = if gen_path.is_file() {
            files.push(gen_path.clone());
            Some(read_json(&gen_path)?)
        } else {
            None
        };
        Ok(SpecialSources {
            tokenizer_config: tc.cloned(),
            config: config.clone(),
            generation,
        })
    }

    /// `tokenizer.ggml.{bos,eos,unknown,padding}_token_id`.
    fn token_ids(&self, added: &[AddedToken], n_vocab: usize, log: &Log) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for (typ, key) in [
            ("bos", "bos"),
            ("eos", "eos"),
            ("unk", "unknown"),
            ("pad", "padding"),
        ] {
            let Some(id) = self.id_of(typ, added) else {
                continue;
            };
            if id >= n_vocab as u64 {
                log.line(&format!(
                    "{typ} token id {id} is not below vocab_size {n_vocab}: not recorded"
                ));
                continue;
            }
            out.push((
                format!("tokenizer.ggml.{key}_token_id"),
                Value::U32(id as u32),
            ));
        }
        out
    }

    fn id_of(&self, typ: &str, added: &[AddedToken]) -> Option<u64> {
        let by_text = self.tokenizer_config.as_ref().and_then(|tc| {
            let entry = tc.get(format!("{typ}_token"))?;
            let text = entry.as_str().or_else(|| entry.get("content")?.as_str())?;
            added
                .iter()
                .find(|t| t.content == text)
                .map(|t| t.id as u64)
        });
        let key = format!("{typ}_token_id");
        let by_id = |j: &Json| -> Option<u64> {
            let v = j.get(&key)?;
            // generation_config may list several (e.g. [im_end, endoftext]): the first counts.
            v.as_u64().or_else(|| v.as_array()?.first()?.as_u64())
        };
        by_text
            .or_else(|| by_id(&self.config))
            .or_else(|| self.generation.as_ref().and_then(by_id))
    }
}

/// `add_bos_token` / `add_eos_token` from tokenizer_config.json, when set.
fn add_flags(tc: Option<&Json>) -> Vec<(String, Value)> {
    let Some(tc) = tc else {
        return Vec::new();
    };
    ["bos", "eos"]
        .iter()
        .filter_map(|typ| {
            let v = tc.get(format!("add_{typ}_token"))?.as_bool()?;
            Some((format!("tokenizer.ggml.add_{typ}_token"), Value::Bool(v)))
        })
        .collect()
}

/// tokenizer_config.json's `chat_template` (a string, or the `default` of a named list), else
/// `chat_template.jinja`, else `chat_template.json`.
fn chat_template(
    dir: &Path,
    tc: Option<&Json>,
    files: &mut Vec<PathBuf>,
) -> Result<Option<String>> {
    if let Some(t) = tc.and_then(|tc| tc.get("chat_template")) {
        if let Some(s) = t.as_str() {
            return Ok(Some(s.to_string()));
        }
        let named: HashMap<&str, &str> = t
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| Some((e.get("name")?.as_str()?, e.get("template")?.as_str()?)))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(s) = named.get("default") {
            return Ok(Some(s.to_string()));
        }
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        files.push(jinja.clone());
        let text = fs::read_to_string(&jinja)
            .map_err(|e| anyhow!("{}: cannot read: {e}", jinja.display()))?;
        return Ok(Some(text));
    }
    let json_path = dir.join("chat_template.json");
    if json_path.is_file() {
        files.push(json_path.clone());
        let j = read_json(&json_path)?;
        return Ok(j
            .get("chat_template")
            .and_then(Json::as_str)
            .map(String::from));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_qwen2_names() {
        let m = |s| gguf_name(s, 2).unwrap();
        assert_eq!(m("model.embed_tokens.weight").unwrap(), "token_embd.weight");
        assert_eq!(m("lm_head.weight").unwrap(), "output.weight");
        assert_eq!(
            m("model.layers.1.self_attn.k_proj.bias").unwrap(),
            "blk.1.attn_k.bias"
        );
        assert_eq!(
            m("model.layers.0.mlp.down_proj.weight").unwrap(),
            "blk.0.ffn_down.weight"
        );
        assert_eq!(m("model.layers.0.self_attn.rotary_emb.inv_freq"), None);
        assert!(gguf_name("model.layers.2.mlp.up_proj.weight", 2).is_err());
        assert!(gguf_name("vision.encoder.weight", 2).is_err());
    }

    #[test]
    fn merges_in_both_forms() {
        let model: Json = serde_json::json!({"merges": ["a b", ["c d", "e"]]});
        assert_eq!(merges("t", &model).unwrap(), ["a b", "c\u{0120}d e"]);
        let bad: Json = serde_json::json!({"merges": [["a"]]});
        assert!(merges("t", &bad).is_err());
    }
}
