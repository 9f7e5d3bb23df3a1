//! The plumbing every bench binary shares: the devices to bench (with the card's datasheet
//! peaks printed once), a bench entry that reports a failing op instead of aborting the binary,
//! seeded inputs made on the device (cheap at LM-head size), and the binary's exit status.
//!
//! A failing op (an error from the op or from making its inputs) prints
//! `BENCH FAILED <id>: <error>`, the remaining benches still run, and [`exit_status`] makes the
//! binary exit with status 1, so `gpu-bin/run.sh` counts it as failed. Without a CUDA device the
//! CUDA entries are not registered at all (the binary says so once), exactly as tests skip.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::process::ExitCode;
use std::sync::{Mutex, Once};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Throughput};
use l4_core::{DType, Device, Result, Tensor};

use crate::timing::DeviceTimer;
use crate::units::DevicePeaks;

/// Every failure so far, as `(bench id, error)`.
static FAILURES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Every bench id registered so far (small presets can make two entries of one op coincide).
static BENCHED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Host-made tensors above this many elements repeat a random block of rows ([`host_randn`]).
pub const MAX_RANDOM_ELEMENTS: usize = 1 << 24;

/// Records a failure and prints it as `BENCH FAILED <id>: <error>`.
pub fn fail(id: &str, error: impl Display) {
    println!("BENCH FAILED {id}: {error}");
    FAILURES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((id.to_string(), error.to_string()));
}

/// `Some(value)`, or `None` after recording `result`'s error as a failure of `id` (for inputs
/// that could not be made).
pub fn setup<T>(id: &str, result: Result<T>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(e) => {
            fail(id, format!("setting up the inputs failed: {e}"));
            None
        }
    }
}

/// The devices to bench: the CPU and CUDA device 0 when usable (`l4_core::testing::test_devices`,
/// so `L4_REQUIRE_GPU=1` turns a missing GPU into a failure). Prints, once per binary, which
/// CUDA device was found and which datasheet peaks its fraction of peak is read against.
pub fn devices() -> Vec<Device> {
    let devices = l4_core::testing::test_devices();
    static BANNER: Once = Once::new();
    BANNER.call_once(|| {
        let Some(&cuda) = devices.iter().find(|d| d.is_cuda()) else {
            println!("l4-benches: no usable CUDA device; only the CPU entries run (CUDA entries skipped)");
            return;
        };
        match DeviceTimer::new(cuda) {
            Ok(timer) => {
                let name = timer.device_name().unwrap_or("?").to_string();
                match DevicePeaks::for_device_name(&name) {
                    Some(peaks) => println!("l4-benches: {cuda} is {name}; {}", peaks.describe()),
                    None => println!(
                        "l4-benches: {cuda} is {name}; no datasheet peaks known for it, fractions of peak are not derived"
                    ),
                }
            }
            Err(e) => println!("l4-benches: {cuda}: cannot make a timer: {e}"),
        }
    });
    devices
}

/// Only the CUDA devices of [`devices`].
pub fn cuda_devices() -> Vec<Device> {
    devices().into_iter().filter(|d| d.is_cuda()).collect()
}

/// A timer for `device`, or `None` after recording the failure under `group`.
pub fn timer(group: &str, device: Device) -> Option<DeviceTimer> {
    setup(group, DeviceTimer::new(device))
}

/// Benches `op` as criterion id `<group_name>/<function>/<value>` with `throughput`: first
/// [`DeviceTimer::warm_up`] (an error there is recorded with [`fail`] and the entry is
/// skipped), then criterion's measurement through [`DeviceTimer::time`]. An id benched
/// before in this process is skipped (the tiny preset can make two entries coincide).
pub fn bench_op<T>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    group_name: &str,
    timer: &mut DeviceTimer,
    function: &str,
    value: impl Display,
    throughput: Throughput,
    mut op: impl FnMut() -> Result<T>,
) {
    let value = value.to_string();
    let id = format!("{group_name}/{function}/{value}");
    if !BENCHED.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone()) {
        // The same shape twice (the tiny preset's sizes coincide): measured once.
        return;
    }
    if let Err(e) = timer.warm_up(&mut op) {
        fail(&id, e);
        return;
    }
    group.throughput(throughput);
    group.bench_function(BenchmarkId::new(function, value), |bench| {
        bench.iter_custom(|iters| timer.time(iters, &mut op))
    });
}

/// Seeded standard-normal values of `shape` and `dtype` (f32, f16 or bf16) on `device`, made on
/// the device itself by `l4_kernels::random::normal` (a 2 GB LM-head weight costs the host
/// nothing). Should that fail, the values are made on the host instead ([`host_randn`]), with a
/// note, so a broken random kernel shows up without taking every bench down with it.
pub fn randn(shape: &[usize], dtype: DType, seed: u64, device: Device) -> Result<Tensor> {
    match l4_kernels::random::normal(shape, dtype, seed, 1.0, device) {
        Ok(t) => Ok(t),
        Err(e) => {
            static NOTE: Once = Once::new();
            NOTE.call_once(|| {
                println!("l4-benches: random::normal failed on {device} ({e}); making bench inputs on the host");
            });
            host_randn(shape, dtype, seed, device)
        }
    }
}

/// Seeded standard-normal values made on the host (`Tensor::randn`) and copied to `device`. A
/// tensor of rank ≥ 2 with more than [`MAX_RANDOM_ELEMENTS`] elements is a random block of whole
/// rows (first dimension) repeated on the device by `index_select`, so a 2 GB weight costs the
/// host 64 MB of random values instead of 4 GB; no kernel benched here reuses data across rows,
/// so the repetition does not change a timing.
pub fn host_randn(shape: &[usize], dtype: DType, seed: u64, device: Device) -> Result<Tensor> {
    let elements: usize = shape.iter().product();
    if elements <= MAX_RANDOM_ELEMENTS || shape.len() < 2 {
        return Tensor::randn(shape, dtype, seed, device);
    }
    let rows = shape[0];
    let row: usize = shape[1..].iter().product();
    let block_rows = (MAX_RANDOM_ELEMENTS / row.max(1)).clamp(1, rows);
    let mut block_shape = shape.to_vec();
    block_shape[0] = block_rows;
    let block = Tensor::randn(&block_shape, dtype, seed, device)?;
    let indices: Vec<i64> = (0..rows).map(|i| (i % block_rows) as i64).collect();
    let indices = Tensor::from_vec(indices, &[rows], device)?;
    l4_kernels::gather::index_select(&block, 0, &indices)
}

/// Seeded token ids uniform in `0..vocab`, I64, on `device`.
pub fn token_ids(tokens: usize, vocab: usize, seed: u64, device: Device) -> Result<Tensor> {
    Tensor::rand_uniform(&[tokens], 0.0, vocab as f64 - 1.0, DType::I64, seed, device)
}

/// The binary's exit status: success, or (after listing every failure) 1.
pub fn exit_status() -> ExitCode {
    let failures = FAILURES.lock().unwrap_or_else(|p| p.into_inner());
    if failures.is_empty() {
        return ExitCode::SUCCESS;
    }
    println!("l4-benches: {} bench entries FAILED:", failures.len());
    for (id, error) in failures.iter() {
        println!("BENCH FAILED {id}: {error}");
    }
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_host_random_tensors_repeat_a_block_of_rows() {
        let row = MAX_RANDOM_ELEMENTS / 4 + 1; // three rows per block
        let x = host_randn(&[7, row], DType::BF16, 5, Device::Cpu).unwrap();
        assert_eq!(x.shape(), &[7, row]);
        let rows: Vec<Vec<f32>> = (0..7)
            .map(|r| x.narrow(0, r, 1).unwrap().to_f32_vec().unwrap())
            .collect();
        assert_eq!(rows[0], rows[3]);
        assert_eq!(rows[2], rows[5]);
        assert_ne!(rows[0], rows[1]);
        // Small tensors are plain `Tensor::randn`.
        let small = host_randn(&[3, 4], DType::F32, 5, Device::Cpu).unwrap();
        let plain = Tensor::randn(&[3, 4], DType::F32, 5, Device::Cpu).unwrap();
        assert_eq!(small.to_f32_vec().unwrap(), plain.to_f32_vec().unwrap());
    }

    #[test]
    fn device_random_tensors_are_seeded_normals() {
        let a = randn(&[64, 32], DType::BF16, 9, Device::Cpu).unwrap();
        let b = randn(&[64, 32], DType::BF16, 9, Device::Cpu).unwrap();
        let (a, b) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
        assert_eq!(a, b);
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.1, "{mean}");
        assert!(a.iter().any(|&x| x > 1.0) && a.iter().any(|&x| x < -1.0));
    }

    #[test]
    fn token_ids_stay_in_the_vocabulary() {
        let ids = token_ids(1000, 7, 1, Device::Cpu).unwrap();
        let ids = ids.to_f32_vec().unwrap();
        assert!(ids.iter().all(|&i| (0.0..7.0).contains(&i)), "{ids:?}");
        assert!(ids.contains(&0.0) && ids.contains(&6.0));
    }
}
