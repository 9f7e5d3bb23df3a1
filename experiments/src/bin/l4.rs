//! The `l4` command: l4lab's entry point for users. Every failure is a one-line error and a
//! non-zero exit status; no command leaves a partial output file behind.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use l4_core::{DType, Device};
use l4_experiments::ablate::{self, AblateOptions};
use l4_experiments::bench::kernels::KernelBenchOptions;
use l4_experiments::bench::{self, BenchOptions};
use l4_experiments::plan::budget::{parse_gib, parse_tokens};
use l4_experiments::plan::{self, GpuMemory, PlanOptions};
use l4_experiments::run::{self, PromptSource, RunOptions};
use l4_model::parts::fp8::Fp8Mode;

/// l4lab: a research framework for Llama 4 with hand-written CUDA kernels.
#[derive(Debug, Parser)]
#[command(name = "l4", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ModelArgs {
    /// An HF checkpoint folder (config.json + *.safetensors) or a preset name.
    #[arg(long)]
    model: String,
    /// Device: cpu, cuda, cuda:N, or auto (CUDA when usable). On CUDA the weights, the KV
    /// cache and every op stay on the device; kernels compile at first use (NVRTC 13).
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Compute dtype: f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: DType,
    /// FP8 weights: none, experts (Meta's recipe: routed experts of all but the first and
    /// last layer, per-channel weights, per-token activations), all (every projection), or
    /// dequant (the recipe's weights rounded through e4m3, run in the compute dtype). Default:
    /// the checkpoint as stored (a pre-quantized one runs its FP8 experts in FP8).
    #[arg(long)]
    fp8: Option<Fp8Mode>,
    /// Routing strategy of every MoE layer, `name[:key=value,...]`: llama4 (default for Llama
    /// 4), softmax-topk:k=2, deepseek-v3:k=2,groups=4,topk_groups=2, expert-choice:capacity=1,
    /// hash, random:k=1,seed=0, forced:expert=J; token-choice ones also take capacity=C.
    #[arg(long)]
    router: Option<String>,
}

impl ModelArgs {
    fn options(&self) -> RunOptions {
        RunOptions {
            model: self.model.clone(),
            device: self.device,
            dtype: self.dtype,
            fp8: self.fp8,
            router: self.router.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an ablation file: a base model and variants of it on the same prompts. Writes
    /// resolved.toml, metrics.jsonl, summary.csv and SVG plots to a results folder and prints
    /// a summary table.
    Ablate {
        /// The ablation file (see experiments/ablations/).
        file: PathBuf,
        /// The results folder (default: results/<name>-<UTC time>); an existing one is only
        /// replaced with --force.
        #[arg(long)]
        out: Option<PathBuf>,
        /// A checkpoint folder or preset in place of the file's base model.
        #[arg(long)]
        model: Option<String>,
        /// cpu, cuda, cuda:N or auto, in place of the file's device.
        #[arg(long)]
        device: Option<Device>,
        /// Replace an existing results folder.
        #[arg(long)]
        force: bool,
        /// Change a value of the file, e.g. --set eval.prompts=2 or --set base.dtype=bf16
        /// (repeatable; reaches [base], [eval] and the top level).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// CPU threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Devices, NVRTC and presets; with --model, the resolved plan and its sizes.
    Info {
        /// A checkpoint folder or preset to describe (nothing is allocated).
        #[arg(long)]
        model: Option<String>,
    },
    /// Logits for every position of `input_ids`.
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        /// safetensors file holding `input_ids` (I64 [batch, tokens]) and, for a multimodal
        /// model, optionally `pixel_values` (F32 [tiles, 3, H, W], tiles in the order of the
        /// image tokens).
        #[arg(long)]
        input: PathBuf,
        /// safetensors file to write `logits` (F32 [batch, tokens, vocab]) to.
        #[arg(long)]
        output: PathBuf,
        /// Also write the hidden state after each layer, and each MoE layer's router logits
        /// (`router_logits.{layer}`) and expert loads (`expert_load.{layer}`, I64 [experts]).
        #[arg(long)]
        dump_hidden: bool,
    },
    /// Time a model's prefill and greedy decoding (median of repeats) on a seeded random
    /// prompt (--model ...), or, with --kernels, the kernels available on this machine at a
    /// preset's shapes, as one table: kernel, shape, time, TFLOP/s, GB/s, fraction of the
    /// device's peak, ratio to the cuBLASLt baseline. Without a GPU the kernel table times the
    /// CPU paths and says so.
    Bench {
        /// An HF checkpoint folder or a preset name, for the model timings.
        #[arg(long, required_unless_present = "kernels")]
        model: Option<String>,
        /// Device: cpu, cuda, cuda:N, or auto (CUDA when usable). Default: cpu for the model
        /// timings; for --kernels, CUDA device 0 when usable, else the CPU.
        #[arg(long)]
        device: Option<Device>,
        /// Compute dtype of the model timings: f32 or bf16.
        #[arg(long, default_value = "f32", conflicts_with = "kernels")]
        dtype: DType,
        /// FP8 weights of the model timings (see `l4 logits --help`).
        #[arg(long, conflicts_with = "kernels")]
        fp8: Option<Fp8Mode>,
        /// Routing strategy of the model timings (see `l4 logits --help`).
        #[arg(long, conflicts_with = "kernels")]
        router: Option<String>,
        /// Prompt tokens.
        #[arg(long, default_value_t = 512, conflicts_with = "kernels")]
        prompt_len: usize,
        /// Greedy steps after the prompt (the generate phase includes its prefill, as HF's
        /// generate does).
        #[arg(long, default_value_t = 32, conflicts_with = "kernels")]
        new_tokens: usize,
        /// Timed repeats per phase.
        #[arg(long, default_value_t = 3, conflicts_with = "kernels")]
        repeats: usize,
        /// CPU threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Time the kernels instead of a model: RMSNorm, softmax, MoE routing, decode and
        /// prefill attention, bf16 GEMMs and FP8 GEMMs (row-wise beside cuBLASLt's, and
        /// block-scaled) at the shapes of --shapes.
        #[arg(long, conflicts_with = "model")]
        kernels: bool,
        /// The preset whose shapes the kernel table uses (default: llama4-scout-17b-16e, or
        /// tiny-scout with --quick).
        #[arg(long, requires = "kernels")]
        shapes: Option<String>,
        /// A fast smoke run of the kernel table: tiny shapes, one timed run per entry.
        #[arg(long, requires = "kernels")]
        quick: bool,
    },
    /// Memory for a context length: weights and KV cache, iRoPE (chunked layers hold one chunk)
    /// against all-global attention, whether they fit the GPU and the longest context that does.
    /// Allocates nothing. Activations, workspace and the CUDA context are not counted.
    Plan {
        /// A preset name (see `l4 info`) or an HF checkpoint folder.
        #[arg(long)]
        model: String,
        /// Tokens of context per sequence: a number, or with a binary suffix (8K = 8192,
        /// 10M = 10485760).
        #[arg(long, value_parser = parse_tokens)]
        context: u64,
        /// GPU memory in GiB (instead of --gpu).
        #[arg(long, value_parser = parse_gib, allow_negative_numbers = true, conflicts_with = "gpu")]
        gpu_memory: Option<f64>,
        /// A card: h100 (80 GiB), h200 (141 GiB), a100-80, a100-40 (marketed capacities, read as
        /// GiB), or cuda for the total memory of CUDA device 0. Default: h100.
        #[arg(long)]
        gpu: Option<String>,
        /// Compute dtype of the weights not in FP8, and of the KV cache: f32, bf16 or f16.
        #[arg(long, default_value = "bf16")]
        dtype: DType,
        /// FP8 weights: none, experts (Meta's recipe: routed experts of all but the first and
        /// last layer, 1 byte a weight plus an f32 scale per output channel), experts-block
        /// (128x128 block scales), all (every projection; the router, embedding and lm_head
        /// stay in --dtype), dequant (counted as none: it runs dequantized).
        #[arg(long, default_value = "none")]
        fp8: Fp8Mode,
        /// Sequences cached side by side.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Also write memory against context (1K to 10M tokens, log-log) to this SVG file.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Greedy decoding from all of `input_ids`, with the KV cache.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// safetensors file holding `input_ids` (I64 [batch, tokens]) and, for a multimodal
        /// model, optionally `pixel_values` (F32 [tiles, 3, H, W]).
        #[arg(long, required_unless_present = "prompt", conflicts_with = "prompt")]
        input: Option<PathBuf>,
        /// Text to continue, tokenized with the model folder's tokenizer.json; the
        /// continuation is printed as it is produced.
        #[arg(long)]
        prompt: Option<String>,
        /// An image (PNG or JPEG) for a multimodal model, preprocessed as HF's processor does;
        /// its tokens replace the prompt's `<|image|>`, or go before the text.
        #[arg(long, requires = "prompt")]
        image: Option<PathBuf>,
        /// New tokens per sequence.
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        /// safetensors file to write `generated_ids` (I64 [batch, new tokens]) to; required
        /// with --input.
        #[arg(long, required_unless_present = "prompt")]
        output: Option<PathBuf>,
        /// Stop a sequence at an end-of-sequence id from the config.
        #[arg(long)]
        stop_at_eos: bool,
    },
}

/// Sizes rayon's pool (used by every CPU op) before any work starts.
fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    let Some(n) = threads else { return Ok(()) };
    if n == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    Ok(())
}

/// clap's message for a bad command line as one line: its text up to the first blank line
/// (dropping the usage and the `--help` tip), joined, without clap's own `error: ` prefix.
fn one_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().map(str::trim).take_while(|l| !l.is_empty()).collect();
    let joined = lines.join(" ");
    joined.strip_prefix("error: ").unwrap_or(&joined).to_string()
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help, --version and a bare `l4` print clap's usage text as usual.
        Err(e) if !e.use_stderr() || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            e.exit()
        }
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Ablate {
            file,
            out,
            model,
            device,
            force,
            sets,
            threads,
        } => {
            let options = AblateOptions {
                file,
                out,
                model,
                device,
                force,
                sets,
            };
            set_threads(threads).and_then(|()| {
                ablate::ablate(&options).map(|report| {
                    print!("{}", report.table);
                    println!("device: {}", report.device);
                    println!("results: {}", report.out.display());
                })
            })
        }
        Command::Info { model: None } => {
            print!("{}", l4_experiments::info::report());
            Ok(())
        }
        Command::Info { model: Some(model) } => l4_experiments::info::model_report(&model).map(|r| print!("{r}")),
        Command::Plan {
            model,
            context,
            gpu_memory,
            gpu,
            dtype,
            fp8,
            batch,
            plot,
        } => match (gpu_memory, gpu) {
            (Some(gib), _) => GpuMemory::gib(gib),
            (None, name) => GpuMemory::named(name.as_deref().unwrap_or("h100")),
        }
        .and_then(|gpu| {
            let options = PlanOptions {
                model,
                context,
                gpu,
                dtype,
                fp8,
                batch,
                plot,
            };
            plan::run(&options).map(|r| print!("{r}"))
        }),
        Command::Bench {
            model,
            device,
            dtype,
            fp8,
            router,
            prompt_len,
            new_tokens,
            repeats,
            threads,
            kernels,
            shapes,
            quick,
        } => set_threads(threads).and_then(|()| match (kernels, model) {
            (true, _) => {
                let options = KernelBenchOptions { device, shapes, quick };
                bench::kernels::run(&options).map(|table| print!("{}", table.report()))
            }
            (false, model) => {
                let run = RunOptions {
                    model: model.unwrap_or_default(),
                    device: device.unwrap_or(Device::Cpu),
                    dtype,
                    fp8,
                    router,
                };
                let options = BenchOptions {
                    prompt_len,
                    new_tokens,
                    repeats,
                    seed: 0,
                };
                bench::bench(&run, &options).map(|r| print!("{r}"))
            }
        }),
        Command::Logits {
            model,
            input,
            output,
            dump_hidden,
        } => run::logits(&model.options(), &input, &output, dump_hidden),
        Command::Generate {
            model,
            input,
            prompt,
            image,
            max_new_tokens,
            output,
            stop_at_eos,
        } => match (input, prompt, image) {
            (Some(path), _, _) => Ok(PromptSource::InputFile(path)),
            (_, Some(text), Some(image)) => Ok(PromptSource::TextAndImage { text, image }),
            (_, Some(text), None) => Ok(PromptSource::Text(text)),
            (None, None, _) => Err(anyhow::anyhow!("generate needs --input or --prompt")),
        }
        .and_then(|source| {
            run::generate(
                &model.options(),
                &source,
                output.as_deref(),
                max_new_tokens,
                stop_at_eos,
            )
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
