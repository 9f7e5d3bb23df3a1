//! `random`: seeded normal random tensors made on the device they live on.
//!
//! `normal(shape, dtype, seed, std, device)` gives `N(0, std²)` values in f32, f16 or bf16.
//! Element `i` depends only on `(seed, i)` (a counter-based splitmix64 hash feeding one
//! Box–Muller step, see `random.cu`), so a CUDA device fills multi-gigabyte weights without the
//! host generating or copying anything, and the CPU makes the same values: bit for bit in the
//! uniform draws, within a few f32 ulps after `ln`, `sqrt` and `cos` (CUDA's `logf`/`cosf` are
//! not libm's), then rounded once into the dtype. `|value| ≤ 5.8·std` (24-bit uniforms).
//!
//! Devices: the CPU path is [`reference`] (rayon-parallel), the CUDA path launches `random.cu`
//! ([`cuda`]). Errors: another dtype, a negative or non-finite `std`.

pub mod cuda;
pub mod reference;
#[cfg(test)]
mod tests;

use l4_core::{DType, Device, Error, Result, Tensor};

const OP: &str = "random normal";

/// `N(0, std²)` values of `shape` in `dtype` (f32, f16 or bf16), seeded by `seed`, on `device`.
pub fn normal(shape: &[usize], dtype: DType, seed: u64, std: f64, device: Device) -> Result<Tensor> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(Error::DTypeMismatch {
            op: OP,
            got: dtype,
            expected: None,
        });
    }
    let std32 = std as f32;
    if !(std32.is_finite() && std32 >= 0.0) {
        return Err(Error::invalid(OP, format!("std must be finite and >= 0, got {std}")));
    }
    match device {
        Device::Cpu => reference::normal(shape, dtype, seed, std32),
        Device::Cuda(ordinal) => cuda::normal(shape, dtype, seed, std32, ordinal),
    }
}
