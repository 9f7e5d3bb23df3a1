//! The CPU reference for `random`, which is also its CPU backend: the formula of `random.cu`
//! step by step in f32, one element per counter, filled in parallel with rayon.

use l4_core::{DType, Device, Element, Error, Result, Tensor};
use rayon::prelude::*;

use super::OP;

/// The splitmix64 finalizer.
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Element `i` of the stream `seed`, before rounding into the dtype (see `random.cu`).
pub fn normal_f32(i: u64, seed: u64, std: f32) -> f32 {
    let h = splitmix64(seed.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let u1 = ((h >> 40) + 1) as f32 * 2f32.powi(-24);
    let u2 = ((h >> 16) & 0xFF_FFFF) as f32 * 2f32.powi(-24);
    let radius = (-2.0 * u1.ln()).sqrt();
    radius * (std::f32::consts::TAU * u2).cos() * std
}

fn fill<T: Element>(n: usize, seed: u64, std: f32) -> Vec<T> {
    (0..n as u64)
        .into_par_iter()
        .map(|i| T::from_f64(f64::from(normal_f32(i, seed, std))))
        .collect()
}

/// `N(0, std²)` values of `shape` in `dtype` (f32, f16, bf16) on the host.
pub fn normal(shape: &[usize], dtype: DType, seed: u64, std: f32) -> Result<Tensor> {
    let n = l4_core::layout::elem_count(shape);
    match dtype {
        DType::F32 => Tensor::from_vec(fill::<f32>(n, seed, std), shape, Device::Cpu),
        DType::F16 => Tensor::from_vec(fill::<half::f16>(n, seed, std), shape, Device::Cpu),
        DType::BF16 => Tensor::from_vec(fill::<half::bf16>(n, seed, std), shape, Device::Cpu),
        other => Err(Error::DTypeMismatch {
            op: OP,
            got: other,
            expected: None,
        }),
    }
}
