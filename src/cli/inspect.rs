//! `marco inspect`: metadata and tensor table of a GGUF file.

use anyhow::Result;
use marco::gguf::GgufFile;

use super::InspectArgs;

pub fn inspect(a: InspectArgs) -> Result<()> {
    let file = GgufFile::open(&a.file)?;
    println!("file: {}", a.file.display());
    println!(
        "GGUF version {}, {} bytes",
        file.version(),
        file.file_size()
    );
    println!("metadata ({} keys):", file.metadata().len());
    for (key, value) in file.metadata() {
        let text = if a.full {
            format!("{value:?}")
        } else {
            value.to_string()
        };
        println!(
            "  {key} = {}",
            one_line(&text, if a.full { usize::MAX } else { 120 })
        );
    }
    println!("tensors ({}):", file.tensors().len());
    println!(
        "  {:<32} {:<6} {:<20} {:>12}",
        "name", "type", "shape", "bytes"
    );
    let mut total = 0u64;
    for t in file.tensors() {
        let shape = format!("{:?}", t.dims);
        println!(
            "  {:<32} {:<6} {:<20} {:>12}",
            t.name,
            t.ty.name(),
            shape,
            t.n_bytes
        );
        total += t.n_bytes;
    }
    println!("  total tensor bytes: {total}");
    Ok(())
}

fn one_line(s: &str, max_chars: usize) -> String {
    let flat = s.replace('\n', "\\n");
    if flat.chars().count() <= max_chars {
        return flat;
    }
    let head: String = flat.chars().take(max_chars).collect();
    format!("{head}…")
}
