// moe_routing.cu: fused MoE routing in one launch: router logits -> per-token top-k experts and
// weights -> per-expert counts and offsets -> the token slots sorted by expert.
//
// For T tokens, E experts and k experts per token (slot s = t·k + j is token t's j-th choice):
//   topk_expert [T, k] i32   chosen experts, best first; ties go to the lower expert index
//   topk_weight [T, k] f32   llama4: sigmoid(logit); softmax-topk: the softmax probability,
//                            renormalised over the k chosen when `renormalize` is set
//   expert_count [E] i32     slots per expert
//   expert_offset [E+1] i32  exclusive prefix sum of the counts
//   sorted_slots [T·k] i32   slots grouped by expert, in ascending slot order within an
//                            expert (a stable counting sort), so expert e's tokens are
//                            sorted_slots[offset[e] .. offset[e+1]] / k
//
// Selection compares raw logits (softmax is monotonic) in the total order of Rust's
// f32::total_cmp, which the CPU reference sorts by: -NaN < -inf < ... < -0 < +0 < ... < +inf <
// +NaN, ties to the lower expert. Each logit becomes the signed integer key total_cmp compares,
// so NaN and signed zeros rank exactly as on the CPU and every lane agrees on every winner (a
// float compare would let a NaN stick in a lane and lose to the padding, an index past E). The
// chosen experts are exactly the CPU reference's; only the weights depend on expf/exp rounding. Everything is deterministic:
// counts are order-free sums, and positions come from ranks, never from atomics' order.
//
// One CTA of 1024 threads does it all, for any T (every phase loops; E ≤ 256, T·k < 2^31 slots,
// checked by the launcher; logits are indexed in 64 bits, so T·E may pass 2^32):
//   1. one warp per token: each lane holds up to 8 logits (experts lane, lane+32, ...); k
//      rounds of a warp-wide (value, index) argmax pick the experts; softmax's max and sum are
//      warp reductions;
//   2. counts by shared-memory atomics, then one thread's exclusive scan over E;
//   3. the stable scatter, 1024 slots per round: a slot's rank among equal experts in its warp
//      comes from __match_any_sync, the ranks in earlier warps from a [32 warps × E] table, and
//      earlier rounds from a running cursor per expert.
//
// Check: cargo xtask check-kernels             (sm_90a CUBIN, spills are errors, SASS class: none)
// Test:  cargo test -p l4-kernels moe_routing  (CPU always; GPU when present)
// Bench: none yet.

typedef unsigned int u32;

#define ROUTE_THREADS 1024
#define ROUTE_WARPS (ROUTE_THREADS / 32)
#define ROUTE_MAX_EXPERTS 256
#define ROUTE_PER_LANE (ROUTE_MAX_EXPERTS / 32)
#define ROUTE_MAX_K 8

typedef unsigned long long u64;

L4_DEVICE float route_load_f32(const void* p, u64 i) { return ((const float*)p)[i]; }
L4_DEVICE float route_load_bf16(const void* p, u64 i) { return l4_bf16_to_f32(((const l4_bf16*)p)[i]); }
L4_DEVICE float route_load_f16(const void* p, u64 i) { return l4_f16_to_f32(((const l4_f16*)p)[i]); }

// The key f32::total_cmp compares: the bits as a signed integer, the magnitude bits flipped for
// negative values. The map is its own inverse, which route_key_value uses.
L4_DEVICE int route_key(float x) {
    const int bits = __float_as_int(x);
    return bits ^ (int)((unsigned)(bits >> 31) >> 1);
}
L4_DEVICE float route_key_value(int key) { return __int_as_float(key ^ (int)((unsigned)(key >> 31) >> 1)); }

// Warp-wide argmax of (key, index): the larger key, the lower index on equal keys. A total
// order, so every lane gets the same winner.
L4_DEVICE void route_warp_argmax(int& key, int& i) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        const int ok = __shfl_xor_sync(0xffffffffu, key, offset);
        const int oi = __shfl_xor_sync(0xffffffffu, i, offset);
        if (ok > key || (ok == key && oi < i)) {
            key = ok;
            i = oi;
        }
    }
}

template <float (*LOAD)(const void*, u64)>
static __device__ __forceinline__ void route(const void* __restrict__ logits, int* __restrict__ topk_expert,
                                             float* __restrict__ topk_weight, int* __restrict__ expert_count,
                                             int* __restrict__ expert_offset, int* __restrict__ sorted_slots,
                                             u32 tokens, u32 experts, u32 k, int softmax, int renormalize) {
    __shared__ int counts[ROUTE_MAX_EXPERTS];
    __shared__ int cursor[ROUTE_MAX_EXPERTS];
    __shared__ int offsets[ROUTE_MAX_EXPERTS + 1];
    __shared__ int warp_counts[ROUTE_WARPS][ROUTE_MAX_EXPERTS];
    const u32 lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const u32 slots = tokens * k;

    for (u32 e = threadIdx.x; e < experts; e += ROUTE_THREADS) {
        counts[e] = 0;
        cursor[e] = 0;
    }
    __syncthreads();

    // 1. Top-k per token, one warp per token.
    for (u32 t = warp; t < tokens; t += ROUTE_WARPS) {
        float v[ROUTE_PER_LANE];
        float row_max = -L4_INF;
#pragma unroll
        for (int r = 0; r < ROUTE_PER_LANE; ++r) {
            const u32 e = lane + 32 * r;
            v[r] = e < experts ? LOAD(logits, (u64)t * experts + e) : -L4_INF;
            row_max = fmaxf(row_max, v[r]);
        }
        float sum = 0.0f;
        if (softmax) {
            row_max = l4_warp_max(row_max);
#pragma unroll
            for (int r = 0; r < ROUTE_PER_LANE; ++r)
                if (lane + 32 * r < experts) sum += expf(v[r] - row_max);
            sum = l4_warp_sum(sum);
        }
        unsigned taken = 0;  // this lane's chosen entries, bit r for expert lane + 32r
        float chosen_weight[ROUTE_MAX_K];
        int chosen_expert[ROUTE_MAX_K];
        float chosen_total = 0.0f;
        // Unrolled to ROUTE_MAX_K so the per-choice arrays stay in registers.
#pragma unroll
        for (u32 j = 0; j < ROUTE_MAX_K; ++j) {
            if (j >= k) break;
            // (INT_MIN, INT_MAX) loses to every real entry, so with k ≤ E a real expert wins.
            int best_key = (int)0x80000000u;
            int best_e = 0x7fffffff;
#pragma unroll
            for (int r = 0; r < ROUTE_PER_LANE; ++r) {
                const int e = (int)(lane + 32 * r);
                const int key = route_key(v[r]);
                const bool free_entry = (u32)e < experts && !(taken >> r & 1u);
                if (free_entry && (key > best_key || (key == best_key && e < best_e))) {
                    best_key = key;
                    best_e = e;
                }
            }
            route_warp_argmax(best_key, best_e);
            const float best = route_key_value(best_key);
            if ((u32)best_e % 32 == lane) taken |= 1u << (best_e / 32);
            const float w = softmax ? expf(best - row_max) / sum : 1.0f / (1.0f + expf(-best));
            chosen_expert[j] = best_e;
            chosen_weight[j] = w;
            chosen_total += w;
        }
        if (lane == 0) {
#pragma unroll
            for (u32 j = 0; j < ROUTE_MAX_K; ++j) {
                if (j >= k) break;
                const float w = (softmax && renormalize) ? chosen_weight[j] / chosen_total : chosen_weight[j];
                topk_expert[t * k + j] = chosen_expert[j];
                topk_weight[t * k + j] = w;
                atomicAdd(&counts[chosen_expert[j]], 1);
            }
        }
    }
    __syncthreads();

    // 2. Offsets: an exclusive scan over the experts (E ≤ 256 steps, one thread).
    if (threadIdx.x == 0) {
        int running = 0;
        for (u32 e = 0; e < experts; ++e) {
            offsets[e] = running;
            running += counts[e];
        }
        offsets[experts] = running;
    }
    __syncthreads();
    for (u32 e = threadIdx.x; e <= experts; e += ROUTE_THREADS) {
        if (e < experts) expert_count[e] = counts[e];
        expert_offset[e] = offsets[e];
    }
    // Every thread reads topk_expert written by lane 0s of other warps: make them visible.
    __threadfence_block();
    __syncthreads();

    // 3. Stable scatter, ROUTE_THREADS slots per round.
    for (u32 base = 0; base < slots; base += ROUTE_THREADS) {
        for (u32 i = threadIdx.x; i < ROUTE_WARPS * experts; i += ROUTE_THREADS) warp_counts[i / experts][i % experts] = 0;
        __syncthreads();
        const u32 s = base + threadIdx.x;
        const bool active = s < slots;
        const int e = active ? topk_expert[s] : -1 - (int)lane;  // inactive lanes match nobody
        const unsigned peers = __match_any_sync(0xffffffffu, e);
        const unsigned lower = peers & ((1u << lane) - 1u);
        if (active && lower == 0) warp_counts[warp][e] = __popc(peers);
        __syncthreads();
        if (active) {
            int before = 0;
            for (u32 w = 0; w < warp; ++w) before += warp_counts[w][e];
            sorted_slots[offsets[e] + cursor[e] + before + __popc(lower)] = (int)s;
        }
        __syncthreads();
        for (u32 x = threadIdx.x; x < experts; x += ROUTE_THREADS) {
            int round = 0;
            for (u32 w = 0; w < ROUTE_WARPS; ++w) round += warp_counts[w][x];
            cursor[x] += round;
        }
        __syncthreads();
    }
}

#define L4_ROUTE(DT)                                                                                          \
    extern "C" __global__ void __launch_bounds__(ROUTE_THREADS) moe_route_##DT(                              \
        const void* __restrict__ logits, int* __restrict__ topk_expert, float* __restrict__ topk_weight,      \
        int* __restrict__ expert_count, int* __restrict__ expert_offset, int* __restrict__ sorted_slots,      \
        u32 tokens, u32 experts, u32 k, int softmax, int renormalize) {                                       \
        route<route_load_##DT>(logits, topk_expert, topk_weight, expert_count, expert_offset, sorted_slots,   \
                               tokens, experts, k, softmax, renormalize);                                     \
    }

L4_ROUTE(f32)
L4_ROUTE(bf16)
L4_ROUTE(f16)
