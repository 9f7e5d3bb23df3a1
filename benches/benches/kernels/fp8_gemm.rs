//! FP8 e4m3 GEMM benchmarks at Scout's forward-pass shapes (`shapes::gpu_gemm_shapes`, the same
//! table as the bf16 GEMMs): `D [m, n] = (A·s_a)(B·s_b)ᵀ`, bf16 out, no epilogue.
//!
//! * `fp8_gemm_rowwise`: l4's own kernel (`l4_kernels::fp8_gemm`) with row-wise scales, per
//!   token for `A` and per output channel for `B` (Meta's Llama 4 recipe);
//! * `cublaslt_fp8_gemm_rowwise`: cuBLASLt's FP8 GEMM on the same problem
//!   (`fp8_gemm::cublaslt`), the vendor baseline, in the same process and stream (CUDA only);
//! * `fp8_gemm_block`: l4's kernel with DeepSeek-style 1×128 / 128×128 block scales, at 2048
//!   tokens only (the secondary recipe).
//!
//! The operands are quantized once before timing (`l4_kernels::quant`), so the figures are the
//! GEMM's alone. Throughput: FLOPs = 2·m·n·k as criterion elements; compulsory bytes = A and B
//! at one byte an element, their f32 scales and the bf16 output. Fractions of peak use the
//! card's dense FP8 peak (docs/benchmarks.md). They run last in the bench binary, so a fault in
//! the new kernel cannot take the other figures down with it (criterion saves each entry as it
//! finishes).
//!
//! Without a CUDA device the l4 entries run on the CPU reference at the tiny preset's shapes.

use criterion::{Criterion, Throughput};
use l4_benches::runner::{self, bench_op, randn, setup};
use l4_benches::shapes::{CPU_PRESET, MatmulShape, gemm_shapes, gpu_gemm_shapes};
use l4_core::{DType, Device, Result};
use l4_kernels::fp8_gemm::{BLOCK_K, Epilogue, fp8_gemm};
use l4_kernels::quant::{Granularity, Quantized, quantize};

/// One way of running the FP8 GEMM.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    L4RowWise,
    CublasLtRowWise,
    L4Block,
}

impl Variant {
    fn group(self) -> &'static str {
        match self {
            Variant::L4RowWise => "fp8_gemm_rowwise",
            Variant::CublasLtRowWise => "cublaslt_fp8_gemm_rowwise",
            Variant::L4Block => "fp8_gemm_block",
        }
    }

    /// The scale granularities of `A` and `B`.
    fn granularities(self) -> (Granularity, Granularity) {
        match self {
            Variant::L4RowWise | Variant::CublasLtRowWise => (Granularity::PerRow, Granularity::PerRow),
            Variant::L4Block => (
                Granularity::Block { rows: 1, cols: BLOCK_K },
                Granularity::Block {
                    rows: BLOCK_K,
                    cols: BLOCK_K,
                },
            ),
        }
    }

    fn run(self, a: &Quantized, b: &Quantized) -> Result<l4_core::Tensor> {
        match self {
            Variant::CublasLtRowWise => l4_kernels::fp8_gemm::cublaslt::cublaslt_fp8_gemm(a, b, DType::BF16),
            Variant::L4RowWise | Variant::L4Block => fp8_gemm(a, b, DType::BF16, Epilogue::default()),
        }
    }
}

/// FLOPs and compulsory bytes of an FP8 GEMM with `scales` f32 scales in all.
fn throughput(m: usize, n: usize, k: usize, scales: usize) -> Throughput {
    let bytes = m * k + n * k + 4 * scales + 2 * m * n;
    Throughput::ElementsAndBytes {
        elements: (2 * m * n * k) as u64,
        bytes: bytes as u64,
    }
}

/// `x` (bf16, made on `device`) quantized to e4m3 with `granularity`.
fn quantized(shape: [usize; 2], seed: u64, granularity: Granularity, device: Device) -> Result<Quantized> {
    let x = randn(&shape, DType::BF16, seed, device)?;
    quantize(&x, granularity, None)
}

pub fn fp8_gemms(c: &mut Criterion) {
    for device in runner::devices() {
        let variants: &[Variant] = if device.is_cuda() {
            &[Variant::L4RowWise, Variant::CublasLtRowWise, Variant::L4Block]
        } else {
            &[Variant::L4RowWise, Variant::L4Block]
        };
        for &variant in variants {
            let (shapes, block_tokens) = if device.is_cuda() {
                (gpu_gemm_shapes(), 2048)
            } else {
                (gemm_shapes(CPU_PRESET, "tiny", &[1, 16]), 16)
            };
            let group_name = format!("{device}/{}", variant.group());
            let Some(mut timer) = runner::timer(&group_name, device) else {
                continue;
            };
            let mut group = c.benchmark_group(&group_name);
            // Criterion's minimum: the LM head at 8192 tokens takes milliseconds a repeat.
            group.sample_size(10);
            let (a_granularity, b_granularity) = variant.granularities();
            let mut weight: Option<(String, Quantized)> = None;
            for MatmulShape { name, m, n, k } in shapes {
                if variant == Variant::L4Block && m != block_tokens {
                    continue;
                }
                let id = format!("{group_name}/{name}/{m}x{n}x{k}");
                if weight.as_ref().is_none_or(|(w, _)| *w != name) {
                    weight = None;
                    let Some(b) = setup(&id, quantized([n, k], 2, b_granularity, device)) else {
                        continue;
                    };
                    weight = Some((name.clone(), b));
                }
                let Some((_, b)) = &weight else { continue };
                let Some(a) = setup(&id, quantized([m, k], 1, a_granularity, device)) else {
                    continue;
                };
                let scales = a.scales.elem_count() + b.scales.elem_count();
                bench_op(
                    &mut group,
                    &group_name,
                    &mut timer,
                    &name,
                    format!("{m}x{n}x{k}"),
                    throughput(m, n, k, scales),
                    || variant.run(&a, b),
                );
            }
            group.finish();
        }
    }
}
