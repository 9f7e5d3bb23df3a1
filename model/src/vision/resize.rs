//! Antialiased bilinear resizing of 8-bit RGB images, as HF's Llama 4 image processor does it:
//! torchvision's `resize(antialias=True)` on a uint8 tensor, which on x86 CPUs with AVX2 (and
//! on ARM) runs PyTorch's native uint8 path (`_upsample_bilinear2d_aa`, after Pillow's
//! `ImagingResample`).
//!
//! The image is resampled separably, width first, then height, each pass skipped when that side
//! keeps its size. Per output sample, a triangle filter stretched by the scale when shrinking
//! (`support = max(scale, 1)`) gives weights, normalised in f64 and rounded to int16 at the
//! largest precision that keeps the axis's largest weight below 2^15; the sum of
//! `pixel · weight` plus half an LSB is shifted down and clamped to 0..=255, and the width pass
//! rounds to 8 bits before the height pass reads it. Integer arithmetic: the result is exact,
//! bit for bit what PyTorch computes (checked against HF's processor on the fixture images).

/// One axis of a resampling: per output index, the first input index, how many inputs it
/// reads, and their int16 weights (rows `taps` wide) at a precision shared by the axis.
#[derive(Debug)]
struct Axis {
    first: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<i32>, // [output, taps]
    taps: usize,
    precision: u32,
}

/// PyTorch's `HelperInterpLinear::aa_filter` (Pillow's bilinear filter).
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// `_compute_indices_min_size_weights_aa` and `_compute_index_ranges_int16_weights`
/// (aten/src/ATen/native/cpu/UpSampleKernel.cpp), for `input → output` samples.
fn axis(input: usize, output: usize) -> Axis {
    let scale = input as f64 / output as f64;
    let support = if scale >= 1.0 { scale } else { 1.0 };
    let taps = support.ceil() as usize * 2 + 1;
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let mut first = Vec::with_capacity(output);
    let mut len = Vec::with_capacity(output);
    let mut real = vec![0.0f64; output * taps];
    let mut largest = 0.0f64;
    for (i, row) in real.chunks_mut(taps).enumerate() {
        let center = scale * (i as f64 + 0.5);
        // `as i64` truncates toward zero, as C++'s static_cast does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xsize = (((center + support + 0.5) as i64).min(input as i64) - xmin).clamp(0, taps as i64);
        let mut total = 0.0;
        for (j, w) in row.iter_mut().take(xsize as usize).enumerate() {
            *w = triangle(((j as i64 + xmin) as f64 - center + 0.5) * invscale);
            total += *w;
        }
        if total != 0.0 {
            for w in row.iter_mut().take(xsize as usize) {
                *w /= total;
                largest = largest.max(*w);
            }
        }
        first.push(xmin as usize);
        len.push(xsize as usize);
    }
    let mut precision = 0;
    while precision < 22 {
        let next = (0.5 + largest * f64::from(1u32 << (precision + 1))) as i32;
        if next >= 1 << 15 {
            break;
        }
        precision += 1;
    }
    let weights = real
        .iter()
        .map(|&w| {
            let v = w * f64::from(1u32 << precision);
            if v < 0.0 { (-0.5 + v) as i32 } else { (0.5 + v) as i32 }
        })
        .collect();
    Axis {
        first,
        len,
        weights,
        taps,
        precision,
    }
}

impl Axis {
    /// Output sample `o` from the inputs `read(i)` of this axis.
    fn sample(&self, o: usize, read: impl Fn(usize) -> u8) -> u8 {
        let weights = &self.weights[o * self.taps..][..self.len[o]];
        let mut acc: i32 = 1 << (self.precision - 1);
        for (j, &w) in weights.iter().enumerate() {
            acc += i32::from(read(self.first[o] + j)) * w;
        }
        (acc >> self.precision).clamp(0, 255) as u8
    }
}

/// `pixels` (`height × width × 3`, row-major, channels interleaved) resized to
/// `new_height × new_width`.
pub fn resize_rgb(pixels: &[u8], height: usize, width: usize, new_height: usize, new_width: usize) -> Vec<u8> {
    let mut current = pixels.to_vec();
    let mut current_width = width;
    if new_width != width {
        let ax = axis(width, new_width);
        let mut out = vec![0u8; height * new_width * 3];
        for y in 0..height {
            let row = &current[y * width * 3..][..width * 3];
            for x in 0..new_width {
                for c in 0..3 {
                    out[(y * new_width + x) * 3 + c] = ax.sample(x, |i| row[i * 3 + c]);
                }
            }
        }
        current = out;
        current_width = new_width;
    }
    if new_height != height {
        let ax = axis(height, new_height);
        let w = current_width;
        let mut out = vec![0u8; new_height * w * 3];
        for y in 0..new_height {
            for x in 0..w {
                for c in 0..3 {
                    out[(y * w + x) * 3 + c] = ax.sample(y, |i| current[(i * w + x) * 3 + c]);
                }
            }
        }
        current = out;
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_a_copy_and_a_flat_image_stays_flat() {
        let pixels: Vec<u8> = (0..4 * 5 * 3).map(|v| (v * 7 % 256) as u8).collect();
        assert_eq!(resize_rgb(&pixels, 4, 5, 4, 5), pixels);
        // Weights of every output sum to 1 (up to the int16 rounding, which stays below half
        // an LSB of the result for 8-bit inputs): a constant image is unchanged either way.
        let flat = vec![200u8; 7 * 9 * 3];
        for (h, w) in [(3, 4), (13, 20), (7, 2)] {
            assert!(resize_rgb(&flat, 7, 9, h, w).iter().all(|&v| v == 200), "{h}x{w}");
        }
    }

    #[test]
    fn shrinking_by_two_averages_pairs() {
        // One row of 4 pixels → 2: scale 2, so the triangle is 2 wide on each side.
        let row: Vec<u8> = [10u8, 20, 30, 40].iter().flat_map(|&v| [v, v, v]).collect();
        let out = resize_rgb(&row, 1, 4, 1, 2);
        // center 1: taps x = 0, 1, 2 with filter |x + 0.5 - 1| / 2 → 0.75, 0.75, 0.25 → /1.75.
        let want0 = ((0.75 * 10.0 + 0.75 * 20.0 + 0.25 * 30.0) / 1.75f64).round() as u8;
        let want1 = ((0.25 * 20.0 + 0.75 * 30.0 + 0.75 * 40.0) / 1.75f64).round() as u8;
        assert_eq!((out[0], out[3]), (want0, want1));
    }
}
