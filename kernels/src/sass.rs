//! SASS inspection with `nvdisasm`: which tensor-core instruction family a CUBIN uses and
//! whether it touches local memory.
//!
//! `nvdisasm -c file.cubin` is run directly and its exit status checked (`cuobjdump -sass`
//! needs nvdisasm on PATH and exits 0 even when it cannot find it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::TensorCoreClass;

/// What the disassembly of one CUBIN contains.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SassSummary {
    /// Number of instructions.
    pub instructions: usize,
    /// Tensor-core instructions by opcode (`QGMMA`, `HGMMA`, `HMMA`, `IMMA`...).
    pub tensor_core_ops: BTreeMap<String, usize>,
    /// Local-memory loads and stores (`LDL`, `STL`): spills or stack arrays.
    pub local_memory_ops: usize,
}

impl SassSummary {
    /// The most specialised tensor-core family present.
    pub fn class(&self) -> TensorCoreClass {
        self.tensor_core_ops
            .keys()
            .map(|op| opcode_class(op))
            .max()
            .unwrap_or(TensorCoreClass::None)
    }
}

fn opcode_class(opcode: &str) -> TensorCoreClass {
    match opcode {
        "QGMMA" => TensorCoreClass::Qgmma,
        "HGMMA" => TensorCoreClass::Hgmma,
        "HMMA" => TensorCoreClass::Hmma,
        _ => TensorCoreClass::None,
    }
}

/// The opcode of one disassembly line (`/*0090*/ @P0 QGMMA.64x64x32.F32.E4M3.E4M3 R24, ... ;`
/// → `QGMMA`), or `None` for lines that hold no instruction.
pub fn opcode(line: &str) -> Option<&str> {
    let start = line.find("/*")?;
    let end = start + line[start..].find("*/")?;
    let address = &line[start + 2..end];
    if address.is_empty() || !address.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut tokens = line[end + 2..].split_whitespace().map(|t| t.trim_start_matches('{'));
    let mut token = tokens.next()?;
    if token.starts_with('@') {
        token = tokens.next()?;
    }
    let op = token.split('.').next()?;
    (!op.is_empty()
        && op
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
    .then_some(op)
}

/// Summarises `nvdisasm` output.
pub fn summarize(disassembly: &str) -> SassSummary {
    let mut summary = SassSummary::default();
    for op in disassembly.lines().filter_map(opcode) {
        summary.instructions += 1;
        match op {
            "QGMMA" | "HGMMA" | "IGMMA" | "BGMMA" | "HMMA" | "IMMA" | "BMMA" | "DMMA" => {
                *summary.tensor_core_ops.entry(op.to_string()).or_default() += 1;
            }
            "LDL" | "STL" => summary.local_memory_ops += 1,
            _ => {}
        }
    }
    summary
}

/// The nvdisasm to use: `$NVDISASM` if set, else the first `nvdisasm` on `PATH`.
pub fn find_nvdisasm() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVDISASM").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("nvdisasm"))
        .find(|p| p.is_file())
}

/// Runs `nvdisasm -c cubin` and returns its output; a failed run (non-zero exit status, or
/// nvdisasm missing) is an error carrying stderr.
pub fn disassemble(nvdisasm: &Path, cubin: &Path) -> Result<String, String> {
    let out = Command::new(nvdisasm)
        .arg("-c")
        .arg(cubin)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nvdisasm.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} -c {} failed ({}): {}",
            nvdisasm.display(),
            cubin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_instruction_lines() {
        let text = "\
        .text.gemm:
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0080*/                   WARPGROUP.ARRIVE ;
        /*0090*/                   QGMMA.64x64x32.F32.E4M3.E4M3 R24, gdesc[UR8], R24, UP0, gsb0 ;
        /*00a0*/              @!P0 HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*00b0*/                   STL [R1], R2 ;
        /*00c0*/                   EXIT ;
        /* 0x000fc00000000000 */
        ";
        let s = summarize(text);
        assert_eq!(s.instructions, 6);
        assert_eq!(s.tensor_core_ops.get("QGMMA"), Some(&1));
        assert_eq!(s.tensor_core_ops.get("HMMA"), Some(&1));
        assert_eq!(s.local_memory_ops, 1);
        assert_eq!(s.class(), TensorCoreClass::Qgmma);
        assert_eq!(summarize("/*0000*/ FADD R0, R1, R2 ;").class(), TensorCoreClass::None);
        assert_eq!(
            opcode("        /*0010*/ @P1 HGMMA.64x128x16.F32.BF16 R0, gdesc[UR4], RZ ;"),
            Some("HGMMA")
        );
    }
}
