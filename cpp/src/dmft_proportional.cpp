// Mode recursion and outlier solver of the proportional two-layer model.
// Notation and derivation: docs/theory.md, section "Proportional two-layer model".
#include "specdyn/dmft_proportional.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "specdyn/blas.hpp"
#include "specdyn/interrupt.hpp"

namespace specdyn::dmft {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Quadrature of the mode population: `paired` Marchenko-Pastur nodes (singular
// value s of A(0), carrying a readout and a target component) plus two s = 0
// nodes for the |N - D| unpaired zero modes: one readout-only (N > D), one
// target-only (D > N). Each node has three weights, one per average:
// <.>_N = (1/N) sum over the N readout modes, <.>_D = (1/D) sum over the D
// target modes, and the cross weight of (1/sqrt(ND)) sum over paired modes.
struct Modes {
  int n = 0;                       // nodes (paired + 2)
  std::vector<double> s, wN, wD, wX;
  std::vector<double> a0, b;       // initial readout coefficient rows and target rows (n x 2)
};

// Gauss rule of the continuous Marchenko-Pastur law of x = s^2 (normalized over the
// K = min(N, D) paired modes). It is a free Poisson law whose Jacobi matrix is
// constant after its first row: diagonal a0 = sigma^2 max(1, nu), then
// sigma^2 (1 + nu); off-diagonal sigma^2 sqrt(nu). Nodes by Sturm bisection,
// weights (Christoffel numbers) 1 / sum_k p_k(x)^2 from the orthonormal
// recurrence: O(M^2), exact for polynomials in x up to degree 2M - 1 (the
// mode averages of the recursion are such polynomials) and geometrically
// accurate for the resolvent outside the bulk, for every nu including nu ~ 1.
void mp_gauss(int M, double nu, double sg2, std::vector<double>& x, std::vector<double>& w) {
  const double a0 = sg2 * std::max(1.0, nu), a = sg2 * (1.0 + nu), b = sg2 * std::sqrt(nu);
  auto diag = [&](int i) { return i == 0 ? a0 : a; };
  // number of eigenvalues below y (Sturm sequence of the LDL^T pivots)
  auto below = [&](double y) {
    int cnt = 0;
    double q = 1.0;
    for (int i = 0; i < M; ++i) {
      q = diag(i) - y - (i > 0 ? b * b / q : 0.0);
      if (q == 0.0) q = -1e-300;
      cnt += q < 0.0;
    }
    return cnt;
  };
  const double lo0 = std::min(a0, a) - 2.0 * b - 1e-12, hi0 = std::max(a0, a) + 2.0 * b + 1e-12;
  x.assign(M, 0.0);
  w.assign(M, 0.0);
  for (int k = 0; k < M; ++k) {
    double lo = lo0, hi = hi0;
    for (int it = 0; it < 200 && hi - lo > 4e-16 * std::max(1.0, std::abs(hi)); ++it) {
      const double mid = 0.5 * (lo + hi);
      if (mid <= lo || mid >= hi) break;
      (below(mid) > k ? hi : lo) = mid;
    }
    const double y = 0.5 * (lo + hi);
    double pm = 0.0, p = 1.0, sum = 1.0;
    for (int i = 0; i + 1 < M; ++i) {
      const double pn = ((y - diag(i)) * p - (i > 0 ? b * pm : 0.0)) / b;
      pm = p;
      p = pn;
      sum += p * p;
    }
    x[k] = std::max(y, 0.0);
    w[k] = 1.0 / sum;
  }
}

Modes make_modes(const ProportionalParams& p) {
  const int M = p.nodes;
  Modes md;
  md.n = M + 2;
  md.s.assign(md.n, 0.0);
  md.wN.assign(md.n, 0.0);
  md.wD.assign(md.n, 0.0);
  md.wX.assign(md.n, 0.0);
  md.a0.assign(2 * md.n, 0.0);
  md.b.assign(2 * md.n, 0.0);
  const double nu = p.nu, sg2 = p.sigma_in * p.sigma_in;
  const double fracN = std::min(1.0, 1.0 / nu), fracD = std::min(nu, 1.0);
  const double fracX = std::min(std::sqrt(nu), 1.0 / std::sqrt(nu));
  std::vector<double> x, w;
  mp_gauss(M, nu, sg2, x, w);
  for (int m = 0; m < M; ++m) {
    md.s[m] = std::sqrt(x[m]);
    md.wN[m] = fracN * w[m];
    md.wD[m] = fracD * w[m];
    md.wX[m] = fracX * w[m];
    md.a0[2 * m] = 1.0;      // omega(0) = xi_0
    md.b[2 * m + 1] = 1.0;   // target component = xi_1
  }
  md.wN[M] = std::max(0.0, 1.0 - 1.0 / nu);  // readout-only zero modes
  md.a0[2 * M] = 1.0;
  md.wD[M + 1] = std::max(0.0, 1.0 - nu);    // target-only zero modes
  md.b[2 * (M + 1) + 1] = 1.0;
  return md;
}

// <x y> with the mode weights wt and the initial covariance diag(sigma_out^2, 1).
double average(const Modes& md, const std::vector<double>& wt, const double* x, const double* y, double so2) {
  double acc = 0.0;
  for (int i = 0; i < md.n; ++i) {
    if (wt[i] == 0.0) continue;
    acc += wt[i] * (so2 * x[2 * i] * y[2 * i] + x[2 * i + 1] * y[2 * i + 1]);
  }
  return acc;
}

// Low-rank factor of a PSD Gram matrix C (L x L, column-major): C = B^T B with
// B (r x L); returns also P (L x r) with B P = I_r (the pseudo-inverse side).
void gram_factor(int L, const double* C, int ldc, double tol, std::vector<double>& B, std::vector<double>& P,
                 int& r) {
  std::vector<double> Q(static_cast<size_t>(L) * L), lam(L);
  for (int j = 0; j < L; ++j)
    for (int i = 0; i < L; ++i) Q[i + static_cast<size_t>(j) * L] = C[i + static_cast<size_t>(j) * ldc];
  if (blas::syevd(L, Q.data(), L, lam.data()) != 0) throw std::runtime_error("syevd failed in gram_factor");
  const double top = std::max(lam[L - 1], 0.0);
  std::vector<int> keep;
  for (int i = L - 1; i >= 0; --i)
    if (top > 0.0 && lam[i] > tol * top) keep.push_back(i);
  r = static_cast<int>(keep.size());
  B.assign(static_cast<size_t>(r) * L, 0.0);
  P.assign(static_cast<size_t>(L) * r, 0.0);
  for (int k = 0; k < r; ++k) {
    const int i = keep[k];
    const double sl = std::sqrt(lam[i]);
    for (int j = 0; j < L; ++j) {
      const double q = Q[j + static_cast<size_t>(i) * L];
      B[k + static_cast<size_t>(j) * r] = sl * q;
      P[j + static_cast<size_t>(k) * L] = q / sl;
    }
  }
}

// The compressed outlier problem at one step: F(z) = Minv - G(z) (2r x 2r).
struct OutlierProblem {
  const Modes* md = nullptr;
  double so2 = 1.0;
  int r = 0;
  std::vector<double> theta;   // singular values of the perturbation A(t) - A(0)
  std::vector<double> U, V;    // projected readout / error coefficient rows ((2n) x r, column-major)
  std::vector<double> work, F, lam;

  // Sorted eigenvalues of F(z).
  const std::vector<double>& eigs(double z) {
    const int n = md->n, two_n = 2 * n, R = 2 * r;
    work.resize(static_cast<size_t>(two_n) * r);
    F.assign(static_cast<size_t>(R) * R, 0.0);
    lam.resize(R);
    std::vector<double> g(static_cast<size_t>(r) * r);
    // block (row factor, col factor, weights, kernel): kernel k(s) times weight per node,
    // times sigma_out^2 on the readout-initial component.
    auto block = [&](const std::vector<double>& X, const std::vector<double>& Y, const std::vector<double>& wt,
                     bool cross, int row0, int col0) {
      for (int i = 0; i < n; ++i) {
        const double s = md->s[i];
        const double k = (cross ? s : z) / (z * z - s * s) * wt[i];
        for (int c = 0; c < r; ++c) {
          work[2 * i + static_cast<size_t>(c) * two_n] = k * so2 * Y[2 * i + static_cast<size_t>(c) * two_n];
          work[2 * i + 1 + static_cast<size_t>(c) * two_n] = k * Y[2 * i + 1 + static_cast<size_t>(c) * two_n];
        }
      }
      blas::gemm(blas::Op::T, blas::Op::N, r, r, two_n, 1.0, X.data(), two_n, work.data(), two_n, 0.0, g.data(), r);
      for (int c = 0; c < r; ++c)
        for (int q = 0; q < r; ++q) {
          const double v = g[q + static_cast<size_t>(c) * r];
          F[(row0 + q) + static_cast<size_t>(col0 + c) * R] -= v;
          if (row0 != col0) F[(col0 + c) + static_cast<size_t>(row0 + q) * R] -= v;
        }
    };
    block(U, U, md->wN, false, 0, 0);
    block(V, V, md->wD, false, r, r);
    block(U, V, md->wX, true, 0, r);
    for (int i = 0; i < r; ++i) {
      F[i + static_cast<size_t>(r + i) * R] += 1.0 / theta[i];
      F[(r + i) + static_cast<size_t>(i) * R] += 1.0 / theta[i];
    }
    if (blas::syevd(R, F.data(), R, lam.data()) != 0) throw std::runtime_error("syevd failed in outlier solve");
    return lam;
  }

  // Squared overlaps of the k-th outlier's singular vectors (at its root z) with the
  // top spike directions of A(t) - A(0). With phi the null vector of F(z) = C^{-1} - G(z)
  // (C = [[0, Theta], [Theta, 0]]), the Hermitization eigenvector x = (u_hat, v_hat) / sqrt(2)
  // has spike coordinates C^{-1} phi, normalized by |x|^2 = -phi^T G'(z) phi.
  void overlaps(double z, int k, double& left, double& right) {
    eigs(z);
    const int n = md->n, two_n = 2 * n, R = 2 * r;
    const double* phi = F.data() + static_cast<size_t>(r + k - 1) * R;
    double quad = 0.0;  // phi^T G'(z) phi
    for (int i = 0; i < n; ++i) {
      const double s = md->s[i], d = z * z - s * s;
      const double kzz = -(z * z + s * s) / (d * d), kzs = -2.0 * z * s / (d * d);
      for (int comp = 0; comp < 2; ++comp) {
        double pu = 0.0, pv = 0.0;
        for (int q = 0; q < r; ++q) {
          pu += U[2 * i + comp + static_cast<size_t>(q) * two_n] * phi[q];
          pv += V[2 * i + comp + static_cast<size_t>(q) * two_n] * phi[r + q];
        }
        const double wc = comp == 0 ? so2 : 1.0;
        quad += wc * (md->wN[i] * kzz * pu * pu + md->wD[i] * kzz * pv * pv + 2.0 * md->wX[i] * kzs * pu * pv);
      }
    }
    left = right = kNaN;
    if (!(quad < 0.0)) return;
    const double nrm = std::sqrt(-quad);
    const double yu = phi[r] / (theta[0] * nrm), yv = phi[0] / (theta[0] * nrm);
    left = 2.0 * yu * yu;
    right = 2.0 * yv * yv;
  }

  // Number of singular values of A(t) above z (z above the bulk).
  int count_above(double z) {
    const auto& l = eigs(z);
    int neg = 0;
    for (double v : l) neg += v < 0.0;
    return neg - r;
  }

  // Root of the monotone eigenvalue lambda_{r+k-1}(z) in (lo, hi): the k-th outlier (k >= 1).
  double root(int k, double lo, double hi) {
    auto f = [&](double z) { return eigs(z)[r + k - 1]; };
    double flo = f(lo), fhi = f(hi);
    int side = 0;
    for (int it = 0; it < 200 && hi - lo > 1e-13 * hi; ++it) {
      // Illinois regula falsi, with a bisection step when it stalls.
      double z = (lo * fhi - hi * flo) / (fhi - flo);
      if (!(z > lo && z < hi) || it % 4 == 3) z = 0.5 * (lo + hi);
      const double fz = f(z);
      if (fz < 0.0) {
        lo = z;
        flo = fz;
        if (side == -1) fhi *= 0.5;
        side = -1;
      } else {
        hi = z;
        fhi = fz;
        if (side == 1) flo *= 0.5;
        side = 1;
      }
    }
    return 0.5 * (lo + hi);
  }
};

}  // namespace

ProportionalResult solve_proportional(const ProportionalParams& p) {
  if (!(p.nu > 0) || !(p.gamma0 > 0) || !(p.eta0 > 0) || !(p.sigma_in > 0) || !(p.sigma_out >= 0) ||
      p.steps < 0 || p.nodes < 8 || p.top_k < 1)
    throw std::invalid_argument("solve_proportional: parameters out of range");
  const int T = p.steps;
  const Modes md = make_modes(p);
  // The dense kernels here have tiny inner dimensions (D, P or the history length):
  // threaded OpenBLAS only adds synchronization (and stalls badly on a busy machine).
  blas::ThreadScope one_thread(1);
  const int n = md.n, two_n = 2 * n;
  const double nu = p.nu, c = p.eta0 * p.gamma0, so2 = p.sigma_out * p.sigma_out;
  const double sqnu = std::sqrt(nu);
  const size_t S = static_cast<size_t>(T) + 1;

  // Coefficient rows of omega(t) (readout) and eps(t) (error) per node.
  std::vector<double> a(S * two_n, 0.0), e(S * two_n, 0.0);
  std::vector<double> Cw(S * S, kNaN), Ce(S * S, kNaN);
  std::copy(md.a0.begin(), md.a0.end(), a.begin());

  ProportionalResult res;
  res.steps = T;
  res.edge = p.sigma_in * (1.0 + sqnu);
  res.loss.assign(S, kNaN);
  res.readout_norm2.assign(S, kNaN);
  res.readout_delta2.assign(S, kNaN);
  int last = T;  // last step with a finite state
  std::vector<double> acc(two_n);
  for (int t = 0; t <= T; ++t) {
    interrupt::check();  // between time steps (serial here): Ctrl-C from the bindings
    const double* at = &a[t * static_cast<size_t>(two_n)];
    double* et = &e[t * static_cast<size_t>(two_n)];
    for (int j = 0; j <= t; ++j)
      Cw[j + t * S] = Cw[t + j * S] = average(md, md.wN, &a[j * static_cast<size_t>(two_n)], at, so2);
    // eps(t) = b - s omega(t) / (gamma0 sqrt(nu)) - (c nu / gamma0) sum_{j<t} Cw(j,t) eps(j)
    for (int i = 0; i < n; ++i)
      for (int k = 0; k < 2; ++k)
        et[2 * i + k] = md.b[2 * i + k] - md.s[i] * at[2 * i + k] / (p.gamma0 * sqnu);
    for (int j = 0; j < t; ++j)
      blas::axpy(two_n, -c * nu / p.gamma0 * Cw[j + t * S], &e[j * static_cast<size_t>(two_n)], et);
    for (int j = 0; j <= t; ++j)
      Ce[j + t * S] = Ce[t + j * S] = average(md, md.wD, &e[j * static_cast<size_t>(two_n)], et, so2);
    res.loss[t] = 0.5 * Ce[t + t * S] + 0.5 * p.noise * p.noise;
    res.readout_norm2[t] = Cw[t + t * S];
    res.readout_delta2[t] = Cw[t + t * S] - 2.0 * Cw[t] + Cw[0];
    if (!std::isfinite(res.loss[t]) || res.loss[t] > p.divergence_bound) {
      res.diverged_step = t;
      res.loss[t] = kNaN;
      last = t - 1;
      break;
    }
    if (t == T) break;
    // omega(t+1) = omega(t) + c sqrt(nu) s eps(t) + c^2 nu sum_{j<t} Ce(j,t) omega(j)
    double* an = &a[(t + 1) * static_cast<size_t>(two_n)];
    for (int i = 0; i < n; ++i)
      for (int k = 0; k < 2; ++k) an[2 * i + k] = at[2 * i + k] + c * sqnu * md.s[i] * et[2 * i + k];
    for (int j = 0; j < t; ++j)
      blas::axpy(two_n, c * c * nu * Ce[j + t * S], &a[j * static_cast<size_t>(two_n)], an);
  }

  // Outliers at the tracked steps.
  const int K = p.top_k, nt = static_cast<int>(p.tracked.size());
  res.outliers.assign(static_cast<size_t>(nt) * K, kNaN);
  res.delta_singular.assign(static_cast<size_t>(nt) * K, kNaN);
  res.overlap_left.assign(static_cast<size_t>(nt) * K, kNaN);
  res.overlap_right.assign(static_cast<size_t>(nt) * K, kNaN);
  res.top_singular.assign(nt, kNaN);
  res.sharpness.assign(nt, kNaN);
  res.history_rank.assign(nt, 0);
  for (int q = 0; q < nt; ++q) {
    const int t = p.tracked[q];
    if (t < 0 || t > T) throw std::invalid_argument("solve_proportional: tracked step out of range");
    if (t > last) continue;
    double top = res.edge;
    if (t > 0) {
      // A(t) = A(0) + c nu U V^T, U = [w_j / sqrt N], V = [e_j / sqrt D], j < t; Gram U^T U = Cw, V^T V = Ce.
      const int L = t;
      std::vector<double> Bu, Pu, Bv, Pv;
      int ru = 0, rv = 0;
      gram_factor(L, Cw.data(), static_cast<int>(S), p.rank_tol, Bu, Pu, ru);
      gram_factor(L, Ce.data(), static_cast<int>(S), p.rank_tol, Bv, Pv, rv);
      OutlierProblem op;
      op.md = &md;
      op.so2 = so2;
      if (ru > 0 && rv > 0) {
        // small core c nu Bu Bv^T = X diag(theta) Z^T
        std::vector<double> core(static_cast<size_t>(ru) * rv);
        blas::gemm(blas::Op::N, blas::Op::T, ru, rv, L, c * nu, Bu.data(), ru, Bv.data(), rv, 0.0, core.data(), ru);
        const int mn = std::min(ru, rv);
        std::vector<double> th(mn), X(static_cast<size_t>(ru) * mn), Zt(static_cast<size_t>(mn) * rv);
        if (blas::gesdd(ru, rv, core.data(), ru, th.data(), X.data(), ru, Zt.data(), mn) != 0)
          throw std::runtime_error("gesdd failed in outlier solve");
        int r = 0;
        while (r < mn && th[r] > p.rank_tol * th[0]) ++r;
        res.history_rank[q] = r;
        for (int i = 0; i < std::min(r, K); ++i) res.delta_singular[q * static_cast<size_t>(K) + i] = th[i];
        // T_u = P_u X_r (L x r), T_v = P_v Z_r (L x r)
        std::vector<double> Tu(static_cast<size_t>(L) * r), Tv(static_cast<size_t>(L) * r), Zr(static_cast<size_t>(rv) * r);
        for (int i = 0; i < r; ++i)
          for (int j = 0; j < rv; ++j) Zr[j + static_cast<size_t>(i) * rv] = Zt[i + static_cast<size_t>(j) * mn];
        blas::gemm(blas::Op::N, blas::Op::N, L, r, ru, 1.0, Pu.data(), L, X.data(), ru, 0.0, Tu.data(), L);
        blas::gemm(blas::Op::N, blas::Op::N, L, r, rv, 1.0, Pv.data(), L, Zr.data(), rv, 0.0, Tv.data(), L);
        // projected coefficient rows: (2n x L) histories times T
        op.r = r;
        op.theta.assign(th.begin(), th.begin() + r);
        op.U.resize(static_cast<size_t>(two_n) * r);
        op.V.resize(static_cast<size_t>(two_n) * r);
        blas::gemm(blas::Op::N, blas::Op::N, two_n, r, L, 1.0, a.data(), two_n, Tu.data(), L, 0.0, op.U.data(), two_n);
        blas::gemm(blas::Op::N, blas::Op::N, two_n, r, L, 1.0, e.data(), two_n, Tv.data(), L, 0.0, op.V.data(), two_n);
        const double lo = res.edge + p.edge_margin;
        const int n_out = op.count_above(lo);
        double hi = res.edge + th[0] + 1.0;
        for (int it = 0; it < 60 && op.count_above(hi) > 0; ++it) hi *= 2.0;
        for (int k = 1; k <= std::min(n_out, K); ++k) {
          const double z = op.root(k, lo, hi);
          res.outliers[q * static_cast<size_t>(K) + k - 1] = z;
          op.overlaps(z, k, res.overlap_left[q * static_cast<size_t>(K) + k - 1],
                      res.overlap_right[q * static_cast<size_t>(K) + k - 1]);
          hi = z;
        }
        if (n_out > 0) top = res.outliers[q * static_cast<size_t>(K)];
      }
    }
    res.top_singular[q] = top;
    res.sharpness[q] = p.eta0 * (top * top + nu * Cw[t + t * S]);
  }
  return res;
}

}  // namespace specdyn::dmft
