// _cuda bindings of the device training loop and the device DMFT mode solver
// (the shared conversions are in cpp/bindings/device_bindings.hpp).
#include <pybind11/pybind11.h>

#include "../../cpp/bindings/device_bindings.hpp"
#include "specdyn_cuda_train.hpp"

namespace py = pybind11;

void bind_train(py::module_& m) {
  specdyn::bind_device::bind(m, specdyn::cuda::make_trainer,
                             [](const specdyn::dmft::ModeProblem& pb) { return specdyn::cuda::dmft_direct(pb); });
}
