//! `quant`: FP8 e4m3 quantization with one f32 scale per rectangular group of elements, and
//! dequantization, on every device.
//!
//! `x [rows, cols]` (f32, f16 or bf16) becomes `q [rows, cols]` (e4m3) and `scales [⌈rows/gr⌉,
//! ⌈cols/gc⌉]` (f32) with `x ≈ q · scales[r/gr, c/gc]`, for the groups of [`Granularity`]:
//! per-tensor, per-row (per token), per-column (per channel of a `[K, N]` weight), or blocks
//! (DeepSeek's 1×128 activations and 128×128 weights). A weight stored `[N, K]` (HF's
//! `nn.Linear`, K-major) gets per-output-channel scales from [`Granularity::PerRow`].
//!
//! The rule (docs/numerics.md, "FP8 quantization"): `amax` is the largest finite `|x|` of the
//! group (NaN and ±Inf never set a scale), optionally clamped to an upper bound (Meta's Llama 4
//! recipe bounds activation scales at 1200); `scale = max(amax, 1e-12) / 448`; `q =
//! satfinite_rne(x / scale)`. So the largest element maps to ±448 exactly, ±Inf and clamped
//! outliers saturate to ±448, NaN stays NaN, and an all-zero group quantizes to zeros. Each
//! step is a correctly rounded f32 operation or an order-free max, so the CUDA path
//! (`quant.cu`) equals the CPU reference ([`reference`]) bit for bit, scales included.

pub mod cuda;
pub mod reference;
#[cfg(test)]
mod tests;

use l4_core::{DType, Device, Error, Result, Tensor};

const OP: &str = "quantize_e4m3";

/// The largest finite e4m3 value.
pub const E4M3_MAX: f32 = 448.0;
/// The smallest `amax` a scale is computed from, so that all-zero groups get a finite scale.
pub const AMAX_FLOOR: f32 = 1e-12;

/// Which elements share a scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One scale for the whole tensor.
    PerTensor,
    /// One scale per row (per token of an activation, per output channel of an `[N, K]` weight).
    PerRow,
    /// One scale per column.
    PerColumn,
    /// One scale per `rows × cols` block (1×128, 128×128), clipped at the edges.
    Block {
        /// Block height.
        rows: usize,
        /// Block width.
        cols: usize,
    },
}

impl Granularity {
    /// The group extent `(group_rows, group_cols)` for a `[rows, cols]` tensor (at least 1×1).
    pub fn group(self, rows: usize, cols: usize) -> (usize, usize) {
        match self {
            Granularity::PerTensor => (rows.max(1), cols.max(1)),
            Granularity::PerRow => (1, cols.max(1)),
            Granularity::PerColumn => (rows.max(1), 1),
            Granularity::Block { rows: r, cols: c } => (r, c),
        }
    }

    /// The shape of the scales of a `[rows, cols]` tensor.
    pub fn scales_shape(self, rows: usize, cols: usize) -> [usize; 2] {
        let (gr, gc) = self.group(rows, cols);
        [rows.div_ceil(gr), cols.div_ceil(gc)]
    }
}

/// An e4m3 tensor with its scales.
#[derive(Clone, Debug)]
pub struct Quantized {
    /// `[rows, cols]` e4m3 codes.
    pub values: Tensor,
    /// `[⌈rows/gr⌉, ⌈cols/gc⌉]` f32 scales.
    pub scales: Tensor,
    /// How the scales are grouped.
    pub granularity: Granularity,
}

/// Fails unless `x` is a 2-D f32/f16/bf16 tensor and the granularity's blocks are non-empty.
fn check_input(x: &Tensor, granularity: Granularity) -> Result<(usize, usize)> {
    if !matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        return Err(Error::DTypeMismatch {
            op: OP,
            got: x.dtype(),
            expected: None,
        });
    }
    let &[rows, cols] = x.shape() else {
        return Err(Error::BadShape {
            op: OP,
            shape: x.shape().to_vec(),
            msg: "expected [rows, cols]; reshape leading dimensions into rows first".into(),
        });
    };
    if let Granularity::Block { rows: 0, .. } | Granularity::Block { cols: 0, .. } = granularity {
        return Err(Error::invalid(
            OP,
            "a scale block needs at least one row and one column",
        ));
    }
    Ok((rows, cols))
}

/// Quantizes `x [rows, cols]` to e4m3 with scales computed from each group's finite amax,
/// clamped to `upper_bound` when given (which must be finite and > 0).
pub fn quantize(x: &Tensor, granularity: Granularity, upper_bound: Option<f32>) -> Result<Quantized> {
    check_input(x, granularity)?;
    if let Some(ub) = upper_bound
        && !(ub.is_finite() && ub > 0.0)
    {
        return Err(Error::invalid(
            OP,
            format!("the scale upper bound must be finite and > 0, got {ub}"),
        ));
    }
    let ub = upper_bound.unwrap_or(f32::INFINITY);
    match x.device() {
        Device::Cpu => reference::quantize(x, granularity, ub),
        Device::Cuda(_) => cuda::quantize(x, granularity, ub),
    }
}

/// Quantizes `x [rows, cols]` with given scales (f32, the shape of
/// [`Granularity::scales_shape`], every one finite and > 0, on `x`'s device).
pub fn quantize_with_scales(x: &Tensor, scales: &Tensor, granularity: Granularity) -> Result<Quantized> {
    let (rows, cols) = check_input(x, granularity)?;
    check_scales(scales, granularity, rows, cols, x.device())?;
    match x.device() {
        Device::Cpu => reference::quantize_with_scales(x, scales, granularity),
        Device::Cuda(_) => cuda::quantize_with_scales(x, scales, granularity),
    }
}

/// `q · scale` rounded once into `dtype` (f32, f16 or bf16), on `q`'s device.
pub fn dequantize(q: &Quantized, dtype: DType) -> Result<Tensor> {
    if q.values.dtype() != DType::F8E4M3 {
        return Err(Error::DTypeMismatch {
            op: "dequantize_e4m3",
            got: q.values.dtype(),
            expected: Some(DType::F8E4M3),
        });
    }
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(Error::DTypeMismatch {
            op: "dequantize_e4m3",
            got: dtype,
            expected: None,
        });
    }
    let &[rows, cols] = q.values.shape() else {
        return Err(Error::BadShape {
            op: "dequantize_e4m3",
            shape: q.values.shape().to_vec(),
            msg: "expected [rows, cols]".into(),
        });
    };
    check_scales(&q.scales, q.granularity, rows, cols, q.values.device())?;
    match q.values.device() {
        Device::Cpu => reference::dequantize(q, dtype),
        Device::Cuda(_) => cuda::dequantize(q, dtype),
    }
}

/// Fails unless `scales` is f32 of the granularity's scales shape on `device`; given scales
/// must also be finite and > 0 (checked on the host: scales are small).
fn check_scales(scales: &Tensor, granularity: Granularity, rows: usize, cols: usize, device: Device) -> Result<()> {
    if scales.dtype() != DType::F32 {
        return Err(Error::DTypeMismatch {
            op: OP,
            got: scales.dtype(),
            expected: Some(DType::F32),
        });
    }
    let want = granularity.scales_shape(rows, cols);
    if scales.shape() != want {
        return Err(Error::BadShape {
            op: OP,
            shape: scales.shape().to_vec(),
            msg: format!("scales for {granularity:?} of a [{rows}, {cols}] tensor must be {want:?}"),
        });
    }
    if scales.device() != device {
        return Err(Error::DeviceMismatch {
            op: OP,
            lhs: device,
            rhs: scales.device(),
        });
    }
    if let Some(bad) = scales.to_f32_vec()?.into_iter().find(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(Error::invalid(
            OP,
            format!("scales must be finite and > 0, found {bad}"),
        ));
    }
    Ok(())
}
