// specdyn._cuda: device operations on raw device pointers (CuPy's data.ptr).
// A thin list: each concern binds itself in its own bind_<concern>.cpp
// (CMakeLists.txt builds every cuda/bindings/*.cpp into the module).
#include <pybind11/pybind11.h>

void bind_device(pybind11::module_& m);
void bind_lanczos(pybind11::module_& m);
void bind_train(pybind11::module_& m);  // bind_train.cpp: device training loop and DMFT

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "specdyn CUDA kernels (loaded lazily; needs a CUDA device)";
  bind_device(m);
  bind_lanczos(m);
  bind_train(m);
}
