//! Incremental decoding for streaming generated text.

use super::Tokenizer;

/// Turns a stream of token ids into text pieces that are always whole UTF-8 characters.
///
/// Byte-level tokens can end in the middle of a character (an emoji or CJK character is often
/// split over two tokens). Those trailing bytes are held back until a later token completes
/// them. Bytes that can never become valid UTF-8 are replaced by U+FFFD as soon as that is
/// certain, exactly as [`String::from_utf8_lossy`] would, so the concatenation of all pieces
/// (including [`StreamDecoder::finish`]) equals [`Tokenizer::decode`] of the whole sequence.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// Adds one token and returns whatever text is now complete (possibly empty).
    /// Unknown ids contribute nothing, as in [`Tokenizer::decode`].
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        if let Some(bytes) = tok.token_bytes(id) {
            self.pending.extend_from_slice(bytes);
        }
        self.take_complete()
    }

    /// Flushes the held-back bytes; an unfinished character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }

    /// Removes and returns the longest prefix of `pending` that is decided: valid characters
    /// and definitely-invalid bytes, stopping before an incomplete character at the end.
    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut done = 0;
        while done < self.pending.len() {
            let rest = &self.pending[done..];
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    done = self.pending.len();
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&rest[..valid]));
                    done += valid;
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            done += bad;
                        }
                        // The tail may still be completed by the next token.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..done);
        out
    }
}
