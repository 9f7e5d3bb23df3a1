//! Reductions, top-k and softmax against f64 references computed here, under the derived
//! reduction / softmax tolerances (exact for the selecting ops).

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

/// The slices of row-major `v` (shape `shape`) along `dim`, in row-major order of the other
/// dimensions, each as a vector of its `shape[dim]` values.
fn slices(v: &[f64], shape: &[usize], dim: usize) -> Vec<Vec<f64>> {
    let outer: usize = shape[..dim].iter().product();
    let inner: usize = shape[dim + 1..].iter().product();
    let n = shape[dim];
    let mut out = Vec::new();
    for o in 0..outer {
        for i in 0..inner {
            out.push((0..n).map(|j| v[(o * n + j) * inner + i]).collect());
        }
    }
    out
}

/// Inverse of `slices`: scatters per-slice results (same lengths) back into row-major order.
fn unslice(s: &[Vec<f64>], shape: &[usize], dim: usize) -> Vec<f64> {
    let inner: usize = shape[dim + 1..].iter().product();
    let n = shape[dim];
    let mut out = vec![0.0; shape.iter().product()];
    for (r, slice) in s.iter().enumerate() {
        let (o, i) = (r / inner, r % inner);
        for (j, &x) in slice.iter().enumerate() {
            out[(o * n + j) * inner + i] = x;
        }
    }
    out
}

fn reduced(shape: &[usize], dim: usize, keepdim: bool) -> Vec<usize> {
    let mut s = shape.to_vec();
    if keepdim {
        s[dim] = 1;
    } else {
        s.remove(dim);
    }
    s
}

fn shape_and_dim() -> impl Strategy<Value = (Vec<usize>, usize)> {
    prop::collection::vec(prop::sample::select(vec![1usize, 2, 3, 7, 17, 33]), 1..=3).prop_flat_map(|s| {
        let r = s.len();
        (Just(s), 0..r)
    })
}

fn float_dtype() -> impl Strategy<Value = DType> {
    prop::sample::select(vec![DType::F32, DType::F16, DType::BF16])
}

/// Small integers (many ties) as f32 values of the given shape.
fn tied(shape: &[usize], seed: u64) -> Tensor {
    Tensor::rand_uniform(shape, -3.0, 3.0, DType::I32, seed, Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

/// First index of the maximum (`sign = 1`) or minimum (`sign = -1`) of a slice without NaN.
fn first_extreme(s: &[f64], sign: f64) -> usize {
    let mut best = 0;
    for (i, &x) in s.iter().enumerate() {
        if sign * x > sign * s[best] {
            best = i;
        }
    }
    best
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sum_and_mean_match_f64((shape, dim) in shape_and_dim(), keepdim in any::<bool>(), dtype in float_dtype(), seed in any::<u64>()) {
        let x = Tensor::randn(&shape, dtype, seed, Device::Cpu).unwrap();
        let rows = slices(&vals(&x), &shape, dim);
        let n = shape[dim];
        let want_sum: Vec<f64> = rows.iter().map(|r| r.iter().sum()).collect();
        let want_mean: Vec<f64> = want_sum.iter().map(|s| s / n as f64).collect();
        let mag = rows.iter().map(|r| r.iter().map(|v| v.abs()).sum::<f64>()).fold(0.0, f64::max);
        let sum = x.sum(dim, keepdim).map_err(fail)?;
        let mean = x.mean(dim, keepdim).map_err(fail)?;
        let out_shape = reduced(&shape, dim, keepdim);
        prop_assert_eq!(sum.shape(), &out_shape[..]);
        prop_assert_eq!(mean.shape(), &out_shape[..]);
        let ctx = format!("{shape:?} dim {dim} {dtype}");
        assert_close(&vals(&sum), &want_sum, Tolerance::reduction(dtype, n, mag), &ctx).map_err(TestCaseError::fail)?;
        assert_close(&vals(&mean), &want_mean, Tolerance::reduction(dtype, n, mag / n as f64), &ctx)
            .map_err(TestCaseError::fail)?;
    }

    #[test]
    fn max_min_and_args_pick_the_first_extreme((shape, dim) in shape_and_dim(), keepdim in any::<bool>(), seed in any::<u64>()) {
        let x = tied(&shape, seed);
        let rows = slices(&vals(&x), &shape, dim);
        let out_shape = reduced(&shape, dim, keepdim);
        for (sign, name) in [(1.0, "max"), (-1.0, "min")] {
            let (v, a) = if sign > 0.0 {
                (x.max(dim, keepdim), x.argmax(dim, keepdim))
            } else {
                (x.min(dim, keepdim), x.argmin(dim, keepdim))
            };
            let (v, a) = (v.map_err(fail)?, a.map_err(fail)?);
            prop_assert_eq!(v.shape(), &out_shape[..]);
            prop_assert_eq!(a.dtype(), DType::I64);
            let idx: Vec<usize> = rows.iter().map(|r| first_extreme(r, sign)).collect();
            let want_v: Vec<f64> = rows.iter().zip(&idx).map(|(r, &i)| r[i]).collect();
            let want_a: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
            prop_assert_eq!(vals(&v), want_v, "{}", name);
            prop_assert_eq!(a.to_vec::<i64>().unwrap(), want_a, "arg{}", name);
        }
    }

    #[test]
    fn topk_is_sorted_descending_with_stable_ties(
        rows in 1usize..5,
        n in prop::sample::select(vec![1usize, 2, 3, 7, 17, 33]),
        k_frac in 0.0f64..1.0,
        seed in any::<u64>(),
    ) {
        let k = 1 + ((n - 1) as f64 * k_frac) as usize;
        let x = tied(&[rows, n], seed);
        let (v, i) = x.topk(k).map_err(fail)?;
        prop_assert_eq!(v.shape(), &[rows, k]);
        prop_assert_eq!(i.shape(), &[rows, k]);
        let (mut want_v, mut want_i) = (Vec::new(), Vec::new());
        for r in slices(&vals(&x), &[rows, n], 1) {
            // Order by value descending, then index ascending.
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| r[b].partial_cmp(&r[a]).unwrap().then(a.cmp(&b)));
            want_v.extend(order[..k].iter().map(|&j| r[j]));
            want_i.extend(order[..k].iter().map(|&j| j as i64));
        }
        prop_assert_eq!(vals(&v), want_v);
        prop_assert_eq!(i.to_vec::<i64>().unwrap(), want_i);
    }

    #[test]
    fn softmax_and_log_softmax_match_f64((shape, dim) in shape_and_dim(), dtype in float_dtype(), scale in 0.5f64..8.0, seed in any::<u64>()) {
        // Logits of spread up to ~8·(a few): exercises the range term of the tolerance.
        let x = Tensor::randn(&shape, dtype, seed, Device::Cpu).unwrap().scale(scale).unwrap();
        let n = shape[dim];
        let rows = slices(&vals(&x), &shape, dim);
        let mut range: f64 = 0.0;
        let (mut sm, mut lsm) = (Vec::new(), Vec::new());
        for r in &rows {
            let m = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
            range = range.max(m - lo);
            let s: f64 = r.iter().map(|&v| (v - m).exp()).sum();
            sm.push(r.iter().map(|&v| (v - m).exp() / s).collect::<Vec<f64>>());
            lsm.push(r.iter().map(|&v| v - m - s.ln()).collect::<Vec<f64>>());
        }
        let ctx = format!("{shape:?} dim {dim} {dtype}");
        let got = x.softmax(dim).map_err(fail)?;
        prop_assert_eq!(got.shape(), &shape[..]);
        let tol = Tolerance::softmax(dtype, n, range);
        assert_close(&vals(&got), &unslice(&sm, &shape, dim), tol, &ctx).map_err(TestCaseError::fail)?;
        // Every row sums to 1 within Σ_i (atol + rtol·y_i) = n·atol + rtol.
        for (r, row) in slices(&vals(&got), &shape, dim).iter().enumerate() {
            let s: f64 = row.iter().sum();
            prop_assert!((s - 1.0).abs() <= n as f64 * tol.atol + tol.rtol, "{} row {} sums to {}", ctx, r, s);
        }
        let got = x.log_softmax(dim).map_err(fail)?;
        assert_close(&vals(&got), &unslice(&lsm, &shape, dim), Tolerance::log_softmax(dtype, n, range), &ctx)
            .map_err(TestCaseError::fail)?;
    }

    #[test]
    fn softmax_is_invariant_to_a_constant_shift(rows in 1usize..4, n in prop::sample::select(vec![1usize, 3, 7, 33]), shift in prop::sample::select(vec![16.0f64, -64.0, 1000.0]), seed in any::<u64>()) {
        // Multiples of 1/64 in [-4, 4]: adding 16, -64 or 1000 is exact in f32, so both
        // inputs describe the same exact softmax (1000 would overflow e^x without the max).
        let x = Tensor::rand_uniform(&[rows, n], -256.0, 256.0, DType::I32, seed, Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .scale(1.0 / 64.0)
            .unwrap();
        let c = Tensor::full(shift, &[1], DType::F32, Device::Cpu).unwrap();
        let y0 = x.softmax(1).map_err(fail)?;
        let y1 = x.add(&c).map_err(fail)?.softmax(1).map_err(fail)?;
        prop_assert!(vals(&y1).iter().all(|v| v.is_finite()));
        // Both are within the softmax bound of the same exact values: compare them pairwise.
        let tol = Tolerance::softmax(DType::F32, n, 8.0).pairwise();
        assert_close(&vals(&y1), &vals(&y0), tol, "shifted softmax").map_err(TestCaseError::fail)?;
    }
}

#[test]
fn argmax_ties_take_the_first_index() {
    let x = Tensor::from_vec(vec![1f32, 5.0, 5.0, 2.0, 5.0, 0.0, 0.0, 0.0], &[2, 4], Device::Cpu).unwrap();
    assert_eq!(x.argmax(1, false).unwrap().to_vec::<i64>().unwrap(), vec![1, 0]);
    assert_eq!(x.argmin(1, false).unwrap().to_vec::<i64>().unwrap(), vec![0, 1]);
    // Along dim 0 the columns are (1, 5), (5, 0), (5, 0), (2, 0). Stacking x twice makes every
    // column's extreme appear twice: the first row holding it wins.
    let a = x.argmax(0, true).unwrap();
    assert_eq!(a.shape(), &[1, 4]);
    assert_eq!(a.to_vec::<i64>().unwrap(), vec![1, 0, 0, 0]);
    let y = Tensor::cat(&[&x, &x], 0).unwrap(); // [4, 4]
    assert_eq!(y.argmax(0, false).unwrap().to_vec::<i64>().unwrap(), vec![1, 0, 0, 0]);
    assert_eq!(y.argmin(0, false).unwrap().to_vec::<i64>().unwrap(), vec![0, 1, 1, 1]);
}

#[test]
fn topk_ties_keep_index_order() {
    let x = Tensor::from_vec(vec![2f32, 7.0, 2.0, 7.0, 2.0, -1.0], &[6], Device::Cpu).unwrap();
    let (v, i) = x.topk(4).unwrap();
    assert_eq!(v.to_vec::<f32>().unwrap(), vec![7.0, 7.0, 2.0, 2.0]);
    assert_eq!(i.to_vec::<i64>().unwrap(), vec![1, 3, 0, 2]);
}

#[test]
fn nan_propagates_through_max_min_and_ranks_first_in_topk() {
    let nan = f32::NAN;
    let x = Tensor::from_vec(vec![1f32, nan, 3.0, nan], &[4], Device::Cpu).unwrap();
    assert!(x.max(0, false).unwrap().to_scalar_f64().unwrap().is_nan());
    assert!(x.min(0, false).unwrap().to_scalar_f64().unwrap().is_nan());
    assert_eq!(x.argmax(0, false).unwrap().to_vec::<i64>().unwrap(), vec![1]);
    assert_eq!(x.argmin(0, false).unwrap().to_vec::<i64>().unwrap(), vec![1]);
    let (v, i) = x.topk(3).unwrap();
    let v = v.to_vec::<f32>().unwrap();
    assert!(v[0].is_nan() && v[1].is_nan() && v[2] == 3.0, "{v:?}");
    assert_eq!(i.to_vec::<i64>().unwrap(), vec![1, 3, 2]);
    // A NaN anywhere in a softmax slice poisons that slice only.
    let s = Tensor::from_vec(vec![0f32, nan, 1.0, 2.0], &[2, 2], Device::Cpu)
        .unwrap()
        .softmax(1)
        .unwrap();
    let s = s.to_vec::<f32>().unwrap();
    assert!(
        s[0].is_nan() && s[1].is_nan() && s[2].is_finite() && s[3].is_finite(),
        "{s:?}"
    );
    // A fully masked (all −∞) row is NaN, as in PyTorch.
    let m = Tensor::full(f64::NEG_INFINITY, &[1, 3], DType::F32, Device::Cpu).unwrap();
    assert!(
        m.softmax(1)
            .unwrap()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .all(|v| v.is_nan())
    );
}

#[test]
fn selections_work_on_integers_and_views() {
    let x = Tensor::from_vec(vec![3i32, -9, 4, 4, 0, 8], &[2, 3], Device::Cpu).unwrap();
    let t = x.transpose(0, 1).unwrap(); // [[3, 4], [-9, 0], [4, 8]]
    assert_eq!(t.max(1, false).unwrap().to_vec::<i32>().unwrap(), vec![4, 0, 8]);
    assert_eq!(t.min(0, false).unwrap().to_vec::<i32>().unwrap(), vec![-9, 0]);
    let (v, i) = t.topk(1).unwrap();
    assert_eq!(v.to_vec::<i32>().unwrap(), vec![4, 0, 8]);
    assert_eq!(i.to_vec::<i64>().unwrap(), vec![1, 1, 1]);
}

#[test]
fn large_rows_take_the_parallel_path() {
    let x = Tensor::randn(&[64, 1024], DType::F32, 3, Device::Cpu).unwrap();
    let rows = slices(&vals(&x), &[64, 1024], 1);
    let want: Vec<f64> = rows.iter().map(|r| r.iter().sum()).collect();
    let mag = rows
        .iter()
        .map(|r| r.iter().map(|v| v.abs()).sum::<f64>())
        .fold(0.0, f64::max);
    assert_close(
        &vals(&x.sum(1, false).unwrap()),
        &want,
        Tolerance::reduction(DType::F32, 1024, mag),
        "sum",
    )
    .unwrap();
    let s = x.softmax(1).unwrap();
    for row in slices(&vals(&s), &[64, 1024], 1) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-4);
    }
}

#[test]
fn bad_arguments_are_errors() {
    let x = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
    assert!(matches!(
        x.sum(2, false),
        Err(Error::DimOutOfRange { dim: 2, rank: 2, .. })
    ));
    assert!(matches!(x.softmax(5), Err(Error::DimOutOfRange { .. })));
    assert!(matches!(x.argmax(2, true), Err(Error::DimOutOfRange { .. })));
    assert!(matches!(x.topk(0), Err(Error::InvalidArgument { .. })));
    assert!(matches!(x.topk(4), Err(Error::InvalidArgument { .. })));
    let s = Tensor::zeros(&[], DType::F32, Device::Cpu).unwrap();
    assert!(matches!(s.topk(1), Err(Error::BadShape { .. })));
    assert!(matches!(s.sum(0, false), Err(Error::DimOutOfRange { .. })));
    let i = Tensor::zeros(&[2, 3], DType::I32, Device::Cpu).unwrap();
    assert!(matches!(i.sum(0, false), Err(Error::DTypeMismatch { .. })));
    assert!(matches!(i.softmax(0), Err(Error::DTypeMismatch { .. })));
    let b = Tensor::zeros(&[2, 3], DType::Bool, Device::Cpu).unwrap();
    assert!(matches!(b.argmax(0, false), Err(Error::DTypeMismatch { .. })));
    let e = Tensor::zeros(&[2, 0], DType::F32, Device::Cpu).unwrap();
    assert!(matches!(e.max(1, false), Err(Error::InvalidArgument { .. })));
    // An empty dimension sums to zero and has no mean.
    assert_eq!(e.sum(1, false).unwrap().to_vec::<f32>().unwrap(), vec![0.0, 0.0]);
    assert!(
        e.mean(1, false)
            .unwrap()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .all(|v| v.is_nan())
    );
}
