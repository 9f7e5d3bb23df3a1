//! Batched matrix multiplication with NumPy batch broadcasting, through the `gemm` crate in f32.

use std::borrow::Cow;

use gemm::Parallelism;
use rayon::prelude::*;

use crate::layout::{Layout, broadcast_shape, elem_count};
use crate::ops::{check_same, from_f32};
use crate::storage::CpuStorage;
use crate::{DType, Error, Result, Tensor};

/// Multiply-adds (m·n·k) from which one product is worth splitting across rayon's threads.
const GEMM_PAR_MIN_FLOPS: usize = 1 << 18;

/// One GEMM operand as the `gemm` crate reads it: f32 values (the tensor's own storage when it
/// already is f32, so strided views and weights are read in place; a widened copy otherwise),
/// the first element of each output batch entry's matrix, and the matrix's row and column
/// strides in elements.
struct GemmOperand<'a> {
    values: Cow<'a, [f32]>,
    batch_offsets: Vec<usize>,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> GemmOperand<'a> {
    /// The operand `t [batch.., rows, cols]` broadcast over `out_batch`.
    fn new(t: &'a Tensor, cpu: &'a CpuStorage, out_batch: &[usize]) -> Result<Self> {
        let (values, layout) = match cpu {
            CpuStorage::F32(v) => (Cow::Borrowed(v.as_slice()), t.layout().clone()),
            other => (Cow::Owned(other.to_f32_vec(t.layout())), Layout::contiguous(t.shape())),
        };
        let rank = layout.rank();
        let batch = Layout::from_parts(
            layout.shape()[..rank - 2].to_vec(),
            layout.strides()[..rank - 2].to_vec(),
            layout.offset(),
        );
        let batch_offsets = batch.broadcast_as(out_batch)?.storage_indices().collect();
        // Every element the matrices touch lies inside the values: the layout came from a
        // tensor over this storage (or was built for the widened copy).
        assert!(
            layout.storage_extent() <= values.len(),
            "matmul operand layout exceeds its storage"
        );
        Ok(GemmOperand {
            values,
            batch_offsets,
            row_stride: layout.strides()[rank - 2],
            col_stride: layout.strides()[rank - 1],
        })
    }
}

/// `dst[m, n] = lhs[m, k] · rhs[k, n]` for batch entry `bi`, `dst` row-major and contiguous.
#[allow(clippy::too_many_arguments)]
fn gemm_f32(
    dst: &mut [f32],
    lhs: &GemmOperand<'_>,
    rhs: &GemmOperand<'_>,
    bi: usize,
    m: usize,
    k: usize,
    n: usize,
    parallelism: Parallelism,
) {
    // Empty products: the output (already zeros, or empty) is the answer; gemm is not called
    // with dangling pointers.
    if m == 0 || n == 0 || k == 0 {
        dst.fill(0.0);
        return;
    }
    assert!(dst.len() == m * n);
    let (a0, b0) = (lhs.batch_offsets[bi], rhs.batch_offsets[bi]);
    // SAFETY: `dst` holds m·n elements written row-major (column stride 1, row stride n). Each
    // operand's matrix starts at its batch offset and its elements lie at offset + i·row_stride
    // + j·col_stride, all inside `values` (GemmOperand::new checked the layout's extent).
    // `dst` is borrowed mutably and does not alias either operand. read_dst = false, so
    // dst := 1·lhs·rhs (alpha unused).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.values.as_ptr().add(a0),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.values.as_ptr().add(b0),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

impl Tensor {
    /// Batched matrix product `self [.., m, k] · rhs [.., k, n] -> [.., m, n]`.
    ///
    /// `out[b, i, j] = Σ_p self[b, i, p] · rhs[b, p, j]`, accumulated in f32 by the `gemm`
    /// crate. The batch dimensions (all but the last two) broadcast under NumPy rules, so
    /// `[2, 1, m, k] · [3, k, n] -> [2, 3, m, n]`. Both operands need rank ≥ 2 (no implicit
    /// vector promotion), one device and one dtype out of f32, f16 and bf16; f16/bf16 are
    /// widened to f32 exactly and the result is rounded once into the input dtype. FP8 and
    /// integer dtypes give [`Error::DTypeMismatch`] (FP8 GEMMs need scales: a separate op).
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        const OP: &str = "matmul";
        // Rank ≥ 2 for both operands.
        for t in [self, rhs] {
            if t.rank() < 2 {
                return Err(Error::BadShape {
                    op: OP,
                    shape: t.shape().to_vec(),
                    msg: "matmul needs rank >= 2 operands ([.., m, k] x [.., k, n])".into(),
                });
            }
        }
        check_same(OP, self, rhs)?;
        if !matches!(self.dtype(), DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::DTypeMismatch {
                op: OP,
                got: self.dtype(),
                expected: None,
            });
        }
        let mismatch = || Error::ShapeMismatch {
            op: OP,
            lhs: self.shape().to_vec(),
            rhs: rhs.shape().to_vec(),
        };
        // Split [batch.., m, k] and [batch.., k, n].
        let (a_batch, a_mat) = self.shape().split_at(self.rank() - 2);
        let (b_batch, b_mat) = rhs.shape().split_at(rhs.rank() - 2);
        let (m, k, n) = (a_mat[0], a_mat[1], b_mat[1]);
        if b_mat[0] != k {
            return Err(mismatch());
        }
        let out_batch = broadcast_shape(OP, a_batch, b_batch).map_err(|_| mismatch())?;
        let a_cpu = self.cpu_storage(OP)?;
        let b_cpu = rhs.cpu_storage(OP)?;

        // Both operands as gemm reads them, each batch entry mapped to its (broadcast) matrix.
        let a = GemmOperand::new(self, a_cpu, &out_batch)?;
        let b = GemmOperand::new(rhs, b_cpu, &out_batch)?;

        // out [out_batch.., m, n], one gemm per batch entry.
        let batches = elem_count(&out_batch);
        let mut out = vec![0f32; batches * m * n];
        let mat = |bi: usize, dst: &mut [f32], par: Parallelism| gemm_f32(dst, &a, &b, bi, m, k, n, par);
        let flops = m * n * k;
        let threads = rayon::current_num_threads();
        if m * n == 0 {
            // Nothing to write.
        } else if flops >= GEMM_PAR_MIN_FLOPS && batches < threads {
            // Few large products: let gemm split each one across the pool.
            for (bi, dst) in out.chunks_mut(m * n).enumerate() {
                mat(bi, dst, Parallelism::Rayon(threads));
            }
        } else if flops * batches >= GEMM_PAR_MIN_FLOPS {
            // Many products: one per task.
            out.par_chunks_mut(m * n)
                .enumerate()
                .for_each(|(bi, dst)| mat(bi, dst, Parallelism::None));
        } else {
            for (bi, dst) in out.chunks_mut(m * n).enumerate() {
                mat(bi, dst, Parallelism::None);
            }
        }

        let mut shape = out_batch;
        shape.extend([m, n]);
        from_f32(out, &shape, self.dtype())
    }
}
