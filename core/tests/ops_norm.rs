//! rms_norm and layer_norm against f64 references computed here, under the derived norm
//! tolerances.

use l4_core::testing::{Tolerance, assert_close};
use l4_core::{DType, Device, Error, Tensor};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

fn vals(t: &Tensor) -> Vec<f64> {
    t.to_f64_vec().unwrap()
}

fn fail(e: Error) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// f64 RMS norm of row-major rows of length d.
fn rms_ref(x: &[f64], d: usize, w: Option<&[f64]>, eps: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(d) {
        let ms = row.iter().map(|v| v * v).sum::<f64>() / d as f64;
        let r = 1.0 / (ms + eps).sqrt();
        out.extend(row.iter().enumerate().map(|(j, v)| v * r * w.map_or(1.0, |w| w[j])));
    }
    out
}

/// f64 layer norm of rows of length d, and the magnitude term of its tolerance:
/// max|w| · max_rows(mean|x| / √(σ² + eps)) + max|b|.
fn layer_ref(x: &[f64], d: usize, w: Option<&[f64]>, b: Option<&[f64]>, eps: f64) -> (Vec<f64>, f64) {
    let mut out = Vec::with_capacity(x.len());
    let mut scale: f64 = 0.0;
    for row in x.chunks(d) {
        let mu = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / d as f64;
        let r = 1.0 / (var + eps).sqrt();
        scale = scale.max(row.iter().map(|v| v.abs()).sum::<f64>() / d as f64 * r);
        out.extend(
            row.iter()
                .enumerate()
                .map(|(j, v)| (v - mu) * r * w.map_or(1.0, |w| w[j]) + b.map_or(0.0, |b| b[j])),
        );
    }
    let max_abs =
        |p: Option<&[f64]>, default: f64| p.map_or(default, |p| p.iter().fold(0.0, |a: f64, v| a.max(v.abs())));
    (out, max_abs(w, 1.0) * scale + max_abs(b, 0.0))
}

fn rows_shape() -> impl Strategy<Value = Vec<usize>> {
    (
        prop::collection::vec(1usize..=4, 0..=2),
        prop::sample::select(vec![1usize, 2, 3, 7, 16, 17, 33, 64]),
    )
        .prop_map(|(mut lead, d)| {
            lead.push(d);
            lead
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn rms_norm_matches_f64(
        shape in rows_shape(),
        with_weight in any::<bool>(),
        eps in prop::sample::select(vec![0.0f64, 1e-6, 1e-5]),
        dtype in prop::sample::select(vec![DType::F32, DType::F16, DType::BF16]),
        seed in any::<u64>(),
    ) {
        let d = *shape.last().unwrap();
        let x = Tensor::randn(&shape, dtype, seed, Device::Cpu).unwrap();
        let w = Tensor::randn(&[d], dtype, seed ^ 5, Device::Cpu).unwrap();
        let w = with_weight.then_some(&w);
        let got = x.rms_norm(w, eps).map_err(fail)?;
        prop_assert_eq!(got.shape(), &shape[..]);
        prop_assert_eq!(got.dtype(), dtype);
        let wv = w.map(vals);
        let want = rms_ref(&vals(&x), d, wv.as_deref(), eps);
        assert_close(&vals(&got), &want, Tolerance::rms_norm(dtype, d), &format!("{shape:?} {dtype} eps {eps}"))
            .map_err(TestCaseError::fail)?;
    }

    #[test]
    fn layer_norm_matches_f64(
        shape in rows_shape(),
        with_weight in any::<bool>(),
        with_bias in any::<bool>(),
        offset in prop::sample::select(vec![0.0f64, 3.0, -50.0]),
        dtype in prop::sample::select(vec![DType::F32, DType::F16, DType::BF16]),
        seed in any::<u64>(),
    ) {
        // An offset makes mean|x| large against σ: the cancellation the magnitude term covers.
        let d = *shape.last().unwrap();
        let x = Tensor::randn(&shape, dtype, seed, Device::Cpu).unwrap().affine(1.0, offset).unwrap();
        let w = Tensor::randn(&[d], dtype, seed ^ 5, Device::Cpu).unwrap();
        let b = Tensor::randn(&[d], dtype, seed ^ 6, Device::Cpu).unwrap();
        let (w, b) = (with_weight.then_some(&w), with_bias.then_some(&b));
        let eps = 1e-5;
        let got = x.layer_norm(w, b, eps).map_err(fail)?;
        prop_assert_eq!(got.shape(), &shape[..]);
        let (wv, bv) = (w.map(vals), b.map(vals));
        let (want, mag) = layer_ref(&vals(&x), d, wv.as_deref(), bv.as_deref(), eps);
        assert_close(&vals(&got), &want, Tolerance::layer_norm(dtype, d, mag), &format!("{shape:?} {dtype} +{offset}"))
            .map_err(TestCaseError::fail)?;
    }
}

#[test]
fn norms_accept_non_contiguous_input() {
    // x: [16, 5] transposed to a non-contiguous [5, 16], normalised over 16.
    let x = Tensor::randn(&[16, 5], DType::BF16, 1, Device::Cpu)
        .unwrap()
        .transpose(0, 1)
        .unwrap();
    let w = Tensor::randn(&[16], DType::BF16, 2, Device::Cpu).unwrap();
    let xv = vals(&x);
    let wv = vals(&w);
    let want = rms_ref(&xv, 16, Some(&wv), 1e-6);
    assert_close(
        &vals(&x.rms_norm(Some(&w), 1e-6).unwrap()),
        &want,
        Tolerance::rms_norm(DType::BF16, 16),
        "rms",
    )
    .unwrap();
    let (want, mag) = layer_ref(&xv, 16, Some(&wv), None, 1e-5);
    let got = x.layer_norm(Some(&w), None, 1e-5).unwrap();
    assert_close(&vals(&got), &want, Tolerance::layer_norm(DType::BF16, 16, mag), "layer").unwrap();
}

#[test]
fn large_inputs_take_the_parallel_path() {
    let x = Tensor::randn(&[128, 512], DType::F32, 4, Device::Cpu).unwrap();
    let want = rms_ref(&vals(&x), 512, None, 1e-5);
    assert_close(
        &vals(&x.rms_norm(None, 1e-5).unwrap()),
        &want,
        Tolerance::rms_norm(DType::F32, 512),
        "rms",
    )
    .unwrap();
}

#[test]
fn bad_arguments_are_errors() {
    let x = Tensor::zeros(&[2, 4], DType::F32, Device::Cpu).unwrap();
    let w5 = Tensor::zeros(&[5], DType::F32, Device::Cpu).unwrap();
    let e = x.rms_norm(Some(&w5), 1e-5).unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { ref lhs, ref rhs, .. } if lhs == &[2, 4] && rhs == &[5]),
        "{e}"
    );
    let e = x.layer_norm(None, Some(&w5), 1e-5).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    for eps in [-1e-6, f64::NAN, f64::INFINITY] {
        assert!(
            matches!(x.rms_norm(None, eps), Err(Error::InvalidArgument { .. })),
            "{eps}"
        );
        assert!(
            matches!(x.layer_norm(None, None, eps), Err(Error::InvalidArgument { .. })),
            "{eps}"
        );
    }
    let wb = Tensor::zeros(&[4], DType::BF16, Device::Cpu).unwrap();
    assert!(matches!(x.rms_norm(Some(&wb), 1e-5), Err(Error::DTypeMismatch { .. })));
    let s = Tensor::zeros(&[], DType::F32, Device::Cpu).unwrap();
    assert!(matches!(s.rms_norm(None, 1e-5), Err(Error::BadShape { .. })));
    let i = Tensor::zeros(&[2, 4], DType::I32, Device::Cpu).unwrap();
    assert!(matches!(
        i.layer_norm(None, None, 1e-5),
        Err(Error::DTypeMismatch { .. })
    ));
}
