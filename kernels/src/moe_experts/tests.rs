//! `moe_experts` on every device. On the CPU (proptest): the f64 reference equals the block
//! composed from plain ops (gather, matmul, silu, mul, matmul, scatter-add) within the bound
//! derived in docs/numerics.md ("Grouped expert GEMM"), over random t, e, k, d, f with odd sizes
//! and experts that get no token. On CUDA: the kernels against the reference within the same
//! bound, and bitwise identical across two runs. The shared expert fused into the launches is
//! checked against the same block with the shared expert as one more routed expert, `e`, in
//! every token's slot 0 with weight 1 (bitwise on the CPU; and through it against plain ops).

use l4_core::testing::gamma;
use l4_core::{DType, Device, Tensor};
use proptest::prelude::*;

use super::reference::expert_of_rows;
use super::{
    SharedExpert, WeightOn, down_combine, down_combine_with_shared, gate_up_swiglu, gate_up_swiglu_with_shared,
    moe_experts, moe_experts_with_shared,
};
use crate::moe_routing::{RouteKind, RoutedTokens};
use crate::ops;
use crate::testing::{Rng, fresh_seed, gpu_with_nvrtc_or_skip, nvrtc_or_skip};
use crate::{MOE_EXPERTS, compile_cubin};

const U32: f64 = f32::EPSILON as f64 / 2.0;
/// `max |silu'(g)|` (at g ≈ 2.4) is 1.0998: the factor an error in g reaches h with.
const SILU_SLOPE: f64 = 1.1;

/// One random problem, all on the CPU.
struct Problem {
    dtype: DType,
    weight_on: WeightOn,
    t: usize,
    d: usize,
    f: usize,
    k: usize,
    x: Tensor,              // [t, d]
    gate_up: Tensor,        // [e, d, 2f]
    down: Tensor,           // [e, f, d]
    shared: Option<Tensor>, // [t, d]
    routed: RoutedTokens,
    /// A shared expert in the routed layout, for the fused-shared tests: `[d, 2f]`, `[f, d]`.
    shared_expert: (Tensor, Tensor),
}

/// `n` values uniform in `[-scale, scale)`.
pub(super) fn values(n: usize, scale: f32, rng: &mut Rng) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale)
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn problem(dtype: DType, t: usize, d: usize, f: usize, e: usize, k: usize, shared: bool, seed: u64) -> Problem {
    let mut rng = Rng(seed);
    // Router logits with a random set of experts pushed far down, so some experts get no token.
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
    let kind = if k == 1 && rng.below(2) == 0 {
        RouteKind::Llama4
    } else {
        RouteKind::SoftmaxTopK {
            k,
            renormalize: rng.below(2) == 0,
        }
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
    Problem {
        dtype,
        weight_on,
        t,
        d,
        f,
        k,
        x: tensor(&[t, d], 1.0, &mut rng),
        gate_up: tensor(&[e, d, 2 * f], 1.0 / (d as f32).sqrt(), &mut rng),
        down: tensor(&[e, f, d], 1.0 / (f as f32).sqrt(), &mut rng),
        shared: shared.then(|| tensor(&[t, d], 1.0, &mut rng)),
        routed,
        shared_expert: (
            tensor(&[d, 2 * f], 1.0 / (d as f32).sqrt(), &mut rng),
            tensor(&[f, d], 1.0 / (f as f32).sqrt(), &mut rng),
        ),
    }
}

/// `p`'s shared expert as a routed one: expert `e` (weights stacked after the routed experts'),
/// in slot 0 of every token with weight 1, the routed choices moved to slots 1..=k; no shared
/// output. Its sorted rows are `p`'s routed rows (the same experts, tokens and order) followed by
/// expert e's, one per token in token order: the layout of the fused shared expert's rows.
fn shared_as_routed(p: &Problem) -> Problem {
    let (t, k) = (p.t, p.k);
    let kk = k + 1;
    let i32s = |x: &Tensor| x.to_vec::<i32>().unwrap();
    let (experts, weights) = (i32s(&p.routed.topk_expert), p.routed.topk_weight.to_f32_vec().unwrap());
    let (counts, offset, sorted) = (
        i32s(&p.routed.expert_count),
        i32s(&p.routed.expert_offset),
        i32s(&p.routed.sorted_slots),
    );
    let e = counts.len();
    let (mut topk_expert, mut topk_weight) = (Vec::new(), Vec::new());
    for token in 0..t {
        topk_expert.push(e as i32);
        topk_weight.push(1.0f32);
        topk_expert.extend_from_slice(&experts[token * k..][..k]);
        topk_weight.extend_from_slice(&weights[token * k..][..k]);
    }
    let moved = |slot: i32| (slot / k as i32) * kk as i32 + slot % k as i32 + 1;
    let mut sorted_slots: Vec<i32> = sorted.iter().map(|&s| moved(s)).collect();
    sorted_slots.extend((0..t).map(|token| (token * kk) as i32));
    let mut expert_count = counts.clone();
    expert_count.push(t as i32);
    let mut expert_offset = offset.clone();
    expert_offset.push((t * kk) as i32);
    let ints = |v: Vec<i32>, shape: &[usize]| Tensor::from_vec(v, shape, Device::Cpu).unwrap();
    let routed = RoutedTokens {
        topk_expert: ints(topk_expert, &[t, kk]),
        topk_weight: Tensor::from_f32_vec(topk_weight, &[t, kk], DType::F32, Device::Cpu).unwrap(),
        expert_count: ints(expert_count, &[e + 1]),
        expert_offset: ints(expert_offset, &[e + 2]),
        sorted_slots: ints(sorted_slots, &[t * kk]),
    };
    let (sg, sd) = &p.shared_expert;
    let stack = |routed_w: &Tensor, shared_w: &Tensor| {
        let one: Vec<usize> = std::iter::once(1).chain(shared_w.shape().iter().copied()).collect();
        ops::cat(&[routed_w, &shared_w.reshape(&one).unwrap()], 0).unwrap()
    };
    Problem {
        dtype: p.dtype,
        weight_on: p.weight_on,
        t,
        d: p.d,
        f: p.f,
        k: kk,
        x: p.x.clone(),
        gate_up: stack(&p.gate_up, sg),
        down: stack(&p.down, sd),
        shared: None,
        routed,
        shared_expert: p.shared_expert.clone(),
    }
}

/// `p`'s block with its shared expert fused into the grouped launches, on `p`'s device.
fn with_shared(p: &Problem) -> Tensor {
    let (gate_up, down) = (&p.shared_expert.0, &p.shared_expert.1);
    moe_experts_with_shared(
        &p.x,
        &p.routed,
        &p.gate_up,
        &p.down,
        p.weight_on,
        SharedExpert { gate_up, down },
    )
    .unwrap()
}

/// The block from plain ops, one token-slot at a time: row gather, optional input scale,
/// matmul, silu ⊙ up, matmul, optional output scale, summed per token after the shared row.
fn composed(p: &Problem) -> Tensor {
    let experts = p.routed.topk_expert.to_vec::<i32>().unwrap();
    let weights = p.routed.topk_weight.to_f32_vec().unwrap();
    let mut rows = Vec::new();
    for token in 0..p.t {
        let device = p.x.device();
        let index = Tensor::from_vec(vec![token as i64], &[1], Device::Cpu)
            .unwrap()
            .to_device(device)
            .unwrap();
        let mut sum = match &p.shared {
            Some(s) => ops::index_select(s, 0, &index).unwrap(),
            None => Tensor::zeros(&[1, p.d], p.dtype, device).unwrap(),
        };
        for j in 0..p.k {
            let (e, w) = (experts[token * p.k + j] as usize, weights[token * p.k + j]);
            let w = Tensor::from_f32_vec(vec![w], &[1, 1], p.dtype, device).unwrap();
            let mut xt = ops::index_select(&p.x, 0, &index).unwrap(); // [1, d]
            if p.weight_on == WeightOn::Input {
                xt = ops::mul(&xt, &w).unwrap();
            }
            let wgu = p.gate_up.narrow(0, e, 1).unwrap().reshape(&[p.d, 2 * p.f]).unwrap();
            let proj = ops::matmul(&xt, &wgu).unwrap(); // [1, 2f]
            let gate = ops::silu(&proj.narrow(1, 0, p.f).unwrap()).unwrap();
            let h = ops::mul(&gate, &proj.narrow(1, p.f, p.f).unwrap()).unwrap(); // [1, f]
            let wd = p.down.narrow(0, e, 1).unwrap().reshape(&[p.f, p.d]).unwrap();
            let mut y = ops::matmul(&h, &wd).unwrap(); // [1, d]
            if p.weight_on == WeightOn::Output {
                y = ops::mul(&y, &w).unwrap();
            }
            sum = ops::add(&sum, &y).unwrap();
        }
        rows.push(sum);
    }
    let rows: Vec<&Tensor> = rows.iter().collect();
    ops::cat(&rows, 0).unwrap()
}

/// Per-element bounds on `|h − h_exact|` for one f32-accumulating path that rounds `h` into the
/// dtype (docs/numerics.md): the two `d`-term dot products are off by `γ_d(u32)·Σ|a·w|`, which
/// reach `h = silu(g)·u` through `silu' ≤ 1.1` and `|silu(g)|`; silu, the product and the
/// roundings add `6·u32 + u(dtype)` relative (and `u(dtype)·λ` near zero). Also returns the
/// exact `h` (f64) in sorted-row order and `1.1·|g·u| + |silu(g)·u|`, how far rounding g and
/// u into the dtype (as a plain-op composition does) can move `h`, relative to `u(dtype)`.
fn h_bounds(p: &Problem) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (d, f, k) = (p.d, p.f, p.k);
    let sorted = p.routed.sorted_slots.to_vec::<i32>().unwrap();
    let offset = p.routed.expert_offset.to_vec::<i32>().unwrap();
    let (_, _, weight) = super::reference::host_routing(&p.routed, p.dtype).unwrap();
    let x = p.x.to_f32_vec().unwrap();
    let w = p.gate_up.to_f32_vec().unwrap();
    let (ud, lambda) = (p.dtype.unit_roundoff(), p.dtype.min_positive_normal().unwrap_or(0.0));
    let gd = gamma(d.max(1), U32);
    let experts = expert_of_rows(&offset, sorted.len());
    let (mut bound, mut exact, mut sensitivity) = (Vec::new(), Vec::new(), Vec::new());
    for (r, &slot) in sorted.iter().enumerate() {
        let row = &x[(slot as usize / k) * d..][..d];
        let scale = if p.weight_on == WeightOn::Input {
            weight[slot as usize]
        } else {
            1.0
        };
        let a: Vec<f64> = Tensor::from_f32_vec(row.iter().map(|v| v * scale).collect(), &[d], p.dtype, Device::Cpu)
            .unwrap()
            .to_f32_vec()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        let we = &w[experts[r] * d * 2 * f..];
        for c in 0..f {
            let (mut g, mut u, mut mg, mut mu) = (0f64, 0f64, 0f64, 0f64);
            for (kk, &av) in a.iter().enumerate() {
                let (wg, wu) = (we[kk * 2 * f + c] as f64, we[kk * 2 * f + f + c] as f64);
                g += av * wg;
                u += av * wu;
                mg += (av * wg).abs();
                mu += (av * wu).abs();
            }
            let (eg, eu) = (gd * mg, gd * mu);
            let silu = g / (1.0 + (-g).exp());
            let h = silu * u;
            let propagated = SILU_SLOPE * eg * (u.abs() + eu) + silu.abs() * eu;
            bound.push(propagated + (6.0 * U32 + ud) * (h.abs() + propagated) + ud * lambda);
            exact.push(h);
            sensitivity.push(SILU_SLOPE * (g * u).abs() + (silu * u).abs());
        }
    }
    (bound, exact, sensitivity)
}

/// Per-element bounds on `|out − out_exact|` for one path whose `h` is within `h_bound` of
/// exact: each slot's `f`-term dot product adds `γ_f(u32)·Σ|h·wd|` and carries `Σ h_bound·|wd|`,
/// times `|w|` when the weight is on the output; the `k + 1`-term combine adds
/// `γ_{k+1}(u32)·(|shared| + Σ|y|)`; each of the path's `roundings` into the dtype (1 for the
/// kernels and the reference: the final one) `u(dtype)·|out|`, doubled for double rounding
/// (and `u·λ` near zero).
fn out_bounds(p: &Problem, h_exact: &[f64], h_bound: &[f64], roundings: usize) -> Vec<f64> {
    let (d, f, k) = (p.d, p.f, p.k);
    let sorted = p.routed.sorted_slots.to_vec::<i32>().unwrap();
    let offset = p.routed.expert_offset.to_vec::<i32>().unwrap();
    let (_, _, weight) = super::reference::host_routing(&p.routed, p.dtype).unwrap();
    let wd = p.down.to_f32_vec().unwrap();
    let shared = p.shared.as_ref().map(|s| s.to_f32_vec().unwrap());
    let (ud, lambda) = (p.dtype.unit_roundoff(), p.dtype.min_positive_normal().unwrap_or(0.0));
    let gf = gamma(f.max(1), U32);
    let experts = expert_of_rows(&offset, sorted.len());
    let mut slot_err = vec![0f64; sorted.len() * d];
    let mut slot_mag = vec![0f64; sorted.len() * d];
    for (r, &slot) in sorted.iter().enumerate() {
        let slot = slot as usize;
        let scale = if p.weight_on == WeightOn::Output {
            weight[slot].abs() as f64
        } else {
            1.0
        };
        let we = &wd[experts[r] * f * d..];
        for c in 0..d {
            let (mut carried, mut mag) = (0f64, 0f64);
            for kk in 0..f {
                let w = we[kk * d + c].abs() as f64;
                carried += (h_bound[r * f + kk]) * w;
                mag += (h_exact[r * f + kk].abs() + h_bound[r * f + kk]) * w;
            }
            slot_err[slot * d + c] = scale * (carried + gf * mag) + U32 * scale * mag;
            slot_mag[slot * d + c] = scale * mag;
        }
    }
    (0..p.t * d)
        .map(|i| {
            let (token, c) = (i / d, i % d);
            let base = shared.as_ref().map_or(0.0, |s| s[i].abs() as f64);
            let (mut err, mut mag) = (0f64, base);
            for j in 0..k {
                err += slot_err[(token * k + j) * d + c];
                mag += slot_mag[(token * k + j) * d + c];
            }
            let combined = err + gamma(k + 1, U32) * mag;
            combined + 2.0 * roundings as f64 * ud * (mag + combined) + ud * lambda
        })
        .collect()
}

/// The elements' bits (through f32, which every float dtype widens to exactly).
fn bits(t: &Tensor) -> Vec<u32> {
    t.to_f32_vec().unwrap().iter().map(|v| v.to_bits()).collect()
}

/// Every element of `got` within its `bound` of `want`.
pub(super) fn check(got: &Tensor, want: &Tensor, bound: &[f64], context: &str) {
    let (got, want) = (got.to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
    assert_eq!(got.len(), want.len(), "{context}");
    for (i, ((&g, &w), &b)) in got.iter().zip(&want).zip(bound).enumerate() {
        let diff = (g as f64 - w as f64).abs();
        assert!(
            diff <= b,
            "{context}: element {i}: got {g}, want {w}, |diff| {diff:e} > bound {b:e}"
        );
    }
}

fn sizes() -> impl Strategy<Value = (usize, usize, usize, usize, usize, bool, u64)> {
    (
        1usize..12,
        1usize..40,
        1usize..24,
        1usize..9,
        1usize..4,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(t, d, f, e, k, shared, seed)| (t, d, f, e, k.min(e), shared, seed))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The launch grid covers every (expert, m-block) tile the device-side schedule finds, for
    /// any counts (empty experts included), and a split reduction has no empty range.
    #[test]
    fn grids_cover_the_schedule(counts in proptest::collection::vec(0usize..300, 1..130), ktiles in 1usize..300, wanted in 1usize..300) {
        let slots: usize = counts.iter().sum();
        for rows in [16, 64] {
            let needed: usize = counts.iter().map(|c| c.div_ceil(rows)).sum();
            prop_assert!(needed <= super::cuda::tile_bound(slots, counts.len(), rows));
        }
        let (splits, per) = super::cuda::split_ktiles(ktiles, wanted);
        prop_assert!(splits >= 1 && splits <= ktiles && (splits - 1) * per < ktiles && splits * per >= ktiles);
        let chosen = super::cuda::down_splits(132, 40, counts.len().min(slots), ktiles);
        prop_assert!(chosen >= 1 && chosen <= ktiles);
    }

    /// The reference equals the plain-op composition (both f32 here, so each is within the
    /// derived bound of the exact block and they are within twice of each other).
    #[test]
    fn reference_matches_plain_ops((t, d, f, e, k, shared, seed) in sizes()) {
        let p = problem(DType::F32, t, d, f, e, k, shared, seed);
        let got = moe_experts(&p.x, &p.routed, &p.gate_up, &p.down, p.weight_on, p.shared.as_ref()).unwrap();
        let want = composed(&p);
        let (hb, hx, _) = h_bounds(&p);
        let bound: Vec<f64> = out_bounds(&p, &hx, &hb, k + 2).into_iter().map(|b| 2.0 * b).collect();
        check(&got, &want, &bound, &format!("t {t} d {d} f {f} e {e} k {k} {:?}", p.weight_on));
    }

    /// The fused shared expert is expert e in every token's slot 0 with weight 1 (applied
    /// nowhere): `h` and the output are bitwise those of that routed block (f64 reference: adding
    /// the shared output to 0 first is exact), which is within its derived bound of the same
    /// block composed from plain ops (the shared expert's SwiGLU on the unscaled input, added
    /// first).
    #[test]
    fn shared_expert_is_expert_e_with_weight_one((t, d, f, e, k, _shared, seed) in sizes()) {
        let p = problem(DType::F32, t, d, f, e, k, false, seed);
        let q = shared_as_routed(&p);
        let h = gate_up_swiglu_with_shared(&p.x, &p.routed, &p.gate_up, p.weight_on, &p.shared_expert.0).unwrap();
        prop_assert_eq!(h.shape(), &[t * k + t, f][..]);
        prop_assert_eq!(bits(&h), bits(&gate_up_swiglu(&q.x, &q.routed, &q.gate_up, q.weight_on).unwrap()));
        let out = down_combine_with_shared(&h, &p.routed, &p.down, p.weight_on, &p.shared_expert.1).unwrap();
        prop_assert_eq!(bits(&out), bits(&with_shared(&p)));
        prop_assert_eq!(bits(&out), bits(&moe_experts(&q.x, &q.routed, &q.gate_up, &q.down, q.weight_on, None).unwrap()));
        let (hb, hx, _) = h_bounds(&q);
        let bound: Vec<f64> = out_bounds(&q, &hx, &hb, q.k + 2).into_iter().map(|b| 2.0 * b).collect();
        check(&out, &composed(&q), &bound, &format!("shared: t {t} d {d} f {f} e {e} k {k} {:?}", p.weight_on));
    }

    /// The sorted rows of `h` are the right experts' outputs for the right tokens: permuting the
    /// experts' weights and the router's columns together leaves the block unchanged.
    #[test]
    fn h_rows_follow_the_sort((t, d, f, e, k, shared, seed) in sizes()) {
        let p = problem(DType::F32, t, d, f, e, k, shared, seed);
        let h = gate_up_swiglu(&p.x, &p.routed, &p.gate_up, p.weight_on).unwrap();
        prop_assert_eq!(h.shape(), &[t * k, f][..]);
        let (hb, hx, _) = h_bounds(&p);
        let hv = h.to_f32_vec().unwrap();
        for (i, (&got, (&want, &b))) in hv.iter().zip(hx.iter().zip(&hb)).enumerate() {
            prop_assert!((got as f64 - want).abs() <= 2.0 * b, "h[{}]: {} vs {}", i, got, want);
        }
    }
}

/// The fused shared expert at the edges of its row layout: no token (S = 0, no shared row: empty
/// `h [0, f]` and `out [0, d]`) and one token (its shared row is row S = k, a one-row segment),
/// for each k, bitwise the block with the shared expert as routed expert e in slot 0.
#[test]
fn shared_expert_with_zero_and_one_token() {
    let seed = fresh_seed();
    for (case, (t, k)) in [0, 1]
        .into_iter()
        .flat_map(|t| (1..=3).map(move |k| (t, k)))
        .enumerate()
    {
        let (d, f, e) = (7, 5, 3);
        let p = problem(DType::F32, t, d, f, e, k, false, seed + case as u64);
        let q = shared_as_routed(&p);
        let context = format!("seed {seed} t {t} k {k} {:?}", p.weight_on);
        let h = gate_up_swiglu_with_shared(&p.x, &p.routed, &p.gate_up, p.weight_on, &p.shared_expert.0).unwrap();
        assert_eq!(h.shape(), [t * k + t, f], "{context}");
        let h_routed = gate_up_swiglu(&q.x, &q.routed, &q.gate_up, q.weight_on).unwrap();
        assert_eq!(bits(&h), bits(&h_routed), "{context}: h");
        let out = down_combine_with_shared(&h, &p.routed, &p.down, p.weight_on, &p.shared_expert.1).unwrap();
        assert_eq!(out.shape(), [t, d], "{context}");
        let out_routed = moe_experts(&q.x, &q.routed, &q.gate_up, &q.down, q.weight_on, None).unwrap();
        assert_eq!(bits(&out), bits(&out_routed), "{context}: out");
    }
}

/// The bound between the block (reference or kernels) and the plain-op composition: the
/// composition also rounds g, u and silu(g) into the dtype, which moves its h by at most
/// `2·u(dtype)·(sensitivity + |h|)`, and rounds y, the weighted y and each partial sum (k + 2
/// roundings in the combine); the block's own bound covers the other side.
fn composed_bound(p: &Problem) -> Vec<f64> {
    let (hb, hx, sens) = h_bounds(p);
    let ud = p.dtype.unit_roundoff();
    let hb_composed: Vec<f64> = (0..hb.len())
        .map(|i| hb[i] + 2.0 * ud * (sens[i] + hx[i].abs()))
        .collect();
    let ours = out_bounds(p, &hx, &hb, 1);
    let theirs = out_bounds(p, &hx, &hb_composed, p.k + 2);
    ours.iter().zip(&theirs).map(|(a, b)| a + b).collect()
}

#[test]
fn bf16_reference_is_within_the_bound_of_plain_ops() {
    let seed = fresh_seed();
    for (case, &(t, d, f, e, k)) in [(5, 24, 16, 4, 1), (9, 13, 7, 6, 2), (3, 40, 32, 8, 3)]
        .iter()
        .enumerate()
    {
        let p = problem(DType::BF16, t, d, f, e, k, case % 2 == 0, seed + case as u64);
        let got = moe_experts(&p.x, &p.routed, &p.gate_up, &p.down, p.weight_on, p.shared.as_ref()).unwrap();
        let want = composed(&p);
        let bound = composed_bound(&p);
        check(&got, &want, &bound, &format!("bf16 seed {seed} case {case}"));
        let q = shared_as_routed(&p);
        check(
            &with_shared(&p),
            &composed(&q),
            &composed_bound(&q),
            &format!("bf16 shared expert seed {seed} case {case}"),
        );
    }
}

/// The CUDA kernels against the reference: `h` within twice its bound, `out` from the kernel's
/// own `h` within twice the down bound (identical inputs), the whole block within twice the
/// full bound and within the composition bound of the plain-op block on the device; every
/// launch twice with identical bits.
#[test]
fn cuda_matches_the_reference_bitwise_reproducibly() {
    let Some(backend) = gpu_with_nvrtc_or_skip("moe_experts cuda_matches_the_reference") else {
        return;
    };
    let device = Device::Cuda(backend.info().ordinal);
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    let cases: Vec<(DType, usize, usize, usize, usize, usize)> = vec![
        (DType::BF16, 1, 64, 64, 16, 1),     // decode shape, one token
        (DType::BF16, 37, 128, 96, 8, 1),    // decode shape (37 slots)
        (DType::F16, 40, 64, 72, 4, 2),      // decode shape, k = 2 (combine kernel)
        (DType::BF16, 3, 512, 1000, 4, 1),   // decode, down split over f (2 k-tiles a split, a K tail)
        (DType::BF16, 300, 136, 200, 16, 1), // wide shape, ragged segments and K tails
        (DType::F16, 130, 64, 40, 5, 3),     // wide shape, k = 3
        (DType::BF16, 260, 64, 64, 2, 1),    // wide, direct store: ≥ 2 m-blocks per expert, a 4-row tail
        (DType::BF16, 20, 30, 14, 3, 2),     // scalar path (sizes not multiples of 8)
        (DType::F32, 17, 24, 16, 4, 1),      // scalar path, f32
    ];
    for (case, &(dtype, t, d, f, e, k)) in cases.iter().enumerate() {
        let p = problem(dtype, t, d, f, e, k, case % 2 == 0, rng.next());
        let context = format!(
            "seed {seed} case {case} {dtype:?} t {t} d {d} f {f} e {e} k {k} {:?}",
            p.weight_on
        );
        let on = |x: &Tensor| x.to_device(device).unwrap();
        let routed = RoutedTokens {
            topk_expert: on(&p.routed.topk_expert),
            topk_weight: on(&p.routed.topk_weight),
            expert_count: on(&p.routed.expert_count),
            expert_offset: on(&p.routed.expert_offset),
            sorted_slots: on(&p.routed.sorted_slots),
        };
        let (x, gu, dn) = (on(&p.x), on(&p.gate_up), on(&p.down));
        let shared = p.shared.as_ref().map(on);
        let (hb, hx, _) = h_bounds(&p);
        let h = gate_up_swiglu(&x, &routed, &gu, p.weight_on).unwrap();
        let h_again = gate_up_swiglu(&x, &routed, &gu, p.weight_on).unwrap();
        assert_eq!(bits(&h), bits(&h_again), "{context}: h not reproducible");
        let h_want = gate_up_swiglu(&p.x, &p.routed, &p.gate_up, p.weight_on).unwrap();
        let twice: Vec<f64> = hb.iter().map(|b| 2.0 * b).collect();
        check(&h, &h_want, &twice, &format!("{context}: h"));

        let out = down_combine(&h, &routed, &dn, p.weight_on, shared.as_ref()).unwrap();
        let out_again = down_combine(&h, &routed, &dn, p.weight_on, shared.as_ref()).unwrap();
        assert_eq!(bits(&out), bits(&out_again), "{context}: out not reproducible");
        let h_host = h.to_device(Device::Cpu).unwrap();
        let h_kernel: Vec<f64> = h_host.to_f32_vec().unwrap().into_iter().map(f64::from).collect();
        let out_want = down_combine(&h_host, &p.routed, &p.down, p.weight_on, p.shared.as_ref()).unwrap();
        let zero = vec![0.0; h_kernel.len()];
        let down_bound: Vec<f64> = out_bounds(&p, &h_kernel, &zero, 1)
            .into_iter()
            .map(|b| 2.0 * b)
            .collect();
        check(&out, &out_want, &down_bound, &format!("{context}: down"));

        let block = moe_experts(&x, &routed, &gu, &dn, p.weight_on, shared.as_ref()).unwrap();
        let block_want = moe_experts(&p.x, &p.routed, &p.gate_up, &p.down, p.weight_on, p.shared.as_ref()).unwrap();
        let block_bound: Vec<f64> = out_bounds(&p, &hx, &hb, 1).into_iter().map(|b| 2.0 * b).collect();
        check(&block, &block_want, &block_bound, &format!("{context}: block"));

        // The whole block against the same block composed from plain ops on the device
        // (cuBLASLt GEMMs, elementwise kernels).
        let on_device = Problem {
            dtype,
            weight_on: p.weight_on,
            t,
            d,
            f,
            k,
            x: x.clone(),
            gate_up: gu.clone(),
            down: dn.clone(),
            shared: shared.clone(),
            routed: routed.clone(),
            shared_expert: (on(&p.shared_expert.0), on(&p.shared_expert.1)),
        };
        check(
            &block,
            &composed(&on_device),
            &composed_bound(&p),
            &format!("{context}: plain ops"),
        );
    }
}

/// The shared expert fused into the grouped launches on CUDA against the reference (through the
/// equivalent routed block's bounds: expert e in slot 0 with weight 1): `h` within twice its
/// bound, `out` from the kernel's own `h` within twice the down bound, the whole block within
/// twice the full bound; every launch twice with identical bits. Covers the decode shape with a
/// split reduction, the wide shape, k = 1 (where the routed-only path stores directly) and the
/// scalar kernels.
#[test]
fn cuda_shared_expert_matches_the_reference_bitwise_reproducibly() {
    let Some(backend) = gpu_with_nvrtc_or_skip("moe_experts cuda_shared_expert_matches_the_reference") else {
        return;
    };
    let device = Device::Cuda(backend.info().ordinal);
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    let cases: Vec<(DType, usize, usize, usize, usize, usize)> = vec![
        (DType::BF16, 1, 64, 64, 16, 1),     // decode, one token
        (DType::BF16, 3, 512, 1000, 4, 1),   // decode, down split over f, a K tail
        (DType::F16, 40, 64, 72, 4, 2),      // decode shape, k = 2
        (DType::BF16, 64, 128, 96, 8, 1),    // decode shape at its limit: 64 routed + 64 shared rows
        (DType::BF16, 300, 136, 200, 16, 1), // wide shape, ragged segments, shared segment of 300 rows
        (DType::F16, 130, 64, 40, 5, 3),     // wide shape, k = 3
        (DType::BF16, 20, 30, 14, 3, 2),     // scalar path
        (DType::F32, 17, 24, 16, 4, 1),      // scalar path, f32
    ];
    for (case, &(dtype, t, d, f, e, k)) in cases.iter().enumerate() {
        let p = problem(dtype, t, d, f, e, k, false, rng.next());
        let q = shared_as_routed(&p);
        let context = format!(
            "seed {seed} case {case} {dtype:?} t {t} d {d} f {f} e {e} k {k} {:?}",
            p.weight_on
        );
        let on = |x: &Tensor| x.to_device(device).unwrap();
        let routed = RoutedTokens {
            topk_expert: on(&p.routed.topk_expert),
            topk_weight: on(&p.routed.topk_weight),
            expert_count: on(&p.routed.expert_count),
            expert_offset: on(&p.routed.expert_offset),
            sorted_slots: on(&p.routed.sorted_slots),
        };
        let (x, gu, dn) = (on(&p.x), on(&p.gate_up), on(&p.down));
        let (sg, sd) = (on(&p.shared_expert.0), on(&p.shared_expert.1));
        let (hb, hx, _) = h_bounds(&q);
        let h = gate_up_swiglu_with_shared(&x, &routed, &gu, p.weight_on, &sg).unwrap();
        let h_again = gate_up_swiglu_with_shared(&x, &routed, &gu, p.weight_on, &sg).unwrap();
        assert_eq!(bits(&h), bits(&h_again), "{context}: h not reproducible");
        let h_want = gate_up_swiglu_with_shared(&p.x, &p.routed, &p.gate_up, p.weight_on, &p.shared_expert.0).unwrap();
        let twice: Vec<f64> = hb.iter().map(|b| 2.0 * b).collect();
        check(&h, &h_want, &twice, &format!("{context}: h"));

        let out = down_combine_with_shared(&h, &routed, &dn, p.weight_on, &sd).unwrap();
        let out_again = down_combine_with_shared(&h, &routed, &dn, p.weight_on, &sd).unwrap();
        assert_eq!(bits(&out), bits(&out_again), "{context}: out not reproducible");
        let h_host = h.to_device(Device::Cpu).unwrap();
        let h_kernel: Vec<f64> = h_host.to_f32_vec().unwrap().into_iter().map(f64::from).collect();
        let out_want = down_combine_with_shared(&h_host, &p.routed, &p.down, p.weight_on, &p.shared_expert.1).unwrap();
        let zero = vec![0.0; h_kernel.len()];
        let down_bound: Vec<f64> = out_bounds(&q, &h_kernel, &zero, 1)
            .into_iter()
            .map(|b| 2.0 * b)
            .collect();
        check(&out, &out_want, &down_bound, &format!("{context}: down"));

        let shared = SharedExpert {
            gate_up: &sg,
            down: &sd,
        };
        let block = moe_experts_with_shared(&x, &routed, &gu, &dn, p.weight_on, shared).unwrap();
        let block_bound: Vec<f64> = out_bounds(&q, &hx, &hb, 1).into_iter().map(|b| 2.0 * b).collect();
        check(&block, &with_shared(&p), &block_bound, &format!("{context}: block"));
    }
}

/// The numbers in a `#define NAME a, b, ...` line of the source.
fn defined(name: &str) -> Vec<usize> {
    let line = MOE_EXPERTS
        .source
        .lines()
        .find(|l| l.starts_with(&format!("#define {name} ")))
        .unwrap_or_else(|| panic!("no #define {name}"));
    let values = line[format!("#define {name} ").len()..].split("//").next().unwrap();
    values.split(',').map(|v| v.trim().parse().unwrap()).collect()
}

/// The launchers' grids and blocks agree with the tile shapes the source instantiates
/// (`WM, WN, MT, NT, STAGES`: `16·MT·WM` rows, `8·NT·WN` B-tile columns, `32·WM·WN` threads; half
/// the B tile's columns are h columns in gate_up), so a retuned shape cannot leave rows or columns
/// without a CTA.
#[test]
fn launch_constants_match_the_kernel_shapes() {
    use super::{cuda, fp8_cuda};
    for (shape, rows) in [("ME_WIDE", cuda::WIDE_ROWS), ("ME_DECODE", cuda::DECODE_ROWS)] {
        let &[wm, wn, mt, nt, _] = &defined(shape)[..] else {
            panic!("{shape}: expected five numbers")
        };
        assert_eq!(16 * mt * wm, rows, "{shape}");
        assert_eq!(32 * wm * wn, cuda::MMA_THREADS as usize, "{shape}");
        assert_eq!(8 * nt * wn, cuda::DOWN_COLS, "{shape}");
        assert_eq!(8 * nt * wn / 2, cuda::GATE_UP_COLS, "{shape}");
    }
    assert_eq!(defined("ME_BK"), [cuda::K_TILE]);
    let &[wm, wn, mt, nt, _] = &defined("ME_Q_WIDE")[..] else {
        panic!("ME_Q_WIDE: expected five numbers")
    };
    assert_eq!(16 * mt * wm, fp8_cuda::MMA_ROWS);
    assert_eq!(32 * wm * wn, fp8_cuda::MMA_THREADS as usize);
    assert_eq!(defined("ME_Q_THREADS"), [fp8_cuda::MMA_THREADS as usize]);
    assert_eq!(8 * nt * wn, fp8_cuda::MMA_DOWN_COLS);
    assert_eq!(8 * nt * wn / 2, fp8_cuda::MMA_GATE_UP_COLS);
    assert_eq!(defined("ME_FP8_ROWS"), [fp8_cuda::FP8_ROWS]);
    assert_eq!(defined("ME_FP8_WARPS"), [fp8_cuda::FP8_WARPS]);
}

/// Expert weights that are views starting 2 bytes past a 16-byte boundary (as a slice of a larger
/// buffer can be) take the scalar kernels on CUDA and still match the reference.
#[test]
fn cuda_weight_views_off_16_bytes_match_the_reference() {
    let Some(backend) = gpu_with_nvrtc_or_skip("moe_experts cuda_weight_views_off_16_bytes") else {
        return;
    };
    let device = Device::Cuda(backend.info().ordinal);
    let seed = fresh_seed();
    let p = problem(DType::BF16, 90, 64, 48, 4, 2, true, seed);
    let on = |x: &Tensor| x.to_device(device).unwrap();
    // The same values one element into a longer buffer: [n + 1] narrowed to [1, n + 1).
    let shifted = |w: &Tensor| {
        let n = w.elem_count();
        let pad = Tensor::zeros(&[1], w.dtype(), device).unwrap();
        let flat = ops::cat(&[&pad, &on(w).reshape(&[n]).unwrap()], 0).unwrap();
        flat.narrow(0, 1, n).unwrap().reshape(w.shape()).unwrap()
    };
    let routed = RoutedTokens {
        topk_expert: on(&p.routed.topk_expert),
        topk_weight: on(&p.routed.topk_weight),
        expert_count: on(&p.routed.expert_count),
        expert_offset: on(&p.routed.expert_offset),
        sorted_slots: on(&p.routed.sorted_slots),
    };
    let (gu, dn) = (shifted(&p.gate_up), shifted(&p.down));
    assert!(!super::cuda::mma_operands(DType::BF16, p.d, p.f, &[&gu, &dn]));
    let shared = p.shared.as_ref().map(on);
    let block = moe_experts(&on(&p.x), &routed, &gu, &dn, p.weight_on, shared.as_ref()).unwrap();
    let want = moe_experts(&p.x, &p.routed, &p.gate_up, &p.down, p.weight_on, p.shared.as_ref()).unwrap();
    let (hb, hx, _) = h_bounds(&p);
    let bound: Vec<f64> = out_bounds(&p, &hx, &hb, 1).into_iter().map(|b| 2.0 * b).collect();
    check(&block, &want, &bound, &format!("seed {seed}: shifted weight views"));
}

/// The tensor-core kernels take bf16/f16 with d and f multiples of 8 and 16-byte aligned
/// operands only; views that start off a 16-byte boundary go to the scalar kernels.
#[test]
fn mma_dispatch_needs_whole_chunks_and_aligned_views() {
    use super::cuda::mma_operands;
    let w = Tensor::zeros(&[3, 16, 32], DType::BF16, Device::Cpu).unwrap();
    let expert = w.narrow(0, 1, 2).unwrap(); // starts at element 512
    let flat = Tensor::zeros(&[2 * 16 * 32 + 1], DType::BF16, Device::Cpu).unwrap();
    let shifted = flat.narrow(0, 1, 2 * 16 * 32).unwrap().reshape(&[2, 16, 32]).unwrap(); // 2 bytes in
    assert!(mma_operands(DType::BF16, 16, 16, &[&w, &expert]));
    assert!(mma_operands(DType::F16, 8, 24, &[&w]));
    assert!(!mma_operands(DType::BF16, 16, 16, &[&w, &shifted]));
    assert!(!mma_operands(DType::F32, 16, 16, &[&w]));
    assert!(!mma_operands(DType::BF16, 12, 16, &[&w]));
    assert!(!mma_operands(DType::BF16, 16, 20, &[&w]));
}

#[test]
fn compiles_for_sm90a() {
    if !nvrtc_or_skip("moe_experts compiles_for_sm90a") {
        return;
    }
    for arch in MOE_EXPERTS.archs {
        let compiled = compile_cubin(&MOE_EXPERTS, arch, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(compiled.spill_bytes(), 0, "{}", compiled.log);
    }
}
