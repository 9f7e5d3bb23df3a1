//! `l4 bench --kernels`: the kernels available on this machine at a preset's shapes, in one
//! table (see [`super::table`] for the columns).
//!
//! On CUDA it runs l4's kernels and the cuBLASLt baselines (bf16 GEMM, row-wise FP8 GEMM) at the
//! preset's shapes: GEMMs at 1, 16 and 2048 tokens, decode attention at batch 1 and 16 over one
//! chunk of keys, prefill attention over 2048 tokens (causal) and two full chunks (chunked). On
//! the CPU it times the CPU paths (the reference implementations) at the same widths with fewer
//! tokens (bf16 GEMMs at 16 tokens, FP8 GEMMs at 1, a 128-token prefill, no LM head), and the
//! fractions of peak are `n/a` (no CPU datasheet is known). `--quick` uses the tiny preset's
//! shapes and one timed run per entry, for smoke tests.
//!
//! Inputs are seeded normals made on the device (`l4_benches::runner::randn`); every entry gets
//! one untimed run before it is timed.

use std::fmt::Write;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use l4_benches::runner::randn;
use l4_benches::shapes::{ModelDims, forward_gemms};
use l4_benches::units::{self, DevicePeaks};
use l4_core::{DType, Device, Tensor};
use l4_kernels::attention_decode::{DecodeShape, decode_attention};
use l4_kernels::attention_prefill::{PrefillShape, prefill_attention};
use l4_kernels::fp8_gemm::{BLOCK_K, Epilogue, fp8_gemm};
use l4_kernels::moe_routing::{RouteKind, route};
use l4_kernels::quant::{Granularity, Quantized, quantize};

use super::table::{Effort, KernelRow, Measurer, Peak, Vendor, Work, render};

/// The preset whose shapes `--quick` uses.
pub const QUICK_PRESET: &str = "tiny-scout";
/// The preset whose shapes are used by default.
pub const DEFAULT_PRESET: &str = "llama4-scout-17b-16e";

/// What to run.
#[derive(Clone, Debug)]
pub struct KernelBenchOptions {
    /// The device; `None` picks CUDA device 0 when usable, else the CPU.
    pub device: Option<Device>,
    /// The preset whose shapes are benched; `None`: Scout, or the tiny preset with `quick`.
    pub shapes: Option<String>,
    /// Tiny shapes and minimal timing.
    pub quick: bool,
}

/// The table and what a reader needs to interpret it.
#[derive(Clone, Debug)]
pub struct KernelTable {
    /// The device, the preset and the peaks read against, one line each.
    pub header: Vec<String>,
    /// The timed entries.
    pub rows: Vec<KernelRow>,
    /// Entries that could not run, with their errors.
    pub failures: Vec<(String, String)>,
    /// What was left out, and why.
    pub notes: Vec<String>,
}

impl KernelTable {
    /// The printed report: header lines, the table, notes, then failures.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for line in &self.header {
            let _ = writeln!(out, "{line}");
        }
        out.push('\n');
        out.push_str(&render(&self.rows));
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        for (entry, error) in &self.failures {
            let _ = writeln!(out, "FAILED {entry}: {error}");
        }
        out
    }
}

/// Token counts of the entries on one device.
struct Sizes {
    /// GEMM m values.
    gemm_tokens: Vec<usize>,
    /// FP8 GEMM m values.
    fp8_tokens: Vec<usize>,
    /// Rows of the memory-bound ops' "decode" entries (a batch of sequences).
    decode: usize,
    /// Sequences of the decode-attention entries.
    decode_batches: Vec<usize>,
    /// Tokens of a prefill.
    prefill: usize,
    /// Whether the LM head GEMM (a `[v, d]` weight, 2 GB for Scout in bf16) runs.
    lm_head: bool,
    /// Whether chunked prefill attention over two full chunks runs.
    chunked_prefill: bool,
}

fn sizes(device: Device, quick: bool) -> Sizes {
    match (device.is_cuda(), quick) {
        (true, false) => Sizes {
            gemm_tokens: vec![1, 16, 2048],
            fp8_tokens: vec![1, 16, 2048],
            decode: 16,
            decode_batches: vec![1, 16],
            prefill: 2048,
            lm_head: true,
            chunked_prefill: true,
        },
        (false, false) => Sizes {
            gemm_tokens: vec![16],
            fp8_tokens: vec![1],
            decode: 4,
            decode_batches: vec![1],
            prefill: 128,
            lm_head: false,
            chunked_prefill: false,
        },
        (_, true) => Sizes {
            gemm_tokens: vec![1, 16],
            fp8_tokens: vec![1, 16],
            decode: 4,
            decode_batches: vec![1, 4],
            prefill: 32,
            lm_head: true,
            chunked_prefill: true,
        },
    }
}

/// The device to bench, and on the CPU a note on where the GPU kernels are.
fn pick_device(asked: Option<Device>) -> Result<(Device, Option<String>)> {
    let device = match asked {
        Some(Device::Cpu) => Device::Cpu,
        Some(device) => device
            .ensure_usable()
            .map_err(|e| anyhow!("--device {device}: not usable: {e}"))?,
        None => Device::auto(),
    };
    let note = match (device, l4_core::cuda::backend(0)) {
        (Device::Cuda(_), _) => None,
        (Device::Cpu, Ok(_)) => Some("this table times the CPU paths; --device cuda times the GPU kernels".into()),
        (Device::Cpu, Err(e)) => Some(format!(
            "no usable CUDA device ({e}): l4's GPU kernels and the cuBLASLt baselines need a GPU; this table times the CPU paths"
        )),
    };
    Ok((device, note))
}

/// Runs the kernel table.
pub fn run(options: &KernelBenchOptions) -> Result<KernelTable> {
    let preset_name = options
        .shapes
        .as_deref()
        .unwrap_or(if options.quick { QUICK_PRESET } else { DEFAULT_PRESET });
    let preset = l4_model::preset(preset_name).with_context(|| format!("--shapes {preset_name}"))?;
    let (device, device_note) = pick_device(options.device)?;
    let dims = ModelDims::of(preset.name);
    let spec = preset.spec();
    let sizes = sizes(device, options.quick);

    let mut header = Vec::new();
    let mut notes: Vec<String> = device_note.into_iter().collect();
    let peaks = match device {
        Device::Cpu => {
            header.push(format!("device: cpu ({} threads)", rayon::current_num_threads()));
            notes.push("peak is n/a on the CPU: no CPU datasheet peak is known".into());
            None
        }
        Device::Cuda(ordinal) => {
            let name = l4_core::cuda::backend(ordinal)?.info().name.clone();
            header.push(format!("device: {device}, {name}"));
            let peaks = DevicePeaks::for_device_name(&name);
            match &peaks {
                Some(p) => header.push(format!("peaks: {}", p.describe())),
                None => notes.push(format!("peak is n/a: no datasheet peaks are known for {name}")),
            }
            peaks
        }
    };
    header.push(format!(
        "shapes: {} (d {}, h {}, hk {}, dh {}, v {}, e {}, f {}, chunk {})",
        preset.name,
        dims.hidden,
        dims.heads,
        dims.kv_heads,
        dims.head_dim,
        dims.vocab,
        dims.experts,
        dims.ffn,
        dims.chunk.map_or("none".into(), |c| c.to_string())
    ));
    header.push(
        "columns: time_us median per run; TFLOP/s (2 per multiply-add) and GB/s (compulsory traffic); peak = roofline fraction; vs_vendor = cuBLASLt time / l4 time".into(),
    );

    let effort = match (device.is_cuda(), options.quick) {
        (_, true) => Effort {
            samples: 1,
            sample_time: Duration::ZERO,
            max_runs: 1,
        },
        (true, false) => Effort {
            samples: 5,
            sample_time: Duration::from_millis(20),
            max_runs: 1000,
        },
        (false, false) => Effort {
            samples: 3,
            sample_time: Duration::from_millis(100),
            max_runs: 1000,
        },
    };
    let mut m = Measurer::new(device, peaks, effort)?;
    rms_norm_rows(&mut m, &dims, &sizes);
    softmax_rows(&mut m, &dims, &sizes);
    moe_routing(&mut m, &dims, &sizes);
    decode_attention_rows(&mut m, &dims, &sizes);
    prefill_attention_rows(&mut m, &dims, &sizes);
    let gemms: Vec<(&str, usize, usize)> = forward_gemms(&spec)
        .into_iter()
        .filter(|(name, _, _)| sizes.lm_head || *name != "lm_head")
        .collect();
    matmul_bf16(&mut m, &gemms, &sizes);
    fp8_gemms(&mut m, &gemms, &sizes);
    if !sizes.lm_head {
        notes.push("lm_head GEMMs skipped on the CPU (a [v, d] weight); they run on CUDA".into());
    }
    if !sizes.chunked_prefill && dims.chunk.is_some() {
        notes.push("chunked prefill attention over two full chunks skipped on the CPU; it runs on CUDA".into());
    }
    if !device.is_cuda() {
        notes.push("cuBLASLt baselines need a GPU: vs_vendor is n/a on the CPU".into());
    }
    Ok(KernelTable {
        header,
        rows: m.rows,
        failures: m.failures,
        notes,
    })
}

/// The elements and bytes of a `units` throughput as [`Work`].
fn work(throughput: criterion::Throughput, peak: Peak) -> Work {
    let (elements, bytes) = match throughput {
        criterion::Throughput::ElementsAndBytes { elements, bytes } => (elements, bytes),
        criterion::Throughput::Bytes(b) | criterion::Throughput::BytesDecimal(b) => (0, b),
        criterion::Throughput::Elements(e) => (e, 0),
        _ => (0, 0),
    };
    let flops = match peak {
        Peak::Memory => 0.0,
        Peak::Bf16 | Peak::Fp8 => elements as f64,
    };
    Work {
        flops,
        bytes: bytes as f64,
        peak,
    }
}

/// Makes inputs, or records the failure and returns `None`.
fn inputs<T>(m: &mut Measurer, kernel: &str, shape: &str, made: l4_core::Result<T>) -> Option<T> {
    made.map_err(|e| m.fail(kernel, shape, format!("making the inputs: {e}")))
        .ok()
}

fn rms_norm_rows(m: &mut Measurer, dims: &ModelDims, sizes: &Sizes) {
    let (device, d) = (m.device(), dims.hidden);
    for t in [sizes.decode, sizes.prefill] {
        let shape = format!("{t}x{d}");
        let kernel = "rms_norm_bf16";
        let made = randn(&[t, d], DType::BF16, 3, device).and_then(|x| Ok((x, randn(&[d], DType::BF16, 4, device)?)));
        let Some((x, w)) = inputs(m, kernel, &shape, made) else {
            continue;
        };
        let work = work(units::elementwise(t * d, DType::BF16), Peak::Memory);
        m.time(kernel, &shape, work, Vendor::None, || {
            l4_kernels::norm::rms_norm(&x, Some(&w), 1e-5)
        });
    }
}

/// Softmax over a prefill's attention-score rows `[h·t, t]`.
fn softmax_rows(m: &mut Measurer, dims: &ModelDims, sizes: &Sizes) {
    let (rows, cols) = (dims.heads * sizes.prefill, dims.key_span(sizes.prefill));
    let (kernel, shape) = ("softmax_bf16", format!("{rows}x{cols}"));
    let made = randn(&[rows, cols], DType::BF16, 5, m.device());
    let Some(x) = inputs(m, kernel, &shape, made) else {
        return;
    };
    let work = work(units::elementwise(rows * cols, DType::BF16), Peak::Memory);
    m.time(kernel, &shape, work, Vendor::None, || {
        l4_kernels::softmax::softmax(&x, 1)
    });
}

/// Llama 4's fused routing over router logits `[t, e]`.
fn moe_routing(m: &mut Measurer, dims: &ModelDims, sizes: &Sizes) {
    let e = dims.experts;
    if e == 0 {
        return;
    }
    for t in [sizes.decode, sizes.prefill] {
        let (kernel, shape) = ("moe_route_llama4", format!("{t}x{e}"));
        let Some(logits) = inputs(m, kernel, &shape, randn(&[t, e], DType::BF16, 11, m.device())) else {
            continue;
        };
        // Logits read once; expert, weight and sorted slot per token, counts and offsets
        // written once, all 4-byte (as in the kernels bench).
        let bytes = t * e * 2 + 4 * (3 * t + 2 * e + 1);
        let work = Work {
            flops: 0.0,
            bytes: bytes as f64,
            peak: Peak::Memory,
        };
        m.time(kernel, &shape, work, Vendor::None, || route(&logits, RouteKind::Llama4));
    }
}

/// One decode token per sequence against one full chunk of cached keys (or the prefill length
/// without chunks): memory-bound, K and V read once.
fn decode_attention_rows(m: &mut Measurer, dims: &ModelDims, sizes: &Sizes) {
    let (h, hk, dh) = (dims.heads, dims.kv_heads, dims.head_dim);
    let s = dims.chunk.unwrap_or(sizes.prefill);
    let device = m.device();
    for &b in &sizes.decode_batches {
        let (kernel, shape) = ("attention_decode_bf16", format!("{b}x{h}x{hk}x{s}x{dh}"));
        let made = (|| -> l4_core::Result<(Tensor, Tensor, Tensor)> {
            Ok((
                randn(&[b, hk, h / hk, dh], DType::BF16, 12, device)?,
                randn(&[b, hk, s, dh], DType::BF16, 13, device)?,
                randn(&[b, hk, s, dh], DType::BF16, 14, device)?,
            ))
        })();
        let Some((q, k, v)) = inputs(m, kernel, &shape, made) else {
            continue;
        };
        let step = DecodeShape {
            tq: 1,
            q_start: s - 1,
            k_start: 0,
            scale: 1.0 / (dh as f64).sqrt(),
        };
        let work = Work {
            flops: 0.0,
            bytes: (2 * (b * hk * s * dh + b * h * dh) * 2) as f64,
            peak: Peak::Memory,
        };
        m.time(kernel, &shape, work, Vendor::None, || {
            decode_attention(&q, &k, &v, step)
        });
    }
}

/// Prefill attention: global causal over the prefill, and chunked over two full chunks.
/// Credited with the FLOPs of the visible (query, key) pairs only, 4·dh each.
fn prefill_attention_rows(m: &mut Measurer, dims: &ModelDims, sizes: &Sizes) {
    let (h, hk, dh) = (dims.heads, dims.kv_heads, dims.head_dim);
    let device = m.device();
    let mut cases = vec![(sizes.prefill, None)];
    if let (Some(chunk), true) = (dims.chunk, sizes.chunked_prefill) {
        cases.push((2 * chunk, Some(chunk)));
    }
    for (t, chunk) in cases {
        let kernel = match chunk {
            None => "attention_prefill_bf16_causal".to_string(),
            Some(c) => format!("attention_prefill_bf16_chunk{c}"),
        };
        let shape = format!("1x{h}x{hk}x{t}x{dh}");
        let made = (|| -> l4_core::Result<(Tensor, Tensor, Tensor)> {
            Ok((
                randn(&[1, h, t, dh], DType::BF16, 15, device)?,
                randn(&[1, hk, t, dh], DType::BF16, 16, device)?,
                randn(&[1, hk, t, dh], DType::BF16, 17, device)?,
            ))
        })();
        let Some((q, k, v)) = inputs(m, &kernel, &shape, made) else {
            continue;
        };
        let span = chunk.unwrap_or(t);
        let pairs: usize = (0..t)
            .step_by(span)
            .map(|start| {
                let len = span.min(t - start);
                len * (len + 1) / 2
            })
            .sum();
        let work = Work {
            flops: (4 * h * pairs * dh) as f64,
            bytes: (2 * (h + hk) * t * dh * 2) as f64,
            peak: Peak::Bf16,
        };
        let step = PrefillShape {
            q_start: 0,
            k_start: 0,
            chunk,
            scale: 1.0 / (dh as f64).sqrt(),
        };
        m.time(&kernel, &shape, work, Vendor::None, || {
            prefill_attention(&q, &k, &v, step)
        });
    }
}

/// The bf16 GEMMs of a forward pass (`x [m, k] · Wᵀ`, W stored `[n, k]` as HF stores it). On
/// CUDA this is cuBLASLt, the vendor baseline itself.
fn matmul_bf16(m: &mut Measurer, gemms: &[(&str, usize, usize)], sizes: &Sizes) {
    let device = m.device();
    let (kernel, vendor) = match device.is_cuda() {
        true => ("cublaslt_matmul_bf16", Vendor::IsBaseline),
        false => ("matmul_bf16", Vendor::None),
    };
    for &(name, n, k) in gemms {
        let weight_shape = format!("{name}/weight/{n}x{k}");
        let Some(w) = inputs(m, kernel, &weight_shape, randn(&[n, k], DType::BF16, 2, device)) else {
            continue;
        };
        let Some(w_t) = inputs(m, kernel, &weight_shape, w.transpose(0, 1)) else {
            continue;
        };
        for &tokens in &sizes.gemm_tokens {
            let shape = format!("{name}/{tokens}x{n}x{k}");
            let Some(a) = inputs(m, kernel, &shape, randn(&[tokens, k], DType::BF16, 1, device)) else {
                continue;
            };
            let work = work(units::matmul(tokens, n, k, DType::BF16, DType::BF16), Peak::Bf16);
            m.time(kernel, &shape, work, vendor, || l4_kernels::matmul::matmul(&a, &w_t));
        }
    }
}

/// `x` quantized to e4m3 with `granularity`.
fn quantized(shape: [usize; 2], seed: u64, granularity: Granularity, device: Device) -> l4_core::Result<Quantized> {
    quantize(&randn(&shape, DType::BF16, seed, device)?, granularity, None)
}

/// Compulsory work of an FP8 GEMM: A and B at a byte an element, their f32 scales, bf16 out.
fn fp8_work(tokens: usize, n: usize, k: usize, a: &Quantized, b: &Quantized) -> Work {
    let scales = a.scales.elem_count() + b.scales.elem_count();
    Work {
        flops: (2 * tokens * n * k) as f64,
        bytes: (tokens * k + n * k + 4 * scales + 2 * tokens * n) as f64,
        peak: Peak::Fp8,
    }
}

/// l4's FP8 GEMM with row-wise scales (Meta's recipe) beside cuBLASLt's on CUDA, and with
/// DeepSeek-style block scales. Operands are quantized before timing.
fn fp8_gemms(m: &mut Measurer, gemms: &[(&str, usize, usize)], sizes: &Sizes) {
    let device = m.device();
    let block_a = Granularity::Block { rows: 1, cols: BLOCK_K };
    let block_b = Granularity::Block {
        rows: BLOCK_K,
        cols: BLOCK_K,
    };
    for &(name, n, k) in gemms {
        let weight_shape = format!("{name}/weight/{n}x{k}");
        let Some(b_rows) = inputs(
            m,
            "fp8_gemm_rowwise",
            &weight_shape,
            quantized([n, k], 2, Granularity::PerRow, device),
        ) else {
            continue;
        };
        let b_blocks = inputs(
            m,
            "fp8_gemm_block",
            &weight_shape,
            quantized([n, k], 2, block_b, device),
        );
        for &tokens in &sizes.fp8_tokens {
            let shape = format!("{name}/{tokens}x{n}x{k}");
            let a_rows = quantized([tokens, k], 1, Granularity::PerRow, device);
            let Some(a_rows) = inputs(m, "fp8_gemm_rowwise", &shape, a_rows) else {
                continue;
            };
            let work = fp8_work(tokens, n, k, &a_rows, &b_rows);
            let ours = m.time("fp8_gemm_rowwise", &shape, work, Vendor::None, || {
                fp8_gemm(&a_rows, &b_rows, DType::BF16, Epilogue::default())
            });
            if device.is_cuda() {
                let vendor = m.time("cublaslt_fp8_gemm_rowwise", &shape, work, Vendor::IsBaseline, || {
                    l4_kernels::fp8_gemm::cublaslt::cublaslt_fp8_gemm(&a_rows, &b_rows, DType::BF16)
                });
                m.compare(ours, vendor);
            }
            let Some(b_blocks) = &b_blocks else { continue };
            let Some(a_blocks) = inputs(m, "fp8_gemm_block", &shape, quantized([tokens, k], 1, block_a, device)) else {
                continue;
            };
            let work = fp8_work(tokens, n, k, &a_blocks, b_blocks);
            m.time("fp8_gemm_block", &shape, work, Vendor::None, || {
                fp8_gemm(&a_blocks, b_blocks, DType::BF16, Epilogue::default())
            });
        }
    }
}
