//! The tokenizer built from the real model's GGUF metadata reproduces Hugging Face's ids on every
//! row of `tokenize-dev.jsonl`, and round-trips held-out FLORES lines of all 31 languages.

mod common;

use common::{default_model_path, flores_dir, reference_dir};
use marco::gguf::GgufFile;

fn tokenizer() -> marco::tokenizer::Tokenizer {
    let file = GgufFile::open(&default_model_path()).unwrap();
    marco::engine::tokenizer_from_gguf(&file).unwrap()
}

#[test]
fn gguf_tokenizer_reproduces_every_reference_row() {
    let tok = tokenizer();
    let text = std::fs::read_to_string(reference_dir().join("tokenize-dev.jsonl")).unwrap();
    let mut rows = 0;
    for line in text.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let lang = row["lang"].as_str().unwrap();
        let s = row["text"].as_str().unwrap();
        let want: Vec<u32> = row["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(s, lang == "edge");
        assert_eq!(got, want, "{lang} line {}: {s:?}", row["line"]);
        assert_eq!(tok.decode(&got), s, "{lang} line {}", row["line"]);
        rows += 1;
    }
    assert_eq!(rows, 6222);
}

#[test]
fn held_out_flores_lines_round_trip_in_all_31_languages() {
    let tok = tokenizer();
    let mut langs = 0;
    for entry in std::fs::read_dir(flores_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("txt") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Lines past the first 200 are not in the reference file: held out.
        for line in text.lines().skip(200) {
            let ids = tok.encode(line, false);
            assert!(!ids.is_empty());
            assert_eq!(tok.decode(&ids), line, "{}", path.display());
        }
        langs += 1;
    }
    assert_eq!(langs, 31);
}
