//! KV-cache memory for a context length, under the two attention schemes the plan compares.
//!
//! Every layer caches K and V, `hk` heads of `dh` values each, per token it holds. What a layer
//! holds depends on the scheme:
//! * **iRoPE**, as Llama 4 runs it (and as `l4_model::kv_cache` keeps it): a chunked RoPE layer
//!   holds at most one attention chunk of tokens (a query only sees keys of its own chunk), a
//!   global NoPE layer holds the whole context;
//! * **all-global**: every layer holds the whole context (the same model without chunking).

use l4_model::{ModelSpec, Span};

/// The attention scheme whose cache is sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// The model's own plan: chunked layers hold at most one chunk.
    IRope,
    /// Every layer holds the whole context.
    AllGlobal,
}

impl Scheme {
    /// Both schemes, iRoPE first.
    pub const BOTH: [Scheme; 2] = [Scheme::IRope, Scheme::AllGlobal];

    /// The name in tables and plots.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::IRope => "iRoPE",
            Scheme::AllGlobal => "all-global",
        }
    }
}

/// What sizes a model's KV cache: the per-layer spans and the bytes one layer caches per token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvLayout {
    /// Bytes one layer caches per token: K and V, `hk · dh` values each.
    pub bytes_per_token_per_layer: u64,
    /// The chunk of each chunked layer.
    pub chunked: Vec<u64>,
    /// Layers that hold the whole context in the model's own plan.
    pub global_layers: u64,
    /// Sequences cached side by side.
    pub batch: u64,
}

impl KvLayout {
    /// The layout of `spec` with `element_bytes` per cached value and `batch` sequences.
    pub fn new(spec: &ModelSpec, element_bytes: usize, batch: usize) -> KvLayout {
        let chunked: Vec<u64> = spec
            .layers
            .iter()
            .filter_map(|l| match l.span {
                Span::Chunked(n) => Some(n as u64),
                Span::Global => None,
            })
            .collect();
        KvLayout {
            bytes_per_token_per_layer: (2 * spec.num_kv_heads * spec.head_dim * element_bytes) as u64,
            global_layers: (spec.num_layers() - chunked.len()) as u64,
            chunked,
            batch: batch as u64,
        }
    }

    /// All layers.
    pub fn layers(&self) -> u64 {
        self.global_layers + self.chunked.len() as u64
    }

    /// Token slots (summed over layers) held for one sequence at `context` tokens.
    fn slots(&self, scheme: Scheme, context: u64) -> u128 {
        let context = u128::from(context);
        match scheme {
            Scheme::AllGlobal => u128::from(self.layers()) * context,
            Scheme::IRope => {
                let chunked: u128 = self.chunked.iter().map(|&c| context.min(u128::from(c))).sum();
                u128::from(self.global_layers) * context + chunked
            }
        }
    }

    /// Bytes of KV cache at `context` tokens per sequence, for the whole batch. Computed in
    /// u128 and saturated, so absurd contexts compare as "too large" instead of wrapping.
    pub fn bytes(&self, scheme: Scheme, context: u64) -> u64 {
        let bytes = self.slots(scheme, context) * u128::from(self.bytes_per_token_per_layer) * u128::from(self.batch);
        u64::try_from(bytes).unwrap_or(u64::MAX)
    }

    /// Bytes each further token adds once the context is past every chunk.
    pub fn growth_per_token(&self, scheme: Scheme) -> u64 {
        let layers = match scheme {
            Scheme::AllGlobal => self.layers(),
            Scheme::IRope => self.global_layers,
        };
        layers * self.bytes_per_token_per_layer * self.batch
    }

    /// The longest context whose cache takes at most `budget` bytes: `None` when the cache
    /// stops growing (no global layer under this scheme) and even its largest size fits.
    pub fn longest_context(&self, scheme: Scheme, budget: u64) -> Option<u64> {
        let growth = self.growth_per_token(scheme);
        if growth == 0 {
            let largest_chunk = self.chunked.iter().copied().max().unwrap_or(0);
            return match self.bytes(scheme, largest_chunk) <= budget {
                true => None,
                // Below the largest chunk the cache still grows: search as usual.
                false => Some(self.search(scheme, budget, largest_chunk)),
            };
        }
        // Past every chunk each token adds `growth` bytes, so this context is over the budget.
        let largest_chunk = self.chunked.iter().copied().max().unwrap_or(0);
        let over = largest_chunk.max(budget / growth) + 1;
        Some(self.search(scheme, budget, over))
    }

    /// The largest context in `0..over` whose cache fits `budget` (`bytes` is monotone).
    fn search(&self, scheme: Scheme, budget: u64, over: u64) -> u64 {
        let (mut fits, mut too_big) = (0u64, over);
        while too_big - fits > 1 {
            let mid = fits + (too_big - fits) / 2;
            match self.bytes(scheme, mid) <= budget {
                true => fits = mid,
                false => too_big = mid,
            }
        }
        fits
    }
}
