//! Reductions along one dimension (sum, mean, max, min, argmax, argmin) and top-k over the last
//! dimension.
//!
//! NaN policy (the same as PyTorch's): NaN propagates. `max`/`min` of a slice holding a NaN is
//! NaN, `argmax`/`argmin` return the index of the first NaN, and `topk` ranks NaN above +∞ (so
//! NaNs come first, in index order). Ties go to the lowest index everywhere.

use std::cmp::Ordering;

use crate::ops::{check_float, from_f32, map_rows, reduced_shape, rows_along, take};
use crate::{DType, Error, Result, Tensor};

/// Total order used for ranking: NaN above everything (NaNs equal among themselves), otherwise
/// the numeric order (−0 equals +0).
fn rank_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Index of the first maximum of a non-empty row (a NaN counts as the maximum).
fn first_max(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate().skip(1) {
        // Strictly greater only, so the first of equal values wins.
        if rank_cmp(x, row[best]) == Ordering::Greater && !row[best].is_nan() {
            best = i;
        }
    }
    best
}

/// Index of the first minimum of a non-empty row (a NaN counts as the minimum).
fn first_min(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate().skip(1) {
        if row[best].is_nan() {
            break;
        }
        if x.is_nan() || x < row[best] {
            best = i;
        }
    }
    best
}

impl Tensor {
    /// Sum along `dim`: `out[.., ..] = Σ_i x[.., i, ..]`, accumulated in f32 in index order,
    /// rounded once into the input dtype. Float dtypes; shape `[..]` with `dim` removed, or
    /// kept as 1 when `keepdim`. An empty `dim` sums to 0.
    pub fn sum(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce_f32("sum", dim, keepdim, |row| {
            let mut acc = 0f32;
            for &x in row {
                acc += x;
            }
            acc
        })
    }

    /// Mean along `dim`: the f32 sum (as [`Tensor::sum`]) divided by the size of `dim` in f32.
    /// An empty `dim` gives NaN (0/0).
    pub fn mean(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce_f32("mean", dim, keepdim, |row| {
            let mut acc = 0f32;
            for &x in row {
                acc += x;
            }
            acc / row.len() as f32
        })
    }

    /// Maximum along `dim` (the element itself, copied exactly, so any non-bool dtype works).
    /// NaN propagates: a slice holding NaN gives NaN. `dim` must not be empty.
    pub fn max(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.select_along("max", dim, keepdim, first_max)
    }

    /// Minimum along `dim`, as [`Tensor::max`] (NaN propagates).
    pub fn min(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.select_along("min", dim, keepdim, first_min)
    }

    /// Index (I64) of the maximum along `dim`; the first index on ties, the first NaN if any.
    /// Any non-bool dtype (integers are compared after widening to f64, exact below 2^53).
    pub fn argmax(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.arg_along("argmax", dim, keepdim, first_max)
    }

    /// Index (I64) of the minimum along `dim`; the first index on ties, the first NaN if any.
    pub fn argmin(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.arg_along("argmin", dim, keepdim, first_min)
    }

    /// The `k` largest entries of the last dimension, sorted descending, and their indices.
    ///
    /// `x [.., n] -> (values [.., k] in x's dtype, indices [.., k] I64)`. Equal values keep
    /// index order (a stable ranking: the lower index first); NaN ranks above +∞. Needs rank ≥ 1
    /// and `1 ≤ k ≤ n`; any non-bool dtype (values are copied, not converted).
    pub fn topk(&self, k: usize) -> Result<(Tensor, Tensor)> {
        const OP: &str = "topk";
        if self.rank() == 0 {
            return Err(Error::BadShape {
                op: OP,
                shape: vec![],
                msg: "topk needs rank >= 1".into(),
            });
        }
        let dim = self.rank() - 1;
        let n = self.shape()[dim];
        if k == 0 || k > n {
            return Err(Error::invalid(
                OP,
                format!("k = {k} must be in 1..={n} (last dimension)"),
            ));
        }
        let (keys, positions, rows) = self.keys_along(OP, dim)?;
        // Per row: a stable sort of 0..n by descending key, keeping the first k.
        let top: Vec<Vec<usize>> = map_rows(&keys, rows, n, |row| {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| rank_cmp(row[b], row[a]));
            order.truncate(k);
            order
        });
        // Storage positions of the chosen elements, and their indices within the row.
        let mut chosen = Vec::with_capacity(rows * k);
        let mut indices = Vec::with_capacity(rows * k);
        for (r, order) in top.iter().enumerate() {
            for &i in order {
                chosen.push(positions[r * n + i]);
                indices.push(i as i64);
            }
        }
        let mut shape = self.shape().to_vec();
        shape[dim] = k;
        let values = Tensor::from_cpu_storage(take(self.cpu_storage(OP)?, &chosen), &shape)?;
        let indices = Tensor::from_vec(indices, &shape, crate::Device::Cpu)?;
        Ok((values, indices))
    }

    /// Reduces each row along `dim` (f32 values) to one f32.
    fn reduce_f32(
        &self,
        op: &'static str,
        dim: usize,
        keepdim: bool,
        f: impl Fn(&[f32]) -> f32 + Sync + Send,
    ) -> Result<Tensor> {
        check_float(op, self)?;
        let (layout, rows, size) = rows_along(op, self, dim)?;
        // Rows of `size` f32 values with `dim` innermost: [rows, size].
        let values = self.cpu_storage(op)?.to_f32_vec(&layout);
        // One f32 result per row: [rows].
        let out = map_rows(&values, rows, size, f);
        from_f32(out, &reduced_shape(self.shape(), dim, keepdim), self.dtype())
    }

    /// f64 keys of the rows along `dim` ([rows, size] with `dim` innermost), the storage
    /// position of each key, and the row count. Rejects bool.
    fn keys_along(&self, op: &'static str, dim: usize) -> Result<(Vec<f64>, Vec<usize>, usize)> {
        if self.dtype() == DType::Bool {
            return Err(Error::DTypeMismatch {
                op,
                got: DType::Bool,
                expected: None,
            });
        }
        let (layout, rows, _) = rows_along(op, self, dim)?;
        let cpu = self.cpu_storage(op)?;
        Ok((cpu.to_f64_vec(&layout), layout.storage_indices().collect(), rows))
    }

    /// Per row along `dim`, the index that `pick` chooses, as I64.
    fn arg_along(&self, op: &'static str, dim: usize, keepdim: bool, pick: fn(&[f64]) -> usize) -> Result<Tensor> {
        let (keys, _, rows) = self.keys_along(op, dim)?;
        let size = self.shape()[dim];
        if size == 0 {
            return Err(Error::invalid(op, format!("dimension {dim} is empty")));
        }
        let out: Vec<i64> = map_rows(&keys, rows, size, |row| pick(row) as i64);
        Tensor::from_vec(out, &reduced_shape(self.shape(), dim, keepdim), crate::Device::Cpu)
    }

    /// Per row along `dim`, a copy of the element that `pick` chooses, in the input dtype.
    fn select_along(&self, op: &'static str, dim: usize, keepdim: bool, pick: fn(&[f64]) -> usize) -> Result<Tensor> {
        let (keys, positions, rows) = self.keys_along(op, dim)?;
        let size = self.shape()[dim];
        if size == 0 {
            return Err(Error::invalid(op, format!("dimension {dim} is empty")));
        }
        // Storage position of the chosen element of each row.
        let chosen: Vec<usize> = map_rows(&keys, rows, size, pick)
            .into_iter()
            .enumerate()
            .map(|(r, i)| positions[r * size + i])
            .collect();
        let shape = reduced_shape(self.shape(), dim, keepdim);
        Tensor::from_cpu_storage(take(self.cpu_storage(op)?, &chosen), &shape)
    }
}
