//! The GPU memory a plan is checked against, and the parsers of `l4 plan`'s numeric flags.

use anyhow::{Result, anyhow, bail};

/// Bytes in a GiB.
pub const GIB: u64 = 1 << 30;

/// A memory budget with the name it is shown under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuMemory {
    /// `h100 (80 GiB)`, `--gpu-memory 24 GiB`, or the CUDA device's name.
    pub name: String,
    /// The budget in bytes.
    pub bytes: u64,
}

/// Cards `--gpu` names, with their marketed capacity (80 GB, 141 GB...), read as GiB: HBM is
/// sized in binary units, and the driver reports a little less than this.
pub const GPUS: &[(&str, u64)] = &[("h100", 80), ("h200", 141), ("a100-80", 80), ("a100-40", 40)];

impl GpuMemory {
    /// `--gpu NAME`: a card of [`GPUS`], or `cuda` for the total memory of CUDA device 0.
    pub fn named(name: &str) -> Result<GpuMemory> {
        if name == "cuda" {
            let backend = l4_core::cuda::backend(0).map_err(|e| anyhow!("--gpu cuda: no usable CUDA device: {e}"))?;
            let info = backend.info();
            return Ok(GpuMemory {
                name: format!("cuda:0, {}", info.name),
                bytes: info.total_memory as u64,
            });
        }
        let known: Vec<&str> = GPUS.iter().map(|(n, _)| *n).chain(["cuda"]).collect();
        let &(card, gib) = GPUS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .ok_or_else(|| anyhow!("--gpu: unknown card {name:?}; known: {}", known.join(", ")))?;
        Ok(GpuMemory {
            name: format!("{card} ({gib} GiB)"),
            bytes: gib * GIB,
        })
    }

    /// `--gpu-memory GIB`.
    pub fn gib(gib: f64) -> Result<GpuMemory> {
        if !(gib.is_finite() && gib > 0.0) {
            bail!("--gpu-memory must be a positive number of GiB, got {gib}");
        }
        Ok(GpuMemory {
            name: format!("{gib} GiB"),
            bytes: (gib * GIB as f64).round() as u64,
        })
    }
}

/// Parses `--gpu-memory`: a positive number of GiB.
pub fn parse_gib(text: &str) -> Result<f64> {
    let gib: f64 = text
        .trim()
        .parse()
        .map_err(|_| anyhow!("must be a positive number of GiB, got {text:?}"))?;
    if !(gib.is_finite() && gib > 0.0) {
        bail!("must be a positive number of GiB, got {text:?}");
    }
    Ok(gib)
}

/// Parses a token count: digits (`_` allowed between them), optionally with a binary suffix,
/// `K` = 1024 or `M` = 1024², as context lengths are usually quoted (Scout's "10M" is
/// 10 485 760 positions). Zero is rejected.
pub fn parse_tokens(text: &str) -> Result<u64> {
    let trimmed = text.trim();
    let (digits, unit) = match trimmed.char_indices().last() {
        Some((i, 'k' | 'K')) => (&trimmed[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&trimmed[..i], 1u64 << 20),
        _ => (trimmed, 1),
    };
    let digits = digits.replace('_', "");
    let bad = || anyhow!("must be a whole number of tokens such as 8192, 8K or 10M, got {text:?}");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let tokens = digits
        .parse::<u64>()
        .map_err(|_| bad())?
        .checked_mul(unit)
        .ok_or_else(bad)?;
    if tokens == 0 {
        bail!("must be at least 1 token, got {text:?}");
    }
    Ok(tokens)
}

/// `n` bytes in GiB with two decimals.
pub fn gib_text(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_counts_take_binary_suffixes() {
        assert_eq!(parse_tokens("8192").unwrap(), 8192);
        assert_eq!(parse_tokens("8K").unwrap(), 8 * 1024);
        assert_eq!(parse_tokens("1m").unwrap(), 1_048_576);
        assert_eq!(parse_tokens("10M").unwrap(), 10_485_760);
        assert_eq!(parse_tokens("1_000_000").unwrap(), 1_000_000);
        for bad in ["0", "", "K", "-5", "1.5M", "ten", "99999999999999999999"] {
            assert!(parse_tokens(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_budgets_are_positive() {
        assert_eq!(parse_gib("24").unwrap(), 24.0);
        for bad in ["0", "-5", "nan", "inf", "lots"] {
            assert!(parse_gib(bad).is_err(), "{bad}");
        }
        assert_eq!(GpuMemory::named("H100").unwrap().bytes, 80 * GIB);
        assert_eq!(GpuMemory::gib(0.5).unwrap().bytes, GIB / 2);
        let err = GpuMemory::named("h900").unwrap_err().to_string();
        assert!(err.contains("--gpu") && err.contains("h200"), "{err}");
        assert!(GpuMemory::gib(-1.0).unwrap_err().to_string().contains("--gpu-memory"));
    }
}
