//! The CPU reference for `attention_decode`, which is also its CPU backend: for each row, the
//! visible keys' scores in f64, a max-subtracted softmax in f64, the weighted sum of values in
//! f64, rounded once into the dtype.

use l4_core::{Device, Result, Tensor};

use super::{DecodeShape, PagedDecodeShape};
use crate::paged_kv::PagedKv;

/// See [`super::decode_attention`]; the operands are checked.
pub fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor, shape: DecodeShape) -> Result<Tensor> {
    windowed(q, k, v, shape, None)
}

/// See [`super::paged_decode_attention`]: the cache gathered into contiguous keys and values
/// through its block tables, then the same loops with the chunk's window.
pub fn paged_decode_attention(q: &Tensor, cache: &PagedKv, shape: PagedDecodeShape) -> Result<Tensor> {
    let (k, v) = cache.gather()?;
    let contiguous = DecodeShape {
        tq: shape.tq,
        q_start: shape.q_start,
        k_start: cache.base(),
        scale: shape.scale,
    };
    windowed(q, &k, &v, contiguous, shape.chunk)
}

/// Keys at positions after the row's, or (with a chunk) before the row's chunk, are hidden.
fn windowed(q: &Tensor, k: &Tensor, v: &Tensor, shape: DecodeShape, chunk: Option<usize>) -> Result<Tensor> {
    let (b, hk, rows, dh) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    let keys = k.shape()[2];
    let (qv, kv, vv) = (q.to_f64_vec()?, k.to_f64_vec()?, v.to_f64_vec()?);
    let mut out = vec![0f64; b * hk * rows * dh];
    for group in 0..b * hk {
        for r in 0..rows {
            let q_pos = shape.q_start + r % shape.tq;
            let q_row = &qv[(group * rows + r) * dh..(group * rows + r + 1) * dh];
            let visible = (q_pos + 1).saturating_sub(shape.k_start).min(keys);
            let first = chunk.map_or(0, |c| (q_pos - q_pos % c).saturating_sub(shape.k_start));
            let scores: Vec<f64> = (first..visible)
                .map(|j| {
                    let k_row = &kv[(group * keys + j) * dh..(group * keys + j + 1) * dh];
                    shape.scale * q_row.iter().zip(k_row).map(|(a, b)| a * b).sum::<f64>()
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            let o = &mut out[(group * rows + r) * dh..(group * rows + r + 1) * dh];
            for (j, w) in (first..visible).zip(&weights) {
                let v_row = &vv[(group * keys + j) * dh..(group * keys + j + 1) * dh];
                for (acc, x) in o.iter_mut().zip(v_row) {
                    *acc += w / total * x;
                }
            }
        }
    }
    let storage = l4_core::CpuStorage::from_f64_iter(q.dtype(), out.into_iter());
    Tensor::from_cpu_storage(storage, q.shape())?.to_device(Device::Cpu)
}
