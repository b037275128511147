// The device kernels of lanczos.cu behind the kernel-set interface of the
// device backend (specdyn/krylov/device_backend.hpp); CUDA errors become std::runtime_error.
// Host code only (no CUDA types): compiled into the _cuda bindings.
#pragma once
#include <cstddef>
#include <cstdint>
#include <new>
#include <stdexcept>
#include <string>

#include "specdyn_cuda.hpp"

namespace specdyn::cuda {

inline void cuda_check(int code, const char* what) {
  if (code != 0) {
    if (code == 2) throw std::bad_alloc();  // cudaErrorMemoryAllocation
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + error_string(code));
  }
}

template <class T>
struct DeviceKernels {
  uint64_t downloads = 0;  // copies to the host (each synchronizes with the device)

  void* alloc(size_t bytes) {
    void* p = nullptr;
    cuda_check(krylov::alloc(&p, bytes ? bytes : 1), "cudaMalloc");
    return p;
  }
  void release(void* p) { krylov::release(p); }  // (never throws: used by destructors)
  void to_host(void* h, const void* d, size_t bytes) {
    ++downloads;
    cuda_check(krylov::to_host(h, d, bytes), "copy to host");
  }
  void to_device(void* d, const void* h, size_t bytes) {
    cuda_check(krylov::to_device(d, h, bytes), "copy to device");
  }
  void copy(void* dst, const void* src, size_t bytes) { cuda_check(krylov::device_copy(dst, src, bytes), "copy"); }
  int multiprocessors() {
    int n = 0;
    cuda_check(krylov::multiprocessors(&n), "device query");
    return n;
  }
  void mx(const T* M, int64_t ld, int64_t r, int64_t c, const T* X, int64_t ldx, int nb, T* Y, int64_t ldy) {
    cuda_check(krylov::mx(M, ld, r, c, X, ldx, nb, Y, ldy), "M X kernel");
  }
  void mty(const T* M, int64_t ld, int64_t r, int64_t c, const T* Y, int64_t ldy, int nb, T* Z, int64_t ldz,
           int64_t slabs, T* partial) {
    cuda_check(krylov::mty(M, ld, r, c, Y, ldy, nb, Z, ldz, slabs, partial), "M^T Y kernel");
  }
  void dots(int64_t d, const double* Q, int64_t ldq, int nq, const double* W, int64_t ldw, int nb, double* C) {
    cuda_check(krylov::dots(d, Q, ldq, nq, W, ldw, nb, C), "dots kernel");
  }
  void combine(int64_t d, int nq, int nb, double alpha, const double* Q, int64_t ldq, const double* C, int ldc,
               double beta, double* W, int64_t ldw) {
    cuda_check(krylov::combine(d, nq, nb, alpha, Q, ldq, C, ldc, beta, W, ldw), "combine kernel");
  }
  void scale(int64_t n, double s, double* x) { cuda_check(krylov::scale(n, s, x), "scale kernel"); }
  void convert(const double* x, double* y, int64_t n) {
    cuda_check(krylov::device_copy(y, x, static_cast<size_t>(n) * sizeof(double)), "copy");
  }
  void convert(const double* x, float* y, int64_t n) { cuda_check(krylov::convert(x, y, n), "convert kernel"); }
  void convert(const float* x, double* y, int64_t n) { cuda_check(krylov::convert(x, y, n), "convert kernel"); }
  void normal(double* out, size_t n, uint64_t seed, uint64_t stream, uint64_t offset) {
    cuda_check(krylov::normal_fill_offset(out, n, seed, stream, offset), "Gaussian kernel");
  }
};

}  // namespace specdyn::cuda
