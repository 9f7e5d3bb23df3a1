//! `cast` on every device found: CPU always, CUDA when present (see `crate::testing`).
//!
//! * The CPU path is checked against an independent model of the rounding rule (round to
//!   nearest even at the destination's precision and exponent range; FP8 satfinite), over every
//!   16-bit and 8-bit code, every rounding boundary of every destination, and random f32 bit
//!   patterns. That pins the CPU to the documented semantics of PTX `cvt.rn(.satfinite)`.
//! * On CUDA the same inputs (contiguous, misaligned and transposed views) are cast by the
//!   kernels and compared with the CPU bit for bit (a NaN meets any NaN: payloads differ).
//!   Under `cargo test` the launcher's output starts as 0xff bytes (NaN in every float dtype),
//!   so an element a kernel skipped cannot pass, except where the CPU result is NaN too.

use l4_core::testing::test_devices;
use l4_core::{DType, Device, Error, F8E4M3, F8E5M2, Tensor, bf16, f16};

use super::{FLOAT_DTYPES, cast, cuda, reference};
use crate::elementwise::cuda::{BLOCK, BLOCKS_PER_SM};
use crate::testing::{gpu_or_skip, lcg_values, nvrtc_or_skip};
use crate::{CAST, compile_cubin};

/// The devices to run on: `test_devices()`, without CUDA when NVRTC is missing (skipped, or a
/// failure under `CI` / `L4_REQUIRE_GPU`), and with the kernels' broader `L4_REQUIRE_GPU` rule.
fn devices(test: &str) -> Vec<Device> {
    let mut devices = test_devices();
    if devices.iter().any(|d| matches!(d, Device::Cuda(_))) {
        if !nvrtc_or_skip(test) {
            devices.retain(|d| *d == Device::Cpu);
        }
    } else if let Some(backend) = gpu_or_skip(test)
        && nvrtc_or_skip(test)
    {
        devices.push(Device::Cuda(backend.info().ordinal));
    }
    devices
}

/// A 1-D CPU tensor of `dtype` holding these raw bit patterns.
fn from_bits(dtype: DType, bits: &[u32]) -> Tensor {
    let n = [bits.len()];
    let t = match dtype {
        DType::F32 => Tensor::from_vec(bits.iter().map(|&b| f32::from_bits(b)).collect(), &n, Device::Cpu),
        DType::F16 => Tensor::from_vec(
            bits.iter().map(|&b| f16::from_bits(b as u16)).collect(),
            &n,
            Device::Cpu,
        ),
        DType::BF16 => Tensor::from_vec(
            bits.iter().map(|&b| bf16::from_bits(b as u16)).collect(),
            &n,
            Device::Cpu,
        ),
        DType::F8E4M3 => Tensor::from_vec(
            bits.iter().map(|&b| F8E4M3::from_bits(b as u8)).collect(),
            &n,
            Device::Cpu,
        ),
        DType::F8E5M2 => Tensor::from_vec(
            bits.iter().map(|&b| F8E5M2::from_bits(b as u8)).collect(),
            &n,
            Device::Cpu,
        ),
        other => panic!("no bits for {other}"),
    };
    t.unwrap()
}

/// The raw bit patterns of a float tensor's elements, row-major.
fn bits_of(t: &Tensor) -> Vec<u32> {
    match t.dtype() {
        DType::F32 => t.to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect(),
        DType::F16 => t.to_vec::<f16>().unwrap().iter().map(|x| x.to_bits() as u32).collect(),
        DType::BF16 => t.to_vec::<bf16>().unwrap().iter().map(|x| x.to_bits() as u32).collect(),
        DType::F8E4M3 => t
            .to_vec::<F8E4M3>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits() as u32)
            .collect(),
        DType::F8E5M2 => t
            .to_vec::<F8E5M2>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits() as u32)
            .collect(),
        other => panic!("no bits for {other}"),
    }
}

/// Precision p (implicit bit included), smallest normal exponent, largest finite value, and
/// whether overflow saturates (FP8 satfinite) instead of giving ±∞.
fn format(dtype: DType) -> (i32, i32, f64, bool) {
    match dtype {
        DType::F32 => (24, -126, f32::MAX as f64, false),
        DType::F16 => (11, -14, 65504.0, false),
        DType::BF16 => (8, -126, bf16::MAX.to_f64(), false),
        DType::F8E4M3 => (4, -6, 448.0, true),
        DType::F8E5M2 => (3, -14, 57344.0, true),
        other => panic!("no format for {other}"),
    }
}

/// The exact value `v` rounded into `dtype`: to nearest, ties to even, at the spacing of `v`'s
/// binade (or of the subnormal range), then overflow to ±∞ or, for FP8, ±max; ±∞ likewise.
fn model(v: f64, dtype: DType) -> f64 {
    let (p, emin, max, saturate) = format(dtype);
    if v.is_nan() {
        return f64::NAN;
    }
    let overflow = if saturate { max } else { f64::INFINITY };
    if v.is_infinite() {
        return overflow.copysign(v);
    }
    if v == 0.0 {
        return v;
    }
    let a = v.abs();
    let e = ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023; // a is a normal f64
    let q = e.max(emin) - (p - 1); // the spacing 2^q of the destination around a
    let r = (a * 2f64.powi(-q)).round_ties_even() * 2f64.powi(q);
    let r = if r > max { overflow } else { r };
    r.copysign(v)
}

/// Whether two elements are the same value with the same sign, or both NaN.
fn same_value(got: f64, want: f64) -> bool {
    (got.is_nan() && want.is_nan()) || (got == want && got.is_sign_negative() == want.is_sign_negative())
}

/// Every finite value of `dtype` that is ≥ 0, ascending (all codes for 8- and 16-bit types).
fn nonnegative_values(dtype: DType) -> Vec<f64> {
    let codes: Vec<u32> = match dtype.size_in_bytes() {
        1 => (0..0x80).collect(),
        2 => (0..0x8000).collect(),
        _ => panic!("only narrow dtypes"),
    };
    let mut v: Vec<f64> = from_bits(dtype, &codes)
        .to_f64_vec()
        .unwrap()
        .into_iter()
        .filter(|x| x.is_finite())
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// f32 inputs: specials, every rounding boundary of every narrow destination (midpoints between
/// neighbours, the overflow midpoint above max, one f32 ulp either side), and random bit
/// patterns; padded to a multiple of 16 so that a square-ish transposed view exists.
fn f32_inputs() -> Vec<u32> {
    let mut values: Vec<f32> = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::MAX,
        -f32::MAX,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        -f32::from_bits(1),
        1.0e-40,
        1.0e30,
        -1.0e30,
    ];
    for dtype in [DType::F16, DType::BF16, DType::F8E4M3, DType::F8E5M2] {
        let v = nonnegative_values(dtype);
        let mut mids: Vec<f64> = v.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        let (last, prev) = (v[v.len() - 1], v[v.len() - 2]);
        mids.push(last + (last - prev) / 2.0);
        for m in mids {
            // Exact in f32: one bit more than the destination's precision.
            let m32 = m as f32;
            assert_eq!(m32 as f64, m, "{dtype} midpoint {m:e} is not an f32");
            for x in [m32, m32.next_up(), m32.next_down()] {
                values.extend([x, -x]);
            }
        }
    }
    let mut bits: Vec<u32> = values.iter().map(|x| x.to_bits()).collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..(1 << 16) {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        bits.push((state >> 32) as u32);
    }
    while !bits.len().is_multiple_of(16) {
        bits.push(0);
    }
    bits
}

/// Every bit pattern of a narrow dtype, or [`f32_inputs`].
fn inputs(dtype: DType) -> Vec<u32> {
    match dtype.size_in_bytes() {
        1 => (0..1 << 8).collect(),
        2 => (0..1 << 16).collect(),
        _ => f32_inputs(),
    }
}

#[test]
fn cpu_casts_round_once_to_nearest_even_with_fp8_saturation() {
    for src in FLOAT_DTYPES {
        let x = from_bits(src, &inputs(src));
        let xs = x.to_f64_vec().unwrap();
        for dst in FLOAT_DTYPES {
            if dst == src {
                continue;
            }
            let got = cast(&x, dst).unwrap().to_f64_vec().unwrap();
            let bad: Vec<usize> = (0..xs.len())
                .filter(|&i| !same_value(got[i], model(xs[i], dst)))
                .collect();
            if let Some(&i) = bad.first() {
                panic!(
                    "{src} -> {dst}: {} of {} differ from the rounding model; first: {:e} gave {:e}, the model {:e}",
                    bad.len(),
                    xs.len(),
                    xs[i],
                    got[i],
                    model(xs[i], dst)
                );
            }
        }
    }
}

#[test]
fn rounding_model_spot_checks() {
    // Ties to even, FP8 saturation (finite and infinite), IEEE overflow, subnormals.
    assert_eq!(model(464.0, DType::F8E4M3), 448.0); // tie between 448 and (NaN) 480: even 448
    assert_eq!(model(1.0e6, DType::F8E4M3), 448.0);
    assert_eq!(model(f64::NEG_INFINITY, DType::F8E4M3), -448.0);
    assert_eq!(model(61440.0, DType::F8E5M2), 57344.0);
    assert_eq!(model(f64::INFINITY, DType::F8E5M2), 57344.0);
    assert_eq!(model(65520.0, DType::F16), f64::INFINITY);
    assert_eq!(model(65519.0, DType::F16), 65504.0);
    assert_eq!(model(2f64.powi(-10), DType::F8E4M3), 0.0); // half the smallest subnormal 2^-9
    assert_eq!(model(3.0 * 2f64.powi(-10), DType::F8E4M3), 2f64.powi(-8)); // 1.5 subnormals: even 2
    assert_eq!(model(1.0 + 2f64.powi(-8), DType::BF16), 1.0);
    assert!(model(-1.0e-30, DType::F16).is_sign_negative());
}

#[test]
fn casts_match_the_cpu_bitwise_on_every_device() {
    for device in devices("casts_match_the_cpu_bitwise_on_every_device") {
        for src in FLOAT_DTYPES {
            let bits = inputs(src);
            let (n, cols) = (bits.len(), bits.len() / 16);
            let plain = from_bits(src, &bits);
            // One leading element more, so that a view at offset 1 exists (misaligned for the
            // vector path).
            let padded = from_bits(src, &[&[0], &bits[..]].concat());
            let (plain_dev, padded_dev) = (plain.to_device(device).unwrap(), padded.to_device(device).unwrap());
            let transposed = |t: &Tensor| t.reshape(&[16, cols])?.transpose(0, 1);
            let cases = [
                ("contiguous", plain.clone(), plain_dev.clone()),
                (
                    "offset by one element",
                    padded.narrow(0, 1, n).unwrap(),
                    padded_dev.narrow(0, 1, n).unwrap(),
                ),
                (
                    "transposed",
                    transposed(&plain).unwrap(),
                    transposed(&plain_dev).unwrap(),
                ),
            ];
            for (name, x, x_dev) in cases {
                for dst in FLOAT_DTYPES {
                    if dst == src {
                        continue;
                    }
                    let want = reference::cast(&x, dst).unwrap();
                    let got = cast(&x_dev, dst).unwrap();
                    assert_eq!((got.device(), got.dtype(), got.shape()), (device, dst, x.shape()));
                    assert_same_bits(&format!("{src} -> {dst}, {name}, on {device}"), &got, &want, &x);
                }
            }
        }
    }
}

/// Bitwise equality of two whole tensors, any NaN meeting any NaN; panics naming the first
/// difference and its input.
fn assert_same_bits(what: &str, got: &Tensor, want: &Tensor, x: &Tensor) {
    let (gb, wb) = (bits_of(got), bits_of(want));
    let (gv, wv) = (got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap());
    assert_eq!(gb.len(), wb.len(), "{what}: lengths differ");
    let bad: Vec<usize> = (0..wb.len())
        .filter(|&i| gb[i] != wb[i] && !(gv[i].is_nan() && wv[i].is_nan()))
        .collect();
    if let Some(&i) = bad.first() {
        let xb = bits_of(x);
        panic!(
            "{what}: {} of {} elements differ; first at {i}: input bits {:#x} ({:e}) gave {:#x} ({:e}), the CPU \
             {:#x} ({:e})",
            bad.len(),
            wb.len(),
            xb[i],
            x.to_f64_vec().unwrap()[i],
            gb[i],
            gv[i],
            wb[i],
            wv[i]
        );
    }
}

#[test]
fn large_casts_cover_every_grid_pass() {
    for device in devices("large_casts_cover_every_grid_pass") {
        let Device::Cuda(ordinal) = device else { continue };
        let sms = l4_core::cuda::backend(ordinal).unwrap().info().sm_count;
        // 16 elements per thread at most: more than two passes of the capped grid.
        let n = sms * BLOCKS_PER_SM * BLOCK as usize * 16 * 2 + 7;
        for src in [DType::BF16, DType::F8E4M3] {
            let mask = if src.size_in_bytes() == 1 { 0xff } else { 0xffff };
            let bits: Vec<u32> = (0..n as u32).map(|i| i.wrapping_mul(40503) & mask).collect();
            let x = from_bits(src, &bits);
            let x_dev = x.to_device(device).unwrap();
            for dst in FLOAT_DTYPES {
                if dst == src {
                    continue;
                }
                let want = reference::cast(&x, dst).unwrap();
                let got = cast(&x_dev, dst).unwrap();
                assert_same_bits(&format!("{src} -> {dst}, n={n}, on {device}"), &got, &want, &x);
            }
        }
    }
}

#[test]
fn same_dtype_empty_and_bad_dtypes_on_every_device() {
    for device in devices("same_dtype_empty_and_bad_dtypes_on_every_device") {
        let values = lcg_values(12, 3, 10.0);
        let x = Tensor::from_f32_vec(values, &[3, 4], DType::BF16, Device::Cpu)
            .unwrap()
            .to_device(device)
            .unwrap();
        // The same dtype: the tensor itself (shared storage), like Tensor::to_dtype.
        let same = cast(&x, DType::BF16).unwrap();
        assert!(std::ptr::eq(same.storage(), x.storage()));
        // Empty views cast to empty tensors of the new dtype.
        let empty = cast(&x.narrow(0, 0, 0).unwrap(), DType::F8E5M2).unwrap();
        assert_eq!(
            (empty.shape(), empty.dtype(), empty.device()),
            (&[0usize, 4][..], DType::F8E5M2, device)
        );
        // Integer dtypes, either way, are errors.
        let to_int = cast(&x, DType::I32).unwrap_err();
        assert!(matches!(to_int, Error::DTypeMismatch { .. }), "{to_int}");
        let ints = Tensor::zeros(&[2], DType::I64, Device::Cpu)
            .unwrap()
            .to_device(device)
            .unwrap();
        let from_int = cast(&ints, DType::F32).unwrap_err();
        assert!(matches!(from_int, Error::DTypeMismatch { .. }), "{from_int}");
    }
    assert!(cuda::function_name(DType::F16, DType::F16, false).is_err());
    assert!(cuda::function_name(DType::U8, DType::F16, false).is_err());
    assert_eq!(
        cuda::function_name(DType::BF16, DType::F8E4M3, true).unwrap(),
        "cast_bf16_f8e4m3_strided"
    );
}

#[test]
fn compiles_for_sm90a_with_nvrtc() {
    if !nvrtc_or_skip("cast::compiles_for_sm90a_with_nvrtc") {
        return;
    }
    for arch in CAST.archs {
        let compiled = compile_cubin(&CAST, arch, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(compiled.cubin.starts_with(b"\x7fELF"), "a CUBIN is an ELF image");
        assert_eq!(compiled.spill_bytes(), 0, "{}", compiled.log);
        for src in FLOAT_DTYPES {
            for dst in FLOAT_DTYPES {
                for strided in [false, true] {
                    if src == dst {
                        continue;
                    }
                    let name = cuda::function_name(src, dst, strided).unwrap();
                    let Some(stats) = crate::testing::ptxas_stats(&compiled, &name) else {
                        continue;
                    };
                    // The launch bounds ask for 8 resident 256-thread blocks: at most 32 registers.
                    assert!(stats.registers > 0 && stats.registers <= 32, "{name}: {stats:?}");
                }
            }
        }
    }
}
