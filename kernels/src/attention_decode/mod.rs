//! `attention_decode`: attention of a few query rows per KV head group against the cache, for
//! decode steps (flash-decoding: the keys split in fixed-size pieces, merged in a fixed order).
//!
//! `q [B, HK, R, DH]`: the `R = g·tq` rows that share KV head `kh` (g query heads × tq step
//! tokens, head-major), row `r` at position `q_start + r % tq`; `k`, `v [B, HK, S, DH]`, key `j`
//! at `k_start + j` (any strides, unit stride in `DH`, such as narrowed cache views). Key `j` is
//! visible to row `r` when `k_start + j ≤ q_start + r % tq`. Output `[B, HK, R, DH]` in q's dtype:
//! `softmax(scale·q·kᵀ + mask)·v` per row. Every row must see at least one key.
//!
//! [`paged_decode_attention`] takes the keys and values from a [`PagedKv`] instead (key `j` at
//! `cache.base() + j`), read through the block table on CUDA and gathered on the CPU, with an
//! optional chunk: a key before the row's `C`-aligned chunk is hidden too.
//!
//! Devices: the CPU path is [`reference`] (plain loops in f64, rounded once), the CUDA path two
//! launches of `attention_decode.cu` ([`cuda`]). Limits on CUDA: R ≤ 8, DH ≤ 128; larger
//! problems are the generic attention's. Accuracy: docs/numerics.md, "Decode attention".

pub mod cuda;
pub mod reference;
#[cfg(test)]
mod tests;

use l4_core::{DType, Device, Error, Result, Tensor};

use crate::paged_kv::PagedKv;

const OP: &str = "attention_decode";

/// The most query rows per KV head the CUDA kernel takes (`DEC_MAX_ROWS`).
pub const MAX_ROWS: usize = 8;
/// The widest head it takes (`DEC_MAX_DH`).
pub const MAX_HEAD_DIM: usize = 128;
/// Keys per split (`DEC_SPLIT`), fixed so that results never depend on the launch.
pub const SPLIT: usize = 256;

/// Where the rows and keys sit, and the softmax scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodeShape {
    /// Step tokens per query head (rows are head-major: row r is token r % tq).
    pub tq: usize,
    /// Absolute position of the step's first token.
    pub q_start: usize,
    /// Absolute position of the first key.
    pub k_start: usize,
    /// Softmax scale (`dh^-0.5` for Llama 4).
    pub scale: f64,
}

/// Rows and scale for [`paged_decode_attention`] (the keys' positions come from the cache).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PagedDecodeShape {
    /// Step tokens per query head (rows are head-major: row r is token r % tq).
    pub tq: usize,
    /// Absolute position of the step's first token.
    pub q_start: usize,
    /// Chunk of chunked local attention (`None`: global causal).
    pub chunk: Option<usize>,
    /// Softmax scale.
    pub scale: f64,
}

/// Whether the CUDA kernel takes `q`'s shape (callers fall back to generic attention).
pub fn fits_kernel(q: &Tensor) -> bool {
    q.rank() == 4 && q.shape()[2] <= MAX_ROWS && q.shape()[3] <= MAX_HEAD_DIM
}

/// See the module docs. Errors: ranks other than 4, mismatched shapes, dtypes or devices, a
/// non-float dtype, `R` not a multiple of `tq`, a row that sees no key, a shape outside the
/// CUDA kernel's limits on CUDA.
pub fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor, shape: DecodeShape) -> Result<Tensor> {
    for (t, which) in [(q, "q"), (k, "k"), (v, "v")] {
        if t.rank() != 4 {
            return Err(Error::BadShape {
                op: OP,
                shape: t.shape().to_vec(),
                msg: format!("{which} must be [batch, kv heads, rows or keys, head dim]"),
            });
        }
        if t.dtype() != q.dtype() || t.device() != q.device() {
            return Err(Error::invalid(OP, format!("{which} must share q's dtype and device")));
        }
    }
    if !matches!(q.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        return Err(Error::DTypeMismatch {
            op: OP,
            got: q.dtype(),
            expected: None,
        });
    }
    let (qs, ks) = (q.shape(), k.shape());
    let same = ks == v.shape() && ks[0] == qs[0] && ks[1] == qs[1] && ks[3] == qs[3];
    if !same {
        return Err(Error::ShapeMismatch {
            op: OP,
            lhs: qs.to_vec(),
            rhs: ks.to_vec(),
        });
    }
    let (rows, keys) = (qs[2], ks[2]);
    if shape.tq == 0 || !rows.is_multiple_of(shape.tq) {
        return Err(Error::invalid(
            OP,
            format!("{rows} rows are not heads x {} tokens", shape.tq),
        ));
    }
    if rows > 0 && (keys == 0 || shape.k_start > shape.q_start) {
        return Err(Error::invalid(
            OP,
            format!(
                "the first query (position {}) sees no key (keys from {} to {})",
                shape.q_start,
                shape.k_start,
                shape.k_start + keys
            ),
        ));
    }
    match q.device() {
        Device::Cpu => reference::decode_attention(q, k, v, shape),
        Device::Cuda(_) => cuda::decode_attention(q, k, v, shape),
    }
}

/// [`decode_attention`] over the keys and values of `cache` (`q [B, HK, R, DH]` with the cache's
/// batch, heads, width, dtype and device). Errors: as [`decode_attention`], plus a chunk of 0.
pub fn paged_decode_attention(q: &Tensor, cache: &PagedKv, shape: PagedDecodeShape) -> Result<Tensor> {
    let want = [cache.batch(), cache.heads_kv(), cache.head_dim()];
    if q.rank() != 4 || [q.shape()[0], q.shape()[1], q.shape()[3]] != want {
        return Err(Error::invalid(
            OP,
            format!(
                "q is {:?}; the cache holds [batch, kv heads, head dim] = {want:?}",
                q.shape()
            ),
        ));
    }
    if q.dtype() != cache.dtype() || q.device() != cache.device() {
        return Err(Error::invalid(OP, "q must share the cache's dtype and device"));
    }
    if shape.chunk == Some(0) {
        return Err(Error::invalid(OP, "a chunk of 0 tokens"));
    }
    let rows = q.shape()[2];
    if shape.tq == 0 || !rows.is_multiple_of(shape.tq) {
        return Err(Error::invalid(
            OP,
            format!("{rows} rows are not heads x {} tokens", shape.tq),
        ));
    }
    let window = |pos: usize| shape.chunk.map_or(0, |c| pos - pos % c);
    let end = cache.base() + cache.len();
    if rows > 0 && (cache.is_empty() || window(shape.q_start).max(cache.base()) > shape.q_start.min(end - 1)) {
        return Err(Error::invalid(
            OP,
            format!(
                "the first query (position {}) sees no key (cache holds {}..{})",
                shape.q_start,
                cache.base(),
                cache.base() + cache.len()
            ),
        ));
    }
    match q.device() {
        Device::Cpu => reference::paged_decode_attention(q, cache, shape),
        Device::Cuda(_) => cuda::paged_decode_attention(q, cache, shape),
    }
}
