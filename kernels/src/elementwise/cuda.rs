//! The CUDA launcher for `elementwise.cu`, and the strided-launch machinery it shares with
//! `cast`: merging dimensions, the kernel-side [`Geometry`], operand views, output allocation.
//!
//! Strided inputs are never copied on the host or the device: each operand is passed as a
//! device pointer to its view's first element plus its element strides (0 on broadcast
//! dimensions, from `Layout::broadcast_as`). Before launching, dimensions of size 1 are dropped
//! and neighbouring dimensions that every operand walks with one stride are merged, so a
//! contiguous operand set becomes one dimension of stride 1 and takes the vectorised
//! contiguous kernel, and a broadcast `[t, d] + [d]` stays two dimensions.

use cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use l4_core::cuda::CudaBackend;
use l4_core::layout::{broadcast_shape, elem_count};
use l4_core::{DType, Error, Result, Tensor};

use super::{BinaryOp, UnaryOp};
use crate::launch::{alloc_output, grid_1d, output_tensor};
use crate::{ELEMENTWISE, load_function};

/// Threads per block; `EW_BLOCK` in `elementwise.cu` and `CAST_BLOCK` in `cast.cu` (the
/// kernels' launch bounds) must be the same.
pub const BLOCK: u32 = 256;
/// Blocks per SM at most: 8 × 256 threads fill an SM (the kernels' launch bounds ask for 8
/// resident blocks, so at most 32 registers). The grid-stride loops cover the rest.
pub const BLOCKS_PER_SM: usize = 8;
/// The most dimensions a strided launch can describe after merging (`EW_MAX_RANK`,
/// `CAST_MAX_RANK` in the sources).
pub const MAX_RANK: usize = 8;

/// The output geometry of a strided launch, innermost dimension first, with each operand's
/// element strides into its storage (0 on broadcast dimensions). Laid out exactly as
/// `EwGeometry` in `elementwise.cu` and `CastGeometry` in `cast.cu` (200 bytes) and passed to
/// the kernel by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Sizes of the merged dimensions, innermost first; entries past `rank` are unused.
    pub shape: [u64; MAX_RANK],
    /// The first operand's element strides, per dimension.
    pub stride_a: [u64; MAX_RANK],
    /// The second operand's element strides (unused by unary ops and casts).
    pub stride_b: [u64; MAX_RANK],
    /// The number of dimensions in use (1..=MAX_RANK).
    pub rank: u32,
    /// Padding to the 8-byte alignment of the CUDA struct.
    pub pad: u32,
}

// SAFETY: a #[repr(C)] struct of integers (no pointers, no padding beyond the explicit `pad`
// field), with the same layout as the kernels' parameter struct.
unsafe impl DeviceRepr for Geometry {}

impl Geometry {
    /// The storage offsets of output element `i` (row-major over the unmerged shape), as the
    /// kernels compute them. Used by tests to check the merged geometry against the layouts.
    pub fn offsets(&self, i: u64) -> (u64, u64) {
        let (mut rem, mut a, mut b) = (i, 0u64, 0u64);
        let rank = self.rank as usize;
        for d in 0..rank {
            let idx = if d + 1 < rank {
                let q = rem / self.shape[d];
                let idx = rem - q * self.shape[d];
                rem = q;
                idx
            } else {
                rem
            };
            a += idx * self.stride_a[d];
            b += idx * self.stride_b[d];
        }
        (a, b)
    }

    /// One past the largest element offset operand `k` (0: a, 1: b) is read at.
    pub fn extent(&self, k: usize) -> u64 {
        let strides = if k == 0 { &self.stride_a } else { &self.stride_b };
        let rank = self.rank as usize;
        1 + (0..rank).map(|d| (self.shape[d] - 1) * strides[d]).sum::<u64>()
    }
}

/// How a launch walks its operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Every operand is contiguous over the output's elements (offsets aside): the
    /// vectorised kernel.
    Contiguous,
    /// The strided kernel with this geometry.
    Strided(Geometry),
}

/// Drops dimensions of size 1 and merges neighbouring dimensions that every operand walks with
/// one stride (outer stride = inner stride × inner size). Returns the sizes and each operand's
/// strides, innermost dimension first. `strides[k]` has one entry per dimension of `shape`.
pub fn merge_dims(shape: &[usize], strides: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut sizes: Vec<usize> = Vec::new();
    let mut merged: Vec<Vec<usize>> = vec![Vec::new(); strides.len()];
    for d in (0..shape.len()).rev() {
        let size = shape[d];
        if size == 1 {
            continue;
        }
        if let Some(last) = sizes.last_mut() {
            let inner = *last;
            let mergeable = strides
                .iter()
                .zip(&merged)
                .all(|(s, m)| m.last().and_then(|&st| st.checked_mul(inner)) == Some(s[d]));
            if mergeable {
                *last = inner * size;
                continue;
            }
        }
        sizes.push(size);
        for (s, m) in strides.iter().zip(merged.iter_mut()) {
            m.push(s[d]);
        }
    }
    (sizes, merged)
}

/// The launch plan for an output of `shape` (with at least one element) read through one or
/// two operands with these element strides (each already broadcast to `shape`). More than
/// [`MAX_RANK`] dimensions that cannot be merged is an error naming `op`.
pub fn plan(op: &'static str, shape: &[usize], strides: &[&[usize]]) -> Result<Plan> {
    if strides.is_empty() || strides.len() > 2 || strides.iter().any(|s| s.len() != shape.len()) {
        return Err(Error::invalid(
            op,
            "internal: one or two stride lists, one entry per dimension",
        ));
    }
    let (sizes, merged) = merge_dims(shape, strides);
    if sizes.is_empty() || (sizes.len() == 1 && merged.iter().all(|s| s[0] == 1)) {
        return Ok(Plan::Contiguous);
    }
    if sizes.len() > MAX_RANK {
        return Err(Error::invalid(
            op,
            format!(
                "the CUDA path handles at most {MAX_RANK} dimensions after merging, got {} for shape {shape:?} \
                 with strides {strides:?}; make an operand contiguous first",
                sizes.len()
            ),
        ));
    }
    let mut g = Geometry {
        shape: [0; MAX_RANK],
        stride_a: [0; MAX_RANK],
        stride_b: [0; MAX_RANK],
        rank: sizes.len() as u32,
        pad: 0,
    };
    for (d, &size) in sizes.iter().enumerate() {
        g.shape[d] = size as u64;
        g.stride_a[d] = merged[0][d] as u64;
        g.stride_b[d] = merged.get(1).map_or(0, |s| s[d] as u64);
    }
    Ok(Plan::Strided(g))
}

/// The device bytes of `t`'s view, from its first element to one past the last element it
/// can reach (the kernel adds the strides); `which` names the operand in errors.
pub fn operand_view<'a>(t: &'a Tensor, op: &'static str, which: &str) -> Result<CudaView<'a, u8>> {
    let storage = t.cuda_storage(op)?;
    let size = t.dtype().size_in_bytes();
    let (start, end) = (t.layout().offset() * size, t.layout().storage_extent() * size);
    storage.bytes.try_slice(start..end).ok_or_else(|| {
        Error::invalid(
            op,
            format!(
                "`{which}`'s view (bytes {start}..{end}) exceeds its storage of {} bytes",
                storage.bytes.len()
            ),
        )
    })
}

/// Device memory for the `n > 0` elements the kernel writes. Under `cargo test` it is filled
/// with 0xff bytes (NaN in every float dtype), so an element a kernel skips cannot pass a
/// comparison with the CPU.
pub fn alloc_out(backend: &CudaBackend, op: &'static str, dtype: DType, n: usize) -> Result<CudaSlice<u8>> {
    if cfg!(test) && n > 0 {
        return Ok(backend.stream().clone_htod(&vec![0xffu8; n * dtype.size_in_bytes()])?);
    }
    alloc_output(backend, op, dtype, n)
}

/// An empty CUDA tensor of `shape` (which has a zero dimension). CUDA refuses zero-byte
/// allocations, so this is an empty view of a one-element buffer.
pub fn empty_output(backend: &CudaBackend, dtype: DType, shape: &[usize]) -> Result<Tensor> {
    let bytes = backend.stream().alloc_zeros::<u8>(dtype.size_in_bytes())?;
    output_tensor(bytes, dtype, backend.info().ordinal, &[1])?
        .narrow(0, 0, 0)?
        .reshape(shape)
}

/// The grid for `n` output elements: one thread per `per_thread` elements on the contiguous
/// path (its 16-byte vectors), one per element on the strided path, capped per SM.
pub fn launch_config(backend: &CudaBackend, plan: &Plan, n: usize, per_thread: usize) -> LaunchConfig {
    let work = match plan {
        Plan::Contiguous => n.div_ceil(per_thread.max(1)),
        Plan::Strided(_) => n,
    };
    grid_1d(backend, work, BLOCK, BLOCKS_PER_SM)
}

/// Fails unless the CUDA kernels cover `dtype` (f32, f16, bf16).
fn check_dtype(op: &'static str, dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        other => Err(Error::DTypeMismatch {
            op,
            got: other,
            expected: None,
        }),
    }
}

/// The entry point of a unary op for `dtype` (`ew_unary_<op>_<dtype>[_strided]`).
pub fn unary_function_name(op: UnaryOp, dtype: DType, strided: bool) -> Result<String> {
    check_dtype(op.name(), dtype)?;
    let tail = if strided { "_strided" } else { "" };
    Ok(format!("ew_unary_{}_{}{tail}", op.name(), dtype.name()))
}

/// The entry point of a binary op for `dtype` (`ew_binary_<op>_<dtype>[_strided]`).
pub fn binary_function_name(op: BinaryOp, dtype: DType, strided: bool) -> Result<String> {
    check_dtype(op.name(), dtype)?;
    let tail = if strided { "_strided" } else { "" };
    Ok(format!("ew_binary_{}_{}{tail}", op.name(), dtype.name()))
}

/// The two f32 parameters a unary kernel receives (rounded from f64 as the CPU op rounds them).
fn params(op: UnaryOp) -> (f32, f32) {
    match op {
        UnaryOp::Affine { mul, add } => (mul as f32, add as f32),
        UnaryOp::Scale(factor) => (factor as f32, 0.0),
        _ => (0.0, 0.0),
    }
}

/// `op(x)` on the CUDA device `x` lives on (any strided view); allocates the output.
pub fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    let name = op.name();
    let dtype = x.dtype();
    check_dtype(name, dtype)?;
    let ordinal = x.cuda_storage(name)?.ordinal;
    let backend = l4_core::cuda::backend(ordinal)?;
    let n = x.elem_count();
    if n == 0 {
        return empty_output(&backend, dtype, x.shape());
    }
    let plan = plan(name, x.shape(), &[x.layout().strides()])?;
    let x_bytes = operand_view(x, name, "x")?;
    let mut out = alloc_out(&backend, name, dtype, n)?;
    launch_unary(&backend, op, dtype, &plan, &x_bytes, &mut out, n)?;
    output_tensor(out, dtype, ordinal, x.shape())
}

/// Launches `op` on `n` output elements: `out[i] = op(x[offset(i)])`, where the offsets come
/// from `plan` (contiguous: `i`). `x` starts at the view's first element.
pub fn launch_unary(
    backend: &CudaBackend,
    op: UnaryOp,
    dtype: DType,
    plan: &Plan,
    x: &CudaView<'_, u8>,
    out: &mut CudaSlice<u8>,
    n: usize,
) -> Result<()> {
    let fname = unary_function_name(op, dtype, matches!(plan, Plan::Strided(_)))?;
    check_out(op.name(), out, dtype, n)?;
    check_input(op.name(), plan, 0, x, dtype, n)?;
    let function = load_function(backend, &ELEMENTWISE, &fname)?;
    let config = launch_config(backend, plan, n, 16 / dtype.size_in_bytes());
    let (p0, p1) = params(op);
    let n = n as u64;
    let mut builder = backend.stream().launch_builder(&function);
    builder.arg(x).arg(out).arg(&n).arg(&p0).arg(&p1);
    if let Plan::Strided(g) = plan {
        builder.arg(g);
    }
    // SAFETY: the arguments match the kernel's signature (input pointer, output pointer, u64
    // count, two floats, and for the strided variant the by-value geometry, laid out like
    // `EwGeometry`); `out` holds n elements and the geometry's offsets stay inside the view.
    unsafe { builder.launch(config) }?;
    Ok(())
}

/// `a ∘ b` with broadcasting on the CUDA device both live on; allocates the output.
pub fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let name = op.name();
    let dtype = a.dtype();
    check_dtype(name, dtype)?;
    if a.device() != b.device() {
        return Err(Error::DeviceMismatch {
            op: name,
            lhs: a.device(),
            rhs: b.device(),
        });
    }
    if b.dtype() != dtype {
        return Err(Error::DTypeMismatch {
            op: name,
            got: b.dtype(),
            expected: Some(dtype),
        });
    }
    let ordinal = a.cuda_storage(name)?.ordinal;
    let backend = l4_core::cuda::backend(ordinal)?;
    let shape = broadcast_shape(name, a.shape(), b.shape())?;
    let n = elem_count(&shape);
    if n == 0 {
        return empty_output(&backend, dtype, &shape);
    }
    let (la, lb) = (a.layout().broadcast_as(&shape)?, b.layout().broadcast_as(&shape)?);
    let plan = plan(name, &shape, &[la.strides(), lb.strides()])?;
    let (a_bytes, b_bytes) = (operand_view(a, name, "a")?, operand_view(b, name, "b")?);
    let mut out = alloc_out(&backend, name, dtype, n)?;
    launch_binary(&backend, op, dtype, &plan, &a_bytes, &b_bytes, &mut out, n)?;
    output_tensor(out, dtype, ordinal, &shape)
}

/// Launches `op` on `n` output elements: `out[i] = a[offset_a(i)] ∘ b[offset_b(i)]`, the
/// offsets from `plan` (contiguous: `i` for both). `a` and `b` start at their views' first
/// elements.
#[allow(clippy::too_many_arguments)]
pub fn launch_binary(
    backend: &CudaBackend,
    op: BinaryOp,
    dtype: DType,
    plan: &Plan,
    a: &CudaView<'_, u8>,
    b: &CudaView<'_, u8>,
    out: &mut CudaSlice<u8>,
    n: usize,
) -> Result<()> {
    let fname = binary_function_name(op, dtype, matches!(plan, Plan::Strided(_)))?;
    check_out(op.name(), out, dtype, n)?;
    check_input(op.name(), plan, 0, a, dtype, n)?;
    check_input(op.name(), plan, 1, b, dtype, n)?;
    let function = load_function(backend, &ELEMENTWISE, &fname)?;
    let config = launch_config(backend, plan, n, 16 / dtype.size_in_bytes());
    let n = n as u64;
    let mut builder = backend.stream().launch_builder(&function);
    builder.arg(a).arg(b).arg(out).arg(&n);
    if let Plan::Strided(g) = plan {
        builder.arg(g);
    }
    // SAFETY: the arguments match the kernel's signature (two input pointers, the output
    // pointer, u64 count, and for the strided variant the by-value geometry laid out like
    // `EwGeometry`); `out` holds n elements and the offsets stay inside both views.
    unsafe { builder.launch(config) }?;
    Ok(())
}

/// Fails unless `out` holds `n > 0` elements of `dtype` (an internal-consistency check: the
/// kernels write exactly n elements).
pub fn check_out(op: &'static str, out: &CudaSlice<u8>, dtype: DType, n: usize) -> Result<()> {
    if n == 0 || out.len() < n * dtype.size_in_bytes() {
        return Err(Error::invalid(
            op,
            format!(
                "internal: an output of {} bytes cannot hold {n} {dtype} elements",
                out.len()
            ),
        ));
    }
    Ok(())
}

/// Fails unless input `k` of a launch (`x` or `a`: 0, `b`: 1) holds every element the plan
/// reads for `n` outputs.
pub fn check_input(
    op: &'static str,
    plan: &Plan,
    k: usize,
    input: &CudaView<'_, u8>,
    dtype: DType,
    n: usize,
) -> Result<()> {
    let needed = match plan {
        Plan::Contiguous => n as u64,
        Plan::Strided(g) => g.extent(k),
    };
    if (input.len() as u64) < needed * dtype.size_in_bytes() as u64 {
        return Err(Error::invalid(
            op,
            format!(
                "internal: an input of {} bytes cannot hold the {needed} {dtype} elements the launch reads",
                input.len()
            ),
        ));
    }
    Ok(())
}
