//! Pixel shuffle (llama4-spec.md §5.5): each `r × r` block of the patch grid becomes one token
//! whose features are the block's patches side by side, cutting the tokens per tile by `r²`.
//!
//! On the `g × g` grid `X`, output token `(i, j)` (row-major over `g/r × g/r`) is the
//! concatenation of `X[r·i + dy][r·j + dx]` for `dy` in `0..r`, then `dx` in `0..r`: the
//! features are ordered `(dy, dx, channel)`. This is HF's view/permute sequence written as one
//! permutation; both are pure data movement, so the result is exact.

use l4_core::{Error, Result, Tensor};
use l4_kernels::ops;

fn grid_of(x: &Tensor, op: &'static str) -> Result<(usize, usize, usize)> {
    let [n, patches, c] = x.shape()[..] else {
        return Err(Error::BadShape {
            op,
            shape: x.shape().to_vec(),
            msg: "expected [tiles, tokens, channels]".into(),
        });
    };
    Ok((n, patches, c))
}

/// `x [n, g², c]` → `[n, (g/r)², r²·c]`.
pub fn pixel_shuffle(x: &Tensor, r: usize) -> Result<Tensor> {
    let (n, patches, c) = grid_of(x, "pixel_shuffle")?;
    let g = (patches as f64).sqrt().round() as usize;
    if g * g != patches || r == 0 || !g.is_multiple_of(r) {
        return Err(Error::BadShape {
            op: "pixel_shuffle",
            shape: x.shape().to_vec(),
            msg: format!("{patches} patches are not a square grid divisible by {r}"),
        });
    }
    let side = g / r;
    let blocks = ops::contiguous(x)?.reshape(&[n, side, r, side, r, c])?; // [n, i, dy, j, dx, c]
    let tokens = blocks.permute(&[0, 1, 3, 2, 4, 5])?; // [n, i, j, dy, dx, c]
    ops::contiguous(&tokens)?.reshape(&[n, side * side, r * r * c])
}

/// The inverse of [`pixel_shuffle`]: `[n, (g/r)², r²·c]` → `[n, g², c]`.
pub fn pixel_unshuffle(x: &Tensor, r: usize) -> Result<Tensor> {
    let (n, tokens, wide) = grid_of(x, "pixel_unshuffle")?;
    let side = (tokens as f64).sqrt().round() as usize;
    if side * side != tokens || r == 0 || !wide.is_multiple_of(r * r) {
        return Err(Error::BadShape {
            op: "pixel_unshuffle",
            shape: x.shape().to_vec(),
            msg: format!("{tokens} tokens of width {wide} are not a square grid of {r}x{r} blocks"),
        });
    }
    let c = wide / (r * r);
    let blocks = ops::contiguous(x)?.reshape(&[n, side, side, r, r, c])?; // [n, i, j, dy, dx, c]
    let grid = blocks.permute(&[0, 1, 3, 2, 4, 5])?; // [n, i, dy, j, dx, c]
    ops::contiguous(&grid)?.reshape(&[n, side * r * side * r, c])
}

#[cfg(test)]
mod tests {
    use l4_core::Device;

    use super::*;

    #[test]
    fn tokens_are_the_blocks_patches_row_by_row() {
        // A 4x4 grid of one-channel patches numbered 0..16 row-major, r = 2.
        let x = Tensor::from_vec((0..16).map(|v| v as f32).collect(), &[1, 16, 1], Device::Cpu).unwrap();
        let y = pixel_shuffle(&x, 2).unwrap();
        assert_eq!(y.shape(), &[1, 4, 4]);
        #[rustfmt::skip]
        let want = [
            0.0, 1.0, 4.0, 5.0,      2.0, 3.0, 6.0, 7.0,
            8.0, 9.0, 12.0, 13.0,    10.0, 11.0, 14.0, 15.0,
        ];
        assert_eq!(y.to_f32_vec().unwrap(), want);
    }
}
