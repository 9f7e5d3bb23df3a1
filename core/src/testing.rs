//! Test helpers shared by every l4lab crate: tolerances derived from the dtypes' unit roundoff,
//! comparison assertions with useful messages, and the list of devices to test on.
//!
//! Every tolerance here comes from a rounding-error bound, written next to its constructor and
//! in docs/numerics.md. Notation: `u(t) = 2^-p(t)` is the unit roundoff of dtype `t`
//! ([`DType::unit_roundoff`]), `u32 = u(f32) = 2^-24`, `λ(t)` the smallest positive normal of
//! `t`, and `γ_k(u) = k·u / (1 − k·u)` ([`gamma`]). Tolerances are never widened silently: a
//! test that needs more than a constructor gives must say why, in code, next to the extra term.
//!
//! The pass rule for one element is `|got − want| ≤ atol + rtol·|want|`, except that a NaN must
//! meet a NaN (and nothing else), and an infinity must meet the same infinity.

use std::fmt;

use crate::{DType, Device, Tensor};

/// `u(f32) = 2^-24`: the unit roundoff of the f32 arithmetic every CPU op computes in.
const U32: f64 = 1.0 / 16_777_216.0;

/// `γ_k(u) = k·u / (1 − k·u)`: the classic bound on the relative error that `k` successive
/// roundings with unit roundoff `u` can accumulate (Higham, *Accuracy and Stability of
/// Numerical Algorithms*, §3.1).
///
/// # Panics
/// When `k·u ≥ 1`: no bound exists, and an infinite tolerance would silently pass anything.
pub fn gamma(k: usize, u: f64) -> f64 {
    let ku = k as f64 * u;
    assert!(
        ku < 1.0,
        "gamma: k·u = {ku} >= 1 (k = {k}, u = {u}): no rounding-error bound exists"
    );
    ku / (1.0 - ku)
}

/// Absolute and relative tolerance: an element passes when `|got − want| ≤ atol + rtol·|want|`
/// (NaN must meet NaN, ±∞ the same ±∞).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Absolute part.
    pub atol: f64,
    /// Relative part, a multiple of `|want|`.
    pub rtol: f64,
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "atol {:.3e} + rtol {:.3e}·|want|", self.atol, self.rtol)
    }
}

/// `u(t)`, and `λ(t)` (0 for non-float dtypes).
fn u_and_lambda(t: DType) -> (f64, f64) {
    (t.unit_roundoff(), t.min_positive_normal().unwrap_or(0.0))
}

impl Tolerance {
    /// A tolerance from its two parts.
    pub const fn new(atol: f64, rtol: f64) -> Self {
        Tolerance { atol, rtol }
    }

    /// Exact equality (`atol = rtol = 0`): for ops that copy or select elements (indexing, cat,
    /// max, topk, casts that are exact). +0 and −0 compare equal; NaN must meet NaN.
    pub const fn exact() -> Self {
        Tolerance { atol: 0.0, rtol: 0.0 }
    }

    /// One well-conditioned f32 evaluation per element, rounded once into `out`.
    ///
    /// The f32 evaluation (a few correctly rounded steps plus libm calls of at most 1-2 ulp)
    /// is within `4·u32` of the exact value; rounding into `out` adds `u(out)`. So
    /// `rtol = 2·u(out) + 4·u32` (the factor 2 on `u(out)` absorbs the double rounding
    /// f32 → out and the cross terms). Near zero the relative bound is floored at `out`'s
    /// smallest normal λ (below it rounding errors are absolute, half a subnormal spacing):
    /// `atol = rtol·λ(out)`. Integer and bool outputs: [`Tolerance::exact`].
    ///
    /// Valid for add, sub, mul, div, maximum, minimum, neg, exp, sqrt, sigmoid, silu, tanh,
    /// square, recip, scale, whose arguments are the exact inputs. For a function evaluated at
    /// a rounded argument (gelu) use [`Tolerance::elementwise_conditioned`].
    pub fn elementwise(out: DType) -> Self {
        Self::elementwise_conditioned(out, 0.0)
    }

    /// As [`Tolerance::elementwise`], for a function `f` whose implementation rounds its
    /// argument before evaluating (at most two f32 roundings, `2·u32` relative), with condition
    /// number `κ = |x·f'(x)/f(x)|` bounded by `cond` over the data: a relative perturbation δ of
    /// the argument moves `f` by `κ·δ`. So `rtol = 2·u(out) + (4 + 2·cond)·u32`,
    /// `atol = rtol·λ(out)`.
    ///
    /// GELU evaluates `erfc(−x·(1/√2))`: `κ = |1 + x·φ(x)/Φ(x)| ≤ 2 + x² + |x|` (Mills ratio).
    pub fn elementwise_conditioned(out: DType, cond: f64) -> Self {
        if !out.is_float() {
            return Self::exact();
        }
        let (u, lambda) = u_and_lambda(out);
        let rtol = 2.0 * u + (4.0 + 2.0 * cond.abs()) * U32;
        Tolerance {
            atol: rtol * lambda,
            rtol,
        }
    }

    /// A sum or dot product of `k` terms accumulated in f32 (any order), rounded once into
    /// `out`, with `magnitude ≥ Σ|terms|` supplied by the caller (for a dot product
    /// `Σ|a_i·b_i|`; for a mean, `Σ|x_i| / k`).
    ///
    /// Forming each product and the ≤ k−1 additions are at most k f32 roundings on every
    /// path, so the f32 result is within `γ_k(u32)·magnitude` of the exact sum; rounding into
    /// `out` adds `u(out)·|result|`. Hence `atol = γ_k(u32)·magnitude·(1 + u(out)) + 2·u(out)·λ(out)`
    /// and `rtol = 2·u(out)` (one rounding, plus the division of a mean). The inputs must be the
    /// op's actual (already rounded) inputs: a reference computed from unrounded data needs an
    /// extra, stated term.
    ///
    /// # Panics
    /// When `k·u32 ≥ 1` (see [`gamma`]).
    pub fn reduction(out: DType, k: usize, magnitude: f64) -> Self {
        let (u, lambda) = u_and_lambda(out);
        let rtol = 2.0 * u;
        Tolerance {
            atol: gamma(k, U32) * magnitude.abs() * (1.0 + u) + rtol * lambda,
            rtol,
        }
    }

    /// Softmax over `n` entries whose spread `max_i x_i − min_i x_i` (over the finite entries)
    /// is at most `range`, computed max-subtracted in f32 and rounded once into `out`.
    ///
    /// Each shifted exponent `x_i − m` is off by ≤ `u32·range`, which `exp` turns into a
    /// relative error ≤ `(range + 2)·u32` (exp itself ≤ 1 ulp); the f32 sum of positive terms
    /// adds `γ_n(u32)`; the division one `u32`. So every output has relative error ≤
    /// `(2·range + 5)·u32 + γ_n(u32)`, and `rtol = 2·u(out) + γ_n(u32) + (2·range + 5)·u32`,
    /// `atol = rtol·λ(out)`.
    pub fn softmax(out: DType, n: usize, range: f64) -> Self {
        let (u, lambda) = u_and_lambda(out);
        let rtol = 2.0 * u + gamma(n, U32) + (2.0 * range.abs() + 5.0) * U32;
        Tolerance {
            atol: rtol * lambda,
            rtol,
        }
    }

    /// Log-softmax over `n` entries of spread ≤ `range` (as [`Tolerance::softmax`]).
    ///
    /// `y_i = (x_i − m) − ln S`: the shift is off by ≤ `u32·range`; `S` has relative error
    /// ≤ `(range + 2)·u32 + γ_n(u32)`, which `ln` turns into the same absolute error, plus
    /// `ln`'s own `2·u32·ln n`; the last subtraction and the rounding into `out` are relative
    /// to `|y_i|`. So `atol = γ_n(u32) + (2·range + 2·ln n + 3)·u32`, `rtol = 2·u(out)`.
    pub fn log_softmax(out: DType, n: usize, range: f64) -> Self {
        let u = out.unit_roundoff();
        let ln_n = (n.max(1) as f64).ln();
        Tolerance {
            atol: gamma(n, U32) + (2.0 * range.abs() + 2.0 * ln_n + 3.0) * U32,
            rtol: 2.0 * u,
        }
    }

    /// RMS norm over `d` entries, `x / √(mean(x²) + eps) · w`, in f32, rounded into `out`.
    ///
    /// Σx² has only non-negative terms, so its relative error is ≤ `γ_d(u32)` (squares
    /// included); the division by d, the `+ eps` (and rounding eps to f32), the square root
    /// (which halves the relative error before adding its own), the reciprocal and the two
    /// products add ≤ 6 more `u32`. So `rtol = 2·u(out) + γ_d(u32)/2 + 6·u32`,
    /// `atol = rtol·λ(out)`. No cancellation anywhere, so no magnitude term.
    pub fn rms_norm(out: DType, d: usize) -> Self {
        let (u, lambda) = u_and_lambda(out);
        let rtol = 2.0 * u + gamma(d, U32) / 2.0 + 6.0 * U32;
        Tolerance {
            atol: rtol * lambda,
            rtol,
        }
    }

    /// Layer norm over `d` entries, `(x − μ)/√(σ² + eps)·w + b`, in f32 with a two-pass
    /// variance, rounded into `out`.
    ///
    /// The relative part is as for [`Tolerance::rms_norm`] plus the extra roundings of the
    /// subtraction and bias: `rtol = 2·u(out) + γ_d(u32)/2 + 8·u32`. The cancellation in
    /// `x − μ` is absolute: μ is off by ≤ `γ_d(u32)·mean|x|`, which the output sees scaled by
    /// `|w|/σ`; and the relative error of `(x − μ)·r·w` is measured against it, not against
    /// `|y|`, when a bias cancels it. So `atol = (1.5·γ_d(u32) + 8·u32)·magnitude +
    /// 2·u(out)·λ(out)`, where the caller supplies
    /// `magnitude ≥ max|w| · max_rows(mean|x| / √(σ² + eps)) + max|b|` (w = 1, b = 0 when absent).
    pub fn layer_norm(out: DType, d: usize, magnitude: f64) -> Self {
        let (u, lambda) = u_and_lambda(out);
        let g = gamma(d, U32);
        Tolerance {
            atol: (1.5 * g + 8.0 * U32) * magnitude.abs() + 2.0 * u * lambda,
            rtol: 2.0 * u + g / 2.0 + 8.0 * U32,
        }
    }

    /// The tolerance for comparing two approximations that each meet `self` against the same
    /// exact values (a CUDA kernel against the CPU reference, or one op on two equivalent
    /// inputs), measured against the second one.
    ///
    /// `|a − b| ≤ |a − e| + |e − b| ≤ 2·atol + 2·rtol·|e|`, and `|e| ≤ (|b| + atol)/(1 − rtol)`,
    /// so `atol' = 2·atol/(1 − rtol)` and `rtol' = 2·rtol/(1 − rtol)`.
    ///
    /// # Panics
    /// When `rtol ≥ 1` (no bound exists).
    pub fn pairwise(self) -> Self {
        assert!(
            self.rtol < 1.0,
            "Tolerance::pairwise: rtol = {} >= 1: no bound exists",
            self.rtol
        );
        let k = 2.0 / (1.0 - self.rtol);
        Tolerance {
            atol: k * self.atol,
            rtol: k * self.rtol,
        }
    }

    /// Whether one element passes: `|got − want| ≤ atol + rtol·|want|`, NaN only against NaN,
    /// an infinity only against the same infinity.
    pub fn allows(&self, got: f64, want: f64) -> bool {
        if got.is_nan() || want.is_nan() {
            return got.is_nan() && want.is_nan();
        }
        if got.is_infinite() || want.is_infinite() {
            return got == want;
        }
        (got - want).abs() <= self.atol + self.rtol * want.abs()
    }
}

/// Compares two slices elementwise under `tol`.
///
/// `Err` carries a message naming `context`, the count of failing elements, the first failing
/// index with both values, the difference and the bound there, and the tolerance; a length
/// mismatch is an `Err` too.
pub fn assert_close(got: &[f64], want: &[f64], tol: Tolerance, context: &str) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{context}: length mismatch: got {} elements, want {}",
            got.len(),
            want.len()
        ));
    }
    let mut bad = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| !tol.allows(**g, **w));
    let Some((first, (&g, &w))) = bad.next() else {
        return Ok(());
    };
    let count = 1 + bad.count();
    let bound = tol.atol + tol.rtol * w.abs();
    Err(format!(
        "{context}: {count} of {} elements out of tolerance ({tol}); first at index {first}: \
         got {g:e}, want {w:e}, |diff| {:.3e} > bound {bound:.3e}",
        got.len(),
        (g - w).abs(),
    ))
}

/// Asserts that two tensors (any dtypes, any devices) have one shape and values within `tol`.
///
/// # Panics
/// With the message of [`assert_close`] (or a shape message) when they differ, or when a
/// tensor cannot be read back.
#[track_caller]
pub fn assert_tensor_close(got: &Tensor, want: &Tensor, tol: Tolerance) {
    assert_eq!(
        got.shape(),
        want.shape(),
        "assert_tensor_close: shape mismatch: got {:?}, want {:?}",
        got.shape(),
        want.shape()
    );
    let g = got.to_f64_vec().expect("assert_tensor_close: reading `got`");
    let w = want.to_f64_vec().expect("assert_tensor_close: reading `want`");
    let context = format!("{got:?} vs {want:?}");
    if let Err(msg) = assert_close(&g, &w, tol, &context) {
        panic!("{msg}");
    }
}

/// The devices tests should run on: always the CPU, plus CUDA device 0 when it is usable.
///
/// # Panics
/// When the environment variable `L4_REQUIRE_GPU=1` is set and CUDA device 0 is not usable, so
/// that on a GPU machine a silent CPU-only run (a skip) becomes a failure.
pub fn test_devices() -> Vec<Device> {
    let mut devices = vec![Device::Cpu];
    match crate::cuda::backend(0) {
        Ok(_) => devices.push(Device::Cuda(0)),
        Err(e) => {
            if std::env::var("L4_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("L4_REQUIRE_GPU=1 but CUDA device 0 is not usable: {e}");
            }
        }
    }
    devices
}
