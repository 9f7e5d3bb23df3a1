//! What is measured for each variant, and how.
//!
//! Quality, against the base on the same prompts (teacher-forced: every position of the
//! prompts, each variant's own next-token distribution):
//! * `kl_mean`, `kl_max`: KL(base ‖ variant) of the next-token distributions in nats, the mean
//!   and the largest over positions, from the logits in f64;
//! * `top1_agreement`: the fraction of positions whose most likely next token is the base's;
//! * `perplexity`: `exp` of the mean negative log-likelihood of each next prompt token, only
//!   when the prompts are real text (a token or text file) and the weights are real (a
//!   checkpoint folder): a preset's random weights or random prompts make it meaningless.
//!
//! Routing, from the same forward pass (every MoE layer's `Routing::stats`):
//! * per layer: `expert_load` (assignments per expert), `load_max_over_mean` (1 is perfect
//!   balance), `load_entropy` (nats; ln e at perfect balance), `dropped` (assignments over a
//!   capacity), `unrouted_tokens` (tokens that reached no expert);
//! * overall: the loads summed over layers, the mean of the per-layer max/mean and entropy, the
//!   dropped assignments and unrouted tokens summed over layers.
//!
//! Cost: `load_seconds` (building the model), `prefill_tokens_per_s` (all prompt tokens over
//! the median of the timed prefills), `decode_tokens_per_s` (batch × steps over the time of the
//! greedy steps after a prefill), `peak_rss_mib` (the process's peak resident memory while the
//! variant loaded and ran: Linux's VmHWM, reset before each variant through
//! /proc/self/clear_refs; it includes what the runner holds, such as the base's logits) and,
//! on CUDA, `device_memory_mib` (device memory in use after the run, as the driver reports it).

use l4_model::parts::router::RoutingStats;
use serde_json::{Value, json};

/// Quality against the base.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Agreement {
    /// Mean KL(base ‖ variant) over positions, nats.
    pub kl_mean: f64,
    /// Largest KL over positions, nats.
    pub kl_max: f64,
    /// Fraction of positions with the base's top-1 token.
    pub top1: f64,
}

/// `ln softmax(row)` in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
    let sum: f64 = row.iter().map(|&x| (f64::from(x) - max).exp()).sum();
    let log_sum = max + sum.ln();
    row.iter().map(|&x| f64::from(x) - log_sum).collect()
}

/// The index of the largest value, the first on ties.
fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

/// Compares `variant`'s logits with `base`'s, both `[positions, vocab]` flattened.
pub fn agreement(base: &[f32], variant: &[f32], vocab: usize) -> Agreement {
    let mut kl_sum = 0.0;
    let mut kl_max: f64 = 0.0;
    let mut agree = 0usize;
    let positions = base.len() / vocab.max(1);
    for (p, q) in base.chunks(vocab).zip(variant.chunks(vocab)) {
        let (lp, lq) = (log_softmax(p), log_softmax(q));
        // Σ p (ln p − ln q); terms with p = 0 contribute nothing.
        let kl: f64 = lp
            .iter()
            .zip(&lq)
            .map(|(&a, &b)| match a.exp() {
                0.0 => 0.0,
                pa => pa * (a - b),
            })
            .sum();
        // Rounding can make a KL of identical distributions a hair negative.
        let kl = kl.max(0.0);
        kl_sum += kl;
        kl_max = kl_max.max(kl);
        agree += usize::from(argmax(p) == argmax(q));
    }
    Agreement {
        kl_mean: kl_sum / positions.max(1) as f64,
        kl_max,
        top1: agree as f64 / positions.max(1) as f64,
    }
}

/// `exp(mean NLL)` of each row's next tokens: logits `[b, t, v]` flattened, ids `[b, t]`
/// flattened; position `i` predicts token `i + 1` of its row. `None` for one-token rows.
pub fn perplexity(logits: &[f32], ids: &[i64], rows: usize, vocab: usize) -> Option<f64> {
    let t = ids.len() / rows.max(1);
    if t < 2 {
        return None;
    }
    let mut nll = 0.0;
    for r in 0..rows {
        for i in 0..t - 1 {
            let at = (r * t + i) * vocab;
            let next = ids[r * t + i + 1] as usize;
            nll -= log_softmax(&logits[at..at + vocab])[next];
        }
    }
    Some((nll / (rows * (t - 1)) as f64).exp())
}

/// One MoE layer's routing.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerLoad {
    /// Layer index.
    pub layer: usize,
    /// The routing module's own statistics.
    pub stats: RoutingStats,
}

/// Routing summed or averaged over the MoE layers.
#[derive(Clone, Debug, PartialEq)]
pub struct OverallLoad {
    /// Assignments per expert index, summed over layers.
    pub load: Vec<usize>,
    /// Mean over layers of max/mean load.
    pub max_over_mean: f64,
    /// Mean over layers of the load entropy, nats.
    pub entropy: f64,
    /// Dropped assignments, summed over layers.
    pub dropped: usize,
    /// Unrouted tokens, summed over layers.
    pub unrouted_tokens: usize,
}

/// The overall routing of `layers`; `None` without MoE layers.
pub fn overall(layers: &[LayerLoad]) -> Option<OverallLoad> {
    let first = layers.first()?;
    let mut load = vec![0usize; first.stats.load.len()];
    for l in layers {
        for (sum, &x) in load.iter_mut().zip(&l.stats.load) {
            *sum += x;
        }
    }
    let n = layers.len() as f64;
    Some(OverallLoad {
        load,
        max_over_mean: layers.iter().map(|l| l.stats.max_over_mean).sum::<f64>() / n,
        entropy: layers.iter().map(|l| l.stats.entropy).sum::<f64>() / n,
        dropped: layers.iter().map(|l| l.stats.dropped).sum(),
        unrouted_tokens: layers.iter().map(|l| l.stats.unrouted_tokens).sum(),
    })
}

/// Everything measured for one variant.
#[derive(Clone, Debug, PartialEq)]
pub struct VariantMetrics {
    /// Against the base.
    pub agreement: Agreement,
    /// With real text and real weights.
    pub perplexity: Option<f64>,
    /// Per MoE layer.
    pub layers: Vec<LayerLoad>,
    /// Over all MoE layers.
    pub overall: Option<OverallLoad>,
    /// Seconds to build the model.
    pub load_seconds: f64,
    /// Prompt tokens per second of prefill.
    pub prefill_tokens_per_s: f64,
    /// Tokens per second of greedy decoding (none with `decode_tokens = 0`).
    pub decode_tokens_per_s: Option<f64>,
    /// Peak resident memory, MiB (Linux only).
    pub peak_rss_mib: Option<f64>,
    /// Device memory in use after the run, MiB (CUDA only).
    pub device_memory_mib: Option<f64>,
}

/// One line of metrics.jsonl, before the variant's name is added.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Metric name.
    pub metric: &'static str,
    /// The MoE layer, for per-layer metrics.
    pub layer: Option<usize>,
    /// A number, or a list (loads).
    pub value: Value,
}

impl VariantMetrics {
    /// Every metric as a jsonl entry: the deterministic ones (quality, routing) first, then
    /// the measured ones (time, memory), which differ from run to run.
    pub fn entries(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut push = |metric, layer, value| out.push(Entry { metric, layer, value });
        push("kl_mean", None, json!(self.agreement.kl_mean));
        push("kl_max", None, json!(self.agreement.kl_max));
        push("top1_agreement", None, json!(self.agreement.top1));
        if let Some(p) = self.perplexity {
            push("perplexity", None, json!(p));
        }
        for l in &self.layers {
            let s = &l.stats;
            push("expert_load", Some(l.layer), json!(s.load));
            push("load_max_over_mean", Some(l.layer), json!(s.max_over_mean));
            push("load_entropy", Some(l.layer), json!(s.entropy));
            push("dropped", Some(l.layer), json!(s.dropped));
            push("unrouted_tokens", Some(l.layer), json!(s.unrouted_tokens));
        }
        if let Some(o) = &self.overall {
            push("expert_load", None, json!(o.load));
            push("load_max_over_mean", None, json!(o.max_over_mean));
            push("load_entropy", None, json!(o.entropy));
            push("dropped", None, json!(o.dropped));
            push("unrouted_tokens", None, json!(o.unrouted_tokens));
        }
        push("load_seconds", None, json!(self.load_seconds));
        push("prefill_tokens_per_s", None, json!(self.prefill_tokens_per_s));
        if let Some(d) = self.decode_tokens_per_s {
            push("decode_tokens_per_s", None, json!(d));
        }
        if let Some(m) = self.peak_rss_mib {
            push("peak_rss_mib", None, json!(m));
        }
        if let Some(m) = self.device_memory_mib {
            push("device_memory_mib", None, json!(m));
        }
        out
    }
}

/// Whether a metric is measured (time, memory) rather than computed from the outputs.
pub fn is_measured(metric: &str) -> bool {
    matches!(
        metric,
        "load_seconds" | "prefill_tokens_per_s" | "decode_tokens_per_s" | "peak_rss_mib" | "device_memory_mib"
    )
}

/// Starts a new peak-memory window: resets Linux's VmHWM to the current resident size. Returns
/// whether it could (elsewhere, or without the permission, the peak is the process's).
pub fn reset_peak_memory() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The process's peak resident memory in MiB (VmHWM), on Linux.
pub fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use l4_core::testing::{Tolerance, gamma};
    use proptest::strategy::{Just, Strategy};

    #[test]
    fn identical_logits_agree_fully() {
        let logits = [0.5f32, -1.0, 3.0, 0.0, 2.0, 2.0];
        let a = agreement(&logits, &logits, 3);
        assert_eq!((a.kl_mean, a.kl_max, a.top1), (0.0, 0.0, 1.0));
    }

    #[test]
    fn kl_and_agreement_match_a_hand_computation() {
        // Position 0: p = (1/2, 1/2) vs q = (3/4, 1/4); position 1 identical.
        let base = [0.0f32, 0.0, 1.0, 0.0];
        let variant = [3f32.ln(), 0.0, 1.0, 0.0];
        let a = agreement(&base, &variant, 2);
        let kl0 = 0.5 * (0.5f64 / 0.75).ln() + 0.5 * (0.5f64 / 0.25).ln();
        // ln 3 is rounded to f32 in the logits: a relative error of 2^-24 in them.
        assert!((a.kl_max - kl0).abs() < 1e-7, "{a:?}");
        assert!((a.kl_mean - kl0 / 2.0).abs() < 1e-7, "{a:?}");
        // Position 0 ties in the base (the first token wins), so both pick 0: full agreement.
        assert_eq!(a.top1, 1.0);
        let flipped = [0.0f32, 1.0, 1.0, 0.0];
        assert_eq!(agreement(&base, &flipped, 2).top1, 0.5);
    }

    #[test]
    fn perplexity_of_a_uniform_model_is_the_vocabulary() {
        let logits = vec![0f32; 2 * 3 * 5];
        let ids = [0i64, 1, 2, 3, 4, 0];
        let p = perplexity(&logits, &ids, 2, 5).unwrap();
        assert!((p - 5.0).abs() < 1e-12, "{p}");
        assert_eq!(perplexity(&logits[..5], &ids[..1], 1, 5), None);
    }

    #[test]
    fn overall_load_sums_and_averages_the_layers() {
        let stats = |load: Vec<usize>, mom: f64, entropy: f64, dropped: usize| RoutingStats {
            load,
            max_over_mean: mom,
            entropy,
            dropped,
            unrouted_tokens: dropped,
        };
        let layers = [
            LayerLoad {
                layer: 0,
                stats: stats(vec![2, 0], 2.0, 0.0, 1),
            },
            LayerLoad {
                layer: 2,
                stats: stats(vec![1, 1], 1.0, 2f64.ln(), 0),
            },
        ];
        let o = overall(&layers).unwrap();
        assert_eq!(o.load, [3, 1]);
        assert_eq!((o.max_over_mean, o.dropped, o.unrouted_tokens), (1.5, 1, 1));
        assert!((o.entropy - 2f64.ln() / 2.0).abs() < 1e-15);
        assert_eq!(overall(&[]), None);
    }

    /// Rows of logits in quarter steps within ±8, so that a quarter-step shift is exact in f32
    /// and in f64.
    fn quarter_steps(n: usize) -> impl Strategy<Value = Vec<f32>> {
        proptest::collection::vec((-32i32..=32).prop_map(|q| q as f32 / 4.0), n)
    }

    proptest::proptest! {
        /// KL is a divergence: never negative, zero against itself; top-1 agreement is a
        /// fraction, one against itself; and both see logits only through their softmax, so
        /// shifting the variant's logits by a constant changes neither.
        #[test]
        fn agreement_is_a_divergence_and_a_fraction(
            (vocab, base, variant, shift) in (2usize..12, 1usize..6).prop_flat_map(|(vocab, positions)| {
                (Just(vocab), quarter_steps(vocab * positions), quarter_steps(vocab * positions), -16i32..=16)
            })
        ) {
            let a = agreement(&base, &variant, vocab);
            proptest::prop_assert!(a.kl_mean >= 0.0 && a.kl_max >= a.kl_mean);
            proptest::prop_assert!((0.0..=1.0).contains(&a.top1));
            let same = agreement(&base, &base, vocab);
            proptest::prop_assert_eq!((same.kl_mean, same.kl_max, same.top1), (0.0, 0.0, 1.0));

            let shifted: Vec<f32> = variant.iter().map(|x| x + shift as f32 / 4.0).collect();
            let b = agreement(&base, &shifted, vocab);
            proptest::prop_assert_eq!(b.top1, a.top1);
            // The shift is exact up to the log-sum-exp: `max + ln Σ` (|·| < 15) and `x − it`
            // (|·| < 30) are each rounded once in f64, so every log-probability of the variant
            // moves by at most (2·15 + 30)·u; the p-weighted sum of those moves is bounded by
            // the largest, and the two KL sums of ≤ vocab terms (Σ|terms| < 32) add
            // 2·γ_vocab(u)·32. Their means over positions are divided once more: rtol 2u.
            let u = f64::EPSILON / 2.0;
            let tol = Tolerance::new(60.0 * u + 2.0 * gamma(vocab, u) * 32.0, 2.0 * u);
            proptest::prop_assert!(tol.allows(b.kl_mean, a.kl_mean), "{a:?} vs {b:?} under {tol}");
            proptest::prop_assert!(tol.allows(b.kl_max, a.kl_max), "{a:?} vs {b:?} under {tol}");
        }
    }

    #[test]
    fn peak_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_memory_mib().is_some_and(|m| m > 0.0));
        }
    }
}
