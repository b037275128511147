// The activation function phi of a network's hidden layers: one enum for the
// CPU engine (nets), the device trainer (nets_device) and the DMFT solvers.
#pragma once

namespace specdyn {

enum class Activation { Linear = 0, Tanh = 1, Relu = 2 };

}  // namespace specdyn
