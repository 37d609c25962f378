//! Tokenizer tests against the reference ids in `shared/reference/tokenize-dev.jsonl`, which
//! both Hugging Face `tokenizers` and llama.cpp reproduce, using the checkpoint's
//! `tokenizer.json` as the vocabulary.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use marco::tokenizer::{StreamDecoder, Tokenizer, QWEN2_PATTERN};
use serde_json::Value;

fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference")
}

/// Built once: parsing the 11 MB `tokenizer.json` is the slowest step of these tests.
/// Its `"normalizer": null` is checked by the loader, which is why no NFC step exists.
fn qwen() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = reference_dir().join("hf-qwen2.5-coder-0.5b/tokenizer.json");
        Tokenizer::from_hf_tokenizer_json(&path).expect("loading reference tokenizer.json")
    })
}

struct Row {
    lang: String,
    line: u64,
    text: String,
    ids: Vec<u32>,
}

fn rows() -> &'static [Row] {
    static ROWS: OnceLock<Vec<Row>> = OnceLock::new();
    ROWS.get_or_init(|| {
        let path = reference_dir().join("tokenize-dev.jsonl");
        let data = std::fs::read_to_string(&path).expect("reading tokenize-dev.jsonl");
        data.lines().map(parse_row).collect()
    })
}

fn parse_row(line: &str) -> Row {
    let v: Value = serde_json::from_str(line).expect("row is JSON");
    let ids = v["ids"].as_array().expect("ids array");
    Row {
        lang: v["lang"].as_str().expect("lang").to_owned(),
        line: v["line"].as_u64().expect("line"),
        text: v["text"].as_str().expect("text").to_owned(),
        ids: ids.iter().map(|x| x.as_u64().expect("id") as u32).collect(),
    }
}

/// `edge` rows contain chat markup that must be parsed as special tokens.
fn encode_row(tok: &Tokenizer, row: &Row) -> Vec<u32> {
    tok.encode(&row.text, row.lang == "edge")
}

#[test]
fn reproduces_every_reference_row() {
    let tok = qwen();
    let rows = rows();
    assert_eq!(rows.len(), 6222);
    let start = Instant::now();
    let encoded: Vec<Vec<u32>> = rows.iter().map(|r| encode_row(tok, r)).collect();
    let elapsed = start.elapsed();
    let n_ids: usize = encoded.iter().map(Vec::len).sum();
    eprintln!("encoded {} rows ({n_ids} ids) in {elapsed:?}", rows.len());
    let mut failures = Vec::new();
    for (row, got) in rows.iter().zip(&encoded) {
        if *got != row.ids {
            failures.push(format!(
                "{} line {}: {:?}\n  want {:?}\n  got  {:?}",
                row.lang, row.line, row.text, row.ids, got
            ));
        }
    }
    let shown: Vec<&String> = failures.iter().take(5).collect();
    assert!(
        failures.is_empty(),
        "{} of {} rows differ, e.g. {shown:#?}",
        failures.len(),
        rows.len()
    );
}

#[test]
fn decodes_every_reference_row_exactly() {
    let tok = qwen();
    for row in rows() {
        assert_eq!(
            tok.decode(&row.ids),
            row.text,
            "{} line {}",
            row.lang,
            row.line
        );
    }
}

/// The pre-tokenizer emulates the regex's `\s+(?!\S)` look-ahead by hand; compare it with the
/// real pattern run by fancy-regex's backtracking engine.
#[test]
fn pre_tokenizer_matches_reference_regex() {
    let tok = qwen();
    let regex = fancy_regex::Regex::new(QWEN2_PATTERN).unwrap();
    let tricky = [
        "a  \t b",
        "  \n  x",
        "x\u{3000}\u{3000}y",
        "end   ",
        "\r\n\r\n  \tfoo",
        "'S 'LL 'Re 'd's",
        "hello!!!\n\n world",
        "1 2  3   4",
        "\u{a0}\u{a0}word",
        "tab\t\tword \t\n",
        " \u{2003}!?  ...\r\n\r\n",
        "",
        " ",
        "\n \n \n",
    ];
    let short = all_short_strings();
    let texts = rows().iter().map(|r| r.text.as_str()).chain(tricky);
    for text in texts.chain(short.iter().map(String::as_str)) {
        let want: Vec<&str> = regex.find_iter(text).map(|m| m.unwrap().as_str()).collect();
        assert_eq!(tok.pre_tokenize(text), want, "{text:?}");
    }
}

/// Every string of up to four characters drawn from one representative of each class the
/// regex distinguishes (newlines, other spaces, letters, digits, punctuation, apostrophes).
fn all_short_strings() -> Vec<String> {
    let alphabet = [
        ' ', '\t', '\n', '\r', '\u{3000}', 'a', 's', 'L', '1', '!', '\'',
    ];
    let mut all = vec![String::new()];
    let mut last = vec![String::new()];
    for _ in 0..4 {
        last = last
            .iter()
            .flat_map(|s| alphabet.iter().map(move |&c| format!("{s}{c}")))
            .collect();
        all.extend(last.iter().cloned());
    }
    all
}

#[test]
fn special_tokens_only_when_asked() {
    let tok = qwen();
    let im_start = tok.token_id("<|im_start|>").unwrap();
    assert_eq!(im_start, 151644);
    assert!(tok.is_control(im_start));
    assert_eq!(tok.encode("<|im_start|>", true), [im_start]);
    let plain = tok.encode("<|im_start|>", false);
    assert!(plain.len() > 1 && !plain.contains(&im_start));
    assert_eq!(tok.decode(&plain), "<|im_start|>");
    // User-defined tokens are recognised either way, as in Hugging Face and llama.cpp.
    let tool_call = tok.token_id("<tool_call>").unwrap();
    assert!(!tok.is_control(tool_call));
    assert_eq!(tok.encode("<tool_call>", false), [tool_call]);
    assert_eq!(tok.encode("x<tool_call>", true)[1..], [tool_call]);
}

#[test]
fn vocabulary_accessors() {
    let tok = qwen();
    assert_eq!(tok.vocab_size(), 151_936);
    let the = tok.token_id("Ġthe").unwrap();
    assert_eq!(tok.token_bytes(the), Some(&b" the"[..]));
    assert_eq!(tok.token_bytes(151_645), Some(&b"<|im_end|>"[..]));
    assert_eq!(tok.token_bytes(u32::MAX), None);
    assert!(!tok.is_control(the) && !tok.is_control(u32::MAX));
    // Unknown ids are skipped rather than panicking.
    assert_eq!(tok.decode(&[the, 9_999_999]), " the");
}

/// Pushes ids one at a time; returns the pieces (the last one from `finish`).
fn stream(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut dec = StreamDecoder::new();
    let mut pieces: Vec<String> = ids.iter().map(|&id| dec.push(tok, id)).collect();
    pieces.push(dec.finish());
    pieces
}

#[test]
fn stream_decoder_reassembles_multibyte_text() {
    let tok = qwen();
    let langs = ["zho_Hans", "tha_Thai", "jpn_Jpan", "edge"];
    let mut held_back = 0;
    for row in rows().iter().filter(|r| langs.contains(&r.lang.as_str())) {
        let pieces = stream(tok, &row.ids);
        assert_eq!(pieces.concat(), row.text, "{} line {}", row.lang, row.line);
        assert_eq!(
            pieces.last().map(String::as_str),
            Some(""),
            "nothing left for finish"
        );
        // A token that ends mid-character must produce an empty piece, never U+FFFD.
        assert!(!pieces.concat().contains('\u{FFFD}'));
        held_back += row
            .ids
            .iter()
            .zip(&pieces)
            .filter(|(&id, p)| {
                std::str::from_utf8(tok.token_bytes(id).unwrap()).is_err() && p.is_empty()
            })
            .count();
    }
    assert!(
        held_back > 100,
        "expected many partial-character tokens, saw {held_back}"
    );
}

#[test]
fn stream_decoder_holds_back_a_split_emoji() {
    let tok = qwen();
    // From the reference `edge` row "Emoji 🤖🚀 ...": the robot's four bytes are spread over
    // three tokens, the first being " \xF0\x9F"; the rocket is a single token.
    let ids = tok.encode(" 🤖🚀", false);
    assert_eq!(ids, [11162, 97, 244, 145836]);
    assert_eq!(tok.token_bytes(ids[0]), Some(&b" \xF0\x9F"[..]));
    assert_eq!(stream(tok, &ids), [" ", "", "🤖", "🚀", ""]);

    // Flushing an unfinished character is lossy; a stray continuation byte is replaced at once.
    let mut dec = StreamDecoder::new();
    assert_eq!(dec.push(tok, ids[0]), " ");
    assert_eq!(dec.finish(), "\u{FFFD}");
    let continuation = tok.token_id("\u{A4}").unwrap(); // byte 0xA4 stands for itself
    assert_eq!(tok.token_bytes(continuation), Some(&[0xA4u8][..]));
    assert_eq!(dec.push(tok, continuation), "\u{FFFD}");
    assert_eq!(dec.push(tok, ids[0]), " ");
    assert_eq!(dec.push(tok, 11), "\u{FFFD},"); // "," cannot continue the pending F0 9F
    assert_eq!(dec.finish(), "");
}

/// The GPT-2 byte-level alphabet, written out independently of the library.
fn byte_level_tokens() -> Vec<String> {
    let mut shifted = 256u32;
    (0..=255u32)
        .map(|b| {
            let keep = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
            let code = if keep {
                b
            } else {
                shifted += 1;
                shifted - 1
            };
            char::from_u32(code).unwrap().to_string()
        })
        .collect()
}

/// A tiny valid vocabulary: the 256 bytes, "ab", "abc", a control and a user-defined token.
struct Parts {
    tokens: Vec<String>,
    types: Vec<i32>,
    merges: Vec<String>,
}

fn tiny() -> Parts {
    let mut tokens = byte_level_tokens();
    tokens.extend(["ab", "abc", "<|x|>", "<u>"].map(String::from));
    let mut types = vec![1; 258];
    types.extend([3, 4]);
    let merges = vec!["a b".into(), "ab c".into()];
    Parts {
        tokens,
        types,
        merges,
    }
}

fn build(p: Parts, pre: &str) -> anyhow::Result<Tokenizer> {
    Tokenizer::from_parts(p.tokens, p.types, p.merges, pre)
}

#[test]
fn tiny_vocabulary_encodes() {
    let tok = build(tiny(), "qwen2").unwrap();
    assert_eq!(tok.encode("abc", false), [257]);
    assert_eq!(tok.encode("abab", false), [256, 256]);
    assert_eq!(tok.encode("<|x|>", true), [258]);
    assert_eq!(tok.encode("<|x|>", false).len(), 5);
    assert_eq!(tok.encode("<u>", false), [259]);
    assert_eq!(tok.decode(&[258, 257, 259]), "<|x|>abc<u>");
}

fn error_of(p: Parts, pre: &str) -> String {
    match build(p, pre) {
        Ok(_) => panic!("malformed input was accepted"),
        Err(e) => format!("{e:#}"),
    }
}

fn push_token(p: &mut Parts, token: &str, ty: i32) {
    p.tokens.push(token.into());
    p.types.push(ty);
}

#[test]
fn from_parts_rejects_malformed_input() {
    type Corrupt = fn(&mut Parts);
    let cases: [(&str, Corrupt); 9] = [
        (
            "tokenizer.ggml.token_type: expected one type per token",
            |p| {
                p.types.pop();
            },
        ),
        ("token_type[3]: expected a type from 1 to 6, got 9", |p| {
            p.types[3] = 9
        }),
        ("duplicate token \"ab\" at indices 256 and 260", |p| {
            push_token(p, "ab", 1)
        }),
        ("byte token \"<0xZZ>\"", |p| push_token(p, "<0xZZ>", 6)),
        (
            "merges[1] (\"abc\"): expected two tokens separated by one space",
            |p| p.merges[1] = "abc".into(),
        ),
        ("merges[0] (\"a q z\")", |p| p.merges[0] = "a q z".into()),
        ("token \"zz\" is not in tokenizer.ggml.tokens", |p| {
            p.merges[0] = "a zz".into()
        }),
        ("token \"ba\" is not in tokenizer.ggml.tokens", |p| {
            p.merges[0] = "b a".into()
        }),
        ("for byte 0x61", |p| p.tokens[0x61] = "nope".into()),
    ];
    for (want, corrupt) in cases {
        let mut parts = tiny();
        corrupt(&mut parts);
        let err = error_of(parts, "qwen2");
        assert!(err.contains(want), "expected {want:?} in {err:?}");
    }
    let err = error_of(tiny(), "llama3");
    assert!(
        err.contains("tokenizer.ggml.pre") && err.contains("\"llama3\""),
        "{err}"
    );
    let empty = Parts {
        tokens: vec![],
        types: vec![],
        merges: vec![],
    };
    assert!(error_of(empty, "qwen2").contains("non-empty"));
}
