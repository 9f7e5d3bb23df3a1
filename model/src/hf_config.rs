//! A serde mirror of Hugging Face's Llama 4 `config.json`, with HF's field names.
//!
//! This file and `weights.rs` are the only places that know HF names. Both config styles are
//! accepted: transformers 4 (`rope_theta` + `rope_scaling`, as in the published checkpoints) and
//! transformers 5 (`rope_parameters`, expanded `layer_types` / `no_rope_layers`). A
//! `Llama4ForConditionalGeneration` file is read through its `text_config`, and its vision tower
//! through [`HfMultimodalConfig`] (`vision_config` and the image token ids). The image processor's
//! `preprocessor_config.json` is [`HfPreprocessorConfig`]. Unknown keys are ignored, as HF itself
//! ignores legacy keys such as `for_llm_compressor`.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use l4_core::{Error, Result};

/// `attn_temperature_tuning`: transformers 5 writes a bool; some published Scout copies carry
/// the integer `4`, which HF's older code treated as truthy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BoolOrInt {
    /// `true` / `false`.
    Bool(bool),
    /// Any integer; non-zero means enabled.
    Int(i64),
}

impl BoolOrInt {
    /// Whether the flag is on.
    pub fn enabled(self) -> bool {
        match self {
            BoolOrInt::Bool(b) => b,
            BoolOrInt::Int(i) => i != 0,
        }
    }
}

/// A token id or a list of them (`eos_token_id` is a list in the Instruct configs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One id.
    One(i64),
    /// Several ids.
    Many(Vec<i64>),
}

impl OneOrMany {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<i64> {
        match self {
            OneOrMany::One(id) => vec![*id],
            OneOrMany::Many(ids) => ids.clone(),
        }
    }
}

/// transformers-4 `rope_scaling` and the scaling part of transformers-5 `rope_parameters`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HfRopeParameters {
    /// `"llama3"` or `"default"` (HF also reads the older key `type`).
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    /// Base of the inverse frequencies (transformers 5 only; v4 has it at the top level).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// llama3: divisor of the low frequencies.
    #[serde(default)]
    pub factor: Option<f64>,
    /// llama3: wavelengths longer than `original_max_position_embeddings / low_freq_factor`
    /// are divided by `factor`.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// llama3: wavelengths shorter than `original_max_position_embeddings / high_freq_factor`
    /// are kept.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// llama3: the context length the model was pre-trained at.
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

/// `Llama4TextConfig`, every field named as in HF. `None` means "HF's class default", applied
/// in [`crate::spec::ModelSpec::from_hf`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HfTextConfig {
    /// `model_type`: `llama4_text` (or `llama4` at the top of a text-only save).
    #[serde(default)]
    pub model_type: Option<String>,
    /// Vocabulary size.
    pub vocab_size: Option<usize>,
    /// Model width.
    pub hidden_size: Option<usize>,
    /// Width of each routed expert and of the shared expert.
    pub intermediate_size: Option<usize>,
    /// Width of the dense MLP layers.
    pub intermediate_size_mlp: Option<usize>,
    /// Number of decoder layers.
    pub num_hidden_layers: Option<usize>,
    /// Query heads.
    pub num_attention_heads: Option<usize>,
    /// Key/value heads (None: same as query heads).
    pub num_key_value_heads: Option<usize>,
    /// Head width (None: hidden / heads).
    pub head_dim: Option<usize>,
    /// Activation of the MLPs; only `"silu"` exists in Llama 4.
    pub hidden_act: Option<String>,
    /// Longest context the checkpoint declares.
    pub max_position_embeddings: Option<usize>,
    /// RMSNorm epsilon (also the QK-norm's).
    pub rms_norm_eps: Option<f64>,
    /// Whether lm_head shares the embedding matrix.
    pub tie_word_embeddings: Option<bool>,
    /// Whether q/k/v/o have biases (never in Llama 4; rejected).
    pub attention_bias: Option<bool>,
    /// Experts per token.
    pub num_experts_per_tok: Option<usize>,
    /// Routed experts per MoE layer.
    pub num_local_experts: Option<usize>,
    /// Explicit MoE layer indices (None: from the step).
    pub moe_layers: Option<Vec<usize>>,
    /// Every `step`-th layer is MoE, starting at `step - 1`.
    pub interleave_moe_layer_step: Option<usize>,
    /// QK RMS-norm on RoPE layers.
    pub use_qk_norm: Option<bool>,
    /// transformers 4: RoPE base.
    pub rope_theta: Option<f64>,
    /// transformers 4: RoPE scaling (null for Maverick).
    pub rope_scaling: Option<HfRopeParameters>,
    /// transformers 5: RoPE base and scaling in one object.
    pub rope_parameters: Option<HfRopeParameters>,
    /// Per layer, 1 = the layer USES RoPE (the name is inverted); empty = derive from interval.
    pub no_rope_layers: Option<Vec<u8>>,
    /// Every `interval`-th layer is NoPE.
    pub no_rope_layer_interval: Option<usize>,
    /// Chunk length of the local attention on RoPE layers.
    pub attention_chunk_size: Option<usize>,
    /// transformers 5: `"chunked_attention"` or `"full_attention"` per layer.
    pub layer_types: Option<Vec<String>>,
    /// Query temperature tuning on NoPE layers.
    pub attn_temperature_tuning: Option<BoolOrInt>,
    /// Temperature: positions are counted in blocks of `floor_scale`.
    pub floor_scale: Option<f64>,
    /// Temperature: strength of the log-position scale.
    pub attn_scale: Option<f64>,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<i64>,
    /// End-of-sequence id(s).
    pub eos_token_id: Option<OneOrMany>,
    /// Padding id.
    pub pad_token_id: Option<i64>,
}

/// Which HF class a checkpoint was saved from; decides the weight-name prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfArchitecture {
    /// `Llama4ForCausalLM`: `model.layers.*`, `lm_head.weight`.
    CausalLm,
    /// `Llama4ForConditionalGeneration`: `language_model.model.layers.*`, plus vision tensors.
    ConditionalGeneration,
}

/// A parsed `config.json`: the text config and the class it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct HfConfig {
    /// The text decoder's config.
    pub text: HfTextConfig,
    /// The class that wrote the checkpoint.
    pub architecture: HfArchitecture,
}

impl HfConfig {
    /// Parses the JSON text of a config.json. `path` is only used in error messages.
    pub fn parse(json: &str, path: &Path) -> Result<HfConfig> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| Error::file(path, format!("config.json is not valid JSON: {e}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| Error::file(path, "config.json is not a JSON object"))?;
        let (text_value, architecture) = match object.get("text_config") {
            Some(text) => (text.clone(), HfArchitecture::ConditionalGeneration),
            None => (value.clone(), HfArchitecture::CausalLm),
        };
        if let Some(model_type) = object.get("model_type").and_then(|v| v.as_str())
            && !matches!(model_type, "llama4" | "llama4_text")
        {
            return Err(Error::file(
                path,
                format!("model_type {model_type:?} is not a Llama 4 model"),
            ));
        }
        let text: HfTextConfig = serde_json::from_value(text_value.clone()).map_err(|e| {
            Error::file(
                path,
                format!("config.json: {}", describe_serde_error::<HfTextConfig>(&e, &text_value)),
            )
        })?;
        Ok(HfConfig { text, architecture })
    }

    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<HfConfig> {
        let json = std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        HfConfig::parse(&json, path)
    }
}

/// An image side in pixels: HF accepts one number (square) or `[height, width]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HfImageSize {
    /// A square side.
    Square(usize),
    /// `[height, width]`.
    HeightWidth(Vec<usize>),
}

/// `Llama4VisionConfig` (the `vision_config` object), every field named as in HF. `None` means
/// "HF's class default", applied in [`crate::vision::VisionSpec::from_hf`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HfVisionConfig {
    /// Encoder width.
    pub hidden_size: Option<usize>,
    /// Activation of the encoder MLP and the adapter; HF hard-codes exact GELU.
    pub hidden_act: Option<String>,
    /// Encoder layers.
    pub num_hidden_layers: Option<usize>,
    /// Encoder attention heads.
    pub num_attention_heads: Option<usize>,
    /// Image channels.
    pub num_channels: Option<usize>,
    /// Encoder MLP width, also the adapter's input width.
    pub intermediate_size: Option<usize>,
    /// Width of the adapter output and the projector input.
    pub vision_output_dim: Option<usize>,
    /// Tile side in pixels.
    pub image_size: Option<HfImageSize>,
    /// Patch side in pixels.
    pub patch_size: Option<HfImageSize>,
    /// LayerNorm epsilon as written; HF's vision LayerNorms ignore it and use 1e-5.
    pub norm_eps: Option<f64>,
    /// Pixel-shuffle ratio (0.5: each 2x2 block of patches becomes one token).
    pub pixel_shuffle_ratio: Option<f64>,
    /// Adapter fc1 output width.
    pub projector_input_dim: Option<usize>,
    /// Adapter fc2 width.
    pub projector_output_dim: Option<usize>,
    /// Whether the projector has a bias (never in Llama 4; rejected).
    pub multi_modal_projector_bias: Option<bool>,
    /// transformers 4: the 2-D RoPE base.
    pub rope_theta: Option<f64>,
    /// transformers 5: the 2-D RoPE base, in `rope_parameters.rope_theta`.
    pub rope_parameters: Option<HfRopeParameters>,
}

/// The multimodal part of a `Llama4ForConditionalGeneration` config.json: `vision_config` and
/// the top-level image token ids.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HfMultimodalConfig {
    /// The vision tower.
    pub vision_config: HfVisionConfig,
    /// The id whose embeddings image features replace: `<|patch|>` (200092), not `<|image|>`.
    #[serde(alias = "image_token_id")]
    pub image_token_index: Option<i64>,
    /// `<|image_start|>`.
    #[serde(alias = "boi_token_id")]
    pub boi_token_index: Option<i64>,
    /// `<|image_end|>`.
    #[serde(alias = "eoi_token_id")]
    pub eoi_token_index: Option<i64>,
}

impl HfMultimodalConfig {
    /// The vision part of the config.json text `json`, or `None` when it has no `vision_config`
    /// (a text-only checkpoint). `path` is only used in error messages.
    pub fn parse(json: &str, path: &Path) -> Result<Option<HfMultimodalConfig>> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| Error::file(path, format!("config.json is not valid JSON: {e}")))?;
        let Some(vision) = value.get("vision_config").filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let vision_config: HfVisionConfig = serde_json::from_value(vision.clone()).map_err(|e| {
            Error::file(
                path,
                format!(
                    "config.json: vision_config: {}",
                    describe_serde_error::<HfVisionConfig>(&e, vision)
                ),
            )
        })?;
        let mut top = value.clone();
        if let Some(object) = top.as_object_mut() {
            object.retain(|k, _| k.ends_with("_token_index") || k.ends_with("_token_id"));
            object.insert("vision_config".into(), serde_json::json!({}));
        }
        let mut config: HfMultimodalConfig = serde_json::from_value(top.clone()).map_err(|e| {
            Error::file(
                path,
                format!("config.json: {}", describe_serde_error::<HfMultimodalConfig>(&e, &top)),
            )
        })?;
        config.vision_config = vision_config;
        Ok(Some(config))
    }

    /// Reads and parses `path` (a config.json).
    pub fn read(path: &Path) -> Result<Option<HfMultimodalConfig>> {
        let json = std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        HfMultimodalConfig::parse(&json, path)
    }
}

/// `size` of the image processor: a tile of `height` × `width` pixels.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HfProcessorSize {
    /// Tile height.
    pub height: Option<usize>,
    /// Tile width.
    pub width: Option<usize>,
}

/// `Llama4ImageProcessor`'s `preprocessor_config.json`, every field named as in HF. `None`
/// means "HF's class default", applied in [`crate::vision::preprocess::PreprocessConfig`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HfPreprocessorConfig {
    /// The tile size.
    pub size: Option<HfProcessorSize>,
    /// Most tiles per image (the global tile not counted).
    pub max_patches: Option<usize>,
    /// Upscale to the largest canvas instead of the smallest that fits.
    pub resize_to_max_canvas: Option<bool>,
    /// PIL resampling filter code; 2 is bilinear, the only one supported.
    pub resample: Option<i64>,
    /// Whether images are resized (Llama 4 requires it).
    pub do_resize: Option<bool>,
    /// Whether pixel values are multiplied by `rescale_factor`.
    pub do_rescale: Option<bool>,
    /// Whether `(x − mean) / std` is applied.
    pub do_normalize: Option<bool>,
    /// Whether images are converted to RGB first.
    pub do_convert_rgb: Option<bool>,
    /// The rescale factor (1/255).
    pub rescale_factor: Option<f64>,
    /// Per-channel means.
    pub image_mean: Option<Vec<f64>>,
    /// Per-channel standard deviations.
    pub image_std: Option<Vec<f64>>,
}

impl HfPreprocessorConfig {
    /// Reads and parses `path` (a preprocessor_config.json).
    pub fn read(path: &Path) -> Result<HfPreprocessorConfig> {
        let json = std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        let value: serde_json::Value = serde_json::from_str(&json)
            .map_err(|e| Error::file(path, format!("preprocessor_config.json is not valid JSON: {e}")))?;
        serde_json::from_value(value.clone()).map_err(|e| {
            Error::file(
                path,
                format!(
                    "preprocessor_config.json: {}",
                    describe_serde_error::<HfPreprocessorConfig>(&e, &value)
                ),
            )
        })
    }
}

fn describe_serde_error<T: DeserializeOwned>(e: &serde_json::Error, value: &serde_json::Value) -> String {
    // serde's messages say what is wrong ("invalid type: string \"x\", expected usize") but not
    // which field: find it by deserializing each field alone (every field of `T` is optional).
    let field = value.as_object().and_then(|object| {
        object.iter().find_map(|(key, v)| {
            let alone = serde_json::Value::Object([(key.clone(), v.clone())].into_iter().collect());
            serde_json::from_value::<T>(alone).is_err().then_some(key)
        })
    });
    match field {
        Some(key) => format!("field `{key}`: {e}"),
        None => format!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<HfConfig> {
        HfConfig::parse(json, Path::new("config.json"))
    }

    #[test]
    fn reads_a_text_config_nested_in_a_multimodal_config() {
        let cfg =
            parse(r#"{"model_type": "llama4", "text_config": {"hidden_size": 64}, "vision_config": {}}"#).unwrap();
        assert_eq!(cfg.architecture, HfArchitecture::ConditionalGeneration);
        assert_eq!(cfg.text.hidden_size, Some(64));
    }

    #[test]
    fn accepts_int_or_bool_temperature_tuning_and_list_eos() {
        let cfg = parse(r#"{"attn_temperature_tuning": 4, "eos_token_id": [1, 2]}"#).unwrap();
        assert_eq!(cfg.text.attn_temperature_tuning, Some(BoolOrInt::Int(4)));
        assert!(cfg.text.attn_temperature_tuning.unwrap().enabled());
        assert_eq!(cfg.text.eos_token_id.unwrap().to_vec(), vec![1, 2]);
        let cfg = parse(r#"{"attn_temperature_tuning": false, "eos_token_id": 7}"#).unwrap();
        assert!(!cfg.text.attn_temperature_tuning.unwrap().enabled());
        assert_eq!(cfg.text.eos_token_id.unwrap().to_vec(), vec![7]);
    }

    #[test]
    fn reads_the_old_rope_scaling_type_key() {
        let cfg = parse(r#"{"rope_scaling": {"type": "llama3", "factor": 8.0}}"#).unwrap();
        assert_eq!(cfg.text.rope_scaling.unwrap().rope_type.as_deref(), Some("llama3"));
    }

    #[test]
    fn bad_json_names_the_file_and_the_problem() {
        let err = parse("{").unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains("not valid JSON"), "{err}");
        let err = parse(r#"{"hidden_size": "wide"}"#).unwrap_err().to_string();
        assert!(err.contains("invalid type") && err.contains("`hidden_size`"), "{err}");
        let err = parse(r#"{"text_config": {"vocab_size": 8, "rope_scaling": {"factor": "x"}}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`rope_scaling`"), "{err}");
        let err = parse(r#"{"model_type": "llama"}"#).unwrap_err().to_string();
        assert!(err.contains("not a Llama 4"), "{err}");
        assert!(parse("[1]").is_err());
    }

    #[test]
    fn reads_the_vision_config_and_image_token_ids() {
        let path = Path::new("config.json");
        let json = r#"{"model_type": "llama4", "image_token_index": 9, "text_config": {},
            "vision_config": {"hidden_size": 32, "image_size": 28, "patch_size": [7, 7],
                              "rope_parameters": {"rope_theta": 100.0}}}"#;
        let cfg = HfMultimodalConfig::parse(json, path).unwrap().unwrap();
        assert_eq!(cfg.image_token_index, Some(9));
        assert_eq!(cfg.vision_config.hidden_size, Some(32));
        assert_eq!(cfg.vision_config.image_size, Some(HfImageSize::Square(28)));
        assert_eq!(cfg.vision_config.patch_size, Some(HfImageSize::HeightWidth(vec![7, 7])));
        assert_eq!(cfg.vision_config.rope_parameters.unwrap().rope_theta, Some(100.0));
        assert!(
            HfMultimodalConfig::parse(r#"{"hidden_size": 64}"#, path)
                .unwrap()
                .is_none()
        );
        let err = HfMultimodalConfig::parse(r#"{"vision_config": {"patch_size": "big"}}"#, path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("vision_config") && err.contains("`patch_size`"), "{err}");
        let err = HfMultimodalConfig::parse(r#"{"vision_config": {}, "image_token_index": "x"}"#, path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`image_token_index`"), "{err}");
    }
}
