//! Qwen2 pre-tokenizer: splits text into the pieces that BPE merges never cross.
//!
//! The reference pattern (Hugging Face `tokenizer.json`, llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`)
//! is [`QWEN2_PATTERN`]. Its `\s+(?!\S)` branch needs a look-ahead, which forces fancy-regex onto
//! its slow backtracking engine for every match. We instead run the same pattern without that
//! branch (a plain regex, executed by the fast `regex-automata` engine) and emulate the
//! look-ahead by hand; `tests/tokenizer.rs` checks both give identical splits.

use fancy_regex::Regex;

/// The pre-tokenizer regex exactly as Qwen2's `tokenizer.json` states it.
pub const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// [`QWEN2_PATTERN`] minus the look-ahead branch `\s+(?!\S)`; see [`Qwen2Splitter::split`].
const QWEN2_PLAIN_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+";

pub(crate) struct Qwen2Splitter {
    regex: Regex,
}

impl Qwen2Splitter {
    pub(crate) fn new() -> anyhow::Result<Qwen2Splitter> {
        let regex = Regex::new(QWEN2_PLAIN_PATTERN)?;
        Ok(Qwen2Splitter { regex })
    }

    /// Calls `emit` with each piece of `text`, in order; the pieces concatenate to `text`.
    pub(crate) fn split<'t>(&self, text: &'t str, mut emit: impl FnMut(&'t str)) {
        let mut pos = 0;
        while pos < text.len() {
            let end = match self.regex.find_from_pos(text, pos) {
                // Every character matches some branch, so a match always starts at `pos`;
                // should one ever start later, the skipped gap still becomes its own piece
                // (Hugging Face's "Isolated" split behaviour).
                Ok(Some(m)) if m.start() > pos => m.start(),
                Ok(Some(m)) if m.end() > pos => lookahead_end(text, m.start(), m.end()),
                // No match, an empty match or an engine error: keep the rest whole rather
                // than loop or panic.
                _ => text.len(),
            };
            emit(&text[pos..end]);
            pos = end;
        }
    }
}

/// Where the original pattern's match ends, given the plain pattern matched `start..end`.
///
/// Only the final `\s+` branch differs. It is the branch taken exactly when the match is all
/// whitespace without `\r`/`\n` (a newline would have been taken by `\s*[\r\n]+`). Being greedy,
/// it stops before a non-space or at the end of text. In the original, `\s+(?!\S)` then backs
/// off one character when a non-space follows, so that the last space can join the next word
/// (" word"); a single space before a non-space falls through to `\s+` unchanged.
fn lookahead_end(text: &str, start: usize, end: usize) -> usize {
    let piece = &text[start..end];
    let plain_whitespace = piece
        .chars()
        .all(|c| c.is_whitespace() && c != '\r' && c != '\n');
    if !plain_whitespace || end == text.len() {
        return end;
    }
    match piece.char_indices().last() {
        Some((last, _)) if last > 0 => start + last,
        _ => end,
    }
}

#[cfg(test)]
mod tests {
    use super::Qwen2Splitter;

    fn pieces(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        Qwen2Splitter::new().unwrap().split(text, |p| out.push(p));
        out
    }

    #[test]
    fn splits_words_numbers_and_spaces() {
        assert_eq!(pieces("Hello world"), ["Hello", " world"]);
        assert_eq!(pieces("a   b"), ["a", "  ", " b"]);
        assert_eq!(pieces("x  "), ["x", "  "]);
        assert_eq!(pieces("123"), ["1", "2", "3"]);
        assert_eq!(pieces("don't"), ["don", "'t"]);
        assert_eq!(pieces("a\n\n b"), ["a", "\n\n", " b"]);
        assert_eq!(pieces("a \t7"), ["a", " ", "\t", "7"]);
    }
}
