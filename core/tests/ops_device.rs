//! Every CPU op, given a tensor on a CUDA device, returns `NotImplementedOnDevice` (and mixed
//! devices `DeviceMismatch`) instead of panicking or copying silently. On a machine without
//! CUDA only the CPU half runs; set L4_REQUIRE_GPU=1 to make a missing GPU a failure.

use l4_core::testing::{Tolerance, assert_tensor_close, test_devices};
use l4_core::{DType, Device, Error, Result, Tensor};

/// Runs every op on tensors of `device`, naming each result.
fn all_ops(device: Device) -> Vec<(&'static str, Result<()>)> {
    let x = Tensor::randn(&[3, 4], DType::F32, 1, device).unwrap();
    let w = Tensor::randn(&[4], DType::F32, 2, device).unwrap();
    let ids = Tensor::from_vec(vec![0i64, 2], &[2], device).unwrap();
    let mask = Tensor::from_vec(vec![true, false, true, false], &[4], device).unwrap();
    let ok = |r: Result<Tensor>| r.map(|_| ());
    vec![
        ("matmul", ok(x.matmul(&x.transpose(0, 1).unwrap()))),
        ("add", ok(x.add(&w))),
        ("sub", ok(x.sub(&w))),
        ("mul", ok(x.mul(&w))),
        ("div", ok(x.div(&w))),
        ("maximum", ok(x.maximum(&w))),
        ("minimum", ok(x.minimum(&w))),
        ("neg", ok(x.neg())),
        ("exp", ok(x.exp())),
        ("sqrt", ok(x.sqrt())),
        ("silu", ok(x.silu())),
        ("gelu", ok(x.gelu())),
        ("sigmoid", ok(x.sigmoid())),
        ("tanh", ok(x.tanh())),
        ("square", ok(x.square())),
        ("recip", ok(x.recip())),
        ("affine", ok(x.affine(2.0, 1.0))),
        ("scale", ok(x.scale(2.0))),
        ("sum", ok(x.sum(1, false))),
        ("mean", ok(x.mean(0, true))),
        ("max", ok(x.max(1, false))),
        ("min", ok(x.min(1, false))),
        ("argmax", ok(x.argmax(1, false))),
        ("argmin", ok(x.argmin(1, false))),
        ("topk", x.topk(2).map(|_| ())),
        ("softmax", ok(x.softmax(1))),
        ("log_softmax", ok(x.log_softmax(0))),
        ("rms_norm", ok(x.rms_norm(Some(&w), 1e-5))),
        ("layer_norm", ok(x.layer_norm(Some(&w), Some(&w), 1e-5))),
        ("embedding", ok(ids.embedding(&x))),
        ("index_select", ok(x.index_select(1, &ids))),
        ("cat", ok(Tensor::cat(&[&x, &x], 0))),
        ("masked_fill", ok(x.masked_fill(&mask, 0.0))),
        ("lt", ok(x.lt(&w))),
        ("eq", ok(x.eq(&w))),
    ]
}

#[test]
fn every_op_runs_on_the_cpu_and_refuses_cuda_tensors() {
    for device in test_devices() {
        for (name, result) in all_ops(device) {
            match device {
                Device::Cpu => assert!(result.is_ok(), "{name} on cpu: {result:?}"),
                Device::Cuda(_) => assert!(
                    matches!(result, Err(Error::NotImplementedOnDevice { device: d, .. }) if d == device),
                    "{name} on {device}: {result:?}"
                ),
            }
        }
    }
}

#[test]
fn mixed_devices_are_a_device_mismatch() {
    for device in test_devices().into_iter().filter(|d| d.is_cuda()) {
        let c = Tensor::randn(&[2, 2], DType::F32, 1, Device::Cpu).unwrap();
        let g = c.to_device(device).unwrap();
        assert!(matches!(c.add(&g), Err(Error::DeviceMismatch { .. })));
        assert!(matches!(c.matmul(&g), Err(Error::DeviceMismatch { .. })));
        assert!(matches!(Tensor::cat(&[&c, &g], 0), Err(Error::DeviceMismatch { .. })));
        // Seeded inputs are the same on every device.
        for dtype in [DType::F32, DType::BF16, DType::F8E4M3] {
            let on_gpu = Tensor::randn(&[5, 7], dtype, 9, device).unwrap();
            assert_eq!(on_gpu.device(), device);
            let on_cpu = Tensor::randn(&[5, 7], dtype, 9, Device::Cpu).unwrap();
            assert_tensor_close(&on_gpu, &on_cpu, Tolerance::exact());
        }
    }
}
