// Deep linear DMFT: level one (kernels, responses, loss, sharpness) and the
// per-bulk mode recursion feeding the one-bulk outlier solver (level two).
// Equations: dmft_deep_linear.hpp and docs/theory.md.
#include "specdyn/dmft_deep_linear.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "specdyn/blas.hpp"
#include "specdyn/interrupt.hpp"

namespace specdyn::dmft {

using blas::Op;

namespace {

struct OneBlasThread {  // the products here are small: one OpenBLAS thread, restored on exit
  int saved;
  OneBlasThread() : saved(blas::get_num_threads()) { blas::set_num_threads(1); }
  ~OneBlasThread() { blas::set_num_threads(saved); }
};

// Orthonormal rows spanning the rows expressed so far. express(x) writes the
// coefficients of x in the basis (room for `cap`), first appending the
// normalized residual when it exceeds tol |x|. Gram-Schmidt passes repeat
// until the residual stops shrinking, so a small residual is still orthogonal
// to rounding when it becomes a row.
struct SpanBasis {
  int dim = 0, cap = 0, rank = 0;
  double tol = 0;
  std::vector<double> Q, w, c2;

  SpanBasis() = default;
  SpanBasis(int dim_, int cap_, double tol_)
      : dim(dim_), cap(cap_), tol(tol_), Q(size_t(cap_) * dim_), w(dim_), c2(std::max(cap_, 1)) {}

  void orthogonalize(double* coef, double scale) {
    double prev = blas::nrm2(dim, w.data());
    for (int pass = 0; pass < 4 && rank > 0 && prev > 0; ++pass) {
      blas::gemv(Op::T, dim, rank, 1.0, Q.data(), dim, w.data(), 0.0, c2.data());
      blas::gemv(Op::N, dim, rank, -1.0, Q.data(), dim, c2.data(), 1.0, w.data());
      for (int i = 0; i < rank; ++i) coef[i] += scale * c2[i];
      const double now = blas::nrm2(dim, w.data());
      if (now > 0.5 * prev) break;
      prev = now;
    }
  }

  void express(const double* x, double* coef) {
    std::fill(coef, coef + cap, 0.0);
    const double xn = blas::nrm2(dim, x);
    if (!(xn > 0.0)) return;
    std::copy(x, x + dim, w.begin());
    orthogonalize(coef, 1.0);
    double rn = blas::nrm2(dim, w.data());
    if (rank >= cap || !(rn > std::max(tol, 1e-15) * xn)) return;
    for (int i = 0; i < dim; ++i) w[i] /= rn;
    orthogonalize(coef, rn);  // the normalized residual once more: orthogonal to rounding
    const double un = blas::nrm2(dim, w.data());
    double* row = Q.data() + size_t(rank) * dim;
    for (int i = 0; i < dim; ++i) row[i] = w[i] / un;
    coef[rank] = rn * un;
    ++rank;
  }
};

// Largest eigenvalue of a symmetric P x P matrix (column-major, overwritten).
double lambda_max(int P, std::vector<double>& A) {
  std::vector<double> ev(P);
  if (blas::syevd(P, A.data(), P, ev.data()) != 0) return std::numeric_limits<double>::quiet_NaN();
  return ev[P - 1];
}

}  // namespace

std::shared_ptr<DeepLinearSolution> solve_deep_linear(const DeepLinearProblem& pb) {
  const int L = pb.depth, D = pb.input_dim, P = pb.samples, T = pb.steps, T1 = T + 1;
  if (L < 2) throw std::invalid_argument("deep linear DMFT: depth must be >= 2");
  if (D < 1 || P < 1 || T < 0) throw std::invalid_argument("deep linear DMFT: empty problem");
  if (int(pb.sigma.size()) != L + 1) throw std::invalid_argument("deep linear DMFT: sigma needs depth + 1 entries");
  OneBlasThread one_thread;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double sqD = std::sqrt(double(D)), c = pb.c;
  const std::vector<double>& sg = pb.sigma;

  auto sol = std::make_shared<DeepLinearSolution>();
  sol->depth = L;
  sol->input_dim = D;
  sol->samples = P;
  sol->steps = T;
  sol->c = c;
  sol->sigma = sg;
  sol->loss.assign(T1, nan);
  sol->beta_f.assign(size_t(T1) * D, nan);
  sol->r.assign(size_t(T1) * D, nan);
  sol->sharpness.assign(T1, nan);

  // coordinates of a layer's coefficient rows: [u sources Kf | v sources Kb | impulses on u(m), m = 0..T,
  // D each | impulses on v(m)]; the first Kg = Kf + Kb are iid standard Gaussians
  struct Layer {
    int Kf, Kb, Kg, K, off_iu, off_iv;
    std::vector<double> H, g;  // (T1, D, K), (T1, K)
    SpanBasis up, down;        // spans of the Gaussian parts of H rows (source of u^{l+1}) and g (of v^{l-1})
  };
  std::vector<Layer> lay(L);
  for (int l = 1; l <= L; ++l) {
    Layer& Y = lay[l - 1];
    Y.Kf = l == 1 ? D : T1 * D;
    Y.Kb = l == L ? 1 : T1;
    Y.Kg = Y.Kf + Y.Kb;
    Y.off_iu = Y.Kg;
    Y.off_iv = Y.Kg + T1 * D;
    Y.K = Y.off_iv + T1;
    Y.H.assign(size_t(T1) * D * Y.K, 0.0);
    Y.g.assign(size_t(T1) * Y.K, 0.0);
    if (l < L) Y.up = SpanBasis(Y.Kg, T1 * D, pb.basis_tol);
    if (l > 1) Y.down = SpanBasis(Y.Kg, T1, pb.basis_tol);
  }
  sol->Phi.assign(L, std::vector<double>(size_t(T1) * T1 * D * D, 0.0));
  sol->G.assign(L, std::vector<double>(size_t(T1) * T1, 0.0));
  sol->alpha.assign(L, std::vector<double>(size_t(T1) * T1 * D, 0.0));
  sol->beta.assign(L, std::vector<double>(size_t(T1) * T1 * D, 0.0));
  sol->Uf.resize(L);
  sol->Vb.resize(L);
  sol->ru.assign(L, 0);
  sol->rv.assign(L, 0);
  sol->ru_max.assign(L, 0);
  sol->rv_max.assign(L, 0);
  for (int l = 0; l < L; ++l) {
    sol->ru_max[l] = lay[l].Kf;
    sol->rv_max[l] = lay[l].Kb;
    sol->Uf[l].assign(size_t(T1) * D * lay[l].Kf, 0.0);
    sol->Vb[l].assign(size_t(T1) * lay[l].Kb, 0.0);
  }
  sol->ru[0] = D;
  sol->rv[L - 1] = 1;

  std::vector<double> coef(size_t(T1) * D + 1), gram(size_t(D) * T1 * D), f(P), Mtot(size_t(D) * D),
      XM(size_t(P) * D), Kt(size_t(P) * P);
  const double* X = pb.X;

  for (int n = 0; n <= T; ++n) {
    interrupt::check();  // between time steps (serial here): Ctrl-C from the bindings
    // ---- forward sweep: H^l(n), l = 1..L (u^l(n) needs Phi^{l-1}(n, .), hence upward)
    for (int l = 1; l <= L; ++l) {
      Layer& Y = lay[l - 1];
      const int K = Y.K;
      double* Hn = Y.H.data() + size_t(n) * D * K;
      double* Un = sol->Uf[l - 1].data() + size_t(n) * D * Y.Kf;
      if (l == 1) {
        for (int d = 0; d < D; ++d) {
          Hn[size_t(d) * K + d] = sg[0];
          Un[size_t(d) * Y.Kf + d] = sg[0];
        }
      } else {
        Layer& Z = lay[l - 2];
        for (int d = 0; d < D; ++d) {
          Z.up.express(Z.H.data() + (size_t(n) * D + d) * Z.K, coef.data());
          for (int j = 0; j < Z.up.rank; ++j) {
            Hn[size_t(d) * K + j] = sg[l - 1] * coef[j];
            Un[size_t(d) * Y.Kf + j] = sg[l - 1] * coef[j];
          }
        }
        sol->ru[l - 1] = Z.up.rank;
      }
      for (int d = 0; d < D; ++d) Hn[size_t(d) * K + Y.off_iu + size_t(n) * D + d] += 1.0;
      // alpha^l(n, m) = sigma_{l-1}^2 RH^{l-1}(n, m) + c Phi^{l-1}(n, m) r_m / sqrt(D)
      double* al = sol->alpha[l - 1].data() + size_t(n) * T1 * D;
      for (int m = 0; m < n; ++m) {
        const double* rm = sol->r.data() + size_t(m) * D;
        double* a = al + size_t(m) * D;
        if (l == 1) {
          for (int d = 0; d < D; ++d) a[d] = c * rm[d] / sqD;
        } else {
          const Layer& Z = lay[l - 2];
          const double* Hz = Z.H.data() + size_t(n) * D * Z.K;
          const double* Ph = sol->Phi[l - 2].data() + (size_t(n) * T1 + m) * D * D;
          for (int d = 0; d < D; ++d) {
            double acc = 0;
            for (int e = 0; e < D; ++e) acc += Ph[size_t(d) * D + e] * rm[e];
            a[d] = sg[l - 1] * sg[l - 1] * Hz[size_t(d) * Z.K + Z.off_iv + m] + c * acc / sqD;
          }
        }
        for (int d = 0; d < D; ++d)
          if (a[d] != 0.0) blas::axpy(K, a[d], Y.g.data() + size_t(m) * K, Hn + size_t(d) * K);
      }
      // Phi^l(n, m), m <= n: Gram of the Gaussian parts
      blas::gemm(Op::T, Op::N, D, (n + 1) * D, Y.Kg, 1.0, Hn, K, Y.H.data(), K, 0.0, gram.data(), D);
      double* Ph = sol->Phi[l - 1].data();
      for (int m = 0; m <= n; ++m)
        for (int d = 0; d < D; ++d)
          for (int e = 0; e < D; ++e) {
            const double v = gram[(size_t(m) * D + e) * D + d];
            Ph[((size_t(n) * T1 + m) * D + d) * D + e] = v;
            Ph[((size_t(m) * T1 + n) * D + e) * D + d] = v;
          }
    }
    // ---- backward sweep: g^l(n), l = L..1 (v^l(n) needs G^{l+1}(n, .), hence downward)
    for (int l = L; l >= 1; --l) {
      Layer& Y = lay[l - 1];
      const int K = Y.K;
      double* gn = Y.g.data() + size_t(n) * K;
      double* Vn = sol->Vb[l - 1].data() + size_t(n) * Y.Kb;
      if (l == L) {
        gn[Y.Kf] = sg[L];
        Vn[0] = sg[L];
      } else {
        Layer& Z = lay[l];
        Z.down.express(Z.g.data() + size_t(n) * Z.K, coef.data());
        for (int j = 0; j < Z.down.rank; ++j) {
          gn[Y.Kf + j] = sg[l] * coef[j];
          Vn[j] = sg[l] * coef[j];
        }
        sol->rv[l - 1] = Z.down.rank;
      }
      gn[Y.off_iv + n] += 1.0;
      // beta^l(n, m) = sigma_l^2 Rg^{l+1}(n, m) + c G^{l+1}(m, n) r_m / sqrt(D)
      double* be = sol->beta[l - 1].data() + size_t(n) * T1 * D;
      for (int m = 0; m < n; ++m) {
        const double* rm = sol->r.data() + size_t(m) * D;
        double* b = be + size_t(m) * D;
        if (l == L) {
          for (int d = 0; d < D; ++d) b[d] = c * rm[d] / sqD;
        } else {
          const Layer& Z = lay[l];
          const double* gz = Z.g.data() + size_t(n) * Z.K;
          const double Gmn = sol->G[l][size_t(m) * T1 + n];
          for (int d = 0; d < D; ++d)
            b[d] = sg[l] * sg[l] * gz[Z.off_iu + size_t(m) * D + d] + c * Gmn * rm[d] / sqD;
        }
        for (int d = 0; d < D; ++d)
          if (b[d] != 0.0) blas::axpy(K, b[d], Y.H.data() + (size_t(m) * D + d) * K, gn);
      }
      blas::gemv(Op::T, Y.Kg, n + 1, 1.0, Y.g.data(), K, gn, 0.0, gram.data());
      for (int m = 0; m <= n; ++m) {
        sol->G[l - 1][size_t(n) * T1 + m] = gram[m];
        sol->G[l - 1][size_t(m) * T1 + n] = gram[m];
      }
    }
    // ---- readout: beta_f = <H^1 g^1> / richness, loss, residual r_n
    {
      const Layer& Y = lay[0];
      const double* Hn = Y.H.data() + size_t(n) * D * Y.K;
      const double* gn = Y.g.data() + size_t(n) * Y.K;
      double* bf = sol->beta_f.data() + size_t(n) * D;
      for (int d = 0; d < D; ++d) bf[d] = blas::dot(Y.Kg, Hn + size_t(d) * Y.K, gn) / pb.richness;
      double loss = 0;
      for (int mu = 0; mu < P; ++mu) {
        double fm = 0;
        for (int d = 0; d < D; ++d) fm += X[size_t(mu) * D + d] * bf[d];
        f[mu] = pb.y[mu] - fm / sqD;
        loss += f[mu] * f[mu];
      }
      loss /= 2.0 * P;
      sol->loss[n] = loss;
      double* rn = sol->r.data() + size_t(n) * D;
      for (int d = 0; d < D; ++d) {
        double acc = 0;
        for (int mu = 0; mu < P; ++mu) acc += X[size_t(mu) * D + d] * f[mu];
        rn[d] = acc / P;
      }
      if (!std::isfinite(loss) || loss > pb.divergence_bound) {
        sol->diverged_step = n;
        break;
      }
    }
    // ---- normalized sharpness: K = X [G^1 I + sum_l G^{l+1} Phi^l] X^T / D at (n, n)
    if (!pb.sharpness_steps || pb.sharpness_steps[n]) {
      std::fill(Mtot.begin(), Mtot.end(), 0.0);
      const double G1 = sol->G[0][size_t(n) * T1 + n];
      for (int d = 0; d < D; ++d) Mtot[size_t(d) * D + d] = G1;
      for (int l = 1; l <= L; ++l) {
        const double Gn = l == L ? 1.0 : sol->G[l][size_t(n) * T1 + n];
        const double* Ph = sol->Phi[l - 1].data() + (size_t(n) * T1 + n) * D * D;
        for (int i = 0; i < D * D; ++i) Mtot[i] += Gn * Ph[i];
      }
      // X is row-major (P, D) = column-major D x P; XM = M X^T (D x P), K = X XM / D
      blas::gemm(Op::N, Op::N, D, P, D, 1.0, Mtot.data(), D, X, D, 0.0, XM.data(), D);
      blas::gemm(Op::T, Op::N, P, P, D, 1.0 / D, X, D, XM.data(), D, 0.0, Kt.data(), P);
      sol->sharpness[n] = pb.eta0 * lambda_max(P, Kt) / P;
    }
  }
  return sol;
}

DeepOutlierResult deep_linear_outliers(const DeepLinearSolution& sol, int layer, const double* s,
                                       const double* weights, int M, const std::vector<int>& steps, int top_k,
                                       double edge, double history_tol) {
  const int L = sol.depth, D = sol.input_dim, T = sol.steps, T1 = T + 1;
  if (layer < 1 || layer > L - 1) throw std::invalid_argument("deep_linear_outliers: layer must be in 1..depth-1");
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double c = sol.c, sqD = std::sqrt(double(D));
  const int last = sol.diverged_step >= 0 ? sol.diverged_step - 1 : T;  // last state with a finite update
  const int l = layer;
  // sources: zeta = u^l (layer l), omega = v^{l+1} (layer l + 1)
  const std::vector<double>& Uz = sol.Uf[l - 1];
  const std::vector<double>& Vo = sol.Vb[l];
  const int ru = sol.ru[l - 1], rv = sol.rv[l], uz = sol.ru_max[l - 1], vo = sol.rv_max[l];
  const int R = ru + rv;
  const std::vector<double>& alpha = sol.alpha[l - 1];  // forward memory of layer l
  const std::vector<double>& beta = sol.beta[l];        // backward memory of layer l + 1
  const std::vector<double>& Phi = sol.Phi[l - 1];      // Phi^l
  const std::vector<double>& Gup = sol.G[l];            // G^{l+1}
  // update parts of the two sides of the bulk: e gets c Phi^l r f / sqrt(D), b gets c G^{l+1} r . a / sqrt(D)
  std::vector<double> ea(size_t(T1) * T1 * D, 0.0), fb(size_t(T1) * T1 * D, 0.0);
  for (int n = 0; n <= last; ++n)
    for (int m = 0; m < n; ++m) {
      const double* rm = sol.r.data() + size_t(m) * D;
      const double* Ph = Phi.data() + (size_t(n) * T1 + m) * D * D;
      const double Gmn = Gup[size_t(m) * T1 + n];
      for (int d = 0; d < D; ++d) {
        double acc = 0;
        for (int e = 0; e < D; ++e) acc += Ph[size_t(d) * D + e] * rm[e];
        ea[(size_t(n) * T1 + m) * D + d] = c * acc / sqD;
        fb[(size_t(n) * T1 + m) * D + d] = c * Gmn * rm[d] / sqD;
      }
    }
  const size_t LR = size_t(M) * R;
  std::vector<double> Fh(size_t(T1) * LR, 0.0), Ah(size_t(T1) * LR, 0.0);
  std::vector<double> chk(size_t(M) * T1 * 4, 0.0);  // per node: |a|^2, |e|^2, f^2, b^2
#pragma omp parallel for schedule(dynamic)
  for (int k = 0; k < M; ++k) {
    std::vector<double> a(size_t(T1) * D * R, 0.0), e(size_t(T1) * D * R, 0.0), f(size_t(T1) * R, 0.0),
        b(size_t(T1) * R, 0.0);
    const double sk = s[k], sw = std::sqrt(weights[k]);
    for (int n = 0; n <= last; ++n) {
      double* an = a.data() + size_t(n) * D * R;
      double* en = e.data() + size_t(n) * D * R;
      double* fn = f.data() + size_t(n) * R;
      double* bn = b.data() + size_t(n) * R;
      for (int d = 0; d < D; ++d) {
        const double* z = Uz.data() + (size_t(n) * D + d) * uz;
        std::copy(z, z + ru, an + size_t(d) * R);
      }
      for (int m = 0; m < n; ++m) {
        const double* al = alpha.data() + (size_t(n) * T1 + m) * D;
        const double* bm = b.data() + size_t(m) * R;
        for (int d = 0; d < D; ++d)
          if (al[d] != 0.0)
            for (int j = 0; j < R; ++j) an[size_t(d) * R + j] += al[d] * bm[j];
      }
      for (int i = 0; i < D * R; ++i) en[i] = sk * an[i];
      for (int m = 0; m < n; ++m) {
        const double* ek = ea.data() + (size_t(n) * T1 + m) * D;
        const double* fm = f.data() + size_t(m) * R;
        for (int d = 0; d < D; ++d)
          if (ek[d] != 0.0)
            for (int j = 0; j < R; ++j) en[size_t(d) * R + j] += ek[d] * fm[j];
      }
      const double* om = Vo.data() + size_t(n) * vo;
      std::copy(om, om + rv, fn + ru);
      for (int m = 0; m < n; ++m) {
        const double* be = beta.data() + (size_t(n) * T1 + m) * D;
        const double* em = e.data() + size_t(m) * D * R;
        for (int d = 0; d < D; ++d)
          if (be[d] != 0.0)
            for (int j = 0; j < R; ++j) fn[j] += be[d] * em[size_t(d) * R + j];
      }
      for (int j = 0; j < R; ++j) bn[j] = sk * fn[j];
      for (int m = 0; m < n; ++m) {
        const double* fk = fb.data() + (size_t(n) * T1 + m) * D;
        const double* am = a.data() + size_t(m) * D * R;
        for (int d = 0; d < D; ++d)
          if (fk[d] != 0.0)
            for (int j = 0; j < R; ++j) bn[j] += fk[d] * am[size_t(d) * R + j];
      }
      const double* rn = sol.r.data() + size_t(n) * D;
      double* Fr = Fh.data() + size_t(n) * LR + size_t(k) * R;
      double* Ar = Ah.data() + size_t(n) * LR + size_t(k) * R;
      for (int j = 0; j < R; ++j) {
        double q = 0;
        for (int d = 0; d < D; ++d) q += rn[d] * an[size_t(d) * R + j];
        Ar[j] = sw * q / sqD;
        Fr[j] = sw * fn[j];
      }
      double* ck = chk.data() + (size_t(k) * T1 + n) * 4;
      for (int i = 0; i < D * R; ++i) {
        ck[0] += an[i] * an[i];
        ck[1] += en[i] * en[i];
      }
      for (int j = 0; j < R; ++j) {
        ck[2] += fn[j] * fn[j];
        ck[3] += bn[j] * bn[j];
      }
    }
  }
  OneBlasThread one_thread;
  DeepOutlierResult res;
  res.coef = R;
  res.phi_in.assign(T1, nan);
  res.phi_out.assign(T1, nan);
  res.g_out.assign(T1, nan);
  res.g_in.assign(T1, nan);
  for (int n = 0; n <= last; ++n) {
    double acc[4] = {0, 0, 0, 0};
    for (int k = 0; k < M; ++k)
      for (int i = 0; i < 4; ++i) acc[i] += weights[k] * chk[(size_t(k) * T1 + n) * 4 + i];
    res.phi_in[n] = acc[0];
    res.phi_out[n] = acc[1];
    res.g_out[n] = acc[2];
    res.g_in[n] = acc[3];
  }
  // compressed histories in the layout of the one-bulk solver (omega -> f, qhat -> r . a / sqrt(D))
  ModeSolution ms;
  ms.steps = last;
  ms.nodes = M;
  ms.coef = R;
  ms.input_dim = D;
  ms.cap = T1;
  ms.Ca.assign(size_t(T1) * T1, 0.0);
  ms.Cqc.assign(size_t(T1) * T1, 0.0);
  ms.rank_a_at.assign(T1, 0);
  ms.rank_q_at.assign(T1, 0);
  SpanBasis ba(int(LR), T1, history_tol), bq(int(LR), T1, history_tol);
  for (int n = 0; n <= last; ++n) {
    ba.express(Fh.data() + size_t(n) * LR, ms.Ca.data() + size_t(n) * T1);
    bq.express(Ah.data() + size_t(n) * LR, ms.Cqc.data() + size_t(n) * T1);
    ms.rank_a_at[n] = ba.rank;
    ms.rank_q_at[n] = bq.rank;
  }
  ms.rank_a = ba.rank;
  ms.rank_q = bq.rank;
  ms.Qa.assign(ba.Q.begin(), ba.Q.begin() + size_t(ba.rank) * LR);
  ms.Qq.assign(bq.Q.begin(), bq.Q.begin() + size_t(bq.rank) * LR);
  ms.s_row.resize(LR);
  for (int k = 0; k < M; ++k) std::fill(ms.s_row.begin() + size_t(k) * R, ms.s_row.begin() + size_t(k + 1) * R, s[k]);
  const size_t ns = steps.size();
  res.values.assign(ns * top_k, nan);
  res.overlap_left.assign(ns * top_k, nan);
  res.overlap_right.assign(ns * top_k, nan);
  res.spikes.assign(ns * top_k, nan);
  for (size_t i = 0; i < ns; ++i) {
    const int n = steps[i];
    if (n < 0 || n > last) continue;
    OutlierResult o = outliers(ms, n, top_k, c, edge);
    for (int k = 0; k < top_k; ++k) {
      res.values[i * top_k + k] = o.values[k];
      res.overlap_left[i * top_k + k] = o.overlap_left[k];
      res.overlap_right[i * top_k + k] = o.overlap_right[k];
      res.spikes[i * top_k + k] = k < int(o.spikes.size()) ? c * o.spikes[k] : (n == 0 ? 0.0 : nan);
    }
  }
  return res;
}

}  // namespace specdyn::dmft
