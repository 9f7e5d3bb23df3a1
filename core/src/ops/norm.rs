//! RMS norm and layer norm over the last dimension, in f32.

use crate::ops::{check_eps, check_float, check_same, for_each_row_mut, from_f32};
use crate::{Error, Result, Tensor};

impl Tensor {
    /// RMS norm over the last dimension:
    /// `y = x / √(mean(x²) + eps) · w`, for `x [.., d]` and an optional `weight [d]` (one
    /// dtype and device with `x`). Every step runs in f32 (Σx² accumulated in index order,
    /// then `x · (1/√(Σx²/d + eps)) · w`); the result is rounded once into `x`'s dtype.
    /// `eps` must be finite and ≥ 0; rank must be ≥ 1. With `eps = 0` an all-zero row is NaN.
    pub fn rms_norm(&self, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        const OP: &str = "rms_norm";
        let d = self.norm_checks(OP, eps, &[weight])?;
        let w = read_param(OP, weight)?;
        let eps = eps as f32;
        // [rows, d], row-major.
        let mut x = self.cpu_storage(OP)?.to_f32_vec(self.layout());
        for_each_row_mut(&mut x, d, |row| {
            // Σ x² in f32.
            let mut ss = 0f32;
            for &v in row.iter() {
                ss += v * v;
            }
            // 1 / √(mean(x²) + eps).
            let r = 1.0 / (ss / d as f32 + eps).sqrt();
            // x · r · w.
            for (j, v) in row.iter_mut().enumerate() {
                *v *= r;
                if let Some(w) = &w {
                    *v *= w[j];
                }
            }
        });
        from_f32(x, self.shape(), self.dtype())
    }

    /// Layer norm over the last dimension with the biased variance:
    /// `y = (x − μ) / √(σ² + eps) · w + b`, `μ = Σx/d`, `σ² = Σ(x − μ)²/d` (two passes),
    /// for `x [.., d]` and optional `weight [d]`, `bias [d]` (one dtype and device with `x`).
    /// f32 throughout, rounded once into `x`'s dtype. `eps` must be finite and ≥ 0.
    pub fn layer_norm(&self, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        const OP: &str = "layer_norm";
        let d = self.norm_checks(OP, eps, &[weight, bias])?;
        let w = read_param(OP, weight)?;
        let b = read_param(OP, bias)?;
        let eps = eps as f32;
        // [rows, d], row-major.
        let mut x = self.cpu_storage(OP)?.to_f32_vec(self.layout());
        for_each_row_mut(&mut x, d, |row| {
            // μ = Σx / d.
            let mut s = 0f32;
            for &v in row.iter() {
                s += v;
            }
            let mu = s / d as f32;
            // σ² = Σ(x − μ)² / d (second pass, no cancellation).
            let mut ss = 0f32;
            for &v in row.iter() {
                ss += (v - mu) * (v - mu);
            }
            // 1 / √(σ² + eps).
            let r = 1.0 / (ss / d as f32 + eps).sqrt();
            // (x − μ) · r · w + b.
            for (j, v) in row.iter_mut().enumerate() {
                *v = (*v - mu) * r;
                if let Some(w) = &w {
                    *v *= w[j];
                }
                if let Some(b) = &b {
                    *v += b[j];
                }
            }
        });
        from_f32(x, self.shape(), self.dtype())
    }

    /// Shared checks of the norms; returns the normalised size `d` (the last dimension).
    fn norm_checks(&self, op: &'static str, eps: f64, params: &[Option<&Tensor>]) -> Result<usize> {
        check_float(op, self)?;
        check_eps(op, eps)?;
        let d = *self.shape().last().ok_or_else(|| Error::BadShape {
            op,
            shape: vec![],
            msg: "needs rank >= 1 (normalises the last dimension)".into(),
        })?;
        for p in params.iter().flatten() {
            check_same(op, self, p)?;
            if p.shape() != [d] {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: self.shape().to_vec(),
                    rhs: p.shape().to_vec(),
                });
            }
        }
        self.cpu_storage(op)?;
        Ok(d)
    }
}

/// A weight or bias as f32 values.
fn read_param(op: &'static str, p: Option<&Tensor>) -> Result<Option<Vec<f32>>> {
    p.map(|t| Ok(t.cpu_storage(op)?.to_f32_vec(t.layout()))).transpose()
}
