// Host-callable entry points of the device training loop and the device DMFT
// mode solver (no CUDA types in them: the pybind11 module is host code).
// Both throw std::runtime_error naming the CUDA error when a launch fails.
#pragma once
#include <memory>

#include "specdyn/dmft_direct.hpp"
#include "specdyn/nets_device.hpp"

namespace specdyn::cuda {

// Full-batch GD on the device; weights drawn on the device from the CPU's streams.
// X (P x D), Y (P x C): host arrays of float (single) or double.
std::unique_ptr<nets::DeviceTrainer> make_trainer(const nets::DeviceTrainSpec& spec, const void* X, const void* Y,
                                                  bool single);

// The direct one-bulk recursion (dmft_direct.hpp) on the device.
dmft::DirectSolution dmft_direct(const dmft::ModeProblem& pb);

}  // namespace specdyn::cuda
