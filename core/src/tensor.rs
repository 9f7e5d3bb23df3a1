//! The tensor: shared storage, a strided layout over it, its dtype and device.

use std::fmt;
use std::sync::Arc;

use crate::dtype::Element;
use crate::layout::{Layout, Shape, elem_count};
use crate::storage::{CpuStorage, CudaStorage, Storage};
use crate::{DType, Device, Error, Result, cuda};

/// An n-dimensional array. Cloning is cheap (the storage is shared); views share storage too.
/// Tensors are immutable: every op returns a new tensor.
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    layout: Layout,
    device: Device,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor[{:?}, {}, {}]", self.shape(), self.dtype(), self.device)
    }
}

impl Tensor {
    /// A contiguous tensor over host storage. Fails when the element count differs from the
    /// shape's.
    pub fn from_cpu_storage(storage: CpuStorage, shape: &[usize]) -> Result<Self> {
        if storage.len() != elem_count(shape) {
            return Err(Error::BadShape {
                op: "from_cpu_storage",
                shape: shape.to_vec(),
                msg: format!("{} elements given", storage.len()),
            });
        }
        Ok(Tensor {
            storage: Arc::new(Storage::Cpu(storage)),
            layout: Layout::contiguous(shape),
            device: Device::Cpu,
        })
    }

    /// A contiguous tensor over device storage (for kernels that allocate their outputs).
    pub fn from_cuda_storage(storage: CudaStorage, shape: &[usize]) -> Result<Self> {
        if storage.len() != elem_count(shape) {
            return Err(Error::BadShape {
                op: "from_cuda_storage",
                shape: shape.to_vec(),
                msg: format!("{} elements given", storage.len()),
            });
        }
        let device = Device::Cuda(storage.ordinal);
        Ok(Tensor {
            storage: Arc::new(Storage::Cuda(storage)),
            layout: Layout::contiguous(shape),
            device,
        })
    }

    /// A tensor from a vector of elements in row-major order.
    pub fn from_vec<T: Element>(values: Vec<T>, shape: &[usize], device: Device) -> Result<Self> {
        Tensor::from_cpu_storage(T::into_storage(values), shape)?.to_device(device)
    }

    /// A tensor from a slice of elements in row-major order.
    pub fn from_slice<T: Element>(values: &[T], shape: &[usize], device: Device) -> Result<Self> {
        Tensor::from_vec(values.to_vec(), shape, device)
    }

    /// A tensor of `dtype` from f32 values, rounded once into the dtype.
    pub fn from_f32_vec(values: Vec<f32>, shape: &[usize], dtype: DType, device: Device) -> Result<Self> {
        Tensor::from_cpu_storage(CpuStorage::from_f32_vec(dtype, values), shape)?.to_device(device)
    }

    /// A tensor filled with `value` converted into `dtype`.
    pub fn full(value: f64, shape: &[usize], dtype: DType, device: Device) -> Result<Self> {
        let storage = CpuStorage::from_f64_iter(dtype, std::iter::repeat_n(value, elem_count(shape)));
        Tensor::from_cpu_storage(storage, shape)?.to_device(device)
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize], dtype: DType, device: Device) -> Result<Self> {
        Tensor::full(0.0, shape, dtype, device)
    }

    /// `[0, 1, ..., n-1]` as a 1-D tensor.
    pub fn arange(n: usize, dtype: DType, device: Device) -> Result<Self> {
        let storage = CpuStorage::from_f64_iter(dtype, (0..n).map(|i| i as f64));
        Tensor::from_cpu_storage(storage, &[n])?.to_device(device)
    }

    /// The logical shape.
    pub fn shape(&self) -> &[usize] {
        self.layout.shape()
    }

    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.layout.rank()
    }

    /// The size of dimension `dim`.
    pub fn dim(&self, dim: usize) -> Result<usize> {
        self.shape().get(dim).copied().ok_or(Error::DimOutOfRange {
            op: "dim",
            dim,
            rank: self.rank(),
        })
    }

    /// The number of elements.
    pub fn elem_count(&self) -> usize {
        self.layout.elem_count()
    }

    /// The element dtype.
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }

    /// Where the storage lives.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The strided layout over the storage.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The underlying (possibly shared, possibly larger) storage.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Whether the view is row-major without gaps.
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }

    /// The host storage, or an error naming `op` when the tensor is on a CUDA device.
    pub fn cpu_storage(&self, op: &'static str) -> Result<&CpuStorage> {
        match &*self.storage {
            Storage::Cpu(s) => Ok(s),
            Storage::Cuda(_) => Err(Error::NotImplementedOnDevice {
                op,
                device: self.device,
            }),
        }
    }

    /// The device storage, or an error naming `op` when the tensor is on the host.
    pub fn cuda_storage(&self, op: &'static str) -> Result<&CudaStorage> {
        match &*self.storage {
            Storage::Cuda(s) => Ok(s),
            Storage::Cpu(_) => Err(Error::invalid(
                op,
                "expected a tensor on a CUDA device, got one on the cpu",
            )),
        }
    }

    fn with_layout(&self, layout: Layout) -> Tensor {
        Tensor {
            storage: self.storage.clone(),
            layout,
            device: self.device,
        }
    }

    /// Host storage holding exactly this tensor's elements, contiguous. Copies from the device
    /// when needed.
    fn host_elements(&self) -> Result<CpuStorage> {
        match &*self.storage {
            Storage::Cpu(s) => Ok(s.gather(&self.layout)),
            Storage::Cuda(s) => {
                let backend = cuda::backend(s.ordinal)?;
                let bytes = backend.stream().clone_dtoh(&s.bytes)?;
                Ok(CpuStorage::from_le_bytes(s.dtype, &bytes)?.gather(&self.layout))
            }
        }
    }

    /// The elements in row-major order. `T` must be the tensor's dtype.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype() {
            return Err(Error::DTypeMismatch {
                op: "to_vec",
                got: self.dtype(),
                expected: Some(T::DTYPE),
            });
        }
        let host = self.host_elements()?;
        Ok(T::slice_of(&host).map(<[T]>::to_vec).unwrap_or_default())
    }

    /// The elements widened to f64, row-major, from any dtype.
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        let host = self.host_elements()?;
        Ok(host.to_f64_vec(&Layout::contiguous(&[host.len()])))
    }

    /// The elements as f32, row-major, from any dtype.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let host = self.host_elements()?;
        Ok(host.to_f32_vec(&Layout::contiguous(&[host.len()])))
    }

    /// The single element of a one-element tensor, as f64.
    pub fn to_scalar_f64(&self) -> Result<f64> {
        if self.elem_count() != 1 {
            return Err(Error::BadShape {
                op: "to_scalar",
                shape: self.shape().to_vec(),
                msg: "expected one element".into(),
            });
        }
        Ok(self.to_f64_vec()?[0])
    }

    /// A copy on `device` (the same tensor when it is already there). The copy is contiguous.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device {
            return Ok(self.clone());
        }
        let host = self.host_elements()?;
        match device {
            Device::Cpu => Tensor::from_cpu_storage(host, self.shape()),
            Device::Cuda(ordinal) => {
                let backend = cuda::backend(ordinal)?;
                let bytes = backend.stream().clone_htod(&host.to_le_bytes())?;
                let storage = CudaStorage {
                    bytes,
                    dtype: host.dtype(),
                    ordinal,
                };
                Tensor::from_cuda_storage(storage, self.shape())
            }
        }
    }

    /// A copy converted to `dtype` (rounding as in [`Element::from_f64`]).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let cpu = self.cpu_storage("to_dtype")?;
        Tensor::from_cpu_storage(cpu.cast(&self.layout, dtype), self.shape())
    }

    /// A contiguous tensor with the same values: the same tensor when already contiguous, a
    /// copy otherwise.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let cpu = self.cpu_storage("contiguous (strided copy)")?;
        Tensor::from_cpu_storage(cpu.gather(&self.layout), self.shape())
    }

    /// View: `len` entries of dimension `dim` from `start`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.narrow(dim, start, len)?))
    }

    /// View: dimensions reordered, output dimension `i` being input dimension `dims[i]`.
    pub fn permute(&self, dims: &[usize]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.permute(dims)?))
    }

    /// View: two dimensions swapped.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.transpose(a, b)?))
    }

    /// View with a new shape of the same element count; the tensor must be contiguous.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.reshape(shape)?))
    }

    /// View broadcast to `shape` (NumPy rules, stride 0 on stretched dimensions).
    pub fn broadcast_as(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.broadcast_as(shape)?))
    }

    /// View with a new dimension of size 1 inserted at `dim` (0 ≤ dim ≤ rank).
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        if dim > self.rank() {
            return Err(Error::DimOutOfRange {
                op: "unsqueeze",
                dim,
                rank: self.rank(),
            });
        }
        let mut shape: Shape = self.shape().to_vec();
        let mut strides = self.layout.strides().to_vec();
        // Any stride is valid for a size-1 dimension; reuse the neighbour's extent for clarity.
        let stride = if dim < self.rank() {
            strides[dim] * shape[dim]
        } else {
            1
        };
        shape.insert(dim, 1);
        strides.insert(dim, stride);
        Ok(self.with_layout(Layout::from_parts(shape, strides, self.layout.offset())))
    }

    /// View with dimension `dim`, which must have size 1, removed.
    pub fn squeeze(&self, dim: usize) -> Result<Tensor> {
        if self.dim(dim)? != 1 {
            return Err(Error::BadShape {
                op: "squeeze",
                shape: self.shape().to_vec(),
                msg: format!("dimension {dim} is not 1"),
            });
        }
        let mut shape = self.shape().to_vec();
        let mut strides = self.layout.strides().to_vec();
        shape.remove(dim);
        strides.remove(dim);
        Ok(self.with_layout(Layout::from_parts(shape, strides, self.layout.offset())))
    }
}
