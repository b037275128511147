// MLP kernels: forward, backward with fused SGD update, NTK Gram, exact HVP,
// and the Gaussian teacher. All dense work is BLAS-3; elementwise work is one
// fused pass per layer, parallel over samples (same result at any thread count).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>

#include "specdyn/blas.hpp"
#include "specdyn/nets.hpp"
#include "specdyn/rng.hpp"

namespace specdyn::nets {

using blas::Op;

int64_t Arch::num_params() const {
  int64_t s = 0;
  for (int l = 0; l < layers(); ++l) s += size(l);
  return s;
}

void Arch::check() const {
  if (input_dim < 1 || width < 1 || output_dim < 1 || depth < 1)
    throw std::invalid_argument("nets: dimensions and depth must be >= 1");
  if (static_cast<int>(multipliers.size()) != layers())
    throw std::invalid_argument("nets: need one multiplier per weight matrix (depth + 1)");
}

template <class T>
void Pass<T>::resize(const Arch& a, int64_t n_) {
  n = n_;
  H.resize(a.layers());
  for (int l = 1; l <= a.depth; ++l) H[l].assign(static_cast<size_t>(a.width * n), T(0));
  F.assign(static_cast<size_t>(a.output_dim * n), T(0));
  E.assign(F.size(), T(0));
  const int64_t rows = std::max(a.width, a.output_dim);
  B0.assign(static_cast<size_t>(rows * n), T(0));
  B1.assign(B0.size(), T(0));
}

namespace {

// Elementwise passes stay on the calling thread on purpose: an OpenMP team
// here spin-waits after each region and steals cores from OpenBLAS's own pool
// in the next GEMM (measured: ~13% of a step in libgomp spinning). The passes
// are vectorized and memory-bound, a few ms per step.

// tanh without branches or library calls, so that whole columns vectorize:
// tanh|x| = m / (m + 2) with m = expm1(2|x|): a Taylor series for small
// arguments (no cancellation) and a range-reduced exp otherwise. Relative
// error within a few ulp of double; NaN propagates, +-inf gives +-1.
inline double tanh_branchless(double x) {
  const double a = std::fabs(x);
  const double y = 2.0 * (a < 20.0 ? a : (a == a ? 20.0 : a));  // tanh(20) == 1 in double
  // expm1(y) for y < 0.5: sum_{n=1}^{16} y^n / n!
  static constexpr double inv_fact[16] = {1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040,
                                          1.0 / 40320, 1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800,
                                          1.0 / 479001600, 1.0 / 6227020800.0, 1.0 / 87178291200.0,
                                          1.0 / 1307674368000.0, 1.0 / 20922789888000.0};
  double small = inv_fact[15];
  for (int i = 14; i >= 0; --i) small = inv_fact[i] + y * small;
  small *= y;
  // exp(y) = 2^k exp(r), |r| <= ln2 / 2, Cody-Waite split of ln 2
  constexpr double log2e = 1.4426950408889634, ln2_hi = 6.93147180369123816490e-01,
                   ln2_lo = 1.90821492927058770002e-10, shifter = 6755399441055744.0;  // 1.5 * 2^52
  const double kshift = y * log2e + shifter;
  const double k = kshift - shifter;
  uint64_t kbits;
  __builtin_memcpy(&kbits, &kshift, sizeof kbits);
  const uint64_t sbits = (kbits + 1023u) << 52;
  double scale;
  __builtin_memcpy(&scale, &sbits, sizeof scale);
  const double r = (y - k * ln2_hi) - k * ln2_lo;
  double p = inv_fact[13];
  for (int i = 12; i >= 0; --i) p = inv_fact[i] + r * p;
  p = 1.0 + r * p;
  const double big = p * scale - 1.0;
  const double m = y < 0.5 ? small : big;
  return std::copysign(m / (m + 2.0), x);
}

template <class T>
__attribute__((target_clones("avx512f", "avx2", "default"))) void tanh_inplace(T* z, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) z[i] = static_cast<T>(tanh_branchless(static_cast<double>(z[i])));
}

template <class T>
void apply_activation(Activation act, T* Z, int64_t rows, int64_t n) {
  if (act == Activation::Linear) return;
  if (act == Activation::Tanh) {
    for (int64_t j = 0; j < n; ++j) tanh_inplace(Z + j * rows, rows);
  } else {
    for (int64_t j = 0; j < n; ++j) {
      T* z = Z + j * rows;
      // A NaN compares false and is kept, so divergence stays visible downstream.
      for (int64_t i = 0; i < rows; ++i) z[i] = z[i] < T(0) ? T(0) : z[i];
    }
  }
}

// B <- B * phi'(h) with phi'(h) written through H = phi(h).
template <class T>
void times_derivative(Activation act, T* B, const T* H, int64_t rows, int64_t n) {
  if (act == Activation::Linear) return;
  if (act == Activation::Tanh) {
    for (int64_t j = 0; j < n; ++j) {
      T* b = B + j * rows;
      const T* h = H + j * rows;
      for (int64_t i = 0; i < rows; ++i) b[i] *= T(1) - h[i] * h[i];
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      T* b = B + j * rows;
      const T* h = H + j * rows;
      for (int64_t i = 0; i < rows; ++i) b[i] = h[i] > T(0) ? b[i] : T(0);
    }
  }
}

inline int bi(int64_t v) { return static_cast<int>(v); }

// Every product of the network: the same bits at any thread count (blas::gemm_fixed).
// (Not named gemm: argument-dependent lookup on blas::Op would prefer blas::gemm.)
template <class T>
inline void net_gemm(Op ta, Op tb, int m, int n, int k, T alpha, const T* A, int lda, const T* B, int ldb, T beta,
                     T* C, int ldc) {
  blas::gemm_fixed(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace

template <class T>
void forward(const Arch& a, const ConstWeights<T>& W, const T* X, int64_t n, Pass<T>& ps) {
  if (ps.n != n || static_cast<int>(ps.H.size()) != a.layers()) ps.resize(a, n);
  ps.X = X;
  for (int l = 0; l <= a.depth; ++l) {
    const int64_t fi = a.fan_in(l), fo = a.fan_out(l);
    T* out = l == a.depth ? ps.F.data() : ps.H[l + 1].data();
    net_gemm(Op::T, Op::N, bi(fo), bi(n), bi(fi), static_cast<T>(a.multipliers[l]), W[l], bi(fi),
             ps.input(l), bi(fi), T(0), out, bi(fo));
    if (l < a.depth) apply_activation(a.activation, out, fo, n);
  }
}

template <class T>
double residual(const Arch& a, const T* Y, double n_norm, Pass<T>& ps) {
  const int64_t total = a.output_dim * ps.n;
  const T inv = static_cast<T>(1.0 / n_norm);
  double acc = 0;
  // Serial on purpose: the loss must be bit-identical at any thread count (C x n is small).
  for (int64_t i = 0; i < total; ++i) {
    const T r = ps.F[i] - Y[i];
    acc += static_cast<double>(r) * static_cast<double>(r);
    ps.E[i] = r * inv;
  }
  ps.n_norm = n_norm;
  return acc / (2.0 * n_norm);
}

template <class T>
void backward(const Arch& a, const Weights<T>& W, Pass<T>& ps, const BackwardMode& mode, const Weights<T>* grads,
              std::vector<std::vector<double>>* mean_signal) {
  const int64_t n = ps.n;
  const T* cur = ps.E.data();
  T* bufs[2] = {ps.B0.data(), ps.B1.data()};
  int which = 0;
  if (mean_signal) mean_signal->assign(a.layers(), {});
  for (int l = a.depth; l >= 0; --l) {
    const int64_t fi = a.fan_in(l), fo = a.fan_out(l);
    const T m = static_cast<T>(a.multipliers[l]);
    if (mean_signal) {
      auto& ms = (*mean_signal)[l];
      ms.assign(static_cast<size_t>(fo), 0.0);
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < fo; ++i) ms[i] += cur[j * fo + i];
      for (auto& v : ms) v /= static_cast<double>(n);
    }
    T* next = bufs[which];
    // Signal for the layer below, from W^l before its update.
    if (l > 0) net_gemm(Op::N, Op::N, bi(fi), bi(n), bi(fo), m, W[l], bi(fi), cur, bi(fo), T(0), next, bi(fi));
    if (mode.kind == BackwardMode::Update) {
      // W^l -= eta m_l E^{l+1} H^l^T, fused into the gemm (no gradient buffer, no extra pass).
      net_gemm(Op::N, Op::T, bi(fi), bi(fo), bi(n), static_cast<T>(-mode.learning_rate) * m, ps.input(l), bi(fi),
               cur, bi(fo), T(1), W[l], bi(fi));
    } else if (mode.kind == BackwardMode::Gradient) {
      net_gemm(Op::N, Op::T, bi(fi), bi(fo), bi(n), m, ps.input(l), bi(fi), cur, bi(fo), T(0), (*grads)[l], bi(fi));
    }
    if (l > 0) {
      times_derivative(a.activation, next, ps.H[l].data(), fi, n);
      cur = next;
      which ^= 1;
    }
  }
}

template <class T>
void ntk_gram(const Arch& a, const ConstWeights<T>& W, const Pass<T>& ps, std::vector<double>& K) {
  const int64_t n = ps.n, C = a.output_dim, nC = n * C, N = a.width;
  const int L = a.depth;
  K.assign(static_cast<size_t>(nC * nC), 0.0);
  std::vector<T> HG(static_cast<size_t>(n * n));
  auto input_gram = [&](int l) {
    const int64_t fi = a.fan_in(l);
    net_gemm(Op::T, Op::N, bi(n), bi(n), bi(fi), T(1), ps.input(l), bi(fi), ps.input(l), bi(fi), T(0), HG.data(),
             bi(n));
  };
  // Readout: its backward signal is the one-hot output direction.
  {
    input_gram(L);
    const double m2 = a.multipliers[L] * a.multipliers[L];
    for (int64_t mu = 0; mu < n; ++mu)
      for (int64_t nu = 0; nu < n; ++nu) {
        const double v = m2 * static_cast<double>(HG[mu * n + nu]);
        for (int64_t c = 0; c < C; ++c) K[(mu * C + c) * nC + nu * C + c] += v;
      }
  }
  // S: backward signals at the output of W^l for every (sample, output) pair, N x nC.
  std::vector<T> S(static_cast<size_t>(N * nC)), S2(S.size()), SG(static_cast<size_t>(nC * nC));
  {
    const T mL = static_cast<T>(a.multipliers[L]);
    const T* WL = W[L];
    for (int64_t mu = 0; mu < n; ++mu)
      for (int64_t c = 0; c < C; ++c) {
        T* s = S.data() + (mu * C + c) * N;
        for (int64_t i = 0; i < N; ++i) s[i] = mL * WL[c * N + i];
      }
    // times phi'(h^L): columns (mu, c) all use sample mu
    for (int64_t p = 0; p < nC; ++p)
      times_derivative(a.activation, S.data() + p * N, ps.H[L].data() + (p / C) * N, N, 1);
  }
  for (int l = L - 1; l >= 0; --l) {
    net_gemm(Op::T, Op::N, bi(nC), bi(nC), bi(N), T(1), S.data(), bi(N), S.data(), bi(N), T(0), SG.data(), bi(nC));
    input_gram(l);
    const double m2 = a.multipliers[l] * a.multipliers[l];
    for (int64_t p = 0; p < nC; ++p) {
      const int64_t mu = p / C;
      for (int64_t q = 0; q < nC; ++q)
        K[p * nC + q] += m2 * static_cast<double>(SG[p * nC + q]) * static_cast<double>(HG[mu * n + q / C]);
    }
    if (l > 0) {
      const int64_t fi = a.fan_in(l);
      net_gemm(Op::N, Op::N, bi(fi), bi(nC), bi(N), static_cast<T>(a.multipliers[l]), W[l], bi(fi), S.data(), bi(N),
               T(0), S2.data(), bi(fi));
      for (int64_t p = 0; p < nC; ++p)
        times_derivative(a.activation, S2.data() + p * N, ps.H[l].data() + (p / C) * N, N, 1);
      S.swap(S2);
    }
  }
}

template <class T>
void hvp(const Arch& a, const ConstWeights<T>& W, const Pass<T>& ps, const ConstWeights<T>& V, const Weights<T>& HV) {
  const int64_t n = ps.n, C = a.output_dim;
  const int L = a.depth;
  const Activation act = a.activation;
  // Tangent forward: dH[l] = d phi(h^l), dF = df.
  std::vector<std::vector<T>> dH(L + 1);
  std::vector<T> dF(static_cast<size_t>(C * n));
  for (int l = 0; l <= L; ++l) {
    const int64_t fi = a.fan_in(l), fo = a.fan_out(l);
    const T m = static_cast<T>(a.multipliers[l]);
    T* out;
    if (l == L) {
      out = dF.data();
    } else {
      dH[l + 1].assign(static_cast<size_t>(fo * n), T(0));
      out = dH[l + 1].data();
    }
    net_gemm(Op::T, Op::N, bi(fo), bi(n), bi(fi), m, V[l], bi(fi), ps.input(l), bi(fi), T(0), out, bi(fo));
    if (l > 0) net_gemm(Op::T, Op::N, bi(fo), bi(n), bi(fi), m, W[l], bi(fi), dH[l].data(), bi(fi), T(1), out, bi(fo));
    if (l < L) times_derivative(act, out, ps.H[l + 1].data(), fo, n);
  }
  // Reverse sweep of the pair (E, dE) = (error signal, its tangent).
  std::vector<T> E(ps.E.begin(), ps.E.end()), dE(dF.size());
  const T inv = static_cast<T>(1.0 / ps.n_norm);
  for (size_t i = 0; i < dF.size(); ++i) dE[i] = dF[i] * inv;
  std::vector<T> B, dB;
  for (int l = L; l >= 0; --l) {
    const int64_t fi = a.fan_in(l), fo = a.fan_out(l);
    const T m = static_cast<T>(a.multipliers[l]);
    net_gemm(Op::N, Op::T, bi(fi), bi(fo), bi(n), m, ps.input(l), bi(fi), dE.data(), bi(fo), T(0), HV[l], bi(fi));
    if (l == 0) break;
    net_gemm(Op::N, Op::T, bi(fi), bi(fo), bi(n), m, dH[l].data(), bi(fi), E.data(), bi(fo), T(1), HV[l], bi(fi));
    B.assign(static_cast<size_t>(fi * n), T(0));
    dB.assign(B.size(), T(0));
    net_gemm(Op::N, Op::N, bi(fi), bi(n), bi(fo), m, W[l], bi(fi), E.data(), bi(fo), T(0), B.data(), bi(fi));
    net_gemm(Op::N, Op::N, bi(fi), bi(n), bi(fo), m, V[l], bi(fi), E.data(), bi(fo), T(0), dB.data(), bi(fi));
    net_gemm(Op::N, Op::N, bi(fi), bi(n), bi(fo), m, W[l], bi(fi), dE.data(), bi(fo), T(1), dB.data(), bi(fi));
    const T* H = ps.H[l].data();
    const T* dh = dH[l].data();
    E.resize(B.size());
    dE.resize(B.size());
    for (int64_t i = 0; i < fi * n; ++i) {
      T d1 = 1, curv = 0;  // phi'(h) and phi''(h) dh expressed through H and dH
      if (act == Activation::Tanh) {
        d1 = T(1) - H[i] * H[i];
        curv = T(-2) * H[i] * dh[i];
      } else if (act == Activation::Relu) {
        d1 = H[i] > T(0) ? T(1) : T(0);
      }
      E[i] = B[i] * d1;
      dE[i] = dB[i] * d1 + B[i] * curv;
    }
  }
}

template <class T>
void teacher(int64_t first, int64_t n, int64_t D, int64_t C, uint64_t seed, int kind, double scale, double noise, T* X,
             T* Y) {
  std::vector<double> beta(static_cast<size_t>(C * D)), x(static_cast<size_t>(n * D)), y(static_cast<size_t>(n * C));
  rng::normal_fill(beta.data(), beta.size(), seed, rng::kData, 1.0);
  rng::normal_fill(x.data(), x.size(), seed, rng::kData + 1, 1.0, static_cast<uint64_t>(first * D));
  // y (C x n, column-major) = scale * beta (C x D, row-major = col-major D x C, transposed) x (D x n)
  if (n > 0)
    net_gemm(Op::T, Op::N, bi(C), bi(n), bi(D), scale, beta.data(), bi(D), x.data(), bi(D), 0.0, y.data(), bi(C));
  if (kind == 1)
    for (auto& v : y) v = std::tanh(v);
  if (noise > 0) {
    std::vector<double> eps(y.size());
    rng::normal_fill(eps.data(), eps.size(), seed, rng::kData + 2, noise, static_cast<uint64_t>(first * C));
    for (size_t i = 0; i < y.size(); ++i) y[i] += eps[i];
  }
  for (size_t i = 0; i < x.size(); ++i) X[i] = static_cast<T>(x[i]);
  for (size_t i = 0; i < y.size(); ++i) Y[i] = static_cast<T>(y[i]);
}

#define SPECDYN_NETS_INSTANTIATE(T)                                                                              \
  template struct Pass<T>;                                                                                       \
  template void forward<T>(const Arch&, const ConstWeights<T>&, const T*, int64_t, Pass<T>&);                   \
  template double residual<T>(const Arch&, const T*, double, Pass<T>&);                                         \
  template void backward<T>(const Arch&, const Weights<T>&, Pass<T>&, const BackwardMode&, const Weights<T>*,  \
                            std::vector<std::vector<double>>*);                                                 \
  template void ntk_gram<T>(const Arch&, const ConstWeights<T>&, const Pass<T>&, std::vector<double>&);         \
  template void hvp<T>(const Arch&, const ConstWeights<T>&, const Pass<T>&, const ConstWeights<T>&,             \
                       const Weights<T>&);                                                                       \
  template void teacher<T>(int64_t, int64_t, int64_t, int64_t, uint64_t, int, double, double, T*, T*);

SPECDYN_NETS_INSTANTIATE(float)
SPECDYN_NETS_INSTANTIATE(double)

}  // namespace specdyn::nets
