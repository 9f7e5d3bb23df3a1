//! Throughput conventions used by every l4lab benchmark.
//!
//! * **FLOPs** count one multiply and one add as two operations: a GEMM of `[m, k] x [k, n]` is
//!   `2·m·n·k` FLOPs. Criterion has no FLOP unit, so benches report FLOPs as criterion
//!   "elements" (`Throughput::ElementsAndBytes`): read `elem/s` as FLOP/s.
//! * **Bytes** are the compulsory traffic: every input read once and every output written once,
//!   at the dtype's size. Re-reads that a kernel makes are not counted, so bytes/s is a lower
//!   bound on achieved bandwidth and compares directly with the device's peak.
//! * A memory-bound op (softmax, norms) reports elements as the number of tensor elements.

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
}
