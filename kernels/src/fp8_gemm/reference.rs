//! The CPU reference for `fp8_gemm`, which is also its CPU backend: the exact e4m3 values
//! multiplied and summed in f64, scaled, plus bias and residual in f64, rounded once into the
//! output dtype. Rows run in parallel (rayon); each output's sum is in k order.

use float8::F8E4M3;
use l4_core::{CpuStorage, DType, Result, Tensor};
use rayon::prelude::*;

use super::{BLOCK_K, Epilogue, Fp8Scaling};
use crate::quant::{Granularity, Quantized};

/// The scales of a row-wise operand as one value per row (per-tensor broadcast).
fn row_scales(q: &Quantized, rows: usize) -> Result<Vec<f64>> {
    let scales = q.scales.to_f64_vec()?;
    Ok(match q.granularity {
        Granularity::PerTensor => vec![scales[0]; rows],
        _ => scales,
    })
}

/// See [`super::fp8_gemm`]; the operands are already checked.
pub fn fp8_gemm(
    a: &Quantized,
    b: &Quantized,
    scaling: Fp8Scaling,
    out: DType,
    epilogue: Epilogue<'_>,
) -> Result<Tensor> {
    let (m, k) = (a.values.shape()[0], a.values.shape()[1]);
    let n = b.values.shape()[0];
    let decode = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.to_vec::<F8E4M3>()?.iter().map(|c| c.to_f64()).collect()) };
    let (av, bv) = (decode(&a.values)?, decode(&b.values)?);
    let k_blocks = k.div_ceil(BLOCK_K);
    let (sa, sb) = match scaling {
        Fp8Scaling::RowWise => (row_scales(a, m)?, row_scales(b, n)?),
        Fp8Scaling::Block => (a.scales.to_f64_vec()?, b.scales.to_f64_vec()?),
    };
    let bias = epilogue.bias.map(Tensor::to_f64_vec).transpose()?;
    let residual = epilogue.residual.map(Tensor::to_f64_vec).transpose()?;
    let mut values = vec![0f64; m * n];
    values.par_chunks_mut(n.max(1)).enumerate().for_each(|(row, out_row)| {
        let a_row = &av[row * k..(row + 1) * k];
        for (col, slot) in out_row.iter_mut().enumerate() {
            let b_row = &bv[col * k..(col + 1) * k];
            let mut v = match scaling {
                Fp8Scaling::RowWise => {
                    let dot: f64 = a_row.iter().zip(b_row).map(|(x, y)| x * y).sum();
                    dot * sa[row] * sb[col]
                }
                Fp8Scaling::Block => (0..k_blocks)
                    .map(|kb| {
                        let ks = kb * BLOCK_K..((kb + 1) * BLOCK_K).min(k);
                        let dot: f64 = a_row[ks.clone()].iter().zip(&b_row[ks]).map(|(x, y)| x * y).sum();
                        dot * sa[row * k_blocks + kb] * sb[(col / BLOCK_K) * k_blocks + kb]
                    })
                    .sum(),
            };
            if let Some(bias) = &bias {
                v += bias[col];
            }
            if let Some(residual) = &residual {
                v += residual[row * n + col];
            }
            *slot = v;
        }
    });
    // Straight from f64 into the output dtype: one rounding (through f32 would be two).
    let storage = CpuStorage::from_f64_iter(out, values.into_iter());
    Tensor::from_cpu_storage(storage, &[m, n])
}
