//! `l4 plan`: how much GPU memory a model needs for a context length, before anything is loaded.
//!
//! The plan reads the resolved per-layer plan of a preset or checkpoint folder (which layers
//! are chunked, the chunk, the KV heads and head width) and sizes two things:
//! * [`weights`]: every parameter in the compute dtype, or as e4m3 plus scales where an FP8
//!   recipe stores it so;
//! * [`kv`]: the KV cache at the context, under iRoPE as Llama 4 runs it (chunked layers hold
//!   one chunk) and under all-global attention (every layer holds the whole context).
//!
//! Activations, workspace and the CUDA context are not counted; the report says so.

pub mod budget;
pub mod kv;
pub mod plot;
pub mod weights;

use std::fmt::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use l4_core::DType;
use l4_model::parts::fp8::Fp8Mode;

pub use budget::GpuMemory;
pub use kv::{KvLayout, Scheme};
pub use weights::{WeightMemory, weight_memory};

/// What `l4 plan` was asked.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// A preset name or a checkpoint folder.
    pub model: String,
    /// Tokens of context per sequence.
    pub context: u64,
    /// The memory to fit in.
    pub gpu: GpuMemory,
    /// Compute dtype: of the weights not in FP8, and of the KV cache.
    pub dtype: DType,
    /// Which weights are stored as e4m3.
    pub fp8: Fp8Mode,
    /// Sequences cached side by side.
    pub batch: usize,
    /// Where to write the memory-vs-context SVG, if anywhere.
    pub plot: Option<PathBuf>,
}

/// How long a context fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Longest {
    /// The weights alone exceed the memory.
    WeightsDoNotFit,
    /// Contexts up to this many tokens fit.
    Tokens(u64),
    /// Any context fits: the cache stops growing (no global layer) and its largest size fits.
    Any,
}

/// The sized plan.
#[derive(Clone, Debug)]
pub struct Plan {
    /// What was asked.
    pub options: PlanOptions,
    /// The weights, by group.
    pub weights: WeightMemory,
    /// What sizes the KV cache.
    pub kv: KvLayout,
    /// The longest context the model declares (`max_position_embeddings`).
    pub max_positions: u64,
    /// KV heads `hk` and head width `dh`, for the report.
    pub kv_heads: usize,
    /// Head width `dh`.
    pub head_dim: usize,
}

impl Plan {
    /// KV-cache bytes at the asked context.
    pub fn kv_bytes(&self, scheme: Scheme) -> u64 {
        self.kv.bytes(scheme, self.options.context)
    }

    /// Weights plus KV cache at `context`.
    pub fn total_bytes_at(&self, scheme: Scheme, context: u64) -> u64 {
        self.weights.bytes().saturating_add(self.kv.bytes(scheme, context))
    }

    /// Weights plus KV cache at the asked context.
    pub fn total_bytes(&self, scheme: Scheme) -> u64 {
        self.total_bytes_at(scheme, self.options.context)
    }

    /// Whether weights and cache fit in the GPU memory.
    pub fn fits(&self, scheme: Scheme) -> bool {
        self.total_bytes(scheme) <= self.options.gpu.bytes
    }

    /// The longest context that fits beside the weights.
    pub fn longest_context(&self, scheme: Scheme) -> Longest {
        let Some(left) = self.options.gpu.bytes.checked_sub(self.weights.bytes()) else {
            return Longest::WeightsDoNotFit;
        };
        match self.kv.longest_context(scheme, left) {
            Some(tokens) => Longest::Tokens(tokens),
            None => Longest::Any,
        }
    }
}

/// Resolves `options.model` and sizes the plan. Bad options are errors naming the flag.
pub fn plan(options: &PlanOptions) -> Result<Plan> {
    if options.context == 0 {
        bail!("--context must be at least 1 token");
    }
    if options.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if !matches!(options.dtype, DType::F32 | DType::BF16 | DType::F16) {
        bail!(
            "--dtype must be f32, bf16 or f16 (the compute and KV-cache dtype), got {}; FP8 weights are chosen with --fp8 experts|experts-block|all",
            options.dtype
        );
    }
    options.fp8.check_dtype(options.dtype)?;
    if let Some(path) = &options.plot {
        plot::check_path(path)?;
    }
    let (spec, _) = l4_model::loader::resolve(&options.model).with_context(|| format!("--model {}", options.model))?;
    let vision = l4_model::loader::resolve_vision(&options.model, &spec)
        .with_context(|| format!("--model {}", options.model))?;
    Ok(Plan {
        weights: weight_memory(&spec, vision.as_ref(), options.dtype, options.fp8),
        kv: KvLayout::new(&spec, options.dtype.size_in_bytes(), options.batch),
        max_positions: spec.max_position_embeddings as u64,
        kv_heads: spec.num_kv_heads,
        head_dim: spec.head_dim,
        options: options.clone(),
    })
}

/// `l4 plan`: sizes the plan, writes the plot when asked (atomically), and returns the report.
pub fn run(options: &PlanOptions) -> Result<String> {
    let plan = plan(options)?;
    if let Some(path) = &options.plot {
        plot::write_svg(path, &plan)?;
    }
    Ok(report(&plan))
}

/// `n` with thousands separators.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in the largest binary unit that keeps the number at least 1.
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.2} {}", UNITS[unit]),
    }
}

/// A parameter count in billions, millions or units.
fn params_text(params: u64) -> String {
    match params {
        p if p >= 1_000_000_000 => format!("{:.2} B", p as f64 / 1e9),
        p if p >= 1_000_000 => format!("{:.2} M", p as f64 / 1e6),
        p => grouped(p),
    }
}

/// The human-readable plan: the layer plan, the weights by group, and one row per scheme.
pub fn report(plan: &Plan) -> String {
    let o = &plan.options;
    let kv = &plan.kv;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan for {}: weights in {} (--fp8 {}), KV cache in {}, batch {}, context {} tokens, GPU memory {} = {}",
        o.model,
        o.dtype,
        o.fp8,
        o.dtype,
        o.batch,
        grouped(o.context),
        o.gpu.name,
        bytes_text(o.gpu.bytes)
    );
    let chunks: Vec<u64> = {
        let mut c = kv.chunked.clone();
        c.sort_unstable();
        c.dedup();
        c
    };
    let chunk_text = match chunks.as_slice() {
        [] => String::new(),
        [c] => format!(" of {} tokens", grouped(*c)),
        many => format!(" of {:?} tokens", many),
    };
    let _ = writeln!(
        out,
        "  {} layers: {} chunked RoPE layers{chunk_text}, {} global layers; {} KV heads x head dim {}",
        kv.layers(),
        kv.chunked.len(),
        kv.global_layers,
        plan.kv_heads,
        plan.head_dim
    );
    let _ = writeln!(
        out,
        "  KV per token per layer: 2 (K, V) x {} x {} x {} B = {} B; a chunked layer holds at most its chunk, a global layer the whole context",
        plan.kv_heads,
        plan.head_dim,
        o.dtype.size_in_bytes(),
        grouped(kv.bytes_per_token_per_layer)
    );
    let _ = writeln!(out, "\n  {:<24} {:>12} {:>12}", "weights", "parameters", "memory");
    for group in &plan.weights.groups {
        let fp8 = match group.fp8_params {
            0 => String::new(),
            n if n == group.params => "  (e4m3 + f32 scales)".into(),
            n => format!("  ({} in e4m3 + f32 scales)", params_text(n)),
        };
        let _ = writeln!(
            out,
            "  {:<24} {:>12} {:>12}{fp8}",
            group.name,
            params_text(group.params),
            bytes_text(group.bytes)
        );
    }
    let _ = writeln!(
        out,
        "  {:<24} {:>12} {:>12}",
        "total",
        params_text(plan.weights.params()),
        bytes_text(plan.weights.bytes())
    );
    let at = format!("KV at {}", grouped(o.context));
    let fits_header = format!("fits in {}", bytes_text(o.gpu.bytes));
    let _ = writeln!(
        out,
        "\n  {:<11} {:>14} {:>17} {:>14} {:>19}  longest context that fits",
        "scheme", "KV per token*", at, "weights + KV", fits_header
    );
    for scheme in Scheme::BOTH {
        let longest = match plan.longest_context(scheme) {
            Longest::WeightsDoNotFit => "none: the weights alone exceed it".to_string(),
            Longest::Any => "any: the cache stops growing at its largest chunk".to_string(),
            Longest::Tokens(n) => format!("{} tokens", grouped(n)),
        };
        let _ = writeln!(
            out,
            "  {:<11} {:>14} {:>17} {:>14} {:>19}  {longest}",
            scheme.name(),
            bytes_text(kv.growth_per_token(scheme)),
            bytes_text(plan.kv_bytes(scheme)),
            bytes_text(plan.total_bytes(scheme)),
            if plan.fits(scheme) { "yes" } else { "no" }
        );
    }
    let _ = writeln!(
        out,
        "  * bytes each further token adds to the whole batch's cache once the context is past every chunk"
    );
    let _ = writeln!(out, "  not counted: activations, workspace and the CUDA context");
    if o.context > plan.max_positions {
        let _ = writeln!(
            out,
            "  note: the context exceeds the model's max_position_embeddings ({})",
            grouped(plan.max_positions)
        );
    }
    out
}
