//! Device-aware timing for criterion's `iter_custom`.
//!
//! On CUDA, work is asynchronous: the clock must stop only after the device has finished, so
//! each repeat is bracketed by CUDA events and synchronised. Between repeats an L2-sized buffer
//! is overwritten so that no repeat is served from a cache warmed by the previous one (inputs
//! of a decode-sized GEMM fit in H100's 50 MB L2 and would otherwise look faster than HBM).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::CudaSlice;
use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
use l4_core::cuda::{self, CudaBackend};
use l4_core::{Device, Result};

/// Times repeated runs of a closure on one device.
#[derive(Debug)]
pub struct DeviceTimer {
    device: Device,
    cuda: Option<(Arc<CudaBackend>, CudaSlice<u8>)>,
}

impl DeviceTimer {
    /// A timer for `device`. On CUDA it allocates a flush buffer of twice the L2 size.
    pub fn new(device: Device) -> Result<Self> {
        let cuda = match device {
            Device::Cpu => None,
            Device::Cuda(ordinal) => {
                let backend = cuda::backend(ordinal)?;
                let l2 = backend
                    .context()
                    .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?;
                let flush = backend.stream().alloc_zeros::<u8>(2 * l2.max(1) as usize)?;
                Some((backend, flush))
            }
        };
        Ok(DeviceTimer { device, cuda })
    }

    /// The device being timed.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Total time of `iters` runs of `run`, excluding the L2 flushes between them. Use as
    /// `b.iter_custom(|iters| timer.time(iters, || op()))`. `run`'s errors abort the bench.
    pub fn time<T>(&mut self, iters: u64, mut run: impl FnMut() -> Result<T>) -> Duration {
        self.try_time(iters, &mut run)
            .unwrap_or_else(|e| panic!("benchmark run failed on {}: {e}", self.device))
    }

    fn try_time<T>(&mut self, iters: u64, run: &mut impl FnMut() -> Result<T>) -> Result<Duration> {
        let Some((backend, flush)) = &mut self.cuda else {
            let start = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(run()?);
            }
            return Ok(start.elapsed());
        };
        let stream = backend.stream().clone();
        let context = backend.context();
        let start = context.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        let end = context.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            stream.memset_zeros(flush)?;
            start.record(&stream)?;
            std::hint::black_box(run()?);
            end.record(&stream)?;
            let ms = start.elapsed_ms(&end)?;
            total += Duration::from_secs_f64(f64::from(ms) / 1e3);
        }
        Ok(total)
    }
}
