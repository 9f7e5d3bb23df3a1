//! `moe_routing` on every device: the reference's invariants (each token's k experts are its
//! k largest logits, the sort is a stable bijection grouped by expert, counts and offsets agree)
//! and CUDA equal to the CPU bit for bit in every index, within `exp` rounding in the weights,
//! on fresh random logits with ties.

use l4_core::testing::{Tolerance, assert_close, test_devices};
use l4_core::{DType, Device, Tensor};

use super::{RouteKind, RoutedTokens, reference, route};
use crate::testing::{Rng, fresh_seed, nvrtc_or_skip};
use crate::{MOE_ROUTING, compile_cubin};

fn ints(t: &Tensor) -> Vec<i32> {
    t.to_vec::<i32>().unwrap()
}

/// Logits with many exact ties (small integers) and some spread.
fn random_logits(t: usize, e: usize, rng: &mut Rng) -> Vec<f32> {
    (0..t * e)
        .map(|_| match rng.below(3) {
            0 => rng.below(4) as f32 - 2.0,
            _ => ((rng.next() >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0,
        })
        .collect()
}

fn check_invariants(r: &RoutedTokens, logits: &[f32], t: usize, e: usize, k: usize, context: &str) {
    let (experts, sorted) = (ints(&r.topk_expert), ints(&r.sorted_slots));
    let (count, offset) = (ints(&r.expert_count), ints(&r.expert_offset));
    for token in 0..t {
        let row = &logits[token * e..(token + 1) * e];
        let chosen = &experts[token * k..(token + 1) * k];
        for (j, &x) in chosen.iter().enumerate() {
            // Nothing unchosen beats a chosen expert, and equal logits go to the lower index.
            for other in 0..e as i32 {
                if chosen.contains(&other) {
                    continue;
                }
                let (a, b) = (row[x as usize], row[other as usize]);
                assert!(a > b || (a == b && x < other), "{context}: token {token} choice {j}");
            }
        }
    }
    assert_eq!(offset[0], 0, "{context}");
    for x in 0..e {
        assert_eq!(offset[x + 1] - offset[x], count[x], "{context}: expert {x}");
        let segment = &sorted[offset[x] as usize..offset[x + 1] as usize];
        assert!(
            segment.windows(2).all(|w| w[0] < w[1]),
            "{context}: expert {x} not ascending"
        );
        assert!(
            segment.iter().all(|&s| experts[s as usize] == x as i32),
            "{context}: expert {x}"
        );
    }
    let mut seen = sorted.clone();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..(t * k) as i32).collect::<Vec<_>>(),
        "{context}: not a permutation"
    );
}

#[test]
fn routing_invariants_hold_on_every_device() {
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    let devices: Vec<Device> = test_devices()
        .into_iter()
        .filter(|d| !d.is_cuda() || nvrtc_or_skip("routing_invariants_hold_on_every_device"))
        .collect();
    for case in 0..24 {
        let t = [1, 3, 31, 64, 1000, 2049][case % 6];
        let e = [1, 4, 16, 33, 128, 256][(case / 2) % 6];
        let kind = match case % 3 {
            0 => RouteKind::Llama4,
            1 => RouteKind::SoftmaxTopK {
                k: 2.min(e),
                renormalize: true,
            },
            _ => RouteKind::SoftmaxTopK {
                k: 8.min(e),
                renormalize: false,
            },
        };
        let k = kind.k();
        let values = random_logits(t, e, &mut rng);
        let dtype = [DType::F32, DType::BF16][case % 2];
        // Rounded into the dtype first, so every device sees the same values.
        let host = Tensor::from_f32_vec(values, &[t, e], dtype, Device::Cpu).unwrap();
        let rounded = host.to_f32_vec().unwrap();
        let want = reference::route(&host, kind).unwrap();
        let context = format!("seed {seed}: T {t} E {e} {kind:?} {dtype}");
        check_invariants(&want, &rounded, t, e, k, &context);
        for &device in &devices {
            let got = route(&host.to_device(device).unwrap(), kind).unwrap_or_else(|e| panic!("{context}: {e}"));
            let context = format!("{context} on {device}");
            check_invariants(&got, &rounded, t, e, k, &context);
            for (a, b, what) in [
                (&got.topk_expert, &want.topk_expert, "experts"),
                (&got.expert_count, &want.expert_count, "counts"),
                (&got.expert_offset, &want.expert_offset, "offsets"),
                (&got.sorted_slots, &want.sorted_slots, "sorted slots"),
            ] {
                assert_eq!(ints(a), ints(b), "{context}: {what}");
            }
            // expf against libm's exp, then a sum in another order: f32 elementwise, pairwise.
            let tol = Tolerance::elementwise(DType::F32).pairwise();
            assert_close(
                &got.topk_weight.to_f64_vec().unwrap(),
                &want.topk_weight.to_f64_vec().unwrap(),
                tol,
                &context,
            )
            .unwrap();
        }
    }
}

#[test]
fn llama4_weights_are_the_sigmoid_of_the_top_logit() {
    let logits = Tensor::from_vec(vec![0.5f32, 2.0, 2.0, -1.0, 0.0, 0.0], &[2, 3], Device::Cpu).unwrap();
    let r = route(&logits, RouteKind::Llama4).unwrap();
    assert_eq!(ints(&r.topk_expert), vec![1, 1]); // the tie 2.0 / 2.0 goes to expert 1
    let w = r.topk_weight.to_f32_vec().unwrap();
    assert!((w[0] - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-7 && (w[1] - 0.5).abs() < 1e-7);
    assert_eq!(ints(&r.expert_count), vec![0, 2, 0]);
    assert_eq!(ints(&r.sorted_slots), vec![0, 1]);
}

/// Every device ranks logits by `f32::total_cmp` (the reference's sort): +NaN above +∞, −NaN
/// below −∞, −0 below +0, equal keys to the lower expert. Rows a float compare gets wrong: a
/// NaN that must be chosen (k = E, where a NaN losing to the padding lanes picked an expert
/// past E), signed zeros, all-NaN rows, and E = 33 (one lane holds two experts, the rest
/// padding). The weights must agree in where they are NaN, and elsewhere to `exp` rounding.
#[test]
fn nan_and_signed_zero_logits_rank_by_total_cmp_on_every_device() {
    let (nan, neg_nan, inf) = (f32::NAN, f32::from_bits(0xffc0_0000), f32::INFINITY);
    let devices: Vec<Device> = test_devices()
        .into_iter()
        .filter(|d| !d.is_cuda() || nvrtc_or_skip("nan_and_signed_zero_logits_rank_by_total_cmp_on_every_device"))
        .collect();
    let all_k4 = RouteKind::SoftmaxTopK {
        k: 4,
        renormalize: false,
    };
    let top8 = RouteKind::SoftmaxTopK {
        k: 8,
        renormalize: true,
    };
    let mut wide = vec![-1.0f32; 33];
    (wide[32], wide[5], wide[7], wide[8]) = (nan, neg_nan, 0.0, -0.0);
    let cases: Vec<(Vec<f32>, usize, RouteKind, Vec<i32>)> = vec![
        (
            vec![1.0, nan, 3.0, 2.0, nan, nan, nan, nan],
            4,
            RouteKind::Llama4,
            vec![1, 0],
        ),
        (
            vec![-0.0, 0.0, nan, neg_nan, -inf, 5.0, neg_nan, -inf, 2.0, 2.0, 2.0, 2.0],
            4,
            all_k4,
            vec![2, 1, 0, 3, 1, 0, 3, 2, 0, 1, 2, 3],
        ),
        (
            [wide, vec![nan; 33]].concat(),
            33,
            top8,
            vec![32, 7, 8, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 7],
        ),
    ];
    for (values, e, kind, experts) in cases {
        let t = values.len() / e;
        let host = Tensor::from_vec(values, &[t, e], Device::Cpu).unwrap();
        let want = reference::route(&host, kind).unwrap();
        assert_eq!(ints(&want.topk_expert), experts, "reference, E {e} {kind:?}");
        for &device in &devices {
            let context = format!("E {e} {kind:?} on {device}");
            let got = route(&host.to_device(device).unwrap(), kind).unwrap_or_else(|e| panic!("{context}: {e}"));
            for (a, b, what) in [
                (&got.topk_expert, &want.topk_expert, "experts"),
                (&got.expert_count, &want.expert_count, "counts"),
                (&got.expert_offset, &want.expert_offset, "offsets"),
                (&got.sorted_slots, &want.sorted_slots, "sorted slots"),
            ] {
                assert_eq!(ints(a), ints(b), "{context}: {what}");
            }
            let (w, want_w) = (
                got.topk_weight.to_f64_vec().unwrap(),
                want.topk_weight.to_f64_vec().unwrap(),
            );
            let nan_at = |v: &[f64]| v.iter().map(|x| x.is_nan()).collect::<Vec<_>>();
            assert_eq!(nan_at(&w), nan_at(&want_w), "{context}: NaN weights");
            let finite = |v: &[f64]| v.iter().copied().filter(|x| !x.is_nan()).collect::<Vec<_>>();
            assert_close(
                &finite(&w),
                &finite(&want_w),
                Tolerance::elementwise(DType::F32).pairwise(),
                &context,
            )
            .unwrap();
        }
    }
}

/// No tokens: no launch, but every output has its shape and lives on the logits' device.
#[test]
fn zero_tokens_route_to_empty_outputs_on_the_device() {
    for device in test_devices()
        .into_iter()
        .filter(|d| !d.is_cuda() || nvrtc_or_skip("zero_tokens_route_to_empty_outputs_on_the_device"))
    {
        // An empty view of a one-row tensor: CUDA refuses to allocate zero bytes.
        let logits = Tensor::zeros(&[1, 16], DType::BF16, device)
            .unwrap()
            .narrow(0, 0, 0)
            .unwrap();
        let kind = RouteKind::SoftmaxTopK {
            k: 2,
            renormalize: true,
        };
        let r = route(&logits, kind).unwrap();
        for (t, shape) in [
            (&r.topk_expert, &[0usize, 2][..]),
            (&r.topk_weight, &[0, 2]),
            (&r.expert_count, &[16]),
            (&r.expert_offset, &[17]),
            (&r.sorted_slots, &[0]),
        ] {
            assert_eq!((t.shape(), t.device()), (shape, device), "on {device}");
        }
        assert_eq!(ints(&r.expert_count), vec![0; 16], "on {device}");
        assert_eq!(ints(&r.expert_offset), vec![0; 17], "on {device}");
    }
}

#[test]
fn bad_arguments_are_errors() {
    let logits = Tensor::zeros(&[2, 4], DType::F32, Device::Cpu).unwrap();
    assert!(
        route(
            &logits,
            RouteKind::SoftmaxTopK {
                k: 5,
                renormalize: true
            }
        )
        .is_err()
    );
    assert!(
        route(
            &logits,
            RouteKind::SoftmaxTopK {
                k: 0,
                renormalize: true
            }
        )
        .is_err()
    );
    assert!(route(&logits.reshape(&[8]).unwrap(), RouteKind::Llama4).is_err());
    assert!(
        route(
            &Tensor::zeros(&[2, 300], DType::F32, Device::Cpu).unwrap(),
            RouteKind::Llama4
        )
        .is_err()
    );
    assert!(
        route(
            &Tensor::zeros(&[2, 4], DType::I64, Device::Cpu).unwrap(),
            RouteKind::Llama4
        )
        .is_err()
    );
}

#[test]
fn compiles_for_every_declared_arch_without_spills() {
    if !nvrtc_or_skip("compiles_for_every_declared_arch_without_spills") {
        return;
    }
    for arch in MOE_ROUTING.archs {
        let compiled = compile_cubin(&MOE_ROUTING, arch, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(compiled.spill_bytes(), 0, "{}", compiled.log);
    }
}
