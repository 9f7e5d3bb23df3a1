//! `Tensor::matmul` against a naive f64 triple loop with its own batch broadcasting, under the
//! reduction tolerance derived from the output dtype.

use l4_core::testing::{Tolerance, assert_close};
use l4_core::{DType, Device, Error, Tensor};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Row-major multi-index of flat index `i` in `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

/// Flat row-major index of a multi-index.
fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &s)| acc * s + i)
}

/// The reference: for a [.., m, k] and b [.., k, n] (row-major f64), returns
/// (values, Σ|a·b| per output, output shape). Batch dimensions broadcast NumPy-style: aligned
/// on the right, a size-1 dimension repeats.
fn naive_matmul(a: &[f64], a_shape: &[usize], b: &[f64], b_shape: &[usize]) -> (Vec<f64>, Vec<f64>, Vec<usize>) {
    let (ab, am) = a_shape.split_at(a_shape.len() - 2);
    let (bb, bm) = b_shape.split_at(b_shape.len() - 2);
    let (m, k, n) = (am[0], am[1], bm[1]);
    assert_eq!(bm[0], k);
    let rank = ab.len().max(bb.len());
    // Left-pad both batch shapes with 1s to a common rank.
    let pad = |s: &[usize]| -> Vec<usize> {
        std::iter::repeat_n(1, rank - s.len())
            .chain(s.iter().copied())
            .collect()
    };
    let (pa, pb) = (pad(ab), pad(bb));
    let out_batch: Vec<usize> = pa.iter().zip(&pb).map(|(&x, &y)| x.max(y)).collect();
    let batches: usize = out_batch.iter().product();
    let mut vals = vec![0.0; batches * m * n];
    let mut mags = vec![0.0; batches * m * n];
    for bi in 0..batches {
        let idx = unravel(bi, &out_batch);
        // Size-1 dimensions read index 0.
        let ia: Vec<usize> = idx.iter().zip(&pa).map(|(&i, &s)| if s == 1 { 0 } else { i }).collect();
        let ib: Vec<usize> = idx.iter().zip(&pb).map(|(&i, &s)| if s == 1 { 0 } else { i }).collect();
        let (oa, ob) = (ravel(&ia, &pa) * m * k, ravel(&ib, &pb) * k * n);
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut mag) = (0.0, 0.0);
                for p in 0..k {
                    let t = a[oa + i * k + p] * b[ob + p * n + j];
                    s += t;
                    mag += t.abs();
                }
                vals[bi * m * n + i * n + j] = s;
                mags[bi * m * n + i * n + j] = mag;
            }
        }
    }
    let mut shape = out_batch;
    shape.extend([m, n]);
    (vals, mags, shape)
}

/// Checks `a.matmul(b)` against the reference with `Tolerance::reduction(dtype, k, max Σ|a·b|)`.
fn check_matmul(a: &Tensor, b: &Tensor, context: &str) -> Result<(), TestCaseError> {
    let got = a
        .matmul(b)
        .map_err(|e| TestCaseError::fail(format!("{context}: {e}")))?;
    let (want, mags, shape) = naive_matmul(&a.to_f64_vec().unwrap(), a.shape(), &b.to_f64_vec().unwrap(), b.shape());
    prop_assert_eq!(got.shape(), &shape[..], "{}", context);
    prop_assert_eq!(got.dtype(), a.dtype());
    let k = a.shape()[a.rank() - 1];
    let tol = Tolerance::reduction(a.dtype(), k, mags.iter().copied().fold(0.0, f64::max));
    assert_close(&got.to_f64_vec().unwrap(), &want, tol, context).map_err(TestCaseError::fail)
}

fn size() -> impl Strategy<Value = usize> {
    prop::sample::select(vec![1usize, 2, 3, 5, 7, 16, 17, 33])
}

/// Batch shapes of a and b that broadcast together: from one output batch shape, each operand
/// drops some leading dimensions and turns some others into 1.
fn batch_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    (
        prop::collection::vec((1usize..=3, any::<bool>(), any::<bool>()), 0..=2),
        0usize..=2,
        0usize..=2,
    )
        .prop_map(|(dims, drop_a, drop_b)| {
            let a: Vec<usize> = dims.iter().map(|&(s, one, _)| if one { 1 } else { s }).collect();
            let b: Vec<usize> = dims.iter().map(|&(s, _, one)| if one { 1 } else { s }).collect();
            (a[drop_a.min(a.len())..].to_vec(), b[drop_b.min(b.len())..].to_vec())
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn matmul_matches_naive_f64_with_broadcast_batches(
        (ab, bb) in batch_pair(),
        m in size(),
        k in size(),
        n in size(),
        dtype in prop::sample::select(vec![DType::F32, DType::F16, DType::BF16]),
        seed in any::<u64>(),
    ) {
        let a_shape: Vec<usize> = ab.iter().copied().chain([m, k]).collect();
        let b_shape: Vec<usize> = bb.iter().copied().chain([k, n]).collect();
        let a = Tensor::randn(&a_shape, dtype, seed, Device::Cpu).unwrap();
        let b = Tensor::randn(&b_shape, dtype, seed ^ 1, Device::Cpu).unwrap();
        check_matmul(&a, &b, &format!("{a_shape:?} x {b_shape:?} {dtype}"))?;
    }

    #[test]
    fn matmul_on_transposed_views_matches_naive(
        m in size(),
        k in size(),
        n in size(),
        batch in 1usize..=3,
        seed in any::<u64>(),
    ) {
        // a: [batch, k, m] transposed to a non-contiguous [batch, m, k]; b: [n, k] -> [k, n].
        let a = Tensor::randn(&[batch, k, m], DType::F32, seed, Device::Cpu).unwrap().transpose(1, 2).unwrap();
        let b = Tensor::randn(&[n, k], DType::F32, seed ^ 7, Device::Cpu).unwrap().transpose(0, 1).unwrap();
        prop_assert!(!a.is_contiguous() || m == 1 || k == 1);
        check_matmul(&a, &b, "transposed views")?;
    }
}

#[test]
fn bf16_matmul_matches_f64_within_bf16_derived_tolerance() {
    // k = 96 terms per output: the f32 accumulation bound γ_96(2^-24)·Σ|a·b| plus one bf16 rounding.
    let a = Tensor::randn(&[3, 40, 96], DType::BF16, 11, Device::Cpu).unwrap();
    let b = Tensor::randn(&[96, 24], DType::BF16, 12, Device::Cpu).unwrap();
    check_matmul(&a, &b, "bf16 [3,40,96] x [96,24]").unwrap();
}

#[test]
fn large_products_take_the_threaded_paths() {
    // One big product (gemm splits it) and several big products (one task each), on a narrowed
    // (offset, strided) view.
    let a = Tensor::randn(&[1, 150, 70], DType::F32, 21, Device::Cpu).unwrap();
    let b = Tensor::randn(&[70, 130], DType::F32, 22, Device::Cpu).unwrap();
    check_matmul(&a, &b, "single large").unwrap();
    let a = Tensor::randn(&[4, 90, 80], DType::F32, 23, Device::Cpu)
        .unwrap()
        .narrow(2, 5, 64)
        .unwrap();
    let b = Tensor::randn(&[4, 64, 100], DType::F32, 24, Device::Cpu).unwrap();
    check_matmul(&a, &b, "batched large, narrowed lhs").unwrap();
}

#[test]
fn empty_inner_dimension_gives_zeros() {
    let a = Tensor::zeros(&[3, 0], DType::F32, Device::Cpu).unwrap();
    let b = Tensor::zeros(&[0, 4], DType::F32, Device::Cpu).unwrap();
    let c = a.matmul(&b).unwrap();
    assert_eq!(c.shape(), &[3, 4]);
    assert!(c.to_vec::<f32>().unwrap().iter().all(|&x| x == 0.0));
    let e = Tensor::zeros(&[0, 5], DType::F32, Device::Cpu).unwrap();
    let f = Tensor::zeros(&[5, 2], DType::F32, Device::Cpu).unwrap();
    assert_eq!(e.matmul(&f).unwrap().shape(), &[0, 2]);
}

#[test]
fn matmul_rejects_bad_shapes_and_dtypes() {
    let f = |s: &[usize], d| Tensor::zeros(s, d, Device::Cpu).unwrap();
    // Rank 1 is not promoted.
    let e = f(&[3], DType::F32).matmul(&f(&[3, 2], DType::F32)).unwrap_err();
    assert!(matches!(e, Error::BadShape { ref shape, .. } if shape == &[3]), "{e}");
    // Inner dimensions differ: the error names both shapes.
    let e = f(&[2, 3], DType::F32).matmul(&f(&[4, 2], DType::F32)).unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { ref lhs, ref rhs, .. } if lhs == &[2, 3] && rhs == &[4, 2]),
        "{e}"
    );
    // Batch dimensions that do not broadcast.
    let e = f(&[2, 3, 4], DType::F32)
        .matmul(&f(&[3, 4, 5], DType::F32))
        .unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { ref lhs, ref rhs, .. } if lhs == &[2, 3, 4] && rhs == &[3, 4, 5]),
        "{e}"
    );
    // Integer and FP8 operands, and mixed dtypes.
    for d in [DType::I32, DType::F8E4M3, DType::F8E5M2] {
        let e = f(&[2, 2], d).matmul(&f(&[2, 2], d)).unwrap_err();
        assert!(matches!(e, Error::DTypeMismatch { got, .. } if got == d), "{e}");
    }
    let e = f(&[2, 2], DType::F32).matmul(&f(&[2, 2], DType::BF16)).unwrap_err();
    assert!(matches!(e, Error::DTypeMismatch { .. }), "{e}");
}
