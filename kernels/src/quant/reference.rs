//! The CPU reference for `quant`, which is also its CPU backend: the rule of `quant.cu` in plain
//! loops over groups, every step a correctly rounded f32 operation.

use float8::F8E4M3;
use l4_core::{DType, Device, Element, Result, Tensor};

use super::{AMAX_FLOOR, E4M3_MAX, Granularity, Quantized};

/// The groups of a `[rows, cols]` tensor: `(row range, col range)`, row-major over the scales.
fn groups(granularity: Granularity, rows: usize, cols: usize) -> Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> {
    let (gr, gc) = granularity.group(rows, cols);
    let [grows, gcols] = granularity.scales_shape(rows, cols);
    let mut out = Vec::with_capacity(grows * gcols);
    for i in 0..grows {
        for j in 0..gcols {
            out.push((i * gr..((i + 1) * gr).min(rows), j * gc..((j + 1) * gc).min(cols)));
        }
    }
    out
}

/// The scale of one group: `max(min(amax, upper_bound), 1e-12) / 448`, amax over finite values.
pub fn group_scale(values: impl Iterator<Item = f32>, upper_bound: f32) -> f32 {
    let amax = values.map(f32::abs).filter(|a| a.is_finite()).fold(0.0f32, f32::max);
    amax.min(upper_bound).max(AMAX_FLOOR) / E4M3_MAX
}

fn quantize_inner(
    x: &Tensor,
    granularity: Granularity,
    scales: Option<Vec<f32>>,
    upper_bound: f32,
) -> Result<Quantized> {
    let (rows, cols) = (x.shape()[0], x.shape()[1]);
    let values = x.to_f32_vec()?;
    let mut codes = vec![<F8E4M3 as Element>::from_f32(0.0); rows * cols];
    let groups = groups(granularity, rows, cols);
    let mut out_scales = Vec::with_capacity(groups.len());
    for (g, (row_range, col_range)) in groups.into_iter().enumerate() {
        let elements = || {
            row_range
                .clone()
                .flat_map(|r| col_range.clone().map(move |c| r * cols + c))
        };
        let scale = match &scales {
            Some(given) => given[g],
            None => group_scale(elements().map(|i| values[i]), upper_bound),
        };
        for i in elements() {
            codes[i] = <F8E4M3 as Element>::from_f32(values[i] / scale);
        }
        out_scales.push(scale);
    }
    Ok(Quantized {
        values: Tensor::from_vec(codes, &[rows, cols], Device::Cpu)?,
        scales: Tensor::from_vec(out_scales, &granularity.scales_shape(rows, cols), Device::Cpu)?,
        granularity,
    })
}

/// See [`super::quantize`]; `upper_bound` is +∞ when there is none.
pub fn quantize(x: &Tensor, granularity: Granularity, upper_bound: f32) -> Result<Quantized> {
    quantize_inner(x, granularity, None, upper_bound)
}

/// See [`super::quantize_with_scales`].
pub fn quantize_with_scales(x: &Tensor, scales: &Tensor, granularity: Granularity) -> Result<Quantized> {
    quantize_inner(x, granularity, Some(scales.to_f32_vec()?), f32::INFINITY)
}

/// See [`super::dequantize`].
pub fn dequantize(q: &Quantized, dtype: DType) -> Result<Tensor> {
    let (rows, cols) = (q.values.shape()[0], q.values.shape()[1]);
    let (gr, gc) = q.granularity.group(rows, cols);
    let gcols = q.granularity.scales_shape(rows, cols)[1];
    let codes = q.values.to_vec::<F8E4M3>()?;
    let scales = q.scales.to_f32_vec()?;
    let values = codes
        .iter()
        .enumerate()
        .map(|(i, code)| {
            let (r, c) = (i / cols.max(1), i % cols.max(1));
            code.to_f32() * scales[(r / gr) * gcols + c / gc]
        })
        .collect();
    Tensor::from_f32_vec(values, &[rows, cols], dtype, Device::Cpu)
}
