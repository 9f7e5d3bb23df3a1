//! FP8 weights in the model on the HF fixtures, on every device: `none` changes nothing, the
//! three FP8 modes stay close to the f32 model (top-1 agreement and the largest logit error are
//! reported; only a sanity bound is asserted, as the FP8 issue asks), and bad combinations are
//! errors.

use std::path::PathBuf;

use l4_core::checkpoint::Checkpoint;
use l4_core::testing::test_devices;
use l4_core::{DType, Device, Tensor};
use l4_model::parts::fp8::Fp8Mode;
use l4_model::{Capture, Llama4, loader};

fn fixture_dir(name: &str) -> PathBuf {
    ["testdata", "model/testdata"]
        .iter()
        .map(|base| PathBuf::from(base).join(name))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("fixture {name} not found under testdata/ or model/testdata/"))
}

fn logits(model: &Llama4, ids: &Tensor) -> Vec<f32> {
    let mut cache = model.new_cache();
    let out = model.forward(ids, &mut cache, Capture::default()).unwrap().logits;
    out.to_f32_vec().unwrap()
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b })
}

#[test]
fn fp8_modes_stay_close_to_the_f32_model() {
    for name in ["tiny-scout", "tiny-maverick"] {
        let dir = fixture_dir(name);
        let ids = Checkpoint::open(dir.join("expected.safetensors"))
            .unwrap()
            .load("input_ids", Device::Cpu)
            .unwrap();
        for device in test_devices() {
            let load = || loader::load(dir.to_str().unwrap(), DType::F32, device).unwrap();
            let base = logits(&load(), &ids);
            let v = loader::resolve(dir.to_str().unwrap()).unwrap().0.vocab_size;
            let range = base.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert_eq!(
                logits(&load().with_fp8(Fp8Mode::None).unwrap(), &ids),
                base,
                "{name}: none"
            );
            for mode in [Fp8Mode::Experts, Fp8Mode::Dequant, Fp8Mode::All] {
                let got = logits(&load().with_fp8(mode).unwrap(), &ids);
                let max_err = got.iter().zip(&base).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                let rows = base.len() / v;
                let agree = (0..rows)
                    .filter(|&r| argmax(&got[r * v..(r + 1) * v]) == argmax(&base[r * v..(r + 1) * v]))
                    .count();
                eprintln!(
                    "{name} on {device}, --fp8 {mode}: top-1 agreement {agree}/{rows}, max |logit error| {max_err:.3} \
                     (logits up to {range:.2})"
                );
                // Sanity only: finite, and far from a broken model (which would disagree on most
                // positions and be off by the logits' own scale).
                assert!(got.iter().all(|x| x.is_finite()), "{name} {mode}: non-finite logits");
                assert!(agree * 2 > rows, "{name} {mode}: top-1 agreement {agree}/{rows}");
                assert!(
                    max_err < 0.5 * range,
                    "{name} {mode}: max error {max_err} vs logits up to {range}"
                );
            }
        }
    }
}

#[test]
fn fp8_modes_parse_and_check_the_compute_dtype() {
    for (text, mode) in [
        ("none", Fp8Mode::None),
        ("experts", Fp8Mode::Experts),
        ("all", Fp8Mode::All),
        ("dequant", Fp8Mode::Dequant),
    ] {
        assert_eq!(text.parse::<Fp8Mode>().unwrap(), mode);
        assert_eq!(mode.to_string(), text);
    }
    let err = "fp4".parse::<Fp8Mode>().unwrap_err().to_string();
    assert!(err.contains("experts"), "{err}");
    let model = loader::load("tiny-scout", DType::F16, Device::Cpu).unwrap();
    let err = model.with_fp8(Fp8Mode::Experts).unwrap_err().to_string();
    assert!(err.contains("f16"), "{err}");
    // Meta's recipe skips the first and the last layer; `all` takes every layer.
    assert!(!Fp8Mode::Experts.quantizes_experts(0, 4) && !Fp8Mode::Experts.quantizes_experts(3, 4));
    assert!(Fp8Mode::Experts.quantizes_experts(1, 4) && Fp8Mode::All.quantizes_experts(0, 4));
}
