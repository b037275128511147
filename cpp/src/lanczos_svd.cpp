// Top-k singular triplets of a dense matrix: block Lanczos on the Gram
// operator applied in one fused sweep over A, then an explicit certificate.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "lanczos_engine.hpp"
#include "specdyn/blas.hpp"
#include "specdyn/lanczos.hpp"

namespace specdyn::lanczos {

using blas::Op;

namespace {

// Accumulator groups of the panel sweep: a constant, so that the reduction
// order never depends on the thread count (16 keeps up to 16 threads busy; the
// extra accumulators cost 16 c b adds per sweep against r c b for the product).
constexpr int64_t kSweepGroups = 16;

inline size_t at(int64_t i, int64_t j, int64_t ld) { return static_cast<size_t>(i + j * ld); }

// Rows per panel of the fused sweep: large enough that the c x b accumulator
// traffic is small next to the panel, small enough that the panel is still in
// cache when it is read the second time (for M^T Y). SPECDYN_PANEL_ROWS overrides.
int64_t panel_rows(int64_t c, size_t elem, int b) {
  static const int64_t env = [] {
    const char* s = std::getenv("SPECDYN_PANEL_ROWS");
    return s ? std::atoll(s) : 0;
  }();
  if (env > 0) return env;
  // ~256 KiB of matrix per panel (8 rows of a 4096-wide double matrix):
  // measured fastest for b <= 4 on a 1 MiB L2 (Zen 5); 1 MiB panels were ~15% slower.
  const int64_t target = 1 << 18;
  int64_t rows = target / std::max<int64_t>(1, c * static_cast<int64_t>(elem));
  rows = std::max<int64_t>(rows, 2 * b);
  return std::clamp<int64_t>(rows, 8, 512);
}

template <class T>
void to_double(const T* x, double* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = static_cast<double>(x[i]);
}
template <class T>
void from_double(const double* x, T* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = static_cast<T>(x[i]);
}

}  // namespace

template <class T>
void gram_sweep(const T* M, int64_t r, int64_t c, int64_t ld, const T* X, int b, T* Y, T* Z) {
  const int64_t pr = panel_rows(c, sizeof(T), b);
  const int64_t npanel = (r + pr - 1) / pr;
  // Small matrices: one thread (an OpenMP region costs more than the product).
  const bool small = r * c < (int64_t(1) << 16);
  const int nt = static_cast<int>(
      std::min<int64_t>(omp_in_parallel() || small ? 1 : omp_get_max_threads(), std::min(npanel, kSweepGroups)));
  static const bool no_kernel = std::getenv("SPECDYN_NO_KERNEL") != nullptr;
  // One panel: Y_p = M_p X, then Z += M_p^T Y_p while M_p is in cache.
  auto panel = [&](int64_t i0, int64_t rows, T* z, std::vector<T>& ybuf) {
    {
      // Wider blocks run as chunks of <= 4 columns over the cached panel: the
      // vectorized kernel beats OpenBLAS's packing on such skinny products.
      if (!no_kernel) {
        static const int cw = [] {
          const char* e = std::getenv("SPECDYN_CHUNK");
          return e ? std::clamp(std::atoi(e), 1, 8) : 4;  // 4 measured fastest (Zen 5, AVX-512)
        }();
        const int nch = (b + cw - 1) / cw;
        const int w = (b + nch - 1) / nch;
        ybuf.resize(static_cast<size_t>(rows) * w);
        bool done = true;
        for (int j0 = 0; j0 < b && done; j0 += w) {
          const int bc = std::min(w, b - j0);
          done = detail::fused_panel(M + i0 * ld, ld, rows, c, X + at(0, j0, c), bc, ybuf.data(), z + at(0, j0, c));
          if (done && Y)
            for (int64_t i = 0; i < rows; ++i)
              for (int j = 0; j < bc; ++j) Y[at(i0 + i, j0 + j, r)] = ybuf[static_cast<size_t>(i) * bc + j];
        }
        if (done) return;  // (false only on the first chunk: no AVX2)
      }
    }
    ybuf.resize(Y ? 0 : static_cast<size_t>(rows) * b);
    T* yp = Y ? Y + i0 : ybuf.data();
    const int ldy = Y ? static_cast<int>(r) : static_cast<int>(rows);
    blas::gemm(Op::T, Op::N, static_cast<int>(rows), b, static_cast<int>(c), T(1), M + i0 * ld, static_cast<int>(ld),
               X, static_cast<int>(c), T(0), yp, ldy);
    blas::gemm(Op::N, Op::N, static_cast<int>(c), b, static_cast<int>(rows), T(1), M + i0 * ld, static_cast<int>(ld),
               yp, ldy, T(1), z, static_cast<int>(c));
  };
  // Panels are grouped into a fixed number of contiguous groups, each with its
  // own accumulator, summed in group order: the rounding is then the same at
  // any thread count (a group is the unit of work a thread takes).
  const int64_t ngroup = std::min<int64_t>(npanel, kSweepGroups);
  const size_t zc = static_cast<size_t>(c) * b;
  auto group_panels = [&](int64_t g, T* z, std::vector<T>& ybuf) {
    std::fill(z, z + zc, T(0));
    const int64_t p0 = g * npanel / ngroup, p1 = (g + 1) * npanel / ngroup;
    for (int64_t p = p0; p < p1; ++p) panel(p * pr, std::min(pr, r - p * pr), z, ybuf);
  };
  detail::BlasThreads one(1);
  if (ngroup == 1) {
    std::vector<T> ybuf;
    group_panels(0, Z, ybuf);
    return;
  }
  if (nt <= 1) {
    // Serially: Z = G_0, then Z += G_g in group order -- the same sums as the
    // parallel reduction below, with one group accumulator kept in cache.
    std::vector<T> ybuf, zg(zc);
    group_panels(0, Z, ybuf);
    for (int64_t g = 1; g < ngroup; ++g) {
      group_panels(g, zg.data(), ybuf);
      for (size_t i = 0; i < zc; ++i) Z[i] += zg[i];
    }
    return;
  }
  // (Reused across calls: fresh pages for the accumulators cost page faults every sweep.)
  thread_local std::vector<T> Zg;
  if (Zg.size() < zc * ngroup) Zg.resize(zc * ngroup);
  T* const zg = Zg.data();  // (the workers must see the caller's buffer, not their own thread_local)
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> ybuf;
#pragma omp for schedule(dynamic, 1)
    for (int64_t g = 0; g < ngroup; ++g) group_panels(g, zg + zc * g, ybuf);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < static_cast<int64_t>(zc); ++i) {
      T s = zg[i];
      for (int64_t u = 1; u < ngroup; ++u) s += zg[zc * u + i];
      Z[i] = s;
    }
  }
}

template <class T>
MatMat gram_operator(const T* A, int64_t n, int64_t m, bool row_major) {
  // Fused when the smaller side is the column side of a row-major view.
  const bool fused = row_major ? (m <= n) : (n <= m);
  const int64_t d = gram_dim(n, m);
  return [=](const double* X, double* Z, int b) {
    const size_t xs = static_cast<size_t>(d) * b;
    std::vector<T> Xt, Zt;
    const T* xp;
    T* zp;
    if constexpr (std::is_same_v<T, double>) {
      xp = X;
      zp = Z;
    } else {
      Xt.resize(xs);
      Zt.resize(xs);
      from_double(X, Xt.data(), xs);
      xp = Xt.data();
      zp = Zt.data();
    }
    if (fused) {
      // row-major M = A (r = n, c = m) or M = A^T (r = m, c = n, from column-major A).
      const int64_t r = row_major ? n : m, c = d;
      gram_sweep<T>(A, r, c, c, xp, b, nullptr, zp);
    } else {
      const int64_t big = std::max(n, m);
      std::vector<T> W(static_cast<size_t>(big) * b);
      // The column-major view of A is (n x m, ld n) or, for row-major A, A^T (m x n, ld m).
      const int64_t rows = row_major ? m : n;  // rows of the column-major view = big side
      blas::gemm(Op::N, Op::N, static_cast<int>(rows), b, static_cast<int>(d), T(1), A, static_cast<int>(rows), xp,
                 static_cast<int>(d), T(0), W.data(), static_cast<int>(rows));
      blas::gemm(Op::T, Op::N, static_cast<int>(d), b, static_cast<int>(rows), T(1), A, static_cast<int>(rows),
                 W.data(), static_cast<int>(rows), T(0), zp, static_cast<int>(d));
    }
    if constexpr (!std::is_same_v<T, double>) to_double(zp, Z, xs);
  };
}

namespace {

template <class T>
void dense_svd(const T* A, int64_t n, int64_t m, bool row_major, int k, Triplets<T>& out) {
  std::vector<double> B(static_cast<size_t>(n) * m), B0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j)
      B[at(i, j, n)] = static_cast<double>(row_major ? A[i * m + j] : A[at(i, j, n)]);
  B0 = B;
  const int64_t mn = std::min(n, m);
  std::vector<double> s(mn), U(static_cast<size_t>(n) * mn), VT(static_cast<size_t>(mn) * m);
  if (blas::gesdd(static_cast<int>(n), static_cast<int>(m), B.data(), static_cast<int>(n), s.data(), U.data(),
                  static_cast<int>(n), VT.data(), static_cast<int>(mn)) != 0)
    throw std::runtime_error("top_singular: gesdd failed");
  out.s.assign(s.begin(), s.begin() + k);
  out.U.resize(static_cast<size_t>(n) * k);
  out.V.resize(static_cast<size_t>(m) * k);
  std::vector<double> Vd(static_cast<size_t>(m) * k);
  for (int j = 0; j < k; ++j) {
    for (int64_t i = 0; i < n; ++i) out.U[at(i, j, n)] = static_cast<T>(U[at(i, j, n)]);
    for (int64_t i = 0; i < m; ++i) {
      Vd[at(i, j, m)] = VT[at(j, i, mn)];
      out.V[at(i, j, m)] = static_cast<T>(VT[at(j, i, mn)]);
    }
  }
  // Residuals of the returned (rounded-to-T) triplets, in double.
  std::vector<double> Ud(U.begin(), U.begin() + static_cast<size_t>(n) * k), AV(static_cast<size_t>(n) * k),
      AtU(static_cast<size_t>(m) * k);
  blas::gemm(Op::N, Op::N, static_cast<int>(n), k, static_cast<int>(m), 1.0, B0.data(), static_cast<int>(n), Vd.data(),
             static_cast<int>(m), 0.0, AV.data(), static_cast<int>(n));
  blas::gemm(Op::T, Op::N, static_cast<int>(m), k, static_cast<int>(n), 1.0, B0.data(), static_cast<int>(n), Ud.data(),
             static_cast<int>(n), 0.0, AtU.data(), static_cast<int>(m));
  out.info.residuals.assign(k, 0.0);
  for (int j = 0; j < k; ++j) {
    // (nrm2 scales its sum: the residual of a 1e-200 matrix does not underflow to 0)
    for (int64_t i = 0; i < n; ++i) AV[at(i, j, n)] -= s[j] * Ud[at(i, j, n)];
    for (int64_t i = 0; i < m; ++i) AtU[at(i, j, m)] -= s[j] * Vd[at(i, j, m)];
    out.info.residuals[j] = std::max(blas::nrm2(static_cast<int>(n), AV.data() + at(0, j, n)),
                                     blas::nrm2(static_cast<int>(m), AtU.data() + at(0, j, m)));
  }
  out.info.norm_estimate = s.empty() ? 0.0 : s[0];
  out.info.matrix_passes = 1;
  out.info.converged = true;
  out.info.dense = true;
  out.warm = out.V;
  out.warm_cols = k;
}

}  // namespace

template <class T>
Triplets<T> top_singular(const T* A, int64_t n, int64_t m, bool row_major, int k, const Options& opt, const T* v0,
                         int k0) {
  if (n < 1 || m < 1) throw std::invalid_argument("top_singular: empty matrix");
  if (k < 1 || k > std::min(n, m)) throw std::invalid_argument("top_singular: k must be in [1, min(n, m)]");
  if (k0 < 0 || (k0 > 0 && !v0)) throw std::invalid_argument("top_singular: bad warm start");
  constexpr double eps = std::numeric_limits<T>::epsilon();
  const double tol = std::max(opt.tol, std::is_same_v<T, float> ? 1e-4 : 4 * eps);
  Triplets<T> out;
  out.info.tol_used = tol;
  detail::BlasThreads one(1);  // all products below are ours; parallelism is OpenMP over panels

  // Block size: on a memory-bound sweep a narrow block costs about one read
  // of A, and block Krylov needs ~(passes x b) columns in total, so the
  // cheapest cold start measured is b = 2 (b = 1 for k <= 2); a warm start
  // uses the whole previous block plus fresh directions. Multiplicities
  // larger than b are caught after convergence (see below).
  const int b_cold = opt.block > 0 ? opt.block : (k <= 2 ? 1 : 2);
  int b = b_cold;
  if (v0 && k0 > 0 && opt.block <= 0) b = std::max(b, std::min(k0 + (k0 >= 4 ? 2 : 1), 64));  // + fresh directions
  auto capacity = [&](int bb) {
    const int cp = opt.max_basis > 0 ? opt.max_basis : k + std::max(6 * bb, std::max(k, 24));
    return std::max(cp, k + 3 * bb);
  };
  int cap = capacity(b);
  out.info.block = b;
  const int64_t mn = std::min(n, m);
  if (mn <= 32 || mn < cap + b) {
    dense_svd(A, n, m, row_major, k, out);
    return out;
  }
  // Row-major view M (r x c) whose Gram M^T M is applied in one sweep; the
  // Krylov basis lives on the c side.
  const T* M = A;
  const int64_t r = row_major ? n : m, c = row_major ? m : n;
  const size_t cs = static_cast<size_t>(c);
  const int64_t max_passes = opt.max_passes > 0 ? opt.max_passes : 1000;
  // The solve runs on scale * M (see max_abs in lanczos_engine.hpp): the Gram
  // operator is scale * M^T (M (scale X)), the scale a power of two fixed by
  // the first product (1 unless that product leaves the safe range of T, then
  // from max |a_ij|, one extra read of A). Singular values and residuals are
  // divided by it at the end.
  constexpr int kRange = std::is_same_v<T, float> ? 50 : 500;
  double scale = 1.0;
  bool scale_fixed = false;
  auto fix_scale = [&] {  // from the largest entry of A
    scale_fixed = true;
    const int64_t total = n * m;
    double amax = 0;
    bool finite = true;
#pragma omp parallel for reduction(max : amax) reduction(&& : finite) schedule(static) if (total >= (1 << 16))
    for (int64_t i = 0; i < total; ++i) {
      const double a = std::fabs(static_cast<double>(A[i]));
      finite = finite && a <= std::numeric_limits<double>::max();
      amax = a > amax ? a : amax;
    }
    ++out.info.matrix_passes;
    if (finite && amax > 0) scale = detail::pow2_inverse(amax, std::is_same_v<T, float> ? 120 : 1000);
  };
  std::vector<T> Xt, Zt;
  auto scaled_in = [&](const double* X, size_t xs) {  // Xt = T(scale X)
    Xt.resize(xs);
    for (size_t i = 0; i < xs; ++i) Xt[i] = static_cast<T>(scale * X[i]);
    return Xt.data();
  };
  auto sweep = [&](const double* X, double* Z, int bb) {
    const size_t xs = cs * bb;
    if constexpr (std::is_same_v<T, double>) {
      if (scale == 1.0) return gram_sweep<T>(M, r, c, c, X, bb, nullptr, Z);
    }
    const T* xp = scaled_in(X, xs);
    Zt.resize(xs);
    gram_sweep<T>(M, r, c, c, xp, bb, nullptr, Zt.data());
    for (size_t i = 0; i < xs; ++i) Z[i] = scale * static_cast<double>(Zt[i]);
  };
  MatMat op = [&](const double* X, double* Z, int bb) {
    sweep(X, Z, bb);
    if (scale_fixed) return;
    scale_fixed = true;
    if (detail::in_safe_range(detail::max_abs(Z, cs * bb), kRange)) return;
    fix_scale();
    if (scale == 1.0) return;
    sweep(X, Z, bb);
    ++out.info.matrix_passes;
  };

  // Warm start on the c side (right vectors of A when row-major; else A v0).
  std::vector<double> warm;
  int kw = 0;
  if (v0 && k0 > 0) {
    kw = std::min(k0, b);
    warm.resize(cs * kw);
    if (row_major) {
      to_double(v0, warm.data(), cs * kw);
    } else {
      // The c-side warm block is A v0: its products fix the scale (directions are all that matter here).
      std::vector<T> w(cs * kw), v0s(v0, v0 + static_cast<size_t>(r) * kw);
      auto product = [&] {
        blas::gemm(Op::N, Op::N, static_cast<int>(c), kw, static_cast<int>(r), T(1), M, static_cast<int>(c),
                   v0s.data(), static_cast<int>(r), T(0), w.data(), static_cast<int>(c));
        to_double(w.data(), warm.data(), cs * kw);
        ++out.info.matrix_passes;
      };
      product();
      if (!detail::in_safe_range(detail::max_abs(warm.data(), cs * kw), kRange)) {
        fix_scale();
        if (scale != 1.0) {
          for (auto& x : v0s) x = static_cast<T>(scale * static_cast<double>(x));
          product();
        }
      }
    }
  }

  // Lanczos on M^T M: eigenvalue theta = s^2, and ||M^T u - s v|| = r_G / s.
  double inner = tol;
  auto make_accept = [eps](double t) {
    return [t, eps](double theta, double res, double nrm) {
      const double s1 = std::sqrt(nrm), s = std::sqrt(std::max(theta, 0.0));
      return res <= std::max(0.5 * t * s1 * s, 100 * eps * nrm);
    };
  };
  // The tracking certificate (Options::resolvable) on the Gram values theta = s^2,
  // whose residuals are s times those of the triplets.
  auto make_accept_set = [&opt, eps](double t) -> detail::AcceptSet {
    if (!opt.resolvable) return {};
    return [t, eps](const std::vector<double>& th, const std::vector<double>& rg, double nrm) {
      const double s1 = std::sqrt(nrm);
      std::vector<double> sv(th.size()), rv(rg.size()), width;
      for (size_t i = 0; i < th.size(); ++i) sv[i] = std::sqrt(std::max(th[i], 0.0));
      for (size_t i = 0; i < rg.size(); ++i) rv[i] = sv[i] > 0 ? rg[i] / sv[i] : rg[i] / s1;
      return detail::certify_resolvable(sv, rv, std::max(0.5 * t * s1, 100 * eps * s1), s1, width);
    };
  };
  detail::Random rnd{opt.seed, 0};
  const size_t rs = static_cast<size_t>(r);
  bool escalated = false;
  // A warm start first applies the whole previous block (one block step):
  // enough when the matrix barely moved. Otherwise the wide block costs
  // more per pass than it saves, and the solve continues with the narrow cold
  // block started from random mixtures of the current Ritz vectors.
  bool probe_warm = !warm.empty() && opt.block <= 0 && b > b_cold;
  for (int attempt = 0;; ++attempt) {
    const int64_t left = max_passes - out.info.matrix_passes;
    // The basis may grow to 256 columns (at most 32 MiB of it) before restarting.
    detail::Budget budget;
    budget.cap_max = opt.max_basis > 0 ? cap
                                       : static_cast<int>(std::min<int64_t>(
                                             std::max<int64_t>(cap, std::min<int64_t>(256, (int64_t{1} << 22) / c)),
                                             mn - b));
    budget.pass_flops = 4.0 * static_cast<double>(r) * static_cast<double>(c) * b;
    auto eo = detail::block_lanczos(op, c, k, Which::Largest, b, cap, probe_warm ? std::min<int64_t>(1, left) : left,
                                    warm.empty() ? nullptr : warm.data(), kw, rnd, make_accept(inner),
                                    row_major ? std::max(opt.warm_extra, 0) : 0, budget, make_accept_set(inner));
    out.info.iterations += eo.iterations;
    out.info.restarts += eo.restarts;
    out.info.matrix_passes += eo.passes;
    if (probe_warm) {
      probe_warm = false;
      if (!eo.converged && out.info.matrix_passes < max_passes) {
        const int w = static_cast<int>(eo.theta.size());
        std::vector<double> G(static_cast<size_t>(w) * b_cold);
        rnd.fill(G.data(), static_cast<int64_t>(G.size()));
        warm.assign(cs * b_cold, 0.0);
        blas::gemm(Op::N, Op::N, static_cast<int>(c), b_cold, w, 1.0, eo.X.data(), static_cast<int>(c), G.data(), w,
                   0.0, warm.data(), static_cast<int>(c));
        kw = b_cold;
        b = b_cold;
        cap = capacity(b);
        out.info.block = b;
        continue;
      }
    }

    // Certificate: one fused pass gives Y = M X and Z = M^T Y for the Ritz block X.
    // (On scale * M: Yk = (scale M) X, Z = (scale M)^T Yk.)
    std::vector<T> Yk(rs * k), Zk(cs * k);
    gram_sweep<T>(M, r, c, c, scaled_in(eo.X.data(), cs * k), k, Yk.data(), Zk.data());
    ++out.info.matrix_passes;
    std::vector<double> Xd(cs * k), Y(rs * k), Z(cs * k);
    for (size_t i = 0; i < cs * k; ++i) Xd[i] = static_cast<double>(static_cast<T>(eo.X[i]));
    to_double(Yk.data(), Y.data(), rs * k);
    for (size_t i = 0; i < cs * k; ++i) Z[i] = scale * static_cast<double>(Zk[i]);
    // Rayleigh-Ritz with M X: Y = Q R, R = P diag(s) W^T  =>  u = Q P, v = X W.
    std::vector<double> Q = Y, Rr(static_cast<size_t>(k) * k), P(static_cast<size_t>(k) * k),
                        WT(static_cast<size_t>(k) * k), s(k);
    blas::qr_explicit(static_cast<int>(r), k, Q.data(), static_cast<int>(r), Rr.data(), k);
    if (blas::gesdd(k, k, Rr.data(), k, s.data(), P.data(), k, WT.data(), k) != 0)
      throw std::runtime_error("top_singular: gesdd failed");
    std::vector<double> U(rs * k), V(cs * k), MV(rs * k), MtU(cs * k);
    blas::gemm(Op::N, Op::N, static_cast<int>(r), k, k, 1.0, Q.data(), static_cast<int>(r), P.data(), k, 0.0, U.data(),
               static_cast<int>(r));
    blas::gemm(Op::N, Op::T, static_cast<int>(c), k, k, 1.0, Xd.data(), static_cast<int>(c), WT.data(), k, 0.0,
               V.data(), static_cast<int>(c));
    blas::gemm(Op::N, Op::T, static_cast<int>(r), k, k, 1.0, Y.data(), static_cast<int>(r), WT.data(), k, 0.0,
               MV.data(), static_cast<int>(r));
    const double s1 = s[0];
    // Float products of the Gram operator lose accuracy by the squaring, so for
    // float matrices (and near-zero s) M^T U is formed explicitly.
    const bool tiny = s[k - 1] <= 1e-6 * s1 || std::is_same_v<T, float>;
    if (!tiny) {
      // M^T u_i = Z w_i / s_i.
      blas::gemm(Op::N, Op::T, static_cast<int>(c), k, k, 1.0, Z.data(), static_cast<int>(c), WT.data(), k, 0.0,
                 MtU.data(), static_cast<int>(c));
      for (int j = 0; j < k; ++j) blas::scal(static_cast<int>(c), 1.0 / s[j], MtU.data() + at(0, j, c));
    } else {
      // One more pass: M^T U explicitly.
      std::vector<T> Ut(rs * k), Wt(cs * k);
      for (size_t i = 0; i < rs * k; ++i) Ut[i] = static_cast<T>(scale * U[i]);
      blas::gemm(Op::N, Op::N, static_cast<int>(c), k, static_cast<int>(r), T(1), M, static_cast<int>(c), Ut.data(),
                 static_cast<int>(r), T(0), Wt.data(), static_cast<int>(c));
      to_double(Wt.data(), MtU.data(), cs * k);
      ++out.info.matrix_passes;
    }
    out.info.residuals.assign(k, 0.0);
    out.info.norm_estimate = std::max(s1, std::sqrt(eo.norm));
    bool ok = true;
    for (int j = 0; j < k; ++j) {
      double a = 0, bb = 0;
      for (size_t i = 0; i < rs; ++i) a += std::pow(MV[at(i, j, r)] - s[j] * U[at(i, j, r)], 2);
      for (size_t i = 0; i < cs; ++i) bb += std::pow(MtU[at(i, j, c)] - s[j] * V[at(i, j, c)], 2);
      out.info.residuals[j] = std::sqrt(std::max(a, bb));
      ok = ok && out.info.residuals[j] <= tol * out.info.norm_estimate;
    }
    // Back from scale * M to M; a NaN or infinity anywhere is never certified.
    out.s = s;
    for (int j = 0; j < k; ++j) {
      out.s[j] /= scale;
      out.info.residuals[j] /= scale;
      ok = ok && std::isfinite(out.s[j]) && std::isfinite(out.info.residuals[j]);
    }
    out.info.norm_estimate /= scale;
    if (opt.resolvable) {
      std::vector<double> sv = out.s;
      sv.push_back(std::sqrt(std::max(eo.theta_next, 0.0)) / scale);  // (NaN when none: never linked)
      ok = detail::certify_resolvable(sv, out.info.residuals, tol * out.info.norm_estimate, out.info.norm_estimate,
                                      out.info.spacing) &&
           std::all_of(sv.begin(), sv.end() - 1, [](double x) { return std::isfinite(x); });
    }
    // M = A when row-major (u: left, v: right), M = A^T otherwise (swapped).
    std::vector<double>& Ua = row_major ? U : V;
    std::vector<double>& Va = row_major ? V : U;
    out.U.resize(static_cast<size_t>(n) * k);
    out.V.resize(static_cast<size_t>(m) * k);
    from_double(Ua.data(), out.U.data(), out.U.size());
    from_double(Va.data(), out.V.data(), out.V.size());
    // Warm start for a nearby matrix: V, then the next Ritz vectors (c side = right side when row-major).
    const int ne = row_major ? static_cast<int>(eo.Xnext.size() / cs) : 0;
    out.warm_cols = k + ne;
    out.warm.resize(out.V.size() + eo.Xnext.size() * (ne > 0));
    std::copy(out.V.begin(), out.V.end(), out.warm.begin());
    if (ne > 0) from_double(eo.Xnext.data(), out.warm.data() + out.V.size(), eo.Xnext.size());
    out.info.converged = ok;
    // Block Krylov finds at most b copies of a repeated value: if the answer
    // holds a group of >= b (numerically) equal values, more copies may exist.
    // Re-solve from the current vectors with a block wider than k.
    if (ok && !escalated && opt.block <= 0 && detail::largest_cluster(s, 1e-7 * s1) >= std::max(b, 2)) {
      escalated = true;
      b = std::min(k + 2, 64);
      cap = capacity(b);
      out.info.block = b;
      if (mn < cap + b) {
        const auto passes = out.info.matrix_passes;
        dense_svd(A, n, m, row_major, k, out);
        out.info.matrix_passes += passes;
        return out;
      }
      warm = V;
      kw = std::min(k, b);
      continue;
    }
    if (ok || attempt >= 3 || out.info.matrix_passes >= max_passes) break;
    // The Lanczos estimate passed but the explicit certificate did not: rerun
    // from the refined vectors with a tighter inner tolerance.
    inner *= 0.05;
    warm = V;
    kw = std::min(k, b);
  }
  return out;
}

template void gram_sweep<double>(const double*, int64_t, int64_t, int64_t, const double*, int, double*, double*);
template void gram_sweep<float>(const float*, int64_t, int64_t, int64_t, const float*, int, float*, float*);
template MatMat gram_operator<double>(const double*, int64_t, int64_t, bool);
template MatMat gram_operator<float>(const float*, int64_t, int64_t, bool);
template Triplets<double> top_singular<double>(const double*, int64_t, int64_t, bool, int, const Options&,
                                               const double*, int);
template Triplets<float> top_singular<float>(const float*, int64_t, int64_t, bool, int, const Options&, const float*,
                                             int);

}  // namespace specdyn::lanczos
