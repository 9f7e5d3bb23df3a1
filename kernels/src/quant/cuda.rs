//! The CUDA launchers for `quant.cu`.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use l4_core::{DType, Error, Result, Tensor};

use super::{Granularity, OP, Quantized};
use crate::gather::cuda::{alloc_poisoned_in_tests, empty_output};
use crate::launch::{backend_of, contiguous_bytes, grid_1d, output_tensor};
use crate::ops::contiguous;
use crate::{QUANT, load_function};

/// Threads per block (`QUANT_BLOCK` in `quant.cu`).
const BLOCK: u32 = 256;
/// Blocks per SM at most for the grid-stride dequantization.
const BLOCKS_PER_SM: usize = 8;

/// The group geometry, laid out exactly as `QuantGroups` in `quant.cu` and passed by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantGroups {
    /// Rows of the tensor.
    pub rows: u64,
    /// Columns of the tensor.
    pub cols: u64,
    /// Group height.
    pub group_rows: u64,
    /// Group width.
    pub group_cols: u64,
    /// Groups per row of groups: `⌈cols / group_cols⌉`.
    pub groups_per_row: u64,
}

// SAFETY: a #[repr(C)] struct of five u64, the same layout as the kernel's parameter struct.
unsafe impl DeviceRepr for QuantGroups {}

impl QuantGroups {
    fn new(granularity: Granularity, rows: usize, cols: usize) -> Self {
        let (gr, gc) = granularity.group(rows, cols);
        QuantGroups {
            rows: rows as u64,
            cols: cols as u64,
            group_rows: gr as u64,
            group_cols: gc as u64,
            groups_per_row: cols.div_ceil(gc) as u64,
        }
    }
}

fn dtype_name(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        DType::F16 => Ok("f16"),
        other => Err(Error::DTypeMismatch {
            op: OP,
            got: other,
            expected: None,
        }),
    }
}

/// The shared path of both quantize entry points: `given` scales or computed ones.
fn launch_quantize(
    x: &Tensor,
    granularity: Granularity,
    given: Option<&Tensor>,
    upper_bound: f32,
) -> Result<Quantized> {
    let backend = backend_of(x, OP)?;
    let ordinal = backend.info().ordinal;
    let x = contiguous(x)?;
    let (rows, cols) = (x.shape()[0], x.shape()[1]);
    let scales_shape = granularity.scales_shape(rows, cols);
    let n = rows * cols;
    if n == 0 {
        return Ok(Quantized {
            values: empty_output(&backend, DType::F8E4M3, &[rows, cols])?,
            scales: empty_output(&backend, DType::F32, &scales_shape)?,
            granularity,
        });
    }
    let groups = QuantGroups::new(granularity, rows, cols);
    let group_count = scales_shape[0] * scales_shape[1];
    if group_count > i32::MAX as usize {
        return Err(Error::invalid(
            OP,
            format!("{group_count} scale groups exceed one launch"),
        ));
    }
    let x_bytes = contiguous_bytes(&x, OP, "x")?;
    let mut q = alloc_poisoned_in_tests(&backend, OP, DType::F8E4M3, n)?;
    let mut scales = match given {
        Some(s) => backend
            .stream()
            .clone_dtod(&contiguous_bytes(&contiguous(s)?, OP, "scales")?)?,
        None => alloc_poisoned_in_tests(&backend, OP, DType::F32, group_count)?,
    };
    let name = match given {
        Some(_) => format!("quant_given_{}", dtype_name(x.dtype())?),
        None => format!("quant_{}", dtype_name(x.dtype())?),
    };
    let function = load_function(&backend, &QUANT, &name)?;
    let config = LaunchConfig {
        grid_dim: (group_count as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut builder = backend.stream().launch_builder(&function);
    builder.arg(&x_bytes).arg(&mut q).arg(&mut scales).arg(&groups);
    if given.is_none() {
        builder.arg(&upper_bound);
    }
    // SAFETY: the arguments match `quant_*` / `quant_given_*` (input, codes and scales
    // pointers, the by-value group geometry, and the f32 bound for the computing variant);
    // `x` and `q` hold rows·cols elements and `scales` one f32 per group, one block per group.
    unsafe { builder.launch(config) }?;
    Ok(Quantized {
        values: output_tensor(q, DType::F8E4M3, ordinal, &[rows, cols])?,
        scales: output_tensor(scales, DType::F32, ordinal, &scales_shape)?,
        granularity,
    })
}

/// See [`super::quantize`].
pub fn quantize(x: &Tensor, granularity: Granularity, upper_bound: f32) -> Result<Quantized> {
    launch_quantize(x, granularity, None, upper_bound)
}

/// See [`super::quantize_with_scales`].
pub fn quantize_with_scales(x: &Tensor, scales: &Tensor, granularity: Granularity) -> Result<Quantized> {
    launch_quantize(x, granularity, Some(scales), f32::INFINITY)
}

/// See [`super::dequantize`].
pub fn dequantize(q: &Quantized, dtype: DType) -> Result<Tensor> {
    let backend = backend_of(&q.values, OP)?;
    let ordinal = backend.info().ordinal;
    let values = contiguous(&q.values)?;
    let scales = contiguous(&q.scales)?;
    let (rows, cols) = (values.shape()[0], values.shape()[1]);
    let n = rows * cols;
    if n == 0 {
        return empty_output(&backend, dtype, &[rows, cols]);
    }
    let groups = QuantGroups::new(q.granularity, rows, cols);
    let function = load_function(&backend, &QUANT, &format!("dequant_{}", dtype_name(dtype)?))?;
    let mut out = alloc_poisoned_in_tests(&backend, OP, dtype, n)?;
    let q_bytes = contiguous_bytes(&values, OP, "values")?;
    let s_bytes = contiguous_bytes(&scales, OP, "scales")?;
    let config = grid_1d(&backend, n, BLOCK, BLOCKS_PER_SM);
    let mut builder = backend.stream().launch_builder(&function);
    builder.arg(&q_bytes).arg(&s_bytes).arg(&mut out).arg(&groups);
    // SAFETY: the arguments match `dequant_*` (codes, scales, output, by-value geometry); the
    // buffers hold rows·cols codes and outputs and one scale per group.
    unsafe { builder.launch(config) }?;
    output_tensor(out, dtype, ordinal, &[rows, cols])
}
