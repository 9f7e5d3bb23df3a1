//! The CUDA launcher for `random.cu`.

use cudarc::driver::PushKernelArg;
use l4_core::layout::elem_count;
use l4_core::{DType, Error, Result, Tensor};

use super::OP;
use crate::gather::cuda::{alloc_poisoned_in_tests, empty_output};
use crate::launch::{grid_1d, output_tensor};
use crate::{RANDOM, load_function};

/// Threads per block.
const BLOCK: u32 = 256;
/// Blocks per SM at most; the grid-stride loop covers the rest.
const BLOCKS_PER_SM: usize = 8;

/// The kernel entry point for a dtype.
pub fn function_name(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("randn_f32"),
        DType::F16 => Ok("randn_f16"),
        DType::BF16 => Ok("randn_bf16"),
        other => Err(Error::DTypeMismatch {
            op: OP,
            got: other,
            expected: None,
        }),
    }
}

/// `N(0, std²)` values of `shape` in `dtype`, made on CUDA device `ordinal`.
pub fn normal(shape: &[usize], dtype: DType, seed: u64, std: f32, ordinal: usize) -> Result<Tensor> {
    let backend = l4_core::cuda::backend(ordinal)?;
    let n = elem_count(shape);
    if n == 0 {
        return empty_output(&backend, dtype, shape);
    }
    let function = load_function(&backend, &RANDOM, function_name(dtype)?)?;
    let mut out = alloc_poisoned_in_tests(&backend, OP, dtype, n)?;
    let config = grid_1d(&backend, n, BLOCK, BLOCKS_PER_SM);
    let count = n as u64;
    let mut builder = backend.stream().launch_builder(&function);
    builder.arg(&mut out).arg(&count).arg(&seed).arg(&std);
    // SAFETY: the arguments match `randn_*` (output pointer, u64 count, u64 seed, f32 std) and
    // `out` holds n elements of the dtype.
    unsafe { builder.launch(config) }?;
    output_tensor(out, dtype, ordinal, shape)
}
