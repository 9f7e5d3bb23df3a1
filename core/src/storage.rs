//! Typed element buffers on the host and on CUDA devices.

use cudarc::driver::CudaSlice;
use float8::{F8E4M3, F8E5M2};
use half::{bf16, f16};

use crate::dtype::Element;
use crate::layout::Layout;
use crate::{DType, Error, Result};

#[cfg(target_endian = "big")]
compile_error!("l4lab reads and writes little-endian buffers by reinterpretation; big-endian hosts are unsupported");

/// A host buffer of one dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum CpuStorage {
    /// f32 elements.
    F32(Vec<f32>),
    /// f16 elements.
    F16(Vec<f16>),
    /// bf16 elements.
    BF16(Vec<bf16>),
    /// FP8 e4m3fn elements.
    F8E4M3(Vec<F8E4M3>),
    /// FP8 e5m2 elements.
    F8E5M2(Vec<F8E5M2>),
    /// i32 elements.
    I32(Vec<i32>),
    /// i64 elements.
    I64(Vec<i64>),
    /// u8 elements.
    U8(Vec<u8>),
    /// bool elements.
    Bool(Vec<bool>),
}

/// Runs `$body` with `$v` bound to the typed vector inside a [`CpuStorage`]; `$T` names its
/// element type for generic calls.
#[macro_export]
#[doc(hidden)]
macro_rules! with_cpu_storage {
    ($storage:expr, $v:ident, $body:expr) => {
        match $storage {
            $crate::CpuStorage::F32($v) => $body,
            $crate::CpuStorage::F16($v) => $body,
            $crate::CpuStorage::BF16($v) => $body,
            $crate::CpuStorage::F8E4M3($v) => $body,
            $crate::CpuStorage::F8E5M2($v) => $body,
            $crate::CpuStorage::I32($v) => $body,
            $crate::CpuStorage::I64($v) => $body,
            $crate::CpuStorage::U8($v) => $body,
            $crate::CpuStorage::Bool($v) => $body,
        }
    };
}

fn gather_typed<T: Copy>(values: &[T], layout: &Layout) -> Vec<T> {
    if layout.is_contiguous() {
        let start = layout.offset();
        return values[start..start + layout.elem_count()].to_vec();
    }
    layout.storage_indices().map(|i| values[i]).collect()
}

fn from_f64_typed<T: Element>(values: impl Iterator<Item = f64>) -> CpuStorage {
    T::into_storage(values.map(T::from_f64).collect())
}

impl CpuStorage {
    /// The element dtype.
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F8E4M3(_) => DType::F8E4M3,
            CpuStorage::F8E5M2(_) => DType::F8E5M2,
            CpuStorage::I32(_) => DType::I32,
            CpuStorage::I64(_) => DType::I64,
            CpuStorage::U8(_) => DType::U8,
            CpuStorage::Bool(_) => DType::Bool,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_cpu_storage!(self, v, v.len())
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` zeros of `dtype`.
    pub fn zeros(dtype: DType, n: usize) -> Self {
        Self::from_f64_iter(dtype, std::iter::repeat_n(0.0, n))
    }

    /// Converts values into `dtype` with the rounding rules of [`Element::from_f64`].
    pub fn from_f64_iter(dtype: DType, values: impl Iterator<Item = f64>) -> Self {
        match dtype {
            DType::F32 => from_f64_typed::<f32>(values),
            DType::F16 => from_f64_typed::<f16>(values),
            DType::BF16 => from_f64_typed::<bf16>(values),
            DType::F8E4M3 => from_f64_typed::<F8E4M3>(values),
            DType::F8E5M2 => from_f64_typed::<F8E5M2>(values),
            DType::I32 => from_f64_typed::<i32>(values),
            DType::I64 => from_f64_typed::<i64>(values),
            DType::U8 => from_f64_typed::<u8>(values),
            DType::Bool => from_f64_typed::<bool>(values),
        }
    }

    /// Converts f32 values into `dtype`, rounding once (no detour through f64 for f32 itself).
    pub fn from_f32_vec(dtype: DType, values: Vec<f32>) -> Self {
        match dtype {
            DType::F32 => CpuStorage::F32(values),
            DType::F16 => CpuStorage::F16(values.into_iter().map(f16::from_f32).collect()),
            DType::BF16 => CpuStorage::BF16(values.into_iter().map(bf16::from_f32).collect()),
            _ => Self::from_f64_iter(dtype, values.into_iter().map(f64::from)),
        }
    }

    /// A contiguous copy of the elements a layout selects, in the same dtype.
    pub fn gather(&self, layout: &Layout) -> CpuStorage {
        match self {
            CpuStorage::F32(v) => CpuStorage::F32(gather_typed(v, layout)),
            CpuStorage::F16(v) => CpuStorage::F16(gather_typed(v, layout)),
            CpuStorage::BF16(v) => CpuStorage::BF16(gather_typed(v, layout)),
            CpuStorage::F8E4M3(v) => CpuStorage::F8E4M3(gather_typed(v, layout)),
            CpuStorage::F8E5M2(v) => CpuStorage::F8E5M2(gather_typed(v, layout)),
            CpuStorage::I32(v) => CpuStorage::I32(gather_typed(v, layout)),
            CpuStorage::I64(v) => CpuStorage::I64(gather_typed(v, layout)),
            CpuStorage::U8(v) => CpuStorage::U8(gather_typed(v, layout)),
            CpuStorage::Bool(v) => CpuStorage::Bool(gather_typed(v, layout)),
        }
    }

    /// The selected elements widened to f64 (exact except i64 beyond 2^53).
    pub fn to_f64_vec(&self, layout: &Layout) -> Vec<f64> {
        with_cpu_storage!(self, v, layout.storage_indices().map(|i| v[i].to_f64()).collect())
    }

    /// The selected elements as f32. Exact for every dtype narrower than f32.
    pub fn to_f32_vec(&self, layout: &Layout) -> Vec<f32> {
        match self {
            CpuStorage::F32(v) => gather_typed(v, layout),
            CpuStorage::F16(v) => layout.storage_indices().map(|i| v[i].to_f32()).collect(),
            CpuStorage::BF16(v) => layout.storage_indices().map(|i| v[i].to_f32()).collect(),
            _ => self.to_f64_vec(layout).into_iter().map(|x| x as f32).collect(),
        }
    }

    /// The selected elements converted to `dtype` (one rounding; see [`Element::from_f64`]).
    pub fn cast(&self, layout: &Layout, dtype: DType) -> CpuStorage {
        if dtype == self.dtype() {
            return self.gather(layout);
        }
        match self {
            CpuStorage::F32(_) | CpuStorage::F16(_) | CpuStorage::BF16(_) => {
                Self::from_f32_vec(dtype, self.to_f32_vec(layout))
            }
            _ => Self::from_f64_iter(dtype, self.to_f64_vec(layout).into_iter()),
        }
    }

    /// The raw little-endian bytes of the whole buffer (the safetensors and CUDA layout).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            CpuStorage::F32(v) => bytemuck::cast_slice(v).to_vec(),
            CpuStorage::F16(v) => bytemuck::cast_slice(v).to_vec(),
            CpuStorage::BF16(v) => bytemuck::cast_slice(v).to_vec(),
            CpuStorage::F8E4M3(v) => v.iter().map(|x| x.to_bits()).collect(),
            CpuStorage::F8E5M2(v) => v.iter().map(|x| x.to_bits()).collect(),
            CpuStorage::I32(v) => bytemuck::cast_slice(v).to_vec(),
            CpuStorage::I64(v) => bytemuck::cast_slice(v).to_vec(),
            CpuStorage::U8(v) => v.clone(),
            CpuStorage::Bool(v) => v.iter().map(|&b| b as u8).collect(),
        }
    }

    /// Reads a buffer of `dtype` from little-endian bytes (any alignment). The byte count must
    /// be a multiple of the element size; bool bytes must be 0 or 1.
    pub fn from_le_bytes(dtype: DType, bytes: &[u8]) -> Result<Self> {
        let size = dtype.size_in_bytes();
        if !bytes.len().is_multiple_of(size) {
            return Err(Error::invalid(
                "from_le_bytes",
                format!("{} bytes is not a whole number of {dtype} elements", bytes.len()),
            ));
        }
        Ok(match dtype {
            DType::F32 => CpuStorage::F32(bytemuck::pod_collect_to_vec(bytes)),
            DType::F16 => CpuStorage::F16(bytemuck::pod_collect_to_vec(bytes)),
            DType::BF16 => CpuStorage::BF16(bytemuck::pod_collect_to_vec(bytes)),
            DType::F8E4M3 => CpuStorage::F8E4M3(bytes.iter().map(|&b| F8E4M3::from_bits(b)).collect()),
            DType::F8E5M2 => CpuStorage::F8E5M2(bytes.iter().map(|&b| F8E5M2::from_bits(b)).collect()),
            DType::I32 => CpuStorage::I32(bytemuck::pod_collect_to_vec(bytes)),
            DType::I64 => CpuStorage::I64(bytemuck::pod_collect_to_vec(bytes)),
            DType::U8 => CpuStorage::U8(bytes.to_vec()),
            DType::Bool => CpuStorage::Bool(
                bytes
                    .iter()
                    .map(|&b| match b {
                        0 | 1 => Ok(b == 1),
                        _ => Err(Error::invalid(
                            "from_le_bytes",
                            format!("byte {b} is not a bool (0 or 1)"),
                        )),
                    })
                    .collect::<Result<_>>()?,
            ),
        })
    }
}

/// A device buffer: raw bytes plus the dtype they hold. Kernels receive the device pointer and
/// reinterpret it, so one buffer type serves every dtype.
#[derive(Debug)]
pub struct CudaStorage {
    /// The bytes, allocated on the device's stream.
    pub bytes: CudaSlice<u8>,
    /// The dtype of the elements.
    pub dtype: DType,
    /// Device ordinal.
    pub ordinal: usize,
}

impl CudaStorage {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size_in_bytes()
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A tensor's buffer, on the host or on a CUDA device.
#[derive(Debug)]
pub enum Storage {
    /// Host memory.
    Cpu(CpuStorage),
    /// CUDA device memory.
    Cuda(CudaStorage),
}

impl Storage {
    /// The element dtype.
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            Storage::Cuda(s) => s.len(),
        }
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
