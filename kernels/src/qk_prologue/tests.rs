//! `qk_prologue` against the unfused composition (the `rope` op, the weightless `rms_norm`,
//! the temperature product, then the head-major permute) on every device, the CUDA kernel
//! against the reference, and the properties: RoPE at position 0 is NoPE; the temperature
//! leaves positions below `floor_scale − 1` alone and scales later ones by its factor.

use l4_core::testing::{Tolerance, assert_close, gamma, test_devices};
use l4_core::{DType, Device, Tensor};

use super::{Prologue, QueryTemperature, qk_prologue, reference};
use crate::testing::{Rng, fresh_seed, nvrtc_or_skip};
use crate::{QK_PROLOGUE, compile_cubin, ops};

const U32: f64 = f32::EPSILON as f64 / 2.0;

fn random(shape: &[usize], rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| ((rng.next() >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0)
        .collect();
    Tensor::from_vec(values, shape, Device::Cpu).unwrap()
}

fn unit_roundoff(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => U32,
        DType::BF16 => 2f64.powi(-8),
        _ => 2f64.powi(-11),
    }
}

fn devices(test: &str) -> Vec<Device> {
    test_devices()
        .into_iter()
        .filter(|d| !d.is_cuda() || nvrtc_or_skip(test))
        .collect()
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_f64_vec().unwrap().iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// `inv_freq` as the f32 tensor `[dh/2]` the prologue takes, on `device`.
fn freq_tensor(inv_freq: &[f32], device: Device) -> Tensor {
    Tensor::from_vec(inv_freq.to_vec(), &[inv_freq.len()], Device::Cpu)
        .unwrap()
        .to_device(device)
        .unwrap()
}

/// The steps one at a time with the model's ops, each rounded into the dtype (`inv_freq`: the
/// host copy of `p.inv_freq`, which the `rope` op takes).
fn unfused(q: &Tensor, k: &Tensor, p: Prologue<'_>, inv_freq: Option<&[f32]>) -> (Tensor, Tensor) {
    let step = |x: &Tensor, is_q: bool| {
        let mut x = x.clone();
        if let Some(inv_freq) = inv_freq {
            x = ops::rope(&x, inv_freq, p.start).unwrap();
        }
        if let Some(eps) = p.qk_norm_eps {
            x = ops::rms_norm(&x, None, eps).unwrap();
        }
        if let (true, Some(temperature)) = (is_q, p.temperature) {
            let t = x.shape()[1];
            let scales: Vec<f32> = (0..t).map(|i| temperature.factor_f32(p.start + i)).collect();
            // HF: bf16 queries times f32 factors, the f32 product rounded once into the dtype.
            let scales = Tensor::from_f32_vec(scales, &[1, t, 1, 1], DType::F32, x.device()).unwrap();
            let product = ops::mul(&ops::cast(&x, DType::F32).unwrap(), &scales).unwrap();
            x = ops::cast(&product, x.dtype()).unwrap();
        }
        ops::contiguous(&x.permute(&[0, 2, 1, 3]).unwrap()).unwrap()
    };
    (step(q, true), step(k, false))
}

/// docs/numerics.md, "QK prologue": both paths round into the dtype at the same points (after
/// the rotation, after the norm, after the temperature product) and evaluate the same f32
/// formulas between them, except for the norm's sum order (γ_dh) and, on CUDA, sincosf (2 ulp).
/// Those f32 differences can move a value across a rounding boundary once per rounding point it
/// passes (rotation, the norm's mean, the norm's product, the temperature product), each a
/// unit of the dtype relative to the element: `rtol = 4·u(dtype)`, plus the f32 differences
/// themselves, `atol = (γ_dh + 8·u32)·max|y|`.
fn fused_vs_unfused(dtype: DType, dh: usize, y: &Tensor) -> Tolerance {
    Tolerance {
        atol: (gamma(dh, U32) + 8.0 * U32) * max_abs(y),
        rtol: 4.0 * unit_roundoff(dtype),
    }
}

fn layers() -> Vec<(&'static str, bool, bool, bool)> {
    // (name, rope, qk-norm, temperature): Llama 4's RoPE layers (with and without the norm) and
    // its NoPE layers (with and without the temperature).
    vec![
        ("rope+norm", true, true, false),
        ("rope", true, false, false),
        ("nope+temperature", false, false, true),
        ("nope", false, false, false),
    ]
}

#[test]
fn matches_the_unfused_composition_on_every_device() {
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    for device in devices("matches_the_unfused_composition_on_every_device") {
        for (case, (name, rope, norm, temp)) in layers().into_iter().cycle().take(12).enumerate() {
            let (b, t, hk, g) = (
                1 + rng.below(2),
                1 + rng.below(20),
                1 + rng.below(3),
                [1, 2, 5][case % 3],
            );
            let dh = [8, 64, 128, 256][case % 4];
            let dtype = [DType::F32, DType::BF16, DType::F16][case % 3];
            let inv_freq: Vec<f32> = (0..dh / 2)
                .map(|j| 500_000f32.powf(-2.0 * j as f32 / dh as f32))
                .collect();
            let freq = freq_tensor(&inv_freq, device);
            let p = Prologue {
                inv_freq: rope.then_some(&freq),
                qk_norm_eps: norm.then_some(1e-5),
                temperature: temp.then_some(QueryTemperature {
                    floor_scale: 8.0,
                    attn_scale: 0.1,
                }),
                start: rng.below(3) * 5000 + rng.below(40),
            };
            let on = |x: Tensor| x.to_dtype(dtype).unwrap().to_device(device).unwrap();
            let q = on(random(&[b, t, hk * g, dh], &mut rng));
            let k = on(random(&[b, t, hk, dh], &mut rng));
            let (fq, fk) = qk_prologue(&q, &k, p).unwrap();
            let (uq, uk) = unfused(&q, &k, p, rope.then_some(&inv_freq[..]));
            let context = format!(
                "seed {seed}, case {case} ({name}), {device}, {dtype}: b {b} t {t} hk {hk} g {g} dh {dh} start {}",
                p.start
            );
            for (got, want, which) in [(&fq, &uq, "q"), (&fk, &uk, "k")] {
                assert_eq!(got.shape(), want.shape(), "{which}: {context}");
                let tol = fused_vs_unfused(dtype, dh, want);
                assert_close(
                    &got.to_f64_vec().unwrap(),
                    &want.to_f64_vec().unwrap(),
                    tol,
                    &format!("{which}: {context}"),
                )
                .unwrap();
            }
            if device.is_cuda() {
                // The kernel against the reference: the same math, one rounding each (so at most
                // one unit apart in the dtype), sincosf and the sum order as above.
                let cpu = |x: &Tensor| x.to_device(Device::Cpu).unwrap();
                let cpu_freq = cpu(&freq);
                let on_cpu = Prologue {
                    inv_freq: rope.then_some(&cpu_freq),
                    ..p
                };
                let (rq, rk) = reference::qk_prologue(&cpu(&q), &cpu(&k), on_cpu).unwrap();
                for (got, want, which) in [(&fq, &rq, "q"), (&fk, &rk, "k")] {
                    let tol = Tolerance {
                        atol: (gamma(dh, U32) + 8.0 * U32) * max_abs(want),
                        rtol: 2.0 * unit_roundoff(dtype),
                    };
                    assert_close(
                        &got.to_f64_vec().unwrap(),
                        &want.to_f64_vec().unwrap(),
                        tol,
                        &format!("{which} vs reference: {context}"),
                    )
                    .unwrap();
                }
            }
        }
    }
}

#[test]
fn rope_at_position_zero_is_nope() {
    let mut rng = Rng(fresh_seed());
    for device in devices("rope_at_position_zero_is_nope") {
        let dh = 64;
        let inv_freq: Vec<f32> = (0..dh / 2)
            .map(|j| 10_000f32.powf(-2.0 * j as f32 / dh as f32))
            .collect();
        let inv_freq = freq_tensor(&inv_freq, device);
        let q = random(&[2, 1, 4, dh], &mut rng).to_device(device).unwrap();
        let k = random(&[2, 1, 2, dh], &mut rng).to_device(device).unwrap();
        let with = |inv_freq: Option<&Tensor>| {
            let p = Prologue {
                inv_freq,
                qk_norm_eps: Some(1e-5),
                temperature: None,
                start: 0,
            };
            let (q, k) = qk_prologue(&q, &k, p).unwrap();
            (q.to_f64_vec().unwrap(), k.to_f64_vec().unwrap())
        };
        assert_eq!(with(Some(&inv_freq)), with(None), "{device}");
        // And it must be able to differ: position 1 rotates.
        let p1 = Prologue {
            inv_freq: Some(&inv_freq),
            qk_norm_eps: None,
            temperature: None,
            start: 1,
        };
        let p1_nope = Prologue { inv_freq: None, ..p1 };
        assert_ne!(
            qk_prologue(&q, &k, p1).unwrap().0.to_f64_vec().unwrap(),
            qk_prologue(&q, &k, p1_nope).unwrap().0.to_f64_vec().unwrap()
        );
    }
}

#[test]
fn temperature_scales_queries_from_floor_scale_on() {
    let mut rng = Rng(fresh_seed());
    for device in devices("temperature_scales_queries_from_floor_scale_on") {
        let (t, dh, floor_scale) = (24, 16, 8.0);
        let q = random(&[1, t, 2, dh], &mut rng).to_device(device).unwrap();
        let k = random(&[1, t, 1, dh], &mut rng).to_device(device).unwrap();
        let temperature = QueryTemperature {
            floor_scale,
            attn_scale: 0.5,
        };
        let plain = Prologue {
            inv_freq: None,
            qk_norm_eps: None,
            temperature: None,
            start: 0,
        };
        let tuned = Prologue {
            temperature: Some(temperature),
            ..plain
        };
        let (pq, pk) = qk_prologue(&q, &k, plain).unwrap();
        let (tq, tk) = qk_prologue(&q, &k, tuned).unwrap();
        assert_eq!(
            pk.to_f64_vec().unwrap(),
            tk.to_f64_vec().unwrap(),
            "keys are never scaled"
        );
        let (pq, tq) = (pq.to_f64_vec().unwrap(), tq.to_f64_vec().unwrap()); // [1, 2, t, dh]
        for h in 0..2 {
            for pos in 0..t {
                let row = |v: &[f64]| v[(h * t + pos) * dh..][..dh].to_vec();
                let factor = temperature.factor_f32(pos) as f64;
                if pos + 1 < floor_scale as usize {
                    assert_eq!(factor, 1.0);
                    assert_eq!(row(&tq), row(&pq), "position {pos} on {device}");
                } else {
                    assert!(factor > 1.0, "position {pos}");
                    // One f32 product each: the scaled row is the plain one times the factor.
                    let want: Vec<f64> = row(&pq).iter().map(|x| x * factor).collect();
                    let tol = Tolerance::new(0.0, 2.0 * U32);
                    assert_close(&row(&tq), &want, tol, &format!("position {pos} on {device}")).unwrap();
                }
            }
        }
    }
}

/// HF's f32 factor: exactly 1 below `floor_scale − 1`, then within two f32 roundings (log1p and
/// the product; the division and floor are exact here) of the f64 formula, at the spec's
/// values (llama4-spec.md §2.4: s(8191) = 1.0693, s(32767) = 1.1609, s(1048575) = 1.4860,
/// s(10485759) = 1.7155).
#[test]
fn the_f32_temperature_factor_is_hfs() {
    let t = QueryTemperature {
        floor_scale: 8192.0,
        attn_scale: 0.1,
    };
    assert_eq!(t.factor_f32(0), 1.0);
    assert_eq!(t.factor_f32(8190), 1.0);
    for (pos, spec) in [
        (8191, 1.0693),
        (32767, 1.1609),
        (1_048_575, 1.4860),
        (10_485_759, 1.7155),
    ] {
        let (got, exact) = (t.factor_f32(pos) as f64, t.factor(pos));
        assert!(
            (got - exact).abs() <= 4.0 * U32 * exact,
            "position {pos}: {got} vs {exact}"
        );
        assert!((got - spec).abs() < 5e-5, "position {pos}: {got} vs the spec's {spec}");
    }
}

#[test]
fn bad_operands_are_errors() {
    let q = Tensor::zeros(&[1, 3, 4, 8], DType::F32, Device::Cpu).unwrap();
    let k = Tensor::zeros(&[1, 3, 2, 8], DType::F32, Device::Cpu).unwrap();
    let p = Prologue {
        inv_freq: None,
        qk_norm_eps: None,
        temperature: None,
        start: 0,
    };
    assert!(qk_prologue(&q, &k, p).is_ok());
    let short = Tensor::zeros(&[1, 2, 2, 8], DType::F32, Device::Cpu).unwrap();
    assert!(qk_prologue(&q, &short, p).is_err(), "tokens differ");
    let freq = Tensor::from_vec(vec![1.0f32; 3], &[3], Device::Cpu).unwrap();
    assert!(
        qk_prologue(
            &q,
            &k,
            Prologue {
                inv_freq: Some(&freq),
                ..p
            }
        )
        .is_err(),
        "inv_freq length"
    );
    let freq = Tensor::from_vec(vec![1.0f32; 4], &[4], Device::Cpu).unwrap();
    let bf_freq = freq.to_dtype(DType::BF16).unwrap();
    for (f, ok) in [(&freq, true), (&bf_freq, false)] {
        let with = Prologue { inv_freq: Some(f), ..p };
        assert_eq!(qk_prologue(&q, &k, with).is_ok(), ok, "inv_freq {} [4]", f.dtype());
    }
    let odd = Tensor::zeros(&[1, 3, 4, 7], DType::F32, Device::Cpu).unwrap();
    assert!(qk_prologue(&odd, &odd, p).is_err(), "odd width");
    let bf = k.to_dtype(DType::BF16).unwrap();
    assert!(qk_prologue(&q, &bf, p).is_err(), "dtypes differ");
}

#[test]
fn compiles_for_every_declared_arch_without_spills() {
    if !nvrtc_or_skip("compiles_for_every_declared_arch_without_spills") {
        return;
    }
    for arch in QK_PROLOGUE.archs {
        let compiled = compile_cubin(&QK_PROLOGUE, arch, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(compiled.spill_bytes(), 0, "{}", compiled.log);
    }
}
