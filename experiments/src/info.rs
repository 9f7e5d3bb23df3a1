//! `l4 info`: what this machine offers l4lab (devices, NVRTC) and which presets are built in.

use std::fmt::Write;

use l4_core::cuda;
use l4_model::PRESETS;

/// A human-readable report of the devices, the CUDA libraries found and the built-in presets.
pub fn report() -> String {
    let mut out = String::new();
    let _ = writeln!(out, "l4lab {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(out, "\ndevices:");
    let _ = writeln!(
        out,
        "  cpu: {} threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    match cuda::device_count() {
        Ok(0) => {
            let _ = writeln!(out, "  cuda: driver found, no device");
        }
        Ok(n) => {
            for ordinal in 0..n {
                match cuda::backend(ordinal) {
                    Ok(backend) => {
                        let info = backend.info();
                        let (major, minor) = info.compute_capability;
                        let _ = writeln!(
                            out,
                            "  cuda:{ordinal}: {} (sm_{major}{minor}, {} SMs, {:.1} GiB)",
                            info.name,
                            info.sm_count,
                            info.total_memory as f64 / (1u64 << 30) as f64
                        );
                    }
                    Err(e) => {
                        let _ = writeln!(out, "  cuda:{ordinal}: unusable: {e}");
                    }
                }
            }
        }
        Err(e) => {
            let _ = writeln!(out, "  cuda: not available ({e})");
        }
    }
    let _ = writeln!(out, "\nkernel compiler:");
    let nvrtc = match (cuda::nvrtc_present(), l4_kernels::nvrtc::nvrtc_version()) {
        (true, Ok((major, minor))) => {
            format!("NVRTC {major}.{minor}: kernels compile for this machine's GPU at run time")
        }
        (true, Err(e)) => format!("libnvrtc found but unusable: {e}"),
        (false, _) => "libnvrtc not found on the loader path (kernels cannot be compiled; CPU paths work)".into(),
    };
    let _ = writeln!(out, "  {nvrtc}");
    let _ = writeln!(out, "\npresets:");
    for preset in PRESETS {
        let (total, active) = preset.spec().param_counts();
        let _ = writeln!(
            out,
            "  {:<26} {:>8.1}B total {:>7.1}B active  {}",
            preset.name,
            total as f64 / 1e9,
            active as f64 / 1e9,
            preset.description
        );
    }
    out
}

/// `l4 info --model`: the resolved per-layer plan of a checkpoint folder or preset, its
/// parameter counts, and the bytes of weights and of KV cache per token. Allocates nothing.
pub fn model_report(model: &str) -> anyhow::Result<String> {
    use l4_model::{Ffn, Position, Span};
    let (spec, _) = l4_model::loader::resolve(model)?;
    let mut out = String::new();
    let _ = writeln!(out, "model {model}");
    let _ = writeln!(
        out,
        "  width {}  heads {} (kv {})  head dim {}  vocab {}  layers {}",
        spec.hidden_size,
        spec.num_heads,
        spec.num_kv_heads,
        spec.head_dim,
        spec.vocab_size,
        spec.num_layers()
    );
    let _ = writeln!(out, "  rope theta {}  scaling {:?}", spec.rope.theta, spec.rope.scaling);
    let _ = writeln!(out, "\n  layer  position  span          qk-norm  temperature  ffn");
    for (i, layer) in spec.layers.iter().enumerate() {
        let position = match layer.position {
            Position::Rope => "rope",
            Position::NoPe => "nope",
        };
        let span = match layer.span {
            Span::Chunked(n) => format!("chunked({n})"),
            Span::Global => "global".into(),
        };
        let temperature = layer
            .temperature
            .map_or("-".into(), |t| format!("{}/{}", t.floor_scale, t.attn_scale));
        let ffn = match &layer.ffn {
            Ffn::Dense { intermediate } => format!("dense swiglu {intermediate}"),
            Ffn::Moe(m) => format!(
                "moe {} experts top-{} width {} shared {} router {}",
                m.num_experts,
                m.top_k,
                m.expert_intermediate,
                m.shared_intermediate.map_or("off".into(), |w| w.to_string()),
                m.router
            ),
        };
        let _ = writeln!(
            out,
            "  {i:>5}  {position:<8}  {span:<12}  {:<7}  {temperature:<11}  {ffn}",
            layer.qk_norm
        );
    }
    let (total, active) = spec.param_counts();
    let _ = writeln!(
        out,
        "\n  parameters: {:.2}B total, {:.2}B active per token",
        total as f64 / 1e9,
        active as f64 / 1e9
    );
    let _ = writeln!(
        out,
        "  weights: {:.1} GiB in bf16, {:.1} GiB in f32",
        (2 * total) as f64 / (1u64 << 30) as f64,
        (4 * total) as f64 / (1u64 << 30) as f64
    );
    let _ = writeln!(
        out,
        "  KV cache: {} bytes per token in bf16 (chunked layers stop growing at their chunk)",
        spec.kv_cache_bytes_per_token(2)
    );
    if let Some(vision) = l4_model::loader::resolve_vision(model, &spec)? {
        let _ = writeln!(
            out,
            "  vision: {} layers, width {}, {} heads, {}px tiles of {}px patches -> {} tokens per tile; {:.2}B parameters",
            vision.num_layers,
            vision.hidden_size,
            vision.num_heads,
            vision.image_size,
            vision.patch_size,
            vision.tokens_per_tile(),
            vision.param_count() as f64 / 1e9
        );
    }
    Ok(out)
}
