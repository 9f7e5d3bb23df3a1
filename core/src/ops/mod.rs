//! CPU ops: l4lab's CPU backend and the reference every CUDA kernel is tested against.
//!
//! Every op follows the same rules (docs/numerics.md has the derivations):
//! - f16, bf16 and FP8 inputs are widened to f32 exactly; arithmetic and every accumulation run
//!   in f32; the result is rounded once into the output dtype (round to nearest even, FP8
//!   satfinite).
//! - Inputs may be strided views (transposed, narrowed, broadcast); outputs are new contiguous
//!   tensors on the CPU.
//! - A tensor on a CUDA device gives [`Error::NotImplementedOnDevice`]; bad input (shapes, dims,
//!   dtypes, indices, arguments) gives an `Err`, never a panic.
//! - Two-operand ops need equal devices and equal dtypes; nothing is promoted implicitly.
//!
//! The ops are methods on [`Tensor`], defined one family per file:
//! matmul (`matmul`), elementwise (`add`... `gelu`, `affine`), reductions (`sum`... `topk`),
//! softmax (`softmax`, `log_softmax`), norms (`rms_norm`, `layer_norm`), indexing (`embedding`,
//! `index_select`, `cat`) and masks (`masked_fill`, comparisons).

mod elementwise;
mod index;
mod mask;
mod matmul;
mod norm;
mod reduce;
mod softmax;

pub use index::embedding;

use rayon::prelude::*;

use crate::layout::Layout;
use crate::storage::CpuStorage;
use crate::{DType, Element, Error, Result, Tensor};

/// Element count from which row loops run on rayon's pool; below it threading costs more than
/// it saves.
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 15;

/// Fails unless both tensors are on one device and have one dtype.
pub(crate) fn check_same(op: &'static str, lhs: &Tensor, rhs: &Tensor) -> Result<()> {
    if lhs.device() != rhs.device() {
        return Err(Error::DeviceMismatch {
            op,
            lhs: lhs.device(),
            rhs: rhs.device(),
        });
    }
    if lhs.dtype() != rhs.dtype() {
        return Err(Error::DTypeMismatch {
            op,
            got: rhs.dtype(),
            expected: Some(lhs.dtype()),
        });
    }
    Ok(())
}

/// Fails unless the tensor holds a floating dtype (f32, f16, bf16, FP8).
pub(crate) fn check_float(op: &'static str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_float() {
        return Err(Error::DTypeMismatch {
            op,
            got: t.dtype(),
            expected: None,
        });
    }
    Ok(())
}

/// Fails unless `dim < rank`.
pub(crate) fn check_dim(op: &'static str, t: &Tensor, dim: usize) -> Result<()> {
    if dim >= t.rank() {
        return Err(Error::DimOutOfRange {
            op,
            dim,
            rank: t.rank(),
        });
    }
    Ok(())
}

/// Fails unless `eps` is finite and non-negative.
pub(crate) fn check_eps(op: &'static str, eps: f64) -> Result<()> {
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::invalid(op, format!("eps must be finite and >= 0, got {eps}")));
    }
    Ok(())
}

/// The permutation that moves `dim` to the end and keeps the other dimensions in order:
/// `[0, .., dim-1, dim+1, .., rank-1, dim]`.
pub(crate) fn dim_last_perm(rank: usize, dim: usize) -> Vec<usize> {
    (0..rank).filter(|&d| d != dim).chain(std::iter::once(dim)).collect()
}

/// The inverse of [`dim_last_perm`]: original dimension `j` sits at position `inv[j]` of the
/// permuted order.
pub(crate) fn dim_last_inverse(rank: usize, dim: usize) -> Vec<usize> {
    (0..rank)
        .map(|j| match j.cmp(&dim) {
            std::cmp::Ordering::Less => j,
            std::cmp::Ordering::Equal => rank - 1,
            std::cmp::Ordering::Greater => j - 1,
        })
        .collect()
}

/// A row view of `t` along `dim`: the layout with `dim` moved last (so that each run of
/// `size` consecutive row-major elements is one row), the number of rows and the row length.
pub(crate) fn rows_along(op: &'static str, t: &Tensor, dim: usize) -> Result<(Layout, usize, usize)> {
    check_dim(op, t, dim)?;
    let layout = t.layout().permute(&dim_last_perm(t.rank(), dim))?;
    let size = t.shape()[dim];
    // rows = product of every other dimension (valid even when size is 0).
    let rows = t
        .shape()
        .iter()
        .enumerate()
        .filter(|&(d, _)| d != dim)
        .map(|(_, &s)| s)
        .product();
    Ok((layout, rows, size))
}

/// The shape after reducing `dim`: removed, or kept with size 1.
pub(crate) fn reduced_shape(shape: &[usize], dim: usize, keepdim: bool) -> Vec<usize> {
    let mut out = shape.to_vec();
    if keepdim {
        out[dim] = 1;
    } else {
        out.remove(dim);
    }
    out
}

/// Maps each row of `size` values (`rows` of them) to one output, in parallel for large
/// inputs. Works for `size == 0` (each row is then the empty slice).
pub(crate) fn map_rows<T, R, F>(values: &[T], rows: usize, size: usize, f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&[T]) -> R + Sync + Send,
{
    if size == 0 {
        return (0..rows).map(|_| f(&[])).collect();
    }
    if values.len() >= PAR_MIN_ELEMS {
        values.par_chunks(size).map(f).collect()
    } else {
        values.chunks(size).map(f).collect()
    }
}

/// Transforms each row of `size` values in place, in parallel for large inputs.
pub(crate) fn for_each_row_mut<F>(values: &mut [f32], size: usize, f: F)
where
    F: Fn(&mut [f32]) + Sync + Send,
{
    if size == 0 {
        return;
    }
    if values.len() >= PAR_MIN_ELEMS {
        values.par_chunks_mut(size).for_each(f);
    } else {
        values.chunks_mut(size).for_each(f);
    }
}

/// A contiguous CPU tensor of `dtype` from f32 results, rounded once into `dtype`.
pub(crate) fn from_f32(values: Vec<f32>, shape: &[usize], dtype: DType) -> Result<Tensor> {
    Tensor::from_cpu_storage(CpuStorage::from_f32_vec(dtype, values), shape)
}

fn take_typed<T: Element>(values: &[T], positions: &[usize]) -> CpuStorage {
    T::into_storage(positions.iter().map(|&p| values[p]).collect())
}

/// Copies the elements at storage `positions` into a new buffer of the same dtype (no
/// conversion, so every dtype is copied exactly). The caller guarantees the positions are in
/// bounds (they come from a layout over `src`).
pub(crate) fn take(src: &CpuStorage, positions: &[usize]) -> CpuStorage {
    crate::with_cpu_storage!(src, v, take_typed(v, positions))
}

/// Integer ids (I32 or I64, any layout) widened to i64, row-major.
pub(crate) fn read_ids(op: &'static str, ids: &Tensor) -> Result<Vec<i64>> {
    let cpu = ids.cpu_storage(op)?;
    match cpu.gather(ids.layout()) {
        CpuStorage::I32(v) => Ok(v.into_iter().map(i64::from).collect()),
        CpuStorage::I64(v) => Ok(v),
        other => Err(Error::DTypeMismatch {
            op,
            got: other.dtype(),
            expected: Some(DType::I64),
        }),
    }
}

/// Checks one id against `size` and converts it to an offset.
pub(crate) fn check_id(op: &'static str, id: i64, size: usize) -> Result<usize> {
    usize::try_from(id)
        .ok()
        .filter(|&i| i < size)
        .ok_or(Error::IndexOutOfRange { op, index: id, size })
}
