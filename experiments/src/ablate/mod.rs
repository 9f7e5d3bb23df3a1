//! `l4 ablate FILE.toml`: runs a base model and variants of it on the same prompts and writes
//! what changed to a results folder.
//!
//! * [`settings`]: what an ablation file may say (typed, unknown keys rejected);
//! * [`config`]: reading it (`--set` overrides, one-line errors naming file, place and field);
//! * [`resolve`]: variants merged over the base, checked, and written out in full;
//! * [`eval`]: the prompts; [`metrics`]: what is measured and how;
//! * [`results`]: resolved.toml, metrics.jsonl, summary.csv, written into a staging folder
//!   renamed into place at the end; [`plots`]: the SVG plots.
//!
//! Every variant is loaded afresh from the same model (a preset's weights come from the same
//! seed, so every variant has the same weights), runs one forward pass over the prompts with
//! routing captured (the quality and routing metrics), then the timed prefills and greedy
//! steps. The base runs first; its logits stay in memory for the comparisons.

pub mod config;
pub mod eval;
pub mod metrics;
pub mod plots;
pub mod resolve;
pub mod results;
pub mod settings;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow};
use indicatif::{ProgressBar, ProgressStyle};
use l4_core::{DType, Device, Tensor};
use l4_model::{Capture, Llama4, loader};

use self::metrics::{LayerLoad, VariantMetrics};
use self::resolve::{Ablation, EvalSource, Variant};
use self::results::{MetricsLog, ResolvedEval, ResolvedRun, ResolvedVariant, Staging};

/// What `l4 ablate` was asked.
#[derive(Clone, Debug, Default)]
pub struct AblateOptions {
    /// The ablation file.
    pub file: PathBuf,
    /// The results folder (default: `results/<name>-<UTC time>`).
    pub out: Option<PathBuf>,
    /// A model in place of the file's base model.
    pub model: Option<String>,
    /// A device in place of the file's.
    pub device: Option<Device>,
    /// Replace an existing results folder.
    pub force: bool,
    /// `key=value` overrides of the file (`eval.prompts=2`).
    pub sets: Vec<String>,
}

/// What a finished ablation reports.
#[derive(Clone, Debug)]
pub struct Report {
    /// The results folder.
    pub out: PathBuf,
    /// What ran it (CPU threads and model, or the GPU's name).
    pub device: String,
    /// The summary table.
    pub table: String,
    /// Per variant: name, hash, metrics.
    pub rows: Vec<(String, String, VariantMetrics)>,
}

/// Runs the ablation `options.file` and writes its results folder.
pub fn ablate(options: &AblateOptions) -> Result<Report> {
    let parsed = config::read(&options.file, &options.sets)?;
    let ablation = resolve::resolve(&options.file, &parsed, options.model.as_deref(), options.device)?;
    resolve::check_inputs(&ablation)?;
    let out = options.out.clone().unwrap_or_else(|| default_out(&ablation.name));
    let device = ablation.device.ensure_usable().map_err(|e| match options.device {
        Some(d) => anyhow!("--device {d}: {e}"),
        None => config::field_error(&ablation.file, &config::Place::Base, "device", e),
    })?;
    let staging = Staging::new(&out, options.force)?;
    let (spec, _) = loader::resolve(&ablation.model)?;
    let prompts = eval::prompts(&ablation.file, &ablation.eval, spec.vocab_size)?;
    let with_perplexity = prompts.from_file && Path::new(&ablation.model).is_dir();
    let resets_peak = metrics::reset_peak_memory();

    let progress = ProgressBar::new(ablation.variants.len() as u64).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .map_err(|e| anyhow!("progress bar template: {e}"))?,
    );
    progress.enable_steady_tick(Duration::from_millis(200));
    let measured = (|| -> Result<Vec<(String, String, VariantMetrics)>> {
        let mut log = MetricsLog::create(staging.path())?;
        let ids = prompts.ids.to_vec::<i64>()?;
        let vocab = spec.vocab_size;
        let mut base_logits: Option<Vec<f32>> = None;
        let mut rows = Vec::new();
        for variant in &ablation.variants {
            let outcome = run_variant(&ablation, variant, device, &prompts.ids, &progress)
                .map_err(|e| anyhow!("variant `{}`: {e:#}", variant.name))?;
            let base = base_logits.get_or_insert_with(|| outcome.logits.clone());
            let metrics = VariantMetrics {
                agreement: metrics::agreement(base, &outcome.logits, vocab),
                perplexity: with_perplexity
                    .then(|| metrics::perplexity(&outcome.logits, &ids, prompts.ids.shape()[0], vocab))
                    .flatten(),
                overall: metrics::overall(&outcome.layers),
                layers: outcome.layers,
                load_seconds: outcome.load_seconds,
                prefill_tokens_per_s: outcome.prefill_tokens_per_s,
                decode_tokens_per_s: outcome.decode_tokens_per_s,
                peak_rss_mib: outcome.peak_rss_mib,
                device_memory_mib: outcome.device_memory_mib,
            };
            log.append(&variant.name, &metrics)?;
            rows.push((variant.name.clone(), variant.hash.clone(), metrics));
            progress.inc(1);
        }
        Ok(rows)
    })();
    // Cleared on failure too, so that the error is the last line on the terminal.
    progress.finish_and_clear();
    let rows = measured?;

    let run = resolved_run(&ablation, device, &prompts, with_perplexity, resets_peak)?;
    results::write_resolved(staging.path(), &run)?;
    results::write_summary_csv(staging.path(), &rows)?;
    plots::write_all(&staging.path().join("plots"), &rows)?;
    let out = staging.commit()?;
    Ok(Report {
        out,
        device: run.device_name,
        table: results::summary_table(&rows),
        rows,
    })
}

/// `results/<name>-<YYYYMMDD-HHMMSS>` (UTC), so repeated runs never collide.
fn default_out(name: &str) -> PathBuf {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = ((seconds / 86_400) as i64, seconds % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    PathBuf::from("results").join(format!(
        "{name}-{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    ))
}

/// One variant's raw measurements.
struct Outcome {
    logits: Vec<f32>,
    layers: Vec<LayerLoad>,
    load_seconds: f64,
    prefill_tokens_per_s: f64,
    decode_tokens_per_s: Option<f64>,
    peak_rss_mib: Option<f64>,
    device_memory_mib: Option<f64>,
}

/// Waits for the device, so a timed phase ends when its work has.
fn synchronize(device: Device) -> Result<()> {
    if let Device::Cuda(ordinal) = device {
        l4_core::cuda::backend(ordinal)?.synchronize()?;
    }
    Ok(())
}

/// The next token of each sequence: the argmax of the last position's logits `[b, t, v]`.
fn next_tokens(logits: &Tensor) -> Result<Tensor> {
    let [b, t, _] = logits.shape()[..] else {
        return Err(anyhow!("logits of shape {:?}, expected [b, t, v]", logits.shape()));
    };
    let last = l4_kernels::ops::contiguous(&logits.narrow(1, t - 1, 1)?.squeeze(1)?)?
        .to_device(Device::Cpu)?
        .to_dtype(DType::F32)?;
    let ids = last.argmax(1, false)?.to_vec::<i64>()?;
    Ok(Tensor::from_vec(ids, &[b, 1], Device::Cpu)?)
}

fn run_variant(
    ablation: &Ablation,
    variant: &Variant,
    device: Device,
    ids: &Tensor,
    progress: &ProgressBar,
) -> Result<Outcome> {
    let step = |what: &str| progress.set_message(format!("{}: {what}", variant.name));
    step("loading");
    metrics::reset_peak_memory();
    let started = Instant::now();
    let model = loader::load_overridden(&ablation.model, variant.dtype, device, variant.fp8, &variant.overrides)?;
    let model = match &variant.router {
        Some(spec) => model.with_router(spec)?,
        None => model,
    };
    synchronize(device)?;
    let load_seconds = started.elapsed().as_secs_f64();

    step("forward pass");
    let captured = model.forward(
        ids,
        &mut model.new_cache(),
        Capture {
            hidden_states: false,
            router_logits: true,
        },
    )?;
    let logits = captured
        .logits
        .to_device(Device::Cpu)?
        .to_dtype(DType::F32)?
        .to_f32_vec()?;
    let layers = captured
        .routing
        .iter()
        .map(|(layer, routing)| LayerLoad {
            layer: *layer,
            stats: routing.stats(),
        })
        .collect();
    drop(captured);

    step("timing prefill");
    let prefill = median(
        (0..ablation.eval.repeats)
            .map(|_| time_prefill(&model, ids, device))
            .collect::<Result<_>>()?,
    );
    let tokens = ids.elem_count() as f64;
    let decode_tokens_per_s = match ablation.eval.decode_tokens {
        0 => None,
        steps => {
            step("timing decode");
            let seconds = time_decode(&model, ids, device, steps)?;
            Some((ids.shape()[0] * steps) as f64 / seconds)
        }
    };
    let device_memory_mib = match device {
        Device::Cpu => None,
        Device::Cuda(ordinal) => {
            let (free, total) = l4_core::cuda::backend(ordinal)?
                .context()
                .mem_get_info()
                .map_err(|e| anyhow!("reading the device's memory: {e:?}"))?;
            Some((total - free) as f64 / (1u64 << 20) as f64)
        }
    };
    Ok(Outcome {
        logits,
        layers,
        load_seconds,
        prefill_tokens_per_s: tokens / prefill,
        decode_tokens_per_s,
        peak_rss_mib: metrics::peak_memory_mib(),
        device_memory_mib,
    })
}

fn median(mut seconds: Vec<f64>) -> f64 {
    seconds.sort_by(f64::total_cmp);
    seconds[seconds.len() / 2]
}

/// Seconds of one prefill of `ids` into an empty cache.
fn time_prefill(model: &Llama4, ids: &Tensor, device: Device) -> Result<f64> {
    let mut cache = model.new_cache();
    synchronize(device)?;
    let start = Instant::now();
    model.forward(ids, &mut cache, Capture::default())?;
    synchronize(device)?;
    Ok(start.elapsed().as_secs_f64())
}

/// Seconds of `steps` greedy one-token steps after an (untimed) prefill of `ids`.
fn time_decode(model: &Llama4, ids: &Tensor, device: Device, steps: usize) -> Result<f64> {
    let mut cache = model.new_cache();
    let mut next = next_tokens(&model.forward(ids, &mut cache, Capture::default())?.logits)?;
    synchronize(device)?;
    let start = Instant::now();
    for _ in 0..steps {
        next = next_tokens(&model.forward(&next, &mut cache, Capture::default())?.logits)?;
    }
    synchronize(device)?;
    Ok(start.elapsed().as_secs_f64())
}

/// "cpu (N threads, model name)" or the GPU's name.
fn device_name(device: Device) -> Result<String> {
    Ok(match device {
        Device::Cpu => {
            let threads = rayon::current_num_threads();
            let model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, name)| name.trim().to_string())
            });
            match model {
                Some(name) => format!("cpu ({threads} threads, {name})"),
                None => format!("cpu ({threads} threads)"),
            }
        }
        Device::Cuda(ordinal) => l4_core::cuda::backend(ordinal)?.info().name.clone(),
    })
}

fn resolved_run(
    ablation: &Ablation,
    device: Device,
    prompts: &eval::Prompts,
    with_perplexity: bool,
    resets_peak: bool,
) -> Result<ResolvedRun> {
    let (git_revision, git_dirty) = results::git_state();
    let eval = &ablation.eval;
    let shape = prompts.ids.shape();
    let (source, path, tokenizer, seed) = match &eval.source {
        EvalSource::Random { seed } => ("random", None, None, Some(*seed)),
        EvalSource::Tokens(p) => ("tokens", Some(p.display().to_string()), None, None),
        EvalSource::Text { path, tokenizer } => (
            "text",
            Some(path.display().to_string()),
            Some(tokenizer.display().to_string()),
            None,
        ),
    };
    Ok(ResolvedRun {
        ablation: ablation.name.clone(),
        file: ablation.file.display().to_string(),
        description: ablation.description.clone(),
        l4lab_version: env!("CARGO_PKG_VERSION").to_string(),
        git_revision,
        git_dirty,
        device: device.to_string(),
        device_name: device_name(device)?,
        weights_seed: (!Path::new(&ablation.model).is_dir()).then_some(loader::PRESET_SEED),
        peak_memory: match resets_peak {
            true => "VmHWM of the process, reset before each variant (/proc/self/clear_refs)".into(),
            false => "VmHWM of the process since it started (could not reset it per variant)".into(),
        },
        eval: ResolvedEval {
            source: source.into(),
            path,
            tokenizer,
            seed,
            prompts: shape[0],
            prompt_len: shape[1],
            decode_tokens: eval.decode_tokens,
            repeats: eval.repeats,
            perplexity: with_perplexity,
        },
        variants: ablation
            .variants
            .iter()
            .map(|v| ResolvedVariant {
                name: v.name.clone(),
                description: v.description.clone(),
                hash: v.hash.clone(),
                settings: v.resolved.clone(),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_results_folders_carry_the_utc_time() {
        let out = default_out("routing").display().to_string();
        // results/routing-YYYYMMDD-HHMMSS
        let stamp = out.strip_prefix("results/routing-").expect(&out);
        assert_eq!(stamp.len(), 15, "{out}");
        assert!(
            stamp[..8].chars().all(|c| c.is_ascii_digit()) && stamp.starts_with("20"),
            "{out}"
        );
    }
}
