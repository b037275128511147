// One-bulk DMFT bindings: conversions only (dmft.hpp holds the solver).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <limits>
#include <memory>

#include "mode_problem.hpp"
#include "python_interrupt.hpp"
#include "specdyn/dmft.hpp"

namespace py = pybind11;
using namespace specdyn;

namespace {

using carr = py::array_t<double, py::array::c_style | py::array::forcecast>;

py::array_t<double> to_array(const std::vector<double>& v, std::vector<py::ssize_t> shape) {
  py::array_t<double> out(shape);
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

void need(bool ok, const char* what) {
  if (!ok) throw py::value_error(what);
}

// the optional (steps + 1,) flags of the steps whose sharpness is taken; `flags` keeps them alive
void sharpness_flags(dmft::ModeProblem& pb, py::object sharpness_steps, int steps,
                     py::array_t<uint8_t, py::array::c_style | py::array::forcecast>& flags) {
  if (sharpness_steps.is_none()) return;
  flags = sharpness_steps.cast<py::array_t<uint8_t, py::array::c_style | py::array::forcecast>>();
  need(flags.ndim() == 1 && flags.shape(0) == steps + 1, "sharpness_steps: (steps + 1,) flags");
  pb.sharpness_steps = flags.data();
}

std::shared_ptr<dmft::ModeSolution> solve(carr s, carr weights, carr a0, carr B0, carr X, carr y, double c,
                                          double richness, double eta0, int steps, double history_tol,
                                          py::object sharpness_steps) {
  dmft::ModeProblem pb = bindings::mode_problem(s, weights, a0, B0, X, y, c, richness, steps);
  pb.eta0 = eta0;
  pb.history_tol = history_tol;
  py::array_t<uint8_t, py::array::c_style | py::array::forcecast> flags;
  sharpness_flags(pb, sharpness_steps, steps, flags);
  auto sol = std::make_shared<dmft::ModeSolution>();
  {
    bindings::PythonInterrupts interrupts;  // Ctrl-C stops the time loop
    py::gil_scoped_release nogil;
    *sol = dmft::solve_modes(pb);
  }
  return sol;
}

std::shared_ptr<dmft::OutputsSolution> solve_outputs(carr s, carr weights, carr a0, carr B0, carr X, carr y,
                                                     double c, double richness, double eta0, int steps,
                                                     double output_normalizer, double history_tol,
                                                     py::object sharpness_steps) {
  dmft::ModeProblem pb = bindings::mode_problem(s, weights, a0, B0, X, y, c, richness, steps, true);
  need(output_normalizer >= 1.0, "output_normalizer >= 1");
  pb.eta0 = eta0;
  pb.output_normalizer = output_normalizer;
  pb.history_tol = history_tol;
  py::array_t<uint8_t, py::array::c_style | py::array::forcecast> flags;
  sharpness_flags(pb, sharpness_steps, steps, flags);
  auto sol = std::make_shared<dmft::OutputsSolution>();
  {
    bindings::PythonInterrupts interrupts;
    py::gil_scoped_release nogil;
    *sol = dmft::solve_modes_outputs(pb);
  }
  return sol;
}

py::dict outliers_many(const dmft::ModeSolution& sol, std::vector<int> steps, int top_k, double c, double edge,
                       double spike_tol) {
  for (int n : steps) need(n >= 0 && n <= sol.steps, "outlier step out of range");
  need(top_k >= 1, "top_k >= 1");
  const py::ssize_t S = py::ssize_t(steps.size());
  std::vector<dmft::OutlierResult> res(steps.size());
  {
    py::gil_scoped_release nogil;
    for (size_t i = 0; i < steps.size(); ++i) res[i] = dmft::outliers(sol, steps[i], top_k, c, edge, spike_tol);
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> v(S * top_k), ol(S * top_k), orr(S * top_k), th(S * top_k, nan);
  std::vector<int> rank(S);
  for (py::ssize_t i = 0; i < S; ++i) {
    for (int k = 0; k < top_k; ++k) {
      v[i * top_k + k] = res[i].values[k];
      ol[i * top_k + k] = res[i].overlap_left[k];
      orr[i * top_k + k] = res[i].overlap_right[k];
      if (k < int(res[i].spikes.size())) th[i * top_k + k] = res[i].spikes[k];
    }
    rank[i] = res[i].rank;
  }
  py::dict d;
  d["values"] = to_array(v, {S, top_k});
  d["overlap_left"] = to_array(ol, {S, top_k});
  d["overlap_right"] = to_array(orr, {S, top_k});
  d["spikes"] = to_array(th, {S, top_k});
  d["rank"] = rank;
  return d;
}

}  // namespace

void bind_dmft(py::module_& m) {
  py::class_<dmft::ModeSolution, std::shared_ptr<dmft::ModeSolution>>(m, "DmftModeSolution",
                                                                      "Result of the one-bulk mode recursion")
      .def_property_readonly("steps", [](const dmft::ModeSolution& s) { return s.steps; })
      .def_property_readonly("loss", [](const dmft::ModeSolution& s) { return to_array(s.loss, {s.steps + 1}); })
      .def_property_readonly("beta_f",
                             [](const dmft::ModeSolution& s) { return to_array(s.beta_f, {s.steps + 1, s.input_dim}); })
      .def_property_readonly("Cw", [](const dmft::ModeSolution& s) { return to_array(s.Cw, {s.steps + 1, s.steps + 1}); })
      .def_property_readonly("Cq", [](const dmft::ModeSolution& s) { return to_array(s.Cq, {s.steps + 1, s.steps + 1}); })
      .def_property_readonly("Cqm",
                             [](const dmft::ModeSolution& s) { return to_array(s.Cqm, {s.steps + 1, s.steps + 1}); })
      .def_property_readonly("sharpness",
                             [](const dmft::ModeSolution& s) { return to_array(s.sharpness, {s.steps + 1}); })
      .def_property_readonly("rank_a", [](const dmft::ModeSolution& s) { return s.rank_a; })
      .def_property_readonly("rank_q", [](const dmft::ModeSolution& s) { return s.rank_q; });
  using OS = dmft::OutputsSolution;
  py::class_<OS, std::shared_ptr<OS>>(m, "DmftOutputsSolution", "Result of the one-bulk recursion with C outputs")
      .def_property_readonly("steps", [](const OS& s) { return s.steps; })
      .def_property_readonly("outputs", [](const OS& s) { return s.outputs; })
      .def_property_readonly("loss", [](const OS& s) { return to_array(s.loss, {s.steps + 1}); })
      .def_property_readonly("beta_f",
                             [](const OS& s) { return to_array(s.beta_f, {s.steps + 1, s.input_dim, s.outputs}); })
      .def_property_readonly("Cw", [](const OS& s) {
        const py::ssize_t T1 = s.steps + 1, C = s.outputs;
        return to_array(s.Cw, {T1, C, T1, C});
      })
      .def_property_readonly("Cq", [](const OS& s) {
        const py::ssize_t T1 = s.steps + 1, C = s.outputs;
        return to_array(s.Cq, {T1, C, T1, C});
      })
      .def_property_readonly("sharpness", [](const OS& s) { return to_array(s.sharpness, {s.steps + 1}); })
      .def_property_readonly(
          "history", [](const std::shared_ptr<OS>& s) { return std::shared_ptr<dmft::ModeSolution>(s, &s->history); },
          "the histories, one row per (step, output): dmft_outliers(history, [n * C], ...) are those of A(n)");
  m.def("dmft_solve_modes_outputs", &solve_outputs, py::arg("s"), py::arg("weights"), py::arg("a0"), py::arg("B0"),
        py::arg("X"), py::arg("y"), py::arg("c"), py::arg("richness"), py::arg("eta0"), py::arg("steps"),
        py::arg("output_normalizer") = 1.0, py::arg("history_tol") = 1e-13, py::arg("sharpness_steps") = py::none(),
        "One-bulk mode recursion with C outputs: a0 (M, C, R), y (P, C); see specdyn/dmft.hpp");
  m.def("dmft_solve_modes", &solve, py::arg("s"), py::arg("weights"), py::arg("a0"), py::arg("B0"), py::arg("X"),
        py::arg("y"), py::arg("c"), py::arg("richness"), py::arg("eta0"), py::arg("steps"),
        py::arg("history_tol") = 1e-13, py::arg("sharpness_steps") = py::none(),
        "One-bulk mode recursion (level one); see specdyn/dmft.hpp");
  m.def("dmft_outliers", &outliers_many, py::arg("solution"), py::arg("steps"), py::arg("top_k"), py::arg("c"),
        py::arg("edge"), py::arg("spike_tol") = 1e-12,
        "Outlier singular values of A(step) above edge (level two); see specdyn/dmft.hpp");
}
