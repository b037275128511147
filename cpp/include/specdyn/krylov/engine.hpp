// The block Krylov engine of specdyn, written once over a backend concept.
//
// Backends (see docs/architecture.md):
//   * CPU (krylov/cpu_backend.hpp): host memory, BLAS-3 products on fixed row
//     chunks (the same bits at any thread count), the fused panel sweep;
//   * device (krylov/device_backend.hpp) over a kernel set K: the CUDA kernels
//     (cuda/lanczos_device.hpp) or their host emulation (krylov/host_kernels.hpp,
//     compiled into _core so that CI checks the device logic without a GPU).
//
// The concept B (all blocks column-major, d = dim() rows; "backend memory" is
// host memory on the CPU and device memory on a GPU; "host" arrays are host):
//
//   using Block = ...;                   owned backend memory with data()
//   Block block(size_t n);               n doubles
//   int64_t dim() const;                 dimension of the operator
//   void apply(const double* X, double* Y, int b);     Y = Op X (backend memory)
//   void tn(const double* Q, int nq, const double* W, int b, double* C);
//                                        C (host, nq x b) = Q^T W
//   void nn(const double* Q, int nq, const double* C, int ldc, int b,
//           double alpha, double beta, double* W);     W = alpha Q C + beta W, C host
//   void project(const double* Q, int nq, double* W, int b, double* C);
//                                        C (host) = Q^T W, then W -= Q C (one
//                                        Gram-Schmidt pass; the CPU reads Q once)
//   double norm(const double* w);        ||w||
//   void scale(double* w, double s);     w *= s (d entries)
//   void normalized(double* x, const double* y, double nrm);   x = y / nrm
//   void copy(double* dst, const double* src, size_t n);      (ranges may overlap)
//   void upload(const double* host, double* dst, size_t n);
//   void download(const double* src, double* host, size_t n);
//   void random(double* p, size_t n, uint64_t seed, uint64_t offset);
//                                        Gaussians of stream rng::kProbes from offset
//   static constexpr bool kFewSyncs;     each reduction is a round trip (a device):
//                                        orthonormalize blocks by CholQR2 (scratch
//                                        from double* work(size_t n)), measure a
//                                        block by its Gram matrix
//   static constexpr bool kParallelProbes;   SLQ probes may run in OpenMP threads
//
// Gram backends (top_singular) add: n(), m() (A is n x m), other() (the side
// the basis does not live on), basis_right(), single (float matrix), the range
// scale they work at, apply_keep(X, Y, b, L) (apply that also returns the left
// product L = B X, other() x b, which the certificate reuses), nn_other (nn on
// other() rows), backward (B^T U for float matrices) and the dense fallback; see
// top_singular below.
//
// Everything that decides sizes (block, basis capacity, dense or Krylov) is in
// plan_singular / plan_eigs; everything that decides when to stop or re-solve
// is in certify_loop. The small projected problems run on the host (LAPACK).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <omp.h>

#include <cstring>
#include <functional>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "specdyn/blas.hpp"
#include "specdyn/lanczos.hpp"
#include "specdyn/rng.hpp"

namespace specdyn::krylov {

using lanczos::Info;
using lanczos::Options;
using lanczos::Status;
using lanczos::Which;

inline size_t at(int64_t i, int64_t j, int64_t ld) { return static_cast<size_t>(i + j * ld); }

// Fresh Gaussian columns for random starts and breakdown replacements (stream
// rng::kProbes of the seed; every draw advances the offset, so the draws of a
// solve are the same on every backend).
struct Random {
  uint64_t seed = 0;
  uint64_t offset = 0;
  template <class B>
  void fill(B& ops, double* p, int64_t n) {
    ops.random(p, static_cast<size_t>(n), seed, offset);
    offset += static_cast<uint64_t>(n) + 2;
  }
  void fill_host(double* p, int64_t n) {
    rng::normal_fill(p, static_cast<size_t>(n), seed, rng::kProbes, 1.0, offset);
    offset += static_cast<uint64_t>(n) + 2;
  }
};

// Host scratch of at least n doubles, kept for the thread's lifetime (reused by
// every solve on it; contents undefined), and a view into it.
inline double* host_scratch(size_t n) {
  thread_local std::vector<double> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}
struct HostSpan {
  double* p;
  double* data() const { return p; }
  double& operator[](size_t i) const { return p[i]; }
};

// ---- range safety -------------------------------------------------------------
// A solve works on a power-of-two multiple (scale * A) of its operator whenever
// the operator's first products leave the range in which squares and sums of
// squares stay normal numbers: Gram entries of a 1e-200 matrix underflow, those
// of a 1e160 one overflow. Powers of two scale without rounding, so a matrix
// inside the range gets the same bits as unscaled.

// max|x| over n values; +inf when any value is NaN or infinite.
inline double max_abs(const double* x, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) {
    const double a = std::fabs(x[i]);
    if (!(a <= std::numeric_limits<double>::max())) return std::numeric_limits<double>::infinity();
    m = a > m ? a : m;
  }
  return m;
}
// True when a block of magnitude mx is comfortably inside a type whose safe
// exponent range is [-e, e] (the products of a block step square it once more).
inline bool in_safe_range(double mx, int e) { return mx >= std::ldexp(1.0, -e) && mx <= std::ldexp(1.0, e); }
// 2^-k with k = the binary exponent of mx, clamped to [-e, e]: mx * scale lies in [1, 2).
inline double pow2_inverse(double mx, int e) {
  const int k = std::ilogb(mx);
  return std::ldexp(1.0, -(k < -e ? -e : (k > e ? e : k)));
}

// Size of the largest group of consecutive values (sorted either way) whose
// neighbours differ by at most gap.
inline int largest_cluster(const std::vector<double>& v, double gap) {
  int best = v.empty() ? 0 : 1, run = 1;
  for (size_t i = 1; i < v.size(); ++i) {
    run = (v[i] - v[i - 1] <= gap && v[i - 1] - v[i] <= gap) ? run + 1 : 1;
    best = run > best ? run : best;
  }
  return best;
}

// ---- block orthogonalization ------------------------------------------------------

// Upper triangular R with R^T R = G (b x b, column-major); false if G is not
// numerically positive definite.
inline bool cholesky_upper(int b, const std::vector<double>& G, std::vector<double>& R) {
  R.assign(static_cast<size_t>(b) * b, 0.0);
  for (int j = 0; j < b; ++j) {
    double s = G[at(j, j, b)];
    for (int k = 0; k < j; ++k) s -= R[at(k, j, b)] * R[at(k, j, b)];
    if (!(s > 0)) return false;
    R[at(j, j, b)] = std::sqrt(s);
    for (int i = j + 1; i < b; ++i) {
      double t = G[at(j, i, b)];
      for (int k = 0; k < j; ++k) t -= R[at(k, j, b)] * R[at(k, i, b)];
      R[at(j, i, b)] = t / R[at(j, j, b)];
    }
  }
  return true;
}

// Inverse of an upper triangular b x b matrix (back substitution, column by column).
inline std::vector<double> upper_inverse(int b, const std::vector<double>& R) {
  std::vector<double> X(static_cast<size_t>(b) * b, 0.0);
  for (int j = 0; j < b; ++j) {
    X[at(j, j, b)] = 1.0 / R[at(j, j, b)];
    for (int i = j - 1; i >= 0; --i) {
      double t = 0;
      for (int k = i + 1; k <= j; ++k) t += R[at(i, k, b)] * X[at(k, j, b)];
      X[at(i, j, b)] = -t / R[at(i, i, b)];
    }
  }
  return X;
}

// Within-block orthonormalization by two rounds of Cholesky QR (Y = Y' R with
// R = R2 R1): two reductions instead of the ~4b of the column-wise CGS2. Used
// by backends where each reduction is a round trip (kFewSyncs); the CPU keeps
// the column-wise CGS2, whose reductions cost nothing extra there. Taken only
// when Y is well conditioned (cond <= 1e5, measured by the SVD of R1; CholQR2
// is accurate up to ~1e7 in double) and no column is negligible; otherwise
// returns false with Y untouched, and the column-wise path runs.
template <class B>
bool cholqr2(B& ops, double* Y, int b, std::vector<double>& R, double scale) {
  const int64_t d = ops.dim();
  std::vector<double> G(static_cast<size_t>(b) * b), R1, R2;
  ops.tn(Y, b, Y, b, G.data());
  if (!cholesky_upper(b, G, R1)) return false;
  {
    std::vector<double> Rc = R1, sv(b), P(static_cast<size_t>(b) * b), WT(static_cast<size_t>(b) * b);
    if (blas::gesdd(b, b, Rc.data(), b, sv.data(), P.data(), b, WT.data(), b) != 0) return false;
    if (!(sv[b - 1] > 1e-5 * sv[0]) || !(sv[b - 1] > 1e-12 * scale)) return false;
  }
  double* W = ops.work(static_cast<size_t>(d) * b);  // (reused scratch: an allocation is a device call)
  for (int round = 0; round < 2; ++round) {
    if (round == 1) {
      ops.tn(Y, b, Y, b, G.data());
      if (!cholesky_upper(b, G, R2)) throw std::runtime_error("cholqr2: second round lost definiteness");
    }
    const std::vector<double> Ri = upper_inverse(b, round == 0 ? R1 : R2);
    ops.nn(Y, b, Ri.data(), b, b, 1.0, 0.0, W);
    ops.copy(Y, W, static_cast<size_t>(d) * b);
  }
  R.assign(static_cast<size_t>(b) * b, 0.0);
  for (int j = 0; j < b; ++j)
    for (int i = 0; i <= j; ++i) {
      double t = 0;
      for (int k = i; k <= j; ++k) t += R2[at(i, k, b)] * R1[at(k, j, b)];
      R[at(i, j, b)] = t;
    }
  return true;
}

// Orthonormalize the d x b block Y against the orthonormal d x nq block Q
// (classical Gram-Schmidt, two passes, BLAS-3) and within itself: on return
// Y_in = Q C + Y R (C nq x b, R b x b upper triangular, host) with Y
// orthonormal and orthogonal to Q. Directions of Y_in that are (numerically)
// already in span(Q) are replaced by random orthonormal ones with a zero row
// of R, so Y is always a full basis. scale: a norm the "numerically zero" test
// is relative to (max with ||Y_in||).
//
// local > 0 (a Lanczos step): Y is first projected against the last `local`
// columns of Q, which hold all of its large components in exact arithmetic (the
// diagonal and previous off-diagonal blocks of T). What is left is small against
// the rest of Q, so one full pass suffices unless it cancels much (the DGKS test:
// a column keeps less than 1/sqrt(2) of its norm), and the full basis is read
// twice per step instead of four times. local = 0: two full passes.
template <class B>
void orth_block(B& ops, const double* Q, int nq, double* Y, int b, std::vector<double>& C, std::vector<double>& R,
                Random& rnd, double scale, int local = 0) {
  const int64_t d = ops.dim();
  C.assign(static_cast<size_t>(nq) * b, 0.0);
  R.assign(static_cast<size_t>(b) * b, 0.0);
  // Squared column norms of Y (one reduction on a few-syncs backend).
  std::vector<double> nrm2(b);
  auto column_norms = [&] {
    if constexpr (B::kFewSyncs) {
      std::vector<double> G(static_cast<size_t>(b) * b);
      ops.tn(Y, b, Y, b, G.data());
      for (int j = 0; j < b; ++j) nrm2[j] = std::max(G[at(j, j, b)], 0.0);
    } else {
      for (int j = 0; j < b; ++j) nrm2[j] = std::pow(ops.norm(Y + at(0, j, d)), 2);
    }
  };
  column_norms();
  for (int j = 0; j < b; ++j) scale = std::max(scale, std::sqrt(nrm2[j]));
  std::vector<double> tmp(static_cast<size_t>(std::max(nq, 1)) * b), h(std::max(b, 1)), cq(std::max(nq, 1));
  local = std::min(local, nq);
  if (local > 0 && local < nq) {
    const int q0 = nq - local;
    ops.project(Q + at(0, q0, d), local, Y, b, tmp.data());
    for (int j = 0; j < b; ++j)
      for (int i = 0; i < local; ++i) C[at(q0 + i, j, nq)] += tmp[at(i, j, local)];
    column_norms();
  } else {
    local = 0;
  }
  for (int pass = 0; pass < 2 && nq > 0; ++pass) {  // the bulk of the work: one read of Q each
    ops.project(Q, nq, Y, b, tmp.data());
    for (size_t i = 0; i < C.size(); ++i) C[i] += tmp[i];
    if (local == 0 || pass == 1) continue;
    const std::vector<double> before = nrm2;
    column_norms();
    bool kept = true;
    for (int j = 0; j < b; ++j) kept = kept && nrm2[j] >= 0.5 * before[j];
    if (kept) break;
  }
  if constexpr (B::kFewSyncs) {
    if (b >= 2 && cholqr2(ops, Y, b, R, scale)) return;
  }
  // Within the block: column-wise CGS2 (b is small). A column whose remainder
  // is at rounding level carries no new direction (an invariant subspace was
  // found): it gets R_jj = 0 and a random replacement orthogonal to everything,
  // so the basis stays full and Y_in = Q C + Y R still holds to rounding.
  for (int j = 0; j < b; ++j) {
    double* w = Y + at(0, j, d);
    double before = ops.norm(w);
    for (int pass = 0; pass < 3; ++pass) {
      if (j > 0) {
        ops.tn(Y, j, w, 1, h.data());
        ops.nn(Y, j, h.data(), j, 1, -1.0, 1.0, w);
        for (int i = 0; i < j; ++i) R[at(i, j, b)] += h[i];
      }
      const double after = ops.norm(w);
      // Heavy cancellation: project against Q and the block once more.
      if (pass == 2 || after > 0.5 * before || after <= 1e-13 * scale) break;
      if (nq > 0) {
        ops.tn(Q, nq, w, 1, cq.data());
        ops.nn(Q, nq, cq.data(), nq, 1, -1.0, 1.0, w);
        for (int i = 0; i < nq; ++i) C[at(i, j, nq)] += cq[i];
      }
      before = after;
    }
    double nr = ops.norm(w);
    if (nr > 1e-12 * scale && scale > 0) {
      R[at(j, j, b)] = nr;
      ops.scale(w, 1.0 / nr);
      continue;
    }
    R[at(j, j, b)] = 0.0;
    for (int attempt = 0; attempt < 8; ++attempt) {
      rnd.fill(ops, w, d);
      nr = ops.norm(w);
      for (int pass = 0; pass < 2; ++pass) {
        if (nq > 0) {
          ops.tn(Q, nq, w, 1, cq.data());
          ops.nn(Q, nq, cq.data(), nq, 1, -1.0, 1.0, w);
        }
        if (j > 0) {
          ops.tn(Y, j, w, 1, h.data());
          ops.nn(Y, j, h.data(), j, 1, -1.0, 1.0, w);
        }
      }
      const double left = ops.norm(w);
      if (left > 1e-3 * nr) {
        ops.scale(w, 1.0 / left);
        break;
      }
      if (attempt == 7) throw std::runtime_error("orth_block: basis exhausts the space");
    }
  }
}

// ---- thick-restart block Lanczos ------------------------------------------------------

// accept(theta, residual estimate, norm estimate): is this Ritz pair converged?
using Accept = std::function<bool(double, double, double)>;
// The set version (Options::resolvable): the wanted Ritz values, descending,
// followed by the next one; their residual estimates (the same k + 1); the norm
// estimate. Replaces the pairwise test when given.
using AcceptSet = std::function<bool(const std::vector<double>&, const std::vector<double>&, double)>;

// The tracking certificate on singular values s (descending: the wanted ones, then
// the next value) with residual bounds r (the same k + 1; NaN for a missing next
// value) and norm estimate nrm. A value whose nearest neighbour lies closer than kCluster * nrm is inside a cluster
// (the edge of a random bulk: finite-N values there are a fraction of a percent of
// the norm apart and fluctuate by about that much); it is certified once its
// residual is at most kResolve times that spacing, so that it is told apart from
// its neighbours. Any other value (an outlier) is certified when r <= t. Both tests
// only get easier as residuals shrink, so the certificate holds once reached.
// Fills spacing (wanted values: 0 = certified to t, else the nearest spacing).
// The next Ritz value lies below the true next value until it converges, so the
// last wanted value's spacing to it is taken as s_k - s_next - r_next (the next
// value lies within r_next of its Ritz value), and only once r_next is at most
// half of s_k - s_next.
constexpr double kClusterSpacing = 1e-2;  // (of the norm) closer neighbours make a cluster

inline bool certify_resolvable(const std::vector<double>& s, const std::vector<double>& r, double t, double nrm,
                               std::vector<double>& spacing) {
  constexpr double kCluster = kClusterSpacing, kResolve = 0.1;
  const size_t k = s.size() - 1;
  spacing.assign(k, 0.0);
  bool ok = true;
  for (size_t i = 0; i < k; ++i) {
    if (r[i] <= t) continue;
    double g = std::numeric_limits<double>::infinity();
    if (i > 0) g = s[i - 1] - s[i];
    if (i + 1 < k) {
      g = std::min(g, s[i] - s[i + 1]);
    } else if (!std::isnan(s[k])) {
      // The last wanted value: the next value lies within r[k] of its Ritz value, so
      // the spacing is at least s[i] - s[k] - r[k]; that bound is used, once it is at
      // least half the apparent spacing.
      const double gn = s[i] - s[k];
      if (!(r[k] <= 0.5 * gn)) {
        ok = false;
        continue;
      }
      g = std::min(g, gn - r[k]);
    }
    if (g <= kCluster * nrm && r[i] <= kResolve * g) {
      spacing[i] = g;
      continue;
    }
    ok = false;
  }
  return ok;
}

// top_singular's warm probe, after the first step with the whole warm block, on
// the Gram values th (wanted, then the next one; NaN when none), their residual
// estimates r and the norm estimate: keep the wide block? Yes when every residual
// is at most 1% of the norm (the block is close to invariant: the matrix moved
// little, as between training steps) and some values are clustered (spacing
// within kClusterSpacing of the largest). Isolated values converge in a few
// narrow passes from any start, cheaper than wide ones (spikes at tol 1e-10,
// N = 2048, k = 10, after a 1e-3 perturbation: 10 passes at b = 11 took 61 ms,
// 21 cold passes at b = 2 took 32 ms); a cluster is slow from a cold start (a
// bulk edge: ~50 passes at k = 4) and is certified in 1-2 wide steps when the
// matrix moved little (narrowing after the first step cost ~27 passes per solve
// along GD at N = 2048, keeping the width 1.4).
inline bool warm_block_holds(const std::vector<double>& th, const std::vector<double>& r, double nrm) {
  constexpr double kNearInvariant = 1e-2;
  bool near = true, clustered = false;
  const double s1 = std::sqrt(std::max(th[0], 0.0));
  for (size_t i = 0; i < th.size(); ++i) {
    if (std::isnan(th[i])) continue;
    near = near && r[i] <= kNearInvariant * nrm;
    if (i > 0)
      clustered = clustered ||
                  std::sqrt(std::max(th[i - 1], 0.0)) - std::sqrt(std::max(th[i], 0.0)) <= kClusterSpacing * s1;
  }
  return near && clustered;
}

// How the basis may grow and how often the projected problem is solved. Both are
// fixed by the problem's sizes (never by timings), so a solve takes the same steps
// at any thread count.
struct Budget {
  // After its first thick restart, a full basis grows (doubling, no restart,
  // nothing lost) up to cap_max columns; only then thick restarts resume.
  // Clustered wanted values (the edge of a bulk) need a long Krylov space, and
  // every restart discards part of it.
  int cap_max = 0;
  // Flops of one application of the operator to a block (0 = unknown: solve the
  // projected problem after every step). When known, the Rayleigh-Ritz solve
  // (about 10 na^3 flops on na basis columns) runs once its cost has been
  // amortized to 5% of the passes since the last one (and at least every tenth
  // of the steps so far), so a large basis does not cost more in small
  // eigenproblems than in passes over the matrix. A forecast brings the next
  // solve forward when convergence is near (see steps_to_accept).
  double pass_flops = 0;
};

// How many more steps until the acceptance test may pass, forecast from two
// Rayleigh-Ritz solves that did not accept: accepts(f) says whether the test
// would pass with every residual estimate divided by f (it only gets easier as
// f grows), so the smallest such f, found by bisection on log10 f in [0, 20],
// is how far the estimates still have to fall. log_shrink (in/out) carries that
// distance from the previous solve, `steps` ago; the forecast assumes the rate
// since then holds (Krylov convergence is geometric, or faster). Returns -1
// when there is nothing to forecast from (first solve, no progress, or out of range).
template <class F>
double steps_to_accept(F&& accepts, double& log_shrink, int64_t steps) {
  double lo = 0, hi = 20;
  const double prev = log_shrink;
  log_shrink = std::nan("");
  if (!accepts(std::pow(10.0, hi))) return -1;
  for (int i = 0; i < 30; ++i) {
    const double mid = 0.5 * (lo + hi);
    (accepts(std::pow(10.0, mid)) ? hi : lo) = mid;
  }
  log_shrink = hi;
  if (!(prev > log_shrink) || steps <= 0) return -1;
  return log_shrink / ((prev - log_shrink) / static_cast<double>(steps));
}

// Gram backends whose pass also returns the left product B X (apply_keep) let
// block_lanczos keep it: the certificate of top_singular then needs no pass.
template <class B, class = void>
struct KeepsLeft : std::false_type {};
template <class B>
struct KeepsLeft<B, std::void_t<decltype(std::declval<B&>().apply_keep(std::declval<const double*>(),
                                                                        std::declval<double*>(), 0,
                                                                        std::declval<double*>()))>>
    : std::true_type {};

template <class B>
struct LanczosOut {
  std::vector<double> theta;  // wanted Ritz values (Largest: descending; Both: top desc, bottom asc)
  std::vector<double> res;    // residual estimates from the Lanczos relation
  typename B::Block X;        // d x theta.size() Ritz vectors (backend memory)
  typename B::Block Xnext;    // d x next_cols Ritz vectors of the next values (Largest)
  // keep_products: the operator's products of X (d x theta.size()), combined from the products
  // it returned for the basis, and for a KeepsLeft backend B X (other x theta.size()).
  typename B::Block OpX, BX;
  bool verified = false;      // the caller's explicit certificate (verify) passed on this answer
  using Verify = std::function<bool(LanczosOut&)>;
  // probe(wanted Ritz values then the next one, their residual estimates (the next one's
  // NaN if none), norm): asked once, at the first Rayleigh-Ritz that does not converge;
  // false stops the run there.
  using Probe = std::function<bool(const std::vector<double>&, const std::vector<double>&, double)>;
  int next_cols = 0;
  int iterations = 0, restarts = 0;
  int64_t passes = 0;
  bool converged = false;
  double norm = 0;            // max |Ritz value| seen
  double theta_next = 0;      // Largest: the Ritz value below the wanted ones (NaN if none)
  double res_next = 0;        // its residual estimate (NaN if none)
};

// Block Lanczos with thick restarts and full reorthogonalization on the
// symmetric operator ops.apply of dimension d. Requires d >= cap >= want + 2b
// where want = k (Largest) or 2k (Both). v0: host d x k0 start columns (may be null).
// keep_products: the products the operator returned for the basis are kept and rotated
// with it (thick restarts, Ritz vectors), so that the answer comes with Op X
// (and B X on a KeepsLeft backend) as computed, not as the Lanczos relation
// predicts: an explicit certificate without another pass.
// verify: that certificate, run whenever the estimates pass; when it fails the
// iteration goes on (the estimates keep shrinking) instead of stopping.
// probe: see LanczosOut::Probe.
template <class B>
LanczosOut<B> block_lanczos(B& ops, int k, Which which, int b, int cap, int64_t max_passes, const double* v0, int k0,
                            Random& rnd, const Accept& accept, int extra = 0, const Budget& budget = {},
                            const AcceptSet& accept_set = {}, bool keep_products = false,
                            const typename LanczosOut<B>::Verify& verify = {},
                            const typename LanczosOut<B>::Probe& probe = {}) {
  const int64_t d = ops.dim();
  const int want = which == Which::Largest ? k : 2 * k;
  if (cap > d || cap < want + 2 * b) throw std::logic_error("block_lanczos: basis capacity out of range");
  // Thick restart keeps the wanted Ritz vectors plus about one block of the
  // next ones: they carry the gap information that speeds convergence.
  int keep_top, keep_bot;
  if (which == Which::Largest) {
    keep_top = std::min(k + b, cap - 2 * b);
    keep_bot = 0;
  } else {
    const int spare = std::max(0, (cap - 2 * b - want) / 2);
    keep_top = k + std::min(std::max(1, b / 2), spare);
    keep_bot = keep_top;
  }
  const int keep = keep_top + keep_bot;
  blas::ThreadScope serial_blas(1);  // the small host problems (the backend restores its own count for apply)
  LanczosOut<B> out;
  auto V = ops.block(static_cast<size_t>(d) * cap), Y = ops.block(static_cast<size_t>(d) * b);
  std::vector<double> T(static_cast<size_t>(cap) * cap, 0.0), C, R, Tm, theta, res;
  // Kept products: PV = Op V and, on a KeepsLeft backend, LV = B V (o rows), for the
  // a columns already multiplied.
  constexpr bool kLeft = KeepsLeft<B>::value;
  int64_t o = 0;
  if constexpr (kLeft) o = ops.other();
  const bool keep_left = keep_products && kLeft;
  auto PV = ops.block(keep_products ? static_cast<size_t>(d) * cap : 0);
  auto LV = ops.block(keep_left ? static_cast<size_t>(o) * cap : 0);
  // The kept products of the na basis columns combined by S (na x nc): P_out = PV S, L_out = LV S.
  auto rotate_kept = [&](int na_, const std::vector<double>& S, int nc, typename B::Block& P_out,
                         typename B::Block& L_out) {
    P_out = ops.block(static_cast<size_t>(d) * nc);
    ops.nn(PV.data(), na_, S.data(), na_, nc, 1.0, 0.0, P_out.data());
    if constexpr (kLeft) {
      if (keep_left) {
        L_out = ops.block(static_cast<size_t>(o) * nc);
        ops.nn_other(LV.data(), na_, S.data(), na_, nc, 1.0, 0.0, L_out.data());
      }
    }
  };

  // Start block: the warm-start columns first, random ones for the rest.
  const int nstart = v0 ? std::min(k0, b) : 0;
  if (nstart > 0) ops.upload(v0, V.data(), static_cast<size_t>(d) * nstart);
  if (b > nstart) rnd.fill(ops, V.data() + at(0, nstart, d), d * (b - nstart));
  orth_block(ops, nullptr, 0, V.data(), b, C, R, rnd, 0.0);

  int a = 0, nv = b;  // columns already multiplied by op; columns in the basis
  const int cap_max = static_cast<int>(std::min<int64_t>(d, std::max(cap, budget.cap_max)));
  int since_rr = 0;
  bool probed = false;
  // The convergence forecast (Budget::pass_flops): the step by which the next
  // Rayleigh-Ritz is due, and the distance to acceptance at the last one.
  int64_t rr_due = std::numeric_limits<int64_t>::max(), last_rr = 0;
  double log_shrink = std::nan("");
  while (true) {
    if constexpr (kLeft)
      ops.apply_keep(V.data() + at(0, a, d), Y.data(), b, keep_left ? LV.data() + at(0, a, o) : nullptr);
    else
      ops.apply(V.data() + at(0, a, d), Y.data(), b);
    if (keep_products) ops.copy(PV.data() + at(0, a, d), Y.data(), static_cast<size_t>(d) * b);
    ++out.passes;
    ++out.iterations;
    orth_block(ops, V.data(), nv, Y.data(), b, C, R, rnd, out.norm, 2 * b);
    for (int j = 0; j < b; ++j)
      for (int i = 0; i < nv; ++i) {
        T[at(i, a + j, cap)] = C[at(i, j, nv)];
        T[at(a + j, i, cap)] = C[at(i, j, nv)];
      }
    for (int j = 0; j < b; ++j)
      for (int i = 0; i < j; ++i) {
        const double s = 0.5 * (C[at(a + i, j, nv)] + C[at(a + j, i, nv)]);
        T[at(a + i, a + j, cap)] = T[at(a + j, a + i, cap)] = s;
      }
    ops.copy(V.data() + at(0, nv, d), Y.data(), static_cast<size_t>(d) * b);
    a += b;
    nv += b;
    const int na = a;
    ++since_rr;
    if (nv + b > cap && cap < cap_max && out.restarts > 0) {
      // Grow the basis instead of restarting again: the basis and T move to the wider
      // layout. (The first fill restarts: well-separated values converge right after
      // it, and a thick restart serves them better than a longer basis.)
      const int nc = std::min(cap_max, 2 * cap);
      std::vector<double> T2(static_cast<size_t>(nc) * nc, 0.0);
      for (int j = 0; j < cap; ++j)
        for (int i = 0; i < cap; ++i) T2[at(i, j, nc)] = T[at(i, j, cap)];
      T.swap(T2);
      // (A block of `rows` rows moves to nc columns, its first `used` ones kept.)
      auto widen = [&](typename B::Block& blk, int64_t rows, int used) {
        auto wide = ops.block(static_cast<size_t>(rows) * nc);
        ops.copy(wide.data(), blk.data(), static_cast<size_t>(rows) * used);
        blk = std::move(wide);
      };
      widen(V, d, nv);
      if (keep_products) widen(PV, d, a);
      if (keep_left) widen(LV, o, a);
      cap = nc;  // (the restart keeps the same vectors: keep depends on k and b only once cap >= k + 3b)
    }
    // Rayleigh-Ritz only when it may stop the solve, a restart needs it, or its
    // cost is amortized (see Budget::pass_flops).
    if (budget.pass_flops > 0 && nv + b <= cap && out.passes < max_passes) {
      const double rr = 10.0 * na * static_cast<double>(na) * na;
      const int every = std::clamp(static_cast<int>(std::ceil(rr / (0.05 * budget.pass_flops))), 1,
                                   std::max(1, out.iterations / 10));
      if (na < want || (since_rr < every && out.iterations < rr_due)) continue;
    }
    since_rr = 0;

    // Rayleigh-Ritz on the projected matrix.
    Tm.resize(static_cast<size_t>(na) * na);
    for (int j = 0; j < na; ++j)
      for (int i = 0; i < na; ++i) Tm[at(i, j, na)] = T[at(i, j, cap)];
    theta.resize(na);
    if (blas::syevd(na, Tm.data(), na, theta.data()) != 0) throw std::runtime_error("block_lanczos: syevd failed");
    out.norm = std::max(out.norm, std::max(std::fabs(theta[0]), std::fabs(theta[na - 1])));
    // op V_a = V_a T + V_new R E^T: the residual of Ritz pair i is ||R s_i(last block)||.
    res.assign(na, 0.0);
    for (int i = 0; i < na; ++i) {
      double ss = 0;
      for (int r = 0; r < b; ++r) {
        double v = 0;
        for (int c = r; c < b; ++c) v += R[at(r, c, b)] * Tm[at(na - b + c, i, na)];
        ss += v * v;
      }
      res[i] = std::sqrt(ss);
    }
    std::vector<int> sel;
    if (na >= want) {
      for (int i = 0; i < k; ++i) sel.push_back(na - 1 - i);
      if (which == Which::Both)
        for (int i = 0; i < k; ++i) sel.push_back(i);
    }
    out.theta_next = which == Which::Largest && na > k ? theta[na - 1 - k] : std::nan("");
    out.res_next = which == Which::Largest && na > k ? res[na - 1 - k] : std::nan("");
    // The wanted values and the next one, with their residual estimates (AcceptSet, Probe).
    std::vector<double> th, rs;
    for (int i : sel) th.push_back(theta[i]), rs.push_back(res[i]);
    th.push_back(out.theta_next);
    rs.push_back(out.res_next);
    // The acceptance test with every residual estimate divided by f (f = 1: the test
    // itself; larger f: the convergence forecast).
    auto accepts = [&](double f) {
      if (accept_set && which == Which::Largest && na > k) {
        std::vector<double> r = rs;
        for (double& x : r) x /= f;
        return accept_set(th, r, out.norm);
      }
      bool ok = true;
      for (int i : sel) ok = ok && accept(theta[i], res[i] / f, out.norm);
      return ok;
    };
    bool conv = !sel.empty() && accepts(1.0);
    rr_due = std::numeric_limits<int64_t>::max();
    if (budget.pass_flops > 0 && !conv && !sel.empty()) {
      // The amortized schedule alone finds convergence up to a tenth of the steps
      // late; the next solve comes at 3/4 of the forecast distance when sooner.
      const double ahead = steps_to_accept(accepts, log_shrink, out.iterations - last_rr);
      if (ahead >= 0) rr_due = out.iterations + std::max<int64_t>(1, static_cast<int64_t>(0.75 * ahead));
      last_rr = out.iterations;
    }
    bool stop = false;
    if (!conv && probe && !probed && !sel.empty()) {
      stop = !probe(th, rs, out.norm);
      probed = true;
    }
    // (The pass cap never stops the solver before the basis holds the wanted count.)
    if (conv || stop || (out.passes >= max_passes && na >= want)) {
      out.converged = conv;
      const int w = static_cast<int>(sel.size());
      std::vector<double> S(static_cast<size_t>(na) * w);
      for (int j = 0; j < w; ++j) {
        std::memcpy(S.data() + at(0, j, na), Tm.data() + at(0, sel[j], na), sizeof(double) * na);
        out.theta.push_back(theta[sel[j]]);
        out.res.push_back(res[sel[j]]);
      }
      out.X = ops.block(static_cast<size_t>(d) * w);
      ops.nn(V.data(), na, S.data(), na, w, 1.0, 0.0, out.X.data());
      if (keep_products) rotate_kept(na, S, w, out.OpX, out.BX);
      const int ne = which == Which::Largest ? std::max(0, std::min(extra, na - w)) : 0;
      if (ne > 0) {
        S.resize(static_cast<size_t>(na) * ne);
        for (int j = 0; j < ne; ++j)
          std::memcpy(S.data() + at(0, j, na), Tm.data() + at(0, na - 1 - w - j, na), sizeof(double) * na);
        out.Xnext = ops.block(static_cast<size_t>(d) * ne);
        ops.nn(V.data(), na, S.data(), na, ne, 1.0, 0.0, out.Xnext.data());
        out.next_cols = ne;
      }
      if (!conv || !verify) return out;
      out.verified = verify(out);
      if (out.verified || out.passes >= max_passes) {
        out.converged = out.verified;
        return out;
      }
      out.theta.clear();
      out.res.clear();
      out.next_cols = 0;
      out.converged = false;
    }
    if (nv + b > cap) {
      // Thick restart: V[:, :keep] = V S (the best Ritz vectors), then the pending block.
      std::vector<int> ks;
      for (int i = 0; i < keep_top; ++i) ks.push_back(na - 1 - i);
      for (int i = 0; i < keep_bot; ++i) ks.push_back(i);
      std::vector<double> S(static_cast<size_t>(na) * keep);
      for (int j = 0; j < keep; ++j)
        std::memcpy(S.data() + at(0, j, na), Tm.data() + at(0, ks[j], na), sizeof(double) * na);
      auto tmp = ops.block(static_cast<size_t>(d) * keep);
      ops.nn(V.data(), na, S.data(), na, keep, 1.0, 0.0, tmp.data());
      ops.copy(V.data(), tmp.data(), static_cast<size_t>(d) * keep);
      if (keep_products) {
        typename B::Block P_new = ops.block(0), L_new = ops.block(0);
        rotate_kept(na, S, keep, P_new, L_new);
        ops.copy(PV.data(), P_new.data(), static_cast<size_t>(d) * keep);
        if (keep_left) ops.copy(LV.data(), L_new.data(), static_cast<size_t>(o) * keep);
      }
      ops.copy(V.data() + at(0, keep, d), V.data() + at(0, na, d), static_cast<size_t>(d) * b);
      std::fill(T.begin(), T.end(), 0.0);
      for (int j = 0; j < keep; ++j) T[at(j, j, cap)] = theta[ks[j]];
      a = keep;
      nv = keep + b;
      ++out.restarts;
    }
  }
}

// ---- plans: block size, basis capacity, dense or Krylov ------------------------------------

struct Plan {
  int block = 0;       // first block size
  int cold_block = 0;  // the block of a cold start (a warm start may begin wider, see probe_warm)
  int cap = 0;         // basis columns before a thick restart
  bool dense = false;  // small: solved directly by LAPACK
  bool probe_warm = false;  // a warm start: one step with the whole warm block decides its width (top_singular)
};

// top_singular's basis capacity for block bb.
inline int capacity_singular(int k, int bb, const Options& opt) {
  const int cp = opt.max_basis > 0 ? opt.max_basis : k + std::max(6 * bb, std::max(k, 24));
  return std::max(cp, k + 3 * bb);
}

// top_singular. narrow (the CPU): a pass over a memory-bound sweep costs about
// one read of A per column pair, and block Krylov needs ~(passes x b) columns
// in total, so the cheapest cold start measured is b = 2 (b = 1 for k <= 2); a
// warm start first tries one step with the whole previous block (plus fresh
// directions when it lacks the next value's vector), and keeps that width only
// when warm_block_holds says so. Wide (a device): a pass costs the same for any
// block of up to max_cols vectors (the kernels are bound by the matrix read), so the block is
// k + 2 within [4, max_cols]. Multiplicities larger than b are caught after
// convergence (certify_loop).
inline Plan plan_singular(int64_t n, int64_t m, int k, const Options& opt, int k0, bool wide, int max_cols) {
  Plan p;
  if (wide) {
    p.cold_block = opt.block > 0 ? opt.block : std::clamp(k + 2, 4, max_cols);
    p.block = p.cold_block;
    if (k0 > 0 && opt.block <= 0) p.block = std::max(p.block, std::min(k0 + 1, max_cols));
  } else {
    p.cold_block = opt.block > 0 ? opt.block : (k <= 2 ? 1 : 2);
    p.block = p.cold_block;
    // A warm block that already holds the next value's vector (k0 > k, see
    // Options::warm_extra) is applied as it is; a narrower one gets fresh directions.
    if (k0 > 0 && opt.block <= 0)
      p.block = std::max(p.block, std::min(k0 > k ? k0 : k0 + (k0 >= 4 ? 2 : 1), 64));
    p.probe_warm = k0 > 0 && opt.block <= 0 && p.block > p.cold_block;
  }
  p.cap = capacity_singular(k, p.block, opt);
  const int64_t mn = std::min(n, m);
  p.dense = mn <= 32 || mn < p.cap + p.block;
  return p;
}

// top_eigs: want = k (Largest) or 2k (Both).
inline Plan plan_eigs(int64_t n, int k, Which which, const Options& opt, const double* v0, int k0) {
  const int want = which == Which::Largest ? k : 2 * k;
  Plan p;
  p.block = opt.block > 0 ? opt.block : std::max(std::min(k, 16), 4);
  if (v0 && k0 > p.block) p.block = std::min(k0, 64);
  p.cold_block = p.block;
  p.cap = opt.max_basis > 0 ? opt.max_basis : want + std::max(6 * p.block, want);
  p.cap = std::max(p.cap, want + 2 * p.block + (which == Which::Both ? 2 : 0));
  p.dense = p.cap > n || n <= 64;
  return p;
}

// ---- the certify-and-escalate loop --------------------------------------------------------

// One solve = Lanczos runs, each followed by an explicit certificate, until the
// certificate passes. Two re-solves exist:
//  * escalate: block Krylov finds at most b copies of a repeated value, so a
//    certified answer holding a group of >= b (numerically) equal values is
//    solved again, once, with a block wider than the group;
//  * tighten: the Lanczos estimate passed but the explicit certificate did not
//    (loss of orthogonality): rerun from the certified vectors, tighter, at
//    most three times.
// The problem P supplies:
//   run(int& b, int& cap): a Lanczos run within the pass budget, then its
//     certificate; true when certified (the answer stays in P; a run may
//     change b and cap, as top_singular's warm probe narrows its block);
//   clusters(): the largest group of equal values in the answer;
//   can_escalate(), set_block(b), fits(b, cap): whether a wider block is worth
//     trying, recording it, and whether it fits (else widen_dense() finishes);
//   rewarm(b): start the next run from the current vectors (at most b of them);
//   tighten(attempt): the stricter Lanczos acceptance of the next run;
//   passes_left(): whether the pass budget allows another run.
// widen_block / widen_cap: the escalated block and basis capacity. (A place to
// add another re-solve rule, e.g. for clustered spectra, is this loop.)
template <class P>
void certify_loop(P& pb, int b, int cap, bool may_escalate, const std::function<int(int)>& widen_block,
                  const std::function<int(int, int)>& widen_cap) {
  bool escalated = false;
  for (int attempt = 0;; ++attempt) {
    const bool ok = pb.run(b, cap);  // (a run may narrow its own block, see top_singular's probe_warm)
    if (ok && !escalated && may_escalate && pb.clusters() >= std::max(b, 2) && pb.can_escalate()) {
      escalated = true;
      b = widen_block(b);
      cap = widen_cap(b, cap);
      pb.set_block(b);
      if (!pb.fits(b, cap)) return pb.widen_dense();
      pb.rewarm(b);
      continue;
    }
    if (ok || attempt >= 3 || !pb.passes_left()) return;
    pb.rewarm(b);
    pb.tighten(attempt);
  }
}

// ---- top_eigs ------------------------------------------------------------------------------

struct EigsOut {
  std::vector<double> values, vectors;  // host; vectors n x #values
  Info info;
};

// Extreme eigenpairs of ops.apply by block Lanczos, each answer certified by
// one more application of the operator: ||Op x - lambda x|| <= tol max|lambda|.
// (The dense path for small n is the caller's: plan_eigs says when.)
template <class B>
EigsOut top_eigs(B& ops, int k, Which which, const Options& opt, const double* v0, int k0, const Plan& plan) {
  const int64_t n = ops.dim();
  const size_t ns = static_cast<size_t>(n);
  const double tol = std::max(opt.tol, 4 * std::numeric_limits<double>::epsilon());
  const int want = which == Which::Largest ? k : 2 * k;
  const int64_t max_passes = opt.max_passes > 0 ? opt.max_passes : 2000;
  EigsOut out;
  out.info.tol_used = tol;
  out.info.block = plan.block;
  Random rnd{opt.seed, 0};
  // The estimates accept at the tolerance itself; the explicit certificate runs when they do.
  Accept accept = [tol](double, double r, double nrm) { return r <= tol * nrm; };
  std::vector<double> warm(v0 ? v0 : nullptr, v0 ? v0 + ns * k0 : nullptr);
  int kw = k0;
  struct Problem {
    B& ops;
    EigsOut& out;
    Random& rnd;
    Accept& accept;
    std::vector<double>& warm;
    int& kw;
    const Options& opt;
    Which which;
    int k, want;
    int64_t n, max_passes;
    double tol;
    int w = 0;
    bool run(int& b, int& cap) {
      auto eo = block_lanczos(ops, k, which, b, cap, max_passes - out.info.matrix_passes,
                              warm.empty() ? nullptr : warm.data(), kw, rnd, accept, 0, {}, {},
                              /*keep_products=*/true, [this](LanczosOut<B>& e) { return certify(e, true); });
      out.info.iterations += eo.iterations;
      out.info.restarts += eo.restarts;
      out.info.matrix_passes += eo.passes;
      return eo.verified || certify(eo, eo.converged);
    }
    // The explicit certificate ||Op x - lambda x|| on Op X as the operator returned it
    // for the basis (kept by block_lanczos, combined like the basis).
    bool certify(LanczosOut<B>& eo, bool ok) {
      out.info.norm_estimate = std::max(out.info.norm_estimate, eo.norm);
      out.values = eo.theta;
      w = static_cast<int>(eo.theta.size());
      const size_t ns = static_cast<size_t>(n);
      out.vectors.resize(ns * w);
      std::vector<double> Yv(ns * w);
      ops.download(eo.X.data(), out.vectors.data(), ns * w);
      ops.download(eo.OpX.data(), Yv.data(), ns * w);
      out.info.residuals.assign(w, 0.0);
      for (int j = 0; j < w; ++j) {
        double ss = 0;
        for (int64_t i = 0; i < n; ++i) {
          const double r = Yv[i + j * n] - eo.theta[j] * out.vectors[i + j * n];
          ss += r * r;
        }
        out.info.residuals[j] = std::sqrt(ss);
        ok = ok && out.info.residuals[j] <= tol * out.info.norm_estimate;
      }
      out.info.converged = ok;
      return ok;
    }
    int clusters() const {
      const std::vector<double> top(out.values.begin(), out.values.begin() + k),
          bot(out.values.begin() + k, out.values.end());
      const double gap = 1e-7 * out.info.norm_estimate;
      return std::max(largest_cluster(top, gap), largest_cluster(bot, gap));
    }
    bool can_escalate() const { return want + 2 * (want + 2) <= n; }
    void set_block(int b) { out.info.block = b; }
    bool fits(int, int) const { return true; }
    void widen_dense() {}
    void rewarm(int b) {
      warm = out.vectors;
      kw = std::min(w, b);
    }
    void tighten(int attempt) {
      const double t = tol;
      accept = [t, attempt](double, double r, double nrm) { return r <= 0.05 * t * nrm / (attempt + 1); };
    }
    bool passes_left() const { return out.info.matrix_passes < max_passes; }
  } pb{ops, out, rnd, accept, warm, kw, opt, which, k, want, n, max_passes, tol};
  certify_loop(
      pb, plan.block, plan.cap, opt.block <= 0, [want](int) { return std::min(want + 2, 64); },
      [n, want](int bb, int cap) { return static_cast<int>(std::min<int64_t>(n, std::max(cap, want + 4 * bb))); });
  return out;
}

// ---- top_singular --------------------------------------------------------------------------

struct SingularOut {
  std::vector<double> s, U, V;  // U n x k, V m x k (column-major, host)
  std::vector<double> warm;     // m x warm_cols: V, then Ritz vectors of the next values (basis on the right)
  int warm_cols = 0;
  Info info;
};

// Can the certificate of a float matrix take B^T u_j = (B^T B x_j) / s_j from the
// kept Gram products instead of a pass of its own? Each float product of length
// l carries a rounding error of about sqrt(l) u times the norm (u = float unit roundoff,
// random-rounding estimate), so B^T U formed explicitly is off by about
// u s1 sqrt(o), and the Gram-derived one also by u s1 sqrt(d) s1 / s_j (the
// product B X, divided by s_j). The kept products serve when that estimate for
// the smallest value stays within a tenth of the tolerance; near-zero or small
// values take the explicit pass.
inline bool float_gram_products_certify(double s1, double s_min, int64_t d, int64_t o, double tol) {
  constexpr double u = 0.5 * std::numeric_limits<float>::epsilon(), kShare = 0.1;
  if (!(s_min > 0)) return false;
  return u * (std::sqrt(double(o)) + std::sqrt(double(d)) * s1 / s_min) <= kShare * tol;
}

// Top-k singular triplets of the n x m matrix A behind the Gram backend ops.
// Lanczos runs on the Gram operator B^T B of the basis side (B = A when the
// basis is on the right, A^T otherwise); eigenvalue theta = s^2 and
// ||B^T u - s v|| = r_G / s. Every answer is certified by an explicit pass:
// ||A v - s u|| <= tol ||A|| and ||A^T u - s v|| <= tol ||A||.
// v0: host m x k0 right vectors (warm start).
template <class B>
SingularOut top_singular(B& ops, int k, const Options& opt, const double* v0, int k0) {
  static_assert(KeepsLeft<B>::value, "a Gram backend returns B X with its pass (apply_keep)");
  constexpr double eps = B::kSingle ? double(std::numeric_limits<float>::epsilon())
                                    : std::numeric_limits<double>::epsilon();
  const int64_t n = ops.n(), m = ops.m(), d = ops.dim(), o = ops.other();
  const size_t ds = static_cast<size_t>(d);
  // For float matrices the tolerance is floored at 1e-4 (products accumulate
  // in float, and the Gram operator squares their rounding error).
  const double tol = std::max(opt.tol, B::kSingle ? 1e-4 : 4 * eps);
  const Plan plan = plan_singular(n, m, k, opt, v0 ? k0 : 0, B::kWideBlock, B::kMaxBlock);
  if (plan.dense) {
    SingularOut dn = ops.dense(k);
    dn.info.tol_used = tol;
    dn.info.block = plan.block;
    if (opt.resolvable) dn.info.spacing.assign(k, 0.0);  // (a direct solve certifies every value to tol)
    return dn;
  }
  SingularOut out;
  out.info.tol_used = tol;
  out.info.block = plan.block;
  const int64_t max_passes = opt.max_passes > 0 ? opt.max_passes : 1000;

  // Warm start on the basis side (A v0 when the basis is on the left).
  std::vector<double> warm;
  int kw = 0;
  if (v0 && k0 > 0) {
    kw = std::min(k0, plan.block);
    warm.resize(ds * kw);
    if (ops.basis_right())
      std::memcpy(warm.data(), v0, sizeof(double) * warm.size());
    else
      ops.warm_left(v0, kw, warm.data());
    out.info.matrix_passes += ops.take_passes();
  }
  double inner = tol;
  auto make_accept = [](double t) -> Accept {
    return [t](double theta, double res, double nrm) {
      const double s1 = std::sqrt(nrm), s = std::sqrt(std::max(theta, 0.0));
      return res <= std::max(t * s1 * s, 100 * eps * nrm);
    };
  };
  // The tracking certificate (Options::resolvable) on the Gram values theta = s^2,
  // whose residuals are s times those of the triplets.
  const std::function<AcceptSet(double)> make_accept_set = [&opt](double t) -> AcceptSet {
    if (!opt.resolvable) return {};
    return [t](const std::vector<double>& th, const std::vector<double>& rg, double nrm) {
      const double s1 = std::sqrt(nrm);
      std::vector<double> sv(th.size()), rv(rg.size()), spacing;
      for (size_t i = 0; i < th.size(); ++i) sv[i] = std::sqrt(std::max(th[i], 0.0));
      for (size_t i = 0; i < rg.size(); ++i) rv[i] = sv[i] > 0 ? rg[i] / sv[i] : rg[i] / s1;
      return certify_resolvable(sv, rv, std::max(t * s1, 100 * eps * s1), s1, spacing);
    };
  };
  Random rnd{opt.seed, 0};
  // A warm start first applies the whole previous block (one block step). When
  // that step finds the block close to invariant (the matrix moved little, as
  // from one training step to the next) the wide block goes on and certifies it
  // in a few more steps. Otherwise the wide block costs more per pass than it
  // saves, and the solve continues with the narrow cold block started from
  // random mixtures of the current Ritz vectors.
  bool probe_warm = !warm.empty() && plan.probe_warm;
  const int extra = ops.basis_right() ? std::max(opt.warm_extra, 0) : 0;
  std::vector<double> Vbasis;  // the certified vectors on the basis side
  struct Problem {
    B& ops;
    SingularOut& out;
    std::vector<double>& warm;
    int& kw;
    Random& rnd;
    bool& probe_warm;
    double& inner;
    std::vector<double>& Vbasis;
    const decltype(make_accept)& accept_for;
    const std::function<AcceptSet(double)>& accept_set_for;
    const Plan& plan;
    const Options& opt;
    const double* v0;  // the caller's warm start (m x k0, host)
    int k0;
    int k, extra;
    int64_t n, m, d, o, max_passes;
    double tol;
    std::vector<double> s_scaled{};
    bool run(int& b, int& cap) {
      const size_t ds = static_cast<size_t>(d);
      for (;;) {
        const int64_t left = max_passes - out.info.matrix_passes;
        // The basis may grow to 256 columns (at most 32 MiB of it) before restarting.
        Budget budget;
        budget.cap_max = opt.max_basis > 0 ? cap
                                           : static_cast<int>(std::min<int64_t>(
                                                 std::max<int64_t>(cap, std::min<int64_t>(256, (int64_t{1} << 22) / d)),
                                                 std::min(n, m) - b));
        budget.pass_flops = 4.0 * static_cast<double>(n) * static_cast<double>(m) * b;
        // The estimates accept at the tolerance itself: the explicit certificate
        // (certify, on the kept products) runs when they do, and the iteration
        // goes on if it fails.
        auto eo = block_lanczos(ops, k, Which::Largest, b, cap, left, warm.empty() ? nullptr : warm.data(), kw, rnd,
                                accept_for(inner), extra, budget, accept_set_for(inner), /*keep_products=*/true,
                                [this](LanczosOut<B>& e) { return certify(e); },
                                probe_warm ? typename LanczosOut<B>::Probe(warm_block_holds)
                                           : typename LanczosOut<B>::Probe{});
        out.info.iterations += eo.iterations;
        out.info.restarts += eo.restarts;
        out.info.matrix_passes += eo.passes + ops.take_passes();
        if (probe_warm) {
          probe_warm = false;
          if (!eo.converged && out.info.matrix_passes < max_passes) {
            const int w = static_cast<int>(eo.theta.size()), bc = plan.cold_block;
            std::vector<double> G(static_cast<size_t>(w) * bc), X(ds * w);
            rnd.fill_host(G.data(), static_cast<int64_t>(G.size()));
            ops.download(eo.X.data(), X.data(), X.size());
            warm.assign(ds * bc, 0.0);
            blas::gemm(blas::Op::N, blas::Op::N, static_cast<int>(d), bc, w, 1.0, X.data(), static_cast<int>(d),
                       G.data(), w, 0.0, warm.data(), static_cast<int>(d));
            kw = bc;
            b = bc;
            cap = capacity_singular(k, b, opt);
            out.info.block = b;
            continue;
          }
        }
        return eo.verified || certify(eo);
      }
    }
    // Certificate on Y = B X and Z = B^T Y for the Ritz block X: the products the
    // sweeps computed, combined like the basis (block_lanczos keeps them), so it
    // costs no pass.
    bool certify(LanczosOut<B>& eo) {
      const size_t ds = static_cast<size_t>(d), os = static_cast<size_t>(o);
      // (Scratch that persists on this thread: a solve in a training loop would
      // otherwise fault fresh pages in every call.)
      double* const sc = host_scratch(3 * (ds + os) * k);
      HostSpan Xd{sc}, Z{sc + ds * k}, BtU{sc + 2 * ds * k}, Y{sc + 3 * ds * k}, Q{Y.p + os * k}, BV{Q.p + os * k};
      ops.download(eo.X.data(), Xd.data(), ds * k);
      ops.download(eo.BX.data(), Y.data(), os * k);
      ops.download(eo.OpX.data(), Z.data(), ds * k);
      // Rayleigh-Ritz with B X: Y = Q R, R = P diag(s) W^T  =>  u = Q P, v = X W.
      std::memcpy(Q.p, Y.p, sizeof(double) * os * k);
      std::vector<double> Rr(static_cast<size_t>(k) * k), P(static_cast<size_t>(k) * k),
                          WT(static_cast<size_t>(k) * k), s(k);
      blas::qr_explicit(static_cast<int>(o), k, Q.data(), static_cast<int>(o), Rr.data(), k);
      if (blas::gesdd(k, k, Rr.data(), k, s.data(), P.data(), k, WT.data(), k) != 0)
        throw std::runtime_error("top_singular: gesdd failed");
      std::vector<double> U(os * k), V(ds * k);
      blas::gemm(blas::Op::N, blas::Op::N, static_cast<int>(o), k, k, 1.0, Q.data(), static_cast<int>(o), P.data(), k,
                 0.0, U.data(), static_cast<int>(o));
      blas::gemm(blas::Op::N, blas::Op::T, static_cast<int>(d), k, k, 1.0, Xd.data(), static_cast<int>(d), WT.data(),
                 k, 0.0, V.data(), static_cast<int>(d));
      blas::gemm(blas::Op::N, blas::Op::T, static_cast<int>(o), k, k, 1.0, Y.data(), static_cast<int>(o), WT.data(),
                 k, 0.0, BV.data(), static_cast<int>(o));
      const double s1 = s[0];
      // Near-zero s (and, for float matrices, values too small for the float
      // products' rounding): B^T U is formed explicitly, one more pass.
      const bool explicit_backward = s[k - 1] <= 1e-6 * s1 ||
                        (B::kSingle && !float_gram_products_certify(s1, s[k - 1], d, o, tol));
      if (!explicit_backward) {
        // B^T u_i = Z w_i / s_i.
        blas::gemm(blas::Op::N, blas::Op::T, static_cast<int>(d), k, k, 1.0, Z.data(), static_cast<int>(d),
                   WT.data(), k, 0.0, BtU.data(), static_cast<int>(d));
        for (int j = 0; j < k; ++j) blas::scal(static_cast<int>(d), 1.0 / s[j], BtU.data() + at(0, j, d));
      } else {
        ops.backward(U.data(), k, BtU.data());
        ++out.info.matrix_passes;
      }
      out.info.residuals.assign(k, 0.0);
      out.info.norm_estimate = std::max(s1, std::sqrt(eo.norm));
      bool ok = true;
      for (int j = 0; j < k; ++j) {
        double x = 0, y = 0;
        for (size_t i = 0; i < os; ++i) x += std::pow(BV[at(i, j, o)] - s[j] * U[at(i, j, o)], 2);
        for (size_t i = 0; i < ds; ++i) y += std::pow(BtU[at(i, j, d)] - s[j] * V[at(i, j, d)], 2);
        out.info.residuals[j] = std::sqrt(std::max(x, y));
        ok = ok && out.info.residuals[j] <= tol * out.info.norm_estimate;
      }
      // Back from the range-scaled operator; a NaN or infinity anywhere is never certified.
      const double scale = ops.range_scale();
      bool finite = true;
      s_scaled = s;
      out.s = s;
      for (int j = 0; j < k; ++j) {
        out.s[j] /= scale;
        out.info.residuals[j] /= scale;
        finite = finite && std::isfinite(out.s[j]) && std::isfinite(out.info.residuals[j]);
      }
      out.info.norm_estimate /= scale;
      ok = ok && finite;
      if (opt.resolvable) {
        std::vector<double> sv = out.s;
        const double s_next = std::sqrt(std::max(eo.theta_next, 0.0));
        sv.push_back(s_next / scale);  // (NaN when none: never linked)
        std::vector<double> rv = out.info.residuals;
        rv.push_back(s_next > 0 ? eo.res_next / s_next / scale : eo.res_next);  // (a Gram residual is s times the triplet's)
        ok = finite && certify_resolvable(sv, rv, tol * out.info.norm_estimate,
                                          out.info.norm_estimate, out.info.spacing);
      }
      // B = A (basis right): u left, v right. B = A^T: v is the left vector of A.
      const bool right = ops.basis_right();
      out.U = right ? U : V;
      out.V = right ? V : U;
      // Warm start for a nearby matrix: V, then the next Ritz vectors (basis on the right).
      const int ne = right ? eo.next_cols : 0;
      out.warm = out.V;
      if (ne > 0) {
        out.warm.resize(out.V.size() + ds * ne);
        ops.download(eo.Xnext.data(), out.warm.data() + out.V.size(), ds * ne);
      }
      // History: the vectors this solve started from for its isolated values (the
      // outliers) and for its largest value, so that the next warm block spans the
      // extrapolation v_t + (v_t - v_{t-1}) of a vector moving smoothly from step to
      // step, whose error is second order in the step (~12 -> ~8 passes for an
      // escaped outlier at tol 1e-8 along GD). The largest value's, even inside a
      // cluster, carries the direction the whole top of the spectrum moves in along
      // GD: at a bulk edge of N = 2048 layers, 2.9-3.1 -> 1.8-1.9 passes a step for
      // the last hidden layer (those of the other values added nothing more). A
      // block without the next value's vector is no tracking chain, and gets none.
      if (ne > 0 && v0 != nullptr) {
        const double s_next = std::sqrt(std::max(eo.theta_next, 0.0)) / scale, far = kClusterSpacing * out.s[0];
        for (int j = 0; j < std::min(k, k0); ++j) {
          const double below = j + 1 < k ? out.s[j + 1] : s_next;
          if (j > 0 && (out.s[j - 1] - out.s[j] <= far || !(out.s[j] - below > far))) continue;
          out.warm.insert(out.warm.end(), v0 + ds * j, v0 + ds * (j + 1));
        }
      }
      out.warm_cols = static_cast<int>(out.warm.size() / static_cast<size_t>(m));  // (V has m rows)
      out.info.converged = ok;
      out.info.status = ok ? Status::converged : (finite ? Status::not_converged : Status::numerical_issue);
      Vbasis = std::move(V);
      return ok;
    }
    int clusters() const { return largest_cluster(s_scaled, 1e-7 * s_scaled[0]); }
    bool can_escalate() const { return true; }
    void set_block(int b) { out.info.block = b; }
    bool fits(int b, int cap) const { return std::min(n, m) >= cap + b; }
    void widen_dense() {  // (the counts of the Lanczos runs stay)
      const Info before = out.info;
      out = ops.dense(k);
      out.info.matrix_passes += before.matrix_passes;
      out.info.iterations = before.iterations;
      out.info.restarts = before.restarts;
      out.info.tol_used = before.tol_used;
      out.info.block = before.block;
    }
    void rewarm(int b) {
      warm = Vbasis;
      kw = std::min(k, b);
    }
    void tighten(int) { inner *= 0.05; }
    bool passes_left() const { return out.info.matrix_passes < max_passes; }
  } pb{ops, out, warm, kw, rnd, probe_warm, inner, Vbasis, make_accept, make_accept_set, plan, opt, v0, k0, k, extra, n, m, d, o,
       max_passes, tol};
  certify_loop(
      pb, plan.block, plan.cap, opt.block <= 0, [k](int) { return std::min(k + 2, 64); },
      [k, &opt](int bb, int) { return capacity_singular(k, bb, opt); });
  if (opt.resolvable) out.info.spacing.resize(k, 0.0);  // (zeros after a dense fallback: all to tol)
  return out;
}

// ---- stochastic Lanczos quadrature ---------------------------------------------------------

// For each probe the Ritz values (nodes) and squared first components (weights,
// summing to 1) of a Lanczos recurrence with full reorthogonalization. The probes
// run in lockstep, so the operator is applied to a block of `probes` vectors per
// step (one pass). The probes are Gaussian vectors of stream rng::kProbes from
// element 0, normalized: the same on every backend for a seed.
template <class B>
lanczos::Quadrature slq(B& ops, int probes, int degree, uint64_t seed) {
  const int64_t n = ops.dim();
  if (n < 1 || probes < 1 || degree < 1) throw std::invalid_argument("slq: need n, probes, degree >= 1");
  degree = static_cast<int>(std::min<int64_t>(degree, n));
  lanczos::Quadrature q;
  q.probes = probes;
  q.degree = degree;
  q.nodes.assign(static_cast<size_t>(probes) * degree, 0.0);
  q.weights.assign(static_cast<size_t>(probes) * degree, 0.0);
  const size_t nd = static_cast<size_t>(n);
  auto X = ops.block(nd * probes), Y = ops.block(nd * probes), basis = ops.block(nd * (degree + 1) * probes);
  double* const bp = basis.data();
  auto Qp = [bp, nd, degree](int p) { return bp + nd * (degree + 1) * p; };
  std::vector<double> alpha(static_cast<size_t>(probes) * degree, 0.0), beta(static_cast<size_t>(probes) * degree, 0.0);
  std::vector<int> len(probes, 0);
  std::vector<char> active(probes, 1);
  ops.random(X.data(), nd * probes, seed, 0);
  for (int p = 0; p < probes; ++p) {
    double* x = X.data() + nd * p;
    ops.scale(x, 1.0 / ops.norm(x));
    ops.copy(Qp(p), x, nd);
  }
  for (int j = 0; j < degree; ++j) {
    ops.apply(X.data(), Y.data(), probes);
    // Probes in parallel on a CPU, each on one BLAS thread, with fixed-order
    // reductions (the quadrature is the same at any thread count).
    blas::ThreadScope serial_blas(1);
    double* const xp = X.data();
    double* const yp = Y.data();
#pragma omp parallel for schedule(dynamic) if (B::kParallelProbes && !omp_in_parallel())
    for (int p = 0; p < probes; ++p) {
      if (!active[p]) continue;
      std::vector<double> c(degree + 1);
      double* y = yp + nd * p;
      const double* Q = Qp(p);
      const double y0 = ops.norm(y);
      double a = 0;
      ops.tn(Q + nd * j, 1, y, 1, &a);
      alpha[static_cast<size_t>(p) * degree + j] = a;
      // Full reorthogonalization against this probe's basis (two passes).
      for (int pass = 0; pass < 2; ++pass) {
        ops.tn(Q, j + 1, y, 1, c.data());
        ops.nn(Q, j + 1, c.data(), j + 1, 1, -1.0, 1.0, y);
      }
      len[p] = j + 1;
      const double bt = ops.norm(y);
      if (j + 1 < degree) {
        if (bt <= 1e-12 * y0 || bt == 0.0) {
          active[p] = 0;  // invariant subspace: the quadrature is exact
        } else {
          beta[static_cast<size_t>(p) * degree + j] = bt;
          double* x = xp + nd * p;
          ops.normalized(x, y, bt);
          ops.copy(Qp(p) + nd * (j + 1), x, nd);
        }
      }
    }
  }
  for (int p = 0; p < probes; ++p) {
    const int L = len[p];
    std::vector<double> dd(alpha.begin() + static_cast<size_t>(p) * degree,
                           alpha.begin() + static_cast<size_t>(p) * degree + L);
    std::vector<double> ee(std::max(L - 1, 1), 0.0);
    for (int i = 0; i + 1 < L; ++i) ee[i] = beta[static_cast<size_t>(p) * degree + i];
    std::vector<double> Z(static_cast<size_t>(L) * L);
    if (blas::stev(L, dd.data(), ee.data(), Z.data(), L) != 0) throw std::runtime_error("slq: stev failed");
    for (int i = 0; i < degree; ++i) {
      q.nodes[static_cast<size_t>(p) * degree + i] = i < L ? dd[i] : dd[L - 1];
      q.weights[static_cast<size_t>(p) * degree + i] =
          i < L ? Z[static_cast<size_t>(i) * L] * Z[static_cast<size_t>(i) * L] : 0.0;
    }
  }
  return q;
}

}  // namespace specdyn::krylov
