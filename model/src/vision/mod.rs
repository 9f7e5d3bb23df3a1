//! Llama 4's early-fusion vision path (llama4-spec.md §5): image tiles through a ViT encoder,
//! a pixel-shuffle adapter and a projector into the text width; the features then replace the
//! embeddings of the `<|patch|>` tokens of the prompt.
//!
//! * [`spec`]: the resolved `vision_config`;
//! * [`encoder`], [`rope2d`]: the ViT and its 2-D rotary embedding;
//! * [`pixel_shuffle`], [`adapter`], [`projector`]: from patch states to text-width features;
//! * [`fusion`]: the scatter into the token embeddings;
//! * [`image_file`], [`resize`], [`preprocess`]: an image file to `pixel_values`, as HF's
//!   image processor makes them; [`layout`]: the image's tokens in the prompt.
//!
//! Parts call `l4_kernels::ops` only, so the tower runs on the device its weights live on;
//! preprocessing runs on the host.

pub mod adapter;
pub mod encoder;
pub mod fusion;
pub mod image_file;
pub mod layout;
pub mod pixel_shuffle;
pub mod preprocess;
pub mod projector;
pub mod resize;
pub mod rope2d;
pub mod spec;

use l4_core::{DType, Device, Result, Tensor};

pub use spec::VisionSpec;

use crate::weights::WeightSource;

/// What the vision path produces for a batch of tiles.
#[derive(Debug)]
pub struct VisionOutput {
    /// `[n, tv, do]`: the adapter's output (HF's `get_image_features`).
    pub adapter_output: Tensor,
    /// `[n·tv, d]`: the projected features, one row per `<|patch|>` token, tiles in order.
    pub features: Tensor,
}

/// The vision encoder, adapter and projector of a multimodal checkpoint, resident on one device.
#[derive(Debug)]
pub struct VisionModel {
    spec: VisionSpec,
    dtype: DType,
    device: Device,
    encoder: encoder::Encoder,
    adapter: adapter::Adapter,
    projector: projector::Projector,
}

impl VisionModel {
    /// Builds the vision path of `spec`, asking `source` for every tensor, in `dtype` on `device`.
    pub fn build(spec: VisionSpec, source: &mut dyn WeightSource, dtype: DType, device: Device) -> Result<Self> {
        let rope = rope2d::Rope2d::new(&spec, dtype, device)?;
        let encoder = encoder::Encoder::build(&spec, source, rope)?;
        let adapter = adapter::Adapter::build(&spec, source)?;
        let projector = projector::Projector::build(&spec, source)?;
        Ok(VisionModel {
            spec,
            dtype,
            device,
            encoder,
            adapter,
            projector,
        })
    }

    /// The resolved plan.
    pub fn spec(&self) -> &VisionSpec {
        &self.spec
    }

    /// `pixel_values [n, c, px, px]` (any float dtype, any device) → features of every tile, in
    /// the weights' dtype on their device.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<VisionOutput> {
        let pixel_values = l4_kernels::ops::cast(&pixel_values.to_device(self.device)?, self.dtype)?;
        let encoded = self.encoder.forward(&pixel_values)?; // [n, np, dv]
        let adapter_output = self.adapter.forward(&encoded)?; // [n, tv, do]
        let width = self.spec.output_dim;
        let flat = adapter_output.reshape(&[adapter_output.elem_count() / width, width])?;
        let features = self.projector.forward(&flat)?; // [n·tv, d]
        Ok(VisionOutput {
            adapter_output,
            features,
        })
    }
}
