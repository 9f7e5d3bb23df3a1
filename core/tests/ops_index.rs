//! embedding, index_select, cat, masked_fill and comparisons against naive index arithmetic
//! written here; these ops copy elements, so results must be exact.

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

/// A random tensor of any dtype: normal floats, small integers, alternating bools.
fn random(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    match dtype {
        DType::Bool => {
            let n: usize = shape.iter().product();
            let bits: Vec<bool> = (0..n)
                .map(|i| (i as u64 ^ seed).count_ones().is_multiple_of(2))
                .collect();
            Tensor::from_vec(bits, shape, Device::Cpu).unwrap()
        }
        d if d.is_float() => Tensor::randn(shape, d, seed, Device::Cpu).unwrap(),
        d => Tensor::rand_uniform(shape, 0.0, 100.0, d, seed, Device::Cpu).unwrap(),
    }
}

fn any_dtype() -> impl Strategy<Value = DType> {
    prop::sample::select(DType::ALL.to_vec())
}

fn dims() -> impl Strategy<Value = usize> {
    prop::sample::select(vec![1usize, 2, 3, 7, 17])
}

/// Checks values exactly, and that the dtype was kept.
fn same(got: &Tensor, want: &[f64], dtype: DType, ctx: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.dtype(), dtype, "{}", ctx);
    assert_close(&vals(got), want, Tolerance::exact(), ctx).map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn embedding_gathers_rows_for_every_dtype(
        v in dims(),
        d in dims(),
        ids_shape in prop::collection::vec(1usize..=4, 0..=2),
        dtype in any_dtype(),
        wide_ids in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let table = random(&[v, d], dtype, seed);
        let ids_dtype = if wide_ids { DType::I64 } else { DType::I32 };
        let ids = Tensor::rand_uniform(&ids_shape, 0.0, v as f64 - 0.5, ids_dtype, seed ^ 9, Device::Cpu).unwrap();
        let got = l4_core::ops::embedding(&table, &ids).map_err(fail)?;
        let mut shape = ids_shape.clone();
        shape.push(d);
        prop_assert_eq!(got.shape(), &shape[..]);
        let tv = vals(&table);
        let want: Vec<f64> = vals(&ids).iter().flat_map(|&id| tv[id as usize * d..(id as usize + 1) * d].to_vec()).collect();
        same(&got, &want, dtype, &format!("embedding {dtype}"))?;
        // The method form on the ids gives the same.
        prop_assert_eq!(vals(&ids.embedding(&table).map_err(fail)?), want);
    }

    #[test]
    fn index_select_matches_naive(
        shape in prop::collection::vec(dims(), 1..=3),
        dim_frac in 0.0f64..1.0,
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        dtype in any_dtype(),
        transposed in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let dim = ((shape.len() as f64 * dim_frac) as usize).min(shape.len() - 1);
        // Optionally a non-contiguous view of the same shape.
        let x = if transposed && shape.len() >= 2 {
            let mut s = shape.clone();
            s.swap(0, 1);
            random(&s, dtype, seed).transpose(0, 1).unwrap()
        } else {
            random(&shape, dtype, seed)
        };
        let n = shape[dim];
        let idx: Vec<i64> = picks.iter().map(|p| p.index(n) as i64).collect();
        let indices = Tensor::from_vec(idx.clone(), &[idx.len()], Device::Cpu).unwrap();
        let got = x.index_select(dim, &indices).map_err(fail)?;
        let mut out_shape = shape.clone();
        out_shape[dim] = idx.len();
        prop_assert_eq!(got.shape(), &out_shape[..]);
        // out[o, j, i] = x[o, idx[j], i].
        let xv = vals(&x);
        let outer: usize = shape[..dim].iter().product();
        let inner: usize = shape[dim + 1..].iter().product();
        let mut want = Vec::new();
        for o in 0..outer {
            for &j in &idx {
                for i in 0..inner {
                    want.push(xv[(o * n + j as usize) * inner + i]);
                }
            }
        }
        same(&got, &want, dtype, &format!("index_select dim {dim}"))?;
    }

    #[test]
    fn cat_matches_naive(
        shape in prop::collection::vec(dims(), 1..=3),
        dim_frac in 0.0f64..1.0,
        extents in prop::collection::vec(0usize..4, 1..=3),
        dtype in any_dtype(),
        seed in any::<u64>(),
    ) {
        let dim = ((shape.len() as f64 * dim_frac) as usize).min(shape.len() - 1);
        // Parts with sizes `extents` along dim (0 allowed), the rest of `shape` shared.
        let parts: Vec<Tensor> = extents
            .iter()
            .enumerate()
            .map(|(p, &e)| {
                let mut s = shape.clone();
                s[dim] = e;
                random(&s, dtype, seed ^ p as u64)
            })
            .collect();
        let refs: Vec<&Tensor> = parts.iter().collect();
        let got = Tensor::cat(&refs, dim).map_err(fail)?;
        let mut out_shape = shape.clone();
        out_shape[dim] = extents.iter().sum();
        prop_assert_eq!(got.shape(), &out_shape[..]);
        let outer: usize = shape[..dim].iter().product();
        let inner: usize = shape[dim + 1..].iter().product();
        let pv: Vec<Vec<f64>> = parts.iter().map(vals).collect();
        let mut want = Vec::new();
        for o in 0..outer {
            for (v, &e) in pv.iter().zip(&extents) {
                want.extend_from_slice(&v[o * e * inner..(o + 1) * e * inner]);
            }
        }
        same(&got, &want, dtype, &format!("cat dim {dim}"))?;
    }

    #[test]
    fn masked_fill_with_a_broadcast_mask(
        rows in 1usize..5,
        cols in dims(),
        dtype in prop::sample::select(vec![DType::F32, DType::BF16, DType::F16, DType::I32, DType::I64]),
        seed in any::<u64>(),
    ) {
        let x = random(&[rows, cols], dtype, seed);
        // A [1, cols] mask: true on every other column, broadcast over rows.
        let bits: Vec<bool> = (0..cols).map(|j| (j as u64).wrapping_add(seed).is_multiple_of(2)).collect();
        let mask = Tensor::from_vec(bits.clone(), &[1, cols], Device::Cpu).unwrap();
        let got = x.masked_fill(&mask, -7.0).map_err(fail)?;
        let xv = vals(&x);
        let want: Vec<f64> = (0..rows * cols).map(|i| if bits[i % cols] { -7.0 } else { xv[i] }).collect();
        same(&got, &want, dtype, "masked_fill")?;
    }
}

#[test]
fn embedding_rejects_bad_ids_naming_them() {
    let table = Tensor::randn(&[5, 3], DType::BF16, 1, Device::Cpu).unwrap();
    for (ids, bad) in [(vec![0i64, 5, 1], 5i64), (vec![2, -1], -1), (vec![i64::MAX], i64::MAX)] {
        let n = ids.len();
        let t = Tensor::from_vec(ids, &[n], Device::Cpu).unwrap();
        let e = l4_core::ops::embedding(&table, &t).unwrap_err();
        assert!(
            matches!(e, Error::IndexOutOfRange { index, size: 5, .. } if index == bad),
            "{e}"
        );
        assert!(e.to_string().contains(&bad.to_string()), "{e}");
    }
    let ids_i32 = Tensor::from_vec(vec![7i32], &[1], Device::Cpu).unwrap();
    assert!(matches!(
        ids_i32.embedding(&table),
        Err(Error::IndexOutOfRange { index: 7, .. })
    ));
    let ids_f32 = Tensor::from_vec(vec![1f32], &[1], Device::Cpu).unwrap();
    assert!(matches!(ids_f32.embedding(&table), Err(Error::DTypeMismatch { .. })));
    let flat = Tensor::randn(&[5], DType::F32, 1, Device::Cpu).unwrap();
    let ok_ids = Tensor::from_vec(vec![1i64], &[1], Device::Cpu).unwrap();
    assert!(matches!(ok_ids.embedding(&flat), Err(Error::BadShape { .. })));
}

#[test]
fn embedding_copies_fp8_bits_exactly() {
    // Every e4m3 code, NaN included, comes back bit for bit.
    let table = Tensor::from_vec(
        (0..=255u8).map(l4_core::F8E4M3::from_bits).collect(),
        &[64, 4],
        Device::Cpu,
    )
    .unwrap();
    let ids = Tensor::from_vec((0..64i32).rev().collect(), &[64], Device::Cpu).unwrap();
    let got = ids.embedding(&table).unwrap().to_vec::<l4_core::F8E4M3>().unwrap();
    let want: Vec<u8> = (0..64u8).rev().flat_map(|r| (0..4).map(move |j| r * 4 + j)).collect();
    assert_eq!(got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want);
}

#[test]
fn index_select_rejects_bad_indices() {
    let x = Tensor::randn(&[3, 4], DType::F32, 1, Device::Cpu).unwrap();
    let idx = |v: Vec<i64>| {
        let n = v.len();
        Tensor::from_vec(v, &[n], Device::Cpu).unwrap()
    };
    let e = x.index_select(1, &idx(vec![0, 4])).unwrap_err();
    assert!(matches!(e, Error::IndexOutOfRange { index: 4, size: 4, .. }), "{e}");
    assert!(matches!(
        x.index_select(0, &idx(vec![-1])),
        Err(Error::IndexOutOfRange { index: -1, .. })
    ));
    assert!(matches!(
        x.index_select(2, &idx(vec![0])),
        Err(Error::DimOutOfRange { dim: 2, .. })
    ));
    let two_d = Tensor::from_vec(vec![0i64, 1], &[1, 2], Device::Cpu).unwrap();
    assert!(matches!(x.index_select(0, &two_d), Err(Error::BadShape { .. })));
    let float_idx = Tensor::from_vec(vec![0f32], &[1], Device::Cpu).unwrap();
    assert!(matches!(
        x.index_select(0, &float_idx),
        Err(Error::DTypeMismatch { .. })
    ));
}

#[test]
fn cat_rejects_mismatched_parts_naming_shapes() {
    let a = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
    let b = Tensor::zeros(&[2, 4], DType::F32, Device::Cpu).unwrap();
    let e = Tensor::cat(&[&a, &b], 0).unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { ref lhs, ref rhs, .. } if lhs == &[2, 3] && rhs == &[2, 4]),
        "{e}"
    );
    assert!(
        e.to_string().contains("[2, 3]") && e.to_string().contains("[2, 4]"),
        "{e}"
    );
    assert_eq!(Tensor::cat(&[&a, &b], 1).unwrap().shape(), &[2, 7]);
    let r3 = Tensor::zeros(&[2, 3, 1], DType::F32, Device::Cpu).unwrap();
    assert!(matches!(Tensor::cat(&[&a, &r3], 1), Err(Error::ShapeMismatch { .. })));
    let h = Tensor::zeros(&[2, 3], DType::BF16, Device::Cpu).unwrap();
    assert!(matches!(Tensor::cat(&[&a, &h], 0), Err(Error::DTypeMismatch { .. })));
    assert!(matches!(Tensor::cat(&[], 0), Err(Error::InvalidArgument { .. })));
    assert!(matches!(Tensor::cat(&[&a], 2), Err(Error::DimOutOfRange { .. })));
    // A view part is read through its layout.
    let t = Tensor::randn(&[3, 2], DType::F32, 2, Device::Cpu).unwrap();
    let got = Tensor::cat(&[&a, &t.transpose(0, 1).unwrap()], 0).unwrap();
    let tv = vals(&t);
    let want: Vec<f64> = [0.0; 6]
        .into_iter()
        .chain((0..6).map(|i| tv[(i % 3) * 2 + i / 3]))
        .collect();
    assert_eq!(vals(&got), want);
}

#[test]
fn masked_fill_converts_the_value_and_checks_the_mask() {
    let x = Tensor::from_f32_vec(vec![1.0, 2.0], &[2], DType::F8E4M3, Device::Cpu).unwrap();
    let m = Tensor::from_vec(vec![true, false], &[2], Device::Cpu).unwrap();
    // −∞ saturates to e4m3's −448.
    assert_eq!(vals(&x.masked_fill(&m, f64::NEG_INFINITY).unwrap()), vec![-448.0, 2.0]);
    let xb = Tensor::from_f32_vec(vec![1.0, 2.0], &[2], DType::BF16, Device::Cpu).unwrap();
    assert_eq!(
        vals(&xb.masked_fill(&m, f64::NEG_INFINITY).unwrap()),
        vec![f64::NEG_INFINITY, 2.0]
    );
    let not_bool = Tensor::from_vec(vec![1u8, 0], &[2], Device::Cpu).unwrap();
    assert!(matches!(
        x.masked_fill(&not_bool, 0.0),
        Err(Error::DTypeMismatch { .. })
    ));
    let wide = Tensor::from_vec(vec![true; 3], &[3], Device::Cpu).unwrap();
    let e = x.masked_fill(&wide, 0.0).unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { ref lhs, ref rhs, .. } if lhs == &[2] && rhs == &[3]),
        "{e}"
    );
}

#[test]
fn comparisons_broadcast_and_follow_ieee_nan() {
    let a = Tensor::from_vec(vec![1f32, 2.0, f32::NAN, 4.0], &[2, 2], Device::Cpu).unwrap();
    let b = Tensor::from_vec(vec![2f32, 2.0], &[2], Device::Cpu).unwrap();
    let bits = |t: l4_core::Result<Tensor>| t.unwrap().to_vec::<bool>().unwrap();
    assert_eq!(bits(a.lt(&b)), vec![true, false, false, false]);
    assert_eq!(bits(a.le(&b)), vec![true, true, false, false]);
    assert_eq!(bits(a.gt(&b)), vec![false, false, false, true]);
    assert_eq!(bits(a.ge(&b)), vec![false, true, false, true]);
    assert_eq!(bits(a.eq(&b)), vec![false, true, false, false]);
    assert_eq!(bits(a.ne(&b)), vec![true, false, true, true]);
    let c = Tensor::from_vec(vec![2f32; 3], &[3], Device::Cpu).unwrap();
    assert!(matches!(a.lt(&c), Err(Error::ShapeMismatch { .. })));
}
