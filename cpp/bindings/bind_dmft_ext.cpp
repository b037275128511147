// Placeholder until the theory beyond one bulk lands; replaced by its bindings.
#include <pybind11/pybind11.h>
namespace py = pybind11;
void bind_dmft_ext(py::module_&) {}
