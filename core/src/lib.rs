//! `l4-core`: l4lab's small tensor core.
//!
//! Dtypes (f32, f16, bf16, FP8 e4m3/e5m2, integers, bool), strided views without copies, host
//! storage and CUDA storage through cudarc (always compiled in, loaded at run time), the plain
//! CPU ops that are both the CPU backend and the reference for every kernel, safetensors
//! checkpoint I/O, and the testing helpers (derived tolerances, seeded inputs) every crate uses.

pub mod checkpoint;
pub mod cuda;
mod device;
pub mod dtype;
mod error;
pub mod layout;
mod ndarray_interop;
pub mod ops;
mod random;
mod storage;
mod tensor;
pub mod testing;

pub use device::Device;
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use layout::{Layout, Shape};
pub use storage::{CpuStorage, CudaStorage, Storage};
pub use tensor::Tensor;

pub use float8::{F8E4M3, F8E5M2};
pub use half::{bf16, f16};
