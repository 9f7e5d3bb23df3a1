//! `moe_experts`: a MoE block's routed experts as grouped GEMMs over the token slots that
//! [`crate::moe_routing`] sorted by expert, with SwiGLU fused into the gate_up GEMM and the
//! routing weight, the combine over each token's slots and the shared expert's output fused into
//! the down GEMM.
//!
//! Inputs: `x [t, d]`, the routing ([`RoutedTokens`]: `sorted_slots [S]`, `expert_offset [e+1]`,
//! `topk_weight [t, k]`, `S = t·k`), `gate_up [e, d, 2f]` (gate in the first `f` columns, HF's
//! layout, applied as `x · W`) and `down [e, f, d]`, all in one float dtype.
//!
//! What is computed (slot `s = t·k + j`, sorted row `r`, `slot(r) = sorted_slots[r]`):
//! * [`gate_up_swiglu`]: `h[r] = round(silu(a_r·Wg) ⊙ (a_r·Wu))`, `h [S, f]` in sorted-row
//!   order, with `a_r = round(x[token] · w[slot])` when the weight applies to the input
//!   ([`WeightOn::Input`], Llama 4) and `x[token]` otherwise;
//! * [`down_combine`]: `out[t] = round(shared[t] + Σ_j y[t·k + j])`, the sum in slot order,
//!   `y[slot(r)] = (h[r]·Wd) · (w[slot] if WeightOn::Output else 1)`.
//!
//! The shared expert can run in the same launches ([`moe_experts_with_shared`]): as expert
//! index `e` with its own weights ([`SharedExpert`]: `gate_up [d, 2f]`, `down [f, d]`, the
//! routed experts' layout, same `f`), visited by every token once with weight 1 nowhere (not on
//! its input, not on its output). Its rows follow the routed ones: `h [S + t, f]`, row `S + t'`
//! for token `t'`; the combine is `out[t] = round(y_shared[t] + Σ_j y[t·k + j])`, the shared
//! expert's unrounded output first, then the routed slots in slot order.
//!
//! Devices: the CPU path is [`reference`] (f64 accumulation, one rounding into the dtype); the
//! CUDA path is [`cuda`] (bf16/f16 tensor cores when `d` and `f` are multiples of 8 and the
//! weights start on a 16-byte boundary, f32 accumulation; a scalar kernel otherwise). Every CUDA output is written by one thread in a fixed
//! order: runs are bitwise reproducible. Tolerance: docs/numerics.md, "Grouped expert GEMM".

pub mod cuda;
pub mod fp8;
pub mod fp8_cuda;
#[cfg(test)]
mod fp8_tests;
pub mod reference;
#[cfg(test)]
mod tests;

use l4_core::{DType, Device, Error, Result, Tensor};

pub use fp8::{Fp8Experts, fp8_down_combine, fp8_gate_up_swiglu, fp8_moe_experts};

use crate::moe_routing::RoutedTokens;

const OP: &str = "moe_experts";

/// The shared expert in the routed experts' layout, for [`moe_experts_with_shared`]. Its own
/// tensors (a second weight pointer in the kernels), so the routed experts are not copied.
#[derive(Clone, Copy, Debug)]
pub struct SharedExpert<'a> {
    /// `[d, 2f]`: gate in the first `f` columns, applied as `x · W`.
    pub gate_up: &'a Tensor,
    /// `[f, d]`, applied as `h · W`.
    pub down: &'a Tensor,
}

/// Where the routing weight multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightOn {
    /// The expert's input, rounded into the dtype before the GEMM (Llama 4).
    Input,
    /// The expert's output, before the combine (Mixtral/Qwen-style softmax top-k).
    Output,
}

/// The sizes of one grouped expert computation, checked against each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertShape {
    /// Tokens.
    pub t: usize,
    /// Model width.
    pub d: usize,
    /// Expert width.
    pub f: usize,
    /// Routed experts.
    pub e: usize,
    /// Experts per token (slots `S = t·k`).
    pub k: usize,
}

fn bad_shape(what: &str, shape: &[usize], msg: String) -> Error {
    Error::BadShape {
        op: OP,
        shape: shape.to_vec(),
        msg: format!("{what}: {msg}"),
    }
}

/// Checks the routing against `t` tokens and `e` experts and returns `k`.
fn check_routing(routed: &RoutedTokens, t: usize, e: usize, device: Device) -> Result<usize> {
    let &[rt, k] = routed.topk_weight.shape() else {
        return Err(bad_shape(
            "topk_weight",
            routed.topk_weight.shape(),
            "expected [t, k]".into(),
        ));
    };
    if rt != t || k == 0 {
        return Err(bad_shape(
            "topk_weight",
            routed.topk_weight.shape(),
            format!("expected [{t}, k ≥ 1]"),
        ));
    }
    if routed.sorted_slots.shape() != [t * k] {
        return Err(bad_shape(
            "sorted_slots",
            routed.sorted_slots.shape(),
            format!("expected [{}]", t * k),
        ));
    }
    if routed.expert_offset.shape() != [e + 1] {
        return Err(bad_shape(
            "expert_offset",
            routed.expert_offset.shape(),
            format!("expected [{}]", e + 1),
        ));
    }
    for (which, tensor, dtype) in [
        ("topk_weight", &routed.topk_weight, DType::F32),
        ("sorted_slots", &routed.sorted_slots, DType::I32),
        ("expert_offset", &routed.expert_offset, DType::I32),
    ] {
        if tensor.dtype() != dtype {
            return Err(Error::invalid(
                OP,
                format!("`{which}` must be {dtype:?}, got {:?}", tensor.dtype()),
            ));
        }
        if tensor.device() != device {
            return Err(Error::invalid(
                OP,
                format!("`{which}` is on {:?}, the activations on {device:?}", tensor.device()),
            ));
        }
    }
    Ok(k)
}

/// [`check_operand`] against `like`'s dtype and device, then the shape `want` (`why` follows
/// it in the message).
fn check_shaped_operand(which: &str, tensor: &Tensor, want: &[usize], why: &str, like: &Tensor) -> Result<()> {
    check_operand(which, tensor, like.dtype(), like.device())?;
    if tensor.shape() != want {
        return Err(bad_shape(which, tensor.shape(), format!("expected {want:?}{why}")));
    }
    Ok(())
}

fn check_operand(which: &str, tensor: &Tensor, dtype: DType, device: Device) -> Result<()> {
    if tensor.dtype() != dtype {
        return Err(Error::DTypeMismatch {
            op: OP,
            got: tensor.dtype(),
            expected: Some(dtype),
        });
    }
    if tensor.device() != device {
        return Err(Error::invalid(
            OP,
            format!("`{which}` is on {:?}, the activations on {device:?}", tensor.device()),
        ));
    }
    Ok(())
}

fn check_float(x: &Tensor) -> Result<()> {
    if !matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        return Err(Error::DTypeMismatch {
            op: OP,
            got: x.dtype(),
            expected: None,
        });
    }
    Ok(())
}

/// The expert inputs `[S, d]` in sorted-row order (see [`reference::gather_inputs`]).
fn gather_inputs(x: &Tensor, routed: &RoutedTokens, weight_on: WeightOn, k: usize) -> Result<Tensor> {
    match x.device() {
        Device::Cpu => reference::gather_inputs(x, routed, weight_on, k, false),
        Device::Cuda(_) => cuda::gather_inputs(x, routed, weight_on, k, false),
    }
}

/// `h [S, f]` (sorted-row order) from `x [t, d]` and `gate_up [e, d, 2f]`; see the module docs.
pub fn gate_up_swiglu(x: &Tensor, routed: &RoutedTokens, gate_up: &Tensor, weight_on: WeightOn) -> Result<Tensor> {
    gate_up_impl(x, routed, gate_up, weight_on, None)
}

/// `h [S + t, f]`: [`gate_up_swiglu`]'s rows, then the shared expert's (`shared_gate_up [d, 2f]`)
/// row for each token, in the same launch; see the module docs.
pub fn gate_up_swiglu_with_shared(
    x: &Tensor,
    routed: &RoutedTokens,
    gate_up: &Tensor,
    weight_on: WeightOn,
    shared_gate_up: &Tensor,
) -> Result<Tensor> {
    gate_up_impl(x, routed, gate_up, weight_on, Some(shared_gate_up))
}

fn gate_up_impl(
    x: &Tensor,
    routed: &RoutedTokens,
    gate_up: &Tensor,
    weight_on: WeightOn,
    shared_gate_up: Option<&Tensor>,
) -> Result<Tensor> {
    check_float(x)?;
    let &[t, d] = x.shape() else {
        return Err(bad_shape("x", x.shape(), "expected [t, d]".into()));
    };
    let &[e, gd, f2] = gate_up.shape() else {
        return Err(bad_shape("gate_up", gate_up.shape(), "expected [e, d, 2f]".into()));
    };
    if gd != d || !f2.is_multiple_of(2) || e == 0 {
        return Err(bad_shape(
            "gate_up",
            gate_up.shape(),
            format!("expected [e ≥ 1, {d}, 2f]"),
        ));
    }
    check_operand("gate_up", gate_up, x.dtype(), x.device())?;
    if let Some(s) = shared_gate_up {
        check_shaped_operand("shared gate_up", s, &[d, f2], ", the routed experts' [d, 2f]", x)?;
    }
    let k = check_routing(routed, t, e, x.device())?;
    let shape = ExpertShape { t, d, f: f2 / 2, e, k };
    match x.device() {
        Device::Cpu => reference::gate_up_swiglu(x, routed, gate_up, weight_on, shared_gate_up, shape),
        Device::Cuda(_) => cuda::gate_up_swiglu(x, routed, gate_up, weight_on, shared_gate_up, shape),
    }
}

/// `out [t, d]` from `h [S, f]` (sorted-row order), `down [e, f, d]` and the optional shared
/// expert's output `[t, d]`; see the module docs.
pub fn down_combine(
    h: &Tensor,
    routed: &RoutedTokens,
    down: &Tensor,
    weight_on: WeightOn,
    shared: Option<&Tensor>,
) -> Result<Tensor> {
    down_impl(h, routed, down, weight_on, shared, None)
}

/// `out [t, d]` from `h [S + t, f]` ([`gate_up_swiglu_with_shared`]), `down [e, f, d]` and the
/// shared expert's `shared_down [f, d]`, run on rows `[S, S + t)` in the same launch; the
/// combine adds each token's shared output first, then its routed slots in slot order.
pub fn down_combine_with_shared(
    h: &Tensor,
    routed: &RoutedTokens,
    down: &Tensor,
    weight_on: WeightOn,
    shared_down: &Tensor,
) -> Result<Tensor> {
    down_impl(h, routed, down, weight_on, None, Some(shared_down))
}

fn down_impl(
    h: &Tensor,
    routed: &RoutedTokens,
    down: &Tensor,
    weight_on: WeightOn,
    shared: Option<&Tensor>,
    shared_down: Option<&Tensor>,
) -> Result<Tensor> {
    check_float(h)?;
    let &[e, f, d] = down.shape() else {
        return Err(bad_shape("down", down.shape(), "expected [e, f, d]".into()));
    };
    let t = routed.topk_weight.shape().first().copied().unwrap_or(0);
    let k = check_routing(routed, t, e, h.device())?;
    let rows = t * k + if shared_down.is_some() { t } else { 0 };
    if h.shape() != [rows, f] || e == 0 {
        return Err(bad_shape(
            "h",
            h.shape(),
            format!("expected [{rows}, {f}] for down {:?}", down.shape()),
        ));
    }
    check_operand("down", down, h.dtype(), h.device())?;
    if let Some(s) = shared_down {
        check_shaped_operand("shared down", s, &[f, d], ", the routed experts' [f, d]", h)?;
    }
    if let Some(s) = shared {
        check_shaped_operand("shared", s, &[t, d], "", h)?;
    }
    let shape = ExpertShape { t, d, f, e, k };
    match h.device() {
        Device::Cpu => reference::down_combine(h, routed, down, weight_on, shared, shared_down, shape),
        Device::Cuda(_) => cuda::down_combine(h, routed, down, weight_on, shared, shared_down, shape),
    }
}

/// The routed experts of a MoE block plus the shared expert's output: [`gate_up_swiglu`] then
/// [`down_combine`]. `x [t, d]`, `gate_up [e, d, 2f]`, `down [e, f, d]` → `[t, d]`.
pub fn moe_experts(
    x: &Tensor,
    routed: &RoutedTokens,
    gate_up: &Tensor,
    down: &Tensor,
    weight_on: WeightOn,
    shared: Option<&Tensor>,
) -> Result<Tensor> {
    let h = gate_up_swiglu(x, routed, gate_up, weight_on)?;
    down_combine(&h, routed, down, weight_on, shared)
}

/// The routed experts and the shared expert of a MoE block in the same launches:
/// [`gate_up_swiglu_with_shared`] then [`down_combine_with_shared`]. `x [t, d]`,
/// `gate_up [e, d, 2f]`, `down [e, f, d]`, `shared.gate_up [d, 2f]`, `shared.down [f, d]` →
/// `[t, d]`.
pub fn moe_experts_with_shared(
    x: &Tensor,
    routed: &RoutedTokens,
    gate_up: &Tensor,
    down: &Tensor,
    weight_on: WeightOn,
    shared: SharedExpert<'_>,
) -> Result<Tensor> {
    let h = gate_up_swiglu_with_shared(x, routed, gate_up, weight_on, shared.gate_up)?;
    down_combine_with_shared(&h, routed, down, weight_on, shared.down)
}
