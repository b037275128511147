// _core.device_emulation: the device algorithms run by the host launcher
// (gpu::HostExec), launch for launch, and the device Krylov solvers on the
// host emulation of their kernels (krylov::HostKernels), so that CPU tests
// check the device code;
// and _core.dmft_solution_from_histories, the bridge from a direct run's
// histories (host or device) to the outlier solver.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "device_bindings.hpp"
#include "krylov_bindings.hpp"
#include "specdyn/krylov/host_kernels.hpp"
#include "specdyn/dmft_direct.hpp"
#include "specdyn/gpu_exec.hpp"
#include "specdyn/nets_device.hpp"

namespace py = pybind11;
using namespace specdyn;

namespace {

template <class T>
using carr = py::array_t<T, py::array::c_style | py::array::forcecast>;

std::vector<double> take(const py::dict& d, const char* key, size_t n) {
  auto a = d[key].cast<carr<double>>();
  if (static_cast<size_t>(a.size()) != n) throw std::invalid_argument(std::string(key) + " has the wrong size");
  return std::vector<double>(a.data(), a.data() + a.size());
}

// C (m x n, column-major) = alpha op(A) op(B) + beta C by the device GEMM's tiles, on the host.
template <class T>
py::array_t<T> gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, carr<T> A, int64_t lda, carr<T> B,
                    int64_t ldb, T beta, carr<T> C, int64_t ldc) {
  auto fits = [](const carr<T>& X, int64_t ld, int64_t rows, int64_t cols) {
    return ld >= rows && (rows == 0 || cols == 0 || X.size() >= ld * (cols - 1) + rows);
  };
  if (!fits(A, lda, ta ? k : m, ta ? m : k) || !fits(B, ldb, tb ? n : k, tb ? k : n) || !fits(C, ldc, m, n))
    throw std::invalid_argument("gemm: arrays too small for the given sizes and leading dimensions");
  py::array_t<T> out(C.size());
  std::copy(C.data(), C.data() + C.size(), out.mutable_data());
  const gpu::GemmArgs<T> g{ta, tb, m, n, k, alpha, beta, A.data(), lda, B.data(), ldb, out.mutable_data(), ldc};
  gpu::HostExec ex;
  ex.gemm(g);
  return out;
}

// Runs f(kernels, pointer, view) on a NumPy matrix read in place with the
// layout parsed in Python (backend.matrix_layout), as the device would read it.
template <class F>
auto on_emulated_device(const py::array& A, bool row_major, int64_t ld, int multiprocessors, F&& f) {
  const bool single = py::isinstance<py::array_t<float>>(A);
  if (A.ndim() != 2 || (!single && !py::isinstance<py::array_t<double>>(A)))
    throw py::value_error("A must be a 2-d float32 or float64 array");
  const auto v = bindings::matrix_view(A.shape(0), A.shape(1), row_major, ld);
  return bindings::dispatch(single, [&](auto zero) {
    using T = decltype(zero);
    krylov::HostKernels<T> kern;
    kern.sm = multiprocessors;
    return f(kern, static_cast<const T*>(A.data()), v);
  });
}

}  // namespace

void bind_device_emulation(py::module_& m) {
  auto sub = m.def_submodule("device_emulation",
                             "The device algorithms (CUDA module) run launch for launch on the host, for tests");
  bind_device::bind(
      sub, nets::make_emulated_trainer, [](const dmft::ModeProblem& pb) { return dmft::solve_direct_host(pb); },
      [](const void* W, int64_t n, int64_t m, bool single, int k, const lanczos::Options& opt, const py::object& v0) {
        return bindings::dispatch(single, [&](auto zero) {
          using T = decltype(zero);
          krylov::HostKernels<T> kern;
          return bindings::device_top_singular(kern, static_cast<const T*>(W), bindings::matrix_view(n, m, true, m),
                                               k, opt, v0, "host-emulation");
        });
      });
  sub.def("gemm", &gemm<double>, py::arg("transA"), py::arg("transB"), py::arg("m"), py::arg("n"), py::arg("k"),
          py::arg("alpha"), py::arg("A"), py::arg("lda"), py::arg("B"), py::arg("ldb"), py::arg("beta"), py::arg("C"),
          py::arg("ldc"), "The device GEMM's tiling on the host (flat column-major arrays); returns the new C");
  sub.def("gemm", &gemm<float>, py::arg("transA"), py::arg("transB"), py::arg("m"), py::arg("n"), py::arg("k"),
          py::arg("alpha"), py::arg("A"), py::arg("lda"), py::arg("B"), py::arg("ldb"), py::arg("beta"), py::arg("C"),
          py::arg("ldc"));

  // The device Krylov solvers on the host emulation of their kernels. A, row_major, ld: a
  // NumPy matrix and its layout (backend.matrix_layout); multiprocessors sets the M^T Y slabs.
  sub.def(
      "top_singular",
      [](py::array A, bool row_major, int64_t ld, int k, const lanczos::Options& opt, py::object v0, int sm) {
        return on_emulated_device(A, row_major, ld, sm, [&](auto& kern, auto* M, const krylov::MatrixView& v) {
          return bindings::device_top_singular(kern, M, v, k, opt, v0, "host-emulation");
        });
      },
      py::arg("A"), py::arg("row_major"), py::arg("ld"), py::arg("k"), py::arg("opt"), py::arg("v0") = py::none(),
      py::arg("multiprocessors") = 4);
  sub.def(
      "top_eigs",
      [](py::array A, bool row_major, int64_t ld, int k, bool both, const lanczos::Options& opt, py::object v0,
         int sm) {
        return on_emulated_device(A, row_major, ld, sm, [&](auto& kern, auto* M, const krylov::MatrixView& v) {
          return bindings::device_top_eigs(kern, M, v, k, both, opt, v0, "host-emulation");
        });
      },
      py::arg("A"), py::arg("row_major"), py::arg("ld"), py::arg("k"), py::arg("both"), py::arg("opt"),
      py::arg("v0") = py::none(), py::arg("multiprocessors") = 4);
  sub.def(
      "slq",
      [](py::array A, bool row_major, int64_t ld, int probes, int degree, uint64_t seed, bool symmetric, int sm) {
        return on_emulated_device(A, row_major, ld, sm, [&](auto& kern, auto* M, const krylov::MatrixView& v) {
          return bindings::device_slq(kern, M, v, probes, degree, seed, symmetric);
        });
      },
      py::arg("A"), py::arg("row_major"), py::arg("ld"), py::arg("probes"), py::arg("degree"), py::arg("seed"),
      py::arg("symmetric"), py::arg("multiprocessors") = 4);
  sub.def(
      "products",
      [](py::array A, bool row_major, int64_t ld, py::array X, int64_t slabs) {
        return on_emulated_device(A, row_major, ld, 4, [&](auto& kern, auto* M, const krylov::MatrixView& v) {
          return bindings::device_products(kern, M, v, X, slabs);
        });
      },
      py::arg("A"), py::arg("row_major"), py::arg("ld"), py::arg("X"), py::arg("slabs"),
      "(Y, Z) = (M X, M^T Y) by the emulated device kernels, M the row-major view of A");
  sub.def("mty_slabs", &cuda::tiles::mty_slabs, py::arg("r"), py::arg("c"), py::arg("multiprocessors"));

  m.def(
      "dmft_solution_from_histories",
      [](const py::dict& d, carr<double> sharpness, double history_tol) {
        dmft::DirectSolution s;
        s.steps = d["steps"].cast<int>();
        s.nodes = d["nodes"].cast<int>();
        s.coef = d["coef"].cast<int>();
        s.input_dim = d["input_dim"].cast<int>();
        const size_t T1 = size_t(s.steps) + 1, L = size_t(s.nodes) * s.coef, D = size_t(s.input_dim);
        s.loss = take(d, "loss", T1);
        s.beta_f = take(d, "beta_f", T1 * D);
        s.Cw = take(d, "Cw", T1 * T1);
        s.Cq = take(d, "Cq", T1 * T1);
        s.Cqm = take(d, "Cqm", T1 * T1);
        s.hist_a = take(d, "hist_a", T1 * L);
        s.hist_q = take(d, "hist_q", T1 * L);
        s.s_row = take(d, "s_row", L);
        std::vector<double> sh(sharpness.data(), sharpness.data() + sharpness.size());
        auto out = std::make_shared<dmft::ModeSolution>();
        {
          py::gil_scoped_release nogil;
          *out = dmft::solution_from_histories(s, sh, history_tol);
        }
        return out;
      },
      py::arg("direct"), py::arg("sharpness"), py::arg("history_tol") = 1e-13,
      "A DmftModeSolution (input of dmft_outliers) from the dict of a direct run (dmft_direct) and the sharpness");
}
