// attention_prefill.cu: causal attention over many query tokens without materialising the
// scores (FlashAttention-2 style, mma.sync on bf16/f16 tensor cores), with Llama 4's chunked
// local attention done by skipping every key tile outside a query tile's chunks.
//
// q [B, H, T, DH] (contiguous), k and v [B, HK, S, DH] (any strides, unit stride in DH), query
// head h reads KV head h / (H / HK) (GQA). Query token i sits at q_start + i, key j at
// k_start + j; key j is visible to query i when k_pos ≤ q_pos and, with chunk C > 0, when both
// lie in the same C-aligned chunk (k_pos ≥ q_pos − q_pos mod C). Output o [B, H, T, DH] =
// softmax(scale · q·kᵀ + mask)·v in q's dtype; a row that sees no key is 0.
//
// One CTA (4 warps) per (64 query rows, head, batch): each warp owns 16 rows, keeps its Q
// fragments and its O accumulators (f32) in registers, and walks the visible 64-key tiles:
//   S = Q·Kᵀ with mma.m16n8k16 (K tile in shared memory, rows padded by 16 bytes against bank
//   conflicts), the mask, an online softmax per row (maxima and sums reduced across the 4
//   lanes of a quad), then O += P·V with P re-used straight from the S accumulators as the A
//   operand and the B operand read from the row-major V tile by ldmatrix.x4.trans (lane l
//   addresses key 16·kk + l mod 16, columns 8·n + 8·(l / 16); registers 0, 1 are n-tile n's
//   b0, b1 and 2, 3 are n-tile n + 1's).
// Tiles are loaded in 16-byte vectors when every key row starts 16-byte aligned (`vec16`, set
// by the launcher: always for the paged pools, for strided views when their offsets and
// strides are multiples of 8 elements), element by element otherwise.
// Tiles wholly outside every row's window are never loaded, so chunked layers cost T·C, not
// T². Deterministic: fixed tile order, no atomics, no split.
//
// Variants (extern "C"): attn_prefill_{bf16,f16}_d{16,32,64,128} over strided k/v views, and
// attn_prefill_paged_{bf16,f16}_d{16,32,64,128} over paged pools [NB, HK, BS, DH]
// (BS = 2^block_log2): key j of batch b sits in block table[b·max_blocks + j / BS] at slot
// j mod BS, and k/v_stride_b hold the block stride. The paged tile load looks the block up per
// row; with the cache's 64-token blocks a 64-key tile is one block of one head.
//
// Check: cargo xtask check-kernels                 (sm_90a CUBIN, spills are errors, SASS class: HMMA)
// Test:  cargo test -p l4-kernels attention_prefill (CPU always; GPU when present)
// Bench: none yet.

typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#define PF_ROWS 64    // query rows per CTA
#define PF_KEYS 64    // keys per tile
#define PF_WARPS 4
#define PF_THREADS (PF_WARPS * 32)

struct PrefillParams {
    u64 k_stride_b, k_stride_h, k_stride_s;
    u64 v_stride_b, v_stride_h, v_stride_s;
    u32 heads, heads_kv, tokens, keys;
    i64 q_start, k_start;
    i64 chunk;  // 0: global
    float scale;
    u32 block_log2;  // paged only
    u32 max_blocks;  // paged only
    u32 vec16;       // 1: k, v and every key row start 16-byte aligned
};

// Offset of key row `key` of (batch, kv_head) given its (batch or block), head and row strides.
template <bool PAGED>
L4_DEVICE u64 pf_key_row(const int* __restrict__ table, const PrefillParams& p, u32 batch, u32 kv_head, i64 key,
                         u64 stride_b, u64 stride_h, u64 stride_s) {
    if (PAGED) {
        const u64 block = (u64)table[(u64)batch * p.max_blocks + (u64)(key >> p.block_log2)];
        return block * stride_b + (u64)kv_head * stride_h + (u64)(key & ((1 << p.block_log2) - 1)) * stride_s;
    }
    return (u64)batch * stride_b + (u64)kv_head * stride_h + (u64)key * stride_s;
}

template <bool BF16>
struct Half2 {
    // Two f32 packed into one 32-bit register of two 16-bit floats (low half first).
    static __device__ __forceinline__ u32 pack(float lo, float hi) {
        unsigned short a, b;
        if (BF16) {
            a = l4_f32_to_bf16(lo);
            b = l4_f32_to_bf16(hi);
        } else {
            a = l4_f32_to_f16(lo);
            b = l4_f32_to_f16(hi);
        }
        return (u32)a | ((u32)b << 16);
    }
    static __device__ __forceinline__ float to_f32(unsigned short x) {
        return BF16 ? l4_bf16_to_f32(x) : l4_f16_to_f32(x);
    }
};

// D = A·B + D for a 16×16 A (4 regs), a 16×8 B (2 regs), a 16×8 f32 D.
template <bool BF16>
L4_DEVICE void pf_mma(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    if (BF16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

// Four 8×8 16-bit matrices from shared memory, transposed (B fragments of a row-major [k][n] tile).
L4_DEVICE void pf_ldmatrix_x4_trans(u32 (&r)[4], const unsigned short* smem) {
    const u32 addr = (u32)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

// The first visible key position of a query at q_pos (chunk start, or −∞ for global).
L4_DEVICE i64 pf_window_start(i64 q_pos, i64 chunk) { return chunk > 0 ? q_pos - q_pos % chunk : -((i64)1 << 62); }

template <bool BF16, int DH, bool PAGED>
static __device__ __forceinline__ void prefill(const unsigned short* __restrict__ q, const unsigned short* __restrict__ k,
                                               const unsigned short* __restrict__ v, const int* __restrict__ table,
                                               unsigned short* __restrict__ out,
                                               const PrefillParams& p) {
    constexpr int KPAD = DH + 8;  // K and V tile rows: DH halves + 16 bytes
    constexpr int VECS = DH / 8;  // 16-byte vectors per key row
    __shared__ __align__(16) unsigned short k_tile[PF_KEYS * KPAD];
    __shared__ __align__(16) unsigned short v_tile[PF_KEYS * KPAD];

    const u32 row_tile = blockIdx.x, head = blockIdx.y, batch = blockIdx.z;
    const u32 kv_head = head / (p.heads / p.heads_kv);
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const u32 g = lane / 4, t = lane % 4;
    const i64 row0 = (i64)row_tile * PF_ROWS;
    const u64 q_base = ((u64)batch * p.heads + head) * p.tokens * DH;

    // This warp's rows: row0 + 16·warp + {g, g + 8}. Q fragments for every 16-wide K step.
    const i64 r_lo = row0 + 16 * warp + g, r_hi = r_lo + 8;
    u32 qa[DH / 16][4];
#pragma unroll
    for (int kk = 0; kk < DH / 16; ++kk) {
        const int c = 16 * kk + 2 * t;
        auto pair = [&](i64 r, int col) -> u32 {
            if (r >= p.tokens) return 0u;
            return *(const u32*)(q + q_base + (u64)r * DH + col);
        };
        qa[kk][0] = pair(r_lo, c);
        qa[kk][1] = pair(r_hi, c);
        qa[kk][2] = pair(r_lo, c + 8);
        qa[kk][3] = pair(r_hi, c + 8);
    }
    float o[DH / 8][4];
#pragma unroll
    for (int n = 0; n < DH / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m_lo = -L4_INF, m_hi = -L4_INF, l_lo = 0.0f, l_hi = 0.0f;

    // The keys this CTA may need: from the first row's window start to the last row's position.
    const i64 last_row = min(row0 + PF_ROWS, (i64)p.tokens) - 1;
    const i64 q_first = p.q_start + row0, q_last = p.q_start + last_row;
    const i64 lo_pos = max(pf_window_start(q_first, p.chunk), p.k_start);
    const i64 key_begin = max((i64)0, lo_pos - p.k_start);
    const i64 key_end = min((i64)p.keys, q_last - p.k_start + 1);
    const i64 q_pos_lo = p.q_start + r_lo, q_pos_hi = p.q_start + r_hi;
    const i64 win_lo = pf_window_start(q_pos_lo, p.chunk), win_hi = pf_window_start(q_pos_hi, p.chunk);

    for (i64 tile = key_begin / PF_KEYS * PF_KEYS; tile < key_end; tile += PF_KEYS) {
        __syncthreads();  // the previous tile's readers are done
        if (p.vec16) {
            for (u32 i = threadIdx.x; i < PF_KEYS * VECS; i += PF_THREADS) {
                const u32 j = i / VECS, e = (i % VECS) * 8;
                const i64 key = tile + j;
                uint4 kw = make_uint4(0u, 0u, 0u, 0u), vw = make_uint4(0u, 0u, 0u, 0u);
                if (key < (i64)p.keys) {
                    kw = *(const uint4*)(k + pf_key_row<PAGED>(table, p, batch, kv_head, key, p.k_stride_b,
                                                               p.k_stride_h, p.k_stride_s) + e);
                    vw = *(const uint4*)(v + pf_key_row<PAGED>(table, p, batch, kv_head, key, p.v_stride_b,
                                                               p.v_stride_h, p.v_stride_s) + e);
                }
                *(uint4*)(k_tile + j * KPAD + e) = kw;
                *(uint4*)(v_tile + j * KPAD + e) = vw;
            }
        } else {
            for (u32 i = threadIdx.x; i < PF_KEYS * DH; i += PF_THREADS) {
                const u32 j = i / DH, e = i % DH;
                const i64 key = tile + j;
                const bool live = key < (i64)p.keys;
                k_tile[j * KPAD + e] =
                    live ? k[pf_key_row<PAGED>(table, p, batch, kv_head, key, p.k_stride_b, p.k_stride_h,
                                               p.k_stride_s) + e]
                         : (unsigned short)0;
                v_tile[j * KPAD + e] =
                    live ? v[pf_key_row<PAGED>(table, p, batch, kv_head, key, p.v_stride_b, p.v_stride_h,
                                               p.v_stride_s) + e]
                         : (unsigned short)0;
            }
        }
        __syncthreads();

        // S = Q·Kᵀ for this warp's 16 rows × 64 keys (8 n-tiles of 8 keys).
        float s[PF_KEYS / 8][4];
#pragma unroll
        for (int n = 0; n < PF_KEYS / 8; ++n) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < DH / 16; ++kk) {
                const unsigned short* kr = k_tile + (8 * n + g) * KPAD + 16 * kk + 2 * t;
                pf_mma<BF16>(s[n], qa[kk], *(const u32*)kr, *(const u32*)(kr + 8));
            }
        }
        // Scale, mask, and the online softmax of rows r_lo (s[n][0..1]) and r_hi (s[n][2..3]).
        float tile_max_lo = -L4_INF, tile_max_hi = -L4_INF;
#pragma unroll
        for (int n = 0; n < PF_KEYS / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const i64 key_pos = p.k_start + tile + 8 * n + 2 * t + (e & 1);
                const bool hi = e >= 2;
                const i64 q_pos = hi ? q_pos_hi : q_pos_lo;
                const i64 win = hi ? win_hi : win_lo;
                const bool visible = key_pos - p.k_start < (i64)p.keys && key_pos <= q_pos && key_pos >= win;
                s[n][e] = visible ? s[n][e] * p.scale : -L4_INF;
            }
            tile_max_lo = fmaxf(tile_max_lo, fmaxf(s[n][0], s[n][1]));
            tile_max_hi = fmaxf(tile_max_hi, fmaxf(s[n][2], s[n][3]));
        }
        // The 4 lanes of a quad share a row.
#pragma unroll
        for (int off = 1; off < 4; off <<= 1) {
            tile_max_lo = fmaxf(tile_max_lo, __shfl_xor_sync(0xffffffffu, tile_max_lo, off));
            tile_max_hi = fmaxf(tile_max_hi, __shfl_xor_sync(0xffffffffu, tile_max_hi, off));
        }
        const float new_lo = fmaxf(m_lo, tile_max_lo), new_hi = fmaxf(m_hi, tile_max_hi);
        const float corr_lo = new_lo == -L4_INF ? 1.0f : expf(m_lo - new_lo);
        const float corr_hi = new_hi == -L4_INF ? 1.0f : expf(m_hi - new_hi);
        float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
        for (int n = 0; n < PF_KEYS / 8; ++n) {
            s[n][0] = new_lo == -L4_INF ? 0.0f : expf(s[n][0] - new_lo);
            s[n][1] = new_lo == -L4_INF ? 0.0f : expf(s[n][1] - new_lo);
            s[n][2] = new_hi == -L4_INF ? 0.0f : expf(s[n][2] - new_hi);
            s[n][3] = new_hi == -L4_INF ? 0.0f : expf(s[n][3] - new_hi);
            sum_lo += s[n][0] + s[n][1];
            sum_hi += s[n][2] + s[n][3];
        }
#pragma unroll
        for (int off = 1; off < 4; off <<= 1) {
            sum_lo += __shfl_xor_sync(0xffffffffu, sum_lo, off);
            sum_hi += __shfl_xor_sync(0xffffffffu, sum_hi, off);
        }
        l_lo = l_lo * corr_lo + sum_lo;
        l_hi = l_hi * corr_hi + sum_hi;
        m_lo = new_lo;
        m_hi = new_hi;
#pragma unroll
        for (int n = 0; n < DH / 8; ++n) {
            o[n][0] *= corr_lo;
            o[n][1] *= corr_lo;
            o[n][2] *= corr_hi;
            o[n][3] *= corr_hi;
        }
        // O += P·V: P's accumulators become A fragments, 16 keys (two n-tiles) per step.
#pragma unroll
        for (int kk = 0; kk < PF_KEYS / 16; ++kk) {
            u32 pa[4];
            pa[0] = Half2<BF16>::pack(s[2 * kk][0], s[2 * kk][1]);
            pa[1] = Half2<BF16>::pack(s[2 * kk][2], s[2 * kk][3]);
            pa[2] = Half2<BF16>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[3] = Half2<BF16>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int n = 0; n < DH / 8; n += 2) {
                u32 vb[4];
                pf_ldmatrix_x4_trans(vb, v_tile + (16 * kk + (lane & 15)) * KPAD + 8 * n + 8 * (lane >> 4));
                pf_mma<BF16>(o[n], pa, vb[0], vb[1]);
                pf_mma<BF16>(o[n + 1], pa, vb[2], vb[3]);
            }
        }
    }

    // o / l, rounded once; rows past T are not written; a row that saw no key is 0.
    const float inv_lo = l_lo > 0.0f ? 1.0f / l_lo : 0.0f;
    const float inv_hi = l_hi > 0.0f ? 1.0f / l_hi : 0.0f;
#pragma unroll
    for (int n = 0; n < DH / 8; ++n) {
        const int c = 8 * n + 2 * t;
        if (r_lo < p.tokens) *(u32*)(out + q_base + (u64)r_lo * DH + c) = Half2<BF16>::pack(o[n][0] * inv_lo, o[n][1] * inv_lo);
        if (r_hi < p.tokens) *(u32*)(out + q_base + (u64)r_hi * DH + c) = Half2<BF16>::pack(o[n][2] * inv_hi, o[n][3] * inv_hi);
    }
}

#define L4_PREFILL(NAME, BF16, DH)                                                                          \
    extern "C" __global__ void __launch_bounds__(PF_THREADS, 1) attn_prefill_##NAME(                        \
        const unsigned short* __restrict__ q, const unsigned short* __restrict__ k,                         \
        const unsigned short* __restrict__ v, unsigned short* __restrict__ out, const PrefillParams p) {    \
        prefill<BF16, DH, false>(q, k, v, nullptr, out, p);                                                 \
    }                                                                                                       \
    extern "C" __global__ void __launch_bounds__(PF_THREADS, 1) attn_prefill_paged_##NAME(                  \
        const unsigned short* __restrict__ q, const unsigned short* __restrict__ k,                         \
        const unsigned short* __restrict__ v, const int* __restrict__ table, unsigned short* __restrict__ out, \
        const PrefillParams p) {                                                                            \
        prefill<BF16, DH, true>(q, k, v, table, out, p);                                                    \
    }

L4_PREFILL(bf16_d16, true, 16)
L4_PREFILL(bf16_d32, true, 32)
L4_PREFILL(bf16_d64, true, 64)
L4_PREFILL(bf16_d128, true, 128)
L4_PREFILL(f16_d16, false, 16)
L4_PREFILL(f16_d32, false, 32)
L4_PREFILL(f16_d64, false, 64)
L4_PREFILL(f16_d128, false, 128)
