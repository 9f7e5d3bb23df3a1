//! The CPU reference for `topk`, which is also its CPU backend: l4-core's `Tensor::topk` (a
//! stable sort of each row by the ranking NaN > +∞ > … > −∞, −0 = +0, ties to the lower index).

use l4_core::{Result, Tensor};

/// The `k` largest entries of the last dimension, sorted descending, and their I64 indices.
pub fn topk(x: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    x.topk(k)
}
