//! A validating, memory-mapped reader of `.safetensors` files.
//!
//! Layout: an 8-byte little-endian header length `n`, `n` bytes of JSON (an object mapping each
//! tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}`, plus an optional
//! `__metadata__`), then the data section; offsets are relative to its start.
//!
//! The header is untrusted. Before anything is used: the length is bounded (at most
//! [`MAX_HEADER_BYTES`] and within the file), the JSON must parse, every dtype must be a known
//! one, every shape's byte size must equal its offset range, and the ranges must lie inside the
//! data section without overlapping. Errors name the file, the tensor and what was expected.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use memmap2::Mmap;
use serde_json::{Map, Value as Json};

use crate::types::GgmlType;

/// Upper bound on the JSON header: real headers are a few hundred KB even for huge models, and
/// the bound keeps a forged length from making us parse (or allocate) gigabytes.
pub const MAX_HEADER_BYTES: u64 = 100 << 20;

/// Most dimensions a tensor may have: more is not a model weight, and bounds the work per entry.
const MAX_RANK: usize = 8;

/// The element types of the safetensors format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl Dtype {
    const NAMES: [(&'static str, Dtype); 15] = [
        ("BOOL", Dtype::Bool),
        ("U8", Dtype::U8),
        ("I8", Dtype::I8),
        ("F8_E5M2", Dtype::F8E5M2),
        ("F8_E4M3", Dtype::F8E4M3),
        ("I16", Dtype::I16),
        ("U16", Dtype::U16),
        ("F16", Dtype::F16),
        ("BF16", Dtype::BF16),
        ("I32", Dtype::I32),
        ("U32", Dtype::U32),
        ("F32", Dtype::F32),
        ("F64", Dtype::F64),
        ("I64", Dtype::I64),
        ("U64", Dtype::U64),
    ];

    fn parse(s: &str) -> Option<Dtype> {
        Self::NAMES.iter().find(|(n, _)| *n == s).map(|(_, d)| *d)
    }

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, d)| *d == self)
            .map_or("?", |(n, _)| n)
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E5M2 | Dtype::F8E4M3 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }

    /// The GGML type with the same encoding, for the dtypes the converter reads.
    pub fn ggml(self) -> Option<GgmlType> {
        match self {
            Dtype::F32 => Some(GgmlType::F32),
            Dtype::F16 => Some(GgmlType::F16),
            Dtype::BF16 => Some(GgmlType::BF16),
            _ => None,
        }
    }
}

/// One tensor of a safetensors file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StTensor {
    pub name: String,
    pub dtype: Dtype,
    /// Row-major (PyTorch) order: the last dimension is contiguous.
    pub shape: Vec<u64>,
    /// Byte range within the data section.
    pub range: Range<usize>,
}

/// An opened, validated safetensors file.
pub struct SafeTensors {
    path: PathBuf,
    map: Mmap,
    data_start: usize,
    /// Sorted by data offset.
    tensors: Vec<StTensor>,
    by_name: HashMap<String, usize>,
}

impl SafeTensors {
    /// Memory-map and validate `path`.
    pub fn open(path: &Path) -> Result<SafeTensors> {
        let name = path.display();
        let file = File::open(path).map_err(|e| anyhow!("{name}: cannot open: {e}"))?;
        // SAFETY: read-only map; as with every mmap, another process truncating or rewriting
        // the file while we read it would change what we see. Checkpoints are not modified in
        // place while being converted, which is the usual contract of memory-mapped readers.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| anyhow!("{name}: cannot mmap: {e}"))?;
        let (data_start, tensors) = parse(&name.to_string(), &map)?;
        let by_name = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(SafeTensors {
            path: path.to_path_buf(),
            map,
            data_start,
            tensors,
            by_name,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All tensors, in data order.
    pub fn tensors(&self) -> &[StTensor] {
        &self.tensors
    }

    pub fn get(&self, name: &str) -> Option<&StTensor> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of `t`, which must come from this file (validated at open).
    pub fn data(&self, t: &StTensor) -> &[u8] {
        &self.map[self.data_start + t.range.start..self.data_start + t.range.end]
    }

    /// The whole map and the file offset of `t`'s data, to release its pages once converted.
    pub fn map_range(&self, t: &StTensor) -> (&Mmap, usize, usize) {
        (&self.map, self.data_start + t.range.start, t.range.len())
    }
}

/// Drop the resident pages of `len` bytes at `offset` of `map`, so that converting a checkpoint
/// larger than memory keeps the resident set near one tensor. Best effort.
pub fn release_pages(map: &Mmap, offset: usize, len: usize) {
    #[cfg(unix)]
    {
        // SAFETY: `map` is a read-only mapping of a file. MADV_DONTNEED only unmaps the
        // pages; a later read faults them in again from the unchanged file, so every borrow of
        // the map keeps seeing the same bytes.
        let _ =
            unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
    }
    #[cfg(not(unix))]
    let _ = (map, offset, len);
}

/// Validate the header of `bytes`; the start of the data section and the tensors by offset.
fn parse(file: &str, bytes: &[u8]) -> Result<(usize, Vec<StTensor>)> {
    let header = header_bytes(file, bytes)?;
    let data_start = 8 + header.len();
    let data_len = (bytes.len() - data_start) as u64;
    let text = std::str::from_utf8(header)
        .map_err(|e| anyhow!("{file}: the JSON header is not valid UTF-8: {e}"))?;
    let json: Json = serde_json::from_str(text)
        .map_err(|e| anyhow!("{file}: the JSON header does not parse: {e}"))?;
    let Json::Object(entries) = json else {
        bail!("{file}: the JSON header is not an object of tensors");
    };
    let mut tensors = entries
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .map(|(name, entry)| parse_entry(file, name, entry, data_len))
        .collect::<Result<Vec<_>>>()?;
    tensors.sort_by_key(|t| (t.range.start, t.range.end));
    check_disjoint(file, &tensors)?;
    Ok((data_start, tensors))
}

/// The JSON header: length-checked against the bound and the file.
fn header_bytes<'a>(file: &str, bytes: &'a [u8]) -> Result<&'a [u8]> {
    let Some(len_bytes) = bytes.first_chunk::<8>() else {
        bail!(
            "{file}: {} bytes is too short for a safetensors file (expected an 8-byte header \
             length first)",
            bytes.len()
        );
    };
    let n = u64::from_le_bytes(*len_bytes);
    if n > MAX_HEADER_BYTES {
        bail!(
            "{file}: header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes (corrupt, \
             or not a safetensors file)"
        );
    }
    let rest = (bytes.len() - 8) as u64;
    if n > rest {
        bail!(
            "{file}: header length {n} runs past the end of the file ({rest} bytes follow the \
             length)"
        );
    }
    Ok(&bytes[8..8 + n as usize])
}

/// One `"name": {dtype, shape, data_offsets}` entry.
fn parse_entry(file: &str, name: &str, entry: &Json, data_len: u64) -> Result<StTensor> {
    let fail = |what: String| anyhow!("{file}: tensor '{name}': {what}");
    let Json::Object(fields) = entry else {
        return Err(fail(
            "expected an object with dtype, shape and data_offsets".into(),
        ));
    };
    let dtype_name = field(fields, "dtype")
        .and_then(Json::as_str)
        .ok_or_else(|| fail("missing or non-string 'dtype'".into()))?;
    let dtype =
        Dtype::parse(dtype_name).ok_or_else(|| fail(format!("unknown dtype '{dtype_name}'")))?;
    let shape = parse_u64s(field(fields, "shape"))
        .filter(|s| s.len() <= MAX_RANK)
        .ok_or_else(|| {
            fail(format!(
                "'shape' must be an array of at most {MAX_RANK} non-negative integers"
            ))
        })?;
    let offsets = parse_u64s(field(fields, "data_offsets"))
        .filter(|o| o.len() == 2)
        .ok_or_else(|| fail("'data_offsets' must be [begin, end]".into()))?;
    let (begin, end) = (offsets[0], offsets[1]);
    if begin > end || end > data_len {
        return Err(fail(format!(
            "data_offsets [{begin}, {end}] lie outside the data section of {data_len} bytes"
        )));
    }
    let need = shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d));
    if need != Some(end - begin) {
        let need = need.map_or("more than 2^64".to_string(), |n| n.to_string());
        return Err(fail(format!(
            "shape {shape:?} of {} needs {need} bytes, but data_offsets [{begin}, {end}] hold {}",
            dtype.name(),
            end - begin
        )));
    }
    Ok(StTensor {
        name: name.to_string(),
        dtype,
        shape,
        // Both fit usize: they are at most the mapped length.
        range: begin as usize..end as usize,
    })
}

fn field<'a>(fields: &'a Map<String, Json>, key: &str) -> Option<&'a Json> {
    fields.get(key)
}

fn parse_u64s(v: Option<&Json>) -> Option<Vec<u64>> {
    v?.as_array()?.iter().map(Json::as_u64).collect()
}

/// Tensors sorted by offset must not share bytes (empty tensors share nothing).
fn check_disjoint(file: &str, tensors: &[StTensor]) -> Result<()> {
    let mut prev: Option<&StTensor> = None;
    for t in tensors.iter().filter(|t| !t.range.is_empty()) {
        if let Some(p) = prev.filter(|p| t.range.start < p.range.end) {
            bail!(
                "{file}: tensors '{}' (bytes {:?}) and '{}' (bytes {:?}) overlap",
                p.name,
                p.range,
                t.name,
                t.range
            );
        }
        prev = Some(t);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(header: &str, data: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.resize(v.len() + data, 0);
        v
    }

    #[test]
    fn parses_and_sorts_by_offset() {
        let h = r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},
                    "a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},
                    "__metadata__":{"format":"pt"}}"#;
        let (start, ts) = parse("x", &file_with(h, 12)).unwrap();
        assert_eq!(start, 8 + h.len());
        assert_eq!(ts[0].name, "a");
        assert_eq!(ts[1].range, 4..12);
    }

    #[test]
    fn rejects_forged_headers() {
        let cases: [(&str, usize, &str); 6] = [
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,9]}}"#,
                8,
                "outside the data",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                8,
                "needs 12 bytes",
            ),
            (
                r#"{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}"#,
                8,
                "unknown dtype 'Q4'",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                    "b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
                "overlap",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
                8,
                "outside the data",
            ),
            (r#"{"a": [1, 2"#, 8, "does not parse"),
        ];
        for (h, n, want) in cases {
            let err = parse("f.safetensors", &file_with(h, n))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(want) && err.contains("f.safetensors"),
                "{h}: {err}"
            );
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        let err = parse("f", &[1, 2, 3]).unwrap_err().to_string();
        assert!(err.contains("too short"), "{err}");
        let mut v = (1u64 << 40).to_le_bytes().to_vec();
        v.extend_from_slice(b"{}");
        let err = parse("f", &v).unwrap_err().to_string();
        assert!(err.contains("exceeds the limit"), "{err}");
        let mut v = 100u64.to_le_bytes().to_vec();
        v.extend_from_slice(b"{}");
        let err = parse("f", &v).unwrap_err().to_string();
        assert!(err.contains("past the end"), "{err}");
    }
}
