// paged_kv.cu: writes a step's keys or values into a paged KV pool, and gathers a pool back
// into a contiguous tensor (for the generic attention path and for tests).
//
// Pool [NB, HK, BS, DH]: NB blocks of BS = 2^block_log2 token slots per KV head. A sequence's
// logical slot j lives in block table[b · max_blocks + j / BS], at slot j mod BS. Values are
// moved as raw 2- or 4-byte words, so one kernel serves f16/bf16 and f32.
//
// Kernels (extern "C"; Rust picks by element size):
//   kv_write_b{2,4}(src [B, HK, T, DH] contiguous, pool, table): slot0 + t ← src[b, kh, t],
//     one thread per element, grid-stride.
//   kv_gather_b{2,4}(pool, table, out [B, HK, T, DH]): out[b, kh, t] ← slot slot0 + t.
// Both are pure copies: bit-exact, no ordering concerns.
//
// Check: cargo xtask check-kernels        (sm_90a CUBIN, spills are errors, SASS class: none)
// Test:  cargo test -p l4-kernels paged_kv (CPU always; GPU when present)
// Bench: none (a decode step writes one token per head; the attention benches include it).

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

struct PagedKvParams {
    u32 batch, heads_kv, tokens, dh;
    u32 block_log2, max_blocks;
    u32 slot0, pad;
};

// Element offset in the pool of (b, kh, logical slot, e).
L4_DEVICE u64 kv_pool_offset(const int* __restrict__ table, const PagedKvParams& p, u32 b, u32 kh, u32 slot, u32 e) {
    const u32 bs = 1u << p.block_log2;
    const u64 block = (u64)table[(u64)b * p.max_blocks + (slot >> p.block_log2)];
    return ((block * p.heads_kv + kh) * bs + (slot & (bs - 1))) * p.dh + e;
}

template <typename W>
static __device__ __forceinline__ void kv_write(const W* __restrict__ src, W* __restrict__ pool,
                                                const int* __restrict__ table, const PagedKvParams& p) {
    const u64 n = (u64)p.batch * p.heads_kv * p.tokens * p.dh;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const u32 e = i % p.dh;
        const u64 row = i / p.dh;
        const u32 t = row % p.tokens;
        const u64 bh = row / p.tokens;
        pool[kv_pool_offset(table, p, bh / p.heads_kv, bh % p.heads_kv, p.slot0 + t, e)] = src[i];
    }
}

template <typename W>
static __device__ __forceinline__ void kv_gather(const W* __restrict__ pool, const int* __restrict__ table,
                                                 W* __restrict__ out, const PagedKvParams& p) {
    const u64 n = (u64)p.batch * p.heads_kv * p.tokens * p.dh;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const u32 e = i % p.dh;
        const u64 row = i / p.dh;
        const u32 t = row % p.tokens;
        const u64 bh = row / p.tokens;
        out[i] = pool[kv_pool_offset(table, p, bh / p.heads_kv, bh % p.heads_kv, p.slot0 + t, e)];
    }
}

#define L4_PAGED_KV(BYTES, W)                                                                                 \
    extern "C" __global__ void kv_write_b##BYTES(const W* __restrict__ src, W* __restrict__ pool,            \
                                                 const int* __restrict__ table, const PagedKvParams p) {     \
        kv_write<W>(src, pool, table, p);                                                                     \
    }                                                                                                         \
    extern "C" __global__ void kv_gather_b##BYTES(const W* __restrict__ pool, const int* __restrict__ table, \
                                                  W* __restrict__ out, const PagedKvParams p) {               \
        kv_gather<W>(pool, table, out, p);                                                                    \
    }

L4_PAGED_KV(2, u16)
L4_PAGED_KV(4, u32)
