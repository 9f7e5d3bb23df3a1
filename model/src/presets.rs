//! Built-in presets: published Llama 4 configurations, a Behemoth-shaped one, and tiny ones for
//! tests and demos. Each is an HF text config, so a preset resolves through exactly the same
//! path ([`ModelSpec::from_hf`]) as a downloaded checkpoint.

use std::path::Path;

use l4_core::{Error, Result};

use crate::hf_config::{BoolOrInt, HfArchitecture, HfConfig, HfRopeParameters, HfTextConfig, OneOrMany};
use crate::spec::ModelSpec;

/// A named preset.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    /// The name used on the command line in place of a checkpoint folder.
    pub name: &'static str,
    /// What it is and where its numbers come from.
    pub description: &'static str,
    config: fn() -> HfTextConfig,
}

impl Preset {
    /// The preset as an HF config.
    pub fn hf_config(&self) -> HfConfig {
        HfConfig {
            text: (self.config)(),
            architecture: HfArchitecture::CausalLm,
        }
    }

    /// The resolved plan. Presets are constants of this crate and always resolve.
    pub fn spec(&self) -> ModelSpec {
        ModelSpec::from_hf(&self.hf_config(), Path::new(self.name))
            .unwrap_or_else(|e| panic!("built-in preset {} does not resolve: {e}", self.name))
    }
}

/// The published Llama 4 text config shared by Scout and Maverick (config.json of the
/// Instruct checkpoints, transformers-4 style).
fn llama4_common() -> HfTextConfig {
    HfTextConfig {
        model_type: Some("llama4_text".into()),
        vocab_size: Some(202_048),
        hidden_size: Some(5120),
        intermediate_size: Some(8192),
        intermediate_size_mlp: Some(16_384),
        num_hidden_layers: Some(48),
        num_attention_heads: Some(40),
        num_key_value_heads: Some(8),
        head_dim: Some(128),
        hidden_act: Some("silu".into()),
        rms_norm_eps: Some(1e-5),
        tie_word_embeddings: Some(false),
        attention_bias: Some(false),
        num_experts_per_tok: Some(1),
        no_rope_layer_interval: Some(4),
        attention_chunk_size: Some(8192),
        rope_theta: Some(500_000.0),
        attn_temperature_tuning: Some(BoolOrInt::Bool(true)),
        floor_scale: Some(8192.0),
        attn_scale: Some(0.1),
        bos_token_id: Some(200_000),
        eos_token_id: Some(OneOrMany::Many(vec![200_001, 200_007, 200_008])),
        pad_token_id: Some(200_018),
        ..HfTextConfig::default()
    }
}

fn scout() -> HfTextConfig {
    HfTextConfig {
        num_local_experts: Some(16),
        interleave_moe_layer_step: Some(1),
        use_qk_norm: Some(true),
        max_position_embeddings: Some(10_485_760),
        rope_scaling: Some(HfRopeParameters {
            rope_type: Some("llama3".into()),
            factor: Some(16.0),
            low_freq_factor: Some(1.0),
            high_freq_factor: Some(1.0),
            original_max_position_embeddings: Some(8192),
            ..HfRopeParameters::default()
        }),
        ..llama4_common()
    }
}

fn maverick() -> HfTextConfig {
    HfTextConfig {
        num_local_experts: Some(128),
        interleave_moe_layer_step: Some(2),
        use_qk_norm: Some(false),
        max_position_embeddings: Some(1_048_576),
        ..llama4_common()
    }
}

/// Behemoth: only "16 experts, 288B active, nearly 2T total" is public. Width 16384, 160
/// layers, 128 query heads and expert width 12288 are assumptions chosen to land on those
/// totals with Scout's layout (all layers MoE, top-1 plus a shared expert).
fn behemoth() -> HfTextConfig {
    HfTextConfig {
        hidden_size: Some(16_384),
        num_hidden_layers: Some(160),
        num_attention_heads: Some(128),
        intermediate_size: Some(12_288),
        intermediate_size_mlp: Some(24_576),
        ..scout()
    }
}

/// The first four layers of Scout at full width, for GPU benchmarks: three chunked RoPE layers
/// and one global NoPE layer (Scout's repeating unit), each with its 16 experts, plus the real
/// embedding and lm_head. About 10.9B parameters (21.8 GB in bf16), so it fits one H100.
fn scout_slice() -> HfTextConfig {
    HfTextConfig {
        num_hidden_layers: Some(4),
        ..scout()
    }
}

/// A tiny Scout-like model: every layer MoE, QK-norm, one NoPE layer, short chunks.
fn tiny_scout() -> HfTextConfig {
    HfTextConfig {
        vocab_size: Some(512),
        hidden_size: Some(64),
        intermediate_size: Some(64),
        intermediate_size_mlp: Some(128),
        num_hidden_layers: Some(4),
        num_attention_heads: Some(4),
        num_key_value_heads: Some(2),
        head_dim: Some(16),
        num_local_experts: Some(4),
        attention_chunk_size: Some(8),
        floor_scale: Some(4.0),
        attn_scale: Some(0.3),
        max_position_embeddings: Some(4096),
        rope_theta: Some(10_000.0),
        rope_scaling: Some(HfRopeParameters {
            rope_type: Some("llama3".into()),
            factor: Some(4.0),
            low_freq_factor: Some(1.0),
            high_freq_factor: Some(4.0),
            original_max_position_embeddings: Some(16),
            ..HfRopeParameters::default()
        }),
        bos_token_id: Some(1),
        eos_token_id: Some(OneOrMany::One(2)),
        pad_token_id: Some(0),
        ..scout()
    }
}

/// A tiny Maverick-like model: dense even layers, MoE odd layers, no QK-norm, no RoPE scaling.
fn tiny_maverick() -> HfTextConfig {
    HfTextConfig {
        interleave_moe_layer_step: Some(2),
        use_qk_norm: Some(false),
        rope_scaling: None,
        ..tiny_scout()
    }
}

/// A small Scout for ablations on a CPU (the default base of `l4 ablate`): Scout's layout
/// (every layer MoE with 16 experts, top-1 plus a shared expert; NoPE every 4th layer;
/// QK-norm; llama3 RoPE scaling) at width 128 over 8 layers, about 7.6M parameters. Chunks of 32
/// tokens and a temperature floor_scale of 32 make a 128-token prompt cross three chunk
/// boundaries and raise the NoPE temperature within it, and scaling starts beyond 64 positions,
/// so positional ablations change something on short prompts. Widths are multiples of 128, the
/// FP8 block size.
fn mini_scout() -> HfTextConfig {
    HfTextConfig {
        vocab_size: Some(2048),
        hidden_size: Some(128),
        intermediate_size: Some(128),
        intermediate_size_mlp: Some(256),
        num_hidden_layers: Some(8),
        num_attention_heads: Some(4),
        num_key_value_heads: Some(2),
        head_dim: Some(32),
        attention_chunk_size: Some(32),
        floor_scale: Some(32.0),
        max_position_embeddings: Some(65_536),
        rope_theta: Some(10_000.0),
        rope_scaling: Some(HfRopeParameters {
            rope_type: Some("llama3".into()),
            factor: Some(8.0),
            low_freq_factor: Some(1.0),
            high_freq_factor: Some(4.0),
            original_max_position_embeddings: Some(64),
            ..HfRopeParameters::default()
        }),
        bos_token_id: Some(1),
        eos_token_id: Some(OneOrMany::One(2)),
        pad_token_id: Some(0),
        ..scout()
    }
}

/// Every built-in preset.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "llama4-scout-17b-16e",
        description: "Llama 4 Scout: 16 experts on every layer, llama3 RoPE scaling 16/1/1 (published config)",
        config: scout,
    },
    Preset {
        name: "llama4-maverick-17b-128e",
        description: "Llama 4 Maverick: 128 experts on odd layers, dense 16384-wide even layers (published config)",
        config: maverick,
    },
    Preset {
        name: "llama4-behemoth",
        description: "Behemoth-shaped: 16 experts, ~288B active; width, depth, heads, expert width ASSUMED",
        config: behemoth,
    },
    Preset {
        name: "llama4-scout-slice",
        description: "Scout's first 4 layers at full width (3 chunked RoPE + 1 NoPE, 16 experts each) for GPU benches",
        config: scout_slice,
    },
    Preset {
        name: "tiny-scout",
        description: "tiny Scout-like test model (4 layers, width 64, 4 experts)",
        config: tiny_scout,
    },
    Preset {
        name: "tiny-maverick",
        description: "tiny Maverick-like test model (dense and MoE layers interleaved)",
        config: tiny_maverick,
    },
    Preset {
        name: "mini-scout",
        description: "small Scout for CPU ablations (8 layers, width 128, 16 experts, chunks of 32)",
        config: mini_scout,
    },
];

/// The preset called `name`, or an error listing the known names.
pub fn preset(name: &str) -> Result<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<_> = PRESETS.iter().map(|p| p.name).collect();
        Error::invalid(
            "preset",
            format!("unknown preset {name:?}; known: {}", names.join(", ")),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Ffn;

    fn billions(name: &str) -> (f64, f64) {
        let (total, active) = preset(name).unwrap().spec().param_counts();
        (total as f64 / 1e9, active as f64 / 1e9)
    }

    #[test]
    fn every_preset_resolves() {
        for p in PRESETS {
            assert!(p.spec().num_layers() > 0, "{}", p.name);
        }
    }

    #[test]
    fn scout_and_maverick_match_the_published_parameter_counts() {
        // Model card: 17B active; 109B / 400B total, the totals including the ~0.9B vision
        // encoder that the text decoder lacks.
        let (total, active) = billions("llama4-scout-17b-16e");
        assert!((105.0..110.0).contains(&total), "scout total {total}");
        assert!((16.5..17.5).contains(&active), "scout active {active}");
        let (total, active) = billions("llama4-maverick-17b-128e");
        assert!((390.0..401.0).contains(&total), "maverick total {total}");
        assert!((16.5..17.5).contains(&active), "maverick active {active}");
    }

    #[test]
    fn behemoth_matches_the_announced_scale() {
        let (total, active) = billions("llama4-behemoth");
        assert!((270.0..300.0).contains(&active), "behemoth active {active}");
        assert!((1500.0..2000.0).contains(&total), "behemoth total {total}");
    }

    #[test]
    fn the_scout_slice_is_scouts_repeating_unit_at_full_width() {
        let slice = preset("llama4-scout-slice").unwrap().spec();
        let scout = preset("llama4-scout-17b-16e").unwrap().spec();
        assert_eq!(slice.layers[..], scout.layers[..4]);
        assert_eq!(slice.hidden_size, scout.hidden_size);
        assert_eq!(slice.vocab_size, scout.vocab_size);
        let (total, _) = billions("llama4-scout-slice");
        assert!((10.0..11.5).contains(&total), "slice total {total}");
    }

    #[test]
    fn mini_scout_has_scouts_layout_at_a_small_width() {
        let mini = preset("mini-scout").unwrap().spec();
        let scout = preset("llama4-scout-17b-16e").unwrap().spec();
        assert_eq!(mini.num_layers(), 8);
        for (m, s) in mini.layers.iter().zip(&scout.layers) {
            assert_eq!((m.position, m.qk_norm), (s.position, s.qk_norm));
            let (Ffn::Moe(m), Ffn::Moe(s)) = (&m.ffn, &s.ffn) else {
                panic!("Scout's layers are all MoE")
            };
            assert_eq!((m.num_experts, m.top_k, &m.router), (s.num_experts, s.top_k, &s.router));
        }
        let (total, _) = mini.param_counts();
        assert!((7_000_000..8_000_000).contains(&total), "{total}");
    }

    #[test]
    fn unknown_preset_is_an_error_listing_the_names() {
        let err = preset("llama5").unwrap_err().to_string();
        assert!(err.contains("llama4-scout-17b-16e"), "{err}");
    }
}
