// The direct one-bulk mode recursion (dmft_direct.hpp) on the CUDA launcher.
// Compiled with --fmad=false (CMakeLists.txt): with the host build compiled
// without contraction, the device gives the host's numbers bit for bit.
#include <stdexcept>
#include <string>

#include "exec_cuda.cuh"
#include "specdyn_cuda_train.hpp"

namespace specdyn::cuda {

dmft::DirectSolution dmft_direct(const dmft::ModeProblem& pb) {
  gpu::CudaExec ex;
  dmft::DirectSolution out = dmft::solve_direct(ex, pb);
  if (ex.status())
    throw std::runtime_error(std::string("CUDA error in the device DMFT solver: ") + error_string(ex.status()));
  return out;
}

}  // namespace specdyn::cuda
