//! cuBLASLt's FP8 GEMM with row-wise ("outer vector") scales: the vendor baseline that the FP8
//! benchmarks run next to l4lab's kernels, in the same process and on the same stream.
//!
//! `D [M, N] = (A·s_a)(B·s_b)ᵀ` with `A [M, K]`, `B [N, K]` e4m3 (K-major) and per-row f32
//! scales, bf16 or f32 output: the problem of [`super::fp8_gemm`] with [`Fp8Scaling::RowWise`]
//! and no epilogue. Row-major through a column-major library (see `matmul/cuda.rs`): cuBLAS's A
//! is our `B` read transposed ("TN", the only FP8 layout Hopper supports), its B is our `A`, and
//! its column-major `N × M` output is our row-major `[M, N]`. Scale modes
//! `CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F` need cuBLAS 12.9 or later; an older library
//! reports an error, never a wrong result. Accumulation is cuBLASLt's own (no fast-accumulation
//! flag is set).

use std::ffi::c_void;
use std::mem::size_of;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys::{
    cublasComputeType_t, cublasLtMatmulDesc_t, cublasLtMatmulDescAttributes_t as Desc, cublasLtMatmulMatrixScale_t,
    cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t as Pref, cublasLtMatrixLayout_t, cudaDataType_t,
};
use cudarc::driver::DevicePtr;
use l4_core::{DType, Error, Result, Tensor};

use super::{Fp8Scaling, OP};
use crate::gather::cuda::alloc_poisoned_in_tests;
use crate::launch::{backend_of, output_tensor};
use crate::matmul::cuda::cublaslt_handle;
use crate::ops::contiguous;
use crate::quant::{Granularity, Quantized};

/// The workspace cuBLASLt may use (32 MiB, what cudarc gives its own handles on Hopper).
const WORKSPACE_BYTES: usize = 32 << 20;

/// Descriptors destroyed on drop, so an error half-way leaks nothing.
struct Descriptors {
    desc: cublasLtMatmulDesc_t,
    layouts: Vec<cublasLtMatrixLayout_t>,
    pref: Option<cublasLtMatmulPreference_t>,
}

impl Drop for Descriptors {
    fn drop(&mut self) {
        // SAFETY: each handle was created by cuBLASLt and is destroyed exactly once here.
        unsafe {
            for &layout in &self.layouts {
                let _ = lt::destroy_matrix_layout(layout);
            }
            if let Some(pref) = self.pref {
                let _ = lt::destroy_matmul_pref(pref);
            }
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

fn cublas(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Cuda(format!("cuBLASLt FP8 {what}: {e}"))
}

/// Sets one matmul-descriptor attribute from a plain value.
///
/// # Safety
/// `desc` must be live and `T` the attribute's documented type.
unsafe fn set<T>(desc: cublasLtMatmulDesc_t, attr: Desc, value: &T) -> Result<()> {
    // SAFETY: the caller guarantees the descriptor and the attribute's type.
    unsafe { lt::set_matmul_desc_attribute(desc, attr, value as *const T as *const c_void, size_of::<T>()) }
        .map_err(|e| cublas("descriptor", e))
}

/// Row-wise scales as one f32 per row (per-tensor broadcast), contiguous on the device.
fn row_scales(q: &Quantized, rows: usize) -> Result<Tensor> {
    match q.granularity {
        Granularity::PerTensor => contiguous(&q.scales.reshape(&[1])?.broadcast_as(&[rows])?),
        Granularity::PerRow => contiguous(&q.scales.reshape(&[rows])?),
        other => Err(Error::invalid(
            OP,
            format!("the cuBLASLt baseline takes row-wise scales, not {other:?}"),
        )),
    }
}

/// `(A·s_a)(B·s_b)ᵀ` in `out` (bf16 or f32) with cuBLASLt, row-wise scales only.
pub fn cublaslt_fp8_gemm(a: &Quantized, b: &Quantized, out: DType) -> Result<Tensor> {
    let (m, k) = (a.values.shape()[0], a.values.shape()[1]);
    let n = b.values.shape()[0];
    if Fp8Scaling::of(a.granularity, b.granularity)? != Fp8Scaling::RowWise || b.values.shape()[1] != k {
        return Err(Error::invalid(
            OP,
            "the cuBLASLt baseline needs row-wise scales and equal K",
        ));
    }
    let out_type = match out {
        DType::BF16 => cudaDataType_t::CUDA_R_16BF,
        DType::F32 => cudaDataType_t::CUDA_R_32F,
        other => {
            return Err(Error::DTypeMismatch {
                op: OP,
                got: other,
                expected: Some(DType::BF16),
            });
        }
    };
    let backend = backend_of(&a.values, OP)?;
    let stream = backend.stream();
    let blas = cublaslt_handle(&backend)?;
    let (codes_a, codes_b) = (contiguous(&a.values)?, contiguous(&b.values)?);
    let (scale_a, scale_b) = (row_scales(a, m)?, row_scales(b, n)?);
    let result = output_tensor(
        alloc_poisoned_in_tests(&backend, OP, out, m * n)?,
        out,
        backend.info().ordinal,
        &[m, n],
    )?;
    let workspace = stream.alloc_zeros::<u8>(WORKSPACE_BYTES)?;
    let ptr = |t: &Tensor| -> Result<u64> {
        let (p, _record) = t.cuda_storage(OP)?.bytes.device_ptr(stream);
        Ok(p + (t.layout().offset() * t.dtype().size_in_bytes()) as u64)
    };
    let (p_a, p_b, p_sa, p_sb, p_d) = (
        ptr(&codes_a)?,
        ptr(&codes_b)?,
        ptr(&scale_a)?,
        ptr(&scale_b)?,
        ptr(&result)?,
    );
    let (p_w, _record_w) = workspace.device_ptr(stream);

    let desc = lt::create_matmul_desc(cublasComputeType_t::CUBLAS_COMPUTE_32F, cudaDataType_t::CUDA_R_32F)
        .map_err(|e| cublas("descriptor", e))?;
    let mut d = Descriptors {
        desc,
        layouts: Vec::new(),
        pref: None,
    };
    let fp8 = cudaDataType_t::CUDA_R_8F_E4M3;
    let outer = cublasLtMatmulMatrixScale_t::CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    // SAFETY: `d.desc` is live; each attribute gets a value of its documented type; the scale
    // pointers address N (cuBLAS's A = our B) and M (its B = our A) f32 values on this device.
    unsafe {
        // cublasOperation_t as an i32: 1 is CUBLAS_OP_T, 0 CUBLAS_OP_N.
        set(d.desc, Desc::CUBLASLT_MATMUL_DESC_TRANSA, &1i32)?;
        set(d.desc, Desc::CUBLASLT_MATMUL_DESC_TRANSB, &0i32)?;
        set(d.desc, Desc::CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &(outer as u32))?;
        set(d.desc, Desc::CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &(outer as u32))?;
        set(d.desc, Desc::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &p_sb)?;
        set(d.desc, Desc::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &p_sa)?;
    }
    for (ty, rows, cols, ld) in [(fp8, k, n, k), (fp8, k, m, k), (out_type, n, m, n)] {
        let layout =
            lt::create_matrix_layout(ty, rows as u64, cols as u64, ld as i64).map_err(|e| cublas("layout", e))?;
        d.layouts.push(layout);
    }
    let pref = lt::create_matmul_pref().map_err(|e| cublas("preference", e))?;
    d.pref = Some(pref);
    // SAFETY: `pref` is live; the attribute is a u64 byte count.
    unsafe {
        lt::set_matmul_pref_attribute(
            pref,
            Pref::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &(WORKSPACE_BYTES as u64) as *const u64 as *const c_void,
            size_of::<u64>(),
        )
    }
    .map_err(|e| cublas("preference", e))?;
    let (la, lb, ld) = (d.layouts[0], d.layouts[1], d.layouts[2]);
    let handle = *cudarc::cublaslt::MatmulShared::handle(blas.as_ref());
    // SAFETY: every descriptor and layout is live and describes the buffers passed below.
    let heuristic = unsafe { lt::get_matmul_algo_heuristic(handle, d.desc, la, lb, ld, ld, pref) }
        .map_err(|e| cublas(&format!("algorithm for [{m}, {n}, {k}]"), e))?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    // SAFETY: the pointers address live device buffers of the layouts' sizes on this stream
    // (A: N·K codes, B: M·K codes, C = D: M·N outputs, the workspace); alpha and beta are f32,
    // the descriptor's scale type.
    unsafe {
        lt::matmul(
            handle,
            d.desc,
            &alpha as *const f32 as *const c_void,
            &beta as *const f32 as *const c_void,
            p_b as *const c_void,
            la,
            p_a as *const c_void,
            lb,
            p_d as *const c_void,
            ld,
            p_d as *mut c_void,
            ld,
            &heuristic.algo,
            p_w as *mut c_void,
            WORKSPACE_BYTES,
            stream.cu_stream() as *mut _,
        )
    }
    .map_err(|e| cublas(&format!("matmul [{m}, {n}, {k}]"), e))?;
    drop((codes_a, codes_b, scale_a, scale_b));
    Ok(result)
}
