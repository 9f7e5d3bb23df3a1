//! Llama 4 attention: GQA with RoPE or NoPE, chunked-local or global causal spans, QK-norm and
//! query temperature tuning, over a per-layer KV cache.

use std::collections::HashMap;
use std::ops::Range;

use l4_core::{DType, Device, Error, Result, Tensor};
use l4_kernels::attention_decode::{PagedDecodeShape, fits_kernel, paged_decode_attention};
use l4_kernels::attention_prefill::{PagedPrefillShape, fits_kernel as prefill_fits, paged_prefill_attention};
use l4_kernels::ops;
use l4_kernels::qk_prologue::{Prologue, QueryTemperature, qk_prologue};

use super::linear::Linear;
use crate::kv_cache::LayerCache;
use crate::spec::{LayerSpec, Position, Span};

/// Projections of one attention block (HF `nn.Linear` weights, no biases).
#[derive(Clone, Debug)]
pub struct AttentionWeights {
    /// `[h·dh, d]`.
    pub q: Linear,
    /// `[hk·dh, d]`.
    pub k: Linear,
    /// `[hk·dh, d]`.
    pub v: Linear,
    /// `[d, h·dh]`.
    pub o: Linear,
}

/// Head counts and widths shared by every attention block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Query heads `h`.
    pub num_heads: usize,
    /// Key/value heads `hk`.
    pub num_kv_heads: usize,
    /// Head width `dh`.
    pub head_dim: usize,
}

/// What every attention block of a model shares: head layout, rotary table, norm epsilon.
#[derive(Clone, Copy, Debug)]
pub struct AttentionContext<'a> {
    /// Head counts and widths.
    pub shape: AttentionShape,
    /// RoPE's inverse frequencies `[dh/2]`, f32 on the activations' device.
    pub inv_freq: &'a Tensor,
    /// Epsilon of the QK-norm.
    pub rms_norm_eps: f64,
}

/// Query blocks whose keys form one contiguous range: a chunk for chunked layers (queries in
/// chunk c see keys of chunk c only), everything for global layers. Returns, per block, the
/// query range (offsets into the current step) and the absolute key range.
fn query_blocks(span: Span, start: usize, t: usize, cache_start: usize) -> Vec<(Range<usize>, Range<usize>)> {
    match span {
        Span::Global => vec![(0..t, cache_start..start + t)],
        Span::Chunked(chunk) => {
            let mut blocks = Vec::new();
            let mut q = 0;
            while q < t {
                let chunk_start = (start + q) / chunk * chunk;
                let q_end = (chunk_start + chunk - start).min(t);
                blocks.push((q..q_end, chunk_start.max(cache_start)..start + q_end));
                q = q_end;
            }
            blocks
        }
    }
}

/// Additive causal mask `[rows, keys]` for one block: rows are `g` query heads × `tq` tokens
/// (head-major), a key is visible when its position is at most the query's. Built on the host.
fn causal_mask(g: usize, queries: Range<usize>, start: usize, keys: Range<usize>, dtype: DType) -> Result<Tensor> {
    let tq = queries.len();
    let nk = keys.len();
    let mut mask = vec![0.0f32; g * tq * nk];
    for (row, values) in mask.chunks_mut(nk).enumerate() {
        let q_pos = start + queries.start + row % tq;
        for (key, value) in values.iter_mut().enumerate() {
            if keys.start + key > q_pos {
                *value = f32::NEG_INFINITY;
            }
        }
    }
    Tensor::from_f32_vec(mask, &[g * tq, nk], dtype, Device::Cpu)
}

/// The causal masks of one forward step, on the model's device. Every layer with the same span
/// sees the same query and key ranges in a step, so each distinct mask is built and uploaded
/// once per step instead of once per layer.
#[derive(Debug)]
pub struct StepMasks {
    device: Device,
    dtype: DType,
    masks: HashMap<(usize, Range<usize>, usize, Range<usize>), Tensor>,
}

impl StepMasks {
    /// No masks yet; they are made on first use, in `dtype` on `device`.
    pub fn new(dtype: DType, device: Device) -> Self {
        StepMasks {
            device,
            dtype,
            masks: HashMap::new(),
        }
    }

    fn get(&mut self, g: usize, queries: Range<usize>, start: usize, keys: Range<usize>) -> Result<&Tensor> {
        let key = (g, queries.clone(), start, keys.clone());
        if !self.masks.contains_key(&key) {
            let mask = causal_mask(g, queries, start, keys, self.dtype)?.to_device(self.device)?;
            self.masks.insert(key.clone(), mask);
        }
        Ok(&self.masks[&key])
    }
}

/// The attention block of one layer: `x [b, t, d]` at absolute positions `start..start+t`
/// → `[b, t, d]`, appending this step's keys and values to `cache`.
pub fn attention_forward(
    context: AttentionContext<'_>,
    layer: &LayerSpec,
    weights: &AttentionWeights,
    x: &Tensor,
    start: usize,
    cache: &mut LayerCache,
    masks: &mut StepMasks,
) -> Result<Tensor> {
    let AttentionContext {
        shape,
        inv_freq,
        rms_norm_eps,
    } = context;
    let [b, t, _] = x.shape()[..] else {
        return Err(Error::BadShape {
            op: "attention",
            shape: x.shape().to_vec(),
            msg: "expected [b, t, d]".into(),
        });
    };
    let AttentionShape {
        num_heads: h,
        num_kv_heads: hk,
        head_dim: dh,
    } = shape;
    let q = weights.q.forward(x)?.reshape(&[b, t, h, dh])?;
    let k = weights.k.forward(x)?.reshape(&[b, t, hk, dh])?;
    let v = weights.v.forward(x)?.reshape(&[b, t, hk, dh])?;

    // RoPE, then the weightless QK-norm, then the temperature (NoPE layers), fused in one pass
    // that also makes q and k head-major. The frequencies were uploaded with the model and the
    // temperature is computed on the device: a step uploads no table.
    let prologue = Prologue {
        inv_freq: (layer.position == Position::Rope).then_some(inv_freq),
        qk_norm_eps: layer.qk_norm.then_some(rms_norm_eps),
        temperature: layer.temperature.map(|t| QueryTemperature {
            floor_scale: t.floor_scale,
            attn_scale: t.attn_scale,
        }),
        start,
    };
    let (q, k) = qk_prologue(&q, &k, prologue)?; // [b, h, t, dh], [b, hk, t, dh]

    // Keys and values join the cache after RoPE and QK-norm; v is cached raw. Only this step's
    // tokens are written; the attention below reads the cache's blocks in place on a GPU.
    let v = ops::contiguous(&v.permute(&[0, 2, 1, 3])?)?; // [b, hk, t, dh]
    cache.append(&k, &v, start)?;
    let attended = attend(layer, shape, &q, x.device().is_cuda(), start, cache, masks);
    cache.finish_step(start + t)?;
    weights.o.forward(&attended?)
}

/// Attention of this step's queries `q [b, h, t, dh]` (after RoPE, QK-norm and temperature)
/// at positions `start..start+t` over the cache, which already holds this step's keys
/// → `[b, t, h·dh]`.
fn attend(
    layer: &LayerSpec,
    shape: AttentionShape,
    q: &Tensor,
    on_gpu: bool,
    start: usize,
    cache: &LayerCache,
    masks: &mut StepMasks,
) -> Result<Tensor> {
    let AttentionShape {
        num_heads: h,
        num_kv_heads: hk,
        head_dim: dh,
    } = shape;
    let (b, t, g) = (q.shape()[0], q.shape()[2], h / hk);
    let chunk = match layer.span {
        Span::Chunked(c) => Some(c),
        Span::Global => None,
    };
    // Group query heads by their kv head: head i uses kv head i / g.
    let q = ops::contiguous(q)?.reshape(&[b, hk, g, t, dh])?;
    let scale = (dh as f64).powf(-0.5);
    let by_kv_head = q.reshape(&[b, hk, g * t, dh])?; // rows head-major: row r is token r % t
    let heads_by_token = q.reshape(&[b, h, t, dh])?;
    if let (true, Some(paged)) = (on_gpu, cache.paged()) {
        // Decode-sized steps: one split-KV launch over the cache's blocks, every chunk window
        // applied per row.
        if fits_kernel(&by_kv_head) {
            let shape = PagedDecodeShape {
                tq: t,
                q_start: start,
                chunk,
                scale,
            };
            let attended = paged_decode_attention(&by_kv_head, paged, shape)?; // [b, hk, g·t, dh]
            let attended = attended.reshape(&[b, h, t, dh])?;
            return ops::contiguous(&attended.permute(&[0, 2, 1, 3])?)?.reshape(&[b, t, h * dh]);
        }
        // Whole steps in bf16/f16: one tensor-core kernel over every chunk, no scores in memory.
        if prefill_fits(&heads_by_token) {
            let shape = PagedPrefillShape {
                q_start: start,
                chunk,
                scale,
            };
            let attended = paged_prefill_attention(&heads_by_token, paged, shape)?; // [b, h, t, dh]
            return ops::contiguous(&attended.permute(&[0, 2, 1, 3])?)?.reshape(&[b, t, h * dh]);
        }
    }
    // Elsewhere: the cached keys gathered out of their blocks, scores per query block.
    let Some((keys, values, cache_start)) = cache.keys_and_values()? else {
        return Err(Error::invalid("attention", "the cache holds no keys after the append"));
    };
    let mut outputs = Vec::new();
    for (queries, key_range) in query_blocks(layer.span, start, t, cache_start) {
        let tq = queries.len();
        let q_block = ops::contiguous(&q.narrow(3, queries.start, tq)?)?.reshape(&[b, hk, g * tq, dh])?;
        let k_block = keys.narrow(2, key_range.start - cache_start, key_range.len())?;
        let v_block = values.narrow(2, key_range.start - cache_start, key_range.len())?;
        let mask = masks.get(g, queries.clone(), start, key_range)?;
        let scores = ops::matmul(&q_block, &k_block.transpose(2, 3)?)?; // [b, hk, g·tq, nk]
        let probs = ops::softmax_last(&ops::add(&ops::scale(&scores, scale)?, mask)?)?;
        outputs.push(ops::matmul(&probs, &v_block)?.reshape(&[b, hk, g, tq, dh])?);
    }
    let attended = match &outputs[..] {
        [one] => one.clone(),
        several => ops::cat(&several.iter().collect::<Vec<_>>(), 3)?,
    }
    .reshape(&[b, h, t, dh])?; // from [b, hk, g, t, dh]
    ops::contiguous(&attended.permute(&[0, 2, 1, 3])?)?.reshape(&[b, t, h * dh])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_blocks_align_to_absolute_positions() {
        // Chunk 4, step covering positions 6..15 with the cache starting at 4.
        let blocks = query_blocks(Span::Chunked(4), 6, 9, 4);
        assert_eq!(blocks, vec![(0..2, 4..8), (2..6, 8..12), (6..9, 12..15)]);
        // Global: one block over every cached key.
        assert_eq!(query_blocks(Span::Global, 6, 9, 0), vec![(0..9, 0..15)]);
    }
}
