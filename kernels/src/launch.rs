//! What every CUDA launcher needs: device views of input tensors, output allocation and grid
//! sizing. Kernels receive raw bytes and reinterpret them by dtype (see `common.cuh`).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaView, LaunchConfig};
use l4_core::cuda::CudaBackend;
use l4_core::{CudaStorage, DType, Error, Result, Tensor};

/// The backend of the device a CUDA tensor lives on.
pub fn backend_of(t: &Tensor, op: &'static str) -> Result<Arc<CudaBackend>> {
    l4_core::cuda::backend(t.cuda_storage(op)?.ordinal)
}

/// The bytes of a contiguous CUDA tensor's elements (its offset applied). Strided views are an
/// error naming `which` operand: callers make them contiguous first.
pub fn contiguous_bytes<'a>(t: &'a Tensor, op: &'static str, which: &str) -> Result<CudaView<'a, u8>> {
    if !t.is_contiguous() {
        return Err(Error::invalid(
            op,
            format!(
                "the CUDA path needs a contiguous `{which}`; got a strided view of shape {:?}",
                t.shape()
            ),
        ));
    }
    let size = t.dtype().size_in_bytes();
    let start = t.layout().offset() * size;
    Ok(t.cuda_storage(op)?.bytes.slice(start..start + t.elem_count() * size))
}

/// Device memory for `n > 0` elements of `dtype` that the kernel will fully overwrite. Empty
/// outputs must be handled before launching (CUDA refuses zero-byte allocations).
pub fn alloc_output(backend: &CudaBackend, op: &'static str, dtype: DType, n: usize) -> Result<CudaSlice<u8>> {
    if n == 0 {
        return Err(Error::invalid(
            op,
            "internal: empty outputs are handled before allocating",
        ));
    }
    // SAFETY: callers launch a kernel that writes every element before the tensor is read.
    Ok(unsafe { backend.stream().alloc::<u8>(n * dtype.size_in_bytes()) }?)
}

/// Wraps a freshly written output buffer as a contiguous tensor of `shape`.
pub fn output_tensor(bytes: CudaSlice<u8>, dtype: DType, ordinal: usize, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_cuda_storage(CudaStorage { bytes, dtype, ordinal }, shape)
}

/// A 1-D grid of `block`-thread blocks covering `n` work items, capped at `blocks_per_sm` per
/// SM; kernels loop (grid-stride) over the rest.
pub fn grid_1d(backend: &CudaBackend, n: usize, block: u32, blocks_per_sm: usize) -> LaunchConfig {
    let cap = (backend.info().sm_count * blocks_per_sm).max(1);
    let blocks = n.div_ceil(block as usize).clamp(1, cap);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}
