//! Device-aware timing for criterion's `iter_custom`.
//!
//! On CUDA, work is asynchronous: each repeat is bracketed by its own pair of CUDA events and
//! only the time between them counts. Before every repeat an L2-sized buffer is overwritten so
//! that no repeat is served from a cache warmed by the previous one (inputs of a decode-sized
//! GEMM fit in H100's 50 MB L2 and would otherwise look faster than HBM); the flush is issued
//! before the start event, so it is not timed. The host does not wait after each repeat: up to
//! [`EVENT_BATCH`] repeats are queued, then the host synchronises once and reads every pair of
//! events. This is the scheme of `triton.testing.do_bench` (flush, event pair per repeat, one
//! synchronisation), which `tools/peer_baselines.py` uses for the PyTorch peers, so l4's figures
//! and the peers' compare like for like: the host's launch latency is hidden behind the flush
//! whenever the host keeps ahead of the device, as it does when a model runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
use cudarc::driver::{CudaEvent, CudaSlice};
use l4_core::cuda::{self, CudaBackend};
use l4_core::{Device, Result};

/// Repeats queued on the device before the host synchronises and reads their events.
pub const EVENT_BATCH: usize = 64;

/// The CUDA side of a [`DeviceTimer`].
#[derive(Debug)]
struct CudaTimer {
    backend: Arc<CudaBackend>,
    flush: CudaSlice<u8>,
    /// `(start, end)` event pairs, created on first use, reused by every batch.
    events: Vec<(CudaEvent, CudaEvent)>,
}

/// Times repeated runs of a closure on one device.
#[derive(Debug)]
pub struct DeviceTimer {
    device: Device,
    cuda: Option<CudaTimer>,
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
                Some(CudaTimer {
                    backend,
                    flush,
                    events: Vec::new(),
                })
            }
        };
        Ok(DeviceTimer { device, cuda })
    }

    /// The device being timed.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The name of the CUDA device ("NVIDIA H100 80GB HBM3"); `None` on the CPU.
    pub fn device_name(&self) -> Option<&str> {
        self.cuda.as_ref().map(|c| c.backend.info().name.as_str())
    }

    /// Total time of `iters` runs of `run`, excluding the L2 flushes between them. Use as
    /// `b.iter_custom(|iters| timer.time(iters, || op()))`. `run`'s errors abort the bench
    /// (check the op with [`DeviceTimer::warm_up`] first to report them without aborting).
    pub fn time<T>(&mut self, iters: u64, mut run: impl FnMut() -> Result<T>) -> Duration {
        let device = self.device;
        self.try_time(iters, &mut run)
            .unwrap_or_else(|e| panic!("benchmark run failed on {device}: {e}"))
    }

    /// Like [`DeviceTimer::time`], returning the op's first error instead of panicking.
    pub fn try_time<T>(&mut self, iters: u64, run: &mut impl FnMut() -> Result<T>) -> Result<Duration> {
        let Some(cuda) = &mut self.cuda else {
            let start = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(run()?);
            }
            return Ok(start.elapsed());
        };
        let stream = cuda.backend.stream().clone();
        let batch = usize::try_from(iters).unwrap_or(usize::MAX).min(EVENT_BATCH);
        while cuda.events.len() < batch {
            let context = cuda.backend.context();
            let start = context.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
            let end = context.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
            cuda.events.push((start, end));
        }
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(EVENT_BATCH);
            for (start, end) in &cuda.events[..n] {
                stream.memset_zeros(&mut cuda.flush)?;
                start.record(&stream)?;
                // The output is dropped here; its memory goes back to the stream-ordered pool.
                std::hint::black_box(run()?);
                end.record(&stream)?;
            }
            // `elapsed_ms` waits for both events; the first call waits for the batch's start.
            for (start, end) in &cuda.events[..n] {
                let ms = start.elapsed_ms(end)?;
                total += Duration::from_secs_f64(f64::from(ms) / 1e3);
            }
            left -= n as u64;
        }
        Ok(total)
    }

    /// Runs `run` until it has run at least 3 times and for at least 25 ms of wall time (at most
    /// 1000 times), then waits for the device. This compiles the op's kernels (NVRTC, cuBLASLt
    /// heuristics), fills the memory pool and brings the clocks up before criterion measures,
    /// and reports an op that fails as an error instead of a panic inside criterion.
    pub fn warm_up<T>(&mut self, run: &mut impl FnMut() -> Result<T>) -> Result<()> {
        let started = Instant::now();
        let mut runs = 0;
        while runs < 3 || (started.elapsed() < Duration::from_millis(25) && runs < 1000) {
            self.try_time(1, run)?;
            runs += 1;
        }
        if let Some(cuda) = &self.cuda {
            cuda.backend.synchronize()?;
        }
        Ok(())
    }
}
