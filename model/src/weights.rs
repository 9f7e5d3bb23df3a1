//! The one table of checkpoint tensor names, and the sources that fill it.
//!
//! Every HF weight name l4lab reads is produced here, from the resolved [`ModelSpec`]; the model
//! builder asks a [`WeightSource`] for each by name and shape. Loading from a checkpoint then
//! checks the converse: every tensor in the files was consumed.

use std::collections::BTreeSet;

use l4_core::checkpoint::Checkpoint;
use l4_core::{DType, Device, Error, Result, Tensor};
use l4_kernels::quant::{Granularity, Quantized};

use crate::hf_config::HfArchitecture;
use crate::spec::{Ffn, ModelSpec};
use crate::vision::VisionSpec;

/// Where the text decoder's tensors live in a checkpoint of each HF class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightNames {
    model: &'static str,
    lm_head: &'static str,
}

/// Prefixes of tensors that belong to other parts of a multimodal checkpoint (the vision
/// encoder and projector) and are not the text model's to consume.
const OTHER_PARTS: &[&str] = &["vision_model.", "multi_modal_projector."];

impl WeightNames {
    /// The names for checkpoints written by `architecture`.
    pub fn for_architecture(architecture: HfArchitecture) -> Self {
        match architecture {
            HfArchitecture::CausalLm => WeightNames {
                model: "model.",
                lm_head: "lm_head.weight",
            },
            HfArchitecture::ConditionalGeneration => WeightNames {
                model: "language_model.model.",
                lm_head: "language_model.lm_head.weight",
            },
        }
    }

    /// `[v, d]` token embedding.
    pub fn embed_tokens(&self) -> String {
        format!("{}embed_tokens.weight", self.model)
    }

    /// `[d]` final RMSNorm weight.
    pub fn final_norm(&self) -> String {
        format!("{}norm.weight", self.model)
    }

    /// `[v, d]` output projection.
    pub fn lm_head(&self) -> String {
        self.lm_head.to_string()
    }

    /// A tensor of layer `i`, `suffix` relative to the layer (e.g. `self_attn.q_proj.weight`).
    pub fn layer(&self, i: usize, suffix: &str) -> String {
        format!("{}layers.{i}.{suffix}", self.model)
    }

    /// Expert `j`'s `proj` (`gate_proj`, `up_proj`, `down_proj`) weight of layer `i` in the
    /// per-expert layout of pre-quantized FP8 checkpoints (HF `nn.Linear`, `[out, in]`); its
    /// scales are `{name}_scale`.
    pub fn expert_linear(&self, i: usize, j: usize, proj: &str) -> String {
        self.layer(i, &format!("feed_forward.experts.{j}.{proj}.weight"))
    }

    /// Every tensor the text model of `spec` reads, with its shape, in load order.
    pub fn all(&self, spec: &ModelSpec) -> Vec<(String, Vec<usize>)> {
        let (d, v) = (spec.hidden_size, spec.vocab_size);
        let (q_width, kv_width) = (spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim);
        let mut names = vec![(self.embed_tokens(), vec![v, d])];
        for (i, layer) in spec.layers.iter().enumerate() {
            names.push((self.layer(i, "input_layernorm.weight"), vec![d]));
            names.push((self.layer(i, "post_attention_layernorm.weight"), vec![d]));
            names.push((self.layer(i, "self_attn.q_proj.weight"), vec![q_width, d]));
            names.push((self.layer(i, "self_attn.k_proj.weight"), vec![kv_width, d]));
            names.push((self.layer(i, "self_attn.v_proj.weight"), vec![kv_width, d]));
            names.push((self.layer(i, "self_attn.o_proj.weight"), vec![d, q_width]));
            match &layer.ffn {
                Ffn::Dense { intermediate: f } => {
                    names.push((self.layer(i, "feed_forward.gate_proj.weight"), vec![*f, d]));
                    names.push((self.layer(i, "feed_forward.up_proj.weight"), vec![*f, d]));
                    names.push((self.layer(i, "feed_forward.down_proj.weight"), vec![d, *f]));
                }
                Ffn::Moe(moe) => {
                    let (e, f) = (moe.num_experts, moe.expert_intermediate);
                    names.push((self.layer(i, "feed_forward.router.weight"), vec![e, d]));
                    names.push((self.layer(i, "feed_forward.experts.gate_up_proj"), vec![e, d, 2 * f]));
                    names.push((self.layer(i, "feed_forward.experts.down_proj"), vec![e, f, d]));
                    if let Some(fs) = moe.shared_intermediate {
                        names.push((
                            self.layer(i, "feed_forward.shared_expert.gate_proj.weight"),
                            vec![fs, d],
                        ));
                        names.push((self.layer(i, "feed_forward.shared_expert.up_proj.weight"), vec![fs, d]));
                        names.push((
                            self.layer(i, "feed_forward.shared_expert.down_proj.weight"),
                            vec![d, fs],
                        ));
                    }
                }
            }
        }
        names.push((self.final_norm(), vec![d]));
        if !spec.tie_word_embeddings {
            names.push((self.lm_head(), vec![v, d]));
        }
        names
    }
}

/// A tensor of one vision encoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VisionLayerTensor {
    /// `[dv, dv]` query projection and its `[dv]` bias.
    QWeight,
    /// `[dv]`.
    QBias,
    /// `[dv, dv]` key projection.
    KWeight,
    /// `[dv]`.
    KBias,
    /// `[dv, dv]` value projection.
    VWeight,
    /// `[dv]`.
    VBias,
    /// `[dv, dv]` output projection.
    OWeight,
    /// `[dv]`.
    OBias,
    /// `[fv, dv]` MLP up projection.
    Fc1Weight,
    /// `[fv]`.
    Fc1Bias,
    /// `[dv, fv]` MLP down projection.
    Fc2Weight,
    /// `[dv]`.
    Fc2Bias,
    /// `[dv]` LayerNorm before attention.
    InputNormWeight,
    /// `[dv]`.
    InputNormBias,
    /// `[dv]` LayerNorm before the MLP.
    PostAttentionNormWeight,
    /// `[dv]`.
    PostAttentionNormBias,
}

impl VisionLayerTensor {
    /// Every tensor of a layer, in load order.
    pub const ALL: [VisionLayerTensor; 16] = [
        VisionLayerTensor::InputNormWeight,
        VisionLayerTensor::InputNormBias,
        VisionLayerTensor::QWeight,
        VisionLayerTensor::QBias,
        VisionLayerTensor::KWeight,
        VisionLayerTensor::KBias,
        VisionLayerTensor::VWeight,
        VisionLayerTensor::VBias,
        VisionLayerTensor::OWeight,
        VisionLayerTensor::OBias,
        VisionLayerTensor::PostAttentionNormWeight,
        VisionLayerTensor::PostAttentionNormBias,
        VisionLayerTensor::Fc1Weight,
        VisionLayerTensor::Fc1Bias,
        VisionLayerTensor::Fc2Weight,
        VisionLayerTensor::Fc2Bias,
    ];

    fn suffix(self) -> &'static str {
        match self {
            VisionLayerTensor::QWeight => "self_attn.q_proj.weight",
            VisionLayerTensor::QBias => "self_attn.q_proj.bias",
            VisionLayerTensor::KWeight => "self_attn.k_proj.weight",
            VisionLayerTensor::KBias => "self_attn.k_proj.bias",
            VisionLayerTensor::VWeight => "self_attn.v_proj.weight",
            VisionLayerTensor::VBias => "self_attn.v_proj.bias",
            VisionLayerTensor::OWeight => "self_attn.o_proj.weight",
            VisionLayerTensor::OBias => "self_attn.o_proj.bias",
            VisionLayerTensor::Fc1Weight => "mlp.fc1.weight",
            VisionLayerTensor::Fc1Bias => "mlp.fc1.bias",
            VisionLayerTensor::Fc2Weight => "mlp.fc2.weight",
            VisionLayerTensor::Fc2Bias => "mlp.fc2.bias",
            VisionLayerTensor::InputNormWeight => "input_layernorm.weight",
            VisionLayerTensor::InputNormBias => "input_layernorm.bias",
            VisionLayerTensor::PostAttentionNormWeight => "post_attention_layernorm.weight",
            VisionLayerTensor::PostAttentionNormBias => "post_attention_layernorm.bias",
        }
    }

    fn shape(self, spec: &VisionSpec) -> Vec<usize> {
        let (dv, fv) = (spec.hidden_size, spec.intermediate_size);
        match self {
            VisionLayerTensor::QWeight
            | VisionLayerTensor::KWeight
            | VisionLayerTensor::VWeight
            | VisionLayerTensor::OWeight => vec![dv, dv],
            VisionLayerTensor::Fc1Weight => vec![fv, dv],
            VisionLayerTensor::Fc1Bias => vec![fv],
            VisionLayerTensor::Fc2Weight => vec![dv, fv],
            _ => vec![dv],
        }
    }
}

/// A tensor of the vision tower, its adapter or the projector of a
/// `Llama4ForConditionalGeneration` checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VisionTensor {
    /// `[dv, c·p²]` bias-free patch embedding (a stride-p convolution, unfolded).
    PatchEmbedding,
    /// `[dv]` class token, appended after the patches.
    ClassEmbedding,
    /// `[np + 1, dv]` learned positions (the last row is the class token's).
    PositionEmbedding,
    /// `[dv]` LayerNorm before the layers.
    PreNormWeight,
    /// `[dv]`.
    PreNormBias,
    /// `[dv]` LayerNorm after the layers.
    PostNormWeight,
    /// `[dv]`.
    PostNormBias,
    /// A tensor of encoder layer `i`.
    Layer(usize, VisionLayerTensor),
    /// `[do, fv]` adapter fc1 (no bias).
    AdapterFc1,
    /// `[do, do]` adapter fc2 (no bias).
    AdapterFc2,
    /// `[d, do]` projector into the text width (no bias).
    Projector,
}

impl VisionTensor {
    /// The checkpoint name.
    pub fn name(self) -> String {
        match self {
            VisionTensor::PatchEmbedding => "vision_model.patch_embedding.linear.weight".into(),
            VisionTensor::ClassEmbedding => "vision_model.class_embedding".into(),
            VisionTensor::PositionEmbedding => "vision_model.positional_embedding_vlm".into(),
            VisionTensor::PreNormWeight => "vision_model.layernorm_pre.weight".into(),
            VisionTensor::PreNormBias => "vision_model.layernorm_pre.bias".into(),
            VisionTensor::PostNormWeight => "vision_model.layernorm_post.weight".into(),
            VisionTensor::PostNormBias => "vision_model.layernorm_post.bias".into(),
            VisionTensor::Layer(i, t) => format!("vision_model.model.layers.{i}.{}", t.suffix()),
            VisionTensor::AdapterFc1 => "vision_model.vision_adapter.mlp.fc1.weight".into(),
            VisionTensor::AdapterFc2 => "vision_model.vision_adapter.mlp.fc2.weight".into(),
            VisionTensor::Projector => "multi_modal_projector.linear_1.weight".into(),
        }
    }

    /// The shape `spec` implies.
    pub fn shape(self, spec: &VisionSpec) -> Vec<usize> {
        let dv = spec.hidden_size;
        match self {
            VisionTensor::PatchEmbedding => vec![dv, spec.patch_dim()],
            VisionTensor::PositionEmbedding => vec![spec.num_patches() + 1, dv],
            VisionTensor::Layer(_, t) => t.shape(spec),
            VisionTensor::AdapterFc1 => vec![spec.output_dim, spec.intermediate_size],
            VisionTensor::AdapterFc2 => vec![spec.output_dim, spec.output_dim],
            VisionTensor::Projector => vec![spec.text_hidden_size, spec.output_dim],
            _ => vec![dv],
        }
    }

    /// Every vision tensor of `spec`, in load order.
    pub fn all(spec: &VisionSpec) -> Vec<VisionTensor> {
        let mut tensors = vec![
            VisionTensor::PatchEmbedding,
            VisionTensor::ClassEmbedding,
            VisionTensor::PositionEmbedding,
            VisionTensor::PreNormWeight,
            VisionTensor::PreNormBias,
        ];
        for i in 0..spec.num_layers {
            tensors.extend(VisionLayerTensor::ALL.iter().map(|&t| VisionTensor::Layer(i, t)));
        }
        tensors.extend([
            VisionTensor::PostNormWeight,
            VisionTensor::PostNormBias,
            VisionTensor::AdapterFc1,
            VisionTensor::AdapterFc2,
            VisionTensor::Projector,
        ]);
        tensors
    }

    /// The tensor from `source`, checked against the shape `spec` implies.
    pub fn take(self, source: &mut dyn WeightSource, spec: &VisionSpec) -> Result<Tensor> {
        source.take(&self.name(), &self.shape(spec))
    }
}

/// Supplies parameter tensors by name and shape.
pub trait WeightSource {
    /// The tensor `name` of `shape`, in `dtype` on `device`.
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor>;

    /// Whether the source holds `name` (for optional layouts, such as per-expert FP8 weights).
    fn has(&self, _name: &str) -> bool {
        false
    }

    /// The e4m3 weight `name` of `shape` `[out, in]` with its per-output-channel scales
    /// (`{name}_scale`), on the device, as stored. Sources without FP8 tensors fail.
    fn take_fp8(&mut self, name: &str, _shape: &[usize]) -> Result<Quantized> {
        Err(Error::invalid("load", format!("no FP8 tensor {name:?} in this source")))
    }
}

/// Tensors from a safetensors checkpoint, converted to the compute dtype.
#[derive(Debug)]
pub struct CheckpointSource<'a> {
    checkpoint: &'a Checkpoint,
    dtype: DType,
    device: Device,
    consumed: BTreeSet<String>,
    vision_loaded: bool,
}

impl<'a> CheckpointSource<'a> {
    /// Reads from `checkpoint`, converting to `dtype` on `device`.
    pub fn new(checkpoint: &'a Checkpoint, dtype: DType, device: Device) -> Self {
        CheckpointSource {
            checkpoint,
            dtype,
            device,
            consumed: BTreeSet::new(),
            vision_loaded: false,
        }
    }

    /// Records that the vision tower was read from this source too, so that
    /// [`check_all_consumed`](Self::check_all_consumed) also holds its tensors to account.
    pub fn mark_vision_loaded(&mut self) {
        self.vision_loaded = true;
    }

    /// Fails naming the first tensor of the checkpoint that no parameter consumed (`ignored`
    /// names excepted, and the vision encoder's and projector's unless they were loaded).
    pub fn check_all_consumed(&self, ignored: &BTreeSet<String>) -> Result<()> {
        let unused: Vec<&str> = self
            .checkpoint
            .names()
            .into_iter()
            .filter(|n| !self.consumed.contains(*n) && !ignored.contains(*n))
            .filter(|n| self.vision_loaded || !OTHER_PARTS.iter().any(|p| n.starts_with(p)))
            .collect();
        match unused.first() {
            None => Ok(()),
            Some(first) => Err(Error::file(
                self.checkpoint.path(),
                format!(
                    "tensor {first:?} is not a parameter of this model ({} unused tensors in all)",
                    unused.len()
                ),
            )),
        }
    }
}

impl WeightSource for CheckpointSource<'_> {
    fn has(&self, name: &str) -> bool {
        self.checkpoint.contains(name)
    }

    /// Compressed-tensors layout: `name` holds F8_E4M3 codes `[out, in]`, `{name}_scale` one
    /// float per output channel (`[out, 1]` or `[out]`, f32/bf16/f16), `W ≈ codes · scale`.
    fn take_fp8(&mut self, name: &str, shape: &[usize]) -> Result<Quantized> {
        let info = self.checkpoint.info(name)?;
        if info.dtype != DType::F8E4M3 {
            return Err(Error::file(
                &info.file,
                format!("tensor {name:?} has dtype {}, expected F8_E4M3 codes", info.dtype),
            ));
        }
        let codes = self.checkpoint.load_expect(name, shape, DType::F8E4M3, Device::Cpu)?;
        let scale_name = format!("{name}_scale");
        let scale_info = self.checkpoint.info(&scale_name)?;
        let out = shape[0];
        let per_channel = scale_info.shape == [out, 1] || scale_info.shape == [out];
        if !per_channel || !matches!(scale_info.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::file(
                &scale_info.file,
                format!(
                    "tensor {scale_name:?} is {} {:?}, expected one float per output channel ([{out}, 1])",
                    scale_info.dtype, scale_info.shape
                ),
            ));
        }
        let scales = self
            .checkpoint
            .load(&scale_name, Device::Cpu)?
            .to_dtype(DType::F32)?
            .reshape(&[out, 1])?;
        if let Some(bad) = scales.to_f32_vec()?.into_iter().find(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::file(
                &scale_info.file,
                format!("tensor {scale_name:?} holds the scale {bad}; scales must be finite and > 0"),
            ));
        }
        self.consumed.insert(name.to_string());
        self.consumed.insert(scale_name);
        Ok(Quantized {
            values: codes.to_device(self.device)?,
            scales: scales.to_device(self.device)?,
            granularity: Granularity::PerRow,
        })
    }

    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let info = self.checkpoint.info(name)?;
        if !matches!(info.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::file(
                &info.file,
                format!(
                    "tensor {name:?} has dtype {}, expected a float (f32, f16, bf16)",
                    info.dtype
                ),
            ));
        }
        let tensor = self.checkpoint.load_expect(name, shape, info.dtype, Device::Cpu)?;
        self.consumed.insert(name.to_string());
        tensor.to_dtype(self.dtype)?.to_device(self.device)
    }
}

/// Seeded random weights for presets: ones for norm weights, N(0, 1) for the embedding, and
/// N(0, 1/fan_in) for every matrix so that activations keep unit scale through the layers and
/// routing and logits are far from degenerate. Values come from `l4_kernels::random` (one
/// counter-based stream per tensor), made directly on the target device: the same model on the
/// CPU and on a GPU, up to a few f32 ulps before rounding into the dtype.
#[derive(Debug)]
pub struct RandomSource {
    seed: u64,
    dtype: DType,
    device: Device,
}

impl RandomSource {
    /// Weights drawn from `seed`.
    pub fn new(seed: u64, dtype: DType, device: Device) -> Self {
        RandomSource { seed, dtype, device }
    }
}

impl WeightSource for RandomSource {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if name.ends_with("norm.weight") {
            return Tensor::full(1.0, shape, self.dtype, self.device);
        }
        // Every weight here is applied with its dimension 1 as the reduction: `[out, in]`
        // linears, and the fused experts `[e, in, out]` applied as x·W.
        let std = match name.ends_with("embed_tokens.weight") {
            true => 1.0,
            false => 1.0 / (shape.get(1).copied().unwrap_or(1).max(1) as f64).sqrt(),
        };
        // Each tensor's stream is keyed by its name (FNV-1a), so adding or reordering tensors
        // does not change the others.
        let name_hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        // Made where it will live: a CUDA device fills gigabytes of experts without the host.
        l4_kernels::random::normal(shape, self.dtype, self.seed ^ name_hash, std, self.device)
    }
}
