//! The CUDA launcher for `cast.cu`. Strided inputs use the geometry of the elementwise
//! launcher (`crate::elementwise::cuda`): merged dimensions, element strides, no copies.

use cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
use l4_core::cuda::CudaBackend;
use l4_core::{DType, Error, Result, Tensor};

use super::{FLOAT_DTYPES, OP};
use crate::elementwise::cuda::{
    Plan, alloc_out, check_input, check_out, empty_output, launch_config, operand_view, plan,
};
use crate::launch::output_tensor;
use crate::{CAST, load_function};

/// Fails unless `dtype` is one of the float dtypes `cast` converts between.
pub(crate) fn check_float(dtype: DType) -> Result<()> {
    if FLOAT_DTYPES.contains(&dtype) {
        return Ok(());
    }
    Err(Error::DTypeMismatch {
        op: OP,
        got: dtype,
        expected: None,
    })
}

/// The entry point converting `src` to `dst` (`cast_<src>_<dst>[_strided]`, dtype names as in
/// `DType::name`). Errors unless both are distinct float dtypes.
pub fn function_name(src: DType, dst: DType, strided: bool) -> Result<String> {
    check_float(src)?;
    check_float(dst)?;
    if src == dst {
        return Err(Error::invalid(
            OP,
            format!("there is no kernel casting {src} to itself"),
        ));
    }
    let tail = if strided { "_strided" } else { "" };
    Ok(format!("cast_{}_{}{tail}", src.name(), dst.name()))
}

/// `x` converted to `dtype` on the CUDA device `x` lives on (any strided view); allocates the
/// output. The same dtype gives `x` back.
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let src = x.dtype();
    check_float(src)?;
    check_float(dtype)?;
    let ordinal = x.cuda_storage(OP)?.ordinal;
    if src == dtype {
        return Ok(x.clone());
    }
    let backend = l4_core::cuda::backend(ordinal)?;
    let n = x.elem_count();
    if n == 0 {
        return empty_output(&backend, dtype, x.shape());
    }
    let plan = plan(OP, x.shape(), &[x.layout().strides()])?;
    let x_bytes = operand_view(x, OP, "x")?;
    let mut out = alloc_out(&backend, OP, dtype, n)?;
    launch(&backend, src, dtype, &plan, &x_bytes, &mut out, n)?;
    output_tensor(out, dtype, ordinal, x.shape())
}

/// Launches the `src` → `dst` conversion of `n` elements: `out[i] = dst(x[offset(i)])`, the
/// offsets from `plan` (contiguous: `i`). `x` starts at the view's first element.
pub fn launch(
    backend: &CudaBackend,
    src: DType,
    dst: DType,
    plan: &Plan,
    x: &CudaView<'_, u8>,
    out: &mut CudaSlice<u8>,
    n: usize,
) -> Result<()> {
    let fname = function_name(src, dst, matches!(plan, Plan::Strided(_)))?;
    check_out(OP, out, dst, n)?;
    check_input(OP, plan, 0, x, src, n)?;
    let function = load_function(backend, &CAST, &fname)?;
    // The contiguous kernel converts 16 / max(element sizes) elements per thread.
    let widest = src.size_in_bytes().max(dst.size_in_bytes());
    let config = launch_config(backend, plan, n, 16 / widest);
    let n = n as u64;
    let mut builder = backend.stream().launch_builder(&function);
    builder.arg(x).arg(out).arg(&n);
    if let Plan::Strided(g) = plan {
        builder.arg(g);
    }
    // SAFETY: the arguments match the kernel's signature (input pointer, output pointer, u64
    // count, and for the strided variant the by-value geometry laid out like `CastGeometry`);
    // `out` holds n elements of `dst` and the offsets stay inside the input view.
    unsafe { builder.launch(config) }?;
    Ok(())
}
