//! Indexing ops that copy elements without arithmetic, so they work for every dtype: embedding
//! lookup, index_select and concatenation.

use crate::layout::elem_count;
use crate::ops::{check_dim, check_id, check_same, read_ids, take};
use crate::storage::CpuStorage;
use crate::{Element, Error, Result, Tensor};

/// Embedding lookup: `out[.., :] = table[ids[..], :]`.
///
/// `table [v, d]` of any dtype (rows are copied exactly), `ids [..]` of I32 or I64 with any
/// shape (rank 0 included) → `[.., d]` in the table's dtype. Both on one device. A negative id
/// or one ≥ v gives [`Error::IndexOutOfRange`] naming the id.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    const OP: &str = "embedding";
    if table.rank() != 2 {
        return Err(Error::BadShape {
            op: OP,
            shape: table.shape().to_vec(),
            msg: "the embedding table must be [vocab, dim]".into(),
        });
    }
    if table.device() != ids.device() {
        return Err(Error::DeviceMismatch {
            op: OP,
            lhs: table.device(),
            rhs: ids.device(),
        });
    }
    let (v, d) = (table.shape()[0], table.shape()[1]);
    // Ids widened to i64 and checked against the vocabulary size.
    let ids_v = read_ids(OP, ids)?;
    let rows: Vec<usize> = ids_v.iter().map(|&id| check_id(OP, id, v)).collect::<Result<_>>()?;
    let cpu = table.cpu_storage(OP)?;
    // Output positions: for each id, the storage positions of its table row (d elements).
    let mut chosen = Vec::with_capacity(rows.len() * d);
    for &r in &rows {
        chosen.extend(table.layout().narrow(0, r, 1)?.storage_indices());
    }
    let mut shape = ids.shape().to_vec();
    shape.push(d);
    Tensor::from_cpu_storage(take(cpu, &chosen), &shape)
}

/// Concatenates per-part contiguous buffers of one element type: for each outer index, the
/// chunk of every part in turn. `None` when a part has another dtype (checked before).
fn cat_typed<T: Element>(_witness: &[T], parts: &[CpuStorage], chunks: &[usize], outer: usize) -> Option<CpuStorage> {
    let slices: Vec<&[T]> = parts.iter().map(T::slice_of).collect::<Option<_>>()?;
    let total: usize = chunks.iter().sum::<usize>() * outer;
    let mut out = Vec::with_capacity(total);
    for o in 0..outer {
        for (s, &c) in slices.iter().zip(chunks) {
            out.extend_from_slice(&s[o * c..(o + 1) * c]);
        }
    }
    Some(T::into_storage(out))
}

impl Tensor {
    /// Embedding lookup with `self` as the ids: `ids.embedding(table)` is
    /// [`embedding`]`(table, ids)`: `ids [..]` (I32/I64), `table [v, d]` → `[.., d]`.
    pub fn embedding(&self, table: &Tensor) -> Result<Tensor> {
        embedding(table, self)
    }

    /// Selects entries of dimension `dim` by index: `out[.., j, ..] = self[.., indices[j], ..]`.
    ///
    /// `indices` is a 1-D I32/I64 tensor of length `k` (repeats allowed) on the same device;
    /// the output has `self`'s shape with dimension `dim` of size `k`, and `self`'s dtype (any;
    /// elements are copied). An index outside `0..shape[dim]` gives
    /// [`Error::IndexOutOfRange`].
    pub fn index_select(&self, dim: usize, indices: &Tensor) -> Result<Tensor> {
        const OP: &str = "index_select";
        check_dim(OP, self, dim)?;
        if indices.rank() != 1 {
            return Err(Error::BadShape {
                op: OP,
                shape: indices.shape().to_vec(),
                msg: "indices must be 1-D".into(),
            });
        }
        if self.device() != indices.device() {
            return Err(Error::DeviceMismatch {
                op: OP,
                lhs: self.device(),
                rhs: indices.device(),
            });
        }
        let size = self.shape()[dim];
        let idx: Vec<usize> = read_ids(OP, indices)?
            .into_iter()
            .map(|id| check_id(OP, id, size))
            .collect::<Result<_>>()?;
        let cpu = self.cpu_storage(OP)?;
        // View the input as [outer, size, inner] around `dim`.
        let outer = elem_count(&self.shape()[..dim]);
        let inner = elem_count(&self.shape()[dim + 1..]);
        // out[o, j, i] = in[o, idx[j], i]: the slice idx[j] of `dim` holds, row-major, the
        // storage positions of in[o, idx[j], i] for every (o, i). Only the selected slices are
        // walked, so the cost follows the output, not the input.
        let mut chosen = vec![0; outer * idx.len() * inner];
        for (j, &s) in idx.iter().enumerate() {
            for (n, pos) in self.layout().narrow(dim, s, 1)?.storage_indices().enumerate() {
                let (o, i) = (n / inner.max(1), n % inner.max(1));
                chosen[(o * idx.len() + j) * inner + i] = pos;
            }
        }
        let mut shape = self.shape().to_vec();
        shape[dim] = idx.len();
        Tensor::from_cpu_storage(take(cpu, &chosen), &shape)
    }

    /// Concatenates tensors along `dim`.
    ///
    /// All parts need one rank, one dtype (any) and one device, and equal sizes in every
    /// dimension but `dim`; the output's `dim` is the sum of theirs. A mismatch names the first
    /// part's shape and the offending one. An empty list is an [`Error::InvalidArgument`].
    pub fn cat(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        const OP: &str = "cat";
        let first = *tensors
            .first()
            .ok_or_else(|| Error::invalid(OP, "needs at least one tensor"))?;
        check_dim(OP, first, dim)?;
        // Every part: same device and dtype, same shape outside `dim`.
        for t in &tensors[1..] {
            check_same(OP, first, t)?;
            let same_outside = t.rank() == first.rank()
                && t.shape()
                    .iter()
                    .zip(first.shape())
                    .enumerate()
                    .all(|(d, (a, b))| d == dim || a == b);
            if !same_outside {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    lhs: first.shape().to_vec(),
                    rhs: t.shape().to_vec(),
                });
            }
        }
        // Contiguous copies of the parts and the chunk each contributes per outer index.
        let inner = elem_count(&first.shape()[dim + 1..]);
        let outer = elem_count(&first.shape()[..dim]);
        let parts: Vec<CpuStorage> = tensors
            .iter()
            .map(|t| Ok(t.cpu_storage(OP)?.gather(t.layout())))
            .collect::<Result<_>>()?;
        let chunks: Vec<usize> = tensors.iter().map(|t| t.shape()[dim] * inner).collect();
        let storage = crate::with_cpu_storage!(&parts[0], v, cat_typed(v, &parts, &chunks, outer)).ok_or(
            Error::DTypeMismatch {
                op: OP,
                got: first.dtype(),
                expected: None,
            },
        )?;
        let mut shape = first.shape().to_vec();
        shape[dim] = tensors.iter().map(|t| t.shape()[dim]).sum();
        Tensor::from_cpu_storage(storage, &shape)
    }
}
