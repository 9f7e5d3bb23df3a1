//! The CUDA launcher for `attention_prefill.cu`, over strided K/V views or a paged pool.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use l4_core::{DType, Error, Result, Tensor};

use super::{HEAD_DIMS, OP, PagedPrefillShape, PrefillShape};
use crate::elementwise::cuda::operand_view;
use crate::gather::cuda::{alloc_poisoned_in_tests, empty_output};
use crate::launch::{backend_of, contiguous_bytes, output_tensor};
use crate::ops::contiguous;
use crate::paged_kv::PagedKv;
use crate::{ATTENTION_PREFILL, load_function};

/// Query rows per block (`PF_ROWS`) and threads (`PF_THREADS`).
const ROWS: usize = 64;
const THREADS: u32 = 128;
/// CUDA's limit on grid y and z.
const MAX_GRID_YZ: usize = 65535;

/// `PrefillParams` of the source, by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Params {
    k_stride_b: u64,
    k_stride_h: u64,
    k_stride_s: u64,
    v_stride_b: u64,
    v_stride_h: u64,
    v_stride_s: u64,
    heads: u32,
    heads_kv: u32,
    tokens: u32,
    keys: u32,
    q_start: i64,
    k_start: i64,
    chunk: i64,
    scale: f32,
    block_log2: u32,
    max_blocks: u32,
    vec16: u32,
}

// SAFETY: #[repr(C)] integers and a float, laid out like `PrefillParams`.
unsafe impl DeviceRepr for Params {}

/// Where the kernel reads keys and values.
enum KvSource<'a> {
    /// `[B, HK, S, DH]` views.
    Strided { k: &'a Tensor, v: &'a Tensor },
    /// A paged pool.
    Paged(&'a PagedKv),
}

/// See [`super::prefill_attention`]; the operands are checked.
pub fn prefill_attention(q: &Tensor, k: &Tensor, v: &Tensor, shape: PrefillShape) -> Result<Tensor> {
    for (x, which) in [(k, "k"), (v, "v")] {
        if x.layout().strides()[3] != 1 {
            return Err(Error::invalid(
                OP,
                format!("`{which}` needs unit stride along the head dim"),
            ));
        }
    }
    launch(q, KvSource::Strided { k, v }, k.shape()[1], k.shape()[2], shape)
}

/// See [`super::paged_prefill_attention`]; the operands are checked.
pub fn paged_prefill_attention(q: &Tensor, cache: &PagedKv, shape: PagedPrefillShape) -> Result<Tensor> {
    let contiguous_shape = PrefillShape {
        q_start: shape.q_start,
        k_start: cache.base(),
        chunk: shape.chunk,
        scale: shape.scale,
    };
    launch(
        q,
        KvSource::Paged(cache),
        cache.heads_kv(),
        cache.len(),
        contiguous_shape,
    )
}

/// Whether every key and value row starts on a 16-byte boundary (8 elements of 2 bytes), so
/// the kernel may load tiles in 16-byte vectors: the views start on one and all strides are
/// multiples of 8 elements. Device allocations are 256-byte aligned; a paged pool's strides are
/// multiples of the head width, itself a multiple of 8 ([`HEAD_DIMS`]).
fn rows_are_16_byte_aligned(kv: &KvSource<'_>, strides: &[usize; 6]) -> bool {
    let starts_aligned = match kv {
        KvSource::Strided { k, v } => k.layout().offset() % 8 == 0 && v.layout().offset() % 8 == 0,
        KvSource::Paged(_) => true,
    };
    starts_aligned && strides.iter().all(|s| s % 8 == 0)
}

fn launch(q: &Tensor, kv: KvSource<'_>, hk: usize, s: usize, shape: PrefillShape) -> Result<Tensor> {
    let (b, h, t, dh) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    let dtype = match q.dtype() {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        other => {
            return Err(Error::invalid(
                OP,
                format!("the CUDA kernel runs on bf16 or f16 tensor cores, not {other}"),
            ));
        }
    };
    if !HEAD_DIMS.contains(&dh) {
        return Err(Error::invalid(
            OP,
            format!("head width {dh}; the CUDA kernel takes {HEAD_DIMS:?}"),
        ));
    }
    // Query tiles are grid x (up to 2^31 − 1), heads grid y and the batch grid z (65535 each).
    if [t, s].iter().any(|&x| x > i32::MAX as usize) || h > MAX_GRID_YZ || b > MAX_GRID_YZ {
        return Err(Error::invalid(
            OP,
            format!("problem too large for the launch: b {b}, h {h}, t {t}, s {s}"),
        ));
    }
    let backend = backend_of(q, OP)?;
    let ordinal = backend.info().ordinal;
    if b * h * t * dh == 0 {
        return empty_output(&backend, q.dtype(), q.shape());
    }
    let q = contiguous(q)?;
    if q.layout().offset() % 2 != 0 {
        // The kernel reads q as pairs of 16-bit elements (32-bit words).
        return Err(Error::invalid(OP, "q must start at an even element offset"));
    }
    let (strides, block_log2, max_blocks) = match &kv {
        KvSource::Strided { k, v } => {
            let (ks, vs) = (k.layout().strides(), v.layout().strides());
            ([ks[0], ks[1], ks[2], vs[0], vs[1], vs[2]], 0, 0)
        }
        KvSource::Paged(cache) => {
            let l = cache.layout();
            (
                [
                    l.block_stride,
                    l.head_stride,
                    l.head_dim,
                    l.block_stride,
                    l.head_stride,
                    l.head_dim,
                ],
                l.block_log2,
                l.max_blocks,
            )
        }
    };
    let params = Params {
        k_stride_b: strides[0] as u64,
        k_stride_h: strides[1] as u64,
        k_stride_s: strides[2] as u64,
        v_stride_b: strides[3] as u64,
        v_stride_h: strides[4] as u64,
        v_stride_s: strides[5] as u64,
        heads: h as u32,
        heads_kv: hk as u32,
        tokens: t as u32,
        keys: s as u32,
        q_start: shape.q_start as i64,
        k_start: shape.k_start as i64,
        chunk: shape.chunk.unwrap_or(0) as i64,
        scale: shape.scale as f32,
        block_log2,
        max_blocks: max_blocks as u32,
        vec16: rows_are_16_byte_aligned(&kv, &strides) as u32,
    };
    let mut out = alloc_poisoned_in_tests(&backend, OP, q.dtype(), b * h * t * dh)?;
    let q_bytes = contiguous_bytes(&q, OP, "q")?;
    let config = LaunchConfig {
        grid_dim: (t.div_ceil(ROWS) as u32, h as u32, b as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    match kv {
        KvSource::Strided { k, v } => {
            let function = load_function(&backend, &ATTENTION_PREFILL, &format!("attn_prefill_{dtype}_d{dh}"))?;
            let (k_bytes, v_bytes) = (operand_view(k, OP, "k")?, operand_view(v, OP, "v")?);
            let mut builder = backend.stream().launch_builder(&function);
            builder
                .arg(&q_bytes)
                .arg(&k_bytes)
                .arg(&v_bytes)
                .arg(&mut out)
                .arg(&params);
            // SAFETY: the arguments match `attn_prefill_*` (four device pointers, the by-value
            // params); q and out hold B·H·T·DH elements, and k and v reach every (b, kh, j, e)
            // through the strides.
            unsafe { builder.launch(config) }?;
        }
        KvSource::Paged(cache) => {
            let parts = cache
                .device_parts()
                .ok_or_else(|| Error::invalid(OP, "the paged cache holds no keys on a GPU"))?;
            let function = load_function(
                &backend,
                &ATTENTION_PREFILL,
                &format!("attn_prefill_paged_{dtype}_d{dh}"),
            )?;
            let mut builder = backend.stream().launch_builder(&function);
            builder
                .arg(&q_bytes)
                .arg(parts.k)
                .arg(parts.v)
                .arg(parts.table)
                .arg(&mut out)
                .arg(&params);
            // SAFETY: the arguments match `attn_prefill_paged_*` (five device pointers, the
            // by-value params); q and out hold B·H·T·DH elements; the pools are [NB, HK, BS, DH]
            // with the strides given and the table [B, max_blocks] covers keys 0..S of every
            // sequence with blocks below NB.
            unsafe { builder.launch(config) }?;
        }
    }
    output_tensor(out, q.dtype(), ordinal, q.shape())
}
