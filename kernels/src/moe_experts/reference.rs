//! The CPU reference (and CPU path) of [`super`]: f64 accumulation, one rounding into the
//! dtype (through f32). Routing weights are rounded into the dtype first (as HF casts router
//! scores to the hidden dtype); the scaled expert input `round(x · w)` is formed in f32 and
//! rounded into the dtype, as the CUDA gather does, so both paths multiply the same operands.

use l4_core::{DType, Device, Result, Tensor};

use super::fp8::Fp8Experts;
use super::{ExpertShape, WeightOn};
use crate::moe_routing::RoutedTokens;

/// The routing on the host: (sorted slots, expert offsets, per-slot weights rounded into
/// `dtype`, as the model multiplies them).
pub fn host_routing(routed: &RoutedTokens, dtype: DType) -> Result<(Vec<i32>, Vec<i32>, Vec<f32>)> {
    let weight = routed
        .topk_weight
        .to_device(Device::Cpu)?
        .to_dtype(dtype)?
        .to_f32_vec()?;
    Ok((
        routed.sorted_slots.to_vec::<i32>()?,
        routed.expert_offset.to_vec::<i32>()?,
        weight,
    ))
}

/// The expert of each sorted row, from the offsets.
pub fn expert_of_rows(offset: &[i32], slots: usize) -> Vec<usize> {
    let mut experts = vec![0; slots];
    for (e, pair) in offset.windows(2).enumerate() {
        for row in experts.iter_mut().take(pair[1] as usize).skip(pair[0] as usize) {
            *row = e;
        }
    }
    experts
}

/// `silu(g) · u` in f64.
fn swiglu(g: f64, u: f64) -> f64 {
    g / (1.0 + (-g).exp()) * u
}

/// The expert inputs `[S, d]` in sorted-row order, in `x`'s dtype: `round(x[token] · w)` for
/// [`WeightOn::Input`] (formed in f32, as the CUDA gather forms them), else `x[token]`; with
/// `shared`, then the shared expert's rows `x [t, d]`, never scaled (`[S + t, d]`).
pub fn gather_inputs(x: &Tensor, routed: &RoutedTokens, weight_on: WeightOn, k: usize, shared: bool) -> Result<Tensor> {
    let (t, d) = (x.shape()[0], x.shape()[1]);
    let (sorted, _, weight) = host_routing(routed, x.dtype())?;
    let xv = x.to_f32_vec()?; // [t, d]
    let mut inputs: Vec<f32> = sorted
        .iter()
        .flat_map(|&slot| {
            let row = &xv[(slot as usize / k) * d..][..d];
            let scale = weight[slot as usize];
            row.iter().map(move |&v| match weight_on {
                WeightOn::Input => v * scale,
                WeightOn::Output => v,
            })
        })
        .collect();
    let shared_rows = if shared { t } else { 0 };
    inputs.extend_from_slice(&xv[..shared_rows * d]);
    Tensor::from_f32_vec(inputs, &[sorted.len() + shared_rows, d], x.dtype(), Device::Cpu)
}

/// See [`super::gate_up_swiglu`] and [`super::gate_up_swiglu_with_shared`] (`shared_gate_up
/// [d, 2f]` on rows `[S, S + t)`).
pub fn gate_up_swiglu(
    x: &Tensor,
    routed: &RoutedTokens,
    gate_up: &Tensor,
    weight_on: WeightOn,
    shared_gate_up: Option<&Tensor>,
    shape: ExpertShape,
) -> Result<Tensor> {
    let ExpertShape { t, d, f, k, e } = shape;
    let (sorted, offset, _) = host_routing(routed, x.dtype())?;
    let rows = sorted.len() + if shared_gate_up.is_some() { t } else { 0 };
    let a = gather_inputs(x, routed, weight_on, k, shared_gate_up.is_some())?.to_f32_vec()?; // [rows, d]
    let mut w = gate_up.to_f32_vec()?; // [e, d, 2f], then the shared expert's [d, 2f] as expert e
    if let Some(s) = shared_gate_up {
        w.extend(s.to_f32_vec()?);
    }
    let mut experts = expert_of_rows(&offset, sorted.len());
    experts.resize(rows, e);
    let mut h = vec![0f32; rows * f];
    for (r, &e) in experts.iter().enumerate() {
        let we = &w[e * d * 2 * f..][..d * 2 * f];
        let ar = &a[r * d..][..d];
        for c in 0..f {
            let (mut g, mut u) = (0f64, 0f64);
            for (kk, &av) in ar.iter().enumerate() {
                g += av as f64 * we[kk * 2 * f + c] as f64;
                u += av as f64 * we[kk * 2 * f + f + c] as f64;
            }
            h[r * f + c] = swiglu(g, u) as f32;
        }
    }
    Tensor::from_f32_vec(h, &[rows, f], x.dtype(), Device::Cpu)
}

/// See [`super::down_combine`] (`shared [t, d]`, the shared expert's output) and
/// [`super::down_combine_with_shared`] (`shared_down [f, d]` on rows `[S, S + t)` of `h`).
pub fn down_combine(
    h: &Tensor,
    routed: &RoutedTokens,
    down: &Tensor,
    weight_on: WeightOn,
    shared: Option<&Tensor>,
    shared_down: Option<&Tensor>,
    shape: ExpertShape,
) -> Result<Tensor> {
    let ExpertShape { t, d, f, .. } = shape;
    let (sorted, offset, weight) = host_routing(routed, h.dtype())?;
    let slots = sorted.len();
    let hv = h.to_f32_vec()?; // [S, f]
    let w = down.to_f32_vec()?; // [e, f, d]
    let experts = expert_of_rows(&offset, slots);
    let mut y = vec![0f64; slots * d]; // [S, d] by slot
    for (r, &e) in experts.iter().enumerate() {
        let slot = sorted[r] as usize;
        let scale = match weight_on {
            WeightOn::Output => weight[slot] as f64,
            WeightOn::Input => 1.0,
        };
        let we = &w[e * f * d..][..f * d];
        let hr = &hv[r * f..][..f];
        for c in 0..d {
            let acc: f64 = hr
                .iter()
                .enumerate()
                .map(|(kk, &hv)| hv as f64 * we[kk * d + c] as f64)
                .sum();
            y[slot * d + c] = acc * scale;
        }
    }
    // The shared expert's output, unrounded (rows [S, S + t) times shared_down), or the given one.
    let base = match shared_down {
        Some(sd) => {
            let ws = sd.to_f32_vec()?; // [f, d]
            let mut ys = vec![0f64; t * d];
            for (token, yrow) in ys.chunks_mut(d.max(1)).enumerate() {
                let hr = &hv[(slots + token) * f..][..f];
                for (c, yc) in yrow.iter_mut().enumerate() {
                    *yc = hr
                        .iter()
                        .enumerate()
                        .map(|(kk, &hv)| hv as f64 * ws[kk * d + c] as f64)
                        .sum();
                }
            }
            Some(ys)
        }
        None => shared_output(shared)?,
    };
    combine(&y, base.as_deref(), shape, h.dtype())
}

/// The shared expert's given output `[t, d]` in f64.
fn shared_output(shared: Option<&Tensor>) -> Result<Option<Vec<f64>>> {
    Ok(shared
        .map(Tensor::to_f32_vec)
        .transpose()?
        .map(|s| s.into_iter().map(f64::from).collect()))
}

/// `out[t] = round(shared[t] + Σ_j y[t·k + j])` in f64: the shared expert's output first, then
/// the routed slots in slot order; `y [S, d]` by slot, `shared [t, d]`.
fn combine(y: &[f64], shared: Option<&[f64]>, shape: ExpertShape, dtype: DType) -> Result<Tensor> {
    let ExpertShape { t, d, k, .. } = shape;
    let out: Vec<f32> = (0..t * d)
        .map(|i| {
            let (token, c) = (i / d, i % d);
            let base = shared.map_or(0.0, |s| s[i]);
            (0..k).fold(base, |sum, j| sum + y[(token * k + j) * d + c]) as f32
        })
        .collect();
    Tensor::from_f32_vec(out, &[t, d], dtype, Device::Cpu)
}

/// The FP8 gate_up of [`super::fp8`]: `xq [S, d]` e4m3 with `xscale [S]`; exact code products
/// summed in f64, scaled, SwiGLU, one rounding into `dtype`.
pub fn fp8_gate_up(
    xq: &Tensor,
    xscale: &Tensor,
    w: &Fp8Experts,
    routed: &RoutedTokens,
    dtype: DType,
    shape: ExpertShape,
) -> Result<Tensor> {
    let ExpertShape { d, f, .. } = shape;
    let (_, offset, _) = host_routing(routed, dtype)?;
    let (a, sa) = (xq.to_f32_vec()?, xscale.to_f32_vec()?);
    let (wq, ws) = (w.gate_up.to_f32_vec()?, w.gate_up_scales.to_f32_vec()?); // [e, 2f, d], [e, 2f]
    let slots = sa.len();
    let experts = expert_of_rows(&offset, slots);
    let mut h = vec![0f32; slots * f];
    for (r, &e) in experts.iter().enumerate() {
        let ar = &a[r * d..][..d];
        let dot = |n: usize| -> f64 {
            let row = &wq[(e * 2 * f + n) * d..][..d];
            let sum: f64 = ar.iter().zip(row).map(|(&x, &w)| x as f64 * w as f64).sum();
            sum * sa[r] as f64 * ws[e * 2 * f + n] as f64
        };
        for c in 0..f {
            h[r * f + c] = swiglu(dot(c), dot(f + c)) as f32;
        }
    }
    Tensor::from_f32_vec(h, &[slots, f], dtype, Device::Cpu)
}

/// The FP8 down projection and combine of [`super::fp8`]: `hq [S, f]` e4m3 with `hscale [S]`.
#[allow(clippy::too_many_arguments)]
pub fn fp8_down_combine(
    hq: &Tensor,
    hscale: &Tensor,
    w: &Fp8Experts,
    routed: &RoutedTokens,
    weight_on: WeightOn,
    shared: Option<&Tensor>,
    dtype: DType,
    shape: ExpertShape,
) -> Result<Tensor> {
    let ExpertShape { d, f, .. } = shape;
    let (sorted, offset, weight) = host_routing(routed, dtype)?;
    let (a, sa) = (hq.to_f32_vec()?, hscale.to_f32_vec()?);
    let (wq, ws) = (w.down.to_f32_vec()?, w.down_scales.to_f32_vec()?); // [e, d, f], [e, d]
    let slots = sorted.len();
    let experts = expert_of_rows(&offset, slots);
    let mut y = vec![0f64; slots * d];
    for (r, &e) in experts.iter().enumerate() {
        let slot = sorted[r] as usize;
        let scale = match weight_on {
            WeightOn::Output => weight[slot] as f64,
            WeightOn::Input => 1.0,
        };
        let ar = &a[r * f..][..f];
        for c in 0..d {
            let row = &wq[(e * d + c) * f..][..f];
            let sum: f64 = ar.iter().zip(row).map(|(&x, &w)| x as f64 * w as f64).sum();
            y[slot * d + c] = sum * sa[r] as f64 * ws[e * d + c] as f64 * scale;
        }
    }
    combine(&y, shared_output(shared)?.as_deref(), shape, dtype)
}
