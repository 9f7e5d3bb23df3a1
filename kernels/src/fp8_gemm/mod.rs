//! `fp8_gemm`: `D = (A·s_a)(B·s_b)ᵀ` for e4m3 operands, on every device.
//!
//! `A [M, K]` (activations) and `B [N, K]` (weights, HF's `[out, in]` layout) are
//! [`Quantized`] e4m3 tensors, both K-major. Accumulation is in f32 (f64 on the CPU), the
//! output is bf16 or f32, and an optional f32 `bias [N]` and a `residual [M, N]` (output dtype)
//! are added in the epilogue, in that order. Two scaling recipes ([`Fp8Scaling`]):
//!
//! * **row-wise** (Meta's Llama 4 recipe, the primary path): `A` per-row (per token) and `B`
//!   per-row (per output channel) scales, or per-tensor for either, applied once per output:
//!   `D[m, n] = s_a[m]·s_b[n]·Σ_k A[m, k]·B[n, k]`;
//! * **block** (DeepSeek's recipe): `A` in 1×128 and `B` in 128×128 blocks, each 128-wide K
//!   block's partial sum scaled by its two scales.
//!
//! Devices: the CPU path is [`reference`] (plain loops, f64 accumulation over the exact e4m3
//! values, one rounding into the output), which is also the test oracle. The CUDA path
//! ([`cuda`], `fp8_gemm.cu`) picks between a warp-specialised TMA + wgmma Hopper kernel and a
//! memory-bound small-M kernel by a documented heuristic ([`cuda::plan`]); both accumulate in
//! f32 with K-block promotion and are deterministic. [`cublaslt`] runs the same row-wise problem
//! through cuBLASLt, the vendor baseline of the benchmarks. Accuracy (docs/numerics.md, "FP8 GEMM"):
//! within a relative Frobenius error of 2e-4 of the reference with f32 output.

pub mod cublaslt;
pub mod cuda;
pub mod reference;
#[cfg(test)]
mod tests;

use l4_core::{DType, Device, Error, Result, Tensor};

use crate::quant::{Granularity, Quantized};

const OP: &str = "fp8_gemm";

/// The width of a K block (and of a weight block's N extent) in block scaling.
pub const BLOCK_K: usize = 128;

/// How the scales of `A` and `B` combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Scaling {
    /// One scale per row of `A` and per row of `B` (per-tensor scales are broadcast).
    RowWise,
    /// `A` in 1×128 blocks, `B` in 128×128 blocks.
    Block,
}

impl Fp8Scaling {
    /// The recipe the operands' granularities describe: per-row or per-tensor on both sides is
    /// row-wise, 1×128 with 128×128 is block; anything else is an error naming both.
    pub fn of(a: Granularity, b: Granularity) -> Result<Self> {
        let block_a = Granularity::Block { rows: 1, cols: BLOCK_K };
        let block_b = Granularity::Block {
            rows: BLOCK_K,
            cols: BLOCK_K,
        };
        match (a, b) {
            (Granularity::PerRow | Granularity::PerTensor, Granularity::PerRow | Granularity::PerTensor) => {
                Ok(Fp8Scaling::RowWise)
            }
            (a, b) if a == block_a && b == block_b => Ok(Fp8Scaling::Block),
            (a, b) => Err(Error::invalid(
                OP,
                format!(
                    "unsupported scaling: A {a:?} with B {b:?}; use per-row/per-tensor on both (row-wise) or A \
                     1x128 with B 128x128 blocks"
                ),
            )),
        }
    }
}

/// What the epilogue adds after scaling.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// `[N]` f32, added to every row.
    pub bias: Option<&'a Tensor>,
    /// `[M, N]` in the output dtype, added last.
    pub residual: Option<&'a Tensor>,
}

/// The checked problem: `(M, N, K, scaling)`.
fn check(
    a: &Quantized,
    b: &Quantized,
    out: DType,
    epilogue: Epilogue<'_>,
) -> Result<(usize, usize, usize, Fp8Scaling)> {
    for (t, which) in [(&a.values, "A"), (&b.values, "B")] {
        if t.dtype() != DType::F8E4M3 {
            return Err(Error::invalid(
                OP,
                format!("{which} must be e4m3 codes, got {}", t.dtype()),
            ));
        }
        if t.rank() != 2 {
            return Err(Error::BadShape {
                op: OP,
                shape: t.shape().to_vec(),
                msg: format!("{which} must be 2-D (K-major)"),
            });
        }
    }
    let (m, k) = (a.values.shape()[0], a.values.shape()[1]);
    let n = b.values.shape()[0];
    if b.values.shape()[1] != k {
        return Err(Error::ShapeMismatch {
            op: OP,
            lhs: a.values.shape().to_vec(),
            rhs: b.values.shape().to_vec(),
        });
    }
    let device = a.values.device();
    for t in [&a.scales, &b.values, &b.scales] {
        if t.device() != device {
            return Err(Error::DeviceMismatch {
                op: OP,
                lhs: device,
                rhs: t.device(),
            });
        }
    }
    if !matches!(out, DType::F32 | DType::BF16) {
        return Err(Error::DTypeMismatch {
            op: OP,
            got: out,
            expected: Some(DType::BF16),
        });
    }
    if let Some(bias) = epilogue.bias {
        check_extra(bias, "bias", &[n], DType::F32, device)?;
    }
    if let Some(residual) = epilogue.residual {
        check_extra(residual, "residual", &[m, n], out, device)?;
    }
    let scaling = Fp8Scaling::of(a.granularity, b.granularity)?;
    // The kernels index the scales as flat f32 arrays of exactly this many values (row-wise:
    // one per row; block: `[rows / block rows, ⌈K/128⌉]`), so a hand-built `Quantized` whose
    // scales disagree with its granularity would read past them on a GPU.
    for (q, rows, which) in [(a, m, "A"), (b, n, "B")] {
        let [scale_rows, scale_cols] = q.granularity.scales_shape(rows, k);
        if q.scales.dtype() != DType::F32 || q.scales.elem_count() != scale_rows * scale_cols {
            return Err(Error::invalid(
                OP,
                format!(
                    "{which}'s {:?} scales must be f32 [{scale_rows}, {scale_cols}], got {} {:?}",
                    q.granularity,
                    q.scales.dtype(),
                    q.scales.shape()
                ),
            ));
        }
    }
    Ok((m, n, k, scaling))
}

fn check_extra(t: &Tensor, which: &str, shape: &[usize], dtype: DType, device: Device) -> Result<()> {
    if t.shape() != shape || t.dtype() != dtype || t.device() != device {
        return Err(Error::invalid(
            OP,
            format!(
                "{which} must be {dtype} {shape:?} on {device}, got {} {:?} on {}",
                t.dtype(),
                t.shape(),
                t.device()
            ),
        ));
    }
    Ok(())
}

/// `(A·s_a)(B·s_b)ᵀ [M, N]` in `out` (bf16 or f32) plus the epilogue's bias and residual, on
/// the operands' device. Errors: codes that are not 2-D e4m3, mismatched K, mixed devices,
/// an unsupported pair of granularities, an output dtype other than bf16/f32, a misshapen
/// bias or residual.
pub fn fp8_gemm(a: &Quantized, b: &Quantized, out: DType, epilogue: Epilogue<'_>) -> Result<Tensor> {
    let (m, n, k, scaling) = check(a, b, out, epilogue)?;
    match a.values.device() {
        Device::Cpu => reference::fp8_gemm(a, b, scaling, out, epilogue),
        Device::Cuda(_) => cuda::fp8_gemm(a, b, [m, n, k], scaling, out, epilogue),
    }
}
