//! `softmax`: `y_i = e^(x_i − m) / Σ_j e^(x_j − m)` along one dimension, `m` the slice maximum,
//! on the device the input lives on.
//!
//! Shapes: the output has the input's shape and dtype. Dtypes: float; the CPU takes every float
//! dtype, CUDA f32, f16 and bf16. Every step runs in f32 and the result is rounded once. A slice
//! holding NaN, or whose maximum is ±∞ (a fully masked row of −∞ included), is NaN throughout,
//! as in PyTorch (docs/numerics.md). Devices: the CPU path is [`reference`] (`l4_core`'s
//! `Tensor::softmax`, any `dim`, strided views welcome); the CUDA path launches `softmax.cu`
//! ([`cuda`]) for the last dimension of a contiguous tensor only: another `dim` or a strided view
//! is an error there.

pub mod cuda;
pub mod reference;
#[cfg(test)]
mod tests;

use l4_core::{Device, Error, Result, Tensor};

const OP: &str = "softmax";

/// Softmax along `dim`. Errors on a non-float dtype or `dim >= rank`; on CUDA also on a `dim`
/// other than the last, an unsupported dtype or a strided input.
pub fn softmax(x: &Tensor, dim: usize) -> Result<Tensor> {
    if !x.dtype().is_float() {
        return Err(Error::DTypeMismatch {
            op: OP,
            got: x.dtype(),
            expected: None,
        });
    }
    if dim >= x.rank() {
        return Err(Error::DimOutOfRange {
            op: OP,
            dim,
            rank: x.rank(),
        });
    }
    match x.device() {
        Device::Cpu => reference::softmax(x, dim),
        Device::Cuda(_) => cuda::softmax(x, dim),
    }
}
