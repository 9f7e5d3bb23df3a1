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
//   3. copy_strided_w{1,2,4,8}         `contiguous()` of any strided view: out[i] = src[offset(i)]
//                                      with offset(i) from the view's merged shape and element
//                                      strides (CopyGeometry, passed by value); one element (of
//                                      the dtype's width) per thread and step. Row-major output
//                                      order keeps the stores coalesced; loads are coalesced
//                                      whenever the innermost merged dimension has stride 1.
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

// The merged geometry of a strided view, innermost dimension first. Laid out exactly as
// `Geometry` in elementwise/cuda.rs (200 bytes); only `stride_a` is read here.
#define COPY_MAX_RANK 8
struct CopyGeometry {
    u64 shape[COPY_MAX_RANK];
    u64 stride_a[COPY_MAX_RANK];
    u64 stride_b[COPY_MAX_RANK];
    unsigned int rank;
    unsigned int pad;
};

// The storage offset (in elements) of output element i. Fully unrolled so the geometry is read
// from parameter space with constant indices.
static __device__ __forceinline__ u64 copy_offset(u64 i, const CopyGeometry& g) {
    u64 rem = i, offset = 0;
#pragma unroll
    for (int d = 0; d < COPY_MAX_RANK; ++d) {
        if (d + 1 < (int)g.rank) {
            const u64 q = rem / g.shape[d];
            offset += (rem - q * g.shape[d]) * g.stride_a[d];
            rem = q;
        } else if (d + 1 == (int)g.rank) {
            offset += rem * g.stride_a[d];
        }
    }
    return offset;
}

template <typename W>
static __device__ __forceinline__ void copy_strided(const W* __restrict__ src, W* __restrict__ out, u64 n,
                                                    const CopyGeometry& g) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = src[copy_offset(i, g)];
}

#define L4_COPY_STRIDED(NAME, W)                                                                   \
    extern "C" __global__ void NAME(const W* __restrict__ src, W* __restrict__ out, u64 n,         \
                                    const CopyGeometry g) {                                        \
        copy_strided<W>(src, out, n, g);                                                           \
    }

L4_COPY_STRIDED(copy_strided_w1, unsigned char)
L4_COPY_STRIDED(copy_strided_w2, unsigned short)
L4_COPY_STRIDED(copy_strided_w4, unsigned int)
L4_COPY_STRIDED(copy_strided_w8, u64)
