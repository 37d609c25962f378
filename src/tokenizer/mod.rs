//! Byte-level BPE tokenizer for Qwen2-family models, built from GGUF tokenizer metadata
//! (`tokenizer.ggml.model = gpt2`, `tokenizer.ggml.pre = qwen2`).
//!
//! Encoding: added tokens written literally in the text are found first (control tokens only
//! when asked; user-defined ones always, as Hugging Face and llama.cpp both do). The text
//! between them is split by the Qwen2 pre-tokenizer regex, and each piece is byte-pair merged.
//! There is no normalization step: Qwen2's `tokenizer.json` has `"normalizer": null` (no NFC),
//! so text is encoded exactly as given; [`Tokenizer::from_hf_tokenizer_json`] refuses files
//! that do declare a normalizer.

mod bpe;
mod bytes;
mod hf;
mod pretokenize;
mod special;
mod stream;

use std::collections::HashMap;

use anyhow::{bail, Context};

use bpe::{Merges, Scratch};
use bytes::ByteAlphabet;
use pretokenize::Qwen2Splitter;
pub use pretokenize::QWEN2_PATTERN;
use special::{Segment, SpecialMatcher};
pub use stream::StreamDecoder;

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
pub const TOKEN_TYPE_NORMAL: i32 = 1;
pub const TOKEN_TYPE_UNKNOWN: i32 = 2;
pub const TOKEN_TYPE_CONTROL: i32 = 3;
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;
pub const TOKEN_TYPE_UNUSED: i32 = 5;
pub const TOKEN_TYPE_BYTE: i32 = 6;

/// A loaded vocabulary with its merges; immutable after construction, so one instance can be
/// shared across threads.
pub struct Tokenizer {
    ids: HashMap<String, u32>,
    types: Vec<i32>,
    /// Raw bytes of every token, back to back; token `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<usize>,
    /// Id of the single-byte token for each byte value: where every piece's BPE starts.
    byte_ids: [u32; 256],
    merges: Merges,
    splitter: Qwen2Splitter,
    special: SpecialMatcher,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds a tokenizer from the GGUF arrays `tokenizer.ggml.tokens`, `tokenizer.ggml.token_type`
    /// and `tokenizer.ggml.merges` (rank = index) and the `tokenizer.ggml.pre` name, which must
    /// be `"qwen2"`. Malformed input is reported as an error naming the field at fault.
    pub fn from_parts(
        tokens: Vec<String>,
        token_types: Vec<i32>,
        merges: Vec<String>,
        pre: &str,
    ) -> anyhow::Result<Tokenizer> {
        if pre != "qwen2" {
            bail!(
                "tokenizer.ggml.pre: pre-tokenizer {pre:?} is not supported (expected \"qwen2\")"
            );
        }
        check_lengths(&tokens, &token_types)?;
        let alphabet = ByteAlphabet::new();
        let (bytes, offsets) = token_bytes_table(&alphabet, &tokens, &token_types)?;
        let ids = index_tokens(tokens)?;
        let byte_ids = byte_token_ids(&alphabet, &ids)?;
        let merges = parse_merges(&ids, &merges)?;
        let special = special_matcher(&token_types, &bytes, &offsets);
        Ok(Tokenizer {
            ids,
            types: token_types,
            bytes,
            offsets,
            byte_ids,
            merges,
            splitter: Qwen2Splitter::new().context("compiling the Qwen2 pre-tokenizer regex")?,
            special,
        })
    }

    /// Token ids for `text`, without BOS. With `parse_special`, control tokens written in the
    /// text (e.g. `<|im_start|>`) become their ids; otherwise they are encoded as plain text.
    /// User-defined tokens (e.g. `<tool_call>`) are always recognised, matching Hugging Face
    /// and llama.cpp.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut scratch = Scratch::default();
        for segment in self.special.segments(text, parse_special) {
            match segment {
                Segment::Token(id) => out.push(id),
                Segment::Text(t) => self.encode_plain(t, &mut scratch, &mut out),
            }
        }
        out
    }

    fn encode_plain(&self, text: &str, scratch: &mut Scratch, out: &mut Vec<u32>) {
        self.splitter.split(text, |piece| {
            let byte_ids = piece.bytes().map(|b| self.byte_ids[usize::from(b)]);
            bpe::merge_piece(&self.merges, byte_ids, scratch, out);
        });
    }

    /// The pieces the pre-tokenizer cuts `text` into (BPE never merges across them), with no
    /// added-token handling. Exposed so tests can check it against the reference regex.
    pub fn pre_tokenize<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces = Vec::new();
        self.splitter.split(text, |p| pieces.push(p));
        pieces
    }

    /// Text of `ids`; control and user-defined tokens render as their text. Invalid UTF-8
    /// (only possible for id sequences the encoder would not produce) becomes U+FFFD, and
    /// out-of-range ids are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut buf = Vec::new();
        for &id in ids {
            buf.extend_from_slice(self.token_bytes(id).unwrap_or_default());
        }
        match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// Raw bytes of a token: byte-level decoded for normal tokens, the text itself for control,
    /// user-defined and unknown tokens, the byte for `<0xNN>` byte tokens, nothing for unused.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let i = usize::try_from(id).ok()?;
        let (start, end) = (*self.offsets.get(i)?, *self.offsets.get(i + 1)?);
        self.bytes.get(start..end)
    }

    /// Id of a token by its stored string (byte-level form for normal tokens, e.g. `"Ġthe"`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    pub fn vocab_size(&self) -> usize {
        self.types.len()
    }

    /// The GGUF token type of `id` (see the `TOKEN_TYPE_*` constants).
    pub fn token_type(&self, id: u32) -> Option<i32> {
        self.types.get(usize::try_from(id).ok()?).copied()
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.token_type(id) == Some(TOKEN_TYPE_CONTROL)
    }
}

fn check_lengths(tokens: &[String], token_types: &[i32]) -> anyhow::Result<()> {
    if tokens.is_empty() {
        bail!("tokenizer.ggml.tokens: expected a non-empty vocabulary");
    }
    if tokens.len() != token_types.len() {
        bail!(
            "tokenizer.ggml.token_type: expected one type per token ({} tokens), got {}",
            tokens.len(),
            token_types.len()
        );
    }
    // u32::MAX itself is reserved as the BPE's "no token" marker.
    if u32::try_from(tokens.len()).map_or(true, |n| n == u32::MAX) {
        bail!(
            "tokenizer.ggml.tokens: {} tokens do not fit in u32 ids",
            tokens.len()
        );
    }
    Ok(())
}

/// Concatenated raw bytes of all tokens plus the offset table indexing them.
fn token_bytes_table(
    alphabet: &ByteAlphabet,
    tokens: &[String],
    types: &[i32],
) -> anyhow::Result<(Vec<u8>, Vec<usize>)> {
    let mut bytes = Vec::new();
    let mut offsets = Vec::with_capacity(tokens.len() + 1);
    offsets.push(0);
    for (i, (token, &ty)) in tokens.iter().zip(types).enumerate() {
        match ty {
            TOKEN_TYPE_NORMAL => bytes.extend(alphabet.decode(token)),
            TOKEN_TYPE_UNKNOWN | TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED => {
                bytes.extend_from_slice(token.as_bytes())
            }
            // Padding entries such as "[PAD151665]": never produced, and render as nothing
            // (as in llama.cpp) rather than leaking placeholder text.
            TOKEN_TYPE_UNUSED => {}
            TOKEN_TYPE_BYTE => bytes.push(parse_byte_token(token).with_context(|| {
                format!(
                    "tokenizer.ggml.tokens[{i}]: byte token {token:?} is not of the form <0xNN>"
                )
            })?),
            _ => bail!("tokenizer.ggml.token_type[{i}]: expected a type from 1 to 6, got {ty}"),
        }
        offsets.push(bytes.len());
    }
    Ok((bytes, offsets))
}

/// Parses a byte token such as `<0x0A>`.
fn parse_byte_token(token: &str) -> anyhow::Result<u8> {
    let hex = token
        .strip_prefix("<0x")
        .and_then(|t| t.strip_suffix('>'))
        .filter(|h| h.len() == 2)
        .context("missing <0x..> wrapper")?;
    Ok(u8::from_str_radix(hex, 16)?)
}

/// Token string → id, refusing duplicates (a repeated string would make lookups ambiguous).
fn index_tokens(tokens: Vec<String>) -> anyhow::Result<HashMap<String, u32>> {
    let mut ids = HashMap::with_capacity(tokens.len());
    for (id, token) in (0u32..).zip(tokens) {
        if let Some(first) = ids.get(&token) {
            bail!("tokenizer.ggml.tokens: duplicate token {token:?} at indices {first} and {id}");
        }
        ids.insert(token, id);
    }
    Ok(ids)
}

/// The single-byte token for every byte value; byte-level BPE cannot encode arbitrary text
/// without all 256 of them.
fn byte_token_ids(
    alphabet: &ByteAlphabet,
    ids: &HashMap<String, u32>,
) -> anyhow::Result<[u32; 256]> {
    let mut out = [0u32; 256];
    for (b, slot) in (0..=255u8).zip(out.iter_mut()) {
        let text = alphabet.char_of(b).to_string();
        *slot = *ids.get(&text).with_context(|| {
            format!(
                "tokenizer.ggml.tokens: expected a byte-level token {text:?} for byte 0x{b:02X} \
                 (a gpt2-style vocabulary has one for each of the 256 bytes)"
            )
        })?;
    }
    Ok(out)
}

fn parse_merges(ids: &HashMap<String, u32>, merges: &[String]) -> anyhow::Result<Merges> {
    let mut table = Merges::with_capacity(merges.len());
    for (rank, merge) in (0u32..).zip(merges) {
        let (left, right, merged) = parse_merge(ids, merge)
            .with_context(|| format!("tokenizer.ggml.merges[{rank}] ({merge:?})"))?;
        table.insert(left, right, rank, merged);
    }
    Ok(table)
}

/// Ids of the two parts of a merge line `"left right"` and of their concatenation.
fn parse_merge(ids: &HashMap<String, u32>, merge: &str) -> anyhow::Result<(u32, u32, u32)> {
    // Byte-level tokens never contain a literal space, so exactly one space separates them.
    let (left, right) = merge
        .split_once(' ')
        .filter(|(l, r)| !l.is_empty() && !r.is_empty() && !r.contains(' '))
        .context("expected two tokens separated by one space")?;
    let id = |t: &str| {
        ids.get(t)
            .copied()
            .with_context(|| format!("token {t:?} is not in tokenizer.ggml.tokens"))
    };
    Ok((id(left)?, id(right)?, id(&format!("{left}{right}"))?))
}

/// Matcher for the added tokens: control tokens and user-defined ones. Their stored bytes
/// are their literal text, which is what appears in input.
fn special_matcher(types: &[i32], bytes: &[u8], offsets: &[usize]) -> SpecialMatcher {
    let added = (0u32..).zip(types).filter_map(|(id, &ty)| {
        let i = id as usize;
        let text = &bytes[offsets[i]..offsets[i + 1]];
        match ty {
            TOKEN_TYPE_CONTROL => Some((text, id, true)),
            TOKEN_TYPE_USER_DEFINED => Some((text, id, false)),
            _ => None,
        }
    });
    SpecialMatcher::new(added)
}
