// common.cuh: device helpers shared by every l4lab kernel.
//
// NVRTC runs with no include paths (no CUDA headers), so this file is prepended to each kernel's
// source by the loader (`KernelSource::full_source`), followed by a `#line 1` directive so
// compile errors still name the kernel's own file and line. Everything here is `static inline`
// device code: a kernel pays only for what it uses.
//
// Element types are carried as raw bits (bf16/f16 as unsigned short, FP8 as unsigned char) and
// converted with the hardware's own instructions, so rounding is round-to-nearest-even and FP8
// saturates like `cvt.rn.satfinite` (finite overflow and ±inf to ±max, NaN stays NaN), which is
// the CPU reference's documented rule (docs/numerics.md).

// Kernels use only some of these helpers; unused static functions are expected, not a warning.
#pragma nv_diag_suppress 177

typedef unsigned short l4_bf16;
typedef unsigned short l4_f16;
typedef unsigned char l4_fp8;

#define L4_INF __int_as_float(0x7f800000)
#define L4_DEVICE static __device__ __forceinline__

L4_DEVICE float l4_bf16_to_f32(l4_bf16 h) { return __uint_as_float(((unsigned int)h) << 16); }

L4_DEVICE l4_bf16 l4_f32_to_bf16(float f) {
    l4_bf16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}

L4_DEVICE float l4_f16_to_f32(l4_f16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

L4_DEVICE l4_f16 l4_f32_to_f16(float f) {
    l4_f16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}

// FP8 from f32: the x2 form converts a pair; the second source operand lands in the low byte.
L4_DEVICE l4_fp8 l4_f32_to_e4m3(float f) {
    unsigned short r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(0.0f), "f"(f));
    return (l4_fp8)(r & 0xff);
}

L4_DEVICE l4_fp8 l4_f32_to_e5m2(float f) {
    unsigned short r;
    asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(r) : "f"(0.0f), "f"(f));
    return (l4_fp8)(r & 0xff);
}

// FP8 to f32, exactly: FP8 widens to f16 without rounding, f16 to f32 likewise.
L4_DEVICE float l4_e4m3_to_f32(l4_fp8 x) {
    unsigned int pair;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(pair) : "h"((unsigned short)x));
    return l4_f16_to_f32((l4_f16)(pair & 0xffff));
}

L4_DEVICE float l4_e5m2_to_f32(l4_fp8 x) {
    unsigned int pair;
    asm("cvt.rn.f16x2.e5m2x2 %0, %1;" : "=r"(pair) : "h"((unsigned short)x));
    return l4_f16_to_f32((l4_f16)(pair & 0xffff));
}

// Reductions across the 32 lanes of a warp; every lane gets the result.
L4_DEVICE float l4_warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

L4_DEVICE float l4_warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}
