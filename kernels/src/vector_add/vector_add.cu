// vector_add.cu: out[i] = a[i] + b[i] over n contiguous elements.
//
// The smallest kernel in l4lab. It exists to exercise the whole pipeline end to end: the
// registry, NVRTC to an sm_90a CUBIN, the spill gate, the SASS check, the module cache, the
// launch from Rust and the bit-exact comparison against the CPU reference.
//
// Variants (one extern "C" entry point each; Rust picks by dtype):
//   1. vector_add_f32   f32 + f32 -> f32, one IEEE round-to-nearest add per element.
//   2. vector_add_bf16  bf16 + bf16 -> bf16: both inputs widened exactly to f32, added in f32,
//                       rounded once to bf16 with cvt.rn.bf16.f32 (the CPU reference does the
//                       same steps, so results agree bit for bit; NaNs come out as 0x7FFF).
// Both use a grid-stride loop, so any grid covers any n; the launcher caps the grid size.
//
// Check: cargo xtask check-kernels          (sm_90a CUBIN, spills are errors, SASS class: none)
// Test:  cargo test -p l4-kernels vector_add (CPU always; GPU when present; L4_REQUIRE_GPU=1
//                                            turns a missing GPU into a failure)
// Bench: none; the kernel is memory-bound and is not on the model's path.
//
// No headers: bf16 is a raw unsigned short, converted with a shift and inline PTX, so NVRTC
// compiles this file with no include path.

typedef unsigned long long u64;

// bf16 -> f32 is exact: the bf16 bits are the top half of the f32 bits.
__device__ __forceinline__ float bf16_to_f32(unsigned short x) {
    return __uint_as_float(((unsigned int)x) << 16);
}

// f32 -> bf16, round to nearest, ties to even.
__device__ __forceinline__ unsigned short f32_to_bf16_rn(float x) {
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}

extern "C" __global__ void vector_add_f32(const float* __restrict__ a, const float* __restrict__ b,
                                          float* __restrict__ out, u64 n) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = a[i] + b[i];
    }
}

extern "C" __global__ void vector_add_bf16(const unsigned short* __restrict__ a,
                                           const unsigned short* __restrict__ b,
                                           unsigned short* __restrict__ out, u64 n) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = f32_to_bf16_rn(bf16_to_f32(a[i]) + bf16_to_f32(b[i]));
    }
}
