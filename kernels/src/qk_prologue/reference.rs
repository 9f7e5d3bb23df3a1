//! The CPU reference for `qk_prologue`, which is also its CPU backend: per head vector, the
//! rotation with `rope`'s angles (θ rounded to f32, cos/sin in f64 rounded to f32), the norm and
//! the temperature in f32 (the factor HF's f32 evaluation, not rounded into the dtype: HF
//! multiplies by f32 `attn_scales`), each step's result rounded into the dtype as the unfused
//! ops round it; written head-major.

use l4_core::{CpuStorage, DType, Result, Tensor};

use super::Prologue;
use crate::rope::reference::cos_sin;

/// `v` rounded to the nearest value of `dtype` (f32, f16 or bf16), back in f32.
fn round_to(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
        DType::F16 => half::f16::from_f32(v).to_f32(),
        _ => v,
    }
}

/// One of q or k `[B, T, N, DH]` → `[B, N, T, DH]`; `temperature` only for q.
fn one(x: &Tensor, prologue: Prologue<'_>, inv_freq: Option<&[f32]>, with_temperature: bool) -> Result<Tensor> {
    let (b, t, n, dh) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let values = x.to_f32_vec()?; // [b, t, n, dh]
    let mut out = vec![0f32; values.len()];
    for bi in 0..b {
        for ti in 0..t {
            let position = prologue.start + ti;
            for hi in 0..n {
                let mut head = values[((bi * t + ti) * n + hi) * dh..][..dh].to_vec();
                if let Some(inv_freq) = inv_freq {
                    for (j, &f) in inv_freq.iter().enumerate() {
                        let (cos, sin) = cos_sin(position, f);
                        let (re, im) = (head[2 * j], head[2 * j + 1]);
                        head[2 * j] = round_to(x.dtype(), re * cos - im * sin);
                        head[2 * j + 1] = round_to(x.dtype(), re * sin + im * cos);
                    }
                }
                if let Some(eps) = prologue.qk_norm_eps {
                    let mean = head.iter().map(|v| v * v).sum::<f32>() / dh as f32;
                    let norm = 1.0 / (mean + eps as f32).sqrt();
                    head.iter_mut().for_each(|v| *v = round_to(x.dtype(), *v * norm));
                }
                if let (true, Some(temperature)) = (with_temperature, prologue.temperature) {
                    let factor = temperature.factor_f32(position);
                    head.iter_mut().for_each(|v| *v *= factor);
                }
                out[((bi * n + hi) * t + ti) * dh..][..dh].copy_from_slice(&head);
            }
        }
    }
    Tensor::from_cpu_storage(CpuStorage::from_f32_vec(x.dtype(), out), &[b, n, t, dh])
}

/// See [`super::qk_prologue`]; the operands are checked.
pub fn qk_prologue(q: &Tensor, k: &Tensor, prologue: Prologue<'_>) -> Result<(Tensor, Tensor)> {
    let inv_freq = prologue.inv_freq.map(Tensor::to_f32_vec).transpose()?; // [dh/2]
    let inv_freq = inv_freq.as_deref();
    Ok((one(q, prologue, inv_freq, true)?, one(k, prologue, inv_freq, false)?))
}
