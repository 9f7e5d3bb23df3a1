//! The Llama 4 text decoder, assembled from parts chosen by the per-layer plan.

use l4_core::{DType, Device, Error, Result, Tensor};
use l4_kernels::ops;
use l4_kernels::quant::{Granularity, Quantized};

use crate::kv_cache::KvCache;
use crate::parts::attention::{AttentionContext, AttentionShape, AttentionWeights, StepMasks, attention_forward};
use crate::parts::fp8::{Fp8Linear, Fp8Mode};
use crate::parts::linear::Linear;
use crate::parts::mlp::SwiGlu;
use crate::parts::moe::{Experts, FusedShared, Moe};
use crate::parts::rope::RotaryTable;
use crate::parts::router::{Routing, router_by_name};
use crate::spec::{Ffn, LayerSpec, ModelSpec};
use crate::vision::{VisionModel, fusion};
use crate::weights::{WeightNames, WeightSource};

/// A layer's feed-forward block.
#[derive(Debug)]
enum FfnBlock {
    Dense(Box<SwiGlu>),
    Moe(Box<Moe>),
}

#[derive(Debug)]
struct DecoderLayer {
    spec: LayerSpec,
    input_norm: Tensor, // [d]
    post_norm: Tensor,  // [d]
    attention: AttentionWeights,
    ffn: FfnBlock,
    /// On a GPU, the MoE block's shared expert in the routed layout, run inside the grouped
    /// expert launches (the block's own shared expert then views it).
    fused_shared: Option<FusedShared>,
}

/// What [`Llama4::forward`] should record besides the logits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    /// The hidden state entering the model and after each layer.
    pub hidden_states: bool,
    /// Each MoE layer's raw router logits.
    pub router_logits: bool,
}

/// The result of one forward step.
#[derive(Debug)]
pub struct ForwardOutput {
    /// `[b, t, v]` logits, in the compute dtype.
    pub logits: Tensor,
    /// With [`Capture::hidden_states`]: `L + 1` tensors `[b, t, d]`: the embeddings, then the
    /// residual stream after each layer (before the final norm).
    pub hidden_states: Vec<Tensor>,
    /// With [`Capture::router_logits`]: `(layer, [b·t, e])` for each MoE layer.
    pub router_logits: Vec<(usize, Tensor)>,
    /// With [`Capture::router_logits`]: each MoE layer's routing decision (loads, drops).
    pub routing: Vec<(usize, Routing)>,
}

/// A Llama 4 text model with its weights resident on one device.
#[derive(Debug)]
pub struct Llama4 {
    spec: ModelSpec,
    dtype: DType,
    device: Device,
    embed: Tensor, // [v, d]
    layers: Vec<DecoderLayer>,
    final_norm: Tensor, // [d]
    lm_head: Linear,    // [v, d] in HF layout
    /// RoPE's inverse frequencies `[dh/2]`, f32 on `device`: made once, read by every RoPE
    /// layer's QK prologue.
    rope_inv_freq: Tensor,
    /// The vision tower of a multimodal checkpoint, whose features replace image tokens.
    vision: Option<Box<VisionModel>>,
}

fn linear(source: &mut dyn WeightSource, name: String, shape: Vec<usize>) -> Result<Linear> {
    Linear::from_hf_weight(&source.take(&name, &shape)?)
}

fn swiglu(
    source: &mut dyn WeightSource,
    names: &WeightNames,
    i: usize,
    prefix: &str,
    d: usize,
    f: usize,
) -> Result<SwiGlu> {
    Ok(SwiGlu {
        gate: linear(source, names.layer(i, &format!("{prefix}gate_proj.weight")), vec![f, d])?,
        up: linear(source, names.layer(i, &format!("{prefix}up_proj.weight")), vec![f, d])?,
        down: linear(source, names.layer(i, &format!("{prefix}down_proj.weight")), vec![d, f])?,
    })
}

/// Layer `i`'s routed experts: HF's fused tensors, or, in a pre-quantized checkpoint, one e4m3
/// linear triple per expert (gate and up joined into one `d -> 2f` layer, gate rows first).
fn experts(source: &mut dyn WeightSource, names: &WeightNames, i: usize, [e, d, f]: [usize; 3]) -> Result<Experts> {
    if !source.has(&names.expert_linear(i, 0, "gate_proj")) {
        return Ok(Experts::Fused {
            gate_up: source.take(&names.layer(i, "feed_forward.experts.gate_up_proj"), &[e, d, 2 * f])?,
            down: source.take(&names.layer(i, "feed_forward.experts.down_proj"), &[e, f, d])?,
        });
    }
    let (mut gate_up, mut down) = (Vec::with_capacity(e), Vec::with_capacity(e));
    for j in 0..e {
        let gate = source.take_fp8(&names.expert_linear(i, j, "gate_proj"), &[f, d])?;
        let up = source.take_fp8(&names.expert_linear(i, j, "up_proj"), &[f, d])?;
        let joined = Quantized {
            values: ops::cat(&[&gate.values, &up.values], 0)?,
            scales: ops::cat(&[&gate.scales, &up.scales], 0)?,
            granularity: Granularity::PerRow,
        };
        gate_up.push(Linear::from_fp8(Fp8Linear::from_quantized(joined)?));
        let down_j = source.take_fp8(&names.expert_linear(i, j, "down_proj"), &[d, f])?;
        down.push(Linear::from_fp8(Fp8Linear::from_quantized(down_j)?));
    }
    Experts::per_expert(gate_up, down)
}

impl Llama4 {
    /// Builds the model of `spec`, asking `source` for every tensor named by `names`.
    pub fn build(
        spec: ModelSpec,
        names: &WeightNames,
        source: &mut dyn WeightSource,
        dtype: DType,
        device: Device,
    ) -> Result<Self> {
        let (d, v) = (spec.hidden_size, spec.vocab_size);
        let (q_width, kv_width) = (spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim);
        let embed = source.take(&names.embed_tokens(), &[v, d])?;
        let mut layers = Vec::with_capacity(spec.layers.len());
        for (i, layer) in spec.layers.iter().enumerate() {
            let input_norm = source.take(&names.layer(i, "input_layernorm.weight"), &[d])?;
            let post_norm = source.take(&names.layer(i, "post_attention_layernorm.weight"), &[d])?;
            let attention = AttentionWeights {
                q: linear(source, names.layer(i, "self_attn.q_proj.weight"), vec![q_width, d])?,
                k: linear(source, names.layer(i, "self_attn.k_proj.weight"), vec![kv_width, d])?,
                v: linear(source, names.layer(i, "self_attn.v_proj.weight"), vec![kv_width, d])?,
                o: linear(source, names.layer(i, "self_attn.o_proj.weight"), vec![d, q_width])?,
            };
            let ffn = match &layer.ffn {
                Ffn::Dense { intermediate } => {
                    FfnBlock::Dense(Box::new(swiglu(source, names, i, "feed_forward.", d, *intermediate)?))
                }
                Ffn::Moe(moe) => {
                    let (e, f) = (moe.num_experts, moe.expert_intermediate);
                    FfnBlock::Moe(Box::new(Moe {
                        router: linear(source, names.layer(i, "feed_forward.router.weight"), vec![e, d])?,
                        experts: experts(source, names, i, [e, d, f])?,
                        shared: match moe.shared_intermediate {
                            Some(fs) => Some(swiglu(source, names, i, "feed_forward.shared_expert.", d, fs)?),
                            None => None,
                        },
                        strategy: router_by_name(&moe.router)?,
                    }))
                }
            };
            layers.push(DecoderLayer {
                spec: layer.clone(),
                input_norm,
                post_norm,
                attention,
                ffn,
                fused_shared: None,
            });
        }
        let final_norm = source.take(&names.final_norm(), &[d])?;
        let lm_head = match spec.tie_word_embeddings {
            true => Linear::from_hf_weight(&embed)?,
            false => linear(source, names.lm_head(), vec![v, d])?,
        };
        let rope_inv_freq = RotaryTable::new(&spec.rope, spec.head_dim).inv_freq_on(device)?;
        let mut model = Llama4 {
            spec,
            dtype,
            device,
            embed,
            layers,
            final_norm,
            lm_head,
            rope_inv_freq,
            vision: None,
        };
        model.fuse_shared_experts()?;
        Ok(model)
    }

    /// On a GPU, puts every MoE block's shared expert into the routed experts' layout so it runs
    /// inside the grouped expert launches, the block then viewing that copy (weights held once);
    /// drops the fused form where the shared expert cannot join them (FP8, f32). Called after
    /// anything that replaces a shared expert. On the CPU nothing is fused.
    fn fuse_shared_experts(&mut self) -> Result<()> {
        let device = self.device;
        for layer in &mut self.layers {
            layer.fused_shared = None;
            let FfnBlock::Moe(moe) = &mut layer.ffn else { continue };
            let Some(shared) = moe.shared.as_ref().filter(|_| device.is_cuda()) else {
                continue;
            };
            if let Some(fused) = FusedShared::from_swiglu(shared)? {
                moe.shared = Some(fused.to_swiglu()?);
                layer.fused_shared = Some(fused);
            }
        }
        Ok(())
    }

    /// This model with `vision` as its vision tower (built on the same device and dtype).
    pub fn with_vision(mut self, vision: VisionModel) -> Self {
        self.vision = Some(Box::new(vision));
        self
    }

    /// The vision tower, if the checkpoint has one.
    pub fn vision(&self) -> Option<&VisionModel> {
        self.vision.as_deref()
    }

    /// The resolved plan.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device holding the weights.
    pub fn device(&self) -> Device {
        self.device
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.spec.layers.iter().map(|l| l.span))
    }

    /// Token embeddings of `ids [b, t]` (I64 or I32): `[b, t, d]` on the model's device.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        if ids.rank() != 2 {
            return Err(Error::BadShape {
                op: "llama4 forward",
                shape: ids.shape().to_vec(),
                msg: "input_ids must be [batch, tokens]".into(),
            });
        }
        ops::embedding(&self.embed, &ids.to_device(self.device)?)
    }

    /// Embeddings of `ids [b, t]` with image features fused in: with `pixel_values [n, c, px,
    /// px]`, the vision tower's features (`tv` per tile, tiles in order) replace the embeddings
    /// of the image tokens, which must number exactly `n·tv`. Without, the token embeddings.
    pub fn embed_with_images(&self, ids: &Tensor, pixel_values: Option<&Tensor>) -> Result<Tensor> {
        let embeddings = self.embed(ids)?;
        let Some(pixel_values) = pixel_values else {
            return Ok(embeddings);
        };
        let vision = self.vision().ok_or_else(|| {
            Error::invalid(
                "llama4 forward",
                "pixel_values given, but this model has no vision encoder (its config.json has no vision_config)",
            )
        })?;
        let spec = vision.spec();
        let tiles = pixel_values.shape().first().copied().unwrap_or(0);
        let tokens = fusion::count_image_tokens(ids, spec.image_token_id)?;
        if tokens != tiles * spec.tokens_per_tile() {
            return Err(Error::invalid(
                "llama4 forward",
                format!(
                    "pixel_values holds {tiles} tiles of {} features each ({} in all), but input_ids hold {tokens} image \
                     tokens (id {})",
                    spec.tokens_per_tile(),
                    tiles * spec.tokens_per_tile(),
                    spec.image_token_id
                ),
            ));
        }
        let features = vision.forward(pixel_values)?.features;
        fusion::scatter_image_features(&embeddings, ids, spec.image_token_id, &features)
    }

    /// One step: `ids [b, t]` (I64 or I32) at positions `cache.position()..+t` → logits
    /// `[b, t, v]`, extending `cache`.
    pub fn forward(&self, ids: &Tensor, cache: &mut KvCache, capture: Capture) -> Result<ForwardOutput> {
        self.forward_embeddings_with_ids(&self.embed(ids)?, Some(ids), cache, capture)
    }

    /// One step from input embeddings `h [b, t, d]` (from [`Self::embed`] or
    /// [`Self::embed_with_images`]) at positions `cache.position()..+t` → logits `[b, t, v]`,
    /// extending `cache`.
    pub fn forward_embeddings(&self, h: &Tensor, cache: &mut KvCache, capture: Capture) -> Result<ForwardOutput> {
        self.forward_embeddings_with_ids(h, None, cache, capture)
    }

    /// As [`Self::forward_embeddings`], with the step's token ids `[b, t]` for routing
    /// strategies that route by id (`hash`).
    pub fn forward_embeddings_with_ids(
        &self,
        h: &Tensor,
        ids: Option<&Tensor>,
        cache: &mut KvCache,
        capture: Capture,
    ) -> Result<ForwardOutput> {
        let d = self.spec.hidden_size;
        // Routing by id reads them on the host (ids are small).
        let token_ids: Option<Vec<i64>> = match ids {
            Some(ids) if self.routes_by_id() => {
                Some(ids.to_device(Device::Cpu)?.to_dtype(DType::I64)?.to_vec::<i64>()?)
            }
            _ => None,
        };
        let [b, t, width] = h.shape()[..] else {
            return Err(Error::BadShape {
                op: "llama4 forward",
                shape: h.shape().to_vec(),
                msg: "input embeddings must be [batch, tokens, hidden]".into(),
            });
        };
        if width != d {
            return Err(Error::BadShape {
                op: "llama4 forward",
                shape: h.shape().to_vec(),
                msg: format!("input embeddings must be {d} wide"),
            });
        }
        let start = cache.position();
        let eps = self.spec.rms_norm_eps;
        let context = AttentionContext {
            shape: AttentionShape {
                num_heads: self.spec.num_heads,
                num_kv_heads: self.spec.num_kv_heads,
                head_dim: self.spec.head_dim,
            },
            inv_freq: &self.rope_inv_freq,
            rms_norm_eps: eps,
        };

        let mut h = h.to_device(self.device)?; // [b, t, d]
        let mut output = ForwardOutput {
            logits: h.clone(),
            hidden_states: Vec::new(),
            router_logits: Vec::new(),
            routing: Vec::new(),
        };
        if capture.hidden_states {
            output.hidden_states.push(h.clone());
        }
        let mut masks = StepMasks::new(self.dtype, self.device);
        for (i, layer) in self.layers.iter().enumerate() {
            // h = h + attn(norm(h))
            let normed = ops::rms_norm(&h, Some(&layer.input_norm), eps)?;
            let attended = attention_forward(
                context,
                &layer.spec,
                &layer.attention,
                &normed,
                start,
                cache.layer_mut(i),
                &mut masks,
            )?;
            h = ops::add(&h, &attended)?;
            // h = h + ffn(norm(h))
            let normed = ops::rms_norm(&h, Some(&layer.post_norm), eps)?.reshape(&[b * t, d])?;
            let ffn_out = match &layer.ffn {
                FfnBlock::Dense(mlp) => mlp.forward(&normed)?,
                FfnBlock::Moe(moe) => {
                    let out =
                        moe.forward_with_fused_shared(&normed, token_ids.as_deref(), layer.fused_shared.as_ref())?;
                    if capture.router_logits {
                        output.router_logits.push((i, out.router_logits));
                        output.routing.push((i, out.routing));
                    }
                    out.output
                }
            };
            h = ops::add(&h, &ffn_out.reshape(&[b, t, d])?)?;
            if capture.hidden_states {
                output.hidden_states.push(h.clone());
            }
        }
        cache.advance(t);
        output.logits = self.lm_head.forward(&ops::rms_norm(&h, Some(&self.final_norm), eps)?)?;
        Ok(output)
    }
    /// The same model with every MoE layer routed by `spec` (see
    /// [`router_by_name`]), e.g. `softmax-topk:k=2`.
    pub fn with_router(mut self, spec: &str) -> Result<Self> {
        for layer in &mut self.layers {
            if let FfnBlock::Moe(moe) = &mut layer.ffn {
                moe.strategy = router_by_name(spec)?;
            }
        }
        Ok(self)
    }

    /// Whether some MoE layer's strategy needs token ids.
    fn routes_by_id(&self) -> bool {
        self.layers
            .iter()
            .any(|l| matches!(&l.ffn, FfnBlock::Moe(moe) if moe.strategy.name() == "hash"))
    }

    /// Whether any weight runs in FP8.
    pub fn holds_fp8(&self) -> bool {
        let fp8_mlp = |m: &SwiGlu| m.gate.is_fp8() || m.up.is_fp8() || m.down.is_fp8();
        self.layers.iter().any(|layer| {
            let a = &layer.attention;
            let attention = a.q.is_fp8() || a.k.is_fp8() || a.v.is_fp8() || a.o.is_fp8();
            let ffn = match &layer.ffn {
                FfnBlock::Dense(mlp) => fp8_mlp(mlp),
                FfnBlock::Moe(moe) => {
                    moe.shared.as_ref().is_some_and(fp8_mlp)
                        || matches!(&moe.experts, Experts::PerExpert { gate_up, .. } if gate_up.iter().any(Linear::is_fp8))
                }
            };
            attention || ffn
        })
    }

    /// The same model with the weights `mode` selects held in e4m3, run in FP8 (`experts`,
    /// `experts-block`, `all`) or dequantized into the compute dtype (`dequant`); `none` changes nothing. The
    /// router, the embedding and the lm_head always stay in the compute dtype.
    pub fn with_fp8(mut self, mode: Fp8Mode) -> Result<Self> {
        mode.check_dtype(self.dtype)?;
        let (dtype, num_layers) = (self.dtype, self.layers.len());
        let convert = |l: &Linear| match (mode.dequantizes(), mode.weight_granularity()) {
            (true, _) => l.to_dequantized(dtype),
            (false, Granularity::PerRow) => l.to_fp8(),
            (false, blocks) => l.to_fp8_with(blocks),
        };
        // Weights stored in FP8 run in FP8 unless the mode asks for the compute dtype.
        let stored = |l: &Linear| match mode.dequantizes() && l.is_fp8() {
            true => l.to_dequantized(dtype),
            false => Ok(l.clone()),
        };
        let convert_mlp = |m: &SwiGlu| -> Result<SwiGlu> {
            Ok(SwiGlu {
                gate: convert(&m.gate)?,
                up: convert(&m.up)?,
                down: convert(&m.down)?,
            })
        };
        for (i, layer) in self.layers.iter_mut().enumerate() {
            if mode.quantizes_dense() {
                let a = &layer.attention;
                layer.attention = AttentionWeights {
                    q: convert(&a.q)?,
                    k: convert(&a.k)?,
                    v: convert(&a.v)?,
                    o: convert(&a.o)?,
                };
                match &mut layer.ffn {
                    FfnBlock::Dense(mlp) => **mlp = convert_mlp(mlp)?,
                    FfnBlock::Moe(moe) => {
                        if let Some(shared) = &moe.shared {
                            moe.shared = Some(convert_mlp(shared)?);
                        }
                    }
                }
            }
            if let FfnBlock::Moe(moe) = &mut layer.ffn {
                if mode.quantizes_experts(i, num_layers) {
                    moe.experts = moe.experts.map_linears(convert)?;
                } else if let Experts::PerExpert { .. } = moe.experts {
                    moe.experts = moe.experts.map_linears(stored)?;
                }
            }
        }
        self.fuse_shared_experts()?;
        Ok(self)
    }
}
