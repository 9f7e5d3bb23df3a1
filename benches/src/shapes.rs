//! The benchmark shape table, derived from the model presets so benches track the real models.

use l4_model::{Ffn, ModelSpec, Span, preset};

/// One GEMM of a Llama 4 layer: `[tokens, k] x [k, n]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatmulShape {
    /// Which projection and preset it comes from, e.g. `scout/q_proj`.
    pub name: String,
    /// Tokens `t` (the GEMM's m).
    pub m: usize,
    /// Output features.
    pub n: usize,
    /// Input features (the reduction length).
    pub k: usize,
}

/// The distinct projections of `spec`'s layers, as `(name, n, k)`.
pub fn layer_projections(spec: &ModelSpec) -> Vec<(&'static str, usize, usize)> {
    let d = spec.hidden_size;
    let mut projections = vec![
        ("q_proj", spec.num_heads * spec.head_dim, d),
        ("kv_proj", 2 * spec.num_kv_heads * spec.head_dim, d),
        ("o_proj", d, spec.num_heads * spec.head_dim),
    ];
    let moe = spec.layers.iter().find_map(|l| match &l.ffn {
        Ffn::Moe(moe) => Some(moe.clone()),
        Ffn::Dense { .. } => None,
    });
    if let Some(moe) = moe {
        projections.push(("router", moe.num_experts, d));
        projections.push(("expert_gate_up", 2 * moe.expert_intermediate, d));
        projections.push(("expert_down", d, moe.expert_intermediate));
    }
    projections
}

/// Every projection of `preset_name` at each token count in `token_counts`.
pub fn matmul_shapes(preset_name: &str, short_name: &str, token_counts: &[usize]) -> Vec<MatmulShape> {
    // The preset names are compile-time constants of l4-model; a typo is a bug in this crate.
    let spec = preset_spec(preset_name);
    let mut shapes = Vec::new();
    for &m in token_counts {
        for (proj, n, k) in layer_projections(&spec) {
            shapes.push(MatmulShape {
                name: format!("{short_name}/{proj}"),
                m,
                n,
                k,
            });
        }
    }
    shapes
}

/// Shapes small enough for the CPU backend: the tiny preset, and Scout's projections at one
/// decode token (the matrix-vector case the CPU path sees when generating).
pub fn cpu_matmul_shapes() -> Vec<MatmulShape> {
    let mut shapes = matmul_shapes("tiny-scout", "tiny", &[1, 64]);
    shapes.extend(
        matmul_shapes("llama4-scout-17b-16e", "scout", &[1])
            .into_iter()
            .filter(|s| matches!(s.name.as_str(), "scout/q_proj" | "scout/router" | "scout/kv_proj")),
    );
    shapes
}

/// The preset the GPU benches take their shapes from.
pub const GPU_PRESET: &str = "llama4-scout-17b-16e";

/// The preset the CPU runs of the op benches take their shapes from (small enough for a
/// 2-core machine, so a dry run exercises every bench's code).
pub const CPU_PRESET: &str = "tiny-scout";

/// Token counts (GEMM m) of the GPU GEMM benches: one decode token, a decode batch, a short
/// prompt, a prefill and a long prefill. Kept short so the GPU suite fits its time window.
pub const GPU_TOKEN_COUNTS: [usize; 5] = [1, 16, 128, 2048, 8192];

/// The GEMMs of a forward pass, as `(name, n, k)`: the fused QKV projection
/// (`(h + 2·hk)·dh` outputs), the output projection, the FFN's gate/up (fused, `2·f` outputs)
/// and down projections (of the routed experts when the model has MoE layers, which for Llama 4
/// have the shared expert's width too, else of the dense MLP), and the LM head (`v` outputs).
pub fn forward_gemms(spec: &ModelSpec) -> Vec<(&'static str, usize, usize)> {
    let d = spec.hidden_size;
    let mut gemms = vec![
        ("qkv_proj", (spec.num_heads + 2 * spec.num_kv_heads) * spec.head_dim, d),
        ("o_proj", d, spec.num_heads * spec.head_dim),
    ];
    let moe = spec.layers.iter().find_map(|l| match &l.ffn {
        Ffn::Moe(moe) => Some(moe.expert_intermediate),
        Ffn::Dense { .. } => None,
    });
    let dense = spec.layers.iter().find_map(|l| match &l.ffn {
        Ffn::Dense { intermediate } => Some(*intermediate),
        Ffn::Moe(_) => None,
    });
    if let Some(f) = moe {
        gemms.push(("expert_gate_up", 2 * f, d));
        gemms.push(("expert_down", d, f));
    } else if let Some(f) = dense {
        gemms.push(("mlp_gate_up", 2 * f, d));
        gemms.push(("mlp_down", d, f));
    }
    gemms.push(("lm_head", spec.vocab_size, d));
    gemms
}

/// The GEMM table of `preset_name` at each token count, named `<short_name>/<gemm>`.
pub fn gemm_shapes(preset_name: &str, short_name: &str, token_counts: &[usize]) -> Vec<MatmulShape> {
    let spec = preset_spec(preset_name);
    let gemms = forward_gemms(&spec);
    let mut shapes = Vec::new();
    for (gemm, n, k) in gemms {
        for &m in token_counts {
            shapes.push(MatmulShape {
                name: format!("{short_name}/{gemm}"),
                m,
                n,
                k,
            });
        }
    }
    shapes
}

/// The GPU GEMM benches: Scout's forward-pass GEMMs ([`forward_gemms`]) at
/// [`GPU_TOKEN_COUNTS`], grouped by GEMM so each weight is made once.
pub fn gpu_gemm_shapes() -> Vec<MatmulShape> {
    gemm_shapes(GPU_PRESET, "scout", &GPU_TOKEN_COUNTS)
}

/// The sizes of a model that the op benches (norms, softmax, RoPE, gathers, casts, SwiGLU,
/// top-k) take their shapes from, read from a preset's resolved plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelDims {
    /// The preset's name.
    pub preset: &'static str,
    /// Model width `d`.
    pub hidden: usize,
    /// Query heads `h`.
    pub heads: usize,
    /// Key/value heads `hk`.
    pub kv_heads: usize,
    /// Head width `dh`.
    pub head_dim: usize,
    /// Vocabulary `v`.
    pub vocab: usize,
    /// Routed experts `e` (0 without MoE layers).
    pub experts: usize,
    /// Experts per token (0 without MoE layers).
    pub top_k: usize,
    /// FFN width `f` of the MoE experts, or of the dense MLP without MoE layers.
    pub ffn: usize,
    /// Attention chunk of the chunked layers (the longest key span a chunked layer reads);
    /// `None` when every layer is global.
    pub chunk: Option<usize>,
}

impl ModelDims {
    /// The sizes of the built-in preset `preset_name`. Panics on an unknown name: the names
    /// are constants of this crate, so that is a bug here, not bad input.
    pub fn of(preset_name: &'static str) -> ModelDims {
        let spec = preset_spec(preset_name);
        let moe = spec.layers.iter().find_map(|l| match &l.ffn {
            Ffn::Moe(moe) => Some(moe.clone()),
            Ffn::Dense { .. } => None,
        });
        let dense = spec.layers.iter().find_map(|l| match &l.ffn {
            Ffn::Dense { intermediate } => Some(*intermediate),
            Ffn::Moe(_) => None,
        });
        let chunk = spec.layers.iter().find_map(|l| match l.span {
            Span::Chunked(n) => Some(n),
            Span::Global => None,
        });
        ModelDims {
            preset: preset_name,
            hidden: spec.hidden_size,
            heads: spec.num_heads,
            kv_heads: spec.num_kv_heads,
            head_dim: spec.head_dim,
            vocab: spec.vocab_size,
            experts: moe.as_ref().map_or(0, |m| m.num_experts),
            top_k: moe.as_ref().map_or(0, |m| m.top_k),
            ffn: moe.as_ref().map(|m| m.expert_intermediate).or(dense).unwrap_or(0),
            chunk,
        }
    }

    /// The dims of the GPU benches ([`GPU_PRESET`]).
    pub fn gpu() -> ModelDims {
        ModelDims::of(GPU_PRESET)
    }

    /// The dims of the CPU runs of the op benches ([`CPU_PRESET`]).
    pub fn cpu() -> ModelDims {
        ModelDims::of(CPU_PRESET)
    }

    /// The key span of one attention row at `tokens` of context: the chunk for chunked layers
    /// when `tokens` exceeds it.
    pub fn key_span(&self, tokens: usize) -> usize {
        self.chunk.map_or(tokens, |c| tokens.min(c))
    }
}

/// The resolved plan of a built-in preset (panics on an unknown name, a bug in this crate).
fn preset_spec(preset_name: &str) -> ModelSpec {
    preset(preset_name)
        .map(|p| p.spec())
        .unwrap_or_else(|e| panic!("bench shape table: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_the_presets() {
        let shapes = matmul_shapes("llama4-scout-17b-16e", "scout", &[16]);
        let q = shapes.iter().find(|s| s.name == "scout/q_proj").unwrap();
        assert_eq!((q.m, q.n, q.k), (16, 40 * 128, 5120));
        let down = shapes.iter().find(|s| s.name == "scout/expert_down").unwrap();
        assert_eq!((down.n, down.k), (5120, 8192));
        assert!(!cpu_matmul_shapes().is_empty());
    }

    #[test]
    fn gpu_gemms_are_scouts_forward_pass() {
        let shapes = gpu_gemm_shapes();
        assert_eq!(shapes.len(), 5 * GPU_TOKEN_COUNTS.len());
        let nk = |name: &str| {
            let s = shapes.iter().find(|s| s.name == name).unwrap();
            (s.n, s.k)
        };
        // q 40·128 + k 8·128 + v 8·128 = 7168 outputs from width 5120.
        assert_eq!(nk("scout/qkv_proj"), (7168, 5120));
        assert_eq!(nk("scout/o_proj"), (5120, 5120));
        assert_eq!(nk("scout/expert_gate_up"), (16_384, 5120));
        assert_eq!(nk("scout/expert_down"), (5120, 8192));
        assert_eq!(nk("scout/lm_head"), (202_048, 5120));
        let ms: Vec<usize> = shapes
            .iter()
            .filter(|s| s.name == "scout/lm_head")
            .map(|s| s.m)
            .collect();
        assert_eq!(ms, GPU_TOKEN_COUNTS);
    }

    #[test]
    fn dims_follow_the_presets() {
        let scout = ModelDims::gpu();
        assert_eq!(
            (scout.hidden, scout.heads, scout.kv_heads, scout.head_dim, scout.vocab),
            (5120, 40, 8, 128, 202_048)
        );
        assert_eq!(
            (scout.experts, scout.top_k, scout.ffn, scout.chunk),
            (16, 1, 8192, Some(8192))
        );
        assert_eq!(scout.key_span(2048), 2048);
        assert_eq!(scout.key_span(100_000), 8192);
        let tiny = ModelDims::cpu();
        assert!(tiny.hidden < 1024 && tiny.vocab < 10_000 && tiny.experts > 0);
        // Maverick has dense layers too; its table still uses the experts' width.
        let maverick = gemm_shapes("llama4-maverick-17b-128e", "maverick", &[1]);
        assert!(maverick.iter().any(|s| s.name == "maverick/expert_down" && s.k == 8192));
    }
}
