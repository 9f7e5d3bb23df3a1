//! bf16 GEMM benchmarks at Llama 4 shapes: `l4_kernels::matmul::matmul` in bf16, which is cuBLASLt
//! on CUDA (the vendor baseline l4's own GEMM kernels will be measured against).
//!
//! The table is Scout's forward pass (`shapes::gpu_gemm_shapes`, derived from the preset):
//! fused QKV (n = 7168, k = 5120), O (5120 × 5120), expert gate/up (n = 16384, k = 5120), expert
//! down (n = 5120, k = 8192) and the LM head (n = 202048, k = 5120), each at m = 1, 16, 128, 2048
//! and 8192 tokens. The activation is `[m, k]` row-major and the weight is stored as HF stores it,
//! `[n, k]`, and multiplied through its transposed view (as `Linear` does), so the output is
//! `[m, n]` bf16. Throughput: FLOPs = 2·m·n·k as criterion elements, compulsory bytes (A, W and
//! the output once each); see docs/benchmarks.md for reading them against the card's peaks.
//!
//! Ids: `cuda:0/cublaslt_matmul_bf16/scout/<gemm>/<m>x<n>x<k>`. Without a CUDA device the same
//! code runs on the CPU backend at the tiny preset's shapes (`cpu/matmul_bf16/tiny/...`), so a
//! dry run exercises it.

use criterion::Criterion;
use l4_benches::runner::{self, bench_op, randn, setup};
use l4_benches::shapes::{CPU_PRESET, MatmulShape, gemm_shapes, gpu_gemm_shapes};
use l4_benches::units;
use l4_core::{DType, Device, Tensor};

pub fn matmul_bf16(c: &mut Criterion) {
    for device in runner::devices() {
        let (group_name, shapes) = if device.is_cuda() {
            (format!("{device}/cublaslt_matmul_bf16"), gpu_gemm_shapes())
        } else {
            (
                format!("{device}/matmul_bf16"),
                gemm_shapes(CPU_PRESET, "tiny", &[1, 16]),
            )
        };
        let Some(mut timer) = runner::timer(&group_name, device) else {
            continue;
        };
        let mut group = c.benchmark_group(&group_name);
        // Criterion's minimum: the LM head at 8192 tokens takes tens of milliseconds a repeat.
        group.sample_size(10);
        // The shapes come grouped by GEMM: one weight per GEMM, one activation per shape.
        let mut weight: Option<(String, Tensor)> = None;
        for MatmulShape { name, m, n, k } in shapes {
            let id = format!("{group_name}/{name}/{m}x{n}x{k}");
            if weight.as_ref().is_none_or(|(w, _)| *w != name) {
                // Free the previous weight first: the LM head's is 2 GB.
                weight = None;
                let Some(w) = setup(&id, randn(&[n, k], DType::BF16, 2, device)) else {
                    continue;
                };
                weight = Some((name.clone(), w));
            }
            let Some((_, w)) = &weight else { continue };
            let Some((a, w_t)) = setup(&id, inputs(w, m, k, device)) else {
                continue;
            };
            bench_op(
                &mut group,
                &group_name,
                &mut timer,
                &name,
                format!("{m}x{n}x{k}"),
                units::matmul(m, n, k, DType::BF16, DType::BF16),
                || l4_kernels::matmul::matmul(&a, &w_t),
            );
        }
        group.finish();
    }
}

/// The activation `[m, k]` and the weight's transposed view `[k, n]`.
fn inputs(w: &Tensor, m: usize, k: usize, device: Device) -> l4_core::Result<(Tensor, Tensor)> {
    let a = randn(&[m, k], DType::BF16, 1, device)?;
    Ok((a, w.transpose(0, 1)?))
}
