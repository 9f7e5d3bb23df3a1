//! The CPU path of softmax, which is also its reference: `l4_core`'s `Tensor::softmax`
//! (max-subtracted, f32 in index order, rounded once; see `core/src/ops/softmax.rs`). Any `dim`;
//! inputs may be strided views.

use l4_core::{Result, Tensor};

/// Softmax along `dim` on the host (`Tensor::softmax`).
pub fn softmax(x: &Tensor, dim: usize) -> Result<Tensor> {
    x.softmax(dim)
}
