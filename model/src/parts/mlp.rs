//! The SwiGLU MLP: dense layers and the MoE block's shared expert.

use l4_core::{Result, Tensor};
use l4_kernels::ops;

use super::linear::Linear;

/// `down(silu(gate(x)) ⊙ up(x))`.
#[derive(Clone, Debug)]
pub struct SwiGlu {
    /// `[f, d]` in HF layout.
    pub gate: Linear,
    /// `[f, d]`.
    pub up: Linear,
    /// `[d, f]`.
    pub down: Linear,
}

impl SwiGlu {
    /// `x [.., d] -> [.., d]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hidden = ops::mul(&ops::silu(&self.gate.forward(x)?)?, &self.up.forward(x)?)?; // [.., f]
        self.down.forward(&hidden)
    }
}
