//! `cast`: a tensor converted to another float dtype, on any device.
//!
//! Dtypes: f32, f16, bf16, f8e4m3 (e4m3fn) and f8e5m2, in any of the 20 ordered pairs; casting
//! to the tensor's own dtype returns the tensor itself (a cheap clone sharing storage), like
//! `Tensor::to_dtype`. Other dtypes are [`l4_core::Error::DTypeMismatch`] on every device.
//!
//! Shapes: the output has `x`'s shape; `x` may be any strided view; the output is a new
//! contiguous tensor on `x`'s device.
//!
//! Numerics (docs/numerics.md): the value is widened exactly and rounded once into the
//! destination, to nearest with ties to even; FP8 destinations saturate (finite overflow and
//! ±∞ become ±max: 448 for e4m3, 57344 for e5m2) and keep NaN a NaN. The CPU path is
//! [`reference::cast`] (`Tensor::to_dtype`); the CUDA path ([`cuda::cast`], `cast.cu`) uses the
//! hardware's `cvt` instructions and agrees with it bit for bit on every non-NaN value (NaN
//! payloads may differ).

pub mod cuda;
pub mod reference;
#[cfg(test)]
mod tests;

use l4_core::{DType, Device, Result, Tensor};

const OP: &str = "cast";

/// The dtypes [`cast`] converts between.
pub const FLOAT_DTYPES: [DType; 5] = [DType::F32, DType::F16, DType::BF16, DType::F8E4M3, DType::F8E5M2];

/// `x` converted to `dtype`. Errors when either dtype is not a float dtype.
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    cuda::check_float(x.dtype())?;
    cuda::check_float(dtype)?;
    if dtype == x.dtype() {
        return Ok(x.clone());
    }
    match x.device() {
        Device::Cpu => reference::cast(x, dtype),
        Device::Cuda(_) => cuda::cast(x, dtype),
    }
}
