//! The CPU reference for `attention_prefill`, which is also its CPU backend: for each query row,
//! the visible keys' scores in f64, a max-subtracted softmax, the weighted values, rounded once.

use l4_core::{CpuStorage, Result, Tensor};

use super::PrefillShape;

/// Whether the key at `k_pos` is visible to the query at `q_pos`.
pub fn visible(q_pos: usize, k_pos: usize, chunk: Option<usize>) -> bool {
    k_pos <= q_pos && chunk.is_none_or(|c| k_pos >= q_pos - q_pos % c)
}

/// See [`super::prefill_attention`]; the operands are checked.
pub fn prefill_attention(q: &Tensor, k: &Tensor, v: &Tensor, shape: PrefillShape) -> Result<Tensor> {
    let (b, h, t, dh) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    let (hk, s) = (k.shape()[1], k.shape()[2]);
    let group = h / hk;
    let (qv, kv, vv) = (q.to_f64_vec()?, k.to_f64_vec()?, v.to_f64_vec()?);
    let mut out = vec![0f64; b * h * t * dh];
    for bi in 0..b {
        for hi in 0..h {
            let kh = hi / group;
            let kv_row = |j: usize| ((bi * hk + kh) * s + j) * dh;
            for i in 0..t {
                let q_pos = shape.q_start + i;
                let q_row = &qv[((bi * h + hi) * t + i) * dh..][..dh];
                let keys: Vec<usize> = (0..s)
                    .filter(|&j| visible(q_pos, shape.k_start + j, shape.chunk))
                    .collect();
                if keys.is_empty() {
                    continue;
                }
                let scores: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        shape.scale
                            * q_row
                                .iter()
                                .zip(&kv[kv_row(j)..][..dh])
                                .map(|(a, b)| a * b)
                                .sum::<f64>()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                let o = &mut out[((bi * h + hi) * t + i) * dh..][..dh];
                for (w, &j) in weights.iter().zip(&keys) {
                    for (acc, x) in o.iter_mut().zip(&vv[kv_row(j)..][..dh]) {
                        *acc += w / total * x;
                    }
                }
            }
        }
    }
    Tensor::from_cpu_storage(CpuStorage::from_f64_iter(q.dtype(), out.into_iter()), q.shape())
}
