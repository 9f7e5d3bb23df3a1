//! Whole MoE blocks (routing, routed experts, shared expert) at Llama 4's shapes: Scout (16
//! experts) and Maverick (128), top-1, d 5120, f 8192, with the shared expert, at
//! T ∈ {1, 4, 16, 64, 512, 4096, 16384} tokens, bf16 and FP8 routed experts:
//!
//! * `moe_block_grouped`: `moe_routing::route` then `moe_experts_with_shared` (gate_up with
//!   SwiGLU fused, down with the combine fused, the shared expert as one more expert in both
//!   launches), bf16 on tensor cores;
//! * `moe_block_grouped_separate_shared`: the same kernels for the routed experts only, the
//!   shared expert as three cuBLASLt GEMMs whose output the down launch adds (the form before
//!   the shared expert joined the launches);
//! * `moe_block_composed`: the same routing, then per chosen expert a row gather and two
//!   cuBLASLt GEMMs (`ops::matmul`) with silu ⊙ up between them, gathered back per token and
//!   added to the shared expert: what the model ran before `moe_experts`;
//! * `moe_block_grouped_fp8`: `fp8_moe_experts` (e4m3 weights with per-channel scales,
//!   activations quantized per token, bounded at 1200 as Meta's recipe): CUDA cores up to 64
//!   slots, mma.sync m16n8k32 e4m3 above (f16 HMMA after ptxas on sm_90);
//! * `moe_block_composed_fp8`: per chosen expert, per-token quantization and cuBLASLt's FP8
//!   GEMM (l4's FP8 GEMM on the CPU), twice.
//!
//! The shared expert runs as three bf16 cuBLASLt GEMMs in every other variant. Throughput: elements =
//! FLOPs (routed `2·T·3·d·f` plus the shared expert's, i.e. TFLOP/s for prefill sizes); bytes =
//! the unique weight bytes read (each chosen expert's weights once, the shared expert's) plus x
//! and the output, i.e. the fraction of HBM bandwidth for decode sizes. Weights are random
//! (made on the device, one expert at a time); the routing of the seeded logits decides which
//! experts a step reads. On the CPU the entries run at the tiny preset's sizes with T ∈ {1, 4, 16}.

use criterion::{Criterion, Throughput};
use l4_benches::runner::{self, bench_op, randn, setup};
use l4_benches::shapes::ModelDims;
use l4_core::{DType, Device, Result, Tensor};
use l4_kernels::fp8_gemm::{Epilogue, fp8_gemm};
use l4_kernels::moe_experts::{
    Fp8Experts, SharedExpert, WeightOn, fp8_moe_experts, moe_experts, moe_experts_with_shared,
};
use l4_kernels::moe_routing::{RouteKind, RoutedTokens, route};
use l4_kernels::ops;
use l4_kernels::quant::{Granularity, Quantized, quantize};

/// Meta's bound on an activation row's amax (`Fp8Linear`'s `ACTIVATION_SCALE_UB`).
const ACTIVATION_SCALE_UB: f32 = 1200.0;
const GPU_TOKENS: [usize; 7] = [1, 4, 16, 64, 512, 4096, 16384];
const CPU_TOKENS: [usize; 3] = [1, 4, 16];

/// One MoE block's sizes.
struct Block {
    name: &'static str,
    e: usize,
    d: usize,
    f: usize,
}

/// The shared expert, `[d, 2f]` and `[f, d]` bf16, applied as `x · W`.
struct Shared {
    gate_up: Tensor,
    down: Tensor,
}

impl Shared {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        swiglu(x, &self.gate_up, &self.down)
    }
}

/// `silu(x·Wg) ⊙ (x·Wu) · Wd` from plain ops (`gate_up [d, 2f]`, `down [f, d]`).
fn swiglu(x: &Tensor, gate_up: &Tensor, down: &Tensor) -> Result<Tensor> {
    let f = down.shape()[0];
    let p = ops::matmul(x, gate_up)?;
    let h = ops::mul(&ops::silu(&p.narrow(1, 0, f)?)?, &p.narrow(1, f, f)?)?;
    ops::matmul(&h, down)
}

/// `[e, rows, cols]` bf16, one seeded expert at a time (the random kernel's sizes stay small).
fn stacked(e: usize, rows: usize, cols: usize, seed: u64, device: Device) -> Result<Tensor> {
    let scale = 1.0 / (rows as f64).sqrt();
    let parts = (0..e)
        .map(|i| {
            ops::scale(&randn(&[rows, cols], DType::BF16, seed + i as u64, device)?, scale)?.reshape(&[1, rows, cols])
        })
        .collect::<Result<Vec<_>>>()?;
    ops::cat(&parts.iter().collect::<Vec<_>>(), 0)
}

/// Per-expert FP8 weights `[n, k]` (nn.Linear layout), quantized per output channel.
fn fp8_experts(e: usize, n: usize, k: usize, seed: u64, device: Device) -> Result<Vec<Quantized>> {
    (0..e)
        .map(|i| {
            quantize(
                &randn(&[n, k], DType::BF16, seed + i as u64, device)?,
                Granularity::PerRow,
                None,
            )
        })
        .collect()
}

/// Chosen experts per token slot and (for the composition) the host's grouping of slots.
fn groups(routed: &RoutedTokens, e: usize) -> Result<Vec<Vec<i64>>> {
    let chosen = routed.topk_expert.to_vec::<i32>()?;
    let mut by_expert = vec![Vec::new(); e];
    for (slot, &expert) in chosen.iter().enumerate() {
        by_expert[expert as usize].push(slot as i64);
    }
    Ok(by_expert)
}

/// The composition's combine: expert outputs (rows in expert order) back in token order, plus
/// the shared expert's output (top-1: one row per token).
fn scatter_back(rows: &[Tensor], by_expert: &[Vec<i64>], shared: &Tensor, device: Device) -> Result<Tensor> {
    let order: Vec<i64> = by_expert.concat();
    let mut row_of = vec![0i64; order.len()];
    for (row, &slot) in order.iter().enumerate() {
        row_of[slot as usize] = row as i64;
    }
    let all = ops::cat(&rows.iter().collect::<Vec<_>>(), 0)?;
    let index = Tensor::from_vec(row_of.clone(), &[row_of.len()], Device::Cpu)?.to_device(device)?;
    ops::add(shared, &ops::index_select(&all, 0, &index)?)
}

/// The bf16 composition: per chosen expert, gather, scale, two GEMMs.
fn composed_bf16(x: &Tensor, logits: &Tensor, gate_up: &Tensor, down: &Tensor, shared: &Shared) -> Result<Tensor> {
    let device = x.device();
    let (e, d, f2) = (gate_up.shape()[0], gate_up.shape()[1], gate_up.shape()[2]);
    let routed = route(logits, RouteKind::Llama4)?;
    let weights = routed.topk_weight.to_f32_vec()?;
    let by_expert = groups(&routed, e)?;
    let mut rows = Vec::new();
    for (expert, slots) in by_expert.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
        let index = Tensor::from_vec(slots.clone(), &[slots.len()], Device::Cpu)?.to_device(device)?;
        let w: Vec<f32> = slots.iter().map(|&s| weights[s as usize]).collect();
        let w = Tensor::from_f32_vec(w, &[slots.len(), 1], x.dtype(), device)?;
        let xe = ops::mul(&ops::index_select(x, 0, &index)?, &w)?;
        let gu = gate_up.narrow(0, expert, 1)?.reshape(&[d, f2])?;
        let dn = down.narrow(0, expert, 1)?.reshape(&[f2 / 2, d])?;
        rows.push(swiglu(&xe, &gu, &dn)?);
    }
    scatter_back(&rows, &by_expert, &shared.forward(x)?, device)
}

/// An FP8 GEMM of the composition: cuBLASLt's on CUDA, l4's reference on the CPU.
fn fp8_linear(a: &Tensor, b: &Quantized) -> Result<Tensor> {
    let a = quantize(a, Granularity::PerRow, Some(ACTIVATION_SCALE_UB))?;
    if a.values.device().is_cuda() {
        l4_kernels::fp8_gemm::cublaslt::cublaslt_fp8_gemm(&a, b, DType::BF16)
    } else {
        fp8_gemm(&a, b, DType::BF16, Epilogue::default())
    }
}

/// The FP8 composition: per chosen expert, gather, scale, two per-token-quantized FP8 GEMMs.
fn composed_fp8(
    x: &Tensor,
    logits: &Tensor,
    gate_up: &[Quantized],
    down: &[Quantized],
    shared: &Shared,
) -> Result<Tensor> {
    let device = x.device();
    let routed = route(logits, RouteKind::Llama4)?;
    let weights = routed.topk_weight.to_f32_vec()?;
    let by_expert = groups(&routed, gate_up.len())?;
    let mut rows = Vec::new();
    for (expert, slots) in by_expert.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
        let index = Tensor::from_vec(slots.clone(), &[slots.len()], Device::Cpu)?.to_device(device)?;
        let w: Vec<f32> = slots.iter().map(|&s| weights[s as usize]).collect();
        let w = Tensor::from_f32_vec(w, &[slots.len(), 1], x.dtype(), device)?;
        let xe = ops::mul(&ops::index_select(x, 0, &index)?, &w)?;
        let p = fp8_linear(&xe, &gate_up[expert])?; // [n_e, 2f]
        let f = p.shape()[1] / 2;
        let h = ops::mul(&ops::silu(&p.narrow(1, 0, f)?)?, &p.narrow(1, f, f)?)?;
        rows.push(fp8_linear(&h, &down[expert])?);
    }
    scatter_back(&rows, &by_expert, &shared.forward(x)?, device)
}

/// FLOPs and the unique bytes of one block step: the chosen experts' weights once, the shared
/// expert's, x and the output.
fn throughput(block: &Block, t: usize, used_experts: usize, weight_bytes: usize) -> Throughput {
    let (d, f) = (block.d, block.f);
    let flops = 2 * t * 3 * d * f * 2; // routed (top-1) and shared
    let bytes = used_experts * 3 * d * f * weight_bytes + 3 * d * f * 2 + 2 * t * d * 2;
    Throughput::ElementsAndBytes {
        elements: flops as u64,
        bytes: bytes as u64,
    }
}

/// The bf16 and FP8 MoE block benches.
pub fn moe_blocks(c: &mut Criterion) {
    for device in runner::devices() {
        let (blocks, tokens): (Vec<Block>, &[usize]) = if device.is_cuda() {
            let (scout, maverick) = (ModelDims::gpu(), ModelDims::of("llama4-maverick-17b-128e"));
            let block = |name, dims: &ModelDims| Block {
                name,
                e: dims.experts,
                d: dims.hidden,
                f: dims.ffn,
            };
            (vec![block("scout", &scout), block("maverick", &maverick)], &GPU_TOKENS)
        } else {
            let dims = ModelDims::cpu();
            let block = Block {
                name: "tiny",
                e: dims.experts,
                d: dims.hidden,
                f: dims.ffn,
            };
            (vec![block], &CPU_TOKENS)
        };
        for block in &blocks {
            bench_block(c, device, block, tokens);
        }
    }
}

fn bench_block(c: &mut Criterion, device: Device, block: &Block, tokens: &[usize]) {
    let Block { name, e, d, f } = *block;
    let setup_id = format!("{device}/moe_block/{name}");
    let Some(shared) = setup(
        &setup_id,
        stacked(1, d, 2 * f, 900, device).and_then(|gu| {
            Ok(Shared {
                gate_up: gu.reshape(&[d, 2 * f])?,
                down: stacked(1, f, d, 901, device)?.reshape(&[f, d])?,
            })
        }),
    ) else {
        return;
    };
    // Inputs and routing per token count; which experts a step reads decides its bytes.
    let mut inputs = Vec::new();
    for &t in tokens {
        let made = randn(&[t, d], DType::BF16, 7, device).and_then(|x| {
            let logits = randn(&[t, e], DType::BF16, 8, device)?;
            let counts = route(&logits, RouteKind::Llama4)?.expert_count.to_vec::<i32>()?;
            Ok((t, x, logits, counts.iter().filter(|&&c| c > 0).count()))
        });
        if let Some(input) = setup(&format!("{setup_id}/{t}"), made) {
            inputs.push(input);
        }
    }
    let run_group =
        |c: &mut Criterion, group: &str, weight_bytes: usize, op: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>| {
            let group_name = format!("{device}/{group}");
            let Some(mut timer) = runner::timer(&group_name, device) else {
                return;
            };
            let mut g = c.benchmark_group(&group_name);
            g.sample_size(10);
            for (t, x, logits, used) in &inputs {
                bench_op(
                    &mut g,
                    &group_name,
                    &mut timer,
                    name,
                    format!("{t}x{d}x{f}x{e}"),
                    throughput(block, *t, *used, weight_bytes),
                    || op(x, logits),
                );
            }
            g.finish();
        };
    // bf16 experts, then dropped before the FP8 ones are made (Maverick's are 32 GB in bf16).
    if let Some((gate_up, down)) = setup(
        &format!("{setup_id}/bf16"),
        stacked(e, d, 2 * f, 1000, device).and_then(|gu| Ok((gu, stacked(e, f, d, 2000, device)?))),
    ) {
        run_group(c, "moe_block_grouped", 2, &|x, logits| {
            let routed = route(logits, RouteKind::Llama4)?;
            let fused = SharedExpert {
                gate_up: &shared.gate_up,
                down: &shared.down,
            };
            moe_experts_with_shared(x, &routed, &gate_up, &down, WeightOn::Input, fused)
        });
        run_group(c, "moe_block_grouped_separate_shared", 2, &|x, logits| {
            let routed = route(logits, RouteKind::Llama4)?;
            moe_experts(x, &routed, &gate_up, &down, WeightOn::Input, Some(&shared.forward(x)?))
        });
        run_group(c, "moe_block_composed", 2, &|x, logits| {
            composed_bf16(x, logits, &gate_up, &down, &shared)
        });
    }
    let Some((gate_up, down)) = setup(
        &format!("{setup_id}/fp8"),
        fp8_experts(e, 2 * f, d, 3000, device).and_then(|gu| Ok((gu, fp8_experts(e, d, f, 4000, device)?))),
    ) else {
        return;
    };
    if let Some(stacked) = setup(&format!("{setup_id}/fp8"), Fp8Experts::from_per_expert(&gate_up, &down)) {
        run_group(c, "moe_block_grouped_fp8", 1, &|x, logits| {
            let routed = route(logits, RouteKind::Llama4)?;
            let shared = shared.forward(x)?;
            fp8_moe_experts(
                x,
                &routed,
                &stacked,
                WeightOn::Input,
                Some(&shared),
                Some(ACTIVATION_SCALE_UB),
            )
        });
    }
    run_group(c, "moe_block_composed_fp8", 1, &|x, logits| {
        composed_fp8(x, logits, &gate_up, &down, &shared)
    });
}
