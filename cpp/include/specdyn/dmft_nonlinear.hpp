// Monte Carlo solution of the muP mean-field (DMFT) limit of a two-layer
// nonlinear network f(x) = <w phi(W0 x / sqrt(D))> / gamma0 trained by full-batch
// GD on P fixed samples (docs/theory.md, "Nonlinear two-layer network in muP").
// At N -> infinity the neurons are iid single-site processes driven only by the
// global residual; the average over sites is estimated by M sampled sites.
#pragma once
#include <cstdint>
#include <vector>

#include "specdyn/activation.hpp"

namespace specdyn::dmft {

using Activation = specdyn::Activation;

struct MonteCarloParams {
  double gamma0 = 1.0;     // muP richness; f = <w phi(h)> / gamma0
  double eta0 = 0.1;       // c = eta0 gamma0 is the single-site step size
  double sigma_in = 1.0;   // init std of the W0 rows (fields h = W0 x / sqrt(D))
  double sigma_out = 1.0;  // init std of the readout w
  Activation activation = Activation::Tanh;
  int steps = 100;
  int particles = 1 << 14;      // sampled sites M (even: antithetic pairs (w, W0), (-w, W0))
  uint64_t seed = 0;
  uint64_t replica = 0;         // independent replicas use disjoint random streams
  std::vector<int> tracked;     // steps at which kernels and sharpness are recorded
  double divergence_bound = 1e8;
};

struct MonteCarloResult {
  int diverged_step = -1;
  std::vector<double> loss;       // (T+1)
  std::vector<double> outputs;    // (T+1) x P, row-major
  std::vector<double> phi;        // n_tracked x P x P: Phi = <phi(h_mu) phi(h_nu)>
  std::vector<double> grad;       // n_tracked x P x P: G = <w^2 phi'(h_mu) phi'(h_nu)>
  std::vector<double> sharpness;  // n_tracked: eta0 lambda_max(Phi + G o X X^T / D) / P
};

// X: P x D row-major inputs, Y: P targets.
MonteCarloResult monte_carlo_two_layer(const double* X, const double* Y, int P, int D,
                                       const MonteCarloParams& p);


// ---- Deeper networks: L hidden layers (W0: N x D, W1..W(L-1): N x N, readout) ----
//
// At N -> infinity the neurons of every hidden layer are iid single sites. A site of
// layer l carries the fields h(mu, t) = u(mu, t) + sum_{s<t} K1(t, s) g(s) and
// z(mu, t) = v(mu, t) + sum_{s<=t} K2(t, s) phi(h(s)) (g = phi'(h) z), where u, v are
// Gaussian processes with covariances sigma^2 Phi^{l-1}, sigma^2 G^{l+1} built from
// the other layers' sites, and K1, K2 hold the response functions (averaged tangents)
// and the weight-update terms (docs/theory.md, "Deeper nonlinear networks in muP").

struct DeepMonteCarloParams {
  double gamma0 = 1.0;
  double eta0 = 0.1;
  int depth = 2;                 // L hidden layers (1 = the two-layer model)
  std::vector<double> sigma;     // L + 1 init stds of W0 .. WL
  Activation activation = Activation::Tanh;
  int steps = 20;
  int particles = 1 << 12;       // sites M per hidden layer (even: antithetic readout pairs)
  int response_particles = 1 << 10;  // sites 0..Mr-1 of each layer carry the tangents
  uint64_t seed = 0;
  uint64_t replica = 0;
  std::vector<int> tracked;
  double divergence_bound = 1e8;
};

struct DeepMonteCarloResult {
  int diverged_step = -1;
  std::vector<double> loss;       // (T+1)
  std::vector<double> outputs;    // (T+1) x P
  std::vector<double> phi;        // n_tracked x L x P x P: Phi^l = <phi(h^l_mu) phi(h^l_nu)>, l = 1..L
  std::vector<double> grad;       // n_tracked x L x P x P: G^l = <g^l_mu g^l_nu>
  std::vector<double> sharpness;  // n_tracked: eta0 lambda_max(K) / P
};

// X: P x D row-major inputs, Y: P targets.
DeepMonteCarloResult monte_carlo_deep(const double* X, const double* Y, int P, int D,
                                      const DeepMonteCarloParams& p);

// Bytes of tangent storage monte_carlo_deep needs (for a guard before it runs).
double monte_carlo_deep_tangent_bytes(int depth, int steps, int P, int response_particles);

}  // namespace specdyn::dmft
