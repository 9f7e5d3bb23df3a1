//! `l4 bench --kernels --quick`: the kernel table on this machine's device (the CPU paths where
//! there is no GPU), its columns, and a positive time on every row.

use std::path::PathBuf;
use std::process::{Command, Output};

use l4_core::Device;
use l4_experiments::bench::kernels::{KernelBenchOptions, run};
use l4_experiments::bench::table::{COLUMNS, Vendor};

/// The `l4` binary: `$L4_BIN` when set, else the one cargo built for this test.
fn l4_binary() -> PathBuf {
    std::env::var_os("L4_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_l4")))
}

fn l4(args: &[&str]) -> Output {
    Command::new(l4_binary()).args(args).output().unwrap()
}

/// The kernels every device's table has (at the tiny preset, the chunked prefill runs too).
const KERNELS: [&str; 8] = [
    "rms_norm_bf16",
    "softmax_bf16",
    "moe_route_llama4",
    "attention_decode_bf16",
    "attention_prefill_bf16_causal",
    "attention_prefill_bf16_chunk8",
    "fp8_gemm_rowwise",
    "fp8_gemm_block",
];

#[test]
fn the_quick_cpu_table_times_every_kernel() {
    let table = run(&KernelBenchOptions {
        device: Some(Device::Cpu),
        shapes: None,
        quick: true,
    })
    .unwrap();
    assert!(table.failures.is_empty(), "{:?}", table.failures);
    for kernel in KERNELS.iter().chain(&["matmul_bf16"]) {
        assert!(table.rows.iter().any(|r| r.kernel == *kernel), "{kernel} missing");
    }
    for row in &table.rows {
        assert!(row.seconds > 0.0 && row.seconds.is_finite(), "{row:?}");
        assert!(row.work.bytes > 0.0, "{row:?}");
        // No CPU datasheet and no vendor baseline on the CPU.
        assert_eq!(row.peak_fraction, None, "{row:?}");
        assert_eq!(row.vendor, Vendor::None, "{row:?}");
    }
    // tiny-scout's GEMMs at 1 and 16 tokens: qkv_proj is (4 + 2·2)·16 = 128 outputs from 64.
    let qkv = table
        .rows
        .iter()
        .find(|r| r.kernel == "matmul_bf16" && r.shape == "qkv_proj/16x128x64");
    let qkv = qkv.expect("qkv_proj at 16 tokens");
    assert_eq!(qkv.work.flops, (2 * 16 * 128 * 64) as f64);
    assert_eq!(qkv.work.bytes, ((16 * 64 + 64 * 128 + 16 * 128) * 2) as f64);
    assert!(table.notes.iter().any(|n| n.contains("n/a")));
}

#[test]
fn the_command_prints_one_table_with_its_columns() {
    // Device left to the command: CUDA when usable, else the CPU with a note saying so.
    let out = l4(&["bench", "--kernels", "--quick"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.split_whitespace().next() == Some("kernel"))
        .expect("a header row");
    let columns: Vec<&str> = lines[header].split_whitespace().collect();
    assert_eq!(columns, COLUMNS);
    let rows: Vec<Vec<&str>> = lines[header + 1..]
        .iter()
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("note:") && !l.starts_with("FAILED"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(rows.len() >= KERNELS.len(), "{stdout}");
    for row in &rows {
        assert_eq!(row.len(), COLUMNS.len(), "{row:?}");
        let time: f64 = row[2].parse().unwrap();
        assert!(time > 0.0, "{row:?}");
    }
    for kernel in KERNELS {
        assert!(rows.iter().any(|r| r[0] == kernel), "{kernel} missing:\n{stdout}");
    }
    assert!(!stdout.contains("FAILED"), "{stdout}");
    if !stdout.contains("device: cuda") {
        assert!(stdout.contains("need a GPU"), "{stdout}");
    }
}

#[test]
fn bad_flags_are_one_line_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["bench", "--kernels", "--shapes", "llama5"], "--shapes"),
        (&["bench", "--quick"], "--kernels"),
        (&["bench", "--kernels", "--model", "tiny-scout"], "--model"),
        (&["bench"], "--model"),
    ];
    for (args, needle) in cases {
        let out = l4(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
    }
    // Asking for CUDA where there is none is an error, not a silent CPU run.
    if l4_core::cuda::backend(0).is_err() {
        let out = l4(&["bench", "--kernels", "--quick", "--device", "cuda"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("--device cuda:0"), "{stderr}");
    }
}

#[test]
fn the_model_timings_still_run_without_kernels() {
    let out = l4(&[
        "bench",
        "--model",
        "tiny-scout",
        "--prompt-len",
        "8",
        "--new-tokens",
        "2",
        "--repeats",
        "1",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("prefill_seconds=") && stdout.contains("model tiny-scout on cpu"),
        "{stdout}"
    );
}
