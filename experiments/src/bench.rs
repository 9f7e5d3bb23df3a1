//! `l4 bench`: prefill and greedy-decode timings of a model on this machine.
//!
//! The same measurement as HF's forward/generate timed by tools/bench_cpu_vs_hf.py, so the two
//! can be compared in one run: a seeded random prompt of `prompt_len` tokens, one prefill
//! forward, then `new_tokens` greedy steps with the KV cache. Each phase is repeated and the
//! median is reported, after one untimed warm-up.

use std::fmt::Write;
use std::time::Instant;

use anyhow::{Result, bail};
use l4_core::{Device, Tensor};
use l4_model::Capture;
use l4_model::generate::{GreedyOptions, greedy};

use crate::run::RunOptions;

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
    let model = l4_model::loader::load(&options.model, options.dtype, options.device.ensure_usable()?)?;
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

    let time_prefill = || -> Result<f64> {
        let mut cache = model.new_cache();
        let start = Instant::now();
        model.forward(&prompt, &mut cache, Capture::default())?;
        Ok(start.elapsed().as_secs_f64())
    };
    let greedy_options = GreedyOptions {
        max_new_tokens: bench.new_tokens,
        stop_ids: Vec::new(),
    };
    let time_generate = || -> Result<f64> {
        let start = Instant::now();
        greedy(&model, &prompt, &greedy_options, |_| {})?;
        Ok(start.elapsed().as_secs_f64())
    };
    time_prefill()?;
    let prefill = median((0..bench.repeats).map(|_| time_prefill()).collect::<Result<_>>()?);
    let generate = median((0..bench.repeats).map(|_| time_generate()).collect::<Result<_>>()?);

    let mut out = String::new();
    let threads = rayon::current_num_threads();
    let _ = writeln!(
        out,
        "model {} on {} ({threads} threads), {}",
        options.model, options.device, options.dtype
    );
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
    let _ = writeln!(out, "prefill_seconds={prefill:.6}");
    let _ = writeln!(out, "generate_seconds={generate:.6}");
    Ok(out)
}
