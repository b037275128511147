// Device twin of specdyn::gpu::HostExec (cpp/include/specdyn/gpu_exec.hpp):
// the same launches, run by CUDA kernels on the default stream. Included only
// by .cu files. Errors are kept (first one wins) and reported by status().
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "specdyn/gpu_exec.hpp"
#include "specdyn_cuda.hpp"

namespace specdyn::gpu {

template <class F>
__global__ void for_each_kernel(int64_t n, F f) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) f(i);
}

template <class F>
__global__ void __launch_bounds__(kThreads) reduce_kernel(F f) {
  __shared__ double part[kThreads];
  const int b = blockIdx.x, lane = threadIdx.x;
  part[lane] = lane_partial(f, b, lane);
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    fold_step(part, lane, half);
    __syncthreads();
  }
  if (lane == 0) f.store(b, part[0]);
}

template <class T>
__global__ void __launch_bounds__(kThreads) gemm_kernel(GemmArgs<T> g) {
  __shared__ GemmTiles<T> sh;
  const int tid = threadIdx.x;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileM, col0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  T acc[kSub][kSub];
  for (int s = 0; s < kSub; ++s)
    for (int u = 0; u < kSub; ++u) acc[s][u] = T(0);
  for (int64_t k0 = 0; k0 < g.k; k0 += kTileK) {
    gemm_load(g, sh, row0, col0, k0, tid);
    __syncthreads();
    gemm_accumulate(sh, tid, acc);
    __syncthreads();
  }
  gemm_store(g, row0, col0, tid, acc);
}

template <class T>
struct FillValue {
  T* p;
  T v;
  __host__ __device__ void operator()(int64_t i) const { p[i] = v; }
};

class CudaExec {
 public:
  CudaExec() = default;
  CudaExec(const CudaExec&) = delete;
  CudaExec& operator=(const CudaExec&) = delete;
  ~CudaExec() {
    for (void* p : blocks_) cudaFree(p);
  }

  // First CUDA error seen (0: none).
  int status() const { return err_; }

  template <class T>
  T* alloc(int64_t n) {
    void* p = nullptr;
    keep(cudaMalloc(&p, static_cast<size_t>(n > 0 ? n : 1) * sizeof(T)));
    if (p) blocks_.push_back(p);
    return static_cast<T*>(p);
  }
  template <class T>
  void to_device(T* dst, const T* src, int64_t n) {
    if (n > 0 && !err_) keep(cudaMemcpy(dst, src, static_cast<size_t>(n) * sizeof(T), cudaMemcpyHostToDevice));
  }
  template <class T>
  void to_host(T* dst, const T* src, int64_t n) {
    if (n > 0 && !err_) keep(cudaMemcpy(dst, src, static_cast<size_t>(n) * sizeof(T), cudaMemcpyDeviceToHost));
  }
  template <class T>
  void copy(T* dst, const T* src, int64_t n) {
    if (n > 0 && !err_) keep(cudaMemcpy(dst, src, static_cast<size_t>(n) * sizeof(T), cudaMemcpyDeviceToDevice));
  }
  template <class T>
  void fill(T* dst, T value, int64_t n) {
    for_each(n, FillValue<T>{dst, value});
  }
  template <class T>
  void normal_fill(T* dst, int64_t n, uint64_t seed, uint64_t stream, double sigma) {
    if (!err_) keep(static_cast<cudaError_t>(cuda::normal_fill(dst, static_cast<unsigned long long>(n), seed, stream, sigma)));
  }
  void synchronize() { keep(cudaDeviceSynchronize()); }

  template <class F>
  void for_each(int64_t n, const F& f) {
    if (n <= 0 || err_) return;
    const int64_t want = (n + kThreads - 1) / kThreads;
    const int blocks = static_cast<int>(want < 65535 ? want : 65535);
    for_each_kernel<F><<<blocks, kThreads>>>(n, f);
    keep(cudaGetLastError());
  }

  template <class F>
  void reduce(int blocks, const F& f) {
    if (blocks <= 0 || err_) return;
    reduce_kernel<F><<<blocks, kThreads>>>(f);
    keep(cudaGetLastError());
  }

  template <class T>
  void gemm(const GemmArgs<T>& g) {
    if (g.m <= 0 || g.n <= 0 || err_) return;
    const dim3 grid(static_cast<unsigned>((g.m + kTileM - 1) / kTileM), static_cast<unsigned>((g.n + kTileN - 1) / kTileN));
    gemm_kernel<T><<<grid, kThreads>>>(g);
    keep(cudaGetLastError());
  }

 private:
  void keep(cudaError_t e) {
    if (e != cudaSuccess && !err_) err_ = static_cast<int>(e);
  }
  std::vector<void*> blocks_;
  int err_ = 0;
};

}  // namespace specdyn::gpu
