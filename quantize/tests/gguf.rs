//! GGUF reader and writer: round trips, hand-built files and a table of malformed files.
//!
//! Everything is synthetic; files go under cargo's per-target temp dir.

use std::path::PathBuf;

use marco_quantize::gguf::{GgufFile, GgufWriter, TensorDecl, Value, ValueType};
use marco_quantize::GgmlType;

// ---------------------------------------------------------------------------------------
// helpers

/// A fresh directory for one test, so parallel tests never share files.
fn test_dir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("gguf-tests")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every value type, nested arrays, typed empty arrays, non-ASCII strings.
fn all_values() -> Vec<(String, Value)> {
    let kv = |k: &str, v: Value| (k.to_string(), v);
    vec![
        kv("general.architecture", Value::from("qwen2")),
        kv("t.u8", Value::U8(250)),
        kv("t.i8", Value::I8(-7)),
        kv("t.u16", Value::U16(65_000)),
        kv("t.i16", Value::I16(-30_000)),
        kv("t.u32", Value::U32(4_000_000_000)),
        kv("t.i32", Value::I32(-2_000_000_000)),
        kv("t.f32", Value::F32(1e-6)),
        kv("t.bool_true", Value::Bool(true)),
        kv("t.bool_false", Value::Bool(false)),
        kv("t.string", Value::from("héllo wörld\n{{ template }}")),
        kv("t.empty_string", Value::from("")),
        kv("t.u64", Value::U64(u64::MAX)),
        kv("t.i64", Value::I64(i64::MIN)),
        kv("t.f64", Value::F64(-2.5e300)),
        kv("t.strings", Value::strings(["a", "", "ß", "<|im_end|>"])),
        kv("t.i32s", Value::i32s([1, -1, i32::MAX, i32::MIN])),
        kv("t.f32s", Value::f32s([0.5, -0.25])),
        kv("t.u8s", Value::Array(vec![Value::U8(1), Value::U8(2)])),
        kv(
            "t.bools",
            Value::Array(vec![Value::Bool(true), Value::Bool(false)]),
        ),
        kv("t.empty_strings", Value::EmptyArray(ValueType::String)),
        kv("t.empty_i32s", Value::i32s([])),
        kv(
            "t.nested",
            Value::Array(vec![
                Value::strings(["x", "y"]),
                Value::i32s([3]),
                Value::EmptyArray(ValueType::F64),
            ]),
        ),
    ]
}

/// (declaration, data) for a few tensors of odd sizes, so padding matters.
fn sample_tensors() -> Vec<(TensorDecl, Vec<u8>)> {
    let decls = [
        TensorDecl::new("token_embd.weight", &[3, 2], GgmlType::F32),
        TensorDecl::new("blk.0.attn_q.weight", &[64, 2], GgmlType::Q8_0),
        TensorDecl::new("blk.0.attn_norm.weight", &[5], GgmlType::F16),
        TensorDecl::new("blk.0.ffn_down.weight", &[256, 1], GgmlType::Q4_K),
        TensorDecl::new("output.weight", &[7, 3, 1, 2], GgmlType::BF16),
    ];
    decls
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let n = d.ty.row_bytes(d.dims[0]).unwrap() * d.dims[1..].iter().product::<u64>();
            let data = (0..n)
                .map(|j| (j as u8).wrapping_mul(31) ^ i as u8)
                .collect();
            (d, data)
        })
        .collect()
}

fn write_sample(dest: &std::path::Path, alignment: u32) -> Vec<(TensorDecl, Vec<u8>)> {
    let tensors = sample_tensors();
    let decls = tensors.iter().map(|(d, _)| d.clone()).collect();
    let mut w = GgufWriter::create(dest, all_values(), decls, alignment).unwrap();
    for (d, data) in &tensors {
        w.write_tensor(&d.name, data).unwrap();
    }
    w.finish().unwrap();
    tensors
}

fn check_sample(file: &GgufFile, tensors: &[(TensorDecl, Vec<u8>)], alignment: u32) {
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), alignment);
    assert_eq!(file.data_offset() % u64::from(alignment), 0);
    for (key, value) in all_values() {
        assert_eq!(file.get(&key), Some(&value), "key {key}");
    }
    assert_eq!(file.tensors().len(), tensors.len());
    for ((decl, data), info) in tensors.iter().zip(file.tensors()) {
        assert_eq!(info.name, decl.name);
        assert_eq!(info.dims, decl.dims);
        assert_eq!(info.ty, decl.ty);
        assert_eq!(info.offset % u64::from(alignment), 0, "{}", info.name);
        assert_eq!(info.n_bytes, data.len() as u64);
        assert_eq!(file.tensor_data(&decl.name).unwrap(), &data[..]);
        assert_eq!(file.data_for(info), &data[..]);
    }
}

// ---------------------------------------------------------------------------------------
// round trips

#[test]
fn round_trip_default_alignment() {
    let dir = test_dir("round_trip_default_alignment");
    let dest = dir.join("model.gguf");
    let tensors = write_sample(&dest, 32);
    let file = GgufFile::open(&dest).unwrap();
    check_sample(&file, &tensors, 32);
    // The default alignment is not written; the order of keys is kept.
    assert!(file.get("general.alignment").is_none());
    let keys: Vec<&str> = file.metadata().iter().map(|(k, _)| k.as_str()).collect();
    let expected: Vec<String> = all_values().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, expected);
    assert_eq!(file.file_size(), std::fs::metadata(&dest).unwrap().len());
    // Only the destination remains: the temp file was renamed.
    assert_eq!(files_in(&dir), ["model.gguf"]);
    // Same result from memory.
    let bytes = std::fs::read(&dest).unwrap();
    let mem = GgufFile::from_bytes("mem.gguf", bytes).unwrap();
    check_sample(&mem, &tensors, 32);
}

#[test]
fn round_trip_other_alignments() {
    let dir = test_dir("round_trip_other_alignments");
    for alignment in [1, 8, 64, 4096] {
        let dest = dir.join(format!("a{alignment}.gguf"));
        let tensors = write_sample(&dest, alignment);
        let file = GgufFile::open(&dest).unwrap();
        check_sample(&file, &tensors, alignment);
        if alignment != 32 {
            assert_eq!(file.get_u32("general.alignment").unwrap(), alignment);
        }
    }
}

#[test]
fn round_trip_no_tensors() {
    let dir = test_dir("round_trip_no_tensors");
    let dest = dir.join("meta.gguf");
    let w = GgufWriter::create(&dest, all_values(), vec![], 32).unwrap();
    w.finish().unwrap();
    let file = GgufFile::open(&dest).unwrap();
    assert!(file.tensors().is_empty());
    assert_eq!(file.metadata().len(), all_values().len());
}

#[test]
fn reread_metadata_writes_identical_header() {
    // GGUF-to-GGUF conversion copies metadata as read, empty arrays included.
    let dir = test_dir("reread_metadata");
    let first = dir.join("first.gguf");
    write_sample(&first, 32);
    let file = GgufFile::open(&first).unwrap();
    let second = dir.join("second.gguf");
    let decls = file
        .tensors()
        .iter()
        .map(|t| TensorDecl::new(t.name.clone(), &t.dims, t.ty))
        .collect();
    let mut w = GgufWriter::create(&second, file.metadata().to_vec(), decls, 32).unwrap();
    for t in file.tensors() {
        w.write_tensor(&t.name, file.data_for(t)).unwrap();
    }
    w.finish().unwrap();
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap()
    );
}

// ---------------------------------------------------------------------------------------
// getters and display

#[test]
fn typed_getters() {
    let dir = test_dir("typed_getters");
    let dest = dir.join("g.gguf");
    write_sample(&dest, 32);
    let f = GgufFile::open(&dest).unwrap();
    assert_eq!(f.get_u64("t.u8").unwrap(), 250);
    assert_eq!(f.get_u64("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get_u32("t.u16").unwrap(), 65_000);
    assert_eq!(f.get_usize("t.u64").unwrap(), usize::MAX);
    assert_eq!(f.get_f32("t.f32").unwrap(), 1e-6);
    assert_eq!(f.get_str("general.architecture").unwrap(), "qwen2");
    assert!(f.get_bool("t.bool_true").unwrap());
    assert_eq!(
        f.get_str_array("t.strings").unwrap(),
        ["a", "", "ß", "<|im_end|>"]
    );
    assert_eq!(
        f.get_i32_array("t.i32s").unwrap(),
        [1, -1, i32::MAX, i32::MIN]
    );
    assert_eq!(f.get_f32_array("t.f32s").unwrap(), [0.5, -0.25]);
    assert!(f.get_str_array("t.empty_strings").unwrap().is_empty());
    assert_eq!(f.get_u64_opt("nope").unwrap(), None);
    assert_eq!(f.get_str_opt("nope").unwrap(), None);

    let wrong = f.get_u64("t.i8").unwrap_err().to_string();
    for part in ["g.gguf", "'t.i8'", "non-negative integer", "i8 -7"] {
        assert!(wrong.contains(part), "{wrong:?} lacks {part:?}");
    }
    let missing = f.get_str("general.name").unwrap_err().to_string();
    assert!(missing.contains("'general.name' is missing"), "{missing}");
    let opt_wrong = f.get_str_opt("t.u8").unwrap_err().to_string();
    assert!(opt_wrong.contains("expected a string"), "{opt_wrong}");
    let u32_range = f.get_u32("t.u64").unwrap_err().to_string();
    assert!(u32_range.contains("fits u32"), "{u32_range}");
    let arr = f.get_i32_array("t.strings").unwrap_err().to_string();
    assert!(arr.contains("array of string"), "{arr}");
    let missing_tensor = f.tensor_data("nope.weight").unwrap_err().to_string();
    assert!(missing_tensor.contains("'nope.weight'"), "{missing_tensor}");
}

#[test]
fn value_helpers_and_display() {
    assert_eq!(Value::I32(-1).as_u64(), None);
    assert_eq!(Value::I64(5).as_u64(), Some(5));
    assert_eq!(Value::U64(u64::MAX).as_i64(), None);
    assert_eq!(Value::F64(0.5).as_f32(), Some(0.5));
    assert_eq!(Value::Bool(true).as_u64(), None);
    assert_eq!(Value::EmptyArray(ValueType::U8).as_array(), Some(&[][..]));
    assert_eq!(Value::from("x").to_string(), "\"x\"");
    let long = Value::i32s(0..1000);
    let shown = long.to_string();
    assert!(shown.starts_with("[0, 1, 2"), "{shown}");
    assert!(shown.contains("(1000 items)"), "{shown}");
    assert!(shown.len() < 100, "{shown}");
    assert_eq!(long.type_description(), "array of i32");
    for t in ValueType::ALL {
        assert_eq!(ValueType::from_id(t.id()), Some(t));
    }
    assert_eq!(ValueType::from_id(13), None);
}

// ---------------------------------------------------------------------------------------
// writer errors

fn writer_err(
    dir: &std::path::Path,
    metadata: Vec<(String, Value)>,
    decls: Vec<TensorDecl>,
    alignment: u32,
) -> String {
    let dest = dir.join("bad.gguf");
    let err = match GgufWriter::create(&dest, metadata, decls, alignment) {
        Ok(_) => panic!("create succeeded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(files_in(dir).is_empty(), "left files behind");
    err
}

#[test]
fn writer_refuses_bad_declarations() {
    let dir = test_dir("writer_refuses_bad_declarations");
    let t = |name: &str, dims: &[u64], ty| vec![TensorDecl::new(name, dims, ty)];
    // (metadata, tensors, alignment, expected part of the message)
    type Case = (Vec<(String, Value)>, Vec<TensorDecl>, u32, &'static str);
    let cases: Vec<Case> = vec![
        (vec![], vec![], 48, "power of two"),
        (vec![], vec![], 0, "power of two"),
        (vec![], t("q", &[33], GgmlType::Q8_0), 32, "block size"),
        (vec![], t("z", &[0, 4], GgmlType::F32), 32, "zero"),
        (
            vec![],
            t("d", &[1, 1, 1, 1, 1], GgmlType::F32),
            32,
            "dimensions",
        ),
        (
            vec![],
            t(&"n".repeat(64), &[1], GgmlType::F32),
            32,
            "at most 63",
        ),
        (
            vec![],
            [t("a", &[1], GgmlType::F32), t("a", &[2], GgmlType::F32)].concat(),
            32,
            "declared twice",
        ),
        (
            vec![("k".into(), Value::Array(vec![]))],
            vec![],
            32,
            "EmptyArray",
        ),
        (
            vec![("k".into(), Value::Array(vec![Value::U8(1), Value::I8(1)]))],
            vec![],
            32,
            "element 1 is i8",
        ),
        (
            vec![("k".into(), Value::U8(1)), ("k".into(), Value::U8(2))],
            vec![],
            32,
            "given twice",
        ),
        (
            vec![("general.alignment".into(), Value::U32(64))],
            vec![],
            32,
            "general.alignment",
        ),
    ];
    for (metadata, decls, alignment, expected) in cases {
        let err = writer_err(&dir, metadata, decls, alignment);
        assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        assert!(err.contains("bad.gguf"), "{err:?} lacks the file");
    }
    let deep = (0..20).fold(Value::U8(0), |v, _| Value::Array(vec![v]));
    let err = writer_err(&dir, vec![("deep".into(), deep)], vec![], 32);
    assert!(err.contains("nested"), "{err}");
}

#[test]
fn writer_enforces_order_size_and_completion() {
    let dir = test_dir("writer_enforces_order");
    let dest = dir.join("w.gguf");
    let decls = vec![
        TensorDecl::new("a", &[4], GgmlType::F32),
        TensorDecl::new("b", &[2], GgmlType::F32),
    ];
    let mut w = GgufWriter::create(&dest, vec![], decls, 32).unwrap();
    let order = w.write_tensor("b", &[0; 8]).unwrap_err().to_string();
    assert!(order.contains("expected 'a'"), "{order}");
    let size = w.write_tensor("a", &[0; 15]).unwrap_err().to_string();
    assert!(size.contains("needs 16 bytes, got 15"), "{size}");
    w.write_tensor("a", &[1; 16]).unwrap();
    // An unfinished file never appears at the destination.
    assert!(!dest.exists());
    let incomplete = w.finish().unwrap_err().to_string();
    assert!(incomplete.contains("'b' was never written"), "{incomplete}");
    assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));

    let mut w = GgufWriter::create(&dest, vec![], vec![], 32).unwrap();
    let extra = w.write_tensor("x", &[]).unwrap_err().to_string();
    assert!(extra.contains("after all 0 declared"), "{extra}");
    drop(w);
    assert!(files_in(&dir).is_empty());
}

#[test]
fn dropped_writer_removes_temp_file() {
    let dir = test_dir("dropped_writer");
    let dest = dir.join("d.gguf");
    let w = GgufWriter::create(&dest, all_values(), vec![], 32).unwrap();
    let names = files_in(&dir);
    assert_eq!(names.len(), 1);
    assert!(names[0].starts_with(".d.gguf.tmp-"), "{names:?}");
    drop(w);
    assert!(files_in(&dir).is_empty());
}

// ---------------------------------------------------------------------------------------
// hand-built files

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_str(b: &mut Vec<u8>, s: &[u8]) {
    put_u64(b, s.len() as u64);
    b.extend_from_slice(s);
}

/// A metadata entry: key, type id, raw payload.
fn kv(key: &str, ty: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, key.as_bytes());
    put_u32(&mut b, ty);
    b.extend_from_slice(payload);
    b
}

fn str_payload(s: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, s);
    b
}

struct RawTensor {
    name: Vec<u8>,
    n_dims: u32,
    dims: Vec<u64>,
    ty: u32,
    offset: u64,
}

impl RawTensor {
    fn f32(name: &str, dims: &[u64], offset: u64) -> RawTensor {
        RawTensor {
            name: name.as_bytes().to_vec(),
            n_dims: dims.len() as u32,
            dims: dims.to_vec(),
            ty: 0,
            offset,
        }
    }
}

/// A GGUF file built field by field, so each test can break one field.
struct Raw {
    version: u32,
    tensor_count: Option<u64>,
    kv_count: Option<u64>,
    kvs: Vec<Vec<u8>>,
    tensors: Vec<RawTensor>,
    data_len: usize,
}

impl Raw {
    /// Valid: two metadata entries, tensors `a` (f32 [8], offset 0) and `b` (f32 [4, 2],
    /// offset 32), 64 data bytes.
    fn valid() -> Raw {
        Raw {
            version: 3,
            tensor_count: None,
            kv_count: None,
            kvs: vec![
                kv("general.architecture", 8, &str_payload(b"qwen2")),
                kv("qwen2.block_count", 4, &7u32.to_le_bytes()),
            ],
            tensors: vec![
                RawTensor::f32("a", &[8], 0),
                RawTensor::f32("b", &[4, 2], 32),
            ],
            data_len: 64,
        }
    }

    fn build(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        put_u32(&mut b, self.version);
        put_u64(
            &mut b,
            self.tensor_count.unwrap_or(self.tensors.len() as u64),
        );
        put_u64(&mut b, self.kv_count.unwrap_or(self.kvs.len() as u64));
        for entry in &self.kvs {
            b.extend_from_slice(entry);
        }
        for t in &self.tensors {
            put_str(&mut b, &t.name);
            put_u32(&mut b, t.n_dims);
            for &d in &t.dims {
                put_u64(&mut b, d);
            }
            put_u32(&mut b, t.ty);
            put_u64(&mut b, t.offset);
        }
        b.resize(b.len().next_multiple_of(32), 0);
        // Data: byte i of the section is i, so views can be checked.
        b.extend((0..self.data_len).map(|i| i as u8));
        b
    }
}

#[test]
fn hand_built_v2_and_v3_parse() {
    for version in [2, 3] {
        let raw = Raw {
            version,
            ..Raw::valid()
        };
        let f = GgufFile::from_bytes("hand.gguf", raw.build()).unwrap();
        assert_eq!(f.version(), version);
        assert_eq!(f.get_str("general.architecture").unwrap(), "qwen2");
        assert_eq!(f.get_u32("qwen2.block_count").unwrap(), 7);
        let b = f.tensor_info("b").unwrap();
        assert_eq!((b.row_len(), b.n_rows(), b.n_elements()), (4, 2, 8));
        assert_eq!(b.n_bytes, 32);
        let data = f.tensor_data("b").unwrap();
        assert_eq!(data, (32..64).map(|i| i as u8).collect::<Vec<_>>());
    }
}

/// Parse `bytes` expecting an error that mentions every one of `parts` and the file name.
fn expect_err(case: &str, bytes: Vec<u8>, parts: &[&str]) {
    let err = match GgufFile::from_bytes("bad.gguf", bytes) {
        Ok(_) => panic!("case {case}: parsed a malformed file"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("bad.gguf"),
        "case {case}: {err:?} lacks the file name"
    );
    for part in parts {
        assert!(err.contains(part), "case {case}: {err:?} lacks {part:?}");
    }
}

#[test]
fn malformed_files_are_refused() {
    type Mutation = fn(&mut Raw);
    let cases: Vec<(&str, Mutation, &[&str])> = vec![
        (
            "version 1",
            |r| r.version = 1,
            &["version 1", "not supported"],
        ),
        (
            "version 4",
            |r| r.version = 4,
            &["version 4", "expected 2 or 3"],
        ),
        (
            "big-endian",
            |r| r.version = 3u32.swap_bytes(),
            &["big-endian"],
        ),
        (
            "huge tensor count",
            |r| r.tensor_count = Some(u64::MAX),
            &["tensor count"],
        ),
        (
            "tensor count too high",
            |r| r.tensor_count = Some(3),
            &["tensor"],
        ),
        (
            "huge kv count",
            |r| r.kv_count = Some(1 << 40),
            &["metadata count"],
        ),
        (
            "huge key length",
            |r| r.kvs[0][..8].copy_from_slice(&u64::MAX.to_le_bytes()),
            &["metadata entry #0", "key length"],
        ),
        (
            "huge string length",
            |r| r.kvs[0] = kv("s", 8, &(1u64 << 62).to_le_bytes()),
            &["'s'", "string value length"],
        ),
        (
            "huge array count",
            |r| {
                let mut p = 8u32.to_le_bytes().to_vec();
                p.extend_from_slice(&(u64::MAX / 8).to_le_bytes());
                r.kvs[1] = kv("tokens", 9, &p);
            },
            &["'tokens'", "array count"],
        ),
        (
            "array count beyond bytes",
            |r| {
                let mut p = 4u32.to_le_bytes().to_vec();
                p.extend_from_slice(&1000u64.to_le_bytes());
                r.kvs[1] = kv("ids", 9, &p);
            },
            &["'ids'", "array count 1000"],
        ),
        (
            "unknown value type",
            |r| r.kvs[1] = kv("k", 13, &[0; 4]),
            &["'k'", "value type id 13"],
        ),
        (
            "unknown array element type",
            |r| r.kvs[1] = kv("k", 9, &[99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            &["'k'", "array element type id 99"],
        ),
        (
            "bool 2",
            |r| r.kvs[1] = kv("flag", 7, &[2]),
            &["'flag'", "bool", "found 2"],
        ),
        (
            "invalid utf-8 value",
            |r| r.kvs[0] = kv("name", 8, &str_payload(&[0x66, 0xff, 0x66])),
            &["'name'", "UTF-8"],
        ),
        (
            "invalid utf-8 key",
            |r| {
                r.kvs[0] = kv("x", 4, &[0; 4])
                    .iter()
                    .map(|&b| if b == b'x' { 0xc3 } else { b })
                    .collect()
            },
            &["metadata entry #0", "key", "UTF-8"],
        ),
        (
            "invalid utf-8 tensor name",
            |r| r.tensors[1].name = vec![0xe2, 0x28],
            &["tensor info #1", "name", "UTF-8"],
        ),
        (
            "duplicate key",
            |r| r.kvs[1] = r.kvs[0].clone(),
            &["'general.architecture'", "duplicate metadata key"],
        ),
        (
            "alignment 48",
            |r| r.kvs.push(kv("general.alignment", 4, &48u32.to_le_bytes())),
            &["general.alignment", "power of two", "48"],
        ),
        (
            "alignment 0",
            |r| r.kvs.push(kv("general.alignment", 4, &0u32.to_le_bytes())),
            &["general.alignment", "power of two"],
        ),
        (
            "alignment string",
            |r| r.kvs.push(kv("general.alignment", 8, &str_payload(b"32"))),
            &["general.alignment", "found string"],
        ),
        (
            "deeply nested arrays",
            |r| {
                let mut p = Vec::new();
                for _ in 0..40 {
                    put_u32(&mut p, 9);
                    put_u64(&mut p, 1);
                }
                r.kvs[1] = kv("deep", 9, &p);
            },
            &["'deep'", "nested"],
        ),
        (
            "n_dims 5",
            |r| {
                r.tensors[1].n_dims = 5;
                r.tensors[1].dims = vec![1; 5];
            },
            &["'b'", "n_dims is 5"],
        ),
        (
            "n_dims 0",
            |r| {
                r.tensors[1].n_dims = 0;
                r.tensors[1].dims = vec![];
            },
            &["'b'", "n_dims is 0"],
        ),
        (
            "unknown type id 99",
            |r| r.tensors[1].ty = 99,
            &["'b'", "type id 99"],
        ),
        (
            "dim zero",
            |r| r.tensors[1].dims = vec![4, 0],
            &["'b'", "dimension 1 is zero"],
        ),
        (
            "dims overflow",
            |r| r.tensors[1].dims = vec![1 << 40, 1 << 40],
            &["'b'", "overflow"],
        ),
        (
            "row not whole blocks",
            |r| {
                r.tensors[1].ty = 8; // Q8_0: 32-element blocks
                r.tensors[1].dims = vec![33, 1];
            },
            &["'b'", "block size 32"],
        ),
        (
            "offset misaligned",
            |r| r.tensors[1].offset = 36,
            &["'b'", "offset 36", "alignment 32"],
        ),
        (
            "offset past EOF",
            |r| r.tensors[1].offset = 64,
            &["'b'", "past the end"],
        ),
        (
            "offset overflow",
            |r| r.tensors[1].offset = u64::MAX - 31,
            &["'b'", "past the end"],
        ),
        (
            "data truncated",
            |r| r.data_len = 63,
            &["'b'", "past the end"],
        ),
        (
            "overlapping tensors",
            |r| {
                r.tensors[0].dims = vec![16];
            },
            &["'a'", "overlaps", "'b'"],
        ),
        ("same offset", |r| r.tensors[1].offset = 0, &["overlaps"]),
        (
            "duplicate tensor name",
            |r| r.tensors[1].name = b"a".to_vec(),
            &["'a'", "duplicate tensor name"],
        ),
    ];
    for (case, mutate, parts) in cases {
        let mut raw = Raw::valid();
        mutate(&mut raw);
        expect_err(case, raw.build(), parts);
    }
    let mut bad_magic = Raw::valid().build();
    bad_magic[3] = b'X';
    expect_err("bad magic", bad_magic, &["magic", "GGUF"]);
    expect_err("empty file", vec![], &["magic", "truncated"]);
}

/// Every proper prefix of a valid file that cuts into the header or the tensor data is an
/// error; only cutting trailing padding after the last tensor leaves a valid file.
#[test]
fn every_truncation_is_refused() {
    let dir = test_dir("every_truncation");
    let dest = dir.join("t.gguf");
    write_sample(&dest, 32);
    let full = std::fs::read(&dest).unwrap();
    let file = GgufFile::from_bytes("t.gguf", full.clone()).unwrap();
    let data_end = file
        .tensors()
        .iter()
        .map(|t| file.data_offset() + t.offset + t.n_bytes)
        .max()
        .unwrap() as usize;
    for len in 0..full.len() {
        let result = GgufFile::from_bytes("bad.gguf", full[..len].to_vec());
        if len >= data_end {
            assert!(result.is_ok(), "cut at {len} (data ends at {data_end})");
            continue;
        }
        let err = format!("{:#}", result.err().unwrap());
        assert!(err.contains("bad.gguf"), "cut at {len}: {err}");
        assert!(
            err.contains("truncated")
                || err.contains("out of range")
                || err.contains("past the end"),
            "cut at {len}: {err}"
        );
    }
}

/// Overwriting any header byte with a few values never panics (errors or a valid file).
#[test]
fn header_byte_corruption_never_panics() {
    let dir = test_dir("header_corruption");
    let dest = dir.join("c.gguf");
    write_sample(&dest, 32);
    let full = std::fs::read(&dest).unwrap();
    let header_len = GgufFile::from_bytes("c", full.clone())
        .unwrap()
        .data_offset() as usize;
    for pos in 0..header_len {
        for v in [0x00, 0x01, 0x7f, 0x80, 0xff, full[pos].wrapping_add(1)] {
            let mut bytes = full.clone();
            bytes[pos] = v;
            if let Err(e) = GgufFile::from_bytes("c.gguf", bytes) {
                assert!(e.to_string().starts_with("c.gguf: "), "{e}");
            }
        }
    }
}

#[test]
fn open_reports_missing_file() {
    let dir = test_dir("open_missing");
    let err = GgufFile::open(&dir.join("absent.gguf")).unwrap_err();
    assert!(format!("{err:#}").contains("absent.gguf"), "{err:#}");
}
