//! [`GgufWriter`]: streaming GGUF v3 writer.
//!
//! The header (metadata and tensor infos, with offsets) is written first: a tensor's size
//! follows from its type and shape, so every offset is known before any data exists. The
//! data is then appended tensor by tensor, in declared order, each padded to the alignment,
//! so a converter never holds more than one tensor in memory.
//!
//! Output goes to `.<name>.tmp-<pid>` beside the destination and is renamed onto it only by
//! [`GgufWriter::finish`], so a crash or an error never leaves a truncated model at `dest`.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::tensor::{tensor_n_bytes, TensorInfo};
use super::value::{Value, ValueType};
use super::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, WRITE_VERSION};
use crate::types::GgmlType;

/// llama.cpp stores tensor names in a 64-byte buffer with a terminating NUL.
pub const MAX_TENSOR_NAME_BYTES: usize = 63;

/// The reader refuses deeper nesting; refuse to write what it could not read back.
const MAX_ARRAY_DEPTH: usize = 16;

/// A tensor to be written: its name, shape (ggml order, `dims[0]` contiguous) and type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorDecl {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorDecl {
    pub fn new(name: impl Into<String>, dims: &[u64], ty: GgmlType) -> TensorDecl {
        TensorDecl {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
        }
    }
}

/// Writes one GGUF v3 file; see the module docs.
pub struct GgufWriter {
    dest: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    tensors: Vec<TensorInfo>,
    /// Index of the next tensor `write_tensor` expects.
    next: usize,
    alignment: u64,
    /// Bytes written so far.
    pos: u64,
    /// Set once renamed onto `dest`; until then `Drop` removes the temp file.
    committed: bool,
}

impl GgufWriter {
    /// Validate everything, then write the header of `dest`'s temp file.
    ///
    /// `alignment` must be a nonzero power of two. When it is not the default 32 and
    /// `metadata` has no `general.alignment`, that key is appended (u32); when present it
    /// must agree with `alignment`.
    pub fn create(
        dest: &Path,
        metadata: Vec<(String, Value)>,
        tensors: Vec<TensorDecl>,
        alignment: u32,
    ) -> Result<GgufWriter> {
        // One flat message (not an anyhow chain) so `{}` shows the reason too.
        let flat = |e: anyhow::Error| anyhow!("{}: cannot write GGUF: {e:#}", dest.display());
        let (tensors, header) = prepare(metadata, tensors, alignment).map_err(flat)?;
        let tmp = temp_path(dest).map_err(flat)?;
        let file = File::create(&tmp)
            .map_err(|e| anyhow!("{}: cannot create temp file: {e}", tmp.display()))?;
        let mut writer = GgufWriter {
            dest: dest.to_path_buf(),
            tmp,
            out: BufWriter::with_capacity(1 << 20, file),
            tensors,
            next: 0,
            alignment: alignment.into(),
            pos: 0,
            committed: false,
        };
        writer.put(&header)?;
        Ok(writer)
    }

    /// The planned tensors (with their data offsets), in write order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The destination path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Append the data of the next declared tensor, which must be `name` and exactly its size.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let Some(expected) = self.tensors.get(self.next) else {
            bail!(
                "{}: tensor '{name}' written after all {} declared tensors",
                self.dest.display(),
                self.tensors.len()
            );
        };
        if expected.name != name {
            bail!(
                "{}: tensor '{name}' written out of order: expected '{}' (declared #{})",
                self.dest.display(),
                expected.name,
                self.next
            );
        }
        if data.len() as u64 != expected.n_bytes {
            bail!(
                "{}: tensor '{name}' ({} {:?}) needs {} bytes, got {}",
                self.dest.display(),
                expected.ty,
                expected.dims,
                expected.n_bytes,
                data.len()
            );
        }
        self.next += 1;
        self.put(data)?;
        self.pad()
    }

    /// Check every tensor was written, flush, fsync and rename onto the destination.
    pub fn finish(mut self) -> Result<()> {
        if let Some(missing) = self.tensors.get(self.next) {
            bail!(
                "{}: finished after {} of {} tensors; '{}' was never written",
                self.dest.display(),
                self.next,
                self.tensors.len(),
                missing.name
            );
        }
        let tmp = self.tmp.display().to_string();
        self.out
            .flush()
            .with_context(|| format!("{tmp}: write failed"))?;
        self.out
            .get_ref()
            .sync_all()
            .with_context(|| format!("{tmp}: fsync failed"))?;
        fs::rename(&self.tmp, &self.dest)
            .with_context(|| format!("cannot rename {tmp} to {}", self.dest.display()))?;
        self.committed = true;
        sync_parent_dir(&self.dest);
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| anyhow!("{}: write failed: {e}", self.tmp.display()))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Zero bytes up to the next multiple of the alignment, so the next tensor starts aligned.
    fn pad(&mut self) -> Result<()> {
        let n = padding(self.pos, self.alignment);
        self.put(&vec![0u8; n])
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        if !self.committed {
            // Unfinished output is garbage; the error that got us here is already reported.
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Validate the inputs; the planned tensors and the header bytes.
fn prepare(
    mut metadata: Vec<(String, Value)>,
    decls: Vec<TensorDecl>,
    alignment: u32,
) -> Result<(Vec<TensorInfo>, Vec<u8>)> {
    if !alignment.is_power_of_two() {
        bail!("alignment {alignment} is not a nonzero power of two");
    }
    reconcile_alignment(&mut metadata, alignment)?;
    let tensors = plan_tensors(decls, alignment.into())?;
    let header = encode_header(&metadata, &tensors, alignment.into())?;
    Ok((tensors, header))
}

/// Bytes from `pos` to the next multiple of `align` (a power of two).
fn padding(pos: u64, align: u64) -> usize {
    ((align - pos % align) % align) as usize
}

/// Make `general.alignment` in `metadata` agree with `alignment`.
fn reconcile_alignment(metadata: &mut Vec<(String, Value)>, alignment: u32) -> Result<()> {
    match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
        Some((_, v)) if v.as_u64() == Some(alignment.into()) => Ok(()),
        Some((_, v)) => bail!(
            "metadata key '{ALIGNMENT_KEY}' is {} {v} but the writer's alignment is {alignment}",
            v.type_description()
        ),
        None if alignment == DEFAULT_ALIGNMENT => Ok(()),
        None => {
            metadata.push((ALIGNMENT_KEY.to_string(), Value::U32(alignment)));
            Ok(())
        }
    }
}

/// Validate the declarations and lay the data out: each tensor at the next aligned offset.
fn plan_tensors(decls: Vec<TensorDecl>, alignment: u64) -> Result<Vec<TensorInfo>> {
    let mut names = HashSet::with_capacity(decls.len());
    let mut offset = 0u64;
    let mut out = Vec::with_capacity(decls.len());
    for d in decls {
        if d.name.len() > MAX_TENSOR_NAME_BYTES {
            bail!(
                "tensor '{}': name is {} bytes, llama.cpp allows at most {MAX_TENSOR_NAME_BYTES}",
                d.name,
                d.name.len()
            );
        }
        if !names.insert(d.name.clone()) {
            bail!("tensor '{}': declared twice", d.name);
        }
        let n_bytes = tensor_n_bytes(&d.dims, d.ty)
            .map_err(|why| anyhow!("tensor '{}' ({}): {why}", d.name, d.ty))?;
        let end = offset
            .checked_add(n_bytes)
            .and_then(|e| e.checked_next_multiple_of(alignment))
            .ok_or_else(|| anyhow!("tensor '{}': data offsets overflow 64 bits", d.name))?;
        out.push(TensorInfo {
            name: d.name,
            dims: d.dims,
            ty: d.ty,
            offset,
            n_bytes,
        });
        offset = end;
    }
    Ok(out)
}

/// The header bytes, padded so the data section starts aligned.
fn encode_header(
    metadata: &[(String, Value)],
    tensors: &[TensorInfo],
    alignment: u64,
) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&WRITE_VERSION.to_le_bytes());
    buf.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    buf.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    let mut keys = HashSet::with_capacity(metadata.len());
    for (key, value) in metadata {
        if !keys.insert(key.as_str()) {
            bail!("metadata key '{key}' given twice");
        }
        put_string(&mut buf, key);
        buf.extend_from_slice(&value.value_type().id().to_le_bytes());
        put_value(&mut buf, value, 0).with_context(|| format!("metadata key '{key}'"))?;
    }
    for t in tensors {
        put_tensor_info(&mut buf, t);
    }
    let n = padding(buf.len() as u64, alignment);
    buf.resize(buf.len() + n, 0);
    Ok(buf)
}

fn put_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_tensor_info(buf: &mut Vec<u8>, t: &TensorInfo) {
    put_string(buf, &t.name);
    buf.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
    for d in &t.dims {
        buf.extend_from_slice(&d.to_le_bytes());
    }
    buf.extend_from_slice(&t.ty.id().to_le_bytes());
    buf.extend_from_slice(&t.offset.to_le_bytes());
}

/// The value's payload (its type tag is written by the caller).
fn put_value(buf: &mut Vec<u8>, value: &Value, depth: usize) -> Result<()> {
    match value {
        Value::U8(v) => buf.push(*v),
        Value::I8(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => buf.push(u8::from(*v)),
        Value::String(s) => put_string(buf, s),
        Value::U64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::EmptyArray(_) | Value::Array(_) if depth >= MAX_ARRAY_DEPTH => {
            bail!("arrays nested more than {MAX_ARRAY_DEPTH} deep")
        }
        Value::EmptyArray(elem) => put_array_head(buf, *elem, 0),
        Value::Array(items) => put_array(buf, items, depth)?,
    }
    Ok(())
}

fn put_array_head(buf: &mut Vec<u8>, elem: ValueType, count: u64) {
    buf.extend_from_slice(&elem.id().to_le_bytes());
    buf.extend_from_slice(&count.to_le_bytes());
}

/// A non-empty array, typed by its first element; all elements must share that type.
fn put_array(buf: &mut Vec<u8>, items: &[Value], depth: usize) -> Result<()> {
    let Some(first) = items.first() else {
        bail!("Value::Array(vec![]) has no element type: use Value::EmptyArray(type) or Value::array(type, items)");
    };
    let elem = first.value_type();
    if let Some(i) = items.iter().position(|v| v.value_type() != elem) {
        bail!(
            "array element {i} is {}, but element 0 is {elem}: GGUF arrays hold one type",
            items[i].value_type()
        );
    }
    put_array_head(buf, elem, items.len() as u64);
    for item in items {
        put_value(buf, item, depth + 1)?;
    }
    Ok(())
}

/// `.<name>.tmp-<pid>` in the destination's directory, so the final rename stays on one
/// filesystem (and is atomic).
fn temp_path(dest: &Path) -> Result<PathBuf> {
    let name = dest
        .file_name()
        .ok_or_else(|| anyhow!("destination has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    Ok(dest.with_file_name(tmp_name))
}

/// Make the rename durable. Best effort: some filesystems refuse to fsync a directory, and
/// the file itself is complete either way.
fn sync_parent_dir(dest: &Path) {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
