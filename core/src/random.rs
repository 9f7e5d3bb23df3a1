//! Seeded random tensors for tests and experiments.
//!
//! Values come from `rand`'s `StdRng::seed_from_u64(seed)`, drawn in f32 in row-major order and
//! rounded once into the dtype, so the same seed, shape and dtype give the same tensor on every
//! run and every machine (for the `rand` version pinned in Cargo.lock: `StdRng`'s algorithm may
//! change between major versions of `rand`).

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::layout::elem_count;
use crate::{DType, Device, Error, Result, Tensor};

impl Tensor {
    /// Standard-normal values `N(0, 1)`, drawn in f32 from `StdRng::seed_from_u64(seed)` and
    /// rounded once into `dtype` (float dtypes only), on `device`.
    pub fn randn(shape: &[usize], dtype: DType, seed: u64, device: Device) -> Result<Tensor> {
        if !dtype.is_float() {
            return Err(Error::DTypeMismatch {
                op: "randn",
                got: dtype,
                expected: None,
            });
        }
        let normal = Normal::new(0f32, 1f32).map_err(|e| Error::invalid("randn", e))?;
        let mut rng = StdRng::seed_from_u64(seed);
        let values: Vec<f32> = (0..elem_count(shape)).map(|_| normal.sample(&mut rng)).collect();
        Tensor::from_f32_vec(values, shape, dtype, device)
    }

    /// Uniform values in `[lo, hi)`, drawn in f32 from `StdRng::seed_from_u64(seed)` and
    /// rounded once into `dtype` (float or integer dtypes; integers round to nearest even and
    /// saturate, so `hi` itself can appear). Needs finite `lo < hi` (after rounding to f32).
    pub fn rand_uniform(shape: &[usize], lo: f64, hi: f64, dtype: DType, seed: u64, device: Device) -> Result<Tensor> {
        const OP: &str = "rand_uniform";
        if !(dtype.is_float() || dtype.is_int()) {
            return Err(Error::DTypeMismatch {
                op: OP,
                got: dtype,
                expected: None,
            });
        }
        let (lo32, hi32) = (lo as f32, hi as f32);
        if !(lo32.is_finite() && hi32.is_finite() && lo32 < hi32) {
            return Err(Error::invalid(OP, format!("needs finite lo < hi, got [{lo}, {hi})")));
        }
        let uniform = Uniform::new(lo32, hi32).map_err(|e| Error::invalid(OP, e))?;
        let mut rng = StdRng::seed_from_u64(seed);
        let values: Vec<f32> = (0..elem_count(shape)).map(|_| uniform.sample(&mut rng)).collect();
        Tensor::from_f32_vec(values, shape, dtype, device)
    }
}
