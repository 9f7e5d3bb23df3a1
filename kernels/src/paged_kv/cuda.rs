//! The CUDA side of `paged_kv`: pool buffers, the block table upload, and the launchers of
//! `paged_kv.cu`'s write and gather kernels.

use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};
use l4_core::{DType, Device, Error, Result, Tensor};

use super::{OP, PoolLayout};
use crate::launch::{contiguous_bytes, grid_1d, output_tensor};
use crate::ops::contiguous;
use crate::{PAGED_KV, load_function};

const THREADS: u32 = 256;

/// `PagedKvParams` of the source, by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Params {
    batch: u32,
    heads_kv: u32,
    tokens: u32,
    dh: u32,
    block_log2: u32,
    max_blocks: u32,
    slot0: u32,
    pad: u32,
}

// SAFETY: #[repr(C)] plain integers, laid out like `PagedKvParams`.
unsafe impl DeviceRepr for Params {}

fn ordinal(device: Device) -> Result<usize> {
    match device {
        Device::Cuda(n) => Ok(n),
        Device::Cpu => Err(Error::invalid(OP, "internal: a CPU pool on the CUDA path")),
    }
}

fn params(layout: PoolLayout, shape: &[usize], slot0: usize) -> Result<Params> {
    let [b, hk, t, dh] = shape[..] else {
        return Err(Error::invalid(OP, "internal: a 4-D shape expected"));
    };
    if [b * hk * t * dh, slot0 + t, layout.max_blocks]
        .iter()
        .any(|&x| x > u32::MAX as usize)
    {
        return Err(Error::invalid(OP, "cache too large for 32-bit indexing"));
    }
    Ok(Params {
        batch: b as u32,
        heads_kv: hk as u32,
        tokens: t as u32,
        dh: dh as u32,
        block_log2: layout.block_log2,
        max_blocks: layout.max_blocks as u32,
        slot0: slot0 as u32,
        pad: 0,
    })
}

fn word(dtype: DType) -> usize {
    dtype.size_in_bytes()
}

/// A pool of `bytes` bytes holding `old`'s bytes first (the rest zero).
pub fn grown(old: Option<CudaSlice<u8>>, bytes: usize, device: Device) -> Result<CudaSlice<u8>> {
    let backend = l4_core::cuda::backend(ordinal(device)?)?;
    let mut pool = backend.stream().alloc_zeros::<u8>(bytes)?;
    if let Some(old) = old {
        let n = old.len();
        backend.stream().memcpy_dtod(&old, &mut pool.slice_mut(..n))?;
    }
    Ok(pool)
}

/// The block table rows on the device (`None` when no block is held), written into `old` when
/// it is large enough: a table grows by one block per sequence at a time, so the buffer is
/// allocated with a quarter (and 64 entries) to spare and most uploads are a copy, not an
/// allocation. The copy is ordered on the stream after every kernel that read the old rows.
pub fn upload_table(old: Option<CudaSlice<i32>>, rows: &[i32], device: Device) -> Result<Option<CudaSlice<i32>>> {
    if rows.is_empty() {
        return Ok(None);
    }
    let backend = l4_core::cuda::backend(ordinal(device)?)?;
    let mut table = match old {
        Some(table) if table.len() >= rows.len() => table,
        _ => backend
            .stream()
            .alloc_zeros::<i32>(rows.len() + (rows.len() / 4).max(64))?,
    };
    backend.stream().memcpy_htod(rows, &mut table.slice_mut(..rows.len()))?;
    Ok(Some(table))
}

/// Writes `x [b, hk, t, dh]` into logical slots `slot0..slot0 + t`.
pub fn write(
    pool: &mut CudaSlice<u8>,
    table: &CudaSlice<i32>,
    layout: PoolLayout,
    x: &Tensor,
    slot0: usize,
) -> Result<()> {
    let backend = crate::launch::backend_of(x, OP)?;
    let x = contiguous(x)?;
    let p = params(layout, x.shape(), slot0)?;
    let n = x.elem_count();
    if n == 0 {
        return Ok(());
    }
    let src = contiguous_bytes(&x, OP, "x")?;
    let function = load_function(&backend, &PAGED_KV, &format!("kv_write_b{}", word(x.dtype())))?;
    let mut builder = backend.stream().launch_builder(&function);
    builder.arg(&src).arg(pool).arg(table).arg(&p);
    // SAFETY: the arguments match `kv_write_b*`; src holds B·HK·T·DH elements; every sequence's
    // table row covers slots up to slot0 + T (the caller allocated the blocks first) and names
    // blocks below the pool's capacity.
    unsafe { builder.launch(grid_1d(&backend, n, THREADS, 8)) }?;
    Ok(())
}

/// `[b, hk, s, dh]` (`shape`) read from logical slots `0..s`.
pub fn gather(
    pool: &CudaSlice<u8>,
    table: &CudaSlice<i32>,
    layout: PoolLayout,
    dtype: DType,
    device: Device,
    shape: &[usize; 4],
) -> Result<Tensor> {
    let backend = l4_core::cuda::backend(ordinal(device)?)?;
    let p = params(layout, shape, 0)?;
    let n: usize = shape.iter().product();
    let mut out = crate::gather::cuda::alloc_poisoned_in_tests(&backend, OP, dtype, n)?;
    let function = load_function(&backend, &PAGED_KV, &format!("kv_gather_b{}", word(dtype)))?;
    let mut builder = backend.stream().launch_builder(&function);
    builder.arg(pool).arg(table).arg(&mut out).arg(&p);
    // SAFETY: the arguments match `kv_gather_b*`; out holds B·HK·S·DH elements; the table rows
    // cover slots 0..S with blocks below the pool's capacity.
    unsafe { builder.launch(grid_1d(&backend, n, THREADS, 8)) }?;
    output_tensor(out, dtype, backend.info().ordinal, shape)
}
