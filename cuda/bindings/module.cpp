// specdyn._cuda: device operations on raw device pointers (CuPy's data.ptr).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "specdyn_cuda.hpp"

namespace py = pybind11;
using namespace specdyn;

void bind_train(py::module_& m);  // bind_train.cpp: device training loop and DMFT

static void check(int code) {
  if (code != 0) throw std::runtime_error(std::string("CUDA error: ") + cuda::error_string(code));
}

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "specdyn CUDA kernels (loaded lazily; needs a CUDA device)";
  bind_train(m);
  m.def("device_count", [] {
    int n = cuda::device_count();
    if (n < 0) throw std::runtime_error("no usable CUDA driver");
    return n;
  });
  m.def("normal_fill", [](std::uintptr_t ptr, unsigned long long n, unsigned long long seed,
                          unsigned long long stream, double sigma, bool single) {
    if (single)
      check(cuda::normal_fill(reinterpret_cast<float*>(ptr), n, seed, stream, sigma));
    else
      check(cuda::normal_fill(reinterpret_cast<double*>(ptr), n, seed, stream, sigma));
    check(cuda::synchronize());
  }, py::arg("ptr"), py::arg("n"), py::arg("seed"), py::arg("stream"), py::arg("sigma"), py::arg("single"));
  m.def("gaussian_f64", [](int64_t n, int64_t cols, unsigned long long seed, unsigned long long stream, double sigma) {
    py::array_t<double> out({n, cols});
    check(cuda::normal_fill_to_host(out.mutable_data(), static_cast<unsigned long long>(n * cols), seed, stream, sigma));
    return out;
  }, py::arg("n"), py::arg("m"), py::arg("seed"), py::arg("stream"), py::arg("sigma"),
  "The (n, m) Gaussian matrix of rmt.gaussian, generated on the device and copied to the host.");
}
