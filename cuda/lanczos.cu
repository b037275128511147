// Device kernels of the Krylov solvers: the two matrix products of the Gram
// operator (M X and M^T Y, each one streaming read of M) and the small
// tall-skinny products on the Krylov basis. The per-thread arithmetic of the
// matrix kernels lives in specdyn/krylov/device_tiles.hpp, shared with a host emulation that
// the CPU tests run. Every reduction has a fixed shape (warp butterflies,
// fixed slabs added in order): the same inputs give the same bits run to run.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "specdyn/krylov/device_tiles.hpp"
#include "specdyn_cuda.hpp"

namespace {

namespace tiles = specdyn::cuda::tiles;
using tiles::kLanes;
using tiles::kMxWarps;
using tiles::kMtyThreads;

constexpr unsigned kFullMask = 0xffffffffu;

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
  // The xor butterfly: every lane ends with the same total (mirrored in tiles::mx_host).
  for (int off = kLanes / 2; off > 0; off /= 2) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

// Block of (32, kMxWarps) threads; warp ty owns rows row0 .. row0 + R - 1.
template <class T, int B>
__global__ void __launch_bounds__(kLanes* kMxWarps) mx_kernel(const T* __restrict__ M, int64_t ld, int64_t r,
                                                              int64_t c, const T* __restrict__ X, int64_t ldx,
                                                              int nb, T* __restrict__ Y, int64_t ldy) {
  constexpr int R = tiles::MxRows<T, B>::value;
  const int lane = threadIdx.x;
  const int64_t row0 = tiles::mx_row0<R>(blockIdx.x, threadIdx.y);
  T acc[R][B];
  tiles::mx_lane<T, B, R>(M, ld, r, c, X, ldx, nb, row0, lane, acc);
#pragma unroll
  for (int q = 0; q < R; ++q)
#pragma unroll
    for (int k = 0; k < B; ++k) acc[q][k] = warp_sum(acc[q][k]);
  if (lane == 0) {
#pragma unroll
    for (int q = 0; q < R; ++q)
#pragma unroll
      for (int k = 0; k < B; ++k)
        if (row0 + q < r && k < nb) Y[row0 + q + k * ldy] = acc[q][k];
  }
}

// Block of 256 threads, one column each; blockIdx.y is the row slab.
template <class T, int B>
__global__ void __launch_bounds__(kMtyThreads) mty_kernel(const T* __restrict__ M, int64_t ld, int64_t r, int64_t c,
                                                          const T* __restrict__ Y, int64_t ldy, int nb,
                                                          int64_t slabs, T* __restrict__ partial) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kMtyThreads + threadIdx.x;
  const int64_t s = blockIdx.y;
  T acc[B];
  tiles::mty_thread<T, B>(M, ld, c, Y, ldy, nb, j, tiles::slab_begin(s, slabs, r), tiles::slab_begin(s + 1, slabs, r),
                          acc);
  if (j < c) {
#pragma unroll
    for (int k = 0; k < B; ++k)
      if (k < nb) partial[tiles::partial_index(s, k, j, nb, c)] = acc[k];
  }
}

template <class T>
__global__ void slab_sum_kernel(const T* __restrict__ partial, int64_t slabs, int nb, int64_t c, T* __restrict__ Z,
                                int64_t ldz) {
  const int64_t total = c * nb;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = e % c;
    const int k = static_cast<int>(e / c);
    T sum = partial[tiles::partial_index(0, k, j, nb, c)];
    for (int64_t s = 1; s < slabs; ++s) sum += partial[tiles::partial_index(s, k, j, nb, c)];
    Z[j + k * ldz] = sum;
  }
}

constexpr int kDotThreads = 256;

// One block per entry C[i, j] = Q[:, i] . W[:, j]; fixed-shape block reduction.
__global__ void __launch_bounds__(kDotThreads) dots_kernel(int64_t d, const double* __restrict__ Q, int64_t ldq, int nq,
                                                           const double* __restrict__ W, int64_t ldw,
                                                           double* __restrict__ C) {
  const int i = blockIdx.x % nq, j = blockIdx.x / nq;
  const double* q = Q + i * ldq;
  const double* w = W + j * ldw;
  double s = 0;
  for (int64_t t = threadIdx.x; t < d; t += kDotThreads) s += q[t] * w[t];
  __shared__ double part[kDotThreads / kLanes];
  s = warp_sum(s);
  if (threadIdx.x % kLanes == 0) part[threadIdx.x / kLanes] = s;
  __syncthreads();
  if (threadIdx.x < kLanes) {
    s = threadIdx.x < kDotThreads / kLanes ? part[threadIdx.x] : 0.0;
    s = warp_sum(s);
    if (threadIdx.x == 0) C[i + static_cast<int64_t>(j) * nq] = s;
  }
}

__global__ void combine_kernel(int64_t d, int nq, int nb, double alpha, const double* __restrict__ Q, int64_t ldq,
                               const double* __restrict__ C, int ldc, double beta, double* W, int64_t ldw) {
  const int64_t total = d * nb;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e % d;
    const int j = static_cast<int>(e / d);
    double s = 0;
    for (int l = 0; l < nq; ++l) s += Q[i + l * ldq] * C[l + static_cast<int64_t>(j) * ldc];
    double* w = W + i + j * ldw;
    *w = beta == 0.0 ? alpha * s : alpha * s + beta * *w;
  }
}

__global__ void scale_kernel(int64_t n, double s, double* x) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] *= s;
}

template <class S, class D>
__global__ void convert_kernel(const S* x, D* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = static_cast<D>(x[i]);
}

// Non-negative doubles order like their bit patterns (NaN above inf): atomicMax on the bits.
__device__ __forceinline__ void max_bits(unsigned long long* out, double v) {
  atomicMax(out, static_cast<unsigned long long>(__double_as_longlong(v)));
}

template <class T>
__global__ void abs_max_kernel(const T* M, int64_t ld, int64_t r, int64_t c, unsigned long long* out) {
  double m = 0;
  const int64_t total = r * c;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double v = fabs(static_cast<double>(M[(e / c) * ld + e % c]));
    if (m == m && !(v <= m)) m = v;  // a NaN, once seen, is kept
  }
  max_bits(out, m);
}

template <class T>
__global__ void asymmetry_kernel(const T* M, int64_t ld, int64_t n, unsigned long long* out) {
  double m = 0;
  const int64_t total = n * n;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / n, j = e % n;
    const double v = fabs(static_cast<double>(M[i * ld + j]) - static_cast<double>(M[j * ld + i]));
    if (m == m && !(v <= m)) m = v;
  }
  max_bits(out, m);
}

template <class T>
__global__ void add_low_rank_kernel(T* M, int64_t ld, int64_t r, int64_t c, const double* U, const double* W, int q) {
  const int64_t total = r * c;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / c, j = e % c;
    double s = 0;
    for (int l = 0; l < q; ++l) s += U[i + l * r] * W[j + l * c];
    M[i * ld + j] = static_cast<T>(static_cast<double>(M[i * ld + j]) + s);
  }
}

int grid_for(int64_t n, int threads) {
  const int64_t g = (n + threads - 1) / threads;
  return static_cast<int>(g < 1 ? 1 : (g > 65535 ? 65535 : g));
}

int last_error() { return static_cast<int>(cudaGetLastError()); }

template <class T>
int mx_launch(const T* M, int64_t ld, int64_t r, int64_t c, const T* X, int64_t ldx, int nb, T* Y, int64_t ldy) {
  if (nb < 1 || nb > tiles::kMaxCols) return static_cast<int>(cudaErrorInvalidValue);
  if (r < 1) return 0;
  const dim3 block(kLanes, kMxWarps);
  switch (tiles::padded_cols(nb)) {
#define SPECDYN_MX_CASE(BB)                                                                                  \
  case BB:                                                                                                   \
    mx_kernel<T, BB><<<static_cast<unsigned>(tiles::mx_blocks<tiles::MxRows<T, BB>::value>(r)), block>>>(M, ld, r, c, \
                                                                                                 X, ldx, nb, Y, ldy); \
    break;
    SPECDYN_MX_CASE(1)
    SPECDYN_MX_CASE(2)
    SPECDYN_MX_CASE(4)
    SPECDYN_MX_CASE(8)
    SPECDYN_MX_CASE(16)
#undef SPECDYN_MX_CASE
  }
  return last_error();
}

template <class T>
int mty_launch(const T* M, int64_t ld, int64_t r, int64_t c, const T* Y, int64_t ldy, int nb, T* Z, int64_t ldz,
               int64_t slabs, T* partial) {
  if (nb < 1 || nb > tiles::kMaxCols || slabs < 1 || slabs > 65535) return static_cast<int>(cudaErrorInvalidValue);
  if (c < 1) return 0;
  const dim3 grid(static_cast<unsigned>((c + kMtyThreads - 1) / kMtyThreads), static_cast<unsigned>(slabs));
  switch (tiles::padded_cols(nb)) {
#define SPECDYN_MTY_CASE(BB) \
  case BB:                   \
    mty_kernel<T, BB><<<grid, kMtyThreads>>>(M, ld, r, c, Y, ldy, nb, slabs, partial); \
    break;
    SPECDYN_MTY_CASE(1)
    SPECDYN_MTY_CASE(2)
    SPECDYN_MTY_CASE(4)
    SPECDYN_MTY_CASE(8)
    SPECDYN_MTY_CASE(16)
#undef SPECDYN_MTY_CASE
  }
  int err = last_error();
  if (err) return err;
  slab_sum_kernel<T><<<grid_for(c * nb, 256), 256>>>(partial, slabs, nb, c, Z, ldz);
  return last_error();
}

// A max over the device by one kernel: launch(out) runs it into a zeroed 64-bit slot,
// read back as the double whose bits it holds.
template <class Launch>
int bits_max_launch(Launch&& launch, double* host_result) {
  unsigned long long* dev = nullptr;
  int err = static_cast<int>(cudaMalloc(&dev, sizeof(unsigned long long)));
  if (err) return err;
  unsigned long long bits = 0;
  err = static_cast<int>(cudaMemset(dev, 0, sizeof(bits)));
  if (!err) {
    launch(dev);
    err = last_error();
  }
  if (!err) err = static_cast<int>(cudaMemcpy(&bits, dev, sizeof(bits), cudaMemcpyDeviceToHost));
  cudaFree(dev);
  double v;
  static_assert(sizeof(v) == sizeof(bits), "double is 64-bit");
  memcpy(&v, &bits, sizeof(v));
  *host_result = v;
  return err;
}

template <class T>
int abs_max_launch(const T* M, int64_t ld, int64_t r, int64_t c, double* host_result) {
  return bits_max_launch(
      [&](unsigned long long* out) { abs_max_kernel<T><<<grid_for(r * c, 256), 256>>>(M, ld, r, c, out); },
      host_result);
}

template <class T>
int asymmetry_launch(const T* M, int64_t ld, int64_t n, double* host_result) {
  return bits_max_launch(
      [&](unsigned long long* out) { asymmetry_kernel<T><<<grid_for(n * n, 256), 256>>>(M, ld, n, out); },
      host_result);
}

}  // namespace

namespace specdyn::cuda::krylov {

int alloc(void** ptr, unsigned long long bytes) {
  *ptr = nullptr;
  return bytes == 0 ? 0 : static_cast<int>(cudaMalloc(ptr, bytes));
}
int release(void* ptr) { return ptr ? static_cast<int>(cudaFree(ptr)) : 0; }
int to_host(void* host, const void* dev, unsigned long long bytes) {
  return bytes == 0 ? 0 : static_cast<int>(cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost));
}
int to_device(void* dev, const void* host, unsigned long long bytes) {
  return bytes == 0 ? 0 : static_cast<int>(cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice));
}
int device_copy(void* dst, const void* src, unsigned long long bytes) {
  return bytes == 0 ? 0 : static_cast<int>(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}
int multiprocessors(int* count) {
  int dev = 0;
  int err = static_cast<int>(cudaGetDevice(&dev));
  if (!err) err = static_cast<int>(cudaDeviceGetAttribute(count, cudaDevAttrMultiProcessorCount, dev));
  return err;
}

int mx(const float* M, long long ld, long long r, long long c, const float* X, long long ldx, int nb, float* Y,
       long long ldy) {
  return mx_launch<float>(M, ld, r, c, X, ldx, nb, Y, ldy);
}
int mx(const double* M, long long ld, long long r, long long c, const double* X, long long ldx, int nb, double* Y,
       long long ldy) {
  return mx_launch<double>(M, ld, r, c, X, ldx, nb, Y, ldy);
}
int mty(const float* M, long long ld, long long r, long long c, const float* Y, long long ldy, int nb, float* Z,
        long long ldz, long long slabs, float* partial) {
  return mty_launch<float>(M, ld, r, c, Y, ldy, nb, Z, ldz, slabs, partial);
}
int mty(const double* M, long long ld, long long r, long long c, const double* Y, long long ldy, int nb, double* Z,
        long long ldz, long long slabs, double* partial) {
  return mty_launch<double>(M, ld, r, c, Y, ldy, nb, Z, ldz, slabs, partial);
}

int dots(long long d, const double* Q, long long ldq, int nq, const double* W, long long ldw, int nb, double* C) {
  if (nq < 1 || nb < 1) return 0;
  dots_kernel<<<static_cast<unsigned>(nq) * static_cast<unsigned>(nb), kDotThreads>>>(d, Q, ldq, nq, W, ldw, C);
  return last_error();
}

int combine(long long d, int nq, int nb, double alpha, const double* Q, long long ldq, const double* C, int ldc,
            double beta, double* W, long long ldw) {
  if (nb < 1 || d < 1) return 0;
  combine_kernel<<<grid_for(d * nb, 256), 256>>>(d, nq, nb, alpha, Q, ldq, C, ldc, beta, W, ldw);
  return last_error();
}

int scale(long long n, double s, double* x) {
  if (n < 1) return 0;
  scale_kernel<<<grid_for(n, 256), 256>>>(n, s, x);
  return last_error();
}

int convert(const double* x, float* y, long long n) {
  if (n < 1) return 0;
  convert_kernel<double, float><<<grid_for(n, 256), 256>>>(x, y, n);
  return last_error();
}
int convert(const float* x, double* y, long long n) {
  if (n < 1) return 0;
  convert_kernel<float, double><<<grid_for(n, 256), 256>>>(x, y, n);
  return last_error();
}

int abs_max(const float* M, long long ld, long long r, long long c, double* host_result) {
  return abs_max_launch<float>(M, ld, r, c, host_result);
}
int abs_max(const double* M, long long ld, long long r, long long c, double* host_result) {
  return abs_max_launch<double>(M, ld, r, c, host_result);
}
int asymmetry(const float* M, long long ld, long long n, double* host_result) {
  return asymmetry_launch<float>(M, ld, n, host_result);
}
int asymmetry(const double* M, long long ld, long long n, double* host_result) {
  return asymmetry_launch<double>(M, ld, n, host_result);
}

int add_low_rank(float* M, long long ld, long long r, long long c, const double* U, const double* W, int q) {
  if (r < 1 || c < 1 || q < 1) return 0;
  add_low_rank_kernel<float><<<grid_for(r * c, 256), 256>>>(M, ld, r, c, U, W, q);
  return last_error();
}
int add_low_rank(double* M, long long ld, long long r, long long c, const double* U, const double* W, int q) {
  if (r < 1 || c < 1 || q < 1) return 0;
  add_low_rank_kernel<double><<<grid_for(r * c, 256), 256>>>(M, ld, r, c, U, W, q);
  return last_error();
}
int synchronize() { return static_cast<int>(cudaDeviceSynchronize()); }

}  // namespace specdyn::cuda::krylov
