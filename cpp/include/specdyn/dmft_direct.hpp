// The one-bulk mode recursion (docs/theory.md, One-bulk model, level one) in its direct
// form, for the device: the full histories of omega and qhat are kept (no
// compressed basis), every mode average is a deterministic block reduction
// and every node's update is an independent element. Equations and notation
// as in dmft.hpp; the state is scaled by sqrt(weight_k) so that <f g> = f . g.
//
// Per step n (L = M R elements, element i = k R + r of node k):
//   Cw(j, n)  = <omega(j) omega(n)>, j <= n                    reduce, n + 1 blocks
//   m         = s omega(n) + c sum_{j<n} Cw(j, n) qhat(j)         for_each (mode_m)
//   beta_f    = <zeta m> / gamma0, <m m>                          reduce, D + 1 blocks
//   pred, r   = X beta_f / sqrt D, X^T (y - pred) / P; loss       reduce (P, 1 and D blocks)
//   qhat(n)   = zeta(n) . r / sqrt D                              for_each
//   Cq(j, n), Cqm(j, n) = <qhat(j) m(n)>, zq = <zeta qhat(n)>     reduce, 2 (n + 1) + D blocks
//   Grams <y y^T>, <zeta zeta^T> on sharpness steps               reduce, 2 D^2 blocks
//   omega(n+1), zeta(n+1), y(n+1)                                 for_each (mode_advance)
// The per-element updates are the __host__ __device__ functions mode_m and
// mode_advance; solve_direct<Exec> runs the same launches on the device
// (CudaExec) or, identically, on the host (HostExec), which CPU tests check
// against the compressed solver of dmft.cpp. Cost O(T^2 M R) work, O(T M R)
// memory for the histories; the sharpness is eta0 lambda_max of a D x D matrix
// built from the Grams, left to the caller.
#pragma once
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "specdyn/dmft.hpp"
#include "specdyn/gpu_exec.hpp"

namespace specdyn::dmft {

struct DirectSolution {
  int steps = 0, nodes = 0, coef = 0, input_dim = 0;
  std::vector<double> loss;          // (T + 1)
  std::vector<double> beta_f;        // (T + 1, D)
  std::vector<double> Cw, Cq, Cqm;   // (T + 1, T + 1) row-major; Cw, Cq symmetric, Cqm[j, n] for j <= n, else 0
  std::vector<double> mm;            // (T + 1) <m(n) m(n)>
  std::vector<int> gram_steps;       // steps whose Grams were taken, ascending
  std::vector<double> YY, BB;        // (S, D, D) <y y^T>, <zeta zeta^T> at those steps
  std::vector<double> hist_a, hist_q;  // (T + 1, L) scaled coefficient rows of omega(n), qhat(n)
  std::vector<double> s_row;         // (L) s_k repeated R times
};

// m_i = s_i omega_i(n) + c sum_{j<n} Cw(j, n) qhat_i(j), j ascending.
SPECDYN_GPU_HD inline double mode_m(int64_t i, int64_t L, int n, int64_t T1, double c, const double* s_row,
                                    const double* hist_a, const double* hist_q, const double* Cw) {
  double h = 0.0;
  for (int j = 0; j < n; ++j) h = h + Cw[j * T1 + n] * hist_q[j * L + i];
  return s_row[i] * hist_a[static_cast<int64_t>(n) * L + i] + c * h;
}

// The update of element i from step n to n + 1:
//   omega(n+1) = omega + c [s qhat(n) + c sum_{j<n} Cq(j, n) omega(j)]
//   vec        = u^T A A^T w = s m + c sum_{j<=n} Cqm(j, n) omega(j)
//   y_d       += rt_d vec + ec_d omega(n),   zeta_d += rt_d m    (d < D)
SPECDYN_GPU_HD inline void mode_advance(int64_t i, int64_t L, int n, int64_t T1, int D, double c,
                                        const double* s_row, double* hist_a, const double* hist_q, const double* m,
                                        const double* Cq, const double* Cqm, const double* rt, const double* ec,
                                        double* B, double* Y) {
  const double a = hist_a[static_cast<int64_t>(n) * L + i];
  double hq = 0.0, hv = 0.0;
  for (int j = 0; j < n; ++j) {
    const double aj = hist_a[j * L + i];
    hq = hq + Cq[j * T1 + n] * aj;
    hv = hv + Cqm[j * T1 + n] * aj;
  }
  hv = hv + Cqm[n * T1 + n] * a;
  const double qh = hist_q[static_cast<int64_t>(n) * L + i], mi = m[i];
  hist_a[static_cast<int64_t>(n + 1) * L + i] = a + c * (s_row[i] * qh + c * hq);
  const double vec = s_row[i] * mi + c * hv;
  for (int d = 0; d < D; ++d) {
    Y[d * L + i] = Y[d * L + i] + (rt[d] * vec + ec[d] * a);
    B[d * L + i] = B[d * L + i] + rt[d] * mi;
  }
}

namespace direct {

struct Sizes {
  int64_t L, T1;
  int D, P;
};

// Cw(j, n) for j = 0..n (block j).
struct CwColumn {
  const double* ha;
  double* Cw;
  int64_t L, T1;
  int n;
  SPECDYN_GPU_HD int64_t len(int) const { return L; }
  SPECDYN_GPU_HD double term(int j, int64_t i) const { return ha[j * L + i] * ha[n * L + i]; }
  SPECDYN_GPU_HD void store(int j, double v) const { Cw[j * T1 + n] = v; }
};

struct ModeM {
  int64_t L, T1;
  int n;
  double c;
  const double *s_row, *ha, *hq, *Cw;
  double* m;
  SPECDYN_GPU_HD void operator()(int64_t i) const { m[i] = mode_m(i, L, n, T1, c, s_row, ha, hq, Cw); }
};

// beta_f(n)_d = <zeta_d m> / gamma0 (blocks d < D), <m m> (block D).
struct BetaAndMm {
  const double *B, *m;
  double *beta, *mm;
  int64_t L;
  int D;
  double richness;
  SPECDYN_GPU_HD int64_t len(int) const { return L; }
  SPECDYN_GPU_HD double term(int d, int64_t i) const { return d < D ? B[d * L + i] * m[i] : m[i] * m[i]; }
  SPECDYN_GPU_HD void store(int d, double v) const {
    if (d < D)
      beta[d] = v / richness;
    else
      *mm = v;
  }
};

// pred_mu = x_mu . beta_f / sqrt D (block mu).
struct Prediction {
  const double *X, *beta;
  double* pred;
  int D;
  double rD;
  SPECDYN_GPU_HD int64_t len(int) const { return D; }
  SPECDYN_GPU_HD double term(int mu, int64_t d) const { return X[static_cast<int64_t>(mu) * D + d] * beta[d]; }
  SPECDYN_GPU_HD void store(int mu, double v) const { pred[mu] = v / rD; }
};

// loss = |y - pred|^2 / 2P (block 0).
struct Loss {
  const double *y, *pred;
  double* loss;
  int P;
  SPECDYN_GPU_HD int64_t len(int) const { return P; }
  SPECDYN_GPU_HD double term(int, int64_t mu) const {
    const double d = y[mu] - pred[mu];
    return d * d;
  }
  SPECDYN_GPU_HD void store(int, double v) const { *loss = v / (2.0 * P); }
};

// r_d = x_d . (y - pred) / P and its scaled copies rs = r / sqrt D, rt = c r / sqrt D (block d).
struct Residual {
  const double *X, *y, *pred;
  double *rs, *rt;
  int D, P;
  double rD, c;
  SPECDYN_GPU_HD int64_t len(int) const { return P; }
  SPECDYN_GPU_HD double term(int d, int64_t mu) const { return X[mu * D + d] * (y[mu] - pred[mu]); }
  SPECDYN_GPU_HD void store(int d, double v) const {
    const double r = v / P;
    rs[d] = r / rD;
    rt[d] = c * r / rD;
  }
};

// qhat(n)_i = sum_d rs_d zeta_d,i (d ascending).
struct Qhat {
  const double *B, *rs;
  double* q;
  int64_t L;
  int D;
  SPECDYN_GPU_HD void operator()(int64_t i) const {
    double h = 0.0;
    for (int d = 0; d < D; ++d) h = h + rs[d] * B[d * L + i];
    q[i] = h;
  }
};

// Blocks 0..n: Cq(j, n); n+1..2n+1: Cqm(j, n) = <qhat(j) m(n)>; then D blocks: ec_d = c <zeta_d qhat(n)>.
struct QColumns {
  const double *hq, *m, *B;
  double *Cq, *Cqm, *ec;
  int64_t L, T1;
  int n;
  double c;
  SPECDYN_GPU_HD int64_t len(int) const { return L; }
  SPECDYN_GPU_HD double term(int b, int64_t i) const {
    const double qn = hq[n * L + i];
    if (b <= n) return hq[b * L + i] * qn;
    if (b <= 2 * n + 1) return hq[(b - n - 1) * L + i] * m[i];
    return B[(b - 2 * n - 2) * L + i] * qn;
  }
  SPECDYN_GPU_HD void store(int b, double v) const {
    if (b <= n)
      Cq[b * T1 + n] = v;
    else if (b <= 2 * n + 1)
      Cqm[(b - n - 1) * T1 + n] = v;
    else
      ec[b - 2 * n - 2] = c * v;
  }
};

// <y_d y_e> (blocks d D + e) and <zeta_d zeta_e> (blocks D^2 + d D + e).
struct Grams {
  const double *Y, *B;
  double *YY, *BB;
  int64_t L;
  int D;
  SPECDYN_GPU_HD int64_t len(int) const { return L; }
  SPECDYN_GPU_HD double term(int b, int64_t i) const {
    const int DD = D * D;
    const double* Z = b < DD ? Y : B;
    const int p = b < DD ? b : b - DD;
    return Z[(p / D) * L + i] * Z[(p % D) * L + i];
  }
  SPECDYN_GPU_HD void store(int b, double v) const {
    const int DD = D * D;
    if (b < DD)
      YY[b] = v;
    else
      BB[b - DD] = v;
  }
};

struct Advance {
  int64_t L, T1;
  int n, D;
  double c;
  const double* s_row;
  double* ha;
  const double *hq, *m, *Cq, *Cqm, *rt, *ec;
  double *B, *Y;
  SPECDYN_GPU_HD void operator()(int64_t i) const {
    mode_advance(i, L, n, T1, D, c, s_row, ha, hq, m, Cq, Cqm, rt, ec, B, Y);
  }
};

}  // namespace direct

// Runs the recursion with the launcher `ex` (HostExec or CudaExec); the
// inputs of pb are host arrays, the outputs host vectors.
template <class Exec>
DirectSolution solve_direct(Exec& ex, const ModeProblem& pb) {
  using namespace direct;
  const int M = pb.nodes, R = pb.coef, D = pb.input_dim, P = pb.samples, T = pb.steps;
  if (M < 1 || R < 1 || D < 1 || P < 1 || T < 0) throw std::invalid_argument("solve_direct: bad sizes");
  const int64_t L = int64_t(M) * R, T1 = T + 1;
  const double c = pb.c, rD = std::sqrt(double(D));

  DirectSolution out;
  out.steps = T;
  out.nodes = M;
  out.coef = R;
  out.input_dim = D;
  out.s_row.resize(L);
  std::vector<double> a0(L), B0(size_t(D) * L), Y0(size_t(D) * L);
  for (int k = 0; k < M; ++k) {
    const double sw = std::sqrt(pb.weights[k]);
    for (int r = 0; r < R; ++r) {
      const int64_t i = int64_t(k) * R + r;
      out.s_row[i] = pb.s[k];
      a0[i] = sw * pb.a0[i];
      for (int d = 0; d < D; ++d) {
        const double b = sw * pb.B0[(int64_t(k) * D + d) * R + r];
        B0[d * L + i] = b;
        Y0[d * L + i] = pb.s[k] * b;  // u_k^T A(0) W0(0) = s_k zeta_k
      }
    }
  }
  for (int n = 0; n <= T; ++n)
    if (!pb.sharpness_steps || pb.sharpness_steps[n]) out.gram_steps.push_back(n);
  const int S = static_cast<int>(out.gram_steps.size());

  double* s_row = ex.template alloc<double>(L);
  double* ha = ex.template alloc<double>(T1 * L);
  double* hq = ex.template alloc<double>(T1 * L);
  double* B = ex.template alloc<double>(D * L);
  double* Y = ex.template alloc<double>(D * L);
  double* m = ex.template alloc<double>(L);
  double* X = ex.template alloc<double>(int64_t(P) * D);
  double* y = ex.template alloc<double>(P);
  double* pred = ex.template alloc<double>(P);
  double* rs = ex.template alloc<double>(D);
  double* rt = ex.template alloc<double>(D);
  double* ec = ex.template alloc<double>(D);
  double* Cw = ex.template alloc<double>(T1 * T1);
  double* Cq = ex.template alloc<double>(T1 * T1);
  double* Cqm = ex.template alloc<double>(T1 * T1);
  double* beta = ex.template alloc<double>(T1 * D);
  double* loss = ex.template alloc<double>(T1);
  double* mm = ex.template alloc<double>(T1);
  double* YY = ex.template alloc<double>(int64_t(S) * D * D);
  double* BB = ex.template alloc<double>(int64_t(S) * D * D);
  ex.to_device(s_row, out.s_row.data(), L);
  ex.to_device(ha, a0.data(), L);
  ex.to_device(B, B0.data(), D * L);
  ex.to_device(Y, Y0.data(), D * L);
  ex.to_device(X, pb.X, int64_t(P) * D);
  ex.to_device(y, pb.y, P);
  ex.fill(Cw, 0.0, T1 * T1);
  ex.fill(Cq, 0.0, T1 * T1);
  ex.fill(Cqm, 0.0, T1 * T1);

  int si = 0;
  for (int n = 0; n <= T; ++n) {
    ex.reduce(n + 1, CwColumn{ha, Cw, L, T1, n});
    ex.for_each(L, ModeM{L, T1, n, c, s_row, ha, hq, Cw, m});
    double* bn = beta + int64_t(n) * D;
    ex.reduce(D + 1, BetaAndMm{B, m, bn, mm + n, L, D, pb.richness});
    ex.reduce(P, Prediction{X, bn, pred, D, rD});
    ex.reduce(1, Loss{y, pred, loss + n, P});
    ex.reduce(D, Residual{X, y, pred, rs, rt, D, P, rD, c});
    ex.for_each(L, Qhat{B, rs, hq + int64_t(n) * L, L, D});
    ex.reduce(2 * (n + 1) + D, QColumns{hq, m, B, Cq, Cqm, ec, L, T1, n, c});
    if (si < S && out.gram_steps[si] == n) {
      ex.reduce(2 * D * D, Grams{Y, B, YY + int64_t(si) * D * D, BB + int64_t(si) * D * D, L, D});
      ++si;
    }
    if (n == T) break;
    ex.for_each(L, Advance{L, T1, n, D, c, s_row, ha, hq, m, Cq, Cqm, rt, ec, B, Y});
  }

  out.loss.resize(T1);
  out.beta_f.resize(T1 * D);
  out.Cw.resize(T1 * T1);
  out.Cq.resize(T1 * T1);
  out.Cqm.resize(T1 * T1);
  out.mm.resize(T1);
  out.YY.resize(size_t(S) * D * D);
  out.BB.resize(out.YY.size());
  out.hist_a.resize(T1 * L);
  out.hist_q.resize(T1 * L);
  ex.to_host(out.loss.data(), loss, T1);
  ex.to_host(out.beta_f.data(), beta, T1 * D);
  ex.to_host(out.Cw.data(), Cw, T1 * T1);
  ex.to_host(out.Cq.data(), Cq, T1 * T1);
  ex.to_host(out.Cqm.data(), Cqm, T1 * T1);
  ex.to_host(out.mm.data(), mm, T1);
  ex.to_host(out.YY.data(), YY, int64_t(S) * D * D);
  ex.to_host(out.BB.data(), BB, int64_t(S) * D * D);
  ex.to_host(out.hist_a.data(), ha, T1 * L);
  ex.to_host(out.hist_q.data(), hq, T1 * L);
  ex.synchronize();
  for (int64_t j = 0; j < T1; ++j)  // the kernels fill [j, n] for j <= n
    for (int64_t n = 0; n < j; ++n) {
      out.Cw[j * T1 + n] = out.Cw[n * T1 + j];
      out.Cq[j * T1 + n] = out.Cq[n * T1 + j];
    }
  return out;
}

// A ModeSolution (the input of outliers()) from the full histories of a direct
// run: in-order Gram-Schmidt of the rows of omega and qhat with the relative
// tolerance history_tol, as the compressed solver keeps them. The order
// parameters and the sharpness are copied in.
// solve_direct on the host launcher (gpu::HostExec): the device's numbers, on the CPU.
DirectSolution solve_direct_host(const ModeProblem& pb);

ModeSolution solution_from_histories(const DirectSolution& d, const std::vector<double>& sharpness,
                                     double history_tol);

}  // namespace specdyn::dmft
