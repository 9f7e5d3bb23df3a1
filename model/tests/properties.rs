//! Property tests of the model parts and the assembled decoder: invariants that hold for any
//! input (RoPE is a rotation that sees only relative positions, a chunk longer than the sequence
//! is global attention, the KV cache changes nothing, one expert scored 1 is a dense MLP, the
//! batch is a set of independent rows, the Llama 4 router is sigmoid-of-top-1).
//!
//! Tolerances come from `l4_core::testing`; where a property compares two evaluations of the
//! same function, the bound is derived next to the test (`u` = 2^-24, the f32 unit roundoff).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use l4_core::testing::{Tolerance, assert_close, gamma, test_devices};
use l4_core::{DType, Device, Result, Tensor};
use l4_model::hf_config::HfArchitecture;
use l4_model::kv_cache::LayerCache;
use l4_model::parts::attention::{AttentionContext, AttentionShape, AttentionWeights, StepMasks, attention_forward};
use l4_model::parts::linear::Linear;
use l4_model::parts::mlp::SwiGlu;
use l4_model::parts::moe::{Experts, Moe};
use l4_model::parts::rope::RotaryTable;
use l4_model::parts::router::{Assignment, Llama4Router, Router, RouterInput, Routing, WeightPlacement};
use l4_model::spec::{Llama3Scaling, RopeSpec, Temperature};
use l4_model::weights::{RandomSource, WeightNames};
use l4_model::{Capture, Ffn, LayerSpec, Llama4, ModelSpec, Position, Span, loader, preset};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// `u(f32)`.
const U32: f64 = 1.0 / 16_777_216.0;

/// Cases for properties of single parts (cheap).
fn part_cases() -> ProptestConfig {
    ProptestConfig::with_cases(64)
}

/// Cases for properties that run the whole (tiny) model.
fn model_cases() -> ProptestConfig {
    ProptestConfig::with_cases(24)
}

/// `assert_close` as a proptest failure.
fn check_close(got: &[f64], want: &[f64], tol: Tolerance, context: &str) -> std::result::Result<(), TestCaseError> {
    assert_close(got, want, tol, context).map_err(TestCaseError::fail)
}

/// Per-element bounds: `|got_i − want_i| ≤ bound_i`.
fn check_within(got: &[f64], want: &[f64], bound: &[f64], context: &str) -> std::result::Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "{}: length", context);
    // A NaN difference fails too.
    let within = |i: usize| (got[i] - want[i]).abs() <= bound[i];
    let bad: Vec<usize> = (0..got.len()).filter(|&i| !within(i)).collect();
    if let Some(&i) = bad.first() {
        return Err(TestCaseError::fail(format!(
            "{context}: {} of {} elements out of their derived bound; first at {i}: got {:e}, want {:e}, \
             |diff| {:.3e} > bound {:.3e}",
            bad.len(),
            got.len(),
            got[i],
            want[i],
            (got[i] - want[i]).abs(),
            bound[i]
        )));
    }
    Ok(())
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_f64_vec().unwrap()
}

// ---------------------------------------------------------------------------------------------
// RoPE
// ---------------------------------------------------------------------------------------------

/// RoPE parameters: plain, llama3 with a blended middle band, and llama3 with
/// `low_freq_factor == high_freq_factor` (Scout's empty middle band).
fn rope_spec() -> impl Strategy<Value = RopeSpec> {
    let scaling = prop_oneof![
        Just(None),
        (1.0f64..32.0, 0.5f64..4.0, 0.0f64..8.0, 2usize..512).prop_map(|(factor, low, extra, original)| Some(
            Llama3Scaling {
                factor,
                low_freq_factor: low,
                high_freq_factor: low + extra,
                original_max_position: original,
            }
        )),
        (1.0f64..32.0, 0.5f64..4.0, 2usize..512).prop_map(|(factor, low, original)| Some(Llama3Scaling {
            factor,
            low_freq_factor: low,
            high_freq_factor: low,
            original_max_position: original,
        })),
    ];
    (100.0f64..1e6, scaling).prop_map(|(theta, scaling)| RopeSpec { theta, scaling })
}

/// `[b, t, heads, dh]` values in [-10, 10).
fn head_tensor() -> impl Strategy<Value = (Vec<usize>, Vec<f32>)> {
    (1usize..=2, 1usize..=5, 1usize..=3, 1usize..=16).prop_flat_map(|(b, t, heads, pairs)| {
        let shape = vec![b, t, heads, 2 * pairs];
        let n = b * t * heads * 2 * pairs;
        (Just(shape), proptest::collection::vec(-10.0f32..10.0, n))
    })
}

/// The error of one rotated pair against the exact rotation by the same (rounded) angle,
/// relative to the pair's norm: cos and sin are evaluated in f64 and rounded once (≤ u each,
/// so the rotation matrix is off by ≤ √2·u in norm), and each output component is two f32
/// products and one subtraction (≤ γ_2·‖pair‖ by Cauchy–Schwarz, √2·γ_2 for both). In all
/// ≤ (√2 + 2√2)·u ≈ 4.3·u; 8·u leaves room for the second-order terms.
const ROTATION_REL_ERROR: f64 = 8.0 * U32;

proptest! {
    #![proptest_config(part_cases())]

    /// A rotation keeps every head vector's L2 norm (to the rotation's rounding error).
    #[test]
    fn rope_preserves_the_norm_of_every_head_vector(
        rope in rope_spec(),
        (shape, values) in head_tensor(),
        start in 0usize..5000,
    ) {
        let dh = shape[3];
        let table = RotaryTable::new(&rope, dh);
        let x = Tensor::from_vec(values.clone(), &shape, Device::Cpu).unwrap();
        let y = table.apply(&x, start).unwrap();
        prop_assert_eq!(y.shape(), x.shape());
        let norms = |v: &[f64]| -> Vec<f64> {
            v.chunks(dh).map(|h| h.iter().map(|a| a * a).sum::<f64>().sqrt()).collect()
        };
        let (got, want) = (norms(&f64s(&y)), norms(&f64s(&x)));
        // ‖y − R·x‖ ≤ ROTATION_REL_ERROR·‖x‖ per pair, hence per head vector; the f64 norms
        // add ~dh·2^-53, far below.
        check_close(&got, &want, Tolerance::new(0.0, ROTATION_REL_ERROR), "rope head norms")?;
    }

    /// `⟨R(m)q, R(n)k⟩ = ⟨R(m+s)q, R(n+s)k⟩`: attention scores see only `m − n`.
    #[test]
    fn rope_scores_depend_only_on_the_relative_position(
        rope in rope_spec(),
        pairs in 1usize..=16,
        m in 0usize..2048,
        n in 0usize..2048,
        s in 0usize..2048,
        seed in any::<u64>(),
    ) {
        let dh = 2 * pairs;
        let table = RotaryTable::new(&rope, dh);
        let q = Tensor::randn(&[1, 1, 1, dh], DType::F32, seed, Device::Cpu).unwrap();
        let k = Tensor::randn(&[1, 1, 1, dh], DType::F32, seed ^ 0x9e37_79b9, Device::Cpu).unwrap();
        let dot = |a: &Tensor, b: &Tensor| -> f64 { f64s(a).iter().zip(f64s(b)).map(|(x, y)| x * y).sum() };
        let near = dot(&table.apply(&q, m).unwrap(), &table.apply(&k, n).unwrap());
        let far = dot(&table.apply(&q, m + s).unwrap(), &table.apply(&k, n + s).unwrap());

        // Derived bound. Pair j contributes Re(q_j·conj(k_j)·e^{i(a_m − a_n)}) where the f32
        // angle a_p = fl(p·θ_j) is off by ≤ u·p·θ_j (p < 2^24 is exact in f32), which moves the
        // term by ≤ |q_j||k_j|·u·(m + n)·θ_j; each rotated pair is off by ≤ ε·|pair|
        // (ROTATION_REL_ERROR), which moves it by ≤ (2ε + ε²)·|q_j||k_j|. Both dot products carry
        // such errors, and the f64 sums add γ_dh(2^-53).
        let (qv, kv) = (f64s(&q), f64s(&k));
        let eps = ROTATION_REL_ERROR;
        let mut bound = 0.0;
        for (j, &theta) in table.inv_freq().iter().enumerate() {
            let qn = qv[2 * j].hypot(qv[2 * j + 1]);
            let kn = kv[2 * j].hypot(kv[2 * j + 1]);
            let angle_error = U32 * theta as f64 * ((m + n) + (m + n + 2 * s)) as f64;
            bound += qn * kn * (angle_error + 2.0 * (2.0 * eps + eps * eps));
        }
        let magnitude: f64 = qv.iter().zip(&kv).map(|(a, b)| (a * b).abs()).sum();
        bound += 2.0 * gamma(dh, f64::EPSILON / 2.0) * magnitude * (1.0 + 2.0 * eps);
        prop_assert!(
            (near - far).abs() <= bound,
            "<R({m})q, R({n})k> = {near} but <R({})q, R({})k> = {far}: |diff| {:.3e} > bound {bound:.3e}",
            m + s, n + s, (near - far).abs()
        );
    }

    /// Position 0 rotates by angle 0: the identity, bit for bit (cos 0 = 1, sin 0 = 0).
    #[test]
    fn rope_at_position_zero_is_the_identity(rope in rope_spec(), (shape, values) in head_tensor()) {
        let table = RotaryTable::new(&rope, shape[3]);
        let first = Tensor::from_vec(values, &shape, Device::Cpu).unwrap().narrow(1, 0, 1).unwrap().contiguous().unwrap();
        let y = table.apply(&first, 0).unwrap();
        check_close(&f64s(&y), &f64s(&first), Tolerance::exact(), "rope at position 0")?;
    }

    /// Token i of a step that starts at `start` is rotated as one token at `start + i` would be.
    #[test]
    fn rope_applies_position_start_plus_i_to_token_i(
        rope in rope_spec(),
        (shape, values) in head_tensor(),
        start in 0usize..5000,
    ) {
        let table = RotaryTable::new(&rope, shape[3]);
        let x = Tensor::from_vec(values, &shape, Device::Cpu).unwrap();
        let y = table.apply(&x, start).unwrap();
        for i in 0..shape[1] {
            let token = x.narrow(1, i, 1).unwrap().contiguous().unwrap();
            let alone = table.apply(&token, start + i).unwrap();
            // The same f32 operations on the same values.
            check_close(
                &f64s(&y.narrow(1, i, 1).unwrap()),
                &f64s(&alone),
                Tolerance::exact(),
                &format!("token {i} of a step at {start}"),
            )?;
        }
    }

    /// llama3 scaling divides each inverse frequency by a factor in [1, factor] and never
    /// produces a non-finite one (also with an empty middle band).
    #[test]
    fn llama3_scaling_divides_frequencies_by_at_most_the_factor(rope in rope_spec(), pairs in 1usize..=64) {
        let dh = 2 * pairs;
        let plain = RotaryTable::new(&RopeSpec { theta: rope.theta, scaling: None }, dh);
        let scaled = RotaryTable::new(&rope, dh);
        let factor = rope.scaling.map_or(1.0, |s| s.factor);
        // Each table entry is one f64 computation rounded once to f32: relative slack
        // elementwise(F32).rtol on both ends.
        let slack = Tolerance::elementwise(DType::F32).rtol;
        for (j, (&p, &s)) in plain.inv_freq().iter().zip(scaled.inv_freq()).enumerate() {
            let (p, s) = (p as f64, s as f64);
            prop_assert!(s.is_finite() && s > 0.0, "θ_{j} = {s}");
            prop_assert!(s <= p * (1.0 + slack) && s >= p / factor * (1.0 - slack),
                "θ_{j}: scaled {s} outside [{}, {p}]", p / factor);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Temperature
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The factor is exactly 1 while `p + 1 < floor_scale`, above 1 from `p + 1 ≥ floor_scale`
    /// on (for `attn_scale > 0`), and never decreases with the position.
    #[test]
    fn temperature_is_one_below_floor_scale_and_grows_after(
        floor_scale in prop_oneof![(1u32..10_000).prop_map(f64::from), 0.5f64..10_000.0],
        attn_scale in 1e-6f64..10.0,
        p in prop_oneof![0usize..20_000, Just(0usize)],
    ) {
        let t = Temperature { floor_scale, attn_scale };
        let f = t.factor(p);
        if ((p + 1) as f64) < floor_scale {
            prop_assert_eq!(f, 1.0, "p = {}, floor_scale = {}", p, floor_scale);
        } else {
            prop_assert!(f > 1.0, "p = {p}, floor_scale = {floor_scale}: factor {f}");
        }
        prop_assert!(t.factor(p + 1) >= f, "not monotone at p = {p}");
        // It leaves 1 exactly at the first p with p + 1 ≥ floor_scale.
        let first = (floor_scale.ceil() as usize).max(1) - 1;
        prop_assert!(t.factor(first) > 1.0, "first = {first}");
        if first > 0 {
            prop_assert_eq!(t.factor(first - 1), 1.0, "first = {}", first);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Chunked attention with a chunk at least as long as the sequence
// ---------------------------------------------------------------------------------------------

fn random_linear(out: usize, inp: usize, seed: u64) -> Linear {
    let w = Tensor::randn(&[out, inp], DType::F32, seed, Device::Cpu)
        .unwrap()
        .scale(1.0 / (inp as f64).sqrt())
        .unwrap();
    Linear::from_hf_weight(&w).unwrap()
}

fn attention_layer(position: Position, span: Span, qk_norm: bool, temperature: Option<Temperature>) -> LayerSpec {
    LayerSpec {
        position,
        span,
        qk_norm: qk_norm && position == Position::Rope,
        temperature,
        ffn: Ffn::Dense { intermediate: 1 },
    }
}

#[derive(Debug, Clone)]
struct AttentionCase {
    kv_heads: usize,
    group: usize,
    pairs: usize,
    d: usize,
    b: usize,
    t: usize,
    position: Position,
    qk_norm: bool,
    temperature: Option<Temperature>,
    seed: u64,
}

fn attention_case() -> impl Strategy<Value = AttentionCase> {
    (
        1usize..=2,
        1usize..=3,
        1usize..=8,
        1usize..=32,
        1usize..=2,
        1usize..=24,
        prop_oneof![Just(Position::Rope), Just(Position::NoPe)],
        any::<bool>(),
        prop_oneof![
            Just(None),
            (1.0f64..8.0, 0.0f64..1.0).prop_map(|(floor_scale, attn_scale)| Some(Temperature {
                floor_scale,
                attn_scale
            }))
        ],
        any::<u64>(),
    )
        .prop_map(
            |(kv_heads, group, pairs, d, b, t, position, qk_norm, temperature, seed)| AttentionCase {
                kv_heads,
                group,
                pairs,
                d,
                b,
                t,
                position,
                qk_norm,
                temperature,
                seed,
            },
        )
}

fn run_attention(case: &AttentionCase, span: Span) -> Tensor {
    let h = case.kv_heads * case.group;
    let dh = 2 * case.pairs;
    let shape = AttentionShape {
        num_heads: h,
        num_kv_heads: case.kv_heads,
        head_dim: dh,
    };
    let weights = AttentionWeights {
        q: random_linear(h * dh, case.d, case.seed),
        k: random_linear(case.kv_heads * dh, case.d, case.seed.wrapping_add(1)),
        v: random_linear(case.kv_heads * dh, case.d, case.seed.wrapping_add(2)),
        o: random_linear(case.d, h * dh, case.seed.wrapping_add(3)),
    };
    let rope = RotaryTable::new(
        &RopeSpec {
            theta: 10_000.0,
            scaling: None,
        },
        dh,
    );
    let x = Tensor::randn(
        &[case.b, case.t, case.d],
        DType::F32,
        case.seed.wrapping_add(4),
        Device::Cpu,
    )
    .unwrap();
    let layer = attention_layer(case.position, span, case.qk_norm, case.temperature);
    let mut cache = LayerCache::new(span);
    let context = AttentionContext {
        shape,
        inv_freq: &rope.inv_freq_on(Device::Cpu).unwrap(),
        rms_norm_eps: 1e-5,
    };
    let mut masks = StepMasks::new(DType::F32, Device::Cpu);
    attention_forward(context, &layer, &weights, &x, 0, &mut cache, &mut masks).unwrap()
}

proptest! {
    #![proptest_config(part_cases())]

    /// With a chunk of at least T every query's chunk holds all earlier keys: chunk = T and
    /// chunk = 10·T give global attention.
    ///
    /// Bound: exact. Both spans form one query block over keys 0..T with the same causal
    /// mask, so the CPU evaluates the same f32 operations on the same values.
    #[test]
    fn attention_with_a_chunk_of_at_least_t_is_global(case in attention_case()) {
        let global = f64s(&run_attention(&case, Span::Global));
        for chunk in [case.t, 10 * case.t] {
            let chunked = f64s(&run_attention(&case, Span::Chunked(chunk)));
            check_close(&chunked, &global, Tolerance::exact(), &format!("chunk {chunk} vs global, {case:?}"))?;
        }
    }
}

/// The property above must be able to fail: a chunk shorter than the sequence hides keys.
#[test]
fn attention_with_a_short_chunk_is_not_global() {
    let case = AttentionCase {
        kv_heads: 2,
        group: 2,
        pairs: 4,
        d: 16,
        b: 1,
        t: 12,
        position: Position::Rope,
        qk_norm: true,
        temperature: None,
        seed: 7,
    };
    let global = f64s(&run_attention(&case, Span::Global));
    let chunked = f64s(&run_attention(&case, Span::Chunked(4)));
    let d = case.d;
    // Positions 0..4 are in the first chunk either way: the two runs agree there up to the
    // rounding of differently shaped products (~1e-7). Position 4 on sees fewer keys, which
    // changes outputs at the scale of the outputs themselves (~1e-1). The check asks for that
    // separation (four orders of magnitude) rather than for any particular rounding bound.
    let max_diff = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let first = max_diff(&chunked[..4 * d], &global[..4 * d]);
    let later = max_diff(&chunked[4 * d..], &global[4 * d..]);
    assert!(
        later > 1e-3,
        "a chunk of 4 over 12 tokens gave the global result (max diff {later:.3e})"
    );
    assert!(
        first <= 1e-4 * later,
        "the first chunk differs by {first:.3e}, not only by rounding (later: {later:.3e})"
    );
}

/// The tiny-scout plan with every chunked layer's span replaced by `span`.
fn tiny_scout_with_span(span: Span) -> ModelSpec {
    let mut spec = preset("tiny-scout").unwrap().spec();
    assert!(spec.layers.iter().any(|l| matches!(l.span, Span::Chunked(_))));
    for layer in &mut spec.layers {
        if matches!(layer.span, Span::Chunked(_)) {
            layer.span = span;
        }
    }
    spec
}

fn build(spec: ModelSpec, seed: u64) -> Llama4 {
    let names = WeightNames::for_architecture(HfArchitecture::CausalLm);
    let mut source = RandomSource::new(seed, DType::F32, Device::Cpu);
    Llama4::build(spec, &names, &mut source, DType::F32, Device::Cpu).unwrap()
}

fn logits(model: &Llama4, ids: &Tensor) -> Tensor {
    let mut cache = model.new_cache();
    model.forward(ids, &mut cache, Capture::default()).unwrap().logits
}

fn ids_tensor(ids: Vec<i64>, b: usize, t: usize) -> Tensor {
    Tensor::from_vec(ids, &[b, t], Device::Cpu).unwrap()
}

/// Token ids `[b, t]` below `vocab`.
fn token_ids(
    vocab: usize,
    b: std::ops::RangeInclusive<usize>,
    t: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = (usize, usize, Vec<i64>)> {
    (b, t).prop_flat_map(move |(b, t)| (Just(b), Just(t), proptest::collection::vec(0..vocab as i64, b * t)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Whole model: chunked layers with chunk = T or 10·T give the logits of global layers.
    /// Bound: exact, as for the attention block (the same operations on the same values).
    #[test]
    fn model_with_chunks_of_at_least_t_equals_global_attention(
        (b, t, ids) in token_ids(512, 1..=2, 1..=24),
        seed in any::<u64>(),
    ) {
        let ids = ids_tensor(ids, b, t);
        let global = f64s(&logits(&build(tiny_scout_with_span(Span::Global), seed), &ids));
        for chunk in [t, 10 * t] {
            let chunked = f64s(&logits(&build(tiny_scout_with_span(Span::Chunked(chunk)), seed), &ids));
            check_close(&chunked, &global, Tolerance::exact(), &format!("chunk {chunk}, t = {t}"))?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// KV cache and batch independence on the tiny presets
// ---------------------------------------------------------------------------------------------

fn preset_model(name: &'static str) -> &'static Llama4 {
    static SCOUT: OnceLock<Llama4> = OnceLock::new();
    static MAVERICK: OnceLock<Llama4> = OnceLock::new();
    let cell = match name {
        "tiny-scout" => &SCOUT,
        "tiny-maverick" => &MAVERICK,
        other => panic!("no cached preset {other}"),
    };
    cell.get_or_init(|| loader::load(name, DType::F32, Device::Cpu).unwrap())
}

const TINY_PRESETS: [&str; 2] = ["tiny-scout", "tiny-maverick"];

/// The HF-verified fixture checkpoints of the same two shapes (model/testdata), found from the
/// package directory, the repository root (packed test binaries) or the manifest directory.
fn fixture_dir(name: &str) -> PathBuf {
    [
        PathBuf::from("testdata"),
        PathBuf::from("model/testdata"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata"),
    ]
    .iter()
    .map(|base| base.join(name))
    .find(|p| p.is_dir())
    .unwrap_or_else(|| panic!("fixture {name} not found under testdata/ or model/testdata/"))
}

/// A fixture model and the bound on the difference of two f32 evaluations of its logits.
///
/// The parity rule of model/tests/parity.rs (the FlashAttention rule): our f32 logits may be at
/// most twice as far from an exact (f64) evaluation as HF's f32 logits, whose distance
/// `hf_vs_f64_reference_maxabs.logits` the fixture script measured. Two of our evaluations of
/// the same logits (cached and uncached) each meet that rule, so they meet its `pairwise()`
/// form with each other (4 times HF's error).
struct FixtureModel {
    model: Llama4,
    two_evaluations: Tolerance,
}

/// The fixture models of both shapes on every test device (the CPU; CUDA device 0 when usable).
fn fixture_models() -> &'static [(&'static str, Device, FixtureModel)] {
    static MODELS: OnceLock<Vec<(&'static str, Device, FixtureModel)>> = OnceLock::new();
    MODELS.get_or_init(|| {
        let mut models = Vec::new();
        for name in TINY_PRESETS {
            let dir = fixture_dir(name);
            let meta_path = dir.join("expected_meta.json");
            let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
            let hf_error = meta["hf_vs_f64_reference_maxabs"]["logits"]
                .as_f64()
                .unwrap_or_else(|| panic!("{}: no hf_vs_f64_reference_maxabs.logits", meta_path.display()));
            for device in test_devices() {
                let model = FixtureModel {
                    model: loader::load(dir.to_str().unwrap(), DType::F32, device).unwrap(),
                    two_evaluations: Tolerance::new(2.0 * hf_error, 0.0).pairwise(),
                };
                models.push((name, device, model));
            }
        }
        models
    })
}

/// A prompt of `t` tokens cut into a first piece of `first` tokens and then pieces of the
/// given lengths (the last one shortened to fit).
fn pieces(t: usize, first: usize, rest: &[usize]) -> Vec<usize> {
    let mut out = vec![first];
    let mut done = first;
    for &len in rest.iter().cycle() {
        if done == t {
            break;
        }
        let len = len.min(t - done);
        out.push(len);
        done += len;
    }
    out
}

proptest! {
    #![proptest_config(model_cases())]

    /// Prefill of `prompt[..s]` then the rest in pieces (often one token at a time) through the
    /// KV cache gives the logits of one forward over the whole prompt, on every device (on CUDA
    /// the cache stays on the device). T up to 40 crosses the
    /// chunk boundaries (chunk 8) at every offset and outgrows the prompts the fixtures were
    /// made with (30 and 36 tokens).
    ///
    /// Run on the fixture checkpoints of the tiny-scout and tiny-maverick shapes rather than on
    /// the presets' random weights, because only they carry the measured f64 error the bound is
    /// derived from ([`FixtureModel`]): the two paths group rows differently in their GEMMs, so
    /// they agree to rounding, not bit for bit.
    #[test]
    fn kv_cache_decoding_equals_full_recomputation(
        (b, t, ids) in token_ids(256, 1..=2, 3..=40),
        first_frac in 0.0f64..1.0,
        rest in proptest::collection::vec(prop_oneof![Just(1usize), 1usize..=9], 1..8),
    ) {
        let first = 1 + ((t - 1) as f64 * first_frac) as usize; // 1..=t
        let cuts = pieces(t, first, &rest);
        let ids = ids_tensor(ids, b, t);
        for (name, device, fixture) in fixture_models() {
            let model = &fixture.model;
            prop_assert!(model.spec().vocab_size >= 256);
            let full = logits(model, &ids);
            let mut cache = model.new_cache();
            let mut steps = Vec::new();
            let mut pos = 0;
            for &len in &cuts {
                let piece = ids.narrow(1, pos, len).unwrap().contiguous().unwrap();
                steps.push(model.forward(&piece, &mut cache, Capture::default()).unwrap().logits);
                pos += len;
            }
            prop_assert_eq!(cache.position(), t);
            let refs: Vec<&Tensor> = steps.iter().collect();
            let cached = l4_kernels::ops::cat(&refs, 1).unwrap();
            prop_assert_eq!(cached.shape(), full.shape());
            check_close(
                &f64s(&cached),
                &f64s(&full),
                fixture.two_evaluations,
                &format!("{name} (fixture, {device}): pieces {cuts:?}"),
            )?;
        }
    }

    /// Permuting the rows of `ids [b, t]` permutes the rows of the logits: sequences of a
    /// batch never see each other (MoE groups tokens of all rows per expert).
    ///
    /// Bound: exact. Each output row comes from the same f32 operations on the same row
    /// values, whichever rows it is batched with.
    #[test]
    fn permuting_the_batch_permutes_the_logits(
        (b, t, ids) in token_ids(512, 2..=4, 1..=12),
        perm_seed in any::<u64>(),
    ) {
        // A permutation of 0..b from the seed (Fisher–Yates with a splitmix step).
        let mut perm: Vec<usize> = (0..b).collect();
        let mut state = perm_seed;
        for i in (1..b).rev() {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            perm.swap(i, ((z ^ (z >> 31)) % (i as u64 + 1)) as usize);
        }
        let permuted: Vec<i64> = perm.iter().flat_map(|&r| ids[r * t..(r + 1) * t].to_vec()).collect();
        let (ids, permuted) = (ids_tensor(ids, b, t), ids_tensor(permuted, b, t));
        for name in TINY_PRESETS {
            let model = preset_model(name);
            let base = logits(model, &ids);
            let moved = logits(model, &permuted);
            for (row, &src) in perm.iter().enumerate() {
                check_close(
                    &f64s(&moved.narrow(0, row, 1).unwrap()),
                    &f64s(&base.narrow(0, src, 1).unwrap()),
                    Tolerance::exact(),
                    &format!("{name}: row {row} of the permuted batch vs row {src}, perm {perm:?}"),
                )?;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MoE and routing
// ---------------------------------------------------------------------------------------------

/// Sends every token to expert 0 with weight 1.
#[derive(Debug)]
struct AlwaysExpertZero(WeightPlacement);

impl Router for AlwaysExpertZero {
    fn name(&self) -> &'static str {
        "always-expert-zero"
    }

    fn route(&self, input: &RouterInput<'_>) -> Result<Routing> {
        assert_eq!(input.logits.len(), input.n_tokens * input.n_experts);
        Ok(Routing {
            n_tokens: input.n_tokens,
            n_experts: input.n_experts,
            assignments: (0..input.n_tokens)
                .map(|token| Assignment {
                    token,
                    expert: 0,
                    weight: 1.0,
                })
                .collect(),
            placement: self.0,
            dropped: 0,
            aux_loss: None,
            z_loss: None,
        })
    }
}

/// Row-major `[rows, cols]` f64 values of a rank-2 tensor.
fn matrix(t: &Tensor) -> (usize, usize, Vec<f64>) {
    (t.shape()[0], t.shape()[1], f64s(t))
}

/// Per-element bound on the error of one f32 evaluation of `down(silu(gate·x) ⊙ up·x)` against
/// exact arithmetic, for `x [n, d]`, `gate, up [f, d]`, `down [d, f]` (HF layouts), computed
/// from the data:
///
/// * `g_j`, `u_j` are d-term f32 dot products: off by `e_g ≤ γ_d(u)·Σ_i|x_i·G_ji|` (`e_u` alike);
/// * `h_j = silu(ĝ_j)·û_j`: silu is 1.1-Lipschitz and evaluated within
///   `Tolerance::elementwise(F32).rtol` (6u), the product adds u; so
///   `|ĥ_j − h_j| ≤ 1.1·e_g·(|u_j| + e_u) + |silu(g_j)|·e_u + 8u·(|silu(g_j)| + 1.1·e_g)(|u_j| + e_u)`;
/// * `y_k = Σ_j ĥ_j·D_kj` in f32: `≤ Σ_j |D_kj|·e_h_j + γ_f(u)·Σ_j |D_kj|·(|h_j| + e_h_j)`.
fn swiglu_error_bound(x: &Tensor, gate: &Tensor, up: &Tensor, down: &Tensor) -> Vec<f64> {
    let (n, d, xv) = matrix(x);
    let (f, _, gv) = matrix(gate);
    let uv = f64s(up);
    let dv = f64s(down); // [d, f]
    let silu = |z: f64| z / (1.0 + (-z).exp());
    let rel = Tolerance::elementwise(DType::F32).rtol + 2.0 * U32;
    let (gd, gf) = (gamma(d, U32), gamma(f, U32));
    let mut bounds = Vec::with_capacity(n * d);
    for row in xv.chunks(d) {
        let mut h = vec![0.0; f];
        let mut eh = vec![0.0; f];
        for j in 0..f {
            let (gw, uw) = (&gv[j * d..(j + 1) * d], &uv[j * d..(j + 1) * d]);
            let g: f64 = row.iter().zip(gw).map(|(a, b)| a * b).sum();
            let u: f64 = row.iter().zip(uw).map(|(a, b)| a * b).sum();
            let eg = gd * row.iter().zip(gw).map(|(a, b)| (a * b).abs()).sum::<f64>();
            let eu = gd * row.iter().zip(uw).map(|(a, b)| (a * b).abs()).sum::<f64>();
            h[j] = silu(g) * u;
            eh[j] = 1.1 * eg * (u.abs() + eu) + silu(g).abs() * eu + rel * (silu(g).abs() + 1.1 * eg) * (u.abs() + eu);
        }
        for k in 0..d {
            let dk = &dv[k * f..(k + 1) * f];
            let direct: f64 = dk.iter().zip(&eh).map(|(w, e)| w.abs() * e).sum();
            let sum: f64 = dk
                .iter()
                .zip(h.iter().zip(&eh))
                .map(|(w, (h, e))| w.abs() * (h.abs() + e))
                .sum();
            bounds.push(direct + gf * sum);
        }
    }
    bounds
}

proptest! {
    #![proptest_config(part_cases())]

    /// A one-expert MoE without a shared expert, whose router always picks expert 0 with
    /// weight 1 (on the input or on the output), is the dense SwiGLU with the same weights.
    #[test]
    fn one_expert_moe_with_score_one_is_the_dense_swiglu(
        n in 1usize..=10,
        d in 1usize..=24,
        f in 1usize..=24,
        seed in any::<u64>(),
        placement in prop_oneof![Just(WeightPlacement::Input), Just(WeightPlacement::Output)],
    ) {
        let randn = |shape: &[usize], s: u64| Tensor::randn(shape, DType::F32, seed.wrapping_add(s), Device::Cpu).unwrap();
        let x = randn(&[n, d], 0);
        let gate = randn(&[f, d], 1); // HF nn.Linear [out, in]
        let up = randn(&[f, d], 2);
        let down = randn(&[d, f], 3);
        let dense = SwiGlu {
            gate: Linear::from_hf_weight(&gate).unwrap(),
            up: Linear::from_hf_weight(&up).unwrap(),
            down: Linear::from_hf_weight(&down).unwrap(),
        };
        // HF's fused expert layout: gate_up [e, d, 2f] = [gateᵀ | upᵀ], down [e, f, d] = downᵀ.
        let gate_up = Tensor::cat(&[&gate.transpose(0, 1).unwrap(), &up.transpose(0, 1).unwrap()], 1)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape(&[1, d, 2 * f])
            .unwrap();
        let moe = Moe {
            router: Linear::from_hf_weight(&randn(&[1, d], 4)).unwrap(),
            experts: Experts::Fused {
                gate_up,
                down: down.transpose(0, 1).unwrap().contiguous().unwrap().reshape(&[1, f, d]).unwrap(),
            },
            shared: None,
            strategy: Box::new(AlwaysExpertZero(placement)),
        };
        let out = moe.forward(&x).unwrap();
        prop_assert_eq!(out.routing.load(), vec![n]);
        prop_assert_eq!(out.router_logits.shape(), &[n, 1]);
        let want = dense.forward(&x).unwrap();
        prop_assert_eq!(out.output.shape(), want.shape());
        // Both are f32 evaluations of the same function (a weight of 1 scales exactly): each is
        // within the derived bound of the exact value, so they are within twice it of each other.
        let bound: Vec<f64> = swiglu_error_bound(&x, &gate, &up, &down).iter().map(|b| 2.0 * b).collect();
        check_within(&f64s(&out.output), &f64s(&want), &bound, "one-expert MoE vs dense SwiGLU")?;
    }
}

/// Router logits: ties are likely (small integers) as well as continuous values.
fn router_logits() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..=8, 1usize..=8).prop_flat_map(|(n, e)| {
        let value = prop_oneof![(-3i32..=3).prop_map(|v| v as f32), -20.0f32..20.0];
        (Just(n), Just(e), proptest::collection::vec(value, n * e))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Llama 4 routing: top-1, the first index of each row's maximum, weighted by the sigmoid
    /// of that maximum, applied to the expert input.
    #[test]
    fn llama4_router_picks_the_first_argmax_weighted_by_its_sigmoid((n, e, logits) in router_logits()) {
        let input = RouterInput { logits: &logits, n_tokens: n, n_experts: e, token_ids: None };
        let routing = Llama4Router::default().route(&input).unwrap();
        prop_assert_eq!(routing.placement, WeightPlacement::Input);
        prop_assert_eq!(routing.assignments.len(), n);
        prop_assert_eq!(routing.max_per_token(), 1);
        let mut want_weights = Vec::new();
        for (i, row) in logits.chunks(e).enumerate() {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let first = row.iter().position(|&v| v == max).unwrap();
            prop_assert_eq!(routing.assignments[i].token, i);
            prop_assert_eq!(routing.assignments[i].expert, first, "row {} = {:?}", i, row);
            want_weights.push(1.0 / (1.0 + (-(max as f64)).exp()));
        }
        // One sigmoid per element, rounded into f32.
        let got: Vec<f64> = routing.assignments.iter().map(|a| a.weight as f64).collect();
        check_close(&got, &want_weights, Tolerance::elementwise(DType::F32), "router weights")?;
    }
}

/// The model properties rely on the presets' chunk of 8 (T up to 40 crosses several chunk
/// boundaries) and on a global layer next to the chunked ones.
#[test]
fn tiny_presets_have_chunk_eight_and_a_global_layer() {
    for name in TINY_PRESETS {
        let spec = preset(name).unwrap().spec();
        assert!(spec.layers.iter().any(|l| l.span == Span::Chunked(8)), "{name}");
        assert!(spec.layers.iter().any(|l| l.span == Span::Global), "{name}");
    }
}
