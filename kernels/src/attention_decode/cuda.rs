//! The CUDA launchers for `attention_decode.cu`: the split kernel, then the combine kernel.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use l4_core::{DType, Error, Result, Tensor};

use super::{DecodeShape, MAX_HEAD_DIM, MAX_ROWS, OP, SPLIT};
use crate::elementwise::cuda::operand_view;
use crate::gather::cuda::alloc_poisoned_in_tests;
use crate::launch::{backend_of, contiguous_bytes, output_tensor};
use crate::ops::contiguous;
use crate::{ATTENTION_DECODE, load_function};

/// Threads of a split block (`DEC_THREADS`).
const THREADS: u32 = 128;

/// `DecodeParams` of the source, by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Params {
    q_stride_bh: u64,
    k_stride_b: u64,
    k_stride_h: u64,
    k_stride_s: u64,
    v_stride_b: u64,
    v_stride_h: u64,
    v_stride_s: u64,
    heads_kv: u32,
    rows: u32,
    tq: u32,
    dh: u32,
    keys: u32,
    splits: u32,
    q_start: i64,
    k_start: i64,
    scale: f32,
    pad: u32,
}

// SAFETY: #[repr(C)] plain integers and a float, laid out like `DecodeParams`.
unsafe impl DeviceRepr for Params {}

/// See [`super::decode_attention`]; the operands are checked.
pub fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor, shape: DecodeShape) -> Result<Tensor> {
    let (b, hk, rows, dh) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    let keys = k.shape()[2];
    if rows > MAX_ROWS || dh > MAX_HEAD_DIM {
        return Err(Error::invalid(
            OP,
            format!("the CUDA kernel takes at most {MAX_ROWS} rows of width {MAX_HEAD_DIM}, got {rows} of {dh}"),
        ));
    }
    for (t, which) in [(k, "k"), (v, "v")] {
        if t.layout().strides()[3] != 1 && dh > 1 {
            return Err(Error::invalid(
                OP,
                format!("`{which}` needs unit stride along the head dim"),
            ));
        }
    }
    if [b * hk, keys, rows * dh].iter().any(|&x| x > u32::MAX as usize) {
        return Err(Error::invalid(OP, "problem too large for 32-bit indexing"));
    }
    let backend = backend_of(q, OP)?;
    let ordinal = backend.info().ordinal;
    let q = contiguous(q)?;
    let dtype = match q.dtype() {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        other => {
            return Err(Error::DTypeMismatch {
                op: OP,
                got: other,
                expected: None,
            });
        }
    };
    let splits = keys.div_ceil(SPLIT).max(1);
    let (ks, vs) = (k.layout().strides(), v.layout().strides());
    let params = Params {
        q_stride_bh: (rows * dh) as u64,
        k_stride_b: ks[0] as u64,
        k_stride_h: ks[1] as u64,
        k_stride_s: ks[2] as u64,
        v_stride_b: vs[0] as u64,
        v_stride_h: vs[1] as u64,
        v_stride_s: vs[2] as u64,
        heads_kv: hk as u32,
        rows: rows as u32,
        tq: shape.tq as u32,
        dh: dh as u32,
        keys: keys as u32,
        splits: splits as u32,
        q_start: shape.q_start as i64,
        k_start: shape.k_start as i64,
        scale: shape.scale as f32,
        pad: 0,
    };
    let out = alloc_poisoned_in_tests(&backend, OP, q.dtype(), b * hk * rows * dh)?;
    let mut out = out;
    let groups = b * hk * splits * rows;
    let mut part_m = alloc_poisoned_in_tests(&backend, OP, DType::F32, groups)?;
    let mut part_l = alloc_poisoned_in_tests(&backend, OP, DType::F32, groups)?;
    let mut part_acc = alloc_poisoned_in_tests(&backend, OP, DType::F32, groups * dh)?;
    let q_bytes = contiguous_bytes(&q, OP, "q")?;
    let (k_bytes, v_bytes) = (operand_view(k, OP, "k")?, operand_view(v, OP, "v")?);

    let split = load_function(&backend, &ATTENTION_DECODE, &format!("attn_decode_split_{dtype}"))?;
    let config = LaunchConfig {
        grid_dim: ((b * hk) as u32, splits as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut builder = backend.stream().launch_builder(&split);
    builder
        .arg(&q_bytes)
        .arg(&k_bytes)
        .arg(&v_bytes)
        .arg(&mut part_m)
        .arg(&mut part_l)
        .arg(&mut part_acc)
        .arg(&params);
    // SAFETY: the arguments match `attn_decode_split_*` (six device pointers, the by-value
    // params); q holds B·HK·R·DH elements, k and v views reach every (b, kh, j, e) through the
    // strides given, and the partial buffers hold one entry per (b·kh, split, row[, e]).
    unsafe { builder.launch(config) }?;

    let combine = load_function(&backend, &ATTENTION_DECODE, &format!("attn_decode_combine_{dtype}"))?;
    let config = LaunchConfig {
        grid_dim: ((b * hk * rows) as u32, 1, 1),
        block_dim: (dh.clamp(32, 1024) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut builder = backend.stream().launch_builder(&combine);
    builder
        .arg(&part_m)
        .arg(&part_l)
        .arg(&part_acc)
        .arg(&mut out)
        .arg(&params);
    // SAFETY: the arguments match `attn_decode_combine_*`; the output holds B·HK·R·DH elements.
    unsafe { builder.launch(config) }?;
    output_tensor(out, q.dtype(), ordinal, q.shape())
}
