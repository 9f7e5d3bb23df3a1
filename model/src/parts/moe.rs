//! The MoE block: router, routed SwiGLU experts (only the chosen ones run), shared expert.

use l4_core::{DType, Device, Error, Result, Tensor};
use l4_kernels::moe_experts::{
    Fp8Experts, SharedExpert, WeightOn, fp8_moe_experts, moe_experts, moe_experts_with_shared,
};
use l4_kernels::moe_routing::{MAX_EXPERTS, RouteKind, RoutedTokens, route};
use l4_kernels::ops;
use l4_kernels::quant::{Granularity, Quantized};

use super::fp8::{ACTIVATION_SCALE_UB, Fp8Linear};
use super::linear::Linear;
use super::mlp::SwiGlu;
use super::router::{Assignment, Router, RouterInput, Routing, WeightPlacement};

/// The routed experts' weights.
#[derive(Clone, Debug)]
pub enum Experts {
    /// HF's fused layout in the compute dtype.
    Fused {
        /// `[e, d, 2f]`: gate in the first `f` columns, up in the last `f`; applied as `x · W`.
        gate_up: Tensor,
        /// `[e, f, d]`, applied as `h · W`.
        down: Tensor,
    },
    /// One linear pair per expert (FP8, or the dequantized FP8 ablation).
    PerExpert {
        /// Per expert: `d -> 2f`, gate outputs first.
        gate_up: Vec<Linear>,
        /// Per expert: `f -> d`.
        down: Vec<Linear>,
        /// Row-wise FP8 experts stacked for the grouped FP8 kernels; the linears above are then
        /// views of these tensors, so the weights are held once. `None` when the experts are
        /// not all FP8 with per-row or per-tensor scales (block-scaled or dequantized experts
        /// keep the per-expert path).
        stacked: Option<Box<Fp8Experts>>,
    },
}

/// The weights of row-wise (or per-tensor) FP8 linears, or `None` when any linear is not one.
fn row_wise_fp8(linears: &[Linear]) -> Option<Vec<Quantized>> {
    linears
        .iter()
        .map(|l| {
            l.as_fp8()
                .map(|f| f.quantized())
                .filter(|q| matches!(q.granularity, Granularity::PerRow | Granularity::PerTensor))
                .cloned()
        })
        .collect()
}

/// Expert `i` of stacked codes `[e, n, k]` and scales `[e, n]` as a per-row FP8 linear
/// `[n, k]` viewing the same storage.
fn stacked_view(values: &Tensor, scales: &Tensor, i: usize) -> Result<Linear> {
    let (n, k) = (values.shape()[1], values.shape()[2]);
    let weight = Quantized {
        values: values.narrow(0, i, 1)?.reshape(&[n, k])?,
        scales: scales.narrow(0, i, 1)?.reshape(&[n, 1])?,
        granularity: Granularity::PerRow,
    };
    Ok(Linear::from_fp8(Fp8Linear::from_quantized(weight)?))
}

impl Experts {
    /// Routed experts.
    pub fn len(&self) -> usize {
        match self {
            Experts::Fused { gate_up, .. } => gate_up.shape()[0],
            Experts::PerExpert { gate_up, .. } => gate_up.len(),
        }
    }

    /// Whether there are no experts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The expert width `f`.
    pub fn width(&self) -> usize {
        match self {
            Experts::Fused { down, .. } => down.shape()[1],
            Experts::PerExpert { down, .. } => down.first().map_or(0, Linear::in_features),
        }
    }

    /// Expert `e` as two linears, `d -> 2f` and `f -> d` (views of the fused tensors, no copy).
    fn expert(&self, e: usize) -> Result<(Linear, Linear)> {
        match self {
            Experts::Fused { gate_up, down } => {
                let (d, f2) = (gate_up.shape()[1], gate_up.shape()[2]);
                Ok((
                    Linear::from_in_out(gate_up.narrow(0, e, 1)?.reshape(&[d, f2])?)?,
                    Linear::from_in_out(down.narrow(0, e, 1)?.reshape(&[f2 / 2, d])?)?,
                ))
            }
            Experts::PerExpert { gate_up, down, .. } => Ok((gate_up[e].clone(), down[e].clone())),
        }
    }

    /// Every expert as a linear pair transformed by `convert` (to FP8, or dequantized).
    pub fn map_linears(&self, convert: impl Fn(&Linear) -> Result<Linear>) -> Result<Experts> {
        let (mut gate_up, mut down) = (Vec::new(), Vec::new());
        for e in 0..self.len() {
            let (gu, dn) = self.expert(e)?;
            gate_up.push(convert(&gu)?);
            down.push(convert(&dn)?);
        }
        Experts::per_expert(gate_up, down)
    }

    /// Per-expert linear pairs (`d -> 2f` and `f -> d`). Row-wise FP8 experts are stacked
    /// here, once, and the per-expert linears rebuilt as views of the stack (the separate
    /// copies are dropped, so the experts' memory is not doubled).
    pub fn per_expert(gate_up: Vec<Linear>, down: Vec<Linear>) -> Result<Experts> {
        let stacked = match (row_wise_fp8(&gate_up), row_wise_fp8(&down)) {
            (Some(g), Some(d)) if !g.is_empty() => Some(Box::new(Fp8Experts::from_per_expert(&g, &d)?)),
            _ => None,
        };
        let Some(stack) = stacked else {
            return Ok(Experts::PerExpert {
                gate_up,
                down,
                stacked: None,
            });
        };
        let (gate_up, down) = (0..gate_up.len())
            .map(|i| {
                Ok((
                    stacked_view(&stack.gate_up, &stack.gate_up_scales, i)?,
                    stacked_view(&stack.down, &stack.down_scales, i)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        Ok(Experts::PerExpert {
            gate_up,
            down,
            stacked: Some(stack),
        })
    }
}

/// A block's shared expert in the routed experts' layout (`gate_up [d, 2f]`, gate in the first
/// `f` columns; `down [f, d]`; applied as `x · W`), so that on a GPU it runs inside the grouped
/// expert launches as one more expert ([`Moe::forward_with_fused_shared`]) instead of as three
/// separate GEMMs. The kernels want gate and up side by side in one row-major tensor, which
/// HF's separate `[out, in]` weights are not, hence a copy; the block's shared expert is then
/// replaced by [`FusedShared::to_swiglu`], views of this copy, so the weights are held once.
/// Whoever keeps it next to the block rebuilds it whenever the shared expert changes (an FP8
/// conversion), since the block cannot tell that a copy is still its own.
#[derive(Clone, Debug)]
pub struct FusedShared {
    /// `[d, 2f]`.
    gate_up: Tensor,
    /// `[f, d]`.
    down: Tensor,
}

impl FusedShared {
    /// The shared expert's weights in the routed layout, on their own device, when it can join
    /// the grouped kernels: dense (not FP8), all in bf16 or all in f16, on one device. `None`
    /// otherwise. The weights are copied element for element out of the linears' `Wᵀ` views,
    /// so the copy is exact.
    pub fn from_swiglu(shared: &SwiGlu) -> Result<Option<FusedShared>> {
        let (d, f) = (shared.gate.in_features(), shared.gate.out_features());
        let sizes = |l: &Linear| (l.in_features(), l.out_features());
        if sizes(&shared.up) != (d, f) || sizes(&shared.down) != (f, d) {
            return Err(Error::invalid(
                "moe",
                format!(
                    "shared expert: gate {:?}, up {:?}, down {:?} (in, out) do not form a SwiGLU",
                    (d, f),
                    sizes(&shared.up),
                    sizes(&shared.down)
                ),
            ));
        }
        let (Some(gate), Some(up), Some(down)) = (
            shared.gate.dense_in_out(),
            shared.up.dense_in_out(),
            shared.down.dense_in_out(),
        ) else {
            return Ok(None);
        };
        let (dtype, device) = (gate.dtype(), gate.device());
        let joins = matches!(dtype, DType::BF16 | DType::F16)
            && [up, down].iter().all(|w| w.dtype() == dtype && w.device() == device);
        if !joins {
            return Ok(None);
        }
        let gate_up = ops::cat(&[gate, up], 1)?; // [d, 2f]
        let down = ops::contiguous(down)?; // [f, d]
        Ok(Some(FusedShared { gate_up, down }))
    }

    /// The shared expert as a [`SwiGlu`] whose linears view this copy's tensors (gate and up:
    /// `[d, f]` column ranges of `gate_up`, read by the GEMM through their row pitch; down:
    /// `down`), so a block that holds these instead of its loaded linears holds its shared
    /// expert's weights once.
    pub fn to_swiglu(&self) -> Result<SwiGlu> {
        let f = self.down.shape()[0];
        Ok(SwiGlu {
            gate: Linear::from_in_out(self.gate_up.narrow(1, 0, f)?)?,
            up: Linear::from_in_out(self.gate_up.narrow(1, f, f)?)?,
            down: Linear::from_in_out(self.down.clone())?,
        })
    }

    /// `[d, 2f]`: gate in the first `f` columns.
    pub fn gate_up(&self) -> &Tensor {
        &self.gate_up
    }

    /// `[f, d]`.
    pub fn down(&self) -> &Tensor {
        &self.down
    }
}

/// One MoE block's weights and its routing strategy.
#[derive(Debug)]
pub struct Moe {
    /// `[e, d]` router (HF `nn.Linear` layout).
    pub router: Linear,
    /// The routed experts.
    pub experts: Experts,
    /// The always-on shared expert, if enabled.
    pub shared: Option<SwiGlu>,
    /// The routing strategy.
    pub strategy: Box<dyn Router>,
}

/// What one MoE forward produced besides its output.
#[derive(Debug)]
pub struct MoeOutput {
    /// `[n, d]` block output.
    pub output: Tensor,
    /// `[n, e]` raw router logits.
    pub router_logits: Tensor,
    /// The routing decision.
    pub routing: Routing,
}

/// The host-side [`Routing`] of the fused kernel's choices.
fn fused_routing(routed: &RoutedTokens, n: usize, n_experts: usize, kind: RouteKind) -> Result<Routing> {
    let experts = routed.topk_expert.to_vec::<i32>()?;
    let weights = routed.topk_weight.to_f32_vec()?;
    let k = experts.len() / n.max(1);
    let placement = match kind {
        RouteKind::Llama4 => WeightPlacement::Input,
        RouteKind::SoftmaxTopK { .. } => WeightPlacement::Output,
    };
    Ok(Routing {
        n_tokens: n,
        n_experts,
        assignments: experts
            .iter()
            .zip(&weights)
            .enumerate()
            .map(|(slot, (&expert, &weight))| Assignment {
                token: slot / k.max(1),
                expert: expert as usize,
                weight,
            })
            .collect(),
        placement,
        dropped: 0,
        aux_loss: None,
        z_loss: None,
    })
}

impl Moe {
    /// Routed experts.
    pub fn num_experts(&self) -> usize {
        self.experts.len()
    }

    /// `x [n, d] -> [n, d]`: `shared(x) + Σ expert_e(x · w)` over each token's assignments
    /// (weights on the input for Llama 4; on the output for strategies that say so).
    pub fn forward(&self, x: &Tensor) -> Result<MoeOutput> {
        self.forward_with_ids(x, None)
    }

    /// As [`Moe::forward`], with the tokens' ids for strategies that route by id (`hash`).
    /// Tokens are grouped per expert so each expert runs one GEMM over its tokens and unchosen
    /// experts do no work; the outputs are gathered back per token and summed in assignment
    /// order, the same order on every device. On a GPU, after the fused routing kernel, experts
    /// in HF's fused layout in the compute dtype (or row-wise FP8 experts) run through the
    /// grouped expert kernels (`l4_kernels::moe_experts`) instead: a gather and two grouped
    /// GEMMs (plus a fixed-order combine when a token has several experts or the reduction is
    /// split), the shared expert's output added in the last one.
    pub fn forward_with_ids(&self, x: &Tensor, token_ids: Option<&[i64]>) -> Result<MoeOutput> {
        self.forward_with_fused_shared(x, token_ids, None)
    }

    /// As [`Moe::forward_with_ids`], with `fused_shared`, this block's shared expert in the
    /// routed layout ([`FusedShared::from_swiglu`] of `self.shared`; the caller keeps the two
    /// in step): on a GPU, where the grouped kernels run experts in HF's fused layout in the
    /// compute dtype and `fused_shared` has their dtype and width, the shared expert runs in the
    /// same launches as expert `e` (every token, unscaled input, weight 1 nowhere) and each
    /// token's output is `round(shared + Σ_j routed_j)` summed in f32, the shared expert first.
    /// Anywhere else `fused_shared` is not used.
    pub fn forward_with_fused_shared(
        &self,
        x: &Tensor,
        token_ids: Option<&[i64]>,
        fused_shared: Option<&FusedShared>,
    ) -> Result<MoeOutput> {
        if fused_shared.is_some() && self.shared.is_none() {
            return Err(Error::invalid(
                "moe",
                "a fused shared expert was given to a block without a shared expert",
            ));
        }
        let [n, d] = x.shape()[..] else {
            return Err(Error::BadShape {
                op: "moe",
                shape: x.shape().to_vec(),
                msg: "expected [n, d]".into(),
            });
        };
        let n_experts = self.num_experts();
        let f = self.experts.width();
        let router_logits = self.router.forward(x)?; // [n, e]
        // On a GPU the fused kernel routes; only [n, k] choices come back to the host.
        let fused = match self.strategy.fused() {
            Some(kind) if x.device().is_cuda() && n_experts <= MAX_EXPERTS => {
                Some((route(&router_logits, kind)?, kind))
            }
            _ => None,
        };
        let routing = match &fused {
            Some((routed, kind)) => fused_routing(routed, n, n_experts, *kind)?,
            None => self.strategy.route(&RouterInput {
                logits: &router_logits.to_f32_vec()?,
                n_tokens: n,
                n_experts,
                token_ids,
            })?,
        };
        if let Some(bad) = routing
            .assignments
            .iter()
            .find(|a| a.token >= n || a.expert >= n_experts)
        {
            return Err(Error::invalid(
                "moe",
                format!(
                    "router {:?} assigned token {} to expert {} ({n} tokens, {n_experts} experts)",
                    self.strategy.name(),
                    bad.token,
                    bad.expert
                ),
            ));
        }
        // Fused experts in the compute dtype after the fused routing: the grouped expert kernels
        // (gate_up + SwiGLU, down + weight + shared + fixed-order combine) over the sorted slots.
        // Row-wise FP8 experts likewise, through the FP8 kernels (activations bounded as
        // `Fp8Linear` bounds them).
        if let Some((routed, kind)) = &fused {
            let weight_on = match kind {
                RouteKind::Llama4 => WeightOn::Input,
                RouteKind::SoftmaxTopK { .. } => WeightOn::Output,
            };
            let shared = || self.shared.as_ref().map(|s| s.forward(x)).transpose();
            let fused_shared =
                fused_shared.filter(|s| s.gate_up.dtype() == x.dtype() && s.gate_up.shape() == [d, 2 * f]);
            let output = match &self.experts {
                Experts::Fused { gate_up, down } if gate_up.dtype() == x.dtype() => Some(match fused_shared {
                    Some(s) => {
                        let shared = SharedExpert {
                            gate_up: &s.gate_up,
                            down: &s.down,
                        };
                        moe_experts_with_shared(x, routed, gate_up, down, weight_on, shared)?
                    }
                    None => moe_experts(x, routed, gate_up, down, weight_on, shared()?.as_ref())?,
                }),
                Experts::PerExpert { stacked, .. } => match stacked {
                    Some(w) => Some(fp8_moe_experts(
                        x,
                        routed,
                        w,
                        weight_on,
                        shared()?.as_ref(),
                        Some(ACTIVATION_SCALE_UB),
                    )?),
                    None => None,
                },
                Experts::Fused { .. } => None,
            };
            if let Some(output) = output {
                return Ok(MoeOutput {
                    output,
                    router_logits,
                    routing,
                });
            }
        }
        // Assignment indices grouped by expert, in expert order.
        let mut by_expert: Vec<Vec<usize>> = vec![Vec::new(); n_experts];
        for (i, a) in routing.assignments.iter().enumerate() {
            by_expert[a.expert].push(i);
        }
        let mut expert_outputs = Vec::new(); // per used expert: [n_e, d]
        for (expert, members) in by_expert.iter().enumerate().filter(|(_, m)| !m.is_empty()) {
            let assigned = |i: &usize| routing.assignments[*i];
            let tokens: Vec<i64> = members.iter().map(|i| assigned(i).token as i64).collect();
            let tokens = Tensor::from_vec(tokens, &[members.len()], Device::Cpu)?.to_device(x.device())?;
            let weights = Tensor::from_f32_vec(
                members.iter().map(|i| assigned(i).weight).collect(),
                &[members.len(), 1],
                x.dtype(),
                x.device(),
            )?;
            let mut x_e = ops::index_select(x, 0, &tokens)?; // [n_e, d]
            if routing.placement == WeightPlacement::Input {
                x_e = ops::mul(&x_e, &weights)?;
            }
            let (gate_up, down) = self.experts.expert(expert)?;
            let projected = gate_up.forward(&x_e)?; // [n_e, 2f]
            let hidden = ops::mul(&ops::silu(&projected.narrow(1, 0, f)?)?, &projected.narrow(1, f, f)?)?; // [n_e, f]
            let mut y = down.forward(&hidden)?; // [n_e, d]
            if routing.placement == WeightPlacement::Output {
                y = ops::mul(&y, &weights)?;
            }
            expert_outputs.push(y);
        }
        let mut output = match &self.shared {
            Some(shared) => Some(shared.forward(x)?),
            None => None,
        };
        let slots = routing.max_per_token();
        if slots > 0 {
            // Row r of the expert-ordered outputs holds assignment order[r]; one zero row after
            // them fills the slots of tokens with fewer assignments than the most-assigned one.
            let order: Vec<usize> = by_expert.concat();
            let zero_row = order.len();
            let mut row_of = vec![0usize; order.len()];
            for (row, &i) in order.iter().enumerate() {
                row_of[i] = row;
            }
            let mut table = vec![zero_row as i64; n * slots]; // [n, slots]
            let mut filled = vec![0usize; n];
            for (i, a) in routing.assignments.iter().enumerate() {
                table[a.token * slots + filled[a.token]] = row_of[i] as i64;
                filled[a.token] += 1;
            }
            let zeros = Tensor::zeros(&[1, d], x.dtype(), x.device())?;
            let mut parts: Vec<&Tensor> = expert_outputs.iter().collect();
            parts.push(&zeros);
            let rows = ops::cat(&parts, 0)?; // [assignments + 1, d]
            let table = Tensor::from_vec(table, &[n * slots], Device::Cpu)?.to_device(x.device())?;
            let by_slot = ops::index_select(&rows, 0, &table)?.reshape(&[n, slots, d])?;
            // shared(x) + Σ_j slot_j: the same order of additions on every device.
            for j in 0..slots {
                let routed = by_slot.narrow(1, j, 1)?.squeeze(1)?; // [n, d]
                output = Some(match output {
                    Some(sum) => ops::add(&sum, &routed)?,
                    None => ops::contiguous(&routed)?,
                });
            }
        }
        let output = match output {
            Some(out) => out,
            None => Tensor::zeros(&[n, d], x.dtype(), x.device())?,
        };
        Ok(MoeOutput {
            output,
            router_logits,
            routing,
        })
    }
}

#[cfg(test)]
mod tests {
    use l4_core::DType;

    use super::*;

    /// Row-wise FP8 experts are held once: each expert's linear views the stacked tensors, and
    /// its codes and scales are the ones it was quantized to.
    #[test]
    fn fp8_experts_view_their_stack() {
        let (e, d, f) = (3, 8, 6);
        let linear = |seed: u64, out: usize, inp: usize| {
            let w = Tensor::randn(&[out, inp], DType::F32, seed, Device::Cpu).unwrap();
            Linear::from_hf_weight(&w).unwrap().to_fp8().unwrap()
        };
        let gate_up: Vec<Linear> = (0..e as u64).map(|i| linear(i, 2 * f, d)).collect();
        let down: Vec<Linear> = (0..e as u64).map(|i| linear(100 + i, d, f)).collect();
        let codes = |l: &Linear| l.as_fp8().unwrap().quantized().values.to_f32_vec().unwrap();
        let scales = |l: &Linear| l.as_fp8().unwrap().quantized().scales.to_f32_vec().unwrap();
        let expected: Vec<_> = gate_up.iter().chain(&down).map(|l| (codes(l), scales(l))).collect();

        let Experts::PerExpert { gate_up, down, stacked } = Experts::per_expert(gate_up, down).unwrap() else {
            panic!("per_expert built fused experts");
        };
        let stack = stacked.expect("row-wise FP8 experts are stacked");
        for (i, l) in gate_up.iter().chain(&down).enumerate() {
            let q = l.as_fp8().unwrap().quantized();
            let whole = if i < e { &stack.gate_up } else { &stack.down };
            assert!(
                std::ptr::eq(q.values.storage(), whole.storage()),
                "linear {i} copies its codes"
            );
            assert_eq!((codes(l), scales(l)), expected[i], "linear {i}");
        }
    }
}
