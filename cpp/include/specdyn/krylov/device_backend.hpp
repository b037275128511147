// The device backend of the Krylov engine (engine.hpp), over a kernel set K:
//
//   * cuda::DeviceKernels (cuda/lanczos_device.hpp): the CUDA kernels of lanczos.cu;
//   * krylov::HostKernels (host_kernels.hpp): their host emulation (the same
//     per-thread functions, device_tiles.hpp), compiled into _core.
//
// K supplies memory (alloc, release, to_host, to_device, copy), the matrix
// products (mx: Y = M X, mty: Z = M^T Y on the row-major view M, in the
// matrix type T), the basis products (dots: C = Q^T W, combine: W = alpha Q C
// + beta W), scale, convert between T and double, and Gaussian fills.
//
// Where the data live: the matrix, the Krylov basis (d x cap doubles) and every
// product with them stay in K's memory. Crossing the bus, per block step: the
// b x (nv + b) orthogonalization coefficients and a few norms (one small
// synchronous copy each); per thick restart: the keep x na restart
// coefficients (host -> device); per certificate (once per solve, usually):
// the k Ritz vectors and their images (k (n + 2m) doubles, device -> host).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "specdyn/krylov/device_tiles.hpp"
#include "specdyn/krylov/engine.hpp"
#include "specdyn/lanczos.hpp"
#include "specdyn/rng.hpp"

namespace specdyn::krylov {

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
  int64_t dim() const { return basis_right() ? m : n; }  // basis side
  int64_t other() const { return basis_right() ? n : m; }
  // B X is M X (and B^T Y is M^T Y) when B = M, else the transposed kernels.
  bool b_is_m() const { return row_major == basis_right(); }
};

// Vector memory of K (doubles), freed on scope exit.
template <class K>
class Buf {
 public:
  Buf() = default;
  Buf(K& k, size_t n) : k_(&k), n_(n), p_(static_cast<double*>(k.alloc(std::max<size_t>(n, 1) * sizeof(double)))) {}
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
  double* data() const { return p_; }
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

// The matrix compacted into host memory (row-major r x c).
template <class T, class K>
std::vector<T> host_copy(K& kern, const T* M, const MatrixView& v) {
  const int64_t r = v.r(), c = v.c();
  std::vector<T> h(static_cast<size_t>(r * c));
  if (v.ld == c) {
    kern.to_host(h.data(), M, sizeof(T) * h.size());
  } else {
    for (int64_t i = 0; i < r; ++i) kern.to_host(h.data() + i * c, M + i * v.ld, sizeof(T) * c);
  }
  return h;
}

// The concept of engine.hpp on K: Mode::Gram applies B^T B (top_singular, SLQ
// of the singular values), Mode::Symmetric applies a square symmetric M itself.
template <class T, class K>
class DeviceBackend {
 public:
  static constexpr bool kFewSyncs = true;          // each reduction is a round trip
  static constexpr bool kParallelProbes = false;   // the kernels are the parallelism
  static constexpr bool kSingle = std::is_same_v<T, float>;
  static constexpr bool kWideBlock = true;         // a pass costs the same for up to kMaxBlock vectors
  static constexpr int kMaxBlock = cuda::tiles::kMaxCols;
  using Block = Buf<K>;
  enum class Mode { Gram, Symmetric };

  DeviceBackend(K& k, const T* M, MatrixView view, Mode mode = Mode::Gram)
      : k_(k), M_(M), v_(view), mode_(mode), d_(mode == Mode::Gram ? view.dim() : view.n),
        o_(mode == Mode::Gram ? view.other() : view.n) {
    slabs_ = cuda::tiles::mty_slabs(v_.r(), v_.c(), k_.multiprocessors());
    const size_t w = cuda::tiles::kMaxCols;
    xt_ = static_cast<T*>(k_.alloc(sizeof(T) * d_ * w));
    yt_ = static_cast<T*>(k_.alloc(sizeof(T) * o_ * w));
    zt_ = static_cast<T*>(k_.alloc(sizeof(T) * d_ * w));
    part_ = static_cast<T*>(k_.alloc(sizeof(T) * std::max(v_.r(), v_.c()) * w * slabs_));
  }
  DeviceBackend(const DeviceBackend&) = delete;
  DeviceBackend& operator=(const DeviceBackend&) = delete;
  ~DeviceBackend() {
    k_.release(xt_);
    k_.release(yt_);
    k_.release(zt_);
    k_.release(part_);
    k_.release(cdev_);
    k_.release(work_);
  }

  K& kernels() { return k_; }
  Block block(size_t n) { return Block(k_, n); }
  int64_t dim() const { return d_; }
  int64_t other() const { return o_; }
  int64_t n() const { return v_.n; }
  int64_t m() const { return v_.m; }
  bool basis_right() const { return v_.basis_right(); }
  double range_scale() const { return 1.0; }  // (the Python layer rejects non-finite matrices)
  int64_t take_passes() { return std::exchange(passes_, 0); }

  // Z (d x b) = Op X, in chunks of at most kMaxCols vectors.
  void apply(const double* X, double* Z, int b) { apply_keep(X, Z, b, nullptr); }
  // apply, also returning (Gram mode) the left product L = B X (other x b, K memory).
  void apply_keep(const double* X, double* Z, int b, double* L) {
    for (int j0 = 0; j0 < b; j0 += cuda::tiles::kMaxCols) {
      const int nb = std::min(cuda::tiles::kMaxCols, b - j0);
      k_.convert(X + at(0, j0, d_), xt_, d_ * nb);
      if (mode_ == Mode::Gram) {
        mul_b(xt_, nb, yt_);
        if (L) k_.convert(yt_, L + at(0, j0, o_), o_ * nb);
        mul_bt(yt_, nb, zt_);
      } else {
        k_.mx(M_, v_.ld, v_.r(), v_.c(), xt_, d_, nb, zt_, d_);
      }
      k_.convert(zt_, Z + at(0, j0, d_), d_ * nb);
    }
  }

  // Zh (d x k, host) = B^T Uh for host Uh (other x k).
  void backward(const double* Uh, int k, double* Zh) {
    std::vector<T> h(static_cast<size_t>(std::max(d_, o_)) * cuda::tiles::kMaxCols);
    for (int j0 = 0; j0 < k; j0 += cuda::tiles::kMaxCols) {
      const int nb = std::min(cuda::tiles::kMaxCols, k - j0);
      for (size_t i = 0; i < static_cast<size_t>(o_) * nb; ++i) h[i] = static_cast<T>(Uh[at(0, j0, o_) + i]);
      k_.to_device(yt_, h.data(), sizeof(T) * o_ * nb);
      mul_bt(yt_, nb, zt_);
      download_t(zt_, d_ * nb, h, Zh + at(0, j0, d_));
    }
  }
  // Basis on the left (B = A^T): the warm block is A v0 = B^T v0.
  void warm_left(const double* v0, int kw, double* warm) {
    backward(v0, kw, warm);
    ++passes_;
  }
  // Small problems: the LAPACK answer of the CPU solver on a host copy (the
  // compact copy is row-major M: A itself when row-major, else the
  // column-major A).
  SingularOut dense(int k) {
    const std::vector<T> h = host_copy(k_, M_, v_);
    lanczos::Options o;
    auto t = lanczos::top_singular<T>(h.data(), v_.n, v_.m, v_.row_major, k, o, nullptr, 0);
    SingularOut out;
    out.s = t.s;
    out.U.assign(t.U.begin(), t.U.end());
    out.V.assign(t.V.begin(), t.V.end());
    out.warm = out.V;
    out.warm_cols = k;
    out.info = t.info;
    return out;
  }

  // C (nq x b, host, ld nq) = Q^T W, Q (d x nq) and W (d x b) in K memory.
  void tn(const double* Q, int nq, const double* W, int b, double* Ch) {
    if (nq < 1 || b < 1) return;
    ensure_c(static_cast<size_t>(nq) * b);
    k_.dots(d_, Q, d_, nq, W, d_, b, cdev_);
    k_.to_host(Ch, cdev_, sizeof(double) * nq * b);
  }
  // C (host) = Q^T W, then W -= Q C: one Gram-Schmidt pass.
  void project(const double* Q, int nq, double* W, int b, double* Ch) {
    tn(Q, nq, W, b, Ch);
    nn(Q, nq, Ch, nq, b, -1.0, 1.0, W);
  }
  double norm(const double* w) {
    double s = 0;
    tn(w, 1, w, 1, &s);
    return std::sqrt(s);
  }
  // W (d x b) = alpha Q C + beta W for a host C (nq x b, ld ldc).
  void nn(const double* Q, int nq, const double* Ch, int ldc, int b, double alpha, double beta, double* W) {
    nn_rows(d_, Q, nq, Ch, ldc, b, alpha, beta, W);
  }
  // The same on the other side (Q and W with other() rows).
  void nn_other(const double* Q, int nq, const double* Ch, int ldc, int b, double alpha, double beta, double* W) {
    nn_rows(o_, Q, nq, Ch, ldc, b, alpha, beta, W);
  }
  void nn_rows(int64_t rows, const double* Q, int nq, const double* Ch, int ldc, int b, double alpha, double beta,
               double* W) {
    if (b < 1) return;
    if (nq < 1) {
      if (beta != 1.0) k_.scale(rows * b, beta, W);
      return;
    }
    ensure_c(static_cast<size_t>(nq) * b);
    std::vector<double> packed(static_cast<size_t>(nq) * b);
    for (int j = 0; j < b; ++j)
      for (int i = 0; i < nq; ++i) packed[at(i, j, nq)] = Ch[at(i, j, ldc)];
    k_.to_device(cdev_, packed.data(), sizeof(double) * packed.size());
    k_.combine(rows, nq, b, alpha, Q, rows, cdev_, nq, beta, W, rows);
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
  void scale(double* w, double s) { k_.scale(d_, s, w); }
  void normalized(double* x, const double* y, double nrm) {
    copy(x, y, static_cast<size_t>(d_));
    scale(x, 1.0 / nrm);
  }
  void copy(double* dst, const double* src, size_t n) { k_.copy(dst, src, n * sizeof(double)); }
  void random(double* p, size_t n, uint64_t seed, uint64_t offset) { k_.normal(p, n, seed, rng::kProbes, offset); }
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
    cdev_ = nullptr;
    cdev_size_ = std::max(n, 2 * cdev_size_);
    cdev_ = static_cast<double*>(k_.alloc(sizeof(double) * cdev_size_));
  }

  K& k_;
  const T* M_;
  MatrixView v_;
  Mode mode_;
  int64_t d_, o_, slabs_ = 1, passes_ = 0;
  T *xt_ = nullptr, *yt_ = nullptr, *zt_ = nullptr, *part_ = nullptr;
  double* cdev_ = nullptr;
  size_t cdev_size_ = 0;
  double* work_ = nullptr;
  size_t work_size_ = 0;
};

}  // namespace specdyn::krylov
