// Device Krylov solvers (top singular triplets, SLQ) and their host mirror.
// Arguments are validated in python/specdyn/lanczos.py and backend.py before
// these run. The driver (cuda/lanczos_driver.hpp) is instantiated twice: on
// the CUDA kernels (DeviceKernels; needs a device) and on their host
// emulation (HostKernels; the mirror_* functions, which run without a GPU).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

#include "bind_common.hpp"
#include "lanczos_device.hpp"
#include "lanczos_driver.hpp"
#include "../../cpp/bindings/lanczos_info.hpp"
#include "lanczos_host.hpp"
#include "specdyn/lanczos.hpp"

namespace py = pybind11;
using namespace specdyn;
using cuda::driver::MatrixView;

namespace {

template <class T>
py::array_t<T> fortran(const std::vector<double>& v, int64_t rows, int64_t cols) {
  py::array_t<T, py::array::f_style> a({rows, cols});
  T* p = a.mutable_data();
  for (size_t i = 0; i < v.size() && i < static_cast<size_t>(rows * cols); ++i) p[i] = static_cast<T>(v[i]);
  return a;
}

// The matrix compacted into host memory (row-major r x c), for the small cases
// that LAPACK solves directly.
template <class T, class K>
std::vector<T> host_copy(K& kern, const T* M, const MatrixView& v) {
  const int64_t r = v.r(), c = v.c();
  std::vector<T> h(static_cast<size_t>(r * c));
  if (v.ld == c) {
    kern.to_host(h.data(), M, sizeof(T) * h.size());
  } else {
    for (int64_t i = 0; i < r; ++i) kern.to_host(h.data() + i * c, M + i * v.ld, sizeof(T) * c);
  }
  return h;
}

template <class T, class K>
cuda::driver::Singular dense_singular(K& kern, const T* M, const MatrixView& v, int k, const lanczos::Options& opt) {
  const std::vector<T> h = host_copy(kern, M, v);
  lanczos::Options o = opt;
  o.max_basis = 0;
  // The compact copy is row-major M: A itself when row-major, else the
  // column-major A (A^T row-major has A's column-major layout).
  auto t = lanczos::top_singular<T>(h.data(), v.n, v.m, v.row_major, k, o, nullptr, 0);
  cuda::driver::Singular out;
  out.s = t.s;
  out.U.assign(t.U.begin(), t.U.end());
  out.V.assign(t.V.begin(), t.V.end());
  out.info = t.info;
  return out;
}

template <class T, class K>
py::tuple run_top_singular(K& kern, const T* M, const MatrixView& v, int k, double tol, int block, int max_passes,
                           int max_basis, uint64_t seed, py::object v0, const char* where) {
  std::vector<double> w;
  int k0 = 0;
  if (!v0.is_none()) {
    auto a = py::array_t<double, py::array::f_style | py::array::forcecast>::ensure(v0);
    if (!a || a.ndim() != 2 || a.shape(0) != v.m) throw py::value_error("v0 must have shape (m, k0)");
    k0 = static_cast<int>(a.shape(1));
    w.assign(a.data(), a.data() + a.size());
  }
  const auto opt = bindings::lanczos_options(tol, block, max_passes, max_basis, seed);
  cuda::driver::Singular res;
  {
    py::gil_scoped_release nogil;
    const auto plan = cuda::driver::plan_singular(v.n, v.m, k, opt, k0);
    if (plan.dense) {
      res = dense_singular<T>(kern, M, v, k, opt);
    } else {
      cuda::driver::Ops<T, K> ops(kern, M, v);
      res = cuda::driver::top_singular<T, K>(ops, v, k, opt, k0 ? w.data() : nullptr, k0,
                                             [&] { return dense_singular<T>(kern, M, v, k, opt); });
    }
  }
  py::array_t<double> s(static_cast<py::ssize_t>(res.s.size()), res.s.data());
  py::dict info = bindings::lanczos_info(res.info);
  info["device"] = where;
  info["host_syncs"] = kern.downloads;  // device -> host copies (round trips) during the solve
  return py::make_tuple(s, fortran<T>(res.U, v.n, k), fortran<T>(res.V, v.m, k), info);
}

template <class T, class K>
py::tuple run_slq(K& kern, const T* M, const MatrixView& v, int probes, int degree, uint64_t seed, bool symmetric) {
  lanczos::Quadrature q;
  {
    py::gil_scoped_release nogil;
    using O = cuda::driver::Ops<T, K>;
    O ops(kern, M, v, symmetric ? O::Mode::Symmetric : O::Mode::Gram);
    q = cuda::driver::slq(ops, probes, degree, seed);
  }
  py::array_t<double> nodes({q.probes, q.degree}), weights({q.probes, q.degree});
  std::memcpy(nodes.mutable_data(), q.nodes.data(), sizeof(double) * q.nodes.size());
  std::memcpy(weights.mutable_data(), q.weights.data(), sizeof(double) * q.weights.size());
  return py::make_tuple(nodes, weights);
}

// A NumPy matrix as (pointer, view): C order, Fortran order, or rows with a
// padded stride; anything else is a ValueError.
template <class T>
MatrixView host_view(const py::array& A) {
  if (A.ndim() != 2 || !py::isinstance<py::array_t<T>>(A)) throw py::value_error("A: wrong dtype or ndim");
  MatrixView v;
  v.n = A.shape(0);
  v.m = A.shape(1);
  const int64_t e = sizeof(T);
  int64_t s0 = A.strides(0), s1 = A.strides(1);
  if (v.m == 1) s1 = e;  // (the stride of a length-1 axis is arbitrary)
  if (v.n == 1) s0 = s1 == e ? v.m * e : e;
  if (s1 == e && s0 % e == 0 && s0 / e >= v.m) {
    v.row_major = true;
    v.ld = s0 / e;
  } else if (s0 == e && s1 % e == 0 && s1 / e >= v.n) {
    v.row_major = false;
    v.ld = s1 / e;
  } else {
    throw py::value_error("A must have unit stride along one axis");
  }
  return v;
}

MatrixView device_view(int64_t n, int64_t m, bool row_major, int64_t ld) {
  MatrixView v;
  v.n = n;
  v.m = m;
  v.row_major = row_major;
  v.ld = ld;
  if (n < 1 || m < 1 || ld < v.c()) throw py::value_error("device matrix: bad shape or leading dimension");
  return v;
}

// A host array copied into device memory, freed with the object.
struct DeviceCopy {
  void* ptr = nullptr;
  int64_t n = 0, m = 0, ld = 0;
  bool row_major = true, single = false;
  explicit DeviceCopy(py::array A) {
    single = py::isinstance<py::array_t<float>>(A);
    if (!single && !py::isinstance<py::array_t<double>>(A)) throw py::value_error("A must be float32 or float64");
    if (A.ndim() != 2) throw py::value_error("A must be 2-d");
    auto view = single ? host_view<float>(A) : host_view<double>(A);
    if (view.ld != view.c()) throw py::value_error("A must be C or Fortran contiguous");
    n = view.n;
    m = view.m;
    ld = view.ld;
    row_major = view.row_major;
    const size_t bytes = static_cast<size_t>(n * m) * (single ? 4 : 8);
    cuda::cuda_check(cuda::krylov::alloc(&ptr, bytes), "cudaMalloc");
    const int err = cuda::krylov::to_device(ptr, A.data(), bytes);
    if (err) {
      cuda::krylov::release(ptr);
      ptr = nullptr;
      cuda::cuda_check(err, "copy to device");
    }
  }
  DeviceCopy(const DeviceCopy&) = delete;
  DeviceCopy& operator=(const DeviceCopy&) = delete;
  ~DeviceCopy() { close(); }
  void close() {
    if (ptr) cuda::krylov::release(ptr);
    ptr = nullptr;
  }
};

// Y = M X and Z = M^T Y through the given kernels (tests of their index arithmetic).
template <class T, class K>
py::tuple products(K& kern, const T* M, const MatrixView& v, py::array X, int64_t slabs, bool on_device) {
  auto x = py::array_t<T, py::array::f_style | py::array::forcecast>::ensure(X);
  if (!x || x.ndim() != 2 || x.shape(0) != v.c() || x.shape(1) < 1 || x.shape(1) > cuda::tiles::kMaxCols)
    throw py::value_error("X must have shape (c, nb) with 1 <= nb <= 16");
  const int nb = static_cast<int>(x.shape(1));
  const int64_t r = v.r(), c = v.c();
  py::array_t<T, py::array::f_style> Y({r, static_cast<int64_t>(nb)}), Z({c, static_cast<int64_t>(nb)});
  T* xd = static_cast<T*>(kern.alloc(sizeof(T) * c * nb));
  T* yd = static_cast<T*>(kern.alloc(sizeof(T) * r * nb));
  T* zd = static_cast<T*>(kern.alloc(sizeof(T) * c * nb));
  T* pd = static_cast<T*>(kern.alloc(sizeof(T) * c * nb * slabs));
  try {
    kern.to_device(xd, x.data(), sizeof(T) * c * nb);
    kern.mx(M, v.ld, r, c, xd, c, nb, yd, r);
    kern.mty(M, v.ld, r, c, yd, r, nb, zd, c, slabs, pd);
    kern.to_host(Y.mutable_data(), yd, sizeof(T) * r * nb);
    kern.to_host(Z.mutable_data(), zd, sizeof(T) * c * nb);
  } catch (...) {
    for (void* p : {static_cast<void*>(xd), static_cast<void*>(yd), static_cast<void*>(zd), static_cast<void*>(pd)})
      kern.release(p);
    throw;
  }
  for (void* p : {static_cast<void*>(xd), static_cast<void*>(yd), static_cast<void*>(zd), static_cast<void*>(pd)})
    kern.release(p);
  (void)on_device;
  return py::make_tuple(Y, Z);
}

// An uninitialized device matrix owned by Python, readable through the CUDA
// array interface (benchmarks and checks on machines without CuPy).
struct DeviceMatrixBuffer {
  void* ptr = nullptr;
  int64_t n = 0, m = 0;
  bool single = false;
  DeviceMatrixBuffer(int64_t rows, int64_t cols, bool sgl) : n(rows), m(cols), single(sgl) {
    if (n < 1 || m < 1) throw py::value_error("shape must be positive");
    cuda::cuda_check(cuda::krylov::alloc(&ptr, static_cast<size_t>(n * m) * (single ? 4 : 8)), "cudaMalloc");
  }
  DeviceMatrixBuffer(const DeviceMatrixBuffer&) = delete;
  DeviceMatrixBuffer& operator=(const DeviceMatrixBuffer&) = delete;
  ~DeviceMatrixBuffer() { close(); }
  void close() {
    if (ptr) cuda::krylov::release(ptr);
    ptr = nullptr;
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

template <class F>
auto dispatch(bool single, F&& f) {
  if (single) return f(float{});
  return f(double{});
}

}  // namespace

void bind_lanczos(py::module_& m) {
  // ---- device entry points: ptr is a device pointer (e.g. CuPy's data.ptr) ----
  m.def(
      "top_singular_device",
      [](std::uintptr_t ptr, int64_t n, int64_t mm, bool row_major, int64_t ld, bool single, int k, double tol,
         int block, int max_passes, int max_basis, uint64_t seed, py::object v0) {
        const auto v = device_view(n, mm, row_major, ld);
        return dispatch(single, [&](auto zero) {
          using T = decltype(zero);
          cuda::DeviceKernels<T> kern;
          return run_top_singular<T>(kern, reinterpret_cast<const T*>(ptr), v, k, tol, block, max_passes, max_basis,
                                     seed, v0, "cuda");
        });
      },
      py::arg("ptr"), py::arg("n"), py::arg("m"), py::arg("row_major"), py::arg("ld"), py::arg("single"),
      py::arg("k"), py::arg("tol"), py::arg("block"), py::arg("max_passes"), py::arg("max_basis"), py::arg("seed"),
      py::arg("v0"));
  m.def(
      "slq_device",
      [](std::uintptr_t ptr, int64_t n, int64_t mm, bool row_major, int64_t ld, bool single, int probes, int degree,
         uint64_t seed, bool symmetric) {
        const auto v = device_view(n, mm, row_major, ld);
        return dispatch(single, [&](auto zero) {
          using T = decltype(zero);
          cuda::DeviceKernels<T> kern;
          return run_slq<T>(kern, reinterpret_cast<const T*>(ptr), v, probes, degree, seed, symmetric);
        });
      },
      py::arg("ptr"), py::arg("n"), py::arg("m"), py::arg("row_major"), py::arg("ld"), py::arg("single"),
      py::arg("probes"), py::arg("degree"), py::arg("seed"), py::arg("symmetric"));
  m.def(
      "abs_max_device",
      [](std::uintptr_t ptr, int64_t n, int64_t mm, bool row_major, int64_t ld, bool single) {
        const auto v = device_view(n, mm, row_major, ld);
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
        const auto v = device_view(n, mm, row_major, ld);
        return dispatch(single, [&](auto zero) -> py::array {
          using T = decltype(zero);
          cuda::DeviceKernels<T> kern;
          std::vector<T> h;
          {
            py::gil_scoped_release nogil;
            h = host_copy<T>(kern, reinterpret_cast<const T*>(ptr), v);
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
        const auto v = device_view(dev.n, dev.m, dev.row_major, dev.ld);
        return dispatch(dev.single, [&](auto zero) {
          using T = decltype(zero);
          cuda::DeviceKernels<T> kern;
          return products<T>(kern, static_cast<const T*>(dev.ptr), v, X, slabs, true);
        });
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
      "copy_seconds",
      [](uint64_t bytes, int repeats) {
        void *a = nullptr, *b = nullptr;
        cuda::cuda_check(cuda::krylov::alloc(&a, bytes), "cudaMalloc");
        int err = cuda::krylov::alloc(&b, bytes);
        double sec = 0;
        if (!err) err = cuda::krylov::device_copy(b, a, bytes);  // warm-up
        if (!err) err = cuda::krylov::synchronize();
        if (!err) {
          const auto t0 = std::chrono::steady_clock::now();
          for (int i = 0; i < repeats && !err; ++i) err = cuda::krylov::device_copy(b, a, bytes);
          if (!err) err = cuda::krylov::synchronize();
          sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / repeats;
        }
        cuda::krylov::release(a);
        cuda::krylov::release(b);
        cuda::cuda_check(err, "device copy");
        return sec;
      },
      py::arg("bytes"), py::arg("repeats"),
      "Seconds per device-to-device copy of `bytes` (reads and writes `bytes` each): the bandwidth peer.");
  m.def(
      "gram_seconds",
      [](std::uintptr_t ptr, int64_t n, int64_t mm, bool row_major, int64_t ld, bool single, int b, int repeats) {
        const auto v = device_view(n, mm, row_major, ld);
        return dispatch(single, [&](auto zero) {
          using T = decltype(zero);
          py::gil_scoped_release nogil;
          cuda::DeviceKernels<T> kern;
          cuda::driver::Ops<T, cuda::DeviceKernels<T>> ops(kern, reinterpret_cast<const T*>(ptr), v);
          cuda::driver::Buf<cuda::DeviceKernels<T>> X(kern, static_cast<size_t>(ops.dim()) * b),
              Z(kern, static_cast<size_t>(ops.dim()) * b);
          kern.normal(X.get(), X.size(), 1, 0, 0);
          ops.apply(X.get(), Z.get(), b);  // warm-up
          cuda::cuda_check(cuda::krylov::synchronize(), "Gram pass");
          const auto t0 = std::chrono::steady_clock::now();
          for (int i = 0; i < repeats; ++i) ops.apply(X.get(), Z.get(), b);
          cuda::cuda_check(cuda::krylov::synchronize(), "Gram pass");
          return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / repeats;
        });
      },
      py::arg("ptr"), py::arg("n"), py::arg("m"), py::arg("row_major"), py::arg("ld"), py::arg("single"),
      py::arg("b"), py::arg("repeats"),
      "Seconds per application of the Gram operator (M X then M^T Y: two reads of A) to b vectors.");

  // ---- host mirror: the same driver on the host emulation of the kernels (no GPU) ----
  m.def(
      "mirror_top_singular",
      [](py::array A, int k, double tol, int block, int max_passes, int max_basis, uint64_t seed, py::object v0,
         int multiprocessors) {
        const bool single = py::isinstance<py::array_t<float>>(A);
        return dispatch(single, [&](auto zero) {
          using T = decltype(zero);
          const auto v = host_view<T>(A);
          cuda::HostKernels<T> kern;
          kern.sm = multiprocessors;
          return run_top_singular<T>(kern, static_cast<const T*>(A.data()), v, k, tol, block, max_passes, max_basis,
                                     seed, v0, "host-mirror");
        });
      },
      py::arg("A"), py::arg("k"), py::arg("tol"), py::arg("block"), py::arg("max_passes"), py::arg("max_basis"),
      py::arg("seed"), py::arg("v0"), py::arg("multiprocessors") = 4);
  m.def(
      "mirror_slq",
      [](py::array A, int probes, int degree, uint64_t seed, bool symmetric, int multiprocessors) {
        const bool single = py::isinstance<py::array_t<float>>(A);
        return dispatch(single, [&](auto zero) {
          using T = decltype(zero);
          const auto v = host_view<T>(A);
          cuda::HostKernels<T> kern;
          kern.sm = multiprocessors;
          return run_slq<T>(kern, static_cast<const T*>(A.data()), v, probes, degree, seed, symmetric);
        });
      },
      py::arg("A"), py::arg("probes"), py::arg("degree"), py::arg("seed"), py::arg("symmetric"),
      py::arg("multiprocessors") = 4);
  m.def(
      "mirror_products",
      [](py::array A, py::array X, int64_t slabs) {
        const bool single = py::isinstance<py::array_t<float>>(A);
        return dispatch(single, [&](auto zero) {
          using T = decltype(zero);
          const auto v = host_view<T>(A);
          cuda::HostKernels<T> kern;
          return products<T>(kern, static_cast<const T*>(A.data()), v, X, slabs, false);
        });
      },
      py::arg("A"), py::arg("X"), py::arg("slabs"),
      "(Y, Z) = (M X, M^T Y) by the host emulation of the device kernels (tests).");
  m.def("mty_slabs", &cuda::tiles::mty_slabs, py::arg("r"), py::arg("c"), py::arg("multiprocessors"));
}
