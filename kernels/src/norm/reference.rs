//! The CPU path of the norms, which is also their reference: `l4_core`'s `Tensor::rms_norm` and
//! `Tensor::layer_norm` (plain f32 loops in index order, rounded once; see
//! `core/src/ops/norm.rs`). Inputs may be strided views.

use l4_core::{Result, Tensor};

/// RMS norm on the host (`Tensor::rms_norm`).
pub fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    x.rms_norm(weight, eps)
}

/// Layer norm on the host (`Tensor::layer_norm`).
pub fn layer_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    x.layer_norm(weight, bias, eps)
}
