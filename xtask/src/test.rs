//! `cargo xtask test`: the workspace's tests with NVRTC on the loader path, so that the kernel
//! compile tests run (never skip) on any machine, GPU or not. This is the README's test command
//! and the one `.ci/run` calls.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::{cargo, cuda_tools, exit_code};

/// Installs the pinned NVRTC (once), then runs `cargo test --workspace --locked ARGS` with it.
pub fn command(args: &[OsString]) -> Result<ExitCode> {
    let tools = cuda_tools::ensure()?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--locked"]).args(args);
    tools.apply(&mut cmd)?;
    let status = cmd.status().context("cannot start cargo test")?;
    Ok(exit_code(status))
}
