//! The CUDA launcher for `moe_routing.cu`: one CTA of 1024 threads.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use l4_core::cuda::CudaBackend;
use l4_core::{DType, Error, Result, Tensor};

use super::{OP, RouteKind, RoutedTokens};
use crate::gather::cuda::{alloc_poisoned_in_tests, empty_output};
use crate::launch::{backend_of, contiguous_bytes, output_tensor};
use crate::ops::contiguous;
use crate::{MOE_ROUTING, load_function};

/// Threads of the one block (`ROUTE_THREADS`).
const THREADS: u32 = 1024;

/// See [`super::route`]; the operands are checked.
pub fn route(logits: &Tensor, kind: RouteKind) -> Result<RoutedTokens> {
    let backend = backend_of(logits, OP)?;
    let ordinal = backend.info().ordinal;
    let logits = contiguous(logits)?;
    let (t, e) = (logits.shape()[0], logits.shape()[1]);
    let k = kind.k();
    if t == 0 {
        // Empty logits made on the host: nothing to copy (a zero-byte device copy is refused).
        let host = Tensor::zeros(&[0, e], logits.dtype(), l4_core::Device::Cpu)?;
        return super::reference::route(&host, kind).and_then(|r| to_device(r, &backend));
    }
    if t * k > i32::MAX as usize {
        return Err(Error::invalid(
            OP,
            format!("{t} tokens x {k} exceed 32-bit slot indices"),
        ));
    }
    let dtype = match logits.dtype() {
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
    let function = load_function(&backend, &MOE_ROUTING, &format!("moe_route_{dtype}"))?;
    let x = contiguous_bytes(&logits, OP, "logits")?;
    let mut topk_expert = alloc_poisoned_in_tests(&backend, OP, DType::I32, t * k)?;
    let mut topk_weight = alloc_poisoned_in_tests(&backend, OP, DType::F32, t * k)?;
    let mut count = alloc_poisoned_in_tests(&backend, OP, DType::I32, e)?;
    let mut offset = alloc_poisoned_in_tests(&backend, OP, DType::I32, e + 1)?;
    let mut sorted = alloc_poisoned_in_tests(&backend, OP, DType::I32, t * k)?;
    let (softmax, renormalize) = match kind {
        RouteKind::Llama4 => (0i32, 0i32),
        RouteKind::SoftmaxTopK { renormalize, .. } => (1, i32::from(renormalize)),
    };
    let (tokens, experts, k32) = (t as u32, e as u32, k as u32);
    let config = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut builder = backend.stream().launch_builder(&function);
    builder
        .arg(&x)
        .arg(&mut topk_expert)
        .arg(&mut topk_weight)
        .arg(&mut count)
        .arg(&mut offset)
        .arg(&mut sorted)
        .arg(&tokens)
        .arg(&experts)
        .arg(&k32)
        .arg(&softmax)
        .arg(&renormalize);
    // SAFETY: the arguments match `moe_route_*` (six device pointers, three u32, two int); the
    // buffers hold T·E logits, T·k, T·k, E, E+1 and T·k elements; E ≤ 256 and k ≤ 8 (checked).
    unsafe { builder.launch(config) }?;
    Ok(RoutedTokens {
        topk_expert: output_tensor(topk_expert, DType::I32, ordinal, &[t, k])?,
        topk_weight: output_tensor(topk_weight, DType::F32, ordinal, &[t, k])?,
        expert_count: output_tensor(count, DType::I32, ordinal, &[e])?,
        expert_offset: output_tensor(offset, DType::I32, ordinal, &[e + 1])?,
        sorted_slots: output_tensor(sorted, DType::I32, ordinal, &[t * k])?,
    })
}

/// A host routing moved to `backend`'s device (the empty case, where no kernel runs). Empty
/// tensors cannot be copied (CUDA refuses zero-byte allocations) but must still live on the
/// device, so they become empty device views.
fn to_device(r: RoutedTokens, backend: &CudaBackend) -> Result<RoutedTokens> {
    let device = l4_core::Device::Cuda(backend.info().ordinal);
    let empty = |t: &Tensor| -> Result<Tensor> {
        if t.elem_count() == 0 {
            return empty_output(backend, t.dtype(), t.shape());
        }
        t.to_device(device)
    };
    Ok(RoutedTokens {
        topk_expert: empty(&r.topk_expert)?,
        topk_weight: empty(&r.topk_weight)?,
        expert_count: r.expert_count.to_device(device)?,
        expert_offset: r.expert_offset.to_device(device)?,
        sorted_slots: empty(&r.sorted_slots)?,
    })
}
