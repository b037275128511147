// Monte Carlo over single sites for the muP limit of a two-layer nonlinear network.
#include "specdyn/dmft_nonlinear.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "specdyn/blas.hpp"
#include "specdyn/rng.hpp"

namespace specdyn::dmft {
namespace {

// Random streams of this solver (disjoint from the named streams of rng.hpp).
constexpr uint64_t kMonteCarloStream = 16ull << 32;

// phi(h) and phi'(h) together (one tanh per entry).
inline void act(Activation a, double h, double& v, double& d) {
  switch (a) {
    case Activation::Tanh: v = 1.0 - 2.0 / (std::exp(2.0 * h) + 1.0); d = 1.0 - v * v; return;  // tanh, via one exp (faster than std::tanh)
    case Activation::Relu: v = h > 0.0 ? h : 0.0; d = h > 0.0 ? 1.0 : 0.0; return;
    default: v = h; d = 1.0; return;
  }
}

// The dense kernels here have tiny inner dimensions (D, P or the history length):
// threaded OpenBLAS only adds synchronization (and stalls badly on a busy machine).
struct SingleThreadedBlas {
  int saved = blas::get_num_threads();
  SingleThreadedBlas() { blas::set_num_threads(1); }
  ~SingleThreadedBlas() { blas::set_num_threads(saved); }
};

}  // namespace

MonteCarloResult monte_carlo_two_layer(const double* X, const double* Y, int P, int D,
                                       const MonteCarloParams& p) {
  if (P < 1 || D < 1 || p.particles < 2 || p.particles % 2 != 0 || p.steps < 0 || !(p.gamma0 > 0) ||
      !(p.eta0 > 0))
    throw std::invalid_argument("monte_carlo_two_layer: parameters out of range");
  const int M = p.particles, half = M / 2, T = p.steps;
  SingleThreadedBlas single_threaded_blas;
  const double c = p.eta0 * p.gamma0, rootD = std::sqrt(static_cast<double>(D));
  using blas::Op;

  // Sites: rows of W (stored column-major D x M, column i = site i) and readout w.
  // Antithetic pairs: site i + M/2 has the same W0 row and the opposite w, so the
  // output at initialization is exactly the limit value 0.
  std::vector<double> W(static_cast<size_t>(D) * M), w(M);
  const uint64_t stream = kMonteCarloStream + 2 * p.replica;
  rng::normal_fill(W.data(), static_cast<size_t>(D) * half, p.seed, stream, p.sigma_in);
  std::copy(W.begin(), W.begin() + static_cast<size_t>(D) * half, W.begin() + static_cast<size_t>(D) * half);
  rng::normal_fill(w.data(), half, p.seed, stream + 1, p.sigma_out);
  for (int i = 0; i < half; ++i) w[half + i] = -w[i];

  // X row-major P x D is column-major D x P.
  std::vector<double> H(static_cast<size_t>(M) * P), A(H.size()), B(H.size());
  std::vector<double> f(P), res(P), Kx(static_cast<size_t>(P) * P);
  blas::gemm(Op::T, Op::N, P, P, D, 1.0 / D, X, D, X, D, 0.0, Kx.data(), P);

  MonteCarloResult out;
  const size_t S = static_cast<size_t>(T) + 1, nt = p.tracked.size();
  out.loss.assign(S, std::numeric_limits<double>::quiet_NaN());
  out.outputs.assign(S * P, std::numeric_limits<double>::quiet_NaN());
  out.phi.assign(nt * P * P, std::numeric_limits<double>::quiet_NaN());
  out.grad.assign(nt * P * P, std::numeric_limits<double>::quiet_NaN());
  out.sharpness.assign(nt, std::numeric_limits<double>::quiet_NaN());
  size_t q = 0;
  std::vector<double> Ks(static_cast<size_t>(P) * P), lam(P);
  for (int t = 0; t <= T; ++t) {
    // fields h_i(x_mu) = W0_i . x_mu / sqrt(D): H (M x P)
    blas::gemm(Op::T, Op::N, M, P, D, 1.0 / rootD, W.data(), D, X, D, 0.0, H.data(), M);
    for (int mu = 0; mu < P; ++mu) {
      const size_t o = static_cast<size_t>(mu) * M;
      for (int i = 0; i < M; ++i) {
        double v, d;
        act(p.activation, H[o + i], v, d);
        A[o + i] = v;
        B[o + i] = w[i] * d;  // backward field g = w phi'(h)
      }
    }
    blas::gemv(Op::T, M, P, 1.0 / (p.gamma0 * M), A.data(), M, w.data(), 0.0, f.data());
    double loss = 0.0;
    for (int mu = 0; mu < P; ++mu) {
      res[mu] = Y[mu] - f[mu];
      loss += res[mu] * res[mu];
      out.outputs[static_cast<size_t>(t) * P + mu] = f[mu];
    }
    loss /= 2.0 * P;
    if (!std::isfinite(loss) || loss > p.divergence_bound) {
      out.diverged_step = t;
      for (int mu = 0; mu < P; ++mu) out.outputs[static_cast<size_t>(t) * P + mu] = std::numeric_limits<double>::quiet_NaN();
      break;
    }
    out.loss[t] = loss;
    while (q < nt && p.tracked[q] < t) ++q;
    if (q < nt && p.tracked[q] == t) {
      double* Phi = &out.phi[q * P * P];
      double* G = &out.grad[q * P * P];
      blas::gemm(Op::T, Op::N, P, P, M, 1.0 / M, A.data(), M, A.data(), M, 0.0, Phi, P);
      blas::gemm(Op::T, Op::N, P, P, M, 1.0 / M, B.data(), M, B.data(), M, 0.0, G, P);
      for (size_t k = 0; k < Ks.size(); ++k) Ks[k] = Phi[k] + G[k] * Kx[k];
      if (blas::syevd(P, Ks.data(), P, lam.data()) != 0) throw std::runtime_error("syevd failed");
      out.sharpness[q] = p.eta0 * lam[P - 1] / P;
      ++q;
    }
    if (t == T) break;
    // single-site updates, both from the state at t:
    //   W0_i += (c / (P sqrt D)) sum_mu res_mu g_i(x_mu) x_mu,   w_i += (c / P) sum_mu res_mu phi(h_i(x_mu))
    for (int mu = 0; mu < P; ++mu) blas::scal(M, res[mu], &B[static_cast<size_t>(mu) * M]);
    blas::gemm(Op::N, Op::T, D, M, P, c / (P * rootD), X, D, B.data(), M, 1.0, W.data(), D);
    blas::gemv(Op::N, M, P, c / P, A.data(), M, res.data(), 1.0, w.data());
  }
  return out;
}

}  // namespace specdyn::dmft
