//! FP8 (e4m3) weights in the model: Meta's Llama 4 recipe and the ablations around it.
//!
//! Meta's `fp8_mixed` recipe quantizes only the routed experts of the MoE layers, skipping the
//! first and the last layer: weights per output channel, activations dynamically per token
//! with the activation amax bounded at 1200, `y = (x_q·W_qᵀ)·s_x·s_w`
//! (../shared/reference/llama4-spec.md §6.3). [`Fp8Mode`] selects that recipe, the same layers
//! with DeepSeek-V3's block scales, all projections, none, or the weight-only ablation that runs
//! dequantized weights.

use std::fmt;
use std::str::FromStr;

use l4_core::{DType, Error, Result, Tensor};
use l4_kernels::fp8_gemm::{BLOCK_K, Epilogue, fp8_gemm};
use l4_kernels::ops;
use l4_kernels::quant::{Granularity, Quantized, dequantize, quantize};

/// The bound on an activation row's amax (Meta's `activation_scale_ub`).
pub const ACTIVATION_SCALE_UB: f32 = 1200.0;

/// Which weights run in FP8.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Fp8Mode {
    /// Everything in the compute dtype (an FP8 checkpoint's weights are dequantized).
    #[default]
    None,
    /// Meta's recipe: the routed experts of MoE layers other than the first and the last
    /// layer, with FP8 weights and FP8 per-token activations.
    Experts,
    /// The layers of [`Fp8Mode::Experts`] with DeepSeek-V3's block scales instead: weights in
    /// 128×128 blocks, activations in 1×128 blocks of each token, every scale from its block's
    /// own amax (no activation bound: a block's outlier only coarsens its 128 values).
    ExpertsBlock,
    /// Every projection of every layer (attention, dense MLP, shared and routed experts); the
    /// router, the embedding and the lm_head stay in the compute dtype.
    All,
    /// The recipe's weights pass through e4m3 (or come from an FP8 checkpoint) and run
    /// dequantized in the compute dtype: weight quantization error without activation error.
    Dequant,
}

/// The names [`Fp8Mode::from_str`] accepts.
pub const FP8_MODE_NAMES: &[&str] = &["none", "experts", "experts-block", "all", "dequant"];

impl FromStr for Fp8Mode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Fp8Mode::None),
            "experts" => Ok(Fp8Mode::Experts),
            "experts-block" => Ok(Fp8Mode::ExpertsBlock),
            "all" => Ok(Fp8Mode::All),
            "dequant" => Ok(Fp8Mode::Dequant),
            other => Err(Error::invalid(
                "fp8",
                format!("unknown FP8 mode {other:?}; known: {}", FP8_MODE_NAMES.join(", ")),
            )),
        }
    }
}

impl fmt::Display for Fp8Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fp8Mode::None => "none",
            Fp8Mode::Experts => "experts",
            Fp8Mode::ExpertsBlock => "experts-block",
            Fp8Mode::All => "all",
            Fp8Mode::Dequant => "dequant",
        })
    }
}

impl Fp8Mode {
    /// Whether layer `layer` of `num_layers` keeps its routed experts in e4m3 (run in FP8, or
    /// dequantized for [`Fp8Mode::Dequant`]).
    pub fn quantizes_experts(self, layer: usize, num_layers: usize) -> bool {
        match self {
            Fp8Mode::None => false,
            Fp8Mode::All => true,
            Fp8Mode::Experts | Fp8Mode::ExpertsBlock | Fp8Mode::Dequant => layer > 0 && layer + 1 < num_layers,
        }
    }

    /// Whether attention, dense MLPs and shared experts run in FP8.
    pub fn quantizes_dense(self) -> bool {
        self == Fp8Mode::All
    }

    /// How the weights this mode quantizes are grouped under one scale: per output channel, or
    /// 128×128 blocks for [`Fp8Mode::ExpertsBlock`].
    pub fn weight_granularity(self) -> Granularity {
        match self {
            Fp8Mode::ExpertsBlock => WEIGHT_BLOCK,
            _ => Granularity::PerRow,
        }
    }

    /// Whether quantized weights are run dequantized rather than in FP8.
    pub fn dequantizes(self) -> bool {
        matches!(self, Fp8Mode::None | Fp8Mode::Dequant)
    }

    /// Fails unless the compute dtype can take this mode: the FP8 GEMM writes f32 or bf16.
    pub fn check_dtype(self, dtype: DType) -> Result<()> {
        if matches!(self, Fp8Mode::Experts | Fp8Mode::ExpertsBlock | Fp8Mode::All)
            && !matches!(dtype, DType::F32 | DType::BF16)
        {
            return Err(Error::invalid(
                "fp8",
                format!("--fp8 {self} computes in f32 or bf16, not {dtype}"),
            ));
        }
        Ok(())
    }
}

/// The weight blocks of block scaling: 128 output channels × 128 inputs.
const WEIGHT_BLOCK: Granularity = Granularity::Block {
    rows: BLOCK_K,
    cols: BLOCK_K,
};

/// The activation blocks of block scaling: 128 inputs of one token.
const ACTIVATION_BLOCK: Granularity = Granularity::Block { rows: 1, cols: BLOCK_K };

/// A bias-free linear layer with e4m3 weights `[out, in]`, applied to e4m3 activations in the
/// input's dtype. Row-wise (Meta's recipe): one scale per output channel and per token,
/// `y = (x_q·W_qᵀ)·s_x·s_w`. Block-scaled (DeepSeek-V3's): 128×128 weight blocks and 1×128
/// activation blocks, each 128-wide slice of the reduction scaled by its two scales.
#[derive(Clone, Debug)]
pub struct Fp8Linear {
    weight: Quantized, // [out, in], per-row (or per-tensor) scales, or 128×128 blocks
}

impl Fp8Linear {
    /// Quantizes a weight `[out, in]` (f32/f16/bf16, any layout) per output channel.
    pub fn quantize(weight: &Tensor) -> Result<Self> {
        Fp8Linear::quantize_with(weight, Granularity::PerRow)
    }

    /// Quantizes a weight `[out, in]` per output channel ([`Granularity::PerRow`]) or in
    /// 128×128 blocks.
    pub fn quantize_with(weight: &Tensor, granularity: Granularity) -> Result<Self> {
        Fp8Linear::from_quantized(quantize(&ops::contiguous(weight)?, granularity, None)?)
    }

    /// From e4m3 codes `[out, in]` with per-row (or per-tensor) scales, e.g. from a checkpoint,
    /// or with 128×128 block scales.
    pub fn from_quantized(weight: Quantized) -> Result<Self> {
        let supported = matches!(weight.granularity, Granularity::PerRow | Granularity::PerTensor)
            || weight.granularity == WEIGHT_BLOCK;
        if !supported || weight.values.rank() != 2 {
            return Err(Error::invalid(
                "fp8 linear",
                format!(
                    "weights must be [out, in] with per-channel, per-tensor or 128x128 block scales, got {:?} with {:?}",
                    weight.values.shape(),
                    weight.granularity
                ),
            ));
        }
        Ok(Fp8Linear { weight })
    }

    /// The e4m3 codes `[out, in]` and their scales.
    pub fn quantized(&self) -> &Quantized {
        &self.weight
    }

    /// How the weight's scales are grouped.
    pub fn granularity(&self) -> Granularity {
        self.weight.granularity
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.values.shape()[1]
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.values.shape()[0]
    }

    /// The weights `[out, in]` dequantized into `dtype`.
    pub fn dequantized(&self, dtype: DType) -> Result<Tensor> {
        dequantize(&self.weight, dtype)
    }

    /// `x [.., in] -> [.., out]` (f32 or bf16): each row quantized with its own scale (amax
    /// bounded at [`ACTIVATION_SCALE_UB`]), or in 1×128 blocks for block-scaled weights; one
    /// FP8 GEMM, the output in `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let shape = x.shape();
        let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
        let flat = ops::contiguous(x)?.reshape(&[rows, self.in_features()])?;
        let activations = match self.weight.granularity == WEIGHT_BLOCK {
            true => quantize(&flat, ACTIVATION_BLOCK, None)?,
            false => quantize(&flat, Granularity::PerRow, Some(ACTIVATION_SCALE_UB))?,
        };
        let y = fp8_gemm(&activations, &self.weight, x.dtype(), Epilogue::default())?;
        let mut out_shape = shape.to_vec();
        if let Some(last) = out_shape.last_mut() {
            *last = self.out_features();
        }
        y.reshape(&out_shape)
    }
}
