// Bindings of the lanczos concern: conversions only. Arguments are validated
// in python/specdyn/lanczos.py before these run; the checks here only guard
// against misuse of the private entry points.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <stdexcept>

#include "specdyn/blas.hpp"
#include "lanczos_info.hpp"
#include "specdyn/lanczos.hpp"

namespace py = pybind11;
using namespace specdyn;
using lanczos::MatMat;

namespace {

template <class T>
py::array_t<T> fortran(const std::vector<T>& v, int64_t rows, int64_t cols) {
  py::array_t<T, py::array::f_style> a({rows, cols});
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), sizeof(T) * v.size());
  return a;
}

template <class T>
py::tuple top_singular(py::array A, int k, const lanczos::Options& opt, py::object v0, bool row_sums,
                       py::object row_weights) {
  if (A.ndim() != 2 || !py::isinstance<py::array_t<T>>(A)) throw py::value_error("A: wrong dtype or ndim");
  const bool row_major = A.flags() & py::array::c_style;
  if (!row_major && !(A.flags() & py::array::f_style)) throw py::value_error("A must be C or Fortran contiguous");
  const int64_t n = A.shape(0), m = A.shape(1);
  const T* pa = static_cast<const T*>(A.data());
  py::array_t<T, py::array::f_style | py::array::forcecast> w;
  const T* pw = nullptr;
  int k0 = 0;
  if (!v0.is_none()) {
    w = py::array_t<T, py::array::f_style | py::array::forcecast>::ensure(v0);
    if (!w || w.ndim() != 2 || w.shape(0) != m) throw py::value_error("v0 must have shape (m, k0)");
    pw = w.data();
    k0 = static_cast<int>(w.shape(1));
  }
  lanczos::RowSums sums;
  py::array_t<double, py::array::c_style | py::array::forcecast> rw;
  if (!row_weights.is_none()) {
    rw = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(row_weights);
    if (!rw || rw.ndim() != 1 || rw.shape(0) != n) throw py::value_error("row_weights must have shape (n,)");
    sums.row_weights = rw.data();
    row_sums = true;
  }
  lanczos::Triplets<T> t;
  {
    py::gil_scoped_release nogil;
    t = lanczos::top_singular<T>(pa, n, m, row_major, k, opt, pw, k0, row_sums ? &sums : nullptr);
  }
  py::array_t<double> s(static_cast<py::ssize_t>(t.s.size()), t.s.data());
  py::dict info = bindings::lanczos_info(t.info);
  if (row_sums) {  // RowSums of the first sweep; None when the solve made none (dense, or column-major A)
    info["row_squares"] = sums.done ? py::object(py::float_(sums.squares)) : py::none();
    info["row_weighted"] = sums.done && sums.row_weights
                               ? py::object(py::array_t<double>(static_cast<py::ssize_t>(m), sums.weighted.data()))
                               : py::none();
  }
  info["warm"] = fortran(t.warm, m, t.warm_cols);  // V, then Ritz vectors of the next values: the next call's v0
  return py::make_tuple(s, fortran(t.U, n, k), fortran(t.V, m, k), info);
}

// A Python callable X (n, b) -> Y (n, b) as a MatMat; holds the GIL only
// while Python runs. Shape errors raise ValueError.
MatMat wrap_callable(py::function f, int64_t n) {
  return [f, n](const double* X, double* Y, int b) {
    py::gil_scoped_acquire gil;
    py::array_t<double, py::array::f_style> x({n, static_cast<int64_t>(b)});
    std::memcpy(x.mutable_data(), X, sizeof(double) * static_cast<size_t>(n) * b);
    py::object r = f(x);
    auto y = py::array_t<double, py::array::f_style | py::array::forcecast>::ensure(r);
    if (!y || y.size() != n * b || y.ndim() < 1 || y.shape(0) != n)
      throw py::value_error("op must return an array of shape (n, b) for an (n, b) input");
    std::memcpy(Y, y.data(), sizeof(double) * static_cast<size_t>(n) * b);
  };
}

py::tuple eigs_result(const lanczos::Eigs& e, int64_t n) {
  py::array_t<double> vals(static_cast<py::ssize_t>(e.values.size()), e.values.data());
  return py::make_tuple(vals, fortran(e.vectors, n, static_cast<int64_t>(e.values.size())),
                        bindings::lanczos_info(e.info));
}

py::tuple top_eigs_impl(const MatMat& op, int64_t n, int k, bool both, const lanczos::Options& opt, py::object v0) {
  py::array_t<double, py::array::f_style | py::array::forcecast> w;
  const double* pw = nullptr;
  int k0 = 0;
  if (!v0.is_none()) {
    w = py::array_t<double, py::array::f_style | py::array::forcecast>::ensure(v0);
    if (!w || w.ndim() != 2 || w.shape(0) != n) throw py::value_error("v0 must have shape (n, k0)");
    pw = w.data();
    k0 = static_cast<int>(w.shape(1));
  }
  lanczos::Eigs e;
  {
    py::gil_scoped_release nogil;
    e = lanczos::top_eigs(op, n, k, both ? lanczos::Which::Both : lanczos::Which::Largest, opt, pw, k0);
  }
  return eigs_result(e, n);
}

py::tuple quadrature(const lanczos::Quadrature& q) {
  return py::make_tuple(fortran(q.nodes, q.degree, q.probes).attr("T"), fortran(q.weights, q.degree, q.probes).attr("T"));
}

template <class T>
py::tuple slq_gram(py::array A, int probes, int degree, uint64_t seed) {
  if (A.ndim() != 2 || !py::isinstance<py::array_t<T>>(A)) throw py::value_error("A: wrong dtype or ndim");
  const bool row_major = A.flags() & py::array::c_style;
  if (!row_major && !(A.flags() & py::array::f_style)) throw py::value_error("A must be C or Fortran contiguous");
  const int64_t n = A.shape(0), m = A.shape(1);
  lanczos::Quadrature q;
  {
    py::gil_scoped_release nogil;
    blas::ThreadScope one(1);
    auto op = lanczos::gram_operator<T>(static_cast<const T*>(A.data()), n, m, row_major);
    q = lanczos::slq(op, lanczos::gram_dim(n, m), probes, degree, seed);
  }
  return quadrature(q);
}

}  // namespace

// Z = A^T (A X) for a C-ordered A in one fused sweep or, Transposed, Z = A^T X
// by the same panels (benchmarks and tests).
template <class T, bool Transposed>
py::array_t<T> sweep(py::array_t<T, py::array::c_style> A, py::array_t<T, py::array::f_style> X) {
  const int64_t r = A.shape(0), c = A.shape(1), b = X.ndim() == 2 ? X.shape(1) : 1;
  if (X.shape(0) != (Transposed ? r : c))
    throw py::value_error(Transposed ? "Y must have A.shape[0] rows" : "X must have A.shape[1] rows");
  py::array_t<T, py::array::f_style> Z({c, b});
  {
    py::gil_scoped_release nogil;
    blas::ThreadScope one(1);
    if constexpr (Transposed)
      lanczos::transpose_sweep<T>(A.data(), r, c, c, X.data(), static_cast<int>(b), Z.mutable_data());
    else
      lanczos::gram_sweep<T>(A.data(), r, c, c, X.data(), static_cast<int>(b), nullptr, Z.mutable_data());
  }
  return Z;
}

void bind_lanczos(py::module_& m) {
  // The solver parameters cross into C++ as this one object (filled in python/specdyn/lanczos.py).
  py::class_<lanczos::Options>(m, "KrylovOptions", "Parameters of the Krylov solvers (specdyn::lanczos::Options)")
      .def(py::init<>())
      .def_readwrite("tol", &lanczos::Options::tol)
      .def_readwrite("block", &lanczos::Options::block)
      .def_readwrite("max_passes", &lanczos::Options::max_passes)
      .def_readwrite("max_basis", &lanczos::Options::max_basis)
      .def_readwrite("seed", &lanczos::Options::seed)
      .def_readwrite("warm_extra", &lanczos::Options::warm_extra)
      .def_readwrite("resolvable", &lanczos::Options::resolvable);
  m.def("gram_sweep_f64", &sweep<double, false>, py::arg("A"), py::arg("X"));
  m.def("gram_sweep_f32", &sweep<float, false>, py::arg("A"), py::arg("X"));
  m.def("transpose_sweep_f64", &sweep<double, true>, py::arg("A"), py::arg("Y"));
  m.def("transpose_sweep_f32", &sweep<float, true>, py::arg("A"), py::arg("Y"));
  m.def(
      "sweep_kernel_choices",
      [] {
        py::list out;
        for (const auto& k : lanczos::sweep_kernel_choices()) {
          py::dict d;
          d["dtype"] = k.element_bytes == 4 ? "float32" : "float64";
          d["block"] = k.block;
          d["size_log2"] = k.size_log2;
          d["kernel"] = k.chosen < 0 ? "timing" : (k.chosen == 1 ? "pipelined" : "panel by panel");
          d["best_s"] = py::make_tuple(k.best_s[0], k.best_s[1]);
          d["trials"] = py::make_tuple(k.trials[0], k.trials[1]);
          out.append(d);
        }
        return out;
      },
      "How the fused sweeps chose their kernel in this process: per dtype, block width and matrix size "
      "(bytes, to a power of two), the best time of each kernel (panel by panel, pipelined) and the choice.");
  m.def("top_singular_f64", &top_singular<double>, py::arg("A"), py::arg("k"), py::arg("opt"),
        py::arg("v0") = py::none(), py::arg("row_sums") = false, py::arg("row_weights") = py::none());
  m.def("top_singular_f32", &top_singular<float>, py::arg("A"), py::arg("k"), py::arg("opt"),
        py::arg("v0") = py::none(), py::arg("row_sums") = false, py::arg("row_weights") = py::none());
  m.def(
      "top_eigs_dense",
      [](py::array_t<double, py::array::f_style> A, int k, bool both, const lanczos::Options& opt, py::object v0) {
        if (A.ndim() != 2 || A.shape(0) != A.shape(1)) throw py::value_error("A must be square");
        return top_eigs_impl(lanczos::dense_operator(A.data(), A.shape(0)), A.shape(0), k, both, opt, v0);
      },
      py::arg("A"), py::arg("k"), py::arg("both"), py::arg("opt"), py::arg("v0") = py::none());
  m.def(
      "top_eigs_op",
      [](py::function f, int64_t n, int k, bool both, const lanczos::Options& opt, py::object v0) {
        return top_eigs_impl(wrap_callable(f, n), n, k, both, opt, v0);
      },
      py::arg("op"), py::arg("n"), py::arg("k"), py::arg("both"), py::arg("opt"), py::arg("v0") = py::none());
  m.def("slq_gram_f64", &slq_gram<double>, py::arg("A"), py::arg("probes"), py::arg("degree"), py::arg("seed"));
  m.def("slq_gram_f32", &slq_gram<float>, py::arg("A"), py::arg("probes"), py::arg("degree"), py::arg("seed"));
  m.def(
      "slq_dense",
      [](py::array_t<double, py::array::f_style> A, int probes, int degree, uint64_t seed) {
        lanczos::Quadrature q;
        {
          py::gil_scoped_release nogil;
          q = lanczos::slq(lanczos::dense_operator(A.data(), A.shape(0)), A.shape(0), probes, degree, seed);
        }
        return quadrature(q);
      },
      py::arg("A"), py::arg("probes"), py::arg("degree"), py::arg("seed"));
  m.def(
      "slq_op",
      [](py::function f, int64_t n, int probes, int degree, uint64_t seed) {
        lanczos::Quadrature q;
        {
          py::gil_scoped_release nogil;
          q = lanczos::slq(wrap_callable(f, n), n, probes, degree, seed);
        }
        return quadrature(q);
      },
      py::arg("op"), py::arg("n"), py::arg("probes"), py::arg("degree"), py::arg("seed"));
}
