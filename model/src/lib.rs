//! `l4-model`: Llama 4 assembled from pluggable parts.
//!
//! * [`hf_config`]: a serde mirror of HF's `config.json` (the only place, with [`weights`], that
//!   knows HF names);
//! * [`spec`]: the resolved per-layer plan every other part reads;
//! * [`presets`]: the built-in models (Scout, Maverick, a Behemoth-shaped config, tiny test
//!   shapes), expressed as HF configs so they resolve through the same path as checkpoints;
//! * [`weights`]: the weight-name table and the sources that fill it (checkpoints, seeded random);
//! * [`parts`]: attention, RoPE, SwiGLU, MoE and the routing strategies;
//! * [`llama4`]: the decoder that assembles the parts; [`kv_cache`], [`generate`]: decoding;
//! * [`loader`]: a model from a checkpoint folder or a preset name; [`overrides`]: the same
//!   model with config-level options changed (for ablations);
//! * [`vision`]: the early-fusion vision path (encoder, adapter, projector, image preprocessing
//!   and the image's token layout).

pub mod generate;
pub mod hf_config;
pub mod kv_cache;
pub mod llama4;
pub mod loader;
pub mod overrides;
pub mod parts;
pub mod presets;
pub mod spec;
pub mod vision;
pub mod weights;

pub use hf_config::HfConfig;
pub use llama4::{Capture, ForwardOutput, Llama4};
pub use presets::{PRESETS, Preset, preset};
pub use spec::{Ffn, LayerSpec, ModelSpec, MoeSpec, Position, Span};
