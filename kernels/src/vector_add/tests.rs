//! `vector_add` on every device found: CPU always, CUDA when present (see `crate::testing`).

use l4_core::{DType, Device, Error, Tensor, bf16};

use super::{cuda, reference, vector_add};
use crate::testing::{gpu_with_nvrtc_or_skip, lcg_values, nvrtc_or_skip};
use crate::{VECTOR_ADD, compile_cubin};

/// Element bits of a tensor of f32 or bf16, for bitwise comparison.
fn bits(t: &Tensor) -> Vec<u32> {
    match t.dtype() {
        DType::F32 => t.to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect(),
        DType::BF16 => t.to_vec::<bf16>().unwrap().iter().map(|x| x.to_bits() as u32).collect(),
        other => panic!("no bits for {other}"),
    }
}

fn is_nan_bits(dtype: DType, b: u32) -> bool {
    match dtype {
        DType::F32 => f32::from_bits(b).is_nan(),
        _ => bf16::from_bits(b as u16).is_nan(),
    }
}

/// Bitwise equality, except that any NaN matches any NaN (CPUs and GPUs make different NaNs).
fn assert_bitwise_eq(what: &str, dtype: DType, got: &[u32], want: &[u32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let both_nan = is_nan_bits(dtype, g) && is_nan_bits(dtype, w);
        assert!(
            g == w || both_nan,
            "{what} ({dtype}): first mismatch at index {i}: got {g:#x}, want {w:#x} (of {} elements)",
            got.len()
        );
    }
}

/// Inputs with the interesting cases first (signed zeros, subnormals, overflow, cancellation,
/// bf16 rounding ties), then pseudo-random values.
fn inputs(n: usize, dtype: DType) -> (Tensor, Tensor) {
    let tiny = f32::from_bits(1); // the smallest f32 subnormal
    let mut a = vec![0.0, -0.0, tiny, 3.0e38, 1.0, 1.0078125, f32::INFINITY, 1.0e-3, -7.5];
    let mut b = vec![
        -0.0,
        -0.0,
        tiny,
        3.0e38,
        0.00390625,
        0.00390625,
        f32::NEG_INFINITY,
        -1.0e-3,
        7.5,
    ];
    a.extend(lcg_values(n.saturating_sub(a.len()), 1, 100.0));
    b.extend(lcg_values(n.saturating_sub(b.len()), 2, 100.0));
    a.truncate(n);
    b.truncate(n);
    (
        Tensor::from_f32_vec(a, &[n], dtype, Device::Cpu).unwrap(),
        Tensor::from_f32_vec(b, &[n], dtype, Device::Cpu).unwrap(),
    )
}

#[test]
fn cpu_adds_f32_with_one_rounding() {
    let tiny = f32::from_bits(1); // the smallest subnormal: subnormals are kept, not flushed
    let a = Tensor::from_vec(vec![1.0f32, 2.5, -0.0, tiny, 3.0e38], &[5], Device::Cpu).unwrap();
    let b = Tensor::from_vec(vec![2.0f32, -2.5, -0.0, tiny, 3.0e38], &[5], Device::Cpu).unwrap();
    let out = vector_add(&a, &b).unwrap();
    assert_eq!(out.shape(), &[5]);
    let v = out.to_vec::<f32>().unwrap();
    assert_eq!(v[..2], [3.0, 0.0]);
    assert!(v[2] == 0.0 && v[2].is_sign_negative(), "-0 + -0 = -0");
    assert_eq!(v[3], f32::from_bits(2));
    assert_eq!(v[4], f32::INFINITY);
}

#[test]
fn cpu_bf16_rounds_the_f32_sum_to_nearest_even() {
    // 1 + 2^-8 lies halfway between the bf16 neighbours 1 and 1 + 2^-7: ties go to the even 1.
    // (1 + 2^-7) + 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: ties go to 1 + 2^-6.
    let a = Tensor::from_f32_vec(vec![1.0, 1.0078125, 3.0e38], &[3], DType::BF16, Device::Cpu).unwrap();
    let b = Tensor::from_f32_vec(vec![0.00390625, 0.00390625, 3.0e38], &[3], DType::BF16, Device::Cpu).unwrap();
    let out = vector_add(&a, &b).unwrap().to_f32_vec().unwrap();
    assert_eq!(out, vec![1.0, 1.015625, f32::INFINITY]);
}

#[test]
fn cpu_accepts_strided_views() {
    let a = Tensor::from_vec((0..6).map(|i| i as f32).collect(), &[2, 3], Device::Cpu).unwrap();
    let at = a.transpose(0, 1).unwrap(); // [3, 2], strided
    let ones = Tensor::full(1.0, &[3, 2], DType::F32, Device::Cpu).unwrap();
    let out = vector_add(&at, &ones).unwrap();
    assert_eq!(out.to_vec::<f32>().unwrap(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
}

#[test]
fn cpu_empty_inputs_give_an_empty_output() {
    let empty = Tensor::zeros(&[0, 4], DType::BF16, Device::Cpu).unwrap();
    let out = vector_add(&empty, &empty).unwrap();
    assert_eq!((out.shape(), out.dtype()), (&[0usize, 4][..], DType::BF16));
}

#[test]
fn mismatched_operands_are_errors() {
    let f = |shape: &[usize], dtype| Tensor::zeros(shape, dtype, Device::Cpu).unwrap();
    let shape = vector_add(&f(&[2], DType::F32), &f(&[3], DType::F32)).unwrap_err();
    assert!(matches!(shape, Error::ShapeMismatch { .. }), "{shape}");
    let dtypes = vector_add(&f(&[2], DType::F32), &f(&[2], DType::BF16)).unwrap_err();
    assert!(matches!(dtypes, Error::DTypeMismatch { .. }), "{dtypes}");
    let unsupported = vector_add(&f(&[2], DType::I32), &f(&[2], DType::I32)).unwrap_err();
    assert!(matches!(unsupported, Error::DTypeMismatch { .. }), "{unsupported}");
    assert!(cuda::function_name(DType::F16).is_err());
}

#[test]
fn compiles_for_sm90a_with_nvrtc() {
    if !nvrtc_or_skip("compiles_for_sm90a_with_nvrtc") {
        return;
    }
    for arch in VECTOR_ADD.archs {
        let compiled = compile_cubin(&VECTOR_ADD, arch, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(compiled.cubin.starts_with(b"\x7fELF"), "a CUBIN is an ELF image");
        assert_eq!(compiled.spill_bytes(), 0, "{}", compiled.log);
        for dtype in [DType::F32, DType::BF16] {
            let name = cuda::function_name(dtype).unwrap();
            let Some(stats) = crate::testing::ptxas_stats(&compiled, name) else {
                continue;
            };
            assert!(stats.registers > 0 && stats.registers <= 32, "{name}: {stats:?}");
        }
    }
}

#[test]
fn gpu_matches_reference_bitwise() {
    let Some(backend) = gpu_with_nvrtc_or_skip("gpu_matches_reference_bitwise") else {
        return;
    };
    let gpu = Device::Cuda(backend.info().ordinal);
    // Sizes: tiny, not a multiple of the block, and more than the capped grid covers in one
    // pass (so the grid-stride loop runs several times).
    let big = backend.info().sm_count * 8 * 256 * 3 + 5;
    for dtype in [DType::F32, DType::BF16] {
        for n in [1, 9, 1000, big] {
            let (a, b) = inputs(n, dtype);
            let want = bits(&reference::vector_add(&a, &b).unwrap());
            let (a_gpu, b_gpu) = (a.to_device(gpu).unwrap(), b.to_device(gpu).unwrap());

            // The launcher writes into a buffer poisoned with NaN bytes, so an element the
            // kernel skipped cannot pass as correct.
            let size = dtype.size_in_bytes();
            let mut out = backend.stream().clone_htod(&vec![0xffu8; n * size]).unwrap();
            let a_bytes = a_gpu.cuda_storage("test").unwrap().bytes.slice(..);
            let b_bytes = b_gpu.cuda_storage("test").unwrap().bytes.slice(..);
            cuda::launch(&backend, dtype, &a_bytes, &b_bytes, &mut out, n).unwrap();
            let raw = backend.stream().clone_dtoh(&out).unwrap();
            let got: Vec<u32> = match dtype {
                DType::F32 => raw
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                _ => raw
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes(c.try_into().unwrap()) as u32)
                    .collect(),
            };
            assert_bitwise_eq(&format!("launch n={n}"), dtype, &got, &want);

            // The public op, end to end.
            let out = vector_add(&a_gpu, &b_gpu).unwrap();
            assert_eq!(out.device(), gpu);
            assert_bitwise_eq(&format!("op n={n}"), dtype, &bits(&out), &want);
        }
    }
}

#[test]
fn gpu_handles_offset_views_and_rejects_strided_ones() {
    let Some(backend) = gpu_with_nvrtc_or_skip("gpu_handles_offset_views_and_rejects_strided_ones") else {
        return;
    };
    let gpu = Device::Cuda(backend.info().ordinal);
    let (a, b) = inputs(64, DType::F32);
    let (a_gpu, b_gpu) = (a.to_device(gpu).unwrap(), b.to_device(gpu).unwrap());
    // Offset but contiguous views: elements 5..64.
    let (a_view, b_view) = (a_gpu.narrow(0, 5, 59).unwrap(), b_gpu.narrow(0, 5, 59).unwrap());
    let want = bits(&vector_add(&a.narrow(0, 5, 59).unwrap(), &b.narrow(0, 5, 59).unwrap()).unwrap());
    assert_bitwise_eq(
        "offset view",
        DType::F32,
        &bits(&vector_add(&a_view, &b_view).unwrap()),
        &want,
    );

    let a2 = a_gpu.reshape(&[8, 8]).unwrap().transpose(0, 1).unwrap();
    let b2 = b_gpu.reshape(&[8, 8]).unwrap();
    assert!(vector_add(&a2, &b2).is_err(), "strided CUDA inputs are an error");
    assert!(matches!(
        vector_add(&a_gpu, &b).unwrap_err(),
        Error::DeviceMismatch { .. }
    ));
}
