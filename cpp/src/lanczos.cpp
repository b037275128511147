// Thick-restart block Lanczos (shared engine), top_eigs and stochastic Lanczos quadrature.
#include "specdyn/lanczos.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "lanczos_engine.hpp"
#include "specdyn/blas.hpp"
#include "specdyn/rng.hpp"

namespace specdyn::lanczos {
namespace detail {

using blas::Op;

void Random::fill(double* p, int64_t n) {
  rng::normal_fill(p, static_cast<size_t>(n), seed, rng::kProbes, 1.0, offset);
  offset += static_cast<uint64_t>(n) + 2;
}

static inline size_t at(int64_t i, int64_t j, int64_t ld) { return static_cast<size_t>(i + j * ld); }

// Long reductions over the basis dimension d run on fixed row chunks whose
// partial sums are added in chunk order: the same bits at any thread count
// (threaded OpenBLAS dot/gemv split their sums by thread). Rows per chunk:
constexpr int64_t kRowChunk = 4096;
static inline int64_t row_chunks(int64_t d) { return (d + kRowChunk - 1) / kRowChunk; }
// Parallel only when there is enough work to pay for an OpenMP region.
static inline bool parallel_rows(int64_t d, int64_t width) {
  return row_chunks(d) > 1 && d * width >= (int64_t(1) << 15) && !omp_in_parallel();
}

// out (nq x b, ld nq) = Q^T W for Q (d x nq) and W (d x b), both with leading dimension d.
static void gemm_tn(int64_t d, int nq, int b, const double* Q, const double* W, double* out) {
  const int64_t nc = row_chunks(d);
  const size_t sz = static_cast<size_t>(nq) * b;
  if (nc <= 1) {
    blas::gemm(Op::T, Op::N, nq, b, static_cast<int>(d), 1.0, Q, static_cast<int>(d), W, static_cast<int>(d), 0.0,
               out, nq);
    return;
  }
  std::vector<double> part(sz * nc);
#pragma omp parallel for schedule(static) if (parallel_rows(d, int64_t(nq) * b))
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

// W (d x b) = alpha Q C + beta W for Q (d x nq), C (nq x b, ld ldc): row chunks, no reduction.
static void gemm_nn(int64_t d, int nq, int b, double alpha, const double* Q, const double* C, int ldc, double beta,
             double* W) {
  const int64_t nc = row_chunks(d);
#pragma omp parallel for schedule(static) if (parallel_rows(d, int64_t(nq) * b))
  for (int64_t ch = 0; ch < nc; ++ch) {
    const int64_t i0 = ch * kRowChunk, rows = std::min(kRowChunk, d - i0);
    blas::gemm(Op::N, Op::N, static_cast<int>(rows), b, nq, alpha, Q + i0, static_cast<int>(d), C, ldc, beta, W + i0,
               static_cast<int>(d));
  }
}

// Euclidean norm with the fixed-chunk reduction.
static double norm2(int64_t d, const double* w) {
  double s = 0;
  gemm_tn(d, 1, 1, w, w, &s);
  return std::sqrt(s);
}

// W -= Q (Q^T W) twice (CGS2); the coefficients are added into Cacc (nq x b).
static void project_out(int64_t d, const double* Q, int nq, double* W, int b, double* Cacc,
                        std::vector<double>& tmp) {
  if (nq == 0) return;
  tmp.resize(static_cast<size_t>(nq) * b);
  for (int pass = 0; pass < 2; ++pass) {
    gemm_tn(d, nq, b, Q, W, tmp.data());
    gemm_nn(d, nq, b, -1.0, Q, tmp.data(), nq, 1.0, W);
    for (size_t i = 0; i < tmp.size(); ++i) Cacc[i] += tmp[i];
  }
}

void orth_block(int64_t d, const double* Q, int nq, double* Y, int b, std::vector<double>& C,
                std::vector<double>& R, Random& rnd, double scale) {
  C.assign(static_cast<size_t>(nq) * b, 0.0);
  R.assign(static_cast<size_t>(b) * b, 0.0);
  const int di = static_cast<int>(d);
  for (int j = 0; j < b; ++j) scale = std::max(scale, norm2(d, Y + at(0, j, d)));
  std::vector<double> tmp, h(std::max(b, 1)), cq(std::max(nq, 1));
  project_out(d, Q, nq, Y, b, C.data(), tmp);  // BLAS-3, the bulk of the work
  // Within the block: column-wise CGS2 (b is small). A column whose remainder
  // is at rounding level carries no new direction (an invariant subspace was
  // found): it gets R_jj = 0 and a random replacement orthogonal to everything,
  // so the basis stays full and Y_in = Q C + Y R still holds to rounding.
  for (int j = 0; j < b; ++j) {
    double* w = Y + at(0, j, d);
    double before = norm2(d, w);
    for (int pass = 0; pass < 3; ++pass) {
      if (j > 0) {
        gemm_tn(d, j, 1, Y, w, h.data());
        gemm_nn(d, j, 1, -1.0, Y, h.data(), j, 1.0, w);
        for (int i = 0; i < j; ++i) R[at(i, j, b)] += h[i];
      }
      const double after = norm2(d, w);
      // Heavy cancellation: project against Q and the block once more.
      if (pass == 2 || after > 0.5 * before || after <= 1e-13 * scale) break;
      if (nq > 0) {
        gemm_tn(d, nq, 1, Q, w, cq.data());
        gemm_nn(d, nq, 1, -1.0, Q, cq.data(), nq, 1.0, w);
        for (int i = 0; i < nq; ++i) C[at(i, j, nq)] += cq[i];
      }
      before = after;
    }
    double nr = norm2(d, w);
    if (nr > 1e-12 * scale && scale > 0) {
      R[at(j, j, b)] = nr;
      blas::scal(di, 1.0 / nr, w);
      continue;
    }
    R[at(j, j, b)] = 0.0;
    for (int attempt = 0; attempt < 8; ++attempt) {
      rnd.fill(w, d);
      nr = norm2(d, w);
      for (int pass = 0; pass < 2; ++pass) {
        if (nq > 0) {
          gemm_tn(d, nq, 1, Q, w, cq.data());
          gemm_nn(d, nq, 1, -1.0, Q, cq.data(), nq, 1.0, w);
        }
        if (j > 0) {
          gemm_tn(d, j, 1, Y, w, h.data());
          gemm_nn(d, j, 1, -1.0, Y, h.data(), j, 1.0, w);
        }
      }
      const double left = norm2(d, w);
      if (left > 1e-3 * nr) {
        blas::scal(di, 1.0 / left, w);
        break;
      }
      if (attempt == 7) throw std::runtime_error("orth_block: basis exhausts the space");
    }
  }
}

EngineOut block_lanczos(const MatMat& op, int64_t d, int k, Which which, int b, int cap,
                        int64_t max_passes, const double* v0, int k0, Random& rnd, const Accept& accept,
                        int extra, const Budget& budget, const AcceptSet& accept_set) {
  const int want = which == Which::Largest ? k : 2 * k;
  if (cap > d || cap < want + 2 * b) throw std::logic_error("block_lanczos: basis capacity out of range");
  // Thick restart keeps the wanted Ritz vectors plus about one block of the
  // next ones: they carry the gap information that speeds convergence.
  int keep_top, keep_bot;
  if (which == Which::Largest) {
    keep_top = std::min(k + b, cap - 2 * b);
    keep_bot = 0;
  } else {
    const int spare = std::max(0, (cap - 2 * b - want) / 2);
    keep_top = k + std::min(std::max(1, b / 2), spare);
    keep_bot = keep_top;
  }
  const int keep = keep_top + keep_bot;

  // Our own products run on one BLAS thread (parallel over fixed row chunks,
  // see gemm_tn); the operator gets the caller's BLAS thread count back.
  const int blas_threads = blas::get_num_threads();
  BlasThreads serial_blas(1);
  EngineOut out;
  std::vector<double> V(static_cast<size_t>(d) * cap), T(static_cast<size_t>(cap) * cap, 0.0);
  std::vector<double> Y(static_cast<size_t>(d) * b), C, R, Tm, theta, res, tmp;

  // Start block: the warm-start columns first, random ones for the rest.
  const int nstart = v0 ? std::min(k0, b) : 0;
  if (nstart > 0) std::memcpy(V.data(), v0, sizeof(double) * static_cast<size_t>(d) * nstart);
  if (b > nstart) rnd.fill(V.data() + at(0, nstart, d), d * (b - nstart));
  orth_block(d, nullptr, 0, V.data(), b, C, R, rnd, 0.0);

  int a = 0, nv = b;  // columns already multiplied by op; columns in the basis
  const int cap_max = static_cast<int>(std::min<int64_t>(d, std::max(cap, budget.cap_max)));
  int since_rr = 0;
  while (true) {
    {
      BlasThreads full(blas_threads);
      op(V.data() + at(0, a, d), Y.data(), b);
    }
    ++out.passes;
    ++out.iterations;
    orth_block(d, V.data(), nv, Y.data(), b, C, R, rnd, out.norm);
    for (int j = 0; j < b; ++j)
      for (int i = 0; i < nv; ++i) {
        T[at(i, a + j, cap)] = C[at(i, j, nv)];
        T[at(a + j, i, cap)] = C[at(i, j, nv)];
      }
    for (int j = 0; j < b; ++j)
      for (int i = 0; i < j; ++i) {
        const double s = 0.5 * (C[at(a + i, j, nv)] + C[at(a + j, i, nv)]);
        T[at(a + i, a + j, cap)] = T[at(a + j, a + i, cap)] = s;
      }
    std::memcpy(V.data() + at(0, nv, d), Y.data(), sizeof(double) * static_cast<size_t>(d) * b);
    a += b;
    nv += b;
    const int na = a;
    ++since_rr;
    if (nv + b > cap && cap < cap_max) {
      // Grow the basis instead of restarting: copy T to the wider layout.
      const int nc = std::min(cap_max, 2 * cap);
      std::vector<double> T2(static_cast<size_t>(nc) * nc, 0.0);
      for (int j = 0; j < cap; ++j)
        for (int i = 0; i < cap; ++i) T2[at(i, j, nc)] = T[at(i, j, cap)];
      T.swap(T2);
      V.resize(static_cast<size_t>(d) * nc);
      cap = nc;
      if (which == Which::Largest) keep_top = std::min(k + b, cap - 2 * b);
    }
    // Rayleigh-Ritz only when it may stop the solve, a restart needs it, or its
    // cost is amortized (see Budget::pass_flops).
    if (budget.pass_flops > 0 && nv + b <= cap && out.passes < max_passes) {
      const double rr = 10.0 * na * static_cast<double>(na) * na;
      const int every = std::clamp(static_cast<int>(std::ceil(rr / (0.05 * budget.pass_flops))), 1,
                                   std::max(1, out.iterations / 10));
      if (na < want || since_rr < every) continue;
    }
    since_rr = 0;

    // Rayleigh-Ritz on the projected matrix.
    Tm.resize(static_cast<size_t>(na) * na);
    for (int j = 0; j < na; ++j)
      for (int i = 0; i < na; ++i) Tm[at(i, j, na)] = T[at(i, j, cap)];
    theta.resize(na);
    if (blas::syevd(na, Tm.data(), na, theta.data()) != 0) throw std::runtime_error("block_lanczos: syevd failed");
    out.norm = std::max(out.norm, std::max(std::fabs(theta[0]), std::fabs(theta[na - 1])));
    // op V_a = V_a T + V_new R E^T: the residual of Ritz pair i is ||R s_i(last block)||.
    res.assign(na, 0.0);
    for (int i = 0; i < na; ++i) {
      double ss = 0;
      for (int r = 0; r < b; ++r) {
        double v = 0;
        for (int c = r; c < b; ++c) v += R[at(r, c, b)] * Tm[at(na - b + c, i, na)];
        ss += v * v;
      }
      res[i] = std::sqrt(ss);
    }
    std::vector<int> sel;
    if (na >= want) {
      for (int i = 0; i < k; ++i) sel.push_back(na - 1 - i);
      if (which == Which::Both)
        for (int i = 0; i < k; ++i) sel.push_back(i);
    }
    bool conv = !sel.empty();
    out.theta_next = which == Which::Largest && na > k ? theta[na - 1 - k] : std::nan("");
    if (conv && accept_set && which == Which::Largest && na > k) {
      std::vector<double> th, rs;
      for (int i : sel) th.push_back(theta[i]), rs.push_back(res[i]);
      th.push_back(out.theta_next);
      conv = accept_set(th, rs, out.norm);
    } else {
      for (int i : sel) conv = conv && accept(theta[i], res[i], out.norm);
    }
    // (The pass cap never stops the solver before the basis holds the wanted count.)
    if (conv || (out.passes >= max_passes && na >= want)) {
      out.converged = conv;
      if (sel.empty()) {  // ran out of passes before the basis held k vectors
        for (int i = 0; i < std::min(na, want); ++i) sel.push_back(na - 1 - i);
      }
      const int w = static_cast<int>(sel.size());
      std::vector<double> S(static_cast<size_t>(na) * w);
      for (int j = 0; j < w; ++j) {
        std::memcpy(S.data() + at(0, j, na), Tm.data() + at(0, sel[j], na), sizeof(double) * na);
        out.theta.push_back(theta[sel[j]]);
        out.res.push_back(res[sel[j]]);
      }
      out.X.resize(static_cast<size_t>(d) * w);
      gemm_nn(d, na, w, 1.0, V.data(), S.data(), na, 0.0, out.X.data());
      const int ne = which == Which::Largest ? std::max(0, std::min(extra, na - w)) : 0;
      if (ne > 0) {
        S.resize(static_cast<size_t>(na) * ne);
        for (int j = 0; j < ne; ++j)
          std::memcpy(S.data() + at(0, j, na), Tm.data() + at(0, na - 1 - w - j, na), sizeof(double) * na);
        out.Xnext.resize(static_cast<size_t>(d) * ne);
        gemm_nn(d, na, ne, 1.0, V.data(), S.data(), na, 0.0, out.Xnext.data());
      }
      return out;
    }
    if (nv + b > cap) {
      // Thick restart: keep the best Ritz vectors and the pending block.
      std::vector<int> ks;
      for (int i = 0; i < keep_top; ++i) ks.push_back(na - 1 - i);
      for (int i = 0; i < keep_bot; ++i) ks.push_back(i);
      std::vector<double> S(static_cast<size_t>(na) * keep);
      for (int j = 0; j < keep; ++j)
        std::memcpy(S.data() + at(0, j, na), Tm.data() + at(0, ks[j], na), sizeof(double) * na);
      tmp.resize(static_cast<size_t>(d) * keep);
      gemm_nn(d, na, keep, 1.0, V.data(), S.data(), na, 0.0, tmp.data());
      std::memcpy(V.data(), tmp.data(), sizeof(double) * tmp.size());
      std::memmove(V.data() + at(0, keep, d), V.data() + at(0, na, d), sizeof(double) * static_cast<size_t>(d) * b);
      std::fill(T.begin(), T.end(), 0.0);
      for (int j = 0; j < keep; ++j) T[at(j, j, cap)] = theta[ks[j]];
      a = keep;
      nv = keep + b;
      ++out.restarts;
    }
  }
}

}  // namespace detail

using detail::Random;

Eigs top_eigs(const MatMat& user_op, int64_t n, int k, Which which, const Options& opt, const double* v0, int k0) {
  const int want = which == Which::Largest ? k : 2 * k;
  // The solve runs on op = scale * user_op (see max_abs in lanczos_engine.hpp),
  // the scale fixed by the first product; values and residuals are divided
  // by it at the end.
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
    double mx = detail::max_abs(Y, nb);
    if (mx == 0 || detail::in_safe_range(mx, kRange)) return;  // (a zero block: nothing to scale by)
    if (!std::isfinite(mx)) {  // overflow: measure on a scaled-down block
      scale = std::ldexp(1.0, -kRange);
      apply();
      mx = detail::max_abs(Y, nb);
      if (!std::isfinite(mx)) throw std::runtime_error("top_eigs: the operator returns NaN or infinite values");
      if (mx == 0 || detail::in_safe_range(mx, kRange)) return;
    }
    scale *= detail::pow2_inverse(mx, kRange);
    apply();
  };
  if (n < 1 || k < 1 || want > n) throw std::invalid_argument("top_eigs: need 1 <= k and k (2k for Both) <= n");
  if (k0 < 0 || (k0 > 0 && !v0)) throw std::invalid_argument("top_eigs: bad warm start");
  const double tol = std::max(opt.tol, 4 * std::numeric_limits<double>::epsilon());
  int b = opt.block > 0 ? opt.block : std::max(std::min(k, 16), 4);
  if (v0 && k0 > b) b = std::min(k0, 64);
  int cap = opt.max_basis > 0 ? opt.max_basis : want + std::max(6 * b, want);
  cap = std::max(cap, want + 2 * b + (which == Which::Both ? 2 : 0));
  Eigs out;
  out.info.tol_used = tol;
  out.info.block = b;
  const int64_t max_passes = opt.max_passes > 0 ? opt.max_passes : 2000;

  if (cap > n || n <= 64) {
    // Small: apply op to the identity and solve densely.
    std::vector<double> I(static_cast<size_t>(n) * n, 0.0), A(static_cast<size_t>(n) * n), w(n);
    for (int64_t i = 0; i < n; ++i) I[static_cast<size_t>(i * n + i)] = 1.0;
    op(I.data(), A.data(), static_cast<int>(n));
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < j; ++i) {
        const double s = 0.5 * (A[i + j * n] + A[j + i * n]);
        A[i + j * n] = A[j + i * n] = s;
      }
    detail::BlasThreads one(1);  // (the same bits at any thread count)
    if (blas::syevd(static_cast<int>(n), A.data(), static_cast<int>(n), w.data()) != 0)
      throw std::runtime_error("top_eigs: syevd failed");
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
  } else {
    Random rnd{opt.seed, 0};
    detail::Accept accept = [tol](double, double r, double nrm) { return r <= 0.5 * tol * nrm; };
    std::vector<double> warm(v0 ? v0 : nullptr, v0 ? v0 + static_cast<size_t>(n) * k0 : nullptr);
    int kw = k0;
    bool escalated = false;
    for (int attempt = 0;; ++attempt) {
      auto eo = detail::block_lanczos(op, n, k, which, b, cap, max_passes - out.info.matrix_passes,
                                      warm.empty() ? nullptr : warm.data(), kw, rnd, accept);
      out.info.iterations += eo.iterations;
      out.info.restarts += eo.restarts;
      out.info.matrix_passes += eo.passes;
      out.info.norm_estimate = std::max(out.info.norm_estimate, eo.norm);
      out.values = eo.theta;
      out.vectors = eo.X;
      // Certify explicitly: one application of op to the returned block.
      const int w = static_cast<int>(eo.theta.size());
      std::vector<double> Yv(static_cast<size_t>(n) * w);
      op(eo.X.data(), Yv.data(), w);
      ++out.info.matrix_passes;
      out.info.residuals.assign(w, 0.0);
      bool ok = eo.converged;
      for (int j = 0; j < w; ++j) {
        double ss = 0;
        for (int64_t i = 0; i < n; ++i) {
          const double r = Yv[i + j * n] - eo.theta[j] * eo.X[i + j * n];
          ss += r * r;
        }
        out.info.residuals[j] = std::sqrt(ss);
        ok = ok && out.info.residuals[j] <= tol * out.info.norm_estimate;
      }
      out.info.converged = ok;
      // Block Krylov finds at most b copies of a repeated eigenvalue.
      const std::vector<double> top(eo.theta.begin(), eo.theta.begin() + k),
          bot(eo.theta.begin() + k, eo.theta.end());
      const double gap = 1e-7 * out.info.norm_estimate;
      if (ok && !escalated && opt.block <= 0 &&
          std::max(detail::largest_cluster(top, gap), detail::largest_cluster(bot, gap)) >= std::max(b, 2) &&
          want + 2 * (want + 2) <= n) {
        escalated = true;
        b = std::min(want + 2, 64);
        cap = std::min<int64_t>(n, std::max(cap, want + 4 * b));
        out.info.block = b;
        warm = eo.X;
        kw = std::min(w, b);
        continue;
      }
      if (ok || attempt >= 3 || out.info.matrix_passes >= max_passes) break;
      // The Lanczos relation said converged but the explicit check did not
      // (loss of orthogonality): restart from the current vectors, tighter.
      warm = eo.X;
      kw = std::min(w, b);
      accept = [tol, attempt](double, double r, double nrm) { return r <= 0.05 * tol * nrm / (attempt + 1); };
    }
  }
  if (out.info.dense) {
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
  }
  if (scale != 1.0) {
    for (auto& v : out.values) v /= scale;
    for (auto& r : out.info.residuals) r /= scale;
    out.info.norm_estimate /= scale;
  }
  for (size_t j = 0; j < out.values.size(); ++j)
    if (!std::isfinite(out.values[j]) || !std::isfinite(out.info.residuals[j])) out.info.converged = false;
  return out;
}

MatMat dense_operator(const double* A, int64_t n) {
  return [A, n](const double* X, double* Y, int b) {
    // 256 rows of a 4096-wide matrix are 8 MiB: enough work per chunk to pay for
    // the OpenMP region, small enough to split across a few threads.
    constexpr int64_t kChunk = 256;
    const int64_t nc = (n + kChunk - 1) / kChunk;
    detail::BlasThreads one(1);
#pragma omp parallel for schedule(dynamic, 1) if (nc > 1 && n * b >= (int64_t(1) << 14) && !omp_in_parallel())
    for (int64_t ch = 0; ch < nc; ++ch) {
      const int64_t i0 = ch * kChunk, rows = std::min(kChunk, n - i0);
      blas::gemm(blas::Op::N, blas::Op::N, static_cast<int>(rows), b, static_cast<int>(n), 1.0, A + i0, static_cast<int>(n), X,
                 static_cast<int>(n), 0.0, Y + i0, static_cast<int>(n));
    }
  };
}

Quadrature slq(const MatMat& op, int64_t n, int probes, int degree, uint64_t seed) {
  if (n < 1 || probes < 1 || degree < 1) throw std::invalid_argument("slq: need n, probes, degree >= 1");
  degree = static_cast<int>(std::min<int64_t>(degree, n));
  Quadrature q;
  q.probes = probes;
  q.degree = degree;
  q.nodes.assign(static_cast<size_t>(probes) * degree, 0.0);
  q.weights.assign(static_cast<size_t>(probes) * degree, 0.0);
  // Rademacher-like start: Gaussian probes normalized (same quadrature law up
  // to the probe distribution; Gaussian keeps everything on one rng stream).
  const size_t nd = static_cast<size_t>(n);
  std::vector<double> X(nd * probes), Y(nd * probes);
  std::vector<std::vector<double>> basis(probes, std::vector<double>(nd * (degree + 1)));
  std::vector<double> alpha(static_cast<size_t>(probes) * degree, 0.0), beta(static_cast<size_t>(probes) * degree, 0.0);
  std::vector<int> len(probes, 0);
  std::vector<char> active(probes, 1);
  rng::normal_fill(X.data(), X.size(), seed, rng::kProbes, 1.0);
  for (int p = 0; p < probes; ++p) {
    double* x = X.data() + nd * p;
    const double nr = detail::norm2(n, x);
    blas::scal(static_cast<int>(n), 1.0 / nr, x);
    std::memcpy(basis[p].data(), x, sizeof(double) * nd);
  }
  for (int j = 0; j < degree; ++j) {
    op(X.data(), Y.data(), probes);
    // Probes in parallel, each on one BLAS thread, with fixed-order reductions
    // (the quadrature is the same at any thread count).
    detail::BlasThreads serial_blas(1);
    const bool par = !omp_in_parallel();
    std::vector<double> c(static_cast<size_t>(degree + 1) * probes);
#pragma omp parallel for schedule(dynamic) if (par)
    for (int p = 0; p < probes; ++p) {
      if (!active[p]) continue;
      double* y = Y.data() + nd * p;
      const double* Q = basis[p].data();
      double* cp = c.data() + static_cast<size_t>(degree + 1) * p;
      const double y0 = detail::norm2(n, y);
      double a = 0;
      detail::gemm_tn(n, 1, 1, Q + nd * j, y, &a);
      alpha[static_cast<size_t>(p) * degree + j] = a;
      // Full reorthogonalization against this probe's basis (two passes).
      for (int pass = 0; pass < 2; ++pass) {
        detail::gemm_tn(n, j + 1, 1, Q, y, cp);
        detail::gemm_nn(n, j + 1, 1, -1.0, Q, cp, j + 1, 1.0, y);
      }
      len[p] = j + 1;
      const double bt = detail::norm2(n, y);
      if (j + 1 < degree) {
        if (bt <= 1e-12 * y0 || bt == 0.0) {
          active[p] = 0;  // invariant subspace: the quadrature is exact
        } else {
          beta[static_cast<size_t>(p) * degree + j] = bt;
          double* x = X.data() + nd * p;
          for (size_t i = 0; i < nd; ++i) x[i] = y[i] / bt;
          std::memcpy(basis[p].data() + nd * (j + 1), x, sizeof(double) * nd);
        }
      }
    }
  }
  for (int p = 0; p < probes; ++p) {
    const int L = len[p];
    std::vector<double> dd(alpha.begin() + static_cast<size_t>(p) * degree, alpha.begin() + static_cast<size_t>(p) * degree + L);
    std::vector<double> ee(std::max(L - 1, 1), 0.0);
    for (int i = 0; i + 1 < L; ++i) ee[i] = beta[static_cast<size_t>(p) * degree + i];
    std::vector<double> Z(static_cast<size_t>(L) * L);
    if (blas::stev(L, dd.data(), ee.data(), Z.data(), L) != 0) throw std::runtime_error("slq: stev failed");
    for (int i = 0; i < degree; ++i) {
      q.nodes[static_cast<size_t>(p) * degree + i] = i < L ? dd[i] : dd[L - 1];
      q.weights[static_cast<size_t>(p) * degree + i] = i < L ? Z[static_cast<size_t>(i) * L] * Z[static_cast<size_t>(i) * L] : 0.0;
    }
  }
  return q;
}

}  // namespace specdyn::lanczos
