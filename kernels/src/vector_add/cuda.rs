//! The CUDA launcher for `vector_add.cu`.

use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use l4_core::cuda::CudaBackend;
use l4_core::{CudaStorage, DType, Error, Result, Tensor};

use super::OP;
use crate::{VECTOR_ADD, load_function};

/// Threads per block: a multiple of the warp size, small enough for full occupancy.
const BLOCK: u32 = 256;
/// Blocks per SM at most; the grid-stride loop covers the rest, so huge inputs do not launch
/// millions of tiny blocks.
const BLOCKS_PER_SM: usize = 8;

/// The kernel entry point for a dtype.
pub fn function_name(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("vector_add_f32"),
        DType::BF16 => Ok("vector_add_bf16"),
        other => Err(Error::DTypeMismatch {
            op: OP,
            got: other,
            expected: None,
        }),
    }
}

/// The contiguous bytes of a CUDA tensor's elements.
fn contiguous_bytes<'a>(t: &'a Tensor, which: &str) -> Result<CudaView<'a, u8>> {
    if !t.is_contiguous() {
        return Err(Error::invalid(
            OP,
            format!(
                "the CUDA path needs a contiguous `{which}`; got a strided view of shape {:?}",
                t.shape()
            ),
        ));
    }
    let size = t.dtype().size_in_bytes();
    let start = t.layout().offset() * size;
    Ok(t.cuda_storage(OP)?.bytes.slice(start..start + t.elem_count() * size))
}

/// `a + b` on the CUDA device both inputs live on; allocates the output.
pub fn vector_add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let storage = a.cuda_storage(OP)?;
    let (dtype, ordinal) = (storage.dtype, storage.ordinal);
    let n = a.elem_count();
    if n == 0 {
        // Nothing to add; a zero-byte device allocation is not allowed.
        return Ok(a.clone());
    }
    let backend = l4_core::cuda::backend(ordinal)?;
    let (a_bytes, b_bytes) = (contiguous_bytes(a, "a")?, contiguous_bytes(b, "b")?);
    // SAFETY: the kernel writes every one of the n elements before anything reads them.
    let mut out = unsafe { backend.stream().alloc::<u8>(n * dtype.size_in_bytes()) }?;
    launch(&backend, dtype, &a_bytes, &b_bytes, &mut out, n)?;
    let out = CudaStorage {
        bytes: out,
        dtype,
        ordinal,
    };
    Tensor::from_cuda_storage(out, a.shape())
}

/// Launches the kernel on `n` elements of `dtype`: `out[..n] = a[..n] + b[..n]`. The buffers
/// hold raw little-endian elements.
pub fn launch(
    backend: &CudaBackend,
    dtype: DType,
    a: &CudaView<'_, u8>,
    b: &CudaView<'_, u8>,
    out: &mut CudaSlice<u8>,
    n: usize,
) -> Result<()> {
    let bytes = n * dtype.size_in_bytes();
    if a.len() < bytes || b.len() < bytes || out.len() < bytes {
        return Err(Error::invalid(
            OP,
            format!(
                "buffers of {}, {} and {} bytes cannot hold {n} {dtype} elements",
                a.len(),
                b.len(),
                out.len()
            ),
        ));
    }
    if n == 0 {
        return Ok(());
    }
    let function = load_function(backend, &VECTOR_ADD, function_name(dtype)?)?;
    let max_blocks = (backend.info().sm_count * BLOCKS_PER_SM).max(1);
    let blocks = n.div_ceil(BLOCK as usize).min(max_blocks);
    let config = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    let n = n as u64;
    let mut builder = backend.stream().launch_builder(&function);
    builder.arg(a).arg(b).arg(out).arg(&n);
    // SAFETY: the argument list matches the kernel signature (three device pointers to elements
    // of `dtype`, then an unsigned 64-bit count), and every buffer holds at least n elements.
    unsafe { builder.launch(config) }?;
    Ok(())
}
