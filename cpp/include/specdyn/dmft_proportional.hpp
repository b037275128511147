// The proportional two-layer linear model (docs/theory.md, Proportional two-layer model):
// W0 is N x D with N / D = nu fixed, D -> infinity, trained by population GD
// on a linear teacher with isotropic inputs, output f = w . (W0 x / sqrt(D)) / gamma0 / sqrt(N),
// raw learning rate eta0 gamma0^2 N. In the limit each singular mode of the
// Marchenko-Pastur bulk A(0) = W0(0) / sqrt(D) evolves linearly in its two
// initial values (readout component, target component); the recursion closes
// on the two-time correlations Cw (readout) and Ce (error), and the outliers of
// A(t) are roots of a small determinant built from mode averages.
#pragma once
#include <cstdint>
#include <vector>

namespace specdyn::dmft {

struct ProportionalParams {
  double nu = 1.0;          // N / D
  double gamma0 = 1.0;      // output scale gamma = gamma0
  double eta0 = 0.1;        // raw eta = eta0 gamma0^2 N; c = eta0 gamma0 enters the recursion
  double sigma_in = 1.0;    // std of the raw entries of W0 (bulk scale)
  double sigma_out = 1.0;   // std of the readout w at initialization
  double noise = 0.0;       // label-noise std (adds noise^2 / 2 to the population loss)
  int steps = 100;          // number of GD steps T (state at t = 0..T)
  int nodes = 400;          // Gauss nodes of the Marchenko-Pastur law (paired modes)
  std::vector<int> tracked; // steps at which the outliers are solved (ascending, within 0..T)
  int top_k = 4;            // outliers reported per tracked step
  double edge_margin = 1e-4;   // outliers must exceed the bulk edge by this (absolute)
  double rank_tol = 1e-11;     // relative cut-off when compressing the histories
  double divergence_bound = 1e8;  // loss above this stops the recursion
};

struct ProportionalResult {
  int steps = 0;
  int diverged_step = -1;                 // first step with loss > bound (or non-finite), -1 if none
  std::vector<double> loss;               // (T+1): population loss L(t)
  std::vector<double> readout_norm2;      // (T+1): Cw(t, t) = |w(t)|^2 / N
  std::vector<double> readout_delta2;     // (T+1): |w(t) - w(0)|^2 / N
  // per tracked step (n_tracked x top_k, row-major, NaN where none):
  std::vector<double> outliers;           // singular values of A(t) above the bulk edge
  std::vector<double> delta_singular;     // singular values of A(t) - A(0)
  std::vector<double> overlap_left;       // |<u_hat_k, u_spike_1>|^2 (readout side), per outlier
  std::vector<double> overlap_right;      // |<v_hat_k, v_spike_1>|^2 (input side), per outlier
  std::vector<double> top_singular;       // (n_tracked): largest singular value (outlier or edge)
  std::vector<double> sharpness;          // (n_tracked): eta0 (s_top^2 + nu Cw(t,t))
  std::vector<int> history_rank;          // (n_tracked): rank r of the compressed perturbation
  double edge = 0.0;                      // bulk edge sigma_in (1 + sqrt(nu))
};

ProportionalResult solve_proportional(const ProportionalParams& p);

}  // namespace specdyn::dmft
