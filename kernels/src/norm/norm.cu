// norm.cu: RMS norm and layer norm over the last dimension of a contiguous [rows, d] tensor.
//
//   rms_norm:   y = x · (1 / √(Σx²/d + eps)) · w
//   layer_norm: y = (x − μ) · (1 / √(Σ(x − μ)²/d + eps)) · w + b,   μ = Σx/d (two-pass variance)
//
// w and b are optional [d] vectors of x's dtype (a null pointer means absent). Every step runs in
// f32 in the order the CPU reference (`l4_core` `Tensor::rms_norm` / `layer_norm`) uses, except
// the order of the sums (per-thread partial sums, then a warp/block tree); the result is rounded
// once into the output dtype. 1/√ is computed as an IEEE division of an IEEE sqrtf (NVRTC's
// defaults: -prec-div, -prec-sqrt, no ftz), not rsqrtf, so only the sums differ from the CPU.
//
// Variants (one extern "C" entry point each; Rust picks by dtype and row length):
//   1. {rms_norm,layer_norm}_warp_{f32,f16,bf16}   one warp per row (d ≤ 1024), 8 rows per
//                                                  256-thread block, shuffles only.
//   2. {rms_norm,layer_norm}_block_{f32,f16,bf16}  one block per row (d > 1024; 256 or 1024
//                                                  threads), warp shuffles + 32 floats of smem.
// Both loop over rows (grid-stride), so any grid covers any row count. When d % 4 == 0 and every
// pointer is aligned to 4 elements, rows are read and written 4 elements per access (16 B for
// f32, 8 B for f16/bf16); otherwise one element per access. Passes: rms_norm reads x twice
// (Σx², then the write pass); layer_norm three times (Σx, Σ(x − μ)², write); the re-reads hit
// L1/L2 for the row sizes of Llama 4.
//
// Check: cargo xtask check-kernels --kernel norm     (sm_90a, no spills, SASS class: none)
// Test:  cargo test -p l4-kernels norm               (CPU always; GPU when present)
// Bench: none yet.

typedef unsigned long long u64;

// Static member functions (L4_DEVICE carries `static`, which members cannot repeat).
#define L4_MEMBER static __device__ __forceinline__

// ---- element types: raw storage, exact widening to f32, one rounding back -------------------

struct ElemF32 {
    typedef float raw;
    L4_MEMBER float load(raw v) { return v; }
    L4_MEMBER raw store(float f) { return f; }
    L4_MEMBER void load4(const raw* p, float* v) {
        const float4 q = *reinterpret_cast<const float4*>(p);
        v[0] = q.x;
        v[1] = q.y;
        v[2] = q.z;
        v[3] = q.w;
    }
    L4_MEMBER void store4(raw* p, const float* v) {
        float4 q;
        q.x = v[0];
        q.y = v[1];
        q.z = v[2];
        q.w = v[3];
        *reinterpret_cast<float4*>(p) = q;
    }
};

// 16-bit floats: four elements in one 8-byte access, little-endian (lower address = low half).
template <class Conv>
struct Elem16 {
    typedef unsigned short raw;
    L4_MEMBER float load(raw v) { return Conv::to_f32(v); }
    L4_MEMBER raw store(float f) { return Conv::from_f32(f); }
    L4_MEMBER void load4(const raw* p, float* v) {
        const uint2 q = *reinterpret_cast<const uint2*>(p);
        v[0] = Conv::to_f32((raw)(q.x & 0xffffu));
        v[1] = Conv::to_f32((raw)(q.x >> 16));
        v[2] = Conv::to_f32((raw)(q.y & 0xffffu));
        v[3] = Conv::to_f32((raw)(q.y >> 16));
    }
    L4_MEMBER void store4(raw* p, const float* v) {
        uint2 q;
        q.x = (unsigned int)Conv::from_f32(v[0]) | ((unsigned int)Conv::from_f32(v[1]) << 16);
        q.y = (unsigned int)Conv::from_f32(v[2]) | ((unsigned int)Conv::from_f32(v[3]) << 16);
        *reinterpret_cast<uint2*>(p) = q;
    }
};

struct ConvF16 {
    L4_MEMBER float to_f32(unsigned short h) { return l4_f16_to_f32(h); }
    L4_MEMBER unsigned short from_f32(float f) { return l4_f32_to_f16(f); }
};
struct ConvBF16 {
    L4_MEMBER float to_f32(unsigned short h) { return l4_bf16_to_f32(h); }
    L4_MEMBER unsigned short from_f32(float f) { return l4_f32_to_bf16(f); }
};
typedef Elem16<ConvF16> ElemF16;
typedef Elem16<ConvBF16> ElemBF16;

// N consecutive elements (N = 1 or 4) at p, widened to f32 / rounded from f32.
template <int N, class E>
L4_DEVICE void load_n(const typename E::raw* p, float* v) {
    if constexpr (N == 4) {
        E::load4(p, v);
    } else {
        v[0] = E::load(*p);
    }
}
template <int N, class E>
L4_DEVICE void store_n(typename E::raw* p, const float* v) {
    if constexpr (N == 4) {
        E::store4(p, v);
    } else {
        *p = E::store(v[0]);
    }
}

// Whether p is aligned for 4-element accesses (a null pointer counts as aligned).
template <class T>
L4_DEVICE bool aligned4(const T* p) {
    return ((u64)p % (4 * sizeof(T))) == 0;
}

// ---- the threads that own one row: a warp, or the whole block ------------------------------

template <bool WARP>
struct Group {
    // This thread's index within the row's group, and the group size.
    L4_MEMBER unsigned rank() { return WARP ? (threadIdx.x & 31u) : threadIdx.x; }
    L4_MEMBER unsigned size() { return WARP ? 32u : blockDim.x; }
    // The first row of this group and the distance to its next row.
    L4_MEMBER u64 first_row() {
        return WARP ? (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5) : (u64)blockIdx.x;
    }
    L4_MEMBER u64 row_stride() { return WARP ? (u64)gridDim.x * (blockDim.x >> 5) : (u64)gridDim.x; }

    // The sum of v over the group; every thread gets it. smem: 32 floats, block mode only.
    L4_MEMBER float sum(float v, float* smem) {
        v = l4_warp_sum(v);
        if (WARP) return v;
        __syncthreads();  // the previous reduction's readers are done with smem
        if ((threadIdx.x & 31u) == 0) smem[threadIdx.x >> 5] = v;
        __syncthreads();
        const float t = (threadIdx.x & 31u) < (blockDim.x >> 5) ? smem[threadIdx.x & 31u] : 0.0f;
        return l4_warp_sum(t);
    }
};

// ---- the row loops --------------------------------------------------------------------------

// One rms_norm pass per row: Σx² in f32, r = 1/√(Σx²/d + eps), y = x·r·w, rounded once.
template <class E, bool WARP, int N>
L4_DEVICE void rms_norm_rows(const typename E::raw* __restrict__ x, const typename E::raw* __restrict__ w,
                             typename E::raw* __restrict__ y, u64 rows, unsigned d, float eps, float* smem) {
    typedef Group<WARP> G;
    const unsigned chunks = d / N;
    for (u64 row = G::first_row(); row < rows; row += G::row_stride()) {
        const typename E::raw* xr = x + row * d;
        typename E::raw* yr = y + row * d;
        float ss = 0.0f;
        for (unsigned c = G::rank(); c < chunks; c += G::size()) {
            float v[N];
            load_n<N, E>(xr + (u64)c * N, v);
#pragma unroll
            for (int k = 0; k < N; ++k) ss += v[k] * v[k];
        }
        ss = G::sum(ss, smem);
        const float r = 1.0f / sqrtf(ss / (float)d + eps);
        for (unsigned c = G::rank(); c < chunks; c += G::size()) {
            float v[N];
            load_n<N, E>(xr + (u64)c * N, v);
#pragma unroll
            for (int k = 0; k < N; ++k) v[k] = v[k] * r;
            if (w != nullptr) {
                float g[N];
                load_n<N, E>(w + (u64)c * N, g);
#pragma unroll
                for (int k = 0; k < N; ++k) v[k] = v[k] * g[k];
            }
            store_n<N, E>(yr + (u64)c * N, v);
        }
    }
}

// One layer_norm pass per row: μ = Σx/d, σ² = Σ(x − μ)²/d, r = 1/√(σ² + eps),
// y = (x − μ)·r·w + b, rounded once.
template <class E, bool WARP, int N>
L4_DEVICE void layer_norm_rows(const typename E::raw* __restrict__ x, const typename E::raw* __restrict__ w,
                               const typename E::raw* __restrict__ b, typename E::raw* __restrict__ y, u64 rows,
                               unsigned d, float eps, float* smem) {
    typedef Group<WARP> G;
    const unsigned chunks = d / N;
    for (u64 row = G::first_row(); row < rows; row += G::row_stride()) {
        const typename E::raw* xr = x + row * d;
        typename E::raw* yr = y + row * d;
        float s = 0.0f;
        for (unsigned c = G::rank(); c < chunks; c += G::size()) {
            float v[N];
            load_n<N, E>(xr + (u64)c * N, v);
#pragma unroll
            for (int k = 0; k < N; ++k) s += v[k];
        }
        const float mu = G::sum(s, smem) / (float)d;
        float ss = 0.0f;
        for (unsigned c = G::rank(); c < chunks; c += G::size()) {
            float v[N];
            load_n<N, E>(xr + (u64)c * N, v);
#pragma unroll
            for (int k = 0; k < N; ++k) ss += (v[k] - mu) * (v[k] - mu);
        }
        ss = G::sum(ss, smem);
        const float r = 1.0f / sqrtf(ss / (float)d + eps);
        for (unsigned c = G::rank(); c < chunks; c += G::size()) {
            float v[N];
            load_n<N, E>(xr + (u64)c * N, v);
#pragma unroll
            for (int k = 0; k < N; ++k) v[k] = (v[k] - mu) * r;
            if (w != nullptr) {
                float g[N];
                load_n<N, E>(w + (u64)c * N, g);
#pragma unroll
                for (int k = 0; k < N; ++k) v[k] = v[k] * g[k];
            }
            if (b != nullptr) {
                float h[N];
                load_n<N, E>(b + (u64)c * N, h);
#pragma unroll
                for (int k = 0; k < N; ++k) v[k] = v[k] + h[k];
            }
            store_n<N, E>(yr + (u64)c * N, v);
        }
    }
}

// ---- entry points ---------------------------------------------------------------------------

#define L4_NORM_ENTRIES(MODE, WARP, THREADS, SUFFIX, E)                                                          \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                       \
        rms_norm_##MODE##_##SUFFIX(const E::raw* __restrict__ x, const E::raw* __restrict__ w,                  \
                                   E::raw* __restrict__ y, u64 rows, unsigned d, float eps) {                   \
        __shared__ float smem[32];                                                                               \
        if (d % 4 == 0 && aligned4(x) && aligned4(w) && aligned4(y))                                             \
            rms_norm_rows<E, WARP, 4>(x, w, y, rows, d, eps, smem);                                              \
        else                                                                                                     \
            rms_norm_rows<E, WARP, 1>(x, w, y, rows, d, eps, smem);                                              \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                       \
        layer_norm_##MODE##_##SUFFIX(const E::raw* __restrict__ x, const E::raw* __restrict__ w,                \
                                     const E::raw* __restrict__ b, E::raw* __restrict__ y, u64 rows, unsigned d, \
                                     float eps) {                                                                \
        __shared__ float smem[32];                                                                               \
        if (d % 4 == 0 && aligned4(x) && aligned4(w) && aligned4(b) && aligned4(y))                              \
            layer_norm_rows<E, WARP, 4>(x, w, b, y, rows, d, eps, smem);                                         \
        else                                                                                                     \
            layer_norm_rows<E, WARP, 1>(x, w, b, y, rows, d, eps, smem);                                         \
    }

// Warp kernels are launched with 256 threads, block kernels with at most 1024.
L4_NORM_ENTRIES(warp, true, 256, f32, ElemF32)
L4_NORM_ENTRIES(warp, true, 256, f16, ElemF16)
L4_NORM_ENTRIES(warp, true, 256, bf16, ElemBF16)
L4_NORM_ENTRIES(block, false, 1024, f32, ElemF32)
L4_NORM_ENTRIES(block, false, 1024, f16, ElemF16)
L4_NORM_ENTRIES(block, false, 1024, bf16, ElemBF16)
