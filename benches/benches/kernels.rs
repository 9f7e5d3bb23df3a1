//! Kernel benchmarks on every device found: `vector_add` (the pipeline's smoke kernel), a pure
//! bandwidth test whose bytes/s compares directly with the device's peak (H100 SXM: 3.35 TB/s
//! HBM3 on the datasheet).
//!
//! Benchmark ids start with the device (`cpu/...`, `cuda:0/...`), so `cargo bench -- cuda`
//! runs only the GPU ones.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use l4_benches::timing::DeviceTimer;
use l4_benches::units;
use l4_core::testing::test_devices;
use l4_core::{DType, Tensor};
use l4_kernels::vector_add;

fn vector_add_bandwidth(c: &mut Criterion) {
    for device in test_devices() {
        let mut group = c.benchmark_group(format!("{device}/vector_add"));
        let mut timer = DeviceTimer::new(device).expect("timer");
        // 1 Mi elements fits in L2 (and shows launch overhead); 64 Mi elements (768 MB of
        // traffic in f32) measures HBM.
        let sizes: &[usize] = if device.is_cuda() {
            &[1 << 20, 1 << 26]
        } else {
            &[1 << 20]
        };
        for dtype in [DType::F32, DType::BF16] {
            for &n in sizes {
                let a = Tensor::randn(&[n], dtype, 1, device).expect("a");
                let b = Tensor::randn(&[n], dtype, 2, device).expect("b");
                group.throughput(units::binary_elementwise(n, dtype));
                group.bench_function(BenchmarkId::new(dtype.name(), n), |bench| {
                    bench.iter_custom(|iters| timer.time(iters, || vector_add(&a, &b)))
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, vector_add_bandwidth);
criterion_main!(benches);
