// quant.cu: FP8 e4m3 quantization with one scale per rectangular group, and dequantization.
//
// A 2-D tensor x [rows, cols] is cut into groups of `group_rows × group_cols` elements (the
// last ones clipped): per-tensor is one group of rows × cols, per-row (per token) 1 × cols,
// per-column (per channel of a [K, N] weight) rows × 1, DeepSeek's 1×128 and 128×128 blocks.
// Each group g gets one f32 scale s_g with x ≈ q·s_g:
//
//   amax_g = max |x| over the group's finite elements   (NaN and ±Inf do not set the scale)
//   amax_g = min(amax_g, ub)                            (optional upper bound, Meta's 1200)
//   s_g    = max(amax_g, 1e-12) / 448                   (an all-zero group gets a tiny scale)
//   q      = cvt.rn.satfinite.e4m3(x / s_g)             (IEEE division, then RNE + saturate)
//
// so the largest finite element maps to 448 exactly (its quotient is within an ulp of 448 and
// rounds there), elements beyond a clamped amax saturate to ±448, ±Inf becomes ±448 and NaN
// stays NaN. Every step is a correctly rounded f32 operation or an order-free max, so the CPU
// reference (`reference.rs`) agrees bit for bit. Dequantization is one f32 product q·s_g,
// rounded once into the output dtype.
//
// Variants (extern "C"; Rust picks by input dtype):
//   1. quant_{f32,bf16,f16}         one block per group: block-reduced amax (warp shuffles,
//                                   then shared memory), the scale, then the group quantized.
//                                   Used for activations (per token: the fused "quantize the
//                                   GEMM input" kernel) and weights.
//   2. quant_given_{f32,bf16,f16}   the same with the scales supplied (static scales).
//   3. dequant_{f32,bf16,f16}       q·s_g into the output dtype, grid-stride over elements.
//
// Check: cargo xtask check-kernels      (sm_90a CUBIN, spills are errors, SASS class: none)
// Test:  cargo test -p l4-kernels quant (CPU always; GPU when present)
// Bench: none yet (the FP8 GEMM benches will time it as the activation-quantization step).

typedef unsigned long long u64;

#define QUANT_BLOCK 256
#define QUANT_E4M3_MAX 448.0f
#define QUANT_AMAX_FLOOR 1e-12f

struct QuantGroups {
    u64 rows, cols;              // x is [rows, cols], row-major, contiguous
    u64 group_rows, group_cols;  // group extent (clipped at the edges)
    u64 groups_per_row;          // ceil(cols / group_cols): scales are [ceil(rows/gr), this]
};

L4_DEVICE float quant_load_f32(const float* x, u64 i) { return x[i]; }
L4_DEVICE float quant_load_bf16(const l4_bf16* x, u64 i) { return l4_bf16_to_f32(x[i]); }
L4_DEVICE float quant_load_f16(const l4_f16* x, u64 i) { return l4_f16_to_f32(x[i]); }

L4_DEVICE float quant_store_f32(float v) { return v; }
L4_DEVICE l4_bf16 quant_store_bf16(float v) { return l4_f32_to_bf16(v); }
L4_DEVICE l4_f16 quant_store_f16(float v) { return l4_f32_to_f16(v); }

// The storage index of element e of group (gr, gc), whose clipped width is `width`.
L4_DEVICE u64 quant_index(const QuantGroups& g, u64 gr, u64 gc, u64 width, u64 e) {
    const u64 r = e / width;
    const u64 c = e - r * width;
    return (gr * g.group_rows + r) * g.cols + gc * g.group_cols + c;
}

// Block-wide max of non-negative values; every thread gets the result.
L4_DEVICE float quant_block_max(float v) {
    __shared__ float partial[QUANT_BLOCK / 32];
    v = l4_warp_max(v);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < QUANT_BLOCK / 32 ? partial[lane] : 0.0f;
    v = l4_warp_max(v);
    __syncthreads();  // `partial` may be reused by a later call
    return v;
}

template <typename T, float (*LOAD)(const T*, u64)>
static __device__ __forceinline__ void quant_group(const T* __restrict__ x, l4_fp8* __restrict__ q,
                                                   float* __restrict__ scales, const QuantGroups g,
                                                   float upper_bound, bool given) {
    const u64 group = blockIdx.x;
    const u64 gr = group / g.groups_per_row, gc = group - gr * g.groups_per_row;
    const u64 height = min(g.group_rows, g.rows - gr * g.group_rows);
    const u64 width = min(g.group_cols, g.cols - gc * g.group_cols);
    const u64 n = height * width;
    float scale;
    if (given) {
        scale = scales[group];
    } else {
        float amax = 0.0f;
        for (u64 e = threadIdx.x; e < n; e += QUANT_BLOCK) {
            const float a = fabsf(LOAD(x, quant_index(g, gr, gc, width, e)));
            if (a <= 3.402823466e38f) amax = fmaxf(amax, a);  // finite only: NaN fails the test
        }
        amax = fminf(quant_block_max(amax), upper_bound);
        scale = fmaxf(amax, QUANT_AMAX_FLOOR) / QUANT_E4M3_MAX;
        if (threadIdx.x == 0) scales[group] = scale;
    }
    for (u64 e = threadIdx.x; e < n; e += QUANT_BLOCK) {
        const u64 i = quant_index(g, gr, gc, width, e);
        q[i] = l4_f32_to_e4m3(__fdiv_rn(LOAD(x, i), scale));
    }
}

template <typename T, T (*STORE)(float)>
static __device__ __forceinline__ void dequant(const l4_fp8* __restrict__ q, const float* __restrict__ scales,
                                               T* __restrict__ out, const QuantGroups g) {
    const u64 n = g.rows * g.cols;
    const u64 step = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const u64 r = i / g.cols, c = i - r * g.cols;
        const float s = scales[(r / g.group_rows) * g.groups_per_row + c / g.group_cols];
        out[i] = STORE(__fmul_rn(l4_e4m3_to_f32(q[i]), s));
    }
}

#define L4_QUANT(DT, T)                                                                                       \
    extern "C" __global__ void __launch_bounds__(QUANT_BLOCK) quant_##DT(                                     \
        const T* __restrict__ x, l4_fp8* __restrict__ q, float* __restrict__ scales, const QuantGroups g,     \
        float upper_bound) {                                                                                  \
        quant_group<T, quant_load_##DT>(x, q, scales, g, upper_bound, false);                                 \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(QUANT_BLOCK) quant_given_##DT(                               \
        const T* __restrict__ x, l4_fp8* __restrict__ q, float* __restrict__ scales, const QuantGroups g) {   \
        quant_group<T, quant_load_##DT>(x, q, scales, g, 0.0f, true);                                         \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(QUANT_BLOCK) dequant_##DT(                                   \
        const l4_fp8* __restrict__ q, const float* __restrict__ scales, T* __restrict__ out, const QuantGroups g) { \
        dequant<T, quant_store_##DT>(q, scales, out, g);                                                      \
    }

L4_QUANT(f32, float)
L4_QUANT(bf16, l4_bf16)
L4_QUANT(f16, l4_f16)
