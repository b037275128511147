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
  const int L = pb.depth, D = pb.input_dim, P = pb.samples, T = pb.steps, T1 = T + 1, C = pb.outputs;
  if (L < 2) throw std::invalid_argument("deep linear DMFT: depth must be >= 2");
  if (D < 1 || P < 1 || T < 0 || C < 1) throw std::invalid_argument("deep linear DMFT: empty problem");
  if (!(pb.output_normalizer >= 1.0)) throw std::invalid_argument("deep linear DMFT: output_normalizer >= 1");
  if (int(pb.sigma.size()) != L + 1) throw std::invalid_argument("deep linear DMFT: sigma needs depth + 1 entries");
  blas::ThreadScope one_thread(1);  // the products here are small: one OpenBLAS thread
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double sqD = std::sqrt(double(D)), c = pb.c / pb.output_normalizer;
  const std::vector<double>& sg = pb.sigma;

  auto sol = std::make_shared<DeepLinearSolution>();
  sol->depth = L;
  sol->input_dim = D;
  sol->samples = P;
  sol->steps = T;
  sol->outputs = C;
  sol->c = c;
  sol->sigma = sg;
  sol->loss.assign(T1, nan);
  sol->beta_f.assign(size_t(T1) * D * C, nan);
  sol->r.assign(size_t(T1) * D * C, nan);
  sol->sharpness.assign(T1, nan);

  // coordinates of a layer's coefficient rows: [u sources Kf | v sources Kb | impulses on u(m), m = 0..T,
  // D each | impulses on v(m), C each]; the first Kg = Kf + Kb are iid standard Gaussians
  struct Layer {
    int Kf, Kb, Kg, K, off_iu, off_iv;
    std::vector<double> H, g;  // (T1, D, K), (T1, C, K)
    SpanBasis up, down;        // spans of the Gaussian parts of H rows (source of u^{l+1}) and g (of v^{l-1})
  };
  std::vector<Layer> lay(L);
  for (int l = 1; l <= L; ++l) {
    Layer& Y = lay[l - 1];
    Y.Kf = l == 1 ? D : T1 * D;
    Y.Kb = l == L ? C : T1 * C;
    Y.Kg = Y.Kf + Y.Kb;
    Y.off_iu = Y.Kg;
    Y.off_iv = Y.Kg + T1 * D;
    Y.K = Y.off_iv + T1 * C;
    Y.H.assign(size_t(T1) * D * Y.K, 0.0);
    Y.g.assign(size_t(T1) * C * Y.K, 0.0);
    if (l < L) Y.up = SpanBasis(Y.Kg, T1 * D, pb.basis_tol);
    if (l > 1) Y.down = SpanBasis(Y.Kg, T1 * C, pb.basis_tol);
  }
  sol->Phi.assign(L, std::vector<double>(size_t(T1) * T1 * D * D, 0.0));
  sol->G.assign(L, std::vector<double>(size_t(T1) * T1 * C * C, 0.0));
  sol->alpha.assign(L, std::vector<double>(size_t(T1) * T1 * D * C, 0.0));
  sol->beta.assign(L, std::vector<double>(size_t(T1) * T1 * C * D, 0.0));
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
    sol->Vb[l].assign(size_t(T1) * C * lay[l].Kb, 0.0);
  }
  sol->ru[0] = D;
  sol->rv[L - 1] = C;

  const int PC = P * C;
  std::vector<double> coef(size_t(T1) * std::max(D, C) + 1), gram(size_t(std::max(D, C)) * T1 * std::max(D, C)),
      f(size_t(P) * C), Mtot(size_t(D) * D), XM(size_t(P) * D), Kt(size_t(PC) * PC);
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
      // alpha^l(n, m)[d, a] = sigma_{l-1}^2 RH^{l-1}(n, m)[d, a] + c (Phi^{l-1}(n, m) r_m)[d, a] / sqrt(D)
      double* al = sol->alpha[l - 1].data() + size_t(n) * T1 * D * C;
      for (int m = 0; m < n; ++m) {
        const double* rm = sol->r.data() + size_t(m) * D * C;
        double* a = al + size_t(m) * D * C;
        if (l == 1) {
          for (int i = 0; i < D * C; ++i) a[i] = c * rm[i] / sqD;
        } else {
          const Layer& Z = lay[l - 2];
          const double* Hz = Z.H.data() + size_t(n) * D * Z.K;
          const double* Ph = sol->Phi[l - 2].data() + (size_t(n) * T1 + m) * D * D;
          for (int d = 0; d < D; ++d)
            for (int b = 0; b < C; ++b) {
              double acc = 0;
              for (int e = 0; e < D; ++e) acc += Ph[size_t(d) * D + e] * rm[size_t(e) * C + b];
              a[size_t(d) * C + b] =
                  sg[l - 1] * sg[l - 1] * Hz[size_t(d) * Z.K + Z.off_iv + size_t(m) * C + b] + c * acc / sqD;
            }
        }
        for (int d = 0; d < D; ++d)
          for (int b = 0; b < C; ++b)
            if (a[size_t(d) * C + b] != 0.0)
              blas::axpy(K, a[size_t(d) * C + b], Y.g.data() + (size_t(m) * C + b) * K, Hn + size_t(d) * K);
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
    // ---- backward sweep: g^l_a(n), l = L..1 (v^l(n) needs G^{l+1}(n, .), hence downward)
    for (int l = L; l >= 1; --l) {
      Layer& Y = lay[l - 1];
      const int K = Y.K;
      double* Vn = sol->Vb[l - 1].data() + size_t(n) * C * Y.Kb;
      double* be = sol->beta[l - 1].data() + size_t(n) * T1 * C * D;
      for (int a = 0; a < C; ++a) {
        double* gn = Y.g.data() + (size_t(n) * C + a) * K;
        if (l == L) {
          gn[Y.Kf + a] = sg[L];
          Vn[size_t(a) * Y.Kb + a] = sg[L];
        } else {
          Layer& Z = lay[l];
          Z.down.express(Z.g.data() + (size_t(n) * C + a) * Z.K, coef.data());
          for (int j = 0; j < Z.down.rank; ++j) {
            gn[Y.Kf + j] = sg[l] * coef[j];
            Vn[size_t(a) * Y.Kb + j] = sg[l] * coef[j];
          }
        }
        gn[Y.off_iv + size_t(n) * C + a] += 1.0;
      }
      if (l < L) sol->rv[l - 1] = lay[l].down.rank;
      // beta^l(n, m)[a, d] = sigma_l^2 Rg^{l+1}(n, m)[a, d] + c sum_b G^{l+1}(m, n)[b, a] r_m[d, b] / sqrt(D)
      for (int m = 0; m < n; ++m) {
        const double* rm = sol->r.data() + size_t(m) * D * C;
        double* b = be + size_t(m) * C * D;
        if (l == L) {
          for (int a = 0; a < C; ++a)
            for (int d = 0; d < D; ++d) b[size_t(a) * D + d] = c * rm[size_t(d) * C + a] / sqD;
        } else {
          const Layer& Z = lay[l];
          const double* Gmn = sol->G[l].data() + (size_t(m) * T1 + n) * C * C;
          for (int a = 0; a < C; ++a) {
            const double* gz = Z.g.data() + (size_t(n) * C + a) * Z.K;
            for (int d = 0; d < D; ++d) {
              double acc = 0;
              for (int e = 0; e < C; ++e) acc += Gmn[size_t(e) * C + a] * rm[size_t(d) * C + e];
              b[size_t(a) * D + d] = sg[l] * sg[l] * gz[Z.off_iu + size_t(m) * D + d] + c * acc / sqD;
            }
          }
        }
        for (int a = 0; a < C; ++a) {
          double* gn = Y.g.data() + (size_t(n) * C + a) * K;
          for (int d = 0; d < D; ++d)
            if (b[size_t(a) * D + d] != 0.0)
              blas::axpy(K, b[size_t(a) * D + d], Y.H.data() + (size_t(m) * D + d) * K, gn);
        }
      }
      // G^l(n, m)[a, b] for m <= n: Gram of the Gaussian parts
      blas::gemm(Op::T, Op::N, C, (n + 1) * C, Y.Kg, 1.0, Y.g.data() + size_t(n) * C * K, K, Y.g.data(), K, 0.0,
                 gram.data(), C);
      double* Gl = sol->G[l - 1].data();
      for (int m = 0; m <= n; ++m)
        for (int a = 0; a < C; ++a)
          for (int b = 0; b < C; ++b) {
            const double v = gram[(size_t(m) * C + b) * C + a];   // <g_a(n) g_b(m)>
            Gl[((size_t(n) * T1 + m) * C + a) * C + b] = v;
            Gl[((size_t(m) * T1 + n) * C + b) * C + a] = v;
          }
    }
    // ---- readout: beta_f = <H^1 g^1^T> / richness (D x C), loss, residual r_n (D x C)
    {
      const Layer& Y = lay[0];
      const double* Hn = Y.H.data() + size_t(n) * D * Y.K;
      const double* gn = Y.g.data() + size_t(n) * C * Y.K;
      double* bf = sol->beta_f.data() + size_t(n) * D * C;
      for (int d = 0; d < D; ++d)
        for (int a = 0; a < C; ++a)
          bf[size_t(d) * C + a] = blas::dot(Y.Kg, Hn + size_t(d) * Y.K, gn + size_t(a) * Y.K) / pb.richness;
      double loss = 0;
      for (int mu = 0; mu < P; ++mu)
        for (int a = 0; a < C; ++a) {
          double fm = 0;
          for (int d = 0; d < D; ++d) fm += X[size_t(mu) * D + d] * bf[size_t(d) * C + a];
          const double e = pb.y[size_t(mu) * C + a] - fm / sqD;
          f[size_t(mu) * C + a] = e;
          loss += e * e;
        }
      loss /= 2.0 * P * pb.output_normalizer;
      sol->loss[n] = loss;
      double* rn = sol->r.data() + size_t(n) * D * C;
      for (int d = 0; d < D; ++d)
        for (int a = 0; a < C; ++a) {
          double acc = 0;
          for (int mu = 0; mu < P; ++mu) acc += X[size_t(mu) * D + d] * f[size_t(mu) * C + a];
          rn[size_t(d) * C + a] = acc / P;
        }
      if (!std::isfinite(loss) || loss > pb.divergence_bound) {
        sol->diverged_step = n;
        break;
      }
    }
    // ---- normalized sharpness: the (P C) x (P C) NTK with blocks
    //      K_ab = X [G^1_ab I + sum_l G^{l+1}_ab Phi^l] X^T / D at (n, n), G^{L+1} = I_C
    if (!pb.sharpness_steps || pb.sharpness_steps[n]) {
      for (int a = 0; a < C; ++a)
        for (int b = 0; b < C; ++b) {
          std::fill(Mtot.begin(), Mtot.end(), 0.0);
          const double G1 = sol->G[0][((size_t(n) * T1 + n) * C + a) * C + b];
          for (int d = 0; d < D; ++d) Mtot[size_t(d) * D + d] = G1;
          for (int l = 1; l <= L; ++l) {
            const double Gn = l == L ? (a == b ? 1.0 : 0.0) : sol->G[l][((size_t(n) * T1 + n) * C + a) * C + b];
            const double* Ph = sol->Phi[l - 1].data() + (size_t(n) * T1 + n) * D * D;
            for (int i = 0; i < D * D; ++i) Mtot[i] += Gn * Ph[i];
          }
          // X is row-major (P, D) = column-major D x P; XM = M X^T (D x P), block = X XM / D
          blas::gemm(Op::N, Op::N, D, P, D, 1.0, Mtot.data(), D, X, D, 0.0, XM.data(), D);
          blas::gemm(Op::T, Op::N, P, P, D, 1.0 / D, X, D, XM.data(), D, 0.0,
                     Kt.data() + size_t(b) * P * PC + size_t(a) * P, PC);
        }
      sol->sharpness[n] = pb.eta0 / pb.output_normalizer * lambda_max(PC, Kt) / P;
    }
  }
  return sol;
}

DeepOutlierResult deep_linear_outliers(const DeepLinearSolution& sol, int layer, const double* s,
                                       const double* weights, int M, const std::vector<int>& steps, int top_k,
                                       double edge, double history_tol) {
  const int L = sol.depth, D = sol.input_dim, T = sol.steps, T1 = T + 1, C = sol.outputs;
  if (layer < 1 || layer > L - 1) throw std::invalid_argument("deep_linear_outliers: layer must be in 1..depth-1");
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double c = sol.c, sqD = std::sqrt(double(D));
  const int last = sol.diverged_step >= 0 ? sol.diverged_step - 1 : T;  // last state with a finite update
  const int l = layer;
  // sources: zeta = u^l (layer l), omega_a = v^{l+1}_a (layer l + 1)
  const std::vector<double>& Uz = sol.Uf[l - 1];
  const std::vector<double>& Vo = sol.Vb[l];
  const int ru = sol.ru[l - 1], rv = sol.rv[l], uz = sol.ru_max[l - 1], vo = sol.rv_max[l];
  const int R = ru + rv;
  const std::vector<double>& alpha = sol.alpha[l - 1];  // forward memory of layer l, (D x C) blocks
  const std::vector<double>& beta = sol.beta[l];        // backward memory of layer l + 1, (C x D) blocks
  const std::vector<double>& Phi = sol.Phi[l - 1];      // Phi^l
  const std::vector<double>& Gup = sol.G[l];            // G^{l+1}, (C x C) blocks
  // update parts of the two sides of the bulk:
  //   e gets sum_a ea(n, m)[:, a] f_a(m),      ea = c Phi^l(n, m) r_m / sqrt(D)                  (D x C)
  //   b_a gets sum_b fb(n, m)[a, b] r_m[:, b] . a(m),  fb[a, b] = c G^{l+1}(m, n)[b, a] / sqrt(D)  (C x C)
  std::vector<double> ea(size_t(T1) * T1 * D * C, 0.0), fb(size_t(T1) * T1 * C * C, 0.0);
  for (int n = 0; n <= last; ++n)
    for (int m = 0; m < n; ++m) {
      const double* rm = sol.r.data() + size_t(m) * D * C;
      const double* Ph = Phi.data() + (size_t(n) * T1 + m) * D * D;
      const double* Gmn = Gup.data() + (size_t(m) * T1 + n) * C * C;
      double* E = ea.data() + (size_t(n) * T1 + m) * D * C;
      double* F = fb.data() + (size_t(n) * T1 + m) * C * C;
      for (int d = 0; d < D; ++d)
        for (int a = 0; a < C; ++a) {
          double acc = 0;
          for (int e = 0; e < D; ++e) acc += Ph[size_t(d) * D + e] * rm[size_t(e) * C + a];
          E[size_t(d) * C + a] = c * acc / sqD;
        }
      for (int a = 0; a < C; ++a)
        for (int b = 0; b < C; ++b) F[size_t(a) * C + b] = c * Gmn[size_t(b) * C + a] / sqD;
    }
  const size_t LR = size_t(M) * R;
  const int TC = T1 * C;
  // histories, one row per (step, output): f_a(n) and qhat_a(n) = r_n[:, a] . a(n) / sqrt(D)
  std::vector<double> Fh(size_t(TC) * LR, 0.0), Ah(size_t(TC) * LR, 0.0);
  std::vector<double> chk(size_t(M) * T1 * 4, 0.0);  // per node: |a|^2, |e|^2, |f|^2, |b|^2
#pragma omp parallel for schedule(dynamic)
  for (int k = 0; k < M; ++k) {
    std::vector<double> a(size_t(T1) * D * R, 0.0), e(size_t(T1) * D * R, 0.0), f(size_t(T1) * C * R, 0.0),
        b(size_t(T1) * C * R, 0.0), ra(size_t(C) * R);
    const double sk = s[k], sw = std::sqrt(weights[k]);
    for (int n = 0; n <= last; ++n) {
      double* an = a.data() + size_t(n) * D * R;
      double* en = e.data() + size_t(n) * D * R;
      double* fn = f.data() + size_t(n) * C * R;
      double* bn = b.data() + size_t(n) * C * R;
      for (int d = 0; d < D; ++d) {
        const double* z = Uz.data() + (size_t(n) * D + d) * uz;
        std::copy(z, z + ru, an + size_t(d) * R);
      }
      for (int m = 0; m < n; ++m) {
        const double* al = alpha.data() + (size_t(n) * T1 + m) * D * C;
        for (int d = 0; d < D; ++d)
          for (int x = 0; x < C; ++x) {
            const double w = al[size_t(d) * C + x];
            if (w == 0.0) continue;
            const double* bm = b.data() + (size_t(m) * C + x) * R;
            for (int j = 0; j < R; ++j) an[size_t(d) * R + j] += w * bm[j];
          }
      }
      for (int i = 0; i < D * R; ++i) en[i] = sk * an[i];
      for (int m = 0; m < n; ++m) {
        const double* E = ea.data() + (size_t(n) * T1 + m) * D * C;
        for (int d = 0; d < D; ++d)
          for (int x = 0; x < C; ++x) {
            const double w = E[size_t(d) * C + x];
            if (w == 0.0) continue;
            const double* fm = f.data() + (size_t(m) * C + x) * R;
            for (int j = 0; j < R; ++j) en[size_t(d) * R + j] += w * fm[j];
          }
      }
      for (int x = 0; x < C; ++x) {
        const double* om = Vo.data() + (size_t(n) * C + x) * vo;
        std::copy(om, om + rv, fn + size_t(x) * R + ru);
      }
      for (int m = 0; m < n; ++m) {
        const double* be = beta.data() + (size_t(n) * T1 + m) * C * D;
        const double* em = e.data() + size_t(m) * D * R;
        for (int x = 0; x < C; ++x)
          for (int d = 0; d < D; ++d) {
            const double w = be[size_t(x) * D + d];
            if (w == 0.0) continue;
            for (int j = 0; j < R; ++j) fn[size_t(x) * R + j] += w * em[size_t(d) * R + j];
          }
      }
      for (int i = 0; i < C * R; ++i) bn[i] = sk * fn[i];
      for (int m = 0; m < n; ++m) {
        // ra[y] = r_m[:, y] . a(m)
        const double* rm = sol.r.data() + size_t(m) * D * C;
        const double* am = a.data() + size_t(m) * D * R;
        std::fill(ra.begin(), ra.end(), 0.0);
        for (int y = 0; y < C; ++y)
          for (int d = 0; d < D; ++d) {
            const double w = rm[size_t(d) * C + y];
            for (int j = 0; j < R; ++j) ra[size_t(y) * R + j] += w * am[size_t(d) * R + j];
          }
        const double* F = fb.data() + (size_t(n) * T1 + m) * C * C;
        for (int x = 0; x < C; ++x)
          for (int y = 0; y < C; ++y) {
            const double w = F[size_t(x) * C + y];
            if (w == 0.0) continue;
            for (int j = 0; j < R; ++j) bn[size_t(x) * R + j] += w * ra[size_t(y) * R + j];
          }
      }
      const double* rn = sol.r.data() + size_t(n) * D * C;
      for (int x = 0; x < C; ++x) {
        double* Fr = Fh.data() + (size_t(n) * C + x) * LR + size_t(k) * R;
        double* Ar = Ah.data() + (size_t(n) * C + x) * LR + size_t(k) * R;
        for (int j = 0; j < R; ++j) {
          double q = 0;
          for (int d = 0; d < D; ++d) q += rn[size_t(d) * C + x] * an[size_t(d) * R + j];
          Ar[j] = sw * q / sqD;
          Fr[j] = sw * fn[size_t(x) * R + j];
        }
      }
      double* ck = chk.data() + (size_t(k) * T1 + n) * 4;
      for (int i = 0; i < D * R; ++i) {
        ck[0] += an[i] * an[i];
        ck[1] += en[i] * en[i];
      }
      for (int i = 0; i < C * R; ++i) {
        ck[2] += fn[i] * fn[i];
        ck[3] += bn[i] * bn[i];
      }
    }
  }
  blas::ThreadScope one_thread(1);  // the products here are small: one OpenBLAS thread
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
  // compressed histories in the layout of the one-bulk solver (omega -> f, qhat -> r . a / sqrt(D)),
  // one row per (step, output): the outliers of A_l(n) are those of history row n C
  const int rows = (last + 1) * C;
  ModeSolution ms;
  ms.steps = rows - 1;
  ms.nodes = M;
  ms.coef = R;
  ms.input_dim = D;
  ms.cap = TC;
  ms.Ca.assign(size_t(TC) * TC, 0.0);
  ms.Cqc.assign(size_t(TC) * TC, 0.0);
  ms.rank_a_at.assign(TC, 0);
  ms.rank_q_at.assign(TC, 0);
  SpanBasis ba(int(LR), TC, history_tol), bq(int(LR), TC, history_tol);
  for (int i = 0; i < rows; ++i) {
    ba.express(Fh.data() + size_t(i) * LR, ms.Ca.data() + size_t(i) * TC);
    bq.express(Ah.data() + size_t(i) * LR, ms.Cqc.data() + size_t(i) * TC);
    ms.rank_a_at[i] = ba.rank;
    ms.rank_q_at[i] = bq.rank;
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
    OutlierResult o = outliers(ms, n * C, top_k, c, edge);
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
