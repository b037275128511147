// Internal: the thick-restart block Lanczos engine shared by top_singular,
// top_eigs and (for the block orthogonalization) slq. Not part of the API.
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "specdyn/blas.hpp"
#include "specdyn/lanczos.hpp"

namespace specdyn::lanczos::detail {

// Sets the OpenBLAS thread count for a scope and restores it (also when an
// operator callback throws). The solvers run OpenBLAS single-threaded around
// their own OpenMP sweeps: OpenBLAS workers spin after each call, and on few
// cores they would steal the cores of the next OpenMP region.
struct BlasThreads {
  int saved;
  explicit BlasThreads(int n) : saved(blas::get_num_threads()) {
    if (saved != n) blas::set_num_threads(n);
  }
  ~BlasThreads() {
    if (blas::get_num_threads() != saved) blas::set_num_threads(saved);
  }
};

// Fresh Gaussian columns for random starts and breakdown replacements.
struct Random {
  uint64_t seed = 0;
  uint64_t offset = 0;
  void fill(double* p, int64_t n);
};

// Orthonormalize the d x b block Y against the orthonormal d x nq block Q
// (classical Gram-Schmidt, two passes, BLAS-3) and within itself (Householder QR):
// on return Y_in = Q C + Y R with Y orthonormal and orthogonal to Q.
// Directions of Y_in that are (numerically) already in span(Q) are replaced by
// random orthonormal ones with a zero row of R, so Y is always a full basis.
// scale: a norm the "numerically zero" test is relative to (max with ||Y_in||).
void orth_block(int64_t d, const double* Q, int nq, double* Y, int b, std::vector<double>& C,
                std::vector<double>& R, Random& rnd, double scale);

// accept(theta, residual estimate, norm estimate): is this Ritz pair converged?
using Accept = std::function<bool(double, double, double)>;
// The set version (Options::resolvable): the wanted Ritz values, descending,
// followed by the next one; their residual estimates (wanted only); the norm
// estimate. Replaces the pairwise test when given.
using AcceptSet = std::function<bool(const std::vector<double>&, const std::vector<double>&, double)>;

// The tracking certificate on singular values s (descending: the wanted ones, then
// the next value) with residual bounds r (wanted ones) and norm estimate nrm. A
// value whose nearest neighbour lies closer than kCluster * nrm is inside a cluster
// (the edge of a random bulk: finite-N values there are a fraction of a percent of
// the norm apart and fluctuate by about that much); it is certified once its
// residual is at most kResolve times that spacing, so that it is told apart from
// its neighbours. Any other value (an outlier) is certified when r <= t. Both tests
// only get easier as residuals shrink, so the certificate holds once reached.
// Fills spacing (wanted values: 0 = certified to t, else the nearest spacing).
inline bool certify_resolvable(const std::vector<double>& s, const std::vector<double>& r, double t, double nrm,
                               std::vector<double>& spacing) {
  constexpr double kCluster = 1e-2, kResolve = 0.1;
  const size_t k = r.size();
  spacing.assign(k, 0.0);
  bool ok = true;
  for (size_t i = 0; i < k; ++i) {
    if (r[i] <= t) continue;
    double g = std::numeric_limits<double>::infinity();
    if (i > 0) g = s[i - 1] - s[i];
    if (i + 1 < s.size() && s[i] - s[i + 1] < g) g = s[i] - s[i + 1];  // (NaN next: never smaller)
    if (g <= kCluster * nrm && r[i] <= kResolve * g) {
      spacing[i] = g;
      continue;
    }
    ok = false;
  }
  return ok;
}

struct EngineOut {
  std::vector<double> theta;  // wanted Ritz values (Largest: descending; Both: top desc, bottom asc)
  std::vector<double> X;      // d x theta.size() Ritz vectors
  std::vector<double> Xnext;  // d x (requested extra) Ritz vectors of the next values (Largest)
  std::vector<double> res;    // residual estimates from the Lanczos relation
  int iterations = 0, restarts = 0;
  int64_t passes = 0;
  bool converged = false;
  double norm = 0;            // max |Ritz value| seen
  double theta_next = 0;      // Largest: the Ritz value below the wanted ones (NaN if none)
};

// How the basis may grow and how often the projected problem is solved.
// Both are fixed by the problem's sizes (never by timings), so a solve takes the
// same steps at any thread count.
struct Budget {
  // A full basis first grows (doubling, no restart, nothing lost) up to cap_max
  // columns; only then thick restarts begin. Clustered wanted values (the edge of
  // a bulk) need a long Krylov space, and every restart discards part of it.
  int cap_max = 0;
  // Flops of one application of the operator to a block (0 = unknown: solve the
  // projected problem after every step). When known, the Rayleigh-Ritz solve
  // (about 10 na^3 flops on na basis columns) runs once its cost has been
  // amortized to 5% of the passes since the last one (and at least every
  // tenth of the steps so far), so a large basis does not cost more in small
  // eigenproblems than in passes over the matrix.
  double pass_flops = 0;
};

// Block Lanczos with thick restarts and full reorthogonalization on a
// symmetric operator of dimension d. Requires d >= cap >= want + 2b where
// want = k (Largest) or 2k (Both).
EngineOut block_lanczos(const MatMat& op, int64_t d, int k, Which which, int b, int cap,
                        int64_t max_passes, const double* v0, int k0, Random& rnd, const Accept& accept,
                        int extra = 0, const Budget& budget = {}, const AcceptSet& accept_set = {});

// Range safety. A solve works on a power-of-two multiple (scale * A) of its
// operator whenever the operator's first products leave the range in which
// squares and sums of squares stay normal numbers: Gram entries of a 1e-200
// matrix underflow, those of a 1e160 one overflow. Powers of two scale
// without rounding, so a matrix inside the range gets the same bits as before.
//
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

// Vectorized kernel of one panel of the fused sweep (lanczos_kernels.cpp): y
// (rows x b, row-major) = M_p X and Z += M_p^T y. AVX-512 or AVX2/FMA for
// b <= 8; returns false (doing nothing) otherwise.
bool fused_panel_f64(const double* M, int64_t ld, int64_t rows, int64_t c, const double* X, int b, double* y,
                     double* Z);
// The float version (AVX2/FMA, b <= 4).
bool fused_panel_f32(const float* M, int64_t ld, int64_t rows, int64_t c, const float* X, int b, float* y, float* Z);
inline bool fused_panel(const double* M, int64_t ld, int64_t rows, int64_t c, const double* X, int b, double* y,
                        double* Z) {
  return fused_panel_f64(M, ld, rows, c, X, b, y, Z);
}
inline bool fused_panel(const float* M, int64_t ld, int64_t rows, int64_t c, const float* X, int b, float* y,
                        float* Z) {
  return fused_panel_f32(M, ld, rows, c, X, b, y, Z);
}

}  // namespace specdyn::lanczos::detail
