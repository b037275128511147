// Device Krylov solvers (filled in by the next commits).
#include "bind_common.hpp"

void bind_lanczos(pybind11::module_&) {}
