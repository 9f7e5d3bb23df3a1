//! The ops the model is written in, on every device: each call dispatches on the operands'
//! device to the CPU reference or the CUDA kernel of its folder.
//!
//! These are the per-kernel entry points (`matmul::matmul`, `norm::rms_norm`...) under the
//! names a model reads best, with one addition: every op here accepts any strided view. The
//! CUDA launchers of norm, softmax, rope and the gathers need contiguous data, so their inputs
//! go through [`contiguous`] first, which is free for a tensor that is already contiguous.
//! Numerics are exactly those of the underlying op (see each folder's module docs); nothing is
//! promoted or converted implicitly.

use l4_core::{DType, Result, Tensor};

use crate::elementwise::{BinaryOp, UnaryOp, binary, unary};

pub use crate::gather::contiguous;

/// `a [.., m, k] · b [.., k, n] -> [.., m, n]` (cuBLASLt on CUDA); see [`crate::matmul`].
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    crate::matmul::matmul(a, b)
}

/// `a + b` with broadcasting.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Add, a, b)
}

/// `a − b` with broadcasting.
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Sub, a, b)
}

/// `a · b` with broadcasting.
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Mul, a, b)
}

/// `x · σ(x)`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    unary(UnaryOp::Silu, x)
}

/// Exact (erf) GELU, `0.5·x·(1 + erf(x/√2))`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    unary(UnaryOp::Gelu, x)
}

/// `x · factor`, the factor rounded to f32 first.
pub fn scale(x: &Tensor, factor: f64) -> Result<Tensor> {
    unary(UnaryOp::Scale(factor), x)
}

/// RMS norm over the last dimension, with an optional weight `[d]`.
pub fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let weight = weight.map(contiguous).transpose()?;
    crate::norm::rms_norm(&contiguous(x)?, weight.as_ref(), eps)
}

/// Layer norm over the last dimension (biased two-pass variance), with an optional weight and
/// bias `[d]`.
pub fn layer_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let weight = weight.map(contiguous).transpose()?;
    let bias = bias.map(contiguous).transpose()?;
    crate::norm::layer_norm(&contiguous(x)?, weight.as_ref(), bias.as_ref(), eps)
}

/// Softmax over the last dimension.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let last = x.rank().saturating_sub(1);
    crate::softmax::softmax(&contiguous(x)?, last)
}

/// Adjacent-pair RoPE of `x [b, t, heads, dh]` whose token `i` sits at position `start + i`.
pub fn rope(x: &Tensor, inv_freq: &[f32], start: usize) -> Result<Tensor> {
    crate::rope::apply(&contiguous(x)?, inv_freq, start)
}

/// `table [v, d]` rows picked by `ids [..]` → `[.., d]`.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    crate::gather::embedding(&contiguous(table)?, ids)
}

/// Entries `indices [k]` of dimension `dim` of `x`.
pub fn index_select(x: &Tensor, dim: usize, indices: &Tensor) -> Result<Tensor> {
    crate::gather::index_select(&contiguous(x)?, dim, indices)
}

/// The parts one after the other along `dim`.
pub fn cat(parts: &[&Tensor], dim: usize) -> Result<Tensor> {
    let owned = parts.iter().map(|t| contiguous(t)).collect::<Result<Vec<_>>>()?;
    let refs: Vec<&Tensor> = owned.iter().collect();
    crate::gather::cat(&refs, dim)
}

/// `x` converted to another float dtype (itself when the dtype is already `dtype`).
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    crate::cast::cast(x, dtype)
}
