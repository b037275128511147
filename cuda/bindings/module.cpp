// specdyn._cuda: device operations on raw device pointers (CuPy's data.ptr).
// A thin list: each concern binds itself in its own bind_<concern>.cpp.
#include "bind_common.hpp"

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "specdyn CUDA kernels (loaded lazily; needs a CUDA device)";
  bind_device(m);
  bind_lanczos(m);
}
