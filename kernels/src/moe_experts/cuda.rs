//! The CUDA launchers of `moe_experts.cu`: gather, gate_up + SwiGLU, down + combine (the FP8
//! experts' launchers are in `fp8_cuda.rs`).

use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use l4_core::cuda::CudaBackend;
use l4_core::{DType, Device, Error, Result, Tensor};

use super::{ExpertShape, OP, WeightOn};
use crate::gather::cuda::{alloc_poisoned_in_tests, empty_output};
use crate::launch::{backend_of, contiguous_bytes, grid_1d, output_tensor};
use crate::moe_routing::RoutedTokens;
use crate::ops::contiguous;
use crate::{MOE_EXPERTS, load_function};

/// Threads per CTA of both tensor-core shapes (`__launch_bounds__(128)`).
pub(super) const MMA_THREADS: u32 = 128;
/// Rows per CTA: the wide (prefill) shape and the decode shape.
pub(super) const WIDE_ROWS: usize = 64;
pub(super) const DECODE_ROWS: usize = 64;
/// Steps of at most this many slots take the decode shape (every expert's tokens, at most 64,
/// share one pass over its weight columns).
pub const DECODE_MAX_SLOTS: usize = 64;
/// Output columns per CTA: h columns of gate_up (64 gate + 64 up in the B tile), d columns of down.
pub(super) const GATE_UP_COLS: usize = 64;
pub(super) const DOWN_COLS: usize = 128;
/// The k-tile of the tensor-core kernels (`ME_BK`).
pub(super) const K_TILE: usize = 32;
/// Threads per block of the elementwise-shaped kernels (gather, scalar GEMMs, combine).
const THREADS: u32 = 256;

pub(super) fn dtype_name(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        DType::F16 => Ok("f16"),
        other => Err(Error::DTypeMismatch {
            op: OP,
            got: other,
            expected: None,
        }),
    }
}

/// Whether the tensor-core kernels take this problem: bf16/f16, and rows of whole 16-byte chunks.
pub fn uses_tensor_cores(dtype: DType, d: usize, f: usize) -> bool {
    matches!(dtype, DType::BF16 | DType::F16) && d.is_multiple_of(8) && f.is_multiple_of(8)
}

/// Whether the tensor-core kernels take a GEMM over `operands` (the weights and the activation
/// rows they read with 16-byte cp.async): [`uses_tensor_cores`] and every operand's first
/// element on a 16-byte boundary; otherwise the scalar kernels.
pub(super) fn mma_operands(dtype: DType, d: usize, f: usize, operands: &[&Tensor]) -> bool {
    uses_tensor_cores(dtype, d, f) && operands.iter().all(|t| aligned16(t))
}

/// Whether a tensor's first element sits on a 16-byte boundary (a view may start anywhere).
pub(super) fn aligned16(t: &Tensor) -> bool {
    (t.layout().offset() * t.dtype().size_in_bytes()).is_multiple_of(16)
}

pub(super) fn as_i32(value: usize, what: &str) -> Result<i32> {
    i32::try_from(value).map_err(|_| Error::invalid(OP, format!("{what} = {value} exceeds the kernel's 32-bit sizes")))
}

/// Column blocks on the grid's y axis (at most 65535).
pub(super) fn column_blocks(cols: usize, block: usize) -> Result<u32> {
    let blocks = cols.div_ceil(block);
    u32::try_from(blocks).ok().filter(|&b| b <= 65535).ok_or_else(|| {
        Error::invalid(
            OP,
            format!("{cols} output columns exceed the grid's 65535 column blocks"),
        )
    })
}

/// An upper bound on the (expert, m-block) tiles of `slots` rows over `experts` segments of
/// `rows`-row blocks: `Σ_e ⌈c_e / rows⌉ ≤ ⌈S / rows⌉ + (experts with a row)`. The CTAs past the
/// real count exit at once.
pub(super) fn tile_bound(slots: usize, experts: usize, rows: usize) -> usize {
    slots.div_ceil(rows) + experts.min(slots)
}

/// The split of `ktiles` k-tiles into about `wanted` contiguous ranges, none empty:
/// `(splits, k-tiles per split)`.
pub(super) fn split_ktiles(ktiles: usize, wanted: usize) -> (usize, usize) {
    let per_split = ktiles.div_ceil(wanted.max(1)).max(1);
    (ktiles.div_ceil(per_split), per_split)
}

/// The tensor-core grid: (column blocks, an upper bound on the (expert, m-block) tiles of
/// `rows` sorted rows over `experts` segments). The shape follows the routed `slots`: a fused
/// shared expert's segment has `t ≤ slots` rows, so no segment outgrows the decode shape either.
fn mma_config(
    cols: usize,
    col_block: usize,
    slots: usize,
    rows: usize,
    experts: usize,
) -> Result<(LaunchConfig, &'static str)> {
    let (tile_rows, shape) = if slots <= DECODE_MAX_SLOTS {
        (DECODE_ROWS, "decode")
    } else {
        (WIDE_ROWS, "wide")
    };
    let tiles = tile_bound(rows, experts, tile_rows);
    let config = LaunchConfig {
        grid_dim: (tiles as u32, column_blocks(cols, col_block)?, 1),
        block_dim: (MMA_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    Ok((config, shape))
}

/// A host computation moved back to `device` (the degenerate sizes, where no kernel runs).
pub(crate) fn on_host(device: Device, run: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
    let out = run()?;
    match device {
        Device::Cuda(ordinal) if out.elem_count() == 0 => {
            empty_output(&*l4_core::cuda::backend(ordinal)?, out.dtype(), out.shape())
        }
        _ => out.to_device(device),
    }
}

fn host_routing(routed: &RoutedTokens) -> Result<RoutedTokens> {
    Ok(RoutedTokens {
        topk_expert: routed.topk_expert.to_device(Device::Cpu)?,
        topk_weight: routed.topk_weight.to_device(Device::Cpu)?,
        expert_count: routed.expert_count.to_device(Device::Cpu)?,
        expert_offset: routed.expert_offset.to_device(Device::Cpu)?,
        sorted_slots: routed.sorted_slots.to_device(Device::Cpu)?,
    })
}

/// `xs [S, d]` (`[S + t, d]` with `shared`): the expert inputs in sorted order, scaled by the
/// slot weight for `Input`, then the shared expert's rows, `x` unscaled.
pub(crate) fn gather_inputs(
    x: &Tensor,
    routed: &RoutedTokens,
    weight_on: WeightOn,
    k: usize,
    shared: bool,
) -> Result<Tensor> {
    let (t, d) = (x.shape()[0], x.shape()[1]);
    let slots = t * k;
    let shared_rows = if shared { t } else { 0 };
    let rows = slots + shared_rows;
    if rows == 0 || d == 0 {
        return on_host(x.device(), || Tensor::zeros(&[rows, d], x.dtype(), Device::Cpu));
    }
    // The kernels form S + shared rows in 32 bits.
    as_i32(rows, "slots + shared rows")?;
    let backend = &*backend_of(x, OP)?;
    let function = load_function(backend, &MOE_EXPERTS, &format!("me_gather_{}", dtype_name(x.dtype())?))?;
    let x = contiguous(x)?;
    let xb = contiguous_bytes(&x, OP, "x")?;
    let sorted = contiguous_bytes(&routed.sorted_slots, OP, "sorted_slots")?;
    let weight = contiguous(&routed.topk_weight)?;
    let weight = contiguous_bytes(&weight, OP, "topk_weight")?;
    let mut xs = alloc_poisoned_in_tests(backend, OP, x.dtype(), rows * d)?;
    let (slots32, k32, d32, shared32) = (
        as_i32(slots, "slots")?,
        as_i32(k, "k")?,
        as_i32(d, "d")?,
        as_i32(shared_rows, "t")?,
    );
    let null: u64 = 0;
    let mut builder = backend.stream().launch_builder(&function);
    builder.arg(&xb).arg(&sorted);
    match weight_on {
        WeightOn::Input => builder.arg(&weight),
        WeightOn::Output => builder.arg(&null),
    };
    builder.arg(&mut xs).arg(&slots32).arg(&k32).arg(&d32).arg(&shared32);
    // SAFETY: (x [t, d], sorted [S] i32, weight [S] f32 or null, xs [S + shared rows, d], int S,
    // k, d, shared rows (0 or t)) as `me_gather_*` declares; every slot index is < t·k
    // (moe_routing's bijection).
    unsafe { builder.launch(grid_1d(backend, rows * d, THREADS, 8)) }?;
    output_tensor(xs, x.dtype(), backend.info().ordinal, &[rows, d])
}

/// See [`super::gate_up_swiglu`] and [`super::gate_up_swiglu_with_shared`] (`shared_gate_up
/// [d, 2f]`: `h [S + t, f]`); the operands are checked.
pub fn gate_up_swiglu(
    x: &Tensor,
    routed: &RoutedTokens,
    gate_up: &Tensor,
    weight_on: WeightOn,
    shared_gate_up: Option<&Tensor>,
    shape: ExpertShape,
) -> Result<Tensor> {
    let ExpertShape { t, d, f, e, k } = shape;
    let slots = t * k;
    let shared_rows = if shared_gate_up.is_some() { t } else { 0 };
    let rows = slots + shared_rows;
    if slots == 0 || d == 0 || f == 0 {
        let (xc, gc, rc) = (
            x.to_device(Device::Cpu)?,
            gate_up.to_device(Device::Cpu)?,
            host_routing(routed)?,
        );
        let sc = shared_gate_up.map(|s| s.to_device(Device::Cpu)).transpose()?;
        return on_host(x.device(), || {
            super::reference::gate_up_swiglu(&xc, &rc, &gc, weight_on, sc.as_ref(), shape)
        });
    }
    let backend = backend_of(x, OP)?;
    let dtype = dtype_name(x.dtype())?;
    let xs = gather_inputs(x, routed, weight_on, k, shared_gate_up.is_some())?;
    let xs_b = contiguous_bytes(&xs, OP, "xs")?;
    let gate_up = contiguous(gate_up)?;
    let w = contiguous_bytes(&gate_up, OP, "gate_up")?;
    let shared_w = shared_gate_up.map(contiguous).transpose()?;
    let shared_wb = shared_w
        .as_ref()
        .map(|s| contiguous_bytes(s, OP, "shared gate_up"))
        .transpose()?;
    let offset = contiguous_bytes(&routed.expert_offset, OP, "expert_offset")?;
    let mut h = alloc_poisoned_in_tests(&backend, OP, x.dtype(), rows * f)?;
    let (e32, s32, d32, f32_, shared32) = (
        as_i32(e, "e")?,
        as_i32(slots, "slots")?,
        as_i32(d, "d")?,
        as_i32(f, "f")?,
        as_i32(shared_rows, "t")?,
    );
    let null: u64 = 0;
    let mut operands = vec![&gate_up];
    operands.extend(shared_w.as_ref());
    let experts = e + usize::from(shared_rows > 0);
    // xs and h are fresh (aligned) buffers; the weights may be views.
    if mma_operands(x.dtype(), d, f, &operands) {
        let (config, kind) = mma_config(f, GATE_UP_COLS, slots, rows, experts)?;
        let function = load_function(&backend, &MOE_EXPERTS, &format!("me_gate_up_{dtype}_{kind}"))?;
        let mut builder = backend.stream().launch_builder(&function);
        builder
            .arg(&xs_b)
            .arg(&w)
            .arg(&offset)
            .arg(&e32)
            .arg(&d32)
            .arg(&f32_)
            .arg(&mut h);
        match &shared_wb {
            Some(s) => builder.arg(s),
            None => builder.arg(&null),
        };
        builder.arg(&shared32);
        // SAFETY: (xs [S + shared rows, d], w [e, d, 2f], offset [e+1] i32, int e, d, f,
        // h [S + shared rows, f], shared_w [d, 2f] or null, int shared rows (t with shared_w,
        // else 0)) as `me_gate_up_*_{wide,decode}` declares; d and f are multiples of 8 (16-byte
        // cp.async chunks); the offsets come from moe_routing (monotone, offset[e] = S).
        unsafe { builder.launch(config) }?;
    } else {
        let function = load_function(&backend, &MOE_EXPERTS, &format!("me_gate_up_scalar_{dtype}"))?;
        let mut builder = backend.stream().launch_builder(&function);
        builder
            .arg(&xs_b)
            .arg(&w)
            .arg(&offset)
            .arg(&e32)
            .arg(&s32)
            .arg(&d32)
            .arg(&f32_)
            .arg(&mut h);
        match &shared_wb {
            Some(s) => builder.arg(s),
            None => builder.arg(&null),
        };
        builder.arg(&shared32);
        // SAFETY: (xs [S + shared rows, d], w [e, d, 2f], offset [e+1], int e, S, d, f,
        // h [S + shared rows, f], shared_w [d, 2f] or null, int shared rows) as
        // `me_gate_up_scalar_*` declares.
        unsafe { builder.launch(grid_1d(&backend, rows * f, THREADS, 8)) }?;
    }
    output_tensor(h, x.dtype(), backend.info().ordinal, &[rows, f])
}

/// See [`super::down_combine`] (the shared expert's output `shared [t, d]` added) and
/// [`super::down_combine_with_shared`] (`shared_down [f, d]` run on rows `[S, S + t)` of `h`);
/// the operands are checked, at most one of the two is given.
pub fn down_combine(
    h: &Tensor,
    routed: &RoutedTokens,
    down: &Tensor,
    weight_on: WeightOn,
    shared: Option<&Tensor>,
    shared_down: Option<&Tensor>,
    shape: ExpertShape,
) -> Result<Tensor> {
    let ExpertShape { t, d, f, e, k } = shape;
    let slots = t * k;
    let shared_rows = if shared_down.is_some() { t } else { 0 };
    let rows = slots + shared_rows;
    if slots == 0 || d == 0 || f == 0 {
        let (hc, dc, rc) = (
            h.to_device(Device::Cpu)?,
            down.to_device(Device::Cpu)?,
            host_routing(routed)?,
        );
        let sc = shared.map(|s| s.to_device(Device::Cpu)).transpose()?;
        let sdc = shared_down.map(|s| s.to_device(Device::Cpu)).transpose()?;
        return on_host(h.device(), || {
            super::reference::down_combine(&hc, &rc, &dc, weight_on, sc.as_ref(), sdc.as_ref(), shape)
        });
    }
    as_i32(rows, "slots + shared rows")?;
    let backend = backend_of(h, OP)?;
    let dtype = dtype_name(h.dtype())?;
    let h = contiguous(h)?;
    let hb = contiguous_bytes(&h, OP, "h")?;
    let down = contiguous(down)?;
    let w = contiguous_bytes(&down, OP, "down")?;
    let offset = contiguous_bytes(&routed.expert_offset, OP, "expert_offset")?;
    let sorted = contiguous_bytes(&routed.sorted_slots, OP, "sorted_slots")?;
    let weight = contiguous(&routed.topk_weight)?;
    let weight = contiguous_bytes(&weight, OP, "topk_weight")?;
    let shared = shared.map(contiguous).transpose()?;
    let shared_b = shared.as_ref().map(|s| contiguous_bytes(s, OP, "shared")).transpose()?;
    let shared_w = shared_down.map(contiguous).transpose()?;
    let shared_wb = shared_w
        .as_ref()
        .map(|s| contiguous_bytes(s, OP, "shared down"))
        .transpose()?;
    let mut out = alloc_poisoned_in_tests(&backend, OP, h.dtype(), t * d)?;
    let mut operands = vec![&down, &h];
    operands.extend(shared_w.as_ref());
    let experts = e + usize::from(shared_rows > 0);
    let tensor_cores = mma_operands(h.dtype(), d, f, &operands);
    let (config, name, splits, per_split) = if tensor_cores {
        let (mut config, kind) = mma_config(d, DOWN_COLS, slots, rows, experts)?;
        let ktiles = f.div_ceil(K_TILE);
        let splits = match kind {
            "decode" => down_splits(
                backend.info().sm_count,
                d.div_ceil(DOWN_COLS),
                experts.min(rows),
                ktiles,
            ),
            _ => 1,
        };
        let (splits, per_split) = split_ktiles(ktiles, splits);
        config.grid_dim.2 = splits as u32;
        (config, format!("me_down_{dtype}_{kind}"), splits, per_split)
    } else {
        let config = grid_1d(&backend, rows * d, THREADS, 8);
        (config, format!("me_down_scalar_{dtype}"), 1, 0)
    };
    // One slot per token, one split and no fused shared expert: the epilogue writes out[token]
    // itself. Otherwise f32 partial sums per (split, row slot), then the fixed-order combine (a
    // token's routed and shared rows are written by different CTAs).
    let direct = k == 1 && splits == 1 && shared_rows == 0;
    let mut slot_out = if direct {
        None
    } else {
        Some(alloc_poisoned_in_tests(&backend, OP, DType::F32, splits * rows * d)?)
    };
    let (e32, s32, d32, f32_, k32, shared32) = (
        as_i32(e, "e")?,
        as_i32(slots, "slots")?,
        as_i32(d, "d")?,
        as_i32(f, "f")?,
        as_i32(k, "k")?,
        as_i32(shared_rows, "t")?,
    );
    let null: u64 = 0;
    let per_split32 = as_i32(per_split, "k-tiles per split")?;
    let function = load_function(&backend, &MOE_EXPERTS, &name)?;
    let mut builder = backend.stream().launch_builder(&function);
    builder.arg(&hb).arg(&w).arg(&offset).arg(&e32);
    if !tensor_cores {
        builder.arg(&s32);
    }
    builder.arg(&f32_).arg(&d32).arg(&sorted);
    match weight_on {
        WeightOn::Output => builder.arg(&weight),
        WeightOn::Input => builder.arg(&null),
    };
    builder.arg(&k32);
    match (&shared_b, direct) {
        (Some(s), true) => builder.arg(s),
        _ => builder.arg(&null),
    };
    if direct {
        builder.arg(&mut out).arg(&null);
    } else if let Some(slot_out) = slot_out.as_mut() {
        builder.arg(&null).arg(slot_out);
    }
    if tensor_cores {
        builder.arg(&s32).arg(&per_split32);
    }
    match &shared_wb {
        Some(s) => builder.arg(s),
        None => builder.arg(&null),
    };
    builder.arg(&shared32);
    // SAFETY: (h [S + shared rows, f], w [e, f, d], offset [e+1], int e, [int S,] int f, d,
    // sorted [S], weight [S] f32 or null, int k, shared [t, d] or null, out [t, d] or null,
    // slot_out [splits, S + shared rows, d] f32 or null[, int S, k-tiles per split], shared_w
    // [f, d] or null, int shared rows (t with shared_w, else 0)) as `me_down_*` declares;
    // exactly one of out and slot_out is non-null (slot_out whenever shared rows > 0); d and f
    // are multiples of 8 on the tensor-core path; grid z = splits, each with ≥ 1 of the ⌈f/32⌉
    // k-tiles.
    unsafe { builder.launch(config) }?;
    if let Some(slot_out) = slot_out {
        let out_weight = (weight_on == WeightOn::Output).then_some(&weight);
        combine(
            &backend,
            &slot_out,
            splits,
            out_weight,
            shared_b.as_ref(),
            &mut out,
            dtype,
            (t, k, d, shared_rows),
        )?;
    }
    output_tensor(out, h.dtype(), backend.info().ordinal, &[t, d])
}

/// `out [t, d] = round(shared + Σ_j y[t·k + j])` in slot order, `y_s = (Σ_z slot_out[z][s])·w_s`
/// in split order (`me_combine_*`); `slot_out [splits, S + shared_rows, d]` f32. With
/// `shared_rows = t` (a fused shared expert) `shared` is its unweighted row `S + token` of
/// `slot_out`, not an input.
#[allow(clippy::too_many_arguments)]
pub(super) fn combine(
    backend: &CudaBackend,
    slot_out: &CudaSlice<u8>,
    splits: usize,
    out_weight: Option<&CudaView<'_, u8>>,
    shared: Option<&CudaView<'_, u8>>,
    out: &mut CudaSlice<u8>,
    dtype: &str,
    (t, k, d, shared_rows): (usize, usize, usize, usize),
) -> Result<()> {
    let function = load_function(backend, &MOE_EXPERTS, &format!("me_combine_{dtype}"))?;
    let (splits32, t32, k32, d32, shared32) = (
        as_i32(splits, "splits")?,
        as_i32(t, "t")?,
        as_i32(k, "k")?,
        as_i32(d, "d")?,
        as_i32(shared_rows, "t")?,
    );
    let null: u64 = 0;
    let mut builder = backend.stream().launch_builder(&function);
    builder.arg(slot_out).arg(&splits32);
    match out_weight {
        Some(w) => builder.arg(w),
        None => builder.arg(&null),
    };
    match shared {
        Some(s) => builder.arg(s),
        None => builder.arg(&null),
    };
    builder.arg(out).arg(&t32).arg(&k32).arg(&d32).arg(&shared32);
    // SAFETY: (slot_out [splits, S + shared rows, d] f32, int splits, weight [S] f32 or null,
    // shared [t, d] or null, out [t, d], int t, k, d, shared rows (0 or t)) as `me_combine_*`
    // declares.
    unsafe { builder.launch(grid_1d(backend, t * d, THREADS, 8)) }?;
    Ok(())
}

/// Splits of the down projection's reduction for a decode step: enough CTAs for about two per
/// SM when the busy (expert, m-block) tiles, at most `busy_tiles`, times the column blocks are
/// fewer than the SMs; at most one split per k-tile.
pub(super) fn down_splits(sm_count: usize, column_blocks: usize, busy_tiles: usize, ktiles: usize) -> usize {
    let ctas = (column_blocks * busy_tiles).max(1);
    if ctas >= sm_count {
        1
    } else {
        (2 * sm_count).div_ceil(ctas).min(ktiles).max(1)
    }
}
