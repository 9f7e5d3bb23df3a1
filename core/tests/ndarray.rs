//! Tensor ↔ ndarray conversions: logical element order on both sides, whatever the layout.

use l4_core::{DType, Device, Error, F8E4M3, Tensor, bf16};
use ndarray::{Array, ArrayD, IxDyn, ShapeBuilder, s};

fn arange_array(shape: &[usize]) -> ArrayD<f32> {
    let n: usize = shape.iter().product();
    Array::from_iter((0..n).map(|i| i as f32))
        .into_shape_with_order(IxDyn(shape))
        .unwrap()
}

#[test]
fn round_trips_every_rank() {
    for shape in [&[][..], &[5], &[2, 3], &[2, 0, 3], &[1, 2, 3, 4]] {
        let array = arange_array(shape);
        let t = Tensor::from_ndarray(&array, Device::Cpu).unwrap();
        assert_eq!(t.shape(), shape);
        assert_eq!(t.dtype(), DType::F32);
        assert_eq!(t.to_vec::<f32>().unwrap(), array.iter().copied().collect::<Vec<_>>());
        assert_eq!(t.to_ndarray::<f32>().unwrap(), array);
    }
}

#[test]
fn round_trips_other_element_types() {
    let ints = Array::from_shape_vec((2, 2), vec![1i64, -2, 3, i64::MAX]).unwrap();
    let t = Tensor::from_ndarray(&ints, Device::Cpu).unwrap();
    assert_eq!(t.dtype(), DType::I64);
    assert_eq!(t.to_ndarray::<i64>().unwrap(), ints.into_dyn());

    let bools = Array::from_vec(vec![true, false, true]);
    let t = Tensor::from_ndarray(&bools, Device::Cpu).unwrap();
    assert_eq!(t.to_ndarray::<bool>().unwrap(), bools.into_dyn());

    let halves = Array::from_vec(vec![bf16::from_f32(1.5), bf16::from_f32(-0.25)]);
    let t = Tensor::from_ndarray(&halves, Device::Cpu).unwrap();
    assert_eq!(t.dtype(), DType::BF16);
    assert_eq!(t.to_ndarray::<bf16>().unwrap(), halves.into_dyn());

    let fp8 = Array::from_vec((0..=255u8).map(F8E4M3::from_bits).collect());
    let t = Tensor::from_ndarray(&fp8, Device::Cpu).unwrap();
    let back = t.to_ndarray::<F8E4M3>().unwrap();
    assert!(back.iter().zip(&fp8).all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn non_standard_layout_arrays_convert_in_logical_order() {
    let array = arange_array(&[3, 4, 5]);
    let transposed = array.view().permuted_axes(IxDyn(&[2, 0, 1]));
    assert!(!transposed.is_standard_layout());
    let t = Tensor::from_ndarray(&transposed, Device::Cpu).unwrap();
    assert_eq!(t.shape(), &[5, 3, 4]);
    assert!(t.is_contiguous());
    assert_eq!(
        t.to_vec::<f32>().unwrap(),
        transposed.iter().copied().collect::<Vec<_>>()
    );
    assert_eq!(t.to_ndarray::<f32>().unwrap(), transposed);

    // A stepped, negatively strided slice.
    let sliced = array.slice(s![.., 1..4;2, ..;-1]);
    let t = Tensor::from_ndarray(&sliced, Device::Cpu).unwrap();
    assert_eq!(t.shape(), sliced.shape());
    assert_eq!(t.to_ndarray::<f32>().unwrap(), sliced.into_dyn());

    // Fortran-order storage.
    let f_order = Array::from_shape_vec((2, 3).f(), vec![0f32, 1., 2., 3., 4., 5.]).unwrap();
    let t = Tensor::from_ndarray(&f_order, Device::Cpu).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), vec![0., 2., 4., 1., 3., 5.]);
}

#[test]
fn non_contiguous_tensors_convert_in_logical_order() {
    let base = Tensor::arange(24, DType::F32, Device::Cpu)
        .unwrap()
        .reshape(&[2, 3, 4])
        .unwrap();
    let array = arange_array(&[2, 3, 4]);

    let transposed = base.transpose(0, 2).unwrap();
    assert!(!transposed.is_contiguous());
    let expected = array.view().permuted_axes(IxDyn(&[2, 1, 0])).to_owned();
    let got = transposed.to_ndarray::<f32>().unwrap();
    assert_eq!(got, expected);
    assert!(got.is_standard_layout());

    let narrowed = base.narrow(2, 1, 2).unwrap();
    assert_eq!(
        narrowed.to_ndarray::<f32>().unwrap(),
        array.slice(s![.., .., 1..3]).into_dyn()
    );

    let broadcast = Tensor::arange(4, DType::F32, Device::Cpu)
        .unwrap()
        .broadcast_as(&[3, 4])
        .unwrap();
    let expected = Array::from_iter((0..4).map(|i| i as f32))
        .broadcast((3, 4))
        .unwrap()
        .to_owned()
        .into_dyn();
    assert_eq!(broadcast.to_ndarray::<f32>().unwrap(), expected);
}

#[test]
fn dtype_mismatch_is_an_error() {
    let t = Tensor::arange(3, DType::I32, Device::Cpu).unwrap();
    let err = t.to_ndarray::<f32>().unwrap_err();
    assert!(
        matches!(
            err,
            Error::DTypeMismatch {
                got: DType::I32,
                expected: Some(DType::F32),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(t.to_ndarray::<i32>().is_ok());
}

/// Device tensors convert too; skipped where no CUDA device is usable.
#[test]
fn cuda_tensors_convert_when_a_device_is_present() {
    if l4_core::cuda::backend(0).is_err() {
        eprintln!("no CUDA device: skipped");
        return;
    }
    let array = arange_array(&[3, 4]);
    let t = Tensor::from_ndarray(&array.t(), Device::Cuda(0)).unwrap();
    assert_eq!(t.device(), Device::Cuda(0));
    assert_eq!(t.to_ndarray::<f32>().unwrap(), array.t());
    assert!(t.to_ndarray::<i32>().is_err());
}
