//! The CUDA launcher for `norm.cu`.

use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use l4_core::cuda::CudaBackend;
use l4_core::{DType, Error, Result, Tensor};

use super::{LAYER_OP, RMS_OP};
use crate::launch::{alloc_output, backend_of, contiguous_bytes, grid_1d, output_tensor};
use crate::{NORM, load_function};

/// Which norm a launch computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// `x · (1/√(Σx²/d + eps)) · w`.
    Rms,
    /// `(x − μ) · (1/√(σ² + eps)) · w + b`.
    Layer,
}

impl Norm {
    fn op(self) -> &'static str {
        match self {
            Norm::Rms => RMS_OP,
            Norm::Layer => LAYER_OP,
        }
    }
}

/// Rows up to this length are normalised by one warp each (eight rows per block); longer rows
/// by one block each.
pub const WARP_MAX_D: usize = 1024;
/// Rows longer than this get 1024-thread blocks instead of 256-thread ones.
const WIDE_MAX_D: usize = 8192;
/// Resident threads per SM on sm_90; the grid is capped at this many threads per SM and the
/// kernels loop over the remaining rows.
const THREADS_PER_SM: usize = 2048;

/// The kernel entry point for a norm, a dtype and a row length.
pub fn function_name(norm: Norm, dtype: DType, d: usize) -> Result<&'static str> {
    let warp = d <= WARP_MAX_D;
    Ok(match (norm, dtype, warp) {
        (Norm::Rms, DType::F32, true) => "rms_norm_warp_f32",
        (Norm::Rms, DType::F16, true) => "rms_norm_warp_f16",
        (Norm::Rms, DType::BF16, true) => "rms_norm_warp_bf16",
        (Norm::Rms, DType::F32, false) => "rms_norm_block_f32",
        (Norm::Rms, DType::F16, false) => "rms_norm_block_f16",
        (Norm::Rms, DType::BF16, false) => "rms_norm_block_bf16",
        (Norm::Layer, DType::F32, true) => "layer_norm_warp_f32",
        (Norm::Layer, DType::F16, true) => "layer_norm_warp_f16",
        (Norm::Layer, DType::BF16, true) => "layer_norm_warp_bf16",
        (Norm::Layer, DType::F32, false) => "layer_norm_block_f32",
        (Norm::Layer, DType::F16, false) => "layer_norm_block_f16",
        (Norm::Layer, DType::BF16, false) => "layer_norm_block_bf16",
        (_, other, _) => {
            return Err(Error::DTypeMismatch {
                op: norm.op(),
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

/// RMS norm of a CUDA tensor (checked by [`super::rms_norm`]); allocates the output.
pub fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    run(Norm::Rms, x, weight, None, eps)
}

/// Layer norm of a CUDA tensor (checked by [`super::layer_norm`]); allocates the output.
pub fn layer_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    run(Norm::Layer, x, weight, bias, eps)
}

fn run(norm: Norm, x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let op = norm.op();
    let dtype = x.dtype();
    function_name(norm, dtype, 0)?;
    let ordinal = x.cuda_storage(op)?.ordinal;
    let d = x.shape().last().copied().unwrap_or(0);
    let n = x.elem_count();
    if n == 0 {
        // Nothing to normalise; a zero-byte device allocation is not allowed.
        return Ok(x.clone());
    }
    let rows = n / d;
    let backend = backend_of(x, op)?;
    let x_bytes = contiguous_bytes(x, op, "x")?;
    let w_bytes = weight.map(|w| contiguous_bytes(w, op, "weight")).transpose()?;
    let b_bytes = bias.map(|b| contiguous_bytes(b, op, "bias")).transpose()?;
    let mut out = alloc_output(&backend, op, dtype, n)?;
    launch(
        &backend,
        norm,
        dtype,
        &x_bytes,
        w_bytes.as_ref(),
        b_bytes.as_ref(),
        &mut out,
        rows,
        d,
        eps as f32,
    )?;
    output_tensor(out, dtype, ordinal, x.shape())
}

/// Launches the norm on `rows` contiguous rows of `d` elements of `dtype`:
/// `out[r, ..] = norm(x[r, ..]; weight, bias, eps)`. `weight` and `bias` hold `d` elements
/// when present; a bias is only valid for [`Norm::Layer`]. The buffers hold raw little-endian
/// elements; `out` is fully overwritten.
#[allow(clippy::too_many_arguments)]
pub fn launch(
    backend: &CudaBackend,
    norm: Norm,
    dtype: DType,
    x: &CudaView<'_, u8>,
    weight: Option<&CudaView<'_, u8>>,
    bias: Option<&CudaView<'_, u8>>,
    out: &mut CudaSlice<u8>,
    rows: usize,
    d: usize,
    eps: f32,
) -> Result<()> {
    let op = norm.op();
    let function = function_name(norm, dtype, d)?;
    if norm == Norm::Rms && bias.is_some() {
        return Err(Error::invalid(op, "rms_norm takes no bias"));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::invalid(op, format!("eps must be finite and >= 0, got {eps}")));
    }
    let size = dtype.size_in_bytes();
    let bytes = rows
        .checked_mul(d)
        .and_then(|n| n.checked_mul(size))
        .ok_or_else(|| Error::invalid(op, format!("{rows} rows of {d} elements overflow")))?;
    let param_too_short = |p: Option<&CudaView<'_, u8>>| p.is_some_and(|p| p.len() < d * size);
    if x.len() < bytes || out.len() < bytes || param_too_short(weight) || param_too_short(bias) {
        return Err(Error::invalid(
            op,
            format!(
                "buffers of {} (x), {} (out), {:?} (weight) and {:?} (bias) bytes cannot hold {rows} rows of {d} \
                 {dtype} elements",
                x.len(),
                out.len(),
                weight.map(|w| w.len()),
                bias.map(|b| b.len()),
            ),
        ));
    }
    if bytes == 0 {
        return Ok(());
    }
    let d_arg = u32::try_from(d).ok().filter(|&d| d <= i32::MAX as u32).ok_or_else(|| {
        Error::invalid(
            op,
            format!("rows of {d} elements are longer than the kernel supports (2^31 - 1)"),
        )
    })?;
    let rows_arg = rows as u64;
    let function = load_function(backend, &NORM, function)?;
    let config = launch_config(backend, rows, d);
    // A null device pointer tells the kernel that the weight or bias is absent.
    let null: u64 = 0;
    let mut builder = backend.stream().launch_builder(&function);
    builder.arg(x);
    match weight {
        Some(w) => builder.arg(w),
        None => builder.arg(&null),
    };
    if norm == Norm::Layer {
        match bias {
            Some(b) => builder.arg(b),
            None => builder.arg(&null),
        };
    }
    builder.arg(out).arg(&rows_arg).arg(&d_arg).arg(&eps);
    // SAFETY: the arguments match the kernel signature (x, weight, [bias,] out as device
    // pointers to `dtype` elements or null, then u64 rows, u32 d, f32 eps); x and out hold
    // rows·d elements and weight and bias d elements (checked above).
    unsafe { builder.launch(config) }?;
    Ok(())
}
