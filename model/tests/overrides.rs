//! Loading with config-level overrides (`loader::load_overridden`): the overridden model is the
//! model of a checkpoint whose config.json says the same, bit for bit; switching the shared
//! expert off leaves exactly its tensors unread, and any other unused tensor is still an error.

use std::fs;
use std::path::{Path, PathBuf};

use l4_core::checkpoint::{Checkpoint, save_safetensors};
use l4_core::{DType, Device, Tensor};
use l4_model::overrides::{ConfigOverrides, NopeLayers};
use l4_model::{Capture, Ffn, Llama4, loader};

fn fixture_dir() -> PathBuf {
    ["testdata", "model/testdata"]
        .iter()
        .map(|base| PathBuf::from(base).join("tiny-scout"))
        .find(|p| p.is_dir())
        .expect("the tiny-scout fixture under testdata/ or model/testdata/")
}

fn input_ids() -> Tensor {
    Checkpoint::open(fixture_dir().join("expected.safetensors"))
        .unwrap()
        .load("input_ids", Device::Cpu)
        .unwrap()
}

fn logits(model: &Llama4) -> Vec<f32> {
    let mut cache = model.new_cache();
    let out = model.forward(&input_ids(), &mut cache, Capture::default()).unwrap();
    out.logits.to_f32_vec().unwrap()
}

/// A copy of the fixture with its config.json edited by `edit` and `extra` tensors added.
fn copy_fixture(
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
    extra: &[(&str, &Tensor)],
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture_dir();
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(config.as_object_mut().unwrap());
    fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let checkpoint = Checkpoint::open(src.join("model.safetensors")).unwrap();
    let mut tensors: Vec<(String, Tensor)> = checkpoint
        .names()
        .into_iter()
        .map(|n| (n.to_string(), checkpoint.load(n, Device::Cpu).unwrap()))
        .collect();
    tensors.extend(extra.iter().map(|(n, t)| (n.to_string(), (*t).clone())));
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save_safetensors(dir.path().join("model.safetensors"), &refs, None).unwrap();
    dir
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn an_overridden_model_is_the_checkpoint_saved_with_those_options() {
    let overrides = ConfigOverrides {
        nope_layers: Some(NopeLayers::None),
        chunk_size: Some(4),
        qk_norm: Some(false),
        experts_per_token: Some(2),
        ..ConfigOverrides::default()
    };
    let edited = copy_fixture(
        |c| {
            c.insert("no_rope_layers".into(), serde_json::json!([1, 1, 1, 1]));
            c.insert(
                "layer_types".into(),
                serde_json::json!([
                    "chunked_attention",
                    "chunked_attention",
                    "chunked_attention",
                    "chunked_attention"
                ]),
            );
            c.insert("attention_chunk_size".into(), 4.into());
            c.insert("use_qk_norm".into(), false.into());
            c.insert("num_experts_per_tok".into(), 2.into());
        },
        &[],
    );
    let saved = loader::load(path_str(edited.path()), DType::F32, Device::Cpu).unwrap();
    let fixture = fixture_dir();
    let overridden = loader::load_overridden(path_str(&fixture), DType::F32, Device::Cpu, None, &overrides).unwrap();
    assert_eq!(overridden.spec(), saved.spec());
    assert_eq!(logits(&overridden), logits(&saved));
    let (resolved, _) = loader::resolve_with(path_str(&fixture), &overrides).unwrap();
    assert_eq!(&resolved, saved.spec());
    // And the options change the model.
    let base = loader::load(path_str(&fixture), DType::F32, Device::Cpu).unwrap();
    assert_ne!(logits(&base), logits(&overridden));
}

#[test]
fn the_shared_expert_off_leaves_exactly_its_tensors_unread() {
    let off = ConfigOverrides {
        shared_expert: Some(false),
        ..ConfigOverrides::default()
    };
    let fixture = fixture_dir();
    let model = loader::load_overridden(path_str(&fixture), DType::F32, Device::Cpu, None, &off).unwrap();
    let shared_off = |m: &Llama4| {
        m.spec()
            .layers
            .iter()
            .all(|l| matches!(&l.ffn, Ffn::Moe(moe) if moe.shared_intermediate.is_none()))
    };
    assert!(shared_off(&model));
    let base = loader::load(path_str(&fixture), DType::F32, Device::Cpu).unwrap();
    assert_ne!(logits(&base), logits(&model));
    // Presets have no checkpoint to account for; the override still applies.
    let preset = loader::load_overridden("tiny-scout", DType::F32, Device::Cpu, None, &off).unwrap();
    assert!(shared_off(&preset));

    let stray = Tensor::zeros(&[3], DType::F32, Device::Cpu).unwrap();
    let with_stray = copy_fixture(|_| {}, &[("model.layers.0.feed_forward.extra.weight", &stray)]);
    let err = loader::load_overridden(path_str(with_stray.path()), DType::F32, Device::Cpu, None, &off)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.layers.0.feed_forward.extra.weight"), "{err}");
}
