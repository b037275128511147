// The device training loop: nets_device.hpp's driver on the CUDA launcher.
#include <stdexcept>
#include <string>

#include "exec_cuda.cuh"
#include "specdyn_cuda_train.hpp"

namespace specdyn::cuda {

namespace {

// Wraps a trainer so that every call reports a failed launch as an exception.
class Checked final : public nets::DeviceTrainer {
 public:
  explicit Checked(std::unique_ptr<nets::DeviceTrainer> t) : t_(std::move(t)) { check(); }
  int64_t run(int64_t until) override {
    const int64_t s = t_->run(until);
    check();
    return s;
  }
  double evaluate() override {
    const double v = t_->evaluate();
    check();
    return v;
  }
  int64_t step() const override { return t_->step(); }
  int64_t diverged_step() const override { return t_->diverged_step(); }
  std::vector<double> losses() override { return t_->losses(); }
  std::vector<double> frobenius_norms() override {
    auto v = t_->frobenius_norms();
    check();
    return v;
  }
  void copy_weights(int l, void* host) override {
    t_->copy_weights(l, host);
    check();
  }
  // (Synchronized first: the Krylov kernels that read W^l in place run on the legacy default stream.)
  const void* weights_data(int l) const override {
    synchronized();
    return t_->weights_data(l);
  }
  const void* delta_data(int l) override {
    const void* d = t_->delta_data(l);
    synchronized();
    return d;
  }
  void signal_means(std::vector<std::vector<double>>& inputs, std::vector<std::vector<double>>& backward) override {
    t_->signal_means(inputs, backward);
    check();
  }
  const nets::DeviceTrainSpec& spec() const override { return t_->spec(); }
  int status() const override { return t_->status(); }

 private:
  void synchronized() const {
    const int e = synchronize();
    if (e) throw std::runtime_error(std::string("CUDA error in the device trainer: ") + error_string(e));
    check();
  }
  void check() const {
    const int e = t_->status();
    if (e) throw std::runtime_error(std::string("CUDA error in the device trainer: ") + error_string(e));
  }
  std::unique_ptr<nets::DeviceTrainer> t_;
};

}  // namespace

std::unique_ptr<nets::DeviceTrainer> make_trainer(const nets::DeviceTrainSpec& spec, const void* X, const void* Y,
                                                  bool single) {
  std::unique_ptr<nets::DeviceTrainer> t;
  if (single)
    t = std::make_unique<nets::DeviceTrainerImpl<gpu::CudaExec, float>>(spec, static_cast<const float*>(X),
                                                                       static_cast<const float*>(Y));
  else
    t = std::make_unique<nets::DeviceTrainerImpl<gpu::CudaExec, double>>(spec, static_cast<const double*>(X),
                                                                        static_cast<const double*>(Y));
  return std::make_unique<Checked>(std::move(t));
}

}  // namespace specdyn::cuda
