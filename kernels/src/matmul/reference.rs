//! The CPU reference for `matmul`, which is also its CPU backend: l4-core's `Tensor::matmul`
//! (the `gemm` crate in f32, f16/bf16 widened exactly and the result rounded once).

use l4_core::{Result, Tensor};

/// `a [.., m, k] · b [.., k, n] -> [.., m, n]` on the host, batch dimensions broadcasting.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.matmul(b)
}
