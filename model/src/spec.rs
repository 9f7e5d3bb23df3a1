//! The resolved model plan: every HF default applied, every field validated, and the per-layer
//! choices (positional scheme, attention span, QK-norm, temperature, FFN kind) written out once.
//!
//! Everything downstream (weights, forward pass, ablations, parameter counts) reads this plan;
//! nothing downstream reads HF field names.

use std::path::Path;

use l4_core::{Error, Result};

use crate::hf_config::{HfConfig, HfTextConfig};

/// How a layer encodes positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// Rotary embedding on q and k (adjacent-pair form).
    Rope,
    /// No positional encoding.
    NoPe,
}

/// Which keys a query may attend to (always causal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    /// Keys in the same block `[c·n, (c+1)·n)` of absolute positions as the query.
    Chunked(usize),
    /// All earlier keys.
    Global,
}

/// The feed-forward block of a layer.
#[derive(Clone, Debug, PartialEq)]
pub enum Ffn {
    /// A SwiGLU MLP of width `intermediate`.
    Dense {
        /// Hidden width of the MLP.
        intermediate: usize,
    },
    /// Routed experts plus an optional always-on shared expert.
    Moe(MoeSpec),
}

/// An MoE block.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeSpec {
    /// Routed experts `e`.
    pub num_experts: usize,
    /// Experts per token `k`.
    pub top_k: usize,
    /// Width of each routed expert.
    pub expert_intermediate: usize,
    /// Width of the shared expert; `None` when it is switched off (an ablation).
    pub shared_intermediate: Option<usize>,
    /// Name of the routing strategy (`"llama4"`: sigmoid of the top-1 logit on the input).
    pub router: String,
}

/// Query temperature tuning on NoPE layers: q ← q · (1 + attn_scale · ln(1 + ⌊(p+1)/floor_scale⌋)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Temperature {
    /// Positions are counted in blocks of this many tokens.
    pub floor_scale: f64,
    /// Strength of the log scale.
    pub attn_scale: f64,
}

impl Temperature {
    /// The factor for absolute (cache) position `p`, computed in f64 like the rest of the
    /// reference; exactly 1 for `p + 1 < floor_scale`.
    pub fn factor(&self, position: usize) -> f64 {
        1.0 + self.attn_scale * (((position + 1) as f64) / self.floor_scale).floor().ln_1p()
    }
}

/// llama3 frequency scaling of RoPE.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    /// Divisor of the low frequencies.
    pub factor: f64,
    /// Long-wavelength threshold: `original / low_freq_factor`.
    pub low_freq_factor: f64,
    /// Short-wavelength threshold: `original / high_freq_factor`.
    pub high_freq_factor: f64,
    /// Pre-training context length.
    pub original_max_position: usize,
}

/// RoPE parameters shared by all RoPE layers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeSpec {
    /// Base of the inverse frequencies.
    pub theta: f64,
    /// Optional llama3 scaling.
    pub scaling: Option<Llama3Scaling>,
}

/// One decoder layer's plan.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    /// RoPE or NoPE.
    pub position: Position,
    /// Chunked local or global causal attention.
    pub span: Span,
    /// Weightless RMS-norm of q and k per head, after RoPE.
    pub qk_norm: bool,
    /// Query temperature tuning, if on for this layer.
    pub temperature: Option<Temperature>,
    /// The feed-forward block.
    pub ffn: Ffn,
}

/// The whole resolved model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Vocabulary size `v`.
    pub vocab_size: usize,
    /// Model width `d`.
    pub hidden_size: usize,
    /// Query heads `h`.
    pub num_heads: usize,
    /// Key/value heads `hk`.
    pub num_kv_heads: usize,
    /// Head width `dh`.
    pub head_dim: usize,
    /// Epsilon of every RMSNorm and of the QK-norm.
    pub rms_norm_eps: f64,
    /// RoPE parameters.
    pub rope: RopeSpec,
    /// Whether lm_head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// End-of-sequence ids.
    pub eos_token_ids: Vec<i64>,
    /// Longest context the checkpoint declares.
    pub max_position_embeddings: usize,
    /// The layers, in order.
    pub layers: Vec<LayerSpec>,
}

fn field_error(path: &Path, field: &str, msg: impl std::fmt::Display) -> Error {
    Error::file(path, format!("config field `{field}`: {msg}"))
}

fn positive(path: &Path, field: &str, value: usize) -> Result<usize> {
    if value == 0 {
        return Err(field_error(path, field, "must be positive"));
    }
    Ok(value)
}

fn positive_f64(path: &Path, field: &str, value: f64) -> Result<f64> {
    if !(value.is_finite() && value > 0.0) {
        return Err(field_error(
            path,
            field,
            format!("must be a positive number, got {value}"),
        ));
    }
    Ok(value)
}

impl ModelSpec {
    /// Applies HF's defaults to `cfg`, validates it, and resolves the per-layer plan. `path`
    /// names the config in errors.
    pub fn from_hf(cfg: &HfConfig, path: &Path) -> Result<ModelSpec> {
        let t: &HfTextConfig = &cfg.text;
        let num_layers = positive(path, "num_hidden_layers", t.num_hidden_layers.unwrap_or(48))?;
        let hidden_size = positive(path, "hidden_size", t.hidden_size.unwrap_or(5120))?;
        let vocab_size = positive(path, "vocab_size", t.vocab_size.unwrap_or(202_048))?;
        let num_heads = positive(path, "num_attention_heads", t.num_attention_heads.unwrap_or(40))?;
        let num_kv_heads = positive(path, "num_key_value_heads", t.num_key_value_heads.unwrap_or(num_heads))?;
        if num_heads % num_kv_heads != 0 {
            return Err(field_error(
                path,
                "num_key_value_heads",
                format!("{num_kv_heads} does not divide num_attention_heads {num_heads}"),
            ));
        }
        let head_dim = positive(path, "head_dim", t.head_dim.unwrap_or(hidden_size / num_heads))?;
        if head_dim % 2 != 0 {
            return Err(field_error(
                path,
                "head_dim",
                format!("{head_dim} must be even for RoPE pairs"),
            ));
        }
        if let Some(act) = &t.hidden_act
            && act != "silu"
        {
            return Err(field_error(
                path,
                "hidden_act",
                format!("{act:?} is not supported (Llama 4 uses \"silu\")"),
            ));
        }
        if t.attention_bias == Some(true) {
            return Err(field_error(
                path,
                "attention_bias",
                "true is not supported (Llama 4 has no attention bias)",
            ));
        }
        let rms_norm_eps = positive_f64(path, "rms_norm_eps", t.rms_norm_eps.unwrap_or(1e-5))?;
        let expert_intermediate = positive(path, "intermediate_size", t.intermediate_size.unwrap_or(8192))?;
        let dense_intermediate = positive(path, "intermediate_size_mlp", t.intermediate_size_mlp.unwrap_or(16_384))?;
        let num_experts = positive(path, "num_local_experts", t.num_local_experts.unwrap_or(16))?;
        let top_k = positive(path, "num_experts_per_tok", t.num_experts_per_tok.unwrap_or(1))?;
        if top_k > num_experts {
            return Err(field_error(
                path,
                "num_experts_per_tok",
                format!("{top_k} exceeds num_local_experts {num_experts}"),
            ));
        }

        let moe_layers = resolve_moe_layers(t, num_layers, path)?;
        let uses_rope = resolve_uses_rope(t, num_layers, path)?;
        let chunked = resolve_chunked(t, &uses_rope, path)?;
        let chunk = match t.attention_chunk_size {
            Some(n) => Some(positive(path, "attention_chunk_size", n)?),
            None if chunked.iter().any(|&c| c) => Some(8192),
            None => None,
        };
        let rope = resolve_rope(t, path)?;
        let temperature = match t.attn_temperature_tuning.is_none_or(|f| f.enabled()) {
            true => Some(Temperature {
                floor_scale: positive_f64(path, "floor_scale", t.floor_scale.unwrap_or(8192.0))?,
                attn_scale: t.attn_scale.unwrap_or(0.1),
            }),
            false => None,
        };
        if !temperature.is_none_or(|tt| tt.attn_scale.is_finite()) {
            return Err(field_error(path, "attn_scale", "must be finite"));
        }
        let use_qk_norm = t.use_qk_norm.unwrap_or(true);

        let layers = (0..num_layers)
            .map(|i| {
                let position = if uses_rope[i] { Position::Rope } else { Position::NoPe };
                let span = match (chunked[i], chunk) {
                    (true, Some(n)) => Span::Chunked(n),
                    _ => Span::Global,
                };
                let ffn = if moe_layers.contains(&i) {
                    Ffn::Moe(MoeSpec {
                        num_experts,
                        top_k,
                        expert_intermediate,
                        shared_intermediate: Some(expert_intermediate),
                        // Llama 4's router takes the top `num_experts_per_tok` logits, as HF's does.
                        router: match top_k {
                            1 => "llama4".into(),
                            k => format!("llama4:k={k}"),
                        },
                    })
                } else {
                    Ffn::Dense {
                        intermediate: dense_intermediate,
                    }
                };
                LayerSpec {
                    position,
                    span,
                    qk_norm: use_qk_norm && uses_rope[i],
                    temperature: if uses_rope[i] { None } else { temperature },
                    ffn,
                }
            })
            .collect();

        Ok(ModelSpec {
            vocab_size,
            hidden_size,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps,
            rope,
            tie_word_embeddings: t.tie_word_embeddings.unwrap_or(false),
            eos_token_ids: t.eos_token_id.as_ref().map_or_else(Vec::new, |e| e.to_vec()),
            max_position_embeddings: t.max_position_embeddings.unwrap_or(131_072),
            layers,
        })
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Parameters of one attention block (q, k, v, o; QK-norm has no weights).
    fn attention_params(&self) -> usize {
        let d = self.hidden_size;
        2 * d * self.num_heads * self.head_dim + 2 * d * self.num_kv_heads * self.head_dim
    }

    /// `(total, active per token)` parameter counts, norms included.
    pub fn param_counts(&self) -> (usize, usize) {
        let d = self.hidden_size;
        let swiglu = |width: usize| 3 * d * width;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        let mut total = self.vocab_size * d + head + d;
        let mut active = total;
        for layer in &self.layers {
            let common = self.attention_params() + 2 * d;
            let (layer_total, layer_active) = match &layer.ffn {
                Ffn::Dense { intermediate } => (swiglu(*intermediate), swiglu(*intermediate)),
                Ffn::Moe(moe) => {
                    let shared = moe.shared_intermediate.map_or(0, swiglu);
                    let router = d * moe.num_experts;
                    let experts = swiglu(moe.expert_intermediate);
                    (
                        moe.num_experts * experts + shared + router,
                        moe.top_k * experts + shared + router,
                    )
                }
            };
            total += common + layer_total;
            active += common + layer_active;
        }
        (total, active)
    }

    /// Bytes of KV cache per token of context, at `bytes_per_element`, counting chunked layers
    /// as if the context were shorter than their chunk (their cache stops growing past it).
    pub fn kv_cache_bytes_per_token(&self, bytes_per_element: usize) -> usize {
        self.layers.len() * 2 * self.num_kv_heads * self.head_dim * bytes_per_element
    }
}

/// HF: an explicit `moe_layers` list wins; otherwise layers `step-1, 2·step-1, ...`.
fn resolve_moe_layers(t: &HfTextConfig, num_layers: usize, path: &Path) -> Result<Vec<usize>> {
    if let Some(list) = &t.moe_layers {
        if let Some(&bad) = list.iter().find(|&&i| i >= num_layers) {
            return Err(field_error(
                path,
                "moe_layers",
                format!("layer {bad} is beyond num_hidden_layers {num_layers}"),
            ));
        }
        return Ok(list.clone());
    }
    let step = positive(
        path,
        "interleave_moe_layer_step",
        t.interleave_moe_layer_step.unwrap_or(1),
    )?;
    Ok((step - 1..num_layers).step_by(step).collect())
}

/// HF: `no_rope_layers[i] == 1` means layer i USES RoPE; empty or absent means
/// `(i + 1) % interval != 0`.
fn resolve_uses_rope(t: &HfTextConfig, num_layers: usize, path: &Path) -> Result<Vec<bool>> {
    match t.no_rope_layers.as_deref() {
        Some(list) if !list.is_empty() => {
            if list.len() != num_layers {
                return Err(field_error(
                    path,
                    "no_rope_layers",
                    format!("has {} entries for {num_layers} layers", list.len()),
                ));
            }
            list.iter()
                .map(|&flag| match flag {
                    0 | 1 => Ok(flag == 1),
                    _ => Err(field_error(
                        path,
                        "no_rope_layers",
                        format!("entries must be 0 or 1, got {flag}"),
                    )),
                })
                .collect()
        }
        _ => {
            let interval = positive(path, "no_rope_layer_interval", t.no_rope_layer_interval.unwrap_or(4))?;
            Ok((0..num_layers).map(|i| (i + 1) % interval != 0).collect())
        }
    }
}

/// HF: `layer_types` when given, else chunked exactly on the RoPE layers. A `layer_types` that
/// disagrees with `no_rope_layers` is rejected: HF would silently mix the two.
fn resolve_chunked(t: &HfTextConfig, uses_rope: &[bool], path: &Path) -> Result<Vec<bool>> {
    let Some(types) = &t.layer_types else {
        return Ok(uses_rope.to_vec());
    };
    if types.len() != uses_rope.len() {
        return Err(field_error(
            path,
            "layer_types",
            format!("has {} entries for {} layers", types.len(), uses_rope.len()),
        ));
    }
    types
        .iter()
        .zip(uses_rope)
        .enumerate()
        .map(|(i, (kind, &rope))| {
            let chunked = match kind.as_str() {
                "chunked_attention" => true,
                "full_attention" => false,
                other => {
                    return Err(field_error(
                        path,
                        "layer_types",
                        format!("unknown layer type {other:?} at layer {i}"),
                    ));
                }
            };
            if chunked != rope {
                return Err(field_error(
                    path,
                    "layer_types",
                    format!(
                        "layer {i} is {kind:?} but no_rope_layers says it {} RoPE",
                        if rope { "uses" } else { "skips" }
                    ),
                ));
            }
            Ok(chunked)
        })
        .collect()
}

fn resolve_rope(t: &HfTextConfig, path: &Path) -> Result<RopeSpec> {
    // transformers 5 keeps theta inside rope_parameters; transformers 4 at the top level.
    let params = t.rope_parameters.as_ref().or(t.rope_scaling.as_ref());
    let field = if t.rope_parameters.is_some() {
        "rope_parameters"
    } else {
        "rope_scaling"
    };
    let theta = t
        .rope_parameters
        .as_ref()
        .and_then(|p| p.rope_theta)
        .or(t.rope_theta)
        .unwrap_or(500_000.0);
    let theta = positive_f64(path, "rope_theta", theta)?;
    let scaling = match params.and_then(|p| p.rope_type.as_deref()) {
        None | Some("default") => None,
        Some("llama3") => {
            let p = params.expect("rope_type was read from params");
            let need = |name: &str, v: Option<f64>| {
                v.ok_or_else(|| field_error(path, field, format!("llama3 scaling needs `{name}`")))
                    .and_then(|v| positive_f64(path, name, v))
            };
            let scaling = Llama3Scaling {
                factor: need("factor", p.factor)?,
                low_freq_factor: need("low_freq_factor", p.low_freq_factor)?,
                high_freq_factor: need("high_freq_factor", p.high_freq_factor)?,
                original_max_position: positive(
                    path,
                    "original_max_position_embeddings",
                    p.original_max_position_embeddings.ok_or_else(|| {
                        field_error(path, field, "llama3 scaling needs `original_max_position_embeddings`")
                    })?,
                )?,
            };
            if scaling.high_freq_factor < scaling.low_freq_factor {
                return Err(field_error(
                    path,
                    field,
                    "high_freq_factor must be at least low_freq_factor",
                ));
            }
            Some(scaling)
        }
        Some(other) => {
            return Err(field_error(
                path,
                field,
                format!("rope type {other:?} is not supported (llama3 or default)"),
            ));
        }
    };
    Ok(RopeSpec { theta, scaling })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<ModelSpec> {
        let path = Path::new("config.json");
        ModelSpec::from_hf(&HfConfig::parse(json, path)?, path)
    }

    #[test]
    fn defaults_give_scouts_layer_plan() {
        let s = spec("{}").unwrap();
        assert_eq!(s.num_layers(), 48);
        // NoPE every 4th layer (3, 7, ...), global and temperature-tuned; RoPE layers chunked.
        for (i, layer) in s.layers.iter().enumerate() {
            let nope = (i + 1) % 4 == 0;
            assert_eq!(layer.position == Position::NoPe, nope, "layer {i}");
            assert_eq!(layer.span == Span::Global, nope, "layer {i}");
            assert_eq!(layer.temperature.is_some(), nope, "layer {i}");
            assert_eq!(layer.qk_norm, !nope, "layer {i}");
            assert!(matches!(layer.ffn, Ffn::Moe(_)));
        }
    }

    #[test]
    fn no_rope_layers_one_means_the_layer_uses_rope() {
        let s = spec(r#"{"num_hidden_layers": 3, "no_rope_layers": [0, 1, 1]}"#).unwrap();
        assert_eq!(s.layers[0].position, Position::NoPe);
        assert_eq!(s.layers[0].span, Span::Global);
        assert_eq!(s.layers[1].position, Position::Rope);
        assert_eq!(s.layers[1].span, Span::Chunked(8192));
        // An empty list means "derive from the interval".
        let s = spec(r#"{"num_hidden_layers": 4, "no_rope_layers": []}"#).unwrap();
        assert_eq!(s.layers[3].position, Position::NoPe);
    }

    #[test]
    fn interleave_step_two_makes_odd_layers_moe_and_even_layers_dense() {
        let s =
            spec(r#"{"num_hidden_layers": 4, "interleave_moe_layer_step": 2, "intermediate_size_mlp": 96}"#).unwrap();
        assert_eq!(s.layers[0].ffn, Ffn::Dense { intermediate: 96 });
        assert!(matches!(s.layers[1].ffn, Ffn::Moe(_)));
        assert_eq!(s.layers[2].ffn, Ffn::Dense { intermediate: 96 });
        assert!(matches!(s.layers[3].ffn, Ffn::Moe(_)));
    }

    #[test]
    fn experts_per_token_sets_the_llama4_routers_k() {
        let router = |json: &str| match &spec(json).unwrap().layers[0].ffn {
            Ffn::Moe(moe) => moe.router.clone(),
            Ffn::Dense { .. } => panic!("layer 0 is dense"),
        };
        assert_eq!(router("{}"), "llama4");
        assert_eq!(router(r#"{"num_experts_per_tok": 2}"#), "llama4:k=2");
    }

    #[test]
    fn both_rope_config_styles_resolve_alike() {
        let v4 = spec(
            r#"{"rope_theta": 10000.0, "rope_scaling": {"rope_type": "llama3", "factor": 16.0,
               "low_freq_factor": 1.0, "high_freq_factor": 1.0, "original_max_position_embeddings": 8192}}"#,
        )
        .unwrap();
        let v5 = spec(
            r#"{"rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 16.0,
               "low_freq_factor": 1.0, "high_freq_factor": 1.0, "original_max_position_embeddings": 8192}}"#,
        )
        .unwrap();
        assert_eq!(v4.rope, v5.rope);
        assert_eq!(v4.rope.theta, 10000.0);
        assert_eq!(v4.rope.scaling.unwrap().factor, 16.0);
    }

    #[test]
    fn temperature_is_exactly_one_below_floor_scale() {
        let t = Temperature {
            floor_scale: 8192.0,
            attn_scale: 0.1,
        };
        assert_eq!(t.factor(0), 1.0);
        assert_eq!(t.factor(8190), 1.0);
        assert!((t.factor(8191) - (1.0 + 0.1 * 2f64.ln())).abs() < 1e-15);
    }

    #[test]
    fn contradictions_and_bad_values_are_errors_naming_the_field() {
        let cases = [
            (
                r#"{"num_attention_heads": 6, "num_key_value_heads": 4}"#,
                "num_key_value_heads",
            ),
            (r#"{"hidden_size": 0}"#, "hidden_size"),
            (r#"{"num_hidden_layers": 2, "no_rope_layers": [1]}"#, "no_rope_layers"),
            (
                r#"{"num_hidden_layers": 2, "no_rope_layers": [1, 2]}"#,
                "no_rope_layers",
            ),
            (r#"{"num_hidden_layers": 2, "moe_layers": [5]}"#, "moe_layers"),
            (
                r#"{"num_hidden_layers": 2, "no_rope_layers": [1, 1], "layer_types": ["chunked_attention", "full_attention"]}"#,
                "layer_types",
            ),
            (
                r#"{"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}"#,
                "rope_scaling",
            ),
            (
                r#"{"rope_scaling": {"rope_type": "llama3", "factor": 2.0}}"#,
                "rope_scaling",
            ),
            (r#"{"num_experts_per_tok": 17}"#, "num_experts_per_tok"),
            (r#"{"hidden_act": "gelu"}"#, "hidden_act"),
            (r#"{"rms_norm_eps": -1.0}"#, "rms_norm_eps"),
            (r#"{"head_dim": 7}"#, "head_dim"),
        ];
        for (json, field) in cases {
            let err = spec(json).expect_err(json).to_string();
            assert!(err.contains(field) && err.contains("config.json"), "{json}: {err}");
        }
    }
}
