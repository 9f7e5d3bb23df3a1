//! The CPU path of `cast`, which is also its reference: l4-core's `Tensor::to_dtype` (exact
//! widening, one rounding to nearest even, FP8 satfinite).

use l4_core::{DType, Result, Tensor};

/// `x` converted to `dtype` on the host; `x` may be any strided view.
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    x.to_dtype(dtype)
}
