// gather.cu: byte-exact gathers for embedding, index_select and cat, for every dtype.
//
// These ops only move elements, so the kernels never look at the dtype: they copy "words" of
// 1, 2, 4, 8 or 16 bytes. The launcher picks the widest word that divides every row length,
// offset and stride involved (in bytes) and that every base pointer is aligned to, so a bf16
// embedding row of 5120 elements moves as 640 16-byte words while an odd-length f16 slice
// moves as 2-byte words. Bytes are copied as they are: NaN payloads, signed zeros, FP8 codes
// and integers all come out bit for bit as the CPU reference (`l4_core::ops::index`) has them.
//
// Variants (extern "C" entry points; Rust picks by index dtype and word size):
//   1. gather_{i32,i64}_w{1,2,4,8,16}  out[o, j, :] = src[o, idx[j], :] over rows of `row_words`
//                                      words: src is [outer, size, row], idx [nidx] (I32/I64,
//                                      read on the device), out [outer, nidx, row]. Embedding is
//                                      outer = 1, size = vocabulary, row = one table row.
//                                      Indices are validated on the host before the launch (the
//                                      launcher copies them back and names a bad one), so the
//                                      kernel trusts them.
//   2. copy_rows_w{1,2,4,8,16}         a strided 2-D copy, dst[r * dst_stride + c] =
//                                      src[r * src_stride + c] for c < row_words: one launch
//                                      per part of a cat writes that part's column block.
// All use a grid-stride loop over the flattened (row, word) space, so any grid covers any size.
//
// Check: cargo xtask check-kernels            (sm_90a CUBIN, spills are errors, SASS class: none)
// Test:  cargo test -p l4-kernels gather       (CPU always; GPU when present)
// Bench: none yet; these ops are memory-bound copies.

typedef unsigned long long u64;

// A 16-byte word; alignas lets the compiler issue one 128-bit load and store.
struct alignas(16) l4_w16 {
    u64 lo, hi;
};

template <typename W, typename I>
static __device__ __forceinline__ void gather_rows(const W* __restrict__ src, const I* __restrict__ idx,
                                                   W* __restrict__ out, u64 outer, u64 size, u64 nidx,
                                                   u64 row_words) {
    const u64 total = outer * nidx * row_words;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += stride) {
        const u64 r = t / row_words;  // output row: (o, j)
        const u64 w = t - r * row_words;
        const u64 o = r / nidx;
        const u64 j = r - o * nidx;
        const u64 s = (u64)idx[j];  // validated on the host: 0 <= idx[j] < size
        out[t] = src[(o * size + s) * row_words + w];
    }
}

template <typename W>
static __device__ __forceinline__ void copy_rows(const W* __restrict__ src, W* __restrict__ dst, u64 rows,
                                                 u64 row_words, u64 src_stride, u64 dst_stride) {
    const u64 total = rows * row_words;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += stride) {
        const u64 r = t / row_words;
        const u64 c = t - r * row_words;
        dst[r * dst_stride + c] = src[r * src_stride + c];
    }
}

#define L4_GATHER(NAME, W, I)                                                                           \
    extern "C" __global__ void NAME(const W* __restrict__ src, const I* __restrict__ idx,               \
                                    W* __restrict__ out, u64 outer, u64 size, u64 nidx, u64 row_words) { \
        gather_rows<W, I>(src, idx, out, outer, size, nidx, row_words);                                 \
    }

L4_GATHER(gather_i32_w1, unsigned char, int)
L4_GATHER(gather_i32_w2, unsigned short, int)
L4_GATHER(gather_i32_w4, unsigned int, int)
L4_GATHER(gather_i32_w8, u64, int)
L4_GATHER(gather_i32_w16, l4_w16, int)
L4_GATHER(gather_i64_w1, unsigned char, long long)
L4_GATHER(gather_i64_w2, unsigned short, long long)
L4_GATHER(gather_i64_w4, unsigned int, long long)
L4_GATHER(gather_i64_w8, u64, long long)
L4_GATHER(gather_i64_w16, l4_w16, long long)

#define L4_COPY_ROWS(NAME, W)                                                                         \
    extern "C" __global__ void NAME(const W* __restrict__ src, W* __restrict__ dst, u64 rows,          \
                                    u64 row_words, u64 src_stride, u64 dst_stride) {                   \
        copy_rows<W>(src, dst, rows, row_words, src_stride, dst_stride);                              \
    }

L4_COPY_ROWS(copy_rows_w1, unsigned char)
L4_COPY_ROWS(copy_rows_w2, unsigned short)
L4_COPY_ROWS(copy_rows_w4, unsigned int)
L4_COPY_ROWS(copy_rows_w8, u64)
L4_COPY_ROWS(copy_rows_w16, l4_w16)
