// fp8_gemm.cu: D = (A·s_a)(B·s_b)ᵀ for e4m3 A [M, K] and B [N, K] (both K-major), f32
// accumulation, bf16 or f32 output, optional bias [N] (f32) and residual [M, N] (output dtype).
//
// Scaling, applied so that the tensor cores only ever see raw e4m3 codes:
//   row-wise (Meta's Llama 4 recipe): s_a [M] per token, s_b [N] per output channel, applied
//       once in the epilogue: D[m, n] = s_a[m]·s_b[n]·Σ_k A[m, k]·B[n, k];
//   block (DeepSeek's recipe): s_a [M, ⌈K/128⌉] per 1×128, s_b [⌈N/128⌉, ⌈K/128⌉] per
//       128×128, applied to each 128-wide K block's partial sum as it is promoted.
//
// Variants (extern "C"; Rust picks by shape, scaling and output dtype):
//   1. fp8_gemm_{rowwise,block}_n{64,128}_{bf16,f32}: the Hopper kernel (sm_90a).
//      - Tiles BM = 128 rows × BN (64 or 128) columns, K in blocks of BK = 128 (one 128-byte
//        swizzle atom of e4m3 per row).
//      - 384 threads, warp-specialised: warpgroup 0 is the producer (one thread issues TMA
//        bulk tensor loads of the A and B tiles into a ring of `stages` shared-memory slots,
//        each completing on the slot's "full" mbarrier with a transaction count); warpgroups
//        1 and 2 are consumers, each owning 64 rows of the tile. setmaxnreg moves registers
//        from the producer (40) to the consumers (232).
//      - Consumers issue wgmma.m64nBNk32 (QGMMA in SASS) straight from the swizzled shared
//        memory, four per K block, then release the slot on its "empty" mbarrier.
//      - Promotion: each K block is accumulated in fresh wgmma registers and then added into
//        separate f32 totals (scaled by the block's scales for block scaling), so the tensor
//        cores' reduced-precision FP8 accumulation never spans more than 128 products.
//      - Persistent: gridDim = min(tiles, SMs), each CTA walks tiles t, t + gridDim, ... in
//        M-fastest order (CTAs running together share B column blocks in L2); the slot ring
//        and its phases run on across tiles, so the producer prefetches the next tile's K
//        blocks during the consumers' epilogue.
//      - Edges: TMA zero-fills rows and columns past M, N and K, so partial tiles need no
//        special path; the epilogue skips out-of-range stores.
//      Needs K % 16 == 0 (TMA row pitch) and 16-byte aligned A and B.
//   2. fp8_gemv_{rowwise,block}_{bf16,f32}: the small-M (decode) path, memory-bound by design.
//      One warp per output column n, rows in passes of 16: each lane streams 16-byte chunks of
//      B's row n (every byte of B read once per pass), converts with cvt.e4m3x2→f16x2, and
//      multiplies with the same chunk of each A row (A is tiny and stays in L1/L2); f32 FMA
//      accumulation, a fixed-order warp reduction, so results are deterministic and independent
//      of the grid. Any K (a scalar loop covers unaligned shapes): also the fallback.
//
// Check: cargo xtask check-kernels   (sm_90a CUBIN, spills are errors, SASS class: QGMMA)
// Test:  cargo test -p l4-kernels fp8_gemm (CPU reference always; GPU when present)
// Bench: benches/benches/fp8_gemm.rs (Llama 4 shapes, next to cuBLASLt FP8 in the same run)

typedef unsigned long long u64;
typedef unsigned int u32;

#define FP8_BM 128
#define FP8_BK 128
#define FP8_THREADS 384
#define FP8_MAX_STAGES 8
#define FP8_CONSUMER_WARPS 8
#define GEMV_WARPS 8
#define GEMV_ROWS 16

// A CUtensorMap (the driver's opaque 128-byte TMA descriptor), passed by value as a
// __grid_constant__ parameter so TMA can read it from parameter space.
struct alignas(128) L4TensorMap {
    u64 opaque[16];
};

// Everything but the tensor maps, by value.
struct Fp8GemmParams {
    void* out;             // [M, N] bf16 or f32
    const void* a;         // gemv only: A codes [M, K]
    const void* b;         // gemv only: B codes [N, K]
    const float* scale_a;  // row-wise [M]; block [M, k_blocks]
    const float* scale_b;  // row-wise [N]; block [⌈N/128⌉, k_blocks]
    const float* bias;     // [N] or null
    const void* residual;  // [M, N] in the output dtype, or null
    u32 m, n, k;
    u32 k_blocks;          // ⌈K / 128⌉
    u32 stages;            // slots in the shared-memory ring (wgmma kernel)
    u32 pad;
};

// ---- output element access ---------------------------------------------------------------

struct OutBF16 {
    typedef l4_bf16 T;
    static __device__ __forceinline__ float load(const void* p, u64 i) { return l4_bf16_to_f32(((const T*)p)[i]); }
    static __device__ __forceinline__ void store(void* p, u64 i, float v) { ((T*)p)[i] = l4_f32_to_bf16(v); }
};

struct OutF32 {
    typedef float T;
    static __device__ __forceinline__ float load(const void* p, u64 i) { return ((const float*)p)[i]; }
    static __device__ __forceinline__ void store(void* p, u64 i, float v) { ((float*)p)[i] = v; }
};

// The epilogue of one output element: the row-wise scales (when not already applied per
// block), then bias, then residual, in that order on every path.
template <class Out, bool BLOCK>
L4_DEVICE void fp8_store(const Fp8GemmParams& p, u32 row, u32 col, float total) {
    float v = total;
    if (!BLOCK) v = v * (p.scale_a[row] * p.scale_b[col]);
    if (p.bias) v += p.bias[col];
    const u64 i = (u64)row * p.n + col;
    if (p.residual) v += Out::load(p.residual, i);
    Out::store(p.out, i, v);
}

// ---- e4m3 helpers ----------------------------------------------------------------------------

// Two e4m3 codes (low byte first) to two f32, exactly (through f16x2).
L4_DEVICE void fp8_pair_to_f32(unsigned short pair, float& lo, float& hi) {
    u32 h2;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h2) : "h"(pair));
    lo = l4_f16_to_f32((l4_f16)(h2 & 0xffff));
    hi = l4_f16_to_f32((l4_f16)(h2 >> 16));
}

// Sixteen e4m3 codes to f32.
L4_DEVICE void fp8_16_to_f32(uint4 v, float (&f)[16]) {
    const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        fp8_pair_to_f32((unsigned short)(w[i] & 0xffff), f[4 * i], f[4 * i + 1]);
        fp8_pair_to_f32((unsigned short)(w[i] >> 16), f[4 * i + 2], f[4 * i + 3]);
    }
}

// ---- shared memory, mbarriers, TMA, wgmma ---------------------------------------------------

L4_DEVICE u32 smem_u32(const void* p) { return (u32)__cvta_generic_to_shared(p); }

L4_DEVICE void mbar_init(u64* bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count));
}

L4_DEVICE void mbar_arrive_expect_tx(u64* bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}

L4_DEVICE void mbar_arrive(u64* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(bar)) : "memory");
}

// Spins until the barrier's phase with this parity has completed.
L4_DEVICE void mbar_wait(u64* bar, u32 parity) {
    asm volatile(
        "{\n.reg .pred done;\nWAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra WAIT;\n}\n" ::"r"(smem_u32(bar)),
        "r"(parity)
        : "memory");
}

// A [rows, 128-byte] box at element coordinates (inner c0, outer c1) into shared memory,
// completing on `bar` with its byte count.
L4_DEVICE void tma_load_2d(void* dst, const L4TensorMap* map, int c0, int c1, u64* bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];" ::"r"(
            smem_u32(dst)),
        "l"((u64)map), "r"(smem_u32(bar)), "r"(c0), "r"(c1)
        : "memory");
}

// The wgmma shared-memory descriptor of a K-major operand stored as the 128-byte swizzle
// atoms TMA writes: start address (>> 4) in bits 0-13; leading-dimension offset unused for
// swizzled K-major (the K extent of one wgmma, 32 bytes, stays inside one atom); stride
// between 8-row core-matrix groups = 8 rows × 128 bytes = 1024 (>> 4) in bits 32-45; layout
// type 1 (128-byte swizzle) in bits 62-63. Tiles start at 1024-byte boundaries, so the base
// offset (bits 49-51) is 0; a K step inside the atom moves the start address by 32 bytes.
L4_DEVICE u64 fp8_smem_desc(const void* p) {
    const u64 addr = smem_u32(p);
    return ((addr & 0x3ffff) >> 4) | ((u64)(1024 >> 4) << 32) | (1ull << 62);
}

L4_DEVICE void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
L4_DEVICE void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
L4_DEVICE void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }

// Keeps the compiler from moving accesses of an accumulator across the asynchronous wgmma.
template <int N>
L4_DEVICE void fence_registers(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// D[64, 64] (+)= A[64, 32]·B[64, 32]ᵀ, e4m3 in, f32 accumulators (32 per thread).
L4_DEVICE void fp8_wgmma_n64(float (&d)[32], u64 desc_a, u64 desc_b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 {"
        "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31"
        "}, %32, %33, p, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// D[64, 128] (+)= A[64, 32]·B[128, 32]ᵀ, e4m3 in, f32 accumulators (64 per thread).
L4_DEVICE void fp8_wgmma_n128(float (&d)[64], u64 desc_a, u64 desc_b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {"
        "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
        "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
        "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63"
        "}, %64, %65, p, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

template <int BN>
struct Fp8Wgmma;
template <>
struct Fp8Wgmma<64> {
    static __device__ __forceinline__ void mma(float (&d)[32], u64 a, u64 b, int acc) { fp8_wgmma_n64(d, a, b, acc); }
};
template <>
struct Fp8Wgmma<128> {
    static __device__ __forceinline__ void mma(float (&d)[64], u64 a, u64 b, int acc) { fp8_wgmma_n128(d, a, b, acc); }
};

// ---- the Hopper kernel -----------------------------------------------------------------------

template <int BN, bool BLOCK, class Out>
static __device__ __forceinline__ void fp8_gemm_wgmma(const L4TensorMap* map_a, const L4TensorMap* map_b,
                                                      const Fp8GemmParams& p) {
    constexpr u32 A_BYTES = FP8_BM * FP8_BK;
    constexpr u32 B_BYTES = BN * FP8_BK;
    constexpr u32 STAGE_BYTES = A_BYTES + B_BYTES;  // a multiple of 1024: every tile stays atom-aligned
    constexpr int ACC = BN / 2;                      // accumulators per consumer thread

    extern __shared__ unsigned char fp8_smem_raw[];
    __shared__ u64 full[FP8_MAX_STAGES];   // the slot holds a loaded tile (TMA transaction count)
    __shared__ u64 empty[FP8_MAX_STAGES];  // every consumer warp is done reading the slot
    // The 128-byte swizzle pattern repeats every 1024 bytes; align the ring to it.
    unsigned char* smem = (unsigned char*)(((u64)fp8_smem_raw + 1023) & ~1023ull);

    const u32 stages = p.stages;
    if (threadIdx.x == 0) {
        for (u32 s = 0; s < stages; ++s) {
            mbar_init(&full[s], 1);
            mbar_init(&empty[s], FP8_CONSUMER_WARPS);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();

    const u32 tiles_m = (p.m + FP8_BM - 1) / FP8_BM;
    const u32 tiles_n = (p.n + BN - 1) / BN;
    const u32 tiles = tiles_m * tiles_n;
    const int warpgroup = threadIdx.x / 128;

    if (warpgroup == 0) {
        // Producer: one thread streams every tile's K blocks through the ring.
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (threadIdx.x == 0) {
            u32 it = 0;
            for (u32 tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
                const int row0 = (int)((tile % tiles_m) * FP8_BM);
                const int col0 = (int)((tile / tiles_m) * BN);
                for (u32 kb = 0; kb < p.k_blocks; ++kb, ++it) {
                    const u32 s = it % stages;
                    // The slot's previous use (round it/stages − 1) must have been released.
                    if (it >= stages) mbar_wait(&empty[s], ((it / stages) - 1) & 1);
                    unsigned char* slot = smem + s * STAGE_BYTES;
                    mbar_arrive_expect_tx(&full[s], STAGE_BYTES);
                    tma_load_2d(slot, map_a, (int)(kb * FP8_BK), row0, &full[s]);
                    tma_load_2d(slot + A_BYTES, map_b, (int)(kb * FP8_BK), col0, &full[s]);
                }
            }
        }
        return;
    }

    // Consumers: warpgroup 1 owns tile rows 0..63, warpgroup 2 rows 64..127.
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    const u32 half = warpgroup - 1;
    const u32 t = threadIdx.x % 128;
    const u32 warp = t / 32, lane = t % 32;
    float acc[ACC];
    float total[ACC];
#pragma unroll
    for (int i = 0; i < ACC; ++i) acc[i] = 0.0f;

    u32 it = 0;
    for (u32 tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const u32 row0 = (tile % tiles_m) * FP8_BM;
        const u32 col0 = (tile / tiles_m) * BN;
        // This thread's accumulator rows (wgmma's D fragment): r and r + 8.
        const u32 r_lo = row0 + half * 64 + warp * 16 + lane / 4;
        const u32 r_hi = r_lo + 8;
#pragma unroll
        for (int i = 0; i < ACC; ++i) total[i] = 0.0f;

        for (u32 kb = 0; kb < p.k_blocks; ++kb, ++it) {
            const u32 s = it % stages;
            mbar_wait(&full[s], (it / stages) & 1);
            const unsigned char* a_tile = smem + s * STAGE_BYTES + half * 64 * FP8_BK;
            const unsigned char* b_tile = smem + s * STAGE_BYTES + A_BYTES;
            fence_registers(acc);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < FP8_BK / 32; ++kk) {
                Fp8Wgmma<BN>::mma(acc, fp8_smem_desc(a_tile + kk * 32), fp8_smem_desc(b_tile + kk * 32), kk > 0);
            }
            wgmma_commit();
            wgmma_wait_all();
            fence_registers(acc);
            if (lane == 0) mbar_arrive(&empty[s]);

            // Promote this K block's partial sums into the f32 totals.
            if (BLOCK) {
                const float sb = p.scale_b[(col0 / 128) * p.k_blocks + kb];
                const float s_lo = r_lo < p.m ? p.scale_a[(u64)r_lo * p.k_blocks + kb] * sb : 0.0f;
                const float s_hi = r_hi < p.m ? p.scale_a[(u64)r_hi * p.k_blocks + kb] * sb : 0.0f;
#pragma unroll
                for (int j = 0; j < ACC / 4; ++j) {
                    total[4 * j + 0] += acc[4 * j + 0] * s_lo;
                    total[4 * j + 1] += acc[4 * j + 1] * s_lo;
                    total[4 * j + 2] += acc[4 * j + 2] * s_hi;
                    total[4 * j + 3] += acc[4 * j + 3] * s_hi;
                }
            } else {
#pragma unroll
                for (int i = 0; i < ACC; ++i) total[i] += acc[i];
            }
        }

        // Epilogue: element (r, c) of fragment j is total[4j + {0,1}] at (r_lo, c, c+1) and
        // total[4j + {2,3}] at (r_hi, c, c+1), c = col0 + 8j + 2·(lane % 4).
#pragma unroll
        for (int j = 0; j < ACC / 4; ++j) {
            const u32 c = col0 + 8 * j + 2 * (lane % 4);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const u32 row = e < 2 ? r_lo : r_hi;
                const u32 col = c + (e & 1);
                if (row < p.m && col < p.n) fp8_store<Out, BLOCK>(p, row, col, total[4 * j + e]);
            }
        }
    }
}

#define L4_FP8_GEMM(NAME, BN, BLOCK, OUT)                                                              \
    extern "C" __global__ void __launch_bounds__(FP8_THREADS, 1)                                       \
        NAME(const __grid_constant__ L4TensorMap map_a, const __grid_constant__ L4TensorMap map_b,      \
             const Fp8GemmParams p) {                                                                  \
        fp8_gemm_wgmma<BN, BLOCK, OUT>(&map_a, &map_b, p);                                             \
    }

L4_FP8_GEMM(fp8_gemm_rowwise_n128_bf16, 128, false, OutBF16)
L4_FP8_GEMM(fp8_gemm_rowwise_n128_f32, 128, false, OutF32)
L4_FP8_GEMM(fp8_gemm_rowwise_n64_bf16, 64, false, OutBF16)
L4_FP8_GEMM(fp8_gemm_rowwise_n64_f32, 64, false, OutF32)
L4_FP8_GEMM(fp8_gemm_block_n128_bf16, 128, true, OutBF16)
L4_FP8_GEMM(fp8_gemm_block_n128_f32, 128, true, OutF32)
L4_FP8_GEMM(fp8_gemm_block_n64_bf16, 64, true, OutBF16)
L4_FP8_GEMM(fp8_gemm_block_n64_f32, 64, true, OutF32)

// ---- the small-M (decode) kernel -------------------------------------------------------------

template <bool BLOCK, class Out>
static __device__ __forceinline__ void fp8_gemv(const Fp8GemmParams& p, int vectorized) {
    const l4_fp8* a = (const l4_fp8*)p.a;
    const l4_fp8* b = (const l4_fp8*)p.b;
    const u32 lane = threadIdx.x % 32;
    const u32 n = blockIdx.x * GEMV_WARPS + threadIdx.x / 32;
    if (n >= p.n) return;
    const l4_fp8* b_row = b + (u64)n * p.k;
    for (u32 m0 = 0; m0 < p.m; m0 += GEMV_ROWS) {
        const u32 rows = min((u32)GEMV_ROWS, p.m - m0);
        float acc[GEMV_ROWS];
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; ++r) acc[r] = 0.0f;
        if (vectorized) {
            // 16 codes per lane per step: the warp reads 512 contiguous bytes of B's row.
            for (u32 k = lane * 16; k < p.k; k += 32 * 16) {
                float bv[16];
                fp8_16_to_f32(*(const uint4*)(b_row + k), bv);
                const u32 kb = k / FP8_BK;
#pragma unroll
                for (int r = 0; r < GEMV_ROWS; ++r) {
                    if ((u32)r < rows) {
                        float av[16];
                        fp8_16_to_f32(*(const uint4*)(a + (u64)(m0 + r) * p.k + k), av);
                        float dot = 0.0f;
#pragma unroll
                        for (int i = 0; i < 16; ++i) dot = fmaf(av[i], bv[i], dot);
                        if (BLOCK) dot *= p.scale_a[(u64)(m0 + r) * p.k_blocks + kb] * p.scale_b[(n / 128) * p.k_blocks + kb];
                        acc[r] += dot;
                    }
                }
            }
        } else {
            for (u32 k = lane; k < p.k; k += 32) {
                const float bv = l4_e4m3_to_f32(b_row[k]);
                const u32 kb = k / FP8_BK;
#pragma unroll
                for (int r = 0; r < GEMV_ROWS; ++r) {
                    if ((u32)r < rows) {
                        float prod = l4_e4m3_to_f32(a[(u64)(m0 + r) * p.k + k]) * bv;
                        if (BLOCK) prod *= p.scale_a[(u64)(m0 + r) * p.k_blocks + kb] * p.scale_b[(n / 128) * p.k_blocks + kb];
                        acc[r] += prod;
                    }
                }
            }
        }
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; ++r) {
            const float total = l4_warp_sum(acc[r]);
            if (lane == 0 && (u32)r < rows) fp8_store<Out, BLOCK>(p, m0 + r, n, total);
        }
    }
}

#define L4_FP8_GEMV(NAME, BLOCK, OUT)                                                                  \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32) NAME(const Fp8GemmParams p, int vectorized) { \
        fp8_gemv<BLOCK, OUT>(p, vectorized);                                                           \
    }

L4_FP8_GEMV(fp8_gemv_rowwise_bf16, false, OutBF16)
L4_FP8_GEMV(fp8_gemv_rowwise_f32, false, OutF32)
L4_FP8_GEMV(fp8_gemv_block_bf16, true, OutBF16)
L4_FP8_GEMV(fp8_gemv_block_f32, true, OutF32)
