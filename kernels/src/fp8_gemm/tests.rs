//! `fp8_gemm` against its f64 CPU reference. On the CPU: the reference's own consistency
//! (against dequantize + f32 matmul, per-tensor against per-row, the epilogue) and bad input.
//! On CUDA: random shapes through both kernels (M = 1, odd M and N, K not a multiple of the
//! tile, K not a multiple of 16), both recipes and both output dtypes, within the relative
//! Frobenius bound of docs/numerics.md ("FP8 GEMM"), and bit-identical across runs.

use l4_core::testing::{Tolerance, assert_close, test_devices};
use l4_core::{DType, Device, Tensor};

use super::cuda::{BM, Fp8Kernel, GEMV_MAX_M, MAX_STAGES, plan, tensor_map_geometry, wgmma_smem_bytes};
use super::{Epilogue, Fp8Scaling, fp8_gemm, reference};
use crate::quant::{Granularity, Quantized, dequantize, quantize};
use crate::testing::{Rng, fresh_seed, nvrtc_or_skip};
use crate::{FP8_GEMM, compile_cubin};

const BLOCK_A: Granularity = Granularity::Block { rows: 1, cols: 128 };
const BLOCK_B: Granularity = Granularity::Block { rows: 128, cols: 128 };

/// Uniform values with per-row magnitudes spread over a few binades, so scales differ.
fn values(rows: usize, cols: usize, rng: &mut Rng) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let row_scale = 2f32.powi(rng.below(6) as i32 - 3);
        for _ in 0..cols {
            let u = (rng.next() >> 40) as f32 / (1u64 << 24) as f32;
            out.push((2.0 * u - 1.0) * row_scale);
        }
    }
    out
}

fn quantized(rows: usize, cols: usize, granularity: Granularity, rng: &mut Rng, device: Device) -> Quantized {
    let x = Tensor::from_vec(values(rows, cols, rng), &[rows, cols], Device::Cpu).unwrap();
    quantize(&x.to_device(device).unwrap(), granularity, None).unwrap()
}

fn to_cpu(q: &Quantized) -> Quantized {
    Quantized {
        values: q.values.to_device(Device::Cpu).unwrap(),
        scales: q.scales.to_device(Device::Cpu).unwrap(),
        granularity: q.granularity,
    }
}

/// ‖got − want‖_F / ‖want‖_F.
fn relative_frobenius(got: &Tensor, want: &Tensor) -> f64 {
    let (g, w) = (got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap());
    let diff: f64 = g.iter().zip(&w).map(|(a, b)| (a - b).powi(2)).sum();
    let norm: f64 = w.iter().map(|b| b * b).sum();
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

/// The bound of docs/numerics.md: 2e-4 for f32 output; bf16 adds one rounding, 2^-8 relative
/// per element at most, so 2^-8 on the Frobenius ratio.
fn bound(out: DType) -> f64 {
    match out {
        DType::F32 => 2e-4,
        _ => 2e-4 + 2f64.powi(-8),
    }
}

#[test]
fn reference_equals_dequantize_then_matmul() {
    let mut rng = Rng(fresh_seed());
    for (ga, gb) in [
        (Granularity::PerRow, Granularity::PerRow),
        (Granularity::PerTensor, Granularity::PerRow),
        (BLOCK_A, BLOCK_B),
    ] {
        let (m, n, k) = (5, 130, 300);
        let a = quantized(m, k, ga, &mut rng, Device::Cpu);
        let b = quantized(n, k, gb, &mut rng, Device::Cpu);
        let got = fp8_gemm(&a, &b, DType::F32, Epilogue::default()).unwrap();
        // Dequantized in f32 (exact: an e4m3 code times a power-of-two-ish f32 scale rounds once),
        // multiplied in f32: within the f32 reduction bound of the f64 reference.
        let (da, db) = (dequantize(&a, DType::F32).unwrap(), dequantize(&b, DType::F32).unwrap());
        let want = da.matmul(&db.transpose(0, 1).unwrap()).unwrap();
        let magnitude = da.to_f64_vec().unwrap().iter().map(|v| v.abs()).fold(0.0, f64::max)
            * db.to_f64_vec().unwrap().iter().map(|v| v.abs()).fold(0.0, f64::max)
            * k as f64;
        let tol = Tolerance::reduction(DType::F32, k, magnitude).pairwise();
        let context = format!("{ga:?} x {gb:?}");
        assert_close(&got.to_f64_vec().unwrap(), &want.to_f64_vec().unwrap(), tol, &context).unwrap();
    }
}

#[test]
fn the_epilogue_adds_bias_then_residual() {
    let mut rng = Rng(fresh_seed());
    let (m, n, k) = (3, 7, 40);
    let a = quantized(m, k, Granularity::PerRow, &mut rng, Device::Cpu);
    let b = quantized(n, k, Granularity::PerRow, &mut rng, Device::Cpu);
    let plain = fp8_gemm(&a, &b, DType::F32, Epilogue::default())
        .unwrap()
        .to_f64_vec()
        .unwrap();
    let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.25).collect();
    let residual: Vec<f32> = (0..m * n).map(|i| 1.0 - i as f32 * 0.125).collect();
    let bias_t = Tensor::from_vec(bias.clone(), &[n], Device::Cpu).unwrap();
    let residual_t = Tensor::from_vec(residual.clone(), &[m, n], Device::Cpu).unwrap();
    let epilogue = Epilogue {
        bias: Some(&bias_t),
        residual: Some(&residual_t),
    };
    let got = fp8_gemm(&a, &b, DType::F32, epilogue).unwrap().to_f64_vec().unwrap();
    for i in 0..m * n {
        let want = plain[i] + f64::from(bias[i % n]) + f64::from(residual[i]);
        assert!(
            (got[i] - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{i}: {} vs {want}",
            got[i]
        );
    }
}

#[test]
fn bad_operands_are_errors() {
    let mut rng = Rng(1);
    let a = quantized(2, 32, Granularity::PerRow, &mut rng, Device::Cpu);
    let b = quantized(3, 48, Granularity::PerRow, &mut rng, Device::Cpu);
    assert!(fp8_gemm(&a, &b, DType::F32, Epilogue::default()).is_err(), "K mismatch");
    let b = quantized(3, 32, Granularity::PerColumn, &mut rng, Device::Cpu);
    let err = fp8_gemm(&a, &b, DType::F32, Epilogue::default()).unwrap_err();
    assert!(err.to_string().contains("unsupported scaling"), "{err}");
    let b = quantized(3, 32, Granularity::PerRow, &mut rng, Device::Cpu);
    assert!(fp8_gemm(&a, &b, DType::F16, Epilogue::default()).is_err(), "f16 output");
    let bias = Tensor::zeros(&[4], DType::F32, Device::Cpu).unwrap();
    let epilogue = Epilogue {
        bias: Some(&bias),
        residual: None,
    };
    let err = fp8_gemm(&a, &b, DType::F32, epilogue).unwrap_err();
    assert!(err.to_string().contains("bias"), "{err}");
    let wide = Quantized {
        values: a.values.to_dtype(DType::F32).unwrap(),
        ..a.clone()
    };
    assert!(
        fp8_gemm(&wide, &b, DType::F32, Epilogue::default()).is_err(),
        "f32 codes"
    );
    assert_eq!(Fp8Scaling::of(BLOCK_A, BLOCK_B).unwrap(), Fp8Scaling::Block);
}

#[test]
fn the_heuristic_picks_kernels_by_shape() {
    assert_eq!(plan(1, 5120, 5120, 132, true), Fp8Kernel::Gemv { vectorized: true });
    assert_eq!(
        plan(GEMV_MAX_M, 5120, 5120, 132, true),
        Fp8Kernel::Gemv { vectorized: true }
    );
    assert_eq!(plan(4096, 5120, 200, 132, true), Fp8Kernel::Gemv { vectorized: false });
    assert_eq!(
        plan(4096, 5120, 5120, 132, false),
        Fp8Kernel::Gemv { vectorized: false }
    );
    // 32 x 40 tiles of 128 fill 132 SMs: BN 128, 7 slots of 32 KiB, one CTA per SM.
    assert_eq!(
        plan(4096, 5120, 5120, 132, true),
        Fp8Kernel::Wgmma {
            bn: 128,
            stages: 7,
            grid: 132
        }
    );
    // 2 x 40 tiles leave SMs idle: BN 64 doubles them to 160, 8 slots of 24 KiB.
    assert_eq!(
        plan(256, 5120, 5120, 132, true),
        Fp8Kernel::Wgmma {
            bn: 64,
            stages: 8,
            grid: 132
        }
    );
    assert_eq!(
        plan(17, 64, 5120, 132, true),
        Fp8Kernel::Wgmma {
            bn: 64,
            stages: 8,
            grid: 1
        }
    );
}

#[test]
fn scales_that_disagree_with_the_granularity_are_errors() {
    let mut rng = Rng(2);
    let a = quantized(4, 256, BLOCK_A, &mut rng, Device::Cpu);
    let b = quantized(130, 256, BLOCK_B, &mut rng, Device::Cpu);
    assert!(fp8_gemm(&a, &b, DType::F32, Epilogue::default()).is_ok());
    // B's 128x128 scales [2, 2] passed off as A's 1x128 ones ([4, 2] expected).
    let short = Quantized {
        scales: b.scales.clone(),
        ..a.clone()
    };
    let err = fp8_gemm(&short, &b, DType::F32, Epilogue::default()).unwrap_err();
    assert!(err.to_string().contains("A's"), "{err}");
    let wide = Quantized {
        scales: b.scales.to_dtype(DType::BF16).unwrap(),
        ..b.clone()
    };
    let err = fp8_gemm(&a, &wide, DType::F32, Epilogue::default()).unwrap_err();
    assert!(err.to_string().contains("B's"), "{err}");
}

/// Over a grid of shapes, SM counts and alignments, every plan is one its kernel can run: the
/// Hopper kernel only with a 16-byte row pitch and aligned operands (TMA's rules), a ring that
/// fits the 227 KiB opt-in limit with the static mbarriers, and a grid of at most one CTA per
/// SM and per tile; the 16-byte small-M path only where its chunks stay in bounds and aligned.
#[test]
fn every_plan_fits_its_kernel() {
    const SMEM_LIMIT: usize = 227 * 1024;
    let static_smem = 2 * MAX_STAGES * 8; // the `full` and `empty` mbarrier arrays
    for m in [1, 2, 15, 16, 17, 33, 127, 128, 129, 1000, 4096, 16384] {
        for n in [1, 7, 64, 65, 128, 129, 5120, 202048] {
            for k in [1, 15, 16, 17, 48, 100, 128, 200, 208, 5120] {
                for sms in [1, 78, 132] {
                    for aligned in [true, false] {
                        let context = format!("[{m}, {n}, {k}] on {sms} SMs, aligned {aligned}");
                        let fits_16 = k % 16 == 0 && aligned;
                        match plan(m, n, k, sms, aligned) {
                            Fp8Kernel::Gemv { vectorized } => {
                                assert_eq!(vectorized, fits_16, "{context}");
                                assert!(m <= GEMV_MAX_M || !fits_16, "{context}: large M belongs to wgmma");
                            }
                            Fp8Kernel::Wgmma { bn, stages, grid } => {
                                assert!(fits_16 && m > GEMV_MAX_M, "{context}");
                                assert!(bn == 64 || bn == 128, "{context}: bn {bn}");
                                assert!((1..=MAX_STAGES).contains(&stages), "{context}: {stages} stages");
                                let smem = wgmma_smem_bytes(bn, stages) + static_smem;
                                assert!(smem <= SMEM_LIMIT, "{context}: {smem} bytes of shared memory");
                                let tiles = m.div_ceil(BM) * n.div_ceil(bn);
                                assert!(grid >= 1 && grid <= sms.min(tiles), "{context}: grid {grid}");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The TMA boxes against cuTensorMapEncodeTiled's rules and the kernel's shared-memory layout:
/// dimensions innermost first, one byte stride (dimension 1's, a multiple of 16 when planned),
/// boxes of at most 256 per dimension whose 128-byte inner extent equals the 128-byte swizzle
/// span, and tiles that keep every A, B and per-warpgroup slice on the 1024-byte swizzle period.
#[test]
fn tensor_maps_follow_the_driver_rules() {
    for (rows, k) in [(17, 16), (1100, 656), (202048, 5120), (1, 48)] {
        for box_rows in [BM, 64, 128] {
            let (dims, strides, boxes) = tensor_map_geometry(rows, k, box_rows);
            assert_eq!(dims, [k as u64, rows as u64]);
            assert_eq!(strides, [k as u64], "row pitch in bytes (1-byte e4m3)");
            assert!(strides[0] % 16 == 0);
            assert!(boxes.iter().all(|&b| (1..=256).contains(&b)), "{boxes:?}");
            assert_eq!(boxes, [128, box_rows as u32]);
            assert_eq!(boxes[1] as usize * 128 % 1024, 0, "tile of {box_rows} rows");
        }
    }
    // Warpgroup 2 reads A from row 64 of the tile: 64 rows of 128 bytes, still atom-aligned.
    assert_eq!(64 * 128 % 1024, 0);
}

#[test]
fn cuda_matches_the_f64_reference_and_is_deterministic() {
    let Some(device) = test_devices()
        .into_iter()
        .find(|d| d.is_cuda() && nvrtc_or_skip("cuda_matches_the_f64_reference_and_is_deterministic"))
    else {
        eprintln!("skipping cuda_matches_the_f64_reference_and_is_deterministic: no usable CUDA device");
        return;
    };
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    // (M, N, K): decode sizes, odd sizes, K off the tile and off 16, and tiles that span SMs.
    let shapes = [
        (1, 64, 128),
        (1, 257, 200),
        (7, 33, 1000),
        (16, 512, 5120),
        (17, 130, 208),
        (130, 257, 384),
        (300, 64, 4096),
        (1024, 1024, 1024),
        // M > 16 with K % 16 != 0: the small-M kernel's scalar path over three row passes.
        (40, 70, 100),
        // The Hopper kernel with K below one block (the TMA box overhangs M, N and K).
        (33, 100, 48),
        // ⌈1100/128⌉·⌈2100/128⌉ = 153 tiles of BN = 128 on 132 SMs (H100 and H200): some CTAs
        // run two tiles, the ring's phases carry across tiles, and the last K block is partial.
        (1100, 2100, 656),
    ];
    let mut failures = Vec::new();
    for (case, &(m, n, k)) in shapes.iter().enumerate() {
        for (ga, gb) in [(Granularity::PerRow, Granularity::PerRow), (BLOCK_A, BLOCK_B)] {
            let out = if case % 2 == 0 { DType::F32 } else { DType::BF16 };
            let a = quantized(m, k, ga, &mut rng, device);
            let b = quantized(n, k, gb, &mut rng, device);
            let bias = Tensor::from_vec(values(1, n, &mut rng), &[n], Device::Cpu).unwrap();
            let residual = Tensor::from_f32_vec(values(m, n, &mut rng), &[m, n], out, Device::Cpu).unwrap();
            let with_extras = case % 3 == 0;
            let host_epilogue = Epilogue {
                bias: with_extras.then_some(&bias),
                residual: with_extras.then_some(&residual),
            };
            let (bias_d, residual_d) = (bias.to_device(device).unwrap(), residual.to_device(device).unwrap());
            let epilogue = Epilogue {
                bias: with_extras.then_some(&bias_d),
                residual: with_extras.then_some(&residual_d),
            };
            let scaling = Fp8Scaling::of(ga, gb).unwrap();
            let want = reference::fp8_gemm(&to_cpu(&a), &to_cpu(&b), scaling, out, host_epilogue).unwrap();
            let context = format!("seed {seed}: [{m}, {n}, {k}] {scaling:?} -> {out}, extras {with_extras}");
            let got = fp8_gemm(&a, &b, out, epilogue).unwrap_or_else(|e| panic!("{context}: {e}"));
            let error = relative_frobenius(&got, &want);
            eprintln!("{context}: relative Frobenius error {error:.2e}");
            // Failures are collected, not raised at once, so one GPU run reports every case.
            if error.is_nan() || error > bound(out) {
                failures.push(format!(
                    "{context}: relative Frobenius error {error:.3e} > {}",
                    bound(out)
                ));
            }
            let again = fp8_gemm(&a, &b, out, epilogue).unwrap();
            if got.to_f64_vec().unwrap() != again.to_f64_vec().unwrap() {
                failures.push(format!("{context}: not deterministic"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A operand whose codes start one byte past a 16-byte boundary (a view into a larger
/// per-tensor quantized buffer) with K % 16 == 0 and M > 16: TMA and the 16-byte small-M path
/// would both fault or misread there, so the plan must fall back to the scalar small-M path.
#[test]
fn misaligned_operands_fall_back_and_stay_correct() {
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    let (m, n, k) = (40, 70, 256);
    for device in test_devices() {
        if device.is_cuda() && !nvrtc_or_skip("misaligned_operands_fall_back_and_stay_correct") {
            continue;
        }
        let flat = quantized(1, m * k + 1, Granularity::PerTensor, &mut rng, device);
        let a = Quantized {
            values: flat.values.narrow(1, 1, m * k).unwrap().reshape(&[m, k]).unwrap(),
            ..flat
        };
        let b = quantized(n, k, Granularity::PerRow, &mut rng, device);
        let want = reference::fp8_gemm(
            &to_cpu(&a),
            &to_cpu(&b),
            Fp8Scaling::RowWise,
            DType::F32,
            Epilogue::default(),
        )
        .unwrap();
        let context = format!("seed {seed} on {device}: A at byte offset 1");
        let got = fp8_gemm(&a, &b, DType::F32, Epilogue::default()).unwrap_or_else(|e| panic!("{context}: {e}"));
        let error = relative_frobenius(&got, &want);
        assert!(
            error <= bound(DType::F32),
            "{context}: relative Frobenius error {error:.3e}"
        );
    }
}

#[test]
fn compiles_for_sm90a_without_spills() {
    if !nvrtc_or_skip("compiles_for_sm90a_without_spills") {
        return;
    }
    for arch in FP8_GEMM.archs {
        let compiled = compile_cubin(&FP8_GEMM, arch, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(compiled.spill_bytes(), 0, "{}", compiled.log);
        for recipe in ["rowwise", "block"] {
            for out in ["bf16", "f32"] {
                let mut names = vec![format!("fp8_gemv_{recipe}_{out}")];
                names.extend([64, 128].map(|bn| format!("fp8_gemm_{recipe}_n{bn}_{out}")));
                for name in names {
                    let Some(stats) = crate::testing::ptxas_stats(&compiled, &name) else {
                        continue;
                    };
                    assert_eq!(stats.stack_bytes, 0, "{name}: {stats:?}");
                }
            }
        }
    }
}

#[test]
fn the_cublaslt_baseline_computes_the_same_problem() {
    let Some(device) = test_devices()
        .into_iter()
        .find(|d| d.is_cuda() && nvrtc_or_skip("the_cublaslt_baseline_computes_the_same_problem"))
    else {
        eprintln!("skipping the_cublaslt_baseline_computes_the_same_problem: no usable CUDA device");
        return;
    };
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    for (m, n, k, out) in [(16, 256, 512, DType::BF16), (256, 512, 1024, DType::F32)] {
        let a = quantized(m, k, Granularity::PerRow, &mut rng, device);
        let b = quantized(n, k, Granularity::PerRow, &mut rng, device);
        let want =
            reference::fp8_gemm(&to_cpu(&a), &to_cpu(&b), Fp8Scaling::RowWise, out, Epilogue::default()).unwrap();
        let got = super::cublaslt::cublaslt_fp8_gemm(&a, &b, out).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let error = relative_frobenius(&got, &want);
        assert!(
            error <= bound(out),
            "seed {seed}: cuBLASLt [{m}, {n}, {k}] -> {out}: {error:.3e}"
        );
    }
}
