// Gaussian start vectors of the device Krylov solvers: element offset + i of a
// stream, the same numbers as rng::normal_fill on the CPU (this file is
// compiled without FMA contraction, like cuda/rng.cu; see CMakeLists.txt).
#include <cuda_runtime.h>

#include "specdyn/rng.hpp"
#include "specdyn_cuda.hpp"

namespace {

__global__ void normal_offset_kernel(double* out, unsigned long long n, unsigned long long seed,
                                     unsigned long long stream, unsigned long long offset) {
  for (unsigned long long i = blockIdx.x * static_cast<unsigned long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<unsigned long long>(gridDim.x) * blockDim.x) {
    const unsigned long long e = offset + i;  // element of the stream; pair e / 2
    double z0, z1;
    specdyn::rng::normal_pair(seed, stream, e / 2, z0, z1);
    out[i] = (e & 1ull) ? z1 : z0;
  }
}

}  // namespace

namespace specdyn::cuda::krylov {

int normal_fill_offset(double* out, unsigned long long n, unsigned long long seed, unsigned long long stream,
                       unsigned long long offset) {
  if (n == 0) return 0;
  const unsigned long long blocks = (n + 255) / 256;
  normal_offset_kernel<<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), 256>>>(out, n, seed, stream, offset);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace specdyn::cuda::krylov
