//! The `marco` binary as a user runs it, on the real default model.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{default_model_path, greedy_cases};
use marco::gguf::{GgufWriter, TensorDecl, Value};
use marco_quantize::GgmlType;

fn marco(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_marco"))
        .args(args)
        .output()
        .expect("running marco")
}

fn marco_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_marco"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running marco");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// A fresh scratch directory under the system temp dir.
fn scratch_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("marco-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn model_arg() -> String {
    default_model_path().to_string_lossy().into_owned()
}

#[test]
fn translate_prints_the_reference_chinese_sentence() {
    let model = model_arg();
    let o = marco(&[
        "translate",
        "--model",
        &model,
        "--from",
        "en",
        "--to",
        "zh",
        "The weather is nice today, so we are going to the park.",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The greedy output of Hugging Face transformers for this prompt (reference case 1).
    assert_eq!(stdout(&o), "今天的天气不错，我们去公园。\n");
}

#[test]
fn translate_reads_stdin_line_by_line_and_accepts_names_and_flores_codes() {
    let model = model_arg();
    let o = marco_stdin(
        &[
            "translate",
            "-m",
            &model,
            "--from",
            "eng_Latn",
            "--to",
            "Swahili",
        ],
        "The weather is nice today, so we are going to the park.\n",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!("{}\n", greedy_cases()[2].greedy_text),
        "reference case 2 (Swahili; no near tie)"
    );
}

#[test]
fn translate_to_a_file_writes_it_atomically() {
    let dir = scratch_dir("outfile");
    let input = dir.join("in.txt");
    // Two lines of reference case 1 (no near tie), around an empty line that must be kept.
    let sentence = "The weather is nice today, so we are going to the park.";
    std::fs::write(&input, format!("{sentence}\n\n{sentence}\n")).unwrap();
    let out = dir.join("out.txt");
    let model = model_arg();
    let o = marco(&[
        "translate",
        "-m",
        &model,
        "--from",
        "en",
        "--to",
        "zh",
        "-i",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    let written = std::fs::read_to_string(&out).unwrap();
    let zh = &greedy_cases()[1].greedy_text;
    assert_eq!(written, format!("{zh}\n\n{zh}\n"));
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(leftovers.len(), 2, "only in.txt and out.txt remain");
}

#[test]
fn unknown_language_is_one_clear_line() {
    let o = marco(&["translate", "--from", "en", "--to", "klingon", "hello"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("unknown language 'klingon'"), "{err}");
}

#[test]
fn missing_model_file_is_named() {
    let o = marco(&[
        "translate",
        "-m",
        "/nonexistent/m.gguf",
        "--from",
        "en",
        "--to",
        "de",
        "hi",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/nonexistent/m.gguf"), "{}", stderr(&o));
}

#[test]
fn generate_raw_ids_are_the_reference_greedy_ids() {
    let tokenizer = {
        let file = marco::gguf::GgufFile::open(&default_model_path()).unwrap();
        marco::engine::tokenizer_from_gguf(&file).unwrap()
    };
    let case = &greedy_cases()[1];
    let prompt = tokenizer.decode(&case.prompt_ids);
    let model = model_arg();
    let o = marco(&[
        "generate", "-m", &model, "--raw", &prompt, "-n", "48", "--ids",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want: Vec<String> = case.until_eos.iter().map(|i| i.to_string()).collect();
    assert_eq!(stdout(&o).trim(), want.join(" "));
}

#[test]
fn tokenize_parses_special_tokens_only_when_asked() {
    let model = model_arg();
    let plain = marco_stdin(&["tokenize", "-m", &model], "<|im_start|>user\n");
    let special = marco_stdin(
        &["tokenize", "-m", &model, "--special"],
        "<|im_start|>user\n",
    );
    assert!(plain.status.success() && special.status.success());
    assert_eq!(stdout(&special), "151644 872\n");
    assert!(stdout(&plain).split(' ').count() > 2, "{}", stdout(&plain));
}

#[test]
fn inspect_shows_metadata_and_tensors() {
    let o = marco(&["inspect", &model_arg()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("general.architecture = \"qwen2\""), "{out}");
    assert!(out.contains("blk.0.ffn_down.weight"), "{out}");
    assert!(out.contains("Q6_K"), "{out}");
}

fn write_truncated_copy(dir: &Path, len: u64) -> PathBuf {
    use std::io::{Read, Write};
    let mut src = std::fs::File::open(default_model_path()).unwrap();
    let mut buf = vec![0u8; len as usize];
    src.read_exact(&mut buf).unwrap();
    let p = dir.join(format!("trunc-{len}.gguf"));
    std::fs::File::create(&p).unwrap().write_all(&buf).unwrap();
    p
}

#[test]
fn truncated_and_corrupted_files_give_clear_errors() {
    let dir = scratch_dir("corrupt");
    // Inside the header (in the token list), and inside the tensor data.
    for len in [10u64, 3_000_000, 300_000_000] {
        let p = write_truncated_copy(&dir, len);
        let o = marco(&["inspect", p.to_str().unwrap()]);
        assert!(!o.status.success());
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(p.to_str().unwrap()), "names the file: {err}");
    }
    let p = dir.join("bad-magic.gguf");
    std::fs::write(&p, b"GGUX\x03\x00\x00\x00").unwrap();
    let o = marco(&["inspect", p.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).to_lowercase().contains("magic"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn wrong_architecture_is_refused_with_its_name() {
    let dir = scratch_dir("arch");
    let p = dir.join("llama.gguf");
    let metadata = vec![(
        "general.architecture".to_string(),
        Value::String("llama".into()),
    )];
    let tensors = vec![TensorDecl::new(
        "token_embd.weight",
        &[32, 4],
        GgmlType::F32,
    )];
    let mut w = GgufWriter::create(&p, metadata, tensors, 32).unwrap();
    w.write_tensor("token_embd.weight", &[0u8; 32 * 4 * 4])
        .unwrap();
    w.finish().unwrap();
    let o = marco(&[
        "translate",
        "-m",
        p.to_str().unwrap(),
        "--from",
        "en",
        "--to",
        "de",
        "hi",
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("'llama'"), "{err}");
}

#[test]
fn version_names_the_cpu_kernel_path() {
    let o = marco(&["--version"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("cpu kernels:"), "{}", stdout(&o));
}

/// `marco synth`: the shape file is small and carries everything but the data; the model
/// expanded from it has the real model's metadata, tensor names, types, shapes and size, and
/// the engine runs it (bench reports a speed).
#[test]
fn synth_expands_a_shape_file_into_a_same_shaped_model_that_runs() {
    let dir = scratch_dir("synth");
    let shape = dir.join("shape.gguf");
    let model = dir.join("synth.gguf");
    let shape_arg = shape.to_str().unwrap();
    let model_out = model.to_str().unwrap();
    let o = marco(&[
        "synth",
        "--like",
        &model_arg(),
        "--shape-only",
        "-o",
        shape_arg,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = marco(&["synth", "--like", shape_arg, "-o", model_out]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = marco(&["synth", "--like", shape_arg, "-o", shape_arg]);
    assert!(!o.status.success() && stderr(&o).contains("refusing to overwrite the input"));

    let real = marco::gguf::GgufFile::open(&default_model_path()).unwrap();
    let shape_file = marco::gguf::GgufFile::open(&shape).unwrap();
    let synth = marco::gguf::GgufFile::open(&model).unwrap();
    assert!(shape_file.tensors().is_empty());
    assert!(shape_file.file_size() < real.file_size() / 20);
    assert_eq!(synth.metadata(), real.metadata());
    assert_eq!(synth.file_size(), real.file_size());
    let describe = |f: &marco::gguf::GgufFile| -> Vec<_> {
        f.tensors()
            .iter()
            .map(|t| (t.name.clone(), t.ty, t.dims.clone(), t.offset))
            .collect()
    };
    assert_eq!(describe(&synth), describe(&real));
    let differing = real
        .tensors()
        .iter()
        .filter(|t| real.data_for(t) != synth.data_for(t))
        .count();
    assert!(differing > real.tensors().len() / 2, "weights were copied");

    let o = marco(&[
        "bench", "-m", model_out, "-p", "8", "-n", "4", "-r", "1", "-t", "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("tg4"), "{}", stdout(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The cells of the markdown table rows of `out` that `keep` picks.
fn table_rows(out: &str, keep: impl Fn(&str) -> bool) -> Vec<Vec<&str>> {
    out.lines()
        .filter(|l| keep(l))
        .map(|l| {
            l.split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect()
}

/// `marco bench --kernels`: a row per weight type and row width of the default model (its
/// tensor table: Q5_0 and Q8_0 rows of 896, Q6_K and Q4_K rows of 4864), whose shares of a
/// token's bytes add up to all of them, each with the rates and the share of the read loop;
/// on a path without chunk kernels, a line that says so.
#[test]
fn bench_kernels_prints_a_row_per_weight_type_and_width() {
    let o = marco(&["bench", "-m", &model_arg(), "--kernels", "-r", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let kernels = marco::backend::cpu::kernels::Kernels::detect();
    if !kernels.has_chunks(GgmlType::Q5_0, 896) {
        assert!(out.contains("has no chunk kernels"), "{out}");
        return;
    }
    assert!(out.contains("8 rounds"), "{out}");
    let rows = table_rows(&out, |l| l.starts_with("| Q"));
    let kinds: Vec<(&str, &str)> = rows.iter().map(|r| (r[0], r[1])).collect();
    assert_eq!(
        kinds,
        [
            ("Q5_0", "896"),
            ("Q8_0", "896"),
            ("Q6_K", "4864"),
            ("Q4_K", "4864")
        ],
        "{out}"
    );
    let pct = |c: &str| c.trim_end_matches('%').parse::<f64>().unwrap();
    let gbs = |c: &str| c.trim_end_matches(" GB/s").parse::<f64>().unwrap();
    let of_token: f64 = rows.iter().map(|r| pct(r[3])).sum();
    assert!((of_token - 100.0).abs() <= 2.0, "{out}");
    for r in &rows {
        assert!(
            gbs(r[4]) > 0.0 && gbs(r[5]) > 0.0 && pct(r[6]) > 0.0,
            "{out}"
        );
    }
    assert!(out.contains("(100% of them) stream at"), "{out}");
}

/// `marco bench --bandwidth`: a row per thread count and decode test, with the weights read,
/// the read loop between the tokens and its best pass, and the two shares (percentages; the
/// share of the best pass agrees with the rates printed beside it, the other is the median of
/// the repetitions' own shares).
#[test]
fn bench_bandwidth_prints_the_share_of_the_read_loop() {
    let o = marco(&[
        "bench",
        "-m",
        &model_arg(),
        "-p",
        "0",
        "-n",
        "2",
        "-r",
        "2",
        "-t",
        "1,2",
        "--bandwidth",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("Decoding reads 391.6 MB of weights per token"),
        "{out}"
    );
    let rows = table_rows(&out, |l| l.contains("| tg2 |") && !l.contains("cpu ("));
    assert_eq!(rows.len(), 2, "{out}");
    for (row, threads) in rows.iter().zip(["1", "2"]) {
        assert_eq!(row[0], threads, "{out}");
        let gbs = |i: usize| row[i].trim_end_matches(" GB/s").parse::<f64>().unwrap();
        let pct = |i: usize| row[i].trim_end_matches('%').parse::<f64>().unwrap();
        assert!(
            gbs(2) > 0.0 && gbs(3) > 0.0 && gbs(5) >= gbs(3) * 0.5,
            "{out}"
        );
        assert!((pct(6) - 100.0 * gbs(2) / gbs(5)).abs() < 1.5, "{out}");
        assert!(pct(4) > 0.0, "{out}");
    }
    assert!(
        stderr(&o).contains("with the read loop's 1024 MiB"),
        "{}",
        stderr(&o)
    );
}
