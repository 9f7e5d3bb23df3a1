//! The CUDA launcher for `topk.cu`: one warp per row, k ≤ 32.

use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use l4_core::cuda::CudaBackend;
use l4_core::{DType, Error, Result, Tensor};

use crate::gather::cuda::{alloc_poisoned_in_tests, empty_output};
use crate::launch::{backend_of, contiguous_bytes, output_tensor};
use crate::{TOPK, load_function};

const OP: &str = "topk";
/// The largest k the CUDA kernel selects (each lane keeps up to 32 candidates in registers).
pub const MAX_K: usize = 32;
/// Warps (rows in flight) per block; must match `WARPS` in `topk.cu`.
const WARPS: u32 = 4;
/// The longest row: the kernel's u32 index `i` steps by 32 up to `n`, which must not wrap, and
/// the rank word's `0xFFFFFFFF - i` must stay non-zero.
const MAX_N: usize = (u32::MAX - 32) as usize;
/// Blocks per SM at most; the kernel's grid-stride loop covers the remaining rows.
const BLOCKS_PER_SM: usize = 16;

/// The kernel entry point for a dtype and k: `topk_{dtype}_k{KMAX}` with KMAX the power of two
/// at or above k.
pub fn function_name(dtype: DType, k: usize) -> Result<String> {
    let name = match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        other => {
            return Err(Error::DTypeMismatch {
                op: OP,
                got: other,
                expected: None,
            });
        }
    };
    if k == 0 || k > MAX_K {
        return Err(Error::invalid(
            OP,
            format!("the CUDA top-k supports 1 <= k <= {MAX_K}, got k = {k} (run larger k on the CPU)"),
        ));
    }
    Ok(format!("topk_{name}_k{}", k.next_power_of_two()))
}

/// `x.topk(k)` on `x`'s CUDA device: `x [.., n]` f32/f16/bf16, contiguous, `1 ≤ k ≤ min(n,
/// 32)` → `(values [.., k], indices [.., k] I64)`, bit-exact with the CPU reference.
pub fn topk(x: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    if x.rank() == 0 {
        return Err(Error::BadShape {
            op: OP,
            shape: vec![],
            msg: "topk needs rank >= 1".into(),
        });
    }
    let n = x.shape()[x.rank() - 1];
    if k == 0 || k > n {
        return Err(Error::invalid(
            OP,
            format!("k = {k} must be in 1..={n} (last dimension)"),
        ));
    }
    let dtype = x.dtype();
    function_name(dtype, k)?;
    if n > MAX_N {
        return Err(Error::invalid(
            OP,
            format!("rows of {n} elements are too long for the CUDA kernel"),
        ));
    }
    let backend = backend_of(x, OP)?;
    let rows = x.elem_count() / n;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("rank >= 1") = k;
    if rows == 0 {
        return Ok((
            empty_output(&backend, dtype, &shape)?,
            empty_output(&backend, DType::I64, &shape)?,
        ));
    }
    let x_bytes = contiguous_bytes(x, OP, "x")?;
    let mut values = alloc_poisoned_in_tests(&backend, OP, dtype, rows * k)?;
    let mut indices = alloc_poisoned_in_tests(&backend, OP, DType::I64, rows * k)?;
    launch(&backend, dtype, &x_bytes, &mut values, &mut indices, rows, n, k)?;
    let ordinal = backend.info().ordinal;
    Ok((
        output_tensor(values, dtype, ordinal, &shape)?,
        output_tensor(indices, DType::I64, ordinal, &shape)?,
    ))
}

/// Launches the kernel on `rows` rows of `n` elements of `dtype` in `x`: `values [rows, k]`
/// (same dtype) and `indices [rows, k]` (i64) get each row's top k. Needs `1 ≤ k ≤ min(n, 32)`.
#[allow(clippy::too_many_arguments)]
pub fn launch(
    backend: &CudaBackend,
    dtype: DType,
    x: &CudaView<'_, u8>,
    values: &mut CudaSlice<u8>,
    indices: &mut CudaSlice<u8>,
    rows: usize,
    n: usize,
    k: usize,
) -> Result<()> {
    let function_name = function_name(dtype, k)?;
    if k > n || n > MAX_N {
        return Err(Error::invalid(
            OP,
            format!("k = {k} must be in 1..={n}, with n <= {MAX_N}"),
        ));
    }
    let size = dtype.size_in_bytes();
    if x.len() < rows * n * size || values.len() < rows * k * size || indices.len() < rows * k * 8 {
        return Err(Error::invalid(
            OP,
            format!(
                "buffers of {}, {} and {} bytes cannot hold [{rows}, {n}] inputs and [{rows}, {k}] outputs of {dtype}",
                x.len(),
                values.len(),
                indices.len()
            ),
        ));
    }
    if rows == 0 {
        return Ok(());
    }
    let function = load_function(backend, &TOPK, &function_name)?;
    let cap = (backend.info().sm_count * BLOCKS_PER_SM).max(1);
    let blocks = rows.div_ceil(WARPS as usize).clamp(1, cap);
    let config = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (WARPS * 32, 1, 1),
        shared_mem_bytes: 0,
    };
    let (rows, n, k) = (rows as u64, n as u32, k as u32);
    let mut builder = backend.stream().launch_builder(&function);
    builder.arg(x).arg(values).arg(indices).arg(&rows).arg(&n).arg(&k);
    // SAFETY: the arguments match `topk_*` (three device pointers, then u64 rows, u32 n, u32
    // k); the buffers hold rows·n inputs and rows·k outputs (checked above); 1 ≤ k ≤ n, so every
    // round of the selection finds a real element.
    unsafe { builder.launch(config) }?;
    Ok(())
}
