// Device queries and the device Gaussian stream.
#include <pybind11/numpy.h>

#include <cstdint>

#include "bind_common.hpp"

namespace py = pybind11;
using namespace specdyn;
using cuda_bind::check;

void bind_device(py::module_& m) {
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
