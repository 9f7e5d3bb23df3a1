//! `l4 bench`: prefill and greedy-decode timings of a model on this machine.
//!
//! The same measurement as HF's forward/generate timed by tools/bench_cpu_vs_hf.py, so the two
//! can be compared in one run: a seeded random prompt of `prompt_len` tokens, one prefill
//! forward, then `new_tokens` greedy steps with the KV cache. Each phase is repeated and the
//! median is reported, after one untimed warm-up.
//!
//! `l4 bench --kernels` times the kernels instead: [`kernels`] runs them at a preset's shapes
//! and [`table`] measures and prints them.

use std::fmt::Write;
use std::time::Instant;

use anyhow::{Result, bail};
use l4_core::{DType, Device, Tensor};
use l4_model::generate::{GreedyOptions, greedy};
use l4_model::{Capture, ModelSpec, Span};

use crate::run::RunOptions;

pub mod kernels;
pub mod table;

/// What to time.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Prompt tokens per sequence.
    pub prompt_len: usize,
    /// Greedy steps after the prompt.
    pub new_tokens: usize,
    /// Timed repeats of each phase.
    pub repeats: usize,
    /// Seed of the random prompt.
    pub seed: u64,
}

fn median(mut seconds: Vec<f64>) -> f64 {
    seconds.sort_by(f64::total_cmp);
    seconds[seconds.len() / 2]
}

/// Runs the benchmark and returns a report whose last lines are machine-readable
/// `prefill_seconds=..` and `decode_seconds=..`.
pub fn bench(options: &RunOptions, bench: &BenchOptions) -> Result<String> {
    if bench.prompt_len == 0 || bench.repeats == 0 {
        bail!("--prompt-len and --repeats must be at least 1");
    }
    let loading = Instant::now();
    let model = crate::run::load_model(options)?;
    let load_seconds = loading.elapsed().as_secs_f64();
    let vocab = model.spec().vocab_size;
    // A seeded prompt of uniformly random token ids.
    let ids: Vec<i64> = Tensor::rand_uniform(
        &[bench.prompt_len],
        0.0,
        vocab as f64 - 1.0,
        l4_core::DType::F32,
        bench.seed,
        Device::Cpu,
    )?
    .to_f32_vec()?
    .into_iter()
    .map(|x| x.round() as i64)
    .collect();
    let prompt = Tensor::from_vec(ids, &[1, bench.prompt_len], Device::Cpu)?;

    // CUDA work is asynchronous: a phase ends when the device has finished it.
    let finish = || -> Result<()> {
        if let Device::Cuda(ordinal) = model.device() {
            l4_core::cuda::backend(ordinal)?.synchronize()?;
        }
        Ok(())
    };
    let time_prefill = || -> Result<f64> {
        let mut cache = model.new_cache();
        finish()?;
        let start = Instant::now();
        model.forward(&prompt, &mut cache, Capture::default())?;
        finish()?;
        Ok(start.elapsed().as_secs_f64())
    };
    let greedy_options = GreedyOptions {
        max_new_tokens: bench.new_tokens,
        stop_ids: Vec::new(),
    };
    let time_generate = || -> Result<f64> {
        finish()?;
        let start = Instant::now();
        greedy(&model, &prompt, &greedy_options, |_| {})?;
        finish()?;
        Ok(start.elapsed().as_secs_f64())
    };
    time_prefill()?;
    let prefill = median((0..bench.repeats).map(|_| time_prefill()).collect::<Result<_>>()?);
    let generate = median((0..bench.repeats).map(|_| time_generate()).collect::<Result<_>>()?);

    let mut out = String::new();
    let where_ = match model.device() {
        Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
        Device::Cuda(ordinal) => format!("{} ({})", model.device(), l4_core::cuda::backend(ordinal)?.info().name),
    };
    let fp8 = options.fp8.map_or(String::new(), |mode| format!(", --fp8 {mode}"));
    let _ = writeln!(out, "model {} on {where_}, {}{fp8}", options.model, options.dtype);
    let _ = writeln!(out, "load            {load_seconds:8.3} s");
    let _ = writeln!(
        out,
        "prefill {:>4} tok {prefill:8.3} s  ({:.0} tok/s)",
        bench.prompt_len,
        bench.prompt_len as f64 / prefill
    );
    let _ = writeln!(
        out,
        "generate {:>3} tok {generate:8.3} s  (prefill + {} greedy steps)",
        bench.new_tokens, bench.new_tokens
    );
    // Greedy's first token comes from the prefill; the other steps each decode one token.
    let decode_steps = bench.new_tokens.saturating_sub(1);
    let mut decode_line = None;
    if decode_steps > 0 && generate > prefill {
        let step = (generate - prefill) / decode_steps as f64;
        let bytes = decode_bytes_per_step(model.spec(), options.dtype, bench.prompt_len + bench.new_tokens / 2);
        let rate = bytes as f64 / step;
        let _ = writeln!(
            out,
            "decode          {:8.3} ms/tok ({:.1} tok/s); weights + KV read per step {:.1} MB -> {:.1} GB/s",
            step * 1e3,
            1.0 / step,
            bytes as f64 / 1e6,
            rate / 1e9
        );
        decode_line = Some((step, rate));
    }
    let _ = writeln!(out, "prefill_seconds={prefill:.6}");
    let _ = writeln!(out, "generate_seconds={generate:.6}");
    if let Some((step, rate)) = decode_line {
        let _ = writeln!(out, "decode_seconds_per_token={step:.6}");
        let _ = writeln!(out, "decode_bytes_per_second={rate:.4e}");
    }
    Ok(out)
}

/// The bytes one batch-1 decode step must read at least: every active weight (one embedding
/// row, not the table; attention, norms, router, shared expert and top-k routed experts of each
/// layer; the lm_head), plus the KV cache at a context of `context` tokens (chunked layers hold
/// at most one chunk).
pub fn decode_bytes_per_step(spec: &ModelSpec, dtype: DType, context: usize) -> usize {
    let (_, active) = spec.param_counts();
    let weights = active - (spec.vocab_size - 1) * spec.hidden_size;
    let kv_per_token_per_layer = 2 * spec.num_kv_heads * spec.head_dim;
    let kv: usize = spec
        .layers
        .iter()
        .map(|layer| {
            let held = match layer.span {
                Span::Global => context,
                Span::Chunked(chunk) => context.min(chunk),
            };
            held * kv_per_token_per_layer
        })
        .sum();
    (weights + kv) * dtype.size_in_bytes()
}
