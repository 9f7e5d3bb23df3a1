//! Attention over the paged KV cache at Scout's head layout (40 query heads, 8 KV heads, dh
//! 128), bf16, batch 1, K/V in a `PagedKv` of 64-token blocks:
//!
//! * prefill (`attention_prefill`, paged): global causal at T ∈ {1K, 4K, 16K, 64K} (the NoPE
//!   layers) and chunked causal with Scout's 8192-token chunks at T ∈ {16K, 64K, 128K} (the
//!   RoPE layers). Compute-bound: elements are the FLOPs of the visible (query, key) pairs only
//!   (4·dh each, QKᵀ and PV), so TFLOP/s are useful FLOPs; bytes are q, k, v and the output once.
//! * decode (`attention_decode`, paged): one token against 8K, 32K, 128K, 512K and 1M cached
//!   keys (global) and against a chunked layer's live chunk at 1M. Memory-bound: bytes are the
//!   K and V rows read once plus q and the output, to compare with HBM bandwidth.
//! * the QK prologue (RoPE + QK-norm) at a decode step's 16 tokens and an 8192-token prefill:
//!   bytes are q and k read and written once.
//!
//! On the CPU the same entries run at the tiny preset's layout and short sequences.

use criterion::{Criterion, Throughput};
use l4_benches::runner::{self, bench_op, randn, setup};
use l4_benches::shapes::ModelDims;
use l4_core::{DType, Device, Result, Tensor};
use l4_kernels::paged_kv::{DEFAULT_BLOCK_SIZE, PagedKv};

/// Tokens appended per `PagedKv::append` while filling a long cache (bounds the random inputs).
const FILL_PIECE: usize = 1 << 16;

/// A batch-1 paged cache holding positions `first..first + len` of random keys and values.
fn filled_cache(hk: usize, dh: usize, first: usize, len: usize, device: Device) -> Result<PagedKv> {
    let mut cache = PagedKv::new(1, hk, dh, DEFAULT_BLOCK_SIZE, DType::BF16, device)?;
    let piece = FILL_PIECE.min(len);
    // One random piece written over and over: values do not change a timing.
    let k = randn(&[1, hk, piece, dh], DType::BF16, 21, device)?;
    let v = randn(&[1, hk, piece, dh], DType::BF16, 22, device)?;
    let mut done = 0;
    while done < len {
        let n = piece.min(len - done);
        cache.append(&k.narrow(2, 0, n)?, &v.narrow(2, 0, n)?, first + done)?;
        done += n;
    }
    Ok(cache)
}

/// Query-key pairs a causal window sees over `t` queries from position 0 (chunks causal on
/// their own).
fn visible_pairs(t: usize, chunk: Option<usize>) -> usize {
    let span = chunk.unwrap_or(t);
    (0..t)
        .step_by(span)
        .map(|start| {
            let len = span.min(t - start);
            len * (len + 1) / 2
        })
        .sum()
}

/// Paged prefill attention, global and chunked (see the module docs).
pub fn paged_prefill(c: &mut Criterion) {
    use l4_kernels::attention_prefill::{PagedPrefillShape, paged_prefill_attention};
    for device in runner::devices() {
        let dims = if device.is_cuda() {
            ModelDims::gpu()
        } else {
            ModelDims::cpu()
        };
        let group_name = format!("{device}/attention_prefill_paged");
        let Some(mut timer) = runner::timer(&group_name, device) else {
            continue;
        };
        let mut group = c.benchmark_group(&group_name);
        let dtype = DType::BF16;
        let (h, hk, dh) = (dims.heads, dims.kv_heads, dims.head_dim);
        let chunk = dims.chunk.unwrap_or(8192);
        let cases: Vec<(usize, Option<usize>)> = if device.is_cuda() {
            let global = [1 << 10, 1 << 12, 1 << 14, 1 << 16].map(|t| (t, None));
            let chunked = [1 << 14, 1 << 16, 1 << 17].map(|t| (t, Some(chunk)));
            global.into_iter().chain(chunked).collect()
        } else {
            vec![(64, None), (128, Some(chunk.min(32)))]
        };
        for (t, chunk) in cases {
            let function = match chunk {
                None => format!("{dtype}_causal"),
                Some(c) => format!("{dtype}_chunk{c}"),
            };
            let value = format!("1x{h}x{hk}x{t}x{dh}");
            let id = format!("{group_name}/{function}/{value}");
            let inputs = || -> Result<(Tensor, PagedKv)> {
                Ok((
                    randn(&[1, h, t, dh], dtype, 15, device)?,
                    filled_cache(hk, dh, 0, t, device)?,
                ))
            };
            let Some((q, cache)) = setup(&id, inputs()) else {
                continue;
            };
            let shape = PagedPrefillShape {
                q_start: 0,
                chunk,
                scale: 1.0 / (dh as f64).sqrt(),
            };
            let size = dtype.size_in_bytes();
            let throughput = Throughput::ElementsAndBytes {
                elements: (4 * h * visible_pairs(t, chunk) * dh) as u64,
                bytes: (2 * (h + hk) * t * dh * size) as u64,
            };
            bench_op(
                &mut group,
                &group_name,
                &mut timer,
                &function,
                value,
                throughput,
                || paged_prefill_attention(&q, &cache, shape),
            );
        }
        group.finish();
    }
}

/// Paged decode attention at long contexts (see the module docs).
pub fn paged_decode(c: &mut Criterion) {
    use l4_kernels::attention_decode::{PagedDecodeShape, paged_decode_attention};
    for device in runner::devices() {
        let dims = if device.is_cuda() {
            ModelDims::gpu()
        } else {
            ModelDims::cpu()
        };
        let group_name = format!("{device}/attention_decode_paged");
        let Some(mut timer) = runner::timer(&group_name, device) else {
            continue;
        };
        let mut group = c.benchmark_group(&group_name);
        let dtype = DType::BF16;
        let (h, hk, dh) = (dims.heads, dims.kv_heads, dims.head_dim);
        let chunk = dims.chunk.unwrap_or(8192);
        let contexts: &[usize] = if device.is_cuda() {
            &[1 << 13, 1 << 15, 1 << 17, 1 << 19, 1 << 20]
        } else {
            &[64, 256]
        };
        let longest = *contexts.last().expect("contexts");
        let cases = contexts.iter().map(|&s| (s, None)).chain([(longest, Some(chunk))]);
        for (context, chunk) in cases {
            let function = match chunk {
                None => format!("{dtype}_global"),
                Some(c) => format!("{dtype}_chunk{c}"),
            };
            let value = format!("1x{h}x{hk}x{context}x{dh}");
            let id = format!("{group_name}/{function}/{value}");
            // A chunked layer's cache holds the live chunk only: from the chunk's start.
            let q_pos = context - 1;
            let first = chunk.map_or(0, |c| q_pos - q_pos % c);
            let keys = context - first;
            let inputs = || -> Result<(Tensor, PagedKv)> {
                Ok((
                    randn(&[1, hk, h / hk, dh], dtype, 12, device)?,
                    filled_cache(hk, dh, first, keys, device)?,
                ))
            };
            let Some((q, cache)) = setup(&id, inputs()) else {
                continue;
            };
            let shape = PagedDecodeShape {
                tq: 1,
                q_start: q_pos,
                chunk,
                scale: 1.0 / (dh as f64).sqrt(),
            };
            let size = dtype.size_in_bytes();
            let throughput = Throughput::ElementsAndBytes {
                elements: (h * keys) as u64,
                bytes: (2 * hk * keys * dh * size + 2 * h * dh * size) as u64,
            };
            bench_op(
                &mut group,
                &group_name,
                &mut timer,
                &function,
                value,
                throughput,
                || paged_decode_attention(&q, &cache, shape),
            );
        }
        group.finish();
    }
}

/// The fused QK prologue of a RoPE layer with QK-norm (see the module docs).
pub fn qk_prologue(c: &mut Criterion) {
    use l4_kernels::qk_prologue::{Prologue, qk_prologue};
    for device in runner::devices() {
        let dims = if device.is_cuda() {
            ModelDims::gpu()
        } else {
            ModelDims::cpu()
        };
        let group_name = format!("{device}/qk_prologue");
        let Some(mut timer) = runner::timer(&group_name, device) else {
            continue;
        };
        let mut group = c.benchmark_group(&group_name);
        let dtype = DType::BF16;
        let (h, hk, dh) = (dims.heads, dims.kv_heads, dims.head_dim);
        let inv_freq: Vec<f32> = (0..dh / 2)
            .map(|j| 500_000f32.powf(-((2 * j) as f32) / dh as f32))
            .collect();
        let tokens: &[usize] = if device.is_cuda() { &[16, 8192] } else { &[4, 64] };
        for &t in tokens {
            let value = format!("{t}x{h}x{hk}x{dh}");
            let id = format!("{group_name}/{dtype}_rope_norm/{value}");
            let inputs = || -> Result<(Tensor, Tensor)> {
                Ok((
                    randn(&[1, t, h, dh], dtype, 31, device)?,
                    randn(&[1, t, hk, dh], dtype, 32, device)?,
                ))
            };
            let Some((q, k)) = setup(&id, inputs()) else {
                continue;
            };
            // Uploaded once, as the model keeps it per layer: the timed call copies nothing.
            let Some(freq) = setup(
                &id,
                Tensor::from_vec(inv_freq.clone(), &[dh / 2], Device::Cpu).and_then(|f| f.to_device(device)),
            ) else {
                continue;
            };
            let prologue = Prologue {
                inv_freq: Some(&freq),
                qk_norm_eps: Some(1e-5),
                temperature: None,
                start: 1000,
            };
            let elements = t * (h + hk) * dh;
            let throughput = Throughput::ElementsAndBytes {
                elements: elements as u64,
                bytes: (2 * elements * dtype.size_in_bytes()) as u64,
            };
            bench_op(
                &mut group,
                &group_name,
                &mut timer,
                &format!("{dtype}_rope_norm"),
                value,
                throughput,
                || qk_prologue(&q, &k, prologue),
            );
        }
        group.finish();
    }
}
