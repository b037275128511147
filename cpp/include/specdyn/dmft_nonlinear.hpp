// Monte Carlo solution of the muP mean-field (DMFT) limit of a two-layer
// nonlinear network f(x) = <w phi(W0 x / sqrt(D))> / gamma0 trained by full-batch
// GD on P fixed samples (docs/theory.md, "Nonlinear two-layer network in muP").
// At N -> infinity the neurons are iid single-site processes driven only by the
// global residual; the average over sites is estimated by M sampled sites.
#pragma once
#include <cstdint>
#include <vector>

namespace specdyn::dmft {

enum class Activation { Linear = 0, Tanh = 1, Relu = 2 };

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

}  // namespace specdyn::dmft
