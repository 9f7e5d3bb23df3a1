//! The kernel compile check behind `cargo xtask check-kernels` (binary `check-kernels`).
//!
//! For every registered source and every architecture it declares: compile with NVRTC to a
//! CUBIN with spills as errors, write `<kernel>.<arch>.{cubin,log,sass}` to an output folder,
//! disassemble with `nvdisasm -c`, and compare the tensor-core class found with the registry's
//! expectation.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::nvrtc::{CompiledKernel, FunctionStats, compile_cubin, parse_ptxas_log};
use crate::sass::{SassSummary, disassemble, summarize};
use crate::{KernelError, KernelSource, TensorCoreClass};

/// The architecture the summary line counts.
pub const PRIMARY_ARCH: &str = "sm_90a";

/// How to run the check.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Where CUBINs, logs and disassemblies go (created if missing).
    pub out_dir: PathBuf,
    /// The nvdisasm to run; `None` skips the SASS check (reported as a problem).
    pub nvdisasm: Option<PathBuf>,
}

/// The outcome for one (kernel, architecture).
#[derive(Debug)]
pub struct CheckRow {
    /// The kernel's registry name.
    pub kernel: &'static str,
    /// The architecture.
    pub arch: String,
    /// What the registry expects in the SASS.
    pub expected: TensorCoreClass,
    /// The compiled kernel, or the compile error.
    pub compiled: Result<CompiledKernel, KernelError>,
    /// The SASS summary, when disassembly ran.
    pub sass: Option<SassSummary>,
    /// Everything that makes this row fail, one sentence each.
    pub problems: Vec<String>,
}

impl CheckRow {
    /// Per-function stats from the ptxas log, also when the compile failed (the spill gate
    /// fails it after ptxas reported the spill).
    pub fn functions(&self) -> Vec<FunctionStats> {
        match &self.compiled {
            Ok(c) => c.functions.clone(),
            Err(KernelError::Compile { log, .. }) => parse_ptxas_log(log),
            Err(_) => Vec::new(),
        }
    }

    /// Functions that spilled.
    pub fn spilled_functions(&self) -> usize {
        self.functions().iter().filter(|f| f.spill_bytes() > 0).count()
    }

    /// Whether the row passed.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks one kernel for one architecture.
pub fn check_kernel(kernel: &KernelSource, arch: &str, options: &CheckOptions) -> CheckRow {
    let mut row = CheckRow {
        kernel: kernel.name,
        arch: arch.to_string(),
        expected: kernel.tensor_cores,
        compiled: compile_cubin(kernel, arch, &[]),
        sass: None,
        problems: Vec::new(),
    };
    // `<kernel>.<arch>.<ext>`, e.g. vector_add.sm_90a.cubin.
    let output = |ext: &str| options.out_dir.join(format!("{}.{arch}.{ext}", kernel.name));
    let log = match &row.compiled {
        Ok(c) => c.log.clone(),
        Err(KernelError::Compile { log, .. }) => log.clone(),
        Err(_) => String::new(),
    };
    if let Err(e) = std::fs::create_dir_all(&options.out_dir).and_then(|_| std::fs::write(output("log"), &log)) {
        row.problems
            .push(format!("cannot write to {}: {e}", options.out_dir.display()));
    }
    let compiled = match &row.compiled {
        Ok(c) => c,
        Err(e) => {
            row.problems.push(e.to_string());
            return row;
        }
    };
    if compiled.spill_bytes() > 0 {
        row.problems
            .push(format!("{} bytes of register spills", compiled.spill_bytes()));
    }
    let cubin_path = output("cubin");
    if let Err(e) = std::fs::write(&cubin_path, &compiled.cubin) {
        row.problems.push(format!("cannot write {}: {e}", cubin_path.display()));
        return row;
    }
    let Some(nvdisasm) = &options.nvdisasm else {
        row.problems
            .push("nvdisasm not found: the tensor-core class was not checked".into());
        return row;
    };
    match disassemble(nvdisasm, &cubin_path) {
        Ok(text) => {
            let _ = std::fs::write(output("sass"), &text);
            let sass = summarize(&text);
            if sass.instructions == 0 {
                row.problems.push("nvdisasm printed no instructions".into());
            }
            if sass.class() != kernel.tensor_cores {
                row.problems.push(format!(
                    "SASS contains tensor-core class {} but the registry expects {}",
                    sass.class(),
                    kernel.tensor_cores
                ));
            }
            row.sass = Some(sass);
        }
        Err(e) => row.problems.push(e),
    }
    row
}

/// Checks every kernel for every architecture it declares.
pub fn check_all(kernels: &[KernelSource], options: &CheckOptions) -> Vec<CheckRow> {
    kernels
        .iter()
        .flat_map(|k| k.archs.iter().map(move |arch| (k, *arch)))
        .map(|(k, arch)| check_kernel(k, arch, options))
        .collect()
}

/// The report table, one row per (kernel, architecture), with per-function lines when
/// `verbose`.
pub fn render_table(rows: &[CheckRow], verbose: bool) -> String {
    let width = rows
        .iter()
        .map(|r| r.kernel.len())
        .max()
        .unwrap_or(0)
        .max("kernel".len());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:<8} {:>5} {:>7} {:>9} {:>7}  {:<12} {:<8}  status",
        "kernel", "arch", "regs", "spill B", "smem B", "LDL/STL", "tensor cores", "expected"
    );
    for row in rows {
        let status = if row.ok() { "ok" } else { "FAIL" };
        let functions = row.functions();
        let spills: u64 = functions.iter().map(FunctionStats::spill_bytes).sum();
        let (regs, smem) = match &row.compiled {
            Ok(c) => (c.max_registers().to_string(), c.max_shared_bytes().to_string()),
            Err(_) => ("-".into(), "-".into()),
        };
        let (class, local) = match &row.sass {
            Some(s) => (s.class().to_string(), s.local_memory_ops.to_string()),
            None => ("?".into(), "?".into()),
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:<8} {:>5} {:>7} {:>9} {:>7}  {:<12} {:<8}  {status}",
            row.kernel, row.arch, regs, spills, smem, local, class, row.expected
        );
        if verbose {
            for f in &functions {
                let _ = writeln!(
                    out,
                    "{:<width$}    {}: {} registers, {} barriers, {} B smem, {} B stack, {} B spill stores, {} B spill loads",
                    "",
                    f.name,
                    f.registers,
                    f.barriers,
                    f.shared_bytes,
                    f.stack_bytes,
                    f.spill_store_bytes,
                    f.spill_load_bytes
                );
            }
        }
    }
    out
}

/// `N kernels compiled for sm_90a, S spills`: N kernels whose sm_90a compile succeeded, S
/// functions that spilled in any architecture.
pub fn summary_line(rows: &[CheckRow]) -> String {
    let compiled = rows
        .iter()
        .filter(|r| r.arch == PRIMARY_ARCH && r.compiled.is_ok())
        .count();
    let spills: usize = rows.iter().map(CheckRow::spilled_functions).sum();
    format!("{compiled} kernels compiled for {PRIMARY_ARCH}, {spills} spills")
}

/// Kernel folders missing part of the standard file set (`mod.rs`, `reference.rs`, `cuda.rs`,
/// `tests.rs` beside the `.cu`), relative to the repository root `root`.
pub fn file_set_gaps(kernels: &[KernelSource], root: &Path) -> Vec<String> {
    let mut gaps = Vec::new();
    for k in kernels {
        let cu = root.join(k.path);
        let Some(dir) = cu.parent() else { continue };
        for file in ["mod.rs", "reference.rs", "cuda.rs", "tests.rs"] {
            if !dir.join(file).is_file() {
                gaps.push(format!("{}: missing {}", k.name, dir.join(file).display()));
            }
        }
        if !cu.is_file() {
            gaps.push(format!("{}: missing {}", k.name, cu.display()));
        }
    }
    gaps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{VECTOR_ADD, sass::find_nvdisasm, testing::nvrtc_or_skip};

    /// 64 values live across the whole loop, under launch bounds that allow 32 registers.
    const SPILLER: KernelSource = KernelSource {
        name: "spiller",
        path: "kernels/src/spiller/spiller.cu",
        source: r#"
extern "C" __global__ void __launch_bounds__(1024, 2) spiller(const float* in, float* out) {
    float v[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) v[i] = in[threadIdx.x + i * 1024];
    float acc = 0.0f;
#pragma unroll
    for (int i = 0; i < 64; ++i)
#pragma unroll
        for (int j = 0; j < 64; ++j) acc += v[i] * v[(i * 7 + j) % 64];
    out[threadIdx.x] = acc;
}
"#,
        archs: crate::DEFAULT_ARCHS,
        tensor_cores: TensorCoreClass::None,
    };

    fn options(test: &str) -> CheckOptions {
        CheckOptions {
            out_dir: std::env::temp_dir().join(format!("l4-check-{test}-{}", std::process::id())),
            nvdisasm: find_nvdisasm(),
        }
    }

    #[test]
    fn spills_and_class_mismatches_fail_the_check() {
        if !nvrtc_or_skip("spills_and_class_mismatches_fail_the_check") {
            return;
        }
        let options = options("fail");
        let wrong_class = KernelSource {
            tensor_cores: TensorCoreClass::Qgmma,
            ..VECTOR_ADD
        };
        let rows = check_all(&[VECTOR_ADD, wrong_class, SPILLER], &options);
        assert_eq!(rows.len(), 3);
        if options.nvdisasm.is_some() {
            assert!(rows[0].ok(), "{:?}", rows[0].problems);
            assert!(
                rows[1].problems.iter().any(|p| p.contains("expects QGMMA")),
                "{:?}",
                rows[1].problems
            );
        }
        assert!(
            !rows[2].ok() && rows[2].compiled.is_err(),
            "the spill gate must fail the compile"
        );
        assert_eq!(rows[2].spilled_functions(), 1);
        assert_eq!(summary_line(&rows), "2 kernels compiled for sm_90a, 1 spills");
        let table = render_table(&rows, true);
        assert!(table.contains("spiller") && table.contains("FAIL"), "{table}");
        assert!(options.out_dir.join("vector_add.sm_90a.cubin").is_file());
        std::fs::remove_dir_all(&options.out_dir).unwrap();
    }

    #[test]
    fn the_registered_file_sets_are_complete() {
        // `cargo test` runs in kernels/, the packed GPU binaries in the repository root; the
        // build machine's CARGO_MANIFEST_DIR does not exist on the GPU machine.
        let Some(root) = [Path::new("."), Path::new("..")]
            .into_iter()
            .find(|r| r.join("kernels/src/lib.rs").is_file())
        else {
            eprintln!("skipping the_registered_file_sets_are_complete: not run from the repository");
            return;
        };
        assert_eq!(file_set_gaps(crate::KERNELS, root), Vec::<String>::new());
        assert_eq!(file_set_gaps(&[SPILLER], root).len(), 5);
    }
}
