// Device Krylov solvers (top singular triplets, extreme eigenpairs, SLQ) on
// the CUDA kernels, and the device buffers the tests and benchmarks use.
// Conversions only: the solvers are the engine's (specdyn/krylov/engine.hpp)
// on the device backend, through the entry points shared with the host
// emulation in _core (cpp/bindings/krylov_bindings.hpp); layouts come parsed
// from python/specdyn/backend.py and options as one _core.KrylovOptions.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../../cpp/bindings/krylov_bindings.hpp"
#include "bind_common.hpp"
#include "lanczos_device.hpp"
#include "specdyn/lanczos.hpp"

namespace py = pybind11;
using namespace specdyn;
using bindings::dispatch;
using bindings::matrix_view;

namespace {

// Device memory owned by a Python object: freed by close() or with the object.
struct DeviceMemory {
  void* ptr = nullptr;
  DeviceMemory() = default;
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  ~DeviceMemory() { close(); }
  void close() {
    if (ptr) cuda::krylov::release(ptr);
    ptr = nullptr;
  }
};

// A C- or Fortran-contiguous host array copied into device memory, freed with the object.
struct DeviceCopy : DeviceMemory {
  int64_t n = 0, m = 0, ld = 0;
  bool row_major = true, single = false;
  explicit DeviceCopy(py::array A) {
    single = py::isinstance<py::array_t<float>>(A);
    if (!single && !py::isinstance<py::array_t<double>>(A)) throw py::value_error("A must be float32 or float64");
    if (A.ndim() != 2) throw py::value_error("A must be 2-d");
    row_major = A.flags() & py::array::c_style;
    if (!row_major && !(A.flags() & py::array::f_style)) throw py::value_error("A must be C or Fortran contiguous");
    n = A.shape(0);
    m = A.shape(1);
    ld = row_major ? m : n;
    const size_t bytes = static_cast<size_t>(n * m) * (single ? 4 : 8);
    cuda::cuda_check(cuda::krylov::alloc(&ptr, bytes), "cudaMalloc");
    // (a throw frees ptr: the base is complete)
    cuda::cuda_check(cuda::krylov::to_device(ptr, A.data(), bytes), "copy to device");
  }
};

// An uninitialized device matrix owned by Python, readable through the CUDA
// array interface (benchmarks and checks on machines without CuPy).
struct DeviceMatrixBuffer : DeviceMemory {
  int64_t n = 0, m = 0;
  bool single = false;
  DeviceMatrixBuffer(int64_t rows, int64_t cols, bool sgl) : n(rows), m(cols), single(sgl) {
    if (n < 1 || m < 1) throw py::value_error("shape must be positive");
    cuda::cuda_check(cuda::krylov::alloc(&ptr, static_cast<size_t>(n * m) * (single ? 4 : 8)), "cudaMalloc");
  }
  py::dict interface() const {
    if (!ptr) throw py::value_error("the buffer is closed");
    py::dict d;
    d["shape"] = py::make_tuple(n, m);
    d["typestr"] = single ? "<f4" : "<f8";
    d["data"] = py::make_tuple(reinterpret_cast<std::uintptr_t>(ptr), false);
    d["strides"] = py::none();
    d["version"] = 3;
    return d;
  }
};

// Runs f(kernels, device pointer, view) on a device matrix.
template <class F>
auto on_device(std::uintptr_t ptr, int64_t n, int64_t m, bool row_major, int64_t ld, bool single, F&& f) {
  const auto v = matrix_view(n, m, row_major, ld);
  return dispatch(single, [&](auto zero) {
    using T = decltype(zero);
    cuda::DeviceKernels<T> kern;
    return f(kern, reinterpret_cast<const T*>(ptr), v);
  });
}

}  // namespace

void bind_lanczos(py::module_& m) {
  // ---- device entry points: ptr is a device pointer (e.g. CuPy's data.ptr) ----
  m.def(
      "top_singular_device",
      [](std::uintptr_t ptr, int64_t n, int64_t mm, bool row_major, int64_t ld, bool single, int k,
         const lanczos::Options& opt, py::object v0) {
        return on_device(ptr, n, mm, row_major, ld, single, [&](auto& kern, auto* M, const auto& v) {
          return bindings::device_top_singular(kern, M, v, k, opt, v0, "cuda");
        });
      },
      py::arg("ptr"), py::arg("n"), py::arg("m"), py::arg("row_major"), py::arg("ld"), py::arg("single"),
      py::arg("k"), py::arg("opt"), py::arg("v0") = py::none());
  m.def(
      "top_eigs_device",
      [](std::uintptr_t ptr, int64_t n, int64_t ld, bool single, int k, bool both, const lanczos::Options& opt,
         py::object v0) {
        return on_device(ptr, n, n, true, ld, single, [&](auto& kern, auto* M, const auto& v) {
          return bindings::device_top_eigs(kern, M, v, k, both, opt, v0, "cuda");
        });
      },
      py::arg("ptr"), py::arg("n"), py::arg("ld"), py::arg("single"), py::arg("k"), py::arg("both"), py::arg("opt"),
      py::arg("v0") = py::none(), "Extreme eigenpairs of a square symmetric device matrix (largest or both ends).");
  m.def(
      "slq_device",
      [](std::uintptr_t ptr, int64_t n, int64_t mm, bool row_major, int64_t ld, bool single, int probes, int degree,
         uint64_t seed, bool symmetric) {
        return on_device(ptr, n, mm, row_major, ld, single, [&](auto& kern, auto* M, const auto& v) {
          return bindings::device_slq(kern, M, v, probes, degree, seed, symmetric);
        });
      },
      py::arg("ptr"), py::arg("n"), py::arg("m"), py::arg("row_major"), py::arg("ld"), py::arg("single"),
      py::arg("probes"), py::arg("degree"), py::arg("seed"), py::arg("symmetric"));
  m.def(
      "abs_max_device",
      [](std::uintptr_t ptr, int64_t n, int64_t mm, bool row_major, int64_t ld, bool single) {
        const auto v = matrix_view(n, mm, row_major, ld);
        double out = 0;
        py::gil_scoped_release nogil;
        if (single)
          cuda::cuda_check(cuda::krylov::abs_max(reinterpret_cast<const float*>(ptr), v.ld, v.r(), v.c(), &out),
                           "abs_max");
        else
          cuda::cuda_check(cuda::krylov::abs_max(reinterpret_cast<const double*>(ptr), v.ld, v.r(), v.c(), &out),
                           "abs_max");
        return out;
      },
      py::arg("ptr"), py::arg("n"), py::arg("m"), py::arg("row_major"), py::arg("ld"), py::arg("single"),
      "max |A_ij| of a device matrix (inf or NaN when an entry is not finite).");
  m.def(
      "asymmetry_device",
      [](std::uintptr_t ptr, int64_t n, int64_t ld, bool single) {
        double out = 0;
        py::gil_scoped_release nogil;
        if (single)
          cuda::cuda_check(cuda::krylov::asymmetry(reinterpret_cast<const float*>(ptr), ld, n, &out), "asymmetry");
        else
          cuda::cuda_check(cuda::krylov::asymmetry(reinterpret_cast<const double*>(ptr), ld, n, &out), "asymmetry");
        return out;
      },
      py::arg("ptr"), py::arg("n"), py::arg("ld"), py::arg("single"),
      "max |A_ij - A_ji| of a square device matrix.");
  m.def(
      "normal_offset_to_host",
      [](int64_t n, uint64_t seed, uint64_t stream, uint64_t offset) {
        py::array_t<double> out(n);
        cuda::DeviceKernels<double> kern;
        double* dev = static_cast<double*>(kern.alloc(sizeof(double) * n));
        try {
          kern.normal(dev, static_cast<size_t>(n), seed, stream, offset);
          kern.to_host(out.mutable_data(), dev, sizeof(double) * n);
        } catch (...) {
          kern.release(dev);
          throw;
        }
        kern.release(dev);
        return out;
      },
      py::arg("n"), py::arg("seed"), py::arg("stream"), py::arg("offset"),
      "Elements offset .. offset + n - 1 of a Gaussian stream, generated by the solvers' device kernel (tests).");
  m.def(
      "copy_to_host",
      [](std::uintptr_t ptr, int64_t n, int64_t mm, bool row_major, int64_t ld, bool single) -> py::array {
        const auto v = matrix_view(n, mm, row_major, ld);
        return dispatch(single, [&](auto zero) -> py::array {
          using T = decltype(zero);
          cuda::DeviceKernels<T> kern;
          std::vector<T> h;
          {
            py::gil_scoped_release nogil;
            h = krylov::host_copy<T>(kern, reinterpret_cast<const T*>(ptr), v);
          }
          // h is row-major r x c = A (row-major) or A^T (so A in Fortran order).
          if (row_major) {
            py::array_t<T> a({n, mm});
            std::memcpy(a.mutable_data(), h.data(), sizeof(T) * h.size());
            return a;
          }
          py::array_t<T, py::array::f_style> a({n, mm});
          std::memcpy(a.mutable_data(), h.data(), sizeof(T) * h.size());
          return a;
        });
      },
      py::arg("ptr"), py::arg("n"), py::arg("m"), py::arg("row_major"), py::arg("ld"), py::arg("single"),
      "A device matrix copied into a new NumPy array (C or Fortran order, as on the device).");
  m.def(
      "products_device",
      [](py::array A, py::array X, int64_t slabs) {
        DeviceCopy dev(A);
        return on_device(reinterpret_cast<std::uintptr_t>(dev.ptr), dev.n, dev.m, dev.row_major, dev.ld, dev.single,
                         [&](auto& kern, auto* M, const auto& v) { return bindings::device_products(kern, M, v, X, slabs); });
      },
      py::arg("A"), py::arg("X"), py::arg("slabs"),
      "(Y, Z) = (M X, M^T Y) by the device kernels, M the row-major view of host A (tests).");
  py::class_<DeviceCopy>(m, "DeviceCopy", "A host matrix copied to device memory (freed with the object).")
      .def(py::init<py::array>(), py::arg("A"))
      .def_property_readonly("ptr", [](const DeviceCopy& d) { return reinterpret_cast<std::uintptr_t>(d.ptr); })
      .def_readonly("n", &DeviceCopy::n)
      .def_readonly("m", &DeviceCopy::m)
      .def_readonly("ld", &DeviceCopy::ld)
      .def_readonly("row_major", &DeviceCopy::row_major)
      .def_readonly("single", &DeviceCopy::single)
      .def("close", &DeviceCopy::close);

  py::class_<DeviceMatrixBuffer>(m, "DeviceMatrix",
                                 "An uninitialized C-ordered device matrix exposing __cuda_array_interface__.")
      .def(py::init<int64_t, int64_t, bool>(), py::arg("n"), py::arg("m"), py::arg("single"))
      .def_property_readonly("__cuda_array_interface__", &DeviceMatrixBuffer::interface)
      .def_property_readonly("ptr", [](const DeviceMatrixBuffer& b) { return reinterpret_cast<std::uintptr_t>(b.ptr); })
      .def_readonly("n", &DeviceMatrixBuffer::n)
      .def_readonly("m", &DeviceMatrixBuffer::m)
      .def_readonly("single", &DeviceMatrixBuffer::single)
      .def("close", &DeviceMatrixBuffer::close);
  m.def(
      "add_low_rank_device",
      [](std::uintptr_t ptr, int64_t n, int64_t mm, int64_t ld, bool single,
         py::array_t<double, py::array::f_style | py::array::forcecast> U,
         py::array_t<double, py::array::f_style | py::array::forcecast> W) {
        if (U.ndim() != 2 || W.ndim() != 2 || U.shape(0) != n || W.shape(0) != mm || U.shape(1) != W.shape(1))
          throw py::value_error("U must be (n, q) and W (m, q)");
        const int q = static_cast<int>(U.shape(1));
        cuda::DeviceKernels<double> kern;
        double* du = static_cast<double*>(kern.alloc(sizeof(double) * U.size()));
        double* dw = static_cast<double*>(kern.alloc(sizeof(double) * W.size()));
        int err = cuda::krylov::to_device(du, U.data(), sizeof(double) * U.size());
        if (!err) err = cuda::krylov::to_device(dw, W.data(), sizeof(double) * W.size());
        if (!err)
          err = single ? cuda::krylov::add_low_rank(reinterpret_cast<float*>(ptr), ld, n, mm, du, dw, q)
                       : cuda::krylov::add_low_rank(reinterpret_cast<double*>(ptr), ld, n, mm, du, dw, q);
        if (!err) err = cuda::krylov::synchronize();
        kern.release(du);
        kern.release(dw);
        cuda::cuda_check(err, "add_low_rank");
      },
      py::arg("ptr"), py::arg("n"), py::arg("m"), py::arg("ld"), py::arg("single"), py::arg("U"), py::arg("W"),
      "A += U W^T on a C-ordered device matrix (spiked benchmark matrices).");
  m.def(
      "device_copies",
      [](uint64_t bytes, int repeats) {
        void *a = nullptr, *b = nullptr;
        cuda::cuda_check(cuda::krylov::alloc(&a, bytes), "cudaMalloc");
        int err = cuda::krylov::alloc(&b, bytes);
        py::gil_scoped_release nogil;
        for (int i = 0; i < repeats && !err; ++i) err = cuda::krylov::device_copy(b, a, bytes);
        if (!err) err = cuda::krylov::synchronize();
        cuda::krylov::release(a);
        cuda::krylov::release(b);
        cuda::cuda_check(err, "device copy");
      },
      py::arg("bytes"), py::arg("repeats"),
      "repeats device-to-device copies of `bytes` (reads and writes `bytes` each), then a synchronize: the "
      "bandwidth peer of the benchmarks, which time this call.");
  m.def(
      "gram_applications",
      [](std::uintptr_t ptr, int64_t n, int64_t mm, bool row_major, int64_t ld, bool single, int b, int repeats) {
        on_device(ptr, n, mm, row_major, ld, single, [&](auto& kern, auto* M, const auto& v) {
          using T = std::remove_const_t<std::remove_pointer_t<decltype(M)>>;
          py::gil_scoped_release nogil;
          krylov::DeviceBackend<T, cuda::DeviceKernels<T>> ops(kern, M, v);
          auto X = ops.block(static_cast<size_t>(ops.dim()) * b), Z = ops.block(static_cast<size_t>(ops.dim()) * b);
          kern.normal(X.data(), X.size(), 1, 0, 0);
          for (int i = 0; i < repeats; ++i) ops.apply(X.data(), Z.data(), b);
          cuda::cuda_check(cuda::krylov::synchronize(), "Gram pass");
          return 0;
        });
      },
      py::arg("ptr"), py::arg("n"), py::arg("m"), py::arg("row_major"), py::arg("ld"), py::arg("single"),
      py::arg("b"), py::arg("repeats"),
      "repeats applications of the Gram operator (M X then M^T Y: two reads of A) to b vectors, then a "
      "synchronize (the benchmarks time this call).");
}
