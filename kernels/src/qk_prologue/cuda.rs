//! The CUDA launcher for `qk_prologue.cu`.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use l4_core::{DType, Error, Result, Tensor};

use super::{MAX_HEAD_DIM, OP, Prologue};
use crate::gather::cuda::alloc_poisoned_in_tests;
use crate::launch::{backend_of, contiguous_bytes, output_tensor};
use crate::ops::contiguous;
use crate::{QK_PROLOGUE, load_function};

/// Threads per block (`QKP_THREADS`): 8 warps, one head vector each at a time.
const THREADS: u32 = 256;

/// `QkPrologueParams` of the source, by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Params {
    batch: u32,
    tokens: u32,
    heads: u32,
    heads_kv: u32,
    dh: u32,
    rope: u32,
    norm: u32,
    scale_q: u32,
    start: i64,
    eps: f32,
    floor_scale: f32,
    attn_scale: f32,
    pad: u32,
}

// SAFETY: #[repr(C)] integers and a float, laid out like `QkPrologueParams`.
unsafe impl DeviceRepr for Params {}

/// See [`super::qk_prologue`]; the operands are checked.
pub fn qk_prologue(q: &Tensor, k: &Tensor, prologue: Prologue<'_>) -> Result<(Tensor, Tensor)> {
    let (b, t, h, dh) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    let hk = k.shape()[2];
    if dh > MAX_HEAD_DIM {
        return Err(Error::invalid(
            OP,
            format!("head width {dh}; the CUDA kernel takes at most {MAX_HEAD_DIM}"),
        ));
    }
    if [b, t, h + hk, dh].iter().any(|&x| x > u32::MAX as usize) {
        return Err(Error::invalid(OP, "problem too large for 32-bit indexing"));
    }
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
    let backend = backend_of(q, OP)?;
    let ordinal = backend.info().ordinal;
    let (q, k) = (contiguous(q)?, contiguous(k)?);
    let (q_shape, k_shape) = ([b, h, t, dh], [b, hk, t, dh]);
    if b * t * dh == 0 {
        let zeros = |shape: &[usize]| Tensor::zeros(shape, q.dtype(), l4_core::Device::Cpu)?.to_device(q.device());
        return Ok((zeros(&q_shape)?, zeros(&k_shape)?));
    }
    let params = Params {
        batch: b as u32,
        tokens: t as u32,
        heads: h as u32,
        heads_kv: hk as u32,
        dh: dh as u32,
        rope: prologue.inv_freq.is_some() as u32,
        norm: prologue.qk_norm_eps.is_some() as u32,
        scale_q: prologue.temperature.is_some() as u32,
        start: prologue.start as i64,
        eps: prologue.qk_norm_eps.unwrap_or(0.0) as f32,
        floor_scale: prologue.temperature.map_or(1.0, |t| t.floor_scale as f32),
        attn_scale: prologue.temperature.map_or(0.0, |t| t.attn_scale as f32),
        pad: 0,
    };
    let mut q_out = alloc_poisoned_in_tests(&backend, OP, q.dtype(), b * h * t * dh)?;
    let mut k_out = alloc_poisoned_in_tests(&backend, OP, q.dtype(), b * hk * t * dh)?;
    let (q_bytes, k_bytes) = (contiguous_bytes(&q, OP, "q")?, contiguous_bytes(&k, OP, "k")?);
    // The frequencies already on the device; without RoPE the kernel never reads the pointer.
    let inv_freq = match prologue.inv_freq {
        Some(f) => contiguous_bytes(f, OP, "inv_freq")?,
        None => contiguous_bytes(&q, OP, "q")?,
    };
    let vectors = b * t * (h + hk);
    let warps_per_block = (THREADS / 32) as usize;
    let cap = backend.info().sm_count * 8;
    let config = LaunchConfig {
        grid_dim: (vectors.div_ceil(warps_per_block).clamp(1, cap.max(1)) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let function = load_function(&backend, &QK_PROLOGUE, &format!("qk_prologue_{dtype}"))?;
    let mut builder = backend.stream().launch_builder(&function);
    builder
        .arg(&q_bytes)
        .arg(&k_bytes)
        .arg(&inv_freq)
        .arg(&mut q_out)
        .arg(&mut k_out)
        .arg(&params);
    // SAFETY: the arguments match `qk_prologue_*` (five device pointers, the by-value params); q
    // and k hold B·T·H·DH and B·T·HK·DH elements, inv_freq DH/2 f32 entries when RoPE is on
    // (checked by the caller; unread otherwise), and the outputs B·H·T·DH and B·HK·T·DH.
    unsafe { builder.launch(config) }?;
    Ok((
        output_tensor(q_out, q.dtype(), ordinal, &q_shape)?,
        output_tensor(k_out, q.dtype(), ordinal, &k_shape)?,
    ))
}
