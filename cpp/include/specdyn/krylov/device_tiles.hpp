// The per-thread arithmetic of the device matrix kernels (cuda/lanczos.cu), shared with a host
// emulation of the same kernels (compiled by the host compiler, tested on the
// CPU): whatever index arithmetic the kernels do, the host emulation does through
// the very same functions, so edge handling (ragged rows and columns, unused
// block columns) is exercised without a GPU.
//
// Layout: M is a row-major r x c view of the matrix with leading dimension ld
// (M = A for a C-ordered A, M = A^T for a Fortran-ordered A). Blocks of
// vectors (X, Y, Z) are column-major with their own leading dimension. At most
// kMaxCols columns go through one kernel launch; nb <= B columns are live, the
// rest of the compile-time width B is padding that is never loaded or stored.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define SPECDYN_TILE __host__ __device__ __forceinline__
#else
#define SPECDYN_TILE inline
#endif
// Register arrays stay in registers only when their loops are unrolled.
// Streaming loops are unrolled a few times: their bodies only load and
// accumulate in registers, so the loads of several iterations are in flight
// together (a memory-bound kernel needs many bytes in flight per SM).
#if defined(__CUDA_ARCH__)
#define SPECDYN_UNROLL _Pragma("unroll")
#define SPECDYN_UNROLL_2 _Pragma("unroll 2")
#define SPECDYN_UNROLL_4 _Pragma("unroll 4")
#else
#define SPECDYN_UNROLL
#define SPECDYN_UNROLL_2
#define SPECDYN_UNROLL_4
#endif

namespace specdyn::cuda::tiles {

constexpr int kMaxCols = 16;  // vectors per launch
constexpr int kLanes = 32;    // lanes of a warp: the column stride of the M X kernel
constexpr int kMxWarps = 8;   // warps per block of the M X kernel (one row group each)
constexpr int kMtyThreads = 256;  // threads (= columns) per block of the M^T Y kernel

// Rows one thread of the M X kernel carries (R x B accumulators in registers).
template <class T, int B>
struct MxRows {
  static constexpr int budget = sizeof(T) == 4 ? 64 : 32;
  static constexpr int value = budget / B < 1 ? 1 : (budget / B > 8 ? 8 : budget / B);
};

// The compile-time width used for nb live columns.
SPECDYN_TILE int padded_cols(int nb) { return nb <= 1 ? 1 : nb <= 2 ? 2 : nb <= 4 ? 4 : nb <= 8 ? 8 : 16; }

// M X kernel, one lane: rows row0 .. row0 + R - 1 (those < r), columns
// lane, lane + 32, ... < c. acc[q][k] = sum over those columns of M[row0+q, j] X[j, k].
template <class T, int B, int R>
SPECDYN_TILE void mx_lane(const T* M, int64_t ld, int64_t r, int64_t c, const T* X, int64_t ldx, int nb,
                          int64_t row0, int lane, T (&acc)[R][B]) {
  SPECDYN_UNROLL
  for (int q = 0; q < R; ++q) {
    SPECDYN_UNROLL
    for (int k = 0; k < B; ++k) acc[q][k] = T(0);
  }
  SPECDYN_UNROLL_2
  for (int64_t j = lane; j < c; j += kLanes) {
    T x[B];
    SPECDYN_UNROLL
    for (int k = 0; k < B; ++k) x[k] = k < nb ? X[j + k * ldx] : T(0);
    SPECDYN_UNROLL
    for (int q = 0; q < R; ++q) {
      const int64_t i = row0 + q;
      if (i < r) {
        const T a = M[i * ld + j];
        SPECDYN_UNROLL
        for (int k = 0; k < B; ++k) acc[q][k] += a * x[k];
      }
    }
  }
}

// First row of the row group of warp `warp` in block `block` of the M X kernel.
template <int R>
SPECDYN_TILE int64_t mx_row0(int64_t block, int warp) {
  return (block * kMxWarps + warp) * R;
}

// Blocks of the M X kernel for r rows.
template <int R>
SPECDYN_TILE int64_t mx_blocks(int64_t r) {
  const int64_t per = static_cast<int64_t>(kMxWarps) * R;
  return (r + per - 1) / per;
}

// Rows [begin, end) of slab s of `slabs` in the M^T Y kernel.
SPECDYN_TILE int64_t slab_begin(int64_t s, int64_t slabs, int64_t r) { return s * r / slabs; }

// M^T Y kernel, one thread: column j (if < c), rows [i0, i1).
// acc[k] = sum_i M[i, j] Y[i, k].
template <class T, int B>
SPECDYN_TILE void mty_thread(const T* M, int64_t ld, int64_t c, const T* Y, int64_t ldy, int nb, int64_t j,
                             int64_t i0, int64_t i1, T (&acc)[B]) {
  SPECDYN_UNROLL
  for (int k = 0; k < B; ++k) acc[k] = T(0);
  if (j >= c) return;
  SPECDYN_UNROLL_4
  for (int64_t i = i0; i < i1; ++i) {
    const T a = M[i * ld + j];
    SPECDYN_UNROLL
    for (int k = 0; k < B; ++k)
      if (k < nb) acc[k] += a * Y[i + k * ldy];
  }
}

// Where the partial sum of slab s, column k, row j of M^T Y is kept (the
// partials are then added in slab order: the result does not depend on timing).
SPECDYN_TILE int64_t partial_index(int64_t s, int k, int64_t j, int nb, int64_t c) {
  return (s * nb + k) * c + j;
}

// Number of slabs for the M^T Y kernel: enough blocks to fill the device
// (about 8 per multiprocessor), at least 32 rows per slab, at most 256 slabs.
SPECDYN_TILE int64_t mty_slabs(int64_t r, int64_t c, int multiprocessors) {
  const int64_t colblocks = (c + kMtyThreads - 1) / kMtyThreads;
  int64_t s = (8 * static_cast<int64_t>(multiprocessors) + colblocks - 1) / colblocks;
  const int64_t most = r / 32 > 1 ? r / 32 : 1;
  if (s > most) s = most;
  if (s > 256) s = 256;
  return s < 1 ? 1 : s;
}

#if !defined(__CUDACC__) || !defined(__CUDA_ARCH__)
// ---- Host emulations (the same per-thread functions, the same reduction order) ----

// Y (r x nb, ldy) = M X, as the kernel computes it: lane partials, then the
// xor-butterfly of the warp shuffle (every lane ends with the same total; lane 0 writes).
template <class T, int B>
void mx_host(const T* M, int64_t ld, int64_t r, int64_t c, const T* X, int64_t ldx, int nb, T* Y, int64_t ldy) {
  constexpr int R = MxRows<T, B>::value;
  const int64_t blocks = mx_blocks<R>(r);
  for (int64_t blk = 0; blk < blocks; ++blk)
    for (int w = 0; w < kMxWarps; ++w) {
      const int64_t row0 = mx_row0<R>(blk, w);
      static thread_local T part[kLanes][R][B];
      for (int lane = 0; lane < kLanes; ++lane) mx_lane<T, B, R>(M, ld, r, c, X, ldx, nb, row0, lane, part[lane]);
      for (int q = 0; q < R; ++q)
        for (int k = 0; k < B; ++k) {
          T v[kLanes];
          for (int l = 0; l < kLanes; ++l) v[l] = part[l][q][k];
          for (int off = kLanes / 2; off > 0; off /= 2) {
            T nv[kLanes];
            for (int l = 0; l < kLanes; ++l) nv[l] = v[l] + v[l ^ off];
            for (int l = 0; l < kLanes; ++l) v[l] = nv[l];
          }
          if (row0 + q < r && k < nb) Y[row0 + q + k * ldy] = v[0];
        }
    }
}

// Z (c x nb, ldz) = M^T Y with `slabs` row slabs, partials added in slab order.
template <class T, int B>
void mty_host(const T* M, int64_t ld, int64_t r, int64_t c, const T* Y, int64_t ldy, int nb, T* Z, int64_t ldz,
              int64_t slabs, T* partial) {
  const int64_t colblocks = (c + kMtyThreads - 1) / kMtyThreads;
  for (int64_t s = 0; s < slabs; ++s)
    for (int64_t bx = 0; bx < colblocks; ++bx)
      for (int t = 0; t < kMtyThreads; ++t) {
        const int64_t j = bx * kMtyThreads + t;
        T acc[B];
        mty_thread<T, B>(M, ld, c, Y, ldy, nb, j, slab_begin(s, slabs, r), slab_begin(s + 1, slabs, r), acc);
        if (j < c)
          for (int k = 0; k < nb; ++k) partial[partial_index(s, k, j, nb, c)] = acc[k];
      }
  for (int k = 0; k < nb; ++k)
    for (int64_t j = 0; j < c; ++j) {
      T sum = partial[partial_index(0, k, j, nb, c)];
      for (int64_t s = 1; s < slabs; ++s) sum += partial[partial_index(s, k, j, nb, c)];
      Z[j + k * ldz] = sum;
    }
}
#endif

}  // namespace specdyn::cuda::tiles
