// Host emulation of the device Krylov kernels (cuda/lanczos.cu), with the same
// interface as cuda::DeviceKernels (cuda/lanczos_device.hpp): the device
// backend (device_backend.hpp) runs on it unchanged inside _core, so every CPU
// test run covers the device logic and, through device_tiles.hpp, the kernels'
// own per-thread index arithmetic. "Device memory" is host memory here.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "specdyn/krylov/device_tiles.hpp"
#include "specdyn/rng.hpp"

namespace specdyn::krylov {

namespace tiles = cuda::tiles;

template <class T>
struct HostKernels {
  int sm = 4;  // "multiprocessors": sets the number of M^T Y slabs as on a device
  uint64_t downloads = 0;  // copies to the host (each a synchronization on a device)

  void* alloc(size_t bytes) {
    void* p = std::malloc(bytes ? bytes : 1);
    if (!p) throw std::bad_alloc();
    return p;
  }
  void release(void* p) { std::free(p); }
  void to_host(void* h, const void* d, size_t bytes) {
    ++downloads;
    std::memcpy(h, d, bytes);
  }
  void to_device(void* d, const void* h, size_t bytes) { std::memcpy(d, h, bytes); }
  void copy(void* dst, const void* src, size_t bytes) { std::memmove(dst, src, bytes); }
  int multiprocessors() const { return sm; }

  void mx(const T* M, int64_t ld, int64_t r, int64_t c, const T* X, int64_t ldx, int nb, T* Y, int64_t ldy) {
    switch (tiles::padded_cols(nb)) {
      case 1: tiles::mx_host<T, 1>(M, ld, r, c, X, ldx, nb, Y, ldy); break;
      case 2: tiles::mx_host<T, 2>(M, ld, r, c, X, ldx, nb, Y, ldy); break;
      case 4: tiles::mx_host<T, 4>(M, ld, r, c, X, ldx, nb, Y, ldy); break;
      case 8: tiles::mx_host<T, 8>(M, ld, r, c, X, ldx, nb, Y, ldy); break;
      default: tiles::mx_host<T, 16>(M, ld, r, c, X, ldx, nb, Y, ldy); break;
    }
  }
  void mty(const T* M, int64_t ld, int64_t r, int64_t c, const T* Y, int64_t ldy, int nb, T* Z, int64_t ldz,
           int64_t slabs, T* partial) {
    switch (tiles::padded_cols(nb)) {
      case 1: tiles::mty_host<T, 1>(M, ld, r, c, Y, ldy, nb, Z, ldz, slabs, partial); break;
      case 2: tiles::mty_host<T, 2>(M, ld, r, c, Y, ldy, nb, Z, ldz, slabs, partial); break;
      case 4: tiles::mty_host<T, 4>(M, ld, r, c, Y, ldy, nb, Z, ldz, slabs, partial); break;
      case 8: tiles::mty_host<T, 8>(M, ld, r, c, Y, ldy, nb, Z, ldz, slabs, partial); break;
      default: tiles::mty_host<T, 16>(M, ld, r, c, Y, ldy, nb, Z, ldz, slabs, partial); break;
    }
  }
  void dots(int64_t d, const double* Q, int64_t ldq, int nq, const double* W, int64_t ldw, int nb, double* C) {
    for (int j = 0; j < nb; ++j)
      for (int i = 0; i < nq; ++i) {
        double s = 0;
        for (int64_t t = 0; t < d; ++t) s += Q[t + i * ldq] * W[t + j * ldw];
        C[i + static_cast<int64_t>(j) * nq] = s;
      }
  }
  void combine(int64_t d, int nq, int nb, double alpha, const double* Q, int64_t ldq, const double* C, int ldc,
               double beta, double* W, int64_t ldw) {
    for (int j = 0; j < nb; ++j)
      for (int64_t i = 0; i < d; ++i) {
        double s = 0;
        for (int l = 0; l < nq; ++l) s += Q[i + l * ldq] * C[l + static_cast<int64_t>(j) * ldc];
        double& w = W[i + j * ldw];
        w = beta == 0.0 ? alpha * s : alpha * s + beta * w;
      }
  }
  void scale(int64_t n, double s, double* x) {
    for (int64_t i = 0; i < n; ++i) x[i] *= s;
  }
  template <class S, class D>
  void convert(const S* x, D* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = static_cast<D>(x[i]);
  }
  void normal(double* out, size_t n, uint64_t seed, uint64_t stream, uint64_t offset) {
    rng::normal_fill(out, n, seed, stream, 1.0, offset);
  }
};

}  // namespace specdyn::krylov
