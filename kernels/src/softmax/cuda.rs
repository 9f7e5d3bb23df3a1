//! The CUDA launcher for `softmax.cu`.

use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use l4_core::cuda::CudaBackend;
use l4_core::{DType, Error, Result, Tensor};

use super::OP;
use crate::launch::{alloc_output, backend_of, contiguous_bytes, grid_1d, output_tensor};
use crate::{SOFTMAX, load_function};

/// Rows up to this length are handled by one warp each (eight rows per block); longer rows by
/// one block each.
pub const WARP_MAX_D: usize = 1024;
/// Rows longer than this get 1024-thread blocks instead of 256-thread ones.
const WIDE_MAX_D: usize = 8192;
/// Resident threads per SM on sm_90; the grid is capped at this many threads per SM and the
/// kernels loop over the remaining rows.
const THREADS_PER_SM: usize = 2048;

/// The kernel entry point for a dtype and a row length.
pub fn function_name(dtype: DType, d: usize) -> Result<&'static str> {
    let warp = d <= WARP_MAX_D;
    Ok(match (dtype, warp) {
        (DType::F32, true) => "softmax_warp_f32",
        (DType::F16, true) => "softmax_warp_f16",
        (DType::BF16, true) => "softmax_warp_bf16",
        (DType::F32, false) => "softmax_block_f32",
        (DType::F16, false) => "softmax_block_f16",
        (DType::BF16, false) => "softmax_block_bf16",
        (other, _) => {
            return Err(Error::DTypeMismatch {
                op: OP,
                got: other,
                expected: None,
            });
        }
    })
}

/// The launch shape for `rows` rows of `d` elements: warp-per-row blocks of 256 threads, or one
/// block of 256 (d ≤ 8192) or 1024 threads per row; at most [`THREADS_PER_SM`] threads per SM.
pub fn launch_config(backend: &CudaBackend, rows: usize, d: usize) -> LaunchConfig {
    let (block, threads_per_row) = if d <= WARP_MAX_D {
        (256, 32)
    } else if d <= WIDE_MAX_D {
        (256, 256)
    } else {
        (1024, 1024)
    };
    grid_1d(
        backend,
        rows.saturating_mul(threads_per_row),
        block as u32,
        THREADS_PER_SM / block,
    )
}

/// Softmax of a CUDA tensor along `dim` (checked by [`super::softmax`]); only the last
/// dimension of a contiguous tensor. Allocates the output.
pub fn softmax(x: &Tensor, dim: usize) -> Result<Tensor> {
    let dtype = x.dtype();
    function_name(dtype, 0)?;
    let ordinal = x.cuda_storage(OP)?.ordinal;
    if dim + 1 != x.rank() {
        return Err(Error::invalid(
            OP,
            format!(
                "the CUDA path supports only the last dimension (dim {}), got dim {dim} of shape {:?}; move `dim` \
                 last and make the tensor contiguous first",
                x.rank().saturating_sub(1),
                x.shape()
            ),
        ));
    }
    let d = x.shape()[dim];
    let n = x.elem_count();
    if n == 0 {
        // Nothing to compute; a zero-byte device allocation is not allowed.
        return Ok(x.clone());
    }
    let rows = n / d;
    let backend = backend_of(x, OP)?;
    let x_bytes = contiguous_bytes(x, OP, "x")?;
    let mut out = alloc_output(&backend, OP, dtype, n)?;
    launch(&backend, dtype, &x_bytes, &mut out, rows, d)?;
    output_tensor(out, dtype, ordinal, x.shape())
}

/// Launches softmax on `rows` contiguous rows of `d` elements of `dtype`:
/// `out[r, ..] = softmax(x[r, ..])`. The buffers hold raw little-endian elements; `out` is fully
/// overwritten.
pub fn launch(
    backend: &CudaBackend,
    dtype: DType,
    x: &CudaView<'_, u8>,
    out: &mut CudaSlice<u8>,
    rows: usize,
    d: usize,
) -> Result<()> {
    let function = function_name(dtype, d)?;
    let bytes = rows
        .checked_mul(d)
        .and_then(|n| n.checked_mul(dtype.size_in_bytes()))
        .ok_or_else(|| Error::invalid(OP, format!("{rows} rows of {d} elements overflow")))?;
    if x.len() < bytes || out.len() < bytes {
        return Err(Error::invalid(
            OP,
            format!(
                "buffers of {} and {} bytes cannot hold {rows} rows of {d} {dtype} elements",
                x.len(),
                out.len()
            ),
        ));
    }
    if bytes == 0 {
        return Ok(());
    }
    let d_arg = u32::try_from(d).ok().filter(|&d| d <= i32::MAX as u32).ok_or_else(|| {
        Error::invalid(
            OP,
            format!("rows of {d} elements are longer than the kernel supports (2^31 - 1)"),
        )
    })?;
    let rows_arg = rows as u64;
    let function = load_function(backend, &SOFTMAX, function)?;
    let config = launch_config(backend, rows, d);
    let mut builder = backend.stream().launch_builder(&function);
    builder.arg(x).arg(out).arg(&rows_arg).arg(&d_arg);
    // SAFETY: the arguments match the kernel signature (x and out as device pointers to `dtype`
    // elements, then u64 rows and u32 d), and both buffers hold rows·d elements (checked above).
    unsafe { builder.launch(config) }?;
    Ok(())
}
