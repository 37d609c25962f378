//! Which type each tensor gets: llama.cpp's file types ("mixes") and per-tensor choices.
//!
//! This follows `llama_tensor_get_type` of llama.cpp's `src/llama-quant.cpp` for the types we
//! implement and the tensors a Qwen2 model has (no MoE, not Falcon, not a 70B Llama):
//!
//! - only tensors with at least two dimensions whose name ends in `weight` (and is not a
//!   `_norm.weight`) are quantized; everything else (norms, biases) is written as F32;
//! - F32 / F16 / BF16 files use that type for every quantizable tensor, with no mix;
//! - `output.weight` (and `token_embd.weight` when the embeddings are tied) gets Q8_0 when its
//!   rows do not fit the file type's block, else Q6_K unless the file type is Q8_0;
//! - `attn_v` and `ffn_down` get more bits in some layers (`use_more_bits`), `attn_output` in
//!   Q2_K / Q3_K_*: see [`MixState::choose`];
//! - a row length that is not a multiple of the chosen type's block falls back to a type with
//!   32-element blocks (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, Q2_K / Q3_K → Q4_0), or to F16
//!   when even 32 does not divide it. Current llama.cpp uses the same table (older builds sent
//!   Q2_K / Q3_K to IQ4_NL, which this crate does not implement).
//!
//! Layer positions come from counters advanced in llama.cpp's tensor order (see
//! [`llama_order`]), exactly as llama.cpp counts them. Builds of llama.cpp from before its
//! `weight_name_comparer` (2024) counted in plain name order (`blk.10` before `blk.2`), so
//! their Q4_K_M / Q5_K_M files give the extra bits to other layers (the same number of
//! tensors); the default model file is one of those.

use std::cmp::Ordering;
use std::fmt;

use crate::types::GgmlType;

/// A llama.cpp file type (`llama_ftype`): the default tensor type plus its per-tensor mix.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2_K,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
}

impl FileType {
    /// Every file type, in the order help texts list them.
    pub const ALL: [FileType; 17] = [
        FileType::F32,
        FileType::F16,
        FileType::BF16,
        FileType::Q8_0,
        FileType::Q4_0,
        FileType::Q4_1,
        FileType::Q5_0,
        FileType::Q5_1,
        FileType::Q2_K,
        FileType::Q3_K_S,
        FileType::Q3_K_M,
        FileType::Q3_K_L,
        FileType::Q4_K_S,
        FileType::Q4_K_M,
        FileType::Q5_K_S,
        FileType::Q5_K_M,
        FileType::Q6_K,
    ];

    /// The name llama.cpp's `llama-quantize` accepts (`Q4_K_M`, `F16`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            FileType::F32 => "F32",
            FileType::F16 => "F16",
            FileType::BF16 => "BF16",
            FileType::Q8_0 => "Q8_0",
            FileType::Q4_0 => "Q4_0",
            FileType::Q4_1 => "Q4_1",
            FileType::Q5_0 => "Q5_0",
            FileType::Q5_1 => "Q5_1",
            FileType::Q2_K => "Q2_K",
            FileType::Q3_K_S => "Q3_K_S",
            FileType::Q3_K_M => "Q3_K_M",
            FileType::Q3_K_L => "Q3_K_L",
            FileType::Q4_K_S => "Q4_K_S",
            FileType::Q4_K_M => "Q4_K_M",
            FileType::Q5_K_S => "Q5_K_S",
            FileType::Q5_K_M => "Q5_K_M",
            FileType::Q6_K => "Q6_K",
        }
    }

    /// The file type named `name` (case-insensitive).
    pub fn from_name(name: &str) -> Option<FileType> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// llama.cpp's `llama_ftype` value, stored as `general.file_type`.
    pub const fn llama_ftype(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q4_0 => 2,
            FileType::Q4_1 => 3,
            FileType::Q8_0 => 7,
            FileType::Q5_0 => 8,
            FileType::Q5_1 => 9,
            FileType::Q2_K => 10,
            FileType::Q3_K_S => 11,
            FileType::Q3_K_M => 12,
            FileType::Q3_K_L => 13,
            FileType::Q4_K_S => 14,
            FileType::Q4_K_M => 15,
            FileType::Q5_K_S => 16,
            FileType::Q5_K_M => 17,
            FileType::Q6_K => 18,
            FileType::BF16 => 32,
        }
    }

    /// The type of the tensors the mix does not single out (`llama_ftype_get_default_type`).
    pub const fn default_type(self) -> GgmlType {
        match self {
            FileType::F32 => GgmlType::F32,
            FileType::F16 => GgmlType::F16,
            FileType::BF16 => GgmlType::BF16,
            FileType::Q8_0 => GgmlType::Q8_0,
            FileType::Q4_0 => GgmlType::Q4_0,
            FileType::Q4_1 => GgmlType::Q4_1,
            FileType::Q5_0 => GgmlType::Q5_0,
            FileType::Q5_1 => GgmlType::Q5_1,
            FileType::Q2_K => GgmlType::Q2_K,
            FileType::Q3_K_S | FileType::Q3_K_M | FileType::Q3_K_L => GgmlType::Q3_K,
            FileType::Q4_K_S | FileType::Q4_K_M => GgmlType::Q4_K,
            FileType::Q5_K_S | FileType::Q5_K_M => GgmlType::Q5_K,
            FileType::Q6_K => GgmlType::Q6_K,
        }
    }

    /// Whether the mix applies (the default type is a block-quantized type).
    pub const fn is_quantized(self) -> bool {
        !matches!(self, FileType::F32 | FileType::F16 | FileType::BF16)
    }

    /// What the mix changes, for help texts.
    pub const fn mix_summary(self) -> &'static str {
        match self {
            FileType::F32 | FileType::F16 | FileType::BF16 | FileType::Q8_0 => "no mix",
            FileType::Q4_0 | FileType::Q4_1 | FileType::Q5_0 | FileType::Q5_1 => "output Q6_K",
            FileType::Q2_K => {
                "attn_v Q3_K (Q4_K with 4+ heads per KV head), ffn_down and \
                               attn_output Q3_K, output Q6_K"
            }
            FileType::Q3_K_S => "output Q6_K",
            FileType::Q3_K_M => {
                "attn_v, ffn_down and attn_output Q4_K (first ones Q5_K), output Q6_K"
            }
            FileType::Q3_K_L => "attn_v, ffn_down and attn_output Q5_K, output Q6_K",
            FileType::Q4_K_S => "first attn_v and ffn_down Q5_K, output Q6_K",
            FileType::Q4_K_M | FileType::Q5_K_M => "half of attn_v and ffn_down Q6_K, output Q6_K",
            FileType::Q5_K_S | FileType::Q6_K => "output Q6_K",
        }
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The model facts the mix depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MixModel {
    /// `block_count`: llama.cpp's `n_layer` (the ffn_* counters' range).
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// No `output.weight`: `token_embd.weight` is also the output head.
    pub tied_embeddings: bool,
    /// An importance matrix is used (changes Q4_0 / Q5_0 ffn_down).
    pub has_imatrix: bool,
}

impl MixModel {
    /// llama.cpp's `n_gqa()`: query heads per key/value head (integer division).
    fn n_gqa(&self) -> usize {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }
}

/// The type chosen for one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub ty: GgmlType,
    /// Set when the mix's type did not fit the row length and `ty` is the fallback.
    pub fallback: Option<Fallback>,
}

/// A fallback from `wanted` to `chosen` because of the row length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fallback {
    pub wanted: GgmlType,
    pub chosen: GgmlType,
    pub row_len: u64,
}

/// What role a tensor plays, from its name (llama.cpp's `tensor_category`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

fn category(name: &str) -> Category {
    let has = |s: &str| name.contains(s);
    match name {
        "output.weight" => Category::Output,
        "token_embd.weight" => Category::TokenEmbd,
        _ if has("attn_v.weight") => Category::AttnV,
        _ if has("attn_k.weight") => Category::AttnK,
        _ if has("attn_q.weight") => Category::AttnQ,
        _ if has("attn_output.weight") => Category::AttnOutput,
        _ if has("ffn_up") => Category::FfnUp,
        _ if has("ffn_gate") => Category::FfnGate,
        _ if has("ffn_down") => Category::FfnDown,
        _ => Category::Other,
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third between.
fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    let (i, n) = (i_layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8).rem_euclid(3) == 2
}

/// Whether llama.cpp quantizes this tensor at all (`tensor_allows_quantization`, the parts that
/// concern a Qwen2 model); the others keep a float type.
pub fn allows_quantization(name: &str, dims: &[u64]) -> bool {
    // ggml_n_dims ignores trailing dimensions of 1.
    let n_dims = dims.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1);
    n_dims >= 2 && name.ends_with("weight") && !name.contains("_norm.weight")
}

/// llama.cpp's tensor order (`weight_name_comparer`): tensors outside blocks first, then block
/// by block, by name within each. The mix's layer counters run in this order.
pub fn llama_order(a: &str, b: &str) -> Ordering {
    (block_index(a), a).cmp(&(block_index(b), b))
}

/// `N` of a `blk.N.` name, or -1 (sorts first) like llama.cpp's `sscanf` default.
fn block_index(name: &str) -> i64 {
    name.strip_prefix("blk.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|n| n.parse::<i64>().ok())
        .unwrap_or(-1)
}

/// The per-tensor choice, with llama.cpp's counters; feed it the tensors in [`llama_order`].
pub struct MixState {
    ftype: FileType,
    model: MixModel,
    n_attention_wv: usize,
    i_attention_wv: usize,
    i_ffn_down: usize,
}

impl MixState {
    /// `names`: every tensor of the model (to count the `attn_v` tensors, as llama.cpp does).
    pub fn new<'a>(
        ftype: FileType,
        model: MixModel,
        names: impl IntoIterator<Item = &'a str>,
    ) -> MixState {
        let n_attention_wv = names
            .into_iter()
            .filter(|n| category(n) == Category::AttnV)
            .count();
        MixState {
            ftype,
            model,
            n_attention_wv,
            i_attention_wv: 0,
            i_ffn_down: 0,
        }
    }

    /// The type of tensor `name` with shape `dims` (ggml order).
    pub fn choose(&mut self, name: &str, dims: &[u64]) -> Choice {
        let plain = |ty| Choice { ty, fallback: None };
        if !allows_quantization(name, dims) {
            return plain(GgmlType::F32);
        }
        let default = self.ftype.default_type();
        if !self.ftype.is_quantized() {
            return plain(default);
        }
        let wanted = self.mixed_type(name, dims[0], default);
        with_fallback(wanted, dims[0])
    }

    /// `llama_tensor_get_type_impl` for our file types.
    fn mixed_type(&mut self, name: &str, row_len: u64, default: GgmlType) -> GgmlType {
        use FileType as F;
        use GgmlType as G;
        let ft = self.ftype;
        let cat = category(name);
        if cat == Category::Output || (self.model.tied_embeddings && cat == Category::TokenEmbd) {
            return if !row_len.is_multiple_of(default.block_size() as u64) {
                G::Q8_0
            } else if default != G::Q8_0 {
                G::Q6_K
            } else {
                default
            };
        }
        match cat {
            Category::AttnV => {
                let (i, n) = (self.i_attention_wv, self.n_attention_wv);
                self.i_attention_wv += 1;
                match ft {
                    F::Q2_K if self.model.n_gqa() >= 4 => G::Q4_K,
                    F::Q2_K => G::Q3_K,
                    F::Q3_K_M if i < 2 => G::Q5_K,
                    F::Q3_K_M => G::Q4_K,
                    F::Q3_K_L => G::Q5_K,
                    F::Q4_K_M | F::Q5_K_M if use_more_bits(i, n) => G::Q6_K,
                    F::Q4_K_S if i < 4 => G::Q5_K,
                    _ => default,
                }
            }
            Category::FfnDown => {
                let (i, n) = (self.i_ffn_down, self.model.n_layer);
                self.i_ffn_down += 1;
                match ft {
                    F::Q2_K => G::Q3_K,
                    F::Q3_K_M if i < n / 16 => G::Q5_K,
                    F::Q3_K_M => G::Q4_K,
                    F::Q3_K_L => G::Q5_K,
                    F::Q4_K_M | F::Q5_K_M if use_more_bits(i, n) => G::Q6_K,
                    F::Q4_K_S if i < n / 8 => G::Q5_K,
                    // Only with an imatrix, so that a plain run stays as before (llama.cpp).
                    F::Q4_0 if self.model.has_imatrix && i < n / 8 => G::Q4_1,
                    F::Q5_0 if self.model.has_imatrix && i < n / 8 => G::Q5_1,
                    _ => default,
                }
            }
            Category::AttnOutput => match ft {
                F::Q2_K => G::Q3_K,
                F::Q3_K_M => G::Q4_K,
                F::Q3_K_L => G::Q5_K,
                _ => default,
            },
            // Q, K, gate, up and an untied token_embd change only in the IQ mixes.
            _ => default,
        }
    }
}

/// `wanted`, or llama.cpp's fallback when `row_len` is not a whole number of its blocks.
fn with_fallback(wanted: GgmlType, row_len: u64) -> Choice {
    let fits = |t: GgmlType| row_len.is_multiple_of(t.block_size() as u64);
    if fits(wanted) {
        return Choice {
            ty: wanted,
            fallback: None,
        };
    }
    let ty = match fallback_type(wanted) {
        Some(t) if fits(t) => t,
        _ => GgmlType::F16,
    };
    Choice {
        ty,
        fallback: Some(Fallback {
            wanted,
            chosen: ty,
            row_len,
        }),
    }
}

/// llama.cpp's `tensor_type_fallback` table, for the types we have.
fn fallback_type(t: GgmlType) -> Option<GgmlType> {
    match t {
        // llama.cpp (current) sends both to Q4_0; older builds used IQ4_NL.
        GgmlType::Q2_K | GgmlType::Q3_K => Some(GgmlType::Q4_0),
        GgmlType::Q4_K => Some(GgmlType::Q5_0),
        GgmlType::Q5_K => Some(GgmlType::Q5_1),
        GgmlType::Q6_K => Some(GgmlType::Q8_0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen05b(tied: bool) -> MixModel {
        MixModel {
            n_layer: 24,
            n_head: 14,
            n_head_kv: 2,
            tied_embeddings: tied,
            has_imatrix: false,
        }
    }

    /// The names and shapes of the 0.5B model, in llama.cpp order.
    fn names_05b() -> Vec<(String, Vec<u64>)> {
        let mut v = vec![
            ("output.weight".to_string(), vec![896, 151936]),
            ("token_embd.weight".to_string(), vec![896, 151936]),
            ("output_norm.weight".to_string(), vec![896]),
        ];
        for i in 0..24 {
            for (part, dims) in [
                ("attn_norm.weight", vec![896]),
                ("attn_q.weight", vec![896, 896]),
                ("attn_q.bias", vec![896]),
                ("attn_k.weight", vec![896, 128]),
                ("attn_v.weight", vec![896, 128]),
                ("attn_output.weight", vec![896, 896]),
                ("ffn_gate.weight", vec![896, 4864]),
                ("ffn_up.weight", vec![896, 4864]),
                ("ffn_down.weight", vec![4864, 896]),
            ] {
                v.push((format!("blk.{i}.{part}"), dims));
            }
        }
        v.sort_by(|a, b| llama_order(&a.0, &b.0));
        v
    }

    fn choose_all(ft: FileType, tied: bool) -> Vec<(String, GgmlType)> {
        let names = names_05b();
        let mut st = MixState::new(ft, qwen05b(tied), names.iter().map(|(n, _)| n.as_str()));
        names
            .iter()
            .map(|(n, d)| (n.clone(), st.choose(n, d).ty))
            .collect()
    }

    fn type_of(all: &[(String, GgmlType)], name: &str) -> GgmlType {
        all.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn q4_k_m_gives_more_bits_to_the_use_more_bits_layers() {
        let all = choose_all(FileType::Q4_K_M, false);
        assert_eq!(type_of(&all, "output.weight"), GgmlType::Q8_0);
        assert_eq!(type_of(&all, "token_embd.weight"), GgmlType::Q5_0);
        assert_eq!(type_of(&all, "blk.0.attn_norm.weight"), GgmlType::F32);
        assert_eq!(type_of(&all, "blk.0.attn_q.bias"), GgmlType::F32);
        assert_eq!(type_of(&all, "blk.0.attn_q.weight"), GgmlType::Q5_0);
        let more = [0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23];
        for i in 0..24 {
            let (v, d) = if more.contains(&i) {
                (GgmlType::Q8_0, GgmlType::Q6_K)
            } else {
                (GgmlType::Q5_0, GgmlType::Q4_K)
            };
            assert_eq!(type_of(&all, &format!("blk.{i}.attn_v.weight")), v, "{i}");
            assert_eq!(type_of(&all, &format!("blk.{i}.ffn_down.weight")), d, "{i}");
        }
    }

    #[test]
    fn tied_embeddings_get_the_output_treatment() {
        let all = choose_all(FileType::Q4_0, true);
        // Q4_0 blocks fit 896, so the output rule picks Q6_K, which does not: Q8_0.
        assert_eq!(type_of(&all, "token_embd.weight"), GgmlType::Q8_0);
        let untied = choose_all(FileType::Q4_0, false);
        assert_eq!(type_of(&untied, "token_embd.weight"), GgmlType::Q4_0);
    }

    #[test]
    fn float_types_have_no_mix() {
        for ft in [FileType::F16, FileType::BF16, FileType::F32] {
            let all = choose_all(ft, false);
            assert_eq!(type_of(&all, "output.weight"), ft.default_type());
            assert_eq!(type_of(&all, "blk.3.ffn_down.weight"), ft.default_type());
            assert_eq!(type_of(&all, "blk.3.attn_norm.weight"), GgmlType::F32);
        }
    }

    #[test]
    fn fallback_table() {
        let c = with_fallback(GgmlType::Q3_K, 896);
        assert_eq!(c.ty, GgmlType::Q4_0);
        assert_eq!(with_fallback(GgmlType::Q5_K, 896).ty, GgmlType::Q5_1);
        assert_eq!(with_fallback(GgmlType::Q6_K, 896).ty, GgmlType::Q8_0);
        assert_eq!(with_fallback(GgmlType::Q4_K, 100).ty, GgmlType::F16);
        assert_eq!(with_fallback(GgmlType::Q4_K, 512).fallback, None);
    }

    #[test]
    fn llama_order_sorts_blocks_numerically() {
        let mut v = vec![
            "blk.10.a",
            "blk.2.b",
            "token_embd.weight",
            "blk.2.a",
            "output.weight",
        ];
        v.sort_by(|a, b| llama_order(a, b));
        assert_eq!(
            v,
            [
                "output.weight",
                "token_embd.weight",
                "blk.2.a",
                "blk.2.b",
                "blk.10.a"
            ]
        );
    }

    #[test]
    fn names_round_trip() {
        for ft in FileType::ALL {
            assert_eq!(FileType::from_name(&ft.name().to_lowercase()), Some(ft));
        }
        assert_eq!(FileType::from_name("Q4_K"), None);
    }
}
