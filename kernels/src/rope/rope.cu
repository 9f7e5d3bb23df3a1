// rope.cu: rotary position embedding in Llama 4's adjacent-pair (complex) form, on a contiguous
// x [b, t, heads, dh] whose token i sits at absolute position start + i.
//
//   θ   = f32(start + i) · inv_freq[j]                    (one f32 product, as the CPU computes it)
//   y[2j]   = x[2j]·cos θ − x[2j+1]·sin θ
//   y[2j+1] = x[2j]·sin θ + x[2j+1]·cos θ                 (j = 0 .. dh/2 − 1)
//
// f32 throughout, rounded once into the output dtype. The products and sums use __fmul_rn /
// __fadd_rn / __fsub_rn, so no FMA contraction: each is the same single rounding the CPU
// reference (`rope/reference.rs`) does, and the only difference from the CPU is sin/cos:
// sincosf (the accurate one, 2 ulp, with full range reduction for large θ; not __sinf) against
// the CPU's f64 sin/cos rounded to f32. The tests derive their tolerance from that.
//
// Variants (one extern "C" entry point each; Rust picks by dtype):
//   1. rope_{f32,f16,bf16}  one thread per (b·t row, group of ROPE_HEADS heads, pair j): computes
//                           sincos once and rotates that pair in up to ROPE_HEADS heads.
//                           Consecutive threads take consecutive pairs of one head, so accesses
//                           coalesce; a pair moves in one access (8 B f32, 4 B f16/bf16) when
//                           both pointers allow it. Grid-stride over the items.
//
// Resources: 32 registers, no spills; the 32 B stack frame and the LDL/STL that check-kernels
// counts are sincosf's Payne-Hanek reduction (a 7-word local array), taken only for |θ| > 105615
// (positions past ~10^5 at inv_freq ≈ 1), once per thread and head group.
//
// Check: cargo xtask check-kernels --kernel rope   (sm_90a, no spills, SASS class: none)
// Test:  cargo test -p l4-kernels rope             (CPU always; GPU when present)
// Bench: none yet.

typedef unsigned long long u64;

// Heads rotated per thread with one sincos.
#define ROPE_HEADS 8u

// Static member functions (L4_DEVICE carries `static`, which members cannot repeat).
#define L4_MEMBER static __device__ __forceinline__

// ---- element types: a pair (x[2j], x[2j+1]) widened to f32 / rounded from f32 ---------------

struct ElemF32 {
    typedef float raw;
    L4_MEMBER void load2(const raw* p, bool vec, float& a, float& b) {
        if (vec) {
            const float2 q = *reinterpret_cast<const float2*>(p);
            a = q.x;
            b = q.y;
        } else {
            a = p[0];
            b = p[1];
        }
    }
    L4_MEMBER void store2(raw* p, bool vec, float a, float b) {
        if (vec) {
            float2 q;
            q.x = a;
            q.y = b;
            *reinterpret_cast<float2*>(p) = q;
        } else {
            p[0] = a;
            p[1] = b;
        }
    }
};

// 16-bit floats: a pair is one 32-bit word, little-endian (x[2j] in the low half).
template <class Conv>
struct Elem16 {
    typedef unsigned short raw;
    L4_MEMBER void load2(const raw* p, bool vec, float& a, float& b) {
        if (vec) {
            const unsigned int q = *reinterpret_cast<const unsigned int*>(p);
            a = Conv::to_f32((raw)(q & 0xffffu));
            b = Conv::to_f32((raw)(q >> 16));
        } else {
            a = Conv::to_f32(p[0]);
            b = Conv::to_f32(p[1]);
        }
    }
    L4_MEMBER void store2(raw* p, bool vec, float a, float b) {
        const raw lo = Conv::from_f32(a), hi = Conv::from_f32(b);
        if (vec) {
            *reinterpret_cast<unsigned int*>(p) = (unsigned int)lo | ((unsigned int)hi << 16);
        } else {
            p[0] = lo;
            p[1] = hi;
        }
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

// ---- the kernel body ------------------------------------------------------------------------

// rows = b·t; half = dh/2; inv_freq has half entries.
template <class E>
L4_DEVICE void rope_items(const typename E::raw* __restrict__ x, const float* __restrict__ inv_freq,
                          typename E::raw* __restrict__ y, u64 rows, unsigned t, unsigned heads, unsigned half,
                          u64 start) {
    // A pair starts at an even element, so aligned base pointers keep every pair aligned.
    const u64 pair_bytes = 2 * sizeof(typename E::raw);
    const bool vec = ((u64)x % pair_bytes) == 0 && ((u64)y % pair_bytes) == 0;
    const unsigned groups = (heads + ROPE_HEADS - 1) / ROPE_HEADS;
    const u64 items = rows * groups * half;
    for (u64 item = (u64)blockIdx.x * blockDim.x + threadIdx.x; item < items; item += (u64)gridDim.x * blockDim.x) {
        const unsigned j = (unsigned)(item % half);
        const u64 rest = item / half;
        const unsigned g = (unsigned)(rest % groups);
        const u64 row = rest / groups;  // b·t index
        const u64 position = start + row % t;
        // θ = f32(position) · inv_freq[j]: u64 → f32 rounds to nearest even like Rust's `as f32`.
        const float angle = __fmul_rn((float)position, inv_freq[j]);
        float s, c;
        sincosf(angle, &s, &c);
        const unsigned h_end = min(heads, (g + 1) * ROPE_HEADS);
        for (unsigned h = g * ROPE_HEADS; h < h_end; ++h) {
            const u64 offset = ((row * heads + h) * half + j) * 2;
            float re, im;
            E::load2(x + offset, vec, re, im);
            const float out_re = __fsub_rn(__fmul_rn(re, c), __fmul_rn(im, s));
            const float out_im = __fadd_rn(__fmul_rn(re, s), __fmul_rn(im, c));
            E::store2(y + offset, vec, out_re, out_im);
        }
    }
}

// ---- entry points ---------------------------------------------------------------------------

#define L4_ROPE_ENTRY(SUFFIX, E)                                                                           \
    extern "C" __global__ void __launch_bounds__(256)                                                     \
        rope_##SUFFIX(const E::raw* __restrict__ x, const float* __restrict__ inv_freq, E::raw* __restrict__ y, \
                      u64 rows, unsigned t, unsigned heads, unsigned half, u64 start) {                    \
        rope_items<E>(x, inv_freq, y, rows, t, heads, half, start);                                        \
    }

L4_ROPE_ENTRY(f32, ElemF32)
L4_ROPE_ENTRY(f16, Elem16<ConvF16>)
L4_ROPE_ENTRY(bf16, Elem16<ConvBF16>)
