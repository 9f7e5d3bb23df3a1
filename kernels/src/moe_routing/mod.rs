//! `moe_routing`: fused MoE routing on every device, in one pass: router logits → each token's
//! top-k experts and weights → per-expert counts and offsets → token slots sorted by expert.
//!
//! `logits [T, E]` (f32, f16, bf16) with [`RouteKind`]:
//! * [`RouteKind::Llama4`]: top-1 by logit, weight `sigmoid(logit)` (Llama 4's router);
//! * [`RouteKind::SoftmaxTopK`]: top-k of the softmax over experts (k ≤ 8), weights the
//!   probabilities, renormalised over the chosen k when asked (Mixtral/Qwen).
//!
//! Selection ranks logits by `f32::total_cmp` (+NaN above +∞, −NaN below −∞, −0 below +0),
//! ties going to the lower expert index, so the chosen experts,
//! counts, offsets and the sorted slots are identical on every device; the weights agree to
//! `exp` rounding (`Tolerance::elementwise(F32)` per weight, pairwise). The sort is stable: expert
//! e's slots `s = t·k + j` appear in ascending order, which keeps the MoE combine deterministic.
//! Limits: 1 ≤ E ≤ 256, 1 ≤ k ≤ min(8, E). Devices: the CPU path is [`reference`], the CUDA
//! path one launch of `moe_routing.cu` ([`cuda`]).

pub mod cuda;
pub mod reference;
#[cfg(test)]
mod tests;

use l4_core::{DType, Device, Error, Result, Tensor};

const OP: &str = "moe_route";

/// The most experts the kernel routes over.
pub const MAX_EXPERTS: usize = 256;
/// The most experts per token.
pub const MAX_K: usize = 8;

/// Which routing rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// Top-1 by logit, weight `sigmoid(logit)`.
    Llama4,
    /// Top-k of the softmax over experts.
    SoftmaxTopK {
        /// Experts per token.
        k: usize,
        /// Renormalise the chosen probabilities to sum to 1.
        renormalize: bool,
    },
}

impl RouteKind {
    /// Experts per token.
    pub fn k(self) -> usize {
        match self {
            RouteKind::Llama4 => 1,
            RouteKind::SoftmaxTopK { k, .. } => k,
        }
    }
}

/// The routing of `T` tokens over `E` experts, on the logits' device.
#[derive(Clone, Debug)]
pub struct RoutedTokens {
    /// `[T, k]` I32 chosen experts, best first.
    pub topk_expert: Tensor,
    /// `[T, k]` F32 weights.
    pub topk_weight: Tensor,
    /// `[E]` I32 slots per expert.
    pub expert_count: Tensor,
    /// `[E + 1]` I32 exclusive prefix sum of the counts.
    pub expert_offset: Tensor,
    /// `[T·k]` I32 slots `t·k + j` grouped by expert, ascending within an expert.
    pub sorted_slots: Tensor,
}

/// Routes `logits [T, E]` by `kind`. Errors: a non-float dtype, a rank other than 2, E outside
/// 1..=256, k outside 1..=min(8, E).
pub fn route(logits: &Tensor, kind: RouteKind) -> Result<RoutedTokens> {
    if !matches!(logits.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        return Err(Error::DTypeMismatch {
            op: OP,
            got: logits.dtype(),
            expected: None,
        });
    }
    let &[_, e] = logits.shape() else {
        return Err(Error::BadShape {
            op: OP,
            shape: logits.shape().to_vec(),
            msg: "expected router logits [tokens, experts]".into(),
        });
    };
    if e == 0 || e > MAX_EXPERTS {
        return Err(Error::invalid(
            OP,
            format!("{e} experts; the kernel routes 1..={MAX_EXPERTS}"),
        ));
    }
    let k = kind.k();
    if k == 0 || k > MAX_K.min(e) {
        return Err(Error::invalid(OP, format!("k = {k} must be in 1..={}", MAX_K.min(e))));
    }
    match logits.device() {
        Device::Cpu => reference::route(logits, kind),
        Device::Cuda(_) => cuda::route(logits, kind),
    }
}
