//! Test helpers for kernel tests: skip or fail when NVRTC or a GPU is missing.
//!
//! * A GPU test runs when `l4_core::cuda::backend(0)` succeeds, skips otherwise, and fails
//!   instead of skipping when `L4_REQUIRE_GPU` is set (the GPU machine sets it).
//! * An NVRTC test runs when libnvrtc loads, skips otherwise, and fails instead of skipping when
//!   `CI` or `L4_REQUIRE_GPU` is set.

use std::sync::Arc;

use l4_core::cuda::CudaBackend;

/// Whether an environment flag is on: set, non-empty, and not `0`, `false` or `no`.
pub(crate) fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        let v = v.trim().to_ascii_lowercase();
        !v.is_empty() && v != "0" && v != "false" && v != "no"
    })
}

/// CUDA device 0, or `None` (after a note on stderr) when there is none and none is required.
pub(crate) fn gpu_or_skip(test: &str) -> Option<Arc<CudaBackend>> {
    match l4_core::cuda::backend(0) {
        Ok(backend) => Some(backend),
        Err(e) if env_flag("L4_REQUIRE_GPU") => panic!("{test}: L4_REQUIRE_GPU is set but there is no GPU: {e}"),
        Err(e) => {
            eprintln!("skipping {test}: no CUDA device ({e})");
            None
        }
    }
}

/// Whether NVRTC can be loaded; panics when it cannot but `CI` or `L4_REQUIRE_GPU` is set.
pub(crate) fn nvrtc_or_skip(test: &str) -> bool {
    if l4_core::cuda::nvrtc_present() {
        return true;
    }
    for flag in ["CI", "L4_REQUIRE_GPU"] {
        if env_flag(flag) {
            panic!(
                "{test}: {flag} is set but libnvrtc cannot be loaded; run `cargo xtask cuda-tools` and put \
                 its cu13/lib on LD_LIBRARY_PATH"
            );
        }
    }
    eprintln!("skipping {test}: libnvrtc not on the loader path");
    false
}

/// A GPU backend with NVRTC, or `None` when the test should skip.
pub(crate) fn gpu_with_nvrtc_or_skip(test: &str) -> Option<Arc<CudaBackend>> {
    let backend = gpu_or_skip(test)?;
    nvrtc_or_skip(test).then_some(backend)
}

/// Deterministic pseudo-random f32 values in [-scale, scale) (a 64-bit LCG; no seed plumbing
/// needed for a toy kernel's inputs).
pub(crate) fn lcg_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
            (2.0 * unit - 1.0) * scale
        })
        .collect()
}

/// The ptxas statistics of `function` in a compile's log, for register assertions.
///
/// `None` (with a note on stderr) when the log holds no `ptxas info` line at all: the NVRTC of
/// the CUDA 13.0 toolkit on the GPU machine was seen (2026-11-26) to leave them out for some
/// sources, while the identical-version wheel CI uses prints them. Spills stay gated either way:
/// `--warn-on-spills` with `--warning-as-error` fails the compile itself. A log that has ptxas
/// info but not for `function` is a real failure (the function is missing).
pub(crate) fn ptxas_stats<'a>(compiled: &'a crate::CompiledKernel, function: &str) -> Option<&'a crate::FunctionStats> {
    if !compiled.log.contains("ptxas info") {
        eprintln!(
            "note: {}: NVRTC's log has no ptxas statistics; register checks skipped",
            compiled.kernel
        );
        return None;
    }
    let stats = compiled.functions.iter().find(|f| f.name == function);
    Some(stats.unwrap_or_else(|| panic!("no ptxas stats for {function} in the log:\n{}", compiled.log)))
}

/// A fresh seed per run (from the clock), or `L4_TEST_SEED` to replay a failure.
pub(crate) fn fresh_seed() -> u64 {
    std::env::var("L4_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x5eed)
        })
}

/// SplitMix64: a tiny, good-enough generator for test inputs.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}
