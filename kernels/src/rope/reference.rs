//! The CPU reference for `rope`, which is also its CPU backend: plain loops written like the
//! formula, numerically the same as `l4_model`'s `RotaryTable::apply` (the angle rounded to f32
//! first, cos and sin of it in f64 rounded to f32, then f32 products and sums) but independent of
//! it, since `l4-kernels` does not depend on `l4-model`.

use l4_core::{Device, Error, Result, Tensor};

use super::OP;

/// `(cos θ, sin θ)` for `θ = f32(position) · inv_freq` (one f32 product), evaluated in f64 and
/// rounded to f32.
pub fn cos_sin(position: usize, inv_freq: f32) -> (f32, f32) {
    let angle = position as f32 * inv_freq;
    let (sin, cos) = (angle as f64).sin_cos();
    (cos as f32, sin as f32)
}

/// Rotates `x [b, t, heads, dh]` (any float dtype, any layout) on the host; see
/// [`super::apply`], which checks the operands.
pub fn apply(x: &Tensor, inv_freq: &[f32], start: usize) -> Result<Tensor> {
    let shape = x.shape().to_vec();
    let &[_, t, heads, dh] = &shape[..] else {
        return Err(Error::BadShape {
            op: OP,
            shape,
            msg: "expected [b, t, heads, dh]".into(),
        });
    };
    if dh != 2 * inv_freq.len() {
        return Err(Error::BadShape {
            op: OP,
            shape,
            msg: format!("head width must be {}", 2 * inv_freq.len()),
        });
    }
    // Row-major f32 values: one head vector per `dh` consecutive values.
    let mut values = x.to_f32_vec()?;
    if dh > 0 {
        for (row, head) in values.chunks_mut(dh).enumerate() {
            // row = ((bi·t + token)·heads + h).
            let position = start + (row / heads) % t;
            for (j, &theta) in inv_freq.iter().enumerate() {
                let (cos, sin) = cos_sin(position, theta);
                let (re, im) = (head[2 * j], head[2 * j + 1]);
                head[2 * j] = re * cos - im * sin;
                head[2 * j + 1] = re * sin + im * cos;
            }
        }
    }
    Tensor::from_f32_vec(values, &shape, x.dtype(), Device::Cpu)
}
