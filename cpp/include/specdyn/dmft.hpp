// DMFT of the one-bulk model (docs/theory.md, One-bulk model): a linear network
// h1 = W0 x / sqrt(D), h2 = A h1, f = w . h2 / (gamma sqrt(N)) under muP,
// solved through the singular modes of the bulk A(0).
//
// Level one (solve_modes): the mode recursion. Each node k carries a bulk
// singular value s_k and the coefficient rows of omega_k(n) = u_k . w(n),
// zeta_k(n) = W0(n)^T v_k and y_k(n) = (A(n) W0(n))^T u_k in a fixed
// R-dimensional initial vector. Mode averages are plain dot products after
// scaling every node by sqrt(weight_k). The same code runs
//   * the N -> infinity limit: quadrature nodes, R = 1 + D coefficient rows;
//   * one finite network: the N actual SVD modes of A(0), weights 1/N, R = 1
//     (then it reproduces finite-width GD to rounding).
// The histories of omega and qhat are kept in an orthonormal basis that grows
// only when a new row leaves the span of the old ones by more than
// history_tol (relative); history_tol = 0 keeps them exactly.
//
// Level two (outliers): the singular values of A(n) = A(0) + c U V^T above
// the bulk edge, as the z where an eigenvalue of
//   F(z) = Cm^{-1} - G(z),  G = [[Guu, Guv], [Guv^T, Gvv]]
// crosses zero, on the spike basis of U V^T (its SVD from the compressed
// histories). By Haynsworth inertia, #(singular values of A above z) =
// #(negative eigenvalues of F(z)) - r for z above the bulk.
#pragma once
#include <cstdint>
#include <vector>

namespace specdyn::dmft {

struct ModeProblem {
  int nodes = 0;       // M
  int coef = 0;        // R, length of a coefficient row
  int input_dim = 0;   // D
  int samples = 0;     // P
  int steps = 0;       // T (T + 1 states 0..T)
  const double* s = nullptr;        // (M) bulk singular values
  const double* weights = nullptr;  // (M) quadrature weights (sum 1) or 1/N
  const double* a0 = nullptr;       // (M, R) row-major: omega coefficient rows at t = 0
  const double* B0 = nullptr;       // (M, D, R) row-major: zeta coefficient rows at t = 0
  const double* X = nullptr;        // (P, D) row-major inputs
  const double* y = nullptr;        // (P) targets
  double c = 0;          // update strength eta0 * richness
  double richness = 1;   // gamma0 of beta_f = <zeta m> / gamma0
  double eta0 = 0;       // width-free learning rate (normalized sharpness)
  double history_tol = 1e-13;
  const uint8_t* sharpness_steps = nullptr;  // (T + 1) flags; null: every step
  // C outputs (solve_modes_outputs): a0 is (M, C, R), y is (P, C); the loss is
  // (1 / 2 P K) sum |f - y|^2 with K = output_normalizer, every update carries c / K
  int outputs = 1;
  double output_normalizer = 1;
};

struct ModeSolution {
  int steps = 0, nodes = 0, coef = 0, input_dim = 0;
  std::vector<double> loss;        // (T + 1)
  std::vector<double> beta_f;      // (T + 1, D)
  std::vector<double> Cw, Cq;      // (T + 1, T + 1) symmetric: <omega(i) omega(j)>, <qhat(i) qhat(j)>
  std::vector<double> Cqm;         // (T + 1, T + 1): [j, n] = <qhat(j) m(n)> for j <= n, 0 below
  std::vector<double> sharpness;   // (T + 1), NaN where not asked
  // compressed histories: row n of omega (qhat) = Ca[n, :] Qa (Cqc[n, :] Qq), scaled by sqrt(weight)
  int rank_a = 0, rank_q = 0, cap = 0;
  std::vector<double> Qa, Qq;      // (rank, M R) row-major orthonormal rows
  std::vector<double> Ca, Cqc;     // (T + 1, cap)
  std::vector<int> rank_a_at, rank_q_at;  // (T + 1) basis ranks once row n was added
  std::vector<double> s_row;       // (M R) s_k repeated R times
};

ModeSolution solve_modes(const ModeProblem& pb);

// The recursion with C outputs (docs/theory.md, One-bulk model with C outputs):
// omega_k, qhat_k, m_k are C-vectors, the two-time kernels C x C blocks
//   Cw[(j, a), (n, b)] = <omega_a(j) omega_b(n)>,  Cq likewise with qhat.
// Full histories, one gemm per history sum: O(T^2 C^2 M R). At C = 1 it is
// the recursion of solve_modes.
struct OutputsSolution {
  int steps = 0, outputs = 0, input_dim = 0;
  std::vector<double> loss;        // (T + 1)
  std::vector<double> beta_f;      // (T + 1, D, C)
  std::vector<double> Cw, Cq;      // ((T + 1) C, (T + 1) C) symmetric, row (j, a) = j C + a
  std::vector<double> sharpness;   // (T + 1), NaN where not asked
  // the histories of omega and qhat with one row per (step, output), compressed as
  // solve_modes keeps them: outliers(history, n C, ...) are those of A(n)
  ModeSolution history;
};

OutputsSolution solve_modes_outputs(const ModeProblem& pb);

// In-order Gram-Schmidt (two passes) of the rows of hist (rows x L) into an
// orthonormal basis Q: a row is added whenever one leaves the span by more than
// tol |row|; C[n, :rank] = Q row_n, rank_at[n] = rank after row n.
void compress_rows(const std::vector<double>& hist, int rows, int L, int cap, double tol, std::vector<double>& Q,
                   std::vector<double>& C, std::vector<int>& rank_at, int& rank);

struct OutlierResult {
  std::vector<double> values;          // (top_k) outliers, descending; NaN: none
  std::vector<double> overlap_left;    // (top_k) |<u_hat_i, u_spike_1>|^2
  std::vector<double> overlap_right;   // (top_k) |<v_hat_i, v_spike_1>|^2
  std::vector<double> spikes;          // singular values theta of U V^T (not times c), descending
  int rank = 0;                        // spikes kept in the determinant
};

// Outliers of A(step) above `edge` (2 sigma (1 + margin) in the limit, the
// largest s_k at finite N). spike_tol drops spikes below spike_tol * theta_1.
OutlierResult outliers(const ModeSolution& sol, int step, int top_k, double c, double edge,
                       double spike_tol = 1e-12);

}  // namespace specdyn::dmft
