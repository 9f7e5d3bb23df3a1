// attention_decode.cu: attention of a few query rows against a KV cache, split over the keys
// with a fixed split size and combined in a fixed order (flash-decoding), for the decode steps.
//
// One KV head group at a time: q [B, HK, R, DH] holds the R = g·tq query rows that share KV
// head kh (g query heads × tq tokens of the step, head-major), k and v [B, HK, S, DH] the keys
// and values it may see. Row r is at absolute position q_start + r % tq, key j at k_start + j;
// key j is visible to row r when its position is at most the row's (causal). Output
// o [B, HK, R, DH] = softmax(scale · q·kᵀ + mask) · v, per row.
//
// Kernels (extern "C"; Rust picks by dtype):
//   1. attn_decode_split_{f32,bf16,f16}: grid (splits, B·HK), 128 threads (splits on x, whose
//      limit is 2^31 − 1: a 10M-token context is 40960 splits). CTA (split, bh)
//      takes keys [split·SPLIT, +SPLIT); each of its 4 warps streams every 4th key: lanes hold
//      elements lane, lane+32, ... of q (for all R ≤ 8 rows) and of the key, a warp reduction
//      gives the R scores, and an online softmax keeps (max, sum, Σ p·v) per row in registers;
//      each warp loads its next key before it uses the current one.
//      The 4 warps merge in shared memory in warp order and write the split's partial
//      (max, sum, acc[DH]) per row. K and V rows are read once per group, shared by its g heads.
//   2. attn_decode_combine_{f32,bf16,f16}: grid (B·HK·R, ⌈DH/32⌉), 256 threads: M = the
//      splits' largest maximum (order-free), then warp w sums splits w, w + 8, ... in split
//      order for its block's 32 columns and the 8 warp sums are added in warp order:
//      o = Σ e^(m_s−M)·acc_s / Σ e^(m_s−M)·l_s, rounded once; a row that saw no key is 0. The
//      order depends only on the number of splits. Spreading the splits over 8 warps and the
//      columns over blocks keeps a 1M-token context (4096 splits, 84 MB of partials for
//      Scout's 8 KV heads × 5 rows) from being read by one warp per (bh, row) on 40 SMs.
// The split size is fixed (SPLIT = 256 keys), so the result does not depend on the batch, the
// grid or the hardware; there are no atomics. Fully masked splits write m = −∞, l = 0.
//
// Paged variant (attn_decode_split_paged_*): k and v are pools [NB, HK, BS, DH] (BS = 2^block_log2)
// and key j of sequence b sits in block table[b·max_blocks + j / BS] at slot j mod BS; the
// k/v_stride_b fields then hold the block stride. With chunk > 0 a key is also hidden from a
// row when it lies before the row's C-aligned chunk (a chunked layer's pool may still hold the
// tail of the previous chunk in its first block).
//
// Check: cargo xtask check-kernels                (sm_90a CUBIN, spills are errors, SASS class: none)
// Test:  cargo test -p l4-kernels attention_decode (CPU always; GPU when present)
// Bench: none yet.

typedef unsigned int u32;
typedef unsigned long long u64;

#define DEC_THREADS 128
#define DEC_WARPS (DEC_THREADS / 32)
#define DEC_SPLIT 256
#define DEC_MAX_ROWS 8
#define DEC_MAX_DH 128
#define DEC_PER_LANE (DEC_MAX_DH / 32)
#define DEC_COMBINE_WARPS 8
#define DEC_COMBINE_THREADS (DEC_COMBINE_WARPS * 32)

struct DecodeParams {
    u64 q_stride_bh;   // elements between (b, kh) groups of q (R·DH when contiguous)
    u64 k_stride_b, k_stride_h, k_stride_s;
    u64 v_stride_b, v_stride_h, v_stride_s;
    u32 heads_kv, rows, tq, dh;
    u32 keys, splits;
    long long q_start, k_start;
    long long chunk;  // 0: global causal
    float scale;
    u32 block_log2;   // paged only
    u32 max_blocks;   // paged only
    u32 pad;
};

// Offset of key row j of (b, kh) given its (b or block) stride, head stride and row stride.
template <bool PAGED>
L4_DEVICE u64 dec_key_row(const int* __restrict__ table, const DecodeParams& p, u32 b, u32 kh, u32 j, u64 stride_b,
                          u64 stride_h, u64 stride_s) {
    if (PAGED) {
        const u64 block = (u64)table[(u64)b * p.max_blocks + (j >> p.block_log2)];
        return block * stride_b + (u64)kh * stride_h + (u64)(j & ((1u << p.block_log2) - 1)) * stride_s;
    }
    return (u64)b * stride_b + (u64)kh * stride_h + (u64)j * stride_s;
}

L4_DEVICE float dec_load_f32(const void* p, u64 i) { return ((const float*)p)[i]; }
L4_DEVICE float dec_load_bf16(const void* p, u64 i) { return l4_bf16_to_f32(((const l4_bf16*)p)[i]); }
L4_DEVICE float dec_load_f16(const void* p, u64 i) { return l4_f16_to_f32(((const l4_f16*)p)[i]); }
L4_DEVICE void dec_store_f32(void* p, u64 i, float v) { ((float*)p)[i] = v; }
L4_DEVICE void dec_store_bf16(void* p, u64 i, float v) { ((l4_bf16*)p)[i] = l4_f32_to_bf16(v); }
L4_DEVICE void dec_store_f16(void* p, u64 i, float v) { ((l4_f16*)p)[i] = l4_f32_to_f16(v); }

// Partials: [B·HK, splits, R] maxima and sums, [B·HK, splits, R, DH] accumulators (f32).
template <float (*LOAD)(const void*, u64), bool PAGED>
static __device__ __forceinline__ void decode_split(const void* __restrict__ q, const void* __restrict__ k,
                                                    const void* __restrict__ v, const int* __restrict__ table,
                                                    float* __restrict__ part_m,
                                                    float* __restrict__ part_l, float* __restrict__ part_acc,
                                                    const DecodeParams& p) {
    __shared__ float warp_m[DEC_WARPS][DEC_MAX_ROWS];
    __shared__ float warp_l[DEC_WARPS][DEC_MAX_ROWS];
    __shared__ float warp_acc[DEC_WARPS][DEC_MAX_ROWS][DEC_MAX_DH];
    const u32 split = blockIdx.x, bh = blockIdx.y;
    const u32 b = bh / p.heads_kv, kh = bh % p.heads_kv;
    const u32 lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const u32 per_lane = (p.dh + 31) / 32;

    float qv[DEC_MAX_ROWS][DEC_PER_LANE];
    float acc[DEC_MAX_ROWS][DEC_PER_LANE];
    float m[DEC_MAX_ROWS], l[DEC_MAX_ROWS];
#pragma unroll
    for (int r = 0; r < DEC_MAX_ROWS; ++r) {
        m[r] = -L4_INF;
        l[r] = 0.0f;
#pragma unroll
        for (int c = 0; c < DEC_PER_LANE; ++c) {
            const u32 e = lane + 32 * c;
            const bool live = (u32)r < p.rows && (u32)c < per_lane && e < p.dh;
            qv[r][c] = live ? LOAD(q, (u64)bh * p.q_stride_bh + (u64)r * p.dh + e) * p.scale : 0.0f;
            acc[r][c] = 0.0f;
        }
    }
    const u32 first = split * DEC_SPLIT;
    const u32 last = min(first + DEC_SPLIT, p.keys);
    // Key j's elements of this lane (zeros past the split, or past DH).
    auto load_key = [&](u32 j, float (&kv)[DEC_PER_LANE], float (&vv)[DEC_PER_LANE]) {
        const bool key_live = j < last;
        const u64 k_row = key_live ? dec_key_row<PAGED>(table, p, b, kh, j, p.k_stride_b, p.k_stride_h, p.k_stride_s) : 0;
        const u64 v_row = key_live ? dec_key_row<PAGED>(table, p, b, kh, j, p.v_stride_b, p.v_stride_h, p.v_stride_s) : 0;
#pragma unroll
        for (int c = 0; c < DEC_PER_LANE; ++c) {
            const u32 e = lane + 32 * c;
            const bool live = key_live && (u32)c < per_lane && e < p.dh;
            kv[c] = live ? LOAD(k, k_row + e) : 0.0f;
            vv[c] = live ? LOAD(v, v_row + e) : 0.0f;
        }
    };
    // The warp's next key is loaded before the current one is used, so its memory latency
    // overlaps the scores and the softmax update (the same arithmetic, in the same order).
    float kv[DEC_PER_LANE], vv[DEC_PER_LANE];
    load_key(first + warp, kv, vv);
    for (u32 j = first + warp; j < last; j += DEC_WARPS) {
        const long long key_pos = p.k_start + j;
        float next_k[DEC_PER_LANE], next_v[DEC_PER_LANE];
        load_key(j + DEC_WARPS, next_k, next_v);
#pragma unroll
        for (int r = 0; r < DEC_MAX_ROWS; ++r) {
            if ((u32)r >= p.rows) break;
            const long long q_pos = p.q_start + (long long)(r % p.tq);
            float s = 0.0f;
#pragma unroll
            for (int c = 0; c < DEC_PER_LANE; ++c) s = fmaf(qv[r][c], kv[c], s);
            s = l4_warp_sum(s);
            const long long window = p.chunk > 0 ? q_pos - q_pos % p.chunk : key_pos;
            if (key_pos > q_pos || key_pos < window) continue;  // masked: the same decision on every lane
            const float m_new = fmaxf(m[r], s);
            const float correction = expf(m[r] - m_new);  // 0 on the first visible key
            const float pj = expf(s - m_new);
            l[r] = l[r] * correction + pj;
#pragma unroll
            for (int c = 0; c < DEC_PER_LANE; ++c) acc[r][c] = acc[r][c] * correction + pj * vv[c];
            m[r] = m_new;
        }
#pragma unroll
        for (int c = 0; c < DEC_PER_LANE; ++c) {
            kv[c] = next_k[c];
            vv[c] = next_v[c];
        }
    }
    // Merge the warps in warp order.
#pragma unroll
    for (int r = 0; r < DEC_MAX_ROWS; ++r) {
        if (lane == 0) {
            warp_m[warp][r] = m[r];
            warp_l[warp][r] = l[r];
        }
#pragma unroll
        for (int c = 0; c < DEC_PER_LANE; ++c) {
            const u32 e = lane + 32 * c;
            if ((u32)c < per_lane && e < p.dh) warp_acc[warp][r][e] = acc[r][c];
        }
    }
    __syncthreads();
    for (u32 i = threadIdx.x; i < p.rows * p.dh; i += DEC_THREADS) {
        const u32 r = i / p.dh, e = i % p.dh;
        float M = -L4_INF;
        for (int w = 0; w < DEC_WARPS; ++w) M = fmaxf(M, warp_m[w][r]);
        float L = 0.0f, A = 0.0f;
        for (int w = 0; w < DEC_WARPS; ++w) {
            const float f = warp_m[w][r] == -L4_INF ? 0.0f : expf(warp_m[w][r] - M);
            L += warp_l[w][r] * f;
            A += warp_acc[w][r][e] * f;
        }
        const u64 row = ((u64)bh * p.splits + split) * p.rows + r;
        part_acc[row * p.dh + e] = A;
        if (e == 0) {
            part_m[row] = M;
            part_l[row] = L;
        }
    }
}

template <void (*STORE)(void*, u64, float)>
static __device__ __forceinline__ void decode_combine(const float* __restrict__ part_m, const float* __restrict__ part_l,
                                                      const float* __restrict__ part_acc, void* __restrict__ out,
                                                      const DecodeParams& p) {
    __shared__ float warp_max[DEC_COMBINE_WARPS];
    __shared__ float warp_l[DEC_COMBINE_WARPS];
    __shared__ float warp_acc[DEC_COMBINE_WARPS][32];
    const u32 bh = blockIdx.x / p.rows, r = blockIdx.x % p.rows;
    const u32 lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const u32 e = blockIdx.y * 32 + lane;
    // Split s of this (bh, row) is partial row first + s·rows.
    const u64 first = (u64)bh * p.splits * p.rows + r;
    float M = -L4_INF;
    for (u32 s = threadIdx.x; s < p.splits; s += DEC_COMBINE_THREADS) M = fmaxf(M, part_m[first + (u64)s * p.rows]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, off));
    if (lane == 0) warp_max[warp] = M;
    __syncthreads();
    M = warp_max[0];
#pragma unroll
    for (int w = 1; w < DEC_COMBINE_WARPS; ++w) M = fmaxf(M, warp_max[w]);
    float L = 0.0f, A = 0.0f;
    for (u32 s = warp; s < p.splits; s += DEC_COMBINE_WARPS) {
        const u64 row = first + (u64)s * p.rows;
        const float m = part_m[row];
        const float f = m == -L4_INF ? 0.0f : expf(m - M);
        L += part_l[row] * f;
        if (e < p.dh) A += part_acc[row * p.dh + e] * f;
    }
    if (lane == 0) warp_l[warp] = L;
    warp_acc[warp][lane] = A;
    __syncthreads();
    if (warp == 0 && e < p.dh) {
        float total_l = 0.0f, total_a = 0.0f;
#pragma unroll
        for (int w = 0; w < DEC_COMBINE_WARPS; ++w) {
            total_l += warp_l[w];
            total_a += warp_acc[w][lane];
        }
        STORE(out, ((u64)bh * p.rows + r) * p.dh + e, total_l > 0.0f ? total_a / total_l : 0.0f);
    }
}

#define L4_DECODE(DT)                                                                                         \
    extern "C" __global__ void __launch_bounds__(DEC_THREADS) attn_decode_split_##DT(                        \
        const void* __restrict__ q, const void* __restrict__ k, const void* __restrict__ v,                  \
        float* __restrict__ part_m, float* __restrict__ part_l, float* __restrict__ part_acc,                \
        const DecodeParams p) {                                                                              \
        decode_split<dec_load_##DT, false>(q, k, v, nullptr, part_m, part_l, part_acc, p);                   \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(DEC_THREADS) attn_decode_split_paged_##DT(                  \
        const void* __restrict__ q, const void* __restrict__ k, const void* __restrict__ v,                  \
        const int* __restrict__ table, float* __restrict__ part_m, float* __restrict__ part_l,               \
        float* __restrict__ part_acc, const DecodeParams p) {                                                \
        decode_split<dec_load_##DT, true>(q, k, v, table, part_m, part_l, part_acc, p);                      \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(DEC_COMBINE_THREADS) attn_decode_combine_##DT(              \
        const float* __restrict__ part_m, const float* __restrict__ part_l,                                  \
        const float* __restrict__ part_acc, void* __restrict__ out, const DecodeParams p) {                  \
        decode_combine<dec_store_##DT>(part_m, part_l, part_acc, out, p);                                    \
    }

L4_DECODE(f32)
L4_DECODE(bf16)
L4_DECODE(f16)
