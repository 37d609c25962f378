//! GPT-2 byte-level alphabet: every byte 0..=255 is shown as one printable Unicode character,
//! so that byte strings can be stored as ordinary token strings (e.g. a space becomes `Ġ`).
//!
//! Printable Latin-1 bytes keep their own code point; the remaining 68 bytes (controls, space,
//! DEL, NBSP, soft hyphen and so on) are assigned U+0100, U+0101, ... in byte order.

/// Byte → character table and its inverse for the GPT-2 byte-level alphabet.
pub(crate) struct ByteAlphabet {
    to_char: [char; 256],
    /// Indexed by code point; only code points below 0x144 occur in the alphabet.
    to_byte: Vec<Option<u8>>,
}

/// Bytes that stand for themselves: `!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`.
fn is_self_mapped(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

impl ByteAlphabet {
    pub(crate) fn new() -> ByteAlphabet {
        let mut to_char = ['\0'; 256];
        let mut next_shifted = 256u32;
        for b in 0..=255u8 {
            let code = if is_self_mapped(b) {
                u32::from(b)
            } else {
                next_shifted += 1;
                next_shifted - 1
            };
            // All codes are below 0x144, far from the surrogate range.
            to_char[usize::from(b)] = char::from_u32(code).unwrap_or('\0');
        }
        let mut to_byte = vec![None; next_shifted as usize];
        for (b, c) in to_char.iter().enumerate() {
            to_byte[*c as usize] = u8::try_from(b).ok();
        }
        ByteAlphabet { to_char, to_byte }
    }

    pub(crate) fn char_of(&self, b: u8) -> char {
        self.to_char[usize::from(b)]
    }

    fn byte_of(&self, c: char) -> Option<u8> {
        self.to_byte.get(c as usize).copied().flatten()
    }

    /// Turns a byte-level token string back into raw bytes. A character outside the alphabet
    /// contributes its own UTF-8 bytes, as the Hugging Face byte-level decoder does, so odd
    /// vocabularies still decode to something instead of failing.
    pub(crate) fn decode(&self, token: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(token.len());
        for c in token.chars() {
            match self.byte_of(c) {
                Some(b) => out.push(b),
                None => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::ByteAlphabet;

    #[test]
    fn round_trips_every_byte() {
        let a = ByteAlphabet::new();
        for b in 0..=255u8 {
            assert_eq!(a.decode(&a.char_of(b).to_string()), vec![b]);
        }
        assert_eq!(a.char_of(b' '), 'Ġ');
        assert_eq!(a.char_of(b'\n'), 'Ċ');
        assert_eq!(a.char_of(b'a'), 'a');
    }
}
