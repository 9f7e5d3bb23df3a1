// moe_experts.cu: the routed experts of a MoE block as grouped GEMMs over tokens sorted by
// expert (the `sorted_slots` / `expert_offset` of moe_routing), in four launches:
//
//   1. me_gather_*: xs[r] = round(x[token(r)] · round(w[slot(r)])) (or a copy), the expert inputs
//      in sorted order [S, d]. The scale is applied and rounded here, as Llama 4 scales its
//      expert input in the compute dtype, so the GEMMs read dense rows with cp.async.
//   2. me_gate_up_*: h[r] = round(silu(xs[r]·Wg) ⊙ (xs[r]·Wu)) [S, f]; each CTA's B tile holds
//      matching gate and up columns, so SwiGLU runs on the accumulators and the [S, 2f]
//      projection never reaches memory.
//   3. me_down_*: y = (h[r]·Wd)·w_out; with one expert per token, no split of the reduction and
//      no fused shared expert the epilogue writes out[token] = round(shared[token] + y) directly
//      (each token has exactly one row, no race); otherwise it writes the f32 partial sums
//      h[r]·Wd per (split, slot) and
//   4. me_combine_*: y_s = (Σ_z partial[z][s])·w_out[s] in split order, then
//      out[t] = round(shared[t] + y[t·k] + … + y[t·k + k − 1]) in slot order.
//
// The shared expert (Llama 4: same width f as the routed experts, unscaled input) can run in the
// same launches as expert index e with its own weight pointers (gate_up [d, 2f], down [f, d], the
// routed layout): every token visits it once, as rows [S, S + t) after the S routed rows (row
// S + token, its own slot), appended by the gather and scheduled after the routed segments by
// me_find_tile (shared_rows = t; 0 leaves it out). Its rows are never weighted, and the down
// launch always writes f32 partials for them, so the combine runs and sums each token as
//   out[t] = round(y_shared[t] + y[t·k] + … + y[t·k + k − 1])
// (the shared expert first, then the routed slots in slot order).
//
// Decode steps read few columns per expert, so the down projection (d/128 column blocks, 40 at
// d 5120) would leave most SMs idle: the host splits its reduction over f into a few contiguous
// ranges (grid z), each CTA streaming its own slice of the weights once; the combine adds the
// partials in split order, so the sum stays deterministic.
//
// Determinism: no atomics, every output written by one thread, a fixed summation order (the
// mma k-order within a CTA, then slot order), so results are bitwise identical run to run.
//
// Tensor-core path (bf16/f16, d and f multiples of 8): mma.sync m16n8k16 with f32 accumulation,
// ldmatrix (.trans for the [k][n] weight tiles), a cp.async pipeline of 3 stages of BK = 32.
// The tile schedule is computed on the device: CTA x-index i is the i-th (expert, m-block) pair
// in expert order, found by a scan of the offsets (E ≤ 256), so no host sync is needed; the
// grid's x extent is the bound ceil(R/BM) + min(E', R) over the R = S (+ t with the fused shared
// expert) rows in E' = E (+ 1) segments, and CTAs past the last tile exit. The y
// index is the column block, so the CTAs that run together share weight tiles in L2. Two warp
// layouts of a 64 × 128 tile: "wide" (2×2 warps of 32×64) for prefill and "decode" (1×4 warps
// of 64×32) for steps of ≤ 64 slots, where no expert has more than 64 tokens: each CTA streams
// a slice of one expert's weight columns once for all of that expert's tokens, so the bytes
// read are the unique expert weight bytes (the padded rows cost tensor-core work, which a
// memory-bound step has to spare).
//
// Scalar path (f32, or sizes not multiples of 8): one thread per output element, the same
// epilogues, f32 accumulation in k order.
//
// Variants (extern "C"): me_gather_{f32,bf16,f16}, me_gate_up_{bf16,f16}_{wide,decode},
// me_down_{bf16,f16}_{wide,decode}, me_gate_up_scalar_{f32,bf16,f16},
// me_down_scalar_{f32,bf16,f16}, me_combine_{f32,bf16,f16}, and for FP8 (e4m3) experts with
// row-wise scales (see the sections at the end) on CUDA cores me_fp8_{gate_up,down}_{f32,bf16,f16}_v{16,1}
// and on tensor cores me_fp8_mma_{gate_up,down}_{f32,bf16,f16} (mma.sync m16n8k32 e4m3; ptxas
// lowers it to an e4m3→f16 unpack and HMMA.16816.F32 on sm_90, so the SASS class stays HMMA).
//
// Check: cargo xtask check-kernels                 (sm_90a CUBIN, spills are errors, SASS class: HMMA)
// Test:  cargo test -p l4-kernels moe_experts      (CPU always; GPU when present)
// Bench: cargo bench -p l4-benches --bench kernels -- moe_experts

typedef unsigned int u32;
typedef long long i64;

#define ME_BK 32
#define ME_PAD 8  // 16 bytes of padding per smem row: ldmatrix rows land in distinct banks

// Element access by dtype code: 0 f32, 1 bf16, 2 f16.
template <int DT>
struct MeElem;
template <>
struct MeElem<0> {
    typedef float T;
    static __device__ __forceinline__ float load(const float* p, i64 i) { return p[i]; }
    static __device__ __forceinline__ void store(float* p, i64 i, float v) { p[i] = v; }
};
template <>
struct MeElem<1> {
    typedef unsigned short T;
    static __device__ __forceinline__ float load(const unsigned short* p, i64 i) { return l4_bf16_to_f32(p[i]); }
    static __device__ __forceinline__ void store(unsigned short* p, i64 i, float v) { p[i] = l4_f32_to_bf16(v); }
};
template <>
struct MeElem<2> {
    typedef unsigned short T;
    static __device__ __forceinline__ float load(const unsigned short* p, i64 i) { return l4_f16_to_f32(p[i]); }
    static __device__ __forceinline__ void store(unsigned short* p, i64 i, float v) { p[i] = l4_f32_to_f16(v); }
};

// silu(g) = g·σ(g) with the accurate expf (≤ 2 ulp) and an IEEE division: within 4·u32 of the
// exact value, the budget docs/numerics.md gives it (__expf's error grows with |g|).
L4_DEVICE float me_silu(float g) { return g / (1.0f + expf(-g)); }

// A routing weight as the model multiplies it: rounded into the compute dtype first (HF casts
// the router scores to the hidden dtype).
template <int DT>
L4_DEVICE float me_weight(const float* __restrict__ weight, int slot) {
    typename MeElem<DT>::T v;
    MeElem<DT>::store(&v, 0, weight[slot]);
    return MeElem<DT>::load(&v, 0);
}

// The CTA's (expert, first row, end row) for tile index `tile`: tiles are the m-blocks of
// `bm` rows of each expert's segment, in expert order, then (shared_rows > 0) those of the
// shared expert's segment, expert index `experts`, rows [offset[experts], + shared_rows).
// False past the last tile.
L4_DEVICE bool me_find_tile(const int* __restrict__ offset, int experts, int bm, int tile, int& expert, int& row0,
                            int& row1, int shared_rows) {
    int before = 0;
    for (int e = 0; e < experts; ++e) {
        const int start = offset[e];
        const int count = offset[e + 1] - start;
        const int tiles = (count + bm - 1) / bm;
        if (tile < before + tiles) {
            expert = e;
            row0 = start + (tile - before) * bm;
            row1 = min(row0 + bm, start + count);
            return true;
        }
        before += tiles;
    }
    if (shared_rows > 0 && tile < before + (shared_rows + bm - 1) / bm) {
        const int start = offset[experts];
        expert = experts;
        row0 = start + (tile - before) * bm;
        row1 = min(row0 + bm, start + shared_rows);
        return true;
    }
    return false;
}

// The slot of sorted row r: routed rows (r < slots) through the sort, shared rows are their own
// slot (slot slots + token).
L4_DEVICE int me_slot_of_row(const int* __restrict__ sorted, int slots, int r) { return r < slots ? sorted[r] : r; }

// The expert owning sorted row r (offset[e] ≤ r < offset[e + 1]), by binary search.
L4_DEVICE int me_expert_of_row(const int* __restrict__ offset, int experts, int r) {
    int lo = 0, hi = experts - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (offset[mid] <= r) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return lo;
}

// ---- 1. gather (and scale) the expert inputs in sorted order ----

// Rows [slots, slots + shared_rows) are the shared expert's: x[r − slots] unscaled.
template <int DT>
L4_DEVICE void me_gather(const typename MeElem<DT>::T* __restrict__ x, const int* __restrict__ sorted,
                         const float* __restrict__ slot_weight, typename MeElem<DT>::T* __restrict__ xs, int slots, int k,
                         int d, int shared_rows) {
    const i64 total = (i64)(slots + shared_rows) * d;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        const int r = (int)(i / d);
        const int c = (int)(i % d);
        if (r >= slots) {
            xs[i] = x[(i64)(r - slots) * d + c];
            continue;
        }
        const int slot = sorted[r];
        const float v = MeElem<DT>::load(x, (i64)(slot / k) * d + c);
        MeElem<DT>::store(xs, i, slot_weight ? v * me_weight<DT>(slot_weight, slot) : v);
    }
}

#define ME_GATHER(NAME, DT)                                                                                      \
    extern "C" __global__ void NAME(const MeElem<DT>::T* x, const int* sorted, const float* slot_weight,          \
                                    MeElem<DT>::T* xs, int slots, int k, int d, int shared_rows) {               \
        me_gather<DT>(x, sorted, slot_weight, xs, slots, k, d, shared_rows);                                     \
    }
ME_GATHER(me_gather_f32, 0)
ME_GATHER(me_gather_bf16, 1)
ME_GATHER(me_gather_f16, 2)

// ---- the shared epilogue of the down projection ----

// Direct (k = 1, one split): out[token] = round(shared[token] + acc·w_out[slot]). Otherwise the
// partial sum acc of split z for this slot, unweighted: slot_out [splits, slots, n] f32.
template <int DT>
L4_DEVICE void me_down_store(float acc, int slot, int k, int col, int n, const float* __restrict__ out_weight,
                             const typename MeElem<DT>::T* __restrict__ shared, typename MeElem<DT>::T* __restrict__ out,
                             float* __restrict__ slot_out, int z, int slots) {
    if (out) {
        const float y = out_weight ? acc * me_weight<DT>(out_weight, slot) : acc;
        const i64 at = (i64)(slot / k) * n + col;
        MeElem<DT>::store(out, at, shared ? MeElem<DT>::load(shared, at) + y : y);
    } else {
        slot_out[((i64)z * slots + slot) * n + col] = acc;
    }
}

// ---- 2./3. the tensor-core grouped GEMM ----

template <bool BF16>
L4_DEVICE void me_mma(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
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

L4_DEVICE u32 me_smem(const void* p) { return (u32)__cvta_generic_to_shared(p); }

// 16 bytes global → shared, asynchronously; zero-filled when !valid (src must still be mapped).
L4_DEVICE void me_cp_async16(u32 dst, const void* src, bool valid) {
    const int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
L4_DEVICE void me_cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
L4_DEVICE void me_cp_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

L4_DEVICE void me_ldmatrix_x4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
L4_DEVICE void me_ldmatrix_x4_trans(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// One CTA: rows [row0, row1) of expert `expert`'s segment times a BN-column slice of its weight.
//   a [S, K] rows in sorted order; w [E, K, ldw] (ldw = 2N for gate_up, N for down).
// GATE_UP: the B tile's columns are, per warp column, NT·4 gate columns then the NT·4 up
// columns of the same h columns, so thread-local accumulators nt and nt + NT/2 pair up.
template <bool BF16, int WM, int WN, int MT, int NT, int STAGES, bool GATE_UP>
L4_DEVICE void me_gemm(const unsigned short* __restrict__ a, const unsigned short* __restrict__ w,
                       const int* __restrict__ offset, int experts, int K, int N, unsigned short* __restrict__ h_out,
                       const int* __restrict__ sorted, const float* __restrict__ out_weight, int k_slots,
                       const unsigned short* __restrict__ shared, unsigned short* __restrict__ out,
                       float* __restrict__ slot_out, int slots, int ktiles_per_split,
                       const unsigned short* __restrict__ shared_w, int shared_rows) {
    constexpr int DT = BF16 ? 1 : 2;
    constexpr int BM = 16 * MT * WM;
    constexpr int BN = 8 * NT * WN;  // B-tile columns
    constexpr int THREADS = 32 * WM * WN;
    constexpr int HALF = NT * 4;  // gate (or up) columns per warp column
    constexpr int BN_OUT = GATE_UP ? BN / 2 : BN;
    __shared__ __align__(16) unsigned short As[STAGES][BM][ME_BK + ME_PAD];
    __shared__ __align__(16) unsigned short Bs[STAGES][ME_BK][BN + ME_PAD];

    int expert, row0, row1;
    if (!me_find_tile(offset, experts, BM, blockIdx.x, expert, row0, row1, shared_rows)) return;
    const int rows = row1 - row0;
    const int n0 = blockIdx.y * BN_OUT;
    const i64 ldw = GATE_UP ? 2 * (i64)N : (i64)N;
    // The shared expert (index `experts`) has its own weights, in the routed experts' layout.
    const unsigned short* wexp = expert == experts ? shared_w : w + (i64)expert * K * ldw;
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int wm = warp / WN;
    const int wn = warp % WN;

    auto load_stage = [&](int stage, int k0) {
        for (int c = tid; c < BM * (ME_BK / 8); c += THREADS) {
            const int r = c / (ME_BK / 8);
            const int kc = (c % (ME_BK / 8)) * 8;
            const bool valid = r < rows && k0 + kc < K;
            const unsigned short* src = valid ? a + (i64)(row0 + r) * K + k0 + kc : a;
            me_cp_async16(me_smem(&As[stage][r][kc]), src, valid);
        }
        for (int c = tid; c < ME_BK * (BN / 8); c += THREADS) {
            const int kr = c / (BN / 8);
            const int cc = (c % (BN / 8)) * 8;
            int col, limit_col;
            if (GATE_UP) {
                const int within = cc % (NT * 8);
                const int hcol = n0 + (cc / (NT * 8)) * HALF + within % HALF;
                col = (within < HALF ? 0 : N) + hcol;
                limit_col = hcol;
            } else {
                col = n0 + cc;
                limit_col = col;
            }
            const bool valid = k0 + kr < K && limit_col < N;
            const unsigned short* src = valid ? wexp + (i64)(k0 + kr) * ldw + col : w;
            me_cp_async16(me_smem(&Bs[stage][kr][cc]), src, valid);
        }
    };

    float acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;

    // This CTA's k-tiles: split blockIdx.z of the reduction (the whole of it without a split).
    const int kt_begin = blockIdx.z * ktiles_per_split;
    const int ktiles = min((K + ME_BK - 1) / ME_BK - kt_begin, ktiles_per_split);
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) load_stage(s, (kt_begin + s) * ME_BK);
        me_cp_commit();
    }
    for (int kt = 0; kt < ktiles; ++kt) {
        // Tile kt has landed, and every warp is done with the stage the prefetch overwrites.
        me_cp_wait<STAGES - 2>();
        __syncthreads();
        const int next = kt + STAGES - 1;
        if (next < ktiles) load_stage(next % STAGES, (kt_begin + next) * ME_BK);
        me_cp_commit();
        const int st = kt % STAGES;
#pragma unroll
        for (int kk = 0; kk < ME_BK; kk += 16) {
            u32 af[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
                me_ldmatrix_x4(af[mt], me_smem(&As[st][(wm * MT + mt) * 16 + (lane & 15)][kk + (lane >> 4) * 8]));
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                u32 bf[4];
                me_ldmatrix_x4_trans(bf, me_smem(&Bs[st][kk + (lane & 15)][wn * NT * 8 + np * 16 + (lane >> 4) * 8]));
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    me_mma<BF16>(acc[mt][2 * np], af[mt], bf[0], bf[1]);
                    me_mma<BF16>(acc[mt][2 * np + 1], af[mt], bf[2], bf[3]);
                }
            }
        }
    }
    me_cp_wait<0>();

#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int r = (wm * MT + mt) * 16 + (lane >> 2) + half * 8;
            if (r >= rows) continue;
            if (GATE_UP) {
#pragma unroll
                for (int nt = 0; nt < NT / 2; ++nt) {
                    const int hcol = n0 + wn * HALF + nt * 8 + (lane & 3) * 2;
                    if (hcol >= N) continue;  // N % 8 == 0: hcol + 1 < N too
                    const float h0 = me_silu(acc[mt][nt][2 * half]) * acc[mt][nt + NT / 2][2 * half];
                    const float h1 = me_silu(acc[mt][nt][2 * half + 1]) * acc[mt][nt + NT / 2][2 * half + 1];
                    const u32 packed = BF16 ? ((u32)l4_f32_to_bf16(h0) | ((u32)l4_f32_to_bf16(h1) << 16))
                                            : ((u32)l4_f32_to_f16(h0) | ((u32)l4_f32_to_f16(h1) << 16));
                    *(u32*)(h_out + (i64)(row0 + r) * N + hcol) = packed;
                }
            } else {
                const int slot = me_slot_of_row(sorted, slots, row0 + r);
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    const int col = n0 + wn * NT * 8 + nt * 8 + (lane & 3) * 2;
                    if (col >= N) continue;
                    me_down_store<DT>(acc[mt][nt][2 * half], slot, k_slots, col, N, out_weight, shared, out, slot_out,
                                      blockIdx.z, slots + shared_rows);
                    me_down_store<DT>(acc[mt][nt][2 * half + 1], slot, k_slots, col + 1, N, out_weight, shared, out,
                                      slot_out, blockIdx.z, slots + shared_rows);
                }
            }
        }
    }
}

// Shapes: wide = BM 64 × BN 128 (2×2 warps of 32×64), 3 stages (41.5 KB of static smem);
// decode = BM 64 × BN 128 (1×4 warps of 64×32), 3 stages (41.5 KB).
#define ME_WIDE 2, 2, 2, 8, 3
#define ME_DECODE 1, 4, 4, 4, 3

#define ME_GATE_UP(NAME, BF16, SHAPE, THREADS)                                                               \
    extern "C" __global__ void __launch_bounds__(THREADS) NAME(const unsigned short* xs, const unsigned short* w, \
                                                               const int* offset, int experts, int d, int f,     \
                                                               unsigned short* h, const unsigned short* shared_w, \
                                                               int shared_rows) {                                \
        me_gemm<BF16, SHAPE, true>(xs, w, offset, experts, d, f, h, nullptr, nullptr, 1, nullptr, nullptr,        \
                                   nullptr, 0, 1 << 30, shared_w, shared_rows);                                  \
    }
ME_GATE_UP(me_gate_up_bf16_wide, true, ME_WIDE, 128)
ME_GATE_UP(me_gate_up_f16_wide, false, ME_WIDE, 128)
ME_GATE_UP(me_gate_up_bf16_decode, true, ME_DECODE, 128)
ME_GATE_UP(me_gate_up_f16_decode, false, ME_DECODE, 128)

#define ME_DOWN(NAME, BF16, SHAPE, THREADS)                                                                      \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                        \
        NAME(const unsigned short* h, const unsigned short* w, const int* offset, int experts, int f, int d,     \
             const int* sorted, const float* out_weight, int k, const unsigned short* shared,                    \
             unsigned short* out, float* slot_out, int slots, int ktiles_per_split,                              \
             const unsigned short* shared_w, int shared_rows) {                                                  \
        me_gemm<BF16, SHAPE, false>(h, w, offset, experts, f, d, nullptr, sorted, out_weight, k, shared, out,    \
                                    slot_out, slots, ktiles_per_split, shared_w, shared_rows);                   \
    }
ME_DOWN(me_down_bf16_wide, true, ME_WIDE, 128)
ME_DOWN(me_down_f16_wide, false, ME_WIDE, 128)
ME_DOWN(me_down_bf16_decode, true, ME_DECODE, 128)
ME_DOWN(me_down_f16_decode, false, ME_DECODE, 128)

// ---- the scalar path: any dtype, any size ----

// h[r][c] for one (r, c) per thread: f32 dot products in k order.
template <int DT>
L4_DEVICE void me_gate_up_scalar(const typename MeElem<DT>::T* __restrict__ xs, const typename MeElem<DT>::T* __restrict__ w,
                                 const int* __restrict__ offset, int experts, int slots, int d, int f,
                                 typename MeElem<DT>::T* __restrict__ h,
                                 const typename MeElem<DT>::T* __restrict__ shared_w, int shared_rows) {
    const i64 total = (i64)(slots + shared_rows) * f;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        const int r = (int)(i / f);
        const int c = (int)(i % f);
        const typename MeElem<DT>::T* we =
            r >= slots ? shared_w : w + (i64)me_expert_of_row(offset, experts, r) * d * 2 * f;
        float g = 0.0f, u = 0.0f;
        for (int kk = 0; kk < d; ++kk) {
            const float xv = MeElem<DT>::load(xs, (i64)r * d + kk);
            g = fmaf(xv, MeElem<DT>::load(we, (i64)kk * 2 * f + c), g);
            u = fmaf(xv, MeElem<DT>::load(we, (i64)kk * 2 * f + f + c), u);
        }
        MeElem<DT>::store(h, i, me_silu(g) * u);
    }
}

template <int DT>
L4_DEVICE void me_down_scalar(const typename MeElem<DT>::T* __restrict__ h, const typename MeElem<DT>::T* __restrict__ w,
                              const int* __restrict__ offset, int experts, int slots, int f, int d,
                              const int* __restrict__ sorted, const float* __restrict__ out_weight, int k,
                              const typename MeElem<DT>::T* __restrict__ shared, typename MeElem<DT>::T* __restrict__ out,
                              float* __restrict__ slot_out, const typename MeElem<DT>::T* __restrict__ shared_w,
                              int shared_rows) {
    const i64 total = (i64)(slots + shared_rows) * d;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        const int r = (int)(i / d);
        const int c = (int)(i % d);
        const typename MeElem<DT>::T* we =
            r >= slots ? shared_w : w + (i64)me_expert_of_row(offset, experts, r) * f * d;
        float acc = 0.0f;
        for (int kk = 0; kk < f; ++kk)
            acc = fmaf(MeElem<DT>::load(h, (i64)r * f + kk), MeElem<DT>::load(we, (i64)kk * d + c), acc);
        me_down_store<DT>(acc, me_slot_of_row(sorted, slots, r), k, c, d, out_weight, shared, out, slot_out, 0,
                          slots + shared_rows);
    }
}

#define ME_SCALAR(GU, DN, DT)                                                                                    \
    extern "C" __global__ void GU(const MeElem<DT>::T* xs, const MeElem<DT>::T* w, const int* offset, int experts, \
                                  int slots, int d, int f, MeElem<DT>::T* h, const MeElem<DT>::T* shared_w,      \
                                  int shared_rows) {                                                             \
        me_gate_up_scalar<DT>(xs, w, offset, experts, slots, d, f, h, shared_w, shared_rows);                    \
    }                                                                                                            \
    extern "C" __global__ void DN(const MeElem<DT>::T* h, const MeElem<DT>::T* w, const int* offset, int experts, \
                                  int slots, int f, int d, const int* sorted, const float* out_weight, int k,    \
                                  const MeElem<DT>::T* shared, MeElem<DT>::T* out, float* slot_out,              \
                                  const MeElem<DT>::T* shared_w, int shared_rows) {                              \
        me_down_scalar<DT>(h, w, offset, experts, slots, f, d, sorted, out_weight, k, shared, out, slot_out,     \
                           shared_w, shared_rows);                                                               \
    }
ME_SCALAR(me_gate_up_scalar_f32, me_down_scalar_f32, 0)
ME_SCALAR(me_gate_up_scalar_bf16, me_down_scalar_bf16, 1)
ME_SCALAR(me_gate_up_scalar_f16, me_down_scalar_f16, 2)

// ---- 4. the fixed-order combine (k > 1, a split reduction, or a fused shared expert) ----

// slot_out [splits, rows, d] f32 partial sums; rows = tokens·k routed slots, then (fused shared
// expert, shared_rows = tokens) one shared slot per token, never weighted. The sum starts from
// the shared expert's f32 output (or the given shared output row, or 0) and adds the routed
// slots in slot order.
template <int DT>
L4_DEVICE void me_combine(const float* __restrict__ slot_out, int splits, const float* __restrict__ out_weight,
                          const typename MeElem<DT>::T* __restrict__ shared, typename MeElem<DT>::T* __restrict__ out,
                          int tokens, int k, int d, int shared_rows) {
    const i64 total = (i64)tokens * d;
    const i64 routed = (i64)tokens * k;
    const i64 slots = routed + shared_rows;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        const i64 t = i / d;
        const int c = (int)(i % d);
        float sum = 0.0f;
        if (shared_rows > 0) {
            for (int z = 0; z < splits; ++z) sum += slot_out[(z * slots + routed + t) * d + c];
        } else if (shared) {
            sum = MeElem<DT>::load(shared, i);
        }
        for (int j = 0; j < k; ++j) {
            const int slot = (int)(t * k + j);
            float y = 0.0f;
            for (int z = 0; z < splits; ++z) y += slot_out[(z * slots + slot) * d + c];
            sum += out_weight ? y * me_weight<DT>(out_weight, slot) : y;
        }
        MeElem<DT>::store(out, i, sum);
    }
}

#define ME_COMBINE(NAME, DT)                                                                                     \
    extern "C" __global__ void NAME(const float* slot_out, int splits, const float* out_weight,                  \
                                    const MeElem<DT>::T* shared, MeElem<DT>::T* out, int tokens, int k, int d,   \
                                    int shared_rows) {                                                           \
        me_combine<DT>(slot_out, splits, out_weight, shared, out, tokens, k, d, shared_rows);                    \
    }
ME_COMBINE(me_combine_f32, 0)
ME_COMBINE(me_combine_bf16, 1)
ME_COMBINE(me_combine_f16, 2)

// ---- FP8 (e4m3, row-wise scales) experts on CUDA cores ----
//
// Weights [e, n_out, K] (nn.Linear layout, K contiguous) with one f32 scale per output channel
// [e, n_out]; activations [S, K] e4m3 with one f32 scale per row (per token, quantized by
// quant.cu). A CTA of ME_FP8_WARPS warps takes one (expert, ≤ 16-row) tile and ME_FP8_WARPS
// output columns, one per warp: the warp streams the column's weight row(s) once (16 bytes per
// lane per step when K % 16 == 0) and serves all the tile's rows from it, so a decode step reads
// each chosen expert's weights about once. Products of e4m3 values are exact in f32; each lane
// accumulates its k-subset in order, then a fixed butterfly sums the lanes (deterministic).

#define ME_FP8_ROWS 16
#define ME_FP8_WARPS 8

// VEC e4m3 values at p (16-byte aligned when VEC == 16) as f32.
template <int VEC>
L4_DEVICE void me_fp8_load(const l4_fp8* __restrict__ p, float (&v)[VEC]) {
    if (VEC == 16) {
        const uint4 q = *(const uint4*)p;
        const u32 words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                u32 pair;
                asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(pair) : "h"((unsigned short)(words[i] >> (16 * half))));
                v[i * 4 + half * 2] = l4_f16_to_f32((l4_f16)(pair & 0xffff));
                v[i * 4 + half * 2 + 1] = l4_f16_to_f32((l4_f16)(pair >> 16));
            }
        }
    } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i) v[i] = l4_e4m3_to_f32(p[i]);
    }
}

// acc[r] += Σ_k xq[row0 + r][k] · w[k] over this lane's k-subset, for a weight row w of K codes.
template <int VEC, int PAIRS>
L4_DEVICE void me_fp8_dot_rows(const l4_fp8* __restrict__ xq, int row0, int rows, int K, const l4_fp8* __restrict__ w0,
                               const l4_fp8* __restrict__ w1, float (&acc0)[ME_FP8_ROWS],
                               float (&acc1)[ME_FP8_ROWS]) {
    const int lane = threadIdx.x & 31;
    for (int k0 = lane * VEC; k0 < K; k0 += 32 * VEC) {
        float a[VEC], b[VEC];
        me_fp8_load<VEC>(w0 + k0, a);
        if (PAIRS == 2) me_fp8_load<VEC>(w1 + k0, b);
#pragma unroll
        for (int r = 0; r < ME_FP8_ROWS; ++r) {
            if (r >= rows) break;
            float xv[VEC];
            me_fp8_load<VEC>(xq + (i64)(row0 + r) * K + k0, xv);
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                acc0[r] = fmaf(xv[i], a[i], acc0[r]);
                if (PAIRS == 2) acc1[r] = fmaf(xv[i], b[i], acc1[r]);
            }
        }
    }
}

// h[r][c] = round(silu(g)·u), g = (xq·wq_gate)·s_x·s_gate, u likewise; w [e, 2f, d].
template <int DT, int VEC>
L4_DEVICE void me_fp8_gate_up(const l4_fp8* __restrict__ xq, const float* __restrict__ xscale,
                              const l4_fp8* __restrict__ w, const float* __restrict__ wscale,
                              const int* __restrict__ offset, int experts, int d, int f,
                              typename MeElem<DT>::T* __restrict__ h) {
    int expert, row0, row1;
    if (!me_find_tile(offset, experts, ME_FP8_ROWS, blockIdx.x, expert, row0, row1, 0)) return;
    const int c = blockIdx.y * ME_FP8_WARPS + (threadIdx.x >> 5);
    if (c >= f) return;
    const int rows = row1 - row0;
    const i64 gate_row = (i64)expert * 2 * f + c;
    float g[ME_FP8_ROWS], u[ME_FP8_ROWS];
#pragma unroll
    for (int r = 0; r < ME_FP8_ROWS; ++r) g[r] = u[r] = 0.0f;
    me_fp8_dot_rows<VEC, 2>(xq, row0, rows, d, w + gate_row * d, w + (gate_row + f) * d, g, u);
    const float sg = wscale[gate_row], su = wscale[gate_row + f];
#pragma unroll
    for (int r = 0; r < ME_FP8_ROWS; ++r) {
        if (r >= rows) break;
        const float gs = l4_warp_sum(g[r]) * xscale[row0 + r] * sg;
        const float us = l4_warp_sum(u[r]) * xscale[row0 + r] * su;
        if ((threadIdx.x & 31) == 0) MeElem<DT>::store(h, (i64)(row0 + r) * f + c, me_silu(gs) * us);
    }
}

// y = (hq·wq_down)·s_h·s_down, then the epilogue of the bf16 path; w [e, d, f].
template <int DT, int VEC>
L4_DEVICE void me_fp8_down(const l4_fp8* __restrict__ hq, const float* __restrict__ hscale,
                           const l4_fp8* __restrict__ w, const float* __restrict__ wscale,
                           const int* __restrict__ offset, int experts, int f, int d, const int* __restrict__ sorted,
                           const float* __restrict__ out_weight, int k, const typename MeElem<DT>::T* __restrict__ shared,
                           typename MeElem<DT>::T* __restrict__ out, float* __restrict__ slot_out, int slots) {
    int expert, row0, row1;
    if (!me_find_tile(offset, experts, ME_FP8_ROWS, blockIdx.x, expert, row0, row1, 0)) return;
    const int c = blockIdx.y * ME_FP8_WARPS + (threadIdx.x >> 5);
    if (c >= d) return;
    const int rows = row1 - row0;
    const i64 wrow = (i64)expert * d + c;
    float acc[ME_FP8_ROWS], unused[ME_FP8_ROWS];
#pragma unroll
    for (int r = 0; r < ME_FP8_ROWS; ++r) acc[r] = unused[r] = 0.0f;
    me_fp8_dot_rows<VEC, 1>(hq, row0, rows, f, w + wrow * f, w + wrow * f, acc, unused);
    const float sw = wscale[wrow];
#pragma unroll
    for (int r = 0; r < ME_FP8_ROWS; ++r) {
        if (r >= rows) break;
        const float y = l4_warp_sum(acc[r]) * hscale[row0 + r] * sw;
        if ((threadIdx.x & 31) == 0)
            me_down_store<DT>(y, sorted[row0 + r], k, c, d, out_weight, shared, out, slot_out, 0, slots);
    }
}

#define ME_FP8(GU, DN, DT, VEC)                                                                                  \
    extern "C" __global__ void __launch_bounds__(ME_FP8_WARPS * 32)                                              \
        GU(const l4_fp8* xq, const float* xscale, const l4_fp8* w, const float* wscale, const int* offset,       \
           int experts, int d, int f, MeElem<DT>::T* h) {                                                        \
        me_fp8_gate_up<DT, VEC>(xq, xscale, w, wscale, offset, experts, d, f, h);                                \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(ME_FP8_WARPS * 32)                                              \
        DN(const l4_fp8* hq, const float* hscale, const l4_fp8* w, const float* wscale, const int* offset,       \
           int experts, int f, int d, const int* sorted, const float* out_weight, int k,                         \
           const MeElem<DT>::T* shared, MeElem<DT>::T* out, float* slot_out, int slots) {                        \
        me_fp8_down<DT, VEC>(hq, hscale, w, wscale, offset, experts, f, d, sorted, out_weight, k, shared, out,   \
                             slot_out, slots);                                                                   \
    }
ME_FP8(me_fp8_gate_up_f32_v16, me_fp8_down_f32_v16, 0, 16)
ME_FP8(me_fp8_gate_up_bf16_v16, me_fp8_down_bf16_v16, 1, 16)
ME_FP8(me_fp8_gate_up_f16_v16, me_fp8_down_f16_v16, 2, 16)
ME_FP8(me_fp8_gate_up_f32_v1, me_fp8_down_f32_v1, 0, 1)
ME_FP8(me_fp8_gate_up_bf16_v1, me_fp8_down_bf16_v1, 1, 1)
ME_FP8(me_fp8_gate_up_f16_v1, me_fp8_down_f16_v1, 2, 1)

// ---- FP8 (e4m3, row-wise scales) experts on tensor cores: mma.sync m16n8k32 (sm_89+) ----
//
// Prefill-sized steps (more than 64 slots): the schedule of the bf16 path (CTA x = the i-th
// (expert, 64-row block), y = the column block) and its 3-stage cp.async pipeline, with k-tiles
// of 64 codes. Both operands are K-contiguous (activations [S, K], weights [e, n_out, K]), which
// is mma's row.col form, so A and B fragments come from plain ldmatrix: a b16 8×8 matrix is 8
// rows of 16 codes and thread t receives codes 4·(t%4)..+3 of row t/4, the e4m3 fragment layout
// of both A (row g, k 4·(t%4)..) and B (column g, k 4·(t%4)..). The tensor core keeps fewer than
// f32's bits when it adds FP8 products to its accumulator, so each 128-code K block starts from
// zeroed mma accumulators that are then added into f32 totals ("promotion", as fp8_gemm does).
// The epilogue applies the per-row activation scale and the per-channel weight scale,
// (acc·s_a)·s_w as the CUDA-core path does, then SwiGLU (gate_up) or the routing weight, the
// shared row and the direct/partial store of the bf16 path (down). K % 16 == 0 (whole 16-byte
// chunks) and 16-byte aligned operands; any N (weight rows are loaded one by one).

#define ME_Q_BK 64       // codes per k-tile
#define ME_Q_PAD 16      // 80-byte smem rows: the 8 rows of an ldmatrix land in distinct banks
#define ME_Q_PROMOTE 2   // k-tiles per promotion block (128 codes)

L4_DEVICE void me_mma_e4m3(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    asm volatile("trap;");  // the host launches these kernels on compute capability 8.9+ only
#endif
}

// One CTA: rows [row0, row1) of expert `expert`'s segment times a column slice of its weight.
//   a [S, K] e4m3 with ascale [S]; w [E, rows_w, K] e4m3 with wscale [E, rows_w]
//   (rows_w = 2N for gate_up, gate rows first; N for down).
// GATE_UP: B-tile rows are, per warp column, NT·4 gate channels then the NT·4 up channels of
// the same h columns, so thread-local accumulators nt and nt + NT/2 pair up.
template <int DT, int WM, int WN, int MT, int NT, int STAGES, bool GATE_UP>
L4_DEVICE void me_fp8_mma(const l4_fp8* __restrict__ a, const float* __restrict__ ascale,
                          const l4_fp8* __restrict__ w, const float* __restrict__ wscale,
                          const int* __restrict__ offset, int experts, int K, int N,
                          typename MeElem<DT>::T* __restrict__ h_out, const int* __restrict__ sorted,
                          const float* __restrict__ out_weight, int k_slots,
                          const typename MeElem<DT>::T* __restrict__ shared, typename MeElem<DT>::T* __restrict__ out,
                          float* __restrict__ slot_out, int slots) {
    constexpr int BM = 16 * MT * WM;
    constexpr int BN = 8 * NT * WN;  // B-tile rows (weight channels)
    constexpr int THREADS = 32 * WM * WN;
    constexpr int HALF = NT * 4;
    constexpr int BN_OUT = GATE_UP ? BN / 2 : BN;
    constexpr int CHUNKS = ME_Q_BK / 16;  // 16-byte chunks per tile row
    __shared__ __align__(16) unsigned char As[STAGES][BM][ME_Q_BK + ME_Q_PAD];
    __shared__ __align__(16) unsigned char Bs[STAGES][BN][ME_Q_BK + ME_Q_PAD];

    int expert, row0, row1;
    if (!me_find_tile(offset, experts, BM, blockIdx.x, expert, row0, row1, 0)) return;
    const int rows = row1 - row0;
    const int n0 = blockIdx.y * BN_OUT;
    const i64 rows_w = GATE_UP ? 2 * (i64)N : (i64)N;
    const l4_fp8* wexp = w + (i64)expert * rows_w * K;
    const float* wsexp = wscale + (i64)expert * rows_w;
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int wm = warp / WN;
    const int wn = warp % WN;

    // The weight row (channel) of B-tile row j, or -1 past N.
    auto channel = [&](int j) -> int {
        if (GATE_UP) {
            const int within = j % (NT * 8);
            const int hcol = n0 + (j / (NT * 8)) * HALF + within % HALF;
            return hcol < N ? (within < HALF ? 0 : N) + hcol : -1;
        }
        return n0 + j < N ? n0 + j : -1;
    };
    auto load_stage = [&](int stage, int k0) {
        for (int c = tid; c < BM * CHUNKS; c += THREADS) {
            const int r = c / CHUNKS;
            const int kc = (c % CHUNKS) * 16;
            const bool valid = r < rows && k0 + kc < K;
            const l4_fp8* src = valid ? a + (i64)(row0 + r) * K + k0 + kc : a;
            me_cp_async16(me_smem(&As[stage][r][kc]), src, valid);
        }
        for (int c = tid; c < BN * CHUNKS; c += THREADS) {
            const int j = c / CHUNKS;
            const int kc = (c % CHUNKS) * 16;
            const int ch = channel(j);
            const bool valid = ch >= 0 && k0 + kc < K;
            const l4_fp8* src = valid ? wexp + (i64)ch * K + k0 + kc : w;
            me_cp_async16(me_smem(&Bs[stage][j][kc]), src, valid);
        }
    };

    float acc[MT][NT][4], part[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[mt][nt][i] = part[mt][nt][i] = 0.0f;

    const int ktiles = (K + ME_Q_BK - 1) / ME_Q_BK;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) load_stage(s, s * ME_Q_BK);
        me_cp_commit();
    }
    for (int kt = 0; kt < ktiles; ++kt) {
        // Tile kt has landed, and every warp is done with the stage the prefetch overwrites.
        me_cp_wait<STAGES - 2>();
        __syncthreads();
        const int next = kt + STAGES - 1;
        if (next < ktiles) load_stage(next % STAGES, next * ME_Q_BK);
        me_cp_commit();
        const int st = kt % STAGES;
#pragma unroll
        for (int kk = 0; kk < ME_Q_BK; kk += 32) {
            u32 af[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
                me_ldmatrix_x4(af[mt], me_smem(&As[st][(wm * MT + mt) * 16 + (lane & 15)][kk + (lane >> 4) * 16]));
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                // Matrices: channels 0-7 codes 0-15 / 16-31, channels 8-15 codes 0-15 / 16-31.
                u32 bf[4];
                me_ldmatrix_x4(bf, me_smem(&Bs[st][wn * NT * 8 + np * 16 + (lane & 7) + ((lane >> 4) << 3)]
                                              [kk + ((lane >> 3) & 1) * 16]));
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    me_mma_e4m3(part[mt][2 * np], af[mt], bf[0], bf[1]);
                    me_mma_e4m3(part[mt][2 * np + 1], af[mt], bf[2], bf[3]);
                }
            }
        }
        if ((kt + 1) % ME_Q_PROMOTE == 0 || kt + 1 == ktiles) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        acc[mt][nt][i] += part[mt][nt][i];
                        part[mt][nt][i] = 0.0f;
                    }
        }
    }
    me_cp_wait<0>();

#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int r = (wm * MT + mt) * 16 + (lane >> 2) + half * 8;
            if (r >= rows) continue;
            const float sa = ascale[row0 + r];
            if (GATE_UP) {
#pragma unroll
                for (int nt = 0; nt < NT / 2; ++nt) {
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        const int hcol = n0 + wn * HALF + nt * 8 + (lane & 3) * 2 + j;
                        if (hcol >= N) continue;
                        const float g = acc[mt][nt][2 * half + j] * sa * wsexp[hcol];
                        const float u = acc[mt][nt + NT / 2][2 * half + j] * sa * wsexp[N + hcol];
                        MeElem<DT>::store(h_out, (i64)(row0 + r) * N + hcol, me_silu(g) * u);
                    }
                }
            } else {
                const int slot = sorted[row0 + r];
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        const int col = n0 + wn * NT * 8 + nt * 8 + (lane & 3) * 2 + j;
                        if (col >= N) continue;
                        const float y = acc[mt][nt][2 * half + j] * sa * wsexp[col];
                        me_down_store<DT>(y, slot, k_slots, col, N, out_weight, shared, out, slot_out, 0, slots);
                    }
                }
            }
        }
    }
}

// BM 64 × BN 128 (2×4 warps of 32×32: the promotion doubles the accumulators), 3 stages: 45 KB
// of static smem.
#define ME_Q_WIDE 2, 4, 2, 4, 3
#define ME_Q_THREADS 256

#define ME_FP8_MMA(GU, DN, DT)                                                                                   \
    extern "C" __global__ void __launch_bounds__(ME_Q_THREADS)                                                   \
        GU(const l4_fp8* xq, const float* xscale, const l4_fp8* w, const float* wscale, const int* offset,       \
           int experts, int d, int f, MeElem<DT>::T* h) {                                                        \
        me_fp8_mma<DT, ME_Q_WIDE, true>(xq, xscale, w, wscale, offset, experts, d, f, h, nullptr, nullptr, 1,    \
                                        nullptr, nullptr, nullptr, 0);                                           \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(ME_Q_THREADS)                                                   \
        DN(const l4_fp8* hq, const float* hscale, const l4_fp8* w, const float* wscale, const int* offset,       \
           int experts, int f, int d, const int* sorted, const float* out_weight, int k,                         \
           const MeElem<DT>::T* shared, MeElem<DT>::T* out, float* slot_out, int slots) {                        \
        me_fp8_mma<DT, ME_Q_WIDE, false>(hq, hscale, w, wscale, offset, experts, f, d, nullptr, sorted,          \
                                         out_weight, k, shared, out, slot_out, slots);                           \
    }
ME_FP8_MMA(me_fp8_mma_gate_up_f32, me_fp8_mma_down_f32, 0)
ME_FP8_MMA(me_fp8_mma_gate_up_bf16, me_fp8_mma_down_bf16, 1)
ME_FP8_MMA(me_fp8_mma_gate_up_f16, me_fp8_mma_down_f16, 2)
