//! embedding, index_select and cat on every device (CPU always; CUDA when usable, see
//! `l4_core::testing::test_devices`), compared byte for byte with the CPU reference on fresh
//! random inputs. Inputs are random bytes, so every bit pattern of every dtype (NaN payloads,
//! signed zeros, subnormals, FP8 codes) must come through unchanged. The seed is printed in
//! every failure; set `L4_TEST_SEED` to replay one.

use l4_core::layout::elem_count;
use l4_core::testing::test_devices;
use l4_core::{CpuStorage, DType, Device, Error, Tensor};

use super::{cat, contiguous, cuda, embedding, index_select, reference};
use crate::elementwise::cuda::{Plan, plan};
use crate::testing::nvrtc_or_skip;
use crate::testing::{Rng, fresh_seed};
use crate::{GATHER, compile_cubin};

/// The devices to run on: the CPU, plus CUDA device 0 when it is usable and NVRTC loads
/// (`L4_REQUIRE_GPU=1` turns a missing GPU, and `CI` a missing NVRTC, into a failure).
fn devices(test: &str) -> Vec<Device> {
    test_devices()
        .into_iter()
        .filter(|d| !d.is_cuda() || nvrtc_or_skip(test))
        .collect()
}

/// Sizes off every power of two, and 1.
const ODD_SIZES: [usize; 5] = [1, 3, 17, 33, 129];

/// A host tensor of random bytes (bools as 0/1).
fn random_tensor(shape: &[usize], dtype: DType, rng: &mut Rng) -> Tensor {
    let mut bytes: Vec<u8> = (0..elem_count(shape) * dtype.size_in_bytes())
        .map(|_| rng.next() as u8)
        .collect();
    if dtype == DType::Bool {
        bytes.iter_mut().for_each(|b| *b &= 1);
    }
    Tensor::from_cpu_storage(CpuStorage::from_le_bytes(dtype, &bytes).unwrap(), shape).unwrap()
}

/// Random ids in `0..size` of dtype I32 or I64.
fn random_ids(shape: &[usize], size: usize, dtype: DType, rng: &mut Rng) -> Tensor {
    let ids: Vec<i64> = (0..elem_count(shape)).map(|_| rng.below(size) as i64).collect();
    match dtype {
        DType::I32 => Tensor::from_vec(ids.iter().map(|&i| i as i32).collect(), shape, Device::Cpu).unwrap(),
        _ => Tensor::from_vec(ids, shape, Device::Cpu).unwrap(),
    }
}

/// The elements of a tensor (any device, any layout) as little-endian bytes, row-major.
fn host_bytes(t: &Tensor) -> Vec<u8> {
    let host = t.to_device(Device::Cpu).unwrap();
    host.cpu_storage("test").unwrap().gather(host.layout()).to_le_bytes()
}

/// Asserts that `got` has `want`'s shape and dtype and the same bytes.
#[track_caller]
fn assert_same(got: &Tensor, want: &Tensor, context: &str) {
    assert_eq!(
        (got.shape(), got.dtype()),
        (want.shape(), want.dtype()),
        "{context}: shape or dtype"
    );
    let (g, w) = (host_bytes(got), host_bytes(want));
    if let Some(i) = g.iter().zip(&w).position(|(a, b)| a != b) {
        let e = i / want.dtype().size_in_bytes().max(1);
        panic!(
            "{context}: first differing byte {i} (element {e}): got {:#04x}, want {:#04x}",
            g[i], w[i]
        );
    }
}

/// `t` on `device`. CUDA refuses zero-byte allocations, so there an empty tensor is an empty
/// view of a one-element buffer.
fn on_device(t: &Tensor, device: Device) -> Tensor {
    if t.elem_count() > 0 || !device.is_cuda() {
        return t.to_device(device).unwrap();
    }
    let one = Tensor::zeros(&[1], t.dtype(), Device::Cpu).unwrap();
    one.to_device(device)
        .unwrap()
        .narrow(0, 0, 0)
        .unwrap()
        .reshape(t.shape())
        .unwrap()
}

/// `t` on `device` as an offset (but contiguous) view: the data sits after `pad` leading rows
/// of junk along dimension 0, so base addresses are not aligned to the element size times 16.
fn offset_view(t: &Tensor, pad: usize, device: Device, rng: &mut Rng) -> Tensor {
    if pad == 0 || t.rank() == 0 {
        return t.to_device(device).unwrap();
    }
    let mut shape = t.shape().to_vec();
    shape[0] = pad;
    let junk = random_tensor(&shape, t.dtype(), rng);
    let padded = Tensor::cat(&[&junk, t], 0).unwrap().to_device(device).unwrap();
    let view = padded.narrow(0, pad, t.shape()[0]).unwrap();
    assert!(view.is_contiguous());
    view
}

#[test]
fn word_sizes_follow_the_common_alignment() {
    assert_eq!(cuda::word_size(&[10240, 0x7000_0000_0000, 0x7000_0000_0100]), 16);
    assert_eq!(cuda::word_size(&[24, 0x1000]), 8);
    assert_eq!(cuda::word_size(&[64, 0x1004]), 4);
    assert_eq!(cuda::word_size(&[34, 0x1000]), 2);
    assert_eq!(cuda::word_size(&[17, 0x1000]), 1);
    assert_eq!(cuda::word_size(&[]), 16);
    assert_eq!(cuda::gather_function_name(DType::I32, 16).unwrap(), "gather_i32_w16");
    assert_eq!(cuda::gather_function_name(DType::I64, 1).unwrap(), "gather_i64_w1");
    assert!(cuda::gather_function_name(DType::F32, 4).is_err());
    assert!(cuda::gather_function_name(DType::I64, 3).is_err());
}

#[test]
fn cpu_embedding_copies_rows_exactly() {
    // Row 1 holds -0, a NaN with a payload and the smallest subnormal: all copied bit for bit.
    let bits = [
        0x3f80_0000u32,
        0x4000_0000,
        0x8000_0000,
        0x7fc0_1234,
        0x0000_0001,
        0x4040_0000,
    ];
    let table = Tensor::from_vec(bits.map(f32::from_bits).to_vec(), &[3, 2], Device::Cpu).unwrap();
    let ids = Tensor::from_vec(vec![1i32, 0, 1], &[3], Device::Cpu).unwrap();
    let out = embedding(&table, &ids).unwrap();
    assert_eq!(out.shape(), &[3, 2]);
    let got: Vec<u32> = out.to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect();
    assert_eq!(
        got,
        vec![
            0x8000_0000,
            0x7fc0_1234,
            0x3f80_0000,
            0x4000_0000,
            0x8000_0000,
            0x7fc0_1234
        ]
    );
}

#[test]
fn embedding_matches_the_cpu_on_every_device() {
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    for device in devices("embedding_matches_the_cpu_on_every_device") {
        for case in 0..12 {
            let dtype = DType::ALL[case % DType::ALL.len()];
            let (v, d) = (rng.pick(&ODD_SIZES), rng.pick(&[1, 3, 8, 17, 33, 129, 640]));
            let ids_shapes: [&[usize]; 5] = [&[], &[1], &[5], &[2, 3], &[3, 17]];
            let ids_shape = rng.pick(&ids_shapes);
            let ids_dtype = rng.pick(&[DType::I32, DType::I64]);
            let table = random_tensor(&[v, d], dtype, &mut rng);
            let ids = random_ids(ids_shape, v, ids_dtype, &mut rng);
            let want = reference::embedding(&table, &ids).unwrap();
            let pad = rng.below(3);
            let got = embedding(
                &offset_view(&table, pad, device, &mut rng),
                &ids.to_device(device).unwrap(),
            )
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(got.device(), device);
            let context = format!("seed {seed}, {device}, embedding {dtype} [{v}, {d}] (pad {pad}), ids {ids_shape:?}");
            assert_same(&got, &want, &context);
        }
    }
}

#[test]
fn embedding_accepts_strided_ids() {
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    for device in devices("embedding_accepts_strided_ids") {
        let table = random_tensor(&[17, 5], DType::BF16, &mut rng);
        // [3, 4] ids transposed to a strided [4, 3] view.
        let ids = random_ids(&[3, 4], 17, DType::I64, &mut rng);
        let want = reference::embedding(&table, &ids.transpose(0, 1).unwrap()).unwrap();
        let ids_dev = ids.to_device(device).unwrap().transpose(0, 1).unwrap();
        let got = embedding(&table.to_device(device).unwrap(), &ids_dev).unwrap();
        assert_same(&got, &want, &format!("seed {seed}, {device}, strided ids"));
    }
}

#[test]
fn index_select_matches_the_cpu_on_every_device() {
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    for device in devices("index_select_matches_the_cpu_on_every_device") {
        for case in 0..16 {
            let dtype = DType::ALL[case % DType::ALL.len()];
            let rank = 1 + rng.below(3);
            let shape: Vec<usize> = (0..rank).map(|_| rng.pick(&[1, 2, 3, 17, 33])).collect();
            let dim = rng.below(rank);
            let k = rng.pick(&[0, 1, 3, 17, 40]);
            let x = random_tensor(&shape, dtype, &mut rng);
            let idx = random_ids(&[k], shape[dim], rng.pick(&[DType::I32, DType::I64]), &mut rng);
            let want = reference::index_select(&x, dim, &idx).unwrap();
            let pad = rng.below(2);
            let got = index_select(&offset_view(&x, pad, device, &mut rng), dim, &on_device(&idx, device))
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let context = format!("seed {seed}, {device}, index_select {dtype} {shape:?} dim {dim}, {k} indices");
            assert_same(&got, &want, &context);
        }
    }
}

#[test]
fn cat_matches_the_cpu_on_every_device() {
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    for device in devices("cat_matches_the_cpu_on_every_device") {
        for case in 0..16 {
            let dtype = DType::ALL[case % DType::ALL.len()];
            let rank = 1 + rng.below(3);
            let base: Vec<usize> = (0..rank).map(|_| rng.pick(&[1, 2, 3, 17])).collect();
            let dim = rng.below(rank);
            let count = 1 + rng.below(4);
            let mut host_parts = Vec::new();
            let mut dev_parts = Vec::new();
            for _ in 0..count {
                let mut shape = base.clone();
                shape[dim] = rng.pick(&[0, 1, 3, 17, 33]);
                if shape[dim] == 0 {
                    // An empty part, as an empty view of a one-entry tensor (CUDA refuses
                    // zero-byte allocations, so empty tensors exist there only as views).
                    shape[dim] = 1;
                    let t = random_tensor(&shape, dtype, &mut rng);
                    host_parts.push(t.narrow(dim, 0, 0).unwrap());
                    dev_parts.push(t.to_device(device).unwrap().narrow(dim, 0, 0).unwrap());
                } else {
                    let t = random_tensor(&shape, dtype, &mut rng);
                    let pad = rng.below(2);
                    dev_parts.push(offset_view(&t, pad, device, &mut rng));
                    host_parts.push(t);
                }
            }
            let host_refs: Vec<&Tensor> = host_parts.iter().collect();
            let dev_refs: Vec<&Tensor> = dev_parts.iter().collect();
            let want = reference::cat(&host_refs, dim).unwrap();
            let got = cat(&dev_refs, dim).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let shapes: Vec<&[usize]> = host_parts.iter().map(|t| t.shape()).collect();
            let context = format!("seed {seed}, {device}, cat {dtype} dim {dim} of {shapes:?}");
            assert_same(&got, &want, &context);
        }
    }
}

#[test]
fn bad_operands_are_errors_on_every_device() {
    for device in devices("bad_operands_are_errors_on_every_device") {
        let on = |t: Tensor| t.to_device(device).unwrap();
        let table = on(Tensor::arange(12, DType::F32, Device::Cpu)
            .unwrap()
            .reshape(&[4, 3])
            .unwrap());
        for bad in [-1i64, 4, i64::MAX] {
            let ids = on(Tensor::from_vec(vec![0i64, bad, 2], &[3], Device::Cpu).unwrap());
            match embedding(&table, &ids) {
                Err(Error::IndexOutOfRange { index, size: 4, .. }) => assert_eq!(index, bad, "{device}"),
                other => panic!("{device}: embedding with id {bad}: {other:?}"),
            }
            match index_select(&table, 0, &ids) {
                Err(Error::IndexOutOfRange { index, size: 4, .. }) => assert_eq!(index, bad, "{device}"),
                other => panic!("{device}: index_select with index {bad}: {other:?}"),
            }
        }
        let bad32 = on(Tensor::from_vec(vec![3i32, -7], &[2], Device::Cpu).unwrap());
        assert!(
            matches!(
                index_select(&table, 1, &bad32),
                Err(Error::IndexOutOfRange { index: 3, size: 3, .. })
            ),
            "{device}"
        );
        let float_ids = on(Tensor::zeros(&[2], DType::F32, Device::Cpu).unwrap());
        assert!(
            matches!(embedding(&table, &float_ids), Err(Error::DTypeMismatch { .. })),
            "{device}"
        );
        let ids = on(Tensor::from_vec(vec![0i64], &[1], Device::Cpu).unwrap());
        let flat = table.reshape(&[12]).unwrap();
        assert!(
            matches!(embedding(&flat, &ids), Err(Error::BadShape { .. })),
            "{device}"
        );
        let ids2 = on(Tensor::from_vec(vec![0i64, 1], &[1, 2], Device::Cpu).unwrap());
        assert!(
            matches!(index_select(&table, 0, &ids2), Err(Error::BadShape { .. })),
            "{device}"
        );
        assert!(
            matches!(index_select(&table, 2, &ids), Err(Error::DimOutOfRange { .. })),
            "{device}"
        );

        let other = on(Tensor::zeros(&[4, 2], DType::F32, Device::Cpu).unwrap());
        let wide = on(Tensor::zeros(&[3, 3], DType::F32, Device::Cpu).unwrap());
        let half = on(Tensor::zeros(&[4, 3], DType::F16, Device::Cpu).unwrap());
        assert!(cat(&[&table, &other], 1).is_ok(), "{device}");
        assert!(
            matches!(cat(&[&table, &other], 0), Err(Error::ShapeMismatch { .. })),
            "{device}"
        );
        assert!(
            matches!(cat(&[&table, &wide], 1), Err(Error::ShapeMismatch { .. })),
            "{device}"
        );
        assert!(
            matches!(cat(&[&table, &half], 0), Err(Error::DTypeMismatch { .. })),
            "{device}"
        );
        assert!(
            matches!(cat(&[&table, &table], 2), Err(Error::DimOutOfRange { .. })),
            "{device}"
        );
        assert!(matches!(cat(&[], 0), Err(Error::InvalidArgument { .. })), "{device}");
    }
}

/// A random strided view of `t` (on its device): a permutation, a narrowing of every dimension
/// larger than 1, and sometimes a broadcast of a new leading dimension, described for messages.
fn random_view(t: &Tensor, rng: &mut Rng) -> (Tensor, String) {
    let mut view = t.clone();
    let mut steps = Vec::new();
    let mut dims: Vec<usize> = (0..t.rank()).collect();
    for i in (1..dims.len()).rev() {
        dims.swap(i, rng.below(i + 1));
    }
    view = view.permute(&dims).unwrap();
    steps.push(format!("permute {dims:?}"));
    for d in 0..view.rank() {
        let size = view.shape()[d];
        if size > 1 && rng.below(2) == 0 {
            let start = rng.below(size);
            let len = 1 + rng.below(size - start);
            view = view.narrow(d, start, len).unwrap();
            steps.push(format!("narrow({d}, {start}, {len})"));
        }
    }
    if rng.below(3) == 0 {
        let mut shape = vec![rng.pick(&[2, 3])];
        shape.extend_from_slice(view.shape());
        view = view.broadcast_as(&shape).unwrap();
        steps.push(format!("broadcast to {shape:?}"));
    }
    (view, steps.join(", "))
}

#[test]
fn contiguous_copies_any_view_exactly_on_every_device() {
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    for device in devices("contiguous_copies_any_view_exactly_on_every_device") {
        for case in 0..24 {
            let dtype = DType::ALL[case % DType::ALL.len()];
            let rank = 1 + rng.below(5);
            let shape: Vec<usize> = (0..rank).map(|_| rng.pick(&ODD_SIZES[..4])).collect();
            let host = random_tensor(&shape, dtype, &mut rng);
            let dev = offset_view(&host, rng.below(2), device, &mut rng);
            // The same random view of both copies: the view sequence depends only on the seed.
            let view_seed = rng.next();
            let (host_view, steps) = random_view(&host, &mut Rng(view_seed));
            let (dev_view, _) = random_view(&dev, &mut Rng(view_seed));
            let want = reference::contiguous(&host_view).unwrap();
            let got = contiguous(&dev_view).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert!(got.is_contiguous());
            let context = format!("seed {seed}, {device}, contiguous {dtype} {shape:?} after {steps}");
            assert_same(&got, &want, &context);
        }
        // A contiguous tensor comes back as itself.
        let t = Tensor::arange(6, DType::F32, device).unwrap();
        assert_same(&contiguous(&t).unwrap(), &t, "already contiguous");
    }
}

/// The rank limit of the CUDA copy: views whose dimensions cannot merge, with every dimension
/// reversed (so no two are adjacent in memory), at exactly 8 dimensions (one of them a
/// broadcast, stride 0) copy exactly in 1-, 2-, 4- and 8-byte dtypes at an offset; at 9 the CUDA
/// path is an error naming the limit (the CPU path is the reference, which copies any rank).
#[test]
fn cuda_contiguous_at_the_rank_limit() {
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    let reversed = |t: &Tensor| {
        let dims: Vec<usize> = (0..t.rank()).rev().collect();
        t.permute(&dims).unwrap()
    };
    // Seven reversed dimensions with a broadcast one (stride 0) inserted in the middle.
    let broadcast = |t: &Tensor| {
        let shape = [3, 2, 3, 4, 2, 3, 2, 3];
        reversed(t).unsqueeze(3).unwrap().broadcast_as(&shape).unwrap()
    };
    // The premise, checked on the host: these views merge to exactly 8 and 9 dimensions.
    let merged_rank = |t: &Tensor| match plan("test", t.shape(), &[t.layout().strides()]) {
        Ok(Plan::Strided(g)) => Ok(g.rank),
        Ok(Plan::Contiguous) => Ok(1),
        Err(e) => Err(e.to_string()),
    };
    let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::U8, Device::Cpu).unwrap();
    assert_eq!(merged_rank(&reversed(&zeros(&[2, 3, 2, 3, 2, 3, 2, 3]))), Ok(8));
    let seven = zeros(&[3, 2, 3, 2, 3, 2, 3]);
    assert_eq!(merged_rank(&broadcast(&seven)), Ok(8));
    assert!(merged_rank(&reversed(&zeros(&[2, 3, 2, 3, 2, 3, 2, 3, 2]))).is_err());
    for device in devices("cuda_contiguous_at_the_rank_limit")
        .into_iter()
        .filter(|d| d.is_cuda())
    {
        for dtype in [DType::U8, DType::F16, DType::F32, DType::I64] {
            let context = format!("seed {seed}, {device}, {dtype}");
            let host = random_tensor(&[2, 3, 2, 3, 2, 3, 2, 3], dtype, &mut rng);
            let dev = offset_view(&host, 1, device, &mut rng);
            assert_same(
                &contiguous(&reversed(&dev)).unwrap_or_else(|e| panic!("{context}: {e}")),
                &reference::contiguous(&reversed(&host)).unwrap(),
                &format!("{context}: 8 dimensions"),
            );
            let host = random_tensor(&[3, 2, 3, 2, 3, 2, 3], dtype, &mut rng);
            let dev = offset_view(&host, 1, device, &mut rng);
            assert_same(
                &contiguous(&broadcast(&dev)).unwrap_or_else(|e| panic!("{context}: {e}")),
                &reference::contiguous(&broadcast(&host)).unwrap(),
                &format!("{context}: 8 dimensions, one broadcast"),
            );
            let dev9 = offset_view(
                &random_tensor(&[2, 3, 2, 3, 2, 3, 2, 3, 2], dtype, &mut rng),
                1,
                device,
                &mut rng,
            );
            let err = contiguous(&reversed(&dev9)).expect_err(&context).to_string();
            assert!(err.contains("at most 8"), "{context}: {err}");
        }
    }
}

#[test]
fn gpu_rejects_strided_data_and_mixed_devices() {
    let Some(device) = devices("gpu_rejects_strided_data_and_mixed_devices")
        .into_iter()
        .find(|d| d.is_cuda())
    else {
        eprintln!("skipping gpu_rejects_strided_data_and_mixed_devices: no usable CUDA device");
        return;
    };
    let host = Tensor::arange(12, DType::F32, Device::Cpu)
        .unwrap()
        .reshape(&[4, 3])
        .unwrap();
    let gpu = host.to_device(device).unwrap();
    let strided = gpu.transpose(0, 1).unwrap();
    let ids = Tensor::from_vec(vec![0i64, 1], &[2], device).unwrap();
    for err in [
        embedding(&strided, &ids).unwrap_err(),
        index_select(&strided, 0, &ids).unwrap_err(),
        cat(&[&strided, &strided], 0).unwrap_err(),
    ] {
        assert!(err.to_string().contains("contiguous"), "{err}");
    }
    let host_ids = Tensor::from_vec(vec![0i64], &[1], Device::Cpu).unwrap();
    assert!(matches!(embedding(&gpu, &host_ids), Err(Error::DeviceMismatch { .. })));
    assert!(matches!(
        index_select(&gpu, 0, &host_ids),
        Err(Error::DeviceMismatch { .. })
    ));
    assert!(matches!(cat(&[&gpu, &host], 0), Err(Error::DeviceMismatch { .. })));
    assert!(matches!(cat(&[&host, &gpu], 0), Err(Error::DeviceMismatch { .. })));
}

#[test]
fn compiles_for_every_declared_arch_without_spills() {
    if !nvrtc_or_skip("compiles_for_every_declared_arch_without_spills") {
        return;
    }
    let mut names = vec![];
    for ids in ["i32", "i64"] {
        for w in [1, 2, 4, 8, 16] {
            names.push(format!("gather_{ids}_w{w}"));
        }
    }
    names.extend([1, 2, 4, 8, 16].map(|w| format!("copy_rows_w{w}")));
    names.extend([1, 2, 4, 8].map(|w| format!("copy_strided_w{w}")));
    for arch in GATHER.archs {
        let compiled = compile_cubin(&GATHER, arch, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(compiled.spill_bytes(), 0, "{}", compiled.log);
        for name in &names {
            let Some(stats) = crate::testing::ptxas_stats(&compiled, name) else {
                continue;
            };
            assert!(stats.registers > 0 && stats.registers <= 64, "{name}: {stats:?}");
            assert_eq!(stats.stack_bytes, 0, "{name}: {stats:?}");
        }
    }
}
