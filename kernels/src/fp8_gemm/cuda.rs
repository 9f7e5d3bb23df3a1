//! The CUDA launchers of `fp8_gemm.cu`, and the heuristic that picks the kernel, its tile width,
//! its pipeline depth and its grid from the problem shape and the device.

use std::ffi::c_void;
use std::mem::MaybeUninit;

use cudarc::driver::sys::{
    self, CUfunction_attribute_enum, CUtensorMapDataType_enum, CUtensorMapFloatOOBfill_enum,
    CUtensorMapInterleave_enum, CUtensorMapL2promotion_enum, CUtensorMapSwizzle_enum,
};
use cudarc::driver::{CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use l4_core::{DType, Error, Result, Tensor};

use super::{BLOCK_K, Epilogue, Fp8Scaling, OP};
use crate::gather::cuda::{alloc_poisoned_in_tests, empty_output};
use crate::launch::{backend_of, output_tensor};
use crate::ops::contiguous;
use crate::quant::{Granularity, Quantized};
use crate::{FP8_GEMM, load_function};

/// Up to this many rows the small-M kernel runs: the time is the weight read, and a 128-row
/// wgmma tile would waste most of its tensor-core work.
pub const GEMV_MAX_M: usize = 16;
/// Warps (output columns) per small-M block (`GEMV_WARPS` in the source).
const GEMV_WARPS: usize = 8;
/// The Hopper kernel's tile height and K block (`FP8_BM`, `FP8_BK`), and its threads.
pub(crate) const BM: usize = 128;
const BK: usize = BLOCK_K;
const THREADS: u32 = 384;
/// Ring slots at most (`FP8_MAX_STAGES`).
pub(crate) const MAX_STAGES: usize = 8;
/// Dynamic shared memory a block may use on sm_90 (227 KiB), less the 1024 bytes spent on
/// aligning the ring to the swizzle period and 256 bytes for the static mbarriers.
const SMEM_BUDGET: usize = 227 * 1024 - 1024 - 256;

/// The kernel chosen for a problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Kernel {
    /// The small-M kernel; `vectorized` reads 16-byte chunks (K % 16 == 0, aligned operands).
    Gemv {
        /// Whether the 16-byte path applies.
        vectorized: bool,
    },
    /// The warp-specialised TMA + wgmma kernel.
    Wgmma {
        /// Tile width: 128, or 64 when 128-wide tiles would leave SMs idle.
        bn: usize,
        /// Shared-memory ring slots.
        stages: usize,
        /// Persistent CTAs: min(tiles, SMs).
        grid: usize,
    },
}

/// The heuristic, from the shape, the SM count and whether both operands start 16-byte aligned:
///
/// 1. `M ≤ 16`: the small-M kernel (memory-bound by design);
/// 2. `K % 16 != 0` or a misaligned operand: the small-M kernel as well (TMA needs a row pitch
///    that is a multiple of 16 bytes); correct for any shape, slow for large M;
/// 3. otherwise the Hopper kernel with `BN = 128` when `⌈M/128⌉·⌈N/128⌉ ≥ SMs` (every SM has a
///    tile), else `BN = 64` (twice the tiles for small problems); as many ring slots (≤ 8) as
///    fit 227 KiB of shared memory (7 at BN = 128, 8 at BN = 64); `min(tiles, SMs)` CTAs.
pub fn plan(m: usize, n: usize, k: usize, sm_count: usize, aligned: bool) -> Fp8Kernel {
    let vectorized = k.is_multiple_of(16) && aligned;
    if m <= GEMV_MAX_M || !vectorized {
        return Fp8Kernel::Gemv { vectorized };
    }
    let tiles = |bn: usize| m.div_ceil(BM) * n.div_ceil(bn);
    let bn = if tiles(128) >= sm_count { 128 } else { 64 };
    let stage_bytes = (BM + bn) * BK;
    let stages = (SMEM_BUDGET / stage_bytes).min(MAX_STAGES);
    Fp8Kernel::Wgmma {
        bn,
        stages,
        grid: tiles(bn).min(sm_count.max(1)),
    }
}

/// `Fp8GemmParams` of the source, by value (80 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Params {
    out: u64,
    a: u64,
    b: u64,
    scale_a: u64,
    scale_b: u64,
    bias: u64,
    residual: u64,
    m: u32,
    n: u32,
    k: u32,
    k_blocks: u32,
    stages: u32,
    pad: u32,
}

// SAFETY: #[repr(C)] integers only, laid out like `Fp8GemmParams` (device pointers as u64).
unsafe impl DeviceRepr for Params {}

/// A TMA descriptor (`CUtensorMap`), passed by value as a `__grid_constant__` parameter.
#[repr(C, align(128))]
#[derive(Clone, Copy)]
struct TensorMap(sys::CUtensorMap);

// SAFETY: an opaque 128-byte, 128-aligned value, as the kernel's `L4TensorMap` parameter.
unsafe impl DeviceRepr for TensorMap {}

/// The dynamic shared memory of the Hopper kernel: `stages` slots of one A and one B tile, plus
/// the slack the kernel spends aligning the ring to the 1024-byte swizzle period.
pub(crate) fn wgmma_smem_bytes(bn: usize, stages: usize) -> usize {
    stages * (BM + bn) * BK + 1024
}

/// The TMA geometry of an e4m3 matrix `[rows, k]` as `cuTensorMapEncodeTiled` takes it:
/// dimensions innermost (K) first, the byte stride of dimension 1 only (dimension 0 is packed),
/// and a box of `128 × box_rows` elements whose 128-byte inner extent is exactly one 128-byte
/// swizzle span, the layout wgmma's descriptors assume.
pub(crate) fn tensor_map_geometry(rows: usize, k: usize, box_rows: usize) -> ([u64; 2], [u64; 1], [u32; 2]) {
    ([k as u64, rows as u64], [k as u64], [BK as u32, box_rows as u32])
}

/// The descriptor of an e4m3 matrix `[rows, k]` (row pitch k bytes) at `ptr`, read in boxes of
/// `box_rows × 128` bytes with the 128-byte swizzle wgmma's descriptors expect; elements past
/// the edges read as zero.
fn tensor_map(ptr: u64, rows: usize, k: usize, box_rows: usize) -> Result<TensorMap> {
    let (dims, strides, boxes) = tensor_map_geometry(rows, k, box_rows);
    let element_strides = [1u32, 1];
    let mut map = MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: every array has the rank's length (strides: rank - 1); `ptr` is a device address
    // of rows·k bytes, 16-byte aligned, with k a multiple of 16 (checked by `plan`).
    unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            CUtensorMapDataType_enum::CU_TENSOR_MAP_DATA_TYPE_UINT8,
            2,
            ptr as *mut c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            CUtensorMapInterleave_enum::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle_enum::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion_enum::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill_enum::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()?;
        Ok(TensorMap(map.assume_init()))
    }
}

/// Row-wise scales as one f32 per row on the device (a per-tensor scale broadcast).
fn row_scales(q: &Quantized, rows: usize) -> Result<Tensor> {
    match q.granularity {
        Granularity::PerTensor => contiguous(&q.scales.reshape(&[1])?.broadcast_as(&[rows])?),
        _ => contiguous(&q.scales.reshape(&[rows])?),
    }
}

fn address(t: &Tensor, stream: &CudaStream) -> Result<u64> {
    let storage = t.cuda_storage(OP)?;
    let (ptr, _record) = storage.bytes.device_ptr(stream);
    Ok(ptr + (t.layout().offset() * t.dtype().size_in_bytes()) as u64)
}

/// See [`super::fp8_gemm`]; the operands are checked.
pub fn fp8_gemm(
    a: &Quantized,
    b: &Quantized,
    [m, n, k]: [usize; 3],
    scaling: Fp8Scaling,
    out: DType,
    epilogue: Epilogue<'_>,
) -> Result<Tensor> {
    let backend = backend_of(&a.values, OP)?;
    let ordinal = backend.info().ordinal;
    if m * n == 0 {
        return empty_output(&backend, out, &[m, n]);
    }
    if k == 0 {
        return Err(Error::invalid(OP, "K = 0: there is nothing to multiply"));
    }
    let stream = backend.stream();
    let (codes_a, codes_b) = (contiguous(&a.values)?, contiguous(&b.values)?);
    let (scale_a, scale_b) = match scaling {
        Fp8Scaling::RowWise => (row_scales(a, m)?, row_scales(b, n)?),
        Fp8Scaling::Block => (contiguous(&a.scales)?, contiguous(&b.scales)?),
    };
    let bias = epilogue.bias.map(contiguous).transpose()?;
    let residual = epilogue.residual.map(contiguous).transpose()?;
    let result = alloc_poisoned_in_tests(&backend, OP, out, m * n)?;
    let result = output_tensor(result, out, ordinal, &[m, n])?;

    let (a_ptr, b_ptr) = (address(&codes_a, stream)?, address(&codes_b, stream)?);
    let aligned = a_ptr.is_multiple_of(16) && b_ptr.is_multiple_of(16);
    let kernel = plan(m, n, k, backend.info().sm_count, aligned);
    let params = Params {
        out: address(&result, stream)?,
        a: a_ptr,
        b: b_ptr,
        scale_a: address(&scale_a, stream)?,
        scale_b: address(&scale_b, stream)?,
        bias: bias.as_ref().map(|t| address(t, stream)).transpose()?.unwrap_or(0),
        residual: residual.as_ref().map(|t| address(t, stream)).transpose()?.unwrap_or(0),
        m: m as u32,
        n: n as u32,
        k: k as u32,
        k_blocks: k.div_ceil(BK) as u32,
        stages: 0,
        pad: 0,
    };
    if [m, n, k].iter().any(|&v| v > i32::MAX as usize) {
        return Err(Error::invalid(OP, format!("[{m}, {n}, {k}] exceeds 32-bit indexing")));
    }
    let recipe = match scaling {
        Fp8Scaling::RowWise => "rowwise",
        Fp8Scaling::Block => "block",
    };
    let out_name = if out == DType::F32 { "f32" } else { "bf16" };
    match kernel {
        Fp8Kernel::Gemv { vectorized } => {
            let function = load_function(&backend, &FP8_GEMM, &format!("fp8_gemv_{recipe}_{out_name}"))?;
            let config = LaunchConfig {
                grid_dim: (n.div_ceil(GEMV_WARPS) as u32, 1, 1),
                block_dim: ((GEMV_WARPS * 32) as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            let flag = i32::from(vectorized);
            let mut builder = stream.launch_builder(&function);
            builder.arg(&params).arg(&flag);
            // SAFETY: the arguments match `fp8_gemv_*` (the by-value params, an int); every
            // pointer in them addresses a live buffer of the checked shape on this stream,
            // and `vectorized` is set only for 16-byte aligned rows.
            unsafe { builder.launch(config) }?;
        }
        Fp8Kernel::Wgmma { bn, stages, grid } => {
            let name = format!("fp8_gemm_{recipe}_n{bn}_{out_name}");
            let function = load_function(&backend, &FP8_GEMM, &name)?;
            let smem = wgmma_smem_bytes(bn, stages);
            function.set_attribute(
                CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )?;
            let map_a = tensor_map(a_ptr, m, k, BM)?;
            let map_b = tensor_map(b_ptr, n, k, bn)?;
            let params = Params {
                stages: stages as u32,
                ..params
            };
            let config = LaunchConfig {
                grid_dim: (grid as u32, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: smem as u32,
            };
            let mut builder = stream.launch_builder(&function);
            builder.arg(&map_a).arg(&map_b).arg(&params);
            // SAFETY: the arguments match `fp8_gemm_*` (two tensor maps, the params); the maps
            // describe the live A and B buffers, the params' pointers live buffers of the
            // checked shapes, and `smem` covers `stages` slots plus the alignment slack.
            unsafe { builder.launch(config) }?;
        }
    }
    // The operands stay alive (and their pointers valid) until the launches above are queued;
    // the stream orders every later use.
    drop((codes_a, codes_b, scale_a, scale_b, bias, residual));
    Ok(result)
}
