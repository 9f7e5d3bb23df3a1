//! `cargo xtask`: l4lab's automation (the alias lives in .cargo/config.toml).
//!
//! * `test [ARGS...]`: `cargo test --workspace --locked ARGS` with NVRTC provisioned, so the
//!   kernel compile tests run everywhere (the README's test command).
//! * `cuda-tools [-- CMD ARGS...]`: install NVRTC 13.0.88 and nvdisasm into a venv (once) and
//!   print the `export` lines that make them usable; with a command, run it with that
//!   environment instead.
//! * `check-kernels [ARGS...]`: compile every registered kernel for sm_90a (and any other
//!   architecture it declares) with spills as errors and check its tensor-core class in the SASS.
//! * `gpu-pack [--exclude PKG]...`: build release test and bench binaries into `gpu-bin/` with `gpu-bin/run.sh`,
//!   for the GPU machine (which has no Rust toolchain).
//!
//! Environment variables: see docs/env-vars.md.

mod check_kernels;
mod cuda_tools;
mod gpu_pack;
mod test;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  test [ARGS...]                cargo test --workspace --locked ARGS, with NVRTC provisioned
                                (the README's test command; CI runs it)
  cuda-tools [-- CMD ARGS...]   install NVRTC + nvdisasm (pinned wheels) into a venv and print
                                export lines; with `-- CMD`, run CMD with that environment
  check-kernels [ARGS...]       compile every registered kernel (spills are errors), check the
                                SASS tensor-core class; ARGS go to check-kernels
                                (--kernel NAME, --verbose)
  gpu-pack [--exclude PKG]...   build release test/bench binaries into gpu-bin/ plus gpu-bin/run.sh
";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let command = args.next().map(|c| c.to_string_lossy().into_owned());
    let rest: Vec<OsString> = args.collect();
    let result = match command.as_deref() {
        Some("test") => test::command(&rest),
        Some("cuda-tools") => cuda_tools::command(&rest),
        Some("check-kernels") => check_kernels::command(&rest),
        Some("gpu-pack") => gpu_pack::command(&rest),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprint!("{USAGE}");
            Ok(ExitCode::from(2))
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("xtask: error: {e:#}");
        ExitCode::FAILURE
    })
}

/// The workspace root (xtask only ever runs on the machine that built it).
fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().map(PathBuf::from).unwrap_or(manifest_dir)
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `<root>/target`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The cargo that started us (`$CARGO`), else `cargo` from PATH.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs a command to completion, failing unless it exits successfully.
fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// An exit code that mirrors a child's status (1 when it was killed by a signal).
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1).max(1)),
        None => ExitCode::FAILURE,
    }
}
