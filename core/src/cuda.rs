//! Run-time CUDA: detection without panics, one context and one stream per device.
//!
//! cudarc is built with dynamic loading, so nothing links against libcuda. Loading happens on
//! first use; a missing library makes cudarc panic, so every entry point here first asks the
//! non-panicking `is_culib_present` probe and also contains any panic that slips through.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaStream};

use crate::{Error, Result};

/// A usable CUDA device: its context, the one stream l4lab issues work on, and its properties.
#[derive(Debug)]
pub struct CudaBackend {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: CudaDeviceInfo,
}

/// Static properties of a CUDA device that kernels and heuristics need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaDeviceInfo {
    /// Device ordinal.
    pub ordinal: usize,
    /// Marketing name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Compute capability (major, minor): (9, 0) for Hopper.
    pub compute_capability: (i32, i32),
    /// Number of streaming multiprocessors (132 on H100 SXM).
    pub sm_count: usize,
    /// Total device memory in bytes.
    pub total_memory: usize,
}

impl CudaBackend {
    /// The device's primary context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.context
    }

    /// The stream all of l4lab's work on this device is issued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Device properties.
    pub fn info(&self) -> &CudaDeviceInfo {
        &self.info
    }

    /// Blocks until all work issued on the stream has finished.
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }
}

/// Runs a closure that may call into a dynamically loaded CUDA library, turning a loader panic
/// into an error.
fn contain_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::Cuda(format!("{what}: {msg}")))
    })
}

/// Whether the CUDA driver library (libcuda) can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: the probe only tries to dlopen the library by name.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether the NVRTC library can be loaded (needed to compile l4lab's kernels).
pub fn nvrtc_present() -> bool {
    // SAFETY: as above.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Number of CUDA devices, or an error saying why there are none.
pub fn device_count() -> Result<usize> {
    if !driver_present() {
        return Err(Error::Cuda(
            "libcuda not found (no NVIDIA driver on the loader path)".into(),
        ));
    }
    contain_panic("device count", || Ok(CudaContext::device_count()? as usize))
}

fn open_backend(ordinal: usize) -> Result<CudaBackend> {
    if !driver_present() {
        return Err(Error::Cuda(
            "libcuda not found (no NVIDIA driver on the loader path)".into(),
        ));
    }
    contain_panic("context creation", || {
        let context = CudaContext::new(ordinal).map_err(|e| Error::Cuda(format!("device {ordinal}: {e}")))?;
        let stream = context.default_stream();
        let info = CudaDeviceInfo {
            ordinal,
            name: context.name()?,
            compute_capability: context.compute_capability()?,
            sm_count: context.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as usize,
            total_memory: context.total_mem()?,
        };
        Ok(CudaBackend { context, stream, info })
    })
}

/// The backend of CUDA device `ordinal`, created on first use and shared afterwards. An error
/// (no driver, no such device) is returned, never a panic, and is not cached: a later call
/// tries again.
pub fn backend(ordinal: usize) -> Result<Arc<CudaBackend>> {
    static BACKENDS: OnceLock<Mutex<HashMap<usize, Arc<CudaBackend>>>> = OnceLock::new();
    let mut backends = BACKENDS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(b) = backends.get(&ordinal) {
        return Ok(b.clone());
    }
    let b = Arc::new(open_backend(ordinal)?);
    backends.insert(ordinal, b.clone());
    Ok(b)
}
