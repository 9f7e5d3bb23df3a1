//! Elementwise ops against f64 references (own broadcasting, libm f64 erfc), under the
//! elementwise tolerances derived from the output dtype.

use l4_core::testing::{Tolerance, assert_close};
use l4_core::{DType, Device, Error, Tensor, bf16};
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

/// Value of row-major `v` (shape `s`) at output index `idx` under NumPy broadcasting: `s` is
/// right-aligned against `idx`, size-1 dimensions read index 0.
fn at_broadcast(v: &[f64], s: &[usize], idx: &[usize]) -> f64 {
    let lead = idx.len() - s.len();
    let flat = s
        .iter()
        .enumerate()
        .fold(0, |acc, (d, &n)| acc * n + if n == 1 { 0 } else { idx[lead + d] });
    v[flat]
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.to_f64_vec().unwrap()
}

fn fail(e: Error) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// Two shapes that broadcast to a common one: each operand drops some leading dimensions and
/// turns some others into 1.
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    let dim = prop::sample::select(vec![1usize, 2, 3, 5, 7, 17]);
    (
        prop::collection::vec((dim, any::<bool>(), any::<bool>()), 1..=3),
        0usize..=1,
        0usize..=1,
    )
        .prop_map(|(dims, drop_a, drop_b)| {
            let a: Vec<usize> = dims.iter().map(|&(s, one, _)| if one { 1 } else { s }).collect();
            let b: Vec<usize> = dims.iter().map(|&(s, _, one)| if one { 1 } else { s }).collect();
            (
                a[drop_a.min(a.len() - 1)..].to_vec(),
                b[drop_b.min(b.len() - 1)..].to_vec(),
            )
        })
}

fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop::sample::select(vec![1usize, 2, 3, 7, 17, 33]), 1..=3)
}

const BINARY: [&str; 6] = ["add", "sub", "mul", "div", "maximum", "minimum"];

fn binary_ref(op: &str, a: f64, b: f64) -> f64 {
    match op {
        "add" => a + b,
        "sub" => a - b,
        "mul" => a * b,
        "div" => a / b,
        "maximum" => a.max(b),
        "minimum" => a.min(b),
        _ => unreachable!(),
    }
}

fn binary_op(op: &str, a: &Tensor, b: &Tensor) -> l4_core::Result<Tensor> {
    match op {
        "add" => a.add(b),
        "sub" => a.sub(b),
        "mul" => a.mul(b),
        "div" => a.div(b),
        "maximum" => a.maximum(b),
        "minimum" => a.minimum(b),
        _ => unreachable!(),
    }
}

const UNARY: [&str; 10] = [
    "neg", "exp", "sqrt", "silu", "gelu", "sigmoid", "tanh", "square", "recip", "scale",
];

fn unary_op(op: &str, x: &Tensor) -> l4_core::Result<Tensor> {
    match op {
        "neg" => x.neg(),
        "exp" => x.exp(),
        "sqrt" => x.sqrt(),
        "silu" => x.silu(),
        "gelu" => x.gelu(),
        "sigmoid" => x.sigmoid(),
        "tanh" => x.tanh(),
        "square" => x.square(),
        "recip" => x.recip(),
        "scale" => x.scale(-0.3),
        _ => unreachable!(),
    }
}

/// Standard normal CDF Φ(x) in f64.
fn phi_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

fn unary_ref(op: &str, x: f64) -> f64 {
    match op {
        "neg" => -x,
        "exp" => x.exp(),
        "sqrt" => x.sqrt(),
        "silu" => x / (1.0 + (-x).exp()),
        "gelu" => x * phi_cdf(x),
        "sigmoid" => 1.0 / (1.0 + (-x).exp()),
        "tanh" => x.tanh(),
        "square" => x * x,
        "recip" => 1.0 / x,
        // The factor as the op sees it: rounded to f32.
        "scale" => x * (-0.3f32 as f64),
        _ => unreachable!(),
    }
}

/// GELU's condition number |x·f'(x)/f(x)| = |1 + x·φ(x)/Φ(x)|, computed in f64.
fn gelu_cond(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    (1.0 + x * pdf / phi_cdf(x)).abs()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn binary_ops_broadcast_and_match_f64(
        (sa, sb) in broadcast_pair(),
        op in prop::sample::select(BINARY.to_vec()),
        dtype in prop::sample::select(vec![DType::F32, DType::F16, DType::BF16]),
        seed in any::<u64>(),
    ) {
        let a = Tensor::randn(&sa, dtype, seed, Device::Cpu).unwrap();
        // Divisors away from zero, so that no f16 quotient overflows.
        let b = if op == "div" {
            Tensor::rand_uniform(&sb, 0.25, 4.0, dtype, seed ^ 3, Device::Cpu).unwrap()
        } else {
            Tensor::randn(&sb, dtype, seed ^ 3, Device::Cpu).unwrap()
        };
        let got = binary_op(op, &a, &b).map_err(fail)?;
        // The reference shape: the longer rank, the larger size per aligned dimension.
        let rank = sa.len().max(sb.len());
        let pad = |s: &[usize]| -> Vec<usize> { std::iter::repeat_n(1, rank - s.len()).chain(s.iter().copied()).collect() };
        let out: Vec<usize> = pad(&sa).iter().zip(pad(&sb)).map(|(&x, y)| x.max(y)).collect();
        prop_assert_eq!(got.shape(), &out[..]);
        prop_assert_eq!(got.dtype(), dtype);
        let (av, bv) = (vals(&a), vals(&b));
        let want: Vec<f64> = (0..out.iter().product())
            .map(|i| {
                let idx = unravel(i, &out);
                binary_ref(op, at_broadcast(&av, &sa, &idx), at_broadcast(&bv, &sb, &idx))
            })
            .collect();
        let ctx = format!("{op} {sa:?} {sb:?} {dtype}");
        assert_close(&vals(&got), &want, Tolerance::elementwise(dtype), &ctx).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn unary_ops_match_f64(
        shape in shape(),
        op in prop::sample::select(UNARY.to_vec()),
        dtype in prop::sample::select(vec![DType::F32, DType::F16, DType::BF16, DType::F8E4M3, DType::F8E5M2]),
        seed in any::<u64>(),
    ) {
        // recip on [0.25, 4) so that no f16/fp8 reciprocal overflows; normal data otherwise
        // (sqrt of the negative half gives NaN on both sides).
        let x = if op == "recip" {
            Tensor::rand_uniform(&shape, 0.25, 4.0, dtype, seed, Device::Cpu).unwrap()
        } else {
            Tensor::randn(&shape, dtype, seed, Device::Cpu).unwrap()
        };
        let got = unary_op(op, &x).map_err(fail)?;
        prop_assert_eq!(got.shape(), x.shape());
        prop_assert_eq!(got.dtype(), dtype);
        let xv = vals(&x);
        let want: Vec<f64> = xv.iter().map(|&v| unary_ref(op, v)).collect();
        // GELU evaluates erfc at the rounded argument x·(1/√2): its tolerance carries the
        // condition number over the data.
        let tol = if op == "gelu" {
            Tolerance::elementwise_conditioned(dtype, xv.iter().map(|&v| gelu_cond(v)).fold(0.0, f64::max))
        } else {
            Tolerance::elementwise(dtype)
        };
        assert_close(&vals(&got), &want, tol, &format!("{op} {shape:?} {dtype}")).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn affine_matches_f64(
        shape in shape(),
        mul in -3.0f64..3.0,
        add in -3.0f64..3.0,
        dtype in prop::sample::select(vec![DType::F32, DType::BF16, DType::F16]),
        seed in any::<u64>(),
    ) {
        let x = Tensor::randn(&shape, dtype, seed, Device::Cpu).unwrap();
        let got = x.affine(mul, add).map_err(fail)?;
        let xv = vals(&x);
        let want: Vec<f64> = xv.iter().map(|&v| v * mul + add).collect();
        // x·mul + add can cancel: three f32 roundings (mul and add into f32, the product, the
        // sum) relative to |x·mul| + |add|, which is the reduction rule with k = 3.
        let mag = xv.iter().map(|&v| (v * mul).abs() + add.abs()).fold(0.0, f64::max);
        assert_close(&vals(&got), &want, Tolerance::reduction(dtype, 3, mag), "affine").map_err(TestCaseError::fail)?;
    }
}

#[test]
fn gelu_is_accurate_in_the_negative_tail() {
    // Where 1 + erf(x/√2) would cancel to nothing, the erfc form keeps the relative accuracy.
    let xs: Vec<f32> = vec![-3.0, -5.0, -7.5, -9.0, -12.0];
    let x = Tensor::from_vec(xs.clone(), &[5], Device::Cpu).unwrap();
    let got = vals(&x.gelu().unwrap());
    let want: Vec<f64> = xs.iter().map(|&v| v as f64 * phi_cdf(v as f64)).collect();
    let cond = xs.iter().map(|&v| gelu_cond(v as f64)).fold(0.0, f64::max);
    assert_close(
        &got,
        &want,
        Tolerance::elementwise_conditioned(DType::F32, cond),
        "gelu tail",
    )
    .unwrap();
    assert!(got.iter().all(|&g| g < 0.0), "{got:?}");
}

#[test]
fn special_values_follow_ieee_and_the_documented_limits() {
    let inf = f32::INFINITY;
    let x = Tensor::from_vec(vec![-inf, inf, f32::NAN, 0.0], &[4], Device::Cpu).unwrap();
    let v = |t: l4_core::Result<Tensor>| t.unwrap().to_vec::<f32>().unwrap();
    let exp = v(x.exp());
    assert_eq!(&exp[..2], &[0.0, inf]);
    assert!(exp[2].is_nan());
    // silu and gelu take their limits at ±∞: −0 and +∞.
    for got in [v(x.silu()), v(x.gelu())] {
        assert_eq!(got[0], 0.0);
        assert!(got[0].is_sign_negative());
        assert_eq!(got[1], inf);
        assert!(got[2].is_nan());
        assert_eq!(got[3], 0.0);
    }
    assert_eq!(&v(x.sigmoid())[..2], &[0.0, 1.0]);
    assert_eq!(v(x.sigmoid())[3], 0.5);
    assert!(v(Tensor::from_vec(vec![-1f32], &[1], Device::Cpu).unwrap().sqrt())[0].is_nan());
    assert_eq!(v(x.recip())[3], inf);
    // maximum/minimum propagate NaN from either side.
    let y = Tensor::from_vec(vec![1f32, 1.0, 1.0, f32::NAN], &[4], Device::Cpu).unwrap();
    for got in [v(x.maximum(&y)), v(x.minimum(&y))] {
        assert!(got[2].is_nan() && got[3].is_nan(), "{got:?}");
    }
    assert_eq!(&v(x.maximum(&y))[..2], &[1.0, inf]);
    assert_eq!(&v(x.minimum(&y))[..2], &[-inf, 1.0]);
}

#[test]
fn fp8_results_saturate_to_the_largest_finite() {
    // e^7 ≈ 1097 exceeds e4m3's 448 and e^11 ≈ 59874 exceeds e5m2's 57344: satfinite, not inf.
    let x = Tensor::from_f32_vec(vec![7.0, 11.0], &[2], DType::F8E4M3, Device::Cpu).unwrap();
    assert_eq!(vals(&x.exp().unwrap()), vec![448.0, 448.0]);
    let x = Tensor::from_f32_vec(vec![11.0], &[1], DType::F8E5M2, Device::Cpu).unwrap();
    assert_eq!(vals(&x.exp().unwrap()), vec![57344.0]);
}

#[test]
fn ops_accept_non_contiguous_views() {
    // a: [5, 3] transposed to [3, 5]; b: a [3, 1] column broadcast along the rows.
    let a = Tensor::randn(&[5, 3], DType::BF16, 5, Device::Cpu)
        .unwrap()
        .transpose(0, 1)
        .unwrap();
    let b = Tensor::randn(&[3, 4], DType::BF16, 6, Device::Cpu)
        .unwrap()
        .narrow(1, 2, 1)
        .unwrap();
    let got = a.mul(&b).unwrap();
    assert_eq!(got.shape(), &[3, 5]);
    let (av, bv) = (vals(&a), vals(&b));
    let want: Vec<f64> = (0..15).map(|i| av[i] * bv[i / 5]).collect();
    assert_close(&vals(&got), &want, Tolerance::elementwise(DType::BF16), "mul views").unwrap();
    let want: Vec<f64> = av.iter().map(|&x| x.exp()).collect();
    assert_close(
        &vals(&a.exp().unwrap()),
        &want,
        Tolerance::elementwise(DType::BF16),
        "exp view",
    )
    .unwrap();
}

#[test]
fn large_inputs_take_the_parallel_path() {
    // 2^16 elements, above the threshold for rayon.
    let a = Tensor::randn(&[256, 256], DType::F32, 8, Device::Cpu).unwrap();
    let b = Tensor::randn(&[256], DType::F32, 9, Device::Cpu).unwrap();
    let (av, bv) = (vals(&a), vals(&b));
    let want: Vec<f64> = (0..av.len()).map(|i| av[i] - bv[i % 256]).collect();
    assert_close(
        &vals(&a.sub(&b).unwrap()),
        &want,
        Tolerance::elementwise(DType::F32),
        "sub",
    )
    .unwrap();
    let want: Vec<f64> = av.iter().map(|&x| x.tanh()).collect();
    assert_close(
        &vals(&a.tanh().unwrap()),
        &want,
        Tolerance::elementwise(DType::F32),
        "tanh",
    )
    .unwrap();
}

#[test]
fn bad_inputs_are_errors() {
    let f = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
    let i = Tensor::zeros(&[2, 3], DType::I32, Device::Cpu).unwrap();
    assert!(matches!(i.exp(), Err(Error::DTypeMismatch { got: DType::I32, .. })));
    assert!(matches!(i.add(&i), Err(Error::DTypeMismatch { got: DType::I32, .. })));
    assert!(matches!(i.affine(1.0, 1.0), Err(Error::DTypeMismatch { .. })));
    let h = Tensor::from_vec(vec![bf16::ONE; 6], &[2, 3], Device::Cpu).unwrap();
    assert!(matches!(f.add(&h), Err(Error::DTypeMismatch { .. })));
    // Shapes that do not broadcast: both are named.
    let g = Tensor::zeros(&[4], DType::F32, Device::Cpu).unwrap();
    let e = f.mul(&g).unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { ref lhs, ref rhs, .. } if lhs == &[2, 3] && rhs == &[4]),
        "{e}"
    );
    assert!(e.to_string().contains("[2, 3]") && e.to_string().contains("[4]"), "{e}");
}
