//! The GPU benches (and their CPU runs), one binary so the packed bundle stays small:
//!
//! * `vector_add` (the pipeline's smoke kernel), a pure bandwidth test;
//! * the memory-bound ops of a Llama 4 layer at Scout's shapes (`shapes::ModelDims`, derived
//!   from the preset): RMSNorm over width-`d` rows, softmax over attention-score rows, RoPE on
//!   q and k, the embedding gather, the bf16 → FP8 e4m3 cast, SwiGLU's silu and multiply, and
//!   top-k (the router's and greedy decoding's over the vocabulary), the fused MoE routing, and
//!   split-KV decode attention over one attention chunk of cached keys;
//! * prefill attention, global causal and chunked (compute-bound: FLOPs as elements);
//! * attention over the paged KV cache ([`attention`]: prefill at 1K–128K tokens, decode at 8K–1M
//!   of context, the fused QK prologue) and the long-context check ([`long_context`]: a
//!   Scout-shaped layer stack decoding at 1M tokens, KV bytes per token of chunked and global layers);
//! * the bf16 GEMMs at Scout's forward-pass shapes ([`gemm`], cuBLASLt on CUDA);
//! * the FP8 GEMMs at the same shapes ([`fp8_gemm`]: l4's kernel with row-wise and block
//!   scales, cuBLASLt's FP8 GEMM), last, so a fault in the newest kernel cannot take the other
//!   figures with it;
//! * whole MoE blocks ([`moe_experts`]: routing, grouped bf16 and FP8 experts, shared expert)
//!   at Scout's and Maverick's shapes beside the per-expert cuBLASLt composition, after them.
//!
//! The memory-bound ops report bytes/s of compulsory traffic (every input read once, the output
//! written once; `units`), which compares directly with the card's HBM bandwidth (H100 SXM:
//! 3.35 TB/s, H200: 4.8 TB/s on the datasheets). Ids: `<device>/<op>/<dtype>/<dims>`;
//! `cargo bench -- cuda` runs only the GPU ones. On the CPU the same entries run at the tiny
//! preset's shapes (the existing vector_add and RMSNorm entries keep their sizes), so a dry run
//! exercises every bench's code. docs/benchmarks.md says what each measures.

mod attention;
mod fp8_gemm;
mod gemm;
mod long_context;
mod moe_experts;

use std::process::ExitCode;

use criterion::Criterion;
use l4_benches::runner::{self, bench_op, randn, setup, token_ids};
use l4_benches::shapes::ModelDims;
use l4_benches::units;
use l4_core::{DType, Device, Tensor};
use l4_kernels::elementwise::{BinaryOp, UnaryOp};
use l4_kernels::vector_add;

/// Token counts of a decode step (a batch of sequences, one token each), a prefill and a long
/// prefill on CUDA; small stand-ins on the CPU.
struct Tokens {
    decode: usize,
    prefill: usize,
    long: usize,
}

fn setting(device: Device) -> (ModelDims, Tokens) {
    if device.is_cuda() {
        let tokens = Tokens {
            decode: 16,
            prefill: 2048,
            long: 8192,
        };
        (ModelDims::gpu(), tokens)
    } else {
        let tokens = Tokens {
            decode: 4,
            prefill: 64,
            long: 128,
        };
        (ModelDims::cpu(), tokens)
    }
}

fn vector_add_bandwidth(c: &mut Criterion) {
    for device in runner::devices() {
        let group_name = format!("{device}/vector_add");
        let Some(mut timer) = runner::timer(&group_name, device) else {
            continue;
        };
        let mut group = c.benchmark_group(&group_name);
        // 1 Mi elements fits in L2 (and shows launch overhead); 64 Mi elements (768 MB of
        // traffic in f32) measures HBM.
        let sizes: &[usize] = if device.is_cuda() {
            &[1 << 20, 1 << 26]
        } else {
            &[1 << 20]
        };
        for dtype in [DType::F32, DType::BF16] {
            for &n in sizes {
                let id = format!("{group_name}/{dtype}/{n}");
                let Some((a, b)) = setup(&id, pair(&[n], dtype, device)) else {
                    continue;
                };
                bench_op(
                    &mut group,
                    &group_name,
                    &mut timer,
                    dtype.name(),
                    n,
                    units::binary_elementwise(n, dtype),
                    || vector_add(&a, &b),
                );
            }
        }
        group.finish();
    }
}

fn rms_norm_rows(c: &mut Criterion) {
    let d = ModelDims::gpu().hidden;
    for device in runner::devices() {
        let group_name = format!("{device}/rms_norm");
        let Some(mut timer) = runner::timer(&group_name, device) else {
            continue;
        };
        let mut group = c.benchmark_group(&group_name);
        let rows: &[usize] = if device.is_cuda() { &[16, 8192] } else { &[16, 512] };
        for &t in rows {
            for dtype in [DType::F32, DType::BF16] {
                let id = format!("{group_name}/{dtype}/{t}x{d}");
                let inputs = || -> l4_core::Result<(Tensor, Tensor)> {
                    Ok((randn(&[t, d], dtype, 3, device)?, randn(&[d], dtype, 4, device)?))
                };
                let Some((x, w)) = setup(&id, inputs()) else {
                    continue;
                };
                bench_op(
                    &mut group,
                    &group_name,
                    &mut timer,
                    dtype.name(),
                    format!("{t}x{d}"),
                    units::elementwise(t * d, dtype),
                    || l4_kernels::norm::rms_norm(&x, Some(&w), 1e-5),
                );
            }
        }
        group.finish();
    }
}

/// Softmax over attention-score rows: a prefill's `[h·t, t]` (in f32 and bf16) and a decode
/// batch's `[h·b, s]` over one full attention chunk of keys.
fn softmax_rows(c: &mut Criterion) {
    for device in runner::devices() {
        let (dims, tokens) = setting(device);
        let group_name = format!("{device}/softmax");
        let Some(mut timer) = runner::timer(&group_name, device) else {
            continue;
        };
        let mut group = c.benchmark_group(&group_name);
        let prefill = (dims.heads * tokens.prefill, dims.key_span(tokens.prefill));
        let decode = (dims.heads * tokens.decode, dims.chunk.unwrap_or(tokens.prefill));
        for ((rows, cols), dtype) in [(prefill, DType::F32), (prefill, DType::BF16), (decode, DType::BF16)] {
            let id = format!("{group_name}/{dtype}/{rows}x{cols}");
            let Some(x) = setup(&id, randn(&[rows, cols], dtype, 5, device)) else {
                continue;
            };
            bench_op(
                &mut group,
                &group_name,
                &mut timer,
                dtype.name(),
                format!("{rows}x{cols}"),
                units::elementwise(rows * cols, dtype),
                || l4_kernels::softmax::softmax(&x, 1),
            );
        }
        group.finish();
    }
}

/// RoPE on q `[b, t, h, dh]` and k `[b, t, hk, dh]`: a prefill (`b = 1`) and a decode step (`t = 1`).
fn rope_heads(c: &mut Criterion) {
    for device in runner::devices() {
        let (dims, tokens) = setting(device);
        let group_name = format!("{device}/rope");
        let Some(mut timer) = runner::timer(&group_name, device) else {
            continue;
        };
        let mut group = c.benchmark_group(&group_name);
        // Values do not change the timing; Llama 4's θ = 500000 without scaling.
        let half = dims.head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|j| 500_000f32.powf(-((2 * j) as f32) / dims.head_dim as f32))
            .collect();
        let dtype = DType::BF16;
        for (b, t, start) in [(1, tokens.prefill, 0), (tokens.decode, 1, tokens.prefill)] {
            for heads in [dims.heads, dims.kv_heads] {
                let shape = [b, t, heads, dims.head_dim];
                let dims_str = format!("{b}x{t}x{heads}x{}", dims.head_dim);
                let id = format!("{group_name}/{dtype}/{dims_str}");
                let Some(x) = setup(&id, randn(&shape, dtype, 6, device)) else {
                    continue;
                };
                bench_op(
                    &mut group,
                    &group_name,
                    &mut timer,
                    dtype.name(),
                    dims_str,
                    units::elementwise(x.elem_count(), dtype),
                    || l4_kernels::rope::apply(&x, &inv_freq, start),
                );
            }
        }
        group.finish();
    }
}

/// The embedding lookup: `t` I64 ids into the `[v, d]` table. The CUDA path copies the ids to
/// the host and checks them before launching; that round trip is part of the op and is timed.
fn embedding_gather(c: &mut Criterion) {
    for device in runner::devices() {
        let (dims, tokens) = setting(device);
        let group_name = format!("{device}/embedding");
        let Some(mut timer) = runner::timer(&group_name, device) else {
            continue;
        };
        let mut group = c.benchmark_group(&group_name);
        let dtype = DType::BF16;
        let (v, d) = (dims.vocab, dims.hidden);
        let table_id = format!("{group_name}/{dtype}/table {v}x{d}");
        let Some(table) = setup(&table_id, randn(&[v, d], dtype, 7, device)) else {
            group.finish();
            continue;
        };
        for t in [tokens.decode, tokens.prefill] {
            let id = format!("{group_name}/{dtype}/{t}x{v}x{d}");
            let Some(ids) = setup(&id, token_ids(t, v, 8, device)) else {
                continue;
            };
            bench_op(
                &mut group,
                &group_name,
                &mut timer,
                dtype.name(),
                format!("{t}x{v}x{d}"),
                units::gather_rows(t, d, dtype, DType::I64),
                || l4_kernels::gather::embedding(&table, &ids),
            );
        }
        group.finish();
    }
}

/// bf16 → FP8 e4m3 (saturating): activations `[t, d]` and an expert's gate/up weight `[2f, d]`.
fn cast_to_fp8(c: &mut Criterion) {
    for device in runner::devices() {
        let (dims, tokens) = setting(device);
        let group_name = format!("{device}/cast");
        let Some(mut timer) = runner::timer(&group_name, device) else {
            continue;
        };
        let mut group = c.benchmark_group(&group_name);
        let (from, to) = (DType::BF16, DType::F8E4M3);
        let function = format!("{from}_to_{to}");
        for (rows, cols) in [
            (tokens.prefill, dims.hidden),
            (tokens.long, dims.hidden),
            (2 * dims.ffn, dims.hidden),
        ] {
            let id = format!("{group_name}/{function}/{rows}x{cols}");
            let Some(x) = setup(&id, randn(&[rows, cols], from, 9, device)) else {
                continue;
            };
            bench_op(
                &mut group,
                &group_name,
                &mut timer,
                &function,
                format!("{rows}x{cols}"),
                units::cast(rows * cols, from, to),
                || l4_kernels::cast::cast(&x, to),
            );
        }
        group.finish();
    }
}

/// SwiGLU's two elementwise steps on the expert's hidden activations `[t, f]`: `silu(gate)` and
/// `silu(gate) · up`.
fn swiglu_elementwise(c: &mut Criterion) {
    for device in runner::devices() {
        let (dims, tokens) = setting(device);
        let dtype = DType::BF16;
        let f = dims.ffn;
        let Some(mut timer) = runner::timer(&format!("{device}/silu"), device) else {
            continue;
        };
        let mut inputs = Vec::new();
        for t in [tokens.decode, tokens.long] {
            let id = format!("{device}/silu/{dtype}/{t}x{f}");
            if let Some((gate, up)) = setup(&id, pair(&[t, f], dtype, device)) {
                inputs.push((t, gate, up));
            }
        }
        for op in ["silu", "mul"] {
            let group_name = format!("{device}/{op}");
            let mut group = c.benchmark_group(&group_name);
            for (t, gate, up) in &inputs {
                let elements = t * f;
                let (throughput, op): (_, Box<dyn Fn() -> l4_core::Result<Tensor>>) = if op == "silu" {
                    (
                        units::elementwise(elements, dtype),
                        Box::new(|| l4_kernels::elementwise::unary(UnaryOp::Silu, gate)),
                    )
                } else {
                    (
                        units::binary_elementwise(elements, dtype),
                        Box::new(|| l4_kernels::elementwise::binary(BinaryOp::Mul, gate, up)),
                    )
                };
                bench_op(
                    &mut group,
                    &group_name,
                    &mut timer,
                    dtype.name(),
                    format!("{t}x{f}"),
                    throughput,
                    op,
                );
            }
            group.finish();
        }
    }
}

/// Top-k: the router's over `[t, e]` logits (k = experts per token) and greedy decoding's
/// top-1 over `[b, v]` logits.
fn topk_rows(c: &mut Criterion) {
    for device in runner::devices() {
        let (dims, tokens) = setting(device);
        let group_name = format!("{device}/topk");
        let Some(mut timer) = runner::timer(&group_name, device) else {
            continue;
        };
        let mut group = c.benchmark_group(&group_name);
        let dtype = DType::BF16;
        let router_k = dims.top_k.max(1);
        for (rows, cols, k) in [
            (tokens.prefill, dims.experts, router_k),
            (tokens.long, dims.experts, router_k),
            (tokens.decode, dims.vocab, 1),
        ] {
            if cols == 0 {
                continue;
            }
            let function = format!("{dtype}_k{k}");
            let id = format!("{group_name}/{function}/{rows}x{cols}");
            let Some(x) = setup(&id, randn(&[rows, cols], dtype, 10, device)) else {
                continue;
            };
            bench_op(
                &mut group,
                &group_name,
                &mut timer,
                &function,
                format!("{rows}x{cols}"),
                units::topk(rows, cols, k, dtype),
                || l4_kernels::topk::topk(&x, k),
            );
        }
        group.finish();
    }
}

/// Llama 4's fused MoE routing (`moe_routing::route`, top-1 by logit, sigmoid weight, counts,
/// offsets and the slots sorted by expert, one launch) over router logits `[t, e]`: Scout's 16
/// experts at a decode batch, a prefill and a long prefill, and Maverick's 128 at the long one.
fn moe_route(c: &mut Criterion) {
    use l4_kernels::moe_routing::{RouteKind, route};
    for device in runner::devices() {
        let (dims, tokens) = setting(device);
        let group_name = format!("{device}/moe_route");
        let Some(mut timer) = runner::timer(&group_name, device) else {
            continue;
        };
        let mut group = c.benchmark_group(&group_name);
        let dtype = DType::BF16;
        let maverick = if device.is_cuda() {
            ModelDims::of("llama4-maverick-17b-128e").experts
        } else {
            dims.experts
        };
        for (t, e) in [
            (tokens.decode, dims.experts),
            (tokens.prefill, dims.experts),
            (tokens.long, dims.experts),
            (tokens.long, maverick),
        ] {
            if e == 0 {
                continue;
            }
            let function = format!("{dtype}_llama4");
            let id = format!("{group_name}/{function}/{t}x{e}");
            let Some(logits) = setup(&id, randn(&[t, e], dtype, 11, device)) else {
                continue;
            };
            // Logits read once; experts, weights and sorted slots (k = 1), counts and offsets
            // written once, all 4-byte.
            let bytes = t * e * dtype.size_in_bytes() + 4 * (3 * t + 2 * e + 1);
            let throughput = criterion::Throughput::ElementsAndBytes {
                elements: (t * e) as u64,
                bytes: bytes as u64,
            };
            bench_op(
                &mut group,
                &group_name,
                &mut timer,
                &function,
                format!("{t}x{e}"),
                throughput,
                || route(&logits, RouteKind::Llama4),
            );
        }
        group.finish();
    }
}

/// Split-KV decode attention (`attention_decode`): one new token per sequence attending to a
/// full attention chunk of cached keys, at batch 1 and 16. `q [b, hk, g, dh]` holds the `g = h/hk`
/// query heads that share each KV head; `k`, `v [b, hk, s, dh]`. Memory-bound by design: the
/// bytes are K and V read once plus q and the output; elements are the `b·h·s` scores.
fn decode_attention(c: &mut Criterion) {
    use l4_kernels::attention_decode::{DecodeShape, decode_attention};
    for device in runner::devices() {
        let (dims, tokens) = setting(device);
        let group_name = format!("{device}/attention_decode");
        let Some(mut timer) = runner::timer(&group_name, device) else {
            continue;
        };
        let mut group = c.benchmark_group(&group_name);
        let dtype = DType::BF16;
        let (h, hk, dh) = (dims.heads, dims.kv_heads, dims.head_dim);
        let s = dims.chunk.unwrap_or(tokens.prefill);
        for b in [1, tokens.decode] {
            let value = format!("{b}x{h}x{hk}x{s}x{dh}");
            let id = format!("{group_name}/{dtype}/{value}");
            let inputs = || -> l4_core::Result<(Tensor, Tensor, Tensor)> {
                Ok((
                    randn(&[b, hk, h / hk, dh], dtype, 12, device)?,
                    randn(&[b, hk, s, dh], dtype, 13, device)?,
                    randn(&[b, hk, s, dh], dtype, 14, device)?,
                ))
            };
            let Some((q, k, v)) = setup(&id, inputs()) else {
                continue;
            };
            let shape = DecodeShape {
                tq: 1,
                q_start: s - 1,
                k_start: 0,
                scale: 1.0 / (dh as f64).sqrt(),
            };
            let size = dtype.size_in_bytes();
            let bytes = 2 * b * hk * s * dh * size + 2 * b * h * dh * size;
            let throughput = criterion::Throughput::ElementsAndBytes {
                elements: (b * h * s) as u64,
                bytes: bytes as u64,
            };
            bench_op(
                &mut group,
                &group_name,
                &mut timer,
                dtype.name(),
                value,
                throughput,
                || decode_attention(&q, &k, &v, shape),
            );
        }
        group.finish();
    }
}

/// Prefill attention (`attention_prefill`, tensor cores, online softmax), bf16: global causal
/// over a 2048-token prompt (Llama 4's NoPE layers) and chunked causal over 16384 tokens (its
/// RoPE layers: two 8192-token chunks, key tiles outside a query's chunk skipped). Compute-bound:
/// elements are FLOPs over the visible (query, key) pairs only, 4·dh each (QKᵀ and PV), so a
/// masked half is never credited; bytes are q, k, v and the output once.
fn prefill_attention(c: &mut Criterion) {
    use l4_kernels::attention_prefill::{PrefillShape, prefill_attention};
    for device in runner::devices() {
        let (dims, tokens) = setting(device);
        let group_name = format!("{device}/attention_prefill");
        let Some(mut timer) = runner::timer(&group_name, device) else {
            continue;
        };
        let mut group = c.benchmark_group(&group_name);
        let dtype = DType::BF16;
        let (h, hk, dh) = (dims.heads, dims.kv_heads, dims.head_dim);
        let mut cases = vec![(tokens.prefill, None)];
        if let Some(chunk) = dims.chunk {
            cases.push((2 * chunk, Some(chunk)));
        }
        for (t, chunk) in cases {
            let function = match chunk {
                None => format!("{dtype}_causal"),
                Some(c) => format!("{dtype}_chunk{c}"),
            };
            let value = format!("1x{h}x{hk}x{t}x{dh}");
            let id = format!("{group_name}/{function}/{value}");
            let inputs = || -> l4_core::Result<(Tensor, Tensor, Tensor)> {
                Ok((
                    randn(&[1, h, t, dh], dtype, 15, device)?,
                    randn(&[1, hk, t, dh], dtype, 16, device)?,
                    randn(&[1, hk, t, dh], dtype, 17, device)?,
                ))
            };
            let Some((q, k, v)) = setup(&id, inputs()) else {
                continue;
            };
            let shape = PrefillShape {
                q_start: 0,
                k_start: 0,
                chunk,
                scale: 1.0 / (dh as f64).sqrt(),
            };
            // Visible pairs: each chunk (or the whole prompt) is causal on its own.
            let span = chunk.unwrap_or(t);
            let pairs: usize = (0..t)
                .step_by(span)
                .map(|start| {
                    let len = span.min(t - start);
                    len * (len + 1) / 2
                })
                .sum();
            let size = dtype.size_in_bytes();
            let throughput = criterion::Throughput::ElementsAndBytes {
                elements: (4 * h * pairs * dh) as u64,
                bytes: (2 * (h + hk) * t * dh * size) as u64,
            };
            bench_op(
                &mut group,
                &group_name,
                &mut timer,
                &function,
                value,
                throughput,
                || prefill_attention(&q, &k, &v, shape),
            );
        }
        group.finish();
    }
}

/// Two seeded tensors of one shape.
fn pair(shape: &[usize], dtype: DType, device: Device) -> l4_core::Result<(Tensor, Tensor)> {
    Ok((randn(shape, dtype, 1, device)?, randn(shape, dtype, 2, device)?))
}

fn main() -> ExitCode {
    let mut c = Criterion::default().configure_from_args();
    vector_add_bandwidth(&mut c);
    rms_norm_rows(&mut c);
    softmax_rows(&mut c);
    rope_heads(&mut c);
    embedding_gather(&mut c);
    cast_to_fp8(&mut c);
    swiglu_elementwise(&mut c);
    topk_rows(&mut c);
    moe_route(&mut c);
    decode_attention(&mut c);
    prefill_attention(&mut c);
    attention::paged_prefill(&mut c);
    attention::paged_decode(&mut c);
    attention::qk_prologue(&mut c);
    long_context::long_context_check();
    gemm::matmul_bf16(&mut c);
    fp8_gemm::fp8_gemms(&mut c);
    moe_experts::moe_blocks(&mut c);
    c.final_summary();
    runner::exit_status()
}
