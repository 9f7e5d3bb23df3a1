//! Routing strategies: which experts each token goes to, and with what weight.
//!
//! The MoE block only sees the [`Router`] trait, so a new strategy needs no change to the model.
//! Strategies are chosen at run time from a spec string, `name[:key=value,...]`
//! ([`router_by_name`]): `llama4` (top-1; `llama4:k=2` for top-2), `softmax-topk:k=2`,
//! `deepseek-v3:k=2,groups=4,topk_groups=2`, `expert-choice:capacity=1.25`, `hash`,
//! `random:k=1,seed=7`, `forced:expert=3`. Token-choice
//! strategies also take `capacity=C`: each expert then keeps at most `⌈C·n·k/e⌉` assignments,
//! in token order, and the rest are dropped (and counted).
//!
//! Every strategy here is a plain CPU function of the router logits (and, for `hash`, the token
//! ids); its decision is a [`Routing`], with per-expert load statistics ([`RoutingStats`]).

use std::collections::BTreeMap;
use std::fmt::Debug;

use l4_core::{Error, Result};
use l4_kernels::moe_routing::{MAX_K, RouteKind};

/// Where a routing weight is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightPlacement {
    /// The expert's input is scaled (Llama 4: `x_e = x · s_e`); SwiGLU is not linear, so this
    /// differs from scaling the output.
    Input,
    /// The expert's output is scaled (Mixtral, DeepSeek).
    Output,
}

/// One token sent to one expert.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Assignment {
    /// Token index in the step (`b·t` flattened).
    pub token: usize,
    /// Expert index.
    pub expert: usize,
    /// Routing weight.
    pub weight: f32,
}

/// The routing decision for `n_tokens` tokens over `n_experts` experts.
#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    /// Tokens routed.
    pub n_tokens: usize,
    /// Experts available.
    pub n_experts: usize,
    /// Token-major (every assignment of token 0 first), each token's in the strategy's rank
    /// order; a token may have none (dropped, or unchosen by expert-choice).
    pub assignments: Vec<Assignment>,
    /// Where the weights are applied.
    pub placement: WeightPlacement,
    /// Assignments the strategy wanted but a capacity limit dropped.
    pub dropped: usize,
    /// Switch-style load-balancing loss `e · Σ_e f_e·P_e` (f: fraction of assignments, P: mean
    /// router probability), for strategies with a softmax over experts, when routed on the
    /// host (the fused GPU kernel does not compute it).
    pub aux_loss: Option<f32>,
    /// Router z-loss `mean(logsumexp(logits)²)`, for the same strategies.
    pub z_loss: Option<f32>,
}

/// Load statistics of a [`Routing`].
#[derive(Clone, Debug, PartialEq)]
pub struct RoutingStats {
    /// Assignments per expert.
    pub load: Vec<usize>,
    /// Largest load over the mean load (1 is perfect balance; 0 when nothing was routed).
    pub max_over_mean: f64,
    /// Entropy of the load distribution in nats (ln e at perfect balance).
    pub entropy: f64,
    /// Assignments dropped by capacity.
    pub dropped: usize,
    /// Tokens that reached no expert.
    pub unrouted_tokens: usize,
}

impl Routing {
    /// Assignments per expert.
    pub fn load(&self) -> Vec<usize> {
        let mut load = vec![0; self.n_experts];
        for a in &self.assignments {
            load[a.expert] += 1;
        }
        load
    }

    /// Load, imbalance, entropy and drops.
    pub fn stats(&self) -> RoutingStats {
        let load = self.load();
        let total: usize = load.iter().sum();
        let mean = total as f64 / self.n_experts.max(1) as f64;
        let max = load.iter().copied().max().unwrap_or(0) as f64;
        let entropy = load
            .iter()
            .filter(|&&l| l > 0)
            .map(|&l| {
                let p = l as f64 / total as f64;
                -p * p.ln()
            })
            .sum();
        let mut reached = vec![false; self.n_tokens];
        for a in &self.assignments {
            reached[a.token] = true;
        }
        RoutingStats {
            max_over_mean: if total == 0 { 0.0 } else { max / mean },
            entropy,
            dropped: self.dropped,
            unrouted_tokens: reached.iter().filter(|r| !**r).count(),
            load,
        }
    }

    /// The largest number of assignments of one token.
    pub fn max_per_token(&self) -> usize {
        let mut count = vec![0usize; self.n_tokens];
        for a in &self.assignments {
            count[a.token] += 1;
        }
        count.into_iter().max().unwrap_or(0)
    }
}

/// What a strategy routes from.
#[derive(Clone, Copy, Debug)]
pub struct RouterInput<'a> {
    /// `[n_tokens, n_experts]` raw router logits, row-major, f32.
    pub logits: &'a [f32],
    /// Tokens.
    pub n_tokens: usize,
    /// Experts.
    pub n_experts: usize,
    /// `[n_tokens]` token ids, when the caller has them (hash routing needs them).
    pub token_ids: Option<&'a [i64]>,
}

/// A routing strategy: router logits in, assignments out.
pub trait Router: Debug + Send + Sync {
    /// The strategy's name.
    fn name(&self) -> &'static str;
    /// Routes the input's tokens.
    fn route(&self, input: &RouterInput<'_>) -> Result<Routing>;
    /// The fused routing kernel's rule when it computes exactly this strategy, so that logits
    /// on a GPU are routed there and only the chosen experts and weights reach the host.
    fn fused(&self) -> Option<RouteKind> {
        None
    }
}

// ---- helpers ---------------------------------------------------------------------------------

fn check_input(name: &str, input: &RouterInput<'_>) -> Result<()> {
    if input.n_experts == 0 || input.logits.len() != input.n_tokens * input.n_experts {
        return Err(Error::invalid(
            "router",
            format!(
                "{name}: {} logits for {} tokens x {} experts",
                input.logits.len(),
                input.n_tokens,
                input.n_experts
            ),
        ));
    }
    Ok(())
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Softmax of one row in f32 (max-subtracted).
fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Indices of the `k` largest values, largest first; ties go to the lower index (stable).
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// Drops assignments past each expert's capacity `⌈c·n·k/e⌉`, keeping them in token order.
fn apply_capacity(
    assignments: Vec<Assignment>,
    capacity: Option<f64>,
    n: usize,
    k: usize,
    e: usize,
) -> (Vec<Assignment>, usize) {
    let Some(c) = capacity else {
        return (assignments, 0);
    };
    let limit = (c * (n * k) as f64 / e as f64).ceil() as usize;
    let mut used = vec![0usize; e];
    let before = assignments.len();
    let kept: Vec<Assignment> = assignments
        .into_iter()
        .filter(|a| {
            used[a.expert] += 1;
            used[a.expert] <= limit
        })
        .collect();
    let dropped = before - kept.len();
    (kept, dropped)
}

/// Switch-transformer aux loss and the z-loss from per-token probabilities and assignments.
fn balance_losses(input: &RouterInput<'_>, probs: &[Vec<f32>], assignments: &[Assignment]) -> (f32, f32) {
    let (n, e) = (input.n_tokens, input.n_experts);
    let mut fraction = vec![0f32; e];
    for a in assignments {
        fraction[a.expert] += 1.0 / assignments.len().max(1) as f32;
    }
    let mean_prob: Vec<f32> = (0..e)
        .map(|j| probs.iter().map(|p| p[j]).sum::<f32>() / n.max(1) as f32)
        .collect();
    let aux = e as f32 * fraction.iter().zip(&mean_prob).map(|(f, p)| f * p).sum::<f32>();
    let z = input
        .logits
        .chunks(e)
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max + row.iter().map(|&x| (x - max).exp()).sum::<f32>().ln();
            lse * lse
        })
        .sum::<f32>()
        / n.max(1) as f32;
    (aux, z)
}

fn check_k(name: &str, k: usize, e: usize) -> Result<()> {
    if k == 0 || k > e {
        return Err(Error::invalid(
            "router",
            format!("{name}: k = {k} must be in 1..={e} (the experts available)"),
        ));
    }
    Ok(())
}

// ---- strategies --------------------------------------------------------------------------------

/// Llama 4's router: top-k by raw logit (k = 1 in every published checkpoint), weight
/// `sigmoid(logit)` of each chosen expert, applied to the expert input. No softmax, no
/// renormalisation, no scaling factor. HF's `Llama4TextMoe` takes the same top-k for
/// `num_experts_per_tok > 1`.
#[derive(Clone, Copy, Debug)]
pub struct Llama4Router {
    /// Experts per token.
    pub k: usize,
    /// Optional capacity factor.
    pub capacity: Option<f64>,
}

impl Default for Llama4Router {
    /// Top-1, no capacity: the published configuration.
    fn default() -> Self {
        Llama4Router { k: 1, capacity: None }
    }
}

impl Router for Llama4Router {
    fn name(&self) -> &'static str {
        "llama4"
    }

    fn fused(&self) -> Option<RouteKind> {
        // The fused kernel's Llama 4 rule is top-1 only.
        (self.capacity.is_none() && self.k == 1).then_some(RouteKind::Llama4)
    }

    fn route(&self, input: &RouterInput<'_>) -> Result<Routing> {
        check_input(self.name(), input)?;
        let e = input.n_experts;
        check_k(self.name(), self.k, e)?;
        let mut assignments = Vec::with_capacity(input.n_tokens * self.k);
        for (token, row) in input.logits.chunks(e).enumerate() {
            // Largest logits first; exact ties go to the lower index (a stable choice).
            assignments.extend(top_k(row, self.k).into_iter().map(|expert| Assignment {
                token,
                expert,
                weight: sigmoid(row[expert]),
            }));
        }
        let (assignments, dropped) = apply_capacity(assignments, self.capacity, input.n_tokens, self.k, e);
        Ok(Routing {
            n_tokens: input.n_tokens,
            n_experts: e,
            assignments,
            placement: WeightPlacement::Input,
            dropped,
            aux_loss: None,
            z_loss: None,
        })
    }
}

/// Mixtral/Qwen routing: softmax over experts, top-k, weights renormalised over the chosen k
/// (unless `renormalize` is off), applied to the expert output.
#[derive(Clone, Copy, Debug)]
pub struct SoftmaxTopK {
    /// Experts per token.
    pub k: usize,
    /// Renormalise the chosen probabilities to sum to 1.
    pub renormalize: bool,
    /// Optional capacity factor.
    pub capacity: Option<f64>,
}

impl Router for SoftmaxTopK {
    fn name(&self) -> &'static str {
        "softmax-topk"
    }

    fn fused(&self) -> Option<RouteKind> {
        (self.capacity.is_none() && self.k <= MAX_K).then_some(RouteKind::SoftmaxTopK {
            k: self.k,
            renormalize: self.renormalize,
        })
    }

    fn route(&self, input: &RouterInput<'_>) -> Result<Routing> {
        check_input(self.name(), input)?;
        let e = input.n_experts;
        check_k(self.name(), self.k, e)?;
        let probs: Vec<Vec<f32>> = input.logits.chunks(e).map(softmax).collect();
        let mut assignments = Vec::with_capacity(input.n_tokens * self.k);
        for (token, p) in probs.iter().enumerate() {
            let chosen = top_k(p, self.k);
            let norm = match self.renormalize {
                true => chosen.iter().map(|&j| p[j]).sum::<f32>(),
                false => 1.0,
            };
            assignments.extend(chosen.into_iter().map(|expert| Assignment {
                token,
                expert,
                weight: p[expert] / norm,
            }));
        }
        let (aux, z) = balance_losses(input, &probs, &assignments);
        let (assignments, dropped) = apply_capacity(assignments, self.capacity, input.n_tokens, self.k, e);
        Ok(Routing {
            n_tokens: input.n_tokens,
            n_experts: e,
            assignments,
            placement: WeightPlacement::Output,
            dropped,
            aux_loss: Some(aux),
            z_loss: Some(z),
        })
    }
}

/// DeepSeek-V3 routing: sigmoid scores; selection by score plus a per-expert bias, limited to
/// the `topk_groups` expert groups whose two best biased scores sum highest; weights are the
/// chosen unbiased scores normalised to 1, times `scale`; applied to the expert output.
#[derive(Clone, Debug)]
pub struct DeepSeekV3 {
    /// Experts per token.
    pub k: usize,
    /// Expert groups (must divide the expert count).
    pub groups: usize,
    /// Groups a token may use.
    pub topk_groups: usize,
    /// Routed scaling factor.
    pub scale: f32,
    /// Per-expert selection bias (empty: zeros).
    pub bias: Vec<f32>,
    /// Optional capacity factor.
    pub capacity: Option<f64>,
}

impl Router for DeepSeekV3 {
    fn name(&self) -> &'static str {
        "deepseek-v3"
    }

    fn route(&self, input: &RouterInput<'_>) -> Result<Routing> {
        check_input(self.name(), input)?;
        let e = input.n_experts;
        check_k(self.name(), self.k, e)?;
        let bad = |msg: String| Err(Error::invalid("router", format!("deepseek-v3: {msg}")));
        if self.groups == 0 || !e.is_multiple_of(self.groups) {
            return bad(format!("groups = {} must divide the {e} experts", self.groups));
        }
        let per_group = e / self.groups;
        if self.topk_groups == 0 || self.topk_groups > self.groups || self.k > self.topk_groups * per_group {
            return bad(format!(
                "topk_groups = {} must be in 1..={} and hold k = {} experts",
                self.topk_groups, self.groups, self.k
            ));
        }
        if !self.bias.is_empty() && self.bias.len() != e {
            return bad(format!("bias has {} values for {e} experts", self.bias.len()));
        }
        let mut assignments = Vec::with_capacity(input.n_tokens * self.k);
        for (token, row) in input.logits.chunks(e).enumerate() {
            let scores: Vec<f32> = row.iter().map(|&x| sigmoid(x)).collect();
            let biased: Vec<f32> = (0..e)
                .map(|j| scores[j] + self.bias.get(j).copied().unwrap_or(0.0))
                .collect();
            // A group's score: the sum of its two best biased scores (its only one with 1/group).
            let group_scores: Vec<f32> = biased
                .chunks(per_group)
                .map(|g| top_k(g, 2.min(per_group)).iter().map(|&j| g[j]).sum())
                .collect();
            let allowed = top_k(&group_scores, self.topk_groups);
            let masked: Vec<f32> = (0..e)
                .map(|j| match allowed.contains(&(j / per_group)) {
                    true => biased[j],
                    false => f32::NEG_INFINITY,
                })
                .collect();
            let chosen = top_k(&masked, self.k);
            let norm: f32 = chosen.iter().map(|&j| scores[j]).sum::<f32>() + 1e-20;
            assignments.extend(chosen.into_iter().map(|expert| Assignment {
                token,
                expert,
                weight: scores[expert] / norm * self.scale,
            }));
        }
        let (assignments, dropped) = apply_capacity(assignments, self.capacity, input.n_tokens, self.k, e);
        Ok(Routing {
            n_tokens: input.n_tokens,
            n_experts: e,
            assignments,
            placement: WeightPlacement::Output,
            dropped,
            aux_loss: None,
            z_loss: None,
        })
    }
}

/// Expert-choice routing: each expert takes its `⌈capacity·n/e⌉` tokens of highest softmax
/// probability (ties to the earlier token); a token may reach several experts or none. Weights
/// are the probabilities, applied to the expert output.
#[derive(Clone, Copy, Debug)]
pub struct ExpertChoice {
    /// Capacity factor (1.0: on average one expert per token).
    pub capacity: f64,
}

impl Router for ExpertChoice {
    fn name(&self) -> &'static str {
        "expert-choice"
    }

    fn route(&self, input: &RouterInput<'_>) -> Result<Routing> {
        check_input(self.name(), input)?;
        let (n, e) = (input.n_tokens, input.n_experts);
        if !(self.capacity.is_finite() && self.capacity > 0.0) {
            return Err(Error::invalid(
                "router",
                format!("expert-choice: capacity must be > 0, got {}", self.capacity),
            ));
        }
        let per_expert = ((self.capacity * n as f64 / e as f64).ceil() as usize).min(n);
        let probs: Vec<Vec<f32>> = input.logits.chunks(e).map(softmax).collect();
        let mut assignments = Vec::with_capacity(per_expert * e);
        for expert in 0..e {
            let column: Vec<f32> = probs.iter().map(|p| p[expert]).collect();
            assignments.extend(top_k(&column, per_expert).into_iter().map(|token| Assignment {
                token,
                expert,
                weight: probs[token][expert],
            }));
        }
        // Token-major, each token's experts by falling weight (ties to the lower expert).
        assignments.sort_by(|a, b| {
            a.token
                .cmp(&b.token)
                .then(b.weight.total_cmp(&a.weight))
                .then(a.expert.cmp(&b.expert))
        });
        let (aux, z) = balance_losses(input, &probs, &assignments);
        Ok(Routing {
            n_tokens: n,
            n_experts: e,
            assignments,
            placement: WeightPlacement::Output,
            dropped: 0,
            aux_loss: Some(aux),
            z_loss: Some(z),
        })
    }
}

/// Hash routing: expert `hash(token id) mod e`, weight 1; no learned router.
#[derive(Clone, Copy, Debug, Default)]
pub struct HashRouter {
    /// Optional capacity factor.
    pub capacity: Option<f64>,
}

/// SplitMix64's finalizer, the hash of hash routing and the stream of random routing.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Router for HashRouter {
    fn name(&self) -> &'static str {
        "hash"
    }

    fn route(&self, input: &RouterInput<'_>) -> Result<Routing> {
        check_input(self.name(), input)?;
        let e = input.n_experts;
        let ids = input
            .token_ids
            .ok_or_else(|| Error::invalid("router", "hash routing needs token ids (input_ids), not embeddings"))?;
        if ids.len() != input.n_tokens {
            return Err(Error::invalid(
                "router",
                format!("hash: {} token ids for {} tokens", ids.len(), input.n_tokens),
            ));
        }
        let assignments = ids
            .iter()
            .enumerate()
            .map(|(token, &id)| Assignment {
                token,
                expert: (mix(id as u64) % e as u64) as usize,
                weight: 1.0,
            })
            .collect();
        let (assignments, dropped) = apply_capacity(assignments, self.capacity, input.n_tokens, 1, e);
        Ok(Routing {
            n_tokens: input.n_tokens,
            n_experts: e,
            assignments,
            placement: WeightPlacement::Output,
            dropped,
            aux_loss: None,
            z_loss: None,
        })
    }
}

/// Seeded random routing: `k` distinct experts per token, drawn from a stream keyed by the seed
/// and the token index, weight 1.
#[derive(Clone, Copy, Debug)]
pub struct RandomRouter {
    /// Experts per token.
    pub k: usize,
    /// The seed.
    pub seed: u64,
}

impl Router for RandomRouter {
    fn name(&self) -> &'static str {
        "random"
    }

    fn route(&self, input: &RouterInput<'_>) -> Result<Routing> {
        check_input(self.name(), input)?;
        let e = input.n_experts;
        check_k(self.name(), self.k, e)?;
        let mut assignments = Vec::with_capacity(input.n_tokens * self.k);
        for token in 0..input.n_tokens {
            // A partial Fisher–Yates shuffle of 0..e from the token's own stream.
            let mut experts: Vec<usize> = (0..e).collect();
            let mut state = mix(self.seed ^ mix(token as u64 + 1));
            for i in 0..self.k {
                state = mix(state.wrapping_add(0x9E37_79B9_7F4A_7C15));
                experts.swap(i, i + (state % (e - i) as u64) as usize);
                assignments.push(Assignment {
                    token,
                    expert: experts[i],
                    weight: 1.0,
                });
            }
        }
        Ok(Routing {
            n_tokens: input.n_tokens,
            n_experts: e,
            assignments,
            placement: WeightPlacement::Output,
            dropped: 0,
            aux_loss: None,
            z_loss: None,
        })
    }
}

/// Forced routing: every token to one given expert, weight 1 (a controlled ablation).
#[derive(Clone, Copy, Debug)]
pub struct ForcedRouter {
    /// The expert every token goes to.
    pub expert: usize,
}

impl Router for ForcedRouter {
    fn name(&self) -> &'static str {
        "forced"
    }

    fn route(&self, input: &RouterInput<'_>) -> Result<Routing> {
        check_input(self.name(), input)?;
        if self.expert >= input.n_experts {
            return Err(Error::invalid(
                "router",
                format!("forced: expert {} of only {}", self.expert, input.n_experts),
            ));
        }
        Ok(Routing {
            n_tokens: input.n_tokens,
            n_experts: input.n_experts,
            assignments: (0..input.n_tokens)
                .map(|token| Assignment {
                    token,
                    expert: self.expert,
                    weight: 1.0,
                })
                .collect(),
            placement: WeightPlacement::Output,
            dropped: 0,
            aux_loss: None,
            z_loss: None,
        })
    }
}

// ---- selection by spec string ------------------------------------------------------------------

/// Names of the strategies [`router_by_name`] knows.
pub const ROUTER_NAMES: &[&str] = &[
    "llama4",
    "softmax-topk",
    "deepseek-v3",
    "expert-choice",
    "hash",
    "random",
    "forced",
];

/// The parameters of a spec string, consumed one by one so that leftovers are errors.
struct Params {
    spec: String,
    values: BTreeMap<String, String>,
}

impl Params {
    fn parse(spec: &str, body: &str) -> Result<Self> {
        let mut values = BTreeMap::new();
        for item in body.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| Error::invalid("router", format!("{spec:?}: parameter {item:?} is not key=value")))?;
            if values
                .insert(key.trim().to_string(), value.trim().to_string())
                .is_some()
            {
                return Err(Error::invalid(
                    "router",
                    format!("{spec:?}: parameter {key:?} given twice"),
                ));
            }
        }
        Ok(Params {
            spec: spec.to_string(),
            values,
        })
    }

    fn get<T: std::str::FromStr>(&mut self, key: &str) -> Result<Option<T>> {
        match self.values.remove(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| Error::invalid("router", format!("{:?}: {key}={v:?} is not a valid value", self.spec))),
        }
    }

    fn finish(self) -> Result<()> {
        match self.values.keys().next() {
            None => Ok(()),
            Some(key) => Err(Error::invalid(
                "router",
                format!("{:?}: unknown parameter {key:?}", self.spec),
            )),
        }
    }
}

/// The routing strategy a spec string names: `name` or `name:key=value,...` (see the module
/// docs for each strategy's keys). Unknown names, unknown keys and bad values are errors naming
/// them.
pub fn router_by_name(spec: &str) -> Result<Box<dyn Router>> {
    let (name, body) = spec.split_once(':').unwrap_or((spec, ""));
    let mut p = Params::parse(spec, body)?;
    let capacity: Option<f64> = p.get("capacity")?;
    if let Some(c) = capacity
        && !(c.is_finite() && c > 0.0)
    {
        return Err(Error::invalid("router", format!("{spec:?}: capacity must be > 0")));
    }
    if matches!(name, "random" | "forced") && capacity.is_some() {
        return Err(Error::invalid(
            "router",
            format!("{spec:?}: {name} routing takes no capacity"),
        ));
    }
    let router: Box<dyn Router> = match name {
        "llama4" => Box::new(Llama4Router {
            k: p.get("k")?.unwrap_or(1),
            capacity,
        }),
        "softmax-topk" => Box::new(SoftmaxTopK {
            k: p.get("k")?.unwrap_or(2),
            renormalize: p.get("renorm")?.unwrap_or(true),
            capacity,
        }),
        "deepseek-v3" => {
            let bias: Option<String> = p.get("bias")?;
            let bias = match bias {
                None => Vec::new(),
                Some(list) => list
                    .split(';')
                    .map(|v| v.trim().parse::<f32>())
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|_| Error::invalid("router", format!("{spec:?}: bias must be f32 values split by ';'")))?,
            };
            Box::new(DeepSeekV3 {
                k: p.get("k")?.unwrap_or(2),
                groups: p.get("groups")?.unwrap_or(1),
                topk_groups: p.get("topk_groups")?.unwrap_or(1),
                scale: p.get("scale")?.unwrap_or(1.0),
                bias,
                capacity,
            })
        }
        "expert-choice" => Box::new(ExpertChoice {
            capacity: capacity.unwrap_or(1.0),
        }),
        "hash" => Box::new(HashRouter { capacity }),
        "random" => Box::new(RandomRouter {
            k: p.get("k")?.unwrap_or(1),
            seed: p.get("seed")?.unwrap_or(0),
        }),
        "forced" => Box::new(ForcedRouter {
            expert: p
                .get("expert")?
                .ok_or_else(|| Error::invalid("router", format!("{spec:?}: forced routing needs expert=J")))?,
        }),
        other => {
            return Err(Error::invalid(
                "router",
                format!("unknown routing strategy {other:?}; known: {}", ROUTER_NAMES.join(", ")),
            ));
        }
    };
    p.finish()?;
    Ok(router)
}
