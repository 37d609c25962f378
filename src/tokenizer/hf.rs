//! Loading a Hugging Face `tokenizer.json` (as shipped next to Qwen2 checkpoints).
//!
//! It is turned into the same arrays a GGUF file carries and passed to
//! [`Tokenizer::from_parts`], so both sources go through one validated path. Token types follow
//! llama.cpp's GGUF converter: added tokens are control (special) or user-defined (not special),
//! everything else normal, and ids missing from the file become unused `[PADn]` entries.

use std::path::Path;

use anyhow::{bail, Context};
use serde_json::Value;

use super::{
    Tokenizer, QWEN2_PATTERN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNUSED,
    TOKEN_TYPE_USER_DEFINED,
};

impl Tokenizer {
    /// Reads a Hugging Face `tokenizer.json` with a byte-level BPE model and the Qwen2
    /// pre-tokenizer, and no normalizer.
    pub fn from_hf_tokenizer_json(path: &Path) -> anyhow::Result<Tokenizer> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let json: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        from_hf_value(&json).with_context(|| format!("loading {}", path.display()))
    }
}

fn from_hf_value(json: &Value) -> anyhow::Result<Tokenizer> {
    check_pipeline(json)?;
    let model = &json["model"];
    if model["type"] != "BPE" {
        bail!("model.type: expected \"BPE\", got {}", model["type"]);
    }
    let (tokens, types) = vocabulary(model, &json["added_tokens"])?;
    let merges = merges(&model["merges"])?;
    Tokenizer::from_parts(tokens, types, merges, "qwen2")
}

/// Refuses pipelines this tokenizer would silently get wrong: a normalizer (e.g. NFC) or a
/// pre-tokenizer other than Qwen2's split regex.
fn check_pipeline(json: &Value) -> anyhow::Result<()> {
    if !json["normalizer"].is_null() {
        bail!("normalizer: expected null, got {}", json["normalizer"]);
    }
    if !contains_string(&json["pre_tokenizer"], QWEN2_PATTERN) {
        bail!("pre_tokenizer: expected a Split on the Qwen2 regex");
    }
    Ok(())
}

fn contains_string(v: &Value, needle: &str) -> bool {
    match v {
        Value::String(s) => s == needle,
        Value::Array(items) => items.iter().any(|x| contains_string(x, needle)),
        Value::Object(map) => map.values().any(|x| contains_string(x, needle)),
        _ => false,
    }
}

/// Tokens indexed by id, with their GGUF token types.
fn vocabulary(model: &Value, added: &Value) -> anyhow::Result<(Vec<String>, Vec<i32>)> {
    let mut slots: Vec<Option<(String, i32)>> = Vec::new();
    let vocab = model["vocab"]
        .as_object()
        .context("model.vocab: expected an object")?;
    for (token, id) in vocab {
        let id = id_of(id).with_context(|| format!("model.vocab[{token:?}]"))?;
        place(&mut slots, id, token, TOKEN_TYPE_NORMAL)
            .with_context(|| format!("model.vocab[{token:?}]"))?;
    }
    let added = added
        .as_array()
        .context("added_tokens: expected an array")?;
    for (i, entry) in added.iter().enumerate() {
        let content = entry["content"].as_str();
        let content =
            content.with_context(|| format!("added_tokens[{i}].content: expected a string"))?;
        let id = id_of(&entry["id"]).with_context(|| format!("added_tokens[{i}].id"))?;
        let ty = if entry["special"].as_bool() == Some(true) {
            TOKEN_TYPE_CONTROL
        } else {
            TOKEN_TYPE_USER_DEFINED
        };
        // An added token may repeat its vocab entry; it then only sets the type.
        if let Some(slot) = slots.get_mut(id) {
            *slot = None;
        }
        place(&mut slots, id, content, ty).with_context(|| format!("added_tokens[{i}]"))?;
    }
    let filled = slots
        .into_iter()
        .enumerate()
        .map(|(id, slot)| slot.unwrap_or_else(|| (format!("[PAD{id}]"), TOKEN_TYPE_UNUSED)));
    Ok(filled.unzip())
}

fn id_of(v: &Value) -> anyhow::Result<usize> {
    let id = v.as_u64().context("expected a non-negative integer id")?;
    usize::try_from(id)
        .ok()
        .filter(|&i| i < u32::MAX as usize)
        .context("id out of range")
}

fn place(
    slots: &mut Vec<Option<(String, i32)>>,
    id: usize,
    token: &str,
    ty: i32,
) -> anyhow::Result<()> {
    if slots.len() <= id {
        slots.resize(id + 1, None);
    }
    if let Some((other, _)) = &slots[id] {
        bail!("id {id} is already taken by {other:?}");
    }
    slots[id] = Some((token.to_owned(), ty));
    Ok(())
}

/// Merges as `"left right"` lines; newer files store `["left", "right"]` pairs instead.
fn merges(v: &Value) -> anyhow::Result<Vec<String>> {
    let list = v.as_array().context("model.merges: expected an array")?;
    let line = |(i, m): (usize, &Value)| -> anyhow::Result<String> {
        match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(a), Value::String(b)] => Ok(format!("{a} {b}")),
                _ => bail!("model.merges[{i}]: expected two strings"),
            },
            _ => bail!("model.merges[{i}]: expected a string or a pair of strings"),
        }
    };
    list.iter().enumerate().map(line).collect()
}
