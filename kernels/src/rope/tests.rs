//! `rope::apply` on every device found: the CPU always, CUDA when present (see
//! `crate::testing`; under `L4_REQUIRE_GPU=1` a missing GPU fails instead of skipping).
//!
//! The reference (`reference.rs`) is checked against hand-computed rotations; the kernel against
//! the reference with the bound derived in [`gpu_bound`].

use l4_core::testing::{Tolerance, test_devices};
use l4_core::{DType, Device, Error, Tensor, bf16};

use super::{apply, cuda, reference};
use crate::launch::{contiguous_bytes, output_tensor};
use crate::testing::{gpu_with_nvrtc_or_skip, nvrtc_or_skip};
use crate::{ROPE, compile_cubin};

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
/// `u(f32) = 2^-24`.
const U32: f64 = 1.0 / 16_777_216.0;

/// `[b, t, heads, dh]`: one pair; several tokens, batches and heads; Scout's 40 query heads of
/// 128; 8 heads of 64 (one full group of the kernel's 8); 9 heads (a partial group) with an odd
/// number of pairs; many tokens.
const SHAPES: &[[usize; 4]] = &[
    [1, 1, 1, 2],
    [2, 5, 3, 8],
    [1, 7, 40, 128],
    [2, 3, 8, 64],
    [1, 2, 9, 6],
    [3, 33, 5, 16],
];
/// First positions: 0, small, around 8k (Scout's chunk), and 10^6, where θ_0 = 10^6 rad takes
/// sincosf's slow (Payne-Hanek) argument reduction.
const STARTS: [usize; 4] = [0, 7, 8191, 1_000_000];

/// The devices to run on: the CPU, plus CUDA device 0 when usable with NVRTC.
fn devices(test: &str) -> Vec<Device> {
    let mut devices = test_devices();
    if gpu_with_nvrtc_or_skip(test).is_none() {
        devices.retain(|d| !d.is_cuda());
    }
    devices
}

/// Llama's inverse frequencies `θ_j = 500000^(−2j/dh)`, rounded to f32 (no llama3 scaling; the
/// kernel takes any table).
fn inv_freq(dh: usize) -> Vec<f32> {
    (0..dh / 2)
        .map(|j| 500_000f64.powf(-((2 * j) as f64) / dh as f64) as f32)
        .collect()
}

/// Seeded N(0, 4) values rounded into `dtype`, on the CPU; a fresh seed per case.
fn random(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let values = Tensor::randn(shape, DType::F32, seed, Device::Cpu)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    Tensor::from_f32_vec(values.into_iter().map(|v| 2.0 * v).collect(), shape, dtype, Device::Cpu).unwrap()
}

/// The tolerance for one output of the CUDA kernel against the CPU reference, for an input pair
/// of Euclidean norm `pair_norm`, output dtype `out`.
///
/// Both compute `z = rn(rn(re·c) ∓ rn(im·s))` in f32 (the kernel with `__fmul_rn`/`__fadd_rn`,
/// no FMA), from the same f32 angle, with `c`, `s` approximating the exact cos θ, sin θ to a
/// relative `ε`: the CPU rounds an f64 sin/cos (within 2^-52) to f32, `ε ≤ u32 + 2^-51`; CUDA's
/// sincosf is within 2 ulp (CUDA C++ Programming Guide, full range), and an ulp of a normal
/// result r is ≤ `2·u32·|r|`, so `ε ≤ 4·u32`. With three roundings `α_k ≤ u32`,
/// `|z − exact| ≤ ((1 + ε)(1 + u32)² − 1)·(|re·cos θ| + |im·sin θ|)`, and
/// `|re·cos θ| + |im·sin θ| ≤ ‖(re, im)‖₂` (Cauchy–Schwarz). So the CPU is within
/// `(3·u32 + 2^-51 + O(u32²))·‖·‖` and CUDA within `(6·u32 + O(u32²))·‖·‖` of the exact value,
/// and the two f32 results within `10·u32·‖·‖` of each other (9 plus room for the second-order
/// terms). Rounding both into `out` (u = u(out), λ = λ(out)) adds `u·(|g| + |c|)` in the normal
/// range (`u·λ` each below it), `≤ 2u·|want|/(1 − u) + 10·u·u32·‖·‖ + 3u·λ`. For f32 the last
/// rounding is the identity and these terms are slack.
fn gpu_bound(out: DType, pair_norm: f64) -> Tolerance {
    let (u, lambda) = (out.unit_roundoff(), out.min_positive_normal().unwrap());
    Tolerance::new(
        10.0 * U32 * pair_norm * (1.0 + u) + 3.0 * u * lambda,
        2.0 * u / (1.0 - u),
    )
}

/// Shape, dtype, device, and every element of `got` against `want`: bitwise on the CPU (the op
/// is the reference there), within [`gpu_bound`] of its input pair on CUDA.
#[track_caller]
fn check(context: &str, got: &Tensor, want: &Tensor, x: &Tensor, device: Device) {
    assert_eq!(got.shape(), want.shape(), "{context}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{context}: dtype");
    assert_eq!(got.device(), device, "{context}: device");
    let (g, w, xs) = (
        got.to_f64_vec().unwrap(),
        want.to_f64_vec().unwrap(),
        x.to_f64_vec().unwrap(),
    );
    let mut failures = 0;
    let mut first = None;
    for i in 0..g.len() {
        let pair = i / 2 * 2;
        let tol = if device.is_cuda() {
            gpu_bound(got.dtype(), xs[pair].hypot(xs[pair + 1]))
        } else {
            Tolerance::exact()
        };
        if !tol.allows(g[i], w[i]) {
            failures += 1;
            first.get_or_insert((i, g[i], w[i], tol));
        }
    }
    if let Some((i, g, w, tol)) = first {
        panic!(
            "{context}: {failures} of {} elements out of tolerance; first at {i}: got {g:e}, want {w:e}, |diff| \
             {:.3e} > {tol}",
            xs.len(),
            (g - w).abs()
        );
    }
}

/// The launcher run into an output poisoned with 0xff bytes (NaN in every float dtype), so an
/// element the kernel skipped cannot pass.
fn poisoned_launch(x: &Tensor, inv_freq: &[f32], start: usize) -> Tensor {
    let Device::Cuda(ordinal) = x.device() else {
        panic!("poisoned_launch needs a CUDA tensor");
    };
    let backend = l4_core::cuda::backend(ordinal).unwrap();
    let n = x.elem_count();
    let mut out = backend
        .stream()
        .clone_htod(&vec![0xffu8; n * x.dtype().size_in_bytes()])
        .unwrap();
    let freq = backend.stream().clone_htod(inv_freq).unwrap();
    let x_bytes = contiguous_bytes(x, "test", "x").unwrap();
    let shape: [usize; 4] = x.shape().try_into().unwrap();
    cuda::launch(&backend, x.dtype(), &x_bytes, &freq.slice(..), &mut out, shape, start).unwrap();
    output_tensor(out, x.dtype(), ordinal, x.shape()).unwrap()
}

/// Checks `apply` against hand-computed exact values `want` (f64), each within `k·u32·‖pair‖`
/// plus the rounding into f32: the derivation of [`gpu_bound`] gives `k = 4` for the CPU
/// (`3·u32 + 2^-51 + O(u32²)`) and `k = 7` for CUDA (`6·u32 + O(u32²)`).
#[track_caller]
fn check_exact(context: &str, got: &Tensor, want: &[f64], x: &[f64], device: Device) {
    let got = got.to_f64_vec().unwrap();
    assert_eq!(got.len(), want.len(), "{context}");
    let k = if device.is_cuda() { 7.0 } else { 4.0 };
    for i in 0..got.len() {
        let pair = i / 2 * 2;
        let bound = k * U32 * x[pair].hypot(x[pair + 1]);
        assert!(
            (got[i] - want[i]).abs() <= bound,
            "{context} on {device}: element {i}: got {:e}, want {:e}, bound {bound:e}",
            got[i],
            want[i]
        );
    }
}

#[test]
fn reference_cos_sin_rounds_the_f64_values_of_the_f32_angle() {
    // θ = f32(3) · 0.1f32 = 0.3 + 1.19e-8 (the f32 product), not 0.3.
    let theta = 3.0f32 * 0.1f32;
    assert_eq!(
        reference::cos_sin(3, 0.1),
        ((theta as f64).cos() as f32, (theta as f64).sin() as f32)
    );
    assert_eq!(reference::cos_sin(0, 123.0), (1.0, 0.0));
    // cos 1 and sin 1, to 16 digits.
    let (c, s) = reference::cos_sin(1, 1.0);
    assert_eq!(
        (c, s),
        (0.540_302_305_868_139_8_f64 as f32, 0.841_470_984_807_896_5_f64 as f32)
    );
}

#[test]
fn hand_computed_rotations_on_every_device() {
    for device in devices("hand_computed_rotations_on_every_device") {
        // Position 0 is the identity, bit for bit (cos 0 = 1, sin 0 = 0), for every dtype.
        for dtype in DTYPES {
            let x = Tensor::from_f32_vec(vec![1.5, -2.0, 0.25, 3.0], &[1, 1, 1, 4], dtype, device).unwrap();
            let y = apply(&x, &[1.0, 0.5], 0).unwrap();
            assert_eq!(y.to_f32_vec().unwrap(), x.to_f32_vec().unwrap(), "{dtype} on {device}");
        }

        // θ = 1 rad (position 1, inv_freq 1): (1, 0) → (cos 1, sin 1), (0, 1) → (−sin 1, cos 1).
        let (cos1, sin1) = (0.540_302_305_868_139_8, 0.841_470_984_807_896_5);
        let xv = [1.0, 0.0, 0.0, 1.0];
        let x = Tensor::from_vec(xv.map(|v| v as f32).to_vec(), &[1, 1, 1, 4], device).unwrap();
        let y = apply(&x, &[1.0, 1.0], 1).unwrap();
        check_exact("θ = 1", &y, &[cos1, sin1, -sin1, cos1], &xv, device);

        // Token i of every batch row and head sits at start + i: b = 2, t = 3, heads = 2,
        // start = 5, inv_freq 0.25: θ = 1.25, 1.5, 1.75 (exact in f32) for tokens 0, 1, 2.
        let cis = [
            (0.315_322_362_395_268_7, 0.948_984_619_355_586_2),
            (0.070_737_201_667_702_9, 0.997_494_986_604_054_4),
            (-0.178_246_055_649_492_1, 0.983_985_946_873_936_9),
        ];
        let x = Tensor::from_vec([1.0f32, 0.0].repeat(12), &[2, 3, 2, 2], device).unwrap();
        let y = apply(&x, &[0.25], 5).unwrap();
        let want: Vec<f64> = (0..12)
            .flat_map(|row| [cis[(row / 2) % 3].0, cis[(row / 2) % 3].1])
            .collect();
        check_exact("token positions", &y, &want, &[1.0, 0.0].repeat(12), device);

        // A general pair: (3, −2) at θ = 2 · 0.25 = 0.5:
        // (3 cos 0.5 + 2 sin 0.5, 3 sin 0.5 − 2 cos 0.5).
        let x = Tensor::from_vec(vec![3.0f32, -2.0], &[1, 1, 1, 2], device).unwrap();
        let y = apply(&x, &[0.25], 2).unwrap();
        check_exact(
            "(3, -2) by 0.5",
            &y,
            &[3.591_598_762_879_524, -0.316_888_507_968_136_5],
            &[3.0, -2.0],
            device,
        );

        // A large angle: θ = 10^6 rad (exact in f32), (1, 0) → (cos 10^6, sin 10^6).
        let x = Tensor::from_vec(vec![1.0f32, 0.0], &[1, 1, 1, 2], device).unwrap();
        let y = apply(&x, &[1.0], 1_000_000).unwrap();
        let want = [0.936_752_127_533_144_7, -0.349_993_502_171_292_9];
        check_exact("θ = 1e6", &y, &want, &[1.0, 0.0], device);

        // bf16 output is the f32 result rounded once: cos 1 = 138.32 and sin 1 = 215.42 bf16
        // spacings in [0.5, 1), far from a rounding tie, so every device gives these exactly.
        let x = Tensor::from_f32_vec(vec![1.0, 0.0], &[1, 1, 1, 2], DType::BF16, device).unwrap();
        let y = apply(&x, &[1.0], 1).unwrap().to_vec::<bf16>().unwrap();
        assert_eq!(
            y,
            vec![bf16::from_f32(cos1 as f32), bf16::from_f32(sin1 as f32)],
            "{device}"
        );
    }
}

/// One random case on `device` against the CPU reference, through the public op and, on CUDA,
/// through a poisoned launch.
fn check_case(device: Device, shape: [usize; 4], start: usize, dtype: DType, seed: u64) {
    let x = random(&shape, seed, dtype);
    let freq = inv_freq(shape[3]);
    let want = reference::apply(&x, &freq, start).unwrap();
    let xd = x.to_device(device).unwrap();
    let context = format!("rope {dtype} {shape:?} start {start} seed {seed} on {device}");
    check(&context, &apply(&xd, &freq, start).unwrap(), &want, &x, device);
    if device.is_cuda() {
        let got = poisoned_launch(&xd, &freq, start);
        check(&format!("{context} (launch)"), &got, &want, &x, device);
    }
}

#[test]
fn random_inputs_match_the_reference_on_every_device() {
    for device in devices("random_inputs_match_the_reference_on_every_device") {
        for (i, &shape) in SHAPES.iter().enumerate() {
            for (k, &dtype) in DTYPES.iter().enumerate() {
                for (s, &start) in STARTS.iter().enumerate() {
                    check_case(device, shape, start, dtype, (100 * i + 10 * k + s) as u64);
                }
            }
        }
    }
}

#[test]
fn more_items_than_one_grid_pass_on_cuda() {
    // 4·2048 rows × 64 pairs, one group of 8 heads: 524288 threads' work, more than the capped
    // grid (8 blocks of 256 per SM, 132 SMs: 270336 threads) covers in one pass.
    for device in devices("more_items_than_one_grid_pass_on_cuda") {
        if device.is_cuda() {
            check_case(device, [4, 2048, 8, 128], 3, DType::BF16, 9_000);
        }
    }
}

#[test]
fn empty_inputs_give_empty_outputs_on_every_device() {
    for device in devices("empty_inputs_give_empty_outputs_on_every_device") {
        // An empty view of a non-empty tensor (CUDA refuses zero-byte buffers).
        let x = Tensor::zeros(&[1, 2, 3, 4], DType::F32, device)
            .unwrap()
            .narrow(1, 0, 0)
            .unwrap();
        let out = apply(&x, &[1.0, 0.5], 9).unwrap();
        assert_eq!((out.shape(), out.dtype()), (&[1usize, 0, 3, 4][..], DType::F32));
    }
}

#[test]
fn bad_operands_are_errors_on_every_device() {
    for device in devices("bad_operands_are_errors_on_every_device") {
        let t = |shape: &[usize], dtype| Tensor::zeros(shape, dtype, device).unwrap();
        let bad_shape = |e: Error| assert!(matches!(e, Error::BadShape { .. }), "{e}");
        bad_shape(apply(&t(&[2, 4, 8], DType::F32), &[1.0; 4], 0).unwrap_err());
        bad_shape(apply(&t(&[1, 2, 4, 8, 1], DType::F32), &[1.0; 4], 0).unwrap_err());
        bad_shape(apply(&t(&[1, 2, 4, 8], DType::F32), &[1.0; 3], 0).unwrap_err());
        bad_shape(apply(&t(&[1, 2, 4, 5], DType::F32), &[1.0; 2], 0).unwrap_err());
        let e = apply(&t(&[1, 2, 4, 8], DType::I32), &[1.0; 4], 0).unwrap_err();
        assert!(matches!(e, Error::DTypeMismatch { .. }), "{e}");
        let e = apply(&t(&[1, 2, 4, 8], DType::F32), &[1.0; 4], usize::MAX).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        assert!(cuda::function_name(DType::F8E4M3).is_err());
        let fp8 = t(&[1, 2, 4, 8], DType::F8E4M3);
        match device {
            // The CPU takes FP8 and strided views.
            Device::Cpu => {
                assert!(apply(&fp8, &[1.0; 4], 0).is_ok());
                let x = random(&[1, 4, 2, 2], 3, DType::F32);
                let strided = x.transpose(1, 2).unwrap(); // [1, 2, 4, 2]
                let want = apply(&strided.contiguous().unwrap(), &[0.5], 4).unwrap();
                let got = apply(&strided, &[0.5], 4).unwrap();
                assert_eq!(got.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
            }
            // CUDA: f32/f16/bf16, contiguous.
            Device::Cuda(_) => {
                let e = apply(&fp8, &[1.0; 4], 0).unwrap_err();
                assert!(matches!(e, Error::DTypeMismatch { .. }), "{e}");
                let strided = t(&[1, 4, 2, 2], DType::F32).transpose(1, 2).unwrap();
                let e = apply(&strided, &[0.5], 0).unwrap_err();
                assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
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
    let shape = [2, 3, 5, 8];
    let n: usize = shape.iter().product();
    let freq = inv_freq(8);
    for dtype in DTYPES {
        let flat = random(&[n + 2], 17, dtype);
        let flat_gpu = flat.to_device(gpu).unwrap();
        // One element in: pairs straddle the pair alignment (the scalar path); two in: aligned.
        for offset in [1, 2] {
            let view = |t: &Tensor| t.narrow(0, offset, n).unwrap().reshape(&shape).unwrap();
            let x = view(&flat);
            let want = reference::apply(&x, &freq, 11).unwrap();
            let got = apply(&view(&flat_gpu), &freq, 11).unwrap();
            check(&format!("offset view {offset} {dtype}"), &got, &want, &x, gpu);
        }
    }
}

#[test]
fn compiles_for_sm90a_with_nvrtc() {
    if !nvrtc_or_skip("compiles_for_sm90a_with_nvrtc") {
        return;
    }
    for arch in ROPE.archs {
        let compiled = compile_cubin(&ROPE, arch, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(compiled.spill_bytes(), 0, "{}", compiled.log);
        for dtype in DTYPES {
            let name = cuda::function_name(dtype).unwrap();
            let Some(stats) = crate::testing::ptxas_stats(&compiled, name) else {
                continue;
            };
            assert!(stats.registers > 0 && stats.registers <= 64, "{name}: {stats:?}");
        }
    }
}
