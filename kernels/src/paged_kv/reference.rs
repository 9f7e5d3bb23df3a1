//! The CPU side of `paged_kv`, which is also the reference for its kernels: byte copies of
//! whole `DH`-element rows between a tensor and the pool through the block tables.

use l4_core::{DType, Result, Tensor};

use super::PoolLayout;

/// Byte offset in the pool of sequence `b`'s logical slot `slot` of head `kh`, for rows of
/// `row_bytes` (`DH` elements): the pool is `[NB, HK, BS]` such rows.
fn row_offset(tables: &[Vec<u32>], layout: PoolLayout, b: usize, kh: usize, slot: usize, row_bytes: usize) -> usize {
    let block = tables[b][slot >> layout.block_log2] as usize;
    let within = slot & ((1 << layout.block_log2) - 1);
    (((block * layout.heads_kv + kh) << layout.block_log2) + within) * row_bytes
}

/// Writes `x [b, hk, t, dh]` into logical slots `slot0..slot0 + t` of every sequence.
pub fn write(pool: &mut [u8], tables: &[Vec<u32>], layout: PoolLayout, x: &Tensor, slot0: usize) -> Result<()> {
    let (b, hk, t, dh) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let bytes = x.cpu_storage("paged_kv")?.gather(x.layout()).to_le_bytes();
    let row_bytes = dh * x.dtype().size_in_bytes();
    for bi in 0..b {
        for kh in 0..hk {
            for ti in 0..t {
                let src = ((bi * hk + kh) * t + ti) * row_bytes;
                let dst = row_offset(tables, layout, bi, kh, slot0 + ti, row_bytes);
                pool[dst..dst + row_bytes].copy_from_slice(&bytes[src..src + row_bytes]);
            }
        }
    }
    Ok(())
}

/// The bytes of `[b, hk, s, dh]` (`shape`) read from logical slots `0..s` of every sequence.
pub fn gather(pool: &[u8], tables: &[Vec<u32>], layout: PoolLayout, dtype: DType, shape: &[usize; 4]) -> Vec<u8> {
    let [b, hk, s, dh] = *shape;
    let row_bytes = dh * dtype.size_in_bytes();
    let mut out = Vec::with_capacity(b * hk * s * row_bytes);
    for bi in 0..b {
        for kh in 0..hk {
            for slot in 0..s {
                let src = row_offset(tables, layout, bi, kh, slot, row_bytes);
                out.extend_from_slice(&pool[src..src + row_bytes]);
            }
        }
    }
    out
}
