//! The CUDA launchers for `attention_decode.cu`: the split kernel (over strided K/V views or a
//! paged pool), then the combine kernel.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use l4_core::{DType, Error, Result, Tensor};

use super::{DecodeShape, MAX_HEAD_DIM, MAX_ROWS, OP, PagedDecodeShape, SPLIT};
use crate::elementwise::cuda::operand_view;
use crate::gather::cuda::{alloc_poisoned_in_tests, empty_output};
use crate::launch::{backend_of, contiguous_bytes, output_tensor};
use crate::ops::contiguous;
use crate::paged_kv::PagedKv;
use crate::{ATTENTION_DECODE, load_function};

/// Threads of a split block (`DEC_THREADS`).
const THREADS: u32 = 128;
/// Threads of a combine block (`DEC_COMBINE_THREADS`), and the head columns each block takes.
const COMBINE_THREADS: u32 = 256;
const COMBINE_COLUMNS: usize = 32;
/// CUDA's limit on grid y.
const MAX_GRID_Y: usize = 65535;

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
    chunk: i64,
    scale: f32,
    block_log2: u32,
    max_blocks: u32,
    pad: u32,
}

// SAFETY: #[repr(C)] plain integers and a float, laid out like `DecodeParams`.
unsafe impl DeviceRepr for Params {}

/// Where the split kernel reads keys and values.
enum KvSource<'a> {
    /// `[B, HK, S, DH]` views.
    Strided { k: &'a Tensor, v: &'a Tensor },
    /// A paged pool.
    Paged(&'a PagedKv),
}

/// See [`super::decode_attention`]; the operands are checked.
pub fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor, shape: DecodeShape) -> Result<Tensor> {
    for (t, which) in [(k, "k"), (v, "v")] {
        if t.layout().strides()[3] != 1 && t.shape()[3] > 1 {
            return Err(Error::invalid(
                OP,
                format!("`{which}` needs unit stride along the head dim"),
            ));
        }
    }
    launch(q, KvSource::Strided { k, v }, k.shape()[2], shape, None)
}

/// See [`super::paged_decode_attention`]; the operands are checked.
pub fn paged_decode_attention(q: &Tensor, cache: &PagedKv, shape: PagedDecodeShape) -> Result<Tensor> {
    let contiguous_shape = DecodeShape {
        tq: shape.tq,
        q_start: shape.q_start,
        k_start: cache.base(),
        scale: shape.scale,
    };
    launch(q, KvSource::Paged(cache), cache.len(), contiguous_shape, shape.chunk)
}

fn launch(q: &Tensor, kv: KvSource<'_>, keys: usize, shape: DecodeShape, chunk: Option<usize>) -> Result<Tensor> {
    let (b, hk, rows, dh) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    if rows > MAX_ROWS || dh > MAX_HEAD_DIM {
        return Err(Error::invalid(
            OP,
            format!("the CUDA kernel takes at most {MAX_ROWS} rows of width {MAX_HEAD_DIM}, got {rows} of {dh}"),
        ));
    }
    // Keys below 2^31 keep `split · SPLIT` in 32 bits; the (b, kv head) groups are grid y.
    if [keys, b * hk * rows].iter().any(|&x| x > i32::MAX as usize) || b * hk > MAX_GRID_Y {
        return Err(Error::invalid(
            OP,
            format!("problem too large for the launch: {b}x{hk} groups, {keys} keys"),
        ));
    }
    let backend = backend_of(q, OP)?;
    let ordinal = backend.info().ordinal;
    if b * hk * rows * dh == 0 {
        // CUDA refuses empty grids and zero-byte buffers.
        return empty_output(&backend, q.dtype(), q.shape());
    }
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
    let (strides, block_log2, max_blocks) = match &kv {
        KvSource::Strided { k, v } => {
            let (ks, vs) = (k.layout().strides(), v.layout().strides());
            ([ks[0], ks[1], ks[2], vs[0], vs[1], vs[2]], 0, 0)
        }
        KvSource::Paged(cache) => {
            let l = cache.layout();
            let per_head = [l.block_stride, l.head_stride, l.head_dim];
            (
                [per_head, per_head].concat().try_into().expect("six strides"),
                l.block_log2,
                l.max_blocks,
            )
        }
    };
    let params = Params {
        q_stride_bh: (rows * dh) as u64,
        k_stride_b: strides[0] as u64,
        k_stride_h: strides[1] as u64,
        k_stride_s: strides[2] as u64,
        v_stride_b: strides[3] as u64,
        v_stride_h: strides[4] as u64,
        v_stride_s: strides[5] as u64,
        heads_kv: hk as u32,
        rows: rows as u32,
        tq: shape.tq as u32,
        dh: dh as u32,
        keys: keys as u32,
        splits: splits as u32,
        q_start: shape.q_start as i64,
        k_start: shape.k_start as i64,
        chunk: chunk.unwrap_or(0) as i64,
        scale: shape.scale as f32,
        block_log2,
        max_blocks: max_blocks as u32,
        pad: 0,
    };
    let mut out = alloc_poisoned_in_tests(&backend, OP, q.dtype(), b * hk * rows * dh)?;
    let groups = b * hk * splits * rows;
    let mut part_m = alloc_poisoned_in_tests(&backend, OP, DType::F32, groups)?;
    let mut part_l = alloc_poisoned_in_tests(&backend, OP, DType::F32, groups)?;
    let mut part_acc = alloc_poisoned_in_tests(&backend, OP, DType::F32, groups * dh)?;
    let q_bytes = contiguous_bytes(&q, OP, "q")?;
    let config = LaunchConfig {
        grid_dim: (splits as u32, (b * hk) as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    match kv {
        KvSource::Strided { k, v } => {
            let (k_bytes, v_bytes) = (operand_view(k, OP, "k")?, operand_view(v, OP, "v")?);
            let split = load_function(&backend, &ATTENTION_DECODE, &format!("attn_decode_split_{dtype}"))?;
            let mut builder = backend.stream().launch_builder(&split);
            builder
                .arg(&q_bytes)
                .arg(&k_bytes)
                .arg(&v_bytes)
                .arg(&mut part_m)
                .arg(&mut part_l)
                .arg(&mut part_acc)
                .arg(&params);
            // SAFETY: the arguments match `attn_decode_split_*` (six device pointers, the
            // by-value params); q holds B·HK·R·DH elements, k and v views reach every
            // (b, kh, j, e) through the strides given, and the partial buffers hold one entry per
            // (b·kh, split, row[, e]).
            unsafe { builder.launch(config) }?;
        }
        KvSource::Paged(cache) => {
            let parts = cache
                .device_parts()
                .ok_or_else(|| Error::invalid(OP, "the paged cache holds no keys on a GPU"))?;
            let split = load_function(&backend, &ATTENTION_DECODE, &format!("attn_decode_split_paged_{dtype}"))?;
            let mut builder = backend.stream().launch_builder(&split);
            builder
                .arg(&q_bytes)
                .arg(parts.k)
                .arg(parts.v)
                .arg(parts.table)
                .arg(&mut part_m)
                .arg(&mut part_l)
                .arg(&mut part_acc)
                .arg(&params);
            // SAFETY: the arguments match `attn_decode_split_paged_*` (seven device pointers,
            // the by-value params); the pools are [NB, HK, BS, DH] with the strides given, the
            // table is [B, max_blocks] and covers keys 0..S of every sequence with blocks below
            // NB, and the partial buffers hold one entry per (b·kh, split, row[, e]).
            unsafe { builder.launch(config) }?;
        }
    }

    let combine = load_function(&backend, &ATTENTION_DECODE, &format!("attn_decode_combine_{dtype}"))?;
    let config = LaunchConfig {
        grid_dim: ((b * hk * rows) as u32, dh.div_ceil(COMBINE_COLUMNS) as u32, 1),
        block_dim: (COMBINE_THREADS, 1, 1),
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
