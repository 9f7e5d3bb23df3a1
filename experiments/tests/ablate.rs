//! `l4 ablate` end to end: bad ablation files are one-line errors naming the file, the place in
//! it and the field; the shipped ablations parse, resolve and run; resolved.toml round-trips;
//! equal seeds give equal metrics; a variant equal to the base agrees with it exactly; the
//! routing metrics are the routing module's own counts; results folders are never overwritten
//! without --force and never left half written.
//!
//! Every run uses a tiny evaluation (`--set eval.prompts=1 ...`) so that the whole file takes a
//! few seconds in a debug build.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use l4_core::{DType, Device};
use l4_experiments::ablate::metrics::is_measured;
use l4_experiments::ablate::resolve::{self, Ablation};
use l4_experiments::ablate::results::ResolvedRun;
use l4_experiments::ablate::{config, eval};
use l4_model::parts::router::RoutingStats;
use l4_model::{Capture, loader};
use serde_json::Value;
use tempfile::TempDir;

/// A small evaluation: one 16-token prompt, two decode steps, one timed prefill.
const TINY_EVAL: &[&str] = &[
    "eval.prompts=1",
    "eval.prompt_len=16",
    "eval.decode_tokens=2",
    "eval.repeats=1",
];

/// The repository root: from the package directory (cargo test) or the root itself (packed
/// binaries run from there).
fn repo_root() -> PathBuf {
    [Path::new(env!("CARGO_MANIFEST_DIR")).join(".."), PathBuf::from(".")]
        .into_iter()
        .find(|p| p.join("experiments/ablations").is_dir())
        .expect("experiments/ablations under the repository root")
}

fn shipped(name: &str) -> PathBuf {
    repo_root().join("experiments/ablations").join(name)
}

/// The `l4` binary: `$L4_BIN` when set (packed GPU runs), else the one cargo built.
fn l4_binary() -> PathBuf {
    std::env::var_os("L4_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_l4")))
}

/// `l4 ablate FILE --out OUT [--set ...] [extra...]`.
fn ablate(file: &Path, out: &Path, sets: &[&str], extra: &[&str]) -> (Vec<OsString>, Output) {
    let mut argv: Vec<OsString> = vec!["ablate".into(), file.into(), "--out".into(), out.into()];
    for set in sets {
        argv.extend(["--set".into(), OsString::from(set)]);
    }
    argv.extend(extra.iter().map(OsString::from));
    let output = Command::new(l4_binary())
        .args(&argv)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running l4");
    (argv, output)
}

fn assert_succeeded(argv: &[OsString], out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "l4 {argv:?} failed:\n{stderr}");
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

/// Failure, no panic, exactly one `error: ...` line on stderr holding every needle.
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
        assert!(lines[0].contains(needle), "{needle:?} missing: {context}");
    }
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    fs::write(&path, text).unwrap();
    path
}

/// The file resolved in-process as `l4 ablate` resolves it.
fn resolve_file(file: &Path, sets: &[&str], model: Option<&str>) -> Ablation {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let parsed = config::read(file, &sets).unwrap();
    resolve::resolve(file, &parsed, model, None).unwrap()
}

/// metrics.jsonl as (variant, metric, layer) → value.
type Metrics = BTreeMap<(String, String, Option<u64>), Value>;

fn read_metrics(out: &Path) -> Metrics {
    let text = fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            let key = (
                v["variant"].as_str().unwrap().to_string(),
                v["metric"].as_str().unwrap().to_string(),
                v.get("layer").and_then(Value::as_u64),
            );
            // serde_json's fast float parser may miss the nearest f64 by an ulp; the standard
            // library's is exact, and `value` is each line's last key.
            let raw = line.rsplit_once("\"value\":").unwrap().1.trim_end_matches('}');
            let value = match (&v["value"], raw.parse::<f64>()) {
                (Value::Number(n), Ok(exact)) if n.is_f64() => Value::from(exact),
                (value, _) => value.clone(),
            };
            (key, value)
        })
        .collect()
}

fn metric<'a>(m: &'a Metrics, variant: &str, name: &str, layer: Option<u64>) -> &'a Value {
    m.get(&(variant.into(), name.into(), layer))
        .unwrap_or_else(|| panic!("no {name} (layer {layer:?}) for {variant}"))
}

/// The metrics computed from the outputs (not times or memory), which must repeat exactly.
fn computed(m: &Metrics) -> Metrics {
    m.iter()
        .filter(|((_, name, _), _)| !is_measured(name))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn loads(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

#[test]
fn bad_files_are_one_line_errors_naming_file_place_and_field() {
    let v = "[[variants]]\nname = \"a\"\n";
    let cases: Vec<(String, Vec<&str>, Vec<&str>)> = vec![
        // Unknown keys, wherever they are.
        (
            format!("{v}rotuer = {{ strategy = \"hash\" }}\n"),
            vec![],
            vec!["variant `a`", "unknown field `rotuer`"],
        ),
        (
            format!("{v}router = {{ strategy = \"llama4\", kk = 2 }}\n"),
            vec![],
            vec!["variant `a`", "`kk`"],
        ),
        ("[eval]\npromtps = 2\n".into(), vec![], vec!["[eval]", "`promtps`"]),
        ("[base]\nchunk = 8\n".into(), vec![], vec!["[base]", "`chunk`"]),
        ("colour = \"red\"\n".into(), vec![], vec!["`colour`"]),
        // Wrong types and values.
        (
            format!("{v}chunk_size = \"long\"\n"),
            vec![],
            vec!["variant `a`", "field `chunk_size`", "invalid type"],
        ),
        (
            "[base]\nshared_expert = \"yes\"\n".into(),
            vec![],
            vec!["[base]", "field `shared_expert`"],
        ),
        (
            format!("{v}fp8 = \"experts-row\"\n"),
            vec![],
            vec!["field `fp8`", "experts-row"],
        ),
        (format!("{v}nope = 0\n"), vec![], vec!["field `nope`", "\"none\""]),
        (
            format!("{v}router = {{ strategy = \"top1\" }}\n"),
            vec![],
            vec!["variant `a`", "top1"],
        ),
        ("".into(), vec!["eval.prompts=two"], vec!["[eval]", "field `prompts`"]),
        (
            format!("{v}chunk_size = 0\n"),
            vec![],
            vec!["field `chunk_size`", "at least 1"],
        ),
        // Contradictions, and options that would change nothing.
        (
            format!("{v}temperature_tuning = false\nfloor_scale = 8.0\n"),
            vec![],
            vec!["variant `a`", "field `floor_scale`", "temperature_tuning = false"],
        ),
        (
            format!("{v}nope = \"all\"\nchunk_size = 8\n"),
            vec![],
            vec!["field `chunk_size`", "no effect"],
        ),
        (
            format!("{v}nope = \"none\"\nattn_scale = 0.5\n"),
            vec![],
            vec!["field `attn_scale`", "no effect"],
        ),
        (
            format!("{v}experts_per_token = 2\nrouter = {{ strategy = \"softmax-topk\", k = 3 }}\n"),
            vec![],
            vec!["field `experts_per_token`", "router.k = 3"],
        ),
        (
            format!("{v}router = {{ strategy = \"hash\", k = 2 }}\n"),
            vec![],
            vec!["field `router.k`", "hash"],
        ),
        (
            format!("{v}dtype = \"f16\"\nfp8 = \"experts\"\n"),
            vec![],
            vec!["field `fp8`", "f16"],
        ),
        (
            "[base]\ntemperature_tuning = false\n[[variants]]\nname = \"a\"\nattn_scale = 0.2\n".into(),
            vec![],
            vec!["variant `a`", "field `attn_scale`"],
        ),
        // Checked against the model (mini-scout has 16 experts).
        (
            format!("{v}experts_per_token = 17\n"),
            vec![],
            vec!["field `experts_per_token`", "16 experts"],
        ),
        (
            format!("{v}router = {{ strategy = \"forced\", expert = 16 }}\n"),
            vec![],
            vec!["field `router`"],
        ),
        // Names, places and inputs.
        (
            "[[variants]]\nchunk_size = 8\n".into(),
            vec![],
            vec!["variants[0]", "field `name`"],
        ),
        (format!("{v}{v}"), vec![], vec!["another variant is called `a`"]),
        (
            format!("{v}device = \"cuda\"\n"),
            vec![],
            vec!["field `device`", "[base]"],
        ),
        (
            "[eval]\ntokens = \"missing.safetensors\"\n".into(),
            vec![],
            vec!["[eval]", "field `tokens`", "no such file"],
        ),
        ("[base]\ndtype = \n".into(), vec![], vec!["line 2"]),
    ];
    for (text, sets, needles) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = write(&dir, "study.toml", &text);
        let (argv, out) = ablate(&file, &dir.path().join("out"), &sets, &[]);
        let mut needles = needles;
        needles.push("study.toml");
        assert_one_line_error(&argv, &out, &needles);
        assert_eq!(entries(dir.path()), ["study.toml"], "{text}: left files behind");
    }
    let dir = tempfile::tempdir().unwrap();
    let (argv, out) = ablate(&dir.path().join("absent.toml"), &dir.path().join("out"), &[], &[]);
    assert_one_line_error(&argv, &out, &["absent.toml", "cannot read"]);
}

#[test]
fn every_shipped_ablation_parses_and_resolves_on_the_embedded_default() {
    let mut files = entries(&repo_root().join("experiments/ablations"));
    files.retain(|f| f.ends_with(".toml"));
    for required in ["positional.toml", "precision.toml", "routing.toml"] {
        assert!(
            files.iter().any(|f| f == required),
            "{required} is not shipped: {files:?}"
        );
    }
    for name in &files {
        let a = resolve_file(&shipped(name), &[], None);
        assert_eq!(a.model, resolve::DEFAULT_MODEL, "{name}");
        assert_eq!(a.device, Device::Cpu, "{name}");
        // Every variant changes something: a repeat of the base (or of another variant) in a
        // shipped file would be a mistake.
        let mut hashes: Vec<&str> = a.variants.iter().map(|v| v.hash.as_str()).collect();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), a.variants.len(), "{name}: two variants resolve alike");
    }

    let routing = resolve_file(&shipped("routing.toml"), &[], None);
    let mut strategies: Vec<&str> = routing
        .variants
        .iter()
        .map(|v| v.resolved.router.split(':').next().unwrap())
        .collect();
    strategies.sort_unstable();
    strategies.dedup();
    assert!(strategies.len() >= 5, "routing.toml has {strategies:?}");

    let positional = resolve_file(&shipped("positional.toml"), &[], None);
    let base = &positional.variants[0].resolved;
    let differs = |what: &dyn Fn(&resolve::ResolvedSettings) -> String| {
        positional.variants.iter().any(|v| what(&v.resolved) != what(base))
    };
    assert!(differs(&|s| format!("{:?}", s.nope_layers)), "no NoPE interval ablated");
    assert!(differs(&|s| format!("{:?}", s.chunk_size)), "no chunk size ablated");
    assert!(differs(&|s| format!("{:?}", s.temperature)), "no temperature ablated");

    let precision = resolve_file(&shipped("precision.toml"), &[], None);
    let recipes: Vec<(String, String)> = precision
        .variants
        .iter()
        .map(|v| (v.resolved.dtype.clone(), v.resolved.fp8.clone()))
        .collect();
    for (dtype, fp8) in [
        ("f32", "none"),
        ("bf16", "none"),
        ("f32", "experts"),
        ("f32", "experts-block"),
        ("f32", "all"),
    ] {
        assert!(
            recipes.iter().any(|(d, f)| (d.as_str(), f.as_str()) == (dtype, fp8)),
            "precision.toml lacks {dtype} with fp8 {fp8}: {recipes:?}"
        );
    }
}

#[test]
fn the_routing_ablation_runs_and_its_loads_are_the_routers_own_counts() {
    let dir = tempfile::tempdir().unwrap();
    let file = shipped("routing.toml");
    let out = dir.path().join("routing");
    let (argv, output) = ablate(&file, &out, TINY_EVAL, &[]);
    let stdout = assert_succeeded(&argv, &output);

    let a = resolve_file(&file, TINY_EVAL, None);
    let names: Vec<&str> = a.variants.iter().map(|v| v.name.as_str()).collect();
    // The table: a header, then the variants in file order; then the device and the folder.
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("variant") && lines[0].contains("KL mean"),
        "{stdout}"
    );
    for (line, name) in lines[1..].iter().zip(&names) {
        assert_eq!(line.split_whitespace().next(), Some(*name), "{stdout}");
    }
    assert!(lines[names.len() + 1].starts_with("device: cpu"), "{stdout}");
    assert_eq!(lines[names.len() + 2], format!("results: {}", out.display()));

    // summary.csv: one row per variant, name first.
    let csv = fs::read_to_string(out.join("summary.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert!(rows[0].starts_with("variant,hash,kl_mean,"), "{csv}");
    let first: Vec<&str> = rows[1..].iter().map(|r| r.split(',').next().unwrap()).collect();
    assert_eq!(first, names);

    // The routing of each variant, recomputed here from its own forward pass.
    let spec = loader::resolve(&a.model).unwrap().0;
    let prompts = eval::prompts(&a.file, &a.eval, spec.vocab_size).unwrap();
    let n_tokens = prompts.ids.elem_count();
    let metrics = read_metrics(&out);
    let mut moe_layers = Vec::new();
    for variant in &a.variants {
        let mut model =
            loader::load_overridden(&a.model, variant.dtype, Device::Cpu, variant.fp8, &variant.overrides).unwrap();
        if let Some(router) = &variant.router {
            model = model.with_router(router).unwrap();
        }
        let captured = model
            .forward(
                &prompts.ids,
                &mut model.new_cache(),
                Capture {
                    hidden_states: false,
                    router_logits: true,
                },
            )
            .unwrap();
        moe_layers = captured.routing.iter().map(|(l, _)| *l).collect();
        assert!(!moe_layers.is_empty());
        let mut summed = vec![0usize; 16];
        for ((layer, routing), (logit_layer, logits)) in captured.routing.iter().zip(&captured.router_logits) {
            assert_eq!(layer, logit_layer);
            let at = |name| metric(&metrics, &variant.name, name, Some(*layer as u64));
            let stats: RoutingStats = routing.stats();
            let load = loads(at("expert_load"));
            assert_eq!(load, stats.load, "{} layer {layer}", variant.name);
            assert_eq!(at("dropped").as_u64(), Some(stats.dropped as u64));
            assert_eq!(at("unrouted_tokens").as_u64(), Some(stats.unrouted_tokens as u64));
            assert_eq!(at("load_max_over_mean").as_f64(), Some(stats.max_over_mean));
            assert_eq!(at("load_entropy").as_f64(), Some(stats.entropy));
            for (sum, x) in summed.iter_mut().zip(&load) {
                *sum += x;
            }
            // Independent of the router's bookkeeping: what each strategy must have done.
            let assigned: usize = load.iter().sum();
            match variant.resolved.router.as_str() {
                "llama4:k=1" => {
                    // Top-1 by logit: each token's argmax over the captured router logits.
                    let logits = logits.to_dtype(DType::F32).unwrap().to_f32_vec().unwrap();
                    let mut expected = vec![0usize; 16];
                    for row in logits.chunks(16) {
                        let best = (0..16).fold(0, |b, e| if row[e] > row[b] { e } else { b });
                        expected[best] += 1;
                    }
                    assert_eq!(load, expected, "{} layer {layer}", variant.name);
                }
                "llama4:k=1,capacity=1" => {
                    assert_eq!(assigned + stats.dropped, n_tokens);
                    assert!(load.iter().all(|&l| l <= n_tokens.div_ceil(16)), "{load:?}");
                }
                "expert-choice:capacity=1" => {
                    assert!(load.iter().all(|&l| l == n_tokens.div_ceil(16)), "{load:?}");
                }
                router => {
                    let k = if router.contains("k=2") { 2 } else { 1 };
                    assert_eq!((assigned, stats.dropped), (k * n_tokens, 0), "{router}");
                }
            }
        }
        assert_eq!(loads(metric(&metrics, &variant.name, "expert_load", None)), summed);
    }

    // The plots: a heatmap per variant and per MoE layer, bars per metric.
    let plots = out.join("plots");
    for name in &names {
        assert!(plots.join(format!("expert_load-{name}.svg")).is_file(), "{name}");
    }
    for layer in &moe_layers {
        let path = plots.join(format!("expert_load-layer{layer}.svg"));
        let svg = fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && names.iter().all(|n| svg.contains(&format!("\n{n}\n"))));
    }
    for bars in [
        "kl_mean",
        "top1_agreement",
        "load_max_over_mean",
        "prefill_tokens_per_s",
    ] {
        assert!(plots.join(format!("{bars}.svg")).is_file(), "{bars}");
    }
    assert_eq!(entries(dir.path()), ["routing"], "staging folders left behind");
}

/// mini-scout with Llama 4's router and variants that restate the base in full, change nothing,
/// and change one thing.
const SAME_AS_BASE: &str = r#"
[base]
router = { strategy = "llama4" }

[eval]
seed = 3

[[variants]]
name = "unchanged"

[[variants]]
name = "restated"
router = { strategy = "llama4", k = 1 }
experts_per_token = 1
dtype = "f32"
shared_expert = true
nope = 4
chunk_size = 32
temperature_tuning = true
floor_scale = 32.0
attn_scale = 0.1
qk_norm = true
rope_theta = 10000.0
rope_scaling = { factor = 8.0, low_freq_factor = 1.0, high_freq_factor = 4.0, original_max_position_embeddings = 64 }

[[variants]]
name = "top2"
experts_per_token = 2
"#;

#[test]
fn a_variant_identical_to_the_base_gives_kl_zero_and_full_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "same.toml", SAME_AS_BASE);
    let out = dir.path().join("out");
    let (argv, output) = ablate(&file, &out, TINY_EVAL, &[]);
    assert_succeeded(&argv, &output);
    let a = resolve_file(&file, TINY_EVAL, None);
    assert_eq!(a.variants[1].hash, a.variants[0].hash);
    assert_eq!(a.variants[2].hash, a.variants[0].hash);
    let m = read_metrics(&out);
    for name in ["base", "unchanged", "restated"] {
        assert_eq!(metric(&m, name, "kl_mean", None).as_f64(), Some(0.0), "{name}");
        assert_eq!(metric(&m, name, "kl_max", None).as_f64(), Some(0.0), "{name}");
        assert_eq!(metric(&m, name, "top1_agreement", None).as_f64(), Some(1.0), "{name}");
        assert_eq!(
            metric(&m, name, "expert_load", None),
            metric(&m, "base", "expert_load", None),
            "{name}"
        );
    }
    // A variant that does change the model is seen to.
    assert!(metric(&m, "top2", "kl_mean", None).as_f64().unwrap() > 0.0);
}

#[test]
fn the_same_seed_gives_identical_metrics_and_another_seed_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "same.toml", SAME_AS_BASE);
    let run = |out: &str, sets: &[&str]| {
        let out = dir.path().join(out);
        let (argv, output) = ablate(&file, &out, sets, &[]);
        assert_succeeded(&argv, &output);
        computed(&read_metrics(&out))
    };
    let first = run("first", TINY_EVAL);
    let again = run("again", TINY_EVAL);
    assert_eq!(first, again);
    let reseeded: Vec<&str> = TINY_EVAL.iter().copied().chain(["eval.seed=4"]).collect();
    let other = run("other", &reseeded);
    assert_eq!(other.keys().collect::<Vec<_>>(), first.keys().collect::<Vec<_>>());
    assert_ne!(other, first, "other prompts gave the same metrics");
}

#[test]
fn resolved_toml_round_trips_with_its_hashes_and_records_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = shipped("positional.toml");
    let out = dir.path().join("out");
    let (argv, output) = ablate(&file, &out, TINY_EVAL, &[]);
    assert_succeeded(&argv, &output);

    let text = fs::read_to_string(out.join("resolved.toml")).unwrap();
    let run: ResolvedRun = toml::from_str(&text).unwrap_or_else(|e| panic!("resolved.toml: {e}"));
    // Written back, it is the same text (after the comment line that heads the file).
    let body = text.split_once('\n').unwrap().1;
    assert_eq!(toml::to_string(&run).unwrap(), body);

    let a = resolve_file(&file, TINY_EVAL, None);
    assert_eq!(run.variants.len(), a.variants.len());
    for (written, resolved) in run.variants.iter().zip(&a.variants) {
        assert_eq!(written.name, resolved.name);
        assert_eq!(written.settings, resolved.resolved, "{}", written.name);
        assert_eq!(written.settings.hash().unwrap(), written.hash, "{}", written.name);
        assert_eq!(written.hash, resolved.hash);
    }
    assert_eq!(run.ablation, "positional");
    assert_eq!(run.device, "cpu");
    assert!(run.device_name.starts_with("cpu"), "{}", run.device_name);
    assert_eq!(run.weights_seed, Some(loader::PRESET_SEED));
    assert_eq!((run.eval.source.as_str(), run.eval.seed), ("random", Some(0)));
    assert_eq!((run.eval.prompts, run.eval.prompt_len), (1, 16));
    let in_git = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert_eq!(run.git_revision.is_some(), in_git);
}

#[test]
fn an_existing_results_folder_is_kept_without_force_and_replaced_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "study.toml",
        "[[variants]]\nname = \"top2\"\nexperts_per_token = 2\n",
    );
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("notes.txt"), "mine").unwrap();

    let (argv, output) = ablate(&file, &out, TINY_EVAL, &[]);
    assert_one_line_error(&argv, &output, &["out", "already exists", "--force"]);
    assert_eq!(entries(&out), ["notes.txt"]);
    assert_eq!(entries(dir.path()), ["out", "study.toml"]);

    let (argv, output) = ablate(&file, &out, TINY_EVAL, &["--force"]);
    assert_succeeded(&argv, &output);
    assert_eq!(
        entries(&out),
        ["metrics.jsonl", "plots", "resolved.toml", "summary.csv"]
    );
    assert_eq!(entries(dir.path()), ["out", "study.toml"]);
}

#[test]
fn a_failed_run_leaves_no_results_folder() {
    let dir = tempfile::tempdir().unwrap();
    // Token ids past mini-scout's 2048-token vocabulary: found once the run has started.
    let ids = l4_core::Tensor::from_vec(vec![1i64, 5000], &[1, 2], Device::Cpu).unwrap();
    l4_core::checkpoint::save_safetensors(dir.path().join("ids.safetensors"), &[("input_ids", &ids)], None).unwrap();
    let file = write(&dir, "study.toml", "[eval]\ntokens = \"ids.safetensors\"\n");
    let (argv, output) = ablate(&file, &dir.path().join("new/results/out"), &[], &[]);
    assert_one_line_error(
        &argv,
        &output,
        &["study.toml", "[eval]", "5000", "outside the vocabulary"],
    );
    assert_eq!(entries(dir.path()), ["ids.safetensors", "study.toml"]);
}

#[test]
fn perplexity_is_reported_for_real_text_on_a_checkpoint_only() {
    let fixture = repo_root().join("model/testdata/tiny-scout");
    let dir = tempfile::tempdir().unwrap();
    let with_text = write(
        &dir,
        "text.toml",
        &format!(
            "[eval]\ntokens = {:?}\ndecode_tokens = 1\nrepeats = 1\n[[variants]]\nname = \"top2\"\nexperts_per_token = 2\n",
            fixture.join("expected.safetensors")
        ),
    );
    let model = fixture.to_string_lossy().into_owned();
    let (argv, output) = ablate(&with_text, &dir.path().join("text"), &[], &["--model", &model]);
    let stdout = assert_succeeded(&argv, &output);
    assert!(stdout.lines().next().unwrap().contains("ppl"), "{stdout}");
    let m = read_metrics(&dir.path().join("text"));
    for name in ["base", "top2"] {
        let ppl = metric(&m, name, "perplexity", None).as_f64().unwrap();
        assert!(ppl.is_finite() && ppl > 1.0, "{name}: {ppl}");
    }
    // A text file cut into rows by the checkpoint's own tokenizer.json.
    let maverick = repo_root().join("model/testdata/tiny-maverick");
    fs::write(
        dir.path().join("story.txt"),
        "The quick brown fox jumps over the lazy dog. ".repeat(20),
    )
    .unwrap();
    let from_text = write(
        &dir,
        "story.toml",
        &format!(
            "[base]\nmodel = {:?}\n[eval]\ntext = \"story.txt\"\nprompts = 2\nprompt_len = 16\ndecode_tokens = 1\nrepeats = 1\n",
            maverick
        ),
    );
    let (argv, output) = ablate(&from_text, &dir.path().join("story"), &[], &[]);
    assert_succeeded(&argv, &output);
    let run: ResolvedRun =
        toml::from_str(&fs::read_to_string(dir.path().join("story/resolved.toml")).unwrap()).unwrap();
    assert_eq!(
        (run.eval.source.as_str(), run.eval.prompts, run.eval.prompt_len),
        ("text", 2, 16)
    );
    assert!(run.eval.perplexity && run.weights_seed.is_none());
    let m = read_metrics(&dir.path().join("story"));
    assert!(metric(&m, "base", "perplexity", None).as_f64().unwrap() > 1.0);

    // Random prompts on the same checkpoint, or the file's tokens on a preset: no perplexity.
    let random = write(
        &dir,
        "random.toml",
        "[eval]\nprompts = 1\nprompt_len = 8\ndecode_tokens = 0\nrepeats = 1\n",
    );
    for (file, out, model) in [
        (&random, "random", model.as_str()),
        (&with_text, "preset", "tiny-scout"),
    ] {
        let (argv, output) = ablate(file, &dir.path().join(out), &[], &["--model", model]);
        let stdout = assert_succeeded(&argv, &output);
        assert!(!stdout.lines().next().unwrap().contains("ppl"), "{stdout}");
        let m = read_metrics(&dir.path().join(out));
        assert!(!m.keys().any(|(_, name, _)| name == "perplexity"), "{out}");
    }
}

#[test]
fn an_unusable_device_is_an_error_naming_where_it_was_asked_for() {
    if Device::Cuda(0).ensure_usable().is_ok() {
        return; // On a GPU machine both runs below would be valid.
    }
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "study.toml", "[base]\ndevice = \"cuda\"\n");
    let (argv, output) = ablate(&file, &dir.path().join("out"), TINY_EVAL, &[]);
    assert_one_line_error(&argv, &output, &["study.toml", "[base]", "field `device`", "CUDA"]);
    let (argv, output) = ablate(&file, &dir.path().join("out"), TINY_EVAL, &["--device", "cuda:0"]);
    assert_one_line_error(&argv, &output, &["--device cuda:0", "CUDA"]);
    assert_eq!(entries(dir.path()), ["study.toml"]);
}
