//! The benchmark shape table, derived from the model presets so benches track the real models.

use l4_model::{Ffn, ModelSpec, preset};

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
    let spec = preset(preset_name)
        .map(|p| p.spec())
        .unwrap_or_else(|e| panic!("bench shape table: {e}"));
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

/// Shapes for GPU benches: Scout and Maverick at decode (1, 16 tokens) and prefill (2048).
pub fn gpu_matmul_shapes() -> Vec<MatmulShape> {
    let mut shapes = matmul_shapes("llama4-scout-17b-16e", "scout", &[1, 16, 2048]);
    shapes.extend(matmul_shapes("llama4-maverick-17b-128e", "maverick", &[1, 16, 2048]));
    shapes
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
        assert_eq!(gpu_matmul_shapes().len(), 2 * 3 * 6);
    }
}
