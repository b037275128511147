// Random streams and ensembles; BLAS/threads introspection.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "specdyn/blas.hpp"
#include "specdyn/rng.hpp"

namespace py = pybind11;
using namespace specdyn;

template <class T>
static py::array_t<T> gaussian(int64_t n, int64_t m, uint64_t seed, uint64_t stream, double sigma) {
  py::array_t<T> out({n, m});
  T* p = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    rng::normal_fill(p, static_cast<size_t>(n) * static_cast<size_t>(m), seed, stream, sigma);
  }
  return out;
}

void bind_rmt(py::module_& m) {
  m.def("gaussian_f64", &gaussian<double>, py::arg("n"), py::arg("m"), py::arg("seed"), py::arg("stream"),
        py::arg("sigma"));
  m.def("gaussian_f32", &gaussian<float>, py::arg("n"), py::arg("m"), py::arg("seed"), py::arg("stream"),
        py::arg("sigma"));
  m.def("philox4x32_10", [](uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
    auto r = rng::philox4x32_10(c0, c1, c2, c3, k0, k1);
    return py::make_tuple(r.v[0], r.v[1], r.v[2], r.v[3]);
  });
  m.def("omp_max_threads", [] { return omp_get_max_threads(); });
  m.def("set_omp_threads", [](int n) { omp_set_num_threads(n); });
  m.def("blas_threads", [] { return blas::get_num_threads(); });
  m.def("set_blas_threads", [](int n) { blas::set_num_threads(n); });
  m.def("blas_config", [] { return std::string(blas::config()); });
}
