// Full-batch GD of an MLP (nets.hpp notation and layouts) as a sequence of
// device launches: forward, loss, backward with the fused update, all in
// device memory; the host sees the state only when it asks (tracked steps).
// The driver is written against the launcher interface of gpu_exec.hpp, so
// the same code runs on the device (CudaExec, cuda/nets_train.cu) and, launch
// for launch, on the host (HostExec), where CPU tests compare it with the CPU
// engine (nets::Trainer). The parameterization numbers (multipliers, initial
// stds, the raw learning rate) come from python/specdyn/parameterization.py.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "specdyn/activation.hpp"
#include "specdyn/gpu_exec.hpp"
#include "specdyn/rng.hpp"

namespace specdyn::nets {

struct DeviceTrainSpec {
  int64_t input_dim = 1, width = 1, output_dim = 1, samples = 1;
  int depth = 1;
  Activation activation = Activation::Linear;
  std::vector<double> multipliers;  // m_0 .. m_L
  std::vector<double> init_stds;    // raw std of each W^l
  double learning_rate = 0;
  double output_normalizer = 1;     // K of the loss (1 / 2 P K) sum |f - y|^2 (nets::TrainSpec)
  uint64_t seed = 0;
  double divergence_bound = 1e8;

  int layers() const { return depth + 1; }
  int64_t fan_in(int l) const { return l == 0 ? input_dim : width; }
  int64_t fan_out(int l) const { return l == depth ? output_dim : width; }
  int64_t size(int l) const { return fan_in(l) * fan_out(l); }
  void check() const {
    if (input_dim < 1 || width < 1 || output_dim < 1 || depth < 1 || samples < 1)
      throw std::invalid_argument("device trainer: dimensions, depth and samples must be >= 1");
    if (static_cast<int>(multipliers.size()) != layers() || static_cast<int>(init_stds.size()) != layers())
      throw std::invalid_argument("device trainer: need one multiplier and one init std per weight matrix");
    if (!(output_normalizer >= 1.0 && std::isfinite(output_normalizer)))
      throw std::invalid_argument("device trainer: output_normalizer must be finite and >= 1");
  }
};

// What the bindings see: no launcher or CUDA type in it.
class DeviceTrainer {
 public:
  virtual ~DeviceTrainer() = default;
  // Full GD steps until step == until; the loss of every step is kept on the
  // device and checked (non-finite or > divergence_bound) every few steps:
  // on divergence at step t the run stops with diverged_step() = t.
  virtual int64_t run(int64_t until) = 0;
  // Forward pass and loss at the current weights (no update); records the loss of this step.
  virtual double evaluate() = 0;
  virtual int64_t step() const = 0;
  virtual int64_t diverged_step() const = 0;
  virtual std::vector<double> losses() = 0;  // losses of steps 0..step() (NaN where not computed)
  virtual std::vector<double> frobenius_norms() = 0;  // |W^l|_F, raw (not normalized)
  virtual void copy_weights(int l, void* host) = 0;   // row-major (fan_out, fan_in), in the trainer's dtype
  // W^l in the trainer's memory (device memory on a GPU), row-major (fan_out, fan_in): the
  // device Krylov solvers read it in place.
  virtual const void* weights_data(int l) const = 0;
  // W^l - W^l(0) in a work matrix of the trainer's memory (valid until the next call), laid
  // out as weights_data: the delta spectra are solved on it in place.
  virtual const void* delta_data(int l) = 0;
  // After evaluate() at the current step: the mean over samples of each layer's input
  // (inputs[l], fan_in(l) values: x, then phi(h^l)) and of the backward signal at its output
  // (backward[l], fan_out(l) values: dL/dh^{l+1} up to the loss normalization), by a
  // signal-only backward pass on the device; only these sums come to the host.
  virtual void signal_means(std::vector<std::vector<double>>& inputs,
                            std::vector<std::vector<double>>& backward) = 0;
  virtual const DeviceTrainSpec& spec() const = 0;
  virtual int status() const = 0;  // launcher error code (0: none)
};

namespace device {

// phi(h) in place.
template <class T>
struct Activate {
  T* z;
  Activation act;
  SPECDYN_GPU_HD void operator()(int64_t i) const {
    const T v = z[i];
    if (act == Activation::Tanh)
      z[i] = static_cast<T>(tanh(static_cast<double>(v)));
    else if (act == Activation::Relu)
      z[i] = v < T(0) ? T(0) : v;  // NaN is kept: divergence stays visible
  }
};

// b *= phi'(h), written through H = phi(h).
template <class T>
struct TimesDerivative {
  T* b;
  const T* h;
  Activation act;
  SPECDYN_GPU_HD void operator()(int64_t i) const {
    if (act == Activation::Tanh)
      b[i] *= T(1) - h[i] * h[i];
    else if (act == Activation::Relu)
      b[i] = h[i] > T(0) ? b[i] : T(0);
  }
};

// E = (F - Y) / n_norm, elementwise.
template <class T>
struct ErrorSignal {
  const T *F, *Y;
  T* E;
  T inv;
  SPECDYN_GPU_HD void operator()(int64_t i) const { E[i] = (F[i] - Y[i]) * inv; }
};

// loss = sum (F - Y)^2 / (2 n_norm) in double (block 0).
template <class T>
struct LossSum {
  const T *F, *Y;
  double* out;
  int64_t len_;
  double n_norm;
  SPECDYN_GPU_HD int64_t len(int) const { return len_; }
  SPECDYN_GPU_HD double term(int, int64_t i) const {
    const T r = F[i] - Y[i];
    return static_cast<double>(r) * static_cast<double>(r);
  }
  SPECDYN_GPU_HD void store(int, double v) const { *out = v / (2.0 * n_norm); }
};

// D = W - W0, elementwise.
template <class T>
struct Difference {
  const T *W, *W0;
  T* D;
  SPECDYN_GPU_HD void operator()(int64_t i) const { D[i] = W[i] - W0[i]; }
};

// out[r] = (1 / n) sum_j A(r, j) of a column-major rows x n matrix (block = row).
template <class T>
struct RowMeans {
  const T* A;
  int64_t rows, n;
  double* out;
  SPECDYN_GPU_HD int64_t len(int) const { return n; }
  SPECDYN_GPU_HD double term(int r, int64_t j) const { return static_cast<double>(A[j * rows + r]); }
  SPECDYN_GPU_HD void store(int r, double v) const { out[r] = v / static_cast<double>(n); }
};

// Partial sums of squares over kChunks fixed chunks of a matrix (block = chunk).
constexpr int kChunks = 512;
template <class T>
struct SquareChunks {
  const T* A;
  int64_t n;
  double* part;
  SPECDYN_GPU_HD int64_t chunk() const { return (n + kChunks - 1) / kChunks; }
  SPECDYN_GPU_HD int64_t len(int b) const {
    const int64_t lo = b * chunk();
    return lo >= n ? 0 : (n - lo < chunk() ? n - lo : chunk());
  }
  SPECDYN_GPU_HD double term(int b, int64_t i) const {
    const double v = static_cast<double>(A[b * chunk() + i]);
    return v * v;
  }
  SPECDYN_GPU_HD void store(int b, double v) const { part[b] = v; }
};

struct SumParts {
  const double* part;
  double* out;
  SPECDYN_GPU_HD int64_t len(int) const { return kChunks; }
  SPECDYN_GPU_HD double term(int, int64_t i) const { return part[i]; }
  SPECDYN_GPU_HD void store(int, double v) const { *out = sqrt(v); }
};

}  // namespace device

template <class Exec, class T>
class DeviceTrainerImpl final : public DeviceTrainer {
 public:
  // X (P x D) and Y (P x C) row-major host arrays: the training set.
  DeviceTrainerImpl(const DeviceTrainSpec& spec, const T* X, const T* Y) : s_(spec) {
    s_.check();
    const int nl = s_.layers();
    const int64_t P = s_.samples;
    W_.resize(nl);
    W0_.resize(nl);
    int64_t largest = 1;
    for (int l = 0; l < nl; ++l) {
      W_[l] = ex_.template alloc<T>(s_.size(l));
      // the CPU engine's stream: element e of W^l is element e of (seed, kWeights + l)
      ex_.normal_fill(W_[l], s_.size(l), s_.seed, rng::kWeights + static_cast<uint64_t>(l), s_.init_stds[l]);
      W0_[l] = ex_.template alloc<T>(s_.size(l));
      ex_.copy(W0_[l], W_[l], s_.size(l));
      largest = std::max(largest, s_.size(l));
    }
    delta_ = ex_.template alloc<T>(largest);
    X_ = ex_.template alloc<T>(P * s_.input_dim);
    Y_ = ex_.template alloc<T>(P * s_.output_dim);
    ex_.to_device(X_, X, P * s_.input_dim);
    ex_.to_device(Y_, Y, P * s_.output_dim);
    H_.assign(nl, nullptr);
    for (int l = 1; l <= s_.depth; ++l) H_[l] = ex_.template alloc<T>(s_.width * P);
    F_ = ex_.template alloc<T>(s_.output_dim * P);
    E_ = ex_.template alloc<T>(s_.output_dim * P);
    const int64_t rows = s_.width > s_.output_dim ? s_.width : s_.output_dim;
    B0_ = ex_.template alloc<T>(rows * P);
    B1_ = ex_.template alloc<T>(rows * P);
    loss_cap_ = 1024;
    loss_dev_ = ex_.template alloc<double>(loss_cap_);
    part_ = ex_.template alloc<double>(device::kChunks);
    norm_ = ex_.template alloc<double>(nl);
    scalar_ = ex_.template alloc<double>(1);
    int64_t fans = 0;
    for (int l = 0; l < nl; ++l) fans += s_.fan_in(l) + s_.fan_out(l);
    means_ = ex_.template alloc<double>(fans);
  }

  int64_t run(int64_t until) override {
    constexpr int64_t kCheck = 32;  // steps between divergence checks (one host sync each)
    while (step_ < until && diverged_ < 0) {
      const int64_t stop = std::min(until, step_ + kCheck);
      const int64_t first = step_;
      reserve(stop);
      for (int64_t t = first; t < stop; ++t) {
        forward();
        residual(t);
        backward_update();
      }
      check(first, stop);
      step_ = diverged_ >= 0 ? diverged_ : stop;
    }
    return step_;
  }

  double evaluate() override {
    reserve(step_ + 1);
    forward();
    residual(step_);
    check(step_, step_ + 1);
    evaluated_ = step_;
    return losses_host_[step_];
  }

  int64_t step() const override { return step_; }
  int64_t diverged_step() const override { return diverged_; }
  std::vector<double> losses() override { return std::vector<double>(losses_host_.begin(), losses_host_.begin() + std::min<int64_t>(step_ + 1, static_cast<int64_t>(losses_host_.size()))); }

  std::vector<double> frobenius_norms() override {
    const int nl = s_.layers();
    for (int l = 0; l < nl; ++l) {
      ex_.reduce(device::kChunks, device::SquareChunks<T>{W_[l], s_.size(l), part_});
      ex_.reduce(1, device::SumParts{part_, norm_ + l});
    }
    std::vector<double> out(nl);
    ex_.to_host(out.data(), norm_, nl);
    ex_.synchronize();
    return out;
  }

  const void* weights_data(int l) const override {
    if (l < 0 || l >= s_.layers()) throw std::out_of_range("weights_data: layer out of range");
    return W_[l];
  }
  const void* delta_data(int l) override {
    if (l < 0 || l >= s_.layers()) throw std::out_of_range("delta_data: layer out of range");
    ex_.for_each(s_.size(l), device::Difference<T>{W_[l], W0_[l], delta_});
    return delta_;
  }

  void signal_means(std::vector<std::vector<double>>& inputs, std::vector<std::vector<double>>& backward) override {
    if (evaluated_ != step_ || diverged_ >= 0)
      throw std::logic_error("signal_means: call evaluate() at the current step first (and not after divergence)");
    const int nl = s_.layers();
    const int64_t n = s_.samples;
    std::vector<int64_t> at(nl + 1, 0);  // layer l: its input means at at[l], its output means after them
    for (int l = 0; l < nl; ++l) {
      at[l + 1] = at[l] + s_.fan_in(l) + s_.fan_out(l);
      ex_.reduce(static_cast<int>(s_.fan_in(l)), device::RowMeans<T>{input(l), s_.fan_in(l), n, means_ + at[l]});
    }
    backward_pass(false, [&](int l, const T* signal) {
      ex_.reduce(static_cast<int>(s_.fan_out(l)),
                 device::RowMeans<T>{signal, s_.fan_out(l), n, means_ + at[l] + s_.fan_in(l)});
    });
    std::vector<double> host(static_cast<size_t>(at[nl]));
    ex_.to_host(host.data(), means_, at[nl]);
    ex_.synchronize();
    inputs.assign(nl, {});
    backward.assign(nl, {});
    for (int l = 0; l < nl; ++l) {
      const double* p = host.data() + at[l];
      inputs[l].assign(p, p + s_.fan_in(l));
      backward[l].assign(p + s_.fan_in(l), p + s_.fan_in(l) + s_.fan_out(l));
    }
  }

  void copy_weights(int l, void* host) override {
    if (l < 0 || l >= s_.layers()) throw std::out_of_range("copy_weights: layer out of range");
    ex_.to_host(static_cast<T*>(host), W_[l], s_.size(l));
    ex_.synchronize();
  }

  const DeviceTrainSpec& spec() const override { return s_; }
  int status() const override { return exec_status(ex_); }

 private:
  template <class E>
  static auto exec_status(const E& e) -> decltype(e.status()) {
    return e.status();
  }
  static int exec_status(...) { return 0; }

  const T* input(int l) const { return l == 0 ? X_ : H_[l]; }

  void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t lda, const T* B,
            int64_t ldb, T beta, T* C, int64_t ldc) {
    const gpu::GemmArgs<T> g{ta, tb, m, n, k, alpha, beta, A, lda, B, ldb, C, ldc};
    ex_.gemm(g);
  }

  // h^{l+1} = phi(m_l W^l h^l): out (fo x n, column-major) = m_l W^l (row-major fo x fi) in
  void forward() {
    const int64_t n = s_.samples;
    for (int l = 0; l <= s_.depth; ++l) {
      const int64_t fi = s_.fan_in(l), fo = s_.fan_out(l);
      T* out = l == s_.depth ? F_ : H_[l + 1];
      gemm(true, false, fo, n, fi, static_cast<T>(s_.multipliers[l]), W_[l], fi, input(l), fi, T(0), out, fo);
      if (l < s_.depth && s_.activation != Activation::Linear) ex_.for_each(fo * n, device::Activate<T>{out, s_.activation});
    }
  }

  void residual(int64_t t) {
    const int64_t total = s_.output_dim * s_.samples;
    const double n_norm = static_cast<double>(s_.samples) * s_.output_normalizer;
    ex_.for_each(total, device::ErrorSignal<T>{F_, Y_, E_, static_cast<T>(1.0 / n_norm)});
    ex_.reduce(1, device::LossSum<T>{F_, Y_, loss_dev_ + (t - loss_base_), total, n_norm});
  }

  void backward_update() {
    backward_pass(true, [](int, const T*) {});
  }

  // Backward from E: at each layer l (from the top) seen(l, E^{l+1}) gets the signal at its
  // output, then the signal below is formed from W^l; with update, W^l -= eta m_l E^{l+1} H^l^T
  // after W^l gave that signal.
  template <class Seen>
  void backward_pass(bool update, Seen&& seen) {
    const int64_t n = s_.samples;
    const T* cur = E_;
    T* bufs[2] = {B0_, B1_};
    int which = 0;
    for (int l = s_.depth; l >= 0; --l) {
      const int64_t fi = s_.fan_in(l), fo = s_.fan_out(l);
      const T m = static_cast<T>(s_.multipliers[l]);
      T* next = bufs[which];
      seen(l, cur);
      if (l > 0) gemm(false, false, fi, n, fo, m, W_[l], fi, cur, fo, T(0), next, fi);
      if (update)
        gemm(false, true, fi, fo, n, static_cast<T>(-s_.learning_rate) * m, input(l), fi, cur, fo, T(1), W_[l], fi);
      if (l > 0) {
        if (s_.activation != Activation::Linear) ex_.for_each(fi * n, device::TimesDerivative<T>{next, H_[l], s_.activation});
        cur = next;
        which ^= 1;
      }
    }
  }

  // The device loss buffer holds steps loss_base_ .. loss_base_ + loss_cap_ - 1.
  void reserve(int64_t stop) {
    if (stop - loss_base_ <= loss_cap_) return;
    loss_base_ = step_;  // earlier losses are on the host already
  }

  void check(int64_t first, int64_t stop) {
    std::vector<double> l(static_cast<size_t>(stop - first));
    ex_.to_host(l.data(), loss_dev_ + (first - loss_base_), stop - first);
    ex_.synchronize();
    if (static_cast<int64_t>(losses_host_.size()) < stop + 1)
      losses_host_.resize(static_cast<size_t>(stop + 1), std::numeric_limits<double>::quiet_NaN());
    for (int64_t t = first; t < stop; ++t) {
      const double v = l[t - first];
      losses_host_[t] = v;
      if (diverged_ < 0 && (!std::isfinite(v) || v > s_.divergence_bound)) diverged_ = t;
    }
  }

  DeviceTrainSpec s_;
  Exec ex_;
  std::vector<T*> W_, W0_, H_;
  T* delta_ = nullptr;
  T *X_ = nullptr, *Y_ = nullptr, *F_ = nullptr, *E_ = nullptr, *B0_ = nullptr, *B1_ = nullptr;
  double *loss_dev_ = nullptr, *part_ = nullptr, *norm_ = nullptr, *scalar_ = nullptr, *means_ = nullptr;
  int64_t loss_base_ = 0, loss_cap_ = 0;
  std::vector<double> losses_host_;
  int64_t step_ = 0, diverged_ = -1, evaluated_ = -1;  // evaluated_: the step of the last evaluate()
};

}  // namespace specdyn::nets

namespace specdyn::nets {
// The device algorithm run on the host by gpu::HostExec (tests; cpp/src/dmft_direct.cpp).
std::unique_ptr<DeviceTrainer> make_emulated_trainer(const DeviceTrainSpec& spec, const void* X, const void* Y,
                                                     bool single);
}  // namespace specdyn::nets
