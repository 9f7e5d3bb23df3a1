//! `matmul`: batched matrix product on every device; on CUDA, cuBLASLt (the vendor baseline
//! that l4lab's own GEMM kernels are benchmarked against).
//!
//! `a [.., m, k] · b [.., k, n] -> [.., m, n]`, `out[b, i, j] = Σ_p a[b, i, p] · b[b, p, j]`,
//! accumulated in f32 and rounded once into the input dtype. Dtypes: f32, f16 or bf16, the same
//! for both operands. Shapes: rank ≥ 2; the batch dimensions broadcast (NumPy rules).
//!
//! Devices: the CPU path is l4-core's `Tensor::matmul` ([`reference`]); the CUDA path is
//! [`cublaslt_matmul`] ([`cuda`]): cuBLASLt through cudarc with one handle per device, f32
//! computed in full f32 (`CUBLAS_COMPUTE_32F`, never TF32), f16/bf16 with f32 accumulation.
//! On CUDA each operand must have unit stride in its last dimension (a row-major matrix, any
//! row pitch) or in its second-to-last (a transposed view), and its batch dimensions must
//! collapse to one stride (a contiguous batch, or a fully broadcast operand such as a 2-D
//! weight against a batched input); anything else is an error naming the operand.
//!
//! Accuracy: both paths meet `Tolerance::reduction(dtype, k, Σ|a||b|)` against the exact
//! product, so they agree within its `.pairwise()` (docs/numerics.md).

pub mod cuda;
pub mod reference;
#[cfg(test)]
mod tests;

pub use cuda::cublaslt_matmul;
use l4_core::{Device, Error, Result, Tensor};

/// `a [.., m, k] · b [.., k, n] -> [.., m, n]` on the operands' device. Errors: rank < 2,
/// different dtypes or devices, a dtype other than f32/f16/bf16, mismatched inner or batch
/// dimensions; on CUDA also the layouts described in the module docs.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.device() != b.device() {
        return Err(Error::DeviceMismatch {
            op: "matmul",
            lhs: a.device(),
            rhs: b.device(),
        });
    }
    match a.device() {
        Device::Cpu => reference::matmul(a, b),
        Device::Cuda(_) => cuda::cublaslt_matmul(a, b),
    }
}
