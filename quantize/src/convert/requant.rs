//! A GGUF file as conversion input ("requantize"): its metadata is copied, its tensors are
//! dequantized row by row and quantized again with the chosen mix.

use std::path::Path;

use anyhow::{bail, Result};

use super::pipeline::{Source, SourceTensor};
use crate::gguf::GgufFile;

/// Keys that describe the input file rather than the model: dropped (the writer sets its own
/// alignment, and the output is one file, not a split).
fn is_file_specific(key: &str) -> bool {
    key == crate::gguf::ALIGNMENT_KEY || key.starts_with("split.")
}

/// The tensors and metadata of `file` (a qwen2 model).
pub fn source<'a>(file: &'a GgufFile, path: &Path) -> Result<Source<'a>> {
    let name = file.path_display();
    let arch = file.get_str("general.architecture")?;
    if arch != "qwen2" {
        bail!("{name}: general.architecture is '{arch}'; only qwen2 models can be requantized");
    }
    let n_head = file.get_usize("qwen2.attention.head_count")?;
    let tensors = file
        .tensors()
        .iter()
        .map(|t| SourceTensor {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty,
            data: file.data_for(t),
            pages: None,
        })
        .collect();
    Ok(Source {
        metadata: file
            .metadata()
            .iter()
            .filter(|(k, _)| !is_file_specific(k))
            .cloned()
            .collect(),
        tensors,
        n_layer: file.get_usize("qwen2.block_count")?,
        n_head,
        n_head_kv: file
            .get_usize_opt("qwen2.attention.head_count_kv")?
            .unwrap_or(n_head),
        files: vec![path.to_path_buf()],
    })
}
