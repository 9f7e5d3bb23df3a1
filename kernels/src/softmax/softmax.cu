// softmax.cu: softmax over the last dimension of a contiguous [rows, d] tensor, max-subtracted.
//
//   y_i = e^(x_i − m) / Σ_j e^(x_j − m),   m = max_j x_j
//
// f32 throughout (expf, not __expf; an IEEE division), rounded once into the output dtype, as
// the CPU reference (`l4_core` `Tensor::softmax`) does; only the order of the max and the sum
// (per-thread partials, then a warp/block tree) and expf's accuracy (2 ulp, against glibc's
// < 1 ulp) differ. Special values follow the CPU: fmaxf skips NaN like f32::max, so a NaN still
// reaches the sum and poisons the whole row; a row whose maximum is ±∞ (all −∞ included) gets
// x − m = NaN somewhere and is NaN throughout; finite rows map −∞ entries to 0.
//
// Variants (one extern "C" entry point each; Rust picks by dtype and row length):
//   1. softmax_warp_{f32,f16,bf16}   one warp per row (d ≤ 1024), 8 rows per 256-thread block.
//   2. softmax_block_{f32,f16,bf16}  one block per row (d > 1024; 256 or 1024 threads); rows of
//                                    any length (threads loop over the row).
// Both loop over rows (grid-stride). When d % 4 == 0 and both pointers are aligned to 4
// elements, rows move 4 elements per access (16 B for f32, 8 B for f16/bf16). Three passes over
// the row: max, Σ e^(x − m), write (exp recomputed rather than stored).
//
// Check: cargo xtask check-kernels --kernel softmax  (sm_90a, no spills, SASS class: none)
// Test:  cargo test -p l4-kernels softmax            (CPU always; GPU when present)
// Bench: none yet.
//
// The element and row-group helpers below are the same as norm.cu's (each source is compiled
// on its own, after common.cuh only).

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

    // The maximum of v over the group (NaN skipped, as fmaxf does); every thread gets it.
    L4_MEMBER float max(float v, float* smem) {
        v = l4_warp_max(v);
        if (WARP) return v;
        __syncthreads();  // the previous reduction's readers are done with smem
        if ((threadIdx.x & 31u) == 0) smem[threadIdx.x >> 5] = v;
        __syncthreads();
        const float t = (threadIdx.x & 31u) < (blockDim.x >> 5) ? smem[threadIdx.x & 31u] : -L4_INF;
        return l4_warp_max(t);
    }
};

// ---- the row loop ---------------------------------------------------------------------------

template <class E, bool WARP, int N>
L4_DEVICE void softmax_rows(const typename E::raw* __restrict__ x, typename E::raw* __restrict__ y, u64 rows,
                            unsigned d, float* smem) {
    typedef Group<WARP> G;
    const unsigned chunks = d / N;
    for (u64 row = G::first_row(); row < rows; row += G::row_stride()) {
        const typename E::raw* xr = x + row * d;
        typename E::raw* yr = y + row * d;
        // m = max_j x_j.
        float m = -L4_INF;
        for (unsigned c = G::rank(); c < chunks; c += G::size()) {
            float v[N];
            load_n<N, E>(xr + (u64)c * N, v);
#pragma unroll
            for (int k = 0; k < N; ++k) m = fmaxf(m, v[k]);
        }
        m = G::max(m, smem);
        // s = Σ_j e^(x_j − m), every term in (0, 1] for finite rows.
        float s = 0.0f;
        for (unsigned c = G::rank(); c < chunks; c += G::size()) {
            float v[N];
            load_n<N, E>(xr + (u64)c * N, v);
#pragma unroll
            for (int k = 0; k < N; ++k) s += expf(v[k] - m);
        }
        s = G::sum(s, smem);
        // y_i = e^(x_i − m) / s, rounded once.
        for (unsigned c = G::rank(); c < chunks; c += G::size()) {
            float v[N];
            load_n<N, E>(xr + (u64)c * N, v);
#pragma unroll
            for (int k = 0; k < N; ++k) v[k] = expf(v[k] - m) / s;
            store_n<N, E>(yr + (u64)c * N, v);
        }
    }
}

// ---- entry points ---------------------------------------------------------------------------

#define L4_SOFTMAX_ENTRY(MODE, WARP, THREADS, SUFFIX, E)                                                       \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                     \
        softmax_##MODE##_##SUFFIX(const E::raw* __restrict__ x, E::raw* __restrict__ y, u64 rows, unsigned d) { \
        __shared__ float smem[32];                                                                             \
        if (d % 4 == 0 && aligned4(x) && aligned4(y))                                                          \
            softmax_rows<E, WARP, 4>(x, y, rows, d, smem);                                                     \
        else                                                                                                   \
            softmax_rows<E, WARP, 1>(x, y, rows, d, smem);                                                     \
    }

// Warp kernels are launched with 256 threads, block kernels with at most 1024.
L4_SOFTMAX_ENTRY(warp, true, 256, f32, ElemF32)
L4_SOFTMAX_ENTRY(warp, true, 256, f16, ElemF16)
L4_SOFTMAX_ENTRY(warp, true, 256, bf16, ElemBF16)
L4_SOFTMAX_ENTRY(block, false, 1024, f32, ElemF32)
L4_SOFTMAX_ENTRY(block, false, 1024, f16, ElemF16)
L4_SOFTMAX_ENTRY(block, false, 1024, bf16, ElemBF16)
