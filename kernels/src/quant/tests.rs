//! `quant` on every device. On the CPU, the rule's properties (proptest): round trip within half
//! an e4m3 step, amax to ±448 exactly, special values, upper bounds, ragged blocks. On CUDA,
//! codes and scales bit for bit equal to the CPU reference on fresh random inputs with special
//! values mixed in, for every granularity and input dtype.

use float8::F8E4M3;
use l4_core::testing::test_devices;
use l4_core::{DType, Device, Tensor};
use proptest::prelude::*;

use super::{AMAX_FLOOR, E4M3_MAX, Granularity, Quantized, dequantize, quantize, quantize_with_scales, reference};
use crate::testing::{Rng, fresh_seed, nvrtc_or_skip};
use crate::{QUANT, compile_cubin};

fn devices(test: &str) -> Vec<Device> {
    test_devices()
        .into_iter()
        .filter(|d| !d.is_cuda() || nvrtc_or_skip(test))
        .collect()
}

const GRANULARITIES: [Granularity; 6] = [
    Granularity::PerTensor,
    Granularity::PerRow,
    Granularity::PerColumn,
    Granularity::Block { rows: 1, cols: 128 },
    Granularity::Block { rows: 128, cols: 128 },
    Granularity::Block { rows: 3, cols: 5 },
];

fn tensor(values: Vec<f32>, rows: usize, cols: usize) -> Tensor {
    Tensor::from_vec(values, &[rows, cols], Device::Cpu).unwrap()
}

/// The spacing of e4m3 values at magnitude `v` (subnormal spacing below the smallest normal).
fn e4m3_step(v: f32) -> f32 {
    let v = v.abs();
    if v < 2f32.powi(-6) {
        2f32.powi(-9)
    } else {
        2f32.powi(v.log2().floor() as i32 - 3)
    }
}

fn codes(q: &Quantized) -> Vec<f32> {
    q.values
        .to_vec::<F8E4M3>()
        .unwrap()
        .iter()
        .map(|c| c.to_f32())
        .collect()
}

fn scale_of(q: &Quantized, r: usize, c: usize, rows: usize, cols: usize) -> f32 {
    let (gr, gc) = q.granularity.group(rows, cols);
    let gcols = q.granularity.scales_shape(rows, cols)[1];
    q.scales.to_f32_vec().unwrap()[(r / gr) * gcols + c / gc]
}

fn granularity() -> impl Strategy<Value = Granularity> {
    prop_oneof![
        Just(Granularity::PerTensor),
        Just(Granularity::PerRow),
        Just(Granularity::PerColumn),
        (1usize..=4, 1usize..=9).prop_map(|(rows, cols)| Granularity::Block { rows, cols }),
    ]
}

/// `[rows, cols]` values spanning many binades (so groups have very different scales).
fn matrix() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..=7, 1usize..=20).prop_flat_map(|(rows, cols)| {
        let value = (-1.0f32..1.0, -20i32..20).prop_map(|(m, e)| m * 2f32.powi(e));
        (Just(rows), Just(cols), proptest::collection::vec(value, rows * cols))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every element comes back within half an e4m3 step of itself (the steps at its own
    /// magnitude in scaled units), plus one f32 rounding each for the division and the product;
    /// no element saturates without an upper bound.
    #[test]
    fn round_trip_is_within_half_a_step((rows, cols, values) in matrix(), granularity in granularity()) {
        let x = tensor(values.clone(), rows, cols);
        let q = quantize(&x, granularity, None).unwrap();
        let back = dequantize(&q, DType::F32).unwrap().to_f32_vec().unwrap();
        let u = f32::EPSILON / 2.0;
        for (i, (&v, &b)) in values.iter().zip(&back).enumerate() {
            let s = scale_of(&q, i / cols, i % cols, rows, cols);
            let scaled = v / s;
            // s = amax/448 rounded and the quotient rounded: within 3 f32 roundings of ≤ 448.
            prop_assert!(scaled.abs() <= E4M3_MAX * (1.0 + 4.0 * u), "element {i}: {v} / {s} saturates");
            let bound = (0.5 * e4m3_step(scaled) + scaled.abs() * u) * s + b.abs() * u;
            prop_assert!((b - v).abs() <= bound, "element {i}: {v} -> {b}, bound {bound}, scale {s}");
        }
    }

    /// Each group's scale is its finite amax over 448, and its largest element becomes ±448.
    #[test]
    fn each_groups_amax_maps_to_448((rows, cols, values) in matrix(), granularity in granularity()) {
        let q = quantize(&tensor(values.clone(), rows, cols), granularity, None).unwrap();
        let codes = codes(&q);
        let (gr, gc) = granularity.group(rows, cols);
        let [grows, gcols] = granularity.scales_shape(rows, cols);
        let scales = q.scales.to_f32_vec().unwrap();
        prop_assert_eq!(scales.len(), grows * gcols);
        for (g, &scale) in scales.iter().enumerate() {
            let members: Vec<usize> = (0..rows * cols)
                .filter(|&i| (i / cols) / gr == g / gcols && (i % cols) / gc == g % gcols)
                .collect();
            let amax = members.iter().map(|&i| values[i].abs()).fold(0.0f32, f32::max);
            prop_assert_eq!(scale, amax.max(AMAX_FLOOR) / E4M3_MAX);
            if amax > 0.0 {
                let top = members.iter().copied().find(|&i| values[i].abs() == amax).unwrap();
                prop_assert_eq!(codes[top].abs(), E4M3_MAX, "group {}", g);
            }
        }
    }

    /// An upper bound below the amax fixes the scale at bound/448 and saturates what lies
    /// beyond it; given scales reproduce computed ones.
    #[test]
    fn upper_bounds_clamp_and_given_scales_reproduce((rows, cols, values) in matrix(), ub in 1e-3f32..1.0) {
        let x = tensor(values.clone(), rows, cols);
        let q = quantize(&x, Granularity::PerRow, Some(ub)).unwrap();
        let codes = codes(&q);
        for (i, &v) in values.iter().enumerate() {
            let s = scale_of(&q, i / cols, 0, rows, cols);
            prop_assert!(s <= ub / E4M3_MAX);
            if v.abs() > ub {
                prop_assert_eq!(codes[i], E4M3_MAX.copysign(v), "element {}", i);
            }
        }
        let again = quantize_with_scales(&x, &q.scales, Granularity::PerRow).unwrap();
        prop_assert_eq!(codes, self::codes(&again));
    }
}

#[test]
fn zero_equal_and_special_rows_follow_the_rule() {
    let values = vec![
        0.0,
        0.0,
        0.0,
        0.0, // all zero
        -3.0,
        -3.0,
        -3.0,
        -3.0, // all equal
        f32::NAN,
        2.0,
        f32::INFINITY,
        f32::NEG_INFINITY, // specials with one finite value
    ];
    let q = quantize(&tensor(values, 3, 4), Granularity::PerRow, None).unwrap();
    let scales = q.scales.to_f32_vec().unwrap();
    assert_eq!(scales, vec![AMAX_FLOOR / E4M3_MAX, 3.0 / E4M3_MAX, 2.0 / E4M3_MAX]);
    let codes = codes(&q);
    assert_eq!(&codes[..8], &[0.0, 0.0, 0.0, 0.0, -448.0, -448.0, -448.0, -448.0]);
    assert!(codes[8].is_nan());
    assert_eq!(&codes[9..], &[448.0, 448.0, -448.0]);
}

#[test]
fn ragged_blocks_have_clipped_edges() {
    // 130 × 260 with 128 × 128 blocks: scales [2, 3], the last row and column of blocks clipped.
    let (rows, cols) = (130, 260);
    let values: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1013) as f32 - 506.0).collect();
    let granularity = Granularity::Block { rows: 128, cols: 128 };
    let q = quantize(&tensor(values.clone(), rows, cols), granularity, None).unwrap();
    assert_eq!(q.scales.shape(), &[2, 3]);
    let scales = q.scales.to_f32_vec().unwrap();
    for (g, &s) in scales.iter().enumerate() {
        let (gi, gj) = (g / 3, g % 3);
        let amax = (gi * 128..(gi * 128 + 128).min(rows))
            .flat_map(|r| (gj * 128..(gj * 128 + 128).min(cols)).map(move |c| r * cols + c))
            .map(|i| values[i].abs())
            .fold(0.0f32, f32::max);
        assert_eq!(
            s,
            reference::group_scale(std::iter::once(amax), f32::INFINITY),
            "block {g}"
        );
    }
}

#[test]
fn bad_arguments_are_errors() {
    let x = tensor(vec![1.0; 6], 2, 3);
    assert!(quantize(&x.reshape(&[6]).unwrap(), Granularity::PerRow, None).is_err());
    assert!(quantize(&x, Granularity::Block { rows: 0, cols: 1 }, None).is_err());
    assert!(quantize(&x, Granularity::PerRow, Some(0.0)).is_err());
    assert!(quantize(&x, Granularity::PerRow, Some(f32::NAN)).is_err());
    let ints = Tensor::from_vec(vec![1i64; 6], &[2, 3], Device::Cpu).unwrap();
    assert!(quantize(&ints, Granularity::PerRow, None).is_err());
    let wrong_shape = Tensor::from_vec(vec![1.0f32; 3], &[3, 1], Device::Cpu).unwrap();
    assert!(quantize_with_scales(&x, &wrong_shape, Granularity::PerRow).is_err());
    let zero_scale = Tensor::from_vec(vec![1.0f32, 0.0], &[2, 1], Device::Cpu).unwrap();
    let err = quantize_with_scales(&x, &zero_scale, Granularity::PerRow).unwrap_err();
    assert!(err.to_string().contains("> 0"), "{err}");
    let q = quantize(&x, Granularity::PerRow, None).unwrap();
    assert!(dequantize(&q, DType::I32).is_err());
}

/// Random values over many binades with NaN, ±Inf, zeros and repeats mixed in.
fn random_values(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.below(40) {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => f32::NEG_INFINITY,
            3 | 4 => 0.0,
            _ => {
                let unit = (rng.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                unit * 2f32.powi(rng.below(30) as i32 - 15)
            }
        })
        .collect()
}

#[test]
fn cuda_equals_the_cpu_bit_for_bit() {
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    for device in devices("cuda_equals_the_cpu_bit_for_bit")
        .into_iter()
        .filter(|d| d.is_cuda())
    {
        for case in 0..18 {
            let dtype = [DType::F32, DType::BF16, DType::F16][case % 3];
            let granularity = GRANULARITIES[case % GRANULARITIES.len()];
            let (rows, cols) = (1 + rng.below(300), 1 + rng.below(700));
            let host =
                Tensor::from_f32_vec(random_values(rows * cols, &mut rng), &[rows, cols], dtype, Device::Cpu).unwrap();
            let ub = (case % 4 == 0).then_some(0.5);
            let context = format!("seed {seed}: {dtype} [{rows}, {cols}] {granularity:?} ub {ub:?}");
            let want = quantize(&host, granularity, ub).unwrap();
            let got = quantize(&host.to_device(device).unwrap(), granularity, ub)
                .unwrap_or_else(|e| panic!("{context}: {e}"));
            let bits = |t: &Tensor| {
                t.to_vec::<F8E4M3>()
                    .unwrap()
                    .iter()
                    .map(|c| c.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(&got.values), bits(&want.values), "{context}: codes");
            assert_eq!(
                got.scales.to_vec::<f32>().unwrap(),
                want.scales.to_vec::<f32>().unwrap(),
                "{context}: scales"
            );
            for out in [DType::F32, DType::BF16] {
                let back = dequantize(&got, out).unwrap().to_f64_vec().unwrap();
                let want_back = dequantize(&want, out).unwrap().to_f64_vec().unwrap();
                let same = back
                    .iter()
                    .zip(&want_back)
                    .all(|(a, b)| a == b || (a.is_nan() && b.is_nan()));
                assert!(same, "{context}: dequantized to {out}");
            }
            let given = quantize_with_scales(&host.to_device(device).unwrap(), &got.scales, granularity).unwrap();
            assert_eq!(bits(&given.values), bits(&want.values), "{context}: given scales");
        }
    }
}

/// Edge shapes: on every device, empty tensors (no launch; outputs shaped and on the device);
/// on CUDA, bit for bit with the CPU, a single element, a ragged last 1×128 block, and a
/// 2048 × 640 slab in every granularity (many groups per launch, long per-thread loops).
#[test]
fn edge_shapes_match_the_cpu_bit_for_bit() {
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    for device in devices("edge_shapes_match_the_cpu_bit_for_bit") {
        for granularity in GRANULARITIES {
            for (rows, cols) in [(0, 130), (5, 0)] {
                // An empty view of a non-empty tensor: CUDA refuses to allocate zero bytes.
                let x = Tensor::zeros(&[rows.max(1), cols.max(1)], DType::BF16, device)
                    .unwrap()
                    .narrow(0, 0, rows)
                    .unwrap()
                    .narrow(1, 0, cols)
                    .unwrap();
                let q = quantize(&x, granularity, None).unwrap();
                let context = format!("{device} [{rows}, {cols}] {granularity:?}");
                assert_eq!(
                    (q.values.shape(), q.values.device()),
                    (&[rows, cols][..], device),
                    "{context}"
                );
                assert_eq!(q.scales.shape(), &granularity.scales_shape(rows, cols)[..], "{context}");
                assert_eq!(q.scales.device(), device, "{context}");
                assert_eq!(dequantize(&q, DType::F32).unwrap().shape(), &[rows, cols], "{context}");
            }
            // The CPU path is the reference itself: only another device has something to compare.
            if !device.is_cuda() {
                continue;
            }
            for (rows, cols, dtype) in [(1, 1, DType::F32), (3, 129, DType::F16), (2048, 640, DType::BF16)] {
                let host =
                    Tensor::from_f32_vec(random_values(rows * cols, &mut rng), &[rows, cols], dtype, Device::Cpu)
                        .unwrap();
                let context = format!("seed {seed}: {device} {dtype} [{rows}, {cols}] {granularity:?}");
                let want = quantize(&host, granularity, None).unwrap();
                let got = quantize(&host.to_device(device).unwrap(), granularity, None)
                    .unwrap_or_else(|e| panic!("{context}: {e}"));
                let bits =
                    |t: &Tensor| -> Vec<u8> { t.to_vec::<F8E4M3>().unwrap().iter().map(|c| c.to_bits()).collect() };
                assert_eq!(bits(&got.values), bits(&want.values), "{context}: codes");
                assert_eq!(
                    got.scales.to_vec::<f32>().unwrap(),
                    want.scales.to_vec::<f32>().unwrap(),
                    "{context}: scales"
                );
            }
        }
    }
}

#[test]
fn compiles_for_every_declared_arch_without_spills() {
    if !nvrtc_or_skip("compiles_for_every_declared_arch_without_spills") {
        return;
    }
    for arch in QUANT.archs {
        let compiled = compile_cubin(&QUANT, arch, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(compiled.spill_bytes(), 0, "{}", compiled.log);
        for dt in ["f32", "bf16", "f16"] {
            for name in [
                format!("quant_{dt}"),
                format!("quant_given_{dt}"),
                format!("dequant_{dt}"),
            ] {
                let Some(stats) = crate::testing::ptxas_stats(&compiled, &name) else {
                    continue;
                };
                assert_eq!(stats.stack_bytes, 0, "{name}: {stats:?}");
            }
        }
    }
}
