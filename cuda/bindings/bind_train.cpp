// _cuda bindings of the device training loop and the device DMFT mode solver
// (the shared conversions are in cpp/bindings/device_bindings.hpp).
#include <pybind11/pybind11.h>

#include "../../cpp/bindings/device_bindings.hpp"
#include "../../cpp/bindings/krylov_bindings.hpp"
#include "lanczos_device.hpp"
#include "specdyn_cuda_train.hpp"

namespace py = pybind11;

void bind_train(py::module_& m) {
  using namespace specdyn;
  bind_device::bind(
      m, cuda::make_trainer, [](const dmft::ModeProblem& pb) { return cuda::dmft_direct(pb); },
      [](const void* W, int64_t n, int64_t mm, bool single, int k, const lanczos::Options& opt,
         const py::object& v0) {
        return bindings::dispatch(single, [&](auto zero) {
          using T = decltype(zero);
          cuda::DeviceKernels<T> kern;
          return bindings::device_top_singular(kern, static_cast<const T*>(W), bindings::matrix_view(n, mm, true, mm),
                                               k, opt, v0, "cuda");
        });
      });
}
