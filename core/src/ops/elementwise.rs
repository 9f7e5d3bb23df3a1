//! Elementwise ops: binary with NumPy broadcasting, unary maps, and affine scaling. Float
//! dtypes only; computed in f32 and rounded once into the input dtype.

use std::f32::consts::FRAC_1_SQRT_2;

use rayon::prelude::*;

use crate::layout::broadcast_shape;
use crate::ops::{PAR_MIN_ELEMS, check_float, check_same, from_f32};
use crate::{Result, Tensor};

/// Logistic sigmoid 1 / (1 + e^-x), in the form that never overflows: for x < 0 it is
/// e^x / (1 + e^x), which keeps full relative accuracy where the result is tiny.
fn sigmoid_f32(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// SiLU x·σ(x); the limit −0 at x = −∞ (where the product would be −∞·0 = NaN).
fn silu_f32(x: f32) -> f32 {
    if x == f32::NEG_INFINITY {
        return -0.0;
    }
    x * sigmoid_f32(x)
}

/// Exact GELU x·Φ(x) = 0.5·x·(1 + erf(x/√2)), evaluated as 0.5·x·erfc(−x/√2): the same
/// function, but erfc keeps full relative accuracy for negative x where 1 + erf(·) would cancel.
/// The limit −0 at x = −∞.
fn gelu_f32(x: f32) -> f32 {
    if x == f32::NEG_INFINITY {
        return -0.0;
    }
    0.5 * x * libm::erfcf(-x * FRAC_1_SQRT_2)
}

/// NaN-propagating maximum (f32::max would drop a NaN operand).
fn maximum_f32(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() { f32::NAN } else { a.max(b) }
}

/// NaN-propagating minimum.
fn minimum_f32(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() { f32::NAN } else { a.min(b) }
}

impl Tensor {
    /// Applies `f` to every element in f32 and rounds into the input dtype.
    pub(crate) fn map_f32(&self, op: &'static str, f: impl Fn(f32) -> f32 + Sync + Send) -> Result<Tensor> {
        check_float(op, self)?;
        let cpu = self.cpu_storage(op)?;
        // Row-major f32 values of the (possibly strided) view.
        let mut values = cpu.to_f32_vec(self.layout());
        // One f32 evaluation per element.
        if values.len() >= PAR_MIN_ELEMS {
            values.par_iter_mut().for_each(|x| *x = f(*x));
        } else {
            values.iter_mut().for_each(|x| *x = f(*x));
        }
        from_f32(values, self.shape(), self.dtype())
    }

    /// Applies `f` pairwise after broadcasting both operands to their common shape.
    pub(crate) fn zip_f32(
        &self,
        rhs: &Tensor,
        op: &'static str,
        f: impl Fn(f32, f32) -> f32 + Sync + Send,
    ) -> Result<Tensor> {
        check_same(op, self, rhs)?;
        check_float(op, self)?;
        // Output shape under NumPy broadcasting; a mismatch names both shapes.
        let shape = broadcast_shape(op, self.shape(), rhs.shape())?;
        let (a_cpu, b_cpu) = (self.cpu_storage(op)?, rhs.cpu_storage(op)?);
        // Both operands as row-major f32 values of the broadcast shape (stride-0 views).
        let a = a_cpu.to_f32_vec(&self.layout().broadcast_as(&shape)?);
        let b = b_cpu.to_f32_vec(&rhs.layout().broadcast_as(&shape)?);
        // One f32 evaluation per output element.
        let out: Vec<f32> = if a.len() >= PAR_MIN_ELEMS {
            a.par_iter().zip(b.par_iter()).map(|(&x, &y)| f(x, y)).collect()
        } else {
            a.iter().zip(&b).map(|(&x, &y)| f(x, y)).collect()
        };
        from_f32(out, &shape, self.dtype())
    }

    /// `self + rhs` elementwise with broadcasting.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.zip_f32(rhs, "add", |a, b| a + b)
    }

    /// `self - rhs` elementwise with broadcasting.
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.zip_f32(rhs, "sub", |a, b| a - b)
    }

    /// `self * rhs` elementwise with broadcasting.
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.zip_f32(rhs, "mul", |a, b| a * b)
    }

    /// `self / rhs` elementwise with broadcasting (IEEE: x/0 = ±inf, 0/0 = NaN).
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.zip_f32(rhs, "div", |a, b| a / b)
    }

    /// `max(self, rhs)` elementwise with broadcasting; NaN in either operand gives NaN.
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.zip_f32(rhs, "maximum", maximum_f32)
    }

    /// `min(self, rhs)` elementwise with broadcasting; NaN in either operand gives NaN.
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.zip_f32(rhs, "minimum", minimum_f32)
    }

    /// `-x`.
    pub fn neg(&self) -> Result<Tensor> {
        self.map_f32("neg", |x| -x)
    }

    /// `e^x`.
    pub fn exp(&self) -> Result<Tensor> {
        self.map_f32("exp", f32::exp)
    }

    /// `√x` (NaN for x < 0).
    pub fn sqrt(&self) -> Result<Tensor> {
        self.map_f32("sqrt", f32::sqrt)
    }

    /// SiLU (swish): `x·σ(x) = x / (1 + e^-x)`; −0 at x = −∞.
    pub fn silu(&self) -> Result<Tensor> {
        self.map_f32("silu", silu_f32)
    }

    /// Exact (erf) GELU: `0.5·x·(1 + erf(x/√2))`, evaluated as `0.5·x·erfc(−x/√2)` (libm
    /// `erfcf`) for accuracy at negative x; −0 at x = −∞. Not the tanh approximation.
    pub fn gelu(&self) -> Result<Tensor> {
        self.map_f32("gelu", gelu_f32)
    }

    /// Logistic sigmoid `σ(x) = 1 / (1 + e^-x)`.
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.map_f32("sigmoid", sigmoid_f32)
    }

    /// Hyperbolic tangent.
    pub fn tanh(&self) -> Result<Tensor> {
        self.map_f32("tanh", f32::tanh)
    }

    /// `x²`.
    pub fn square(&self) -> Result<Tensor> {
        self.map_f32("square", |x| x * x)
    }

    /// `1 / x`.
    pub fn recip(&self) -> Result<Tensor> {
        self.map_f32("recip", f32::recip)
    }

    /// `x·mul + add`, with `mul` and `add` rounded to f32 first and two f32 roundings (product,
    /// then sum).
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        let (m, a) = (mul as f32, add as f32);
        self.map_f32("affine", move |x| x * m + a)
    }

    /// `x·factor`, with `factor` rounded to f32 first (one f32 rounding; signs of zeros kept).
    pub fn scale(&self, factor: f64) -> Result<Tensor> {
        let s = factor as f32;
        self.map_f32("scale", move |x| x * s)
    }
}
