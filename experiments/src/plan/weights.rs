//! Weight memory of a resolved model: every parameter of the text model counted by group, each
//! group stored in the compute dtype or, where the FP8 recipe quantizes it, as e4m3 codes (one
//! byte) plus their f32 scales, exactly as `Llama4::with_fp8` stores them.

use l4_core::DType;
use l4_kernels::quant::Granularity;
use l4_model::parts::fp8::Fp8Mode;
use l4_model::vision::VisionSpec;
use l4_model::{Ffn, ModelSpec};

/// Bytes of one f32 scale.
const SCALE_BYTES: u64 = 4;

/// One group of parameters and the bytes they take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightGroup {
    /// What the group holds, e.g. `routed experts`.
    pub name: &'static str,
    /// Parameters (scales not counted).
    pub params: u64,
    /// Bytes, scales included.
    pub bytes: u64,
    /// Parameters stored as e4m3 codes.
    pub fp8_params: u64,
}

/// The weight memory of a model, by group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightMemory {
    /// The groups in the order of the forward pass; empty groups are left out.
    pub groups: Vec<WeightGroup>,
}

impl WeightMemory {
    /// Every parameter.
    pub fn params(&self) -> u64 {
        self.groups.iter().map(|g| g.params).sum()
    }

    /// Every byte.
    pub fn bytes(&self) -> u64 {
        self.groups.iter().map(|g| g.bytes).sum()
    }

    /// Parameters stored in FP8.
    pub fn fp8_params(&self) -> u64 {
        self.groups.iter().map(|g| g.fp8_params).sum()
    }
}

/// How one weight matrix is stored.
#[derive(Clone, Copy, Debug)]
enum Storage {
    /// In the compute dtype, this many bytes an element.
    Compute(u64),
    /// e4m3 codes with f32 scales grouped by this granularity.
    Fp8(Granularity),
}

/// Parameters and bytes of a weight `[out, inputs]` stored as `storage`.
fn matrix(out: usize, inputs: usize, storage: Storage) -> (u64, u64, u64) {
    let params = (out * inputs) as u64;
    match storage {
        Storage::Compute(size) => (params, params * size, 0),
        Storage::Fp8(granularity) => {
            let scales = match granularity {
                Granularity::PerTensor => 1,
                Granularity::PerRow => out,
                Granularity::PerColumn => inputs,
                Granularity::Block { rows, cols } => out.div_ceil(rows) * inputs.div_ceil(cols),
            } as u64;
            (params, params + scales * SCALE_BYTES, params)
        }
    }
}

/// Accumulates matrices into named groups.
struct Groups {
    groups: Vec<WeightGroup>,
}

impl Groups {
    fn add(&mut self, name: &'static str, (params, bytes, fp8_params): (u64, u64, u64)) {
        let group = match self.groups.iter_mut().find(|g| g.name == name) {
            Some(group) => group,
            None => {
                self.groups.push(WeightGroup {
                    name,
                    params: 0,
                    bytes: 0,
                    fp8_params: 0,
                });
                self.groups.last_mut().expect("just pushed")
            }
        };
        group.params += params;
        group.bytes += bytes;
        group.fp8_params += fp8_params;
    }

    /// A SwiGLU block of width `f` on model width `d`: gate and up `[f, d]`, down `[d, f]`.
    fn swiglu(&mut self, name: &'static str, d: usize, f: usize, storage: Storage) {
        self.add(name, matrix(f, d, storage));
        self.add(name, matrix(f, d, storage));
        self.add(name, matrix(d, f, storage));
    }
}

/// The weight memory of `spec` (and of `vision`, the vision tower, when given) with every
/// weight in `dtype` except those `fp8` stores as e4m3: the routed experts of the recipe's
/// layers (fused gate/up `[2f, d]` and down `[d, f]` per expert, as the model converts them),
/// and with [`Fp8Mode::All`] also attention, dense MLPs and shared experts. Norms, routers, the
/// embedding, the lm_head and the vision tower stay in `dtype`. [`Fp8Mode::Dequant`] runs its
/// weights dequantized, so it takes the memory of [`Fp8Mode::None`].
pub fn weight_memory(spec: &ModelSpec, vision: Option<&VisionSpec>, dtype: DType, fp8: Fp8Mode) -> WeightMemory {
    let size = dtype.size_in_bytes() as u64;
    let compute = Storage::Compute(size);
    let quantized = match fp8.dequantizes() {
        true => compute,
        false => Storage::Fp8(fp8.weight_granularity()),
    };
    let dense = match fp8.quantizes_dense() {
        true => quantized,
        false => compute,
    };
    let (d, v) = (spec.hidden_size, spec.vocab_size);
    let (q_width, kv_width) = (spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim);
    let mut groups = Groups { groups: Vec::new() };
    groups.add("embedding", matrix(v, d, compute));
    for (i, layer) in spec.layers.iter().enumerate() {
        groups.add("attention (q, k, v, o)", matrix(q_width, d, dense));
        groups.add("attention (q, k, v, o)", matrix(kv_width, d, dense));
        groups.add("attention (q, k, v, o)", matrix(kv_width, d, dense));
        groups.add("attention (q, k, v, o)", matrix(d, q_width, dense));
        // The attention and FFN RMSNorms; QK-norm has no weight.
        groups.add("norms", matrix(2, d, compute));
        match &layer.ffn {
            Ffn::Dense { intermediate } => groups.swiglu("dense MLP", d, *intermediate, dense),
            Ffn::Moe(moe) => {
                groups.add("routers", matrix(moe.num_experts, d, compute));
                let experts = match fp8.quantizes_experts(i, spec.num_layers()) {
                    true => quantized,
                    false => compute,
                };
                let f = moe.expert_intermediate;
                for _ in 0..moe.num_experts {
                    groups.add("routed experts", matrix(2 * f, d, experts));
                    groups.add("routed experts", matrix(d, f, experts));
                }
                if let Some(shared) = moe.shared_intermediate {
                    groups.swiglu("shared experts", d, shared, dense);
                }
            }
        }
    }
    groups.add("norms", matrix(1, d, compute));
    if !spec.tie_word_embeddings {
        groups.add("lm_head", matrix(v, d, compute));
    }
    if let Some(vision) = vision {
        let params = vision.param_count() as u64;
        groups.add("vision tower", (params, params * size, 0));
    }
    WeightMemory { groups: groups.groups }
}

#[cfg(test)]
mod tests {
    use super::*;
    use l4_model::PRESETS;

    #[test]
    fn every_parameter_is_counted_once() {
        for preset in PRESETS {
            let spec = preset.spec();
            let memory = weight_memory(&spec, None, DType::F32, Fp8Mode::None);
            assert_eq!(memory.params(), spec.param_counts().0 as u64, "{}", preset.name);
            assert_eq!(memory.bytes(), 4 * memory.params(), "{}", preset.name);
        }
    }

    #[test]
    fn block_scaled_experts_take_one_scale_per_128_by_128_block() {
        // Scout's experts: gate/up [16384, 5120] has 128 · 40 blocks, down [5120, 8192] has
        // 40 · 64: 7680 f32 scales per expert, 16 experts on each of layers 1..=46.
        let spec = l4_model::preset("llama4-scout-17b-16e").unwrap().spec();
        let memory = weight_memory(&spec, None, DType::BF16, Fp8Mode::ExpertsBlock);
        let routed = memory.groups.iter().find(|g| g.name == "routed experts").unwrap();
        let per_layer = 16 * 3 * 5120 * 8192u64;
        let expected = 46 * (per_layer + 16 * 7680 * 4) + 2 * 2 * per_layer;
        assert_eq!(routed.bytes, expected);
        // Dequant runs dequantized: the same memory as none.
        assert_eq!(
            weight_memory(&spec, None, DType::BF16, Fp8Mode::Dequant),
            weight_memory(&spec, None, DType::BF16, Fp8Mode::None)
        );
    }
}
