// topk.cu: the k largest entries of each row (the last dimension), sorted descending, with their
// indices: values [rows, k] in the input dtype, indices [rows, k] as int64. k <= 32.
//
// Ranking is the CPU reference's (`Tensor::topk` in l4-core): NaN ranks above +inf (all NaNs
// equal), -0 equals +0, and equal values keep index order (the lower index first). Each
// element becomes one 64-bit "rank word" whose unsigned order is exactly that ranking:
//   high 32 bits  an order-preserving key of the value widened exactly to f32: NaN -> 0xFFFFFFFF,
//                 +-0 -> 0x80000000, x > 0 -> bits | 0x80000000, x < 0 -> ~bits
//   low 32 bits   0xFFFFFFFF - index, so that of equal keys the lower index is larger.
// Rank words are unique within a row, so selecting the k largest words is a selection with no
// ties left to break, and the outputs are bit-exact with the CPU: the value written is the input
// element re-read at the chosen index (so NaN payloads and the sign of zero survive).
// A word of 0 is never a real element (the smallest real key is ~bits(-inf) = 0x007FFFFF) and
// marks an empty slot.
//
// One warp per row (WARPS rows per block, grid-stride over rows):
//   1. each lane scans its strided share of the row (i = lane, lane + 32, ...; coalesced) and
//      keeps the KMAX largest rank words it has seen in a descending register list (a fully
//      unrolled compare-exchange insertion, so the list never touches local memory);
//   2. k rounds of a warp argmax over the 32 list heads (shuffle butterfly on the 64-bit
//      words); the lane holding the winner writes output slot r and moves its head one entry
//      down its list (a counter and an unrolled select, not a shift: shifting the list under a
//      predicate doubled the live registers, 200 instead of 95 at KMAX = 32).
//
// Variants (extern "C" entry points; Rust picks by dtype and KMAX = k rounded up to a power of
// two, so small k keeps few registers):
//   topk_{f32,f16,bf16}_k{1,2,4,8,16,32}
//
// Check: cargo xtask check-kernels          (sm_90a CUBIN, spills are errors, SASS class: none)
// Test:  cargo test -p l4-kernels topk      (CPU always; GPU when present)
// Bench: none yet (the router's top-k over 16/128 experts is tiny).

typedef unsigned long long u64;

#define WARPS 4

// The order-preserving 32-bit key of an f32; NaN is the largest key. Decided on the bits alone,
// so flush-to-zero options cannot merge a subnormal with zero.
static __device__ __forceinline__ unsigned int rank_key(float x) {
    const unsigned int bits = __float_as_uint(x);
    const unsigned int magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return 0xffffffffu;  // NaN ranks above everything, all NaNs alike
    if (magnitude == 0u) return 0x80000000u;           // -0 equals +0
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

struct LoadF32 {
    typedef float T;
    static __device__ __forceinline__ float widen(float v) { return v; }
};
struct LoadF16 {
    typedef l4_f16 T;
    static __device__ __forceinline__ float widen(l4_f16 v) { return l4_f16_to_f32(v); }
};
struct LoadBF16 {
    typedef l4_bf16 T;
    static __device__ __forceinline__ float widen(l4_bf16 v) { return l4_bf16_to_f32(v); }
};

static __device__ __forceinline__ u64 shfl_xor_u64(u64 v, int mask) {
    const unsigned int lo = __shfl_xor_sync(0xffffffffu, (unsigned int)v, mask);
    const unsigned int hi = __shfl_xor_sync(0xffffffffu, (unsigned int)(v >> 32), mask);
    return ((u64)hi << 32) | lo;
}

template <typename L, int KMAX>
static __device__ __forceinline__ void topk_rows(const typename L::T* __restrict__ x,
                                                 typename L::T* __restrict__ values,
                                                 long long* __restrict__ indices, u64 rows, unsigned int n,
                                                 unsigned int k) {
    const unsigned int lane = threadIdx.x & 31u;
    const u64 warp = (u64)blockIdx.x * WARPS + (threadIdx.x >> 5);
    const u64 warps = (u64)gridDim.x * WARPS;
    for (u64 row = warp; row < rows; row += warps) {
        const typename L::T* xr = x + row * n;
        // This lane's KMAX largest rank words, descending; 0 marks an empty slot.
        u64 top[KMAX];
#pragma unroll
        for (int j = 0; j < KMAX; ++j) top[j] = 0;
        for (unsigned int i = lane; i < n; i += 32u) {
            u64 w = ((u64)rank_key(L::widen(xr[i])) << 32) | (u64)(0xffffffffu - i);
            if (w > top[KMAX - 1]) {
                // Compare-exchange down the list: the larger word stays, the smaller moves on.
#pragma unroll
                for (int j = 0; j < KMAX; ++j) {
                    const u64 hi = top[j] > w ? top[j] : w;
                    w = top[j] > w ? w : top[j];
                    top[j] = hi;
                }
            }
        }
        // k rounds: the warp's largest head is the next output; its lane moves past it.
        unsigned int used = 0;  // entries of `top` this lane has already given out
        for (unsigned int r = 0; r < k; ++r) {
            u64 head = 0;
#pragma unroll
            for (int j = 0; j < KMAX; ++j) head = (j == (int)used) ? top[j] : head;
            u64 best = head;
#pragma unroll
            for (int offset = 16; offset > 0; offset >>= 1) {
                const u64 other = shfl_xor_u64(best, offset);
                best = other > best ? other : best;
            }
            if (head == best) {  // exactly one lane: rank words are unique within a row
                const unsigned int i = 0xffffffffu - (unsigned int)best;
                values[row * k + r] = xr[i];
                indices[row * k + r] = (long long)i;
                ++used;
            }
        }
    }
}

#define L4_TOPK(NAME, L, KMAX)                                                                        \
    extern "C" __global__ void __launch_bounds__(WARPS * 32)                                         \
        NAME(const L::T* __restrict__ x, L::T* __restrict__ values, long long* __restrict__ indices, \
             u64 rows, unsigned int n, unsigned int k) {                                             \
        topk_rows<L, KMAX>(x, values, indices, rows, n, k);                                          \
    }

L4_TOPK(topk_f32_k1, LoadF32, 1)
L4_TOPK(topk_f32_k2, LoadF32, 2)
L4_TOPK(topk_f32_k4, LoadF32, 4)
L4_TOPK(topk_f32_k8, LoadF32, 8)
L4_TOPK(topk_f32_k16, LoadF32, 16)
L4_TOPK(topk_f32_k32, LoadF32, 32)
L4_TOPK(topk_f16_k1, LoadF16, 1)
L4_TOPK(topk_f16_k2, LoadF16, 2)
L4_TOPK(topk_f16_k4, LoadF16, 4)
L4_TOPK(topk_f16_k8, LoadF16, 8)
L4_TOPK(topk_f16_k16, LoadF16, 16)
L4_TOPK(topk_f16_k32, LoadF16, 32)
L4_TOPK(topk_bf16_k1, LoadBF16, 1)
L4_TOPK(topk_bf16_k2, LoadBF16, 2)
L4_TOPK(topk_bf16_k4, LoadBF16, 4)
L4_TOPK(topk_bf16_k8, LoadBF16, 8)
L4_TOPK(topk_bf16_k16, LoadBF16, 16)
L4_TOPK(topk_bf16_k32, LoadBF16, 32)
