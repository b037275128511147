// One-bulk DMFT: the mode recursion (level one) and the outlier solver
// (level two). Equations and notation: docs/theory.md, One-bulk model, and dmft.hpp.
#include "specdyn/dmft.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "specdyn/blas.hpp"
#include "specdyn/interrupt.hpp"
#include "specdyn/rng.hpp"

namespace specdyn::dmft {

using blas::Op;

namespace {

// An orthonormal row basis Q (rank x L, row-major) that grows on demand.
// Callers compute coef = Q x together with other products of Q (so that Q is
// read once per step) and call finish() with recon = Q^T coef when the
// residual may be large enough to become a new row. Whether it may is decided
// by a sketch: kSketch random unit-variance directions z_i kept orthogonal to
// Q give (L / kSketch) sum_i (x . z_i)^2 = |(I - P) x|^2 chi^2_k / k, so the
// explicit residual (one more pass over Q) is needed only on the few steps
// where the history grows.
struct RowBasis {
  static constexpr int kSketch = 8;
  int L = 0, cap = 0, rank = 0;
  std::vector<double> Q, work, c2, Z;

  RowBasis(int L_, int cap_, uint64_t stream) : L(L_), cap(cap_), work(L_), c2(cap_), Z(size_t(kSketch) * L_) {
    Q.reserve(size_t(L_) * 16);
    rng::normal_fill(Z.data(), Z.size(), 0x0b1b, stream, 1.0 / std::sqrt(double(L_)));
  }

  // below a few roundoffs a residual is noise: a row made of it would not be orthogonal
  static double threshold(double xn, double tol) {
    return std::max(tol, 64.0 * std::numeric_limits<double>::epsilon()) * xn;
  }

  // false when |(I - P) x| is certainly below the threshold (a miss needs
  // chi^2_8 / 8 < 1e-4, probability ~1e-15, and would drop a residual of ~tol anyway)
  bool may_grow(const double* x, double tol) const {
    if (rank == 0) return true;
    if (rank >= cap) return false;
    const double th = threshold(blas::nrm2(L, x), tol);
    double sk[kSketch], est = 0;
    blas::gemv(Op::T, L, kSketch, 1.0, Z.data(), L, x, 0.0, sk);
    for (int i = 0; i < kSketch; ++i) est += sk[i] * sk[i];
    est *= double(L) / kSketch;
    return est > 1e-4 * th * th;
  }

  // Given coef[:rank] = Q x and recon = Q^T coef: checks the residual and
  // appends it as a new row when above tol |x| (two more Gram-Schmidt passes
  // on it). Returns true when a row was added (its coefficient is coef[rank - 1]).
  bool finish(const double* x, const double* recon, double tol, double* coef) {
    const double thresh = threshold(blas::nrm2(L, x), tol);
    for (int i = 0; i < L; ++i) work[i] = x[i] - recon[i];
    double rn = blas::nrm2(L, work.data());
    if (rank >= cap || !(rn > thresh)) return false;
    auto pass = [&](double scale) {
      blas::gemv(Op::T, L, rank, 1.0, Q.data(), L, work.data(), 0.0, c2.data());
      blas::gemv(Op::N, L, rank, -1.0, Q.data(), L, c2.data(), 1.0, work.data());
      for (int i = 0; i < rank; ++i) coef[i] += scale * c2[i];
    };
    if (rank > 0) {
      pass(1.0);
      rn = blas::nrm2(L, work.data());
      if (!(rn > thresh)) return false;
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
    for (int i = 0; i < kSketch; ++i) {   // keep the sketch orthogonal to Q
      double* z = Z.data() + size_t(i) * L;
      blas::axpy(L, -blas::dot(L, row, z), row, z);
    }
    return true;
  }
};

// Columns of a row basis per chunk of basis_pass (a gemm would copy Q into
// packed panels first; a chunk of a rank-64 basis is 512 KiB, within L2).
constexpr int kChunk = 1024;

#if defined(__x86_64__) && defined(__GNUC__)
#define SPECDYN_DMFT_AVX2 1
// The same pass as one sweep over Q with AVX2/FMA: every element of Q is loaded
// once and used by all vectors while in a register (rows in pairs, so each
// chunk of out_j is loaded and stored once per two rows). The BLAS path reads a
// chunk of Q once per vector; this is ~2x fewer loads and stores.
// Sums are in a fixed order (independent of threads and of the machine's load).
template <int NC, int ND>
__attribute__((target("avx2,fma"))) void basis_pass_avx2(const double* Q, int rank, int L, const double* K,
                                                           int ldk, double* out, const double* X, double* Kd) {
  constexpr int kC = 512;   // columns per chunk: out_j and x chunks stay in L1
  for (int i = 0; i < rank && ND; ++i) Kd[i] = 0.0;
  for (int l0 = 0; l0 < L; l0 += kC) {
    const int nl = std::min(kC, L - l0), n8 = nl / 8 * 8;
    double* o[3] = {NC > 0 ? out + l0 : nullptr, NC > 1 ? out + size_t(L) + l0 : nullptr,
                    NC > 2 ? out + size_t(2) * L + l0 : nullptr};
    const double* x = ND ? X + l0 : nullptr;
    for (int j = 0; j < NC; ++j) std::fill(o[j], o[j] + nl, 0.0);
    int i = 0;
    for (; i + 2 <= rank; i += 2) {
      const double* q0 = Q + size_t(i) * L + l0;
      const double* q1 = q0 + L;
      __m256d k0[3], k1[3];
      for (int j = 0; j < NC; ++j) {
        k0[j] = _mm256_set1_pd(K[size_t(j) * ldk + i]);
        k1[j] = _mm256_set1_pd(K[size_t(j) * ldk + i + 1]);
      }
      __m256d d00 = _mm256_setzero_pd(), d01 = d00, d10 = d00, d11 = d00;
      for (int l = 0; l < n8; l += 8) {
        const __m256d a0 = _mm256_loadu_pd(q0 + l), a1 = _mm256_loadu_pd(q0 + l + 4);
        const __m256d b0 = _mm256_loadu_pd(q1 + l), b1 = _mm256_loadu_pd(q1 + l + 4);
        for (int j = 0; j < NC; ++j) {
          __m256d u0 = _mm256_loadu_pd(o[j] + l), u1 = _mm256_loadu_pd(o[j] + l + 4);
          u0 = _mm256_fmadd_pd(k0[j], a0, u0);
          u1 = _mm256_fmadd_pd(k0[j], a1, u1);
          u0 = _mm256_fmadd_pd(k1[j], b0, u0);
          u1 = _mm256_fmadd_pd(k1[j], b1, u1);
          _mm256_storeu_pd(o[j] + l, u0);
          _mm256_storeu_pd(o[j] + l + 4, u1);
        }
        if (ND) {
          const __m256d x0 = _mm256_loadu_pd(x + l), x1 = _mm256_loadu_pd(x + l + 4);
          d00 = _mm256_fmadd_pd(a0, x0, d00);
          d01 = _mm256_fmadd_pd(a1, x1, d01);
          d10 = _mm256_fmadd_pd(b0, x0, d10);
          d11 = _mm256_fmadd_pd(b1, x1, d11);
        }
      }
      double s0 = 0, s1 = 0;
      for (int l = n8; l < nl; ++l) {
        for (int j = 0; j < NC; ++j) o[j][l] += K[size_t(j) * ldk + i] * q0[l] + K[size_t(j) * ldk + i + 1] * q1[l];
        if (ND) {
          s0 += q0[l] * x[l];
          s1 += q1[l] * x[l];
        }
      }
      if (ND) {
        alignas(32) double t0[4], t1[4];
        _mm256_store_pd(t0, _mm256_add_pd(d00, d01));
        _mm256_store_pd(t1, _mm256_add_pd(d10, d11));
        Kd[i] += ((t0[0] + t0[1]) + (t0[2] + t0[3])) + s0;
        Kd[i + 1] += ((t1[0] + t1[1]) + (t1[2] + t1[3])) + s1;
      }
    }
    for (; i < rank; ++i) {   // odd rank: the last row alone
      const double* q0 = Q + size_t(i) * L + l0;
      double s0 = 0;
      for (int l = 0; l < nl; ++l) {
        for (int j = 0; j < NC; ++j) o[j][l] += K[size_t(j) * ldk + i] * q0[l];
        if (ND) s0 += q0[l] * x[l];
      }
      if (ND) Kd[i] += s0;
    }
  }
}

bool have_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#endif

// One row y of Y: yv = y . v, ya = y . a (before the update), then y += rt v + ec a.
#ifdef SPECDYN_DMFT_AVX2
__attribute__((target("avx2,fma"))) void y_row_update_avx2(int L, double* y, const double* v, const double* a,
                                                            double rt, double ec, double& yv, double& ya) {
  const int n8 = L / 8 * 8;
  const __m256d r4 = _mm256_set1_pd(rt), e4 = _mm256_set1_pd(ec);
  __m256d v0 = _mm256_setzero_pd(), v1 = v0, a0 = v0, a1 = v0;
  for (int l = 0; l < n8; l += 8) {
    __m256d y0 = _mm256_loadu_pd(y + l), y1 = _mm256_loadu_pd(y + l + 4);
    const __m256d p0 = _mm256_loadu_pd(v + l), p1 = _mm256_loadu_pd(v + l + 4);
    const __m256d q0 = _mm256_loadu_pd(a + l), q1 = _mm256_loadu_pd(a + l + 4);
    v0 = _mm256_fmadd_pd(y0, p0, v0);
    v1 = _mm256_fmadd_pd(y1, p1, v1);
    a0 = _mm256_fmadd_pd(y0, q0, a0);
    a1 = _mm256_fmadd_pd(y1, q1, a1);
    y0 = _mm256_fmadd_pd(r4, p0, y0);
    y1 = _mm256_fmadd_pd(r4, p1, y1);
    _mm256_storeu_pd(y + l, _mm256_fmadd_pd(e4, q0, y0));
    _mm256_storeu_pd(y + l + 4, _mm256_fmadd_pd(e4, q1, y1));
  }
  double sv = 0, sa = 0;
  for (int l = n8; l < L; ++l) {
    sv += y[l] * v[l];
    sa += y[l] * a[l];
    y[l] += rt * v[l] + ec * a[l];
  }
  alignas(32) double t[4], u[4];
  _mm256_store_pd(t, _mm256_add_pd(v0, v1));
  _mm256_store_pd(u, _mm256_add_pd(a0, a1));
  yv = ((t[0] + t[1]) + (t[2] + t[3])) + sv;
  ya = ((u[0] + u[1]) + (u[2] + u[3])) + sa;
}
#endif

void y_row_update(int L, double* y, const double* v, const double* a, double rt, double ec, double& yv,
                  double& ya) {
#ifdef SPECDYN_DMFT_AVX2
  if (have_avx2()) return y_row_update_avx2(L, y, v, a, rt, ec, yv, ya);
#endif
  yv = blas::dot(L, y, v);
  ya = blas::dot(L, y, a);
  blas::axpy(L, rt, v, y);
  blas::axpy(L, ec, a, y);
}

// qh = sum_d rs_d B_d (d ascending), then, when update, B_d += rt_d m; B is D x L
// row-major. Column blocks: a block of qh stays in registers over all rows.
#ifdef SPECDYN_DMFT_AVX2
__attribute__((target("avx2,fma"))) void qhat_and_zeta_update_avx2(int L, int D, double* B, const double* rs,
                                                                    const double* rt, const double* m,
                                                                    bool update, double* qh) {
  const int n8 = L / 8 * 8;
  for (int l = 0; l < n8; l += 8) {
    __m256d h0 = _mm256_setzero_pd(), h1 = h0;
    const __m256d m0 = _mm256_loadu_pd(m + l), m1 = _mm256_loadu_pd(m + l + 4);
    for (int d = 0; d < D; ++d) {
      double* b = B + size_t(d) * L + l;
      const __m256d b0 = _mm256_loadu_pd(b), b1 = _mm256_loadu_pd(b + 4);
      const __m256d s4 = _mm256_set1_pd(rs[d]);
      h0 = _mm256_fmadd_pd(s4, b0, h0);
      h1 = _mm256_fmadd_pd(s4, b1, h1);
      if (update) {
        const __m256d t4 = _mm256_set1_pd(rt[d]);
        _mm256_storeu_pd(b, _mm256_fmadd_pd(t4, m0, b0));
        _mm256_storeu_pd(b + 4, _mm256_fmadd_pd(t4, m1, b1));
      }
    }
    _mm256_storeu_pd(qh + l, h0);
    _mm256_storeu_pd(qh + l + 4, h1);
  }
  for (int l = n8; l < L; ++l) {
    double h = 0;
    for (int d = 0; d < D; ++d) {
      double* b = B + size_t(d) * L + l;
      h += rs[d] * *b;
      if (update) *b += rt[d] * m[l];
    }
    qh[l] = h;
  }
}
#endif

void qhat_and_zeta_update(int L, int D, double* B, const double* rs, const double* rt, const double* m,
                          bool update, double* qh) {
#ifdef SPECDYN_DMFT_AVX2
  if (have_avx2()) return qhat_and_zeta_update_avx2(L, D, B, rs, rt, m, update, qh);
#endif
  std::fill(qh, qh + L, 0.0);
  for (int d = 0; d < D; ++d) {
    double* Bd = B + size_t(d) * L;
    blas::axpy(L, rs[d], Bd, qh);
    if (update) blas::axpy(L, rt[d], m, Bd);
  }
}

// One pass over Q (rank x L):
//   out_j = Q^T K_j  (K_j = K + j * ldk, length rank; out_j = out + j * L), j < ncomb
//   Kd_j  = Q x_j    (x_j = X + j * L; Kd_j = Kd + j * ldkd, length rank),   j < ndots
// in column chunks: a chunk of Q (rank x kChunk) stays in L2 cache while every
// vector uses it, and the chunk of each out_j stays in L1 while all rows add to it.
void basis_pass(const double* Q, int rank, int L, const double* K, int ldk, int ncomb, double* out,
                const double* X, int ndots, double* Kd, int ldkd) {
  const int chunk = kChunk;
  if (rank == 0) {
    std::fill(out, out + size_t(ncomb) * L, 0.0);
    return;
  }
#ifdef SPECDYN_DMFT_AVX2
  if (have_avx2() && ncomb <= 3 && ndots <= 1) {
    using Fn = void (*)(const double*, int, int, const double*, int, double*, const double*, double*);
    static constexpr Fn table[4][2] = {{basis_pass_avx2<0, 0>, basis_pass_avx2<0, 1>},
                                       {basis_pass_avx2<1, 0>, basis_pass_avx2<1, 1>},
                                       {basis_pass_avx2<2, 0>, basis_pass_avx2<2, 1>},
                                       {basis_pass_avx2<3, 0>, basis_pass_avx2<3, 1>}};
    table[ncomb][ndots](Q, rank, L, K, ldk, out, X, Kd);
    return;
  }
#endif
  for (int l0 = 0; l0 < L; l0 += chunk) {
    const int nl = std::min(chunk, L - l0);
    for (int j = 0; j < ncomb; ++j)
      blas::gemv(Op::N, nl, rank, 1.0, Q + l0, L, K + size_t(j) * ldk, 0.0, out + size_t(j) * L + l0);
    for (int j = 0; j < ndots; ++j)
      blas::gemv(Op::T, nl, rank, 1.0, Q + l0, L, X + size_t(j) * L + l0, l0 == 0 ? 0.0 : 1.0,
                 Kd + size_t(j) * ldkd);
  }
}

// Sigma^{1/2} (D x D, symmetric), Sigma = X^T X / P; X row-major (P, D) is column-major D x P
std::vector<double> covariance_root(const double* X, int P, int D) {
  std::vector<double> Sroot(size_t(D) * D, 0.0), Sig(size_t(D) * D), ev(D);
  blas::gemm(Op::N, Op::T, D, D, P, 1.0 / P, X, D, X, D, 0.0, Sig.data(), D);
  blas::syevd(D, Sig.data(), D, ev.data());
  for (int i = 0; i < D; ++i)
    for (int j = 0; j < D; ++j) {
      double acc = 0;
      for (int l = 0; l < D; ++l) acc += Sig[l * D + i] * std::sqrt(std::max(ev[l], 0.0)) * Sig[l * D + j];
      Sroot[j * D + i] = acc;
    }
  return Sroot;
}

double top_eig_sym(int n, std::vector<double>& A) {
  std::vector<double> w(n);
  if (blas::syevd(n, A.data(), n, w.data()) != 0) return std::numeric_limits<double>::quiet_NaN();
  return w[n - 1];
}

}  // namespace

ModeSolution solve_modes(const ModeProblem& pb) {
  const int M = pb.nodes, R = pb.coef, D = pb.input_dim, P = pb.samples, T = pb.steps;
  if (M < 1 || R < 1 || D < 1 || P < 1 || T < 0) throw std::invalid_argument("solve_modes: bad sizes");
  // The solver's BLAS calls are small (vectors of M R): one OpenBLAS thread is faster than waking a pool for each.
  blas::ThreadScope one_thread(1);
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

  const std::vector<double> Sroot = covariance_root(pb.X, P, D);

  // Grams <y y^T>, <zeta zeta^T> (D x D): exact at t = 0, then updated with the
  // rank-two changes of Y and B (O(D L) per step instead of O(D^2 L))
  std::vector<double> YY(size_t(D) * D), BB(size_t(D) * D);
  blas::gemm(Op::T, Op::N, D, D, L, 1.0, Y.data(), L, Y.data(), L, 0.0, YY.data(), D);
  blas::gemm(Op::T, Op::N, D, D, L, 1.0, B.data(), L, B.data(), L, 0.0, BB.data(), D);
  std::vector<double> rt(D), ec(D), Yv(D), Ya(D);

  RowBasis ba(L, cap, rng::kProbes + 0xd0), bq(L, cap, rng::kProbes + 0xd1);
  std::vector<double> m(L), qh(L), qh_prev(L), anew(L), vec(L), sa(L), sq(L);
  std::vector<double> beta(D), r(D), rs(D), zq(D), pred(P), delta(P);
  std::vector<double> T2(size_t(D) * D), Mm(size_t(D) * D);
  // Each basis is read once per step (basis_pass): its products with the
  // history sums, the residual checks and the few dot products the next
  // coefficients need share that pass. The rest of the coefficients follow
  // from orthonormality (Q Q^T = I) and two small carried products:
  //   a_coef = Q_a omega(n)           (rank_a), advanced with Q_a (s qhat(n)) and the history sum
  //   G      = Q_q zeta^T, (rank_q, D) row-major, advanced with the rank-one updates of zeta
  std::vector<double> K2(size_t(2) * cap), K3(size_t(3) * cap), R2(size_t(2) * L), R3(size_t(3) * L);
  std::vector<double> a_coef(cap, 0.0), Dsa(cap), Dsq(cap), G(size_t(cap) * D, 0.0);
  // The history sums need only coefficient products: with
  //   Xqa = sum_{j<n} Ca[j] Cqc[j]^T  (rank_a x rank_q, column-major, ld ldx; one ger per step)
  // sum_j Cqc[j] Cw(j, n) = Xqa^T Ca[n], sum_j Ca[j] Cq(j, n) = Xqa Cqc[n] and
  // sum_j Ca[j] Cqm(j, n) = Xqa Km[n]: O(rank^2) per step instead of O(n rank).
  // The output matrices Cw, Cq, Cqm are filled once at the end (gemm); Km[n] =
  // Q_q m(n) is kept for Cqm, the diagonals are exact dot products.
  int ldx = std::min(cap, 64);   // grows with the ranks (they stay far below cap in the limit)
  std::vector<double> Xqa(size_t(ldx) * ldx, 0.0), Kmh(size_t(T1) * cap, 0.0);
  auto fit_xqa = [&](int rank) {
    rank = std::min(rank, cap);
    if (rank <= ldx) return;
    const int ld = std::min(cap, std::max(rank, 2 * ldx));
    std::vector<double> X2(size_t(ld) * ld, 0.0);
    for (int i = 0; i < ldx; ++i)
      std::copy(Xqa.begin() + size_t(i) * ldx, Xqa.begin() + size_t(i + 1) * ldx, X2.begin() + size_t(i) * ld);
    Xqa.swap(X2);
    ldx = ld;
  };
  std::vector<double> diag_w(T1), diag_q(T1), diag_qm(T1);

  for (int n = 0; n <= T; ++n) {
    interrupt::check();  // between time steps (serial here): Ctrl-C from the bindings
    double* Can = out.Ca.data() + size_t(n) * cap;
    double* Cqn = out.Cqc.data() + size_t(n) * cap;
    // 1. coefficients of omega(n) in the omega basis (carried from step n - 1;
    //    its residual is checked in step 6); Cw(n, n) directly, Cw(n-1, n) for step 2
    const int ra = ba.rank;
    fit_xqa(std::max(ra, bq.rank + 1));   // bq may grow by one row in step 2
    std::copy(a_coef.begin(), a_coef.begin() + ra, Can);
    diag_w[n] = blas::dot(L, a.data(), a.data());
    const double* Cap = n > 0 ? out.Ca.data() + size_t(n - 1) * cap : nullptr;
    const double cw_prev = n > 0 && ra > 0 ? blas::dot(ra, Cap, Can) : 0.0;
    // 2. m(n) = s omega(n) + c sum_{j<n} Cw(j, n) qhat(j); on the way, finish
    //    qhat(n-1) (residual against the basis, new row if needed) and take
    //    Q_q (s omega(n)), so that Q_q m(n) = Q_q (s omega) + c K (orthonormal rows)
    for (int i = 0; i < L; ++i) sa[i] = sr[i] * a[i];
    std::copy(sa.begin(), sa.end(), m.begin());
    const int rq0 = bq.rank;
    if (n > 0) {
      double* Cqp = out.Cqc.data() + size_t(n - 1) * cap;
      const bool grow = bq.may_grow(qh_prev.data(), pb.history_tol);
      if (rq0 > 0) {
        std::copy(Cqp, Cqp + rq0, K2.begin());
        // sum_{j<n} Cqc[j] Cw(j, n): rows j < n - 1 through Xqa, row n - 1 (not final yet) directly
        std::fill(K2.begin() + rq0, K2.begin() + 2 * rq0, 0.0);
        if (ra > 0) blas::gemv(Op::T, ra, rq0, 1.0, Xqa.data(), ldx, Can, 0.0, K2.data() + rq0);
        blas::axpy(rq0, cw_prev, Cqp, K2.data() + rq0);
        if (grow)   // the reconstruction of qhat(n-1) rides along
          basis_pass(bq.Q.data(), rq0, L, K2.data(), rq0, 2, R2.data(), sa.data(), 1, Dsa.data(), rq0);
        else
          basis_pass(bq.Q.data(), rq0, L, K2.data() + rq0, rq0, 1, R2.data() + L, sa.data(), 1, Dsa.data(), rq0);
        blas::axpy(L, c, R2.data() + L, m.data());
      } else {
        std::fill(R2.begin(), R2.begin() + L, 0.0);
      }
      if (grow && bq.finish(qh_prev.data(), R2.data(), pb.history_tol, Cqp)) {
        // the new row u enters qhat(n-1) with coefficient rho: add c Cw(n-1, n) rho u
        blas::axpy(L, c * cw_prev * Cqp[bq.rank - 1], bq.Q.data() + size_t(bq.rank - 1) * L, m.data());
      }
      out.rank_q_at[n - 1] = bq.rank;
      if (ra > 0 && bq.rank > 0) blas::ger(ra, bq.rank, 1.0, Cap, Cqp, Xqa.data(), ldx);   // both rows final
    }
    const int rq = bq.rank;
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
    // 4. qhat(n) = zeta(n) . r / sqrt(D). Its coefficients K2[:rq] = G r / sqrt(D)
    //    and those of m(n), K2[rq:]; Cq(j, n), Cqm(j, n) = <qhat(j) m(n)> for j < n
    if (rq > rq0) {   // a row u was added in step 2: its products with zeta(n) and m(n) directly
      const double* u = bq.Q.data() + size_t(rq0) * L;
      for (int d = 0; d < D; ++d) G[size_t(rq0) * D + d] = blas::dot(L, u, B.data() + size_t(d) * L);
    }
    // One pass over B, row by row: qhat += zeta_d r_d / sqrt D, then (the old row is
    // no longer needed) zeta_d += rt_d m with rt = c r / sqrt D. zq = B qhat = q^T W0 / N
    // for the y update comes from the Gram instead: zq = <zeta zeta^T> r / sqrt D.
    for (int d = 0; d < D; ++d) {
      rt[d] = c * r[d] / rD;
      rs[d] = r[d] / rD;
    }
    qhat_and_zeta_update(L, D, B.data(), rs.data(), rt.data(), m.data(), n < T, qh.data());
    blas::gemv(Op::N, D, D, 1.0 / rD, BB.data(), D, r.data(), 0.0, zq.data());
    if (rq > 0) {
      // K2[rq0:2 rq0] holds the history coefficients of step 2 (when n > 0)
      for (int i = 0; i < rq0; ++i) Dsa[i] += c * K2[rq0 + i];
      std::copy(Dsa.begin(), Dsa.begin() + rq0, K2.begin() + rq);
      if (rq > rq0) K2[rq + rq0] = blas::dot(L, bq.Q.data() + size_t(rq0) * L, m.data());
      blas::gemv(Op::T, D, rq, 1.0 / rD, G.data(), D, r.data(), 0.0, K2.data());
      std::copy(K2.begin(), K2.begin() + rq, Cqn);
    }
    if (rq > 0) std::copy(K2.begin() + rq, K2.begin() + 2 * rq, Kmh.begin() + size_t(n) * cap);
    diag_q[n] = blas::dot(L, qh.data(), qh.data());
    const double cqm_nn = blas::dot(L, qh.data(), m.data());
    diag_qm[n] = cqm_nn;
    qh_prev.swap(qh);   // qhat(n) is finished at the start of the next step
    const double* qn = qh_prev.data();
    // 5. normalized sharpness: eta0 lambda_max(Sigma^1/2 Mm Sigma^1/2),
    //    Mm = (<y y^T> + Cw(n,n) <zeta zeta^T> + <m m> I) / D
    if (!pb.sharpness_steps || pb.sharpness_steps[n]) {
      const double mm = blas::dot(L, m.data(), m.data());
      const double cw = diag_w[n];
      for (int i = 0; i < D * D; ++i) Mm[i] = (YY[i] + cw * BB[i]) / D;
      for (int i = 0; i < D; ++i) Mm[i * D + i] += mm / D;
      blas::gemm(Op::N, Op::N, D, D, D, 1.0, Sroot.data(), D, Mm.data(), D, 0.0, T2.data(), D);
      blas::gemm(Op::N, Op::N, D, D, D, 1.0, T2.data(), D, Sroot.data(), D, 0.0, Mm.data(), D);
      out.sharpness[n] = pb.eta0 * top_eig_sym(D, Mm);
    }
    // 6. one pass over the omega basis: the reconstruction of omega(n) (its
    //    residual), the history sums of the updates
    //      u^T A A^T w = s m + c sum_{j<n} Cqm(j, n) omega(j)
    //      omega(n+1) = omega + c [s qhat + c sum_{j<n} Cq(j, n) omega(j)]
    //    and Q_a (s qhat) for the coefficients of omega(n+1)
    const bool last = n == T;
    for (int i = 0; i < L; ++i) vec[i] = sr[i] * m[i] + c * cqm_nn * a[i];
    for (int i = 0; i < L; ++i) sq[i] = sr[i] * qn[i];
    for (int i = 0; i < L; ++i) anew[i] = a[i] + c * sq[i];
    const bool grow = ba.may_grow(a.data(), pb.history_tol), hist = n > 0 && !last;
    if (ra > 0 && (grow || !last)) {
      std::copy(Can, Can + ra, K3.begin());
      std::fill(K3.begin() + ra, K3.begin() + 3 * ra, 0.0);
      if (hist && rq > 0) {   // Xqa holds rows j < n here
        blas::gemv(Op::N, ra, rq, 1.0, Xqa.data(), ldx, K2.data() + rq, 0.0, K3.data() + ra);
        blas::gemv(Op::N, ra, rq, 1.0, Xqa.data(), ldx, K2.data(), 0.0, K3.data() + 2 * ra);
      }
      const int first = grow ? 0 : 1, ncol = (hist ? 3 : 1) - first;
      basis_pass(ba.Q.data(), ra, L, K3.data() + first * ra, ra, ncol, R3.data() + size_t(first) * L, sq.data(),
                 last ? 0 : 1, Dsq.data(), ra);
      if (hist) {
        blas::axpy(L, c, R3.data() + L, vec.data());
        blas::axpy(L, c * c, R3.data() + 2 * L, anew.data());
      }
    }
    if (grow) {
      if (ra == 0) std::fill(R3.begin(), R3.begin() + L, 0.0);
      ba.finish(a.data(), R3.data(), pb.history_tol, Can);
    }
    out.rank_a_at[n] = ba.rank;
    if (last) break;
    // coefficients of omega(n+1): Q_a omega + c Q_a (s qhat) + c^2 K (orthonormal rows),
    // and directly for a row added just now
    for (int i = 0; i < ra; ++i) a_coef[i] = Can[i] + c * Dsq[i] + (hist ? c * c * K3[2 * ra + i] : 0.0);
    if (ba.rank > ra) a_coef[ra] = blas::dot(L, ba.Q.data() + size_t(ra) * L, anew.data());
    // Row by row (a row of Y stays in cache between its dot products and its
    // update), one pass over Y: Yv = Y vec, Ya = Y omega, then
    // y += rt vec^T + ec omega^T with ec = c zq, vec = u^T A A^T w + c <qhat m> omega.
    for (int d = 0; d < D; ++d) ec[d] = c * zq[d];
    // G = Q_q zeta^T follows the same update: G += (Q_q m) rt^T
    for (int i = 0; i < rq; ++i)
      for (int d = 0; d < D; ++d) G[size_t(i) * D + d] += K2[rq + i] * rt[d];
    for (int d = 0; d < D; ++d)
      y_row_update(L, Y.data() + size_t(d) * L, vec.data(), a.data(), rt[d], ec[d], Yv[d], Ya[d]);
    const double vv = blas::dot(L, vec.data(), vec.data()), aa = blas::dot(L, a.data(), a.data()),
                 va = blas::dot(L, vec.data(), a.data()), mm2 = blas::dot(L, m.data(), m.data());
    for (int i = 0; i < D; ++i)
      for (int j = 0; j < D; ++j) {
        YY[j * D + i] += rt[i] * Yv[j] + Yv[i] * rt[j] + ec[i] * Ya[j] + Ya[i] * ec[j] + vv * rt[i] * rt[j] +
                         aa * ec[i] * ec[j] + va * (rt[i] * ec[j] + ec[i] * rt[j]);
        // zeta += rt m^T, and B m = richness * beta_f
        BB[j * D + i] += pb.richness * (rt[i] * beta[j] + beta[i] * rt[j]) + mm2 * rt[i] * rt[j];
      }
    a.swap(anew);
  }
  {  // finish qhat(T)
    double* Cqp = out.Cqc.data() + size_t(T) * cap;
    if (bq.may_grow(qh_prev.data(), pb.history_tol)) {
      if (bq.rank > 0)
        blas::gemv(Op::N, L, bq.rank, 1.0, bq.Q.data(), L, Cqp, 0.0, R2.data());
      else
        std::fill(R2.begin(), R2.begin() + L, 0.0);
      bq.finish(qh_prev.data(), R2.data(), pb.history_tol, Cqp);
    }
    out.rank_q_at[T] = bq.rank;
  }
  // the output Grams from the coefficient rows: [j, n] for j < n is
  // <omega(j) omega(n)> = Ca[j] . Ca[n] (likewise Cq), <qhat(j) m(n)> = Cqc[j] . Km[n]
  auto fill_upper = [&](std::vector<double>& C, const std::vector<double>& rows_n, const std::vector<double>& rows_j,
                        int rank, const std::vector<double>& diag, bool symmetric) {
    if (rank > 0)   // column-major C'(n, j) = rows_n[n] . rows_j[j] is row-major C[j, n]
      blas::gemm(Op::T, Op::N, T1, T1, rank, 1.0, rows_n.data(), cap, rows_j.data(), cap, 0.0, C.data(), T1);
    for (int j = 0; j < T1; ++j) {
      C[size_t(j) * T1 + j] = diag[j];
      for (int n = 0; n < j; ++n) C[size_t(j) * T1 + n] = symmetric ? C[size_t(n) * T1 + j] : 0.0;
    }
  };
  fill_upper(out.Cw, out.Ca, out.Ca, ba.rank, diag_w, true);
  fill_upper(out.Cq, out.Cqc, out.Cqc, bq.rank, diag_q, true);
  fill_upper(out.Cqm, Kmh, out.Cqc, bq.rank, diag_qm, false);
  out.rank_a = ba.rank;
  out.rank_q = bq.rank;
  out.Qa = std::move(ba.Q);
  out.Qq = std::move(bq.Q);
  return out;
}

// ---- level one with C outputs ------------------------------------------------------

namespace {

// Row-major C (m x n) = alpha op(A) op(B) + beta C, as the column-major product of the transposes.
void gemm_rm(bool ta, bool tb, int m, int n, int k, double alpha, const double* A, int lda, const double* B, int ldb,
             double beta, double* C, int ldc) {
  blas::gemm(tb ? Op::T : Op::N, ta ? Op::T : Op::N, n, m, k, alpha, B, ldb, A, lda, beta, C, ldc);
}

}  // namespace

OutputsSolution solve_modes_outputs(const ModeProblem& pb) {
  const int M = pb.nodes, R = pb.coef, D = pb.input_dim, P = pb.samples, T = pb.steps, C = pb.outputs;
  if (M < 1 || R < 1 || D < 1 || P < 1 || T < 0 || C < 1) throw std::invalid_argument("solve_modes_outputs: bad sizes");
  if (!(pb.output_normalizer >= 1.0)) throw std::invalid_argument("solve_modes_outputs: output_normalizer >= 1");
  blas::ThreadScope one_thread(1);
  const int L = M * R, T1 = T + 1, TC = T1 * C;
  const double K = pb.output_normalizer, c = pb.c / K, rD = std::sqrt(double(D));
  const double nan = std::numeric_limits<double>::quiet_NaN();
  OutputsSolution out;
  out.steps = T;
  out.outputs = C;
  out.input_dim = D;
  out.loss.assign(T1, 0.0);
  out.beta_f.assign(size_t(T1) * D * C, 0.0);
  out.Cw.assign(size_t(TC) * TC, 0.0);
  out.Cq.assign(size_t(TC) * TC, 0.0);
  out.sharpness.assign(T1, nan);
  std::vector<double> Cqm(size_t(TC) * TC, 0.0);   // [(j, a), (n, b)] = <qhat_a(j) m_b(n)>, j <= n

  // scaled state (every node times sqrt(weight_k)): row (n, a) of Ha is omega_a(n), of Hq qhat_a(n)
  std::vector<double> Ha(size_t(TC) * L, 0.0), Hq(size_t(TC) * L, 0.0), B(size_t(D) * L), Y(size_t(D) * L);
  std::vector<double> s_row(L);
  for (int k = 0; k < M; ++k) {
    const double sw = std::sqrt(pb.weights[k]);
    for (int r = 0; r < R; ++r) {
      const int i = k * R + r;
      s_row[i] = pb.s[k];
      for (int a = 0; a < C; ++a) Ha[size_t(a) * L + i] = sw * pb.a0[(size_t(k) * C + a) * R + r];
      for (int d = 0; d < D; ++d) {
        B[size_t(d) * L + i] = sw * pb.B0[(size_t(k) * D + d) * R + r];
        Y[size_t(d) * L + i] = pb.s[k] * B[size_t(d) * L + i];   // u_k^T A(0) W0(0) = s_k zeta_k
      }
    }
  }
  const std::vector<double> Sroot = covariance_root(pb.X, P, D);   // symmetric
  std::vector<double> m(size_t(C) * L), vec(size_t(C) * L), beta(size_t(D) * C), pred(size_t(P) * C),
      delta(size_t(P) * C), Rr(size_t(D) * C), RT(size_t(D) * C), EC(size_t(D) * C);
  std::vector<double> YY(size_t(D) * D), BB(size_t(D) * D), MM(size_t(C) * C), T2(size_t(D) * D),
      Big(size_t(C) * D * C * D);
  for (int n = 0; n <= T; ++n) {
    interrupt::check();
    const size_t nC = size_t(n) * C;
    double* an = Ha.data() + nC * L;
    double* qn = Hq.data() + nC * L;
    // Cw[(j, .), (n, .)] for j <= n
    gemm_rm(false, true, int(nC) + C, C, L, 1.0, Ha.data(), L, an, L, 0.0, out.Cw.data() + nC, TC);
    // m_b(n) = s omega_b(n) + c sum_{j<n, a} Cw[(j, a), (n, b)] qhat_a(j)
    for (int a = 0; a < C; ++a)
      for (int i = 0; i < L; ++i) m[size_t(a) * L + i] = s_row[i] * an[size_t(a) * L + i];
    if (n > 0) gemm_rm(true, false, C, L, int(nC), c, out.Cw.data() + nC, TC, Hq.data(), L, 1.0, m.data(), L);
    // beta_f = <zeta m^T> / gamma0 (D x C); pred = X beta_f / sqrt D; r = X^T (y - pred) / P
    gemm_rm(false, true, D, C, L, 1.0 / pb.richness, B.data(), L, m.data(), L, 0.0, beta.data(), C);
    std::copy(beta.begin(), beta.end(), out.beta_f.begin() + size_t(n) * D * C);
    gemm_rm(false, false, P, C, D, 1.0 / rD, pb.X, D, beta.data(), C, 0.0, pred.data(), C);
    double l2 = 0;
    for (size_t i = 0; i < size_t(P) * C; ++i) {
      delta[i] = pb.y[i] - pred[i];
      l2 += delta[i] * delta[i];
    }
    out.loss[n] = l2 / (2.0 * P * K);
    gemm_rm(true, false, D, C, P, 1.0 / P, pb.X, D, delta.data(), C, 0.0, Rr.data(), C);
    // qhat_a(n) = zeta . r_a / sqrt D; Cq, Cqm columns (n, .); ec = c <zeta qhat(n)^T>
    gemm_rm(true, false, C, L, D, 1.0 / rD, Rr.data(), C, B.data(), L, 0.0, qn, L);
    gemm_rm(false, true, int(nC) + C, C, L, 1.0, Hq.data(), L, qn, L, 0.0, out.Cq.data() + nC, TC);
    gemm_rm(false, true, int(nC) + C, C, L, 1.0, Hq.data(), L, m.data(), L, 0.0, Cqm.data() + nC, TC);
    gemm_rm(false, true, D, C, L, c, B.data(), L, qn, L, 0.0, EC.data(), C);
    // normalized sharpness: eta0 / K lambda_max of the (C D) x (C D) matrix with blocks
    //   Sigma^1/2 (delta_ab <y y^T> + Cw_ab(n, n) <zeta zeta^T> + <m_a m_b> I) Sigma^1/2 / D
    if (!pb.sharpness_steps || pb.sharpness_steps[n]) {
      gemm_rm(false, true, D, D, L, 1.0, Y.data(), L, Y.data(), L, 0.0, YY.data(), D);
      gemm_rm(false, true, D, D, L, 1.0, B.data(), L, B.data(), L, 0.0, BB.data(), D);
      gemm_rm(false, true, C, C, L, 1.0, m.data(), L, m.data(), L, 0.0, MM.data(), C);
      const int CD = C * D;
      for (int a = 0; a < C; ++a)
        for (int b = 0; b < C; ++b) {
          const double cw = out.Cw[(nC + a) * TC + nC + b];
          for (int i = 0; i < D * D; ++i) T2[i] = ((a == b ? YY[i] : 0.0) + cw * BB[i]) / D;
          for (int i = 0; i < D; ++i) T2[i * D + i] += MM[a * C + b] / D;
          std::vector<double> U(size_t(D) * D);
          gemm_rm(false, false, D, D, D, 1.0, Sroot.data(), D, T2.data(), D, 0.0, U.data(), D);
          gemm_rm(false, false, D, D, D, 1.0, U.data(), D, Sroot.data(), D, 0.0, T2.data(), D);
          for (int i = 0; i < D; ++i)
            for (int j = 0; j < D; ++j) Big[size_t(a * D + i) * CD + b * D + j] = T2[i * D + j];
        }
      out.sharpness[n] = pb.eta0 / K * top_eig_sym(CD, Big);
    }
    if (n == T) break;
    // vec_b = u^T A A^T w_b = s m_b + c sum_{j<=n, a} Cqm[(j, a), (n, b)] omega_a(j)
    for (size_t i = 0; i < size_t(C) * L; ++i) vec[i] = s_row[i % L] * m[i];
    gemm_rm(true, false, C, L, int(nC) + C, c, Cqm.data() + nC, TC, Ha.data(), L, 1.0, vec.data(), L);
    // y += rt vec + ec omega(n), zeta += rt m, rt = c r / sqrt D
    for (size_t i = 0; i < RT.size(); ++i) RT[i] = c * Rr[i] / rD;
    gemm_rm(false, false, D, L, C, 1.0, RT.data(), C, vec.data(), L, 1.0, Y.data(), L);
    gemm_rm(false, false, D, L, C, 1.0, EC.data(), C, an, L, 1.0, Y.data(), L);
    gemm_rm(false, false, D, L, C, 1.0, RT.data(), C, m.data(), L, 1.0, B.data(), L);
    // omega_b(n+1) = omega_b(n) + c [s qhat_b(n) + c sum_{j<n, a} Cq[(j, a), (n, b)] omega_a(j)]
    double* anew = an + size_t(C) * L;
    for (size_t i = 0; i < size_t(C) * L; ++i) anew[i] = an[i] + c * s_row[i % L] * qn[i];
    if (n > 0) gemm_rm(true, false, C, L, int(nC), c * c, out.Cq.data() + nC, TC, Ha.data(), L, 1.0, anew, L);
  }
  for (int j = 0; j < TC; ++j)   // the columns were filled for rows (j, .) <= (n, .)
    for (int i = j + 1; i < TC; ++i) {
      out.Cw[size_t(i) * TC + j] = out.Cw[size_t(j) * TC + i];
      out.Cq[size_t(i) * TC + j] = out.Cq[size_t(j) * TC + i];
    }
  ModeSolution& h = out.history;
  h.steps = TC - 1;
  h.nodes = M;
  h.coef = R;
  h.input_dim = D;
  h.s_row = s_row;
  h.cap = std::min(TC, L);
  compress_rows(Ha, TC, L, h.cap, pb.history_tol, h.Qa, h.Ca, h.rank_a_at, h.rank_a);
  compress_rows(Hq, TC, L, h.cap, pb.history_tol, h.Qq, h.Cqc, h.rank_q_at, h.rank_q);
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
  blas::ThreadScope one_thread(1);
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
