//! The `l4` binary on bad input: every failure is a non-zero exit status and exactly one line
//! on stderr, `error: ...`, naming the field, tensor or file at fault; never a panic, and never
//! an output file (or a temporary one) left behind. Plus the happy paths of `logits`,
//! `generate` and `info`.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use l4_core::checkpoint::{Checkpoint, save_safetensors};
use l4_core::testing::{Tolerance, assert_close, test_devices};
use l4_core::{DType, Device, Tensor};
use tempfile::TempDir;

/// The committed tiny-scout fixture: config.json, model.safetensors and, in
/// expected.safetensors, HF's `input_ids`, `logits` and `greedy_ids`.
fn fixture() -> PathBuf {
    // From the package directory (cargo test) or the repository root (packed binaries on the
    // GPU machine, where the build machine's paths do not exist).
    [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/testdata/tiny-scout"),
        PathBuf::from("model/testdata/tiny-scout"),
    ]
    .into_iter()
    .find(|p| p.is_dir())
    .expect("the tiny-scout fixture under model/testdata")
}

/// The `l4` binary: `$L4_BIN` when set (gpu-bin/run.sh points it at the packed binary), else
/// the one cargo built for this test.
fn l4_binary() -> PathBuf {
    std::env::var_os("L4_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_l4")))
}

/// The fixture's `input_ids` `[2, 30]` (I64).
fn fixture_input_ids() -> Tensor {
    Checkpoint::open(fixture().join("expected.safetensors"))
        .unwrap()
        .load("input_ids", Device::Cpu)
        .unwrap()
}

fn fixture_vocab() -> usize {
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(fixture().join("config.json")).unwrap()).unwrap();
    config["vocab_size"].as_u64().unwrap() as usize
}

/// A scratch directory with a copy of the fixture checkpoint in `model/`, an empty `out/` for
/// outputs and the fixture's input ids in `input.safetensors`.
struct Scratch {
    dir: TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        fs::create_dir(&model).unwrap();
        for file in ["config.json", "model.safetensors"] {
            fs::copy(fixture().join(file), model.join(file)).unwrap();
        }
        fs::create_dir(dir.path().join("out")).unwrap();
        let scratch = Scratch { dir };
        scratch.write_input("input.safetensors", &[("input_ids", &fixture_input_ids())]);
        scratch
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn model(&self) -> PathBuf {
        self.path("model")
    }

    fn input(&self) -> PathBuf {
        self.path("input.safetensors")
    }

    fn output(&self) -> PathBuf {
        self.path("out/result.safetensors")
    }

    fn write_input(&self, rel: &str, tensors: &[(&str, &Tensor)]) -> PathBuf {
        let path = self.path(rel);
        save_safetensors(&path, tensors, None).unwrap();
        path
    }

    /// Edits the copied config.json as JSON.
    fn edit_config(&self, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
        let path = self.model().join("config.json");
        let mut config: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        edit(config.as_object_mut().unwrap());
        fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    }

    /// Rewrites the copied model.safetensors with `edit` applied to its (name, tensor) list.
    fn edit_weights(&self, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
        let path = self.model().join("model.safetensors");
        let mut tensors: Vec<(String, Tensor)> = {
            let checkpoint = Checkpoint::open(&path).unwrap();
            checkpoint
                .names()
                .into_iter()
                .map(|n| (n.to_string(), checkpoint.load(n, Device::Cpu).unwrap()))
                .collect()
        };
        edit(&mut tensors);
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        save_safetensors(&path, &refs, None).unwrap();
    }

    /// `l4 logits --model <model> --input <input> --output <output> --device cpu`.
    fn logits_args(&self) -> Vec<OsString> {
        args(&[
            "logits".into(),
            "--model".into(),
            self.model().into(),
            "--input".into(),
            self.input().into(),
            "--output".into(),
            self.output().into(),
            "--device".into(),
            "cpu".into(),
        ])
    }

    /// `l4 generate ... --max-new-tokens 3`.
    fn generate_args(&self) -> Vec<OsString> {
        args(&[
            "generate".into(),
            "--model".into(),
            self.model().into(),
            "--input".into(),
            self.input().into(),
            "--output".into(),
            self.output().into(),
            "--device".into(),
            "cpu".into(),
            "--max-new-tokens".into(),
            "3".into(),
        ])
    }

    /// Runs `l4 logits` and `l4 generate` with `change` applied to their arguments, and checks
    /// that both fail as the module doc says, naming every one of `needles`.
    fn both_fail(&self, change: impl Fn(&mut Vec<OsString>), needles: &[&str]) {
        for mut argv in [self.logits_args(), self.generate_args()] {
            change(&mut argv);
            let out = l4(&argv);
            self.assert_failed(&argv, &out, needles);
        }
    }

    fn assert_failed(&self, argv: &[OsString], out: &Output, needles: &[&str]) {
        assert_one_line_error(argv, out, needles);
        let left: Vec<_> = fs::read_dir(self.path("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "l4 {argv:?} left files in the output folder: {left:?}");
    }
}

fn args(items: &[OsString]) -> Vec<OsString> {
    items.to_vec()
}

/// Replaces the value that follows `flag`, or appends `flag value`.
fn set(argv: &mut Vec<OsString>, flag: &str, value: impl Into<OsString>) {
    match argv.iter().position(|a| a == flag) {
        Some(i) => argv[i + 1] = value.into(),
        None => argv.extend([flag.into(), value.into()]),
    }
}

fn l4(argv: &[OsString]) -> Output {
    Command::new(l4_binary())
        .args(argv)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running l4")
}

fn assert_one_line_error(argv: &[OsString], out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!("l4 {argv:?}\n--- status {:?}, stderr:\n{stderr}---", out.status);
    assert!(!out.status.success(), "expected failure: {context}");
    assert!(out.status.code().is_some(), "killed by a signal: {context}");
    assert!(!stderr.contains("panicked"), "panic: {context}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected exactly one line: {context}");
    assert!(lines[0].starts_with("error: "), "expected `error: ...`: {context}");
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "the error does not name {needle:?}: {context}"
        );
    }
}

fn assert_succeeded(argv: &[OsString], out: &Output) -> String {
    assert!(
        out.status.success(),
        "l4 {argv:?} failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Happy paths
// ---------------------------------------------------------------------------------------------

#[test]
fn logits_writes_the_fixtures_logits_on_every_device() {
    for device in test_devices() {
        let s = Scratch::new();
        let mut argv = s.logits_args();
        set(&mut argv, "--device", device.to_string());
        assert_succeeded(&argv, &l4(&argv));
        check_fixture_logits(&s.output(), &device.to_string());
    }
}

fn check_fixture_logits(path: &Path, device: &str) {
    let written = Checkpoint::open(path).unwrap();
    let logits = written.load("logits", Device::Cpu).unwrap();
    assert_eq!(logits.shape(), &[2, 30, fixture_vocab()]);
    assert_eq!(logits.dtype(), DType::F32);
    // The values are HF's, to the parity bound of model/tests/parity.rs (3·|HF − f64|).
    let meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(fixture().join("expected_meta.json")).unwrap()).unwrap();
    let hf_error = meta["hf_vs_f64_reference_maxabs"]["logits"].as_f64().unwrap();
    let want = Checkpoint::open(fixture().join("expected.safetensors"))
        .unwrap()
        .load("logits", Device::Cpu)
        .unwrap();
    assert_close(
        &logits.to_f64_vec().unwrap(),
        &want.to_f64_vec().unwrap(),
        Tolerance::new(3.0 * hf_error, 0.0),
        &format!("l4 logits --device {device} vs HF"),
    )
    .unwrap();
}

#[test]
fn generate_writes_three_greedy_ids_per_sequence_on_every_device() {
    for device in test_devices() {
        let s = Scratch::new();
        let mut argv = s.generate_args();
        set(&mut argv, "--device", device.to_string());
        assert_succeeded(&argv, &l4(&argv));
        check_three_greedy_ids(&s.output());
    }
}

fn check_three_greedy_ids(path: &Path) {
    let ids = Checkpoint::open(path)
        .unwrap()
        .load("generated_ids", Device::Cpu)
        .unwrap();
    assert_eq!(ids.shape(), &[2, 3]);
    assert_eq!(ids.dtype(), DType::I64);
    // HF's greedy continuation (its top-1/top-2 gaps are ≥ 0.01, so the ids are exact).
    let want = Checkpoint::open(fixture().join("expected.safetensors"))
        .unwrap()
        .load("greedy_ids", Device::Cpu)
        .unwrap()
        .narrow(1, 0, 3)
        .unwrap();
    assert_eq!(ids.to_vec::<i64>().unwrap(), want.to_vec::<i64>().unwrap());
}

/// `parameters: X B total, Y B active per token` from `l4 info --model`.
fn billions(report: &str) -> (f64, f64) {
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with("parameters:"))
        .unwrap_or_else(|| panic!("no parameters line in:\n{report}"));
    let numbers: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(numbers.len() >= 2, "{line}");
    (numbers[0], numbers[1])
}

#[test]
fn info_describes_presets_and_their_sizes() {
    let run = |model: &str| {
        let argv = args(&["info".into(), "--model".into(), model.into()]);
        assert_succeeded(&argv, &l4(&argv))
    };
    let tiny = run("tiny-scout");
    assert!(tiny.contains("chunked(8)"), "{tiny}");
    assert!(tiny.contains("global"), "{tiny}");

    // Model cards: Scout 17B active of 109B total, Maverick 17B active of 400B total, the
    // totals including the vision encoder (< 1B) that the text decoder lacks.
    let (total, active) = billions(&run("llama4-scout-17b-16e"));
    assert!((107.0..=109.5).contains(&total), "scout total {total}B");
    assert!((16.9..=17.3).contains(&active), "scout active {active}B");
    let (total, active) = billions(&run("llama4-maverick-17b-128e"));
    assert!((395.0..=401.0).contains(&total), "maverick total {total}B");
    assert!((16.9..=17.3).contains(&active), "maverick active {active}B");

    // A checkpoint folder works as well as a preset name.
    let folder = run(fixture().to_str().unwrap());
    assert!(folder.contains("chunked(8)"), "{folder}");
}

// ---------------------------------------------------------------------------------------------
// The model argument and config.json
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_model_path_is_an_error_naming_it() {
    let s = Scratch::new();
    let missing = s.path("no-such-model");
    s.both_fail(|a| set(a, "--model", &missing), &["no-such-model"]);
    let argv = args(&["info".into(), "--model".into(), missing.clone().into()]);
    assert_one_line_error(&argv, &l4(&argv), &["no-such-model"]);
}

#[test]
fn config_that_is_not_json_is_an_error_naming_the_file() {
    let s = Scratch::new();
    fs::write(s.model().join("config.json"), "{\"hidden_size\": 64,").unwrap();
    s.both_fail(|_| {}, &["config.json", "JSON"]);
}

#[test]
fn config_field_of_the_wrong_type_is_an_error_naming_the_field() {
    let s = Scratch::new();
    s.edit_config(|c| {
        c.insert("num_attention_heads".into(), "four".into());
    });
    s.both_fail(|_| {}, &["config.json", "num_attention_heads"]);
}

#[test]
fn contradictory_configs_are_errors_naming_the_field() {
    type Edit = fn(&mut serde_json::Map<String, serde_json::Value>);
    let cases: [(Edit, &str); 4] = [
        (
            |c| {
                c.insert("num_key_value_heads".into(), 3.into());
            },
            "num_key_value_heads",
        ),
        (
            |c| {
                c.insert("no_rope_layers".into(), serde_json::json!([1, 1, 0]));
                c.remove("layer_types");
            },
            "no_rope_layers",
        ),
        (
            |c| {
                c.insert(
                    "layer_types".into(),
                    serde_json::json!([
                        "chunked_attention",
                        "full_attention",
                        "chunked_attention",
                        "full_attention"
                    ]),
                );
            },
            "layer_types",
        ),
        (
            |c| {
                c.insert("num_experts_per_tok".into(), 5.into());
            },
            "num_experts_per_tok",
        ),
    ];
    for (edit, field) in cases {
        let s = Scratch::new();
        s.edit_config(edit);
        s.both_fail(|_| {}, &["config.json", field]);
    }
}

// ---------------------------------------------------------------------------------------------
// Weights that do not match the config
// ---------------------------------------------------------------------------------------------

#[test]
fn config_contradicting_the_weights_is_an_error_naming_the_tensor() {
    let s = Scratch::new();
    s.edit_config(|c| {
        c.insert("hidden_size".into(), 32.into());
    });
    // The first tensor read is the embedding: [256, 64] in the file, [256, 32] by the config.
    s.both_fail(|_| {}, &["model.embed_tokens.weight", "32"]);
}

#[test]
fn missing_tensor_is_an_error_naming_it() {
    let s = Scratch::new();
    let name = "model.layers.2.self_attn.k_proj.weight";
    s.edit_weights(|t| t.retain(|(n, _)| n != name));
    s.both_fail(|_| {}, &[name]);
}

#[test]
fn tensor_the_model_does_not_use_is_an_error_naming_it() {
    let s = Scratch::new();
    let name = "model.layers.0.self_attn.q_norm.weight";
    s.edit_weights(|t| t.push((name.into(), Tensor::zeros(&[16], DType::F32, Device::Cpu).unwrap())));
    s.both_fail(|_| {}, &[name]);
}

#[test]
fn misshapen_tensor_is_an_error_naming_it() {
    let s = Scratch::new();
    let name = "model.layers.1.self_attn.o_proj.weight";
    s.edit_weights(|t| {
        let slot = t.iter_mut().find(|(n, _)| n == name).unwrap();
        slot.1 = Tensor::zeros(&[64, 32], DType::F32, Device::Cpu).unwrap();
    });
    s.both_fail(|_| {}, &[name, "[64, 32]"]);
}

#[test]
fn integer_weight_is_an_error_naming_the_tensor_and_its_dtype() {
    let s = Scratch::new();
    let name = "model.norm.weight";
    s.edit_weights(|t| {
        let slot = t.iter_mut().find(|(n, _)| n == name).unwrap();
        slot.1 = slot.1.to_dtype(DType::I64).unwrap();
    });
    s.both_fail(|_| {}, &[name, "i64"]);
}

#[test]
fn truncated_weights_file_is_an_error_naming_it() {
    let s = Scratch::new();
    let path = s.model().join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    s.both_fail(|_| {}, &["model.safetensors"]);
    // Cut inside the header length, too.
    fs::write(&path, &bytes[..5]).unwrap();
    s.both_fail(|_| {}, &["model.safetensors"]);
}

// ---------------------------------------------------------------------------------------------
// The input file
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_input_file_is_an_error_naming_it() {
    let s = Scratch::new();
    let missing = s.path("no-such-input.safetensors");
    s.both_fail(|a| set(a, "--input", &missing), &["no-such-input.safetensors"]);
}

#[test]
fn input_that_is_not_safetensors_is_an_error_naming_it() {
    let s = Scratch::new();
    let path = s.path("garbage.safetensors");
    fs::write(&path, b"this is not a safetensors file at all").unwrap();
    s.both_fail(|a| set(a, "--input", &path), &["garbage.safetensors"]);
}

#[test]
fn input_without_input_ids_is_an_error_naming_the_tensor() {
    let s = Scratch::new();
    let path = s.write_input("tokens.safetensors", &[("tokens", &fixture_input_ids())]);
    s.both_fail(|a| set(a, "--input", &path), &["tokens.safetensors", "input_ids"]);
}

#[test]
fn float_input_ids_are_an_error_naming_the_dtype() {
    let s = Scratch::new();
    let ids = fixture_input_ids().to_dtype(DType::F32).unwrap();
    let path = s.write_input("float.safetensors", &[("input_ids", &ids)]);
    s.both_fail(|a| set(a, "--input", &path), &["input_ids", "f32"]);
}

#[test]
fn input_ids_of_rank_one_or_three_are_an_error_naming_the_shape() {
    let s = Scratch::new();
    let rank1 = Tensor::from_vec(vec![1i64, 2, 3], &[3], Device::Cpu).unwrap();
    let path = s.write_input("rank1.safetensors", &[("input_ids", &rank1)]);
    s.both_fail(|a| set(a, "--input", &path), &["input_ids", "[3]"]);
    let rank3 = Tensor::from_vec(vec![1i64, 2, 3, 4], &[1, 2, 2], Device::Cpu).unwrap();
    let path = s.write_input("rank3.safetensors", &[("input_ids", &rank3)]);
    s.both_fail(|a| set(a, "--input", &path), &["input_ids", "[1, 2, 2]"]);
}

#[test]
fn empty_input_ids_are_an_error() {
    let s = Scratch::new();
    let empty = Tensor::from_vec(Vec::<i64>::new(), &[1, 0], Device::Cpu).unwrap();
    let path = s.write_input("empty.safetensors", &[("input_ids", &empty)]);
    s.both_fail(|a| set(a, "--input", &path), &["input_ids", "[1, 0]"]);
}

#[test]
fn token_ids_outside_the_vocabulary_are_an_error_naming_the_id() {
    let s = Scratch::new();
    let vocab = fixture_vocab() as i64;
    for bad in [-5i64, vocab, vocab + 1000] {
        let mut ids = fixture_input_ids().to_vec::<i64>().unwrap();
        ids[17] = bad;
        let ids = Tensor::from_vec(ids, &[2, 30], Device::Cpu).unwrap();
        let path = s.write_input("bad-id.safetensors", &[("input_ids", &ids)]);
        s.both_fail(|a| set(a, "--input", &path), &["input_ids", &bad.to_string()]);
    }
}

#[test]
fn i32_input_ids_are_accepted() {
    let s = Scratch::new();
    let ids = fixture_input_ids().to_dtype(DType::I32).unwrap();
    let path = s.write_input("i32.safetensors", &[("input_ids", &ids)]);
    let mut argv = s.logits_args();
    set(&mut argv, "--input", &path);
    assert_succeeded(&argv, &l4(&argv));
    assert!(s.output().is_file());
}

// ---------------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------------

#[test]
fn max_new_tokens_that_is_not_a_number_is_an_error_naming_the_flag() {
    let s = Scratch::new();
    for bad in ["three", "1.5", "99999999999999999999999"] {
        let mut argv = s.generate_args();
        set(&mut argv, "--max-new-tokens", bad);
        s.assert_failed(&argv, &l4(&argv), &["--max-new-tokens", bad]);
    }
    // clap reads a value starting with '-' as a flag: the error names it.
    let mut argv = s.generate_args();
    set(&mut argv, "--max-new-tokens", "-1");
    s.assert_failed(&argv, &l4(&argv), &["'-1'"]);
}

#[test]
fn fp8_modes_run_and_unknown_ones_are_errors_naming_the_flag() {
    let s = Scratch::new();
    s.both_fail(|a| set(a, "--fp8", "fp4"), &["--fp8", "fp4"]);
    // FP8 GEMMs write f32 or bf16, not f16.
    s.both_fail(
        |a| {
            set(a, "--fp8", "experts");
            set(a, "--dtype", "f16");
        },
        &["f16"],
    );
    for mode in ["none", "experts", "all", "dequant"] {
        let mut argv = s.logits_args();
        set(&mut argv, "--fp8", mode);
        set(
            &mut argv,
            "--output",
            s.path(&format!("out/{mode}.safetensors")).into_os_string(),
        );
        assert_succeeded(&argv, &l4(&argv));
        let logits = Checkpoint::open(s.path(&format!("out/{mode}.safetensors")))
            .unwrap()
            .load("logits", Device::Cpu)
            .unwrap();
        assert_eq!(logits.shape(), &[2, 30, fixture_vocab()], "--fp8 {mode}");
        assert!(
            logits.to_f64_vec().unwrap().iter().all(|v| v.is_finite()),
            "--fp8 {mode}"
        );
    }
}

#[test]
fn unknown_device_or_dtype_is_an_error_naming_the_flag_and_value() {
    let s = Scratch::new();
    s.both_fail(|a| set(a, "--device", "gpu"), &["--device", "gpu"]);
    s.both_fail(|a| set(a, "--device", "cuda:x"), &["--device", "cuda:x"]);
    s.both_fail(|a| set(a, "--dtype", "f64"), &["--dtype", "f64"]);
    // A dtype l4lab knows but cannot compute in.
    s.both_fail(|a| set(a, "--dtype", "i64"), &["i64"]);
    // A well-formed device that is not there (no driver here; no 8th GPU on a GPU machine).
    s.both_fail(|a| set(a, "--device", "cuda:7"), &["CUDA"]);
}

#[test]
fn help_and_version_still_print_and_succeed() {
    for flag in ["--help", "--version"] {
        let argv = args(&[flag.into()]);
        let stdout = assert_succeeded(&argv, &l4(&argv));
        assert!(stdout.contains("l4"), "{flag}: {stdout}");
    }
}

#[test]
fn missing_or_unknown_arguments_are_one_line_errors() {
    let s = Scratch::new();
    // No --output.
    let mut argv = s.logits_args();
    let i = argv.iter().position(|a| a == "--output").unwrap();
    argv.drain(i..i + 2);
    s.assert_failed(&argv, &l4(&argv), &["--output"]);
    // An unknown flag.
    let mut argv = s.logits_args();
    argv.push("--frobnicate".into());
    s.assert_failed(&argv, &l4(&argv), &["--frobnicate"]);
}

#[test]
fn output_path_that_is_a_directory_is_an_error_naming_it() {
    let s = Scratch::new();
    let dir = s.path("out/a-directory");
    fs::create_dir(&dir).unwrap();
    for mut argv in [s.logits_args(), s.generate_args()] {
        set(&mut argv, "--output", &dir);
        assert_one_line_error(&argv, &l4(&argv), &["a-directory"]);
        assert!(dir.is_dir() && fs::read_dir(&dir).unwrap().next().is_none());
        let files: Vec<_> = fs::read_dir(s.path("out")).unwrap().collect();
        assert_eq!(files.len(), 1, "only the directory itself");
    }
}

#[test]
fn output_in_a_missing_directory_is_an_error_and_leaves_nothing() {
    let s = Scratch::new();
    let path = s.path("out/missing-dir/result.safetensors");
    s.both_fail(|a| set(a, "--output", &path), &["result.safetensors"]);
}

#[test]
fn an_existing_output_file_survives_a_failed_run() {
    let s = Scratch::new();
    fs::write(s.output(), b"keep me").unwrap();
    let vocab = fixture_vocab() as i64;
    let ids = Tensor::from_vec(vec![vocab; 4], &[2, 2], Device::Cpu).unwrap();
    let path = s.write_input("bad.safetensors", &[("input_ids", &ids)]);
    for mut argv in [s.logits_args(), s.generate_args()] {
        set(&mut argv, "--input", &path);
        assert_one_line_error(&argv, &l4(&argv), &["input_ids"]);
        assert_eq!(fs::read(s.output()).unwrap(), b"keep me");
    }
}

// ---------------------------------------------------------------------------------------------
// Images (multimodal checkpoints)
// ---------------------------------------------------------------------------------------------

/// The committed tiny-vision-tiles fixture: a Llama4ForConditionalGeneration checkpoint with
/// tokenizer.json and preprocessor_config.json, the image `images/grid.png` (a 2x3 grid of
/// tiles plus the global tile) and, in expected.safetensors, HF's processor output for it
/// (`input_ids`, `pixel_values`) with HF's `logits` and `greedy_ids`.
fn vision_fixture() -> PathBuf {
    [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/testdata/tiny-vision-tiles"),
        PathBuf::from("model/testdata/tiny-vision-tiles"),
    ]
    .into_iter()
    .find(|p| p.is_dir())
    .expect("the tiny-vision-tiles fixture under model/testdata")
}

/// The prompt HF's processor expanded for the fixture's `input_ids`.
const VISION_PROMPT: &str = "<|image|>What is in the picture?";

fn vision_expected(name: &str) -> Tensor {
    Checkpoint::open(vision_fixture().join("expected.safetensors"))
        .unwrap()
        .load(name, Device::Cpu)
        .unwrap()
}

impl Scratch {
    /// A scratch directory with a copy of the vision fixture in `model/`, its image in
    /// `grid.png`, and HF's `input_ids` and `pixel_values` in `input.safetensors`.
    fn vision() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        fs::create_dir(&model).unwrap();
        for file in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "preprocessor_config.json",
        ] {
            fs::copy(vision_fixture().join(file), model.join(file)).unwrap();
        }
        fs::copy(vision_fixture().join("images/grid.png"), dir.path().join("grid.png")).unwrap();
        fs::create_dir(dir.path().join("out")).unwrap();
        let scratch = Scratch { dir };
        scratch.write_input(
            "input.safetensors",
            &[
                ("input_ids", &vision_expected("input_ids")),
                ("pixel_values", &vision_expected("pixel_values")),
            ],
        );
        scratch
    }

    /// `l4 generate --model <model> --prompt VISION_PROMPT --image <grid.png> ... --max-new-tokens 6`.
    fn image_args(&self) -> Vec<OsString> {
        args(&[
            "generate".into(),
            "--model".into(),
            self.model().into(),
            "--prompt".into(),
            VISION_PROMPT.into(),
            "--image".into(),
            self.path("grid.png").into(),
            "--output".into(),
            self.output().into(),
            "--device".into(),
            "cpu".into(),
            "--max-new-tokens".into(),
            "6".into(),
        ])
    }
}

#[test]
fn logits_with_pixel_values_are_hfs_on_every_device() {
    for device in test_devices() {
        let s = Scratch::vision();
        let mut argv = s.logits_args();
        set(&mut argv, "--device", device.to_string());
        assert_succeeded(&argv, &l4(&argv));
        let logits = Checkpoint::open(s.output())
            .unwrap()
            .load("logits", Device::Cpu)
            .unwrap();
        let want = vision_expected("logits");
        assert_eq!(logits.shape(), want.shape());
        // The parity bound of model/tests/vision.rs (3·|HF − f64|).
        let meta: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(vision_fixture().join("expected_meta.json")).unwrap()).unwrap();
        let hf_error = meta["hf_vs_f64_reference_maxabs"]["logits"].as_f64().unwrap();
        assert_close(
            &logits.to_f64_vec().unwrap(),
            &want.to_f64_vec().unwrap(),
            Tolerance::new(3.0 * hf_error, 0.0),
            &format!("l4 logits with pixel_values --device {device} vs HF"),
        )
        .unwrap();
    }
}

#[test]
fn generate_from_an_image_file_and_a_prompt_gives_hfs_greedy_ids() {
    let s = Scratch::vision();
    let want = vision_expected("greedy_ids").to_vec::<i64>().unwrap();
    // From the image file: preprocessing, token layout and tokenization as HF's processor.
    let argv = s.image_args();
    assert_succeeded(&argv, &l4(&argv));
    let ids = Checkpoint::open(s.output())
        .unwrap()
        .load("generated_ids", Device::Cpu)
        .unwrap();
    assert_eq!(ids.to_vec::<i64>().unwrap(), want, "--image --prompt");
    // From HF's input_ids and pixel_values.
    fs::remove_file(s.output()).unwrap();
    let mut argv = s.generate_args();
    set(&mut argv, "--max-new-tokens", "6");
    assert_succeeded(&argv, &l4(&argv));
    let ids = Checkpoint::open(s.output())
        .unwrap()
        .load("generated_ids", Device::Cpu)
        .unwrap();
    assert_eq!(ids.to_vec::<i64>().unwrap(), want, "--input with pixel_values");
}

#[test]
fn pixel_values_whose_tile_count_disagrees_with_the_image_tokens_are_an_error() {
    let s = Scratch::vision();
    let six = vision_expected("pixel_values")
        .narrow(0, 0, 6)
        .unwrap()
        .contiguous()
        .unwrap();
    let path = s.write_input(
        "six-tiles.safetensors",
        &[("input_ids", &vision_expected("input_ids")), ("pixel_values", &six)],
    );
    s.both_fail(
        |a| set(a, "--input", &path),
        &["six-tiles.safetensors", "pixel_values", "6 tiles", "28 image tokens"],
    );
    // Tiles without image tokens to receive them is a mismatch too.
    let no_image_ids = Tensor::from_vec(vec![5i64, 6, 7], &[1, 3], Device::Cpu).unwrap();
    let path = s.write_input(
        "no-image-tokens.safetensors",
        &[
            ("input_ids", &no_image_ids),
            ("pixel_values", &vision_expected("pixel_values")),
        ],
    );
    s.both_fail(
        |a| set(a, "--input", &path),
        &["pixel_values", "7 tiles", "0 image tokens"],
    );
}

#[test]
fn pixel_values_of_the_wrong_size_dtype_or_values_are_errors_naming_the_tensor() {
    let s = Scratch::vision();
    let ids = vision_expected("input_ids");
    let cases: Vec<(Tensor, Vec<&str>)> = vec![
        (
            Tensor::zeros(&[7, 3, 32, 32], DType::F32, Device::Cpu).unwrap(),
            vec!["pixel_values", "[7, 3, 32, 32]", "[tiles, 3, 28, 28]"],
        ),
        (
            Tensor::zeros(&[7, 3, 28], DType::F32, Device::Cpu).unwrap(),
            vec!["pixel_values", "[7, 3, 28]"],
        ),
        (
            Tensor::zeros(&[0, 3, 28, 28], DType::F32, Device::Cpu).unwrap(),
            vec!["pixel_values", "at least one tile"],
        ),
        (
            Tensor::zeros(&[7, 3, 28, 28], DType::I64, Device::Cpu).unwrap(),
            vec!["pixel_values", "i64"],
        ),
        (
            Tensor::full(f64::NAN, &[7, 3, 28, 28], DType::F32, Device::Cpu).unwrap(),
            vec!["pixel_values", "not finite"],
        ),
    ];
    for (i, (pixel_values, needles)) in cases.iter().enumerate() {
        let path = s.write_input(
            &format!("bad-pixels-{i}.safetensors"),
            &[("input_ids", &ids), ("pixel_values", pixel_values)],
        );
        s.both_fail(|a| set(a, "--input", &path), needles);
    }
}

#[test]
fn pixel_values_for_a_text_only_model_are_an_error() {
    let s = Scratch::new();
    let path = s.write_input(
        "with-pixels.safetensors",
        &[
            ("input_ids", &fixture_input_ids()),
            ("pixel_values", &vision_expected("pixel_values")),
        ],
    );
    s.both_fail(|a| set(a, "--input", &path), &["pixel_values", "no vision encoder"]);
}

/// The bytes of a PNG whose header says `width × height` (no pixel data follows).
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut chunk = b"IHDR".to_vec();
    chunk.extend(width.to_be_bytes());
    chunk.extend(height.to_be_bytes());
    chunk.extend([8, 2, 0, 0, 0]); // 8-bit RGB, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&chunk);
    png.extend(crc32(&chunk).to_be_bytes());
    png.extend(0u32.to_be_bytes());
    png.extend(b"IEND");
    png.extend(crc32(b"IEND").to_be_bytes());
    png
}

#[test]
fn unreadable_missing_or_zero_size_images_are_errors_naming_the_file() {
    let s = Scratch::vision();
    let garbage = s.path("garbage.png");
    fs::write(&garbage, b"this is not an image").unwrap();
    let zero = s.path("zero-size.png");
    fs::write(&zero, png_header_only(0, 5)).unwrap();
    let truncated = s.path("truncated.png");
    let bytes = fs::read(s.path("grid.png")).unwrap();
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let cases = [
        (garbage, "garbage.png"),
        (s.path("missing.png"), "missing.png"),
        (zero, "zero-size.png"),
        (truncated, "truncated.png"),
    ];
    for (path, name) in cases {
        let mut argv = s.image_args();
        set(&mut argv, "--image", &path);
        s.assert_failed(&argv, &l4(&argv), &[name]);
    }
}

#[test]
fn image_prompts_that_cannot_hold_the_image_are_errors() {
    let s = Scratch::vision();
    // Two placeholders for one image.
    let mut argv = s.image_args();
    set(&mut argv, "--prompt", "<|image|> and <|image|>");
    s.assert_failed(&argv, &l4(&argv), &["2 <|image|> placeholders"]);
    // --image without --prompt (clap names the missing flag).
    let mut argv = s.image_args();
    let i = argv.iter().position(|a| a == "--prompt").unwrap();
    argv.drain(i..i + 2);
    s.assert_failed(&argv, &l4(&argv), &["--prompt"]);
    // A text-only model (tiny-maverick has a tokenizer.json, but no vision tower).
    let mut argv = s.image_args();
    let maverick = fixture().parent().unwrap().join("tiny-maverick");
    set(&mut argv, "--model", &maverick);
    s.assert_failed(&argv, &l4(&argv), &["--image needs a multimodal model"]);
}

#[test]
fn vision_weights_and_config_are_checked_like_the_text_models() {
    // A missing vision tensor, and one the vision tower does not use.
    let s = Scratch::vision();
    let name = "vision_model.model.layers.1.mlp.fc2.bias";
    s.edit_weights(|t| t.retain(|(n, _)| n != name));
    s.both_fail(|_| {}, &[name]);
    let s = Scratch::vision();
    let name = "vision_model.model.layers.0.self_attn.q_norm.weight";
    s.edit_weights(|t| t.push((name.into(), Tensor::zeros(&[16], DType::F32, Device::Cpu).unwrap())));
    s.both_fail(|_| {}, &[name]);
    // A vision_config that contradicts itself (the adapter's input is hidden_size / ratio²).
    let s = Scratch::vision();
    s.edit_config(|c| {
        c["vision_config"]["intermediate_size"] = 100.into();
    });
    s.both_fail(|_| {}, &["config.json", "vision_config.intermediate_size"]);
}

#[test]
fn router_strategies_run_report_loads_and_bad_specs_are_errors() {
    let s = Scratch::new();
    s.both_fail(|a| set(a, "--router", "top1"), &["top1"]);
    s.both_fail(|a| set(a, "--router", "softmax-topk:k=9"), &["k = 9"]);
    for spec in ["softmax-topk:k=2", "hash", "expert-choice:capacity=1.5"] {
        let mut argv = s.logits_args();
        set(&mut argv, "--router", spec);
        argv.push("--dump-hidden".into());
        let out = s.path("out/routed.safetensors");
        set(&mut argv, "--output", out.clone().into_os_string());
        assert_succeeded(&argv, &l4(&argv));
        let written = Checkpoint::open(&out).unwrap();
        let load = written.load("expert_load.1", Device::Cpu).unwrap();
        assert_eq!(load.dtype(), DType::I64, "{spec}");
        let total: i64 = load.to_vec::<i64>().unwrap().iter().sum();
        // 60 tokens; k = 2 doubles the assignments, expert-choice takes ⌈1.5·60/4⌉ per expert.
        let want = match spec {
            "softmax-topk:k=2" => 120,
            "hash" => 60,
            _ => 4 * 23,
        };
        assert_eq!(total, want, "{spec}");
        fs::remove_file(&out).unwrap();
    }
}

#[test]
fn info_describes_a_vision_tower() {
    let dir = fixture().parent().unwrap().join("tiny-vision-tiles");
    let argv = args(&["info".into(), "--model".into(), dir.into_os_string()]);
    let report = assert_succeeded(&argv, &l4(&argv));
    assert!(report.contains("vision: 2 layers, width 48"), "{report}");
}
