//! The CPU reference for the gather ops, which is also their CPU backend: l4-core's own
//! `embedding`, `index_select`, `cat` and `contiguous` (plain loops over storage positions that copy each
//! element exactly, for every dtype).

use l4_core::{Result, Tensor};

/// `out[.., :] = table[ids[..], :]` on the host (see [`l4_core::ops::embedding`]).
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    l4_core::ops::embedding(table, ids)
}

/// `out[.., j, ..] = x[.., indices[j], ..]` along `dim` on the host.
pub fn index_select(x: &Tensor, dim: usize, indices: &Tensor) -> Result<Tensor> {
    x.index_select(dim, indices)
}

/// Concatenation along `dim` on the host.
pub fn cat(parts: &[&Tensor], dim: usize) -> Result<Tensor> {
    Tensor::cat(parts, dim)
}

/// The elements of any view in row-major order, as a new contiguous host tensor.
pub fn contiguous(x: &Tensor) -> Result<Tensor> {
    x.contiguous()
}
