//! `attention_prefill`: causal attention over a whole step's query tokens, with Llama 4's
//! chunked local windows, without materialising the scores.
//!
//! `q [B, H, T, DH]`, `k`, `v [B, HK, S, DH]` (any strides with unit stride in `DH`; query head
//! `h` reads KV head `h / (H / HK)`), query `i` at `q_start + i`, key `j` at `k_start + j`. Key
//! `j` is visible to query `i` when `k_pos ≤ q_pos` and, with a chunk `C`, both lie in the same
//! `C`-aligned chunk. Output `[B, H, T, DH]` in q's dtype; a row that sees no key is 0.
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
