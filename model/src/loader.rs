//! A model from what a user names: an HF checkpoint folder, or a preset.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use l4_core::checkpoint::Checkpoint;
use l4_core::{DType, Device, Error, Result};

use crate::hf_config::{HfArchitecture, HfConfig, HfMultimodalConfig};
use crate::llama4::Llama4;
use crate::overrides::ConfigOverrides;
use crate::parts::fp8::Fp8Mode;
use crate::presets::{PRESETS, preset};
use crate::spec::ModelSpec;
use crate::vision::{VisionModel, VisionSpec};
use crate::weights::{CheckpointSource, RandomSource, WeightNames};

/// The seed of every preset's random weights.
pub const PRESET_SEED: u64 = 0x004C_344C_4142; // "L4LAB" in ASCII

/// The HF config of `model` (a checkpoint folder's config.json, or a preset's) and the path
/// that names it in errors.
fn read_config(model: &str) -> Result<(HfConfig, PathBuf)> {
    let path = Path::new(model);
    if path.is_dir() {
        let config_path = path.join("config.json");
        return Ok((HfConfig::read(&config_path)?, config_path));
    }
    if let Ok(p) = preset(model) {
        return Ok((p.hf_config(), PathBuf::from(p.name)));
    }
    let names: Vec<_> = PRESETS.iter().map(|p| p.name).collect();
    Err(Error::file(
        path,
        format!("no such checkpoint folder, and not a preset ({})", names.join(", ")),
    ))
}

/// The plan and weight layout of `model`: a checkpoint folder (its config.json) or a preset
/// name. Reads no weights.
pub fn resolve(model: &str) -> Result<(ModelSpec, HfArchitecture)> {
    resolve_with(model, &ConfigOverrides::default())
}

/// [`resolve`] with config-level `overrides` applied ([`ConfigOverrides::resolve`]): the plan
/// that [`load_overridden`] builds. Reads no weights.
pub fn resolve_with(model: &str, overrides: &ConfigOverrides) -> Result<(ModelSpec, HfArchitecture)> {
    let (config, config_path) = read_config(model)?;
    Ok((overrides.resolve(&config, &config_path)?, config.architecture))
}

/// The vision plan of `model` when it is a checkpoint folder whose config.json has a
/// `vision_config`; `None` for text-only checkpoints and presets. Reads no weights.
pub fn resolve_vision(model: &str, text: &ModelSpec) -> Result<Option<VisionSpec>> {
    let config_path = Path::new(model).join("config.json");
    if !config_path.is_file() {
        return Ok(None);
    }
    HfMultimodalConfig::read(&config_path)?
        .map(|cfg| VisionSpec::from_hf(&cfg, text.hidden_size, &config_path))
        .transpose()
}

/// Loads `model` and applies `fp8` (see [`Fp8Mode`]); `None` keeps the checkpoint as stored: a
/// float checkpoint in `dtype`, a pre-quantized one with its FP8 experts running in FP8 (which
/// needs an f32 or bf16 compute dtype).
pub fn load_with(model: &str, dtype: DType, device: Device, fp8: Option<Fp8Mode>) -> Result<Llama4> {
    load_overridden(model, dtype, device, fp8, &ConfigOverrides::default())
}

/// [`load_with`] for the model that `model`'s config with `overrides` describes (the same
/// weights, some options changed; see [`ConfigOverrides`]). From a checkpoint, the tensors that
/// the unchanged config reads and the changed one does not (the shared expert's, when it is
/// switched off) are left unread; any other unused tensor is still an error.
pub fn load_overridden(
    model: &str,
    dtype: DType,
    device: Device,
    fp8: Option<Fp8Mode>,
    overrides: &ConfigOverrides,
) -> Result<Llama4> {
    let loaded = load_resolved(model, dtype, device, overrides)?;
    let loaded = match fp8 {
        Some(mode) => loaded.with_fp8(mode)?,
        None => loaded,
    };
    if loaded.holds_fp8() && !matches!(dtype, DType::F32 | DType::BF16) {
        return Err(Error::invalid(
            "load",
            format!("{model} stores FP8 experts, which compute in f32 or bf16, not {dtype}; use --fp8 dequant"),
        ));
    }
    Ok(loaded)
}

/// Loads `model` (a checkpoint folder or a preset name) in `dtype` on `device`, with its vision
/// tower when the config has one. A checkpoint must provide exactly the tensors its config
/// implies: a missing, misshapen or unexpected tensor is an error naming it.
pub fn load(model: &str, dtype: DType, device: Device) -> Result<Llama4> {
    load_resolved(model, dtype, device, &ConfigOverrides::default())
}

/// [`load`] with `overrides` applied to the config.
fn load_resolved(model: &str, dtype: DType, device: Device, overrides: &ConfigOverrides) -> Result<Llama4> {
    if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(Error::invalid(
            "load",
            format!("compute dtype must be f32, bf16 or f16, got {dtype}"),
        ));
    }
    let (config, config_path) = read_config(model)?;
    let spec = overrides.resolve(&config, &config_path)?;
    let names = WeightNames::for_architecture(config.architecture);
    let path = Path::new(model);
    if !path.is_dir() {
        let mut source = RandomSource::new(PRESET_SEED, dtype, device);
        return Llama4::build(spec, &names, &mut source, dtype, device);
    }
    let checkpoint = Checkpoint::open(path)?;
    let mut source = CheckpointSource::new(&checkpoint, dtype, device);
    let vision = resolve_vision(model, &spec)?;
    let mut model = Llama4::build(spec, &names, &mut source, dtype, device)?;
    if let Some(vision) = vision {
        model = model.with_vision(VisionModel::build(vision, &mut source, dtype, device)?);
        source.mark_vision_loaded();
    }
    let unread: BTreeSet<String> = match overrides.is_empty() {
        true => BTreeSet::new(),
        false => {
            let wanted: BTreeSet<String> = names.all(model.spec()).into_iter().map(|(n, _)| n).collect();
            let base = ModelSpec::from_hf(&config, &config_path)?;
            names
                .all(&base)
                .into_iter()
                .map(|(n, _)| n)
                .filter(|n| !wanted.contains(n))
                .collect()
        }
    };
    source.check_all_consumed(&unread)?;
    Ok(model)
}
