// random.cu: seeded normal random numbers, counter-based, so any element can be made alone.
//
// Element i of a tensor drawn with `seed` depends on (seed, i) only: a splitmix64 hash of the
// counter i gives 64 random bits, from which two 24-bit uniforms feed one Box–Muller step:
//
//   h  = splitmix64(seed + (i + 1)·0x9E3779B97F4A7C15)
//   u1 = ((h >> 40) + 1)·2^-24            in (0, 1], exact in f32
//   u2 = ((h >> 16) & 0xFFFFFF)·2^-24     in [0, 1), exact in f32
//   z  = sqrt(−2·ln u1)·cos(2π·u2)·std    f32 steps, rounded once into the dtype
//
// So the GPU fills a 10 GB weight tensor in milliseconds, with the same values (to a few f32
// ulps: CUDA's logf/cosf are not libm's) as the CPU reference in `reference.rs`. |z| ≤ 5.8·std.
// These are numbers for benchmarks and random presets, not for statistics that need more than
// 24-bit uniforms.
//
// Variants (extern "C" entry points; Rust picks by dtype): randn_{f32,f16,bf16}(out, n, seed,
// std), a grid-stride loop over n contiguous outputs.
//
// Check: cargo xtask check-kernels        (sm_90a CUBIN, spills are errors, SASS class: none)
// Test:  cargo test -p l4-kernels random  (CPU always; GPU when present)
// Bench: none; it runs once per weight at load time.

typedef unsigned long long u64;

L4_DEVICE u64 rnd_splitmix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

L4_DEVICE float rnd_normal(u64 i, u64 seed, float std) {
    const u64 h = rnd_splitmix64(seed + (i + 1) * 0x9E3779B97F4A7C15ull);
    const float u1 = (float)((h >> 40) + 1) * 5.9604644775390625e-8f;  // 2^-24
    const float u2 = (float)((h >> 16) & 0xFFFFFFull) * 5.9604644775390625e-8f;
    const float radius = sqrtf(-2.0f * logf(u1));
    return radius * cosf(6.2831853071795864769f * u2) * std;
}

#define L4_RANDN(NAME, T, STORE)                                                                 \
    extern "C" __global__ void NAME(T* __restrict__ out, u64 n, u64 seed, float std) {           \
        const u64 step = (u64)gridDim.x * blockDim.x;                                            \
        for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {             \
            out[i] = STORE(rnd_normal(i, seed, std));                                            \
        }                                                                                        \
    }

#define L4_STORE_F32(x) (x)
L4_RANDN(randn_f32, float, L4_STORE_F32)
L4_RANDN(randn_f16, l4_f16, l4_f32_to_f16)
L4_RANDN(randn_bf16, l4_bf16, l4_f32_to_bf16)
