//! Config-level overrides: a model as its own config describes it, with some options changed.
//!
//! The overrides are written into the HF config and the changed config is resolved by
//! [`ModelSpec::from_hf`], so HF's rules (which layers are chunked, where QK-norm and the
//! temperature apply) and every check hold for the changed model exactly as for a checkpoint
//! saved with those options. Only the shared expert, which no HF field switches off, is changed
//! in the resolved plan. [`crate::loader::load_overridden`] loads a model this way.

use std::path::Path;

use l4_core::Result;

use crate::hf_config::{BoolOrInt, HfConfig, HfRopeParameters};
use crate::spec::{Ffn, Llama3Scaling, ModelSpec};

/// Which layers skip RoPE. NoPE layers attend globally and RoPE layers in chunks (Llama 4's
/// iRoPE), so this also sets every layer's span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NopeLayers {
    /// Every `n`-th layer (layers `n-1, 2n-1, ...`); Llama 4 uses 4, and 1 is every layer.
    Every(usize),
    /// No layer: RoPE with chunked attention everywhere.
    None,
    /// Every layer: no positional encoding, global attention everywhere.
    All,
}

/// RoPE frequency scaling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE frequencies.
    None,
    /// llama3 scaling with these parameters.
    Llama3(Llama3Scaling),
}

/// Options to change in a model's config; `None` keeps the config's own value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigOverrides {
    /// Routed experts per token (`num_experts_per_tok`; Llama 4's router then takes the top k).
    pub experts_per_token: Option<usize>,
    /// `Some(false)` switches every MoE layer's shared expert off.
    pub shared_expert: Option<bool>,
    /// Which layers are NoPE (global) and which RoPE (chunked).
    pub nope_layers: Option<NopeLayers>,
    /// Chunk length of the chunked RoPE layers.
    pub chunk_size: Option<usize>,
    /// Query temperature tuning on NoPE layers.
    pub temperature_tuning: Option<bool>,
    /// Temperature: positions counted in blocks of this many tokens.
    pub floor_scale: Option<f64>,
    /// Temperature: strength of the log-position scale.
    pub attn_scale: Option<f64>,
    /// QK RMS-norm on RoPE layers.
    pub qk_norm: Option<bool>,
    /// RoPE base.
    pub rope_theta: Option<f64>,
    /// RoPE frequency scaling.
    pub rope_scaling: Option<RopeScaling>,
}

impl ConfigOverrides {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        *self == ConfigOverrides::default()
    }

    /// The plan of `config` with these overrides. `path` names the config in errors, which
    /// name the HF field an override was written to.
    pub fn resolve(&self, config: &HfConfig, path: &Path) -> Result<ModelSpec> {
        if self.is_empty() {
            return ModelSpec::from_hf(config, path);
        }
        // The layer count (with HF's default applied) sizes the per-layer NoPE list.
        let num_layers = ModelSpec::from_hf(config, path)?.num_layers();
        let mut spec = ModelSpec::from_hf(&self.apply(config, num_layers), path)?;
        if self.shared_expert == Some(false) {
            for layer in &mut spec.layers {
                if let Ffn::Moe(moe) = &mut layer.ffn {
                    moe.shared_intermediate = None;
                }
            }
        }
        Ok(spec)
    }

    /// `config` with the overrides written into its HF fields (all but the shared expert).
    fn apply(&self, config: &HfConfig, num_layers: usize) -> HfConfig {
        let mut config = config.clone();
        let t = &mut config.text;
        if let Some(k) = self.experts_per_token {
            t.num_experts_per_tok = Some(k);
        }
        if let Some(nope) = self.nope_layers {
            // A per-layer list (and transformers 5's layer types, which must agree with it)
            // would win over the interval, so both are replaced.
            t.layer_types = None;
            t.no_rope_layers = match nope {
                NopeLayers::Every(n) => {
                    t.no_rope_layer_interval = Some(n);
                    None
                }
                // HF's inverted flag: 1 means the layer uses RoPE.
                NopeLayers::None => Some(vec![1; num_layers]),
                NopeLayers::All => Some(vec![0; num_layers]),
            };
        }
        if let Some(n) = self.chunk_size {
            t.attention_chunk_size = Some(n);
        }
        if let Some(on) = self.temperature_tuning {
            t.attn_temperature_tuning = Some(BoolOrInt::Bool(on));
        }
        if let Some(v) = self.floor_scale {
            t.floor_scale = Some(v);
        }
        if let Some(v) = self.attn_scale {
            t.attn_scale = Some(v);
        }
        if let Some(on) = self.qk_norm {
            t.use_qk_norm = Some(on);
        }
        // transformers 5 keeps theta and scaling in `rope_parameters`, which wins over
        // transformers 4's `rope_theta` and `rope_scaling`: write to whichever the config uses.
        let v5 = t.rope_parameters.is_some();
        if let Some(theta) = self.rope_theta {
            match t.rope_parameters.as_mut() {
                Some(params) => params.rope_theta = Some(theta),
                None => t.rope_theta = Some(theta),
            }
        }
        if let Some(scaling) = self.rope_scaling {
            let params = match v5 {
                true => t.rope_parameters.get_or_insert_with(HfRopeParameters::default),
                false => t.rope_scaling.get_or_insert_with(HfRopeParameters::default),
            };
            let theta = params.rope_theta;
            *params = match scaling {
                RopeScaling::None => HfRopeParameters {
                    rope_type: Some("default".into()),
                    ..HfRopeParameters::default()
                },
                RopeScaling::Llama3(s) => HfRopeParameters {
                    rope_type: Some("llama3".into()),
                    factor: Some(s.factor),
                    low_freq_factor: Some(s.low_freq_factor),
                    high_freq_factor: Some(s.high_freq_factor),
                    original_max_position_embeddings: Some(s.original_max_position),
                    ..HfRopeParameters::default()
                },
            };
            params.rope_theta = theta;
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Position, Span};

    fn spec(json: &str, overrides: &ConfigOverrides) -> Result<ModelSpec> {
        let path = Path::new("config.json");
        overrides.resolve(&HfConfig::parse(json, path)?, path)
    }

    const EIGHT_LAYERS: &str = r#"{"num_hidden_layers": 8, "attention_chunk_size": 16}"#;

    #[test]
    fn no_overrides_is_the_config_itself() {
        let path = Path::new("config.json");
        let config = HfConfig::parse(EIGHT_LAYERS, path).unwrap();
        assert_eq!(
            ConfigOverrides::default().resolve(&config, path).unwrap(),
            ModelSpec::from_hf(&config, path).unwrap()
        );
    }

    #[test]
    fn nope_layers_set_position_span_qk_norm_and_temperature_together() {
        let with = |nope| ConfigOverrides {
            nope_layers: Some(nope),
            ..ConfigOverrides::default()
        };
        let all = spec(EIGHT_LAYERS, &with(NopeLayers::All)).unwrap();
        for layer in &all.layers {
            assert_eq!((layer.position, layer.span), (Position::NoPe, Span::Global));
            assert!(!layer.qk_norm && layer.temperature.is_some());
        }
        let none = spec(EIGHT_LAYERS, &with(NopeLayers::None)).unwrap();
        for layer in &none.layers {
            assert_eq!((layer.position, layer.span), (Position::Rope, Span::Chunked(16)));
            assert!(layer.qk_norm && layer.temperature.is_none());
        }
        let every_2 = spec(EIGHT_LAYERS, &with(NopeLayers::Every(2))).unwrap();
        let nope: Vec<usize> = (0..8)
            .filter(|&i| every_2.layers[i].position == Position::NoPe)
            .collect();
        assert_eq!(nope, [1, 3, 5, 7]);
        // A transformers-5 config lists layer types; the override replaces them consistently.
        let v5 = r#"{"num_hidden_layers": 2, "no_rope_layers": [1, 0],
                     "layer_types": ["chunked_attention", "full_attention"]}"#;
        let s = spec(v5, &with(NopeLayers::None)).unwrap();
        assert!(s.layers.iter().all(|l| l.position == Position::Rope));
    }

    #[test]
    fn attention_options_reach_the_plan() {
        let overrides = ConfigOverrides {
            chunk_size: Some(4),
            temperature_tuning: Some(true),
            floor_scale: Some(2.0),
            attn_scale: Some(0.5),
            qk_norm: Some(false),
            ..ConfigOverrides::default()
        };
        let s = spec(EIGHT_LAYERS, &overrides).unwrap();
        assert_eq!(s.layers[0].span, Span::Chunked(4));
        assert!(s.layers.iter().all(|l| !l.qk_norm));
        let t = s.layers[3].temperature.unwrap();
        assert_eq!((t.floor_scale, t.attn_scale), (2.0, 0.5));
        let off = ConfigOverrides {
            temperature_tuning: Some(false),
            ..ConfigOverrides::default()
        };
        assert!(
            spec(EIGHT_LAYERS, &off)
                .unwrap()
                .layers
                .iter()
                .all(|l| l.temperature.is_none())
        );
    }

    #[test]
    fn rope_overrides_work_in_both_config_styles() {
        let scaling = Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 64,
        };
        let overrides = ConfigOverrides {
            rope_theta: Some(1234.0),
            rope_scaling: Some(RopeScaling::Llama3(scaling)),
            ..ConfigOverrides::default()
        };
        let v4 = r#"{"rope_theta": 10.0}"#;
        let v5 = r#"{"rope_parameters": {"rope_type": "default", "rope_theta": 10.0}}"#;
        for json in [v4, v5] {
            let s = spec(json, &overrides).unwrap();
            assert_eq!((s.rope.theta, s.rope.scaling), (1234.0, Some(scaling)), "{json}");
            let plain = ConfigOverrides {
                rope_scaling: Some(RopeScaling::None),
                ..ConfigOverrides::default()
            };
            let scaled = r#"{"rope_scaling": {"rope_type": "llama3", "factor": 2.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 1.0, "original_max_position_embeddings": 8}}"#;
            let s = spec(scaled, &plain).unwrap();
            assert_eq!(s.rope.scaling, None);
        }
        let v5_scaled = r#"{"rope_parameters": {"rope_type": "llama3", "rope_theta": 10.0, "factor": 2.0,
                            "low_freq_factor": 1.0, "high_freq_factor": 1.0, "original_max_position_embeddings": 8}}"#;
        let plain = ConfigOverrides {
            rope_scaling: Some(RopeScaling::None),
            ..ConfigOverrides::default()
        };
        let s = spec(v5_scaled, &plain).unwrap();
        assert_eq!((s.rope.theta, s.rope.scaling), (10.0, None));
    }

    #[test]
    fn experts_and_the_shared_expert() {
        let overrides = ConfigOverrides {
            experts_per_token: Some(2),
            shared_expert: Some(false),
            ..ConfigOverrides::default()
        };
        let s = spec(EIGHT_LAYERS, &overrides).unwrap();
        for layer in &s.layers {
            let Ffn::Moe(moe) = &layer.ffn else {
                panic!("dense layer")
            };
            assert_eq!((moe.top_k, moe.shared_intermediate), (2, None));
            assert_eq!(moe.router, "llama4:k=2");
        }
    }

    #[test]
    fn bad_values_are_errors_naming_the_hf_field() {
        for (overrides, field) in [
            (
                ConfigOverrides {
                    chunk_size: Some(0),
                    ..ConfigOverrides::default()
                },
                "attention_chunk_size",
            ),
            (
                ConfigOverrides {
                    experts_per_token: Some(17),
                    ..ConfigOverrides::default()
                },
                "num_experts_per_tok",
            ),
            (
                ConfigOverrides {
                    nope_layers: Some(NopeLayers::Every(0)),
                    ..ConfigOverrides::default()
                },
                "no_rope_layer_interval",
            ),
        ] {
            let err = spec("{}", &overrides).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains("config.json"), "{err}");
        }
    }
}
