//! `vector_add`: `out = a + b`, elementwise, for f32 and bf16.
//!
//! Shapes: `a`, `b` and `out` all have the same shape (no broadcasting). Dtypes: f32 or bf16,
//! the same for both inputs; bf16 is added in f32 and rounded once. Devices: both inputs on the
//! same device; the CPU path is [`reference::vector_add`], the CUDA path launches
//! `vector_add.cu` ([`cuda::vector_add`]) and needs contiguous inputs.
//!
//! The kernel is the smallest one in l4lab and exercises the whole pipeline: registry, NVRTC,
//! module cache, launch and bit-exact comparison with the reference.

pub mod cuda;
pub mod reference;
#[cfg(test)]
mod tests;

use l4_core::{DType, Device, Error, Result, Tensor};

const OP: &str = "vector_add";

/// `a + b` elementwise. Errors when the shapes, dtypes or devices differ, or the dtype is not
/// f32 or bf16.
pub fn vector_add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return Err(Error::ShapeMismatch {
            op: OP,
            lhs: a.shape().to_vec(),
            rhs: b.shape().to_vec(),
        });
    }
    if !matches!(a.dtype(), DType::F32 | DType::BF16) {
        return Err(Error::DTypeMismatch {
            op: OP,
            got: a.dtype(),
            expected: None,
        });
    }
    if a.dtype() != b.dtype() {
        return Err(Error::DTypeMismatch {
            op: OP,
            got: b.dtype(),
            expected: Some(a.dtype()),
        });
    }
    if a.device() != b.device() {
        return Err(Error::DeviceMismatch {
            op: OP,
            lhs: a.device(),
            rhs: b.device(),
        });
    }
    match a.device() {
        Device::Cpu => reference::vector_add(a, b),
        Device::Cuda(_) => cuda::vector_add(a, b),
    }
}
