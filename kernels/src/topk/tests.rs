//! topk on every device (CPU always; CUDA when usable), compared exactly with the CPU reference
//! (values byte for byte, indices equal) on fresh random rows full of ties, NaNs (several
//! payloads and both signs), infinities, signed zeros and subnormals. The seed is printed in
//! every failure; set `L4_TEST_SEED` to replay one.

use l4_core::layout::elem_count;
use l4_core::testing::test_devices;
use l4_core::{DType, Device, Error, Tensor, bf16, f16};

use super::{cuda, reference, topk};
use crate::testing::nvrtc_or_skip;
use crate::testing::{Rng, fresh_seed};
use crate::{TOPK, compile_cubin};

/// The devices to run on: the CPU, plus CUDA device 0 when it is usable and NVRTC loads.
fn devices(test: &str) -> Vec<Device> {
    test_devices()
        .into_iter()
        .filter(|d| !d.is_cuda() || nvrtc_or_skip(test))
        .collect()
}

/// f32 bit patterns that stress the ranking: NaNs of both signs and several payloads, ±∞, ±0,
/// the smallest subnormals, ±max, and small integers that tie often.
const F32_SPECIALS: [u32; 14] = [
    0x7fc0_0000,
    0xffc0_0000,
    0x7f80_0001,
    0x7f80_0000,
    0xff80_0000,
    0x0000_0000,
    0x8000_0000,
    0x0000_0001,
    0x8000_0001,
    0x7f7f_ffff,
    0xff7f_ffff,
    0x3f80_0000,
    0xbf80_0000,
    0x4000_0000,
];

/// The same for 16-bit formats (f16 bit patterns; bf16 reuses the f32 ones' top halves).
const F16_SPECIALS: [u16; 13] = [
    0x7e00, 0xfe00, 0x7c01, 0x7c00, 0xfc00, 0x0000, 0x8000, 0x0001, 0x8001, 0x7bff, 0x3c00, 0xbc00, 0x4000,
];

/// A host row-major tensor of `shape` and `dtype` whose elements are, at random, special
/// values (above), one of a few repeated values (ties), or random bit patterns.
fn tricky_tensor(shape: &[usize], dtype: DType, rng: &mut Rng) -> Tensor {
    let n = elem_count(shape);
    // A small pool of repeated values per tensor, so equal values are common.
    let pool: Vec<u32> = (0..3).map(|_| rng.next() as u32).collect();
    let mut bits32 = || match rng.below(4) {
        0 => rng.pick(&F32_SPECIALS),
        1 => rng.pick(&pool),
        _ => rng.next() as u32,
    };
    match dtype {
        DType::F32 => Tensor::from_vec((0..n).map(|_| f32::from_bits(bits32())).collect(), shape, Device::Cpu),
        DType::BF16 => Tensor::from_vec(
            (0..n).map(|_| bf16::from_bits((bits32() >> 16) as u16)).collect(),
            shape,
            Device::Cpu,
        ),
        DType::F16 => {
            let pool16: Vec<u16> = (0..3).map(|_| rng.next() as u16).collect();
            Tensor::from_vec(
                (0..n)
                    .map(|_| {
                        f16::from_bits(match rng.below(4) {
                            0 => rng.pick(&F16_SPECIALS),
                            1 => rng.pick(&pool16),
                            _ => rng.next() as u16,
                        })
                    })
                    .collect(),
                shape,
                Device::Cpu,
            )
        }
        other => panic!("no tricky {other} tensors"),
    }
    .unwrap()
}

/// The elements as little-endian bytes, row-major.
fn host_bytes(t: &Tensor) -> Vec<u8> {
    let host = t.to_device(Device::Cpu).unwrap();
    host.cpu_storage("test").unwrap().gather(host.layout()).to_le_bytes()
}

/// Asserts that the `(values, indices)` pair equals the reference's exactly.
#[track_caller]
fn assert_same(got: &(Tensor, Tensor), want: &(Tensor, Tensor), context: &str) {
    assert_eq!(got.0.shape(), want.0.shape(), "{context}: values shape");
    assert_eq!(got.1.shape(), want.1.shape(), "{context}: indices shape");
    assert_eq!(
        (got.0.dtype(), got.1.dtype()),
        (want.0.dtype(), DType::I64),
        "{context}: dtypes"
    );
    let (gi, wi) = (got.1.to_vec::<i64>().unwrap(), want.1.to_vec::<i64>().unwrap());
    if let Some(p) = gi.iter().zip(&wi).position(|(a, b)| a != b) {
        panic!(
            "{context}: indices differ first at flat output {p}: got {}, want {}",
            gi[p], wi[p]
        );
    }
    let (gv, wv) = (host_bytes(&got.0), host_bytes(&want.0));
    if let Some(p) = gv.iter().zip(&wv).position(|(a, b)| a != b) {
        panic!("{context}: value bytes differ first at byte {p}");
    }
}

#[test]
fn kernel_names_round_k_up_to_a_power_of_two() {
    assert_eq!(cuda::function_name(DType::F32, 1).unwrap(), "topk_f32_k1");
    assert_eq!(cuda::function_name(DType::BF16, 3).unwrap(), "topk_bf16_k4");
    assert_eq!(cuda::function_name(DType::F16, 17).unwrap(), "topk_f16_k32");
    assert_eq!(cuda::function_name(DType::F32, 32).unwrap(), "topk_f32_k32");
    assert!(cuda::function_name(DType::F32, 33).is_err());
    assert!(cuda::function_name(DType::F32, 0).is_err());
    assert!(cuda::function_name(DType::I32, 4).is_err());
}

#[test]
fn nan_first_then_descending_with_ties_to_the_lower_index_on_every_device() {
    for device in devices("nan_first_then_descending_with_ties_to_the_lower_index_on_every_device") {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let values = [
                3.0,
                f32::NAN,
                f32::INFINITY,
                -0.0,
                0.0,
                3.0,
                f32::NEG_INFINITY,
                f32::NAN,
            ];
            let x = Tensor::from_f32_vec(values.to_vec(), &[8], dtype, device).unwrap();
            let (v, i) = topk(&x, 8).unwrap();
            assert_eq!(
                i.to_vec::<i64>().unwrap(),
                vec![1, 7, 2, 0, 5, 3, 4, 6],
                "{device} {dtype}"
            );
            let v = v.to_f32_vec().unwrap();
            assert!(v[0].is_nan() && v[1].is_nan(), "{device} {dtype}: {v:?}");
            assert_eq!(v[2..5], [f32::INFINITY, 3.0, 3.0], "{device} {dtype}");
            assert!(
                v[5] == 0.0 && v[5].is_sign_negative(),
                "-0 keeps its sign and its place"
            );
            assert!(v[6] == 0.0 && v[6].is_sign_positive());
            assert_eq!(v[7], f32::NEG_INFINITY);
            let (v1, i1) = topk(&x, 3).unwrap();
            assert_eq!(i1.to_vec::<i64>().unwrap(), vec![1, 7, 2], "{device} {dtype}");
            assert_eq!(v1.shape(), &[3]);
        }
    }
}

#[test]
fn topk_matches_the_cpu_on_every_device() {
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    let ks = [1, 2, 3, 5, 8, 9, 16, 17, 31, 32];
    for device in devices("topk_matches_the_cpu_on_every_device") {
        for case in 0..30 {
            let dtype = [DType::F32, DType::F16, DType::BF16][case % 3];
            let n = rng.pick(&[1, 3, 17, 33, 129, 1000]);
            let k = ks[rng.below(ks.len())].min(n);
            let mut shape: Vec<usize> = (0..rng.below(3)).map(|_| rng.pick(&[1, 3, 17])).collect();
            shape.push(n);
            let x = tricky_tensor(&shape, dtype, &mut rng);
            let want = reference::topk(&x, k).unwrap();
            let got = topk(&x.to_device(device).unwrap(), k).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(got.0.device(), device);
            assert_same(
                &got,
                &want,
                &format!("seed {seed}, {device}, topk {dtype} {shape:?} k = {k}"),
            );
        }
    }
}

#[test]
fn many_rows_cover_the_grid_stride_loop() {
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    for device in devices("many_rows_cover_the_grid_stride_loop") {
        // More rows than one grid pass covers on an H100 (132 SMs · 16 blocks · 4 rows).
        let x = tricky_tensor(&[9000, 33], DType::BF16, &mut rng);
        for k in [1, 4, 32] {
            let want = reference::topk(&x, k).unwrap();
            let got = topk(&x.to_device(device).unwrap(), k).unwrap();
            assert_same(&got, &want, &format!("seed {seed}, {device}, [9000, 33] k = {k}"));
        }
    }
}

#[test]
fn bad_arguments_are_errors_on_every_device() {
    for device in devices("bad_arguments_are_errors_on_every_device") {
        let x = Tensor::zeros(&[2, 5], DType::F32, device).unwrap();
        assert!(matches!(topk(&x, 0), Err(Error::InvalidArgument { .. })), "{device}");
        assert!(matches!(topk(&x, 6), Err(Error::InvalidArgument { .. })), "{device}");
        let scalar = Tensor::full(1.0, &[], DType::F32, device).unwrap();
        assert!(matches!(topk(&scalar, 1), Err(Error::BadShape { .. })), "{device}");
    }
}

#[test]
fn gpu_limits_are_errors() {
    let Some(device) = devices("gpu_limits_are_errors").into_iter().find(|d| d.is_cuda()) else {
        eprintln!("skipping gpu_limits_are_errors: no usable CUDA device");
        return;
    };
    let x = Tensor::zeros(&[3, 40], DType::F32, device).unwrap();
    let err = topk(&x, 33).unwrap_err();
    assert!(err.to_string().contains("k <= 32"), "{err}");
    assert!(topk(&x, 32).is_ok());
    let ints = Tensor::zeros(&[3, 40], DType::I32, device).unwrap();
    assert!(matches!(topk(&ints, 2), Err(Error::DTypeMismatch { .. })));
    let strided = Tensor::zeros(&[40, 3], DType::F32, device)
        .unwrap()
        .transpose(0, 1)
        .unwrap();
    let err = topk(&strided, 2).unwrap_err();
    assert!(err.to_string().contains("contiguous"), "{err}");
    // The CPU takes what the GPU refuses.
    assert!(topk(&x.to_device(Device::Cpu).unwrap(), 33).is_ok());
}

#[test]
fn compiles_for_every_declared_arch_without_spills() {
    if !nvrtc_or_skip("compiles_for_every_declared_arch_without_spills") {
        return;
    }
    for arch in TOPK.archs {
        let compiled = compile_cubin(&TOPK, arch, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(compiled.spill_bytes(), 0, "{}", compiled.log);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for k in [1, 2, 4, 8, 16, 32] {
                let name = cuda::function_name(dtype, k).unwrap();
                let stats = compiled.functions.iter().find(|f| f.name == name);
                let stats = stats.unwrap_or_else(|| panic!("{arch}: no {name} in the log:\n{}", compiled.log));
                // The register list must stay in registers: no stack frame, no local memory.
                assert_eq!(stats.stack_bytes, 0, "{name}: {stats:?}");
                assert!(stats.registers <= 255, "{name}: {stats:?}");
            }
        }
    }
}

/// `rank_key` of `topk.cu`, in Rust: NaN → max, ±0 → 0x80000000, otherwise the sign-flipped
/// bits.
fn rank_key(x: f32) -> u32 {
    if x.is_nan() {
        return u32::MAX;
    }
    if x == 0.0 {
        return 0x8000_0000;
    }
    let bits = x.to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// The kernel's algorithm on one row, lane by lane, in Rust: per-lane lists of the KMAX
/// largest rank words, then k rounds of "largest head wins, its lane moves to its next entry".
/// Returns the indices.
fn kernel_model(row: &[f32], k: usize) -> Vec<i64> {
    let kmax = k.next_power_of_two();
    let mut lanes = vec![vec![0u64; kmax]; 32];
    for (i, &x) in row.iter().enumerate() {
        let top = &mut lanes[i % 32];
        let mut w = (u64::from(rank_key(x)) << 32) | u64::from(u32::MAX - i as u32);
        if w > top[kmax - 1] {
            for slot in top.iter_mut() {
                let hi = (*slot).max(w);
                w = (*slot).min(w);
                *slot = hi;
            }
        }
    }
    // Entries each lane has given out; its head is top[used], or 0 past the end.
    let mut used = [0usize; 32];
    (0..k)
        .map(|_| {
            let head = |lane: usize| lanes[lane].get(used[lane]).copied().unwrap_or(0);
            let best = (0..32).map(head).max().unwrap();
            assert_ne!(best, 0, "a round found no element");
            let winners: Vec<usize> = (0..32).filter(|&lane| head(lane) == best).collect();
            assert_eq!(winners.len(), 1, "rank words are unique");
            used[winners[0]] += 1;
            i64::from(u32::MAX - best as u32)
        })
        .collect()
}

#[test]
fn the_kernels_rank_words_and_merge_reproduce_the_cpu_ranking() {
    // Host-side check of the device algorithm (the GPU tests run the kernel itself).
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    for case in 0..200 {
        let dtype = [DType::F32, DType::F16, DType::BF16][case % 3];
        let n = rng.pick(&[1, 2, 31, 32, 33, 64, 129, 1000]);
        let k = rng.pick(&[1, 2, 3, 7, 8, 16, 17, 32]).min(n);
        let x = tricky_tensor(&[n], dtype, &mut rng);
        let want = reference::topk(&x, k).unwrap().1.to_vec::<i64>().unwrap();
        let got = kernel_model(&x.to_f32_vec().unwrap(), k);
        assert_eq!(got, want, "seed {seed}, {dtype} n = {n}, k = {k}");
    }
    // The key order, directly: NaN > +inf > max > 1 > min subnormal > +0 = -0 > ... > -inf.
    let ladder = [
        f32::NAN,
        f32::INFINITY,
        f32::MAX,
        1.0,
        f32::from_bits(1),
        0.0,
        -f32::from_bits(1),
        -1.0,
        f32::MIN,
    ];
    for pair in ladder.windows(2) {
        assert!(rank_key(pair[0]) > rank_key(pair[1]), "{pair:?}");
    }
    assert_eq!(rank_key(-0.0), rank_key(0.0));
    assert_eq!(rank_key(f32::from_bits(0xffc0_0001)), rank_key(f32::NAN));
    assert!(rank_key(f32::NEG_INFINITY) > 0, "0 marks an empty slot");
}
