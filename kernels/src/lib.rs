//! `l4-kernels`: l4lab's hand-written CUDA kernels and the machinery that runs them.
//!
//! Every kernel lives in its own folder with the same file set (`mod.rs` public op,
//! `reference.rs` plain CPU reference that is also the CPU backend, `cuda.rs` launcher,
//! `<kernel>.cu` source, `tests.rs`); see docs/adding-a-kernel.md.
//!
//! The `.cu` sources are embedded with `include_str!` and listed in [`KERNELS`]. At run time
//! [`nvrtc::compile_cubin`] turns them into a CUBIN for the device's own architecture (sm_90a on
//! Hopper) with NVRTC, spills being compile errors, and [`loader`] caches the CUBIN on disk and
//! the loaded module in the process. Nothing here needs nvcc, a CUDA toolkit or a GPU to build.
//!
//! `cargo xtask check-kernels` compiles every registered source for every architecture it
//! declares and checks the tensor-core instruction class in the SASS ([`compile_check`]).

pub mod attention_decode;
pub mod attention_prefill;
pub mod cast;
pub mod compile_check;
mod disk_cache;
pub mod elementwise;
mod error;
pub mod fp8_gemm;
pub mod gather;
pub mod launch;
pub mod loader;
pub mod matmul;
pub mod moe_experts;
pub mod moe_routing;
pub mod norm;
pub mod nvrtc;
pub mod ops;
pub mod paged_kv;
pub mod qk_prologue;
pub mod quant;
pub mod random;
pub mod rope;
pub mod sass;
pub mod softmax;
#[cfg(test)]
mod testing;
pub mod topk;
pub mod vector_add;

use std::fmt;

pub use error::{KernelError, KernelResult};
pub use loader::{KernelModules, device_arch, load_function};
pub use nvrtc::{CompiledKernel, FunctionStats, compile_cubin};
pub use vector_add::vector_add;

/// The architectures a kernel must compile for when it declares nothing else.
pub const DEFAULT_ARCHS: &[&str] = &["sm_90a"];

/// The most capable tensor-core instruction family a kernel's SASS contains.
///
/// Ordered from none to the most specialised, so the class of a kernel is the maximum over its
/// instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TensorCoreClass {
    /// No tensor-core instruction.
    None,
    /// `HMMA`: warp-level `mma.sync` on f16/bf16 (Volta to Hopper).
    Hmma,
    /// `HGMMA`: Hopper warpgroup `wgmma` on f16/bf16.
    Hgmma,
    /// `QGMMA`: Hopper warpgroup `wgmma` on FP8 (e4m3/e5m2).
    Qgmma,
}

impl TensorCoreClass {
    /// The SASS mnemonic (`"none"` for [`TensorCoreClass::None`]).
    pub fn name(self) -> &'static str {
        match self {
            TensorCoreClass::None => "none",
            TensorCoreClass::Hmma => "HMMA",
            TensorCoreClass::Hgmma => "HGMMA",
            TensorCoreClass::Qgmma => "QGMMA",
        }
    }
}

impl fmt::Display for TensorCoreClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One registered CUDA source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSource {
    /// Unique short name; also the folder and file stem (`vector_add` → `vector_add/vector_add.cu`).
    pub name: &'static str,
    /// The file, relative to the repository root (for messages and `check-kernels`; the text
    /// itself is embedded in [`KernelSource::source`] and never read from disk at run time).
    pub path: &'static str,
    /// The CUDA C++ source.
    pub source: &'static str,
    /// Architectures the source must compile for in `check-kernels`, e.g. `["sm_90a"]`.
    pub archs: &'static [&'static str],
    /// The tensor-core class `check-kernels` must find in the SASS for every architecture.
    pub tensor_cores: TensorCoreClass,
}

/// Device helpers prepended to every kernel source (see `common.cuh`).
pub const COMMON_PRELUDE: &str = include_str!("common.cuh");

impl KernelSource {
    /// The text NVRTC compiles: [`COMMON_PRELUDE`], then a `#line` directive so diagnostics
    /// name the kernel's own file and line, then the kernel's source.
    pub fn full_source(&self) -> String {
        let file = self.path.rsplit('/').next().unwrap_or(self.path);
        format!("{COMMON_PRELUDE}\n#line 1 \"{file}\"\n{}", self.source)
    }
}

/// Declares a [`KernelSource`] from a file under `kernels/src/`, embedding its text.
macro_rules! kernel_source {
    ($name:literal, $file:literal, $archs:expr, $tensor_cores:expr $(,)?) => {
        KernelSource {
            name: $name,
            path: concat!("kernels/src/", $file),
            source: include_str!($file),
            archs: $archs,
            tensor_cores: $tensor_cores,
        }
    };
}

/// `out = a + b`, f32 and bf16 (see `vector_add/vector_add.cu`).
pub const VECTOR_ADD: KernelSource = kernel_source!(
    "vector_add",
    "vector_add/vector_add.cu",
    DEFAULT_ARCHS,
    TensorCoreClass::None
);

/// Byte-exact gathers for embedding, index_select and cat, every dtype (see `gather/gather.cu`).
pub const GATHER: KernelSource = kernel_source!("gather", "gather/gather.cu", DEFAULT_ARCHS, TensorCoreClass::None);

/// Top-k over the last dimension, k <= 32, one warp per row (see `topk/topk.cu`).
pub const TOPK: KernelSource = kernel_source!("topk", "topk/topk.cu", DEFAULT_ARCHS, TensorCoreClass::None);

/// RMS norm and layer norm over the last dimension, f32/f16/bf16 (see `norm/norm.cu`).
pub const NORM: KernelSource = kernel_source!("norm", "norm/norm.cu", DEFAULT_ARCHS, TensorCoreClass::None);

/// Softmax over the last dimension, f32/f16/bf16 (see `softmax/softmax.cu`).
pub const SOFTMAX: KernelSource = kernel_source!("softmax", "softmax/softmax.cu", DEFAULT_ARCHS, TensorCoreClass::None);

/// Adjacent-pair rotary position embedding, f32/f16/bf16 (see `rope/rope.cu`).
pub const ROPE: KernelSource = kernel_source!("rope", "rope/rope.cu", DEFAULT_ARCHS, TensorCoreClass::None);

/// Unary and broadcasting binary elementwise ops, f32/f16/bf16 (see `elementwise/elementwise.cu`).
pub const ELEMENTWISE: KernelSource = kernel_source!(
    "elementwise",
    "elementwise/elementwise.cu",
    DEFAULT_ARCHS,
    TensorCoreClass::None
);

/// Casts among f32, f16, bf16, f8e4m3 and f8e5m2, bit-exact with the CPU (see `cast/cast.cu`).
pub const CAST: KernelSource = kernel_source!("cast", "cast/cast.cu", DEFAULT_ARCHS, TensorCoreClass::None);

/// Counter-based normal random numbers for weights, f32/f16/bf16 (see `random/random.cu`).
pub const RANDOM: KernelSource = kernel_source!("random", "random/random.cu", DEFAULT_ARCHS, TensorCoreClass::None);

/// FP8 e4m3 quantization with per-tensor, per-row, per-column or block scales, and
/// dequantization (see `quant/quant.cu`).
pub const QUANT: KernelSource = kernel_source!("quant", "quant/quant.cu", DEFAULT_ARCHS, TensorCoreClass::None);

/// The FP8 e4m3 GEMM: the warp-specialised TMA + wgmma Hopper kernel (row-wise and block
/// scaling) and the small-M decode kernel (see `fp8_gemm/fp8_gemm.cu`).
pub const FP8_GEMM: KernelSource =
    kernel_source!("fp8_gemm", "fp8_gemm/fp8_gemm.cu", &["sm_90a"], TensorCoreClass::Qgmma);

/// Fused MoE routing: top-k, counts, offsets and the stable sort of token slots by expert, in
/// one launch (see `moe_routing/moe_routing.cu`).
pub const MOE_ROUTING: KernelSource = kernel_source!(
    "moe_routing",
    "moe_routing/moe_routing.cu",
    DEFAULT_ARCHS,
    TensorCoreClass::None
);

/// The routed experts as grouped GEMMs over tokens sorted by expert: gate_up with SwiGLU in its
/// epilogue, down with the routing weight, the shared expert and a fixed-order combine, on
/// bf16/f16 tensor cores (see `moe_experts/moe_experts.cu`).
pub const MOE_EXPERTS: KernelSource = kernel_source!(
    "moe_experts",
    "moe_experts/moe_experts.cu",
    DEFAULT_ARCHS,
    TensorCoreClass::Hmma
);

/// Split-KV decode attention with a fixed split and a fixed-order combine (see
/// `attention_decode/attention_decode.cu`).
pub const ATTENTION_DECODE: KernelSource = kernel_source!(
    "attention_decode",
    "attention_decode/attention_decode.cu",
    DEFAULT_ARCHS,
    TensorCoreClass::None
);

/// Causal and chunked-local prefill attention without materialised scores, on bf16/f16
/// tensor cores (see `attention_prefill/attention_prefill.cu`).
pub const ATTENTION_PREFILL: KernelSource = kernel_source!(
    "attention_prefill",
    "attention_prefill/attention_prefill.cu",
    DEFAULT_ARCHS,
    TensorCoreClass::Hmma
);

/// Paged KV cache: a step's keys/values written into pool blocks through the block table, and
/// the pool gathered back into a contiguous tensor (see `paged_kv/paged_kv.cu`).
pub const PAGED_KV: KernelSource =
    kernel_source!("paged_kv", "paged_kv/paged_kv.cu", DEFAULT_ARCHS, TensorCoreClass::None);

/// Llama 4's attention prologue in one pass: RoPE, the weightless QK-norm and the query
/// temperature, written head-major (see `qk_prologue/qk_prologue.cu`).
pub const QK_PROLOGUE: KernelSource = kernel_source!(
    "qk_prologue",
    "qk_prologue/qk_prologue.cu",
    DEFAULT_ARCHS,
    TensorCoreClass::None
);

/// Every kernel source, in the order `check-kernels` reports them.
pub const KERNELS: &[KernelSource] = &[
    VECTOR_ADD,
    NORM,
    SOFTMAX,
    ROPE,
    GATHER,
    TOPK,
    ELEMENTWISE,
    CAST,
    RANDOM,
    QUANT,
    FP8_GEMM,
    MOE_ROUTING,
    MOE_EXPERTS,
    ATTENTION_DECODE,
    ATTENTION_PREFILL,
    PAGED_KV,
    QK_PROLOGUE,
];

/// The registered kernel called `name`.
pub fn kernel(name: &str) -> Option<&'static KernelSource> {
    KERNELS.iter().find(|k| k.name == name)
}

#[cfg(test)]
mod registry_tests {
    use super::*;

    #[test]
    fn names_are_unique_and_match_their_files() {
        for (i, k) in KERNELS.iter().enumerate() {
            assert!(
                KERNELS[..i].iter().all(|o| o.name != k.name),
                "duplicate kernel {}",
                k.name
            );
            assert!(
                k.path.starts_with("kernels/src/") && k.path.ends_with(".cu"),
                "{}",
                k.path
            );
            assert!(!k.archs.is_empty(), "{} declares no architecture", k.name);
        }
        assert_eq!(kernel("vector_add"), Some(&VECTOR_ADD));
        assert_eq!(kernel("nope"), None);
    }
}
