//! Throughput conventions used by every l4lab benchmark.
//!
//! * **FLOPs** count one multiply and one add as two operations: a GEMM of `[m, k] x [k, n]` is
//!   `2·m·n·k` FLOPs. Criterion has no FLOP unit, so benches report FLOPs as criterion
//!   "elements" (`Throughput::ElementsAndBytes`): read `elem/s` as FLOP/s.
//! * **Bytes** are the compulsory traffic: every input read once and every output written once,
//!   at the dtype's size. Re-reads that a kernel makes are not counted, so bytes/s is a lower
//!   bound on achieved bandwidth and compares directly with the device's peak.
//! * A memory-bound op (softmax, norms) reports elements as the number of tensor elements.
//!   Only the GEMM groups (names containing `matmul` or `gemm`) and prefill attention
//!   (`attention_prefill`, FLOPs of the visible pairs) report FLOPs as elements; every other
//!   group's elements are tensor elements, and its bytes/s is what to compare with the card.
//!   Groups with `fp8` in the name are read against the FP8 peak, the other GEMMs against bf16.
//! * **Fraction of peak**: [`DevicePeaks`] holds the datasheet peaks of the cards l4lab runs on,
//!   detected from the device name; `tools/gpu_summary.py` divides the measured FLOP/s and bytes/s
//!   by them (its table mirrors this one).

use criterion::Throughput;
use l4_core::DType;

/// Throughput of a GEMM `[m, k] x [k, n] -> [m, n]`: FLOPs as elements, compulsory bytes.
pub fn matmul(m: usize, n: usize, k: usize, input: DType, output: DType) -> Throughput {
    let flops = 2 * m * n * k;
    let bytes = (m * k + k * n) * input.size_in_bytes() + m * n * output.size_in_bytes();
    Throughput::ElementsAndBytes {
        elements: flops as u64,
        bytes: bytes as u64,
    }
}

/// Throughput of an op that reads `elements` values and writes as many, of `dtype`.
pub fn elementwise(elements: usize, dtype: DType) -> Throughput {
    let bytes = 2 * elements * dtype.size_in_bytes();
    Throughput::ElementsAndBytes {
        elements: elements as u64,
        bytes: bytes as u64,
    }
}

/// Throughput of an op that reads two tensors of `elements` values and writes one.
pub fn binary_elementwise(elements: usize, dtype: DType) -> Throughput {
    let bytes = 3 * elements * dtype.size_in_bytes();
    Throughput::ElementsAndBytes {
        elements: elements as u64,
        bytes: bytes as u64,
    }
}

/// Throughput of an op that reads `elements` values of `from` and writes as many of `to` (a
/// cast).
pub fn cast(elements: usize, from: DType, to: DType) -> Throughput {
    let bytes = elements * (from.size_in_bytes() + to.size_in_bytes());
    Throughput::ElementsAndBytes {
        elements: elements as u64,
        bytes: bytes as u64,
    }
}

/// Throughput of a row gather (embedding lookup): `rows` ids of `id_dtype` select rows of
/// `width` values of `dtype`, each read once and written once.
pub fn gather_rows(rows: usize, width: usize, dtype: DType, id_dtype: DType) -> Throughput {
    let elements = rows * width;
    let bytes = 2 * elements * dtype.size_in_bytes() + rows * id_dtype.size_in_bytes();
    Throughput::ElementsAndBytes {
        elements: elements as u64,
        bytes: bytes as u64,
    }
}

/// Throughput of a top-k over `rows` rows of `cols` values of `dtype`: the input read once, `k`
/// values and `k` I64 indices written per row.
pub fn topk(rows: usize, cols: usize, k: usize, dtype: DType) -> Throughput {
    let bytes = rows * cols * dtype.size_in_bytes() + rows * k * (dtype.size_in_bytes() + DType::I64.size_in_bytes());
    Throughput::ElementsAndBytes {
        elements: (rows * cols) as u64,
        bytes: bytes as u64,
    }
}

/// Datasheet peaks of a card, dense (without the 2:4-sparsity doubling that datasheets headline).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DevicePeaks {
    /// Which datasheet the figures come from, e.g. `H100 SXM5`.
    pub card: &'static str,
    /// Dense bf16/f16 tensor-core FLOP/s.
    pub bf16_flops: f64,
    /// Dense FP8 tensor-core FLOP/s.
    pub fp8_flops: f64,
    /// HBM bytes/s.
    pub hbm_bytes_per_s: f64,
}

/// H100 SXM5 (also H800 SXM, which has the same SMs, clocks and HBM3): 989.4 TFLOP/s dense
/// bf16, 1978.9 TFLOP/s dense FP8, 3.35 TB/s HBM3.
pub const H100_SXM: DevicePeaks = DevicePeaks {
    card: "H100 SXM5",
    bf16_flops: 989.4e12,
    fp8_flops: 1978.9e12,
    hbm_bytes_per_s: 3.35e12,
};

/// H200 SXM (the same GH100 compute as H100 SXM5, with 141 GB of HBM3e): 989 TFLOP/s dense bf16,
/// 1979 TFLOP/s dense FP8, 4.8 TB/s.
pub const H200_SXM: DevicePeaks = DevicePeaks {
    card: "H200 SXM",
    bf16_flops: 989.4e12,
    fp8_flops: 1978.9e12,
    hbm_bytes_per_s: 4.8e12,
};

impl DevicePeaks {
    /// The peaks for a CUDA device name as the driver reports it ("NVIDIA H100 80GB HBM3",
    /// "NVIDIA H200"); `None` for cards whose datasheet is not in this table (PCIe and NVL
    /// variants have other clocks, power limits and memory, so they are not guessed).
    pub fn for_device_name(name: &str) -> Option<DevicePeaks> {
        let upper = name.to_ascii_uppercase();
        if upper.contains("PCIE") || upper.contains("NVL") {
            return None;
        }
        if upper.contains("H100") || upper.contains("H800") {
            Some(H100_SXM)
        } else if upper.contains("H200") {
            Some(H200_SXM)
        } else {
            None
        }
    }

    /// The fraction of the roofline a measurement reaches: the time the card's peaks allow
    /// for `flops` at `flop_rate` and `bytes` (whichever bound is slower) over the measured
    /// `seconds`. 1.0 means at the roofline.
    pub fn roofline_fraction(&self, flops: f64, flop_rate: f64, bytes: f64, seconds: f64) -> f64 {
        let bound = (flops / flop_rate).max(bytes / self.hbm_bytes_per_s);
        bound / seconds
    }

    /// One line naming the datasheet and its peaks, for bench logs.
    pub fn describe(&self) -> String {
        format!(
            "{} datasheet: {:.0} TFLOP/s dense bf16, {:.0} TFLOP/s dense FP8, {:.2} TB/s HBM",
            self.card,
            self.bf16_flops / 1e12,
            self.fp8_flops / 1e12,
            self.hbm_bytes_per_s / 1e12
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_counts_two_flops_per_multiply_add() {
        match matmul(2, 3, 4, DType::BF16, DType::F32) {
            Throughput::ElementsAndBytes { elements, bytes } => {
                assert_eq!(elements, 48);
                assert_eq!(bytes, (8 + 12) * 2 + 6 * 4);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn peaks_come_from_the_device_name() {
        assert_eq!(DevicePeaks::for_device_name("NVIDIA H100 80GB HBM3"), Some(H100_SXM));
        assert_eq!(DevicePeaks::for_device_name("NVIDIA H200"), Some(H200_SXM));
        assert_eq!(DevicePeaks::for_device_name("NVIDIA H100 PCIe"), None);
        assert_eq!(DevicePeaks::for_device_name("NVIDIA H200 NVL"), None);
        assert_eq!(DevicePeaks::for_device_name("NVIDIA A100-SXM4-80GB"), None);
        // A GEMM of 989.4 GFLOP in 2 ms on an H100 is at half the compute roofline.
        let f = H100_SXM.roofline_fraction(989.4e9, H100_SXM.bf16_flops, 1e6, 2e-3);
        assert!((f - 0.5).abs() < 1e-9, "{f}");
        // 3.35 GB in 2 ms is at half the memory roofline.
        let f = H100_SXM.roofline_fraction(1.0, H100_SXM.bf16_flops, 3.35e9, 2e-3);
        assert!((f - 0.5).abs() < 1e-9, "{f}");
    }

    #[test]
    fn memory_bound_units_count_compulsory_bytes() {
        let bytes = |t: Throughput| match t {
            Throughput::ElementsAndBytes { bytes, .. } => bytes,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(bytes(cast(10, DType::BF16, DType::F8E4M3)), 30);
        assert_eq!(bytes(gather_rows(2, 8, DType::BF16, DType::I64)), 2 * 16 * 2 + 16);
        assert_eq!(bytes(topk(3, 16, 1, DType::F32)), 3 * 16 * 4 + 3 * (4 + 8));
    }
}
