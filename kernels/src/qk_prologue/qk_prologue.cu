// qk_prologue.cu: Llama 4's attention prologue in one pass over the projected queries and
// keys: RoPE (adjacent pairs), the weightless QK RMS-norm and the NoPE query temperature, each
// when the layer has it, written out head-major for the attention kernels.
//
// q [B, T, H, DH] and k [B, T, HK, DH] (contiguous, as the projections make them), token i at
// absolute position p = start + i; inv_freq [DH/2] f32 on the device (uploaded once per layer
// by the model). Per head vector x, in f32:
//   RoPE:        (x[2j], x[2j+1]) rotated by θ = f32(p)·inv_freq[j] (the product rounded to f32,
//                as HF computes it; sincosf, the accurate one)
//   QK-norm:     x · rsqrt(mean(x²) + eps)   (Llama4TextL2Norm: no weight)
//   temperature: queries only, x · s(p) with s(p) = log1p(floor((f32(p) + 1) / floor_scale))
//                · attn_scale + 1 evaluated in f32 one rounded operation at a time, as HF's
//                f32 `attn_scales` are (no FMA contraction), from the kernel's arguments: no
//                per-step table crosses from the host
// written to q_out [B, H, T, DH] and k_out [B, HK, T, DH]. Each step's result is rounded into
// the dtype, as the unfused ops (and HF's bf16 model) round after each; the temperature factor
// stays f32, as HF multiplies the bf16 queries by f32 `attn_scales` and rounds the product
// once: the fused pass evaluates the unfused composition, one read and one write instead of
// three of each.
//
// One warp per head vector (B·T·(H + HK) of them, grid-stride): lane l holds pairs
// l, l + 32, ... (DH ≤ 256), the norm's sum of squares is a warp reduction.
//
// Kernels (extern "C"; Rust picks by dtype): qk_prologue_{f32,bf16,f16}.
//
// Check: cargo xtask check-kernels           (sm_90a CUBIN, spills are errors, SASS class: none)
// Test:  cargo test -p l4-kernels qk_prologue (CPU always; GPU when present)
// Bench: none yet (one read and one write of Q and K; it replaces three elementwise passes).

typedef unsigned int u32;
typedef unsigned long long u64;

#define QKP_THREADS 256
#define QKP_MAX_PAIRS_PER_LANE 4  // DH ≤ 256

struct QkPrologueParams {
    u32 batch, tokens, heads, heads_kv;
    u32 dh;
    u32 rope;     // 0 or 1
    u32 norm;     // 0 or 1
    u32 scale_q;  // 0 or 1: queries get the temperature
    long long start;
    float eps;
    float floor_scale, attn_scale;  // the temperature's (scale_q only)
    u32 pad;
};

// HF's f32 temperature factor of absolute position `pos`, each operation rounded on its own.
L4_DEVICE float qkp_temperature(long long pos, float floor_scale, float attn_scale) {
    const float blocks = floorf(__fdiv_rn(__fadd_rn((float)pos, 1.0f), floor_scale));
    return __fadd_rn(__fmul_rn(log1pf(blocks), attn_scale), 1.0f);
}

L4_DEVICE float qkp_round_f32(float v) { return v; }
L4_DEVICE float qkp_round_bf16(float v) { return l4_bf16_to_f32(l4_f32_to_bf16(v)); }
L4_DEVICE float qkp_round_f16(float v) { return l4_f16_to_f32(l4_f32_to_f16(v)); }
L4_DEVICE float qkp_load_f32(const void* p, u64 i) { return ((const float*)p)[i]; }
L4_DEVICE float qkp_load_bf16(const void* p, u64 i) { return l4_bf16_to_f32(((const l4_bf16*)p)[i]); }
L4_DEVICE float qkp_load_f16(const void* p, u64 i) { return l4_f16_to_f32(((const l4_f16*)p)[i]); }
L4_DEVICE void qkp_store_f32(void* p, u64 i, float v) { ((float*)p)[i] = v; }
L4_DEVICE void qkp_store_bf16(void* p, u64 i, float v) { ((l4_bf16*)p)[i] = l4_f32_to_bf16(v); }
L4_DEVICE void qkp_store_f16(void* p, u64 i, float v) { ((l4_f16*)p)[i] = l4_f32_to_f16(v); }

template <float (*LOAD)(const void*, u64), void (*STORE)(void*, u64, float), float (*ROUND)(float)>
static __device__ __forceinline__ void qk_prologue(const void* __restrict__ q, const void* __restrict__ k,
                                                   const float* __restrict__ inv_freq, void* __restrict__ q_out,
                                                   void* __restrict__ k_out, const QkPrologueParams& p) {
    const u32 lane = threadIdx.x % 32;
    const u64 warps = (u64)gridDim.x * (QKP_THREADS / 32);
    const u32 heads_all = p.heads + p.heads_kv;
    const u64 vectors = (u64)p.batch * p.tokens * heads_all;
    const u32 pairs = p.dh / 2;
    for (u64 w = (u64)blockIdx.x * (QKP_THREADS / 32) + threadIdx.x / 32; w < vectors; w += warps) {
        const u32 head = w % heads_all;
        const u64 bt = w / heads_all;
        const u32 t = bt % p.tokens, b = bt / p.tokens;
        const bool is_q = head < p.heads;
        const u32 hh = is_q ? head : head - p.heads;
        const u32 nh = is_q ? p.heads : p.heads_kv;
        const void* src = is_q ? q : k;
        const u64 in_base = (bt * nh + hh) * p.dh;
        const float temperature =
            is_q && p.scale_q ? qkp_temperature(p.start + t, p.floor_scale, p.attn_scale) : 1.0f;
        float re[QKP_MAX_PAIRS_PER_LANE], im[QKP_MAX_PAIRS_PER_LANE];
        float squares = 0.0f;
#pragma unroll
        for (int c = 0; c < QKP_MAX_PAIRS_PER_LANE; ++c) {
            const u32 j = lane + 32 * c;
            re[c] = im[c] = 0.0f;
            if (j >= pairs) continue;
            float x0 = LOAD(src, in_base + 2 * j), x1 = LOAD(src, in_base + 2 * j + 1);
            if (p.rope) {
                const float angle = __fmul_rn((float)(p.start + t), inv_freq[j]);
                float s, co;
                sincosf(angle, &s, &co);
                const float y0 = x0 * co - x1 * s;
                const float y1 = x0 * s + x1 * co;
                x0 = ROUND(y0);
                x1 = ROUND(y1);
            }
            re[c] = x0;
            im[c] = x1;
            squares = fmaf(x0, x0, fmaf(x1, x1, squares));
        }
        const float norm = p.norm ? rsqrtf(l4_warp_sum(squares) / (float)p.dh + p.eps) : 1.0f;
        const u64 out_base = (((u64)b * nh + hh) * p.tokens + t) * p.dh;
        void* dst = is_q ? q_out : k_out;
#pragma unroll
        for (int c = 0; c < QKP_MAX_PAIRS_PER_LANE; ++c) {
            const u32 j = lane + 32 * c;
            if (j >= pairs) continue;
            // The norm's product rounded, then the temperature's (exact when either is 1).
            STORE(dst, out_base + 2 * j, ROUND(re[c] * norm) * temperature);
            STORE(dst, out_base + 2 * j + 1, ROUND(im[c] * norm) * temperature);
        }
    }
}

#define L4_QK_PROLOGUE(DT)                                                                                   \
    extern "C" __global__ void __launch_bounds__(QKP_THREADS) qk_prologue_##DT(                             \
        const void* __restrict__ q, const void* __restrict__ k, const float* __restrict__ inv_freq,         \
        void* __restrict__ q_out, void* __restrict__ k_out, const QkPrologueParams p) {                      \
        qk_prologue<qkp_load_##DT, qkp_store_##DT, qkp_round_##DT>(q, k, inv_freq, q_out, k_out, p);        \
    }

L4_QK_PROLOGUE(f32)
L4_QK_PROLOGUE(bf16)
L4_QK_PROLOGUE(f16)
