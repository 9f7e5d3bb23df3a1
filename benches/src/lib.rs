//! `l4-benches`: criterion benchmarks of l4lab's ops and kernels.
//!
//! * [`shapes`]: the one shape table, derived from the model presets.
//! * [`timing`]: device-aware timing for `Bencher::iter_custom` (synchronised clocks, L2 flush).
//! * [`units`]: honest throughput units (FLOPs and bytes, conventions documented there).

pub mod shapes;
pub mod timing;
pub mod units;
