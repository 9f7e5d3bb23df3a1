//! The vision encoder (llama4-spec.md §5.3): a ViT over one tile at a time.
//!
//! Patches are embedded by a bias-free linear over their unfolded pixels (a stride-p
//! convolution), the class token is appended **after** them, learned positions are added, and
//! a pre-LayerNorm opens a stack of pre-norm layers whose projections all carry biases:
//! bidirectional attention with the 2-D RoPE, then a GELU MLP. A post-LayerNorm closes it.
//! Tiles never see each other.

use l4_core::{Error, Result, Tensor};
use l4_kernels::ops;

use super::rope2d::Rope2d;
use super::spec::VisionSpec;
use crate::parts::linear::Linear;
use crate::weights::{VisionLayerTensor as T, VisionTensor, WeightSource};

/// `y = x·Wᵀ + b`.
#[derive(Clone, Debug)]
struct BiasedLinear {
    linear: Linear,
    bias: Tensor, // [out]
}

impl BiasedLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::add(&self.linear.forward(x)?, &self.bias)
    }
}

/// A LayerNorm's `[dv]` weight and bias.
#[derive(Clone, Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

#[derive(Clone, Debug)]
struct EncoderLayer {
    input_norm: LayerNorm,
    q: BiasedLinear, // [dv, dv]
    k: BiasedLinear, // [dv, dv]
    v: BiasedLinear, // [dv, dv]
    o: BiasedLinear, // [dv, dv]
    post_attention_norm: LayerNorm,
    fc1: BiasedLinear, // [fv, dv]
    fc2: BiasedLinear, // [dv, fv]
}

/// The encoder's weights, resident on one device.
#[derive(Debug)]
pub struct Encoder {
    spec: VisionSpec,
    patch_embedding: Linear, // [dv, c·p²]
    class_embedding: Tensor, // [dv]
    positions: Tensor,       // [np + 1, dv]
    pre_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_norm: LayerNorm,
    rope: Rope2d,
}

fn biased(source: &mut dyn WeightSource, spec: &VisionSpec, i: usize, w: T, b: T) -> Result<BiasedLinear> {
    Ok(BiasedLinear {
        linear: Linear::from_hf_weight(&VisionTensor::Layer(i, w).take(source, spec)?)?,
        bias: VisionTensor::Layer(i, b).take(source, spec)?,
    })
}

fn norm(
    source: &mut dyn WeightSource,
    spec: &VisionSpec,
    weight: VisionTensor,
    bias: VisionTensor,
) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: weight.take(source, spec)?,
        bias: bias.take(source, spec)?,
    })
}

impl Encoder {
    /// Reads the encoder of `spec` from `source`; `rope` is the 2-D RoPE table on the weights'
    /// device.
    pub fn build(spec: &VisionSpec, source: &mut dyn WeightSource, rope: Rope2d) -> Result<Self> {
        let patch_embedding = Linear::from_hf_weight(&VisionTensor::PatchEmbedding.take(source, spec)?)?;
        let class_embedding = VisionTensor::ClassEmbedding.take(source, spec)?;
        let positions = VisionTensor::PositionEmbedding.take(source, spec)?;
        let pre_norm = norm(source, spec, VisionTensor::PreNormWeight, VisionTensor::PreNormBias)?;
        let layer_norm = |source: &mut dyn WeightSource, i: usize, w: T, b: T| {
            norm(source, spec, VisionTensor::Layer(i, w), VisionTensor::Layer(i, b))
        };
        let layers = (0..spec.num_layers)
            .map(|i| {
                Ok(EncoderLayer {
                    input_norm: layer_norm(source, i, T::InputNormWeight, T::InputNormBias)?,
                    q: biased(source, spec, i, T::QWeight, T::QBias)?,
                    k: biased(source, spec, i, T::KWeight, T::KBias)?,
                    v: biased(source, spec, i, T::VWeight, T::VBias)?,
                    o: biased(source, spec, i, T::OWeight, T::OBias)?,
                    post_attention_norm: layer_norm(source, i, T::PostAttentionNormWeight, T::PostAttentionNormBias)?,
                    fc1: biased(source, spec, i, T::Fc1Weight, T::Fc1Bias)?,
                    fc2: biased(source, spec, i, T::Fc2Weight, T::Fc2Bias)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let post_norm = norm(source, spec, VisionTensor::PostNormWeight, VisionTensor::PostNormBias)?;
        Ok(Encoder {
            spec: spec.clone(),
            patch_embedding,
            class_embedding,
            positions,
            pre_norm,
            layers,
            post_norm,
            rope,
        })
    }

    fn layer_norm(&self, x: &Tensor, norm: &LayerNorm) -> Result<Tensor> {
        ops::layer_norm(x, Some(&norm.weight), Some(&norm.bias), self.spec.layer_norm_eps)
    }

    /// `pixel_values [n, c, px, px]` → patch embeddings with the class token last, positions
    /// added: `[n, np + 1, dv]`.
    fn embed(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let s = &self.spec;
        let (n, g, p, c, dv) = (
            pixel_values.shape()[0],
            s.grid(),
            s.patch_size,
            s.num_channels,
            s.hidden_size,
        );
        // Unfold: patch (py, px) row-major, each flattened in (channel, ky, kx) order.
        let unfolded = ops::contiguous(pixel_values)?
            .reshape(&[n, c, g, p, g, p])?
            .permute(&[0, 2, 4, 1, 3, 5])?; // [n, g, g, c, p, p]
        let patches = ops::contiguous(&unfolded)?.reshape(&[n, g * g, c * p * p])?;
        let embedded = self.patch_embedding.forward(&patches)?; // [n, np, dv]
        let class = self.class_embedding.reshape(&[1, 1, dv])?.broadcast_as(&[n, 1, dv])?;
        let tokens = ops::cat(&[&embedded, &class], 1)?; // [n, np + 1, dv]
        ops::add(&tokens, &self.positions)
    }

    fn attention(&self, layer: &EncoderLayer, x: &Tensor) -> Result<Tensor> {
        let s = &self.spec;
        let (n, q_len) = (x.shape()[0], s.num_patches() + 1);
        let (hv, dhv) = (s.num_heads, s.head_dim);
        let heads = |t: Tensor| t.reshape(&[n, q_len, hv, dhv]);
        let q = self.rope.apply(&heads(layer.q.forward(x)?)?)?;
        let k = self.rope.apply(&heads(layer.k.forward(x)?)?)?;
        let v = heads(layer.v.forward(x)?)?;
        let by_head = |t: &Tensor| ops::contiguous(&t.permute(&[0, 2, 1, 3])?); // [n, hv, np + 1, dhv]
        let (q, k, v) = (by_head(&q)?, by_head(&k)?, by_head(&v)?);
        // Every position sees every position: no mask.
        let scores = ops::matmul(&q, &k.transpose(2, 3)?)?; // [n, hv, np + 1, np + 1]
        let probs = ops::softmax_last(&ops::scale(&scores, (dhv as f64).powf(-0.5))?)?;
        let attended = ops::matmul(&probs, &v)?; // [n, hv, np + 1, dhv]
        let merged = ops::contiguous(&attended.permute(&[0, 2, 1, 3])?)?.reshape(&[n, q_len, hv * dhv])?;
        layer.o.forward(&merged)
    }

    /// `pixel_values [n, c, px, px]` → the post-LayerNormed patch states without the class token,
    /// `[n, np, dv]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let s = &self.spec;
        let expected = [s.num_channels, s.image_size, s.image_size];
        if pixel_values.rank() != 4 || pixel_values.shape()[1..] != expected {
            return Err(Error::BadShape {
                op: "vision encoder",
                shape: pixel_values.shape().to_vec(),
                msg: format!(
                    "pixel_values must be [tiles, {}, {}, {}]",
                    expected[0], expected[1], expected[2]
                ),
            });
        }
        let mut h = self.layer_norm(&self.embed(pixel_values)?, &self.pre_norm)?; // [n, np + 1, dv]
        for layer in &self.layers {
            // h = h + attn(norm(h))
            let attended = self.attention(layer, &self.layer_norm(&h, &layer.input_norm)?)?;
            h = ops::add(&h, &attended)?;
            // h = h + fc2(gelu(fc1(norm(h))))
            let normed = self.layer_norm(&h, &layer.post_attention_norm)?;
            let mlp = layer.fc2.forward(&ops::gelu(&layer.fc1.forward(&normed)?)?)?;
            h = ops::add(&h, &mlp)?;
        }
        let h = self.layer_norm(&h, &self.post_norm)?;
        h.narrow(1, 0, s.num_patches()) // the class token is last
    }
}
