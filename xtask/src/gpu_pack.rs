//! `cargo xtask gpu-pack`: release test and bench binaries for the GPU machine.
//!
//! The GPU machine has no Rust toolchain. This builds every workspace test harness (release) and
//! every criterion bench, copies the executables to `gpu-bin/<kind>-<name>` (`<kind>-<package
//! folder>-<name>` when two packages have a target of one name), strips them, adds
//! the `l4` binary when l4-experiments has one, copies the Python tools run.sh calls
//! ([`PACKED_TOOLS`]: the PyTorch peer baselines and the Markdown summary), and writes
//! `gpu-bin/run.sh`, which runs them all from the repository root (`bash gpu-bin/run.sh`). NVRTC
//! is not packed: the binaries compile their kernels with the GPU machine's own NVRTC 13.0, which
//! run.sh puts on LD_LIBRARY_PATH.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{cargo, workspace_root};

/// The run script, kept as a real file so it can be read and shellchecked on its own.
const RUN_SH: &str = include_str!("run.sh");

/// Scripts under `tools/` that run.sh runs from `gpu-bin/` (they need only python3; the peers
/// also torch), packed beside it so the bundle and its scripts always come from one commit.
const PACKED_TOOLS: &[&str] = &["peer_baselines.py", "gpu_summary.py"];

/// One executable cargo built.
#[derive(Debug)]
struct Artifact {
    /// `lib`, `test`, `bin`, `bench`...
    kind: String,
    /// The target's name.
    name: String,
    /// The folder of the target's package (`core`, `model`...), which tells apart two packages'
    /// targets of one name (`core/tests/fp8.rs` and `model/tests/fp8.rs`).
    package_dir: String,
    /// The executable.
    path: PathBuf,
}

impl Artifact {
    /// `gpu-bin/<kind>-<name>`.
    fn file_name(&self) -> String {
        format!("{}-{}", self.kind, self.name)
    }

    /// `gpu-bin/<kind>-<package folder>-<name>`, for names that two packages share.
    fn qualified_file_name(&self) -> String {
        format!("{}-{}-{}", self.kind, self.package_dir, self.name)
    }
}

/// The file name in `gpu-bin/` of each artifact: `<kind>-<name>`, or `<kind>-<package
/// folder>-<name>` for every artifact whose short name another executable also has, so the
/// names do not depend on the order cargo built them in.
fn file_names(artifacts: &[Artifact]) -> Vec<String> {
    let mut paths: BTreeMap<String, Vec<&Path>> = BTreeMap::new();
    for a in artifacts {
        let entry = paths.entry(a.file_name()).or_default();
        if !entry.contains(&a.path.as_path()) {
            entry.push(&a.path);
        }
    }
    artifacts
        .iter()
        .map(|a| {
            if paths[&a.file_name()].len() > 1 {
                a.qualified_file_name()
            } else {
                a.file_name()
            }
        })
        .collect()
}

/// Runs a cargo command with `--message-format=json-render-diagnostics` and returns the
/// executables it reported that `keep` accepts. Diagnostics and progress go to stderr.
fn built_executables(args: &[&str], keep: impl Fn(&Value) -> bool) -> Result<Vec<Artifact>> {
    let mut cmd = cargo();
    cmd.args(args)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut child = cmd.spawn().context("cannot start cargo")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut artifacts = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || !keep(&msg) {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let package_dir = msg["manifest_path"]
            .as_str()
            .map(Path::new)
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .map_or_else(|| "unknown".to_string(), |d| d.to_string_lossy().into_owned());
        artifacts.push(Artifact {
            kind: msg["target"]["kind"][0].as_str().unwrap_or("bin").to_string(),
            name: msg["target"]["name"].as_str().unwrap_or("unnamed").to_string(),
            package_dir,
            path: PathBuf::from(exe),
        });
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(artifacts)
}

/// Whether l4-experiments defines a binary called `l4`.
fn has_l4_binary() -> Result<bool> {
    let out = cargo()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("cannot run cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let meta: Value = serde_json::from_slice(&out.stdout)?;
    let packages = meta["packages"].as_array().cloned().unwrap_or_default();
    Ok(packages.iter().filter(|p| p["name"] == "l4-experiments").any(|p| {
        p["targets"].as_array().is_some_and(|targets| {
            targets
                .iter()
                .any(|t| t["name"] == "l4" && t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin")))
        })
    }))
}

fn copy_executable(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    // Stripping only saves space; a missing `strip` is not an error.
    match Command::new("strip").arg(to).status() {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("xtask: warning: strip {} failed ({s})", to.display()),
        Err(e) => eprintln!("xtask: warning: cannot run strip: {e}"),
    }
    Ok(())
}

/// `cargo xtask gpu-pack [--exclude PACKAGE]...`.
/// The tarball the packed executables travel in (`run.sh` unpacks it).
const PACKED_EXECUTABLES: &str = "executables.tar.gz";

pub fn command(args: &[OsString]) -> Result<ExitCode> {
    let mut excluded = vec!["xtask".to_string()];
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = it.next() {
        match (arg.as_str(), it.next()) {
            ("--exclude", Some(package)) => excluded.push(package),
            _ => bail!("usage: cargo xtask gpu-pack [--exclude PACKAGE]..."),
        }
    }
    let exclude_args: Vec<&str> = excluded.iter().flat_map(|p| ["--exclude", p.as_str()]).collect();
    let root = workspace_root();
    let out_dir = root.join("gpu-bin");

    let is_test = |m: &Value| m["profile"]["test"] == true;
    let test_args = [&["test", "--release", "--workspace", "--no-run"][..], &exclude_args].concat();
    let mut artifacts = built_executables(&test_args, is_test)?;
    let is_bench = |m: &Value| {
        m["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "bench"))
    };
    let bench_args = [&["bench", "--workspace", "--no-run"][..], &exclude_args].concat();
    artifacts.extend(built_executables(&bench_args, is_bench)?);
    let l4 = if excluded.iter().any(|p| p == "l4-experiments") {
        None
    } else if has_l4_binary()? {
        let bins = built_executables(
            &["build", "--release", "--package", "l4-experiments", "--bin", "l4"],
            |m| m["target"]["name"] == "l4",
        )?;
        bins.into_iter().next().map(|a| a.path)
    } else {
        eprintln!("xtask: l4-experiments has no `l4` binary yet; not packing it");
        None
    };

    // Only now, with everything built, replace the previous bundle.
    if out_dir.exists() {
        std::fs::remove_dir_all(&out_dir).with_context(|| format!("cannot remove {}", out_dir.display()))?;
    }
    std::fs::create_dir_all(&out_dir)?;
    let mut packed: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (a, file) in artifacts.iter().zip(file_names(&artifacts)) {
        if let Some(previous) = packed.get(&file) {
            if previous != &a.path {
                bail!(
                    "two executables would both be gpu-bin/{file}: {} and {}",
                    previous.display(),
                    a.path.display()
                );
            }
            continue;
        }
        copy_executable(&a.path, &out_dir.join(&file))?;
        packed.insert(file, a.path.clone());
    }
    if let Some(l4) = &l4 {
        copy_executable(l4, &out_dir.join("l4"))?;
        packed.insert("l4".into(), l4.clone());
    }
    // The executables travel as one gzip'd tarball (about a third of their size: the carry to
    // the GPU machine is capped at 64 MiB); run.sh unpacks it next to itself before anything else.
    let names: Vec<&String> = packed.keys().collect();
    let status = Command::new("tar")
        .arg("-czf")
        .arg(PACKED_EXECUTABLES)
        .args(&names)
        .current_dir(&out_dir)
        .status()
        .context("cannot run tar to compress the executables")?;
    if !status.success() {
        bail!(
            "tar failed ({status}) compressing the executables in {}",
            out_dir.display()
        );
    }
    for name in &names {
        std::fs::remove_file(out_dir.join(name))?;
    }
    let run_sh = out_dir.join("run.sh");
    std::fs::write(&run_sh, RUN_SH)?;
    set_executable(&run_sh)?;
    for tool in PACKED_TOOLS {
        let from = root.join("tools").join(tool);
        let to = out_dir.join(tool);
        std::fs::copy(&from, &to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }

    let mut total = 0u64;
    for entry in std::fs::read_dir(&out_dir)? {
        let entry = entry?;
        let size = entry.metadata()?.len();
        total += size;
        eprintln!("  {:>10}  gpu-bin/{}", size, entry.file_name().to_string_lossy());
    }
    println!(
        "gpu-bin/: {} executables (in {PACKED_EXECUTABLES}) + run.sh + {} scripts, {:.1} MB in total. On the GPU machine, from the repo root: bash gpu-bin/run.sh",
        packed.len(),
        PACKED_TOOLS.len(),
        total as f64 / 1e6
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(unix)]
fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

#[cfg(not(unix))]
fn set_executable(_: &Path) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(kind: &str, package_dir: &str, name: &str, path: &str) -> Artifact {
        Artifact {
            kind: kind.into(),
            name: name.into(),
            package_dir: package_dir.into(),
            path: PathBuf::from(path),
        }
    }

    #[test]
    fn shared_target_names_are_qualified_by_package_folder() {
        let artifacts = [
            artifact("test", "core", "fp8", "/t/fp8-1"),
            artifact("lib", "core", "l4_core", "/t/l4_core-1"),
            artifact("test", "model", "fp8", "/t/fp8-2"),
            // The same executable reported twice keeps its short name.
            artifact("bench", "benches", "kernels", "/t/kernels-1"),
            artifact("bench", "benches", "kernels", "/t/kernels-1"),
        ];
        assert_eq!(
            file_names(&artifacts),
            [
                "test-core-fp8",
                "lib-l4_core",
                "test-model-fp8",
                "bench-kernels",
                "bench-kernels"
            ]
        );
    }
}
