//! The CPU path of the elementwise ops, which is also their reference: l4-core's own ops
//! (`core/src/ops/elementwise.rs`), computed in f32 and rounded once into the dtype.

use l4_core::{Result, Tensor};

use super::{BinaryOp, UnaryOp};

/// `op(x)` on the host; `x` may be any strided view of any float dtype.
pub fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    match op {
        UnaryOp::Neg => x.neg(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Silu => x.silu(),
        UnaryOp::Gelu => x.gelu(),
        UnaryOp::Sigmoid => x.sigmoid(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Square => x.square(),
        UnaryOp::Recip => x.recip(),
        UnaryOp::Affine { mul, add } => x.affine(mul, add),
        UnaryOp::Scale(factor) => x.scale(factor),
    }
}

/// `a ∘ b` on the host with NumPy broadcasting.
pub fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match op {
        BinaryOp::Add => a.add(b),
        BinaryOp::Sub => a.sub(b),
        BinaryOp::Mul => a.mul(b),
        BinaryOp::Div => a.div(b),
        BinaryOp::Maximum => a.maximum(b),
        BinaryOp::Minimum => a.minimum(b),
    }
}
