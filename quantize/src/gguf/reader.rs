//! [`GgufFile`]: a parsed, validated GGUF file whose tensor data stays in a memory map.

use std::fmt;
use std::fs::File;
use std::ops::Deref;
use std::path::Path;

use anyhow::{anyhow, Result};
use memmap2::Mmap;

use super::parse::{parse_header, Header};
use super::tensor::TensorInfo;
use super::value::Value;

/// The bytes of the file: mapped from disk, or owned (tests, in-memory conversions).
enum Backing {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Deref for Backing {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A GGUF file (version 2 or 3): metadata, tensor infos and zero-copy access to tensor data.
///
/// Everything is validated on open: every tensor's data lies inside the file, aligned and
/// not overlapping another, so the accessors need no further checks.
pub struct GgufFile {
    path: String,
    header: Header,
    backing: Backing,
}

impl GgufFile {
    /// Memory-map and parse `path`.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| anyhow!("{name}: cannot open: {e}"))?;
        // SAFETY: the map is read-only; as with any mmap, a process truncating or rewriting
        // the file while we hold it would change or fault what we read. Model files are not
        // modified in place (our writer replaces them by rename), which is the usual contract.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| anyhow!("{name}: cannot mmap: {e}"))?;
        Self::from_backing(name, Backing::Mmap(map))
    }

    /// Parse a file held in memory; `name` stands for the path in messages.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<GgufFile> {
        Self::from_backing(name.to_string(), Backing::Owned(bytes))
    }

    fn from_backing(path: String, backing: Backing) -> Result<GgufFile> {
        let header = parse_header(&path, &backing)?;
        Ok(GgufFile {
            path,
            header,
            backing,
        })
    }

    /// 2 or 3.
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// The path (or name) the file was opened with, for messages.
    pub fn path_display(&self) -> &str {
        &self.path
    }

    /// Size of the whole file in bytes.
    pub fn file_size(&self) -> u64 {
        self.backing.len() as u64
    }

    /// `general.alignment`, or 32 when absent.
    pub fn alignment(&self) -> u32 {
        self.header.alignment
    }

    /// File offset of the data section (tensor offsets are relative to it).
    pub fn data_offset(&self) -> u64 {
        self.header.data_start as u64
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.header.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        let i = *self.header.key_index.get(key)?;
        Some(&self.header.metadata[i].1)
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        let i = *self.header.tensor_index.get(name)?;
        Some(&self.header.tensors[i])
    }

    /// The data of tensor `name` (a view into the map).
    pub fn tensor_data(&self, name: &str) -> Result<&[u8]> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| anyhow!("{}: no tensor named '{name}'", self.path))?;
        Ok(self.data_for(info))
    }

    /// Tells the OS that this process is done with the data of `info` (a caller that copied
    /// it elsewhere): the mapped pages wholly inside it leave this process's resident memory
    /// (they stay in the page cache, and a later read maps them back in). A no-op for
    /// files held in memory, and a best effort: a refusal from the OS changes nothing else.
    pub fn release_data(&self, info: &TensorInfo) {
        self.release_data_range(info, 0..info.n_bytes as usize);
    }

    /// [`release_data`](Self::release_data) for bytes `range` of the data of `info` (cut to
    /// the data's length).
    pub fn release_data_range(&self, info: &TensorInfo, range: std::ops::Range<usize>) {
        // The largest common page size (the OS rounds a range's start down to its own page
        // size; on 64 KiB boundaries that rounding changes nothing on 4, 16 or 64 KiB pages).
        const GRANULE: usize = 64 << 10;
        #[cfg(unix)]
        if let Backing::Mmap(map) = &self.backing {
            let base = self.header.data_start + info.offset as usize;
            let end = base + range.end.min(info.n_bytes as usize);
            let start = base + range.start.min(end - base);
            let (first, last) = (start.next_multiple_of(GRANULE), end / GRANULE * GRANULE);
            if last > first {
                // SAFETY: DONTNEED on a read-only mapping of the file drops our page-table
                // entries only: the bytes read back from the file are unchanged, so no
                // reference into the map sees different data. The range is inside the map.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        first,
                        last - first,
                    )
                };
            }
        }
        #[cfg(not(unix))]
        let _ = (info, range, GRANULE);
    }

    /// The data of `info`, which must come from this file's [`tensors`](Self::tensors).
    ///
    /// # Panics
    /// If `info` describes bytes outside this file (it came from somewhere else).
    pub fn data_for(&self, info: &TensorInfo) -> &[u8] {
        // Validated at parse time for this file's infos, so the conversions cannot fail.
        let start = self.header.data_start + info.offset as usize;
        &self.backing[start..start + info.n_bytes as usize]
    }
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .field("metadata", &self.header.metadata.len())
            .field("tensors", &self.header.tensors.len())
            .field("file_size", &self.backing.len())
            .finish()
    }
}
