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
