// The execution model of the device code, written so that the host compiler
// can run it too. A device computation here is a sequence of three kinds of
// launches, each defined by a functor whose arithmetic is a plain
// __host__ __device__ function:
//
//   for_each(n, f)        f(i) for i in [0, n), independent elements
//   reduce(blocks, f)     for each block b: f.store(b, sum_i f.term(b, i)),
//                         i in [0, f.len(b)), in a FIXED order: lane t of
//                         kThreads sums i = t, t + kThreads, ... in turn, then
//                         the lanes are folded pairwise (half = kThreads/2..1)
//   gemm(...)             C = alpha op(A) op(B) + beta C, column-major, tiled
//                         through shared memory (64 x 64 tiles, 16-deep)
//
// HostExec below runs each launch as the device would, block by block and,
// between barriers, lane by lane: the same operations in the same order, so
// that a host build gives the device's numbers (bit for bit where the device
// code is compiled without FMA contraction) and CPU tests can check the device
// algorithms in CI, where no GPU exists. cuda/exec_cuda.cuh is the device twin.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "specdyn/rng.hpp"

#if defined(__CUDACC__)
#define SPECDYN_GPU_HD __host__ __device__
#else
#define SPECDYN_GPU_HD
#endif

namespace specdyn::gpu {

constexpr int kThreads = 256;  // threads of a reduction or GEMM block (a power of two)

// ---- deterministic block reductions --------------------------------------------

template <class F>
SPECDYN_GPU_HD double lane_partial(const F& f, int block, int lane) {
  const int64_t len = f.len(block);
  double acc = 0.0;
  for (int64_t i = lane; i < len; i += kThreads) acc = acc + f.term(block, i);
  return acc;
}

SPECDYN_GPU_HD inline void fold_step(double* part, int lane, int half) {
  if (lane < half) part[lane] = part[lane] + part[lane + half];
}

// ---- tiled GEMM (column-major, BLAS conventions) ---------------------------------

constexpr int kTileM = 64, kTileN = 64, kTileK = 16, kSub = 4;  // 16 x 16 threads, 4 x 4 outputs each

template <class T>
struct GemmArgs {  // an aggregate: GemmArgs<T>{transA, transB, m, n, k, alpha, beta, A, lda, B, ldb, C, ldc}
  bool transA = false, transB = false;
  int64_t m = 0, n = 0, k = 0;
  T alpha = 1, beta = 0;
  const T* A = nullptr;
  int64_t lda = 1;
  const T* B = nullptr;
  int64_t ldb = 1;
  T* C = nullptr;
  int64_t ldc = 1;
};

template <class T>
struct GemmTiles {
  T As[kTileK][kTileM];  // op(A)(row0 + i, k0 + kk) at As[kk][i]
  T Bs[kTileK][kTileN];  // op(B)(k0 + kk, col0 + j) at Bs[kk][j]
};

// Phase 1 of a k-tile: lane `tid` loads 4 elements of each tile. The mapping of
// lanes to elements follows the memory order of the operand (coalesced reads),
// and has no effect on the numbers.
template <class T>
SPECDYN_GPU_HD void gemm_load(const GemmArgs<T>& g, GemmTiles<T>& sh, int64_t row0, int64_t col0, int64_t k0,
                              int tid) {
  for (int e = 0; e < 4; ++e) {
    const int idx = tid + kThreads * e;  // 0 .. 1023 = kTileK * kTileM
    int i, kk;
    if (!g.transA) {  // A(i, k) at A[i + k lda]: i fastest
      i = idx % kTileM;
      kk = idx / kTileM;
    } else {  // op(A)(i, k) = A(k, i) at A[k + i lda]: k fastest
      kk = idx % kTileK;
      i = idx / kTileK;
    }
    const int64_t r = row0 + i, c = k0 + kk;
    T v = T(0);
    if (r < g.m && c < g.k) v = g.transA ? g.A[c + r * g.lda] : g.A[r + c * g.lda];
    sh.As[kk][i] = v;
    int j;
    if (!g.transB) {  // B(k, j) at B[k + j ldb]: k fastest
      kk = idx % kTileK;
      j = idx / kTileK;
    } else {  // op(B)(k, j) = B(j, k) at B[j + k ldb]: j fastest
      j = idx % kTileN;
      kk = idx / kTileN;
    }
    const int64_t cr = k0 + kk, cc = col0 + j;
    T w = T(0);
    if (cr < g.k && cc < g.n) w = g.transB ? g.B[cc + cr * g.ldb] : g.B[cr + cc * g.ldb];
    sh.Bs[kk][j] = w;
  }
}

// Phase 2 of a k-tile: lane (tx, ty) accumulates rows tx + 16 a, columns ty + 16 b.
template <class T>
SPECDYN_GPU_HD void gemm_accumulate(const GemmTiles<T>& sh, int tid, T (&acc)[kSub][kSub]) {
  const int tx = tid % 16, ty = tid / 16;
  for (int kk = 0; kk < kTileK; ++kk) {
    T a[kSub], b[kSub];
    for (int s = 0; s < kSub; ++s) {
      a[s] = sh.As[kk][tx + 16 * s];
      b[s] = sh.Bs[kk][ty + 16 * s];
    }
    for (int s = 0; s < kSub; ++s)
      for (int u = 0; u < kSub; ++u) acc[s][u] += a[s] * b[u];
  }
}

// Last phase: C = alpha acc + beta C (C is not read when beta == 0, as in BLAS).
template <class T>
SPECDYN_GPU_HD void gemm_store(const GemmArgs<T>& g, int64_t row0, int64_t col0, int tid,
                               const T (&acc)[kSub][kSub]) {
  const int tx = tid % 16, ty = tid / 16;
  for (int s = 0; s < kSub; ++s)
    for (int u = 0; u < kSub; ++u) {
      const int64_t r = row0 + tx + 16 * s, c = col0 + ty + 16 * u;
      if (r < g.m && c < g.n) {
        T* p = g.C + r + c * g.ldc;
        *p = g.beta == T(0) ? g.alpha * acc[s][u] : g.alpha * acc[s][u] + g.beta * *p;
      }
    }
}

// ---- the host twin of the device launcher ------------------------------------------

// Runs every launch on the calling thread exactly as the device schedules it
// (block by block; within a block, phase by phase over all lanes). Memory is
// host memory; the copy functions are memcpy.
class HostExec {
 public:
  template <class T>
  T* alloc(int64_t n) {
    blocks_.emplace_back(static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T));
    return reinterpret_cast<T*>(blocks_.back().data());
  }
  template <class T>
  void to_device(T* dst, const T* src, int64_t n) {
    if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
  }
  template <class T>
  void to_host(T* dst, const T* src, int64_t n) {
    if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
  }
  template <class T>
  void copy(T* dst, const T* src, int64_t n) {
    if (n > 0) std::memmove(dst, src, static_cast<size_t>(n) * sizeof(T));
  }
  template <class T>
  void fill(T* dst, T value, int64_t n) {
    std::fill(dst, dst + n, value);
  }
  template <class T>
  void normal_fill(T* dst, int64_t n, uint64_t seed, uint64_t stream, double sigma) {
    rng::normal_fill(dst, static_cast<size_t>(n), seed, stream, sigma);
  }
  void synchronize() {}

  template <class F>
  void for_each(int64_t n, const F& f) {
    for (int64_t i = 0; i < n; ++i) f(i);
  }

  template <class F>
  void reduce(int blocks, const F& f) {
    double part[kThreads];
    for (int b = 0; b < blocks; ++b) {
      for (int lane = 0; lane < kThreads; ++lane) part[lane] = lane_partial(f, b, lane);
      for (int half = kThreads / 2; half > 0; half /= 2)
        for (int lane = 0; lane < kThreads; ++lane) fold_step(part, lane, half);
      f.store(b, part[0]);
    }
  }

  template <class T>
  void gemm(const GemmArgs<T>& g) {
    if (g.m <= 0 || g.n <= 0) return;
    GemmTiles<T> sh;
    std::vector<T> acc(static_cast<size_t>(kThreads) * kSub * kSub);
    for (int64_t row0 = 0; row0 < g.m; row0 += kTileM)
      for (int64_t col0 = 0; col0 < g.n; col0 += kTileN) {
        std::fill(acc.begin(), acc.end(), T(0));
        for (int64_t k0 = 0; k0 < g.k; k0 += kTileK) {
          for (int tid = 0; tid < kThreads; ++tid) gemm_load(g, sh, row0, col0, k0, tid);
          for (int tid = 0; tid < kThreads; ++tid) gemm_accumulate(sh, tid, lane_acc(acc, tid));
        }
        for (int tid = 0; tid < kThreads; ++tid) gemm_store(g, row0, col0, tid, lane_acc(acc, tid));
      }
  }

 private:
  template <class T>
  static T (&lane_acc(std::vector<T>& acc, int tid))[kSub][kSub] {
    return *reinterpret_cast<T(*)[kSub][kSub]>(acc.data() + static_cast<size_t>(tid) * kSub * kSub);
  }
  std::vector<std::vector<unsigned char>> blocks_;
};

}  // namespace specdyn::gpu
