//! The FP8 experts ([`super::fp8`]). On the CPU: each stage of the f64 reference equals the
//! plain-op composition (dequantize, matmul, silu, mul, matmul, scatter-add) fed the same codes,
//! within the derived bound, and the whole FP8 block is within the bound that adds each path's
//! own quantization of `h`. On CUDA: each kernel against the reference fed the same codes, twice
//! with identical bits.

use l4_core::testing::gamma;
use l4_core::{DType, Device, Tensor};
use proptest::prelude::*;

use super::WeightOn;
use super::fp8::{Fp8Experts, fp8_down_combine, fp8_gate_up_swiglu, fp8_moe_experts};
use super::reference::{expert_of_rows, gather_inputs, host_routing};
use super::tests::{check, values};
use crate::moe_routing::{RouteKind, RoutedTokens};
use crate::ops;
use crate::quant::{Granularity, Quantized, dequantize, quantize};
use crate::testing::{Rng, fresh_seed, gpu_with_nvrtc_or_skip};

const U32: f64 = f32::EPSILON as f64 / 2.0;
const SILU_SLOPE: f64 = 1.1;
/// Half the spacing of e4m3 normals, relative (3 mantissa bits), and half the subnormal spacing
/// (2^-9) in units of the scale: the most one quantization moves a value.
const E4M3_HALF_ULP: f64 = 1.0 / 16.0;
const E4M3_HALF_SUBNORMAL: f64 = 1.0 / 1024.0;

struct Problem {
    dtype: DType,
    weight_on: WeightOn,
    t: usize,
    d: usize,
    f: usize,
    k: usize,
    x: Tensor,
    experts: Fp8Experts,
    shared: Option<Tensor>,
    routed: RoutedTokens,
}

#[allow(clippy::too_many_arguments)]
fn problem(dtype: DType, t: usize, d: usize, f: usize, e: usize, k: usize, shared: bool, seed: u64) -> Problem {
    let mut rng = Rng(seed);
    let muted: Vec<bool> = (0..e).map(|i| i > 0 && rng.below(3) == 0).collect();
    let logits: Vec<f32> = (0..t * e)
        .map(|i| {
            if muted[i % e] {
                -1e4
            } else {
                values(1, 4.0, &mut rng)[0]
            }
        })
        .collect();
    let logits = Tensor::from_f32_vec(logits, &[t, e], DType::F32, Device::Cpu).unwrap();
    let kind = if k == 1 {
        RouteKind::Llama4
    } else {
        RouteKind::SoftmaxTopK { k, renormalize: true }
    };
    let routed = crate::moe_routing::reference::route(&logits, kind).unwrap();
    let weight_on = if rng.below(2) == 0 {
        WeightOn::Input
    } else {
        WeightOn::Output
    };
    let tensor = |shape: &[usize], scale: f32, rng: &mut Rng| {
        let n = shape.iter().product();
        Tensor::from_f32_vec(values(n, scale, rng), shape, dtype, Device::Cpu).unwrap()
    };
    let gate_up = tensor(&[e, d, 2 * f], 1.0 / (d as f32).sqrt(), &mut rng);
    let down = tensor(&[e, f, d], 1.0 / (f as f32).sqrt(), &mut rng);
    Problem {
        dtype,
        weight_on,
        t,
        d,
        f,
        k,
        x: tensor(&[t, d], 1.0, &mut rng),
        experts: Fp8Experts::quantize(&gate_up, &down).unwrap(),
        shared: shared.then(|| tensor(&[t, d], 1.0, &mut rng)),
        routed,
    }
}

/// `[e, n, k]` codes with `[e, n]` scales as exact f64 values `q·s`.
fn exact_weights(codes: &Tensor, scales: &Tensor) -> Vec<f64> {
    let (q, s) = (codes.to_f32_vec().unwrap(), scales.to_f32_vec().unwrap());
    let k = codes.shape()[2];
    q.iter().enumerate().map(|(i, &v)| v as f64 * s[i / k] as f64).collect()
}

/// Rows of a `[rows, cols]` tensor quantized per row, as exact f64 values and the row scales.
fn quantized_rows(a: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let cols = a.shape()[1];
    let q = quantize(a, Granularity::PerRow, None).unwrap();
    let (codes, scales) = (q.values.to_f32_vec().unwrap(), q.scales.to_f32_vec().unwrap());
    let exact = codes
        .iter()
        .enumerate()
        .map(|(i, &v)| v as f64 * scales[i / cols] as f64)
        .collect();
    (exact, scales.into_iter().map(f64::from).collect())
}

/// `W [n, k]` of expert `e` dequantized to f32, as a `[k, n]` view for `a · W`.
fn dequantized(codes: &Tensor, scales: &Tensor, e: usize) -> Tensor {
    let (n, k) = (codes.shape()[1], codes.shape()[2]);
    let q = Quantized {
        values: codes.narrow(0, e, 1).unwrap().reshape(&[n, k]).unwrap(),
        scales: scales.narrow(0, e, 1).unwrap().reshape(&[n, 1]).unwrap(),
        granularity: Granularity::PerRow,
    };
    dequantize(&q, DType::F32).unwrap().permute(&[1, 0]).unwrap()
}

/// Row `r` of `a [rows, cols]`, quantized per row and dequantized to f32 (`q·s` rounded once
/// in f32, one of the two extra roundings per product in the bounds' `γ_{d+2}`).
fn dequantized_row(a: &Tensor, r: usize) -> Tensor {
    let q = quantize(a, Granularity::PerRow, None).unwrap();
    let row = Quantized {
        values: q.values.narrow(0, r, 1).unwrap(),
        scales: q.scales.narrow(0, r, 1).unwrap(),
        granularity: Granularity::PerRow,
    };
    dequantize(&row, DType::F32).unwrap()
}

/// h from plain ops on the same codes: per sorted row, dequantized input row times the
/// dequantized expert weight, silu ⊙ up, rounded into the dtype.
fn composed_h(p: &Problem, xs: &Tensor) -> Tensor {
    let (_, offset, _) = host_routing(&p.routed, p.dtype).unwrap();
    let experts = expert_of_rows(&offset, xs.shape()[0]);
    let rows: Vec<Tensor> = experts
        .iter()
        .enumerate()
        .map(|(r, &e)| {
            let a = dequantized_row(xs, r); // [1, d] f32
            let proj = ops::matmul(&a, &dequantized(&p.experts.gate_up, &p.experts.gate_up_scales, e)).unwrap();
            let gate = ops::silu(&proj.narrow(1, 0, p.f).unwrap()).unwrap();
            ops::mul(&gate, &proj.narrow(1, p.f, p.f).unwrap())
                .unwrap()
                .to_dtype(p.dtype)
                .unwrap()
        })
        .collect();
    let rows: Vec<&Tensor> = rows.iter().collect();
    ops::cat(&rows, 0).unwrap()
}

/// out from plain ops given `h`: per slot, the dequantized h row times the dequantized down
/// weight, times the weight, added to the shared row in slot order.
fn composed_out(p: &Problem, h: &Tensor) -> Tensor {
    let (sorted, offset, weight) = host_routing(&p.routed, p.dtype).unwrap();
    let experts = expert_of_rows(&offset, sorted.len());
    let mut row_of_slot = vec![0; sorted.len()];
    for (r, &slot) in sorted.iter().enumerate() {
        row_of_slot[slot as usize] = r;
    }
    let mut rows = Vec::new();
    for token in 0..p.t {
        let index = Tensor::from_vec(vec![token as i64], &[1], Device::Cpu).unwrap();
        let mut sum = match &p.shared {
            Some(s) => ops::index_select(s, 0, &index).unwrap().to_dtype(DType::F32).unwrap(),
            None => Tensor::zeros(&[1, p.d], DType::F32, Device::Cpu).unwrap(),
        };
        for j in 0..p.k {
            let slot = token * p.k + j;
            let r = row_of_slot[slot];
            let mut y = ops::matmul(
                &dequantized_row(h, r),
                &dequantized(&p.experts.down, &p.experts.down_scales, experts[r]),
            )
            .unwrap();
            if p.weight_on == WeightOn::Output {
                let w = Tensor::from_f32_vec(vec![weight[slot]], &[1, 1], DType::F32, Device::Cpu).unwrap();
                y = ops::mul(&y, &w).unwrap();
            }
            sum = ops::add(&sum, &y).unwrap();
        }
        rows.push(sum.to_dtype(p.dtype).unwrap());
    }
    let rows: Vec<&Tensor> = rows.iter().collect();
    ops::cat(&rows, 0).unwrap()
}

/// Bounds on `|h − h_exact|` for an f32 path over the exact dequantized operands `a` (rows of
/// `d`) with rounding of `h` into the dtype, as in `tests.rs` (`γ_{d+2}`: the f32 dequantization
/// of both operands adds two roundings per product), plus the exact h.
fn h_bounds(p: &Problem, a: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (d, f) = (p.d, p.f);
    let (_, offset, _) = host_routing(&p.routed, p.dtype).unwrap();
    let w = exact_weights(&p.experts.gate_up, &p.experts.gate_up_scales); // [e, 2f, d]
    let experts = expert_of_rows(&offset, a.len() / d.max(1));
    let (ud, lambda) = (p.dtype.unit_roundoff(), p.dtype.min_positive_normal().unwrap_or(0.0));
    let gd = gamma(d + 2, U32);
    let (mut bound, mut exact) = (Vec::new(), Vec::new());
    for (r, &e) in experts.iter().enumerate() {
        let ar = &a[r * d..][..d];
        for c in 0..f {
            let dot = |n: usize| -> (f64, f64) {
                let row = &w[(e * 2 * f + n) * d..][..d];
                ar.iter()
                    .zip(row)
                    .fold((0.0, 0.0), |(s, m), (x, w)| (s + x * w, m + (x * w).abs()))
            };
            let ((g, mg), (u, mu)) = (dot(c), dot(f + c));
            let (eg, eu) = (gd * mg, gd * mu);
            let silu = g / (1.0 + (-g).exp());
            let propagated = SILU_SLOPE * eg * (u.abs() + eu) + silu.abs() * eu;
            bound.push(propagated + (6.0 * U32 + ud) * (silu * u).abs() + (6.0 * U32 + ud) * propagated + ud * lambda);
            exact.push(silu * u);
        }
    }
    (bound, exact)
}

/// Bounds on `|out − out_exact|` for a path whose dequantized `h` rows (exact f64 values
/// `h_values`) are off by at most `h_err`, with `roundings` roundings into the dtype in the
/// combine (`γ_{f+2}` per dot product as above).
fn out_bounds(p: &Problem, h_values: &[f64], h_err: &[f64], roundings: usize) -> Vec<f64> {
    let (d, f, k) = (p.d, p.f, p.k);
    let (sorted, offset, weight) = host_routing(&p.routed, p.dtype).unwrap();
    let w = exact_weights(&p.experts.down, &p.experts.down_scales); // [e, d, f]
    let shared = p.shared.as_ref().map(|s| s.to_f32_vec().unwrap());
    let (ud, lambda) = (p.dtype.unit_roundoff(), p.dtype.min_positive_normal().unwrap_or(0.0));
    let gf = gamma(f + 2, U32);
    let experts = expert_of_rows(&offset, sorted.len());
    let (mut err, mut mag) = (vec![0f64; sorted.len() * d], vec![0f64; sorted.len() * d]);
    for (r, &slot) in sorted.iter().enumerate() {
        let slot = slot as usize;
        let scale = if p.weight_on == WeightOn::Output {
            weight[slot].abs() as f64
        } else {
            1.0
        };
        for c in 0..d {
            let row = &w[(experts[r] * d + c) * f..][..f];
            let (mut carried, mut m) = (0f64, 0f64);
            for kk in 0..f {
                carried += h_err[r * f + kk] * row[kk].abs();
                m += (h_values[r * f + kk].abs() + h_err[r * f + kk]) * row[kk].abs();
            }
            err[slot * d + c] = scale * (carried + gf * m) + U32 * scale * m;
            mag[slot * d + c] = scale * m;
        }
    }
    (0..p.t * d)
        .map(|i| {
            let (token, c) = (i / d, i % d);
            let (mut e_sum, mut m_sum) = (0f64, shared.as_ref().map_or(0.0, |s| s[i].abs() as f64));
            for j in 0..k {
                e_sum += err[(token * k + j) * d + c];
                m_sum += mag[(token * k + j) * d + c];
            }
            let combined = e_sum + gamma(k + 1, U32) * m_sum;
            combined + 2.0 * roundings as f64 * ud * (m_sum + combined) + ud * lambda
        })
        .collect()
}

fn sizes() -> impl Strategy<Value = (usize, usize, usize, usize, usize, bool, u64)> {
    (
        1usize..10,
        1usize..40,
        1usize..20,
        1usize..7,
        1usize..3,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(t, d, f, e, k, shared, seed)| (t, d, f, e, k.min(e), shared, seed))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Both stages against plain ops on the same codes (f32, so both sides round into f32).
    #[test]
    fn fp8_reference_stages_match_plain_ops((t, d, f, e, k, shared, seed) in sizes()) {
        let p = problem(DType::F32, t, d, f, e, k, shared, seed);
        let context = format!("t {t} d {d} f {f} e {e} k {k} {:?}", p.weight_on);
        let xs = gather_inputs(&p.x, &p.routed, p.weight_on, k, false).unwrap();
        let h = fp8_gate_up_swiglu(&p.x, &p.routed, &p.experts, p.weight_on, None).unwrap();
        let (a, _) = quantized_rows(&xs);
        let (hb, _) = h_bounds(&p, &a);
        let twice: Vec<f64> = hb.iter().map(|b| 2.0 * b).collect();
        check(&h, &composed_h(&p, &xs), &twice, &format!("{context}: h"));

        let out = fp8_down_combine(&h, &p.routed, &p.experts, p.weight_on, p.shared.as_ref(), None).unwrap();
        let (hv, _) = quantized_rows(&h);
        let zero = vec![0.0; hv.len()];
        let bound: Vec<f64> = out_bounds(&p, &hv, &zero, 1).iter().map(|b| 2.0 * b).collect();
        check(&out, &composed_out(&p, &h), &bound, &format!("{context}: out"));
    }
}

/// The whole FP8 block (bf16) against the block from plain ops, each quantizing its own h: the
/// dequantized h rows differ by both h errors plus each side's quantization error (half an e4m3
/// spacing, `2^-4·|h| + 2^-10·s`).
#[test]
fn fp8_block_is_within_the_quantization_bound_of_plain_ops() {
    let seed = fresh_seed();
    for (case, &(t, d, f, e, k)) in [(6, 32, 16, 4, 1), (7, 24, 8, 5, 2), (3, 48, 40, 3, 1)]
        .iter()
        .enumerate()
    {
        let p = problem(DType::BF16, t, d, f, e, k, case != 1, seed + case as u64);
        let context = format!("seed {seed} case {case}");
        let got = fp8_moe_experts(&p.x, &p.routed, &p.experts, p.weight_on, p.shared.as_ref(), None).unwrap();
        let xs = gather_inputs(&p.x, &p.routed, p.weight_on, k, false).unwrap();
        let h_theirs = composed_h(&p, &xs);
        let want = composed_out(&p, &h_theirs);
        let (a, _) = quantized_rows(&xs);
        let (hb, hx) = h_bounds(&p, &a);
        let h_ours = fp8_gate_up_swiglu(&p.x, &p.routed, &p.experts, p.weight_on, None).unwrap();
        let (_, scales) = quantized_rows(&h_ours);
        let (_, scales_theirs) = quantized_rows(&h_theirs);
        let h_err: Vec<f64> = (0..hx.len())
            .map(|i| {
                let row = i / f;
                let s = scales[row].max(scales_theirs[row]);
                2.0 * hb[i] + 2.0 * (E4M3_HALF_ULP * (hx[i].abs() + hb[i]) + E4M3_HALF_SUBNORMAL * s)
            })
            .collect();
        let bound = out_bounds(&p, &hx, &h_err, k + 2);
        check(&got, &want, &bound, &context);
    }
}

/// The FP8 launch takes the tensor cores only for more than 64 slots, FP8 mma.sync (compute
/// capability 8.9+), whole 16-byte rows and 16-byte aligned operands (views included), and every
/// kernel it names is defined in the source.
#[test]
fn fp8_dispatch_needs_prefill_steps_fp8_mma_and_aligned_rows() {
    use super::fp8_cuda::{fp8_launch, fp8_uses_tensor_cores};
    let codes = |cols: usize| Tensor::zeros(&[4, cols], DType::F8E4M3, Device::Cpu).unwrap();
    let (aligned, rows) = (codes(32), codes(32).narrow(0, 1, 2).unwrap()); // view at byte 32
    let misaligned = codes(24).narrow(0, 1, 2).unwrap(); // view at byte 24
    let hopper = (9, 0);
    assert!(fp8_uses_tensor_cores(hopper, 65, 32, &[&aligned, &rows]));
    assert!(fp8_uses_tensor_cores((8, 9), 4096, 5120, &[&aligned]));
    assert!(
        !fp8_uses_tensor_cores(hopper, 64, 32, &[&aligned]),
        "decode steps stay on CUDA cores"
    );
    assert!(
        !fp8_uses_tensor_cores((8, 0), 4096, 32, &[&aligned]),
        "no FP8 mma.sync before 8.9"
    );
    assert!(!fp8_uses_tensor_cores(hopper, 4096, 24, &[&aligned]), "k % 16 != 0");
    assert!(
        !fp8_uses_tensor_cores(hopper, 4096, 32, &[&aligned, &misaligned]),
        "a view off 16 bytes"
    );
    for dtype in ["f32", "bf16", "f16"] {
        for stage in ["gate_up", "down"] {
            for (tensor_cores, k) in [(true, 32), (false, 32), (false, 24)] {
                let (name, config) = fp8_launch(stage, dtype, tensor_cores, k, 200, (300, 8), &[&aligned]).unwrap();
                let source = crate::MOE_EXPERTS.source;
                assert!(
                    source.contains(&format!("({name}, ")) || source.contains(&format!(", {name}, ")),
                    "{name} is not an extern \"C\" kernel of moe_experts.cu"
                );
                let cols = if !tensor_cores {
                    8
                } else if stage == "gate_up" {
                    64
                } else {
                    128
                };
                assert_eq!(config.grid_dim.1 as usize, 200usize.div_ceil(cols), "{name}");
                let rows = if tensor_cores { 64 } else { 16 };
                assert_eq!(config.grid_dim.0 as usize, 300usize.div_ceil(rows) + 8, "{name}");
            }
        }
    }
}

/// The FP8 kernels against the reference fed the same codes, and bitwise reproducible.
#[test]
fn fp8_cuda_matches_the_reference_bitwise_reproducibly() {
    let Some(backend) = gpu_with_nvrtc_or_skip("moe_experts fp8_cuda_matches_the_reference") else {
        return;
    };
    let device = Device::Cuda(backend.info().ordinal);
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    let cases: Vec<(DType, usize, usize, usize, usize, usize)> = vec![
        (DType::BF16, 1, 64, 32, 16, 1),  // decode, 16-byte loads
        (DType::BF16, 50, 128, 48, 8, 1), // several 16-row tiles per expert
        (DType::F16, 20, 48, 32, 4, 2),   // k = 2: combine kernel
        (DType::F32, 9, 20, 12, 3, 1),    // byte loads (d, f not multiples of 16)
        // Tensor cores (more than 64 slots): experts of several 64-row blocks with ragged last
        // blocks, N edges (f 96 = 64 + 32 h columns; d 160 = 128 + 32), K tails (96, 160 and
        // 80 codes: partial 64-code tiles and 128-code promotion blocks).
        (DType::BF16, 200, 128, 96, 4, 1),
        (DType::F16, 60, 160, 80, 5, 2), // k = 2: partial sums and the combine
        (DType::F32, 150, 48, 40, 3, 1), // gate_up on tensor cores, down (f % 16 != 0) on CUDA cores
    ];
    for (case, &(dtype, t, d, f, e, k)) in cases.iter().enumerate() {
        let p = problem(dtype, t, d, f, e, k, case % 2 == 0, rng.next());
        let context = format!("seed {seed} case {case} {dtype:?} t {t} d {d} f {f} e {e} k {k}");
        let on = |x: &Tensor| x.to_device(device).unwrap();
        let routed = RoutedTokens {
            topk_expert: on(&p.routed.topk_expert),
            topk_weight: on(&p.routed.topk_weight),
            expert_count: on(&p.routed.expert_count),
            expert_offset: on(&p.routed.expert_offset),
            sorted_slots: on(&p.routed.sorted_slots),
        };
        let experts = Fp8Experts {
            gate_up: on(&p.experts.gate_up),
            gate_up_scales: on(&p.experts.gate_up_scales),
            down: on(&p.experts.down),
            down_scales: on(&p.experts.down_scales),
        };
        let (x, shared) = (on(&p.x), p.shared.as_ref().map(on));
        let h = fp8_gate_up_swiglu(&x, &routed, &experts, p.weight_on, None).unwrap();
        let h_again = fp8_gate_up_swiglu(&x, &routed, &experts, p.weight_on, None).unwrap();
        let bits = |t: &Tensor| t.to_f32_vec().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&h), bits(&h_again), "{context}: h not reproducible");
        let xs = gather_inputs(&p.x, &p.routed, p.weight_on, k, false).unwrap();
        let (a, _) = quantized_rows(&xs);
        let (hb, _) = h_bounds(&p, &a);
        let twice: Vec<f64> = hb.iter().map(|b| 2.0 * b).collect();
        let h_want = fp8_gate_up_swiglu(&p.x, &p.routed, &p.experts, p.weight_on, None).unwrap();
        check(&h, &h_want, &twice, &format!("{context}: h"));

        let out = fp8_down_combine(&h, &routed, &experts, p.weight_on, shared.as_ref(), None).unwrap();
        let out_again = fp8_down_combine(&h, &routed, &experts, p.weight_on, shared.as_ref(), None).unwrap();
        assert_eq!(bits(&out), bits(&out_again), "{context}: out not reproducible");
        let h_host = h.to_device(Device::Cpu).unwrap();
        let out_want = fp8_down_combine(&h_host, &p.routed, &p.experts, p.weight_on, p.shared.as_ref(), None).unwrap();
        let (hv, _) = quantized_rows(&h_host);
        let zero = vec![0.0; hv.len()];
        let bound: Vec<f64> = out_bounds(&p, &hv, &zero, 1).iter().map(|b| 2.0 * b).collect();
        check(&out, &out_want, &bound, &format!("{context}: out"));
    }
}
