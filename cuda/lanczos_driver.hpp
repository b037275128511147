// Host-side driver of the device Krylov solvers: the thick-restart block
// Lanczos engine, the residual certificate of top_singular and stochastic
// Lanczos quadrature, written once against a small set of primitives (K):
//
//   * DeviceKernels (lanczos_device.hpp): the CUDA kernels of lanczos.cu;
//   * HostKernels   (lanczos_host.hpp): a host emulation of the same kernels
//     (the same per-thread functions, lanczos_tiles.hpp), which the CPU tests run.
//
// The algorithm mirrors the CPU solver (cpp/src/lanczos.cpp, lanczos_svd.cpp):
// block Lanczos on the Gram operator B^T B with CGS2 full reorthogonalization,
// thick restarts that keep the best Ritz vectors plus one block, and an
// explicit certificate ||A v - s u|| <= tol ||A||, ||A^T u - s v|| <= tol ||A||.
//
// Where the data live: the matrix, the Krylov basis (d x cap doubles) and every
// product with them stay in K's memory. Crossing the bus, per block step: the
// b x (nv + b) orthogonalization coefficients and a few norms (one small
// synchronous copy each); per thick restart: the keep x na restart
// coefficients (host -> device); per certificate (once per solve, usually):
// the k Ritz vectors and their images (k (n + 2m) doubles, device -> host).
// The projected problems (syevd of the cap x cap matrix, the k x k SVD, the
// SLQ tridiagonals) are solved on the host with LAPACK.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "lanczos_tiles.hpp"
#include "specdyn/blas.hpp"
#include "specdyn/lanczos.hpp"
#include "specdyn/rng.hpp"

namespace specdyn::cuda::driver {

inline size_t at(int64_t i, int64_t j, int64_t ld) { return static_cast<size_t>(i + j * ld); }

// How the solver sees the matrix: M is the row-major r x c view in K's memory
// (M = A when A is C-ordered, M = A^T when it is Fortran-ordered). The Krylov
// basis lives on the smaller side of A (the right side on a tie), and B maps
// the basis side to the other side: B = A when the basis is on the right
// (Gram A^T A), B = A^T otherwise (Gram A A^T).
struct MatrixView {
  int64_t n = 0, m = 0;  // A is n x m
  bool row_major = true;
  int64_t ld = 0;        // leading dimension of M (row stride in elements)
  int64_t r() const { return row_major ? n : m; }
  int64_t c() const { return row_major ? m : n; }
  bool basis_right() const { return m <= n; }
  int64_t dim() const { return basis_right() ? m : n; }     // basis side
  int64_t other() const { return basis_right() ? n : m; }
  // B X is M X (and B^T Y is M^T Y) when B = M, else the transposed kernels.
  bool b_is_m() const { return row_major == basis_right(); }
};

// Vector memory of K, freed on scope exit.
template <class K>
class Buf {
 public:
  Buf() = default;
  Buf(K& k, size_t n) : k_(&k), n_(n), p_(static_cast<double*>(k.alloc(n * sizeof(double)))) {}
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  Buf(Buf&& o) noexcept { swap(o); }
  Buf& operator=(Buf&& o) noexcept {
    swap(o);
    return *this;
  }
  ~Buf() {
    if (k_ && p_) k_->release(p_);
  }
  double* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  void swap(Buf& o) {
    std::swap(k_, o.k_);
    std::swap(n_, o.n_);
    std::swap(p_, o.p_);
  }
  K* k_ = nullptr;
  size_t n_ = 0;
  double* p_ = nullptr;
};

// Typed scratch memory of K (matrix-precision blocks).
template <class K, class T>
class TBuf {
 public:
  TBuf(K& k, size_t n) : k_(k), p_(static_cast<T*>(k.alloc(std::max<size_t>(n, 1) * sizeof(T)))) {}
  TBuf(const TBuf&) = delete;
  TBuf& operator=(const TBuf&) = delete;
  ~TBuf() { k_.release(p_); }
  T* get() const { return p_; }

 private:
  K& k_;
  T* p_;
};

// The operations of the Krylov solvers on the basis (double, dimension d) and
// on the matrix (type T), built from K's primitives.
template <class T, class K>
class Ops {
 public:
  enum class Mode { Gram, Symmetric };  // apply = B^T B, or M itself (square symmetric M)

  Ops(K& k, const T* M, MatrixView view, Mode mode = Mode::Gram)
      : k_(k), M_(M), v_(view), mode_(mode), d_(mode == Mode::Gram ? view.dim() : view.n),
        o_(mode == Mode::Gram ? view.other() : view.n) {
    slabs_ = tiles::mty_slabs(v_.r(), v_.c(), k_.multiprocessors());
    const size_t w = tiles::kMaxCols;
    xt_ = static_cast<T*>(k_.alloc(sizeof(T) * d_ * w));
    yt_ = static_cast<T*>(k_.alloc(sizeof(T) * o_ * w));
    zt_ = static_cast<T*>(k_.alloc(sizeof(T) * d_ * w));
    part_ = static_cast<T*>(k_.alloc(sizeof(T) * std::max(v_.r(), v_.c()) * w * slabs_));
  }
  Ops(const Ops&) = delete;
  Ops& operator=(const Ops&) = delete;
  ~Ops() {
    k_.release(xt_);
    k_.release(yt_);
    k_.release(zt_);
    k_.release(part_);
    k_.release(cdev_);
    k_.release(work_);
  }

  K& kernels() { return k_; }
  int64_t dim() const { return d_; }
  int64_t other() const { return o_; }
  int64_t slabs() const { return slabs_; }

  // Z (d x b) = Op X, in chunks of at most 16 vectors.
  void apply(const double* X, double* Z, int b) {
    for (int j0 = 0; j0 < b; j0 += tiles::kMaxCols) {
      const int nb = std::min(tiles::kMaxCols, b - j0);
      k_.convert(X + at(0, j0, d_), xt_, d_ * nb);
      if (mode_ == Mode::Gram) {
        mul_b(xt_, nb, yt_);
        mul_bt(yt_, nb, zt_);
      } else {
        k_.mx(M_, v_.ld, v_.r(), v_.c(), xt_, d_, nb, zt_, d_);
      }
      k_.convert(zt_, Z + at(0, j0, d_), d_ * nb);
    }
  }

  // Certificate products on k vectors X (d x k, K memory): host copies of the
  // X actually multiplied (rounded to T), Y = B X (other x k), Z = B^T Y (d x k).
  void forward(const double* X, int k, double* Xh, double* Yh, double* Zh) {
    std::vector<T> h(static_cast<size_t>(std::max(d_, o_)) * tiles::kMaxCols);
    for (int j0 = 0; j0 < k; j0 += tiles::kMaxCols) {
      const int nb = std::min(tiles::kMaxCols, k - j0);
      k_.convert(X + at(0, j0, d_), xt_, d_ * nb);
      mul_b(xt_, nb, yt_);
      mul_bt(yt_, nb, zt_);
      download_t(xt_, d_ * nb, h, Xh + at(0, j0, d_));
      download_t(yt_, o_ * nb, h, Yh + at(0, j0, o_));
      download_t(zt_, d_ * nb, h, Zh + at(0, j0, d_));
    }
  }

  // Zh (d x k, host) = B^T Uh for host Uh (other x k).
  void backward(const double* Uh, int k, double* Zh) {
    std::vector<T> h(static_cast<size_t>(std::max(d_, o_)) * tiles::kMaxCols);
    for (int j0 = 0; j0 < k; j0 += tiles::kMaxCols) {
      const int nb = std::min(tiles::kMaxCols, k - j0);
      for (size_t i = 0; i < static_cast<size_t>(o_) * nb; ++i) h[i] = static_cast<T>(Uh[at(0, j0, o_) + i]);
      k_.to_device(yt_, h.data(), sizeof(T) * o_ * nb);
      mul_bt(yt_, nb, zt_);
      download_t(zt_, d_ * nb, h, Zh + at(0, j0, d_));
    }
  }

  // Y (other x k, host) = B Xh for host Xh (d x k): the warm start of a basis on the left side.
  void forward_host(const double* Xh, int k, double* Yh) {
    std::vector<T> h(static_cast<size_t>(std::max(d_, o_)) * tiles::kMaxCols);
    for (int j0 = 0; j0 < k; j0 += tiles::kMaxCols) {
      const int nb = std::min(tiles::kMaxCols, k - j0);
      for (size_t i = 0; i < static_cast<size_t>(d_) * nb; ++i) h[i] = static_cast<T>(Xh[at(0, j0, d_) + i]);
      k_.to_device(xt_, h.data(), sizeof(T) * d_ * nb);
      mul_b(xt_, nb, yt_);
      download_t(yt_, o_ * nb, h, Yh + at(0, j0, o_));
    }
  }

  // Ch (nq x b, host, ld nq) = Q^T W, Q (d x nq) and W (d x b) in K memory.
  void tn(const double* Q, int nq, const double* W, int b, double* Ch) {
    if (nq < 1 || b < 1) return;
    ensure_c(static_cast<size_t>(nq) * b);
    k_.dots(d_, Q, d_, nq, W, d_, b, cdev_);
    k_.to_host(Ch, cdev_, sizeof(double) * nq * b);
  }
  double norm(const double* w) {
    double s = 0;
    tn(w, 1, w, 1, &s);
    return std::sqrt(s);
  }
  // W (d x b) = alpha Q C + beta W for a host C (nq x b, ld ldc).
  void nn(const double* Q, int nq, const double* Ch, int ldc, int b, double alpha, double beta, double* W) {
    if (b < 1) return;
    if (nq < 1) {
      if (beta != 1.0) k_.scale(d_ * b, beta, W);
      return;
    }
    ensure_c(static_cast<size_t>(nq) * b);
    std::vector<double> packed(static_cast<size_t>(nq) * b);
    for (int j = 0; j < b; ++j)
      for (int i = 0; i < nq; ++i) packed[at(i, j, nq)] = Ch[at(i, j, ldc)];
    k_.to_device(cdev_, packed.data(), sizeof(double) * packed.size());
    k_.combine(d_, nq, b, alpha, Q, d_, cdev_, nq, beta, W, d_);
  }
  // Scratch vectors in K memory (n doubles, reused between calls).
  double* work(size_t n) {
    if (n > work_size_) {
      k_.release(work_);
      work_ = nullptr;
      work_ = static_cast<double*>(k_.alloc(sizeof(double) * n));
      work_size_ = n;
    }
    return work_;
  }
  void scale(double* w, int64_t n, double s) { k_.scale(n, s, w); }
  void copy(double* dst, const double* src, size_t n) { k_.copy(dst, src, n * sizeof(double)); }
  void random(double* p, size_t n, uint64_t seed, uint64_t offset) {
    k_.normal(p, n, seed, rng::kProbes, offset);
  }
  void upload(const double* host, double* dst, size_t n) { k_.to_device(dst, host, n * sizeof(double)); }
  void download(const double* src, double* host, size_t n) { k_.to_host(host, src, n * sizeof(double)); }

 private:
  // Y (other x nb) = B X and Z (d x nb) = B^T Y on the T scratch blocks.
  void mul_b(const T* X, int nb, T* Y) {
    if (v_.b_is_m())
      k_.mx(M_, v_.ld, v_.r(), v_.c(), X, d_, nb, Y, o_);
    else
      k_.mty(M_, v_.ld, v_.r(), v_.c(), X, d_, nb, Y, o_, slabs_, part_);
  }
  void mul_bt(const T* Y, int nb, T* Z) {
    if (v_.b_is_m())
      k_.mty(M_, v_.ld, v_.r(), v_.c(), Y, o_, nb, Z, d_, slabs_, part_);
    else
      k_.mx(M_, v_.ld, v_.r(), v_.c(), Y, o_, nb, Z, d_);
  }
  void download_t(const T* src, int64_t n, std::vector<T>& h, double* dst) {
    k_.to_host(h.data(), src, sizeof(T) * n);
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<double>(h[i]);
  }
  void ensure_c(size_t n) {
    if (n <= cdev_size_) return;
    k_.release(cdev_);
    cdev_size_ = std::max(n, 2 * cdev_size_);
    cdev_ = static_cast<double*>(k_.alloc(sizeof(double) * cdev_size_));
  }

  K& k_;
  const T* M_;
  MatrixView v_;
  Mode mode_;
  int64_t d_, o_, slabs_ = 1;
  T *xt_ = nullptr, *yt_ = nullptr, *zt_ = nullptr, *part_ = nullptr;
  double* cdev_ = nullptr;
  size_t cdev_size_ = 0;
  double* work_ = nullptr;
  size_t work_size_ = 0;
};

// Fresh Gaussian columns (stream rng::kProbes), as the CPU solver's Random.
struct Random {
  uint64_t seed = 0;
  uint64_t offset = 0;
  template <class O>
  void fill(O& ops, double* p, int64_t n) {
    ops.random(p, static_cast<size_t>(n), seed, offset);
    offset += static_cast<uint64_t>(n) + 2;
  }
};

// Upper triangular R with R^T R = G (b x b, column-major); false if G is not
// numerically positive definite.
inline bool cholesky_upper(int b, const std::vector<double>& G, std::vector<double>& R) {
  R.assign(static_cast<size_t>(b) * b, 0.0);
  for (int j = 0; j < b; ++j) {
    double s = G[at(j, j, b)];
    for (int k = 0; k < j; ++k) s -= R[at(k, j, b)] * R[at(k, j, b)];
    if (!(s > 0)) return false;
    R[at(j, j, b)] = std::sqrt(s);
    for (int i = j + 1; i < b; ++i) {
      double t = G[at(j, i, b)];
      for (int k = 0; k < j; ++k) t -= R[at(k, j, b)] * R[at(k, i, b)];
      R[at(j, i, b)] = t / R[at(j, j, b)];
    }
  }
  return true;
}

// Inverse of an upper triangular b x b matrix (back substitution, column by column).
inline std::vector<double> upper_inverse(int b, const std::vector<double>& R) {
  std::vector<double> X(static_cast<size_t>(b) * b, 0.0);
  for (int j = 0; j < b; ++j) {
    X[at(j, j, b)] = 1.0 / R[at(j, j, b)];
    for (int i = j - 1; i >= 0; --i) {
      double t = 0;
      for (int k = i + 1; k <= j; ++k) t += R[at(i, k, b)] * X[at(k, j, b)];
      X[at(i, j, b)] = -t / R[at(i, i, b)];
    }
  }
  return X;
}

// Within-block orthonormalization by two rounds of Cholesky QR (Y = Y' R with
// R = R2 R1): two small synchronous reductions instead of the ~4b of the
// column-wise CGS2, which matters on a device (each is a round trip). Taken
// only when Y is well conditioned (cond <= 1e5, measured by the SVD of R1;
// CholQR2 is accurate up to ~1e7 in double) and no column is negligible;
// otherwise returns false with Y untouched, and the column-wise path runs.
template <class O>
bool cholqr2(O& ops, double* Y, int b, std::vector<double>& R, double scale) {
  const int64_t d = ops.dim();
  std::vector<double> G(static_cast<size_t>(b) * b), R1, R2;
  ops.tn(Y, b, Y, b, G.data());
  if (!cholesky_upper(b, G, R1)) return false;
  {
    std::vector<double> Rc = R1, sv(b), P(static_cast<size_t>(b) * b), WT(static_cast<size_t>(b) * b);
    if (blas::gesdd(b, b, Rc.data(), b, sv.data(), P.data(), b, WT.data(), b) != 0) return false;
    if (!(sv[b - 1] > 1e-5 * sv[0]) || !(sv[b - 1] > 1e-12 * scale)) return false;
  }
  double* W = ops.work(static_cast<size_t>(d) * b);
  for (int round = 0; round < 2; ++round) {
    if (round == 1) {
      ops.tn(Y, b, Y, b, G.data());
      if (!cholesky_upper(b, G, R2)) throw std::runtime_error("cholqr2: second round lost definiteness");
    }
    const std::vector<double> Ri = upper_inverse(b, round == 0 ? R1 : R2);
    ops.nn(Y, b, Ri.data(), b, b, 1.0, 0.0, W);
    ops.copy(Y, W, static_cast<size_t>(d) * b);
  }
  R.assign(static_cast<size_t>(b) * b, 0.0);
  for (int j = 0; j < b; ++j)
    for (int i = 0; i <= j; ++i) {
      double t = 0;
      for (int k = i; k <= j; ++k) t += R2[at(i, k, b)] * R1[at(k, j, b)];
      R[at(i, j, b)] = t;
    }
  return true;
}

// Y (d x b) orthonormalized against Q (d x nq) and within itself:
// Y_in = Q C + Y R (C nq x b, R b x b upper triangular, host). Mirrors
// lanczos::detail::orth_block (CGS2 against Q, column-wise CGS2 within the
// block, random replacements of directions already in the span), except that
// a well-conditioned block is orthonormalized by CholQR2 (fewer round trips).
template <class O>
void orth_block(O& ops, const double* Q, int nq, double* Y, int b, std::vector<double>& C, std::vector<double>& R,
                Random& rnd, double scale) {
  const int64_t d = ops.dim();
  C.assign(static_cast<size_t>(nq) * b, 0.0);
  R.assign(static_cast<size_t>(b) * b, 0.0);
  {
    std::vector<double> G(static_cast<size_t>(b) * b);
    ops.tn(Y, b, Y, b, G.data());
    for (int j = 0; j < b; ++j) scale = std::max(scale, std::sqrt(std::max(G[at(j, j, b)], 0.0)));
  }
  std::vector<double> tmp(static_cast<size_t>(std::max(nq, 1)) * b), h(std::max(b, 1)), cq(std::max(nq, 1));
  for (int pass = 0; pass < 2 && nq > 0; ++pass) {
    ops.tn(Q, nq, Y, b, tmp.data());
    ops.nn(Q, nq, tmp.data(), nq, b, -1.0, 1.0, Y);
    for (size_t i = 0; i < C.size(); ++i) C[i] += tmp[i];
  }
  if (b >= 2 && cholqr2(ops, Y, b, R, scale)) return;
  for (int j = 0; j < b; ++j) {
    double* w = Y + at(0, j, d);
    double before = ops.norm(w);
    for (int pass = 0; pass < 3; ++pass) {
      if (j > 0) {
        ops.tn(Y, j, w, 1, h.data());
        ops.nn(Y, j, h.data(), j, 1, -1.0, 1.0, w);
        for (int i = 0; i < j; ++i) R[at(i, j, b)] += h[i];
      }
      const double after = ops.norm(w);
      if (pass == 2 || after > 0.5 * before || after <= 1e-13 * scale) break;
      if (nq > 0) {
        ops.tn(Q, nq, w, 1, cq.data());
        ops.nn(Q, nq, cq.data(), nq, 1, -1.0, 1.0, w);
        for (int i = 0; i < nq; ++i) C[at(i, j, nq)] += cq[i];
      }
      before = after;
    }
    double nr = ops.norm(w);
    if (nr > 1e-12 * scale && scale > 0) {
      R[at(j, j, b)] = nr;
      ops.scale(w, d, 1.0 / nr);
      continue;
    }
    R[at(j, j, b)] = 0.0;
    for (int attempt = 0; attempt < 8; ++attempt) {
      rnd.fill(ops, w, d);
      nr = ops.norm(w);
      for (int pass = 0; pass < 2; ++pass) {
        if (nq > 0) {
          ops.tn(Q, nq, w, 1, cq.data());
          ops.nn(Q, nq, cq.data(), nq, 1, -1.0, 1.0, w);
        }
        if (j > 0) {
          ops.tn(Y, j, w, 1, h.data());
          ops.nn(Y, j, h.data(), j, 1, -1.0, 1.0, w);
        }
      }
      const double left = ops.norm(w);
      if (left > 1e-3 * nr) {
        ops.scale(w, d, 1.0 / left);
        break;
      }
      if (attempt == 7) throw std::runtime_error("orth_block: basis exhausts the space");
    }
  }
}

using Accept = std::function<bool(double, double, double)>;

// Size of the largest group of consecutive sorted values within gap of each other.
inline int largest_cluster(const std::vector<double>& v, double gap) {
  int best = v.empty() ? 0 : 1, run = 1;
  for (size_t i = 1; i < v.size(); ++i) {
    run = (v[i] - v[i - 1] <= gap && v[i - 1] - v[i] <= gap) ? run + 1 : 1;
    best = run > best ? run : best;
  }
  return best;
}

template <class K>
struct EngineOut {
  std::vector<double> theta, res;  // wanted Ritz values (descending) and residual estimates
  Buf<K> X;                        // d x theta.size() Ritz vectors (K memory)
  int iterations = 0, restarts = 0;
  int64_t passes = 0;
  bool converged = false;
  double norm = 0;
};

// Thick-restart block Lanczos for the k largest eigenpairs of ops.apply
// (mirrors lanczos::detail::block_lanczos with Which::Largest).
// warm: host d x k0 start columns (may be null).
template <class O>
auto block_lanczos(O& ops, int k, int b, int cap, int64_t max_passes, const double* warm, int k0, Random& rnd,
                   const Accept& accept) {
  using K = std::remove_reference_t<decltype(ops.kernels())>;
  const int64_t d = ops.dim();
  if (cap > d || cap < k + 2 * b) throw std::logic_error("block_lanczos: basis capacity out of range");
  const int keep = std::min(k + b, cap - 2 * b);
  K& kk = ops.kernels();
  EngineOut<K> out;
  Buf<K> V(kk, static_cast<size_t>(d) * cap), Y(kk, static_cast<size_t>(d) * b);
  std::vector<double> T(static_cast<size_t>(cap) * cap, 0.0), C, R, Tm, theta, res;

  const int nstart = warm ? std::min(k0, b) : 0;
  if (nstart > 0) ops.upload(warm, V.get(), static_cast<size_t>(d) * nstart);
  if (b > nstart) rnd.fill(ops, V.get() + at(0, nstart, d), d * (b - nstart));
  orth_block(ops, nullptr, 0, V.get(), b, C, R, rnd, 0.0);

  int a = 0, nv = b;
  while (true) {
    ops.apply(V.get() + at(0, a, d), Y.get(), b);
    ++out.passes;
    ++out.iterations;
    orth_block(ops, V.get(), nv, Y.get(), b, C, R, rnd, out.norm);
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
    ops.copy(V.get() + at(0, nv, d), Y.get(), static_cast<size_t>(d) * b);
    a += b;
    nv += b;
    const int na = a;

    Tm.resize(static_cast<size_t>(na) * na);
    for (int j = 0; j < na; ++j)
      for (int i = 0; i < na; ++i) Tm[at(i, j, na)] = T[at(i, j, cap)];
    theta.resize(na);
    if (blas::syevd(na, Tm.data(), na, theta.data()) != 0) throw std::runtime_error("block_lanczos: syevd failed");
    out.norm = std::max(out.norm, std::max(std::fabs(theta[0]), std::fabs(theta[na - 1])));
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
    if (na >= k)
      for (int i = 0; i < k; ++i) sel.push_back(na - 1 - i);
    bool conv = !sel.empty();
    for (int i : sel) conv = conv && accept(theta[i], res[i], out.norm);
    if (conv || (out.passes >= max_passes && na >= k)) {
      out.converged = conv;
      const int w = static_cast<int>(sel.size());
      std::vector<double> S(static_cast<size_t>(na) * w);
      for (int j = 0; j < w; ++j) {
        std::memcpy(S.data() + at(0, j, na), Tm.data() + at(0, sel[j], na), sizeof(double) * na);
        out.theta.push_back(theta[sel[j]]);
        out.res.push_back(res[sel[j]]);
      }
      out.X = Buf<K>(kk, static_cast<size_t>(d) * w);
      ops.nn(V.get(), na, S.data(), na, w, 1.0, 0.0, out.X.get());
      return out;
    }
    if (nv + b > cap) {
      // Thick restart: V[:, :keep] = V S (best Ritz vectors), then the pending block.
      std::vector<double> S(static_cast<size_t>(na) * keep);
      for (int j = 0; j < keep; ++j)
        std::memcpy(S.data() + at(0, j, na), Tm.data() + at(0, na - 1 - j, na), sizeof(double) * na);
      Buf<K> tmp(kk, static_cast<size_t>(d) * keep);
      ops.nn(V.get(), na, S.data(), na, keep, 1.0, 0.0, tmp.get());
      ops.copy(Y.get(), V.get() + at(0, na, d), static_cast<size_t>(d) * b);  // (ranges may overlap: stage)
      ops.copy(V.get(), tmp.get(), static_cast<size_t>(d) * keep);
      ops.copy(V.get() + at(0, keep, d), Y.get(), static_cast<size_t>(d) * b);
      std::fill(T.begin(), T.end(), 0.0);
      for (int j = 0; j < keep; ++j) T[at(j, j, cap)] = theta[na - 1 - j];
      a = keep;
      nv = keep + b;
      ++out.restarts;
    }
  }
}

// Block size and basis capacity of top_singular on the device. A pass over the
// matrix costs about the same for any block of <= 16 vectors (the kernels are
// bound by the matrix read), so the block is wider than on the CPU: k + 2
// within [4, 16] (not tuned on hardware yet).
struct Plan {
  int block = 0, cap = 0;
  bool dense = false;  // small: solved by LAPACK on a host copy
};

inline int capacity(int k, int bb, const lanczos::Options& opt) {
  const int cp = opt.max_basis > 0 ? opt.max_basis : k + std::max(6 * bb, std::max(k, 24));
  return std::max(cp, k + 3 * bb);
}

inline Plan plan_singular(int64_t n, int64_t m, int k, const lanczos::Options& opt, int k0) {
  Plan p;
  p.block = opt.block > 0 ? opt.block : std::clamp(k + 2, 4, tiles::kMaxCols);
  if (k0 > 0 && opt.block <= 0) p.block = std::max(p.block, std::min(k0 + 1, tiles::kMaxCols));
  p.cap = capacity(k, p.block, opt);
  const int64_t mn = std::min(n, m);
  p.dense = mn <= 32 || mn < p.cap + p.block;
  return p;
}

struct Singular {
  std::vector<double> s, U, V;  // U n x k, V m x k (column-major, double)
  lanczos::Info info;
};

// Top-k singular triplets of the matrix behind ops (Mode::Gram). v0: host
// m x k0 right vectors (warm start). single: the matrix is float (tolerance
// floor 1e-4 and an explicit B^T U pass in the certificate, as on the CPU).
// dense(): the LAPACK answer on a host copy, for when escalation needs a basis
// wider than the matrix allows.
template <class T, class K>
Singular top_singular(Ops<T, K>& ops, const MatrixView& view, int k, const lanczos::Options& opt, const double* v0,
                      int k0, const std::function<Singular()>& dense) {
  constexpr bool single = std::is_same_v<T, float>;
  constexpr double eps = std::numeric_limits<T>::epsilon();
  const int64_t n = view.n, m = view.m, d = ops.dim(), o = ops.other();
  const size_t ds = static_cast<size_t>(d), os = static_cast<size_t>(o);
  const double tol = std::max(opt.tol, single ? 1e-4 : 4 * eps);
  Plan plan = plan_singular(n, m, k, opt, v0 ? k0 : 0);
  int b = plan.block, cap = plan.cap;
  Singular out;
  out.info.tol_used = tol;
  out.info.block = b;
  const int64_t max_passes = opt.max_passes > 0 ? opt.max_passes : 1000;

  std::vector<double> warm;
  int kw = 0;
  if (v0 && k0 > 0) {
    kw = std::min(k0, b);
    warm.resize(ds * kw);
    if (view.basis_right()) {
      std::memcpy(warm.data(), v0, sizeof(double) * warm.size());
    } else {
      // Basis on the left: the warm block is A v0 = B^T v0 (B = A^T).
      ops.backward(v0, kw, warm.data());
      ++out.info.matrix_passes;
    }
  }
  double inner = tol;
  auto make_accept = [eps](double t) {
    return [t, eps](double theta, double res, double nrm) {
      const double s1 = std::sqrt(nrm), s = std::sqrt(std::max(theta, 0.0));
      return res <= std::max(0.5 * t * s1 * s, 100 * eps * nrm);
    };
  };
  Random rnd{opt.seed, 0};
  bool escalated = false;
  for (int attempt = 0;; ++attempt) {
    const int64_t left = max_passes - out.info.matrix_passes;
    auto eo = block_lanczos(ops, k, b, cap, std::max<int64_t>(left, 1), warm.empty() ? nullptr : warm.data(), kw,
                            rnd, make_accept(inner));
    out.info.iterations += eo.iterations;
    out.info.restarts += eo.restarts;
    out.info.matrix_passes += eo.passes;

    // Certificate: Y = B X and Z = B^T Y for the Ritz block X.
    std::vector<double> Xd(ds * k), Y(os * k), Z(ds * k);
    ops.forward(eo.X.get(), k, Xd.data(), Y.data(), Z.data());
    ++out.info.matrix_passes;
    // Rayleigh-Ritz with B X: Y = Q R, R = P diag(s) W^T  =>  u = Q P, v = X W.
    std::vector<double> Q = Y, Rr(static_cast<size_t>(k) * k), P(static_cast<size_t>(k) * k),
                        WT(static_cast<size_t>(k) * k), s(k);
    blas::qr_explicit(static_cast<int>(o), k, Q.data(), static_cast<int>(o), Rr.data(), k);
    if (blas::gesdd(k, k, Rr.data(), k, s.data(), P.data(), k, WT.data(), k) != 0)
      throw std::runtime_error("top_singular: gesdd failed");
    std::vector<double> U(os * k), V(ds * k), BV(os * k), BtU(ds * k);
    blas::gemm(blas::Op::N, blas::Op::N, static_cast<int>(o), k, k, 1.0, Q.data(), static_cast<int>(o), P.data(), k,
               0.0, U.data(), static_cast<int>(o));
    blas::gemm(blas::Op::N, blas::Op::T, static_cast<int>(d), k, k, 1.0, Xd.data(), static_cast<int>(d), WT.data(), k,
               0.0, V.data(), static_cast<int>(d));
    blas::gemm(blas::Op::N, blas::Op::T, static_cast<int>(o), k, k, 1.0, Y.data(), static_cast<int>(o), WT.data(), k,
               0.0, BV.data(), static_cast<int>(o));
    const double s1 = s[0];
    const bool tiny = s[k - 1] <= 1e-6 * s1 || single;
    if (!tiny) {
      blas::gemm(blas::Op::N, blas::Op::T, static_cast<int>(d), k, k, 1.0, Z.data(), static_cast<int>(d), WT.data(),
                 k, 0.0, BtU.data(), static_cast<int>(d));
      for (int j = 0; j < k; ++j)
        for (size_t i = 0; i < ds; ++i) BtU[at(i, j, d)] /= s[j];
    } else {
      ops.backward(U.data(), k, BtU.data());
      ++out.info.matrix_passes;
    }
    out.info.residuals.assign(k, 0.0);
    out.info.norm_estimate = std::max(s1, std::sqrt(eo.norm));
    bool ok = true;
    for (int j = 0; j < k; ++j) {
      double x = 0, y = 0;
      for (size_t i = 0; i < os; ++i) x += std::pow(BV[at(i, j, o)] - s[j] * U[at(i, j, o)], 2);
      for (size_t i = 0; i < ds; ++i) y += std::pow(BtU[at(i, j, d)] - s[j] * V[at(i, j, d)], 2);
      out.info.residuals[j] = std::sqrt(std::max(x, y));
      ok = ok && out.info.residuals[j] <= tol * out.info.norm_estimate;
    }
    out.s = s;
    // B = A (basis right): u left, v right. B = A^T: v is the left vector of A.
    out.U = view.basis_right() ? U : V;
    out.V = view.basis_right() ? V : U;
    out.info.converged = ok;
    if (ok && !escalated && opt.block <= 0 &&
        largest_cluster(s, 1e-7 * s1) >= std::max(b, 2)) {
      escalated = true;
      b = std::min(k + 2, 64);
      cap = capacity(k, b, opt);
      out.info.block = b;
      if (std::min(n, m) < cap + b) {
        const auto passes = out.info.matrix_passes;
        out = dense();
        out.info.matrix_passes += passes;
        return out;
      }
      warm = V;
      kw = std::min(k, b);
      continue;
    }
    if (ok || attempt >= 3 || out.info.matrix_passes >= max_passes) break;
    inner *= 0.05;
    warm = V;
    kw = std::min(k, b);
  }
  return out;
}

// Stochastic Lanczos quadrature on ops.apply (mirrors lanczos::slq: the same
// Gaussian probes, stream rng::kProbes from element 0, full reorthogonalization
// of each probe's recurrence against its own basis).
template <class O>
lanczos::Quadrature slq(O& ops, int probes, int degree, uint64_t seed) {
  using K = std::remove_reference_t<decltype(ops.kernels())>;
  const int64_t n = ops.dim();
  if (n < 1 || probes < 1 || degree < 1) throw std::invalid_argument("slq: need n, probes, degree >= 1");
  degree = static_cast<int>(std::min<int64_t>(degree, n));
  lanczos::Quadrature q;
  q.probes = probes;
  q.degree = degree;
  q.nodes.assign(static_cast<size_t>(probes) * degree, 0.0);
  q.weights.assign(static_cast<size_t>(probes) * degree, 0.0);
  const size_t nd = static_cast<size_t>(n);
  K& kk = ops.kernels();
  Buf<K> X(kk, nd * probes), Y(kk, nd * probes), basis(kk, nd * (degree + 1) * probes);
  auto Qp = [&](int p) { return basis.get() + nd * (degree + 1) * p; };
  std::vector<double> alpha(static_cast<size_t>(probes) * degree, 0.0), beta(static_cast<size_t>(probes) * degree, 0.0);
  std::vector<int> len(probes, 0);
  std::vector<char> active(probes, 1);
  ops.random(X.get(), nd * probes, seed, 0);
  for (int p = 0; p < probes; ++p) {
    double* x = X.get() + nd * p;
    ops.scale(x, n, 1.0 / ops.norm(x));
    ops.copy(Qp(p), x, nd);
  }
  std::vector<double> c(degree + 1);
  for (int j = 0; j < degree; ++j) {
    ops.apply(X.get(), Y.get(), probes);
    for (int p = 0; p < probes; ++p) {
      if (!active[p]) continue;
      double* y = Y.get() + nd * p;
      const double* Q = Qp(p);
      const double y0 = ops.norm(y);
      double a = 0;
      ops.tn(Q + nd * j, 1, y, 1, &a);
      alpha[static_cast<size_t>(p) * degree + j] = a;
      for (int pass = 0; pass < 2; ++pass) {
        ops.tn(Q, j + 1, y, 1, c.data());
        ops.nn(Q, j + 1, c.data(), j + 1, 1, -1.0, 1.0, y);
      }
      len[p] = j + 1;
      const double bt = ops.norm(y);
      if (j + 1 < degree) {
        if (bt <= 1e-12 * y0 || bt == 0.0) {
          active[p] = 0;
        } else {
          beta[static_cast<size_t>(p) * degree + j] = bt;
          double* x = X.get() + nd * p;
          ops.copy(x, y, nd);
          ops.scale(x, n, 1.0 / bt);
          ops.copy(Qp(p) + nd * (j + 1), x, nd);
        }
      }
    }
  }
  for (int p = 0; p < probes; ++p) {
    const int L = len[p];
    std::vector<double> dd(alpha.begin() + static_cast<size_t>(p) * degree,
                           alpha.begin() + static_cast<size_t>(p) * degree + L);
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

}  // namespace specdyn::cuda::driver
