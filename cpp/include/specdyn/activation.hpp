// The activation function phi of a network's hidden layers: one enum for the
// CPU engine (nets), the device trainer (nets_device) and the DMFT solvers, and
// one parser of its names, used by every binding that takes an activation.
#pragma once
#include <stdexcept>
#include <string>

namespace specdyn {

enum class Activation { Linear = 0, Tanh = 1, Relu = 2 };

inline Activation parse_activation(const std::string& name) {
  if (name == "linear") return Activation::Linear;
  if (name == "tanh") return Activation::Tanh;
  if (name == "relu") return Activation::Relu;
  throw std::invalid_argument("activation must be one of 'linear', 'tanh', 'relu'; got '" + name + "'");
}

}  // namespace specdyn
