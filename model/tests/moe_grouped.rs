//! The MoE block on a GPU runs the grouped expert kernels (`l4_kernels::moe_experts`, issue 6):
//! its output has the bits of those kernels called directly with the block's definition (the
//! fused routing; llama4's weight on the expert input, softmax-topk's on the output; the shared
//! expert added), for fused bf16 experts and row-wise FP8 experts, and two forwards give
//! identical bits. The kernels' own numerics are tested against their f64 reference in
//! `kernels/src/moe_experts/`. Skipped without a GPU (fails with `L4_REQUIRE_GPU=1`).

use l4_core::testing::test_devices;
use l4_core::{DType, Device, Tensor};
use l4_kernels::moe_experts::{Fp8Experts, WeightOn, fp8_moe_experts, moe_experts};
use l4_kernels::moe_routing::{RouteKind, route};
use l4_kernels::quant::Quantized;
use l4_model::parts::fp8::ACTIVATION_SCALE_UB;
use l4_model::parts::linear::Linear;
use l4_model::parts::mlp::SwiGlu;
use l4_model::parts::moe::{Experts, Moe};
use l4_model::parts::router::router_by_name;

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_f32_vec().unwrap().iter().map(|v| v.to_bits()).collect()
}

fn quantized(linears: &[Linear]) -> Vec<Quantized> {
    linears
        .iter()
        .map(|l| l.as_fp8().expect("FP8 experts").quantized().clone())
        .collect()
}

#[test]
fn the_gpu_moe_block_is_the_grouped_kernels() {
    let Some(device) = test_devices().into_iter().find(|d| d.is_cuda()) else {
        eprintln!("skipping the_gpu_moe_block_is_the_grouped_kernels: no CUDA device");
        return;
    };
    let (n, d, f, e) = (37, 64, 48, 8);
    let randn = |shape: &[usize], seed: u64, scale: f64| {
        let t = Tensor::randn(shape, DType::F32, 500 + seed, Device::Cpu).unwrap();
        let v: Vec<f32> = t.to_f32_vec().unwrap().iter().map(|x| x * scale as f32).collect();
        Tensor::from_f32_vec(v, shape, DType::BF16, device).unwrap()
    };
    let x = randn(&[n, d], 0, 1.0);
    let (gate_up, down) = (randn(&[e, d, 2 * f], 1, 0.125), randn(&[e, f, d], 2, 0.15));
    let shared = SwiGlu {
        gate: Linear::from_hf_weight(&randn(&[f, d], 3, 0.125)).unwrap(),
        up: Linear::from_hf_weight(&randn(&[f, d], 4, 0.125)).unwrap(),
        down: Linear::from_hf_weight(&randn(&[d, f], 5, 0.15)).unwrap(),
    };
    let router = Linear::from_hf_weight(&randn(&[e, d], 6, 0.125)).unwrap();
    for spec in ["llama4", "softmax-topk:k=2"] {
        for fp8 in [false, true] {
            let fused = Experts::Fused {
                gate_up: gate_up.clone(),
                down: down.clone(),
            };
            let experts = if fp8 {
                fused.map_linears(Linear::to_fp8).unwrap()
            } else {
                fused
            };
            let moe = Moe {
                router: router.clone(),
                experts,
                shared: Some(shared.clone()),
                strategy: router_by_name(spec).unwrap(),
            };
            let context = format!("{spec}, fp8 {fp8}");
            let out = moe.forward(&x).unwrap().output;
            assert_eq!(
                bits(&out),
                bits(&moe.forward(&x).unwrap().output),
                "{context}: not reproducible"
            );

            let kind = moe.strategy.fused().expect("a strategy the fused kernel routes");
            let routed = route(&moe.router.forward(&x).unwrap(), kind).unwrap();
            let shared_out = shared.forward(&x).unwrap();
            let run = |weight_on: WeightOn| match &moe.experts {
                Experts::Fused { gate_up, down } => {
                    moe_experts(&x, &routed, gate_up, down, weight_on, Some(&shared_out)).unwrap()
                }
                Experts::PerExpert { gate_up, down, .. } => {
                    let stacked = Fp8Experts::from_per_expert(&quantized(gate_up), &quantized(down)).unwrap();
                    fp8_moe_experts(
                        &x,
                        &routed,
                        &stacked,
                        weight_on,
                        Some(&shared_out),
                        Some(ACTIVATION_SCALE_UB),
                    )
                    .unwrap()
                }
            };
            let (right, wrong) = match kind {
                RouteKind::Llama4 => (WeightOn::Input, WeightOn::Output),
                RouteKind::SoftmaxTopK { .. } => (WeightOn::Output, WeightOn::Input),
            };
            assert_eq!(bits(&out), bits(&run(right)), "{context}: not the grouped kernels");
            // The placement matters for these weights, so the check above could fail.
            assert_ne!(
                bits(&out),
                bits(&run(wrong)),
                "{context}: placement makes no difference"
            );
        }
    }
}
