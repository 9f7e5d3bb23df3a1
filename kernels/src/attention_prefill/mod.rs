//! `attention_prefill`: causal attention over a whole step's query tokens, with Llama 4's
//! chunked local windows, without materialising the scores.
//!
//! `q [B, H, T, DH]`, `k`, `v [B, HK, S, DH]` (any strides with unit stride in `DH`; query head
//! `h` reads KV head `h / (H / HK)`), query `i` at `q_start + i`, key `j` at `k_start + j`. Key
//! `j` is visible to query `i` when `k_pos ≤ q_pos` and, with a chunk `C`, both lie in the same
//! `C`-aligned chunk. Output `[B, H, T, DH]` in q's dtype; a row that sees no key is 0.
//!
//! [`paged_prefill_attention`] takes the keys and values from a [`PagedKv`] (key `j` at
//! `cache.base() + j`): read through the block table on CUDA, gathered on the CPU.
//!
//! Devices: the CPU path is [`reference`] (plain loops in f64); the CUDA path is one launch of
//! `attention_prefill.cu` ([`cuda`], bf16/f16 with DH in {16, 32, 64, 128}: mma.sync tensor
//! cores, an online softmax in f32, key tiles outside the chunk skipped). Accuracy:
//! docs/numerics.md, "Prefill attention".

pub mod cuda;
pub mod reference;
#[cfg(test)]
mod tests;

use l4_core::{DType, Device, Error, Result, Tensor};

use crate::paged_kv::PagedKv;

const OP: &str = "attention_prefill";

/// Head widths the CUDA kernel is compiled for.
pub const HEAD_DIMS: [usize; 4] = [16, 32, 64, 128];

/// Positions, window and scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrefillShape {
    /// Absolute position of the first query token.
    pub q_start: usize,
    /// Absolute position of the first key.
    pub k_start: usize,
    /// Chunk size of chunked local attention (`None`: global causal).
    pub chunk: Option<usize>,
    /// Softmax scale.
    pub scale: f64,
}

/// Positions, window and scale for [`paged_prefill_attention`] (the keys' come from the cache).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PagedPrefillShape {
    /// Absolute position of the first query token.
    pub q_start: usize,
    /// Chunk size of chunked local attention (`None`: global causal).
    pub chunk: Option<usize>,
    /// Softmax scale.
    pub scale: f64,
}

/// Whether the CUDA kernel takes these operands (callers fall back to generic attention).
pub fn fits_kernel(q: &Tensor) -> bool {
    q.rank() == 4 && matches!(q.dtype(), DType::BF16 | DType::F16) && HEAD_DIMS.contains(&q.shape()[3])
}

/// See the module docs. Errors: ranks other than 4, mismatched shapes, dtypes or devices, query
/// heads not a multiple of KV heads, a zero chunk; on CUDA also a dtype or head width the kernel
/// lacks.
pub fn prefill_attention(q: &Tensor, k: &Tensor, v: &Tensor, shape: PrefillShape) -> Result<Tensor> {
    for (t, which) in [(q, "q"), (k, "k"), (v, "v")] {
        if t.rank() != 4 || t.dtype() != q.dtype() || t.device() != q.device() {
            return Err(Error::invalid(
                OP,
                format!(
                    "{which} must be 4-D with q's dtype and device, got {:?} {}",
                    t.shape(),
                    t.dtype()
                ),
            ));
        }
    }
    if !q.dtype().is_float() {
        return Err(Error::DTypeMismatch {
            op: OP,
            got: q.dtype(),
            expected: None,
        });
    }
    let (qs, ks) = (q.shape(), k.shape());
    if ks != v.shape() || ks[0] != qs[0] || ks[3] != qs[3] || ks[1] == 0 || !qs[1].is_multiple_of(ks[1]) {
        return Err(Error::ShapeMismatch {
            op: OP,
            lhs: qs.to_vec(),
            rhs: ks.to_vec(),
        });
    }
    if shape.chunk == Some(0) {
        return Err(Error::invalid(OP, "a chunk of 0 tokens"));
    }
    match q.device() {
        Device::Cpu => reference::prefill_attention(q, k, v, shape),
        Device::Cuda(_) => cuda::prefill_attention(q, k, v, shape),
    }
}

/// [`prefill_attention`] over the keys and values of `cache` (`q [B, H, T, DH]` with the
/// cache's batch, width, dtype and device, `H` a multiple of its KV heads). Errors: as
/// [`prefill_attention`].
pub fn paged_prefill_attention(q: &Tensor, cache: &PagedKv, shape: PagedPrefillShape) -> Result<Tensor> {
    let hk = cache.heads_kv();
    if q.rank() != 4
        || q.shape()[0] != cache.batch()
        || q.shape()[3] != cache.head_dim()
        || !q.shape()[1].is_multiple_of(hk)
    {
        return Err(Error::invalid(
            OP,
            format!(
                "q is {:?}; the cache holds batch {}, {hk} kv heads of width {}",
                q.shape(),
                cache.batch(),
                cache.head_dim()
            ),
        ));
    }
    if q.dtype() != cache.dtype() || q.device() != cache.device() {
        return Err(Error::invalid(OP, "q must share the cache's dtype and device"));
    }
    if shape.chunk == Some(0) {
        return Err(Error::invalid(OP, "a chunk of 0 tokens"));
    }
    match q.device() {
        Device::Cpu => {
            let (k, v) = cache.gather()?;
            let contiguous = PrefillShape {
                q_start: shape.q_start,
                k_start: cache.base(),
                chunk: shape.chunk,
                scale: shape.scale,
            };
            reference::prefill_attention(q, &k, &v, contiguous)
        }
        Device::Cuda(_) if cache.is_empty() => Tensor::zeros(q.shape(), q.dtype(), Device::Cpu)?.to_device(q.device()),
        Device::Cuda(_) => cuda::paged_prefill_attention(q, cache, shape),
    }
}
