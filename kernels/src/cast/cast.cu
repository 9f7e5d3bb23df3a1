// cast.cu: y = x converted to another float dtype, among f32, f16, bf16, f8e4m3 and f8e5m2
// (all 20 ordered pairs of different dtypes), bit for bit like the CPU's `Tensor::to_dtype`.
//
// Variants: two extern "C" entry points per (source, destination) pair; Rust picks by name
// (cuda.rs, `function_name`):
//   1. cast_<src>_<dst>           contiguous x -> contiguous y; vector loads and stores of
//                                 V = 16 / max(size(src), size(dst)) elements per thread when
//                                 both pointers are aligned to their V-element width, else scalar.
//   2. cast_<src>_<dst>_strided   any strided x (its view's element strides) -> contiguous y.
//   dtype names: f32 f16 bf16 f8e4m3 f8e5m2 (l4-core's `DType::name`).
// All loops are grid-stride, so any grid covers any n; the launcher caps the grid.
//
// Numerics: every conversion widens the source to f32 (exact for every source dtype) and then
// rounds ONCE into the destination with the hardware's own cvt: cvt.rn.f16.f32,
// cvt.rn.bf16.f32, cvt.rn.satfinite.{e4m3x2,e5m2x2}.f32 (round to nearest, ties to even; FP8
// saturates finite overflow and ±inf to ±max and keeps NaN a NaN). That is exactly the CPU's
// rule (exact widening to f32/f64, one rounding, FP8 satfinite; docs/numerics.md), so results
// agree bit for bit except NaN payloads. Widening FP8 goes through cvt.rn.f16x2.{e4m3x2,e5m2x2}
// (exact) and f16 -> f32 (exact).
//
// The x2 conversions here feed the same value to both lanes (both source operands, or both
// bytes of the packed FP8 pair) and take the low lane, so the result does not depend on which
// lane the ISA maps to which byte (PTX ISA: for `cvt...e4m3x2.f32 d, a, b`, a goes to the upper
// byte and b to the lower one; common.cuh relies on that ordering, this file does not need to).
//
// Check: cargo xtask check-kernels --kernel cast   (sm_90a CUBIN, 0 spills, no tensor cores)
// Test:  cargo test -p l4-kernels cast             (exhaustive over every 8- and 16-bit code on
//                                                  the GPU; GPU parts skip without a device)
// Bench: none.

typedef unsigned long long u64;
typedef unsigned int u32;

#define CAST_MAX_RANK 8
#define CAST_BLOCK 256
// Resident blocks per SM the launch bounds ask for: 8 x 256 threads fill an SM, so ptxas keeps
// every variant at <= 32 registers (full occupancy for these memory-bound loops).
#define CAST_MIN_BLOCKS 8

// The output's geometry for the strided variants, innermost dimension first; element strides
// of x into its storage. Mirrors `Geometry` in elementwise/cuda.rs (#[repr(C)], 200 bytes; the
// second stride array is unused here).
struct CastGeometry {
    u64 shape[CAST_MAX_RANK];
    u64 stride_x[CAST_MAX_RANK];
    u64 stride_unused[CAST_MAX_RANK];
    u32 rank;
    u32 pad;
};

// ---- element types: raw bits <-> f32 -------------------------------------------------------

template <int SIZE> struct CastRaw;
template <> struct CastRaw<4> { typedef unsigned int T; };
template <> struct CastRaw<2> { typedef unsigned short T; };
template <> struct CastRaw<1> { typedef unsigned char T; };

static __device__ __forceinline__ l4_fp8 cast_f32_to_e4m3(float v) {
    unsigned short pair;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(v), "f"(v));
    return (l4_fp8)(pair & 0xff);
}

static __device__ __forceinline__ l4_fp8 cast_f32_to_e5m2(float v) {
    unsigned short pair;
    asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(v), "f"(v));
    return (l4_fp8)(pair & 0xff);
}

static __device__ __forceinline__ float cast_e4m3_to_f32(u32 code) {
    const unsigned short both = (unsigned short)((code << 8) | code);
    u32 halves;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(halves) : "h"(both));
    return l4_f16_to_f32((l4_f16)(halves & 0xffff));
}

static __device__ __forceinline__ float cast_e5m2_to_f32(u32 code) {
    const unsigned short both = (unsigned short)((code << 8) | code);
    u32 halves;
    asm("cvt.rn.f16x2.e5m2x2 %0, %1;" : "=r"(halves) : "h"(both));
    return l4_f16_to_f32((l4_f16)(halves & 0xffff));
}

struct CastF32 {
    static constexpr int SIZE = 4;
    static __device__ __forceinline__ float load(u32 bits) { return __uint_as_float(bits); }
    static __device__ __forceinline__ u32 store(float v) { return __float_as_uint(v); }
};
struct CastF16 {
    static constexpr int SIZE = 2;
    static __device__ __forceinline__ float load(u32 bits) { return l4_f16_to_f32((l4_f16)bits); }
    static __device__ __forceinline__ u32 store(float v) { return l4_f32_to_f16(v); }
};
struct CastBF16 {
    static constexpr int SIZE = 2;
    static __device__ __forceinline__ float load(u32 bits) { return l4_bf16_to_f32((l4_bf16)bits); }
    static __device__ __forceinline__ u32 store(float v) { return l4_f32_to_bf16(v); }
};
struct CastE4M3 {
    static constexpr int SIZE = 1;
    static __device__ __forceinline__ float load(u32 bits) { return cast_e4m3_to_f32(bits); }
    static __device__ __forceinline__ u32 store(float v) { return cast_f32_to_e4m3(v); }
};
struct CastE5M2 {
    static constexpr int SIZE = 1;
    static __device__ __forceinline__ float load(u32 bits) { return cast_e5m2_to_f32(bits); }
    static __device__ __forceinline__ u32 store(float v) { return cast_f32_to_e5m2(v); }
};

// ---- packs of BYTES (4, 8 or 16) bytes as 32-bit words, elements little-endian inside -------

template <int BYTES> struct CastPack {
    static constexpr int WORDS = BYTES / 4;
    u32 w[WORDS];

    static __device__ __forceinline__ CastPack load(const void* base, u64 i) {
        CastPack p;
        if (WORDS == 4) {
            const uint4 v = ((const uint4*)base)[i];
            p.w[0] = v.x;
            p.w[WORDS > 1 ? 1 : 0] = v.y;
            p.w[WORDS > 2 ? 2 : 0] = v.z;
            p.w[WORDS > 3 ? 3 : 0] = v.w;
        } else if (WORDS == 2) {
            const uint2 v = ((const uint2*)base)[i];
            p.w[0] = v.x;
            p.w[WORDS > 1 ? 1 : 0] = v.y;
        } else {
            p.w[0] = ((const u32*)base)[i];
        }
        return p;
    }

    __device__ __forceinline__ void store(void* base, u64 i) const {
        if (WORDS == 4) {
            uint4 v;
            v.x = w[0];
            v.y = w[WORDS > 1 ? 1 : 0];
            v.z = w[WORDS > 2 ? 2 : 0];
            v.w = w[WORDS > 3 ? 3 : 0];
            ((uint4*)base)[i] = v;
        } else if (WORDS == 2) {
            uint2 v;
            v.x = w[0];
            v.y = w[WORDS > 1 ? 1 : 0];
            ((uint2*)base)[i] = v;
        } else {
            ((u32*)base)[i] = w[0];
        }
    }

    __device__ __forceinline__ void clear() {
#pragma unroll
        for (int j = 0; j < WORDS; ++j) w[j] = 0;
    }

    // Element k (a compile-time constant after unrolling) of SIZE bytes.
    template <int SIZE> __device__ __forceinline__ u32 get(int k) const {
        if (SIZE == 4) return w[k];
        if (SIZE == 2) return (w[k >> 1] >> ((k & 1) * 16)) & 0xffffu;
        return (w[k >> 2] >> ((k & 3) * 8)) & 0xffu;
    }

    // ORs element k into a cleared pack.
    template <int SIZE> __device__ __forceinline__ void put(int k, u32 bits) {
        if (SIZE == 4) {
            w[k] = bits;
        } else if (SIZE == 2) {
            w[k >> 1] |= (bits & 0xffffu) << ((k & 1) * 16);
        } else {
            w[k >> 2] |= (bits & 0xffu) << ((k & 3) * 8);
        }
    }
};

// ---- kernel bodies -------------------------------------------------------------------------

static __device__ __forceinline__ u64 cast_first() { return (u64)blockIdx.x * blockDim.x + threadIdx.x; }
static __device__ __forceinline__ u64 cast_step() { return (u64)gridDim.x * blockDim.x; }

template <class S, class D>
static __device__ __forceinline__ void cast_contiguous(const void* __restrict__ x, void* __restrict__ y, u64 n) {
    typedef typename CastRaw<S::SIZE>::T RS;
    typedef typename CastRaw<D::SIZE>::T RD;
    constexpr int WIDEST = S::SIZE > D::SIZE ? S::SIZE : D::SIZE;
    constexpr int V = 16 / WIDEST;
    constexpr int IN_BYTES = V * S::SIZE;
    constexpr int OUT_BYTES = V * D::SIZE;
    u64 done = 0;
    if (((u64)x % IN_BYTES) == 0 && ((u64)y % OUT_BYTES) == 0) {
        const u64 packs = n / V;
        for (u64 i = cast_first(); i < packs; i += cast_step()) {
            const CastPack<IN_BYTES> in = CastPack<IN_BYTES>::load(x, i);
            CastPack<OUT_BYTES> out;
            out.clear();
#pragma unroll
            for (int k = 0; k < V; ++k) out.template put<D::SIZE>(k, D::store(S::load(in.template get<S::SIZE>(k))));
            out.store(y, i);
        }
        done = packs * V;
    }
    const RS* xs = (const RS*)x;
    RD* ys = (RD*)y;
    for (u64 i = done + cast_first(); i < n; i += cast_step()) ys[i] = (RD)D::store(S::load(xs[i]));
}

// I: u32 index arithmetic when n < 2^32, else u64 (see elementwise.cu's ew_offsets). Fully
// unrolled so the geometry is read with constant indices.
template <class S, class D, typename I>
static __device__ __forceinline__ void cast_strided_loop(const void* __restrict__ x, void* __restrict__ y, u64 n,
                                                         const CastGeometry& g) {
    typedef typename CastRaw<S::SIZE>::T RS;
    typedef typename CastRaw<D::SIZE>::T RD;
    const RS* xs = (const RS*)x;
    RD* ys = (RD*)y;
    for (u64 i = cast_first(); i < n; i += cast_step()) {
        I rem = (I)i;
        u64 off = 0;
#pragma unroll
        for (int d = 0; d < CAST_MAX_RANK; ++d) {
            if (d + 1 < (int)g.rank) {
                const I size = (I)g.shape[d];
                const I q = rem / size;
                off += (u64)(rem - q * size) * g.stride_x[d];
                rem = q;
            } else if (d + 1 == (int)g.rank) {
                off += (u64)rem * g.stride_x[d];
            }
        }
        ys[i] = (RD)D::store(S::load(xs[off]));
    }
}

template <class S, class D>
static __device__ __forceinline__ void cast_strided(const void* __restrict__ x, void* __restrict__ y, u64 n,
                                                    const CastGeometry& g) {
    if (n <= 0xffffffffull) {
        cast_strided_loop<S, D, u32>(x, y, n, g);
    } else {
        cast_strided_loop<S, D, u64>(x, y, n, g);
    }
}

// ---- entry points --------------------------------------------------------------------------

#define CAST(SN, S, DN, D)                                                                                             \
    extern "C" __global__ void __launch_bounds__(CAST_BLOCK, CAST_MIN_BLOCKS)                                          \
        cast_##SN##_##DN(const void* __restrict__ x, void* __restrict__ y, u64 n) {                                    \
        cast_contiguous<S, D>(x, y, n);                                                                                \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(CAST_BLOCK, CAST_MIN_BLOCKS)                                          \
        cast_##SN##_##DN##_strided(const void* __restrict__ x, void* __restrict__ y, u64 n, const CastGeometry g) {    \
        cast_strided<S, D>(x, y, n, g);                                                                                \
    }

CAST(f32, CastF32, f16, CastF16)
CAST(f32, CastF32, bf16, CastBF16)
CAST(f32, CastF32, f8e4m3, CastE4M3)
CAST(f32, CastF32, f8e5m2, CastE5M2)
CAST(f16, CastF16, f32, CastF32)
CAST(f16, CastF16, bf16, CastBF16)
CAST(f16, CastF16, f8e4m3, CastE4M3)
CAST(f16, CastF16, f8e5m2, CastE5M2)
CAST(bf16, CastBF16, f32, CastF32)
CAST(bf16, CastBF16, f16, CastF16)
CAST(bf16, CastBF16, f8e4m3, CastE4M3)
CAST(bf16, CastBF16, f8e5m2, CastE5M2)
CAST(f8e4m3, CastE4M3, f32, CastF32)
CAST(f8e4m3, CastE4M3, f16, CastF16)
CAST(f8e4m3, CastE4M3, bf16, CastBF16)
CAST(f8e4m3, CastE4M3, f8e5m2, CastE5M2)
CAST(f8e5m2, CastE5M2, f32, CastF32)
CAST(f8e5m2, CastE5M2, f16, CastF16)
CAST(f8e5m2, CastE5M2, bf16, CastBF16)
CAST(f8e5m2, CastE5M2, f8e4m3, CastE4M3)
