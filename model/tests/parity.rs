//! Parity with Hugging Face transformers' Llama 4, on the committed fixtures made by
//! tools/make_fixtures.py (see model/testdata/README.md), on every device: the CPU always, CUDA
//! device 0 when usable (`L4_REQUIRE_GPU=1` makes a missing GPU a failure). The f32 path on each
//! device is held to the f32 bound and the bf16 path to the bf16 bound of docs/numerics.md,
//! "Model parity with HF".

use std::path::PathBuf;

use l4_core::checkpoint::Checkpoint;
use l4_core::testing::{Tolerance, assert_close, test_devices};
use l4_core::{DType, Device, Tensor};
use l4_model::generate::{GreedyOptions, greedy};
use l4_model::weights::WeightNames;
use l4_model::{Capture, Llama4, loader};

const FIXTURES: &[&str] = &["tiny-scout", "tiny-maverick", "tiny-scout-rope-eq"];

/// The fixture folder, found from the package directory (cargo test) or the repository root
/// (packed test binaries run on the GPU machine).
fn fixture_dir(name: &str) -> PathBuf {
    ["testdata", "model/testdata"]
        .iter()
        .map(|base| PathBuf::from(base).join(name))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("fixture {name} not found under testdata/ or model/testdata/"))
}

struct Fixture {
    /// The fixture and the device and dtype it runs in, for messages.
    name: String,
    fixture: &'static str,
    model: Llama4,
    expected: Checkpoint,
}

impl Fixture {
    fn load(fixture: &'static str, dtype: DType, device: Device) -> Fixture {
        let dir = fixture_dir(fixture);
        let model = loader::load(dir.to_str().unwrap(), dtype, device)
            .unwrap_or_else(|e| panic!("{fixture} on {device} in {dtype}: {e}"));
        let expected = Checkpoint::open(dir.join("expected.safetensors")).unwrap();
        Fixture {
            name: format!("{fixture} ({device}, {dtype})"),
            fixture,
            model,
            expected,
        }
    }

    fn tensor(&self, name: &str) -> Tensor {
        self.expected.load(name, Device::Cpu).unwrap()
    }

    fn check(&self, what: &str, got: &Tensor, want: &Tensor, tol: Tolerance) {
        assert_eq!(got.shape(), want.shape(), "{} {what}: shape", self.name);
        let context = format!("{} {what}", self.name);
        let (got, want) = (got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap());
        let max_err = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
        eprintln!("{context}: max |error| {max_err:.2e}");
        if let Err(msg) = assert_close(&got, &want, tol, &context) {
            panic!("{msg}");
        }
    }
}

/// The f32 parity bound of docs/numerics.md ("Model parity with HF"), the FlashAttention rule:
/// our error against an exact (f64) evaluation may be at most twice HF's own, so by the
/// triangle inequality |ours − HF| ≤ 3·|HF − f64|. The fixture script measured |HF − f64| per
/// kind of tensor (`hf_vs_f64_reference_maxabs` in expected_meta.json).
fn parity_tolerance(fixture: &str, kind: &str) -> Tolerance {
    let meta_path = fixture_dir(fixture).join("expected_meta.json");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    let hf_error = meta["hf_vs_f64_reference_maxabs"][kind]
        .as_f64()
        .unwrap_or_else(|| panic!("{}: no hf_vs_f64_reference_maxabs.{kind}", meta_path.display()));
    let tol = Tolerance {
        atol: 3.0 * hf_error,
        rtol: 0.0,
    };
    assert!(
        tol.atol <= 1e-4,
        "{fixture}: derived bound {tol} is looser than the 1e-4 ceiling"
    );
    tol
}

#[test]
fn the_weight_table_names_exactly_the_tensors_hf_saved() {
    for &name in FIXTURES {
        let dir = fixture_dir(name);
        let (spec, architecture) = loader::resolve(dir.to_str().unwrap()).unwrap();
        let checkpoint = Checkpoint::open(&dir).unwrap();
        let table = WeightNames::for_architecture(architecture).all(&spec);
        let mut from_table: Vec<&str> = table.iter().map(|(n, _)| n.as_str()).collect();
        from_table.sort_unstable();
        assert_eq!(from_table, checkpoint.names(), "{name}: table vs checkpoint names");
        for (tensor, shape) in &table {
            assert_eq!(&checkpoint.info(tensor).unwrap().shape, shape, "{name}: {tensor}");
        }
    }
}

#[test]
fn prefill_logits_hidden_states_and_router_logits_match_hf() {
    for (&name, device) in FIXTURES
        .iter()
        .flat_map(|f| test_devices().into_iter().map(move |d| (f, d)))
    {
        let f = Fixture::load(name, DType::F32, device);
        let ids = f.tensor("input_ids");
        let mut cache = f.model.new_cache();
        let out = f
            .model
            .forward(
                &ids,
                &mut cache,
                Capture {
                    hidden_states: true,
                    router_logits: true,
                },
            )
            .unwrap();
        f.check(
            "logits",
            &out.logits,
            &f.tensor("logits"),
            parity_tolerance(name, "logits"),
        );
        let layers = f.model.spec().num_layers();
        // HF's last hidden state is the final-normed one; ours stops before the final norm.
        for (i, h) in out.hidden_states.iter().enumerate().take(layers) {
            let want = f.tensor(&format!("hidden_states.{i}"));
            f.check(
                &format!("hidden_states.{i}"),
                h,
                &want,
                parity_tolerance(name, "hidden_states"),
            );
        }
        let want = f.tensor("last_layer_output");
        f.check(
            "last_layer_output",
            &out.hidden_states[layers],
            &want,
            parity_tolerance(name, "last_layer_output"),
        );
        assert!(
            !out.router_logits.is_empty(),
            "{}: no MoE layer reported router logits",
            f.name
        );
        for (layer, logits) in &out.router_logits {
            let want = f.tensor(&format!("router_logits.{layer}"));
            f.check(
                &format!("router_logits.{layer}"),
                logits,
                &want,
                parity_tolerance(name, "router_logits"),
            );
        }
    }
}

#[test]
fn greedy_decoding_with_the_kv_cache_matches_hf_ids_and_step_logits() {
    for (&name, device) in FIXTURES
        .iter()
        .flat_map(|f| test_devices().into_iter().map(move |d| (f, d)))
    {
        let f = Fixture::load(name, DType::F32, device);
        let ids = f.tensor("input_ids");
        let want = f.tensor("greedy_ids");
        let n = want.shape()[1];
        let got = greedy(
            &f.model,
            &ids,
            &GreedyOptions {
                max_new_tokens: n,
                stop_ids: vec![],
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(
            got.to_vec::<i64>().unwrap(),
            want.to_vec::<i64>().unwrap(),
            "{}: greedy ids",
            f.name
        );

        // Teacher-forced through the cache: step k sees the prompt and the first k HF ids.
        let want_logits = f.tensor("greedy_logits"); // [b, n, v]
        let b = ids.shape()[0];
        let mut cache = f.model.new_cache();
        let prefill = f.model.forward(&ids, &mut cache, Capture::default()).unwrap().logits;
        let t = ids.shape()[1];
        let mut steps = vec![prefill.narrow(1, t - 1, 1).unwrap()];
        for k in 0..n - 1 {
            let next = want.narrow(1, k, 1).unwrap().contiguous().unwrap();
            steps.push(f.model.forward(&next, &mut cache, Capture::default()).unwrap().logits);
        }
        let refs: Vec<&Tensor> = steps.iter().collect();
        let got_logits = l4_kernels::ops::cat(&refs, 1).unwrap();
        assert_eq!(got_logits.shape(), &[b, n, f.model.spec().vocab_size]);
        f.check(
            "greedy_logits (cached decode)",
            &got_logits,
            &want_logits,
            parity_tolerance(name, "logits"),
        );
    }
}

/// The bf16 parity bound of docs/numerics.md, the same rule as in f32: our bf16 logits may be
/// at most twice as far from the exact (f64) result as HF's own bf16 forward (weights rounded to
/// bf16, every op in bf16), which the fixture script measured (`hf_bf16_vs_f64_reference`).
/// Against HF's f32 logits, themselves within `e_HF32` of f64, that is
/// `|ours − HF32| ≤ 2·e_HFbf16 + e_HF32`. Returns that bound and, for the log, the fraction of
/// prompt positions where HF bf16's argmax equals HF f32's.
fn bf16_bound(fixture: &str) -> (Tolerance, f64) {
    let meta_path = fixture_dir(fixture).join("expected_meta.json");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    let field = |name: &str| {
        meta["hf_bf16_vs_f64_reference"][name]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: no hf_bf16_vs_f64_reference.{name}", meta_path.display()))
    };
    let atol = 2.0 * field("logits") + parity_tolerance(fixture, "logits").atol / 3.0;
    (
        Tolerance { atol, rtol: 0.0 },
        field("prefill_argmax_agreement_with_f32"),
    )
}

/// Index of the largest value of each row of `v`-wide rows (first on ties), and the gap between
/// the two largest.
fn argmax_and_margin(rows: &[f32], v: usize) -> Vec<(usize, f32)> {
    rows.chunks(v)
        .map(|row| {
            let best = (0..v).fold(0, |b, i| if row[i] > row[b] { i } else { b });
            let second = row
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != best)
                .map(|(_, &x)| x)
                .fold(f32::NEG_INFINITY, f32::max);
            (best, row[best] - second)
        })
        .collect()
}

#[test]
fn bf16_forward_and_greedy_decoding_stay_within_twice_hf_bf16_error() {
    for (&name, device) in FIXTURES
        .iter()
        .flat_map(|f| test_devices().into_iter().map(move |d| (f, d)))
    {
        let f = Fixture::load(name, DType::BF16, device);
        let (tol, hf_agreement) = bf16_bound(f.fixture);
        let ids = f.tensor("input_ids");
        let v = f.model.spec().vocab_size;
        let mut cache = f.model.new_cache();
        let logits = f.model.forward(&ids, &mut cache, Capture::default()).unwrap().logits;
        assert_eq!(logits.dtype(), DType::BF16, "{}: logits dtype", f.name);
        let want = f.tensor("logits");
        f.check("bf16 logits", &logits, &want, tol);

        // Every prompt position whose HF f32 top-2 margin exceeds twice the bound has one
        // possible argmax under it; the others are near-ties either side may break.
        let ours = argmax_and_margin(&logits.to_f32_vec().unwrap(), v);
        let reference = argmax_and_margin(&want.to_f32_vec().unwrap(), v);
        let mut decided = 0;
        for (pos, (got, want)) in ours.iter().zip(&reference).enumerate() {
            if f64::from(want.1) > 2.0 * tol.atol {
                assert_eq!(got.0, want.0, "{}: prefill argmax at row {pos}", f.name);
                decided += 1;
            }
        }
        let disagree = ours.iter().zip(&reference).filter(|(a, b)| a.0 != b.0).count() as f64 / ours.len() as f64;
        eprintln!(
            "{}: {decided} prefill argmaxes decided by the margin, all equal; overall {:.1}% differ from HF f32 \
             (HF bf16: {:.1}%)",
            f.name,
            100.0 * disagree,
            100.0 * (1.0 - hf_agreement)
        );

        // Greedy ids equal HF f32's up to the first step whose top-2 margin is within twice the
        // bound: past it a different choice is legitimate and the paths may part.
        let want_ids = f.tensor("greedy_ids").to_vec::<i64>().unwrap();
        let steps = f.tensor("greedy_ids").shape()[1];
        let got_ids = greedy(
            &f.model,
            &ids,
            &GreedyOptions {
                max_new_tokens: steps,
                stop_ids: vec![],
            },
            |_| {},
        )
        .unwrap()
        .to_vec::<i64>()
        .unwrap();
        let margins = argmax_and_margin(&f.tensor("greedy_logits").to_f32_vec().unwrap(), v);
        let mut compared = 0;
        for (seq, (got, want)) in got_ids.chunks(steps).zip(want_ids.chunks(steps)).enumerate() {
            for k in 0..steps {
                if f64::from(margins[seq * steps + k].1) <= 2.0 * tol.atol {
                    break;
                }
                assert_eq!(got[k], want[k], "{}: sequence {seq}, greedy step {k}", f.name);
                compared += 1;
            }
        }
        eprintln!("{}: {compared} greedy ids decided by the margin, all equal", f.name);
    }
}
