// Device twin of rng::normal_fill: the same (seed, stream, index) -> number map.
#include <cuda_runtime.h>

#include "specdyn/rng.hpp"
#include "specdyn_cuda.hpp"

namespace {

template <class T>
__global__ void normal_fill_kernel(T* out, unsigned long long n, unsigned long long seed,
                                   unsigned long long stream, double sigma) {
  const unsigned long long npairs = (n + 1) / 2;
  for (unsigned long long p = blockIdx.x * static_cast<unsigned long long>(blockDim.x) + threadIdx.x; p < npairs;
       p += static_cast<unsigned long long>(gridDim.x) * blockDim.x) {
    double z0, z1;
    specdyn::rng::normal_pair(seed, stream, p, z0, z1);
    out[2 * p] = static_cast<T>(sigma * z0);
    if (2 * p + 1 < n) out[2 * p + 1] = static_cast<T>(sigma * z1);
  }
}

template <class T>
int launch(T* out, unsigned long long n, unsigned long long seed, unsigned long long stream, double sigma) {
  if (n == 0) return 0;
  const int threads = 256;
  const unsigned long long npairs = (n + 1) / 2;
  const int blocks = static_cast<int>(npairs / threads + 1 < 65535ull ? npairs / threads + 1 : 65535ull);
  normal_fill_kernel<T><<<blocks, threads>>>(out, n, seed, stream, sigma);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

namespace specdyn::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return -1;
  return n;
}

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

int synchronize() { return static_cast<int>(cudaDeviceSynchronize()); }

int normal_fill(double* out, unsigned long long n, unsigned long long seed, unsigned long long stream, double sigma) {
  return launch(out, n, seed, stream, sigma);
}
int normal_fill(float* out, unsigned long long n, unsigned long long seed, unsigned long long stream, double sigma) {
  return launch(out, n, seed, stream, sigma);
}

int normal_fill_to_host(double* host, unsigned long long n, unsigned long long seed, unsigned long long stream,
                        double sigma) {
  double* dev = nullptr;
  int err = static_cast<int>(cudaMalloc(&dev, n * sizeof(double)));
  if (err) return err;
  err = launch(dev, n, seed, stream, sigma);
  if (!err) err = static_cast<int>(cudaMemcpy(host, dev, n * sizeof(double), cudaMemcpyDeviceToHost));
  cudaFree(dev);
  return err;
}

}  // namespace specdyn::cuda
