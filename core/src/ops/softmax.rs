//! Softmax and log-softmax along one dimension, max-subtracted, in f32.

use crate::ops::{check_float, dim_last_inverse, for_each_row_mut, from_f32, rows_along};
use crate::{Result, Tensor};

/// In-place softmax of one row: y_i = e^(x_i − m) / Σ_j e^(x_j − m), m = max_j x_j.
fn softmax_row(row: &mut [f32]) {
    // Row maximum (f32::max skips NaN; a NaN still reaches the sum below and poisons the row).
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    // Shifted exponentials, all in (0, 1], and their f32 sum in index order.
    let mut s = 0f32;
    for x in row.iter_mut() {
        *x = (*x - m).exp();
        s += *x;
    }
    // Normalise.
    for x in row.iter_mut() {
        *x /= s;
    }
}

/// In-place log-softmax of one row: y_i = (x_i − m) − ln Σ_j e^(x_j − m).
fn log_softmax_row(row: &mut [f32]) {
    // Row maximum.
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    // Σ e^(x_j − m) in f32, in [1, n] for finite rows.
    let mut s = 0f32;
    for &x in row.iter() {
        s += (x - m).exp();
    }
    let log_s = s.ln();
    // Shift and subtract the log-normaliser.
    for x in row.iter_mut() {
        *x = (*x - m) - log_s;
    }
}

impl Tensor {
    /// Softmax along `dim`: `y_i = e^(x_i − m) / Σ_j e^(x_j − m)` with `m` the slice maximum,
    /// in f32, rounded once into the input dtype. Same shape as the input; float dtypes.
    ///
    /// A slice holding NaN, or one whose maximum is ±∞ (for example all −∞, a fully masked
    /// attention row), gives NaN throughout, as in PyTorch.
    pub fn softmax(&self, dim: usize) -> Result<Tensor> {
        self.rowwise_along("softmax", dim, softmax_row)
    }

    /// Log-softmax along `dim`: `y_i = (x_i − m) − ln Σ_j e^(x_j − m)`, in f32. Same shape and
    /// NaN behaviour as [`Tensor::softmax`].
    pub fn log_softmax(&self, dim: usize) -> Result<Tensor> {
        self.rowwise_along("log_softmax", dim, log_softmax_row)
    }

    /// Applies an in-place row transform to every slice along `dim`; the result has the
    /// input's shape and dtype and is contiguous.
    fn rowwise_along(&self, op: &'static str, dim: usize, f: fn(&mut [f32])) -> Result<Tensor> {
        check_float(op, self)?;
        let (layout, _, size) = rows_along(op, self, dim)?;
        // [rows, size] with `dim` innermost.
        let mut values = self.cpu_storage(op)?.to_f32_vec(&layout);
        for_each_row_mut(&mut values, size, f);
        // Back in the permuted shape, then into the original dimension order.
        let out = from_f32(values, layout.shape(), self.dtype())?;
        if dim + 1 == self.rank() {
            return Ok(out);
        }
        out.permute(&dim_last_inverse(self.rank(), dim))?.contiguous()
    }
}
