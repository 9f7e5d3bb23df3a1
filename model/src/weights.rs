//! The one table of checkpoint tensor names, and the sources that fill it.
//!
//! Every HF weight name l4lab reads is produced here, from the resolved [`ModelSpec`]; the model
//! builder asks a [`WeightSource`] for each by name and shape. Loading from a checkpoint then
//! checks the converse: every tensor in the files was consumed.

use std::collections::BTreeSet;

use l4_core::checkpoint::Checkpoint;
use l4_core::{DType, Device, Error, Result, Tensor};

use crate::hf_config::HfArchitecture;
use crate::spec::{Ffn, ModelSpec};

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

/// Supplies parameter tensors by name and shape.
pub trait WeightSource {
    /// The tensor `name` of `shape`, in `dtype` on `device`.
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor>;
}

/// Tensors from a safetensors checkpoint, converted to the compute dtype.
#[derive(Debug)]
pub struct CheckpointSource<'a> {
    checkpoint: &'a Checkpoint,
    dtype: DType,
    device: Device,
    consumed: BTreeSet<String>,
}

impl<'a> CheckpointSource<'a> {
    /// Reads from `checkpoint`, converting to `dtype` on `device`.
    pub fn new(checkpoint: &'a Checkpoint, dtype: DType, device: Device) -> Self {
        CheckpointSource {
            checkpoint,
            dtype,
            device,
            consumed: BTreeSet::new(),
        }
    }

    /// Fails naming the first tensor of the checkpoint that no parameter consumed (tensors of
    /// the vision encoder and projector, and `ignored` names, excepted).
    pub fn check_all_consumed(&self, ignored: &BTreeSet<String>) -> Result<()> {
        let unused: Vec<&str> = self
            .checkpoint
            .names()
            .into_iter()
            .filter(|n| !self.consumed.contains(*n) && !ignored.contains(*n))
            .filter(|n| !OTHER_PARTS.iter().any(|p| n.starts_with(p)))
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
