//! `check-kernels`: compile every registered kernel with NVRTC, spills as errors, and check the
//! tensor-core class of its SASS. Normally started by `cargo xtask check-kernels`, which provides
//! NVRTC and nvdisasm and the environment they need (see docs/env-vars.md).
//!
//! Usage: check-kernels [--out DIR] [--root DIR] [--kernel NAME]... [--verbose]
//!
//! Prints one row per (kernel, architecture) and ends with `N kernels compiled for sm_90a, S
//! spills`. Exits 1 on any compile error, spill, SASS mismatch or missing tool.

use std::path::PathBuf;
use std::process::ExitCode;

use l4_kernels::compile_check::{CheckOptions, check_all, file_set_gaps, render_table, summary_line};
use l4_kernels::{KERNELS, KernelSource, nvrtc, sass};

struct Args {
    out_dir: PathBuf,
    root: PathBuf,
    kernels: Vec<String>,
    verbose: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        out_dir: PathBuf::from("target/kernels"),
        root: PathBuf::from("."),
        kernels: Vec::new(),
        verbose: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--out" => args.out_dir = value("--out")?.into(),
            "--root" => args.root = value("--root")?.into(),
            "--kernel" => args.kernels.push(value("--kernel")?),
            "-v" | "--verbose" => args.verbose = true,
            "-h" | "--help" => {
                return Err("usage: check-kernels [--out DIR] [--root DIR] [--kernel NAME]... [--verbose]".into());
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let selected: Vec<KernelSource> = KERNELS
        .iter()
        .filter(|k| args.kernels.is_empty() || args.kernels.iter().any(|n| n == k.name))
        .copied()
        .collect();
    if let Some(unknown) = args
        .kernels
        .iter()
        .find(|n| !KERNELS.iter().any(|k| k.name == n.as_str()))
    {
        eprintln!("check-kernels: no registered kernel named {unknown:?}");
        return ExitCode::from(2);
    }

    // A missing NVRTC fails the check everywhere (it is never a skip): this binary exists to
    // compile, and `cargo xtask check-kernels` provisions NVRTC before starting it.
    let version = match nvrtc::nvrtc_version() {
        Ok(v) => v,
        Err(e) => {
            let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
            eprintln!(
                "check-kernels: {e}{}",
                if ci { " (CI: a missing NVRTC is a failure)" } else { "" }
            );
            return ExitCode::FAILURE;
        }
    };
    let nvdisasm = sass::find_nvdisasm();
    println!(
        "NVRTC {}.{}; nvdisasm: {}; output: {}",
        version.0,
        version.1,
        nvdisasm
            .as_ref()
            .map_or("not found".into(), |p| p.display().to_string()),
        args.out_dir.display()
    );

    let rows = check_all(
        &selected,
        &CheckOptions {
            out_dir: args.out_dir.clone(),
            nvdisasm,
        },
    );
    print!("{}", render_table(&rows, args.verbose));

    for gap in file_set_gaps(&selected, &args.root) {
        println!("warning: {gap}");
    }
    let mut failed = false;
    for row in rows.iter().filter(|r| !r.ok()) {
        failed = true;
        for problem in &row.problems {
            println!("error: {} ({}): {problem}", row.kernel, row.arch);
        }
    }
    println!("{}", summary_line(&rows));
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
