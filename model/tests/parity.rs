//! Parity with Hugging Face transformers' Llama 4 in float32, on the committed fixtures made by
//! tools/make_fixtures.py (see model/testdata/README.md). Tolerances: docs/numerics.md,
//! "Model parity with HF".

use std::path::PathBuf;

use l4_core::checkpoint::Checkpoint;
use l4_core::testing::{Tolerance, assert_close};
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
    name: &'static str,
    model: Llama4,
    expected: Checkpoint,
}

impl Fixture {
    fn load(name: &'static str) -> Fixture {
        let dir = fixture_dir(name);
        let model = loader::load(dir.to_str().unwrap(), DType::F32, Device::Cpu).unwrap();
        let expected = Checkpoint::open(dir.join("expected.safetensors")).unwrap();
        Fixture { name, model, expected }
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
    for &name in FIXTURES {
        let f = Fixture::load(name);
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
            "{name}: no MoE layer reported router logits"
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
    for &name in FIXTURES {
        let f = Fixture::load(name);
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
            "{name}: greedy ids"
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
        let got_logits = Tensor::cat(&refs, 1).unwrap();
        assert_eq!(got_logits.shape(), &[b, n, f.model.spec().vocab_size]);
        f.check(
            "greedy_logits (cached decode)",
            &got_logits,
            &want_logits,
            parity_tolerance(name, "logits"),
        );
    }
}
