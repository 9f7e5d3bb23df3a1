//! Batched matrix multiplication with NumPy batch broadcasting, through the `gemm` crate in f32.

use gemm::Parallelism;
use rayon::prelude::*;

use crate::layout::{Layout, broadcast_shape, elem_count};
use crate::ops::{check_same, from_f32};
use crate::{DType, Error, Result, Tensor};

/// Multiply-adds (m·n·k) from which one product is worth splitting across rayon's threads.
const GEMM_PAR_MIN_FLOPS: usize = 1 << 18;

/// `dst[m, n] = lhs[m, k] · rhs[k, n]` for contiguous row-major f32 slices.
fn gemm_f32(dst: &mut [f32], lhs: &[f32], rhs: &[f32], m: usize, k: usize, n: usize, parallelism: Parallelism) {
    // Empty products: the output (already zeros, or empty) is the answer; gemm is not called
    // with dangling pointers.
    if m == 0 || n == 0 || k == 0 {
        dst.fill(0.0);
        return;
    }
    assert!(dst.len() == m * n && lhs.len() == m * k && rhs.len() == k * n);
    // SAFETY: the three slices hold exactly m·n, m·k and k·n elements (asserted above) and the
    // strides describe row-major matrices of those sizes (column stride 1, row stride = the
    // number of columns), so every access stays inside its slice. `dst` is borrowed mutably and
    // does not alias `lhs` or `rhs`. read_dst = false, so dst := 1·lhs·rhs (alpha unused).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
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

        // Row-major f32 copies of both operands in their own (unbroadcast) shapes:
        // a [a_batch.., m, k], b [b_batch.., k, n].
        let a = a_cpu.to_f32_vec(self.layout());
        let b = b_cpu.to_f32_vec(rhs.layout());

        // For each output batch entry, the batch entry of a and of b it reads (broadcast
        // batch dimensions repeat one entry via stride 0).
        let a_of: Vec<usize> = Layout::contiguous(a_batch)
            .broadcast_as(&out_batch)?
            .storage_indices()
            .collect();
        let b_of: Vec<usize> = Layout::contiguous(b_batch)
            .broadcast_as(&out_batch)?
            .storage_indices()
            .collect();

        // out [out_batch.., m, n], one gemm per batch entry.
        let batches = elem_count(&out_batch);
        let mut out = vec![0f32; batches * m * n];
        let mat = |bi: usize, dst: &mut [f32], par: Parallelism| {
            let lhs = &a[a_of[bi] * m * k..(a_of[bi] + 1) * m * k];
            let rhs = &b[b_of[bi] * k * n..(b_of[bi] + 1) * k * n];
            gemm_f32(dst, lhs, rhs, m, k, n, par);
        };
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
