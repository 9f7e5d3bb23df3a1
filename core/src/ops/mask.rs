//! Masks: `masked_fill` and the comparisons that build Bool masks.

use crate::layout::broadcast_shape;
use crate::ops::check_same;
use crate::storage::CpuStorage;
use crate::{DType, Device, Element, Error, Result, Tensor};

/// Writes `value` (converted once into `T`) wherever `mask` is true.
fn fill_typed<T: Element>(values: &mut [T], mask: &[bool], value: f64) {
    let v = T::from_f64(value);
    for (x, &m) in values.iter_mut().zip(mask) {
        if m {
            *x = v;
        }
    }
}

impl Tensor {
    /// `out = mask ? value : self`, elementwise.
    ///
    /// `mask` is Bool, on `self`'s device, and broadcasts to `self`'s shape (NumPy rules; the
    /// output keeps `self`'s shape and dtype, any dtype). `value` is converted once into the
    /// dtype with the usual rules: round to nearest even, FP8 satfinite (so −∞ becomes −448 in
    /// e4m3), integers rounded and saturated (NaN → 0).
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        const OP: &str = "masked_fill";
        if mask.dtype() != DType::Bool {
            return Err(Error::DTypeMismatch {
                op: OP,
                got: mask.dtype(),
                expected: Some(DType::Bool),
            });
        }
        if self.device() != mask.device() {
            return Err(Error::DeviceMismatch {
                op: OP,
                lhs: self.device(),
                rhs: mask.device(),
            });
        }
        // The mask viewed at self's shape (stride 0 on broadcast dimensions).
        let mask_layout = mask
            .layout()
            .broadcast_as(self.shape())
            .map_err(|_| Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().to_vec(),
                rhs: mask.shape().to_vec(),
            })?;
        let mask_cpu = mask.cpu_storage(OP)?;
        let cpu = self.cpu_storage(OP)?;
        // Row-major mask bits.
        let bits: Vec<bool> = match mask_cpu.gather(&mask_layout) {
            CpuStorage::Bool(v) => v,
            other => {
                return Err(Error::DTypeMismatch {
                    op: OP,
                    got: other.dtype(),
                    expected: Some(DType::Bool),
                });
            }
        };
        // A contiguous copy of self, then the fill.
        let mut out = cpu.gather(self.layout());
        crate::with_cpu_storage!(&mut out, v, fill_typed(v, &bits, value));
        Tensor::from_cpu_storage(out, self.shape())
    }

    /// Compares pairwise after broadcasting, in f64 (exact for every dtype except i64 beyond
    /// 2^53), giving Bool.
    fn compare(&self, rhs: &Tensor, op: &'static str, f: fn(f64, f64) -> bool) -> Result<Tensor> {
        check_same(op, self, rhs)?;
        let shape = broadcast_shape(op, self.shape(), rhs.shape())?;
        let a = self.cpu_storage(op)?.to_f64_vec(&self.layout().broadcast_as(&shape)?);
        let b = rhs.cpu_storage(op)?.to_f64_vec(&rhs.layout().broadcast_as(&shape)?);
        let out: Vec<bool> = a.iter().zip(&b).map(|(&x, &y)| f(x, y)).collect();
        Tensor::from_vec(out, &shape, Device::Cpu)
    }

    /// `self == rhs` elementwise with broadcasting → Bool (IEEE: NaN is unequal to everything).
    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(rhs, "eq", |a, b| a == b)
    }

    /// `self != rhs` elementwise with broadcasting → Bool (true where either is NaN).
    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(rhs, "ne", |a, b| a != b)
    }

    /// `self < rhs` elementwise with broadcasting → Bool (false where either is NaN).
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(rhs, "lt", |a, b| a < b)
    }

    /// `self <= rhs` elementwise with broadcasting → Bool (false where either is NaN).
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(rhs, "le", |a, b| a <= b)
    }

    /// `self > rhs` elementwise with broadcasting → Bool (false where either is NaN).
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(rhs, "gt", |a, b| a > b)
    }

    /// `self >= rhs` elementwise with broadcasting → Bool (false where either is NaN).
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(rhs, "ge", |a, b| a >= b)
    }
}
