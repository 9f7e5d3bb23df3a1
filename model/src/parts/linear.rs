//! A bias-free linear layer. The weight stays as loaded; the forward pass multiplies by its
//! transposed view, which the GEMM reads in place through its strides (no copy at load time,
//! so resident memory stays at the checkpoint's size).

use l4_core::{Error, Result, Tensor};
use l4_kernels::ops;

/// `y = x · Wᵀ`, holding `Wᵀ [in, out]`: a transposed view of HF's `W [out, in]`, or a weight
/// that is already `[in, out]` (HF's fused experts).
#[derive(Clone, Debug)]
pub struct Linear {
    weight_t: Tensor, // [in, out]
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
            weight_t: weight.transpose(0, 1)?,
        })
    }

    /// From a weight already laid out `[in, out]` (HF's fused expert tensors, applied as x·W).
    pub fn from_in_out(weight_t: Tensor) -> Result<Self> {
        Ok(Linear { weight_t })
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight_t.shape()[0]
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight_t.shape()[1]
    }

    /// `x [.., in] -> [.., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let shape = x.shape();
        let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
        let flat = ops::contiguous(x)?.reshape(&[rows, self.in_features()])?;
        let mut out_shape = shape.to_vec();
        if let Some(last) = out_shape.last_mut() {
            *last = self.out_features();
        }
        ops::matmul(&flat, &self.weight_t)?.reshape(&out_shape)
    }
}
