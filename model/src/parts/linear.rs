//! A bias-free linear layer, in the compute dtype or in FP8.
//!
//! In the compute dtype the weight stays as loaded; the forward pass multiplies by its
//! transposed view, which the GEMM reads in place through its strides (no copy at load time,
//! so resident memory stays at the checkpoint's size). In FP8 it is an [`Fp8Linear`].

use l4_core::{DType, Error, Result, Tensor};
use l4_kernels::ops;
use l4_kernels::quant::Granularity;

use super::fp8::Fp8Linear;

/// How the weight is held.
#[derive(Clone, Debug)]
enum Weight {
    /// `Wᵀ [in, out]` in the compute dtype.
    Dense(Tensor),
    /// e4m3 `[out, in]` with per-channel (or block) scales.
    Fp8(Fp8Linear),
}

/// `y = x · Wᵀ` for HF's `W [out, in]`.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Weight,
}

impl Linear {
    /// From an HF `nn.Linear` weight `[out, in]`.
    pub fn from_hf_weight(weight: &Tensor) -> Result<Self> {
        if weight.rank() != 2 {
            return Err(Error::BadShape {
                op: "linear",
                shape: weight.shape().to_vec(),
                msg: "expected [out, in]".into(),
            });
        }
        Ok(Linear {
            weight: Weight::Dense(weight.transpose(0, 1)?),
        })
    }

    /// From a weight already laid out `[in, out]` (HF's fused expert tensors, applied as x·W).
    pub fn from_in_out(weight_t: Tensor) -> Result<Self> {
        Ok(Linear {
            weight: Weight::Dense(weight_t),
        })
    }

    /// From an FP8 linear.
    pub fn from_fp8(linear: Fp8Linear) -> Self {
        Linear {
            weight: Weight::Fp8(linear),
        }
    }

    /// The compute-dtype weight as the GEMM reads it, `Wᵀ [in, out]` (a view, possibly
    /// strided); `None` for FP8.
    pub fn dense_in_out(&self) -> Option<&Tensor> {
        match &self.weight {
            Weight::Dense(w) => Some(w),
            Weight::Fp8(_) => None,
        }
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        match &self.weight {
            Weight::Dense(w) => w.shape()[0],
            Weight::Fp8(l) => l.in_features(),
        }
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        match &self.weight {
            Weight::Dense(w) => w.shape()[1],
            Weight::Fp8(l) => l.out_features(),
        }
    }

    /// Whether the weight is held in FP8.
    pub fn is_fp8(&self) -> bool {
        matches!(self.weight, Weight::Fp8(_))
    }

    /// The FP8 layer, when the weights are FP8.
    pub fn as_fp8(&self) -> Option<&Fp8Linear> {
        match &self.weight {
            Weight::Fp8(l) => Some(l),
            _ => None,
        }
    }

    /// The same layer with its weight quantized to e4m3 per output channel (run in FP8).
    pub fn to_fp8(&self) -> Result<Linear> {
        match &self.weight {
            Weight::Dense(w_t) => Ok(Linear::from_fp8(Fp8Linear::quantize(&w_t.transpose(0, 1)?)?)),
            Weight::Fp8(_) => Ok(self.clone()),
        }
    }

    /// The same layer with its weight in e4m3 grouped by `granularity` (per output channel, or
    /// 128×128 blocks), run in FP8. A weight already in FP8 with other scales is quantized
    /// again from its f32 dequantization.
    pub fn to_fp8_with(&self, granularity: Granularity) -> Result<Linear> {
        let weight = match &self.weight {
            Weight::Fp8(l) if l.granularity() == granularity => return Ok(self.clone()),
            Weight::Fp8(l) => l.dequantized(DType::F32)?,
            Weight::Dense(w_t) => w_t.transpose(0, 1)?,
        };
        Ok(Linear::from_fp8(Fp8Linear::quantize_with(&weight, granularity)?))
    }

    /// The same layer in `dtype` with the e4m3 rounding of its weight: an FP8 weight
    /// dequantized, a dense one quantized per output channel and dequantized (the weight-only
    /// quantization error, without quantized activations).
    pub fn to_dequantized(&self, dtype: DType) -> Result<Linear> {
        let fp8 = match &self.weight {
            Weight::Dense(w_t) => Fp8Linear::quantize(&w_t.transpose(0, 1)?)?,
            Weight::Fp8(l) => l.clone(),
        };
        Linear::from_hf_weight(&fp8.dequantized(dtype)?)
    }

    /// `x [.., in] -> [.., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let weight_t = match &self.weight {
            Weight::Dense(w) => w,
            Weight::Fp8(l) => return l.forward(x),
        };
        let shape = x.shape();
        let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
        let flat = ops::contiguous(x)?.reshape(&[rows, self.in_features()])?;
        let mut out_shape = shape.to_vec();
        if let Some(last) = out_shape.last_mut() {
            *last = self.out_features();
        }
        ops::matmul(&flat, weight_t)?.reshape(&out_shape)
    }
}
