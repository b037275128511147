// Shared by the bind_*.cpp files of specdyn._cuda.
#pragma once
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "specdyn_cuda.hpp"

namespace specdyn::cuda_bind {

// Throw the CUDA error text of a nonzero cudaError_t code.
inline void check(int code) {
  if (code != 0) throw std::runtime_error(std::string("CUDA error: ") + specdyn::cuda::error_string(code));
}

}  // namespace specdyn::cuda_bind
