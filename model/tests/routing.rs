//! Routing strategies (issue: fused MoE, part 1): the invariants every strategy keeps, each
//! strategy's own definition, spec parsing, and the MoE block's combine under variable numbers
//! of experts per token. All on the CPU; the strategies are plain functions of the logits.

use l4_core::testing::{Tolerance, assert_close};
use l4_core::{DType, Device, Tensor};
use l4_model::parts::linear::Linear;
use l4_model::parts::moe::{Experts, Moe};
use l4_model::parts::router::{RouterInput, Routing, WeightPlacement, router_by_name};
use l4_model::{Capture, loader};
use proptest::prelude::*;

fn route(spec: &str, logits: &[f32], n: usize, e: usize, ids: Option<&[i64]>) -> Routing {
    let input = RouterInput {
        logits,
        n_tokens: n,
        n_experts: e,
        token_ids: ids,
    };
    router_by_name(spec)
        .unwrap_or_else(|err| panic!("{spec}: {err}"))
        .route(&input)
        .unwrap_or_else(|err| panic!("{spec}: {err}"))
}

/// Token-major order, indices in range, distinct experts per token.
fn well_formed(r: &Routing) -> Result<(), TestCaseError> {
    let mut last_token = 0;
    for (i, a) in r.assignments.iter().enumerate() {
        prop_assert!(a.token < r.n_tokens && a.expert < r.n_experts, "assignment {i}: {a:?}");
        prop_assert!(a.token >= last_token, "assignments not token-major at {i}");
        last_token = a.token;
        let same = r
            .assignments
            .iter()
            .filter(|b| b.token == a.token && b.expert == a.expert)
            .count();
        prop_assert_eq!(same, 1, "token {} sent twice to expert {}", a.token, a.expert);
    }
    let load: usize = r.load().iter().sum();
    prop_assert_eq!(load, r.assignments.len());
    Ok(())
}

fn logits_case() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..=24, 1usize..=12).prop_flat_map(|(n, e)| {
        let value = prop_oneof![(-2i32..=2).prop_map(|v| v as f32), -6.0f32..6.0];
        (Just(n), Just(e), proptest::collection::vec(value, n * e))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Token-choice strategies send every token to exactly k distinct experts.
    #[test]
    fn token_choice_reaches_exactly_k_experts((n, e, logits) in logits_case(), k_pick in 1usize..=4, seed in any::<u64>()) {
        let k = k_pick.min(e);
        let ids: Vec<i64> = (0..n as i64).map(|i| i * 7 + 3).collect();
        let groups = if e % 2 == 0 && e >= 2 { 2 } else { 1 };
        let specs = [
            ("llama4".to_string(), 1),
            (format!("llama4:k={k}"), k),
            (format!("softmax-topk:k={k}"), k),
            (format!("softmax-topk:k={k},renorm=false"), k),
            (format!("deepseek-v3:k={k},groups={groups},topk_groups={groups},scale=2.5"), k),
            ("hash".to_string(), 1),
            (format!("random:k={k},seed={seed}"), k),
            (format!("forced:expert={}", e - 1), 1),
        ];
        for (spec, want_k) in specs {
            let r = route(&spec, &logits, n, e, Some(&ids));
            well_formed(&r)?;
            prop_assert_eq!(r.assignments.len(), n * want_k, "{}", spec);
            prop_assert_eq!(r.dropped, 0);
            prop_assert_eq!(r.stats().unrouted_tokens, 0);
        }
    }

    /// A capacity factor caps every expert's load at ⌈c·n·k/e⌉, keeps assignments in token
    /// order, and counts the rest as dropped.
    #[test]
    fn capacity_caps_loads_and_counts_drops((n, e, logits) in logits_case(), c in 0.1f64..2.0) {
        for (spec, k) in [(format!("llama4:capacity={c}"), 1), (format!("softmax-topk:k=1,capacity={c}"), 1)] {
            let free = route(&spec.replace(&format!(",capacity={c}"), "").replace(&format!(":capacity={c}"), ""), &logits, n, e, None);
            let capped = route(&spec, &logits, n, e, None);
            well_formed(&capped)?;
            let limit = (c * (n * k) as f64 / e as f64).ceil() as usize;
            prop_assert!(capped.load().iter().all(|&l| l <= limit), "{} {:?} > {}", spec, capped.load(), limit);
            prop_assert_eq!(capped.assignments.len() + capped.dropped, free.assignments.len());
            // What is kept is the first `limit` of each expert's assignments in token order.
            for expert in 0..e {
                let want: Vec<usize> = free.assignments.iter().filter(|a| a.expert == expert).take(limit).map(|a| a.token).collect();
                let got: Vec<usize> = capped.assignments.iter().filter(|a| a.expert == expert).map(|a| a.token).collect();
                prop_assert_eq!(got, want, "{} expert {}", spec, expert);
            }
        }
    }

    /// softmax-topk: the chosen experts are the k most probable (ties to the lower index) and
    /// the weights are their probabilities, renormalised over the k unless told otherwise.
    #[test]
    fn softmax_topk_weights_are_the_chosen_probabilities((n, e, logits) in logits_case(), k_pick in 1usize..=3) {
        let k = k_pick.min(e);
        for renorm in [true, false] {
            let r = route(&format!("softmax-topk:k={k},renorm={renorm}"), &logits, n, e, None);
            prop_assert_eq!(r.placement, WeightPlacement::Output);
            for (t, row) in logits.chunks(e).enumerate() {
                let max = row.iter().copied().fold(f64::NEG_INFINITY, |m, x| m.max(x as f64));
                let exps: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp()).collect();
                let sum: f64 = exps.iter().sum();
                let mine: Vec<_> = r.assignments.iter().filter(|a| a.token == t).collect();
                let chosen: f64 = mine.iter().map(|a| exps[a.expert] / sum).sum();
                for a in &mine {
                    let p = exps[a.expert] / sum;
                    let want = if renorm { p / chosen } else { p };
                    prop_assert!((a.weight as f64 - want).abs() <= 1e-5 * want.max(1e-3), "token {}: {} vs {}", t, a.weight, want);
                    // No unchosen expert is more probable.
                    let beaten = (0..e).filter(|&j| mine.iter().all(|b| b.expert != j)).any(|j| exps[j] > exps[a.expert]);
                    prop_assert!(!beaten, "token {}: a more probable expert was skipped", t);
                }
            }
        }
    }

    /// Expert-choice: every expert takes exactly min(⌈c·n/e⌉, n) tokens, its most probable.
    #[test]
    fn expert_choice_fills_every_expert((n, e, logits) in logits_case(), c in 0.25f64..3.0) {
        let r = route(&format!("expert-choice:capacity={c}"), &logits, n, e, None);
        well_formed(&r)?;
        let per_expert = ((c * n as f64 / e as f64).ceil() as usize).min(n);
        prop_assert_eq!(r.load(), vec![per_expert; e]);
        let stats = r.stats();
        let reached = (0..n).filter(|t| r.assignments.iter().any(|a| a.token == *t)).count();
        prop_assert_eq!(stats.unrouted_tokens, n - reached);
    }
}

#[test]
fn deepseek_v3_stays_in_the_best_groups_and_scales_its_weights() {
    // 8 experts in 4 groups; token 0 prefers experts 6 and 7 (group 3) and 0 (group 0).
    let logits = vec![3.0, -1.0, -2.0, -3.0, -1.0, -2.0, 4.0, 3.5];
    let r = route("deepseek-v3:k=3,groups=4,topk_groups=2,scale=2", &logits, 1, 8, None);
    let experts: Vec<usize> = r.assignments.iter().map(|a| a.expert).collect();
    assert_eq!(experts, vec![6, 7, 0]);
    let sum: f32 = r.assignments.iter().map(|a| a.weight).sum();
    assert!((sum - 2.0).abs() < 1e-5, "weights sum {sum}");
    // A bias changes the selection, not the weights' definition.
    let biased = route(
        "deepseek-v3:k=1,groups=1,topk_groups=1,bias=0;0;0;0;9;0;0;0",
        &logits,
        1,
        8,
        None,
    );
    assert_eq!(biased.assignments[0].expert, 4);
    assert!((biased.assignments[0].weight - 1.0).abs() < 1e-6);
}

#[test]
fn hash_routing_follows_the_token_id() {
    let logits = vec![0.0; 6 * 5];
    let ids = [11, 42, 11, 7, 42, 11];
    let r = route("hash", &logits, 6, 5, Some(&ids));
    let expert_of = |t: usize| r.assignments[t].expert;
    assert_eq!(expert_of(0), expert_of(2));
    assert_eq!(expert_of(0), expert_of(5));
    assert_eq!(expert_of(1), expert_of(4));
    let input = RouterInput {
        logits: &logits,
        n_tokens: 6,
        n_experts: 5,
        token_ids: None,
    };
    let err = router_by_name("hash").unwrap().route(&input).unwrap_err().to_string();
    assert!(err.contains("token ids"), "{err}");
}

#[test]
fn random_routing_is_fixed_by_its_seed() {
    let logits = vec![0.0; 50 * 8];
    let a = route("random:k=2,seed=5", &logits, 50, 8, None);
    let b = route("random:k=2,seed=5", &logits, 50, 8, None);
    let c = route("random:k=2,seed=6", &logits, 50, 8, None);
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(
        a.load().iter().all(|&l| l > 0),
        "50 tokens x 2 should reach all 8 experts: {:?}",
        a.load()
    );
}

/// `llama4:k=K` keeps Llama 4's rule for every chosen expert: the K largest logits, best first,
/// each weighted by its own sigmoid on the expert input; `llama4` is `llama4:k=1`.
#[test]
fn llama4_top_k_takes_the_largest_logits_with_sigmoid_weights() {
    let logits = [0.5, -1.0, 2.0, 1.5, /* token 1 */ -0.25, 3.0, 3.0, 0.0];
    let r = route("llama4:k=2", &logits, 2, 4, None);
    let chosen: Vec<(usize, usize)> = r.assignments.iter().map(|a| (a.token, a.expert)).collect();
    // Token 1's tie between experts 1 and 2 goes to the lower index first.
    assert_eq!(chosen, [(0, 2), (0, 3), (1, 1), (1, 2)]);
    for a in &r.assignments {
        let logit = logits[a.token * 4 + a.expert];
        assert_eq!(a.weight, 1.0 / (1.0 + (-logit).exp()), "{a:?}");
    }
    assert_eq!(r.placement, WeightPlacement::Input);
    assert_eq!(
        route("llama4:k=1", &logits, 2, 4, None),
        route("llama4", &logits, 2, 4, None)
    );
}

#[test]
fn bad_specs_are_errors_naming_what_is_wrong() {
    for (spec, needle) in [
        ("top1", "unknown routing strategy"),
        ("softmax-topk:k=two", "k=\"two\""),
        ("softmax-topk:kk=2", "unknown parameter \"kk\""),
        ("softmax-topk:k", "not key=value"),
        ("softmax-topk:k=2,k=3", "twice"),
        ("llama4:capacity=0", "capacity"),
        ("forced", "expert=J"),
        ("random:capacity=1", "no capacity"),
        ("deepseek-v3:bias=1;x", "bias"),
    ] {
        let err = router_by_name(spec)
            .err()
            .unwrap_or_else(|| panic!("{spec} parsed"))
            .to_string();
        assert!(err.contains(needle), "{spec}: {err}");
    }
    let logits = vec![0.0; 2 * 6];
    let input = RouterInput {
        logits: &logits,
        n_tokens: 2,
        n_experts: 6,
        token_ids: None,
    };
    for (spec, needle) in [
        ("softmax-topk:k=7", "k = 7"),
        ("llama4:k=7", "k = 7"),
        ("deepseek-v3:groups=4", "divide"),
        ("forced:expert=6", "expert 6"),
    ] {
        let err = router_by_name(spec).unwrap().route(&input).unwrap_err().to_string();
        assert!(err.contains(needle), "{spec}: {err}");
    }
}

/// The MoE block under a strategy that gives tokens different numbers of experts (expert-choice)
/// and one with k = 2 on the output, against the sum over assignments computed expert by
/// expert with plain matmuls.
#[test]
fn the_moe_block_sums_each_tokens_assignments() {
    let (n, d, f, e) = (9, 6, 5, 4);
    let randn = |shape: &[usize], s: u64| Tensor::randn(shape, DType::F32, 100 + s, Device::Cpu).unwrap();
    let x = randn(&[n, d], 0);
    let gate_up = randn(&[e, d, 2 * f], 1);
    let down = randn(&[e, f, d], 2);
    let router = randn(&[e, d], 3);
    for spec in ["expert-choice:capacity=1.5", "softmax-topk:k=2", "llama4"] {
        let moe = Moe {
            router: Linear::from_hf_weight(&router).unwrap(),
            experts: Experts::Fused {
                gate_up: gate_up.clone(),
                down: down.clone(),
            },
            shared: None,
            strategy: router_by_name(spec).unwrap(),
        };
        let out = moe.forward(&x).unwrap();
        let xs = x.to_f64_vec().unwrap();
        let (gu, dn) = (gate_up.to_f64_vec().unwrap(), down.to_f64_vec().unwrap());
        let mut want = vec![0f64; n * d];
        for a in &out.routing.assignments {
            let scale_in = if out.routing.placement == WeightPlacement::Input {
                a.weight as f64
            } else {
                1.0
            };
            let scale_out = if out.routing.placement == WeightPlacement::Output {
                a.weight as f64
            } else {
                1.0
            };
            let xin: Vec<f64> = xs[a.token * d..(a.token + 1) * d]
                .iter()
                .map(|v| v * scale_in)
                .collect();
            let proj = |col: usize| -> f64 { (0..d).map(|i| xin[i] * gu[(a.expert * d + i) * 2 * f + col]).sum() };
            let h: Vec<f64> = (0..f)
                .map(|j| {
                    let g = proj(j);
                    g / (1.0 + (-g).exp()) * proj(f + j)
                })
                .collect();
            for o in 0..d {
                let y: f64 = (0..f).map(|j| h[j] * dn[(a.expert * f + j) * d + o]).sum();
                want[a.token * d + o] += y * scale_out;
            }
        }
        let got = out.output.to_f64_vec().unwrap();
        // f32 evaluations of small sums (d, f ≤ 6 terms): a loose f32 bound on unit-scale data.
        assert_close(&got, &want, Tolerance::new(1e-4, 1e-4), spec).unwrap();
    }
}

/// On a fixture: `llama4` routing is the default (bit-identical), another strategy runs and its
/// loads are captured with the router logits.
#[test]
fn the_model_takes_a_strategy_and_reports_loads() {
    let model = loader::load("tiny-scout", DType::F32, Device::Cpu).unwrap();
    let ids = Tensor::from_vec((0..24i64).map(|i| (i * 37) % 500).collect(), &[2, 12], Device::Cpu).unwrap();
    let capture = Capture {
        hidden_states: false,
        router_logits: true,
    };
    let base = model.forward(&ids, &mut model.new_cache(), capture).unwrap();
    let model = model.with_router("llama4").unwrap();
    let same = model.forward(&ids, &mut model.new_cache(), capture).unwrap();
    assert_eq!(base.logits.to_f32_vec().unwrap(), same.logits.to_f32_vec().unwrap());
    for spec in [
        "softmax-topk:k=2",
        "hash",
        "expert-choice",
        "deepseek-v3:k=2,groups=2,topk_groups=1",
    ] {
        let model = loader::load("tiny-scout", DType::F32, Device::Cpu)
            .unwrap()
            .with_router(spec)
            .unwrap();
        let out = model.forward(&ids, &mut model.new_cache(), capture).unwrap();
        assert_eq!(out.routing.len(), model.spec().num_layers(), "{spec}");
        for (layer, routing) in &out.routing {
            assert_eq!(routing.n_tokens, 24, "{spec} layer {layer}");
            let stats = routing.stats();
            assert_eq!(stats.load.iter().sum::<usize>(), routing.assignments.len());
            assert!(stats.entropy >= 0.0 && stats.max_over_mean >= 1.0, "{spec}: {stats:?}");
        }
        assert!(out.logits.to_f32_vec().unwrap().iter().all(|v| v.is_finite()), "{spec}");
    }
}
