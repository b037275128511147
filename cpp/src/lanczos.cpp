// The CPU side of the Krylov engine (specdyn/krylov/engine.hpp): the
// fixed-chunk products of its backend, top_eigs, dense_operator and slq.
#include "specdyn/lanczos.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <limits>
#include <stdexcept>

#include "specdyn/blas.hpp"
#include "specdyn/krylov/cpu_backend.hpp"
#include "specdyn/krylov/engine.hpp"

namespace specdyn::krylov::cpu {

using blas::Op;

namespace {
// The per-thread cache behind PooledBlock.
constexpr size_t kPoolBytes = size_t(64) << 20;
struct Pool {
  std::vector<std::pair<size_t, double*>> free;  // (doubles held, buffer)
  size_t bytes = 0;
  ~Pool() {
    for (auto& f : free) std::free(f.second);
  }
};
thread_local Pool pool;
}  // namespace

PooledBlock::PooledBlock(size_t n) : n_(n) {
  if (n == 0) return;
  // The smallest cached buffer that holds n doubles without wasting more than half of itself.
  int best = -1;
  for (size_t i = 0; i < pool.free.size(); ++i) {
    const size_t c = pool.free[i].first;
    if (c >= n && c <= 2 * n && (best < 0 || c < pool.free[best].first)) best = static_cast<int>(i);
  }
  if (best >= 0) {
    cap_ = pool.free[best].first;
    p_ = pool.free[best].second;
    pool.bytes -= sizeof(double) * cap_;
    pool.free.erase(pool.free.begin() + best);
    return;
  }
  p_ = static_cast<double*>(std::malloc(sizeof(double) * n));
  if (!p_) throw std::bad_alloc();
  cap_ = n;
}

void PooledBlock::release() {
  if (!p_) return;
  if (pool.bytes + sizeof(double) * cap_ <= kPoolBytes) {
    pool.free.emplace_back(cap_, p_);
    pool.bytes += sizeof(double) * cap_;
  } else {
    std::free(p_);
  }
  p_ = nullptr;
  n_ = cap_ = 0;
}

// Long reductions over the basis dimension d run on fixed row chunks whose
// partial sums are added in chunk order: the same bits at any thread count.
// Chunks are handed out dynamically (a thread that shares its core with another
// process takes fewer of them; the sums do not depend on who took which), so
// they are small enough for two threads to share a 2048-long basis. Rows per chunk:
constexpr int64_t kRowChunk = 1024;
static inline int64_t row_chunks(int64_t d) { return (d + kRowChunk - 1) / kRowChunk; }
// Parallel only when there is enough work to pay for an OpenMP region (measured:
// a 2048 x 88 product is faster on one thread, a 4096 x 400 one on two).
constexpr int64_t kParallelWork = int64_t(1) << 20;  // multiply-adds
static inline bool parallel_rows(int64_t d, int64_t width) {
  return row_chunks(d) > 1 && d * width >= kParallelWork && !omp_in_parallel();
}

void gemm_tn(int64_t d, int nq, int b, const double* Q, const double* W, double* out) {
  const int64_t nc = row_chunks(d);
  const size_t sz = static_cast<size_t>(nq) * b;
  if (nc <= 1) {
    blas::gemm(Op::T, Op::N, nq, b, static_cast<int>(d), 1.0, Q, static_cast<int>(d), W, static_cast<int>(d), 0.0,
               out, nq);
    return;
  }
  std::vector<double> part(sz * nc);
#pragma omp parallel for schedule(dynamic, 1) if (parallel_rows(d, int64_t(nq) * b))
  for (int64_t ch = 0; ch < nc; ++ch) {
    const int64_t i0 = ch * kRowChunk, rows = std::min(kRowChunk, d - i0);
    blas::gemm(Op::T, Op::N, nq, b, static_cast<int>(rows), 1.0, Q + i0, static_cast<int>(d), W + i0,
               static_cast<int>(d), 0.0, part.data() + sz * ch, nq);
  }
  for (size_t i = 0; i < sz; ++i) {
    double acc = part[i];
    for (int64_t ch = 1; ch < nc; ++ch) acc += part[sz * ch + i];
    out[i] = acc;
  }
}

void gemm_nn(int64_t d, int nq, int b, double alpha, const double* Q, const double* C, int ldc, double beta,
             double* W) {
  blas::gemm_fixed(Op::N, Op::N, static_cast<int>(d), b, nq, alpha, Q, static_cast<int>(d), C, ldc, beta, W,
                   static_cast<int>(d), kRowChunk, kParallelWork);
}

void project(int64_t d, int nq, int b, const double* Q, double* W, double* C) {
  if (nq < 1 || b < 1) return;
  thread_local std::vector<double> Z;
  Z.resize(static_cast<size_t>(d) * b);
  lanczos::gram_sweep<double>(Q, nq, d, d, W, b, C, Z.data());
  for (size_t i = 0; i < Z.size(); ++i) W[i] -= Z[i];
}

double norm2(int64_t d, const double* w) {
  double s = 0;
  gemm_tn(d, 1, 1, w, w, &s);
  return std::sqrt(s);
}

}  // namespace specdyn::krylov::cpu

namespace specdyn::lanczos {

Eigs top_eigs(const MatMat& user_op, int64_t n, int k, Which which, const Options& opt, const double* v0, int k0) {
  const int want = which == Which::Largest ? k : 2 * k;
  // The solve runs on op = scale * user_op (see krylov::max_abs), the scale
  // fixed by the first product; values and residuals are divided by it at the end.
  double scale = 1.0;
  bool scale_fixed = false;
  std::vector<double> Xs;
  constexpr int kRange = 500;
  MatMat op = [&](const double* X, double* Y, int b) {
    const size_t nb = static_cast<size_t>(n) * b;
    auto apply = [&] {
      if (scale == 1.0) return user_op(X, Y, b);
      Xs.assign(X, X + nb);
      for (auto& x : Xs) x *= scale;
      user_op(Xs.data(), Y, b);
    };
    apply();
    if (scale_fixed) return;
    scale_fixed = true;
    double mx = krylov::max_abs(Y, nb);
    if (mx == 0 || krylov::in_safe_range(mx, kRange)) return;  // (a zero block: nothing to scale by)
    if (!std::isfinite(mx)) {  // overflow: measure on a scaled-down block
      scale = std::ldexp(1.0, -kRange);
      apply();
      mx = krylov::max_abs(Y, nb);
      if (!std::isfinite(mx)) throw std::runtime_error("top_eigs: the operator returns NaN or infinite values");
      if (mx == 0 || krylov::in_safe_range(mx, kRange)) return;
    }
    scale *= krylov::pow2_inverse(mx, kRange);
    apply();
  };
  if (n < 1 || k < 1 || want > n) throw std::invalid_argument("top_eigs: need 1 <= k and k (2k for Both) <= n");
  if (k0 < 0 || (k0 > 0 && !v0)) throw std::invalid_argument("top_eigs: bad warm start");
  const krylov::Plan plan = krylov::plan_eigs(n, k, which, opt, v0, k0);
  Eigs out;

  if (plan.dense) {
    // Small: apply op to the identity and solve densely.
    out.info.tol_used = std::max(opt.tol, 4 * std::numeric_limits<double>::epsilon());
    out.info.block = plan.block;
    std::vector<double> I(static_cast<size_t>(n) * n, 0.0), A(static_cast<size_t>(n) * n), w(n);
    for (int64_t i = 0; i < n; ++i) I[static_cast<size_t>(i * n + i)] = 1.0;
    op(I.data(), A.data(), static_cast<int>(n));
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < j; ++i) {
        const double s = 0.5 * (A[i + j * n] + A[j + i * n]);
        A[i + j * n] = A[j + i * n] = s;
      }
    {
      blas::ThreadScope one(1);  // (the same bits at any thread count)
      if (blas::syevd(static_cast<int>(n), A.data(), static_cast<int>(n), w.data()) != 0)
        throw std::runtime_error("top_eigs: syevd failed");
    }
    std::vector<int64_t> sel;
    for (int i = 0; i < k; ++i) sel.push_back(n - 1 - i);
    if (which == Which::Both)
      for (int i = 0; i < k; ++i) sel.push_back(i);
    for (auto i : sel) {
      out.values.push_back(w[i]);
      out.vectors.insert(out.vectors.end(), A.begin() + i * n, A.begin() + (i + 1) * n);
    }
    out.info.matrix_passes = 1;
    out.info.dense = true;
    out.info.norm_estimate = std::max(std::fabs(w[0]), std::fabs(w[n - 1]));
    out.info.residuals.assign(out.values.size(), 0.0);
    std::vector<double> Yv(out.vectors.size());
    op(out.vectors.data(), Yv.data(), static_cast<int>(out.values.size()));
    for (size_t j = 0; j < out.values.size(); ++j) {
      double ss = 0;
      for (int64_t i = 0; i < n; ++i) {
        const double r = Yv[i + j * n] - out.values[j] * out.vectors[i + j * n];
        ss += r * r;
      }
      out.info.residuals[j] = std::sqrt(ss);
    }
    out.info.converged = true;
  } else {
    krylov::cpu::Operator ops(op, n);
    auto r = krylov::top_eigs(ops, k, which, opt, v0, k0, plan);
    out.values = std::move(r.values);
    out.vectors = std::move(r.vectors);
    out.info = std::move(r.info);
  }
  if (scale != 1.0) {
    for (auto& v : out.values) v /= scale;
    for (auto& r : out.info.residuals) r /= scale;
    out.info.norm_estimate /= scale;
  }
  bool finite = true;
  for (size_t j = 0; j < out.values.size(); ++j)
    finite = finite && std::isfinite(out.values[j]) && std::isfinite(out.info.residuals[j]);
  out.info.converged = out.info.converged && finite;
  out.info.status = out.info.converged ? Status::converged : (finite ? Status::not_converged : Status::numerical_issue);
  return out;
}

MatMat dense_operator(const double* A, int64_t n) {
  return [A, n](const double* X, double* Y, int b) {
    // 256 rows of a 4096-wide matrix are 8 MiB: enough work per block to pay for
    // the OpenMP region, small enough to split across a few threads.
    blas::gemm_fixed(blas::Op::N, blas::Op::N, static_cast<int>(n), b, static_cast<int>(n), 1.0, A,
                     static_cast<int>(n), X, static_cast<int>(n), 0.0, Y, static_cast<int>(n), 256, n << 14);
  };
}

Quadrature slq(const MatMat& op, int64_t n, int probes, int degree, uint64_t seed) {
  if (n < 1 || probes < 1 || degree < 1) throw std::invalid_argument("slq: need n, probes, degree >= 1");
  krylov::cpu::Operator ops(op, n);
  return krylov::slq(ops, probes, degree, seed);
}

}  // namespace specdyn::lanczos
