//! The CUDA launcher for `attention_prefill.cu`.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use l4_core::{DType, Error, Result, Tensor};

use super::{HEAD_DIMS, OP, PrefillShape};
use crate::elementwise::cuda::operand_view;
use crate::gather::cuda::{alloc_poisoned_in_tests, empty_output};
use crate::launch::{backend_of, contiguous_bytes, output_tensor};
use crate::ops::contiguous;
use crate::{ATTENTION_PREFILL, load_function};

/// Query rows per block (`PF_ROWS`) and threads (`PF_THREADS`).
const ROWS: usize = 64;
const THREADS: u32 = 128;

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
    pad: u32,
}

// SAFETY: #[repr(C)] integers and a float, laid out like `PrefillParams`.
unsafe impl DeviceRepr for Params {}

/// See [`super::prefill_attention`]; the operands are checked.
pub fn prefill_attention(q: &Tensor, k: &Tensor, v: &Tensor, shape: PrefillShape) -> Result<Tensor> {
    let (b, h, t, dh) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    let (hk, s) = (k.shape()[1], k.shape()[2]);
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
    for (x, which) in [(k, "k"), (v, "v")] {
        if x.layout().strides()[3] != 1 {
            return Err(Error::invalid(
                OP,
                format!("`{which}` needs unit stride along the head dim"),
            ));
        }
    }
    if [t, s, b, h].iter().any(|&x| x > i32::MAX as usize) {
        return Err(Error::invalid(OP, "problem too large for 32-bit indexing"));
    }
    let backend = backend_of(q, OP)?;
    let ordinal = backend.info().ordinal;
    if b * h * t * dh == 0 {
        return empty_output(&backend, q.dtype(), q.shape());
    }
    let q = contiguous(q)?;
    let (ks, vs) = (k.layout().strides(), v.layout().strides());
    let params = Params {
        k_stride_b: ks[0] as u64,
        k_stride_h: ks[1] as u64,
        k_stride_s: ks[2] as u64,
        v_stride_b: vs[0] as u64,
        v_stride_h: vs[1] as u64,
        v_stride_s: vs[2] as u64,
        heads: h as u32,
        heads_kv: hk as u32,
        tokens: t as u32,
        keys: s as u32,
        q_start: shape.q_start as i64,
        k_start: shape.k_start as i64,
        chunk: shape.chunk.unwrap_or(0) as i64,
        scale: shape.scale as f32,
        pad: 0,
    };
    let function = load_function(&backend, &ATTENTION_PREFILL, &format!("attn_prefill_{dtype}_d{dh}"))?;
    let mut out = alloc_poisoned_in_tests(&backend, OP, q.dtype(), b * h * t * dh)?;
    let q_bytes = contiguous_bytes(&q, OP, "q")?;
    let (k_bytes, v_bytes) = (operand_view(k, OP, "k")?, operand_view(v, OP, "v")?);
    let config = LaunchConfig {
        grid_dim: (t.div_ceil(ROWS) as u32, h as u32, b as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut builder = backend.stream().launch_builder(&function);
    builder
        .arg(&q_bytes)
        .arg(&k_bytes)
        .arg(&v_bytes)
        .arg(&mut out)
        .arg(&params);
    // SAFETY: the arguments match `attn_prefill_*` (four device pointers, the by-value params);
    // q and out hold B·H·T·DH elements, and k and v reach every (b, kh, j, e) through the strides.
    unsafe { builder.launch(config) }?;
    output_tensor(out, q.dtype(), ordinal, q.shape())
}
