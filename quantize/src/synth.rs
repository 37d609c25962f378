//! Synthetic models: a GGUF with the metadata, tokenizer, tensor names, shapes and types of a
//! real one, and random weights.
//!
//! Why: a benchmark needs the model's shapes and quant types, not its weights. A machine that
//! cannot receive the real file (a lent GPU machine takes 64 MiB, the default model is 491 MB)
//! can receive a *shape file* of a few MB (metadata plus the tensor list, no data) and expand it
//! there. Speed on random weights equals speed on real ones: every kernel reads every byte.
//!
//! The shape file is itself a valid GGUF with no tensors; the tensor list travels in the
//! metadata key [`SHAPE_KEY`], one `name|type|d0,d1,...` string per tensor.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::convert::check_output;
use crate::gguf::{GgufFile, GgufWriter, TensorDecl, Value};
use crate::quants::quantize_row;
use crate::rng::SplitMix64;
use crate::types::GgmlType;

/// Metadata key of a shape file's tensor list.
pub const SHAPE_KEY: &str = "marco.synthetic.tensors";

/// The tensors `like` describes: its own, or those listed in a shape file.
pub fn tensor_decls(like: &GgufFile) -> Result<Vec<TensorDecl>> {
    let Some(list) = like.get(SHAPE_KEY) else {
        return Ok(like
            .tensors()
            .iter()
            .map(|t| TensorDecl::new(t.name.clone(), &t.dims, t.ty))
            .collect());
    };
    let file = like.path_display();
    let items = list
        .as_array()
        .ok_or_else(|| anyhow!("{file}: metadata '{SHAPE_KEY}' is not an array"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let s = v
                .as_str()
                .ok_or_else(|| anyhow!("{file}: metadata '{SHAPE_KEY}'[{i}] is not a string"))?;
            parse_decl(s).with_context(|| format!("{file}: metadata '{SHAPE_KEY}'[{i}] = {s:?}"))
        })
        .collect()
}

fn parse_decl(s: &str) -> Result<TensorDecl> {
    // From the right: a tensor name may itself contain '|'.
    let mut parts = s.rsplitn(3, '|');
    let (Some(dims), Some(ty), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("expected name|type|d0,d1,...");
    };
    let ty = GgmlType::ALL
        .into_iter()
        .find(|t| t.name().eq_ignore_ascii_case(ty))
        .ok_or_else(|| anyhow!("unknown tensor type '{ty}'"))?;
    let dims = dims
        .split(',')
        .map(|d| d.parse::<u64>().map_err(|_| anyhow!("bad dimension '{d}'")))
        .collect::<Result<Vec<_>>>()?;
    Ok(TensorDecl::new(name, &dims, ty))
}

fn format_decl(d: &TensorDecl) -> String {
    let dims: Vec<String> = d.dims.iter().map(u64::to_string).collect();
    format!("{}|{}|{}", d.name, d.ty.name(), dims.join(","))
}

/// Metadata of `like` without a shape list.
fn model_metadata(like: &GgufFile) -> Vec<(String, Value)> {
    like.metadata()
        .iter()
        .filter(|(k, _)| k != SHAPE_KEY)
        .cloned()
        .collect()
}

/// Write `out`: `like`'s metadata and tensor list, no tensor data.
pub fn write_shape(like: &GgufFile, out: &Path) -> Result<()> {
    check_output(out, &[PathBuf::from(like.path_display())])?;
    let decls = tensor_decls(like)?;
    let mut meta = model_metadata(like);
    meta.push((
        SHAPE_KEY.to_string(),
        Value::strings(decls.iter().map(format_decl)),
    ));
    GgufWriter::create(out, meta, Vec::new(), like.alignment())?.finish()
}

/// Write `out`: `like`'s metadata and tensors (or those of the shape file `like`), filled with
/// random weights quantized to each tensor's type. Norm weights are 1 so activations stay in
/// a realistic range. `progress` is called with the bytes written after each tensor.
pub fn synthesize(
    like: &GgufFile,
    out: &Path,
    seed: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    check_output(out, &[PathBuf::from(like.path_display())])?;
    let decls = tensor_decls(like)?;
    let mut writer =
        GgufWriter::create(out, model_metadata(like), decls.clone(), like.alignment())?;
    for (i, d) in decls.iter().enumerate() {
        let data = random_tensor(d, seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        writer.write_tensor(&d.name, &data)?;
        progress(data.len() as u64);
    }
    writer.finish()
}

/// One tensor of random values, quantized row by row on all cores.
fn random_tensor(d: &TensorDecl, seed: u64) -> Vec<u8> {
    let row_len = d.dims[0] as usize;
    let n_rows: usize = d.dims[1..].iter().product::<u64>() as usize;
    // Validated by the writer's `create`, so the row size exists.
    let row_bytes = d.ty.row_bytes(row_len as u64).unwrap_or(0) as usize;
    let mut data = vec![0u8; row_bytes * n_rows];
    let is_norm = d.name.contains("norm");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rows_per_chunk = n_rows.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (c, chunk) in data.chunks_mut(rows_per_chunk * row_bytes).enumerate() {
            s.spawn(move || {
                let mut row = vec![0f32; row_len];
                for (i, dst) in chunk.chunks_mut(row_bytes).enumerate() {
                    // Seeded per row, so the file does not depend on the number of cores.
                    let r = (c * rows_per_chunk + i) as u64;
                    let mut rng = SplitMix64::new(seed ^ r.wrapping_mul(0xD1B5_4A32_D192_ED03));
                    for x in row.iter_mut() {
                        *x = if is_norm {
                            1.0
                        } else {
                            (2.0 * rng.next_f32() - 1.0) * 0.05
                        };
                    }
                    quantize_row(d.ty, &row, dst);
                }
            });
        }
    });
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decl_round_trip() {
        let d = TensorDecl::new("blk.0.attn_q.weight", &[896, 896], GgmlType::Q4_K);
        assert_eq!(parse_decl(&format_decl(&d)).unwrap(), d);
        assert!(parse_decl("a|Q9_9|1").is_err());
        assert!(parse_decl("a|F32|x").is_err());
        assert!(parse_decl("a|F32").is_err());
        let odd = TensorDecl::new("a|b", &[32], GgmlType::F32);
        assert_eq!(parse_decl(&format_decl(&odd)).unwrap(), odd);
    }
}
