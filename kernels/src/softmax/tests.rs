//! `softmax` on every device found: the CPU always, CUDA when present (see `crate::testing`;
//! under `L4_REQUIRE_GPU=1` a missing GPU fails instead of skipping).
//!
//! Tolerances: `Tolerance::softmax(out, n, R)` (docs/numerics.md) bounds the CPU's error against
//! the exact values; the CUDA kernel does the same f32 steps in another summation order, with one
//! difference the rule does not cover, derived in [`tolerance`]: CUDA's `expf` is a 2-ulp
//! function, the rule assumes 1 ulp.

use l4_core::testing::{Tolerance, assert_close, test_devices};
use l4_core::{DType, Device, Error, Tensor};

use super::{cuda, softmax};
use crate::launch::{contiguous_bytes, output_tensor};
use crate::testing::{gpu_with_nvrtc_or_skip, nvrtc_or_skip};
use crate::{SOFTMAX, compile_cubin};

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
/// `u(f32) = 2^-24`.
const U32: f64 = 1.0 / 16_777_216.0;

/// Row shapes (leading dims) and row lengths: single elements, odd lengths (scalar path),
/// multiples of 4 (vector path), both sides of the warp/block switch (1024) and of the
/// 256/1024-thread switch (8192), warp-mode blocks with a partial set of rows, several rows.
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

/// More rows than one grid pass covers (2048 threads per SM: 64 warp-rows, 8 or 2 block-rows
/// per SM; 132 SMs on an H100/H200), so the row loops run several times. CUDA only.
const GRID_STRIDE_CASES: &[(&[usize], usize)] = &[(&[20000], 7), (&[1100], 1025), (&[300], 8200)];

/// The devices to run on: the CPU, plus CUDA device 0 when usable with NVRTC.
fn devices(test: &str) -> Vec<Device> {
    let mut devices = test_devices();
    if gpu_with_nvrtc_or_skip(test).is_none() {
        devices.retain(|d| !d.is_cuda());
    }
    devices
}

/// Seeded N(0, scale²) values rounded into `dtype`, on the CPU; a fresh seed per case.
fn random(shape: &[usize], seed: u64, scale: f32, dtype: DType) -> Tensor {
    let values = Tensor::randn(shape, DType::F32, seed, Device::Cpu)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    Tensor::from_f32_vec(
        values.into_iter().map(|v| scale * v).collect(),
        shape,
        dtype,
        Device::Cpu,
    )
    .unwrap()
}

/// The largest spread `max − min` over the finite entries of a row, over all rows of length `d`.
fn spread(x: &Tensor, d: usize) -> f64 {
    let values = x.to_f64_vec().unwrap();
    values
        .chunks(d.max(1))
        .map(|row| {
            let finite = row.iter().copied().filter(|v| v.is_finite());
            let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
            if hi >= lo { hi - lo } else { 0.0 }
        })
        .fold(0.0, f64::max)
}

/// The tolerance for `device`'s softmax against the CPU's, over rows of `n` entries of spread
/// ≤ `range`.
///
/// Both meet `Tolerance::softmax(out, n, range)` (relative `r`) against the exact values, except
/// that the rule counts `exp` at 1 ulp (glibc's expf, which the CPU uses, is within that) while
/// CUDA's `expf` is documented at 2 ulp (CUDA C++ Programming Guide, single-precision
/// functions): one ulp more, ≤ `2·u32` relative, in each `e^(x_i − m)` and so in their sum `S`;
/// `y_i = e_i / S` sees both, so the GPU is within `r + 4·u32` of the exact value. Then
/// `|gpu − cpu| ≤ (2r + 4·u32)·|exact| ≤ (2r + 4·u32)/(1 − r)·|cpu|`: `.pairwise()` of the rule
/// plus `4·u32/(1 − r)` relative, floored at `out`'s smallest normal like the rule's own atol.
fn tolerance(device: Device, out: DType, n: usize, range: f64) -> Tolerance {
    let rule = Tolerance::softmax(out, n, range);
    let pair = rule.pairwise();
    if !device.is_cuda() {
        return pair;
    }
    let extra = 4.0 * U32 / (1.0 - rule.rtol);
    let lambda = out.min_positive_normal().unwrap();
    Tolerance::new(pair.atol + extra * lambda, pair.rtol + extra)
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

/// The launcher run into an output poisoned with 0xff bytes (NaN in every float dtype), so an
/// element the kernel skipped cannot pass.
fn poisoned_launch(x: &Tensor) -> Tensor {
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
    cuda::launch(&backend, x.dtype(), &x_bytes, &mut out, n / d, d).unwrap();
    output_tensor(out, x.dtype(), ordinal, x.shape()).unwrap()
}

/// One random case on `device` against the CPU reference, through the public op and, on CUDA,
/// through a poisoned launch.
fn check_case(device: Device, lead: &[usize], d: usize, dtype: DType, seed: u64) {
    let shape: Vec<usize> = lead.iter().copied().chain([d]).collect();
    let dim = shape.len() - 1;
    // Spread about 8·3 = 24: outputs span many binades, down into the narrow dtypes' subnormals.
    let x = random(&shape, seed, 3.0, dtype);
    let xd = x.to_device(device).unwrap();
    let want = x.softmax(dim).unwrap();
    let tol = tolerance(device, dtype, d, spread(&x, d));
    let context = format!("softmax {dtype} {shape:?} seed {seed} on {device}");
    check(&context, &softmax(&xd, dim).unwrap(), &want, device, tol);
    if device.is_cuda() {
        check(
            &format!("{context} (launch)"),
            &poisoned_launch(&xd),
            &want,
            device,
            tol,
        );
    }
}

#[test]
fn random_rows_match_the_cpu_reference_on_every_device() {
    for device in devices("random_rows_match_the_cpu_reference_on_every_device") {
        for (i, &(lead, d)) in CASES.iter().enumerate() {
            for (k, &dtype) in DTYPES.iter().enumerate() {
                check_case(device, lead, d, dtype, 2000 * i as u64 + 10 * k as u64 + 7);
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
                check_case(device, lead, d, dtype, 70_000 + 1000 * i as u64 + 10 * k as u64);
            }
        }
    }
}

#[test]
fn hand_computed_values_on_every_device() {
    for device in devices("hand_computed_values_on_every_device") {
        // softmax([0, 1, 2, 3]) against f64: e^k / (1 + e + e² + e³).
        let x = Tensor::from_vec(vec![0.0f32, 1.0, 2.0, 3.0], &[1, 4], device).unwrap();
        let s: f64 = (0..4).map(|k| (k as f64).exp()).sum();
        let want: Vec<f64> = (0..4).map(|k| (k as f64).exp() / s).collect();
        let got = softmax(&x, 1).unwrap().to_f64_vec().unwrap();
        // Against exact values: the rule (plus CUDA's expf ulp, 4·u32, as in `tolerance`).
        let rule = Tolerance::softmax(DType::F32, 4, 3.0);
        let tol = if device.is_cuda() {
            Tolerance::new(rule.atol, rule.rtol + 4.0 * U32)
        } else {
            rule
        };
        assert_close(&got, &want, tol, &format!("softmax [0, 1, 2, 3] on {device}")).unwrap();
        // One entry: exactly 1 (e^0 / e^0).
        let one = Tensor::from_vec(vec![-3.5f32, 1e30, f32::MIN], &[3, 1], device).unwrap();
        assert_eq!(softmax(&one, 1).unwrap().to_f32_vec().unwrap(), vec![1.0; 3]);
    }
}

/// Special values, as the CPU and PyTorch: a row of −∞ (a fully masked row), a row holding NaN
/// and a row whose maximum is +∞ are NaN throughout; −∞ entries of a finite row are exactly 0;
/// a constant row is uniform. Row lengths on both sides of the warp/block switch.
#[test]
fn special_values_match_the_cpu_on_every_device() {
    for device in devices("special_values_match_the_cpu_on_every_device") {
        for d in [7, 2000] {
            let base = random(&[5, d], d as u64, 2.0, DType::F32).to_vec::<f32>().unwrap();
            let mut values = base.clone();
            values[..d].fill(f32::NEG_INFINITY); // row 0: all −∞
            values[d + d / 2] = f32::NAN; // row 1: one NaN
            values[2 * d + 1] = f32::INFINITY; // row 2: one +∞
            for j in (0..d).step_by(2) {
                values[3 * d + j] = f32::NEG_INFINITY; // row 3: −∞ at even positions
            }
            values[4 * d..].fill(5.0); // row 4: constant
            for dtype in DTYPES {
                let x = Tensor::from_f32_vec(values.clone(), &[5, d], dtype, Device::Cpu).unwrap();
                let want = x.softmax(1).unwrap();
                let got = softmax(&x.to_device(device).unwrap(), 1).unwrap();
                let context = format!("special values {dtype} d = {d} on {device}");
                check(
                    &context,
                    &got,
                    &want,
                    device,
                    tolerance(device, dtype, d, spread(&x, d)),
                );
                let got = got.to_f32_vec().unwrap();
                assert!(
                    got[..3 * d].iter().all(|v| v.is_nan()),
                    "{context}: rows 0-2 must be NaN"
                );
                let row3 = &got[3 * d..4 * d];
                assert!(row3.iter().step_by(2).all(|&v| v == 0.0), "{context}: e^−∞ = 0");
                assert!(row3.iter().all(|&v| v >= 0.0 && v.is_finite()), "{context}: row 3");
            }
        }
    }
}

/// Adding 1000 to a row changes nothing (the max subtraction), even where e^x would overflow:
/// the entries are multiples of 1/8 in [−5, 5], so x + 1000 is exact in f32 and both rows give
/// the same shifted exponents, hence the same outputs.
#[test]
fn shift_invariance_on_every_device() {
    for device in devices("shift_invariance_on_every_device") {
        for d in [33, 3000] {
            let x: Vec<f32> = (0..2 * d).map(|i| ((i * 37 % 81) as f32 - 40.0) / 8.0).collect();
            let shifted: Vec<f32> = x.iter().map(|v| v + 1000.0).collect();
            let x = Tensor::from_vec(x, &[2, d], device).unwrap();
            let shifted = Tensor::from_vec(shifted, &[2, d], device).unwrap();
            let (a, b) = (softmax(&x, 1).unwrap(), softmax(&shifted, 1).unwrap());
            assert_eq!(
                a.to_vec::<f32>().unwrap(),
                b.to_vec::<f32>().unwrap(),
                "d = {d} on {device}"
            );
            let sums: Vec<f64> = a.to_f64_vec().unwrap().chunks(d).map(|r| r.iter().sum()).collect();
            // Σ y_i = 1 within r + n·atol (each output within atol + r·y_i of the exact value, whose
            // sum is 1; r the rule's rtol, plus CUDA's 4·u32 as in `tolerance`), plus the f64 sum.
            let rule = Tolerance::softmax(DType::F32, d, 10.0);
            let r = rule.rtol + if device.is_cuda() { 4.0 * U32 } else { 0.0 };
            let tol = r + d as f64 * rule.atol + 1e-12;
            assert!(
                sums.iter().all(|s| (s - 1.0).abs() <= tol),
                "rows sum to {sums:?} on {device}"
            );
        }
    }
}

#[test]
fn empty_inputs_give_empty_outputs_on_every_device() {
    for device in devices("empty_inputs_give_empty_outputs_on_every_device") {
        // Empty views of a non-empty tensor (CUDA refuses zero-byte buffers): [0, 8] and [3, 0].
        let x = Tensor::zeros(&[3, 8], DType::F16, device).unwrap();
        for (dim, shape) in [(0, &[0, 8][..]), (1, &[3, 0])] {
            let out = softmax(&x.narrow(dim, 0, 0).unwrap(), 1).unwrap();
            assert_eq!((out.shape(), out.dtype()), (shape, DType::F16));
        }
    }
}

#[test]
fn bad_operands_are_errors_on_every_device() {
    for device in devices("bad_operands_are_errors_on_every_device") {
        let t = |shape: &[usize], dtype| Tensor::zeros(shape, dtype, device).unwrap();
        let e = softmax(&t(&[2, 3], DType::I32), 1).unwrap_err();
        assert!(matches!(e, Error::DTypeMismatch { .. }), "{e}");
        let e = softmax(&t(&[2, 3], DType::F32), 2).unwrap_err();
        assert!(matches!(e, Error::DimOutOfRange { .. }), "{e}");
        let e = softmax(&t(&[], DType::F32), 0).unwrap_err();
        assert!(matches!(e, Error::DimOutOfRange { .. }), "{e}");
        assert!(cuda::function_name(DType::F8E5M2, 8).is_err());
        assert!(cuda::function_name(DType::U8, 8000).is_err());
        let x = random(&[3, 4], 5, 1.0, DType::F32);
        match device {
            // The CPU takes any dim, strided views and FP8.
            Device::Cpu => {
                let cols = softmax(&x, 0).unwrap();
                let want = x.transpose(0, 1).unwrap().softmax(1).unwrap().transpose(0, 1).unwrap();
                assert_eq!(cols.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
                assert!(softmax(&t(&[2, 3], DType::F8E4M3), 1).is_ok());
            }
            // CUDA: the last dim of a contiguous f32/f16/bf16 tensor only.
            Device::Cuda(_) => {
                let xd = x.to_device(device).unwrap();
                let e = softmax(&xd, 0).unwrap_err();
                assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
                let e = softmax(&xd.transpose(0, 1).unwrap(), 1).unwrap_err();
                assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
                let e = softmax(&t(&[2, 3], DType::F8E4M3), 1).unwrap_err();
                assert!(matches!(e, Error::DTypeMismatch { .. }), "{e}");
            }
        }
    }
}

#[test]
fn gpu_handles_offset_views() {
    let Some(backend) = gpu_with_nvrtc_or_skip("gpu_handles_offset_views") else {
        return;
    };
    let gpu = Device::Cuda(backend.info().ordinal);
    for dtype in DTYPES {
        // [3, 1000] one element into a buffer (not 4-element aligned: the scalar path) and
        // [2, 1000] one row in (aligned: the vector path).
        let flat = random(&[3001], 13, 2.0, dtype);
        let flat_gpu = flat.to_device(gpu).unwrap();
        for (start, rows) in [(1, 3), (1000, 2)] {
            let view = |t: &Tensor| t.narrow(0, start, rows * 1000).unwrap().reshape(&[rows, 1000]).unwrap();
            let x = view(&flat);
            let want = x.softmax(1).unwrap();
            let got = softmax(&view(&flat_gpu), 1).unwrap();
            let tol = tolerance(gpu, dtype, 1000, spread(&x, 1000));
            check(&format!("offset view {start} {dtype}"), &got, &want, gpu, tol);
        }
    }
}

#[test]
fn compiles_for_sm90a_with_nvrtc() {
    if !nvrtc_or_skip("compiles_for_sm90a_with_nvrtc") {
        return;
    }
    for arch in SOFTMAX.archs {
        let compiled = compile_cubin(&SOFTMAX, arch, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(compiled.spill_bytes(), 0, "{}", compiled.log);
        for dtype in DTYPES {
            for d in [4, 4096] {
                let name = cuda::function_name(dtype, d).unwrap();
                let Some(stats) = crate::testing::ptxas_stats(&compiled, name) else {
                    continue;
                };
                // Block kernels run 1024 threads: at most 64 registers (their launch bounds).
                assert!(stats.registers > 0 && stats.registers <= 64, "{name}: {stats:?}");
            }
        }
    }
}
