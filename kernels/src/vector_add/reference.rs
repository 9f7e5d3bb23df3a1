//! The CPU reference for `vector_add`, which is also its CPU backend: a plain loop.

use l4_core::{DType, Device, Error, Result, Tensor, bf16};

/// `a + b` elementwise on the host. Inputs may be strided views; both must have the same shape
/// and dtype (checked by [`super::vector_add`]).
pub fn vector_add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match a.dtype() {
        DType::F32 => {
            let (a_values, b_values) = (a.to_vec::<f32>()?, b.to_vec::<f32>()?);
            // One IEEE round-to-nearest add per element.
            let out: Vec<f32> = a_values.iter().zip(&b_values).map(|(&x, &y)| x + y).collect();
            Tensor::from_vec(out, a.shape(), Device::Cpu)
        }
        DType::BF16 => {
            let (a_values, b_values) = (a.to_vec::<bf16>()?, b.to_vec::<bf16>()?);
            // Widen exactly to f32, add in f32, round once to bf16 (nearest, ties to even).
            let out: Vec<bf16> = a_values
                .iter()
                .zip(&b_values)
                .map(|(&x, &y)| bf16::from_f32(x.to_f32() + y.to_f32()))
                .collect();
            Tensor::from_vec(out, a.shape(), Device::Cpu)
        }
        other => Err(Error::DTypeMismatch {
            op: super::OP,
            got: other,
            expected: None,
        }),
    }
}
