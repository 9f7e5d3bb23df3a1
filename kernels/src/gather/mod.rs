//! `gather`: the indexing ops that only move elements, on every device: embedding lookup,
//! index_select and cat.
//!
//! * [`embedding`]`(table [v, d], ids [..]) -> [.., d]`: `out[.., :] = table[ids[..], :]`.
//! * [`index_select`]`(x, dim, indices [k])`: `out[.., j, ..] = x[.., indices[j], ..]`, `x`'s
//!   shape with `dim` of size k.
//! * [`cat`]`(parts, dim)`: the parts one after the other along `dim` (equal sizes elsewhere).
//! * [`contiguous`]`(x)`: any strided view (permuted, narrowed, broadcast) copied into row-major
//!   order; a tensor that is already contiguous comes back as itself, without a copy.
//!
//! Dtypes: every dtype (elements are copied bit for bit, NaN payloads and signed zeros
//! included); ids and indices are I32 or I64 (any shape for embedding, 1-D for index_select).
//! An id outside `0..size` is an [`Error::IndexOutOfRange`] naming it, on every device (the
//! CUDA path copies the ids to the host and checks them before launching). Devices: all
//! operands on one device; the CPU path is l4-core's own op ([`reference`]), the CUDA path
//! launches `gather.cu` ([`cuda`]) and needs contiguous data operands (a strided view is an
//! error naming the operand; call [`contiguous`] first). Results are bit-exact
//! with the CPU.

pub mod cuda;
pub mod reference;
#[cfg(test)]
mod tests;

use l4_core::{Device, Error, Result, Tensor};

/// Embedding lookup: `table [v, d]` (any dtype), `ids [..]` (I32/I64) → `[.., d]` in the
/// table's dtype. Errors: a table that is not 2-D, ids of another dtype, an id outside `0..v`,
/// operands on different devices, a strided CUDA table.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    match table.device() {
        Device::Cpu => reference::embedding(table, ids),
        Device::Cuda(_) => cuda::embedding(table, ids),
    }
}

/// Selects entries of dimension `dim` of `x`: `out[.., j, ..] = x[.., indices[j], ..]` with
/// `indices` 1-D I32/I64 of length k (repeats allowed) → `x`'s shape with `dim` of size k.
/// Errors: `dim` out of range, indices not 1-D or not I32/I64, an index outside
/// `0..x.shape()[dim]`, different devices, a strided CUDA `x`.
pub fn index_select(x: &Tensor, dim: usize, indices: &Tensor) -> Result<Tensor> {
    match x.device() {
        Device::Cpu => reference::index_select(x, dim, indices),
        Device::Cuda(_) => cuda::index_select(x, dim, indices),
    }
}

/// Concatenates `parts` along `dim`: one rank, dtype (any) and device, equal sizes outside
/// `dim`; the output's `dim` is the sum of theirs. Errors: an empty list, `dim` out of range,
/// mismatched parts (naming the first part's shape and the offending one), a strided CUDA
/// part.
pub fn cat(parts: &[&Tensor], dim: usize) -> Result<Tensor> {
    let first = parts
        .first()
        .ok_or_else(|| Error::invalid("cat", "needs at least one tensor"))?;
    if let Some(other) = parts.iter().find(|t| t.device() != first.device()) {
        return Err(Error::DeviceMismatch {
            op: "cat",
            lhs: first.device(),
            rhs: other.device(),
        });
    }
    match first.device() {
        Device::Cpu => reference::cat(parts, dim),
        Device::Cuda(_) => cuda::cat(parts, dim),
    }
}

/// `x`'s elements in row-major order: `x` itself when it is already contiguous, otherwise a
/// copy on `x`'s device (every dtype, bit for bit). Errors: on CUDA, a view whose dimensions
/// cannot be merged into at most 8 strided ones.
pub fn contiguous(x: &Tensor) -> Result<Tensor> {
    if x.is_contiguous() {
        return Ok(x.clone());
    }
    match x.device() {
        Device::Cpu => reference::contiguous(x),
        Device::Cuda(_) => cuda::contiguous(x),
    }
}
