// specdyn._core: thin pybind11 bindings, conversions only. One bind_* per concern.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_rmt(py::module_& m);
void bind_lanczos(py::module_& m);
void bind_nets(py::module_& m);
void bind_dmft(py::module_& m);
void bind_dmft_ext(py::module_& m);
void bind_dmft_deep(py::module_& m);
void bind_device_emulation(py::module_& m);

PYBIND11_MODULE(_core, m) {
  m.doc() = "specdyn native core (C++17, OpenBLAS, OpenMP)";
  bind_rmt(m);
  bind_lanczos(m);
  bind_nets(m);
  bind_dmft(m);
  bind_dmft_ext(m);
  bind_dmft_deep(m);
  bind_device_emulation(m);
}
