//! The multimodal projector (HF `Llama4MultiModalProjector`): one bias-free linear from the
//! adapter's width into the text model's.

use l4_core::{Result, Tensor};

use super::spec::VisionSpec;
use crate::parts::linear::Linear;
use crate::weights::{VisionTensor, WeightSource};

/// The projector's weight.
#[derive(Clone, Debug)]
pub struct Projector {
    linear: Linear, // [d, do]
}

impl Projector {
    /// Reads the projector of `spec` from `source`.
    pub fn build(spec: &VisionSpec, source: &mut dyn WeightSource) -> Result<Self> {
        Ok(Projector {
            linear: Linear::from_hf_weight(&VisionTensor::Projector.take(source, spec)?)?,
        })
    }

    /// Adapter features `[.., do]` → `[.., d]`.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        self.linear.forward(features)
    }
}
