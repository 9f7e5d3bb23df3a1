//! FP8 routed experts (Meta's Llama 4 recipe): e4m3 weights with one scale per output channel,
//! activations quantized per token (row) by [`crate::quant`], the same grouping, fusions and
//! fixed-order combine as the bf16 path ([`super`]).
//!
//! What is computed (`q`, `s`: codes and scales): the expert inputs `a_r` as in
//! [`super::gate_up_swiglu`], quantized per row (`s_a` from the row's amax, bounded when asked);
//! `g = (q_a·q_g)·s_a·s_g`, `u` likewise, `h = round(silu(g)·u)`; `h` quantized per row;
//! `y = (q_h·q_d)·s_h·s_d`, then weight, shared expert and combine as in
//! [`super::down_combine`]. The products of e4m3 codes are exact; the CPU reference sums them in
//! f64, the CUDA kernels in f32: on CUDA cores for steps of at most 64 slots (one warp per output
//! column streaming its weight row once for up to 16 rows of one expert), on tensor cores above
//! (mma.sync m16n8k32 e4m3 with 128-code promotion, compute capability 8.9+; see `fp8_cuda`).

use l4_core::{DType, Device, Error, Result, Tensor};

use super::{ExpertShape, OP, WeightOn};
use crate::moe_routing::RoutedTokens;
use crate::ops;
use crate::quant::{Granularity, Quantized, quantize};

/// A MoE layer's routed experts in e4m3 with per-output-channel scales, stacked.
#[derive(Clone, Debug)]
pub struct Fp8Experts {
    /// `[e, 2f, d]` e4m3 (gate rows first), `nn.Linear` layout.
    pub gate_up: Tensor,
    /// `[e, 2f]` f32.
    pub gate_up_scales: Tensor,
    /// `[e, d, f]` e4m3.
    pub down: Tensor,
    /// `[e, d]` f32.
    pub down_scales: Tensor,
}

impl Fp8Experts {
    /// Quantizes experts in HF's fused layout, `gate_up [e, d, 2f]` and `down [e, f, d]`, per
    /// output channel (on their device).
    pub fn quantize(gate_up: &Tensor, down: &Tensor) -> Result<Self> {
        let stack = |w: &Tensor, what: &str| -> Result<(Tensor, Tensor)> {
            let &[e, k, n] = w.shape() else {
                return Err(Error::BadShape {
                    op: OP,
                    shape: w.shape().to_vec(),
                    msg: format!("{what}: expected [e, in, out]"),
                });
            };
            let rows = ops::contiguous(&w.permute(&[0, 2, 1])?)?.reshape(&[e * n, k])?; // [e·n, k]
            let q = quantize(&rows, Granularity::PerRow, None)?;
            Ok((q.values.reshape(&[e, n, k])?, q.scales.reshape(&[e, n])?))
        };
        let (gate_up, gate_up_scales) = stack(gate_up, "gate_up")?;
        let (down, down_scales) = stack(down, "down")?;
        Ok(Fp8Experts {
            gate_up,
            gate_up_scales,
            down,
            down_scales,
        })
    }

    /// Stacks per-expert row-wise quantized weights: `gate_up[i]` `[2f, d]`, `down[i]` `[d, f]`
    /// (an `Fp8Linear`'s weight). Per-tensor scales are spread over the rows.
    pub fn from_per_expert(gate_up: &[Quantized], down: &[Quantized]) -> Result<Self> {
        let stack = |parts: &[Quantized], what: &str| -> Result<(Tensor, Tensor)> {
            let (mut values, mut scales) = (Vec::new(), Vec::new());
            for q in parts {
                let &[n, k] = q.values.shape() else {
                    return Err(Error::invalid(OP, format!("{what}: expected [out, in] codes")));
                };
                let s = match q.granularity {
                    Granularity::PerRow => q.scales.reshape(&[1, n])?,
                    Granularity::PerTensor => q.scales.reshape(&[1, 1])?.broadcast_as(&[1, n])?,
                    other => {
                        return Err(Error::invalid(
                            OP,
                            format!("{what}: {other:?} scales; the FP8 experts take per-row scales"),
                        ));
                    }
                };
                values.push(q.values.reshape(&[1, n, k])?);
                scales.push(ops::contiguous(&s)?);
            }
            let (values, scales): (Vec<&Tensor>, Vec<&Tensor>) = (values.iter().collect(), scales.iter().collect());
            Ok((ops::cat(&values, 0)?, ops::cat(&scales, 0)?))
        };
        if gate_up.is_empty() || gate_up.len() != down.len() {
            return Err(Error::invalid(
                OP,
                format!("{} gate_up and {} down experts", gate_up.len(), down.len()),
            ));
        }
        let (gate_up, gate_up_scales) = stack(gate_up, "gate_up")?;
        let (down, down_scales) = stack(down, "down")?;
        Ok(Fp8Experts {
            gate_up,
            gate_up_scales,
            down,
            down_scales,
        })
    }

    /// `(e, d, f)`, checked across the four tensors.
    pub fn dims(&self) -> Result<(usize, usize, usize)> {
        let bad = |what: &str, t: &Tensor, want: String| Error::BadShape {
            op: OP,
            shape: t.shape().to_vec(),
            msg: format!("{what}: expected {want}"),
        };
        let &[e, f2, d] = self.gate_up.shape() else {
            return Err(bad("gate_up", &self.gate_up, "[e, 2f, d]".into()));
        };
        let f = f2 / 2;
        if f2 % 2 != 0 || e == 0 {
            return Err(bad("gate_up", &self.gate_up, "[e ≥ 1, 2f, d]".into()));
        }
        if self.down.shape() != [e, d, f] {
            return Err(bad("down", &self.down, format!("[{e}, {d}, {f}]")));
        }
        if self.gate_up_scales.shape() != [e, f2] {
            return Err(bad("gate_up_scales", &self.gate_up_scales, format!("[{e}, {f2}]")));
        }
        if self.down_scales.shape() != [e, d] {
            return Err(bad("down_scales", &self.down_scales, format!("[{e}, {d}]")));
        }
        for (what, t, dtype) in [
            ("gate_up", &self.gate_up, DType::F8E4M3),
            ("down", &self.down, DType::F8E4M3),
            ("gate_up_scales", &self.gate_up_scales, DType::F32),
            ("down_scales", &self.down_scales, DType::F32),
        ] {
            if t.dtype() != dtype {
                return Err(Error::invalid(
                    OP,
                    format!("`{what}` must be {dtype:?}, got {:?}", t.dtype()),
                ));
            }
        }
        Ok((e, d, f))
    }
}

fn check_devices(device: Device, w: &Fp8Experts) -> Result<()> {
    for t in [&w.gate_up, &w.gate_up_scales, &w.down, &w.down_scales] {
        if t.device() != device {
            return Err(Error::invalid(
                OP,
                format!("FP8 expert weights on {:?}, the activations on {device:?}", t.device()),
            ));
        }
    }
    Ok(())
}

/// Per-row e4m3 codes `[rows, cols]` and scales `[rows]` of `a` (amax bounded by `bound`).
fn quantize_rows(a: &Tensor, bound: Option<f32>) -> Result<(Tensor, Tensor)> {
    let rows = a.shape()[0];
    let q = quantize(a, Granularity::PerRow, bound)?;
    Ok((q.values, q.scales.reshape(&[rows])?))
}

/// `h [S, f]` (sorted-row order, `x`'s dtype) from `x [t, d]` and FP8 experts; activations
/// quantized per row with their amax bounded by `activation_bound` when given.
pub fn fp8_gate_up_swiglu(
    x: &Tensor,
    routed: &RoutedTokens,
    w: &Fp8Experts,
    weight_on: WeightOn,
    activation_bound: Option<f32>,
) -> Result<Tensor> {
    super::check_float(x)?;
    let (e, d, f) = w.dims()?;
    if x.shape() != [x.shape().first().copied().unwrap_or(0), d] || x.rank() != 2 {
        return Err(Error::BadShape {
            op: OP,
            shape: x.shape().to_vec(),
            msg: format!("x: expected [t, {d}]"),
        });
    }
    check_devices(x.device(), w)?;
    let t = x.shape()[0];
    let k = super::check_routing(routed, t, e, x.device())?;
    let shape = ExpertShape { t, d, f, e, k };
    if t * k == 0 || d == 0 || f == 0 {
        return super::cuda::on_host(x.device(), || Tensor::zeros(&[t * k, f], x.dtype(), Device::Cpu));
    }
    let xs = super::gather_inputs(x, routed, weight_on, k)?; // [S, d]
    let (xq, xscale) = quantize_rows(&xs, activation_bound)?;
    match x.device() {
        Device::Cpu => super::reference::fp8_gate_up(&xq, &xscale, w, routed, x.dtype(), shape),
        Device::Cuda(_) => super::fp8_cuda::fp8_gate_up(&xq, &xscale, w, routed, x.dtype(), shape),
    }
}

/// `out [t, d]` from `h [S, f]` and FP8 experts (h quantized per row, bounded by
/// `activation_bound` when given), plus the shared expert's output `[t, d]`.
pub fn fp8_down_combine(
    h: &Tensor,
    routed: &RoutedTokens,
    w: &Fp8Experts,
    weight_on: WeightOn,
    shared: Option<&Tensor>,
    activation_bound: Option<f32>,
) -> Result<Tensor> {
    super::check_float(h)?;
    let (e, d, f) = w.dims()?;
    check_devices(h.device(), w)?;
    let t = routed.topk_weight.shape().first().copied().unwrap_or(0);
    let k = super::check_routing(routed, t, e, h.device())?;
    if h.shape() != [t * k, f] {
        return Err(Error::BadShape {
            op: OP,
            shape: h.shape().to_vec(),
            msg: format!("h: expected [{}, {f}]", t * k),
        });
    }
    if let Some(s) = shared {
        super::check_operand("shared", s, h.dtype(), h.device())?;
        if s.shape() != [t, d] {
            return Err(Error::BadShape {
                op: OP,
                shape: s.shape().to_vec(),
                msg: format!("shared: expected [{t}, {d}]"),
            });
        }
    }
    let shape = ExpertShape { t, d, f, e, k };
    if t * k == 0 || d == 0 || f == 0 {
        return match shared {
            Some(s) => ops::contiguous(s),
            None => super::cuda::on_host(h.device(), || Tensor::zeros(&[t, d], h.dtype(), Device::Cpu)),
        };
    }
    let (hq, hscale) = quantize_rows(h, activation_bound)?;
    match h.device() {
        Device::Cpu => super::reference::fp8_down_combine(&hq, &hscale, w, routed, weight_on, shared, h.dtype(), shape),
        Device::Cuda(_) => {
            super::fp8_cuda::fp8_down_combine(&hq, &hscale, w, routed, weight_on, shared, h.dtype(), shape)
        }
    }
}

/// The FP8 routed experts plus the shared expert's output: [`fp8_gate_up_swiglu`] then
/// [`fp8_down_combine`].
pub fn fp8_moe_experts(
    x: &Tensor,
    routed: &RoutedTokens,
    w: &Fp8Experts,
    weight_on: WeightOn,
    shared: Option<&Tensor>,
    activation_bound: Option<f32>,
) -> Result<Tensor> {
    let h = fp8_gate_up_swiglu(x, routed, w, weight_on, activation_bound)?;
    fp8_down_combine(&h, routed, w, weight_on, shared, activation_bound)
}
