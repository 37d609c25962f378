//! GGUF files: a validating, memory-mapped reader and a streaming writer.
//!
//! - [`GgufFile`] parses versions 2 and 3 (little-endian). Files are untrusted input: every
//!   malformation gives an error naming the file, the field / key / tensor and what was
//!   expected, never a panic or an allocation sized by an unchecked count.
//! - [`GgufWriter`] writes version 3: the header first (all tensor sizes follow from type and
//!   shape), then the tensor data in declared order, into a temp file renamed on `finish`.
//! - [`Value`] / [`ValueType`]: metadata values; empty arrays carry their element type as
//!   [`Value::EmptyArray`].

mod cursor;
mod getters;
mod parse;
mod reader;
mod tensor;
mod value;
mod writer;

pub use reader::GgufFile;
pub use tensor::{TensorInfo, MAX_DIMS};
pub use value::{Value, ValueType};
pub use writer::{GgufWriter, TensorDecl, MAX_TENSOR_NAME_BYTES};

/// The first four bytes of every GGUF file.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The version the writer produces.
pub const WRITE_VERSION: u32 = 3;
/// Metadata key of the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;
