// Top-k singular triplets of a dense matrix: block Lanczos on the Gram
// operator applied in one fused sweep over A, then an explicit certificate.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <utility>

#include "fused_panel.hpp"
#include "specdyn/blas.hpp"
#include "specdyn/krylov/cpu_backend.hpp"
#include "specdyn/krylov/engine.hpp"
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
  blas::ThreadScope one(1);
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

// The LAPACK answer on a double copy of A (small problems).
template <class T>
krylov::SingularOut dense_svd(const T* A, int64_t n, int64_t m, bool row_major, int k) {
  krylov::SingularOut out;
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
  out.U.assign(U.begin(), U.begin() + static_cast<size_t>(n) * k);
  out.V.resize(static_cast<size_t>(m) * k);
  for (int j = 0; j < k; ++j)
    for (int64_t i = 0; i < m; ++i) out.V[at(i, j, m)] = VT[at(j, i, mn)];
  // Residuals of the returned triplets, in double.
  std::vector<double> AV(static_cast<size_t>(n) * k), AtU(static_cast<size_t>(m) * k);
  blas::gemm(Op::N, Op::N, static_cast<int>(n), k, static_cast<int>(m), 1.0, B0.data(), static_cast<int>(n),
             out.V.data(), static_cast<int>(m), 0.0, AV.data(), static_cast<int>(n));
  blas::gemm(Op::T, Op::N, static_cast<int>(m), k, static_cast<int>(n), 1.0, B0.data(), static_cast<int>(n),
             out.U.data(), static_cast<int>(n), 0.0, AtU.data(), static_cast<int>(m));
  out.info.residuals.assign(k, 0.0);
  for (int j = 0; j < k; ++j) {
    // (nrm2 scales its sum: the residual of a 1e-200 matrix does not underflow to 0)
    for (int64_t i = 0; i < n; ++i) AV[at(i, j, n)] -= s[j] * out.U[at(i, j, n)];
    for (int64_t i = 0; i < m; ++i) AtU[at(i, j, m)] -= s[j] * out.V[at(i, j, m)];
    out.info.residuals[j] = std::max(blas::nrm2(static_cast<int>(n), AV.data() + at(0, j, n)),
                                     blas::nrm2(static_cast<int>(m), AtU.data() + at(0, j, m)));
  }
  out.info.norm_estimate = s.empty() ? 0.0 : s[0];
  out.info.matrix_passes = 1;
  out.info.converged = true;
  out.info.status = lanczos::Status::converged;
  out.info.dense = true;
  out.warm = out.V;
  out.warm_cols = k;
  return out;
}

// The Gram backend of the engine on a host matrix: the Krylov basis lives on
// the column side c of the row-major view M (r x c) of A, whose Gram M^T M is
// applied in one fused sweep (gram_sweep). The solve runs on scale * M, a
// power of two fixed by the first product (1 unless that product leaves the
// safe range of T, then from max |a_ij|, one extra read of A); the engine
// divides singular values and residuals by range_scale() at the end.
template <class T>
class CpuGram : public krylov::cpu::Vectors {
 public:
  static constexpr bool kSingle = std::is_same_v<T, float>;
  static constexpr bool kWideBlock = false;
  static constexpr int kMaxBlock = 64;

  CpuGram(const T* A, int64_t n, int64_t m, bool row_major)
      : krylov::cpu::Vectors{row_major ? m : n}, A_(A), n_(n), m_(m), row_major_(row_major),
        r_(row_major ? n : m), c_(row_major ? m : n) {}

  int64_t n() const { return n_; }
  int64_t m() const { return m_; }
  int64_t other() const { return r_; }
  bool basis_right() const { return row_major_; }
  double range_scale() const { return scale_; }
  int64_t take_passes() { return std::exchange(passes_, 0); }

  void apply(const double* X, double* Z, int bb) { apply_keep(X, Z, bb, nullptr); }
  // apply, also returning the left product L = (scale M) X (r x bb) of the same sweep.
  void apply_keep(const double* X, double* Z, int bb, double* L) {
    sweep(X, Z, bb, L);
    if (scale_fixed_) return;
    scale_fixed_ = true;
    if (krylov::in_safe_range(krylov::max_abs(Z, static_cast<size_t>(c_) * bb), kRange)) return;
    fix_scale();
    if (scale_ == 1.0) return;
    sweep(X, Z, bb, L);
    ++passes_;
  }
  // W (r x b) = alpha Q C + beta W for Q (r x nq): products on the other side.
  void nn_other(const double* Q, int nq, const double* C, int ldc, int b, double alpha, double beta, double* W) {
    krylov::cpu::gemm_nn(r_, nq, b, alpha, Q, C, ldc, beta, W);
  }

  // (scale M)^T U for host U (r x k).
  void backward(const double* U, int k, double* MtU) {
    const size_t cs = static_cast<size_t>(c_), rs = static_cast<size_t>(r_);
    std::vector<T> Ut(rs * k), Wt(cs * k);
    for (size_t i = 0; i < rs * k; ++i) Ut[i] = static_cast<T>(scale_ * U[i]);
    blas::gemm(Op::N, Op::N, static_cast<int>(c_), k, static_cast<int>(r_), T(1), A_, static_cast<int>(c_), Ut.data(),
               static_cast<int>(r_), T(0), Wt.data(), static_cast<int>(c_));
    to_double(Wt.data(), MtU, cs * k);
  }
  // The c-side warm block A v0 of a column-major A (M = A^T): its products fix
  // the scale (directions are all that matter here).
  void warm_left(const double* v0, int kw, double* warm) {
    const size_t cs = static_cast<size_t>(c_);
    std::vector<T> w(cs * kw), v0s(v0, v0 + static_cast<size_t>(r_) * kw);
    auto product = [&] {
      blas::gemm(Op::N, Op::N, static_cast<int>(c_), kw, static_cast<int>(r_), T(1), A_, static_cast<int>(c_),
                 v0s.data(), static_cast<int>(r_), T(0), w.data(), static_cast<int>(c_));
      to_double(w.data(), warm, cs * kw);
      ++passes_;
    };
    product();
    if (!krylov::in_safe_range(krylov::max_abs(warm, cs * kw), kRange)) {
      fix_scale();
      if (scale_ != 1.0) {
        for (auto& x : v0s) x = static_cast<T>(scale_ * static_cast<double>(x));
        product();
      }
    }
  }
  krylov::SingularOut dense(int k) { return dense_svd(A_, n_, m_, row_major_, k); }

 private:
  static constexpr int kRange = kSingle ? 50 : 500;

  void fix_scale() {  // from the largest entry of A
    scale_fixed_ = true;
    const int64_t total = n_ * m_;
    double amax = 0;
    bool finite = true;
#pragma omp parallel for reduction(max : amax) reduction(&& : finite) schedule(static) if (total >= (1 << 16))
    for (int64_t i = 0; i < total; ++i) {
      const double a = std::fabs(static_cast<double>(A_[i]));
      finite = finite && a <= std::numeric_limits<double>::max();
      amax = a > amax ? a : amax;
    }
    ++passes_;
    if (finite && amax > 0) scale_ = krylov::pow2_inverse(amax, kSingle ? 120 : 1000);
  }
  const T* scaled_in(const double* X, size_t xs) {  // Xt = T(scale X)
    Xt_.resize(xs);
    for (size_t i = 0; i < xs; ++i) Xt_[i] = static_cast<T>(scale_ * X[i]);
    return Xt_.data();
  }
  // Z = (scale M)^T (scale M) X and, when L is given, L = (scale M) X.
  void sweep(const double* X, double* Z, int bb, double* L) {
    const size_t xs = static_cast<size_t>(c_) * bb;
    if constexpr (std::is_same_v<T, double>) {
      if (scale_ == 1.0) return gram_sweep<T>(A_, r_, c_, c_, X, bb, L, Z);
    }
    const T* xp = scaled_in(X, xs);
    Zt_.resize(xs);
    Yt_.resize(L ? static_cast<size_t>(r_) * bb : 0);
    gram_sweep<T>(A_, r_, c_, c_, xp, bb, L ? Yt_.data() : nullptr, Zt_.data());
    for (size_t i = 0; i < xs; ++i) Z[i] = scale_ * static_cast<double>(Zt_[i]);
    if (L) to_double(Yt_.data(), L, Yt_.size());
  }

  const T* A_;
  int64_t n_, m_;
  bool row_major_;
  int64_t r_, c_;
  double scale_ = 1.0;
  bool scale_fixed_ = false;
  int64_t passes_ = 0;
  std::vector<T> Xt_, Yt_, Zt_;
};

}  // namespace

template <class T>
Triplets<T> top_singular(const T* A, int64_t n, int64_t m, bool row_major, int k, const Options& opt, const T* v0,
                         int k0) {
  if (n < 1 || m < 1) throw std::invalid_argument("top_singular: empty matrix");
  if (k < 1 || k > std::min(n, m)) throw std::invalid_argument("top_singular: k must be in [1, min(n, m)]");
  if (k0 < 0 || (k0 > 0 && !v0)) throw std::invalid_argument("top_singular: bad warm start");
  blas::ThreadScope one(1);  // all products are ours; parallelism is OpenMP over panels
  CpuGram<T> ops(A, n, m, row_major);
  std::vector<double> w;
  if (v0 && k0 > 0) {
    w.resize(static_cast<size_t>(m) * k0);
    to_double(v0, w.data(), w.size());
  }
  krylov::SingularOut r = krylov::top_singular(ops, k, opt, w.empty() ? nullptr : w.data(), w.empty() ? 0 : k0);
  Triplets<T> out;
  out.s = std::move(r.s);
  if constexpr (std::is_same_v<T, double>) {
    out.U = std::move(r.U);
    out.V = std::move(r.V);
    out.warm = std::move(r.warm);
  } else {
    out.U.resize(r.U.size());
    out.V.resize(r.V.size());
    out.warm.resize(r.warm.size());
    from_double(r.U.data(), out.U.data(), r.U.size());
    from_double(r.V.data(), out.V.data(), r.V.size());
    from_double(r.warm.data(), out.warm.data(), r.warm.size());
  }
  out.warm_cols = r.warm_cols;
  out.info = std::move(r.info);
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
