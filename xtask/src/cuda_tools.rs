//! `cargo xtask cuda-tools`: NVRTC 13.0.88 and nvdisasm from PyPI, in a venv of their own.
//!
//! The pins match the GPU machine: torch 2.11.0 ships NVRTC 13.0.88, so register and spill
//! counts checked here are the ones that run there. nvdisasm exists on PyPI only from 13.2 on;
//! 13.5.37 reads 13.0 CUBINs. A marker file records what was installed, so a rerun that finds
//! everything in place starts no Python at all.
//!
//! `libnvrtc.so.13` 13.0 has no RPATH and dlopens `libnvrtc-builtins.so.13.0` by bare name, and
//! glibc reads `LD_LIBRARY_PATH` only at process start. The directory must therefore be on
//! `LD_LIBRARY_PATH` when the process that calls NVRTC starts: [`Tools::apply`] sets it on a
//! child command, and the printed `export` lines do it for a shell.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

use crate::{exit_code, run, target_dir};

/// The wheels, pinned.
pub const PINS: &[&str] = &[
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-nvdisasm==13.5.37",
];

const MARKER: &str = "l4lab-cuda-tools.txt";

/// An installed tool set.
#[derive(Debug)]
pub struct Tools {
    /// The venv.
    pub venv: PathBuf,
    /// `<site-packages>/nvidia/cu13`, holding `lib/`, `bin/` and `include/`.
    pub cu13: PathBuf,
}

impl Tools {
    /// The directory holding `libnvrtc.so.13` and its builtins.
    pub fn lib(&self) -> PathBuf {
        self.cu13.join("lib")
    }

    /// The directory holding `nvdisasm`.
    pub fn bin(&self) -> PathBuf {
        self.cu13.join("bin")
    }

    /// Whether the files the tools consist of are all there.
    fn complete(&self) -> bool {
        ["libnvrtc.so.13", "libnvrtc-builtins.so.13.0"]
            .iter()
            .all(|f| self.lib().join(f).is_file())
            && self.bin().join("nvdisasm").is_file()
    }

    /// `LD_LIBRARY_PATH` and `PATH` with the tools' directories prepended.
    pub fn env(&self) -> Result<Vec<(&'static str, OsString)>> {
        Ok(vec![
            (
                "LD_LIBRARY_PATH",
                prepend(&self.lib(), std::env::var_os("LD_LIBRARY_PATH"))?,
            ),
            ("PATH", prepend(&self.bin(), std::env::var_os("PATH"))?),
        ])
    }

    /// Sets [`Tools::env`] on a child command.
    pub fn apply<'c>(&self, cmd: &'c mut Command) -> Result<&'c mut Command> {
        Ok(cmd.envs(self.env()?))
    }
}

fn prepend(dir: &Path, existing: Option<OsString>) -> Result<OsString> {
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(existing.iter().flat_map(std::env::split_paths).filter(|d| d != dir));
    std::env::join_paths(dirs).context("a path contains ':'")
}

/// The venv directory: `$CUDA_TOOLS_VENV`, else `<target>/cuda-tools`.
pub fn venv_dir() -> PathBuf {
    std::env::var_os("CUDA_TOOLS_VENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("cuda-tools"))
}

/// Installs the tools if needed and returns where they are.
pub fn ensure() -> Result<Tools> {
    let venv = venv_dir();
    let marker = venv.join(MARKER);
    let pins = PINS.join(" ");
    if let Ok(text) = std::fs::read_to_string(&marker) {
        let mut lines = text.lines();
        if let (Some(installed), Some(cu13)) = (lines.next(), lines.next())
            && installed == pins
        {
            let tools = Tools {
                venv: venv.clone(),
                cu13: PathBuf::from(cu13),
            };
            if tools.complete() {
                return Ok(tools);
            }
        }
    }

    let python = venv.join("bin").join("python");
    if !python.is_file() {
        let base = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
        eprintln!("xtask: creating the CUDA tools venv in {}", venv.display());
        run(Command::new(&base)
            .args([OsStr::new("-m"), OsStr::new("venv")])
            .arg(&venv))
        .with_context(|| {
            format!(
                "cannot create a venv with {} (on Debian/Ubuntu: apt install python3-venv; or set \
                 CUDA_TOOLS_VENV to an existing venv)",
                base.to_string_lossy()
            )
        })?;
    }
    eprintln!("xtask: installing {pins} (about 90 MB on the first run)");
    run(Command::new(&python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(PINS))
    .context("pip install of the NVRTC wheels failed (is PyPI reachable?)")?;

    let out = Command::new(&python)
        .args([
            "-c",
            "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13'))",
        ])
        .output()
        .context("cannot run the venv's python")?;
    if !out.status.success() {
        bail!(
            "cannot locate nvidia/cu13 in {}: {}",
            venv.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cu13 = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let tools = Tools { venv, cu13 };
    if !tools.complete() {
        bail!(
            "the wheels installed, but libnvrtc.so.13, libnvrtc-builtins.so.13.0 or nvdisasm is missing under {}",
            tools.cu13.display()
        );
    }
    std::fs::write(&marker, format!("{pins}\n{}\n", tools.cu13.display()))
        .with_context(|| format!("cannot write {}", marker.display()))?;
    Ok(tools)
}

/// `cargo xtask cuda-tools [-- CMD ARGS...]`.
pub fn command(args: &[OsString]) -> Result<ExitCode> {
    let tools = ensure()?;
    match args.split_first() {
        None => {
            // Only the export lines go to stdout, so `eval "$(cargo xtask cuda-tools)"` works.
            eprintln!("xtask: NVRTC 13.0.88 and nvdisasm are in {}", tools.venv.display());
            let cu13 = tools.cu13.display();
            println!("export LD_LIBRARY_PATH=\"{cu13}/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}\"");
            println!("export PATH=\"{cu13}/bin:$PATH\"");
            println!("# Only for kernels that #include CUDA headers (l4lab's use none):");
            println!("# export CUDA_INCLUDE_DIRS=\"{cu13}/include\"");
            Ok(ExitCode::SUCCESS)
        }
        Some((dash, rest)) if dash == "--" && !rest.is_empty() => {
            let mut cmd = Command::new(&rest[0]);
            cmd.args(&rest[1..]);
            tools.apply(&mut cmd)?;
            let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
            Ok(exit_code(status))
        }
        _ => bail!("usage: cargo xtask cuda-tools [-- CMD ARGS...]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepend_puts_the_directory_first_once() {
        let joined = prepend(Path::new("/t/lib"), Some("/a:/t/lib:/b".into())).unwrap();
        assert_eq!(joined, OsString::from("/t/lib:/a:/b"));
        assert_eq!(prepend(Path::new("/t/lib"), None).unwrap(), OsString::from("/t/lib"));
    }
}
