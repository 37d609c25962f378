//! Finding added tokens (control and user-defined) written literally in text.

/// Added tokens grouped by first byte, longest first, for leftmost-longest matching.
pub(crate) struct SpecialMatcher {
    by_first_byte: Vec<Vec<Entry>>,
}

struct Entry {
    text: Vec<u8>,
    id: u32,
    /// Control tokens only match when the caller asks for special-token parsing.
    control: bool,
}

/// One stretch of input: either ordinary text to BPE-encode or a recognised added token.
pub(crate) enum Segment<'t> {
    Text(&'t str),
    Token(u32),
}

impl SpecialMatcher {
    /// Builds the matcher from `(text, id, is_control)` for every added token.
    pub(crate) fn new<'a>(tokens: impl Iterator<Item = (&'a [u8], u32, bool)>) -> SpecialMatcher {
        let mut by_first_byte: Vec<Vec<Entry>> = (0..256).map(|_| Vec::new()).collect();
        for (text, id, control) in tokens {
            // An empty token would match everywhere without consuming input.
            if let Some(&first) = text.first() {
                by_first_byte[usize::from(first)].push(Entry {
                    text: text.to_vec(),
                    id,
                    control,
                });
            }
        }
        for bucket in &mut by_first_byte {
            bucket.sort_by_key(|e| std::cmp::Reverse(e.text.len()));
        }
        SpecialMatcher { by_first_byte }
    }

    /// Longest token that starts at byte `pos` of `text`, with its length.
    fn match_at(&self, text: &str, pos: usize, parse_control: bool) -> Option<(u32, usize)> {
        let rest = &text.as_bytes()[pos..];
        let bucket = &self.by_first_byte[usize::from(*rest.first()?)];
        bucket
            .iter()
            .filter(|e| parse_control || !e.control)
            .find(|e| rest.starts_with(&e.text))
            .map(|e| (e.id, e.text.len()))
    }

    /// Splits `text` into ordinary text and added tokens, scanning left to right and taking
    /// the longest token at each position (Hugging Face's leftmost-longest rule).
    pub(crate) fn segments<'t>(&self, text: &'t str, parse_control: bool) -> Vec<Segment<'t>> {
        let mut out = Vec::new();
        let (mut plain_start, mut pos) = (0, 0);
        while pos < text.len() {
            match self.match_at(text, pos, parse_control) {
                Some((id, len)) => {
                    if plain_start < pos {
                        out.push(Segment::Text(&text[plain_start..pos]));
                    }
                    out.push(Segment::Token(id));
                    pos += len;
                    plain_start = pos;
                }
                // Step a whole character so `pos` always stays on a char boundary.
                None => pos += text[pos..].chars().next().map_or(1, char::len_utf8),
            }
        }
        if plain_start < text.len() {
            out.push(Segment::Text(&text[plain_start..]));
        }
        out
    }
}
