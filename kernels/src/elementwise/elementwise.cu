// elementwise.cu: unary maps y = f(x) and binary ops y = a ∘ b (NumPy broadcasting), for f32,
// f16 and bf16, computed in f32 and rounded once into the dtype, like the CPU ops in
// l4-core's ops/elementwise.rs (the reference).
//
// Variants: one pair of extern "C" entry points per (op, dtype); Rust picks by name
// (cuda.rs, `unary_function_name` / `binary_function_name`):
//   1. ew_unary_<op>_<dtype>           contiguous x -> contiguous y; 16-byte vector loads and
//                                      stores when x and y are 16-byte aligned, else scalar.
//   2. ew_unary_<op>_<dtype>_strided   any strided x (its view's element strides) -> contiguous y.
//   3. ew_binary_<op>_<dtype>          contiguous a, b of the output's shape -> contiguous y;
//                                      vectorised like 1.
//   4. ew_binary_<op>_<dtype>_strided  a and b as strided views broadcast to the output shape
//                                      (stride 0 on stretched dimensions) -> contiguous y.
//   unary ops:  neg exp sqrt silu gelu sigmoid tanh square recip affine scale
//   binary ops: add sub mul div maximum minimum
//   dtypes:     f32 f16 bf16
// All loops are grid-stride, so any grid covers any n; the launcher caps the grid. The strided
// variants index with 32-bit arithmetic when n < 2^32 (64-bit otherwise); the launcher drops
// unit dimensions and merges dimensions every operand walks with one stride first, so a
// contiguous set of operands always takes the vectorised variant.
//
// Numerics (docs/numerics.md):
// * Inputs widen exactly to f32; the result is rounded once (cvt.rn) into the dtype.
// * Every arithmetic step is an explicit IEEE round-to-nearest intrinsic (__fadd_rn, __fmul_rn,
//   __fdiv_rn, __fsqrt_rn), so NVVM cannot contract x*m + a into an FMA (NVRTC's default is
//   --fmad=true) and the steps are exactly the CPU's: neg, sqrt, square, recip, affine, scale
//   and all binary ops agree with the CPU bit for bit (NaN payloads aside).
// * exp, tanh, sigmoid, silu and gelu use CUDA's expf / tanhf / erfcf (max 2, 2 and 4 ulp per
//   the CUDA math documentation) where the CPU uses libm: within the pairwise elementwise
//   tolerance, not bitwise. The formulas are the CPU's (overflow-free sigmoid; silu and gelu
//   are -0 at -inf; gelu = (0.5·x)·erfc((−x)·(1/√2)) with the same f32 constant).
// * maximum/minimum propagate NaN; between equal operands (+0 and -0) they return `a`, which
//   is what the CPU's f32::max/min do on x86-64 (the sign of a zero result is not part of the
//   contract: -0 and +0 are equal for ranking).
// * No --use_fast_math, no ftz: subnormal inputs and outputs are kept.
//
// Check: cargo xtask check-kernels --kernel elementwise   (sm_90a CUBIN, 0 spills, no tensor cores)
// Test:  cargo test -p l4-kernels elementwise             (GPU parts skip without a device)
// Bench: none.

typedef unsigned long long u64;
typedef unsigned int u32;

#define EW_MAX_RANK 8
#define EW_BLOCK 256
// Resident blocks per SM the launch bounds ask for: 8 x 256 threads fill an SM, so ptxas keeps
// every variant at <= 32 registers (full occupancy for these memory-bound loops).
#define EW_MIN_BLOCKS 8

// The output's geometry for the strided variants, innermost dimension first; element strides
// of a and b into their storage (0 on broadcast dimensions). Mirrors `Geometry` in cuda.rs
// (#[repr(C)], 200 bytes); passed by value as a kernel parameter.
struct EwGeometry {
    u64 shape[EW_MAX_RANK];
    u64 stride_a[EW_MAX_RANK];
    u64 stride_b[EW_MAX_RANK];
    u32 rank;
    u32 pad;
};

// ---- element types: raw bits <-> f32 -------------------------------------------------------

template <int SIZE> struct EwRaw;
template <> struct EwRaw<4> { typedef unsigned int T; };
template <> struct EwRaw<2> { typedef unsigned short T; };

struct EwF32 {
    static constexpr int SIZE = 4;
    static __device__ __forceinline__ float load(u32 bits) { return __uint_as_float(bits); }
    static __device__ __forceinline__ u32 store(float v) { return __float_as_uint(v); }
};
struct EwF16 {
    static constexpr int SIZE = 2;
    static __device__ __forceinline__ float load(u32 bits) { return l4_f16_to_f32((l4_f16)bits); }
    static __device__ __forceinline__ u32 store(float v) { return l4_f32_to_f16(v); }
};
struct EwBF16 {
    static constexpr int SIZE = 2;
    static __device__ __forceinline__ float load(u32 bits) { return l4_bf16_to_f32((l4_bf16)bits); }
    static __device__ __forceinline__ u32 store(float v) { return l4_f32_to_bf16(v); }
};

// ---- 16-byte packs: four 32-bit words, elements little-endian inside -----------------------

struct EwPack {
    u32 w[4];
    static __device__ __forceinline__ EwPack load(const void* base, u64 i) {
        const uint4 v = ((const uint4*)base)[i];
        EwPack p;
        p.w[0] = v.x;
        p.w[1] = v.y;
        p.w[2] = v.z;
        p.w[3] = v.w;
        return p;
    }
    __device__ __forceinline__ void store(void* base, u64 i) const {
        uint4 v;
        v.x = w[0];
        v.y = w[1];
        v.z = w[2];
        v.w = w[3];
        ((uint4*)base)[i] = v;
    }
    // Element k (a compile-time constant after unrolling) of SIZE bytes.
    template <int SIZE> __device__ __forceinline__ u32 get(int k) const {
        if (SIZE == 4) return w[k];
        return (w[k >> 1] >> ((k & 1) * 16)) & 0xffffu;
    }
    template <int SIZE> __device__ __forceinline__ void set(int k, u32 bits) {
        if (SIZE == 4) {
            w[k] = bits;
        } else if (k & 1) {
            w[k >> 1] = (w[k >> 1] & 0xffffu) | (bits << 16);
        } else {
            w[k >> 1] = bits & 0xffffu;
        }
    }
};

// ---- the ops, in the CPU's exact formulas --------------------------------------------------

// σ(x) without overflow: 1/(1 + e^-x) for x >= 0, e^x/(1 + e^x) otherwise (NaN takes the
// second branch, as on the CPU, and stays NaN).
static __device__ __forceinline__ float ew_sigmoid(float x) {
    if (x >= 0.0f) return __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-x)));
    const float e = expf(x);
    return __fdiv_rn(e, __fadd_rn(1.0f, e));
}

#define EW_NEG_INF __int_as_float(0xff800000)
// 1/√2 rounded to f32: the bits of Rust's std::f32::consts::FRAC_1_SQRT_2 (checked in tests.rs).
#define EW_FRAC_1_SQRT_2 __int_as_float(0x3f3504f3)

struct OpNeg { static __device__ __forceinline__ float f(float x, float, float) { return -x; } };
struct OpExp { static __device__ __forceinline__ float f(float x, float, float) { return expf(x); } };
struct OpSqrt { static __device__ __forceinline__ float f(float x, float, float) { return __fsqrt_rn(x); } };
struct OpSigmoid { static __device__ __forceinline__ float f(float x, float, float) { return ew_sigmoid(x); } };
struct OpTanh { static __device__ __forceinline__ float f(float x, float, float) { return tanhf(x); } };
struct OpSquare { static __device__ __forceinline__ float f(float x, float, float) { return __fmul_rn(x, x); } };
struct OpRecip { static __device__ __forceinline__ float f(float x, float, float) { return __fdiv_rn(1.0f, x); } };
// x·mul + add: two roundings, never one FMA (p0 = mul, p1 = add, both already f32).
struct OpAffine {
    static __device__ __forceinline__ float f(float x, float mul, float add) {
        return __fadd_rn(__fmul_rn(x, mul), add);
    }
};
// x·factor (p0 = factor): one rounding; the sign of a zero is kept (unlike affine with add = 0).
struct OpScale {
    static __device__ __forceinline__ float f(float x, float factor, float) { return __fmul_rn(x, factor); }
};
struct OpSilu {
    static __device__ __forceinline__ float f(float x, float, float) {
        if (x == EW_NEG_INF) return -0.0f;
        return __fmul_rn(x, ew_sigmoid(x));
    }
};
// Exact GELU as (0.5·x)·erfc((−x)·(1/√2)), the CPU's evaluation order.
struct OpGelu {
    static __device__ __forceinline__ float f(float x, float, float) {
        if (x == EW_NEG_INF) return -0.0f;
        return __fmul_rn(__fmul_rn(0.5f, x), erfcf(__fmul_rn(-x, EW_FRAC_1_SQRT_2)));
    }
};

struct OpAdd { static __device__ __forceinline__ float f(float a, float b) { return __fadd_rn(a, b); } };
struct OpSub { static __device__ __forceinline__ float f(float a, float b) { return __fsub_rn(a, b); } };
struct OpMul { static __device__ __forceinline__ float f(float a, float b) { return __fmul_rn(a, b); } };
struct OpDiv { static __device__ __forceinline__ float f(float a, float b) { return __fdiv_rn(a, b); } };
// NaN-propagating; `a` when the operands compare equal (see the header).
struct OpMaximum {
    static __device__ __forceinline__ float f(float a, float b) {
        if (a != a || b != b) return __int_as_float(0x7fc00000);
        return b > a ? b : a;
    }
};
struct OpMinimum {
    static __device__ __forceinline__ float f(float a, float b) {
        if (a != a || b != b) return __int_as_float(0x7fc00000);
        return b < a ? b : a;
    }
};

// ---- index helpers ------------------------------------------------------------------------

static __device__ __forceinline__ u64 ew_first() { return (u64)blockIdx.x * blockDim.x + threadIdx.x; }
static __device__ __forceinline__ u64 ew_step() { return (u64)gridDim.x * blockDim.x; }

// Storage offsets of output element i in a and b. I is the type of the index arithmetic: u32
// when n < 2^32 (every dimension then fits, and 32-bit division is far cheaper), else u64.
// The loop is fully unrolled so that the geometry is read with constant indices (parameter
// space, no local copy).
template <typename I>
static __device__ __forceinline__ void ew_offsets(u64 i, const EwGeometry& g, u64& oa, u64& ob) {
    I rem = (I)i;
    oa = 0;
    ob = 0;
#pragma unroll
    for (int d = 0; d < EW_MAX_RANK; ++d) {
        if (d + 1 < (int)g.rank) {
            const I size = (I)g.shape[d];
            const I q = rem / size;
            const u64 idx = (u64)(rem - q * size);
            rem = q;
            oa += idx * g.stride_a[d];
            ob += idx * g.stride_b[d];
        } else if (d + 1 == (int)g.rank) {
            // The outermost dimension: what is left is its index.
            oa += (u64)rem * g.stride_a[d];
            ob += (u64)rem * g.stride_b[d];
        }
    }
}

// ---- kernel bodies -------------------------------------------------------------------------

template <class D, class Op>
static __device__ __forceinline__ void ew_unary_contiguous(const void* __restrict__ x, void* __restrict__ y, u64 n,
                                                           float p0, float p1) {
    typedef typename EwRaw<D::SIZE>::T R;
    constexpr int V = 16 / D::SIZE;
    u64 done = 0;
    if ((((u64)x | (u64)y) & 15) == 0) {
        const u64 packs = n / V;
        for (u64 i = ew_first(); i < packs; i += ew_step()) {
            const EwPack in = EwPack::load(x, i);
            EwPack out;
#pragma unroll
            for (int k = 0; k < V; ++k) out.set<D::SIZE>(k, D::store(Op::f(D::load(in.get<D::SIZE>(k)), p0, p1)));
            out.store(y, i);
        }
        done = packs * V;
    }
    const R* xs = (const R*)x;
    R* ys = (R*)y;
    for (u64 i = done + ew_first(); i < n; i += ew_step()) ys[i] = (R)D::store(Op::f(D::load(xs[i]), p0, p1));
}

template <class D, class Op, typename I>
static __device__ __forceinline__ void ew_unary_strided_loop(const void* __restrict__ x, void* __restrict__ y, u64 n,
                                                             float p0, float p1, const EwGeometry& g) {
    typedef typename EwRaw<D::SIZE>::T R;
    const R* xs = (const R*)x;
    R* ys = (R*)y;
    for (u64 i = ew_first(); i < n; i += ew_step()) {
        u64 oa, ob;
        ew_offsets<I>(i, g, oa, ob);
        ys[i] = (R)D::store(Op::f(D::load(xs[oa]), p0, p1));
    }
}

template <class D, class Op>
static __device__ __forceinline__ void ew_unary_strided(const void* __restrict__ x, void* __restrict__ y, u64 n,
                                                        float p0, float p1, const EwGeometry& g) {
    if (n <= 0xffffffffull) {
        ew_unary_strided_loop<D, Op, u32>(x, y, n, p0, p1, g);
    } else {
        ew_unary_strided_loop<D, Op, u64>(x, y, n, p0, p1, g);
    }
}

template <class D, class Op>
static __device__ __forceinline__ void ew_binary_contiguous(const void* __restrict__ a, const void* __restrict__ b,
                                                            void* __restrict__ y, u64 n) {
    typedef typename EwRaw<D::SIZE>::T R;
    constexpr int V = 16 / D::SIZE;
    u64 done = 0;
    if ((((u64)a | (u64)b | (u64)y) & 15) == 0) {
        const u64 packs = n / V;
        for (u64 i = ew_first(); i < packs; i += ew_step()) {
            const EwPack pa = EwPack::load(a, i);
            const EwPack pb = EwPack::load(b, i);
            EwPack out;
#pragma unroll
            for (int k = 0; k < V; ++k) {
                out.set<D::SIZE>(k, D::store(Op::f(D::load(pa.get<D::SIZE>(k)), D::load(pb.get<D::SIZE>(k)))));
            }
            out.store(y, i);
        }
        done = packs * V;
    }
    const R* as = (const R*)a;
    const R* bs = (const R*)b;
    R* ys = (R*)y;
    for (u64 i = done + ew_first(); i < n; i += ew_step()) ys[i] = (R)D::store(Op::f(D::load(as[i]), D::load(bs[i])));
}

template <class D, class Op, typename I>
static __device__ __forceinline__ void ew_binary_strided_loop(const void* __restrict__ a, const void* __restrict__ b,
                                                              void* __restrict__ y, u64 n, const EwGeometry& g) {
    typedef typename EwRaw<D::SIZE>::T R;
    const R* as = (const R*)a;
    const R* bs = (const R*)b;
    R* ys = (R*)y;
    for (u64 i = ew_first(); i < n; i += ew_step()) {
        u64 oa, ob;
        ew_offsets<I>(i, g, oa, ob);
        ys[i] = (R)D::store(Op::f(D::load(as[oa]), D::load(bs[ob])));
    }
}

template <class D, class Op>
static __device__ __forceinline__ void ew_binary_strided(const void* __restrict__ a, const void* __restrict__ b,
                                                         void* __restrict__ y, u64 n, const EwGeometry& g) {
    if (n <= 0xffffffffull) {
        ew_binary_strided_loop<D, Op, u32>(a, b, y, n, g);
    } else {
        ew_binary_strided_loop<D, Op, u64>(a, b, y, n, g);
    }
}

// ---- entry points --------------------------------------------------------------------------

#define EW_UNARY(NAME, OP, DT, D)                                                                                      \
    extern "C" __global__ void __launch_bounds__(EW_BLOCK, EW_MIN_BLOCKS)                                              \
        ew_unary_##NAME##_##DT(const void* __restrict__ x, void* __restrict__ y, u64 n, float p0, float p1) {          \
        ew_unary_contiguous<D, OP>(x, y, n, p0, p1);                                                                   \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(EW_BLOCK, EW_MIN_BLOCKS) ew_unary_##NAME##_##DT##_strided(            \
        const void* __restrict__ x, void* __restrict__ y, u64 n, float p0, float p1, const EwGeometry g) {             \
        ew_unary_strided<D, OP>(x, y, n, p0, p1, g);                                                                   \
    }

#define EW_BINARY(NAME, OP, DT, D)                                                                                     \
    extern "C" __global__ void __launch_bounds__(EW_BLOCK, EW_MIN_BLOCKS) ew_binary_##NAME##_##DT(                     \
        const void* __restrict__ a, const void* __restrict__ b, void* __restrict__ y, u64 n) {                         \
        ew_binary_contiguous<D, OP>(a, b, y, n);                                                                       \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(EW_BLOCK, EW_MIN_BLOCKS) ew_binary_##NAME##_##DT##_strided(           \
        const void* __restrict__ a, const void* __restrict__ b, void* __restrict__ y, u64 n, const EwGeometry g) {     \
        ew_binary_strided<D, OP>(a, b, y, n, g);                                                                       \
    }

#define EW_ALL_DTYPES(M, NAME, OP) M(NAME, OP, f32, EwF32) M(NAME, OP, f16, EwF16) M(NAME, OP, bf16, EwBF16)

EW_ALL_DTYPES(EW_UNARY, neg, OpNeg)
EW_ALL_DTYPES(EW_UNARY, exp, OpExp)
EW_ALL_DTYPES(EW_UNARY, sqrt, OpSqrt)
EW_ALL_DTYPES(EW_UNARY, silu, OpSilu)
EW_ALL_DTYPES(EW_UNARY, gelu, OpGelu)
EW_ALL_DTYPES(EW_UNARY, sigmoid, OpSigmoid)
EW_ALL_DTYPES(EW_UNARY, tanh, OpTanh)
EW_ALL_DTYPES(EW_UNARY, square, OpSquare)
EW_ALL_DTYPES(EW_UNARY, recip, OpRecip)
EW_ALL_DTYPES(EW_UNARY, affine, OpAffine)
EW_ALL_DTYPES(EW_UNARY, scale, OpScale)

EW_ALL_DTYPES(EW_BINARY, add, OpAdd)
EW_ALL_DTYPES(EW_BINARY, sub, OpSub)
EW_ALL_DTYPES(EW_BINARY, mul, OpMul)
EW_ALL_DTYPES(EW_BINARY, div, OpDiv)
EW_ALL_DTYPES(EW_BINARY, maximum, OpMaximum)
EW_ALL_DTYPES(EW_BINARY, minimum, OpMinimum)
