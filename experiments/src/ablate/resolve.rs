//! From a parsed ablation file to complete run settings: each variant's options merged over the
//! base's, checked (ranges, keys that belong elsewhere, options that contradict each other or
//! have no effect), resolved against the model's config, and written out in full
//! ([`ResolvedSettings`]) with a hash, so a results folder says exactly what ran.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use l4_core::{DType, Device};
use l4_model::overrides::{ConfigOverrides, NopeLayers, RopeScaling};
use l4_model::parts::fp8::Fp8Mode;
use l4_model::parts::router::{RouterInput, router_by_name};
use l4_model::spec::Llama3Scaling;
use l4_model::{Ffn, ModelSpec, Position, Span, loader, preset};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::{Place, field_error};
use super::settings::{
    AblationFile, EvalSettings, Fp8Recipe, Llama3Settings, Nope, Precision, RopeScalingSetting, RouterSettings,
    Settings, Strategy,
};

/// The model an ablation file without `[base] model` runs on.
pub const DEFAULT_MODEL: &str = "mini-scout";

/// Defaults of `[eval]`.
const DEFAULT_PROMPTS: usize = 4;
const DEFAULT_PROMPT_LEN: usize = 128;
const DEFAULT_DECODE_TOKENS: usize = 16;
const DEFAULT_REPEATS: usize = 3;

/// A checked ablation, ready to run.
#[derive(Clone, Debug)]
pub struct Ablation {
    /// The file it came from.
    pub file: PathBuf,
    /// Its name.
    pub name: String,
    /// What it asks.
    pub description: Option<String>,
    /// The model every variant loads (a preset name or a folder).
    pub model: String,
    /// Where everything runs.
    pub device: Device,
    /// The evaluation input.
    pub eval: Eval,
    /// The base (named `base`) first, then the variants in file order.
    pub variants: Vec<Variant>,
}

/// Where the prompts come from.
#[derive(Clone, Debug, PartialEq)]
pub enum EvalSource {
    /// Token ids uniform over the vocabulary, from a seed.
    Random {
        /// The seed.
        seed: u64,
    },
    /// `input_ids` from a safetensors file.
    Tokens(PathBuf),
    /// A text file, tokenized.
    Text {
        /// The text.
        path: PathBuf,
        /// Its tokenizer.json.
        tokenizer: PathBuf,
    },
}

/// The evaluation input and how much of it to time.
#[derive(Clone, Debug, PartialEq)]
pub struct Eval {
    /// The source.
    pub source: EvalSource,
    /// Sequences (random prompts; the most rows cut from a text).
    pub prompts: usize,
    /// Tokens per sequence (random prompts; rows cut from a text).
    pub prompt_len: usize,
    /// Greedy steps timed after the prompt.
    pub decode_tokens: usize,
    /// Timed repeats of the prefill.
    pub repeats: usize,
}

/// One model to run: the base or a variant.
#[derive(Clone, Debug)]
pub struct Variant {
    /// `base`, or the variant's name.
    pub name: String,
    /// What it changes.
    pub description: Option<String>,
    /// Compute dtype.
    pub dtype: DType,
    /// FP8 recipe (`None`: the checkpoint as stored).
    pub fp8: Option<Fp8Mode>,
    /// Router spec string when the settings choose one (`None`: the model's own).
    pub router: Option<String>,
    /// Config-level options.
    pub overrides: ConfigOverrides,
    /// Everything that determines the run, written out.
    pub resolved: ResolvedSettings,
    /// A short hash of `resolved`: equal hashes, equal runs.
    pub hash: String,
}

/// The query temperature of the NoPE layers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolvedTemperature {
    /// Positions counted in blocks of this many tokens.
    pub floor_scale: f64,
    /// Strength of the log-position scale.
    pub attn_scale: f64,
}

/// A variant fully resolved: every option that changes its numbers, read back from the plan
/// the model is built from (not from what the file said).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolvedSettings {
    /// Preset name or checkpoint folder.
    pub model: String,
    /// Compute dtype.
    pub dtype: String,
    /// FP8 recipe (`as-stored`: the checkpoint's own weights).
    pub fp8: String,
    /// Router spec of every MoE layer, every parameter explicit (`none` without MoE layers).
    pub router: String,
    /// Routed experts per token in the config.
    pub experts_per_token: usize,
    /// Whether the MoE layers have their shared expert.
    pub shared_expert: bool,
    /// The layers without positional encoding (global attention).
    pub nope_layers: Vec<usize>,
    /// Chunk length of the chunked RoPE layers (absent when there are none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<usize>,
    /// The layers with QK-norm.
    pub qk_norm_layers: Vec<usize>,
    /// Temperature tuning of the NoPE layers (absent when off or without NoPE layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<ResolvedTemperature>,
    /// RoPE base.
    pub rope_theta: f64,
    /// llama3 RoPE scaling (absent: plain frequencies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Llama3Settings>,
}

impl ResolvedSettings {
    /// The first 12 hex digits of the SHA-256 of the settings as TOML.
    pub fn hash(&self) -> Result<String> {
        let text = toml::to_string(self)?;
        let digest = Sha256::digest(text.as_bytes());
        Ok(digest.iter().take(6).map(|b| format!("{b:02x}")).collect())
    }
}

/// Checks and resolves a parsed file. `file` names it in errors and anchors relative paths;
/// `model` and `device` (the command line's) take precedence over the file's.
pub fn resolve(file: &Path, parsed: &AblationFile, model: Option<&str>, device: Option<Device>) -> Result<Ablation> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let base = &parsed.base;
    check_entry(file, &Place::Base, base)?;
    let model = match (model, &base.model) {
        (Some(m), _) => m.to_string(),
        (None, Some(m)) if preset(m).is_err() => dir.join(m).to_string_lossy().into_owned(),
        (None, Some(m)) => m.clone(),
        (None, None) => DEFAULT_MODEL.to_string(),
    };
    let device = match (device, &base.device) {
        (Some(d), _) => d,
        (None, Some(text)) => text
            .parse::<Device>()
            .map_err(|e| field_error(file, &Place::Base, "device", e))?,
        (None, None) => Device::Cpu,
    };
    let (model_spec, _) = loader::resolve(&model).map_err(|e| anyhow!("{}: [base]: {e}", file.display()))?;
    let eval = resolve_eval(file, dir, &parsed.eval, &model)?;

    let mut variants = vec![resolve_variant(
        file,
        &Place::Base,
        "base",
        base,
        base,
        &model,
        &model_spec,
    )?];
    let mut names = BTreeSet::from(["base".to_string()]);
    for (i, entry) in parsed.variants.iter().enumerate() {
        let place = Place::Variant(entry.name.clone().unwrap_or_else(|| format!("variants[{i}]")));
        check_entry(file, &place, entry)?;
        let name = entry.name.clone().unwrap_or_default();
        if !names.insert(name.clone()) {
            let why = match name.as_str() {
                "base" => "`base` is the base's name".to_string(),
                _ => format!("another variant is called `{name}`"),
            };
            return Err(field_error(file, &place, "name", why));
        }
        let merged = merge(base, entry);
        variants.push(resolve_variant(
            file,
            &place,
            &name,
            entry,
            &merged,
            &model,
            &model_spec,
        )?);
    }
    Ok(Ablation {
        file: file.to_path_buf(),
        name: parsed.name.clone().unwrap_or_else(|| {
            file.file_stem()
                .map_or("ablation".into(), |s| s.to_string_lossy().into_owned())
        }),
        description: parsed.description.clone(),
        model,
        device,
        eval,
        variants,
    })
}

/// `variant`'s options over `base`'s. A variant's router replaces the base's whole.
fn merge(base: &Settings, variant: &Settings) -> Settings {
    Settings {
        name: variant.name.clone(),
        description: variant.description.clone(),
        model: base.model.clone(),
        device: base.device.clone(),
        dtype: variant.dtype.or(base.dtype),
        fp8: variant.fp8.or(base.fp8),
        router: variant.router.clone().or_else(|| base.router.clone()),
        experts_per_token: variant.experts_per_token.or(base.experts_per_token),
        shared_expert: variant.shared_expert.or(base.shared_expert),
        nope: variant.nope.or(base.nope),
        chunk_size: variant.chunk_size.or(base.chunk_size),
        temperature_tuning: variant.temperature_tuning.or(base.temperature_tuning),
        floor_scale: variant.floor_scale.or(base.floor_scale),
        attn_scale: variant.attn_scale.or(base.attn_scale),
        qk_norm: variant.qk_norm.or(base.qk_norm),
        rope_theta: variant.rope_theta.or(base.rope_theta),
        rope_scaling: variant.rope_scaling.or(base.rope_scaling),
    }
}

fn positive_f64(file: &Path, place: &Place, field: &str, value: Option<f64>) -> Result<()> {
    match value {
        Some(v) if !(v.is_finite() && v > 0.0) => Err(field_error(file, place, field, format!("must be > 0, got {v}"))),
        _ => Ok(()),
    }
}

fn at_least_one(file: &Path, place: &Place, field: &str, value: Option<usize>) -> Result<()> {
    match value {
        Some(0) => Err(field_error(file, place, field, "must be at least 1")),
        _ => Ok(()),
    }
}

/// The checks one entry needs on its own, as written.
fn check_entry(file: &Path, place: &Place, s: &Settings) -> Result<()> {
    match place {
        Place::Base => {
            if s.name.is_some() {
                return Err(field_error(file, place, "name", "the base is always called `base`"));
            }
        }
        _ => {
            for (field, given) in [("model", s.model.is_some()), ("device", s.device.is_some())] {
                if given {
                    return Err(field_error(
                        file,
                        place,
                        field,
                        "belongs in [base]: every variant runs the base's model on one device",
                    ));
                }
            }
            let Some(name) = &s.name else {
                return Err(field_error(file, place, "name", "every variant needs a name"));
            };
            let well_formed = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !well_formed {
                return Err(field_error(
                    file,
                    place,
                    "name",
                    format!("{name:?} must be 1 to 64 letters, digits, '-', '_' or '.' (it names files)"),
                ));
            }
        }
    }
    at_least_one(file, place, "experts_per_token", s.experts_per_token)?;
    at_least_one(file, place, "chunk_size", s.chunk_size)?;
    positive_f64(file, place, "floor_scale", s.floor_scale)?;
    positive_f64(file, place, "rope_theta", s.rope_theta)?;
    if let Some(v) = s.attn_scale
        && !v.is_finite()
    {
        return Err(field_error(file, place, "attn_scale", "must be finite"));
    }
    if let Some(RopeScalingSetting::Llama3(r)) = &s.rope_scaling {
        positive_f64(file, place, "rope_scaling.factor", Some(r.factor))?;
        positive_f64(file, place, "rope_scaling.low_freq_factor", Some(r.low_freq_factor))?;
        positive_f64(file, place, "rope_scaling.high_freq_factor", Some(r.high_freq_factor))?;
        at_least_one(
            file,
            place,
            "rope_scaling.original_max_position_embeddings",
            Some(r.original_max_position_embeddings),
        )?;
        if r.high_freq_factor < r.low_freq_factor {
            return Err(field_error(
                file,
                place,
                "rope_scaling.high_freq_factor",
                "must be at least low_freq_factor",
            ));
        }
    }
    if let Some(router) = &s.router {
        check_router(file, place, router)?;
    }
    Ok(())
}

fn check_router(file: &Path, place: &Place, r: &RouterSettings) -> Result<()> {
    let takes = r.strategy.parameters();
    if let Some(extra) = r.given().into_iter().find(|p| !takes.contains(p)) {
        return Err(field_error(
            file,
            place,
            &format!("router.{extra}"),
            format!(
                "{} routing takes no `{extra}` (it takes: {})",
                r.strategy.name(),
                takes.join(", ")
            ),
        ));
    }
    if r.strategy == Strategy::Forced && r.expert.is_none() {
        return Err(field_error(
            file,
            place,
            "router.expert",
            "forced routing needs the expert every token goes to",
        ));
    }
    at_least_one(file, place, "router.k", r.k)?;
    at_least_one(file, place, "router.groups", r.groups)?;
    at_least_one(file, place, "router.topk_groups", r.topk_groups)?;
    positive_f64(file, place, "router.capacity", r.capacity)?;
    if let Some(v) = r.scale
        && !v.is_finite()
    {
        return Err(field_error(file, place, "router.scale", "must be finite"));
    }
    if let Some(bad) = r.bias.iter().flatten().find(|b| !b.is_finite()) {
        return Err(field_error(file, place, "router.bias", format!("{bad} is not finite")));
    }
    Ok(())
}

/// Options of the merged settings that contradict each other or would change nothing.
fn check_combination(file: &Path, place: &Place, s: &Settings) -> Result<()> {
    let no_effect = |field: &str, why: &str| Err(field_error(file, place, field, format!("has no effect: {why}")));
    if s.temperature_tuning == Some(false) {
        for (field, given) in [
            ("floor_scale", s.floor_scale.is_some()),
            ("attn_scale", s.attn_scale.is_some()),
        ] {
            if given {
                return no_effect(field, "temperature_tuning = false");
            }
        }
    }
    match s.nope {
        Some(Nope::All) => {
            for (field, given) in [
                ("chunk_size", s.chunk_size.is_some()),
                ("qk_norm", s.qk_norm.is_some()),
                ("rope_theta", s.rope_theta.is_some()),
                ("rope_scaling", s.rope_scaling.is_some()),
            ] {
                if given {
                    return no_effect(field, "with nope = \"all\" no layer uses RoPE or chunks");
                }
            }
        }
        Some(Nope::None) => {
            for (field, given) in [
                ("temperature_tuning", s.temperature_tuning.is_some()),
                ("floor_scale", s.floor_scale.is_some()),
                ("attn_scale", s.attn_scale.is_some()),
            ] {
                if given {
                    return no_effect(
                        field,
                        "with nope = \"none\" no layer is NoPE, and temperature tuning is theirs",
                    );
                }
            }
        }
        _ => {}
    }
    if matches!(
        s.fp8,
        Some(Fp8Recipe::Experts | Fp8Recipe::ExpertsBlock | Fp8Recipe::All)
    ) && s.dtype == Some(Precision::F16)
    {
        return Err(field_error(
            file,
            place,
            "fp8",
            "FP8 GEMMs write f32 or bf16, not dtype = \"f16\"",
        ));
    }
    if let (Some(n), Some(router)) = (s.experts_per_token, &s.router) {
        if !router.strategy.parameters().contains(&"k") {
            return Err(field_error(
                file,
                place,
                "experts_per_token",
                format!(
                    "contradicts the router: {} routing does not choose k experts per token",
                    router.strategy.name()
                ),
            ));
        }
        if let Some(k) = router.k
            && k != n
        {
            return Err(field_error(
                file,
                place,
                "experts_per_token",
                format!("{n} contradicts router.k = {k}"),
            ));
        }
    }
    Ok(())
}

fn resolve_variant(
    file: &Path,
    place: &Place,
    name: &str,
    written: &Settings,
    s: &Settings,
    model: &str,
    model_spec: &ModelSpec,
) -> Result<Variant> {
    check_combination(file, place, s)?;
    let num_experts = model_spec.layers.iter().find_map(|l| match &l.ffn {
        Ffn::Moe(moe) => Some(moe.num_experts),
        Ffn::Dense { .. } => None,
    });
    let Some(num_experts) = num_experts
        .or_else(|| (s.router.is_none() && s.experts_per_token.is_none() && s.shared_expert.is_none()).then_some(0))
    else {
        return Err(anyhow!(
            "{}: {place}: router, experts_per_token and shared_expert need MoE layers, and {model} has none",
            file.display()
        ));
    };
    let takes_k = s.router.as_ref().is_none_or(|r| r.strategy.parameters().contains(&"k"));
    let experts_per_token = s
        .experts_per_token
        .or_else(|| s.router.as_ref().and_then(|r| r.k))
        .filter(|_| takes_k);
    if let Some(k) = experts_per_token
        && k > num_experts
    {
        let field = match s.experts_per_token {
            Some(_) => "experts_per_token",
            None => "router.k",
        };
        return Err(field_error(
            file,
            place,
            field,
            format!("{k} exceeds the {num_experts} experts of {model}"),
        ));
    }
    let overrides = ConfigOverrides {
        experts_per_token,
        shared_expert: s.shared_expert,
        nope_layers: s.nope.map(|n| match n {
            Nope::Every(k) => NopeLayers::Every(k),
            Nope::None => NopeLayers::None,
            Nope::All => NopeLayers::All,
        }),
        chunk_size: s.chunk_size,
        temperature_tuning: s.temperature_tuning,
        floor_scale: s.floor_scale,
        attn_scale: s.attn_scale,
        qk_norm: s.qk_norm,
        rope_theta: s.rope_theta,
        rope_scaling: s.rope_scaling.map(|r| match r {
            RopeScalingSetting::None => RopeScaling::None,
            RopeScalingSetting::Llama3(l) => RopeScaling::Llama3(Llama3Scaling {
                factor: l.factor,
                low_freq_factor: l.low_freq_factor,
                high_freq_factor: l.high_freq_factor,
                original_max_position: l.original_max_position_embeddings,
            }),
        }),
    };
    let (spec, _) = loader::resolve_with(model, &overrides).map_err(|e| anyhow!("{}: {place}: {e}", file.display()))?;
    let top_k = spec.layers.iter().find_map(|l| match &l.ffn {
        Ffn::Moe(moe) => Some(moe.top_k),
        Ffn::Dense { .. } => None,
    });
    let router = match &s.router {
        Some(r) => {
            let spec_string = router_spec(r, top_k.unwrap_or(1));
            check_router_on_model(file, place, &spec_string, num_experts)?;
            Some(spec_string)
        }
        None => None,
    };
    let dtype = match s.dtype.unwrap_or(Precision::F32) {
        Precision::F32 => DType::F32,
        Precision::Bf16 => DType::BF16,
        Precision::F16 => DType::F16,
    };
    let fp8 = s.fp8.map(|r| match r {
        Fp8Recipe::None => Fp8Mode::None,
        Fp8Recipe::Experts => Fp8Mode::Experts,
        Fp8Recipe::ExpertsBlock => Fp8Mode::ExpertsBlock,
        Fp8Recipe::All => Fp8Mode::All,
        Fp8Recipe::Dequant => Fp8Mode::Dequant,
    });
    let resolved = resolved_settings(model, &spec, dtype, fp8, router.as_deref());
    Ok(Variant {
        name: name.to_string(),
        description: written.description.clone(),
        dtype,
        fp8,
        router,
        overrides,
        hash: resolved.hash()?,
        resolved,
    })
}

/// The router spec string of `r`, every parameter explicit (the router module's defaults, and
/// the model's experts per token for an unset k).
fn router_spec(r: &RouterSettings, model_k: usize) -> String {
    let k = r.k.unwrap_or(model_k);
    let capacity = r.capacity.map_or(String::new(), |c| format!(",capacity={c}"));
    match r.strategy {
        Strategy::Llama4 => format!("llama4:k={k}{capacity}"),
        Strategy::SoftmaxTopK => format!("softmax-topk:k={k},renorm={}{capacity}", r.renormalize.unwrap_or(true)),
        Strategy::DeepSeekV3 => {
            let bias = r.bias.as_ref().map_or(String::new(), |b| {
                let values: Vec<String> = b.iter().map(|v| v.to_string()).collect();
                format!(",bias={}", values.join(";"))
            });
            format!(
                "deepseek-v3:k={k},groups={},topk_groups={},scale={}{bias}{capacity}",
                r.groups.unwrap_or(1),
                r.topk_groups.unwrap_or(1),
                r.scale.unwrap_or(1.0)
            )
        }
        Strategy::ExpertChoice => format!("expert-choice:capacity={}", r.capacity.unwrap_or(1.0)),
        Strategy::Hash => format!("hash{}", capacity.replacen(',', ":", 1)),
        Strategy::Random => format!("random:k={k},seed={}", r.seed.unwrap_or(0)),
        Strategy::Forced => format!("forced:expert={}", r.expert.unwrap_or(0)),
    }
}

/// Builds the strategy and routes one token over the model's experts, so that a k, group count,
/// bias length or forced expert that does not fit the model fails here, before anything runs.
fn check_router_on_model(file: &Path, place: &Place, spec: &str, num_experts: usize) -> Result<()> {
    let logits = vec![0f32; num_experts];
    router_by_name(spec)
        .and_then(|router| {
            router.route(&RouterInput {
                logits: &logits,
                n_tokens: 1,
                n_experts: num_experts,
                token_ids: Some(&[0]),
            })
        })
        .map(|_| ())
        .map_err(|e| {
            field_error(
                file,
                place,
                "router",
                format!("{e} (with the model's {num_experts} experts)"),
            )
        })
}

fn resolved_settings(
    model: &str,
    spec: &ModelSpec,
    dtype: DType,
    fp8: Option<Fp8Mode>,
    router: Option<&str>,
) -> ResolvedSettings {
    let layers_where = |keep: &dyn Fn(&l4_model::LayerSpec) -> bool| -> Vec<usize> {
        (0..spec.num_layers()).filter(|&i| keep(&spec.layers[i])).collect()
    };
    let moe = spec.layers.iter().find_map(|l| match &l.ffn {
        Ffn::Moe(moe) => Some(moe.clone()),
        Ffn::Dense { .. } => None,
    });
    ResolvedSettings {
        model: model.to_string(),
        dtype: dtype.to_string(),
        fp8: fp8.map_or("as-stored".to_string(), |m| m.to_string()),
        router: match (router, &moe) {
            (Some(r), _) => r.to_string(),
            (None, Some(moe)) => canonical_model_router(&moe.router, moe.top_k),
            (None, None) => "none".to_string(),
        },
        experts_per_token: moe.as_ref().map_or(0, |m| m.top_k),
        shared_expert: moe.as_ref().is_some_and(|m| m.shared_intermediate.is_some()),
        nope_layers: layers_where(&|l| l.position == Position::NoPe),
        chunk_size: spec.layers.iter().find_map(|l| match l.span {
            Span::Chunked(n) => Some(n),
            Span::Global => None,
        }),
        qk_norm_layers: layers_where(&|l| l.qk_norm),
        temperature: spec.layers.iter().find_map(|l| {
            l.temperature.map(|t| ResolvedTemperature {
                floor_scale: t.floor_scale,
                attn_scale: t.attn_scale,
            })
        }),
        rope_theta: spec.rope.theta,
        rope_scaling: spec.rope.scaling.map(|s| Llama3Settings {
            factor: s.factor,
            low_freq_factor: s.low_freq_factor,
            high_freq_factor: s.high_freq_factor,
            original_max_position_embeddings: s.original_max_position,
        }),
    }
}

/// The plan's router name with its k explicit (`llama4` → `llama4:k=1`), as a variant that
/// names the router writes it.
fn canonical_model_router(router: &str, top_k: usize) -> String {
    match router.split_once(':') {
        None if router == "llama4" => format!("llama4:k={top_k}"),
        _ => router.to_string(),
    }
}

fn resolve_eval(file: &Path, dir: &Path, e: &EvalSettings, model: &str) -> Result<Eval> {
    let place = Place::Eval;
    for (field, value) in [
        ("prompts", e.prompts),
        ("prompt_len", e.prompt_len),
        ("repeats", e.repeats),
    ] {
        at_least_one(file, &place, field, value)?;
    }
    let source = match (&e.tokens, &e.text) {
        (Some(_), Some(_)) => {
            return Err(field_error(file, &place, "text", "give `tokens` or `text`, not both"));
        }
        (Some(tokens), None) => {
            for (field, given) in [
                ("prompts", e.prompts.is_some()),
                ("prompt_len", e.prompt_len.is_some()),
                ("seed", e.seed.is_some()),
                ("tokenizer", e.tokenizer.is_some()),
            ] {
                if given {
                    return Err(field_error(
                        file,
                        &place,
                        field,
                        "has no effect with `tokens` (the file's input_ids are the prompts)",
                    ));
                }
            }
            EvalSource::Tokens(dir.join(tokens))
        }
        (None, Some(text)) => {
            if e.seed.is_some() {
                return Err(field_error(
                    file,
                    &place,
                    "seed",
                    "applies to random prompts only, not `text`",
                ));
            }
            let tokenizer = match &e.tokenizer {
                Some(t) => dir.join(t),
                None if Path::new(model).is_dir() => Path::new(model).join("tokenizer.json"),
                None => {
                    return Err(field_error(
                        file,
                        &place,
                        "tokenizer",
                        format!("`text` needs a tokenizer.json, and {model} is a preset without one"),
                    ));
                }
            };
            EvalSource::Text {
                path: dir.join(text),
                tokenizer,
            }
        }
        (None, None) => {
            if e.tokenizer.is_some() {
                return Err(field_error(file, &place, "tokenizer", "applies to `text` only"));
            }
            EvalSource::Random {
                seed: e.seed.unwrap_or(0),
            }
        }
    };
    Ok(Eval {
        source,
        prompts: e.prompts.unwrap_or(DEFAULT_PROMPTS),
        prompt_len: e.prompt_len.unwrap_or(DEFAULT_PROMPT_LEN),
        decode_tokens: e.decode_tokens.unwrap_or(DEFAULT_DECODE_TOKENS),
        repeats: e.repeats.unwrap_or(DEFAULT_REPEATS),
    })
}

/// Fails unless every path the ablation reads exists, so that a typo costs nothing.
pub fn check_inputs(ablation: &Ablation) -> Result<()> {
    let file = &ablation.file;
    let missing = |field: &str, path: &Path| -> Result<()> {
        match path.is_file() {
            true => Ok(()),
            false => bail!(
                "{}: [eval]: field `{field}`: {}: no such file",
                file.display(),
                path.display()
            ),
        }
    };
    match &ablation.eval.source {
        EvalSource::Random { .. } => Ok(()),
        EvalSource::Tokens(path) => missing("tokens", path),
        EvalSource::Text { path, tokenizer } => {
            missing("text", path)?;
            missing("tokenizer", tokenizer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ablate::config;

    fn resolve_text(text: &str) -> Result<Ablation> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("study.toml");
        std::fs::write(&file, text).unwrap();
        let parsed = config::read(&file, &[])?;
        resolve(&file, &parsed, Some("tiny-scout"), None)
    }

    fn error(text: &str, needles: &[&str]) {
        let err = resolve_text(text).unwrap_err().to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
        for needle in needles {
            assert!(err.contains(needle), "{needle:?} not in: {err}");
        }
    }

    #[test]
    fn contradictory_options_are_errors_naming_the_field() {
        error(
            "[[variants]]\nname = \"a\"\ntemperature_tuning = false\nfloor_scale = 2.0\n",
            &["variant `a`", "`floor_scale`", "temperature_tuning = false"],
        );
        error(
            "[[variants]]\nname = \"a\"\nnope = \"all\"\nchunk_size = 4\n",
            &["`chunk_size`", "no effect"],
        );
        error(
            "[[variants]]\nname = \"a\"\nnope = \"none\"\nattn_scale = 0.5\n",
            &["`attn_scale`", "no effect"],
        );
        error(
            "[[variants]]\nname = \"a\"\nexperts_per_token = 2\nrouter = { strategy = \"softmax-topk\", k = 3 }\n",
            &["`experts_per_token`", "router.k = 3"],
        );
        error(
            "[[variants]]\nname = \"a\"\nexperts_per_token = 2\nrouter = { strategy = \"hash\" }\n",
            &["`experts_per_token`", "hash"],
        );
        error(
            "[[variants]]\nname = \"a\"\nrouter = { strategy = \"hash\", k = 2 }\n",
            &["`router.k`", "hash routing takes no `k`"],
        );
        error(
            "[[variants]]\nname = \"a\"\ndtype = \"f16\"\nfp8 = \"experts\"\n",
            &["`fp8`", "f16"],
        );
        // The base's options count too.
        error(
            "[base]\ntemperature_tuning = false\n[[variants]]\nname = \"a\"\nattn_scale = 0.2\n",
            &["variant `a`", "`attn_scale`"],
        );
    }

    #[test]
    fn bad_values_and_misplaced_keys_are_errors_naming_the_field() {
        error(
            "[[variants]]\nname = \"a\"\nchunk_size = 0\n",
            &["`chunk_size`", "at least 1"],
        );
        error("[[variants]]\nname = \"a\"\nfloor_scale = -1.0\n", &["`floor_scale`"]);
        error("[[variants]]\nname = \"a\"\nmodel = \"x\"\n", &["`model`", "[base]"]);
        error("[[variants]]\nchunk_size = 4\n", &["variants[0]", "`name`"]);
        error("[[variants]]\nname = \"a b\"\n", &["`name`"]);
        error("[[variants]]\nname = \"base\"\n", &["`name`", "base"]);
        error(
            "[[variants]]\nname = \"a\"\n[[variants]]\nname = \"a\"\n",
            &["another variant is called `a`"],
        );
        error("[base]\nname = \"x\"\n", &["[base]", "`name`"]);
        error("[base]\ndevice = \"tpu\"\n", &["[base]", "`device`", "tpu"]);
        // Checked against the model: tiny-scout has 4 experts.
        error(
            "[[variants]]\nname = \"a\"\nexperts_per_token = 5\n",
            &["`experts_per_token`", "4 experts"],
        );
        error(
            "[[variants]]\nname = \"a\"\nrouter = { strategy = \"forced\", expert = 4 }\n",
            &["`router`", "expert 4"],
        );
        error(
            "[[variants]]\nname = \"a\"\nrouter = { strategy = \"deepseek-v3\", groups = 3 }\n",
            &["`router`", "divide"],
        );
        error(
            "[eval]\ntokens = \"t.safetensors\"\nprompts = 2\n",
            &["[eval]", "`prompts`"],
        );
        error("[eval]\ntext = \"t.txt\"\n", &["[eval]", "`tokenizer`", "preset"]);
    }

    #[test]
    fn variants_resolve_over_the_base_and_write_every_option_out() {
        let a = resolve_text(
            r#"
            [base]
            dtype = "f32"
            [[variants]]
            name = "top2"
            router = { strategy = "softmax-topk", k = 2 }
            [[variants]]
            name = "same"
            [[variants]]
            name = "long-chunks"
            chunk_size = 16
            shared_expert = false
            "#,
        )
        .unwrap();
        let names: Vec<&str> = a.variants.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["base", "top2", "same", "long-chunks"]);
        let [base, top2, same, long] = &a.variants[..] else {
            unreachable!()
        };
        assert_eq!(base.resolved.router, "llama4:k=1");
        assert_eq!(top2.router.as_deref(), Some("softmax-topk:k=2,renorm=true"));
        assert_eq!(top2.resolved.experts_per_token, 2);
        assert_eq!(same.hash, base.hash);
        assert_ne!(top2.hash, base.hash);
        assert_eq!(long.resolved.chunk_size, Some(16));
        assert!(!long.resolved.shared_expert && base.resolved.shared_expert);
        assert_eq!(base.resolved.nope_layers, [3]);
        assert_eq!(a.eval.source, EvalSource::Random { seed: 0 });
    }

    #[test]
    fn resolved_settings_round_trip_through_toml() {
        let a = resolve_text(
            "[[variants]]\nname = \"a\"\nrope_scaling = \"none\"\nnope = 2\nrouter = { strategy = \"deepseek-v3\", k = 2, groups = 2, topk_groups = 1, bias = [0.5, 0.0, -0.5, 0.25] }\n",
        )
        .unwrap();
        for v in &a.variants {
            let text = toml::to_string(&v.resolved).unwrap();
            let back: ResolvedSettings = toml::from_str(&text).unwrap();
            assert_eq!(back, v.resolved, "{text}");
            assert_eq!(back.hash().unwrap(), v.hash);
        }
        assert_eq!(a.variants[1].resolved.rope_scaling, None);
        assert_eq!(a.variants[1].resolved.nope_layers, [1, 3]);
    }
}
