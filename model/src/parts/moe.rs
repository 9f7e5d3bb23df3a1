//! The MoE block: router, routed SwiGLU experts (only the chosen ones run), shared expert.

use l4_core::{Device, Error, Result, Tensor};

use super::linear::Linear;
use super::mlp::SwiGlu;
use super::router::{Router, Routing, WeightPlacement};

/// One MoE block's weights and its routing strategy.
#[derive(Debug)]
pub struct Moe {
    /// `[e, d]` router (HF `nn.Linear` layout).
    pub router: Linear,
    /// `[e, d, 2f]`: gate in the first `f` columns, up in the last `f`; applied as `x · W`.
    pub gate_up: Tensor,
    /// `[e, f, d]`, applied as `h · W`.
    pub down: Tensor,
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

impl Moe {
    /// Routed experts.
    pub fn num_experts(&self) -> usize {
        self.gate_up.shape()[0]
    }

    /// `x [n, d] -> [n, d]`: `shared(x) + Σ_k expert_k(x · w_k)` (weights on the input for
    /// Llama 4; on the output for strategies that say so). Tokens are grouped per expert so
    /// each expert runs one GEMM over its tokens, and unchosen experts do no work.
    pub fn forward(&self, x: &Tensor) -> Result<MoeOutput> {
        let [n, d] = x.shape()[..] else {
            return Err(Error::BadShape {
                op: "moe",
                shape: x.shape().to_vec(),
                msg: "expected [n, d]".into(),
            });
        };
        let n_experts = self.num_experts();
        let f = self.down.shape()[1];
        let router_logits = self.router.forward(x)?; // [n, e]
        let routing = self.strategy.route(&router_logits.to_f32_vec()?, n, n_experts)?;

        let mut combined = match &self.shared {
            Some(shared) => shared.forward(x)?.to_f32_vec()?,
            None => vec![0.0; n * d],
        };
        // Token slots per expert: (token, weight).
        let mut slots: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n_experts];
        for (slot, (&expert, &weight)) in routing.experts.iter().zip(&routing.weights).enumerate() {
            slots[expert].push((slot / routing.top_k, weight));
        }
        for (expert, tokens) in slots.iter().enumerate().filter(|(_, t)| !t.is_empty()) {
            let ids: Vec<i64> = tokens.iter().map(|&(t, _)| t as i64).collect();
            let ids = Tensor::from_vec(ids, &[tokens.len()], Device::Cpu)?.to_device(x.device())?;
            let weights = Tensor::from_f32_vec(
                tokens.iter().map(|&(_, w)| w).collect(),
                &[tokens.len(), 1],
                x.dtype(),
                x.device(),
            )?;
            let mut x_e = x.index_select(0, &ids)?; // [n_e, d]
            if routing.placement == WeightPlacement::Input {
                x_e = x_e.mul(&weights)?;
            }
            let gate_up = self.gate_up.narrow(0, expert, 1)?.reshape(&[d, 2 * f])?;
            let down = self.down.narrow(0, expert, 1)?.reshape(&[f, d])?;
            let projected = x_e.matmul(&gate_up)?; // [n_e, 2f]
            let hidden = projected.narrow(1, 0, f)?.silu()?.mul(&projected.narrow(1, f, f)?)?; // [n_e, f]
            let mut y = hidden.matmul(&down)?; // [n_e, d]
            if routing.placement == WeightPlacement::Output {
                y = y.mul(&weights)?;
            }
            for (row, &(token, _)) in y.to_f32_vec()?.chunks(d).zip(tokens) {
                for (acc, v) in combined[token * d..(token + 1) * d].iter_mut().zip(row) {
                    *acc += v;
                }
            }
        }
        let output = Tensor::from_f32_vec(combined, &[n, d], x.dtype(), x.device())?;
        Ok(MoeOutput {
            output,
            router_logits,
            routing,
        })
    }
}
