//! `random::normal` on every device (CPU always; CUDA when usable): the distribution's moments
//! and range, determinism per seed, and CUDA against the CPU reference element by element.

use l4_core::testing::{Tolerance, assert_close, test_devices};
use l4_core::{DType, Device};

use super::{cuda, normal, reference};
use crate::testing::nvrtc_or_skip;
use crate::{RANDOM, compile_cubin};

fn devices(test: &str) -> Vec<Device> {
    test_devices()
        .into_iter()
        .filter(|d| !d.is_cuda() || nvrtc_or_skip(test))
        .collect()
}

#[test]
fn moments_and_range_are_those_of_a_normal() {
    let n = 1 << 17;
    let std = 2.0;
    for device in devices("moments_and_range_are_those_of_a_normal") {
        let values = normal(&[n], DType::F32, 7, std, device).unwrap().to_f64_vec().unwrap();
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        // Five standard errors: σ/√n for the mean, σ²·√(2/n) for the variance.
        let nf = n as f64;
        assert!(mean.abs() < 5.0 * std / nf.sqrt(), "{device}: mean {mean}");
        assert!(
            (var - std * std).abs() < 5.0 * std * std * (2.0 / nf).sqrt(),
            "{device}: variance {var}"
        );
        // 24-bit uniforms bound the radius by √(2·24·ln 2) ≈ 5.77.
        let max = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(max <= 5.77 * std && max > 4.0 * std, "{device}: max |x| {max}");
        // Tails: P(|z| > 2) = 4.55%, within five standard errors.
        let tail = values.iter().filter(|v| v.abs() > 2.0 * std).count() as f64 / nf;
        let p = 0.0455;
        assert!(
            (tail - p).abs() < 5.0 * (p * (1.0 - p) / nf).sqrt(),
            "{device}: tail {tail}"
        );
    }
}

#[test]
fn a_seed_fixes_the_values_and_another_seed_changes_them() {
    for device in devices("a_seed_fixes_the_values_and_another_seed_changes_them") {
        let a = normal(&[3, 1000], DType::BF16, 42, 1.0, device)
            .unwrap()
            .to_f64_vec()
            .unwrap();
        let b = normal(&[3, 1000], DType::BF16, 42, 1.0, device)
            .unwrap()
            .to_f64_vec()
            .unwrap();
        let c = normal(&[3, 1000], DType::BF16, 43, 1.0, device)
            .unwrap()
            .to_f64_vec()
            .unwrap();
        assert_eq!(a, b, "{device}");
        let same = a.iter().zip(&c).filter(|(x, y)| x == y).count();
        assert!(same < 100, "{device}: seeds 42 and 43 agree on {same} of 3000");
        // Element i does not depend on the shape: a prefix of a longer draw is the shorter draw.
        let long = normal(&[4000], DType::BF16, 42, 1.0, device)
            .unwrap()
            .to_f64_vec()
            .unwrap();
        assert_eq!(&long[..3000], &a[..], "{device}");
    }
}

#[test]
fn cuda_matches_the_cpu_reference() {
    let Some(device) = devices("cuda_matches_the_cpu_reference")
        .into_iter()
        .find(|d| d.is_cuda())
    else {
        eprintln!("skipping cuda_matches_the_cpu_reference: no usable CUDA device");
        return;
    };
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for (shape, seed, std) in [
            (vec![1usize], 0u64, 1.0),
            (vec![257, 129], 5, 0.02),
            (vec![1 << 20], u64::MAX, 3.0),
        ] {
            let got = normal(&shape, dtype, seed, std, device).unwrap();
            let want = reference::normal(&shape, dtype, seed, std as f32).unwrap();
            // Both sides take the same uniforms and the same f32 product 2π·u2; ln and cos
            // differ by at most a few f32 ulps (CUDA's logf ≤ 1, cosf ≤ 2), so the f32 values
            // are within 16·u32 of each other and rounding into the dtype may then differ by
            // one step: elementwise_conditioned(dtype, 2).pairwise() = 4·u(dtype) + 16·u32.
            let tol = Tolerance::elementwise_conditioned(dtype, 2.0).pairwise();
            let context = format!("{dtype} {shape:?} seed {seed} std {std}");
            if let Err(msg) = assert_close(&got.to_f64_vec().unwrap(), &want.to_f64_vec().unwrap(), tol, &context) {
                panic!("{msg}");
            }
        }
    }
}

#[test]
fn bad_arguments_are_errors() {
    for device in devices("bad_arguments_are_errors") {
        assert!(normal(&[4], DType::I64, 0, 1.0, device).is_err());
        assert!(normal(&[4], DType::F8E4M3, 0, 1.0, device).is_err());
        assert!(normal(&[4], DType::F32, 0, -1.0, device).is_err());
        assert!(normal(&[4], DType::F32, 0, f64::NAN, device).is_err());
        assert_eq!(normal(&[0, 3], DType::F32, 0, 1.0, device).unwrap().shape(), &[0, 3]);
    }
    assert!(cuda::function_name(DType::I32).is_err());
}

#[test]
fn compiles_for_every_declared_arch_without_spills() {
    if !nvrtc_or_skip("compiles_for_every_declared_arch_without_spills") {
        return;
    }
    for arch in RANDOM.archs {
        let compiled = compile_cubin(&RANDOM, arch, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(compiled.spill_bytes(), 0, "{}", compiled.log);
        for name in ["randn_f32", "randn_f16", "randn_bf16"] {
            let Some(stats) = crate::testing::ptxas_stats(&compiled, name) else {
                continue;
            };
            assert_eq!(stats.stack_bytes, 0, "{name}: {stats:?}");
        }
    }
}
