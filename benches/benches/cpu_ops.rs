//! CPU backend benchmarks: matmul over the preset-derived shapes, and softmax.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use l4_benches::shapes::cpu_matmul_shapes;
use l4_benches::timing::DeviceTimer;
use l4_benches::units;
use l4_core::{DType, Device, Tensor};

fn matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu/matmul");
    let mut timer = DeviceTimer::new(Device::Cpu).expect("cpu timer");
    for dtype in [DType::F32, DType::BF16] {
        for shape in cpu_matmul_shapes() {
            let a = Tensor::randn(&[shape.m, shape.k], dtype, 1, Device::Cpu).expect("lhs");
            let b = Tensor::randn(&[shape.k, shape.n], dtype, 2, Device::Cpu).expect("rhs");
            group.throughput(units::matmul(shape.m, shape.n, shape.k, dtype, dtype));
            let id = BenchmarkId::new(
                format!("{}/{dtype}", shape.name),
                format!("{}x{}x{}", shape.m, shape.n, shape.k),
            );
            group.bench_function(id, |bench| {
                bench.iter_custom(|iters| timer.time(iters, || a.matmul(&b)))
            });
        }
    }
    group.finish();
}

fn softmax(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu/softmax");
    let mut timer = DeviceTimer::new(Device::Cpu).expect("cpu timer");
    // Rows of attention scores: (query rows, key length).
    for (rows, cols) in [(64, 64), (256, 1024), (40, 8192)] {
        let x = Tensor::randn(&[rows, cols], DType::F32, 3, Device::Cpu).expect("input");
        group.throughput(units::elementwise(rows * cols, DType::F32));
        group.bench_function(BenchmarkId::from_parameter(format!("{rows}x{cols}")), |bench| {
            bench.iter_custom(|iters| timer.time(iters, || x.softmax(1)))
        });
    }
    group.finish();
}

criterion_group!(benches, matmul, softmax);
criterion_main!(benches);
