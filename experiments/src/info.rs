//! `l4 info`: what this machine offers l4lab (devices, NVRTC) and which presets are built in.

use std::fmt::Write;

use l4_core::cuda;
use l4_model::PRESETS;

/// A human-readable report of the devices, the CUDA libraries found and the built-in presets.
pub fn report() -> String {
    let mut out = String::new();
    let _ = writeln!(out, "l4lab {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(out, "\ndevices:");
    let _ = writeln!(out, "  cpu: {} threads", std::thread::available_parallelism().map_or(1, |n| n.get()));
    match cuda::device_count() {
        Ok(0) => {
            let _ = writeln!(out, "  cuda: driver found, no device");
        }
        Ok(n) => {
            for ordinal in 0..n {
                match cuda::backend(ordinal) {
                    Ok(backend) => {
                        let info = backend.info();
                        let (major, minor) = info.compute_capability;
                        let _ = writeln!(
                            out,
                            "  cuda:{ordinal}: {} (sm_{major}{minor}, {} SMs, {:.1} GiB)",
                            info.name,
                            info.sm_count,
                            info.total_memory as f64 / (1u64 << 30) as f64
                        );
                    }
                    Err(e) => {
                        let _ = writeln!(out, "  cuda:{ordinal}: unusable: {e}");
                    }
                }
            }
        }
        Err(e) => {
            let _ = writeln!(out, "  cuda: not available ({e})");
        }
    }
    let _ = writeln!(out, "\nkernel compiler:");
    let nvrtc = if cuda::nvrtc_present() { "libnvrtc found" } else { "libnvrtc not found on the loader path" };
    let _ = writeln!(out, "  nvrtc: {nvrtc}");
    let _ = writeln!(out, "\npresets:");
    for preset in PRESETS {
        let (total, active) = preset.spec().param_counts();
        let _ = writeln!(
            out,
            "  {:<26} {:>8.1}B total {:>7.1}B active  {}",
            preset.name,
            total as f64 / 1e9,
            active as f64 / 1e9,
            preset.description
        );
    }
    out
}
