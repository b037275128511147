// DMFT of deep linear networks (L >= 2 hidden layers, C >= 1 outputs) under muP,
// trained by full-batch GD (docs/theory.md, "Deep linear networks").
// With C outputs the backward variables g^l, v^l and the kernels G^l are
// C-vectors / C x C blocks (one backward signal per output), alpha^l(n, m) is
// D x C, beta^l(n, m) is C x D and r_m is D x C; the equations below are
// written for C = 1 and become matrix products (docs/theory.md). Every
// update carries c / K, K the output normalizer.
//
// Level one (solve_deep_linear): every neuron of hidden layer l carries a
// forward row H^l(n) in R^D (h^l(x) = H^l x / sqrt(D)) and a backward scalar
// g^l(n). At infinite width they are single-site processes, linear in
// Gaussian sources:
//
//   H^l(n) = u^l(n) + sum_{m<n} alpha^l(n, m) g^l(m)            (D-vector)
//   g^l(n) = v^l(n) + sum_{m<n} beta^l(n, m) . H^l(m)           (scalar)
//   alpha^l(n, m) = sigma_{l-1}^2 RH^{l-1}(n, m) + c Phi^{l-1}(n, m) r_m / sqrt(D)
//   beta^l(n, m)  = sigma_l^2     Rg^{l+1}(n, m) + c G^{l+1}(m, n)  r_m / sqrt(D)
//
// u^l (v^l) is Gaussian with covariance sigma_{l-1}^2 Phi^{l-1} (sigma_l^2 G^{l+1});
// u^1 is the constant W0 row, v^L the constant readout w(0); Phi^0 = I_D, G^{L+1} = 1,
// RH^0 = Rg^{L+1} = 0. Kernels Phi^l(n, m) = <H^l(n) H^l(m)^T>, G^l(n, m) =
// <g^l(n) g^l(m)>; responses RH^l(n, m) = <dH^l(n) / dv^l(m)> and Rg^l(n, m) =
// <dg^l(n) / du^l(m)>. Each single-site variable is kept as a coefficient row
// over iid standard Gaussian coordinates (the sources, factored by a growing
// orthonormal basis of the layer they come from) and impulse coordinates (a
// unit perturbation of u^l(m) or v^l(m)): kernels are dot products over the
// Gaussian part, responses are read off the impulse part. Exact up to the
// basis tolerance; cost O(L T^3 D^3).
//
// Level two (deep_linear_outliers): the bulk A_l(0) of hidden layer l
// (1 <= l <= L-1) in its singular basis. Per singular value s the mode rows
// a = v_k^T H^l, b = v_k^T g^l, e = u_k^T H^{l+1}, f = u_k^T g^{l+1} obey
//
//   a(n) = zeta(n) + sum_m alpha^l(n, m) b(m)        e(n) = s a(n) + c sum_m Phi^l(n, m) r_m f(m) / sqrt(D)
//   f(n) = omega(n) + sum_m beta^{l+1}(n, m) . e(m)  b(n) = s f(n) + c sum_m G^{l+1}(m, n) r_m . a(m) / sqrt(D)
//
// with zeta (omega) the source u^l (v^{l+1}) of level one, independent of s.
// A_l(n) = A_l(0) + c U V^T with U = [g^{l+1}(j)] / sqrt(N), V = [q_l(j)] / sqrt(N),
// q_l = H^l r / sqrt(D); in mode coordinates u_k . g^{l+1} = f and v_k . q_l =
// r . a / sqrt(D), so the one-bulk outlier solver applies unchanged.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "specdyn/dmft.hpp"

namespace specdyn::dmft {

struct DeepLinearProblem {
  int depth = 3;        // L hidden layers: W0 (N x D), L - 1 square bulks, readout
  int input_dim = 0;    // D
  int samples = 0;      // P
  int steps = 0;        // T (states 0..T)
  const double* X = nullptr;  // (P, D) row-major
  const double* y = nullptr;  // (P, C) row-major
  int outputs = 1;            // C
  double output_normalizer = 1;  // K: loss (1 / 2 P K) sum |f - y|^2
  std::vector<double> sigma;  // (L + 1) init std of W0, bulks W1..W_{L-1}, readout
  double c = 0;               // update strength eta0 * richness
  double richness = 1;        // beta_f = <H^1 g^1> / richness
  double eta0 = 0;            // normalized sharpness S = eta0 lambda_max(K) / P
  double divergence_bound = 1e8;
  double basis_tol = 1e-12;   // relative: source rows closer than this to the span add no coordinate
  const uint8_t* sharpness_steps = nullptr;  // (T + 1) flags; null: every step
};

struct DeepLinearSolution {
  int depth = 0, input_dim = 0, samples = 0, steps = 0, outputs = 1;
  int diverged_step = -1;  // first step whose loss is not finite or exceeds the bound; -1: none
  double c = 0;                   // the update strength of every step: c / K
  std::vector<double> sigma;
  std::vector<double> loss;       // (T + 1)
  std::vector<double> beta_f;     // (T + 1, D, C)
  std::vector<double> r;          // (T + 1, D, C): X^T (y - f) / P
  std::vector<double> sharpness;  // (T + 1), NaN where not asked
  // per hidden layer l = 1..L at index l - 1; two-time arrays are (T + 1, T + 1, ...) row-major,
  // zero above the diagonal for the causal ones
  std::vector<std::vector<double>> Phi;    // (T+1, T+1, D, D)
  std::vector<std::vector<double>> G;      // (T+1, T+1, C, C)
  std::vector<std::vector<double>> alpha;  // (T+1, T+1, D, C) forward memory kernel, [n][m] for m < n
  std::vector<std::vector<double>> beta;   // (T+1, T+1, C, D) backward memory kernel, [n][m] for m < n
  // sources as coefficient rows over iid standard coordinates: u^l(n) = Uf[l-1][n] (D x ru_max),
  // v^l(n) = Vb[l-1][n] (C x rv_max); ru[l-1], rv[l-1] of those coordinates are used
  std::vector<std::vector<double>> Uf, Vb;
  std::vector<int> ru, rv, ru_max, rv_max;
};

std::shared_ptr<DeepLinearSolution> solve_deep_linear(const DeepLinearProblem& pb);

struct DeepOutlierResult {
  int coef = 0;                          // R = ru + rv coefficient coordinates per node
  std::vector<double> values;            // (n_steps, top_k) outliers of A_l, descending; NaN: none
  std::vector<double> overlap_left;      // (n_steps, top_k)
  std::vector<double> overlap_right;     // (n_steps, top_k)
  std::vector<double> spikes;            // (n_steps, top_k) singular values of A_l(n) - A_l(0) (NaN past rank)
  // mode-average check of level one: (T + 1) traces of Phi^l(n, n), Phi^{l+1}(n, n) and G^{l+1}(n, n), G^l(n, n)
  std::vector<double> phi_in, phi_out, g_out, g_in;
};

// Outliers of hidden bulk `layer` (1..L-1) at the given steps, on the quadrature (s, weights)
// of its quarter circle; edge: the bulk edge 2 sigma_l (1 + margin).
DeepOutlierResult deep_linear_outliers(const DeepLinearSolution& sol, int layer, const double* s,
                                       const double* weights, int nodes, const std::vector<int>& steps,
                                       int top_k, double edge, double history_tol = 1e-13);

}  // namespace specdyn::dmft
