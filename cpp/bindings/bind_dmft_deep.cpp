// Deep linear DMFT (conversions only); see specdyn/dmft_deep_linear.hpp.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>

#include "python_interrupt.hpp"
#include "specdyn/dmft_deep_linear.hpp"

namespace py = pybind11;
using namespace specdyn;

namespace {

using Arr = py::array_t<double, py::array::c_style | py::array::forcecast>;

void need(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("deep linear DMFT: ") + what);
}

py::array_t<double> to_array(const double* p, std::vector<py::ssize_t> shape) {
  py::array_t<double> out(shape);
  std::copy(p, p + out.size(), out.mutable_data());
  return out;
}

// per-layer vectors stacked into one array (layers, ...)
py::array_t<double> stack(const std::vector<std::vector<double>>& v, std::vector<py::ssize_t> inner) {
  std::vector<py::ssize_t> shape{py::ssize_t(v.size())};
  shape.insert(shape.end(), inner.begin(), inner.end());
  py::array_t<double> out(shape);
  double* o = out.mutable_data();
  for (const auto& x : v) o = std::copy(x.begin(), x.end(), o);
  return out;
}

std::shared_ptr<dmft::DeepLinearSolution> solve(Arr X, Arr y, std::vector<double> sigma, double c, double richness,
                                                double eta0, int steps, py::object sharpness_steps,
                                                double divergence_bound, double basis_tol, double output_normalizer) {
  need(X.ndim() == 2 && (y.ndim() == 1 || y.ndim() == 2) && y.shape(0) == X.shape(0), "X (P, D), y (P) or (P, C)");
  need(output_normalizer >= 1.0, "output_normalizer >= 1");
  dmft::DeepLinearProblem pb;
  pb.depth = int(sigma.size()) - 1;
  pb.samples = int(X.shape(0));
  pb.input_dim = int(X.shape(1));
  pb.steps = steps;
  pb.X = X.data();
  pb.y = y.data();
  pb.outputs = y.ndim() == 2 ? int(y.shape(1)) : 1;
  pb.output_normalizer = output_normalizer;
  pb.sigma = std::move(sigma);
  pb.c = c;
  pb.richness = richness;
  pb.eta0 = eta0;
  pb.divergence_bound = divergence_bound;
  pb.basis_tol = basis_tol;
  py::array_t<uint8_t, py::array::c_style | py::array::forcecast> flags;
  if (!sharpness_steps.is_none()) {
    flags = sharpness_steps.cast<py::array_t<uint8_t, py::array::c_style | py::array::forcecast>>();
    need(flags.ndim() == 1 && flags.shape(0) == steps + 1, "sharpness_steps: (steps + 1,) flags");
    pb.sharpness_steps = flags.data();
  }
  bindings::PythonInterrupts interrupts;  // Ctrl-C stops the time loop
  py::gil_scoped_release nogil;
  return dmft::solve_deep_linear(pb);
}

py::dict outliers(const dmft::DeepLinearSolution& sol, int layer, Arr s, Arr w, std::vector<int> steps, int top_k,
                  double edge, double history_tol) {
  need(s.ndim() == 1 && w.ndim() == 1 && s.shape(0) == w.shape(0), "s, weights (M,)");
  need(top_k >= 1, "top_k >= 1");
  dmft::DeepOutlierResult r;
  {
    py::gil_scoped_release nogil;
    r = dmft::deep_linear_outliers(sol, layer, s.data(), w.data(), int(s.shape(0)), steps, top_k, edge,
                                   history_tol);
  }
  const py::ssize_t S = py::ssize_t(steps.size()), T1 = sol.steps + 1;
  py::dict d;
  d["values"] = to_array(r.values.data(), {S, top_k});
  d["overlap_left"] = to_array(r.overlap_left.data(), {S, top_k});
  d["overlap_right"] = to_array(r.overlap_right.data(), {S, top_k});
  d["delta_singular_values"] = to_array(r.spikes.data(), {S, top_k});
  d["phi_in"] = to_array(r.phi_in.data(), {T1});
  d["phi_out"] = to_array(r.phi_out.data(), {T1});
  d["g_out"] = to_array(r.g_out.data(), {T1});
  d["g_in"] = to_array(r.g_in.data(), {T1});
  d["coef"] = r.coef;
  return d;
}

}  // namespace

void bind_dmft_deep(py::module_& m) {
  using S = dmft::DeepLinearSolution;
  py::class_<S, std::shared_ptr<S>>(m, "DeepLinearSolution", "Level one of the deep linear DMFT")
      .def_property_readonly("depth", [](const S& s) { return s.depth; })
      .def_property_readonly("steps", [](const S& s) { return s.steps; })
      .def_property_readonly("diverged_step", [](const S& s) { return s.diverged_step; })
      .def_property_readonly("loss", [](const S& s) { return to_array(s.loss.data(), {s.steps + 1}); })
      .def_property_readonly("outputs", [](const S& s) { return s.outputs; })
      // one output: (T + 1, D); C outputs: (T + 1, D, C)
      .def_property_readonly("beta_f",
                             [](const S& s) {
                               if (s.outputs == 1) return to_array(s.beta_f.data(), {s.steps + 1, s.input_dim});
                               return to_array(s.beta_f.data(), {s.steps + 1, s.input_dim, s.outputs});
                             })
      .def_property_readonly("residual",
                             [](const S& s) {
                               if (s.outputs == 1) return to_array(s.r.data(), {s.steps + 1, s.input_dim});
                               return to_array(s.r.data(), {s.steps + 1, s.input_dim, s.outputs});
                             })
      .def_property_readonly("sharpness", [](const S& s) { return to_array(s.sharpness.data(), {s.steps + 1}); })
      .def_property_readonly("feature_kernel",
                             [](const S& s) {
                               const py::ssize_t T1 = s.steps + 1, D = s.input_dim;
                               return stack(s.Phi, {T1, T1, D, D});
                             })
      .def_property_readonly("gradient_kernel",
                             [](const S& s) {   // (L, T+1, T+1), or (L, T+1, T+1, C, C) for C outputs
                               const py::ssize_t T1 = s.steps + 1, C = s.outputs;
                               if (C == 1) return stack(s.G, {T1, T1});
                               return stack(s.G, {T1, T1, C, C});
                             })
      .def_property_readonly("source_ranks", [](const S& s) { return std::make_pair(s.ru, s.rv); });
  m.def("dmft_deep_linear_solve", &solve, py::arg("X"), py::arg("y"), py::arg("sigma"), py::arg("c"),
        py::arg("richness"), py::arg("eta0"), py::arg("steps"), py::arg("sharpness_steps") = py::none(),
        py::arg("divergence_bound") = 1e8, py::arg("basis_tol") = 1e-12, py::arg("output_normalizer") = 1.0,
        "Deep linear DMFT, level one (kernels, loss, sharpness); see specdyn/dmft_deep_linear.hpp");
  m.def("dmft_deep_linear_outliers", &outliers, py::arg("solution"), py::arg("layer"), py::arg("s"),
        py::arg("weights"), py::arg("steps"), py::arg("top_k"), py::arg("edge"), py::arg("history_tol") = 1e-13,
        "Outliers of the hidden bulk W_layer of a deep linear DMFT solution (level two)");
}
