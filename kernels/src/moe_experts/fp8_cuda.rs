//! The CUDA launchers of the FP8 experts' kernels (`me_fp8_*` in `moe_experts.cu`): the
//! tensor-core kernels (`me_fp8_mma_*`, mma.sync m16n8k32 e4m3) for steps of more than
//! [`DECODE_MAX_SLOTS`] slots on compute capability 8.9 and later, the CUDA-core kernels (one warp
//! per output column, each chosen expert's weights streamed once) otherwise.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use l4_core::{DType, Result, Tensor};

use super::cuda::{DECODE_MAX_SLOTS, aligned16, as_i32, column_blocks, combine, dtype_name, tile_bound};
use super::fp8::Fp8Experts;
use super::{ExpertShape, OP, WeightOn};
use crate::gather::cuda::alloc_poisoned_in_tests;
use crate::launch::{backend_of, contiguous_bytes, output_tensor};
use crate::moe_routing::RoutedTokens;
use crate::ops::contiguous;
use crate::{MOE_EXPERTS, load_function};

/// The FP8 kernels' grid: one warp per output column, `ME_FP8_WARPS` per CTA, and the tile
/// bound of [`mma_config`] with 16-row tiles.
fn fp8_config(cols: usize, slots: usize, experts: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (
            tile_bound(slots, experts, FP8_ROWS) as u32,
            column_blocks(cols, FP8_WARPS)?,
            1,
        ),
        block_dim: (FP8_WARPS as u32 * 32, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Output columns (warps) per CTA and rows per tile of the FP8 kernels (`ME_FP8_WARPS`,
/// `ME_FP8_ROWS`).
pub(super) const FP8_WARPS: usize = 8;
pub(super) const FP8_ROWS: usize = 16;
/// The tensor-core kernels' CTA (`ME_Q_THREADS`, `ME_Q_WIDE`): 64 rows, 64 h columns of gate_up
/// (64 gate + 64 up channels in the B tile), 128 d columns of down.
pub(super) const MMA_THREADS: u32 = 256;
pub(super) const MMA_ROWS: usize = 64;
pub(super) const MMA_GATE_UP_COLS: usize = 64;
pub(super) const MMA_DOWN_COLS: usize = 128;

/// Whether the tensor-core kernels take a GEMM with reduction length `k`: a step of more than
/// [`DECODE_MAX_SLOTS`] slots (smaller ones are memory-bound: the CUDA-core kernels read each
/// chosen expert's weights once), a device with FP8 mma.sync (compute capability 8.9+), rows
/// of whole 16-byte chunks (`k % 16 == 0`) and 16-byte aligned operands (cp.async).
pub(super) fn fp8_uses_tensor_cores(
    compute_capability: (i32, i32),
    slots: usize,
    k: usize,
    operands: &[&Tensor],
) -> bool {
    compute_capability >= (8, 9)
        && slots > DECODE_MAX_SLOTS
        && k.is_multiple_of(16)
        && operands.iter().all(|t| aligned16(t))
}

/// The launch of one FP8 GEMM: the tensor-core kernel `me_fp8_mma_{stage}_{dtype}` and its grid
/// when [`fp8_uses_tensor_cores`], else the CUDA-core kernel `me_fp8_{stage}_{dtype}_{vec}`.
pub(super) fn fp8_launch(
    stage: &str,
    dtype: &str,
    tensor_cores: bool,
    k: usize,
    cols: usize,
    (slots, experts): (usize, usize),
    operands: &[&Tensor],
) -> Result<(String, LaunchConfig)> {
    if tensor_cores {
        let col_block = if stage == "gate_up" {
            MMA_GATE_UP_COLS
        } else {
            MMA_DOWN_COLS
        };
        let config = LaunchConfig {
            grid_dim: (
                tile_bound(slots, experts, MMA_ROWS) as u32,
                column_blocks(cols, col_block)?,
                1,
            ),
            block_dim: (MMA_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        Ok((format!("me_fp8_mma_{stage}_{dtype}"), config))
    } else {
        let vec = fp8_vec(k, operands);
        Ok((
            format!("me_fp8_{stage}_{dtype}_{vec}"),
            fp8_config(cols, slots, experts)?,
        ))
    }
}

/// 16-byte loads when rows of `k` codes stay 16-byte aligned in every operand, else byte loads.
fn fp8_vec(k: usize, operands: &[&Tensor]) -> &'static str {
    if k.is_multiple_of(16) && operands.iter().all(|t| aligned16(t)) {
        "v16"
    } else {
        "v1"
    }
}

/// See [`super::reference::fp8_gate_up`]; the operands are checked and non-empty.
pub fn fp8_gate_up(
    xq: &Tensor,
    xscale: &Tensor,
    w: &Fp8Experts,
    routed: &RoutedTokens,
    dtype: DType,
    shape: ExpertShape,
) -> Result<Tensor> {
    let ExpertShape { t, d, f, e, k } = shape;
    let slots = t * k;
    let backend = backend_of(xq, OP)?;
    let (gate_up, scales) = (contiguous(&w.gate_up)?, contiguous(&w.gate_up_scales)?);
    let operands = [&gate_up, xq];
    let tensor_cores = fp8_uses_tensor_cores(backend.info().compute_capability, slots, d, &operands);
    let (name, config) = fp8_launch("gate_up", dtype_name(dtype)?, tensor_cores, d, f, (slots, e), &operands)?;
    let function = load_function(&backend, &MOE_EXPERTS, &name)?;
    let (xq_b, xs_b) = (contiguous_bytes(xq, OP, "xq")?, contiguous_bytes(xscale, OP, "xscale")?);
    let (w_b, ws_b) = (
        contiguous_bytes(&gate_up, OP, "gate_up")?,
        contiguous_bytes(&scales, OP, "gate_up_scales")?,
    );
    let offset = contiguous_bytes(&routed.expert_offset, OP, "expert_offset")?;
    let mut h = alloc_poisoned_in_tests(&backend, OP, dtype, slots * f)?;
    let (e32, d32, f32_) = (as_i32(e, "e")?, as_i32(d, "d")?, as_i32(f, "f")?);
    let mut builder = backend.stream().launch_builder(&function);
    builder
        .arg(&xq_b)
        .arg(&xs_b)
        .arg(&w_b)
        .arg(&ws_b)
        .arg(&offset)
        .arg(&e32)
        .arg(&d32)
        .arg(&f32_)
        .arg(&mut h);
    // SAFETY: (xq [S, d] e4m3, xscale [S] f32, w [e, 2f, d] e4m3, wscale [e, 2f] f32, offset
    // [e+1], int e, d, f, h [S, f]) as `me_fp8_gate_up_*` and `me_fp8_mma_gate_up_*` declare;
    // v16 and the tensor-core kernel only when d % 16 == 0 and the codes are 16-byte aligned.
    unsafe { builder.launch(config) }?;
    output_tensor(h, dtype, backend.info().ordinal, &[slots, f])
}

/// See [`super::reference::fp8_down_combine`]; the operands are checked and non-empty.
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
    let ExpertShape { t, d, f, e, k } = shape;
    let slots = t * k;
    let backend = backend_of(hq, OP)?;
    let dname = dtype_name(dtype)?;
    let (down, scales) = (contiguous(&w.down)?, contiguous(&w.down_scales)?);
    let operands = [&down, hq];
    let tensor_cores = fp8_uses_tensor_cores(backend.info().compute_capability, slots, f, &operands);
    let (name, config) = fp8_launch("down", dname, tensor_cores, f, d, (slots, e), &operands)?;
    let function = load_function(&backend, &MOE_EXPERTS, &name)?;
    let (hq_b, hs_b) = (contiguous_bytes(hq, OP, "hq")?, contiguous_bytes(hscale, OP, "hscale")?);
    let (w_b, ws_b) = (
        contiguous_bytes(&down, OP, "down")?,
        contiguous_bytes(&scales, OP, "down_scales")?,
    );
    let offset = contiguous_bytes(&routed.expert_offset, OP, "expert_offset")?;
    let sorted = contiguous_bytes(&routed.sorted_slots, OP, "sorted_slots")?;
    let weight = contiguous(&routed.topk_weight)?;
    let weight = contiguous_bytes(&weight, OP, "topk_weight")?;
    let shared = shared.map(contiguous).transpose()?;
    let shared_b = shared.as_ref().map(|s| contiguous_bytes(s, OP, "shared")).transpose()?;
    let mut out = alloc_poisoned_in_tests(&backend, OP, dtype, t * d)?;
    let direct = k == 1;
    let mut slot_out = if direct {
        None
    } else {
        Some(alloc_poisoned_in_tests(&backend, OP, DType::F32, slots * d)?)
    };
    let (e32, d32, f32_, k32) = (as_i32(e, "e")?, as_i32(d, "d")?, as_i32(f, "f")?, as_i32(k, "k")?);
    let null: u64 = 0;
    let mut builder = backend.stream().launch_builder(&function);
    builder
        .arg(&hq_b)
        .arg(&hs_b)
        .arg(&w_b)
        .arg(&ws_b)
        .arg(&offset)
        .arg(&e32)
        .arg(&f32_)
        .arg(&d32)
        .arg(&sorted);
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
    let s32 = as_i32(slots, "slots")?;
    builder.arg(&s32);
    // SAFETY: (hq [S, f] e4m3, hscale [S], w [e, d, f] e4m3, wscale [e, d], offset [e+1], int e,
    // f, d, sorted [S], weight [S] or null, int k, shared [t, d] or null, out [t, d] or null,
    // slot_out [S, d] f32 or null, int S) as `me_fp8_down_*` and `me_fp8_mma_down_*` declare;
    // exactly one of out and slot_out is non-null; v16 and the tensor-core kernel only when
    // f % 16 == 0 and the codes are 16-byte aligned.
    unsafe { builder.launch(config) }?;
    if let Some(slot_out) = slot_out {
        let out_weight = (weight_on == WeightOn::Output).then_some(&weight);
        combine(
            &backend,
            &slot_out,
            1,
            out_weight,
            shared_b.as_ref(),
            &mut out,
            dname,
            (t, k, d, 0),
        )?;
    }
    output_tensor(out, dtype, backend.info().ordinal, &[t, d])
}
