//! Rotary position embedding in Llama 4's adjacent-pair (complex) form, with llama3 scaling.
//!
//! Each head vector is read as `dh/2` complex numbers `(x[2j], x[2j+1])`, each multiplied by
//! `cis(p·θ_j)`. This is NOT the rotate-half form of Llama 1–3: HF's Llama 4 checkpoints keep
//! Meta's interleaved q/k layout.

use l4_core::{Device, Result, Tensor};

use crate::spec::{Llama3Scaling, RopeSpec};

/// The inverse frequencies `θ_j` of one head, j = 0..dh/2, after llama3 scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct RotaryTable {
    inv_freq: Vec<f32>, // [dh/2]
}

/// llama3 scaling of one inverse frequency. The three bands are selected, never blended across
/// a zero-width band: with `low_freq_factor == high_freq_factor` (Scout's 1/1) the middle band
/// is empty and the blend formula would divide by zero.
fn llama3_scaled(inv_freq: f64, s: &Llama3Scaling) -> f64 {
    let original = s.original_max_position as f64;
    let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
    let low_freq_wavelen = original / s.low_freq_factor;
    let high_freq_wavelen = original / s.high_freq_factor;
    if wavelen < high_freq_wavelen {
        inv_freq
    } else if wavelen > low_freq_wavelen {
        inv_freq / s.factor
    } else {
        let smooth = (original / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * inv_freq / s.factor + smooth * inv_freq
    }
}

impl RotaryTable {
    /// The table for heads of width `head_dim` (even).
    pub fn new(rope: &RopeSpec, head_dim: usize) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|j| {
                // HF: 1 / theta^(2j / dh), in f32 from an integer arange.
                let base = 1.0 / rope.theta.powf((2 * j) as f64 / head_dim as f64);
                let base = base as f32 as f64;
                let scaled = rope.scaling.as_ref().map_or(base, |s| llama3_scaled(base, s));
                scaled as f32
            })
            .collect();
        RotaryTable { inv_freq }
    }

    /// The inverse frequencies `θ_j`.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// The inverse frequencies as an f32 tensor `[dh/2]` on `device`, the form the fused QK
    /// prologue reads.
    pub fn inv_freq_on(&self, device: Device) -> Result<Tensor> {
        Tensor::from_vec(self.inv_freq.clone(), &[self.inv_freq.len()], Device::Cpu)?.to_device(device)
    }

    /// Rotates `x [b, t, heads, dh]` whose token `i` sits at absolute position `start + i`, on
    /// `x`'s device (the angle `f32(p)·θ_j` rounded to f32 first, as HF computes it).
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        l4_kernels::ops::rope(x, &self.inv_freq, start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_with_equal_factors_keeps_high_and_divides_low_frequencies() {
        // Scout: factor 16, low = high = 1, original 8192: dh 128 keeps j < 35, divides j >= 35.
        let rope = RopeSpec {
            theta: 500_000.0,
            scaling: Some(Llama3Scaling {
                factor: 16.0,
                low_freq_factor: 1.0,
                high_freq_factor: 1.0,
                original_max_position: 8192,
            }),
        };
        let scaled = RotaryTable::new(&rope, 128);
        let plain = RotaryTable::new(
            &RopeSpec {
                theta: 500_000.0,
                scaling: None,
            },
            128,
        );
        for j in 0..64 {
            let ratio = plain.inv_freq()[j] / scaled.inv_freq()[j];
            let expected = if j < 35 { 1.0 } else { 16.0 };
            assert!((ratio - expected).abs() < 1e-5, "j={j}: ratio {ratio}");
            assert!(scaled.inv_freq()[j].is_finite());
        }
    }

    #[test]
    fn rotation_pairs_adjacent_elements() {
        // One head of width 4, theta chosen so θ_0 = 1: position 1 rotates (x0, x1) by 1 rad.
        let table = RotaryTable::new(
            &RopeSpec {
                theta: 10_000.0,
                scaling: None,
            },
            4,
        );
        let x = Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 0.0], &[1, 1, 1, 4], l4_core::Device::Cpu).unwrap();
        let y = table.apply(&x, 1).unwrap().to_f32_vec().unwrap();
        assert!(
            (y[0] - 1f32.cos()).abs() < 1e-6 && (y[1] - 1f32.sin()).abs() < 1e-6,
            "{y:?}"
        );
        assert_eq!(&y[2..], &[0.0, 0.0]);
    }
}
