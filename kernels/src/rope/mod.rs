//! `rope`: rotary position embedding in Llama 4's adjacent-pair (complex) form, on the device
//! the input lives on.
//!
//! `x [b, t, heads, dh]`, token `i` at absolute position `p = start + i`; each head vector is
//! read as `dh/2` pairs `(x[2j], x[2j+1])` rotated by `θ = f32(p) · inv_freq[j]` (the product in
//! f32, as HF computes it):
//!
//! ```text
//! y[2j]   = x[2j]·cos θ − x[2j+1]·sin θ
//! y[2j+1] = x[2j]·sin θ + x[2j+1]·cos θ
//! ```
//!
//! This is not the rotate-half form of Llama 1–3 (`l4_model`'s `RotaryTable` has the same
//! formula and makes `inv_freq`, llama3 scaling included). Shapes: `inv_freq.len() == dh/2`; the
//! output has `x`'s shape and dtype. Dtypes: float; the CPU takes every float dtype, CUDA f32,
//! f16 and bf16; f32 math, rounded once. Devices: the CPU path is [`reference`] (plain loops,
//! cos/sin in f64 rounded to f32), the CUDA path launches `rope.cu` ([`cuda`], `sincosf`) and
//! needs a contiguous `x`.

pub mod cuda;
pub mod reference;
#[cfg(test)]
mod tests;

use l4_core::{Device, Error, Result, Tensor};

const OP: &str = "rope";

/// Rotates `x [b, t, heads, dh]` whose token `i` sits at absolute position `start + i`, with
/// the inverse frequencies `inv_freq [dh/2]`. Errors on a non-float dtype, a rank other than 4,
/// `dh != 2·inv_freq.len()`, or positions past `usize::MAX`.
pub fn apply(x: &Tensor, inv_freq: &[f32], start: usize) -> Result<Tensor> {
    if !x.dtype().is_float() {
        return Err(Error::DTypeMismatch {
            op: OP,
            got: x.dtype(),
            expected: None,
        });
    }
    let &[_, t, _, dh] = x.shape() else {
        return Err(Error::BadShape {
            op: OP,
            shape: x.shape().to_vec(),
            msg: "expected [b, t, heads, dh]".into(),
        });
    };
    if dh != 2 * inv_freq.len() {
        return Err(Error::BadShape {
            op: OP,
            shape: x.shape().to_vec(),
            msg: format!(
                "head width must be 2·inv_freq.len() = {} (adjacent pairs)",
                2 * inv_freq.len()
            ),
        });
    }
    if start.checked_add(t).is_none() {
        return Err(Error::invalid(OP, format!("positions {start} + {t} overflow")));
    }
    match x.device() {
        Device::Cpu => reference::apply(x, inv_freq, start),
        Device::Cuda(_) => cuda::apply(x, inv_freq, start),
    }
}
