//! The vision encoder's 2-D rotary embedding (llama4-spec.md §5.4).
//!
//! Each head vector is read as `dhv/2` adjacent pairs `(x[2j], x[2j+1])`, as in the text RoPE.
//! A patch at column `x`, row `y` of the grid turns pair `j < dhv/4` by `(x+1)·f_j` and pair
//! `j ≥ dhv/4` by `(y+1)·f_(j−dhv/4)`, with `f_i = θ^(−2i/(dhv/2))`; the class token (the last
//! position) does not turn at all. One table serves every layer and head.

use l4_core::{DType, Device, Result, Tensor};
use l4_kernels::ops;

use super::spec::VisionSpec;

/// `cos` and `sin` of every position's angles, on the model's device.
#[derive(Clone, Debug)]
pub struct Rope2d {
    cos: Tensor, // [1, np + 1, 1, dhv/2, 1]
    sin: Tensor, // [1, np + 1, 1, dhv/2, 1]
}

/// The angles `[np + 1, dhv/2]`, row-major, computed as HF does in f32: `f_i = 1 / θ^(f32(2i) /
/// f32(dhv/2))` and angle `f32(x + 1)·f_i`; the class token's row is 0.
pub fn angles(grid: usize, head_dim: usize, theta: f64) -> Vec<f32> {
    let pairs = head_dim / 2;
    let quarter = head_dim / 4;
    let freqs: Vec<f32> = (0..quarter)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / pairs as f32))
        .collect();
    let mut table = vec![0.0f32; (grid * grid + 1) * pairs];
    for (idx, row) in table.chunks_mut(pairs).take(grid * grid).enumerate() {
        let (x, y) = ((idx % grid + 1) as f32, (idx / grid + 1) as f32);
        for (i, &f) in freqs.iter().enumerate() {
            row[i] = x * f;
            row[quarter + i] = y * f;
        }
    }
    table
}

impl Rope2d {
    /// The table of `spec`, in `dtype` on `device`.
    pub fn new(spec: &VisionSpec, dtype: DType, device: Device) -> Result<Self> {
        let positions = spec.num_patches() + 1;
        let pairs = spec.head_dim / 2;
        let angles = angles(spec.grid(), spec.head_dim, spec.rope_theta);
        let table = |f: fn(f32) -> f32| {
            let values = angles.iter().map(|&a| f(a)).collect();
            Tensor::from_f32_vec(values, &[1, positions, 1, pairs, 1], dtype, device)
        };
        Ok(Rope2d {
            cos: table(f32::cos)?,
            sin: table(f32::sin)?,
        })
    }

    /// Rotates `x [n, np + 1, hv, dhv]` (`np + 1` positions in the encoder's order: patches
    /// row-major, then the class token).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let [n, positions, heads, head_dim] = x.shape()[..] else {
            return Err(l4_core::Error::BadShape {
                op: "vision rope",
                shape: x.shape().to_vec(),
                msg: "expected [tiles, positions, heads, head_dim]".into(),
            });
        };
        let pairs = ops::contiguous(x)?.reshape(&[n, positions, heads, head_dim / 2, 2])?;
        let (re, im) = (pairs.narrow(4, 0, 1)?, pairs.narrow(4, 1, 1)?); // [n, np + 1, hv, dhv/2, 1]
        // (re + i·im)·(cos + i·sin)
        let out_re = ops::sub(&ops::mul(&re, &self.cos)?, &ops::mul(&im, &self.sin)?)?;
        let out_im = ops::add(&ops::mul(&re, &self.sin)?, &ops::mul(&im, &self.cos)?)?;
        ops::cat(&[&out_re, &out_im], 4)?.reshape(&[n, positions, heads, head_dim])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn angles_follow_the_grid_and_the_class_token_is_still() {
        // grid 2, head width 8: pairs 0-1 turn with x, pairs 2-3 with y; f = [1, θ^(-1/2)].
        let a = angles(2, 8, 100.0);
        let f1 = 1.0 / 100f32.powf(0.5);
        // patch 3 is (x, y) = (1, 1): both coordinates + 1 = 2.
        assert_eq!(&a[12..16], &[2.0, 2.0 * f1, 2.0, 2.0 * f1]);
        // patch 1 is (x, y) = (1, 0).
        assert_eq!(&a[4..8], &[2.0, 2.0 * f1, 1.0, f1]);
        assert_eq!(&a[16..20], &[0.0; 4], "class token");
    }
}
