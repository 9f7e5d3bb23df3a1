//! `l4-benches`: criterion benchmarks of l4lab's ops and kernels.
//!
//! * [`shapes`]: the one shape table, derived from the model presets.
//! * [`timing`]: device-aware timing for `Bencher::iter_custom` (CUDA events, L2 flush).
//! * [`units`]: honest throughput units (FLOPs and bytes, conventions documented there) and the
//!   datasheet peaks that fractions of peak are read against.
//! * [`runner`]: what every bench binary shares (devices, failure reporting, seeded inputs).
//!
//! What the GPU suite measures and how to read it: docs/benchmarks.md.

pub mod runner;
pub mod shapes;
pub mod timing;
pub mod units;
