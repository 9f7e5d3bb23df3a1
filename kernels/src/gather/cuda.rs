//! The CUDA launchers for `gather.cu`: embedding, index_select and cat as byte-exact copies.
//!
//! Indices are read back to the host and validated before any launch (an out-of-range id is an
//! [`Error::IndexOutOfRange`] naming it, never an out-of-bounds read on the device); the kernel
//! then reads the device copy of the ids when it is contiguous (a strided ids view is uploaded
//! from the validated host copy instead). Data operands must be contiguous.

use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, PushKernelArg};
use l4_core::cuda::CudaBackend;
use l4_core::layout::elem_count;
use l4_core::{DType, Error, Result, Tensor};

use crate::elementwise::cuda::{Geometry, MAX_RANK, Plan, operand_view, plan};
use crate::launch::{alloc_output, backend_of, contiguous_bytes, grid_1d, output_tensor};
use crate::{GATHER, load_function};

/// Threads per block.
const BLOCK: u32 = 256;
/// Blocks per SM at most; the grid-stride loop covers the rest.
const BLOCKS_PER_SM: usize = 8;
/// Word sizes the kernels copy with, widest first.
const WORD_SIZES: [usize; 5] = [16, 8, 4, 2, 1];

/// The widest word size (bytes) that divides every one of `values` (byte counts, offsets and
/// addresses): with it every word the kernel touches is naturally aligned.
pub fn word_size(values: &[u64]) -> usize {
    WORD_SIZES
        .into_iter()
        .find(|&w| values.iter().all(|v| v % w as u64 == 0))
        .unwrap_or(1)
}

/// The device address of a buffer (to choose word sizes by alignment).
fn address<T, P: DevicePtr<T>>(buffer: &P, stream: &CudaStream) -> u64 {
    let (ptr, _record) = buffer.device_ptr(stream);
    ptr
}

/// The entry point of `gather.cu` for an index dtype and a word size.
pub fn gather_function_name(ids: DType, word: usize) -> Result<String> {
    let index = match ids {
        DType::I32 => "i32",
        DType::I64 => "i64",
        other => {
            return Err(Error::DTypeMismatch {
                op: "gather",
                got: other,
                expected: Some(DType::I64),
            });
        }
    };
    if !WORD_SIZES.contains(&word) {
        return Err(Error::invalid(
            "gather",
            format!("internal: no {word}-byte word kernel"),
        ));
    }
    Ok(format!("gather_{index}_w{word}"))
}

/// A freshly allocated output for `n` elements of `dtype`. In unit tests it is filled with
/// `0xff` bytes (NaN in every float dtype, -1 in integers) so that an element the kernel
/// skipped cannot pass as correct; otherwise it is left uninitialised for the kernel to write.
pub(crate) fn alloc_poisoned_in_tests(
    backend: &CudaBackend,
    op: &'static str,
    dtype: DType,
    n: usize,
) -> Result<CudaSlice<u8>> {
    if cfg!(test) {
        Ok(backend.stream().clone_htod(&vec![0xffu8; n * dtype.size_in_bytes()])?)
    } else {
        alloc_output(backend, op, dtype, n)
    }
}

/// An empty CUDA tensor of `shape` (which has a zero dimension). CUDA refuses zero-byte
/// allocations, so this is an empty view of a one-element buffer.
pub(crate) fn empty_output(backend: &CudaBackend, dtype: DType, shape: &[usize]) -> Result<Tensor> {
    let bytes = backend.stream().alloc_zeros::<u8>(dtype.size_in_bytes())?;
    output_tensor(bytes, dtype, backend.info().ordinal, &[1])?
        .narrow(0, 0, 0)?
        .reshape(shape)
}

/// The ids as i64 on the host, each checked against `size`: the first bad one is an
/// [`Error::IndexOutOfRange`] naming it. Copies the ids back from the device (they are small).
fn validated_ids(op: &'static str, ids: &Tensor, size: usize) -> Result<Vec<i64>> {
    let values: Vec<i64> = match ids.dtype() {
        DType::I32 => ids.to_vec::<i32>()?.into_iter().map(i64::from).collect(),
        DType::I64 => ids.to_vec::<i64>()?,
        other => {
            return Err(Error::DTypeMismatch {
                op,
                got: other,
                expected: Some(DType::I64),
            });
        }
    };
    let in_range = |id: i64| usize::try_from(id).is_ok_and(|i| i < size);
    if let Some(&bad) = values.iter().find(|&&id| !in_range(id)) {
        return Err(Error::IndexOutOfRange { op, index: bad, size });
    }
    Ok(values)
}

/// Fails unless both tensors live on the same device.
fn same_device(op: &'static str, lhs: &Tensor, rhs: &Tensor) -> Result<()> {
    if lhs.device() != rhs.device() {
        return Err(Error::DeviceMismatch {
            op,
            lhs: lhs.device(),
            rhs: rhs.device(),
        });
    }
    Ok(())
}

/// Embedding lookup on the table's CUDA device: `table [v, d]` (any dtype, contiguous), `ids
/// [..]` (I32/I64, any shape) → `[.., d]`. Bad ids are an [`Error::IndexOutOfRange`].
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    const OP: &str = "embedding";
    if table.rank() != 2 {
        return Err(Error::BadShape {
            op: OP,
            shape: table.shape().to_vec(),
            msg: "the embedding table must be [vocab, dim]".into(),
        });
    }
    same_device(OP, table, ids)?;
    let (v, d) = (table.shape()[0], table.shape()[1]);
    let mut shape = ids.shape().to_vec();
    shape.push(d);
    select(OP, table, ids, [1, v, d], &shape)
}

/// `out[.., j, ..] = x[.., indices[j], ..]` along `dim` on `x`'s CUDA device: `x` contiguous
/// (any dtype), `indices` 1-D I32/I64.
pub fn index_select(x: &Tensor, dim: usize, indices: &Tensor) -> Result<Tensor> {
    const OP: &str = "index_select";
    if dim >= x.rank() {
        return Err(Error::DimOutOfRange {
            op: OP,
            dim,
            rank: x.rank(),
        });
    }
    if indices.rank() != 1 {
        return Err(Error::BadShape {
            op: OP,
            shape: indices.shape().to_vec(),
            msg: "indices must be 1-D".into(),
        });
    }
    same_device(OP, x, indices)?;
    let outer = elem_count(&x.shape()[..dim]);
    let inner = elem_count(&x.shape()[dim + 1..]);
    let mut shape = x.shape().to_vec();
    shape[dim] = indices.shape()[0];
    select(OP, x, indices, [outer, x.shape()[dim], inner], &shape)
}

/// `out[o, j, :] = src[o, ids[j], :]` for `src` viewed as `[outer, size, inner]`, reshaped to
/// `shape`: the shared path of embedding (`outer = 1`) and index_select.
fn select(
    op: &'static str,
    src: &Tensor,
    ids: &Tensor,
    [outer, size, inner]: [usize; 3],
    shape: &[usize],
) -> Result<Tensor> {
    let backend = backend_of(src, op)?;
    let dtype = src.dtype();
    let host_ids = validated_ids(op, ids, size)?;
    let nidx = host_ids.len();
    let n = elem_count(shape);
    if n == 0 {
        return empty_output(&backend, dtype, shape);
    }
    let src_bytes = contiguous_bytes(src, op, "input")?;
    // The device ids when they are contiguous; otherwise the validated host copy, uploaded.
    let uploaded;
    let (ids_bytes, ids_dtype) = if ids.is_contiguous() {
        (contiguous_bytes(ids, op, "ids")?, ids.dtype())
    } else {
        uploaded = backend.stream().clone_htod(&host_ids)?;
        // SAFETY: nidx i64 values are nidx·8 bytes of the same memory.
        let view = unsafe { uploaded.transmute::<u8>(nidx * 8) }
            .ok_or_else(|| Error::invalid(op, "internal: the uploaded ids are too short"))?;
        (view, DType::I64)
    };
    let mut out = alloc_poisoned_in_tests(&backend, op, dtype, n)?;
    launch_gather(
        &backend,
        &src_bytes,
        &ids_bytes,
        ids_dtype,
        &mut out,
        dtype.size_in_bytes(),
        [outer, size, nidx, inner],
    )?;
    output_tensor(out, dtype, backend.info().ordinal, shape)
}

/// Concatenation along `dim` on the CUDA device of the parts: one dtype (any), one device, the
/// same shape outside `dim`, each part contiguous. One `copy_rows` launch per non-empty part.
pub fn cat(parts: &[&Tensor], dim: usize) -> Result<Tensor> {
    const OP: &str = "cat";
    let first = *parts
        .first()
        .ok_or_else(|| Error::invalid(OP, "needs at least one tensor"))?;
    if dim >= first.rank() {
        return Err(Error::DimOutOfRange {
            op: OP,
            dim,
            rank: first.rank(),
        });
    }
    for t in &parts[1..] {
        same_device(OP, first, t)?;
        if t.dtype() != first.dtype() {
            return Err(Error::DTypeMismatch {
                op: OP,
                got: t.dtype(),
                expected: Some(first.dtype()),
            });
        }
        let same_outside = t.rank() == first.rank()
            && t.shape()
                .iter()
                .zip(first.shape())
                .enumerate()
                .all(|(d, (a, b))| d == dim || a == b);
        if !same_outside {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: first.shape().to_vec(),
                rhs: t.shape().to_vec(),
            });
        }
    }
    let backend = backend_of(first, OP)?;
    let dtype = first.dtype();
    let elem_bytes = dtype.size_in_bytes();
    let mut shape = first.shape().to_vec();
    shape[dim] = parts.iter().map(|t| t.shape()[dim]).sum();
    let outer = elem_count(&shape[..dim]);
    let inner = elem_count(&shape[dim + 1..]);
    let n = elem_count(&shape);
    if n == 0 {
        return empty_output(&backend, dtype, &shape);
    }
    // Every non-empty part as contiguous bytes (strided parts are an error before any launch).
    let sources: Vec<(CudaView<'_, u8>, usize)> = parts
        .iter()
        .enumerate()
        .filter(|(_, t)| t.elem_count() > 0)
        .map(|(i, t)| Ok((contiguous_bytes(t, OP, &format!("part {i}"))?, t.shape()[dim] * inner)))
        .collect::<Result<_>>()?;
    let out_chunk = shape[dim] * inner * elem_bytes;
    let mut out = alloc_poisoned_in_tests(&backend, OP, dtype, n)?;
    let mut offset = 0;
    for (src, chunk) in &sources {
        let chunk_bytes = chunk * elem_bytes;
        let mut dst = out.slice_mut(offset..);
        launch_copy_rows(&backend, src, &mut dst, outer, chunk_bytes, chunk_bytes, out_chunk)?;
        offset += chunk_bytes;
    }
    output_tensor(out, dtype, backend.info().ordinal, &shape)
}

/// Launches `gather_{ids}_w{word}`: `out[o, j, :] = src[o, ids[j], :]` with `src` holding
/// `[outer, size, inner]` elements of `elem_bytes` bytes, `ids` `nidx` indices of `ids_dtype`
/// (I32/I64, all in `0..size`: the caller validated them) and `out` `[outer, nidx, inner]`.
pub fn launch_gather(
    backend: &CudaBackend,
    src: &CudaView<'_, u8>,
    ids: &CudaView<'_, u8>,
    ids_dtype: DType,
    out: &mut CudaSlice<u8>,
    elem_bytes: usize,
    [outer, size, nidx, inner]: [usize; 4],
) -> Result<()> {
    const OP: &str = "gather";
    let row_bytes = inner * elem_bytes;
    let (src_need, ids_need, out_need) = (
        outer * size * row_bytes,
        nidx * ids_dtype.size_in_bytes(),
        outer * nidx * row_bytes,
    );
    if src.len() < src_need || ids.len() < ids_need || out.len() < out_need {
        return Err(Error::invalid(
            OP,
            format!(
                "buffers of {}, {} and {} bytes cannot hold [{outer}, {size}, {inner}] sources, {nidx} ids and \
                 [{outer}, {nidx}, {inner}] outputs of {elem_bytes} bytes",
                src.len(),
                ids.len(),
                out.len()
            ),
        ));
    }
    if out_need == 0 {
        return Ok(());
    }
    let stream = backend.stream();
    let word = word_size(&[row_bytes as u64, address(src, stream), address(out, stream)]);
    let function = load_function(backend, &GATHER, &gather_function_name(ids_dtype, word)?)?;
    let row_words = (row_bytes / word) as u64;
    let total = outer * nidx * (row_bytes / word);
    let config = grid_1d(backend, total, BLOCK, BLOCKS_PER_SM);
    let (outer, size, nidx) = (outer as u64, size as u64, nidx as u64);
    let mut builder = stream.launch_builder(&function);
    builder
        .arg(src)
        .arg(ids)
        .arg(out)
        .arg(&outer)
        .arg(&size)
        .arg(&nidx)
        .arg(&row_words);
    // SAFETY: the arguments match `gather_*` (three device pointers, four u64); the buffers
    // hold the element counts checked above; every id is in 0..size (validated by the caller);
    // `word` divides the row length and both base addresses, so every access is aligned.
    unsafe { builder.launch(config) }?;
    Ok(())
}

/// Launches `copy_rows_w{word}`: for `r < rows`, `dst[r·dst_stride + c] = src[r·src_stride +
/// c]` for `c < row_bytes` (all in bytes; `dst` starts at the first byte to write).
pub fn launch_copy_rows(
    backend: &CudaBackend,
    src: &CudaView<'_, u8>,
    dst: &mut CudaViewMut<'_, u8>,
    rows: usize,
    row_bytes: usize,
    src_stride: usize,
    dst_stride: usize,
) -> Result<()> {
    const OP: &str = "cat";
    if rows == 0 || row_bytes == 0 {
        return Ok(());
    }
    let last = |stride: usize| (rows - 1) * stride + row_bytes;
    if src_stride < row_bytes || dst_stride < row_bytes || src.len() < last(src_stride) || dst.len() < last(dst_stride)
    {
        return Err(Error::invalid(
            OP,
            format!(
                "buffers of {} and {} bytes cannot hold {rows} rows of {row_bytes} bytes at strides {src_stride} \
                 and {dst_stride}",
                src.len(),
                dst.len()
            ),
        ));
    }
    let stream = backend.stream();
    let word = word_size(&[
        row_bytes as u64,
        src_stride as u64,
        dst_stride as u64,
        address(src, stream),
        address(dst, stream),
    ]);
    let function = load_function(backend, &GATHER, &format!("copy_rows_w{word}"))?;
    let config = grid_1d(backend, rows * (row_bytes / word), BLOCK, BLOCKS_PER_SM);
    let args = [rows, row_bytes / word, src_stride / word, dst_stride / word].map(|v| v as u64);
    let mut builder = stream.launch_builder(&function);
    builder
        .arg(src)
        .arg(dst)
        .arg(&args[0])
        .arg(&args[1])
        .arg(&args[2])
        .arg(&args[3]);
    // SAFETY: the arguments match `copy_rows_*` (two device pointers, four u64); both buffers
    // hold every row at its stride (checked above); `word` divides the lengths, strides and
    // base addresses, so every access is aligned.
    unsafe { builder.launch(config) }?;
    Ok(())
}

/// `x`'s elements in row-major order on its CUDA device, for any strided view of any dtype:
/// one `copy_strided_w{elem_bytes}` launch over the view's merged geometry.
pub fn contiguous(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "contiguous";
    let backend = backend_of(x, OP)?;
    let dtype = x.dtype();
    let n = x.elem_count();
    if n == 0 {
        return empty_output(&backend, dtype, x.shape());
    }
    let geometry = match plan(OP, x.shape(), &[x.layout().strides()])? {
        Plan::Strided(g) => g,
        // Already one stride-1 run (a contiguous view at an offset): a single-row walk.
        Plan::Contiguous => Geometry {
            shape: [n as u64, 0, 0, 0, 0, 0, 0, 0],
            stride_a: [1, 0, 0, 0, 0, 0, 0, 0],
            stride_b: [0; MAX_RANK],
            rank: 1,
            pad: 0,
        },
    };
    let src = operand_view(x, OP, "x")?;
    let elem_bytes = dtype.size_in_bytes() as u64;
    if (src.len() as u64) < geometry.extent(0) * elem_bytes {
        return Err(Error::invalid(
            OP,
            format!(
                "internal: a view of {} bytes cannot hold the {} elements the copy reads",
                src.len(),
                geometry.extent(0)
            ),
        ));
    }
    let mut out = alloc_poisoned_in_tests(&backend, OP, dtype, n)?;
    let function = load_function(&backend, &GATHER, &format!("copy_strided_w{elem_bytes}"))?;
    let config = grid_1d(&backend, n, BLOCK, BLOCKS_PER_SM);
    let count = n as u64;
    let mut builder = backend.stream().launch_builder(&function);
    builder.arg(&src).arg(&mut out).arg(&count).arg(&geometry);
    // SAFETY: the arguments match `copy_strided_*` (two device pointers, a u64 count and the
    // by-value geometry, laid out like `CopyGeometry`); `out` holds n elements of the dtype's
    // width and every offset the geometry yields lies inside `src` (checked above).
    unsafe { builder.launch(config) }?;
    output_tensor(out, dtype, backend.info().ordinal, x.shape())
}
