//! Buffers for what the CPU backend reads every token (the weights it copies as repacked
//! rows, the KV cache): anonymous memory asking the OS for 2 MiB pages.
//!
//! Why not a `Vec`: decoding streams every weight once per token, and with 4 KiB pages that
//! is a TLB miss every 4 KiB. On Linux a large `Vec` gets huge pages only when the OS
//! happens to have them free (the usual `defrag=madvise` setting); `MADV_HUGEPAGE` lets it
//! compact memory for them. Measured here: one-thread decoding of the default model went from
//! 45 to 53 tokens/s when its weights moved to 2 MiB pages, and its attention (whose KV cache
//! the weights push out of the caches every token) a quarter less time when the cache moved
//! too (see `attend`).

use anyhow::{Context, Result};
use memmap2::MmapMut;

/// Size and alignment of a huge page (x86-64 and aarch64 Linux with 4 KiB base pages).
const HUGE: usize = 2 << 20;

/// `len` zeroed bytes, 2 MiB-aligned, with huge pages requested for the whole 2 MiB pages
/// inside it.
pub struct HugeBuf {
    map: MmapMut,
    start: usize,
    len: usize,
}

impl HugeBuf {
    pub fn zeroed(len: usize) -> Result<HugeBuf> {
        let total = len.checked_add(HUGE).context("buffer size overflows")?;
        let map = MmapMut::map_anon(total)
            .with_context(|| format!("cannot allocate {len} bytes of memory"))?;
        let start = (map.as_ptr() as usize).next_multiple_of(HUGE) - map.as_ptr() as usize;
        // Only whole huge pages inside the buffer: a last partial one would be resident in full.
        let whole = len / HUGE * HUGE;
        #[cfg(target_os = "linux")]
        if whole > 0 {
            // A hint: without it the buffer works the same, on small pages.
            let _ = map.advise_range(memmap2::Advice::HugePage, start, whole);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = whole;
        Ok(HugeBuf { map, start, len })
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map[self.start..self.start + self.len]
    }
}
