// One-bulk DMFT: the mode recursion (level one) and the outlier solver
// (level two). Equations and notation: THEORY.md section 2 and dmft.hpp.
#include "specdyn/dmft.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "specdyn/blas.hpp"

namespace specdyn::dmft {

using blas::Op;

namespace {

// The solver's BLAS calls are small (vectors of M R): one OpenBLAS thread is
// faster than waking a pool for each. Restored on exit.
struct OneBlasThread {
  int saved;
  OneBlasThread() : saved(blas::get_num_threads()) { blas::set_num_threads(1); }
  ~OneBlasThread() { blas::set_num_threads(saved); }
};

// An orthonormal row basis Q (rank x L, row-major) that grows on demand.
struct RowBasis {
  int L = 0, cap = 0, rank = 0;
  std::vector<double> Q, work, c2;

  RowBasis(int L_, int cap_) : L(L_), cap(cap_), work(L_), c2(cap_) { Q.reserve(size_t(L_) * 16); }

  // coef (length cap, zero beyond rank) such that x ~ coef^T Q; appends the
  // normalized residual when it exceeds tol * |x|. One Gram-Schmidt pass gives
  // the coefficients to rounding; a second pass (and two more on the unit
  // residual) only when the residual becomes a new row.
  void project(const double* x, double tol, double* coef) {
    std::fill(coef, coef + cap, 0.0);
    std::copy(x, x + L, work.begin());
    const double xn = blas::nrm2(L, x);
    // below a few roundoffs the residual is noise: a row made of it would not be orthogonal
    const double thresh = std::max(tol, 64.0 * std::numeric_limits<double>::epsilon()) * xn;
    auto pass = [&](double scale) {
      blas::gemv(Op::T, L, rank, 1.0, Q.data(), L, work.data(), 0.0, c2.data());
      blas::gemv(Op::N, L, rank, -1.0, Q.data(), L, c2.data(), 1.0, work.data());
      for (int i = 0; i < rank; ++i) coef[i] += scale * c2[i];
    };
    if (rank > 0) pass(1.0);
    double rn = blas::nrm2(L, work.data());
    if (rank >= cap || !(rn > thresh)) return;
    if (rank > 0) {
      pass(1.0);
      rn = blas::nrm2(L, work.data());
      if (!(rn > thresh)) return;
    }
    for (int i = 0; i < L; ++i) work[i] /= rn;
    if (rank > 0) {
      pass(rn);
      pass(rn);
    }
    const double un = blas::nrm2(L, work.data());
    Q.resize(size_t(rank + 1) * L);
    double* row = Q.data() + size_t(rank) * L;
    for (int i = 0; i < L; ++i) row[i] = work[i] / un;
    coef[rank] = rn * un;
    ++rank;
  }
};

double top_eig_sym(int n, std::vector<double>& A) {
  std::vector<double> w(n);
  if (blas::syevd(n, A.data(), n, w.data()) != 0) return std::numeric_limits<double>::quiet_NaN();
  return w[n - 1];
}

}  // namespace

ModeSolution solve_modes(const ModeProblem& pb) {
  const int M = pb.nodes, R = pb.coef, D = pb.input_dim, P = pb.samples, T = pb.steps;
  if (M < 1 || R < 1 || D < 1 || P < 1 || T < 0) throw std::invalid_argument("solve_modes: bad sizes");
  OneBlasThread one_thread;
  const int L = M * R;
  const int T1 = T + 1;
  const double c = pb.c, rD = std::sqrt(double(D));
  const double nan = std::numeric_limits<double>::quiet_NaN();

  ModeSolution out;
  out.steps = T;
  out.nodes = M;
  out.coef = R;
  out.input_dim = D;
  out.cap = std::min(T1, L);
  const int cap = out.cap;
  out.loss.assign(T1, 0.0);
  out.beta_f.assign(size_t(T1) * D, 0.0);
  out.Cw.assign(size_t(T1) * T1, 0.0);
  out.Cq.assign(size_t(T1) * T1, 0.0);
  out.Cqm.assign(size_t(T1) * T1, 0.0);
  out.sharpness.assign(T1, nan);
  out.Ca.assign(size_t(T1) * cap, 0.0);
  out.Cqc.assign(size_t(T1) * cap, 0.0);
  out.s_row.resize(L);
  out.rank_a_at.assign(T1, 0);
  out.rank_q_at.assign(T1, 0);

  // scaled state: every node multiplied by sqrt(weight_k), so <f g> = f . g
  std::vector<double> a(L), B(size_t(D) * L), Y(size_t(D) * L);
  for (int k = 0; k < M; ++k) {
    const double sw = std::sqrt(pb.weights[k]);
    for (int r = 0; r < R; ++r) {
      out.s_row[k * R + r] = pb.s[k];
      a[k * R + r] = sw * pb.a0[k * R + r];
      for (int d = 0; d < D; ++d) {
        const double b = sw * pb.B0[(size_t(k) * D + d) * R + r];
        B[size_t(d) * L + k * R + r] = b;
        Y[size_t(d) * L + k * R + r] = pb.s[k] * b;   // u_k^T A(0) W0(0) = s_k zeta_k
      }
    }
  }
  const double* sr = out.s_row.data();

  // Sigma^{1/2}, Sigma = X^T X / P (column-major view of X is D x P)
  std::vector<double> Sroot(size_t(D) * D, 0.0);
  {
    std::vector<double> Sig(size_t(D) * D), ev(D);
    blas::gemm(Op::N, Op::T, D, D, P, 1.0 / P, pb.X, D, pb.X, D, 0.0, Sig.data(), D);
    blas::syevd(D, Sig.data(), D, ev.data());
    for (int i = 0; i < D; ++i)
      for (int j = 0; j < D; ++j) {
        double acc = 0;
        for (int l = 0; l < D; ++l) acc += Sig[l * D + i] * std::sqrt(std::max(ev[l], 0.0)) * Sig[l * D + j];
        Sroot[j * D + i] = acc;
      }
  }

  // Grams <y y^T>, <zeta zeta^T> (D x D): exact at t = 0, then updated with the
  // rank-two changes of Y and B (O(D L) per step instead of O(D^2 L))
  std::vector<double> YY(size_t(D) * D), BB(size_t(D) * D);
  blas::gemm(Op::T, Op::N, D, D, L, 1.0, Y.data(), L, Y.data(), L, 0.0, YY.data(), D);
  blas::gemm(Op::T, Op::N, D, D, L, 1.0, B.data(), L, B.data(), L, 0.0, BB.data(), D);
  std::vector<double> rt(D), ec(D), Yv(D), Ya(D);

  RowBasis ba(L, cap), bq(L, cap);
  std::vector<double> m(L), qh(L), anew(L), vec(L);
  std::vector<double> beta(D), r(D), zq(D), pred(P), delta(P);
  std::vector<double> col(T1), tmp(cap);
  std::vector<double> T2(size_t(D) * D), Mm(size_t(D) * D);

  for (int n = 0; n <= T; ++n) {
    double* Can = out.Ca.data() + size_t(n) * cap;
    double* Cqn = out.Cqc.data() + size_t(n) * cap;
    // 1. omega(n) into the history; Cw(j, n) for j <= n
    ba.project(a.data(), pb.history_tol, Can);
    const int ra = ba.rank;
    out.rank_a_at[n] = ra;
    blas::gemv(Op::T, ra, n + 1, 1.0, out.Ca.data(), cap, Can, 0.0, col.data());
    for (int j = 0; j <= n; ++j) out.Cw[size_t(j) * T1 + n] = out.Cw[size_t(n) * T1 + j] = col[j];
    // 2. m(n) = s omega(n) + c sum_{j<n} Cw(j, n) qhat(j)
    for (int i = 0; i < L; ++i) m[i] = sr[i] * a[i];
    if (n > 0 && bq.rank > 0) {
      blas::gemv(Op::N, bq.rank, n, 1.0, out.Cqc.data(), cap, col.data(), 0.0, tmp.data());
      blas::gemv(Op::N, L, bq.rank, c, bq.Q.data(), L, tmp.data(), 1.0, m.data());
    }
    // 3. beta_f, loss, r = X^T Delta / P
    blas::gemv(Op::T, L, D, 1.0 / pb.richness, B.data(), L, m.data(), 0.0, beta.data());
    std::copy(beta.begin(), beta.end(), out.beta_f.begin() + size_t(n) * D);
    blas::gemv(Op::T, D, P, 1.0 / rD, pb.X, D, beta.data(), 0.0, pred.data());
    double l2 = 0;
    for (int mu = 0; mu < P; ++mu) {
      delta[mu] = pb.y[mu] - pred[mu];
      l2 += delta[mu] * delta[mu];
    }
    out.loss[n] = l2 / (2.0 * P);
    blas::gemv(Op::N, D, P, 1.0 / P, pb.X, D, delta.data(), 0.0, r.data());
    // 4. qhat(n) = zeta(n) . r / sqrt(D); Cq(j, n), Cqm(j, n) = <qhat(j) m(n)>
    blas::gemv(Op::N, L, D, 1.0 / rD, B.data(), L, r.data(), 0.0, qh.data());
    bq.project(qh.data(), pb.history_tol, Cqn);
    const int rq = bq.rank;
    out.rank_q_at[n] = rq;
    blas::gemv(Op::T, rq, n + 1, 1.0, out.Cqc.data(), cap, Cqn, 0.0, col.data());
    for (int j = 0; j <= n; ++j) out.Cq[size_t(j) * T1 + n] = out.Cq[size_t(n) * T1 + j] = col[j];
    blas::gemv(Op::T, L, rq, 1.0, bq.Q.data(), L, m.data(), 0.0, tmp.data());
    blas::gemv(Op::T, rq, n + 1, 1.0, out.Cqc.data(), cap, tmp.data(), 0.0, col.data());
    for (int j = 0; j <= n; ++j) out.Cqm[size_t(j) * T1 + n] = col[j];
    const double cqm_nn = col[n];
    // 5. normalized sharpness: eta0 lambda_max(Sigma^1/2 Mm Sigma^1/2),
    //    Mm = (<y y^T> + Cw(n,n) <zeta zeta^T> + <m m> I) / D
    if (!pb.sharpness_steps || pb.sharpness_steps[n]) {
      const double mm = blas::dot(L, m.data(), m.data());
      const double cw = out.Cw[size_t(n) * T1 + n];
      for (int i = 0; i < D * D; ++i) Mm[i] = (YY[i] + cw * BB[i]) / D;
      for (int i = 0; i < D; ++i) Mm[i * D + i] += mm / D;
      blas::gemm(Op::N, Op::N, D, D, D, 1.0, Sroot.data(), D, Mm.data(), D, 0.0, T2.data(), D);
      blas::gemm(Op::N, Op::N, D, D, D, 1.0, T2.data(), D, Sroot.data(), D, 0.0, Mm.data(), D);
      out.sharpness[n] = pb.eta0 * top_eig_sym(D, Mm);
    }
    if (n == T) break;
    // 6. updates, all from the state at step n
    blas::gemv(Op::T, L, D, 1.0, B.data(), L, qh.data(), 0.0, zq.data());       // q^T W0 / N
    // u^T A A^T w = s m + c sum_{j<n} Cqm(j, n) omega(j)
    for (int i = 0; i < L; ++i) vec[i] = sr[i] * m[i] + c * cqm_nn * a[i];
    // omega(n+1) = omega + c [s qhat + c sum_{j<n} Cq(j, n) omega(j)]
    for (int i = 0; i < L; ++i) anew[i] = a[i] + c * sr[i] * qh[i];
    if (n > 0) {
      for (int j = 0; j < n; ++j) col[j] = out.Cqm[size_t(j) * T1 + n];
      blas::gemv(Op::N, ra, n, 1.0, out.Ca.data(), cap, col.data(), 0.0, tmp.data());
      blas::gemv(Op::N, L, ra, c, ba.Q.data(), L, tmp.data(), 1.0, vec.data());
      for (int j = 0; j < n; ++j) col[j] = out.Cq[size_t(j) * T1 + n];
      blas::gemv(Op::N, ra, n, 1.0, out.Ca.data(), cap, col.data(), 0.0, tmp.data());
      blas::gemv(Op::N, L, ra, c * c, ba.Q.data(), L, tmp.data(), 1.0, anew.data());
    }
    // y += rt vec^T + ec omega^T with rt = c r / sqrt D, ec = c q^T W0 / N, and
    // vec = u^T A A^T w + c <qhat m> omega
    for (int d = 0; d < D; ++d) {
      rt[d] = c * r[d] / rD;
      ec[d] = c * zq[d];
    }
    blas::gemv(Op::T, L, D, 1.0, Y.data(), L, vec.data(), 0.0, Yv.data());
    blas::gemv(Op::T, L, D, 1.0, Y.data(), L, a.data(), 0.0, Ya.data());
    const double vv = blas::dot(L, vec.data(), vec.data()), aa = blas::dot(L, a.data(), a.data()),
                 va = blas::dot(L, vec.data(), a.data()), mm2 = blas::dot(L, m.data(), m.data());
    for (int i = 0; i < D; ++i)
      for (int j = 0; j < D; ++j) {
        YY[j * D + i] += rt[i] * Yv[j] + Yv[i] * rt[j] + ec[i] * Ya[j] + Ya[i] * ec[j] + vv * rt[i] * rt[j] +
                         aa * ec[i] * ec[j] + va * (rt[i] * ec[j] + ec[i] * rt[j]);
        // zeta += rt m^T, and B m = richness * beta_f
        BB[j * D + i] += pb.richness * (rt[i] * beta[j] + beta[i] * rt[j]) + mm2 * rt[i] * rt[j];
      }
    blas::ger(L, D, 1.0, vec.data(), rt.data(), Y.data(), L);
    blas::ger(L, D, 1.0, a.data(), ec.data(), Y.data(), L);
    blas::ger(L, D, 1.0, m.data(), rt.data(), B.data(), L);
    a.swap(anew);
  }
  out.rank_a = ba.rank;
  out.rank_q = bq.rank;
  out.Qa = std::move(ba.Q);
  out.Qq = std::move(bq.Q);
  return out;
}

// ---- level two ------------------------------------------------------------------

namespace {

struct Determinant {
  int M, r;
  double c;
  const double* s;
  const std::vector<double>& theta;
  std::vector<double> Nuu, Nuv, Nvv;  // (M, r, r) per-node Grams of the spike rows
  std::vector<double> wz, ws, G, F, ev;

  Determinant(int M_, int r_, double c_, const double* s_, const std::vector<double>& th)
      : M(M_), r(r_), c(c_), s(s_), theta(th), wz(M_), ws(M_), G(size_t(r_) * r_),
        F(size_t(4) * r_ * r_), ev(2 * r_) {}

  // F(z) = Cm^{-1} - G(z) (derivative = false) or G'(z) (derivative = true), column-major 2r x 2r
  void build(double z, bool derivative) {
    for (int k = 0; k < M; ++k) {
      const double d = z * z - s[k] * s[k];
      if (derivative) {
        wz[k] = -(z * z + s[k] * s[k]) / (d * d);
        ws[k] = -2.0 * z * s[k] / (d * d);
      } else {
        wz[k] = z / d;
        ws[k] = s[k] / d;
      }
    }
    const int n2 = 2 * r, rr = r * r;
    std::fill(F.begin(), F.end(), 0.0);
    auto put = [&](const std::vector<double>& N, const std::vector<double>& w, int ro, int co, bool trans) {
      blas::gemv(Op::N, rr, M, 1.0, N.data(), rr, w.data(), 0.0, G.data());
      for (int j = 0; j < r; ++j)
        for (int i = 0; i < r; ++i) {
          const double g = trans ? G[i * r + j] : G[j * r + i];
          F[size_t(co + j) * n2 + ro + i] = derivative ? g : -g;
        }
    };
    put(Nuu, wz, 0, 0, false);
    put(Nvv, wz, r, r, false);
    put(Nuv, ws, 0, r, false);
    put(Nuv, ws, r, 0, true);
    if (!derivative)  // the Grams carry sqrt(c theta_i c theta_j): Cm^{-1} becomes [[0, I], [I, 0]]
      for (int i = 0; i < r; ++i) {
        F[size_t(r + i) * n2 + i] += 1.0;
        F[size_t(i) * n2 + r + i] += 1.0;
      }
  }
  // eigenvalues of F(z), ascending (F overwritten by eigenvectors)
  void eig(double z) {
    build(z, false);
    blas::syevd(2 * r, F.data(), 2 * r, ev.data());
  }
};

}  // namespace

OutlierResult outliers(const ModeSolution& sol, int step, int top_k, double c, double edge, double spike_tol) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  OutlierResult res;
  res.values.assign(top_k, nan);
  res.overlap_left.assign(top_k, nan);
  res.overlap_right.assign(top_k, nan);
  if (step < 0 || step > sol.steps) throw std::invalid_argument("outliers: step out of range");
  const int n = step, M = sol.nodes, R = sol.coef, L = M * R, cap = sol.cap;
  if (n == 0 || c == 0.0) return res;
  OneBlasThread one_thread;
  // the basis only grows: rows 0..n-1 use its first rank_at[n-1] rows
  const int ra = sol.rank_a_at[n - 1], rq = sol.rank_q_at[n - 1];
  if (ra == 0 || rq == 0) return res;
  // U V^T = Qa^T (Ca^T Cqc) Qq on rows 0..n-1: SVD of the small core
  std::vector<double> K(size_t(ra) * rq);
  blas::gemm(Op::N, Op::T, ra, rq, n, 1.0, sol.Ca.data(), cap, sol.Cqc.data(), cap, 0.0, K.data(), ra);
  const int mn = std::min(ra, rq);
  std::vector<double> th(mn), Uk(size_t(ra) * mn), VTk(size_t(mn) * rq);
  if (blas::gesdd(ra, rq, K.data(), ra, th.data(), Uk.data(), ra, VTk.data(), mn) != 0) return res;
  res.spikes = th;
  int r = 0;
  while (r < mn && th[r] > spike_tol * th[0] && th[r] > 0.0) ++r;
  res.rank = r;
  if (r == 0) return res;
  std::vector<double> theta(th.begin(), th.begin() + r);
  // spike rows per node: tu = Qa^T U[:, :r], tv = Qq^T V[:, :r] (column-major L x r)
  std::vector<double> tu(size_t(L) * r), tv(size_t(L) * r);
  blas::gemm(Op::N, Op::N, L, r, ra, 1.0, sol.Qa.data(), L, Uk.data(), ra, 0.0, tu.data(), L);
  blas::gemm(Op::N, Op::T, L, r, rq, 1.0, sol.Qq.data(), L, VTk.data(), mn, 0.0, tv.data(), L);
  // node Grams of the node weights are folded in (rows are scaled by sqrt(weight))
  std::vector<double> s(M);
  for (int k = 0; k < M; ++k) s[k] = sol.s_row[size_t(k) * R];
  Determinant det(M, r, c, s.data(), theta);
  const size_t rr = size_t(r) * r;
  det.Nuu.resize(rr * M);
  det.Nuv.resize(rr * M);
  det.Nvv.resize(rr * M);
  // Congruence by diag(sqrt(c theta)) keeps the inertia and the roots of det F but
  // makes F = [[0, I], [I, 0]] - G~ well conditioned however small the weakest spike.
  for (int i = 0; i < r; ++i) {
    const double sc = std::sqrt(c * theta[i]);
    for (int l = 0; l < L; ++l) {
      tu[size_t(i) * L + l] *= sc;
      tv[size_t(i) * L + l] *= sc;
    }
  }
  for (int k = 0; k < M; ++k) {
    const double* u = tu.data() + size_t(k) * R;
    const double* v = tv.data() + size_t(k) * R;
    blas::gemm(Op::T, Op::N, r, r, R, 1.0, u, L, u, L, 0.0, det.Nuu.data() + rr * k, r);
    blas::gemm(Op::T, Op::N, r, r, R, 1.0, u, L, v, L, 0.0, det.Nuv.data() + rr * k, r);
    blas::gemm(Op::T, Op::N, r, r, R, 1.0, v, L, v, L, 0.0, det.Nvv.data() + rr * k, r);
  }
  // count at the edge: #neg(F) - r outliers above it
  det.eig(edge);
  int neg = 0;
  for (double e : det.ev) neg += e < 0.0;
  const int count = std::min(neg - r, top_k);
  if (count <= 0) return res;
  double smax = 0;
  for (int k = 0; k < M; ++k) smax = std::max(smax, s[k]);
  for (int k = 0; k < count; ++k) {
    const int idx = r + k;  // this eigenvalue of F crosses zero at the (k+1)-th outlier
    auto g = [&](double z) { det.eig(z); return det.ev[idx]; };
    double lo = edge, glo = g(lo);
    double hi = std::max(smax, edge) + c * theta[0] * 1.01 + 1e-12, ghi = g(hi);
    for (int it = 0; it < 60 && ghi <= 0.0; ++it) { hi = edge + 2.0 * (hi - edge); ghi = g(hi); }
    // Illinois false position (fl, fh: scaled copies of g for the interpolation),
    // a bisection every fourth step so that the bracket always shrinks; g increases with z
    double fl = glo, fh = ghi, zbest = lo, gbest = std::abs(glo);
    if (std::abs(ghi) < gbest) { zbest = hi; gbest = std::abs(ghi); }
    int side = 0;
    for (int it = 0; it < 400 && hi - lo > 2e-16 * hi; ++it) {
      double zm = (lo * fh - hi * fl) / (fh - fl);
      if (!(zm > lo && zm < hi) || it % 4 == 3) zm = 0.5 * (lo + hi);
      const double gm = g(zm);
      if (std::abs(gm) < gbest) { zbest = zm; gbest = std::abs(gm); }
      if (gm == 0.0) break;
      if (gm < 0.0) {
        lo = zm; fl = gm;
        if (side == -1) fh *= 0.5;
        side = -1;
      } else {
        hi = zm; fh = gm;
        if (side == 1) fl *= 0.5;
        side = 1;
      }
    }
    const double z = zbest;
    res.values[k] = z;
    // residue: null vector phi of F(z), normalized by -phi^T G'(z) phi = 1
    det.eig(z);
    std::vector<double> phi(det.F.begin() + size_t(idx) * 2 * r, det.F.begin() + size_t(idx + 1) * 2 * r);
    det.build(z, true);
    double nrm = 0;
    for (int j = 0; j < 2 * r; ++j)
      for (int i = 0; i < 2 * r; ++i) nrm -= phi[i] * det.F[size_t(j) * 2 * r + i] * phi[j];
    if (nrm > 0) {
      // u_spike_1 . u_hat / sqrt 2 = (Cm^{-1} phi)_u1 = phi~_v1 / sqrt(c theta_1), same for v
      const double sc = 1.0 / std::sqrt(nrm * c * theta[0]);
      const double ol = phi[r] * sc;
      const double orr = phi[0] * sc;
      res.overlap_left[k] = 2.0 * ol * ol;
      res.overlap_right[k] = 2.0 * orr * orr;
    }
  }
  return res;
}

}  // namespace specdyn::dmft
