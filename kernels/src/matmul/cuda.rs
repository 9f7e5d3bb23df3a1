//! The CUDA path of `matmul`: cuBLASLt through cudarc's safe `cublaslt` module.
//!
//! **Row-major through a column-major library.** A row-major `[r, c]` matrix with row pitch
//! `ld` is, to cuBLAS, the column-major `[c, r]` matrix with leading dimension `ld`: its
//! transpose. So `C = A·B` (row-major) is computed as `Cᵀ = Bᵀ·Aᵀ` (column-major): cuBLAS's
//! "A" is our `b`, its "B" is our `a`, its `m, n` are our `n, m`, and `C` comes out row-major
//! `[m, n]` with `ldc = n`. An operand that is a transposed view (unit stride in its
//! second-to-last dimension) is, to cuBLAS, the untransposed column-major matrix, so it is
//! passed with the `trans` flag set instead of being copied.
//!
//! **Full f32.** cudarc's `Matmul<f32> for CudaBlasLT` asks for
//! `CUBLAS_COMPUTE_32F_FAST_TF32`, which rounds the inputs to TF32 (10-bit mantissa) on tensor
//! cores: about 2^-11 relative error per product, far outside the f32 reduction tolerance.
//! [`FullF32`] wraps the same handle and asks for `CUBLAS_COMPUTE_32F` instead. f16 and bf16 use
//! cudarc's impls as they are: `CUBLAS_COMPUTE_32F` (f32 accumulation), f32 `alpha`/`beta`, the
//! output rounded once into the input dtype.
//!
//! **Alignment.** cuBLASLt's algorithm heuristic assumes 256-byte aligned pointers unless told
//! otherwise (`CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES`, default 256), and cudarc's safe
//! `Matmul` sets no such preference. Fresh allocations are 256-byte aligned; an operand view
//! whose first element is not (an offset view) is copied into a fresh buffer first.
//!
//! One `CudaBlasLT` handle per device, created on first use ([`cublaslt_handle`]), issues its
//! work on the device's one l4lab stream, with cudarc's workspace (32 MiB on Hopper).

use std::collections::HashMap;
use std::ffi::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublaslt::{CudaBlasLT, Matmul, MatmulConfig, MatmulShared, Workspace, sys};
use cudarc::driver::{CudaSlice, CudaStream, CudaView, DevicePtr};
use half::{bf16, f16};
use l4_core::cuda::CudaBackend;
use l4_core::layout::{broadcast_shape, elem_count};
use l4_core::{DType, Error, Result, Tensor};

use crate::gather::cuda::{alloc_poisoned_in_tests, empty_output};
use crate::launch::{backend_of, output_tensor};

const OP: &str = "matmul";

/// The pointer alignment cuBLASLt's heuristic assumes by default (bytes).
pub const CUBLASLT_ALIGNMENT: u64 = 256;

/// The compute type l4lab asks cuBLASLt for with f32 operands: full f32, no TF32.
pub const F32_COMPUTE_TYPE: sys::cublasComputeType_t = sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;

/// A [`CudaBlasLT`] handle whose f32 matmul computes in full f32 ([`F32_COMPUTE_TYPE`]) rather
/// than cudarc's TF32 choice; everything else (handle, workspace, stream) is the wrapped one's.
#[derive(Debug)]
pub struct FullF32<'a>(pub &'a CudaBlasLT);

impl MatmulShared for FullF32<'_> {
    fn handle(&self) -> &sys::cublasLtHandle_t {
        self.0.handle()
    }

    fn workspace(&self) -> &Workspace {
        self.0.workspace()
    }

    fn stream(&self) -> &Arc<CudaStream> {
        MatmulShared::stream(self.0)
    }
}

impl Matmul<f32> for FullF32<'_> {
    fn matrix_type() -> sys::cudaDataType {
        sys::cudaDataType_t::CUDA_R_32F
    }

    fn compute_type() -> sys::cublasComputeType_t {
        F32_COMPUTE_TYPE
    }
}

/// Turns a panic from a dynamically loaded library (a missing symbol, cudarc's `unwrap`s) into
/// an error.
fn contain_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::Cuda(format!("{what}: {msg}")))
    })
}

/// The cuBLASLt handle of `backend`'s device, created on first use (on the device's l4lab
/// stream) and shared afterwards. A missing libcublasLt is an error, never a panic, and
/// failures are not cached.
pub fn cublaslt_handle(backend: &CudaBackend) -> Result<Arc<CudaBlasLT>> {
    static HANDLES: OnceLock<Mutex<HashMap<usize, Arc<CudaBlasLT>>>> = OnceLock::new();
    let ordinal = backend.info().ordinal;
    let mut handles = HANDLES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(h) = handles.get(&ordinal) {
        return Ok(h.clone());
    }
    // SAFETY: the probe only tries to dlopen the library by name.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::Cuda(
            "libcublasLt not found on the loader path (it ships with the CUDA toolkit and with torch's \
             nvidia/cu13 wheel; put its lib directory on LD_LIBRARY_PATH)"
                .into(),
        ));
    }
    let handle = contain_panic("cuBLASLt handle creation", || {
        backend.context().bind_to_thread()?;
        CudaBlasLT::new(backend.stream().clone())
            .map_err(|e| Error::Cuda(format!("cuBLASLt handle creation on device {ordinal}: {e}")))
    })?;
    let handle = Arc::new(handle);
    handles.insert(ordinal, handle.clone());
    Ok(handle)
}

/// How cuBLASLt sees one operand `[batch.., r, c]` (broadcast over the output's batch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OperandLayout {
    /// Stored transposed: unit stride along `r` (column-major), rather than along `c`.
    pub transposed: bool,
    /// The leading dimension: the row pitch (or the column pitch when transposed), in elements.
    pub ld: usize,
    /// Elements from one batch entry's matrix to the next; 0 for a broadcast operand.
    pub batch_stride: usize,
    /// The storage range the operand touches, in elements: `start..end`.
    pub start: usize,
    /// One past the last element touched.
    pub end: usize,
}

/// The cuBLASLt description of `t [.., r, c]` broadcast over `out_batch`, or an error naming
/// `which` when its layout is not one cuBLASLt can read in place.
pub fn operand_layout(t: &Tensor, which: &str, out_batch: &[usize]) -> Result<OperandLayout> {
    let rank = t.rank();
    let (r, c) = (t.shape()[rank - 2], t.shape()[rank - 1]);
    let mut shape = out_batch.to_vec();
    shape.extend([r, c]);
    let layout = t.layout().broadcast_as(&shape)?;
    let nb = out_batch.len();
    let strides = layout.strides();
    let (rs, cs) = (strides[nb], strides[nb + 1]);
    let unsupported = |why: &str| {
        Error::invalid(
            OP,
            format!(
                "the CUDA path cannot read `{which}` (shape {:?}, strides {:?}): {why}; call contiguous() on it first",
                t.shape(),
                t.layout().strides()
            ),
        )
    };
    // A row-major matrix with row pitch ld >= c, or a column-major one with column pitch >= r.
    // A dimension of size 1 has no meaningful stride; its pitch is then the other size.
    let row_pitch = if r <= 1 { c.max(1) } else { rs };
    let col_pitch = if c <= 1 { r.max(1) } else { cs };
    let (transposed, ld) = if (c <= 1 || cs == 1) && row_pitch >= c.max(1) {
        (false, row_pitch)
    } else if (r <= 1 || rs == 1) && col_pitch >= r.max(1) {
        (true, col_pitch)
    } else {
        return Err(unsupported(
            "neither its last nor its second-to-last dimension has unit stride with a pitch covering the other",
        ));
    };
    // One stride s for the whole batch: stride[i] = s·(entries after i) for every batch
    // dimension i of size > 1 (s = 0 for a broadcast operand).
    let mut s: Option<usize> = None;
    let mut after = 1;
    for i in (0..nb).rev() {
        if out_batch[i] > 1 {
            match s {
                None if strides[i] % after == 0 => s = Some(strides[i] / after),
                Some(s) if strides[i] == s * after => {}
                _ => return Err(unsupported("its batch dimensions do not collapse to one stride")),
            }
        }
        after *= out_batch[i];
    }
    Ok(OperandLayout {
        transposed,
        ld,
        batch_stride: s.unwrap_or(0),
        start: layout.offset(),
        end: layout.storage_extent().max(layout.offset()),
    })
}

/// The cuBLASLt configuration of `C [batch, m, n] = A [batch, m, k] · B [batch, k, n]`
/// (row-major C), from the layouts of `a` and `b`. cuBLAS's A is our `b` and its B our `a`
/// (see the module docs). A broadcast `b` against a row-stacked `a` folds the batch into m.
pub fn matmul_config(a: &OperandLayout, b: &OperandLayout, batch: usize, m: usize, k: usize, n: usize) -> MatmulConfig {
    // [batch, m, k] rows at one pitch, times one shared [k, n]: a single [batch·m, k] GEMM.
    let fold = batch > 1 && b.batch_stride == 0 && !a.transposed && a.batch_stride == m * a.ld;
    let (batch, m) = if fold { (1, batch * m) } else { (batch, m) };
    let batched = batch > 1;
    MatmulConfig {
        transa: b.transposed,
        transb: a.transposed,
        transc: false,
        m: n as u64,
        n: m as u64,
        k: k as u64,
        alpha: 1.0,
        lda: b.ld as i64,
        ldb: a.ld as i64,
        beta: 0.0,
        ldc: n as i64,
        stride_a: batched.then_some(b.batch_stride as i64),
        stride_b: batched.then_some(a.batch_stride as i64),
        stride_c: batched.then_some((m * n) as i64),
        stride_bias: None,
        batch_size: batched.then_some(batch as c_int),
    }
}

/// The device address of a buffer.
fn address<T, P: DevicePtr<T>>(buffer: &P, stream: &CudaStream) -> u64 {
    let (ptr, _record) = buffer.device_ptr(stream);
    ptr
}

/// `a [.., m, k] · b [.., k, n] -> [.., m, n]` with cuBLASLt on the operands' CUDA device: f32
/// (computed in full f32), f16 or bf16 (f32 accumulation), batch dimensions broadcasting, each
/// operand row-major or a transposed view (see [`operand_layout`]). The vendor baseline for
/// l4lab's GEMM kernels.
pub fn cublaslt_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    for t in [a, b] {
        if t.rank() < 2 {
            return Err(Error::BadShape {
                op: OP,
                shape: t.shape().to_vec(),
                msg: "matmul needs rank >= 2 operands ([.., m, k] x [.., k, n])".into(),
            });
        }
    }
    if a.device() != b.device() {
        return Err(Error::DeviceMismatch {
            op: OP,
            lhs: a.device(),
            rhs: b.device(),
        });
    }
    if a.dtype() != b.dtype() {
        return Err(Error::DTypeMismatch {
            op: OP,
            got: b.dtype(),
            expected: Some(a.dtype()),
        });
    }
    let dtype = a.dtype();
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(Error::DTypeMismatch {
            op: OP,
            got: dtype,
            expected: None,
        });
    }
    let mismatch = || Error::ShapeMismatch {
        op: OP,
        lhs: a.shape().to_vec(),
        rhs: b.shape().to_vec(),
    };
    let (a_batch, a_mat) = a.shape().split_at(a.rank() - 2);
    let (b_batch, b_mat) = b.shape().split_at(b.rank() - 2);
    let (m, k, n) = (a_mat[0], a_mat[1], b_mat[1]);
    if b_mat[0] != k {
        return Err(mismatch());
    }
    let out_batch = broadcast_shape(OP, a_batch, b_batch).map_err(|_| mismatch())?;
    let batch = elem_count(&out_batch);
    let mut shape = out_batch.clone();
    shape.extend([m, n]);

    let backend = backend_of(a, OP)?;
    let ordinal = backend.info().ordinal;
    if batch * m * n == 0 {
        return empty_output(&backend, dtype, &shape);
    }
    if k == 0 {
        // An empty sum: zeros (cuBLASLt is not asked about k = 0).
        let zeros = backend
            .stream()
            .alloc_zeros::<u8>(batch * m * n * dtype.size_in_bytes())?;
        return output_tensor(zeros, dtype, ordinal, &shape);
    }
    for (v, what) in [(batch, "batch"), (m, "m"), (n, "n"), (k, "k")] {
        if v > c_int::MAX as usize {
            return Err(Error::invalid(
                OP,
                format!("{what} = {v} exceeds cuBLASLt's 32-bit range"),
            ));
        }
    }
    let a_layout = operand_layout(a, "a", &out_batch)?;
    let b_layout = operand_layout(b, "b", &out_batch)?;
    let config = matmul_config(&a_layout, &b_layout, batch, m, k, n);

    let blas = cublaslt_handle(&backend)?;
    let stream = backend.stream();
    let size = dtype.size_in_bytes();
    // Each operand's touched bytes, copied to a fresh (aligned) buffer when its first element
    // is not 256-byte aligned.
    let a_storage = &a.cuda_storage(OP)?.bytes;
    let b_storage = &b.cuda_storage(OP)?.bytes;
    let a_view = a_storage.slice(a_layout.start * size..a_layout.end * size);
    let b_view = b_storage.slice(b_layout.start * size..b_layout.end * size);
    let (a_copy, b_copy);
    let a_view = if address(&a_view, stream) % CUBLASLT_ALIGNMENT == 0 {
        a_view
    } else {
        a_copy = stream.clone_dtod(&a_view)?;
        a_copy.slice(..)
    };
    let b_view = if address(&b_view, stream) % CUBLASLT_ALIGNMENT == 0 {
        b_view
    } else {
        b_copy = stream.clone_dtod(&b_view)?;
        b_copy.slice(..)
    };
    let mut out = alloc_poisoned_in_tests(&backend, OP, dtype, batch * m * n)?;
    if address(&out, stream) % CUBLASLT_ALIGNMENT != 0 {
        return Err(Error::Cuda(format!(
            "{OP}: the output allocation is not {CUBLASLT_ALIGNMENT}-byte aligned"
        )));
    }
    backend.context().bind_to_thread()?;
    let what = format!("cuBLASLt {dtype} matmul (batch {batch}, m {m}, k {k}, n {n})");
    contain_panic(&what, || {
        match dtype {
            DType::F32 => run::<f32, _>(&FullF32(&blas), &config, &a_view, &b_view, &mut out),
            DType::F16 => run::<f16, _>(&*blas, &config, &a_view, &b_view, &mut out),
            _ => run::<bf16, _>(&*blas, &config, &a_view, &b_view, &mut out),
        }
        .map_err(|e| Error::Cuda(format!("{what}: {e}")))
    })?;
    output_tensor(out, dtype, ordinal, &shape)
}

/// Reinterprets the byte buffers as `T` and runs one cuBLASLt matmul: cuBLAS's A is `b`, its B
/// is `a` (see the module docs).
fn run<T, M: Matmul<T>>(
    blas: &M,
    config: &MatmulConfig,
    a: &CudaView<'_, u8>,
    b: &CudaView<'_, u8>,
    out: &mut CudaSlice<u8>,
) -> Result<()> {
    let size = std::mem::size_of::<T>();
    let short = || Error::invalid(OP, "internal: an operand buffer is shorter than its layout");
    // SAFETY: the buffers hold elements of the tensors' dtype, which is T (the caller matches
    // on it), little-endian as the device stores them.
    let a_t = unsafe { a.transmute::<T>(a.len() / size) }.ok_or_else(short)?;
    let b_t = unsafe { b.transmute::<T>(b.len() / size) }.ok_or_else(short)?;
    let len = out.len() / size;
    let mut out_t = unsafe { out.transmute_mut::<T>(len) }.ok_or_else(short)?;
    // SAFETY: the configuration comes from `matmul_config` over the operands' own layouts:
    // every element cuBLASLt reads lies in `start..end` of its operand, which the views cover
    // from their first element; the output holds batch·m·n elements written with ldc = n and
    // batch stride m·n; all three pointers are 256-byte aligned (checked by the caller); the
    // handle's stream is the one the buffers were allocated and written on.
    unsafe { blas.matmul(*config, &b_t, &a_t, &mut out_t, None, None) }.map_err(|e| Error::Cuda(e.to_string()))
}
