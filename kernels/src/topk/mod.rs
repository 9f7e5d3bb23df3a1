//! `topk`: the `k` largest entries of the last dimension, sorted descending, with their indices.
//!
//! `x [.., n] -> (values [.., k] in x's dtype, indices [.., k] I64)`. The ranking is l4-core's
//! (docs/numerics.md): NaN above +∞ (NaNs come first, in index order), −0 equal to +0, and equal
//! values keep index order (the lower index first). Values are copied, not converted, so both
//! paths agree bit for bit. Needs rank ≥ 1 and `1 ≤ k ≤ n`.
//!
//! Devices: the CPU path is l4-core's `Tensor::topk` ([`reference`]; any non-bool dtype, any
//! k); the CUDA path launches `topk.cu` ([`cuda`]): f32, f16 or bf16, `k ≤ 32`, a contiguous
//! `x`, one warp per row. Anything else on CUDA is an error saying so.

pub mod cuda;
pub mod reference;
#[cfg(test)]
mod tests;

use l4_core::{Device, Result, Tensor};

/// The `k` largest entries of `x`'s last dimension (sorted descending, ties to the lower index,
/// NaN first) and their indices (I64). Errors: rank 0, `k` outside `1..=n`; on CUDA also a
/// dtype other than f32/f16/bf16, `k > 32` or a strided `x`.
pub fn topk(x: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    match x.device() {
        Device::Cpu => reference::topk(x, k),
        Device::Cuda(_) => cuda::topk(x, k),
    }
}
