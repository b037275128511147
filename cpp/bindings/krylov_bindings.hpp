// The device Krylov entry points, written once over a kernel set K and
// registered twice: in _cuda on the CUDA kernels (device pointers) and in
// _core.device_emulation on their host emulation (NumPy arrays). Conversions
// only: the layout (row_major, ld) comes parsed from python/specdyn/backend.py,
// the solver options as one lanczos.Options object (_core.KrylovOptions), and
// every planning decision (dense or Krylov, block, basis) is the engine's.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "lanczos_info.hpp"
#include "specdyn/krylov/device_backend.hpp"
#include "specdyn/krylov/engine.hpp"
#include "specdyn/lanczos.hpp"

namespace specdyn::bindings {

namespace py = pybind11;

inline krylov::MatrixView matrix_view(int64_t n, int64_t m, bool row_major, int64_t ld) {
  krylov::MatrixView v;
  v.n = n;
  v.m = m;
  v.row_major = row_major;
  v.ld = ld;
  if (n < 1 || m < 1 || ld < v.c()) throw py::value_error("matrix: bad shape or leading dimension");
  return v;
}

template <class T>
py::array_t<T> fortran_from(const std::vector<double>& v, int64_t rows, int64_t cols) {
  py::array_t<T, py::array::f_style> a({rows, cols});
  T* p = a.mutable_data();
  for (size_t i = 0; i < v.size() && i < static_cast<size_t>(rows * cols); ++i) p[i] = static_cast<T>(v[i]);
  return a;
}

// An optional host block (rows x k0) as doubles; k0 = 0 when None.
inline std::vector<double> host_block(const py::object& v0, int64_t rows, const char* name, int& k0) {
  k0 = 0;
  if (v0.is_none()) return {};
  auto a = py::array_t<double, py::array::f_style | py::array::forcecast>::ensure(v0);
  if (!a || a.ndim() != 2 || a.shape(0) != rows) throw py::value_error(std::string(name) + " must have shape (rows, k0)");
  k0 = static_cast<int>(a.shape(1));
  return std::vector<double>(a.data(), a.data() + a.size());
}

template <class T, class K>
py::tuple device_top_singular(K& kern, const T* M, const krylov::MatrixView& v, int k, const lanczos::Options& opt,
                              const py::object& v0, const char* where) {
  int k0 = 0;
  const std::vector<double> w = host_block(v0, v.m, "v0", k0);
  krylov::SingularOut res;
  {
    py::gil_scoped_release nogil;
    krylov::DeviceBackend<T, K> ops(kern, M, v);
    res = krylov::top_singular(ops, k, opt, k0 ? w.data() : nullptr, k0);
  }
  py::array_t<double> s(static_cast<py::ssize_t>(res.s.size()), res.s.data());
  py::dict info = lanczos_info(res.info);
  info["device"] = where;
  info["host_syncs"] = kern.downloads;  // device -> host copies (round trips) during the solve
  info["warm"] = fortran_from<T>(res.warm, v.m, res.warm_cols);
  return py::make_tuple(s, fortran_from<T>(res.U, v.n, k), fortran_from<T>(res.V, v.m, k), info);
}

// Extreme eigenpairs of a square symmetric matrix on the device (largest, or
// both ends); small problems are solved densely on a host copy.
template <class T, class K>
py::tuple device_top_eigs(K& kern, const T* M, const krylov::MatrixView& v, int k, bool both,
                          const lanczos::Options& opt, const py::object& v0, const char* where) {
  if (v.n != v.m) throw py::value_error("A must be square");
  int k0 = 0;
  const std::vector<double> w = host_block(v0, v.n, "v0", k0);
  const auto which = both ? lanczos::Which::Both : lanczos::Which::Largest;
  lanczos::Eigs res;
  {
    py::gil_scoped_release nogil;
    const krylov::Plan plan = krylov::plan_eigs(v.n, k, which, opt, k0 ? w.data() : nullptr, k0);
    if (plan.dense) {
      const std::vector<T> h = krylov::host_copy(kern, M, v);
      const std::vector<double> hd(h.begin(), h.end());
      res = lanczos::top_eigs(lanczos::dense_operator(hd.data(), v.n), v.n, k, which, opt, k0 ? w.data() : nullptr,
                              k0);
    } else {
      using B = krylov::DeviceBackend<T, K>;
      B ops(kern, M, v, B::Mode::Symmetric);
      auto r = krylov::top_eigs(ops, k, which, opt, k0 ? w.data() : nullptr, k0, plan);
      res.values = std::move(r.values);
      res.vectors = std::move(r.vectors);
      res.info = std::move(r.info);
      bool finite = true;
      for (size_t j = 0; j < res.values.size(); ++j)
        finite = finite && std::isfinite(res.values[j]) && std::isfinite(res.info.residuals[j]);
      res.info.converged = res.info.converged && finite;
      res.info.status = res.info.converged ? lanczos::Status::converged
                                           : (finite ? lanczos::Status::not_converged : lanczos::Status::numerical_issue);
    }
  }
  py::array_t<double> vals(static_cast<py::ssize_t>(res.values.size()), res.values.data());
  py::dict info = lanczos_info(res.info);
  info["device"] = where;
  info["host_syncs"] = kern.downloads;
  return py::make_tuple(vals, fortran_from<double>(res.vectors, v.n, static_cast<int64_t>(res.values.size())), info);
}

template <class T, class K>
py::tuple device_slq(K& kern, const T* M, const krylov::MatrixView& v, int probes, int degree, uint64_t seed,
                     bool symmetric) {
  lanczos::Quadrature q;
  {
    py::gil_scoped_release nogil;
    using B = krylov::DeviceBackend<T, K>;
    B ops(kern, M, v, symmetric ? B::Mode::Symmetric : B::Mode::Gram);
    q = krylov::slq(ops, probes, degree, seed);
  }
  py::array_t<double> nodes({q.probes, q.degree}), weights({q.probes, q.degree});
  std::memcpy(nodes.mutable_data(), q.nodes.data(), sizeof(double) * q.nodes.size());
  std::memcpy(weights.mutable_data(), q.weights.data(), sizeof(double) * q.weights.size());
  return py::make_tuple(nodes, weights);
}

// (Y, Z) = (M X, M^T Y) through the given kernels (tests of their index arithmetic).
// M is in K's memory; X is a host array (c x nb).
template <class T, class K>
py::tuple device_products(K& kern, const T* M, const krylov::MatrixView& v, const py::array& X, int64_t slabs) {
  auto x = py::array_t<T, py::array::f_style | py::array::forcecast>::ensure(X);
  if (!x || x.ndim() != 2 || x.shape(0) != v.c() || x.shape(1) < 1 || x.shape(1) > cuda::tiles::kMaxCols)
    throw py::value_error("X must have shape (c, nb) with 1 <= nb <= 16");
  const int nb = static_cast<int>(x.shape(1));
  const int64_t r = v.r(), c = v.c();
  py::array_t<T, py::array::f_style> Y({r, static_cast<int64_t>(nb)}), Z({c, static_cast<int64_t>(nb)});
  std::vector<void*> held;
  auto alloc = [&](size_t bytes) {
    held.push_back(kern.alloc(bytes));
    return static_cast<T*>(held.back());
  };
  try {
    T* xd = alloc(sizeof(T) * c * nb);
    T* yd = alloc(sizeof(T) * r * nb);
    T* zd = alloc(sizeof(T) * c * nb);
    T* pd = alloc(sizeof(T) * c * nb * slabs);
    kern.to_device(xd, x.data(), sizeof(T) * c * nb);
    kern.mx(M, v.ld, r, c, xd, c, nb, yd, r);
    kern.mty(M, v.ld, r, c, yd, r, nb, zd, c, slabs, pd);
    kern.to_host(Y.mutable_data(), yd, sizeof(T) * r * nb);
    kern.to_host(Z.mutable_data(), zd, sizeof(T) * c * nb);
  } catch (...) {
    for (void* p : held) kern.release(p);
    throw;
  }
  for (void* p : held) kern.release(p);
  return py::make_tuple(Y, Z);
}

// f(T{}) with T = float when single, else double.
template <class F>
auto dispatch(bool single, F&& f) {
  if (single) return f(float{});
  return f(double{});
}

}  // namespace specdyn::bindings
