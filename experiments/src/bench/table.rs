//! The kernel table of `l4 bench --kernels`: how each entry is timed, what its throughput and
//! fraction of peak are, and how the table is printed.
//!
//! Throughput follows `l4_benches::units`: FLOPs count a multiply-add as two, bytes are the
//! compulsory traffic (inputs read once, the output written once). The fraction of peak is the
//! roofline fraction of `DevicePeaks::roofline_fraction`: the time the datasheet allows (the
//! slower of the FLOPs at the tensor-core peak and the bytes at the HBM peak) over the measured
//! time. It is only given for cards whose datasheet `DevicePeaks` knows.

use std::fmt::Write;
use std::time::Duration;

use l4_benches::timing::DeviceTimer;
use l4_benches::units::DevicePeaks;
use l4_core::{Device, Result};

/// Which peak an entry is read against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peak {
    /// A bf16/f16 tensor-core op: FLOPs against the dense bf16 peak (and bytes against HBM).
    Bf16,
    /// An FP8 tensor-core op: FLOPs against the dense FP8 peak (and bytes against HBM).
    Fp8,
    /// A memory-bound op: bytes against HBM only.
    Memory,
}

/// What one run of an entry does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Work {
    /// Floating-point operations (0 for memory-bound ops, which are not credited FLOPs).
    pub flops: f64,
    /// Compulsory bytes.
    pub bytes: f64,
    /// The peak it is read against.
    pub peak: Peak,
}

/// How an entry compares with the vendor's library.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Vendor {
    /// No vendor baseline at this shape.
    None,
    /// The entry is the vendor baseline itself (cuBLASLt).
    IsBaseline,
    /// The vendor baseline's time over this entry's: above 1 means l4 is faster.
    Speedup(f64),
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct KernelRow {
    /// The op and its variant, e.g. `fp8_gemm rowwise`.
    pub kernel: String,
    /// The shape, e.g. `qkv_proj 16x7168x5120`.
    pub shape: String,
    /// Median seconds per run.
    pub seconds: f64,
    /// What one run does.
    pub work: Work,
    /// Fraction of the roofline, when the device's peaks are known.
    pub peak_fraction: Option<f64>,
    /// Comparison with the vendor baseline.
    pub vendor: Vendor,
}

impl KernelRow {
    /// TFLOP/s, for ops credited with FLOPs.
    pub fn tflops(&self) -> Option<f64> {
        (self.work.flops > 0.0).then(|| self.work.flops / self.seconds / 1e12)
    }

    /// GB/s of compulsory traffic.
    pub fn gbps(&self) -> f64 {
        self.work.bytes / self.seconds / 1e9
    }
}

/// How long to time each entry.
#[derive(Clone, Copy, Debug)]
pub struct Effort {
    /// Timed samples per entry (the median is reported).
    pub samples: usize,
    /// Wall time each sample aims for.
    pub sample_time: Duration,
    /// The most runs in one sample.
    pub max_runs: u64,
}

/// Times entries on one device and collects the rows.
#[derive(Debug)]
pub struct Measurer {
    timer: DeviceTimer,
    peaks: Option<DevicePeaks>,
    effort: Effort,
    /// The rows so far.
    pub rows: Vec<KernelRow>,
    /// Entries that failed, with their errors.
    pub failures: Vec<(String, String)>,
}

impl Measurer {
    /// A measurer for `device`, reading fractions of peak against `peaks`.
    pub fn new(device: Device, peaks: Option<DevicePeaks>, effort: Effort) -> Result<Measurer> {
        Ok(Measurer {
            timer: DeviceTimer::new(device)?,
            peaks,
            effort,
            rows: Vec::new(),
            failures: Vec::new(),
        })
    }

    /// The device timed.
    pub fn device(&self) -> Device {
        self.timer.device()
    }

    /// Records that an entry could not run (its inputs could not be made, or the op failed).
    pub fn fail(&mut self, kernel: &str, shape: &str, error: impl std::fmt::Display) {
        self.failures.push((format!("{kernel} {shape}"), error.to_string()));
    }

    /// Times `op` and adds its row; returns the row's index, or `None` after recording a
    /// failure. One untimed run first (on CUDA a full warm-up: kernel compilation, cuBLASLt
    /// heuristics, clocks), then [`Effort::samples`] samples of as many runs as fill
    /// [`Effort::sample_time`]; the median sample's time per run is reported.
    pub fn time<T>(
        &mut self,
        kernel: &str,
        shape: &str,
        work: Work,
        vendor: Vendor,
        mut op: impl FnMut() -> Result<T>,
    ) -> Option<usize> {
        match self.median_seconds(&mut op) {
            Ok(seconds) => {
                let peak_fraction = self.peaks.map(|p| {
                    let flop_rate = match work.peak {
                        Peak::Bf16 | Peak::Memory => p.bf16_flops,
                        Peak::Fp8 => p.fp8_flops,
                    };
                    p.roofline_fraction(work.flops, flop_rate, work.bytes, seconds)
                });
                self.rows.push(KernelRow {
                    kernel: kernel.to_string(),
                    shape: shape.to_string(),
                    seconds,
                    work,
                    peak_fraction,
                    vendor,
                });
                Some(self.rows.len() - 1)
            }
            Err(e) => {
                self.fail(kernel, shape, e);
                None
            }
        }
    }

    fn median_seconds<T>(&mut self, op: &mut impl FnMut() -> Result<T>) -> Result<f64> {
        if self.timer.device().is_cuda() {
            self.timer.warm_up(op)?;
        }
        let first = self.timer.try_time(1, op)?.as_secs_f64().max(1e-9);
        let runs = (self.effort.sample_time.as_secs_f64() / first).ceil() as u64;
        let runs = runs.clamp(1, self.effort.max_runs);
        let mut per_run = Vec::with_capacity(self.effort.samples);
        for _ in 0..self.effort.samples.max(1) {
            per_run.push(self.timer.try_time(runs, op)?.as_secs_f64() / runs as f64);
        }
        per_run.sort_by(f64::total_cmp);
        Ok(per_run[per_run.len() / 2])
    }

    /// Sets row `row`'s comparison with the vendor baseline row `baseline`.
    pub fn compare(&mut self, row: Option<usize>, baseline: Option<usize>) {
        if let (Some(row), Some(baseline)) = (row, baseline) {
            let speedup = self.rows[baseline].seconds / self.rows[row].seconds;
            self.rows[row].vendor = Vendor::Speedup(speedup);
        }
    }
}

/// `x` with three significant digits (scientific below 0.001), so CPU and GPU rates both read.
fn significant(x: f64) -> String {
    match x.abs() {
        a if a >= 100.0 => format!("{x:.0}"),
        a if a >= 10.0 => format!("{x:.1}"),
        a if a >= 1.0 => format!("{x:.2}"),
        a if a >= 0.001 => format!("{x:.3}"),
        _ => format!("{x:.2e}"),
    }
}

/// The column headers, in order.
pub const COLUMNS: [&str; 7] = ["kernel", "shape", "time_us", "TFLOP/s", "GB/s", "peak", "vs_vendor"];

/// The rows as an aligned table under [`COLUMNS`]. `peak` is the roofline fraction in percent;
/// `vs_vendor` is the vendor baseline's time over the row's (above 1: l4 is faster). `n/a` where
/// a figure does not exist for the row.
pub fn render(rows: &[KernelRow]) -> String {
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.kernel.clone(),
                r.shape.clone(),
                format!("{:.2}", r.seconds * 1e6),
                r.tflops().map_or("n/a".into(), significant),
                significant(r.gbps()),
                r.peak_fraction.map_or("n/a".into(), |f| format!("{:.1}%", 100.0 * f)),
                match r.vendor {
                    Vendor::None => "n/a".into(),
                    Vendor::IsBaseline => "baseline".into(),
                    Vendor::Speedup(s) => format!("{s:.2}x"),
                },
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..COLUMNS.len())
        .map(|c| {
            cells
                .iter()
                .map(|row| row[c].len())
                .chain([COLUMNS[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |out: &mut String, row: &[&str]| {
        let mut text = String::new();
        for (c, cell) in row.iter().enumerate() {
            // Names left-aligned, numbers right-aligned.
            match c {
                0 | 1 => {
                    let _ = write!(text, "{cell:<w$}  ", w = widths[c]);
                }
                _ => {
                    let _ = write!(text, "{cell:>w$}  ", w = widths[c]);
                }
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&mut out, &COLUMNS);
    for row in &cells {
        line(&mut out, &row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}
