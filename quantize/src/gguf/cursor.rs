//! A bounds-checked little-endian reader over the bytes of an untrusted file.
//!
//! Every read checks the bytes left first, so a truncated or forged file gives an error
//! naming the file, the field being read and the offset, and never an out-of-bounds panic.

use anyhow::{anyhow, Error, Result};

pub(super) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(file: &'a str, bytes: &'a [u8]) -> Self {
        Cursor {
            bytes,
            pos: 0,
            file,
        }
    }

    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    pub(super) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// An error about `ctx` (e.g. "metadata key 'x'") at the current offset.
    pub(super) fn fail(&self, ctx: &str, msg: impl std::fmt::Display) -> Error {
        anyhow!("{}: {ctx}: {msg} (at byte offset {})", self.file, self.pos)
    }

    /// The next `n` bytes; `what` names the field for the truncation message.
    pub(super) fn take(&mut self, n: usize, ctx: &str, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.fail(
                ctx,
                format_args!(
                    "file truncated reading {what}: need {n} bytes, {} left",
                    self.remaining()
                ),
            ));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, ctx: &str, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, ctx, what)?);
        Ok(out)
    }

    pub(super) fn u8(&mut self, ctx: &str, what: &str) -> Result<u8> {
        Ok(self.array::<1>(ctx, what)?[0])
    }

    pub(super) fn u16(&mut self, ctx: &str, what: &str) -> Result<u16> {
        self.array(ctx, what).map(u16::from_le_bytes)
    }

    pub(super) fn u32(&mut self, ctx: &str, what: &str) -> Result<u32> {
        self.array(ctx, what).map(u32::from_le_bytes)
    }

    pub(super) fn u64(&mut self, ctx: &str, what: &str) -> Result<u64> {
        self.array(ctx, what).map(u64::from_le_bytes)
    }

    /// A count that precedes `count` items of at least `min_size` bytes each: refused unless
    /// the rest of the file could hold them, so the caller may reserve `count` slots.
    pub(super) fn count(&mut self, min_size: usize, ctx: &str, what: &str) -> Result<usize> {
        let raw = self.u64(ctx, what)?;
        let fits = usize::try_from(raw)
            .ok()
            .filter(|&n| n <= self.remaining() / min_size.max(1));
        fits.ok_or_else(|| {
            self.fail(
                ctx,
                format_args!(
                    "{what} {raw} is out of range: {} bytes left hold at most {} items of {min_size}+ bytes",
                    self.remaining(),
                    self.remaining() / min_size.max(1)
                ),
            )
        })
    }

    /// A GGUF string: u64 byte length, then UTF-8 bytes (no terminator).
    pub(super) fn string(&mut self, ctx: &str, what: &str) -> Result<String> {
        let raw = self.u64(ctx, what)?;
        let start = self.pos;
        let len = usize::try_from(raw).ok().filter(|&n| n <= self.remaining());
        let Some(len) = len else {
            return Err(self.fail(
                ctx,
                format_args!(
                    "{what} length {raw} is out of range: only {} bytes left",
                    self.remaining()
                ),
            ));
        };
        let bytes = self.take(len, ctx, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(anyhow!(
                "{}: {ctx}: {what} is not valid UTF-8 ({e}) (string at byte offset {start})",
                self.file
            )),
        }
    }

    /// The current offset rounded up to a multiple of `align`; it may lie past the end,
    /// which the caller checks.
    pub(super) fn aligned_pos(&self, align: u64) -> Option<u64> {
        (self.pos as u64).checked_next_multiple_of(align)
    }
}
