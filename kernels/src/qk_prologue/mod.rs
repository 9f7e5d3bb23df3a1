//! `qk_prologue`: Llama 4's attention prologue fused into one pass: RoPE on Q and K, the
//! weightless QK RMS-norm, and the NoPE query temperature, each when the layer has it, with the
//! results written head-major (`[B, H, T, DH]`, `[B, HK, T, DH]`) as the attention kernels and
//! the paged cache take them.
//!
//! `q [B, T, H, DH]`, `k [B, T, HK, DH]`, token `i` at absolute position `p = start + i`. Per
//! head vector, in f32, each step rounded into the input dtype:
//!
//! ```text
//! RoPE         (x[2j], x[2j+1]) rotated by θ = f32(p)·inv_freq[j]        (adjacent pairs)
//! QK-norm      x · 1/sqrt(mean(x²) + eps)                                 (no weight)
//! temperature  q · (1 + attn_scale·ln(1 + floor((p + 1) / floor_scale)))   (queries only)
//! ```
//!
//! The temperature factor is HF's f32 evaluation ([`QueryTemperature::factor_f32`]), computed
//! where it is used (on the device from three scalars), and the inverse frequencies are an f32
//! tensor on q's device that callers upload once: a step sends no table from the host.
//!
//! Why a separate kernel rather than a prologue inside each attention kernel: the keys must be
//! rotated and normed once, before they enter the cache, while the attention kernels read every
//! key many times (prefill) or read cached keys that were rotated steps ago (decode); the same
//! kernel then serves prefill and decode, and the attention kernels stay as they are. K goes to
//! the cache through `paged_kv`'s write of the step's tokens only.
//!
//! Devices: the CPU path is [`reference`] (the same f32 math, cos/sin in f64 rounded to f32
//! like `rope`'s reference), the CUDA path one launch of `qk_prologue.cu` ([`cuda`]). Accuracy:
//! docs/numerics.md, "QK prologue".

pub mod cuda;
pub mod reference;
#[cfg(test)]
mod tests;

use l4_core::{DType, Device, Error, Result, Tensor};

const OP: &str = "qk_prologue";

/// The widest head the CUDA kernel takes (`QKP_MAX_PAIRS_PER_LANE · 64`).
pub const MAX_HEAD_DIM: usize = 256;

/// Llama 4's query temperature tuning (NoPE layers).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QueryTemperature {
    /// Positions are counted in blocks of this many tokens.
    pub floor_scale: f64,
    /// Strength of the log scale.
    pub attn_scale: f64,
}

impl QueryTemperature {
    /// The factor for absolute position `p`, in f64; exactly 1 for `p + 1 < floor_scale`.
    pub fn factor(&self, position: usize) -> f64 {
        1.0 + self.attn_scale * (((position + 1) as f64) / self.floor_scale).floor().ln_1p()
    }

    /// The factor as HF computes it and as both paths of [`qk_prologue`] use it: in f32, one
    /// rounded operation at a time, `log1p(floor((f32(p) + 1) / floor_scale)) · attn_scale + 1`
    /// (`cache_position.float()`, so positions above 2^24 round as HF's do).
    pub fn factor_f32(&self, position: usize) -> f32 {
        let blocks = ((position as f32 + 1.0) / self.floor_scale as f32).floor();
        blocks.ln_1p() * self.attn_scale as f32 + 1.0
    }
}

/// Which steps a layer's prologue applies, and where its tokens sit.
#[derive(Clone, Copy, Debug)]
pub struct Prologue<'a> {
    /// RoPE's inverse frequencies, an f32 tensor `[dh/2]` on q's device (RoPE layers), or
    /// `None` (NoPE).
    pub inv_freq: Option<&'a Tensor>,
    /// The QK-norm's epsilon, when the layer has the norm.
    pub qk_norm_eps: Option<f64>,
    /// The query temperature, when the layer has it.
    pub temperature: Option<QueryTemperature>,
    /// Absolute position of the first token.
    pub start: usize,
}

/// See the module docs: `(q_out [B, H, T, DH], k_out [B, HK, T, DH])`. Errors: ranks other
/// than 4, batch, tokens, width, dtype or device that differ between q and k, a non-float
/// dtype, an odd head width, `inv_freq` other than f32 `[dh/2]` on q's device, positions that
/// overflow;
/// on CUDA a head wider than [`MAX_HEAD_DIM`].
pub fn qk_prologue(q: &Tensor, k: &Tensor, prologue: Prologue<'_>) -> Result<(Tensor, Tensor)> {
    let (qs, ks) = (q.shape(), k.shape());
    if q.rank() != 4 || k.rank() != 4 || qs[0] != ks[0] || qs[1] != ks[1] || qs[3] != ks[3] {
        return Err(Error::ShapeMismatch {
            op: OP,
            lhs: qs.to_vec(),
            rhs: ks.to_vec(),
        });
    }
    if q.dtype() != k.dtype() || q.device() != k.device() || !q.dtype().is_float() {
        return Err(Error::invalid(
            OP,
            format!(
                "q and k must share a float dtype and device, got {} {} and {} {}",
                q.dtype(),
                q.device(),
                k.dtype(),
                k.device()
            ),
        ));
    }
    let dh = qs[3];
    let bad_freq = |f: &Tensor| f.shape() != [dh / 2] || f.dtype() != DType::F32 || f.device() != q.device();
    if dh % 2 != 0 || prologue.inv_freq.is_some_and(bad_freq) {
        return Err(Error::invalid(
            OP,
            format!(
                "head width {dh} must be even, and inv_freq f32 [{}] on {}",
                dh / 2,
                q.device()
            ),
        ));
    }
    if prologue
        .start
        .checked_add(qs[1])
        .is_none_or(|end| end > i64::MAX as usize)
    {
        return Err(Error::invalid(OP, "positions overflow"));
    }
    match q.device() {
        Device::Cpu => reference::qk_prologue(q, k, prologue),
        Device::Cuda(_) => cuda::qk_prologue(q, k, prologue),
    }
}
