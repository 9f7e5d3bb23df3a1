//! `cargo xtask check-kernels`: provision NVRTC, then run l4-kernels' `check-kernels` binary in
//! a child process whose `LD_LIBRARY_PATH` holds NVRTC (see `cuda_tools`).

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::{cargo, cuda_tools, exit_code, target_dir, workspace_root};

/// Ensures the tools, builds and runs `check-kernels`, and exits with its status.
pub fn command(args: &[OsString]) -> Result<ExitCode> {
    let tools = cuda_tools::ensure()?;
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--quiet",
        "--package",
        "l4-kernels",
        "--bin",
        "check-kernels",
        "--",
    ])
    .arg("--out")
    .arg(target_dir().join("kernels"))
    .arg("--root")
    .arg(workspace_root())
    .args(args);
    tools.apply(&mut cmd)?;
    let status = cmd.status().context("cannot start cargo")?;
    Ok(exit_code(status))
}
