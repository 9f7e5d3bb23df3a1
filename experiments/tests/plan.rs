//! `l4 plan` against hand computations from Scout's published config, and its bad flags.
//!
//! Scout (llama4-spec.md §1.3): 48 layers, width 5120, 40 query heads and 8 KV heads of width
//! 128, vocab 202048, 16 routed experts and a shared expert of width 8192 on every layer, lm_head
//! not tied; NoPE (global) on every 4th layer, so 12 global and 36 chunked layers with chunks of
//! 8192 tokens. Every expected value below is worked out from those numbers here, not taken
//! from the code under test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use l4_core::DType;
use l4_experiments::plan::budget::GIB;
use l4_experiments::plan::{GpuMemory, Longest, Plan, PlanOptions, Scheme, plan};
use l4_model::parts::fp8::Fp8Mode;

const SCOUT: &str = "llama4-scout-17b-16e";

const LAYERS: u64 = 48;
const GLOBAL_LAYERS: u64 = 12; // layers 3, 7, ..., 47
const CHUNKED_LAYERS: u64 = 36;
const CHUNK: u64 = 8192;
const D: u64 = 5120;
const VOCAB: u64 = 202_048;
const HEADS: u64 = 40;
const KV_HEADS: u64 = 8;
const HEAD_DIM: u64 = 128;
const EXPERTS: u64 = 16;
const FFN: u64 = 8192;

/// K and V, 8 heads of 128 values, 2 bytes each in bf16.
const KV_BYTES_PER_TOKEN_PER_LAYER: u64 = 2 * KV_HEADS * HEAD_DIM * 2;

fn options(context: u64, gpu: GpuMemory, fp8: Fp8Mode) -> PlanOptions {
    PlanOptions {
        model: SCOUT.into(),
        context,
        gpu,
        dtype: DType::BF16,
        fp8,
        batch: 1,
        plot: None,
    }
}

fn scout(context: u64) -> Plan {
    plan(&options(context, GpuMemory::named("h100").unwrap(), Fp8Mode::None)).unwrap()
}

/// One MoE layer's routed experts: gate, up `[f, d]` and down `[d, f]` per expert.
fn routed_expert_params_per_layer() -> u64 {
    EXPERTS * 3 * D * FFN
}

/// Every parameter of Scout's text model.
fn scout_params() -> u64 {
    let attention = D * HEADS * HEAD_DIM // q
        + 2 * D * KV_HEADS * HEAD_DIM // k, v
        + HEADS * HEAD_DIM * D; // o
    let norms = 2 * D;
    let router = EXPERTS * D;
    let shared = 3 * D * FFN;
    let layer = attention + norms + router + routed_expert_params_per_layer() + shared;
    let embedding = VOCAB * D;
    let lm_head = VOCAB * D;
    let final_norm = D;
    LAYERS * layer + embedding + lm_head + final_norm
}

#[test]
fn scout_parameter_count_is_the_published_one() {
    // 26,214,400 (q) + 2 · 5,242,880 (k, v) + 26,214,400 (o) = 62,914,560 attention parameters.
    // Per layer: 62,914,560 + 10,240 (norms) + 81,920 (router) + 2,013,265,920 (experts)
    //          + 125,829,120 (shared) = 2,202,101,760; × 48 = 105,700,884,480;
    // + 2 · 1,034,485,760 (embedding, lm_head) + 5,120 (final norm) = 107,769,861,120.
    assert_eq!(scout_params(), 107_769_861_120);
    let plan = scout(8192);
    assert_eq!(plan.weights.params(), scout_params());
    assert_eq!(plan.weights.bytes(), 2 * scout_params());
}

#[test]
fn scout_kv_cache_at_8k_1m_and_10m_tokens() {
    assert_eq!(KV_BYTES_PER_TOKEN_PER_LAYER, 4096);
    for context in [8192, 1 << 20, 10 << 20] {
        let plan = scout(context);
        // iRoPE: global layers hold the whole context, chunked layers at most one chunk.
        let irope = (GLOBAL_LAYERS * context + CHUNKED_LAYERS * context.min(CHUNK)) * KV_BYTES_PER_TOKEN_PER_LAYER;
        let all_global = LAYERS * context * KV_BYTES_PER_TOKEN_PER_LAYER;
        assert_eq!(plan.kv_bytes(Scheme::IRope), irope, "iRoPE at {context}");
        assert_eq!(plan.kv_bytes(Scheme::AllGlobal), all_global, "all-global at {context}");
        assert_eq!(plan.total_bytes(Scheme::IRope), 2 * scout_params() + irope);
    }
    // The same figures written out:
    // 8K: every layer holds 8192 tokens: 48 · 8192 · 4096 = 1,610,612,736 B (1.5 GiB) both ways.
    assert_eq!(scout(8192).kv_bytes(Scheme::IRope), 1_610_612_736);
    assert_eq!(scout(8192).kv_bytes(Scheme::AllGlobal), 1_610_612_736);
    // 1M: (12 · 1,048,576 + 36 · 8192) · 4096 = 52,747,567,104 B (49.125 GiB) against
    //     48 · 1,048,576 · 4096 = 206,158,430,208 B (192 GiB).
    assert_eq!(scout(1 << 20).kv_bytes(Scheme::IRope), 52_747_567_104);
    assert_eq!(scout(1 << 20).kv_bytes(Scheme::AllGlobal), 206_158_430_208);
    // 10M: (12 · 10,485,760 + 36 · 8192) · 4096 = 516,604,035,072 B against
    //      48 · 10,485,760 · 4096 = 2,061,584,302,080 B (1920 GiB).
    assert_eq!(scout(10 << 20).kv_bytes(Scheme::IRope), 516_604_035_072);
    assert_eq!(scout(10 << 20).kv_bytes(Scheme::AllGlobal), 2_061_584_302_080);
    // Past the chunk, each token adds 12 layers' worth under iRoPE, 48 under all-global.
    let plan = scout(10 << 20);
    assert_eq!(plan.kv.growth_per_token(Scheme::IRope), 12 * 4096);
    assert_eq!(plan.kv.growth_per_token(Scheme::AllGlobal), 48 * 4096);
}

#[test]
fn scout_in_bf16_does_not_fit_an_h100() {
    // 2 · 107,769,861,120 B = 200.7 GiB of weights against 80 GiB.
    let plan = scout(8192);
    assert!(2 * scout_params() > 80 * GIB);
    for scheme in Scheme::BOTH {
        assert!(!plan.fits(scheme));
        assert_eq!(plan.longest_context(scheme), Longest::WeightsDoNotFit);
    }
}

#[test]
fn scout_with_fp8_experts_on_an_h200() {
    // Meta's recipe: routed experts of layers 1..=46 in e4m3 (1 byte) with one f32 scale per
    // output channel: 2·8192 (fused gate/up) + 5120 (down) per expert.
    let fp8_layers = LAYERS - 2;
    let fp8_params = fp8_layers * routed_expert_params_per_layer();
    let scales = fp8_layers * EXPERTS * (2 * FFN + D);
    let weights = 2 * (scout_params() - fp8_params) + fp8_params + 4 * scales;
    let plan = plan(&options(10 << 20, GpuMemory::named("h200").unwrap(), Fp8Mode::Experts)).unwrap();
    assert_eq!(plan.weights.bytes(), weights);
    assert_eq!(plan.weights.fp8_params(), fp8_params);

    // Left for the cache: 141 GiB minus the weights. iRoPE, past the chunk, needs
    // (12·N + 36·8192) · 4096 ≤ left, so N = ⌊(⌊left / 4096⌋ − 294,912) / 12⌋; all-global
    // needs 48 · N · 4096 ≤ left.
    let left = 141 * GIB - weights;
    let irope = (left / 4096 - CHUNKED_LAYERS * CHUNK) / GLOBAL_LAYERS;
    let all_global = left / (LAYERS * 4096);
    assert!(irope > CHUNK, "the formula assumes a context past the chunk");
    assert_eq!(plan.longest_context(Scheme::IRope), Longest::Tokens(irope));
    assert_eq!(plan.longest_context(Scheme::AllGlobal), Longest::Tokens(all_global));
    assert!(!plan.fits(Scheme::IRope) && !plan.fits(Scheme::AllGlobal));
    // At the longest context the plan fits; one token more does not.
    let fits_at = |context| {
        let p = plan_at(context);
        p.fits(Scheme::IRope)
    };
    assert!(fits_at(irope) && !fits_at(irope + 1));
}

fn plan_at(context: u64) -> Plan {
    plan(&options(context, GpuMemory::named("h200").unwrap(), Fp8Mode::Experts)).unwrap()
}

/// A checkpoint folder holding only a config.json (the plan reads no weights).
fn config_folder(json: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("config.json"), json).unwrap();
    dir
}

#[test]
fn a_model_without_global_layers_fits_any_context_once_its_chunks_fit() {
    // Two chunked layers of 4 tokens, 1 KV head of width 2, f32: 2 · 1 · 2 · 4 = 16 B per token
    // per layer; at most 2 · 4 · 16 = 128 B of cache whatever the context.
    let dir = config_folder(
        r#"{"num_hidden_layers": 2, "no_rope_layers": [1, 1], "attention_chunk_size": 4,
            "hidden_size": 4, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 2,
            "vocab_size": 8, "intermediate_size": 4, "intermediate_size_mlp": 4, "num_local_experts": 2}"#,
    );
    let mut o = options(1 << 30, GpuMemory::gib(1.0).unwrap(), Fp8Mode::None);
    o.model = dir.path().display().to_string();
    o.dtype = DType::F32;
    let p = plan(&o).unwrap();
    assert_eq!(p.kv_bytes(Scheme::IRope), 128);
    assert_eq!(p.kv.growth_per_token(Scheme::IRope), 0);
    assert_eq!(p.longest_context(Scheme::IRope), Longest::Any);
    // All-global: 2 layers · 16 B per token.
    assert_eq!(p.kv_bytes(Scheme::AllGlobal), 2 * 16 * (1 << 30));
    // With 100 B beside the weights, both schemes fit 3 tokens (2 layers · 3 · 16 = 96 B) and
    // not 4 (128 B).
    o.gpu = GpuMemory {
        name: "tight".into(),
        bytes: p.weights.bytes() + 100,
    };
    let p = plan(&o).unwrap();
    assert_eq!(p.longest_context(Scheme::IRope), Longest::Tokens(3));
    assert_eq!(p.longest_context(Scheme::AllGlobal), Longest::Tokens(3));
}

/// The `l4` binary: `$L4_BIN` when set, else the one cargo built for this test.
fn l4_binary() -> PathBuf {
    std::env::var_os("L4_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_l4")))
}

fn l4(args: &[&str]) -> Output {
    Command::new(l4_binary()).args(args).output().unwrap()
}

/// The command failed with exactly one `error: ` line on stderr mentioning every `needle`.
fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn files_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn bad_flags_are_one_line_errors_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("plan.svg");
    let svg = svg.to_str().unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (&["--model", SCOUT, "--context", "0"], &["--context"]),
        (&["--model", SCOUT, "--context", "lots"], &["--context"]),
        (&["--model", "llama5", "--context", "8K"], &["--model", "llama5", SCOUT]),
        (
            &["--model", SCOUT, "--context", "8K", "--gpu-memory", "-5"],
            &["--gpu-memory"],
        ),
        (
            &["--model", SCOUT, "--context", "8K", "--gpu-memory", "0"],
            &["--gpu-memory"],
        ),
        (
            &["--model", SCOUT, "--context", "8K", "--gpu", "h900"],
            &["--gpu", "h200"],
        ),
        (&["--model", SCOUT, "--context", "8K", "--batch", "0"], &["--batch"]),
        (&["--model", SCOUT, "--context", "8K", "--dtype", "i64"], &["--dtype"]),
        (
            &[
                "--model",
                SCOUT,
                "--context",
                "8K",
                "--fp8",
                "experts",
                "--dtype",
                "f16",
            ],
            &["--fp8"],
        ),
        (&["--model", "llama5", "--context", "8K", "--plot", svg], &["--model"]),
        (
            &["--model", SCOUT, "--context", "8K", "--plot", "plan.png"],
            &["--plot", ".svg"],
        ),
        (
            &[
                "--model",
                SCOUT,
                "--context",
                "8K",
                "--plot",
                "/no/such/folder/plan.svg",
            ],
            &["--plot", "does not exist"],
        ),
    ];
    for (args, needles) in cases {
        let args: Vec<&str> = ["plan"].iter().chain(args.iter()).copied().collect();
        assert_one_line_error(&l4(&args), needles);
    }
    assert!(files_in(dir.path()).is_empty(), "{:?}", files_in(dir.path()));
}

#[test]
fn the_table_and_the_plot() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("scout.svg");
    let out = l4(&[
        "plan",
        "--model",
        SCOUT,
        "--context",
        "1M",
        "--gpu",
        "h200",
        "--fp8",
        "experts",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // 1M tokens: iRoPE holds 49.125 GiB of cache (52,747,567,104 B), all-global 192 GiB.
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap()
            .to_string()
    };
    assert!(row("iRoPE").contains("49.12 GiB"), "{stdout}");
    assert!(row("all-global").contains("192.00 GiB"), "{stdout}");
    assert!(
        stdout.contains("36 chunked RoPE layers of 8,192 tokens, 12 global layers"),
        "{stdout}"
    );
    let text = fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
    for label in ["iRoPE", "all-global", "GPU memory: h200 (141 GiB)", "10,000,000"] {
        assert!(text.contains(label), "{label} not in the plot");
    }
    // Only the plot: the temporary file was renamed into place.
    assert_eq!(files_in(dir.path()), vec!["scout.svg".to_string()]);
}
