//! Parsing and validating a GGUF header (versions 2 and 3, little-endian).
//!
//! Layout: magic "GGUF", u32 version, u64 tensor count, u64 metadata count, the metadata
//! (string key, u32 value type, value), the tensor infos (string name, u32 n_dims, u64 dims,
//! u32 ggml type, u64 offset), padding to the alignment, then the data section.

use std::collections::HashMap;

use anyhow::{anyhow, Result};

use super::cursor::Cursor;
use super::tensor::{tensor_n_bytes, TensorInfo, MAX_DIMS};
use super::value::{Value, ValueType};
use super::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC};
use crate::types::GgmlType;

/// Deeper nesting than this is refused: real files nest at most once, and unbounded
/// recursion on a forged file would overflow the stack.
const MAX_ARRAY_DEPTH: usize = 16;

/// Smallest metadata entry: empty key (u64 length), u32 type, one-byte value.
const MIN_KV_BYTES: usize = 8 + 4 + 1;
/// Smallest tensor info: empty name, u32 n_dims, one u64 dim, u32 type, u64 offset.
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 8 + 4 + 8;

/// Everything in a GGUF file but the tensor data.
pub(super) struct Header {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub key_index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    pub tensor_index: HashMap<String, usize>,
    pub alignment: u32,
    /// File offset of the data section.
    pub data_start: usize,
}

/// Parse and validate the header of `bytes` (`file` names it in errors).
pub(super) fn parse_header(file: &str, bytes: &[u8]) -> Result<Header> {
    let mut cur = Cursor::new(file, bytes);
    let version = read_preamble(&mut cur)?;
    let n_tensors = cur.count(MIN_TENSOR_INFO_BYTES, "header", "tensor count")?;
    let n_kv = cur.count(MIN_KV_BYTES, "header", "metadata count")?;
    let (metadata, key_index) = read_metadata(&mut cur, n_kv)?;
    let alignment = alignment_of(file, &metadata, &key_index)?;
    let (tensors, tensor_index) = read_tensor_infos(&mut cur, n_tensors)?;
    let data_start = data_section_start(&cur, alignment, tensors.is_empty())?;
    check_tensor_placement(file, &tensors, alignment, bytes.len() - data_start)?;
    Ok(Header {
        version,
        metadata,
        key_index,
        tensors,
        tensor_index,
        alignment,
        data_start,
    })
}

/// Magic and version; returns the version (2 or 3).
fn read_preamble(cur: &mut Cursor) -> Result<u32> {
    let magic = cur.take(4, "header", "magic")?;
    if magic != MAGIC {
        return Err(cur.fail(
            "header",
            format_args!("bad magic {magic:02x?}, expected \"GGUF\" {MAGIC:02x?}: not a GGUF file"),
        ));
    }
    let version = cur.u32("header", "version")?;
    match version {
        2 | 3 => Ok(version),
        1 => Err(cur.fail(
            "header",
            "GGUF version 1 is not supported (expected version 2 or 3); re-convert the model with a current converter",
        )),
        v if matches!(v.swap_bytes(), 1..=3) => Err(cur.fail(
            "header",
            format_args!(
                "version field reads {v:#x}: this is a big-endian GGUF (version {}), only little-endian files are supported",
                v.swap_bytes()
            ),
        )),
        v => Err(cur.fail(
            "header",
            format_args!("unsupported GGUF version {v} (expected 2 or 3)"),
        )),
    }
}

type Metadata = (Vec<(String, Value)>, HashMap<String, usize>);

fn read_metadata(cur: &mut Cursor, n_kv: usize) -> Result<Metadata> {
    let mut metadata = Vec::with_capacity(n_kv);
    let mut index = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = cur.string(&format!("metadata entry #{i}"), "key")?;
        let ctx = format!("metadata key '{key}'");
        if index.contains_key(&key) {
            return Err(cur.fail(&ctx, "duplicate metadata key"));
        }
        let ty = read_value_type(cur, &ctx, "value type")?;
        let value = read_value(cur, ty, &ctx, 0)?;
        index.insert(key.clone(), metadata.len());
        metadata.push((key, value));
    }
    Ok((metadata, index))
}

fn read_value_type(cur: &mut Cursor, ctx: &str, what: &str) -> Result<ValueType> {
    let id = cur.u32(ctx, what)?;
    ValueType::from_id(id).ok_or_else(|| {
        cur.fail(
            ctx,
            format_args!("unknown {what} id {id} (expected 0 to 12)"),
        )
    })
}

fn read_value(cur: &mut Cursor, ty: ValueType, ctx: &str, depth: usize) -> Result<Value> {
    Ok(match ty {
        ValueType::U8 => Value::U8(cur.u8(ctx, "u8 value")?),
        ValueType::I8 => Value::I8(cur.u8(ctx, "i8 value")? as i8),
        ValueType::U16 => Value::U16(cur.u16(ctx, "u16 value")?),
        ValueType::I16 => Value::I16(cur.u16(ctx, "i16 value")? as i16),
        ValueType::U32 => Value::U32(cur.u32(ctx, "u32 value")?),
        ValueType::I32 => Value::I32(cur.u32(ctx, "i32 value")? as i32),
        ValueType::F32 => Value::F32(f32::from_bits(cur.u32(ctx, "f32 value")?)),
        ValueType::U64 => Value::U64(cur.u64(ctx, "u64 value")?),
        ValueType::I64 => Value::I64(cur.u64(ctx, "i64 value")? as i64),
        ValueType::F64 => Value::F64(f64::from_bits(cur.u64(ctx, "f64 value")?)),
        ValueType::Bool => Value::Bool(read_bool(cur, ctx)?),
        ValueType::String => Value::String(cur.string(ctx, "string value")?),
        ValueType::Array => read_array(cur, ctx, depth)?,
    })
}

fn read_bool(cur: &mut Cursor, ctx: &str) -> Result<bool> {
    match cur.u8(ctx, "bool value")? {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(cur.fail(ctx, format_args!("bool value must be 0 or 1, found {b}"))),
    }
}

fn read_array(cur: &mut Cursor, ctx: &str, depth: usize) -> Result<Value> {
    if depth >= MAX_ARRAY_DEPTH {
        return Err(cur.fail(
            ctx,
            format_args!("arrays nested more than {MAX_ARRAY_DEPTH} deep"),
        ));
    }
    let elem = read_value_type(cur, ctx, "array element type")?;
    // Checked against the bytes left, so reserving `n` slots is bounded by the file size.
    let n = cur.count(elem.min_size(), ctx, "array count")?;
    if n == 0 {
        return Ok(Value::EmptyArray(elem));
    }
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        items.push(read_value(cur, elem, ctx, depth + 1)?);
    }
    Ok(Value::Array(items))
}

/// `general.alignment` if present (any non-negative integer type, a power of two that fits
/// u32), else the default 32.
fn alignment_of(
    file: &str,
    metadata: &[(String, Value)],
    index: &HashMap<String, usize>,
) -> Result<u32> {
    let Some(&i) = index.get(ALIGNMENT_KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let value = &metadata[i].1;
    let align = value
        .as_u64()
        .and_then(|a| u32::try_from(a).ok())
        .filter(|a| a.is_power_of_two());
    align.ok_or_else(|| {
        anyhow!(
            "{file}: metadata key '{ALIGNMENT_KEY}': expected a nonzero power of two (u32), found {} {value}",
            value.type_description()
        )
    })
}

type Tensors = (Vec<TensorInfo>, HashMap<String, usize>);

fn read_tensor_infos(cur: &mut Cursor, n_tensors: usize) -> Result<Tensors> {
    let mut tensors = Vec::with_capacity(n_tensors);
    let mut index = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = cur.string(&format!("tensor info #{i}"), "name")?;
        let ctx = format!("tensor #{i} '{name}'");
        if index.contains_key(&name) {
            return Err(cur.fail(&ctx, "duplicate tensor name"));
        }
        let info = read_tensor_info(cur, name, &ctx)?;
        index.insert(info.name.clone(), tensors.len());
        tensors.push(info);
    }
    Ok((tensors, index))
}

fn read_tensor_info(cur: &mut Cursor, name: String, ctx: &str) -> Result<TensorInfo> {
    let n_dims = cur.u32(ctx, "n_dims")?;
    if n_dims == 0 || n_dims as usize > MAX_DIMS {
        return Err(cur.fail(
            ctx,
            format_args!("n_dims is {n_dims}, expected 1 to {MAX_DIMS}"),
        ));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(cur.u64(ctx, "dims")?);
    }
    let type_id = cur.u32(ctx, "ggml type")?;
    let ty = GgmlType::from_id(type_id).ok_or_else(|| {
        cur.fail(
            ctx,
            format_args!("unknown or unsupported ggml type id {type_id}"),
        )
    })?;
    let offset = cur.u64(ctx, "data offset")?;
    let n_bytes =
        tensor_n_bytes(&dims, ty).map_err(|why| cur.fail(ctx, format_args!("shape: {why}")))?;
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        n_bytes,
    })
}

/// File offset of the data section: the end of the header rounded up to the alignment.
/// A file without tensors may end before that (writers need not pad it).
fn data_section_start(cur: &Cursor, alignment: u32, no_tensors: bool) -> Result<usize> {
    let file_len = cur.pos() + cur.remaining();
    let start = cur
        .aligned_pos(alignment.into())
        .and_then(|s| usize::try_from(s).ok())
        .filter(|&s| s <= file_len);
    match start {
        Some(s) => Ok(s),
        None if no_tensors => Ok(file_len),
        None => Err(cur.fail(
            "data section",
            format_args!(
                "file truncated: data section should start at the next multiple of {alignment}, past the end of the file ({file_len} bytes)"
            ),
        )),
    }
}

/// Every tensor aligned, inside the data section, and no two overlapping.
fn check_tensor_placement(
    file: &str,
    tensors: &[TensorInfo],
    alignment: u32,
    data_len: usize,
) -> Result<()> {
    for t in tensors {
        if !t.offset.is_multiple_of(u64::from(alignment)) {
            return Err(anyhow!(
                "{file}: tensor '{}': data offset {} is not a multiple of the alignment {alignment}",
                t.name,
                t.offset
            ));
        }
        let end = t.offset.checked_add(t.n_bytes);
        if end.is_none_or(|e| e > data_len as u64) {
            return Err(anyhow!(
                "{file}: tensor '{}': data at offset {} + {} bytes ({} {:?}) runs past the end of the data section ({data_len} bytes): file truncated or offset corrupt",
                t.name,
                t.offset,
                t.n_bytes,
                t.ty,
                t.dims
            ));
        }
    }
    check_no_overlap(file, tensors)
}

fn check_no_overlap(file: &str, tensors: &[TensorInfo]) -> Result<()> {
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        // In bounds was checked first, so this cannot overflow.
        if a.offset + a.n_bytes > b.offset {
            return Err(anyhow!(
                "{file}: tensor '{}' (data offset {}, {} bytes) overlaps tensor '{}' (data offset {})",
                a.name,
                a.offset,
                a.n_bytes,
                b.name,
                b.offset
            ));
        }
    }
    Ok(())
}
