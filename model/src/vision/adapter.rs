//! The vision adapter (HF `Llama4VisionPixelShuffleMLP`, llama4-spec.md §5.3 step 7): pixel
//! shuffle, then a bias-free two-layer MLP with an exact GELU after **both** layers.

use l4_core::Result;
use l4_core::Tensor;
use l4_kernels::ops;

use super::pixel_shuffle::pixel_shuffle;
use super::spec::VisionSpec;
use crate::parts::linear::Linear;
use crate::weights::{VisionTensor, WeightSource};

/// The adapter's weights.
#[derive(Clone, Debug)]
pub struct Adapter {
    shuffle_factor: usize,
    fc1: Linear, // [do, fv]
    fc2: Linear, // [do, do]
}

impl Adapter {
    /// Reads the adapter of `spec` from `source`.
    pub fn build(spec: &VisionSpec, source: &mut dyn WeightSource) -> Result<Self> {
        Ok(Adapter {
            shuffle_factor: spec.shuffle_factor,
            fc1: Linear::from_hf_weight(&VisionTensor::AdapterFc1.take(source, spec)?)?,
            fc2: Linear::from_hf_weight(&VisionTensor::AdapterFc2.take(source, spec)?)?,
        })
    }

    /// Encoder states `[n, np, dv]` → features `[n, tv, do]`.
    pub fn forward(&self, encoded: &Tensor) -> Result<Tensor> {
        let shuffled = pixel_shuffle(encoded, self.shuffle_factor)?; // [n, tv, fv]
        let hidden = ops::gelu(&self.fc1.forward(&shuffled)?)?; // [n, tv, do]
        ops::gelu(&self.fc2.forward(&hidden)?)
    }
}
