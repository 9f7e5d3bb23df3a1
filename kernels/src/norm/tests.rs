//! `rms_norm` and `layer_norm` on every device found: the CPU always, CUDA when present (see
//! `crate::testing`; under `L4_REQUIRE_GPU=1` a missing GPU fails instead of skipping).
//!
//! The CUDA kernels compute the same f32 steps as the CPU reference except the order of the sums,
//! so both meet the rules of docs/numerics.md (`Tolerance::rms_norm`, `Tolerance::layer_norm`)
//! against the exact values, and GPU against CPU uses `.pairwise()` of the rule.

use l4_core::testing::{Tolerance, assert_close, test_devices};
use l4_core::{DType, Device, Error, Tensor};

use super::cuda::{self, Norm};
use super::{layer_norm, rms_norm};
use crate::launch::{contiguous_bytes, output_tensor};
use crate::testing::{gpu_with_nvrtc_or_skip, nvrtc_or_skip};
use crate::{NORM, compile_cubin};

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
const EPS: f64 = 1e-5;

/// Row shapes (leading dims) and row lengths: single elements, odd lengths (scalar path),
/// multiples of 4 (vector path), both sides of the warp/block switch (1024) and of the
/// 256/1024-thread switch (8192), warp-mode blocks holding a partial set of rows, several rows.
const CASES: &[(&[usize], usize)] = &[
    (&[5], 1),
    (&[9], 4),
    (&[3], 7),
    (&[2, 35], 33),
    (&[9], 1000),
    (&[17], 1024),
    (&[3], 1025),
    (&[4], 5000),
    (&[2], 8192),
    (&[2], 12001),
    (&[3], 20000),
];

/// Cases with more rows than one grid pass covers (the grid is capped at 2048 threads per SM:
/// 64 warp-rows, 8 or 2 block-rows per SM; 132 SMs on an H100/H200), so the row loops run
/// several times. Only worth their time on CUDA.
const GRID_STRIDE_CASES: &[(&[usize], usize)] = &[(&[20000], 7), (&[1100], 1025), (&[300], 8200)];

/// The devices to run on: the CPU, plus CUDA device 0 when usable with NVRTC.
fn devices(test: &str) -> Vec<Device> {
    let mut devices = test_devices();
    if gpu_with_nvrtc_or_skip(test).is_none() {
        devices.retain(|d| !d.is_cuda());
    }
    devices
}

/// Seeded N(shift, scale²) values rounded into `dtype`, on the CPU; a fresh seed per case.
fn random(shape: &[usize], seed: u64, scale: f32, shift: f32, dtype: DType) -> Tensor {
    let values = Tensor::randn(shape, DType::F32, seed, Device::Cpu)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let values = values.into_iter().map(|v| shift + scale * v).collect();
    Tensor::from_f32_vec(values, shape, dtype, Device::Cpu).unwrap()
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_f64_vec().unwrap().iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// The layer-norm magnitude of docs/numerics.md, from the actual (rounded) operands:
/// `max|w| · max_rows(mean|x| / √(σ² + eps)) + max|b|` (w = 1, b = 0 when absent).
fn layer_norm_magnitude(x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64) -> f64 {
    let d = *x.shape().last().unwrap();
    let values = x.to_f64_vec().unwrap();
    let ratio = values
        .chunks(d)
        .map(|row| {
            let mean_abs = row.iter().map(|v| v.abs()).sum::<f64>() / d as f64;
            let mu = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / d as f64;
            mean_abs / (var + eps).sqrt()
        })
        .fold(0.0, f64::max);
    w.map_or(1.0, max_abs) * ratio + b.map_or(0.0, max_abs)
}

/// Shape, dtype, device and every value (NaN only against NaN) within `tol`.
#[track_caller]
fn check(context: &str, got: &Tensor, want: &Tensor, device: Device, tol: Tolerance) {
    assert_eq!(got.shape(), want.shape(), "{context}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{context}: dtype");
    assert_eq!(got.device(), device, "{context}: device");
    let (g, w) = (got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap());
    if let Err(msg) = assert_close(&g, &w, tol, context) {
        panic!("{msg}");
    }
}

/// Every value of `got` (NaN only against NaN) within `tol` of `want`.
#[track_caller]
fn check_values(context: &str, got: &Tensor, want: &[f64], tol: Tolerance) {
    if let Err(msg) = assert_close(&got.to_f64_vec().unwrap(), want, tol, context) {
        panic!("{msg}");
    }
}

/// The launcher run into an output poisoned with 0xff bytes (NaN in every float dtype), so an
/// element the kernel skipped cannot pass.
fn poisoned_launch(norm: Norm, x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64) -> Tensor {
    let Device::Cuda(ordinal) = x.device() else {
        panic!("poisoned_launch needs a CUDA tensor");
    };
    let backend = l4_core::cuda::backend(ordinal).unwrap();
    let (n, d) = (x.elem_count(), *x.shape().last().unwrap());
    let mut out = backend
        .stream()
        .clone_htod(&vec![0xffu8; n * x.dtype().size_in_bytes()])
        .unwrap();
    let x_bytes = contiguous_bytes(x, "test", "x").unwrap();
    let w_bytes = w.map(|w| contiguous_bytes(w, "test", "weight").unwrap());
    let b_bytes = b.map(|b| contiguous_bytes(b, "test", "bias").unwrap());
    cuda::launch(
        &backend,
        norm,
        x.dtype(),
        &x_bytes,
        w_bytes.as_ref(),
        b_bytes.as_ref(),
        &mut out,
        n / d,
        d,
        eps as f32,
    )
    .unwrap();
    output_tensor(out, x.dtype(), ordinal, x.shape()).unwrap()
}

/// One random case of both norms on `device` against the CPU reference: with and without weight
/// (and bias), through the public op and, on CUDA, through a poisoned launch.
fn check_case(device: Device, lead: &[usize], d: usize, dtype: DType, seed: u64) {
    let shape: Vec<usize> = lead.iter().copied().chain([d]).collect();
    // Rows with a mean of 3 against a spread of 1.5, so layer norm's x − μ cancels.
    let x = random(&shape, seed, 1.5, 3.0, dtype);
    let w = random(&[d], seed + 1, 0.5, 1.0, dtype);
    let b = random(&[d], seed + 2, 0.5, 0.0, dtype);
    let (xd, wd, bd) = (
        x.to_device(device).unwrap(),
        w.to_device(device).unwrap(),
        b.to_device(device).unwrap(),
    );
    let context = |what: &str| format!("{what} {dtype} {shape:?} seed {seed} on {device}");

    // RMS norm: no cancellation, a relative rule.
    let tol = Tolerance::rms_norm(dtype, d).pairwise();
    for weight in [None, Some(&w)] {
        let want = x.rms_norm(weight, EPS).unwrap();
        let weight_d = weight.map(|_| &wd);
        let got = rms_norm(&xd, weight_d, EPS).unwrap();
        check(&context("rms_norm"), &got, &want, device, tol);
        if device.is_cuda() {
            let got = poisoned_launch(Norm::Rms, &xd, weight_d, None, EPS);
            check(&context("rms_norm launch"), &got, &want, device, tol);
        }
    }

    // Layer norm: the magnitude term covers the cancellation in x − μ and against the bias.
    for (weight, bias) in [(None, None), (Some(&w), None), (Some(&w), Some(&b))] {
        let magnitude = layer_norm_magnitude(&x, weight, bias, EPS);
        let tol = Tolerance::layer_norm(dtype, d, magnitude).pairwise();
        let want = x.layer_norm(weight, bias, EPS).unwrap();
        let (weight_d, bias_d) = (weight.map(|_| &wd), bias.map(|_| &bd));
        let got = layer_norm(&xd, weight_d, bias_d, EPS).unwrap();
        check(&context("layer_norm"), &got, &want, device, tol);
        if device.is_cuda() {
            let got = poisoned_launch(Norm::Layer, &xd, weight_d, bias_d, EPS);
            check(&context("layer_norm launch"), &got, &want, device, tol);
        }
    }
}

#[test]
fn random_rows_match_the_cpu_reference_on_every_device() {
    for device in devices("random_rows_match_the_cpu_reference_on_every_device") {
        for (i, &(lead, d)) in CASES.iter().enumerate() {
            for (k, &dtype) in DTYPES.iter().enumerate() {
                check_case(device, lead, d, dtype, 1000 * i as u64 + 10 * k as u64);
            }
        }
    }
}

#[test]
fn more_rows_than_one_grid_pass_on_cuda() {
    for device in devices("more_rows_than_one_grid_pass_on_cuda") {
        if !device.is_cuda() {
            continue;
        }
        for (i, &(lead, d)) in GRID_STRIDE_CASES.iter().enumerate() {
            for (k, &dtype) in DTYPES.iter().enumerate() {
                check_case(device, lead, d, dtype, 50_000 + 1000 * i as u64 + 10 * k as u64);
            }
        }
    }
}

#[test]
fn hand_computed_values_on_every_device() {
    for device in devices("hand_computed_values_on_every_device") {
        // rms_norm([3, 4]), eps 0: mean(x²) = 12.5, so y = x / √12.5.
        let x = Tensor::from_vec(vec![3.0f32, 4.0], &[1, 2], device).unwrap();
        let got = rms_norm(&x, None, 0.0).unwrap();
        let r = 1.0 / 12.5f64.sqrt();
        // Against exact values: the rule itself, not pairwise.
        let tol = Tolerance::rms_norm(DType::F32, 2);
        check_values("rms_norm [3, 4]", &got, &[3.0 * r, 4.0 * r], tol);

        // layer_norm([1, 2, 3, 6]; w = [1, 2, 1, 1], b = [0, 0, 1, 0]), eps 0: μ = 3,
        // σ² = (4 + 1 + 0 + 9)/4 = 3.5, so y = [−2r, −2r, 1, 3r] with r = 1/√3.5.
        let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 6.0], &[1, 4], device).unwrap();
        let w = Tensor::from_vec(vec![1.0f32, 2.0, 1.0, 1.0], &[4], device).unwrap();
        let b = Tensor::from_vec(vec![0.0f32, 0.0, 1.0, 0.0], &[4], device).unwrap();
        let got = layer_norm(&x, Some(&w), Some(&b), 0.0).unwrap();
        let r = 1.0 / 3.5f64.sqrt();
        let magnitude = layer_norm_magnitude(&x, Some(&w), Some(&b), 0.0);
        let tol = Tolerance::layer_norm(DType::F32, 4, magnitude);
        check_values(
            "layer_norm [1, 2, 3, 6]",
            &got,
            &[-2.0 * r, -2.0 * r, 1.0, 3.0 * r],
            tol,
        );

        // Special values, as the CPU: an all-zero row with eps = 0 is 0/0 = NaN; with eps > 0
        // it is 0; a NaN poisons its row only; d = 1 layer norm is exactly the bias.
        for dtype in DTYPES {
            let x = Tensor::from_f32_vec(
                vec![0.0, 0.0, 0.0, 1.0, f32::NAN, 2.0, -1.0, 2.0, 0.5],
                &[3, 3],
                dtype,
                Device::Cpu,
            )
            .unwrap();
            let xd = x.to_device(device).unwrap();
            for eps in [0.0, EPS] {
                let tol = Tolerance::rms_norm(dtype, 3).pairwise();
                let context = format!("rms_norm special values, eps {eps}, {dtype} on {device}");
                check(
                    &context,
                    &rms_norm(&xd, None, eps).unwrap(),
                    &x.rms_norm(None, eps).unwrap(),
                    device,
                    tol,
                );
                let context = format!("layer_norm special values, eps {eps}, {dtype} on {device}");
                // Magnitude: the one finite row [−1, 2, 0.5] has mean|x|/σ = (3.5/3)/√1.5 ≈ 0.95.
                let tol = Tolerance::layer_norm(dtype, 3, 1.0).pairwise();
                let want = x.layer_norm(None, None, eps).unwrap();
                check(&context, &layer_norm(&xd, None, None, eps).unwrap(), &want, device, tol);
            }
            let rms_zero = rms_norm(&xd, None, 0.0).unwrap().to_f32_vec().unwrap();
            assert!(
                rms_zero[..6].iter().all(|v| v.is_nan()),
                "{dtype} on {device}: {rms_zero:?}"
            );
            assert!(
                rms_zero[6..].iter().all(|v| v.is_finite()),
                "{dtype} on {device}: {rms_zero:?}"
            );

            let one = Tensor::from_f32_vec(vec![5.0, -7.0], &[2, 1], dtype, device).unwrap();
            let bias = Tensor::from_f32_vec(vec![0.25], &[1], dtype, device).unwrap();
            let got = layer_norm(&one, Some(&bias), Some(&bias), EPS)
                .unwrap()
                .to_f32_vec()
                .unwrap();
            assert_eq!(got, vec![0.25, 0.25], "{dtype} on {device}: (x − x)·r·w + b = b");
        }
    }
}

#[test]
fn empty_inputs_give_empty_outputs_on_every_device() {
    for device in devices("empty_inputs_give_empty_outputs_on_every_device") {
        // Empty views of non-empty tensors (CUDA refuses zero-byte buffers): [0, 8] and [3, 0].
        let x = Tensor::zeros(&[3, 8], DType::BF16, device).unwrap();
        for (dim, shape) in [(0, &[0, 8][..]), (1, &[3, 0])] {
            let x = x.narrow(dim, 0, 0).unwrap();
            let w = Tensor::zeros(&[8], DType::BF16, device)
                .unwrap()
                .narrow(0, 0, shape[1])
                .unwrap();
            let out = rms_norm(&x, Some(&w), EPS).unwrap();
            assert_eq!((out.shape(), out.dtype()), (shape, DType::BF16));
            let out = layer_norm(&x, Some(&w), Some(&w), EPS).unwrap();
            assert_eq!((out.shape(), out.dtype()), (shape, DType::BF16));
        }
    }
}

#[test]
fn bad_operands_are_errors_on_every_device() {
    for device in devices("bad_operands_are_errors_on_every_device") {
        let t = |shape: &[usize], dtype| Tensor::zeros(shape, dtype, device).unwrap();
        let x = t(&[2, 4], DType::F32);
        let is = |r: l4_core::Result<Tensor>, what: &str, ok: fn(&Error) -> bool| {
            let e = r.expect_err(what);
            assert!(ok(&e), "{what} on {device}: {e}");
        };
        let dtype = |e: &Error| matches!(e, Error::DTypeMismatch { .. });
        let shape = |e: &Error| matches!(e, Error::ShapeMismatch { .. });
        let bad_shape = |e: &Error| matches!(e, Error::BadShape { .. });
        let invalid = |e: &Error| matches!(e, Error::InvalidArgument { .. });

        is(rms_norm(&t(&[2, 4], DType::I32), None, EPS), "integer x", dtype);
        is(layer_norm(&t(&[2, 4], DType::I64), None, None, EPS), "integer x", dtype);
        is(rms_norm(&t(&[], DType::F32), None, EPS), "rank 0", bad_shape);
        is(layer_norm(&t(&[], DType::F32), None, None, EPS), "rank 0", bad_shape);
        is(
            rms_norm(&x, Some(&t(&[5], DType::F32)), EPS),
            "weight [5] for d = 4",
            shape,
        );
        is(rms_norm(&x, Some(&t(&[1, 4], DType::F32)), EPS), "weight [1, 4]", shape);
        is(
            rms_norm(&x, Some(&t(&[4], DType::BF16)), EPS),
            "bf16 weight, f32 x",
            dtype,
        );
        is(
            layer_norm(&x, None, Some(&t(&[3], DType::F32)), EPS),
            "bias [3] for d = 4",
            shape,
        );
        is(
            layer_norm(&x, Some(&t(&[4], DType::F32)), Some(&t(&[4], DType::F16)), EPS),
            "f16 bias",
            dtype,
        );
        for eps in [-1.0, f64::NAN, f64::INFINITY] {
            is(rms_norm(&x, None, eps), "bad eps", invalid);
            is(layer_norm(&x, None, None, eps), "bad eps", invalid);
        }
        assert!(cuda::function_name(Norm::Rms, DType::F8E4M3, 4).is_err());
        assert!(cuda::function_name(Norm::Layer, DType::I32, 4000).is_err());

        if device.is_cuda() {
            // Weight on the host, x on the device.
            let w_cpu = Tensor::zeros(&[4], DType::F32, Device::Cpu).unwrap();
            let e = rms_norm(&x, Some(&w_cpu), EPS).unwrap_err();
            assert!(matches!(e, Error::DeviceMismatch { .. }), "{e}");
            // FP8 is a CPU-only dtype here.
            let fp8 = Tensor::zeros(&[2, 4], DType::F8E4M3, Device::Cpu).unwrap();
            assert!(rms_norm(&fp8, None, EPS).is_ok());
            is(
                rms_norm(&fp8.to_device(device).unwrap(), None, EPS),
                "fp8 on CUDA",
                dtype,
            );
            // Strided views are an error on CUDA (the CPU accepts them).
            let strided = t(&[4, 2], DType::F32).transpose(0, 1).unwrap();
            is(rms_norm(&strided, None, EPS), "strided x", invalid);
            is(layer_norm(&strided, None, None, EPS), "strided x", invalid);
        }
    }
}

#[test]
fn cpu_accepts_strided_views() {
    let x = random(&[6, 4], 7, 1.0, 0.0, DType::F32);
    let xt = x.transpose(0, 1).unwrap(); // [4, 6], strided
    let want = xt.contiguous().unwrap().rms_norm(None, EPS).unwrap();
    let got = rms_norm(&xt, None, EPS).unwrap();
    assert_eq!(got.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
}

#[test]
fn gpu_handles_offset_views() {
    let Some(backend) = gpu_with_nvrtc_or_skip("gpu_handles_offset_views") else {
        return;
    };
    let gpu = Device::Cuda(backend.info().ordinal);
    for dtype in DTYPES {
        // [3, 1000] starting one element into a buffer: contiguous but not 4-element aligned
        // (the scalar path), and [2, 1000] starting one row in (aligned: the vector path).
        let flat = random(&[3001], 11, 1.0, 0.5, dtype);
        let views = [
            flat.narrow(0, 1, 3000).unwrap().reshape(&[3, 1000]).unwrap(),
            flat.narrow(0, 1000, 2000).unwrap().reshape(&[2, 1000]).unwrap(),
        ];
        let flat_gpu = flat.to_device(gpu).unwrap();
        let views_gpu = [
            flat_gpu.narrow(0, 1, 3000).unwrap().reshape(&[3, 1000]).unwrap(),
            flat_gpu.narrow(0, 1000, 2000).unwrap().reshape(&[2, 1000]).unwrap(),
        ];
        for (x, xg) in views.iter().zip(&views_gpu) {
            let want = x.rms_norm(None, EPS).unwrap();
            let tol = Tolerance::rms_norm(dtype, 1000).pairwise();
            check(
                "rms_norm offset view",
                &rms_norm(xg, None, EPS).unwrap(),
                &want,
                gpu,
                tol,
            );
            let want = x.layer_norm(None, None, EPS).unwrap();
            let tol = Tolerance::layer_norm(dtype, 1000, layer_norm_magnitude(x, None, None, EPS)).pairwise();
            check(
                "layer_norm offset view",
                &layer_norm(xg, None, None, EPS).unwrap(),
                &want,
                gpu,
                tol,
            );
        }
    }
}

#[test]
fn compiles_for_sm90a_with_nvrtc() {
    if !nvrtc_or_skip("compiles_for_sm90a_with_nvrtc") {
        return;
    }
    for arch in NORM.archs {
        let compiled = compile_cubin(&NORM, arch, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(compiled.spill_bytes(), 0, "{}", compiled.log);
        for norm in [Norm::Rms, Norm::Layer] {
            for dtype in DTYPES {
                for d in [4, 4096] {
                    let name = cuda::function_name(norm, dtype, d).unwrap();
                    let Some(stats) = crate::testing::ptxas_stats(&compiled, name) else {
                        continue;
                    };
                    // Block kernels run 1024 threads: at most 64 registers (their launch bounds).
                    assert!(stats.registers > 0 && stats.registers <= 64, "{name}: {stats:?}");
                }
            }
        }
    }
}
