//! What an ablation file may say, as typed serde structures: the model options of the base and
//! of each variant ([`Settings`]), the router ([`RouterSettings`]) and the evaluation input
//! ([`EvalSettings`]). Unknown keys and wrong types are rejected by serde here; what the types
//! cannot say (ranges, contradictions, which keys belong where) is checked in
//! [`super::config`].

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AblationFile {
    /// The ablation's name (default: the file's stem).
    pub name: Option<String>,
    /// What the ablation asks.
    pub description: Option<String>,
    /// The model every variant starts from.
    #[serde(default)]
    pub base: Settings,
    /// The evaluation input.
    #[serde(default)]
    pub eval: EvalSettings,
    /// The variants, each a diff against the base (`[[variants]]`).
    #[serde(default)]
    pub variants: Vec<Settings>,
}

/// The options of the base (`[base]`) or of one variant (`[[variants]]`); absent options keep
/// the base's value (and the base's absent options keep the model's own).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// A variant's name (required there; the base is called `base`).
    pub name: Option<String>,
    /// One line on what the variant changes.
    pub description: Option<String>,
    /// Base only: a preset name or a checkpoint folder (relative to the file).
    pub model: Option<String>,
    /// Base only: cpu, cuda, cuda:N or auto.
    pub device: Option<String>,
    /// Compute dtype.
    pub dtype: Option<Precision>,
    /// Which weights run in FP8.
    pub fp8: Option<Fp8Recipe>,
    /// The routing strategy of every MoE layer.
    pub router: Option<RouterSettings>,
    /// Routed experts per token.
    pub experts_per_token: Option<usize>,
    /// The always-on shared expert.
    pub shared_expert: Option<bool>,
    /// Which layers are NoPE: every n-th, `"none"` or `"all"`.
    pub nope: Option<Nope>,
    /// Chunk length of the chunked (RoPE) layers.
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
    /// RoPE scaling: `"none"` or a llama3 table.
    pub rope_scaling: Option<RopeScalingSetting>,
}

/// The compute dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32.
    F32,
    /// bfloat16.
    Bf16,
    /// float16.
    F16,
}

/// The FP8 recipe (`l4_model::parts::fp8::Fp8Mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum Fp8Recipe {
    /// Everything in the compute dtype.
    #[serde(rename = "none")]
    None,
    /// Meta's recipe: routed experts, row-wise scales.
    #[serde(rename = "experts")]
    Experts,
    /// The same layers with 128×128 / 1×128 block scales.
    #[serde(rename = "experts-block")]
    ExpertsBlock,
    /// Every projection, row-wise.
    #[serde(rename = "all")]
    All,
    /// The recipe's weights rounded through e4m3, run in the compute dtype.
    #[serde(rename = "dequant")]
    Dequant,
}

/// A routing strategy (`l4_model::parts::router`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum Strategy {
    /// Top-k by logit, sigmoid weights on the expert input.
    #[serde(rename = "llama4")]
    Llama4,
    /// Softmax over experts, top-k.
    #[serde(rename = "softmax-topk")]
    SoftmaxTopK,
    /// Sigmoid scores, biased group-limited selection.
    #[serde(rename = "deepseek-v3")]
    DeepSeekV3,
    /// Each expert takes its best tokens.
    #[serde(rename = "expert-choice")]
    ExpertChoice,
    /// Expert by a hash of the token id.
    #[serde(rename = "hash")]
    Hash,
    /// Seeded random experts.
    #[serde(rename = "random")]
    Random,
    /// Every token to one expert.
    #[serde(rename = "forced")]
    Forced,
}

impl Strategy {
    /// The name in router spec strings.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Llama4 => "llama4",
            Strategy::SoftmaxTopK => "softmax-topk",
            Strategy::DeepSeekV3 => "deepseek-v3",
            Strategy::ExpertChoice => "expert-choice",
            Strategy::Hash => "hash",
            Strategy::Random => "random",
            Strategy::Forced => "forced",
        }
    }

    /// The parameters this strategy takes (besides `strategy`).
    pub fn parameters(self) -> &'static [&'static str] {
        match self {
            Strategy::Llama4 => &["k", "capacity"],
            Strategy::SoftmaxTopK => &["k", "renormalize", "capacity"],
            Strategy::DeepSeekV3 => &["k", "groups", "topk_groups", "scale", "bias", "capacity"],
            Strategy::ExpertChoice | Strategy::Hash => &["capacity"],
            Strategy::Random => &["k", "seed"],
            Strategy::Forced => &["expert"],
        }
    }
}

/// `router = { strategy = "...", ... }`: a strategy and its parameters.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSettings {
    /// The strategy.
    pub strategy: Strategy,
    /// Experts per token (token-choice strategies).
    pub k: Option<usize>,
    /// softmax-topk: renormalise the chosen probabilities.
    pub renormalize: Option<bool>,
    /// Capacity factor: token-choice strategies drop assignments past ⌈C·n·k/e⌉ per expert;
    /// expert-choice takes ⌈C·n/e⌉ tokens per expert.
    pub capacity: Option<f64>,
    /// deepseek-v3: expert groups.
    pub groups: Option<usize>,
    /// deepseek-v3: groups a token may use.
    pub topk_groups: Option<usize>,
    /// deepseek-v3: routed scaling factor.
    pub scale: Option<f64>,
    /// deepseek-v3: per-expert selection bias.
    pub bias: Option<Vec<f64>>,
    /// random: the seed.
    pub seed: Option<u64>,
    /// forced: the expert every token goes to.
    pub expert: Option<usize>,
}

impl RouterSettings {
    /// The parameters given, by name, for checking them against the strategy.
    pub fn given(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        let mut add = |name, present: bool| {
            if present {
                given.push(name);
            }
        };
        add("k", self.k.is_some());
        add("renormalize", self.renormalize.is_some());
        add("capacity", self.capacity.is_some());
        add("groups", self.groups.is_some());
        add("topk_groups", self.topk_groups.is_some());
        add("scale", self.scale.is_some());
        add("bias", self.bias.is_some());
        add("seed", self.seed.is_some());
        add("expert", self.expert.is_some());
        given
    }
}

/// Which layers skip RoPE: every n-th (Llama 4: 4), `"none"` or `"all"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nope {
    /// Layers n-1, 2n-1, ...
    Every(usize),
    /// No layer.
    None,
    /// Every layer.
    All,
}

impl<'de> Deserialize<'de> for Nope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NopeVisitor;
        impl Visitor<'_> for NopeVisitor {
            type Value = Nope;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a layer interval (an integer of at least 1), \"none\" or \"all\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Nope, E> {
                match usize::try_from(v) {
                    Ok(n) if n >= 1 => Ok(Nope::Every(n)),
                    _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Nope, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(-1))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Nope, E> {
                match v {
                    "none" => Ok(Nope::None),
                    "all" => Ok(Nope::All),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        deserializer.deserialize_any(NopeVisitor)
    }
}

/// llama3 RoPE scaling, with HF's parameter names.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Llama3Settings {
    /// Divisor of the low frequencies.
    pub factor: f64,
    /// Wavelengths above `original / low_freq_factor` are divided by `factor`.
    pub low_freq_factor: f64,
    /// Wavelengths below `original / high_freq_factor` are kept.
    pub high_freq_factor: f64,
    /// The pre-training context length.
    pub original_max_position_embeddings: usize,
}

/// `rope_scaling = "none"` or `rope_scaling = { factor = .., ... }` (llama3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScalingSetting {
    /// Plain RoPE frequencies.
    None,
    /// llama3 scaling.
    Llama3(Llama3Settings),
}

impl<'de> Deserialize<'de> for RopeScalingSetting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalingVisitor;
        impl<'de> Visitor<'de> for ScalingVisitor {
            type Value = RopeScalingSetting;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"none\" or a llama3 table { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RopeScalingSetting, E> {
                match v {
                    "none" => Ok(RopeScalingSetting::None),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<RopeScalingSetting, M::Error> {
                Llama3Settings::deserialize(de::value::MapAccessDeserializer::new(map)).map(RopeScalingSetting::Llama3)
            }
        }
        deserializer.deserialize_any(ScalingVisitor)
    }
}

impl Serialize for RopeScalingSetting {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RopeScalingSetting::None => serializer.serialize_str("none"),
            RopeScalingSetting::Llama3(s) => s.serialize(serializer),
        }
    }
}

/// `[eval]`: the prompts every variant runs on. One source: seeded random prompts (the
/// default), `tokens` (a safetensors file holding `input_ids`), or `text` (a text file, split
/// into `prompts` rows of `prompt_len` tokens by `tokenizer`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSettings {
    /// Sequences (random prompts, or rows cut from the text).
    pub prompts: Option<usize>,
    /// Tokens per sequence (random prompts, or rows cut from the text).
    pub prompt_len: Option<usize>,
    /// Seed of the random prompts.
    pub seed: Option<u64>,
    /// Greedy steps timed after the prompt (0: no decode timing).
    pub decode_tokens: Option<usize>,
    /// Timed repeats of the prefill (the median is reported).
    pub repeats: Option<usize>,
    /// A safetensors file with `input_ids` (I64 [batch, tokens]), relative to the file.
    pub tokens: Option<String>,
    /// A UTF-8 text file, relative to the file.
    pub text: Option<String>,
    /// The tokenizer.json for `text` (default: the model folder's).
    pub tokenizer: Option<String>,
}
