// Monte Carlo over single sites for the muP limit of a two-layer nonlinear network.
#include "specdyn/dmft_nonlinear.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "specdyn/blas.hpp"
#include "specdyn/interrupt.hpp"
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

}  // namespace

MonteCarloResult monte_carlo_two_layer(const double* X, const double* Y, int P, int D,
                                       const MonteCarloParams& p) {
  if (P < 1 || D < 1 || p.particles < 2 || p.particles % 2 != 0 || p.steps < 0 || !(p.gamma0 > 0) ||
      !(p.eta0 > 0))
    throw std::invalid_argument("monte_carlo_two_layer: parameters out of range");
  const int M = p.particles, half = M / 2, T = p.steps;
  // The dense kernels here have tiny inner dimensions (D, P or the history length):
  // threaded OpenBLAS only adds synchronization (and stalls badly on a busy machine).
  blas::ThreadScope one_thread(1);
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
    interrupt::check();  // between time steps (serial here): Ctrl-C from the bindings
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


// ======================================================================================
// Deeper networks (docs/theory.md, "Deeper nonlinear networks in muP").
// ======================================================================================
namespace {

constexpr uint64_t kDeepStream = 17ull << 32;

// phi, phi' and phi'' of the activation.
inline void act3(Activation a, double h, double& v, double& d, double& dd) {
  switch (a) {
    case Activation::Tanh: v = 1.0 - 2.0 / (std::exp(2.0 * h) + 1.0); d = 1.0 - v * v; dd = -2.0 * v * d; return;
    case Activation::Relu: v = h > 0.0 ? h : 0.0; d = h > 0.0 ? 1.0 : 0.0; dd = 0.0; return;
    default: v = h; d = 1.0; dd = 0.0; return;
  }
}

// Row-major C (m x n) = alpha op(A) op(B) + beta C (column-major BLAS on the transposes).
void gemm_rm(bool ta, bool tb, int m, int n, int k, double alpha, const double* A, int lda, const double* B,
             int ldb, double beta, double* C, int ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) C[static_cast<size_t>(i) * ldc + j] *= beta;
    return;
  }
  blas::gemm(tb ? blas::Op::T : blas::Op::N, ta ? blas::Op::T : blas::Op::N, n, m, k, alpha, B, ldb, A, lda,
             beta, C, ldc);
}

// A Gaussian process whose covariance is revealed P rows at a time (one step of a
// causal recursion): its lower Cholesky factor grows row by row. A vanishing pivot
// (a direction already determined by the earlier rows) gives a zero column, so the
// factor stays valid for the semi-definite kernels of narrow data or linear nets.
struct GrowingFactor {
  int dim = 0, n = 0;
  std::vector<double> L;  // dim x dim, row-major, lower
  void init(int d) {
    dim = d;
    n = 0;
    L.assign(static_cast<size_t>(d) * d, 0.0);
  }
  // C: k rows (stride ldc) holding the covariance of new rows n..n+k-1 with rows 0..n+k-1.
  void extend(const double* C, int ldc, int k) {
    for (int r = 0; r < k; ++r) {
      const int row = n + r;
      double* Lr = &L[static_cast<size_t>(row) * dim];
      const double* Cr = C + static_cast<size_t>(r) * ldc;
      for (int j = 0; j < row; ++j) {
        const double* Lj = &L[static_cast<size_t>(j) * dim];
        if (Lj[j] == 0.0) { Lr[j] = 0.0; continue; }
        double s = Cr[j];
        for (int m = 0; m < j; ++m) s -= Lr[m] * Lj[m];
        Lr[j] = s / Lj[j];
      }
      double d = Cr[row];
      const double scale = d;
      for (int m = 0; m < row; ++m) d -= Lr[m] * Lr[m];
      Lr[row] = (d > 1e-11 * scale && d > 0.0) ? std::sqrt(d) : 0.0;
    }
    n += k;
  }
};

// Forward-mode tangents of one layer's sites with respect to one Gaussian source
// (u: enters h, its response feeds the layer below; v: enters z, feeds the layer above),
// for every source step b and sample nu at once. Block b holds rows (t - b) P + mu,
// columns nu * Mr + i (site i < Mr).
struct Tangents {
  bool in_h = false;
  int blocks = 0;
  std::vector<std::vector<double>> da, dg;  // histories of d phi(h) and d g
  std::vector<std::vector<double>> dh, dz;  // the current step
};

struct SiteLayer {
  std::vector<double> A, G;          // histories phi(h), g: (T+1)P x M
  std::vector<double> H, Z, D1, D2;  // this step: h, z, phi'(h), phi''(h): P x M
  std::vector<double> Phi, Gk;       // two-time kernels, (T+1)P square
  std::vector<double> Ra, Rb;        // responses <d phi(h(t)) / d v(s)>, <d g(t) / d u(s)>
  std::vector<double> Su, Sv;        // standard normal sources of u and v: (T+1)P x M
  GrowingFactor fu, fv;
  bool has_u = false, has_v = false;
  Tangents tu, tv;
};

}  // namespace

double monte_carlo_deep_tangent_bytes(int depth, int steps, int P, int response_particles) {
  const double T1 = steps + 1.0;
  // per family: da and dg, sum over blocks b of (T + 1 - b) P rows of P Mr
  const double per_family = 2.0 * (T1 * (T1 + 1.0) / 2.0) * P * P * static_cast<double>(response_particles);
  return 8.0 * per_family * 2.0 * std::max(0, depth - 1);
}

DeepMonteCarloResult monte_carlo_deep(const double* X, const double* Y, int P, int D,
                                      const DeepMonteCarloParams& p) {
  const int Ld = p.depth, M = p.particles, T = p.steps;
  if (P < 1 || D < 1 || Ld < 1 || M < 2 || M % 2 != 0 || T < 0 || !(p.gamma0 > 0) || !(p.eta0 > 0) ||
      static_cast<int>(p.sigma.size()) != Ld + 1 || p.response_particles < 2 || p.response_particles > M ||
      p.response_particles % 2 != 0)
    throw std::invalid_argument("monte_carlo_deep: parameters out of range");
  blas::ThreadScope one_thread(1);  // tiny inner dimensions, as above
  const int Mr = p.response_particles, half = M / 2, R = (T + 1) * P, PMr = P * Mr;
  const double c = p.eta0 * p.gamma0, cP = c / P;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const uint64_t stream0 = kDeepStream + 256 * p.replica;

  std::vector<double> Kx(static_cast<size_t>(P) * P);
  gemm_rm(false, true, P, P, D, 1.0 / D, X, D, X, D, 0.0, Kx.data(), P);

  std::vector<SiteLayer> layers(Ld);
  for (int k = 0; k < Ld; ++k) {
    SiteLayer& ly = layers[k];
    ly.A.assign(static_cast<size_t>(R) * M, 0.0);
    ly.G.assign(static_cast<size_t>(R) * M, 0.0);
    ly.H.assign(static_cast<size_t>(P) * M, 0.0);
    ly.Z = ly.D1 = ly.D2 = ly.H;
    ly.Phi.assign(static_cast<size_t>(R) * R, 0.0);
    ly.Gk = ly.Ra = ly.Rb = ly.Phi;
    ly.Su.assign(static_cast<size_t>(R) * M, 0.0);
    ly.fu.init(k == 0 ? P : R);
    ly.has_u = k > 0;          // chi^l = A_{l-1}(0) phi(h^{l-1}): a response feeds layer l - 1
    ly.has_v = k < Ld - 1;     // xi^l = A_l(0)^T g^{l+1}: a response feeds layer l + 1
    if (ly.has_v) {
      ly.Sv.assign(static_cast<size_t>(R) * M, 0.0);
      ly.fv.init(R);
    }
    auto setup = [&](Tangents& tg, bool in_h, int blocks) {
      tg.in_h = in_h;
      tg.blocks = blocks;
      tg.da.resize(blocks);
      tg.dg.resize(blocks);
      tg.dh.assign(blocks, std::vector<double>(static_cast<size_t>(P) * PMr, 0.0));
      tg.dz.assign(blocks, std::vector<double>(static_cast<size_t>(P) * PMr, 0.0));
      for (int b = 0; b < blocks; ++b) {
        tg.da[b].assign(static_cast<size_t>(T + 1 - b) * P * PMr, 0.0);
        tg.dg[b].assign(static_cast<size_t>(T + 1 - b) * P * PMr, 0.0);
      }
    };
    if (ly.has_u) setup(ly.tu, true, T + 1);
    if (ly.has_v) setup(ly.tv, false, T);  // Ra(t; s) is needed for s < t <= T only
  }
  // readout at initialization: antithetic pairs (w, -w) with the same fields below
  // (sites 2i, 2i + 1), so that the tangent sites 0..Mr-1 hold whole pairs
  std::vector<double> w0(M), pair_buf(half);
  rng::normal_fill(pair_buf.data(), half, p.seed, stream0 + 4 * Ld + 2, p.sigma[Ld]);
  for (int i = 0; i < half; ++i) {
    w0[2 * i] = pair_buf[i];
    w0[2 * i + 1] = -pair_buf[i];
  }
  // standard normal sources of rows row..row+rows-1 (one fill per step); the last layer's are paired
  std::vector<double> pair_rows(static_cast<size_t>(P) * half);
  auto draw = [&](std::vector<double>& S, int row, int rows, uint64_t stream, bool paired) {
    double* dst = &S[static_cast<size_t>(row) * M];
    if (paired) {
      rng::normal_fill(pair_rows.data(), static_cast<size_t>(rows) * half, p.seed, stream, 1.0,
                       static_cast<uint64_t>(row) * half);
      for (size_t i = 0; i < static_cast<size_t>(rows) * half; ++i) dst[2 * i] = dst[2 * i + 1] = pair_rows[i];
    } else {
      rng::normal_fill(dst, static_cast<size_t>(rows) * M, p.seed, stream, 1.0, static_cast<uint64_t>(row) * M);
    }
  };

  DeepMonteCarloResult out;
  const size_t S1 = static_cast<size_t>(T) + 1, nt = p.tracked.size(), PP = static_cast<size_t>(P) * P;
  out.loss.assign(S1, nan);
  out.outputs.assign(S1 * P, nan);
  out.phi.assign(nt * Ld * PP, nan);
  out.grad.assign(nt * Ld * PP, nan);
  out.sharpness.assign(nt, nan);
  std::vector<double> res(S1 * P, 0.0), f(P), K1(static_cast<size_t>(P) * R), K2(static_cast<size_t>(P) * R),
      Crow(static_cast<size_t>(P) * R), tmp(static_cast<size_t>(R) * P), H0(static_cast<size_t>(P) * M);
  std::vector<double> Ks(PP), lam(P);
  size_t q = 0;

  // two-time kernel rows of step t from a history (rows 0..(t+1)P): K[j][tP+mu] = <hist_j hist_{tP+mu}>
  auto kernel_rows = [&](const std::vector<double>& hist, std::vector<double>& K, int t) {
    const int n = (t + 1) * P;
    gemm_rm(false, true, n, P, M, 1.0 / M, hist.data(), M, &hist[static_cast<size_t>(t) * P * M], M, 0.0,
            tmp.data(), P);
    for (int j = 0; j < n; ++j)
      for (int mu = 0; mu < P; ++mu) {
        const double v = tmp[static_cast<size_t>(j) * P + mu];
        K[static_cast<size_t>(j) * R + t * P + mu] = v;
        K[static_cast<size_t>(t * P + mu) * R + j] = v;
      }
  };
  // ReLU: phi'' = delta(h). A site's tangent cannot see it (the kink is crossed with
  // probability zero), but the average over sites can: <delta(h) F> = p_h(0) <F | h = 0>.
  // Replace delta(h) by a Gaussian bump of width eps (Silverman's rule over the tangent
  // sites), rescaled so that a Gaussian h has exactly its density at 0.
  auto relu_delta = [&](const double* H, double* D2) {
    const double root2pi = std::sqrt(2.0 * M_PI);
    for (int mu = 0; mu < P; ++mu) {
      const double* h = H + static_cast<size_t>(mu) * M;
      double m = 0.0, v = 0.0;
      for (int i = 0; i < M; ++i) m += h[i];
      m /= M;
      for (int i = 0; i < M; ++i) v += (h[i] - m) * (h[i] - m);
      v /= M;
      double* d2 = D2 + static_cast<size_t>(mu) * M;
      if (!(v > 0.0)) { std::fill(d2, d2 + M, 0.0); continue; }
      const double eps2 = 1.06 * 1.06 * v * std::pow(static_cast<double>(Mr), -0.4), eps = std::sqrt(eps2);
      const double fix = std::sqrt((v + eps2) / v) * std::exp(-0.5 * m * m / v + 0.5 * m * m / (v + eps2));
      for (int i = 0; i < M; ++i) d2[i] = fix * std::exp(-0.5 * h[i] * h[i] / eps2) / (eps * root2pi);
    }
  };
  // tangent step of one block: out (P x P Mr) = [direct] I + Kc (P x n, stride ldk) * hist (n x P Mr)
  auto tangent_product = [&](const double* Kc, int ldk, int n, const double* hist, bool direct, double* dst) {
    gemm_rm(false, false, P, PMr, n, 1.0, Kc, ldk, hist, PMr, 0.0, dst, PMr);
    if (direct)
      for (int mu = 0; mu < P; ++mu) {
        double* row = dst + static_cast<size_t>(mu) * PMr + static_cast<size_t>(mu) * Mr;
        for (int i = 0; i < Mr; ++i) row[i] += 1.0;
      }
  };
  // mean over the tangent sites of one block row: R[(tP+mu)][bP+nu]
  auto average_block = [&](const double* rows, std::vector<double>& Rsp, int t, int b) {
    for (int mu = 0; mu < P; ++mu)
      for (int nu = 0; nu < P; ++nu) {
        const double* x = rows + static_cast<size_t>(mu) * PMr + static_cast<size_t>(nu) * Mr;
        double s = 0.0;
        for (int i = 0; i < Mr; ++i) s += x[i];
        Rsp[static_cast<size_t>(t * P + mu) * R + b * P + nu] = s / Mr;
      }
  };

  for (int t = 0; t <= T; ++t) {
    interrupt::check();  // between time steps (serial here): Ctrl-C from the bindings
    const int tP = t * P, n1 = tP + P;
    // ---------------- forward: layers 1..L ----------------
    for (int k = 0; k < Ld; ++k) {
      SiteLayer& ly = layers[k];
      // K1(t, s)[mu][nu] for s < t (row-major P x tP)
      for (int mu = 0; mu < P; ++mu)
        for (int s = 0; s < t; ++s)
          for (int nu = 0; nu < P; ++nu) {
            double v;
            if (k == 0) {
              v = cP * Kx[static_cast<size_t>(mu) * P + nu] * res[static_cast<size_t>(s) * P + nu];
            } else {
              const SiteLayer& pv = layers[k - 1];
              const double sig2 = p.sigma[k] * p.sigma[k];
              v = sig2 * pv.Ra[static_cast<size_t>(tP + mu) * R + s * P + nu] +
                  cP * res[static_cast<size_t>(s) * P + nu] * pv.Phi[static_cast<size_t>(s * P + nu) * R + tP + mu];
            }
            K1[static_cast<size_t>(mu) * tP + s * P + nu] = v;
          }
      // Gaussian source u(t)
      const bool paired = (k == Ld - 1);
      if (k == 0) {
        if (t == 0) {
          for (size_t j = 0; j < PP; ++j) Crow[j] = p.sigma[0] * p.sigma[0] * Kx[j];
          ly.fu.extend(Crow.data(), P, P);
          draw(ly.Su, 0, P, stream0 + 0, paired);
          gemm_rm(false, false, P, M, P, 1.0, ly.fu.L.data(), P, ly.Su.data(), M, 0.0, H0.data(), M);
        }
        std::copy(H0.begin(), H0.end(), ly.H.begin());
      } else {
        const SiteLayer& pv = layers[k - 1];
        const double sig2 = p.sigma[k] * p.sigma[k];
        for (int mu = 0; mu < P; ++mu)
          for (int j = 0; j < n1; ++j)
            Crow[static_cast<size_t>(mu) * n1 + j] = sig2 * pv.Phi[static_cast<size_t>(tP + mu) * R + j];
        ly.fu.extend(Crow.data(), n1, P);
        draw(ly.Su, tP, P, stream0 + 4 * k + 0, paired);
        gemm_rm(false, false, P, M, n1, 1.0, &ly.fu.L[static_cast<size_t>(tP) * R], R, ly.Su.data(), M, 0.0,
                ly.H.data(), M);
      }
      gemm_rm(false, false, P, M, tP, 1.0, K1.data(), tP, ly.G.data(), M, 1.0, ly.H.data(), M);
      double* At = &ly.A[static_cast<size_t>(tP) * M];
      for (long long e = 0; e < static_cast<long long>(P) * M; ++e)  // cheap next to the tangents: serial
        act3(p.activation, ly.H[e], At[e], ly.D1[e], ly.D2[e]);
      if (p.activation == Activation::Relu && (ly.has_u || ly.has_v)) relu_delta(ly.H.data(), ly.D2.data());
      kernel_rows(ly.A, ly.Phi, t);
      // tangents: dh(t) and d phi(h(t)) for every live source block
      for (Tangents* tg : {ly.has_u ? &ly.tu : nullptr, ly.has_v ? &ly.tv : nullptr}) {
        if (!tg) continue;
        const int nb = std::min(t + 1, tg->blocks);
#pragma omp parallel for schedule(dynamic)
        for (int b = 0; b < nb; ++b) {
          double* dh = tg->dh[b].data();
          tangent_product(K1.data() + b * P, tP, tP - b * P, tg->dg[b].data(), tg->in_h && b == t, dh);
          double* da = &tg->da[b][static_cast<size_t>(t - b) * P * PMr];
          for (int mu = 0; mu < P; ++mu)
            for (int nu = 0; nu < P; ++nu)
              for (int i = 0; i < Mr; ++i) {
                const size_t e = static_cast<size_t>(mu) * PMr + static_cast<size_t>(nu) * Mr + i;
                da[e] = ly.D1[static_cast<size_t>(mu) * M + i] * dh[e];
              }
          if (!tg->in_h && b < t) average_block(da, ly.Ra, t, b);
        }
      }
      if (k == Ld - 1) {
        // readout z(t) = w(t) = w0 + (c/P) sum_{s<t} r(s) . phi(h(s)); K2(t, s) = cP r_nu(s), K2(t, t) = 0
        std::fill(K2.begin(), K2.end(), 0.0);
        for (int mu = 0; mu < P; ++mu)
          for (int s = 0; s < t; ++s)
            for (int nu = 0; nu < P; ++nu)
              K2[static_cast<size_t>(mu) * n1 + s * P + nu] = cP * res[static_cast<size_t>(s) * P + nu];
        for (int mu = 0; mu < P; ++mu) std::copy(w0.begin(), w0.end(), ly.Z.begin() + static_cast<size_t>(mu) * M);
        gemm_rm(false, false, P, M, n1, 1.0, K2.data(), n1, ly.A.data(), M, 1.0, ly.Z.data(), M);
      }
    }
    // ---------------- output, residual, loss ----------------
    {
      const SiteLayer& top = layers[Ld - 1];
      double loss = 0.0;
      for (int mu = 0; mu < P; ++mu) {
        const double* a = &top.A[static_cast<size_t>(tP + mu) * M];
        const double* z = &top.Z[static_cast<size_t>(mu) * M];
        double s = 0.0;
        for (int i = 0; i < M; ++i) s += z[i] * a[i];
        f[mu] = s / (p.gamma0 * M);
        res[static_cast<size_t>(t) * P + mu] = Y[mu] - f[mu];
        loss += (Y[mu] - f[mu]) * (Y[mu] - f[mu]);
      }
      loss /= 2.0 * P;
      if (!std::isfinite(loss) || loss > p.divergence_bound) {
        out.diverged_step = t;
        break;
      }
      out.loss[t] = loss;
      for (int mu = 0; mu < P; ++mu) out.outputs[static_cast<size_t>(t) * P + mu] = f[mu];
    }
    // ---------------- backward: layers L..1 ----------------
    for (int k = Ld - 1; k >= 0; --k) {
      SiteLayer& ly = layers[k];
      if (k < Ld - 1) {
        const SiteLayer& nx = layers[k + 1];
        const double sig2 = p.sigma[k + 1] * p.sigma[k + 1];
        // K2(t, s)[mu][nu] for s <= t (row-major P x (t+1)P)
        for (int mu = 0; mu < P; ++mu)
          for (int s = 0; s <= t; ++s)
            for (int nu = 0; nu < P; ++nu) {
              double v = sig2 * nx.Rb[static_cast<size_t>(tP + mu) * R + s * P + nu];
              if (s < t)
                v += cP * res[static_cast<size_t>(s) * P + nu] * nx.Gk[static_cast<size_t>(s * P + nu) * R + tP + mu];
              K2[static_cast<size_t>(mu) * n1 + s * P + nu] = v;
            }
        for (int mu = 0; mu < P; ++mu)
          for (int j = 0; j < n1; ++j)
            Crow[static_cast<size_t>(mu) * n1 + j] = sig2 * nx.Gk[static_cast<size_t>(tP + mu) * R + j];
        ly.fv.extend(Crow.data(), n1, P);
        draw(ly.Sv, tP, P, stream0 + 4 * k + 1, false);
        gemm_rm(false, false, P, M, n1, 1.0, &ly.fv.L[static_cast<size_t>(tP) * R], R, ly.Sv.data(), M, 0.0,
                ly.Z.data(), M);
        gemm_rm(false, false, P, M, n1, 1.0, K2.data(), n1, ly.A.data(), M, 1.0, ly.Z.data(), M);
      }  // the top layer's z and K2 were set in the forward pass
      double* Gt = &ly.G[static_cast<size_t>(tP) * M];
      for (long long e = 0; e < static_cast<long long>(P) * M; ++e) Gt[e] = ly.D1[e] * ly.Z[e];
      kernel_rows(ly.G, ly.Gk, t);
      for (Tangents* tg : {ly.has_u ? &ly.tu : nullptr, ly.has_v ? &ly.tv : nullptr}) {
        if (!tg) continue;
        const int nb = std::min(t + 1, tg->blocks);
#pragma omp parallel for schedule(dynamic)
        for (int b = 0; b < nb; ++b) {
          double* dz = tg->dz[b].data();
          const double* dh = tg->dh[b].data();
          tangent_product(K2.data() + b * P, n1, n1 - b * P, tg->da[b].data(), !tg->in_h && b == t, dz);
          double* dg = &tg->dg[b][static_cast<size_t>(t - b) * P * PMr];
          for (int mu = 0; mu < P; ++mu)
            for (int nu = 0; nu < P; ++nu)
              for (int i = 0; i < Mr; ++i) {
                const size_t e = static_cast<size_t>(mu) * PMr + static_cast<size_t>(nu) * Mr + i;
                const size_t si = static_cast<size_t>(mu) * M + i;
                dg[e] = ly.D2[si] * ly.Z[si] * dh[e] + ly.D1[si] * dz[e];
              }
          if (tg->in_h) average_block(dg, ly.Rb, t, b);
        }
      }
    }
    // ---------------- tracked kernels and sharpness ----------------
    while (q < nt && p.tracked[q] < t) ++q;
    if (q < nt && p.tracked[q] == t) {
      std::fill(Ks.begin(), Ks.end(), 0.0);
      for (int k = 0; k < Ld; ++k) {
        const SiteLayer& ly = layers[k];
        for (int mu = 0; mu < P; ++mu)
          for (int nu = 0; nu < P; ++nu) {
            const size_t e = static_cast<size_t>(tP + mu) * R + tP + nu, o = static_cast<size_t>(mu) * P + nu;
            out.phi[(q * Ld + k) * PP + o] = ly.Phi[e];
            out.grad[(q * Ld + k) * PP + o] = ly.Gk[e];
            // eta K / eta0 = Phi^L + sum_l G^{l+1} o Phi^l + G^1 o Kx
            const double below = k == 0 ? Kx[o] : layers[k - 1].Phi[e];
            Ks[o] += ly.Gk[e] * below;
            if (k == Ld - 1) Ks[o] += ly.Phi[e];
          }
      }
      if (blas::syevd(P, Ks.data(), P, lam.data()) != 0) throw std::runtime_error("syevd failed");
      out.sharpness[q] = p.eta0 * lam[P - 1] / P;
      ++q;
    }
  }
  return out;
}

}  // namespace specdyn::dmft
