//! `norm`: RMS norm and layer norm over the last dimension, on the device the input lives on.
//!
//! * [`rms_norm`]: `y = x / √(mean(x²) + eps) · w`;
//! * [`layer_norm`]: `y = (x − μ) / √(σ² + eps) · w + b` with the biased two-pass variance.
//!
//! Shapes: `x [.., d]` (rank ≥ 1), optional `weight [d]` and `bias [d]`; the output has `x`'s
//! shape and dtype. Dtypes: float, the same for every operand; the CPU takes every float dtype,
//! CUDA f32, f16 and bf16. Every step runs in f32 and the result is rounded once into the dtype.
//! `eps` must be finite and ≥ 0. Devices: every operand on one device; the CPU path is
//! [`reference`] (the `l4_core` tensor methods, which are the reference), the CUDA path launches
//! `norm.cu` ([`cuda`]) and needs contiguous operands (a strided CUDA view is an error; make it
//! contiguous on the host first).

pub mod cuda;
pub mod reference;
#[cfg(test)]
mod tests;

use l4_core::{Device, Error, Result, Tensor};

const RMS_OP: &str = "rms_norm";
const LAYER_OP: &str = "layer_norm";

/// RMS norm over the last dimension: `x · (1/√(Σx²/d + eps)) · w`. Errors on a non-float dtype,
/// rank 0, a bad `eps`, or a weight of another shape than `[d]`, dtype or device.
pub fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    check_operands(RMS_OP, x, &[weight], eps)?;
    match x.device() {
        Device::Cpu => reference::rms_norm(x, weight, eps),
        Device::Cuda(_) => cuda::rms_norm(x, weight, eps),
    }
}

/// Layer norm over the last dimension: `(x − μ) · (1/√(σ² + eps)) · w + b`, `μ = Σx/d`,
/// `σ² = Σ(x − μ)²/d`. Errors as [`rms_norm`], for the weight and the bias.
pub fn layer_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    check_operands(LAYER_OP, x, &[weight, bias], eps)?;
    match x.device() {
        Device::Cpu => reference::layer_norm(x, weight, bias, eps),
        Device::Cuda(_) => cuda::layer_norm(x, weight, bias, eps),
    }
}

/// The checks both devices share (the same errors the CPU methods give).
fn check_operands(op: &'static str, x: &Tensor, params: &[Option<&Tensor>], eps: f64) -> Result<()> {
    if !x.dtype().is_float() {
        return Err(Error::DTypeMismatch {
            op,
            got: x.dtype(),
            expected: None,
        });
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::invalid(op, format!("eps must be finite and >= 0, got {eps}")));
    }
    let Some(&d) = x.shape().last() else {
        return Err(Error::BadShape {
            op,
            shape: vec![],
            msg: "needs rank >= 1 (normalises the last dimension)".into(),
        });
    };
    for p in params.iter().flatten() {
        if p.device() != x.device() {
            return Err(Error::DeviceMismatch {
                op,
                lhs: x.device(),
                rhs: p.device(),
            });
        }
        if p.dtype() != x.dtype() {
            return Err(Error::DTypeMismatch {
                op,
                got: p.dtype(),
                expected: Some(x.dtype()),
            });
        }
        if p.shape() != [d] {
            return Err(Error::ShapeMismatch {
                op,
                lhs: x.shape().to_vec(),
                rhs: p.shape().to_vec(),
            });
        }
    }
    Ok(())
}
