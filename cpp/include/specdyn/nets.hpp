// Finite-width MLPs (docs/theory.md, Notation and scalings): forward, backward, fused (S)GD
// updates, NTK Gram, exact Hessian-vector products, and a training loop that
// tracks spectra on a schedule without returning to Python between steps.
//
// Layouts: a weight matrix W^l is stored row-major (fan_out x fan_in), the
// NumPy layout of a (fan_out, fan_in) array. Activations of n samples are
// column-major (features x n), i.e. a row-major NumPy (n, features) array:
// inputs X (n, D) and targets Y (n, C) are passed as they are.
//
//   h^1 = m_0 W^0 x,  h^{l+1} = m_l W^l phi(h^l),  f = m_L W^L phi(h^L)
//
// The multipliers m_l, initial stds and the raw learning rate come from
// python/specdyn/parameterization.py; nothing here knows about widths.
#pragma once
#include <cstdint>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "specdyn/activation.hpp"
#include "specdyn/lanczos.hpp"

namespace specdyn::nets {

using Activation = specdyn::Activation;

struct Arch {
  int64_t input_dim = 1, width = 1, output_dim = 1;
  int depth = 1;  // L hidden layers; weight matrices W^0 .. W^L
  Activation activation = Activation::Linear;
  std::vector<double> multipliers;  // m_0 .. m_L

  int layers() const { return depth + 1; }
  int64_t fan_in(int l) const { return l == 0 ? input_dim : width; }
  int64_t fan_out(int l) const { return l == depth ? output_dim : width; }
  int64_t size(int l) const { return fan_in(l) * fan_out(l); }
  int64_t num_params() const;
  void check() const;  // throws std::invalid_argument on inconsistent shapes
};

// Buffers of one pass over n samples. H[0] points at the inputs (D x n);
// H[l] (width x n) holds phi(h^l) for l = 1..L; F (C x n) the outputs;
// E is the output-side error signal, B0/B1 scratch for the backward pass.
template <class T>
struct Pass {
  int64_t n = 0;
  double n_norm = 1;  // E = (F - Y) / n_norm after residual()
  const T* X = nullptr;
  std::vector<std::vector<T>> H;  // H[0] unused (inputs live in X)
  std::vector<T> F, E, B0, B1;
  void resize(const Arch& a, int64_t n);
  const T* input(int l) const { return l == 0 ? X : H[l].data(); }
};

template <class T>
using Weights = std::vector<T*>;
template <class T>
using ConstWeights = std::vector<const T*>;

// Forward pass over X (n x D row-major). Fills ps.H and ps.F.
template <class T>
void forward(const Arch& a, const ConstWeights<T>& W, const T* X, int64_t n, Pass<T>& ps);

// Sets ps.E = (F - Y) / n_norm and returns the loss (1 / 2 n_norm) sum |F - Y|^2 (double accumulation).
template <class T>
double residual(const Arch& a, const T* Y, double n_norm, Pass<T>& ps);

// What the backward pass does with each layer's gradient m_l E^{l+1} H^l^T.
struct BackwardMode {
  enum Kind { Update, Gradient, SignalOnly } kind = SignalOnly;
  double learning_rate = 0;  // Update: W^l -= learning_rate * grad
};

// Backward pass from ps.E (consumed). Update mode changes W in place (after
// using W^l for the signal below it). Gradient mode writes grads[l]
// (row-major like W). When mean_signal is non-null, mean_signal[l] receives the
// mean over samples of E^{l+1} (the backward signal at the output of W^l,
// fan_out(l) values).
template <class T>
void backward(const Arch& a, const Weights<T>& W, Pass<T>& ps, const BackwardMode& mode,
              const Weights<T>* grads = nullptr, std::vector<std::vector<double>>* mean_signal = nullptr);

// NTK Gram K ((n C) x (n C), row-major, index mu * C + a) over all parameters
// at the inputs of a completed forward pass ps.
template <class T>
void ntk_gram(const Arch& a, const ConstWeights<T>& W, const Pass<T>& ps, std::vector<double>& K);

// Exact Hessian-vector product of L = (1/2n) sum |f - y|^2 (forward-over-reverse,
// Pearlmutter's R-operator) at the forward pass ps (whose E holds (F - Y)/n).
// V and HV are lists of row-major matrices shaped like W.
template <class T>
void hvp(const Arch& a, const ConstWeights<T>& W, const Pass<T>& ps, const ConstWeights<T>& V,
         const Weights<T>& HV);

// The teacher of specdyn.data.teacher: x ~ N(0, I_D) (stream rng::kData + 1,
// sample mu at element mu * D), beta (C x D) ~ N(0, 1) (stream rng::kData),
// y = g(scale * beta x) + noise * eps (eps: stream rng::kData + 2, element mu * C + c),
// g = identity (kind 0) or tanh (kind 1). Samples first .. first + n - 1.
template <class T>
void teacher(int64_t first, int64_t n, int64_t D, int64_t C, uint64_t seed, int kind, double scale,
             double noise, T* X, T* Y);

// out[r] = (v_r . d)^2 / |d|^2 for the k unit columns v_r of V (dim x k, column-major): the
// squared overlap of singular vectors with a layer's mean signal d (NaN when d = 0).
void squared_overlaps(const double* V, int64_t dim, int64_t k, const double* d, double* out);

struct TrainSpec {
  Arch arch;
  std::vector<double> init_stds;    // raw std of each W^l at initialization
  std::vector<double> normalizers;  // normalized matrix = normalizer * W
  double learning_rate = 0;
  // K of the loss (1 / 2 n K) sum |f - y|^2 over n samples: 1 sums over the outputs,
  // C averages over them (parameterization.output_normalizer)
  double output_normalizer = 1;
  int64_t samples = 1;  // P: the training set (or, online, the evaluation set)
  int64_t batch = 0;    // samples per step; == samples and !online means full-batch GD
  bool online = false;
  int64_t steps = 0;
  uint64_t seed = 0, data_seed = 0;
  int teacher_kind = 0;
  double teacher_scale = 1, noise = 0;
  std::vector<int64_t> tracked_steps, bulk_steps;
  int top_k = 4;
  bool track_spectra = true, track_delta = true, track_overlaps = true;
  bool track_sharpness = true, track_hessian = false, track_beta = false;
  int bulk_bins = 80;
  double divergence_bound = 1e8;
  // Lanczos tolerance. 0: the default of the dtype (1e-8, float 1e-4) with the
  // tracking certificate (clustered bulk-edge values certified to a tenth of their
  // spacing, see lanczos::Options::resolvable); a tolerance given is applied to every value.
  double svd_tol = 0;
};

// Tracked quantities; arrays over tracked steps, NaN where not recorded.
struct Record {
  int64_t T = 0, Lw = 0, k = 0, D = 0, nb = 0, bins = 0;
  std::vector<double> loss, sharpness, hessian;  // T
  std::vector<double> sv, dsv, ov_in, ov_bw;     // T x Lw x k
  std::vector<double> wnorm;                     // T x Lw
  std::vector<double> beta_f;                    // T x D
  std::vector<double> bulk_counts, bulk_edges;   // nb x Lw x bins, nb x Lw x (bins + 1)
  void init(const TrainSpec& s);
};

template <class T>
class Trainer {
 public:
  // X (P x D) and Y (P x C) row-major: the training (online: evaluation) set.
  Trainer(const TrainSpec& spec, const T* X, const T* Y);

  // Advance until step == until (<= spec.steps); tracks every tracked step
  // < until, and step `steps` itself when until == steps. progress(step, loss)
  // is called at most every `progress_interval` seconds. Returns the step.
  int64_t run(int64_t until, const std::function<void(int64_t, double)>& progress = {},
              double progress_interval = 0.5);

  // The measurements of step t (a tracked or bulk step) that the device trainer cannot make,
  // at the weights set through weights(l): NTK sharpness, Hessian, beta_f (as switched on in
  // the spec) and the bulk histograms. No step is taken, nothing else is measured (loss,
  // norms, spectra and overlaps come from the device) and the position is not moved.
  void measure(int64_t t);

  int64_t step() const { return step_; }
  bool finished() const { return finished_; }
  int64_t diverged_step() const { return diverged_; }
  const Record& record() const { return rec_; }
  Record& record() { return rec_; }
  const TrainSpec& spec() const { return spec_; }

  // State for checkpoints: weights, initial weights, warm-start vectors.
  std::vector<T>& weights(int l) { return W_[l]; }
  std::vector<T>& initial_weights(int l) { return W0_[l]; }
  std::vector<T>& warm(int l, bool delta) { return delta ? warm_delta_[l] : warm_[l]; }
  std::vector<double>& hessian_warm() { return hess_warm_; }
  // Throws std::invalid_argument unless 0 <= step <= steps, finished only at step == steps
  // (and not diverged), diverged == -1 or diverged == step.
  void set_position(int64_t step, bool finished, int64_t diverged) {
    if (step < 0 || step > spec_.steps) throw std::invalid_argument("checkpoint step outside [0, steps]");
    if (finished && (step != spec_.steps || diverged != -1))
      throw std::invalid_argument("checkpoint finished only at step == steps and not diverged");
    if (diverged != -1 && diverged != step)
      throw std::invalid_argument("checkpoint diverged_step must be -1 or the step it stopped at");
    step_ = step;
    finished_ = finished;
    diverged_ = diverged;
  }

 private:
  bool body();  // one step at step_: track if scheduled, then update; false when stopped
  void track(int64_t ti, int64_t bi, Pass<T>& eval);
  void track_function(int64_t ti, Pass<T>& eval, bool with_beta = true);  // sharpness, Hessian, beta_f
  bool beta_tracked() const;  // a linear net with one output: beta_f is recorded
  // The layers top-down: their solves (solve), norms (norms) and a linear net's beta_f.
  void read_layers(int64_t ti, bool solve, bool norms);
  // sums: RowSums of A from the solve's first sweep (left not done by a dense solve).
  void top_singular(int l, const T* A, bool delta, int64_t ti, lanczos::RowSums* sums = nullptr);
  void overlaps(int64_t ti, const Pass<T>& eval, const std::vector<std::vector<double>>& means);
  double ntk_top(const Pass<T>& eval);
  double hessian_top(const Pass<T>& eval);
  void bulk(int64_t bi);
  void draw_batch(int64_t t);

  TrainSpec spec_;
  Record rec_;
  std::vector<std::vector<T>> W_, W0_, warm_, warm_delta_;
  bool resolvable_ = false;  // svd_tol left to its default: the tracking certificate
  std::vector<std::vector<double>> U_, V_;  // singular vectors of the current tracked step
  std::vector<T> X_, Y_, Xb_, Yb_, scratch_;
  std::vector<int64_t> perm_;
  Pass<T> pass_, eval_;
  int64_t step_ = 0, diverged_ = -1;
  bool finished_ = false;
  double last_loss_ = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> hess_warm_;
};

}  // namespace specdyn::nets
