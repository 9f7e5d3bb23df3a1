//! Routing strategies: which experts each token goes to, and with what weight.
//!
//! The MoE block only sees the [`Router`] trait, so a new strategy needs no change to the model.
//! Strategies are chosen by name at run time ([`router_by_name`]).

use std::fmt::Debug;

use l4_core::{Error, Result};

/// Where a routing weight is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightPlacement {
    /// The expert's input is scaled (Llama 4: `x_e = x · s_e`); SwiGLU is not linear, so this
    /// differs from scaling the output.
    Input,
    /// The expert's output is scaled (Mixtral, DeepSeek).
    Output,
}

/// The routing decision for `n` tokens, `k` experts each.
#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    /// Experts per token.
    pub top_k: usize,
    /// `[n, k]` chosen expert indices, row-major.
    pub experts: Vec<usize>,
    /// `[n, k]` weights of the chosen experts.
    pub weights: Vec<f32>,
    /// Where the weights are applied.
    pub placement: WeightPlacement,
}

/// A routing strategy: router logits in, per-token expert choice out.
pub trait Router: Debug + Send + Sync {
    /// The name it is selected by.
    fn name(&self) -> &'static str;
    /// Routes `n_tokens` tokens given their logits `[n_tokens, n_experts]` (row-major, f32).
    fn route(&self, logits: &[f32], n_tokens: usize, n_experts: usize) -> Result<Routing>;
}

/// Llama 4's router: top-1 by raw logit, weight `sigmoid(logit)`, applied to the expert input.
/// No softmax, no renormalisation, no scaling factor.
#[derive(Clone, Copy, Debug, Default)]
pub struct Llama4Router;

impl Router for Llama4Router {
    fn name(&self) -> &'static str {
        "llama4"
    }

    fn route(&self, logits: &[f32], n_tokens: usize, n_experts: usize) -> Result<Routing> {
        if n_experts == 0 || logits.len() != n_tokens * n_experts {
            return Err(Error::invalid(
                "llama4 router",
                format!("{} logits for {n_tokens} tokens x {n_experts} experts", logits.len()),
            ));
        }
        let mut experts = Vec::with_capacity(n_tokens);
        let mut weights = Vec::with_capacity(n_tokens);
        for row in logits.chunks(n_experts) {
            // First index of the maximum (a stable choice on exact ties).
            let (best, &logit) = row
                .iter()
                .enumerate()
                .fold((0, &row[0]), |(bi, bv), (i, v)| if v > bv { (i, v) } else { (bi, bv) });
            experts.push(best);
            weights.push(1.0 / (1.0 + (-logit).exp()));
        }
        Ok(Routing {
            top_k: 1,
            experts,
            weights,
            placement: WeightPlacement::Input,
        })
    }
}

/// Names of the strategies [`router_by_name`] knows.
pub const ROUTER_NAMES: &[&str] = &["llama4"];

/// The routing strategy called `name`.
pub fn router_by_name(name: &str) -> Result<Box<dyn Router>> {
    match name {
        "llama4" => Ok(Box::new(Llama4Router)),
        other => Err(Error::invalid(
            "router",
            format!("unknown routing strategy {other:?}; known: {}", ROUTER_NAMES.join(", ")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama4_picks_the_top_logit_and_weights_it_by_its_sigmoid() {
        let logits = [0.5f32, 2.0, -1.0, /* token 1 */ -3.0, -4.0, -2.5];
        let r = Llama4Router.route(&logits, 2, 3).unwrap();
        assert_eq!(r.experts, vec![1, 2]);
        assert!((r.weights[0] - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-7);
        assert!((r.weights[1] - 1.0 / (1.0 + 2.5f32.exp())).abs() < 1e-7);
        assert_eq!(r.placement, WeightPlacement::Input);
    }

    #[test]
    fn unknown_router_is_an_error() {
        assert!(router_by_name("nope").unwrap_err().to_string().contains("llama4"));
        assert!(Llama4Router.route(&[1.0], 2, 3).is_err());
    }
}
