// The CPU backend of the Krylov engine (engine.hpp): host memory, and products
// with the basis split into fixed row chunks whose partial sums are added in
// chunk order, so the same inputs give the same bits at any OpenMP/BLAS
// thread count (threaded OpenBLAS dot/gemv split their sums by thread).
// The Gram backend of top_singular (the fused panel sweep) is CpuGram in
// cpp/src/lanczos_svd.cpp; the operator backend of top_eigs and slq is below.
#pragma once
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "specdyn/blas.hpp"
#include "specdyn/lanczos.hpp"
#include "specdyn/rng.hpp"

namespace specdyn::krylov::cpu {

// The fixed-chunk products (cpp/src/lanczos.cpp).
// out (nq x b, ld nq) = Q^T W for Q (d x nq) and W (d x b), both with leading dimension d.
void gemm_tn(int64_t d, int nq, int b, const double* Q, const double* W, double* out);
// W (d x b) = alpha Q C + beta W for Q (d x nq), C (nq x b, ld ldc): row chunks, no reduction.
void gemm_nn(int64_t d, int nq, int b, double alpha, const double* Q, const double* C, int ldc, double beta,
             double* W);
// Euclidean norm with the fixed-chunk reduction.
double norm2(int64_t d, const double* w);
// One classical Gram-Schmidt pass in one read of Q: C (nq x b) = Q^T W, then
// W -= Q C (the fused panel sweep on the row-major view Q^T, whose panels are
// used twice while in cache; fixed reduction order).
void project(int64_t d, int nq, int b, const double* Q, double* W, double* C);

// Host blocks of the engine, recycled on this thread: a solve inside a training
// loop asks for the same sizes every call, and fresh pages cost a page fault
// and a zeroing each (measured: about a tenth of a 4096 x 4096 top-10 solve).
// Contents start undefined (the engine writes every entry before reading it).
// At most kPoolBytes stay cached per thread.
class PooledBlock {
 public:
  PooledBlock() = default;
  explicit PooledBlock(size_t n);
  PooledBlock(PooledBlock&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)), cap_(std::exchange(o.cap_, 0)) {}
  PooledBlock& operator=(PooledBlock&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
      cap_ = std::exchange(o.cap_, 0);
    }
    return *this;
  }
  PooledBlock(const PooledBlock&) = delete;
  PooledBlock& operator=(const PooledBlock&) = delete;
  ~PooledBlock() { release(); }
  double* data() { return p_; }
  const double* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  void release();
  double* p_ = nullptr;
  size_t n_ = 0;     // doubles asked for
  size_t cap_ = 0;   // doubles held
};

// The vector half of the concept on host memory of dimension d.
struct Vectors {
  static constexpr bool kFewSyncs = false;       // reductions are cheap: column-wise CGS2 within a block
  static constexpr bool kParallelProbes = true;  // SLQ probes run in OpenMP threads
  using Block = PooledBlock;

  int64_t d = 0;

  Block block(size_t n) { return Block(n); }
  int64_t dim() const { return d; }
  void tn(const double* Q, int nq, const double* W, int b, double* C) { gemm_tn(d, nq, b, Q, W, C); }
  void nn(const double* Q, int nq, const double* C, int ldc, int b, double alpha, double beta, double* W) {
    gemm_nn(d, nq, b, alpha, Q, C, ldc, beta, W);
  }
  double norm(const double* w) { return norm2(d, w); }
  void project(const double* Q, int nq, double* W, int b, double* C) { cpu::project(d, nq, b, Q, W, C); }
  void scale(double* w, double s) { blas::scal(static_cast<int>(d), s, w); }
  void normalized(double* x, const double* y, double nrm) {
    for (int64_t i = 0; i < d; ++i) x[i] = y[i] / nrm;
  }
  void copy(double* dst, const double* src, size_t n) { std::memmove(dst, src, sizeof(double) * n); }
  void upload(const double* host, double* dst, size_t n) { std::memcpy(dst, host, sizeof(double) * n); }
  void download(const double* src, double* host, size_t n) { std::memcpy(host, src, sizeof(double) * n); }
  void random(double* p, size_t n, uint64_t seed, uint64_t offset) {
    rng::normal_fill(p, n, seed, rng::kProbes, 1.0, offset);
  }
};

// A symmetric operator given as a MatMat. The engine holds OpenBLAS at one
// thread for its own products; the operator gets the caller's count back.
struct Operator : Vectors {
  const lanczos::MatMat& op;
  int blas_threads;
  Operator(const lanczos::MatMat& f, int64_t n) : Vectors{n}, op(f), blas_threads(blas::get_num_threads()) {}
  void apply(const double* X, double* Y, int b) {
    blas::ThreadScope full(blas_threads);
    op(X, Y, b);
  }
};

}  // namespace specdyn::krylov::cpu
