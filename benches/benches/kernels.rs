//! Kernel benchmarks on every device found:
//! * `vector_add` (the pipeline's smoke kernel), a pure bandwidth test whose bytes/s compares
//!   directly with the device's peak (H100 SXM: 3.35 TB/s HBM3 on the datasheet);
//! * cuBLASLt bf16 matmul at Scout's projection shapes (CUDA only), the vendor baseline later
//!   kernels are measured against (H100 SXM dense bf16 peak: 989 TFLOP/s on the datasheet);
//! * RMSNorm over Scout-width rows.
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

fn cublaslt_matmul_at_scout_shapes(c: &mut Criterion) {
    for device in test_devices().into_iter().filter(|d| d.is_cuda()) {
        let mut group = c.benchmark_group(format!("{device}/cublaslt_matmul_bf16"));
        let mut timer = DeviceTimer::new(device).expect("timer");
        let shapes = l4_benches::shapes::matmul_shapes("llama4-scout-17b-16e", "scout", &[16, 2048]);
        for shape in shapes {
            let a = Tensor::randn(&[shape.m, shape.k], DType::BF16, 1, device).expect("a");
            // The weight as HF stores it, [n, k], multiplied through its transposed view.
            let w = Tensor::randn(&[shape.n, shape.k], DType::BF16, 2, device).expect("w");
            let w_t = w.transpose(0, 1).expect("view");
            group.throughput(units::matmul(shape.m, shape.n, shape.k, DType::BF16, DType::BF16));
            let id = BenchmarkId::new(shape.name.clone(), format!("{}x{}x{}", shape.m, shape.n, shape.k));
            group.bench_function(id, |bench| {
                bench.iter_custom(|iters| timer.time(iters, || l4_kernels::matmul::matmul(&a, &w_t)))
            });
        }
        group.finish();
    }
}

fn rms_norm_rows(c: &mut Criterion) {
    for device in test_devices() {
        let mut group = c.benchmark_group(format!("{device}/rms_norm"));
        let mut timer = DeviceTimer::new(device).expect("timer");
        let rows: &[usize] = if device.is_cuda() { &[16, 8192] } else { &[16, 512] };
        for &t in rows {
            for dtype in [DType::F32, DType::BF16] {
                let x = Tensor::randn(&[t, 5120], dtype, 3, device).expect("x");
                let w = Tensor::randn(&[5120], dtype, 4, device).expect("w");
                group.throughput(units::elementwise(t * 5120, dtype));
                group.bench_function(BenchmarkId::new(dtype.name(), format!("{t}x5120")), |bench| {
                    bench.iter_custom(|iters| timer.time(iters, || l4_kernels::norm::rms_norm(&x, Some(&w), 1e-5)))
                });
            }
        }
        group.finish();
    }
}

criterion_group!(
    benches,
    vector_add_bandwidth,
    cublaslt_matmul_at_scout_shapes,
    rms_norm_rows
);
criterion_main!(benches);
