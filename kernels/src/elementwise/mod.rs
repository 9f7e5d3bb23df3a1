//! `elementwise`: unary maps `y = f(x)` and binary ops `y = a ∘ b` with NumPy broadcasting, on
//! any device.
//!
//! Shapes: a unary op keeps `x`'s shape; a binary op's output has the broadcast shape of `a` and
//! `b` (trailing dimensions aligned, a dimension of 1 stretches; anything else is
//! [`Error::ShapeMismatch`]). Inputs may be any strided views (transposed, narrowed, broadcast);
//! the output is a new contiguous tensor on the inputs' device.
//!
//! Dtypes: floats, the same for both operands of a binary op. Every element is computed in f32
//! and rounded once into the dtype (docs/numerics.md). The CPU path
//! ([`reference`](mod@reference)) is l4-core's own ops (`Tensor::add`, `Tensor::silu`...), which
//! accept every float dtype; the CUDA path ([`cuda`], `elementwise.cu`) takes f32, f16 and bf16
//! and reports FP8 as [`Error::DTypeMismatch`].
//!
//! CUDA numerics against the CPU: neg, sqrt, square, recip, affine, scale, add, sub, mul, div,
//! maximum and minimum are bit-exact (IEEE round-to-nearest steps in the CPU's order, no FMA
//! contraction); exp, tanh, sigmoid and silu agree within `Tolerance::elementwise(dtype)
//! .pairwise()`, gelu within `Tolerance::elementwise_conditioned(dtype, κ).pairwise()` (CUDA's
//! `expf`/`tanhf`/`erfcf` are not libm's; see `tests.rs` for the derivation).

pub mod cuda;
pub mod reference;
#[cfg(test)]
mod tests;

use l4_core::layout::broadcast_shape;
use l4_core::{Device, Error, Result, Tensor};

/// A unary elementwise op. Parameters are given in f64 and rounded to f32 first, as the CPU
/// ops do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    /// `−x`.
    Neg,
    /// `e^x`.
    Exp,
    /// `√x` (NaN for x < 0).
    Sqrt,
    /// SiLU `x·σ(x)`; −0 at −∞.
    Silu,
    /// Exact (erf) GELU `0.5·x·(1 + erf(x/√2))`, evaluated as `0.5·x·erfc(−x/√2)`; −0 at −∞.
    Gelu,
    /// Logistic sigmoid `1/(1 + e^−x)`, in the overflow-free form.
    Sigmoid,
    /// `tanh x`.
    Tanh,
    /// `x²`.
    Square,
    /// `1/x`.
    Recip,
    /// `x·mul + add`: a product and a sum, each rounded to f32 (never one FMA).
    Affine {
        /// The factor (rounded to f32).
        mul: f64,
        /// The offset (rounded to f32).
        add: f64,
    },
    /// `x·factor`, one f32 rounding; unlike `Affine { mul, add: 0.0 }` it keeps −0.
    Scale(f64),
}

impl UnaryOp {
    /// The op's name, as in error messages and kernel names (`ew_unary_<name>_<dtype>`).
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Silu => "silu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Square => "square",
            UnaryOp::Recip => "recip",
            UnaryOp::Affine { .. } => "affine",
            UnaryOp::Scale(_) => "scale",
        }
    }
}

/// A binary elementwise op with NumPy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a − b`.
    Sub,
    /// `a · b`.
    Mul,
    /// `a / b` (IEEE: x/0 = ±∞, 0/0 = NaN).
    Div,
    /// `max(a, b)`; NaN if either is NaN.
    Maximum,
    /// `min(a, b)`; NaN if either is NaN.
    Minimum,
}

impl BinaryOp {
    /// Every binary op.
    pub const ALL: [BinaryOp; 6] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
    ];

    /// The op's name, as in error messages and kernel names (`ew_binary_<name>_<dtype>`).
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
        }
    }
}

/// `op(x)` elementwise, on `x`'s device. Errors: a non-float dtype (or FP8 on CUDA) is
/// [`Error::DTypeMismatch`].
pub fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    if !x.dtype().is_float() {
        return Err(Error::DTypeMismatch {
            op: op.name(),
            got: x.dtype(),
            expected: None,
        });
    }
    match x.device() {
        Device::Cpu => reference::unary(op, x),
        Device::Cuda(_) => cuda::unary(op, x),
    }
}

/// `a ∘ b` elementwise after broadcasting both to their common shape, on their device.
/// Errors: different devices ([`Error::DeviceMismatch`]), different or non-float dtypes (or FP8
/// on CUDA: [`Error::DTypeMismatch`]), shapes that do not broadcast ([`Error::ShapeMismatch`]).
pub fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let name = op.name();
    if a.device() != b.device() {
        return Err(Error::DeviceMismatch {
            op: name,
            lhs: a.device(),
            rhs: b.device(),
        });
    }
    if !a.dtype().is_float() {
        return Err(Error::DTypeMismatch {
            op: name,
            got: a.dtype(),
            expected: None,
        });
    }
    if a.dtype() != b.dtype() {
        return Err(Error::DTypeMismatch {
            op: name,
            got: b.dtype(),
            expected: Some(a.dtype()),
        });
    }
    broadcast_shape(name, a.shape(), b.shape())?;
    match a.device() {
        Device::Cpu => reference::binary(op, a, b),
        Device::Cuda(_) => cuda::binary(op, a, b),
    }
}
