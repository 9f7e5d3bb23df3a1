//! The resolved vision plan: HF's `vision_config` with its defaults applied and the relations
//! HF's code assumes without checking (llama4-spec.md §9.2) checked here, once.

use std::path::Path;

use l4_core::{Error, Result};

use crate::hf_config::{HfImageSize, HfMultimodalConfig};

/// The vision tower, adapter and projector of a multimodal checkpoint, and the token its
/// features replace.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionSpec {
    /// Encoder width `dv`.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Encoder heads `hv`.
    pub num_heads: usize,
    /// Encoder head width `dhv` (a multiple of 4: half its pairs turn with x, half with y).
    pub head_dim: usize,
    /// Encoder MLP width `fv`; also the adapter's input width, `dv·r²`.
    pub intermediate_size: usize,
    /// Image channels `c`.
    pub num_channels: usize,
    /// Tile side in pixels `px`.
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Pixel-shuffle factor `r = 1 / pixel_shuffle_ratio`: each `r × r` block of patches
    /// becomes one feature token.
    pub shuffle_factor: usize,
    /// Adapter output and projector input width `do` (`vision_output_dim`).
    pub output_dim: usize,
    /// The text model's width `d`, the projector's output.
    pub text_hidden_size: usize,
    /// Base of the 2-D RoPE frequencies.
    pub rope_theta: f64,
    /// Epsilon of every vision LayerNorm.
    pub layer_norm_eps: f64,
    /// The token id whose embeddings the features replace (`<|patch|>`).
    pub image_token_id: i64,
}

fn field_error(path: &Path, field: &str, msg: impl std::fmt::Display) -> Error {
    Error::file(path, format!("config field `vision_config.{field}`: {msg}"))
}

fn positive(path: &Path, field: &str, value: usize) -> Result<usize> {
    if value == 0 {
        return Err(field_error(path, field, "must be positive"));
    }
    Ok(value)
}

fn square(path: &Path, field: &str, size: &HfImageSize) -> Result<usize> {
    match size {
        HfImageSize::Square(side) => positive(path, field, *side),
        HfImageSize::HeightWidth(hw) if hw.len() == 2 && hw[0] == hw[1] => positive(path, field, hw[0]),
        HfImageSize::HeightWidth(hw) => Err(field_error(
            path,
            field,
            format!("{hw:?} is not square (Llama 4 tiles and patches are square)"),
        )),
    }
}

impl VisionSpec {
    /// Applies HF's `Llama4VisionConfig` defaults to `cfg.vision_config` and validates it against
    /// the text width `text_hidden_size`. `path` names the config in errors.
    pub fn from_hf(cfg: &HfMultimodalConfig, text_hidden_size: usize, path: &Path) -> Result<VisionSpec> {
        let v = &cfg.vision_config;
        let hidden_size = positive(path, "hidden_size", v.hidden_size.unwrap_or(768))?;
        let num_layers = positive(path, "num_hidden_layers", v.num_hidden_layers.unwrap_or(34))?;
        let num_heads = positive(path, "num_attention_heads", v.num_attention_heads.unwrap_or(16))?;
        if !hidden_size.is_multiple_of(num_heads) || !(hidden_size / num_heads).is_multiple_of(4) {
            return Err(field_error(
                path,
                "num_attention_heads",
                format!(
                    "hidden_size {hidden_size} / {num_heads} heads must be a whole head width divisible by 4 (the 2-D RoPE \
                     splits each head's pairs between x and y)"
                ),
            ));
        }
        if let Some(act) = &v.hidden_act
            && act != "gelu"
        {
            return Err(field_error(
                path,
                "hidden_act",
                format!("{act:?} is not supported (Llama 4's vision tower uses exact \"gelu\")"),
            ));
        }
        let image_size = square(
            path,
            "image_size",
            v.image_size.as_ref().unwrap_or(&HfImageSize::Square(448)),
        )?;
        let patch_size = square(
            path,
            "patch_size",
            v.patch_size.as_ref().unwrap_or(&HfImageSize::Square(14)),
        )?;
        if !image_size.is_multiple_of(patch_size) {
            return Err(field_error(
                path,
                "patch_size",
                format!("{patch_size} does not divide image_size {image_size}"),
            ));
        }
        let grid = image_size / patch_size;
        let ratio = v.pixel_shuffle_ratio.unwrap_or(0.5);
        let factor = (1.0 / ratio).round();
        let whole = ratio > 0.0 && ratio <= 1.0 && (factor * ratio - 1.0).abs() < 1e-9;
        if !whole || !grid.is_multiple_of(factor as usize) {
            return Err(field_error(
                path,
                "pixel_shuffle_ratio",
                format!("{ratio} must be 1/r for a whole r dividing the {grid}x{grid} patch grid"),
            ));
        }
        let shuffle_factor = factor as usize;
        let intermediate_size = positive(path, "intermediate_size", v.intermediate_size.unwrap_or(5632))?;
        // HF sizes the adapter's fc1 input from intermediate_size; its input is really the
        // shuffled width, so the two must agree.
        let shuffled = hidden_size * shuffle_factor * shuffle_factor;
        if intermediate_size != shuffled {
            return Err(field_error(
                path,
                "intermediate_size",
                format!(
                    "{intermediate_size} must equal hidden_size / pixel_shuffle_ratio² = {shuffled} (the adapter's \
                     input width)"
                ),
            ));
        }
        let output_dim = positive(path, "vision_output_dim", v.vision_output_dim.unwrap_or(7680))?;
        for (field, value) in [
            ("projector_input_dim", v.projector_input_dim.unwrap_or(4096)),
            ("projector_output_dim", v.projector_output_dim.unwrap_or(4096)),
        ] {
            if value != output_dim {
                return Err(field_error(
                    path,
                    field,
                    format!("{value} must equal vision_output_dim {output_dim} (HF chains them without checking)"),
                ));
            }
        }
        if v.multi_modal_projector_bias == Some(true) {
            return Err(field_error(
                path,
                "multi_modal_projector_bias",
                "true is not supported (Llama 4's projector has no bias)",
            ));
        }
        let rope_theta = v
            .rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(v.rope_theta)
            .unwrap_or(10_000.0);
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(field_error(
                path,
                "rope_theta",
                format!("must be a positive number, got {rope_theta}"),
            ));
        }
        Ok(VisionSpec {
            hidden_size,
            num_layers,
            num_heads,
            head_dim: hidden_size / num_heads,
            intermediate_size,
            num_channels: positive(path, "num_channels", v.num_channels.unwrap_or(3))?,
            image_size,
            patch_size,
            shuffle_factor,
            output_dim,
            text_hidden_size,
            rope_theta,
            // HF's vision LayerNorms are `nn.LayerNorm(d)`: eps 1e-5 whatever `norm_eps` says.
            layer_norm_eps: 1e-5,
            image_token_id: cfg.image_token_index.unwrap_or(200_092),
        })
    }

    /// Patches per tile side `g`.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Patches per tile `np = g²` (the class token not counted).
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Feature tokens per tile after the pixel shuffle, `tv = (g / r)²`: the `<|patch|>` tokens
    /// one tile fills.
    pub fn tokens_per_tile(&self) -> usize {
        let side = self.grid() / self.shuffle_factor;
        side * side
    }

    /// Length of one flattened patch, `c·p²`.
    pub fn patch_dim(&self) -> usize {
        self.num_channels * self.patch_size * self.patch_size
    }

    /// Parameters of the tower, adapter and projector.
    pub fn param_count(&self) -> usize {
        let (dv, fv, q) = (self.hidden_size, self.intermediate_size, self.num_patches() + 1);
        let layer = 4 * (dv * dv + dv) + (dv * fv + fv) + (fv * dv + dv) + 4 * dv;
        self.patch_dim() * dv
            + dv
            + q * dv
            + 4 * dv
            + self.num_layers * layer
            + fv * self.output_dim
            + self.output_dim * self.output_dim
            + self.output_dim * self.text_hidden_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<VisionSpec> {
        let path = Path::new("config.json");
        let cfg = HfMultimodalConfig::parse(json, path)?.expect("has a vision_config");
        VisionSpec::from_hf(&cfg, 5120, path)
    }

    /// Scout's and Maverick's published vision_config.
    const SCOUT: &str = r#"{"vision_config": {"hidden_size": 1408, "num_hidden_layers": 34,
        "num_attention_heads": 16, "intermediate_size": 5632, "vision_output_dim": 4096,
        "image_size": 336, "patch_size": 14, "pixel_shuffle_ratio": 0.5,
        "projector_input_dim": 4096, "projector_output_dim": 4096, "rope_theta": 10000}}"#;

    #[test]
    fn scouts_vision_config_gives_144_tokens_per_tile() {
        let s = spec(SCOUT).unwrap();
        assert_eq!((s.grid(), s.num_patches(), s.tokens_per_tile()), (24, 576, 144));
        assert_eq!((s.head_dim, s.shuffle_factor, s.patch_dim()), (88, 2, 588));
        assert_eq!(s.image_token_id, 200_092);
        // Model card: about 0.87 B vision parameters (llama4-spec.md §1.3).
        let billions = s.param_count() as f64 / 1e9;
        assert!((0.8..0.9).contains(&billions), "{billions}");
    }

    #[test]
    fn relations_hf_assumes_are_checked_naming_the_field() {
        let cases = [
            ("intermediate_size", serde_json::json!(5000)),
            ("projector_input_dim", serde_json::json!(1024)),
            ("projector_output_dim", serde_json::json!(1024)),
            ("num_attention_heads", serde_json::json!(64)),
            ("patch_size", serde_json::json!(15)),
            ("pixel_shuffle_ratio", serde_json::json!(0.3)),
            ("image_size", serde_json::json!([336, 448])),
            ("hidden_act", serde_json::json!("relu")),
            ("multi_modal_projector_bias", serde_json::json!(true)),
            ("rope_theta", serde_json::json!(-1.0)),
        ];
        for (field, value) in cases {
            let mut json: serde_json::Value = serde_json::from_str(SCOUT).unwrap();
            json["vision_config"][field] = value;
            let err = spec(&json.to_string()).expect_err(field).to_string();
            assert!(err.contains(field) && err.contains("config.json"), "{field}: {err}");
        }
    }
}
