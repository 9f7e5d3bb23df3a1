//! The test helpers themselves: tolerance rules and values, assertion failures and messages,
//! device listing, and the seeded random inputs.

use l4_core::testing::{Tolerance, assert_close, assert_tensor_close, gamma, test_devices};
use l4_core::{DType, Device, Error, Tensor};

const U32: f64 = 1.0 / 16_777_216.0; // 2^-24

#[test]
fn pass_rule_handles_nan_inf_and_bounds() {
    let t = Tolerance::new(0.1, 0.01);
    assert!(t.allows(1.0, 1.0));
    assert!(t.allows(1.105, 1.0)); // bound 0.1 + 0.01
    assert!(!t.allows(1.115, 1.0));
    assert!(t.allows(-100.0, -101.0)); // bound 0.1 + 1.01
    assert!(!t.allows(-99.8, -101.0));
    assert!(t.allows(f64::NAN, f64::NAN));
    assert!(!t.allows(f64::NAN, 1.0));
    assert!(!t.allows(1.0, f64::NAN));
    assert!(t.allows(f64::INFINITY, f64::INFINITY));
    assert!(!t.allows(f64::INFINITY, f64::NEG_INFINITY));
    assert!(!t.allows(f64::MAX, f64::INFINITY));
    assert!(!Tolerance::new(1e300, 1e300).allows(1.0, f64::INFINITY));
    assert!(Tolerance::exact().allows(0.0, -0.0));
    assert!(!Tolerance::exact().allows(1.0, 1.0 + f64::EPSILON));
}

#[test]
fn constructors_follow_their_derivations() {
    // Hand-evaluated from the documented formulas.
    assert_eq!(Tolerance::elementwise(DType::F32).rtol, 6.0 * U32);
    assert_eq!(Tolerance::elementwise(DType::BF16).rtol, 2.0 / 256.0 + 4.0 * U32);
    assert_eq!(Tolerance::elementwise(DType::F8E4M3).rtol, 2.0 / 16.0 + 4.0 * U32);
    assert_eq!(Tolerance::elementwise(DType::I32), Tolerance::exact());
    assert_eq!(Tolerance::elementwise_conditioned(DType::F32, 10.0).rtol, 26.0 * U32);
    assert_eq!(gamma(0, U32), 0.0);
    assert_eq!(gamma(1, 0.5), 1.0);
    assert_eq!(gamma(3, 0.25), 3.0);
    let r = Tolerance::reduction(DType::BF16, 100, 2.0);
    assert_eq!(r.rtol, 2.0 / 256.0);
    let g = 100.0 * U32 / (1.0 - 100.0 * U32);
    assert!((r.atol - g * 2.0 * (1.0 + 1.0 / 256.0)).abs() < 1e-12 * r.atol + 1e-40);
    // Two approximations of one exact value: 2·atol/(1 − rtol), 2·rtol/(1 − rtol).
    assert_eq!(Tolerance::new(1.0, 0.5).pairwise(), Tolerance::new(4.0, 2.0));
    // Larger k or magnitude never tightens.
    assert!(Tolerance::reduction(DType::F32, 200, 1.0).atol > Tolerance::reduction(DType::F32, 100, 1.0).atol);
    assert!(Tolerance::softmax(DType::F32, 10, 5.0).rtol > Tolerance::softmax(DType::F32, 10, 1.0).rtol);
}

#[test]
#[should_panic(expected = "no rounding-error bound")]
fn gamma_refuses_k_u_at_least_one() {
    gamma(1 << 24, U32);
}

#[test]
fn assert_close_reports_the_first_bad_index_and_count() {
    let want: Vec<f64> = Tensor::randn(&[100], DType::F32, 3, Device::Cpu)
        .unwrap()
        .to_f64_vec()
        .unwrap();
    let tol = Tolerance::elementwise(DType::BF16);
    assert_close(&want, &want, tol, "same").unwrap();
    // Perturb two elements by 3 times their bound: both are caught, the first is reported.
    let mut got = want.clone();
    for i in [17, 60] {
        got[i] += 3.0 * (tol.atol + tol.rtol * want[i].abs());
    }
    let msg = assert_close(&got, &want, tol, "perturbed").unwrap_err();
    assert!(msg.starts_with("perturbed: 2 of 100 elements"), "{msg}");
    assert!(msg.contains("index 17"), "{msg}");
    assert!(
        msg.contains(&format!("{:e}", got[17])) && msg.contains(&format!("{:e}", want[17])),
        "{msg}"
    );
    assert!(msg.contains("rtol"), "{msg}");
    // Within half the bound still passes.
    let mut near = want.clone();
    near[17] += 0.5 * (tol.atol + tol.rtol * want[17].abs());
    assert_close(&near, &want, tol, "near").unwrap();
    // A NaN where a number is wanted, and a length mismatch, fail.
    let mut nan = want.clone();
    nan[5] = f64::NAN;
    assert!(assert_close(&nan, &want, tol, "nan").unwrap_err().contains("index 5"));
    assert!(
        assert_close(&want[1..], &want, tol, "len")
            .unwrap_err()
            .contains("length mismatch")
    );
}

#[test]
fn one_rounding_into_a_dtype_passes_elementwise_and_one_ulp_more_fails() {
    // The tolerance must admit the rounding it models and reject an error a few times larger.
    let x = Tensor::randn(&[2000], DType::F32, 4, Device::Cpu).unwrap();
    let exact = x.to_f64_vec().unwrap();
    for dtype in [DType::F32, DType::F16, DType::BF16, DType::F8E4M3, DType::F8E5M2] {
        let rounded = x.to_dtype(dtype).unwrap().to_f64_vec().unwrap();
        let tol = Tolerance::elementwise(dtype);
        assert_close(&rounded, &exact, tol, &format!("{dtype}")).unwrap();
        let off: Vec<f64> = exact.iter().map(|&v| v * (1.0 + 8.0 * dtype.unit_roundoff())).collect();
        assert!(assert_close(&off, &exact, tol, "off").is_err(), "{dtype}");
    }
}

#[test]
fn f32_summation_stays_within_the_reduction_bound() {
    // Sequential f32 sums of k normal values against f64: the bound γ_k·Σ|x| must hold.
    for (k, seed) in [(10usize, 1u64), (1000, 2), (100_000, 3)] {
        let x = Tensor::randn(&[k], DType::F32, seed, Device::Cpu)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        let s32 = x.iter().fold(0f32, |a, &b| a + b) as f64;
        let s64: f64 = x.iter().map(|&v| v as f64).sum();
        let mag: f64 = x.iter().map(|&v| (v as f64).abs()).sum();
        assert_close(&[s32], &[s64], Tolerance::reduction(DType::F32, k, mag), "f32 sum").unwrap();
    }
}

#[test]
#[should_panic(expected = "out of tolerance")]
fn assert_tensor_close_panics_on_a_perturbed_value() {
    let a = Tensor::from_vec(vec![1f32, 2.0, 3.0], &[3], Device::Cpu).unwrap();
    let b = Tensor::from_vec(vec![1f32, 2.001, 3.0], &[3], Device::Cpu).unwrap();
    assert_tensor_close(&a, &a, Tolerance::exact());
    assert_tensor_close(&b, &a, Tolerance::elementwise(DType::F32));
}

#[test]
#[should_panic(expected = "shape mismatch")]
fn assert_tensor_close_panics_on_a_shape_mismatch() {
    let a = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
    let b = Tensor::zeros(&[3, 2], DType::F32, Device::Cpu).unwrap();
    assert_tensor_close(&a, &b, Tolerance::exact());
}

#[test]
fn test_devices_always_starts_with_the_cpu() {
    let devices = test_devices();
    assert_eq!(devices[0], Device::Cpu);
    if std::env::var("L4_REQUIRE_GPU").is_ok_and(|v| v == "1") {
        assert!(devices.contains(&Device::Cuda(0)));
    }
}

#[test]
fn randn_is_seeded_and_standard_normal() {
    let a = Tensor::randn(&[20_000], DType::F32, 42, Device::Cpu)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let b = Tensor::randn(&[20_000], DType::F32, 42, Device::Cpu)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let c = Tensor::randn(&[20_000], DType::F32, 43, Device::Cpu)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    // Sample mean and variance within 6 standard errors of 0 and 1.
    let n = a.len() as f64;
    let mean = a.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    assert!(mean.abs() < 6.0 / n.sqrt(), "mean {mean}");
    assert!((var - 1.0).abs() < 6.0 * (2.0 / n).sqrt(), "var {var}");
    // Other dtypes: the same f32 draws, rounded once.
    let h = Tensor::randn(&[20_000], DType::BF16, 42, Device::Cpu).unwrap();
    let r = Tensor::from_vec(a, &[20_000], Device::Cpu)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    assert_tensor_close(&h, &r, Tolerance::exact());
    assert_eq!(
        Tensor::randn(&[2, 3], DType::F16, 1, Device::Cpu).unwrap().shape(),
        &[2, 3]
    );
}

#[test]
fn rand_uniform_stays_in_range_and_rounds_integers() {
    let x = Tensor::rand_uniform(&[5000], -2.0, 3.0, DType::F32, 7, Device::Cpu).unwrap();
    let v = x.to_vec::<f32>().unwrap();
    assert!(v.iter().all(|&x| (-2.0..3.0).contains(&x)));
    assert!(v.iter().any(|&x| x < -1.5) && v.iter().any(|&x| x > 2.5));
    let i = Tensor::rand_uniform(&[5000], 0.0, 4.0, DType::I32, 7, Device::Cpu).unwrap();
    let iv = i.to_vec::<i32>().unwrap();
    assert!(iv.iter().all(|&x| (0..=4).contains(&x)));
    for k in 0..=4 {
        assert!(iv.contains(&k), "{k} never drawn");
    }
    assert_eq!(
        Tensor::rand_uniform(&[8], 0.0, 1.0, DType::U8, 1, Device::Cpu)
            .unwrap()
            .dtype(),
        DType::U8
    );
}

#[test]
fn random_constructors_reject_bad_arguments() {
    assert!(matches!(
        Tensor::randn(&[2], DType::I32, 1, Device::Cpu),
        Err(Error::DTypeMismatch { got: DType::I32, .. })
    ));
    assert!(matches!(
        Tensor::rand_uniform(&[2], 0.0, 1.0, DType::Bool, 1, Device::Cpu),
        Err(Error::DTypeMismatch { .. })
    ));
    for (lo, hi) in [(1.0, 1.0), (2.0, 1.0), (0.0, f64::INFINITY), (f64::NAN, 1.0)] {
        assert!(
            matches!(
                Tensor::rand_uniform(&[2], lo, hi, DType::F32, 1, Device::Cpu),
                Err(Error::InvalidArgument { .. })
            ),
            "[{lo}, {hi})"
        );
    }
}
