//! The CUDA launcher for `rope.cu`.

use cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
use l4_core::cuda::CudaBackend;
use l4_core::{DType, Error, Result, Tensor};

use super::OP;
use crate::launch::{alloc_output, backend_of, contiguous_bytes, grid_1d, output_tensor};
use crate::{ROPE, load_function};

/// Threads per block.
const BLOCK: u32 = 256;
/// Blocks per SM at most (2048 resident threads); the grid-stride loop covers the rest.
const BLOCKS_PER_SM: usize = 8;
/// Heads each thread rotates with one sincos (`ROPE_HEADS` in `rope.cu`).
pub const HEADS_PER_THREAD: usize = 8;

/// The kernel entry point for a dtype.
pub fn function_name(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("rope_f32"),
        DType::F16 => Ok("rope_f16"),
        DType::BF16 => Ok("rope_bf16"),
        other => Err(Error::DTypeMismatch {
            op: OP,
            got: other,
            expected: None,
        }),
    }
}

/// RoPE of a CUDA tensor `x [b, t, heads, dh]` (checked by [`super::apply`]); copies
/// `inv_freq` to the device and allocates the output.
pub fn apply(x: &Tensor, inv_freq: &[f32], start: usize) -> Result<Tensor> {
    let dtype = x.dtype();
    function_name(dtype)?;
    let ordinal = x.cuda_storage(OP)?.ordinal;
    let &[b, t, heads, dh] = x.shape() else {
        return Err(Error::BadShape {
            op: OP,
            shape: x.shape().to_vec(),
            msg: "expected [b, t, heads, dh]".into(),
        });
    };
    let n = x.elem_count();
    if n == 0 {
        // Nothing to rotate; a zero-byte device allocation is not allowed.
        return Ok(x.clone());
    }
    let backend = backend_of(x, OP)?;
    let x_bytes = contiguous_bytes(x, OP, "x")?;
    let freq = backend.stream().clone_htod(inv_freq)?;
    let mut out = alloc_output(&backend, OP, dtype, n)?;
    launch(
        &backend,
        dtype,
        &x_bytes,
        &freq.slice(..),
        &mut out,
        [b, t, heads, dh],
        start,
    )?;
    output_tensor(out, dtype, ordinal, x.shape())
}

/// Launches RoPE on a contiguous `x` of `shape = [b, t, heads, dh]` elements of `dtype`, token
/// `i` at position `start + i`, with `inv_freq` holding `dh/2` f32 values on the device.
/// `out` (same shape) is fully overwritten; the byte buffers hold raw little-endian elements.
pub fn launch(
    backend: &CudaBackend,
    dtype: DType,
    x: &CudaView<'_, u8>,
    inv_freq: &CudaView<'_, f32>,
    out: &mut CudaSlice<u8>,
    shape: [usize; 4],
    start: usize,
) -> Result<()> {
    let function = function_name(dtype)?;
    let [b, t, heads, dh] = shape;
    if dh % 2 != 0 || inv_freq.len() < dh / 2 {
        return Err(Error::BadShape {
            op: OP,
            shape: shape.to_vec(),
            msg: format!(
                "needs an even head width and dh/2 inverse frequencies, got {}",
                inv_freq.len()
            ),
        });
    }
    let n = shape.iter().try_fold(1usize, |acc, &s| acc.checked_mul(s));
    let bytes = n.and_then(|n| n.checked_mul(dtype.size_in_bytes()));
    let bytes = bytes.ok_or_else(|| Error::invalid(OP, format!("shape {shape:?} overflows")))?;
    if x.len() < bytes || out.len() < bytes {
        return Err(Error::invalid(
            OP,
            format!(
                "buffers of {} and {} bytes cannot hold {shape:?} {dtype} elements",
                x.len(),
                out.len()
            ),
        ));
    }
    if bytes == 0 {
        return Ok(());
    }
    if start.checked_add(t).is_none() {
        return Err(Error::invalid(OP, format!("positions {start} + {t} overflow")));
    }
    let too_big = |what: &str, v: usize| {
        u32::try_from(v)
            .ok()
            .filter(|&v| v <= i32::MAX as u32)
            .ok_or_else(|| Error::invalid(OP, format!("{what} = {v} is more than the kernel supports (2^31 - 1)")))
    };
    let (t_arg, heads_arg, half_arg) = (too_big("t", t)?, too_big("heads", heads)?, too_big("dh/2", dh / 2)?);
    let rows = (b * t) as u64;
    let start_arg = start as u64;
    // One thread per (b·t row, group of HEADS_PER_THREAD heads, pair).
    let items = b * t * heads.div_ceil(HEADS_PER_THREAD) * (dh / 2);
    let function = load_function(backend, &ROPE, function)?;
    let config = grid_1d(backend, items, BLOCK, BLOCKS_PER_SM);
    let mut builder = backend.stream().launch_builder(&function);
    builder
        .arg(x)
        .arg(inv_freq)
        .arg(out)
        .arg(&rows)
        .arg(&t_arg)
        .arg(&heads_arg)
        .arg(&half_arg)
        .arg(&start_arg);
    // SAFETY: the arguments match the kernel signature (x as a device pointer to `dtype`
    // elements, inv_freq to dh/2 f32 values, out to `dtype` elements, then u64 rows = b·t, u32 t,
    // u32 heads, u32 dh/2, u64 start); x and out hold b·t·heads·dh elements (checked above).
    unsafe { builder.launch(config) }?;
    Ok(())
}
