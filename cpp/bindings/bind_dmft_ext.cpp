// Theory beyond one bulk: the proportional two-layer model (conversions only).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "python_interrupt.hpp"
#include "specdyn/dmft_nonlinear.hpp"
#include "specdyn/dmft_proportional.hpp"

namespace py = pybind11;
using namespace specdyn;

template <class T>
static py::array_t<T> vec(const std::vector<T>& v, std::vector<py::ssize_t> shape) {
  py::array_t<T> out(shape);
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

void bind_dmft_ext(py::module_& m) {
  m.def(
      "proportional_solve",
      [](double nu, double gamma0, double eta0, double sigma_in, double sigma_out, double noise, int steps,
         int nodes, std::vector<int> tracked, int top_k, double edge_margin, double rank_tol,
         double divergence_bound) {
        dmft::ProportionalParams p;
        p.nu = nu;
        p.gamma0 = gamma0;
        p.eta0 = eta0;
        p.sigma_in = sigma_in;
        p.sigma_out = sigma_out;
        p.noise = noise;
        p.steps = steps;
        p.nodes = nodes;
        p.tracked = std::move(tracked);
        p.top_k = top_k;
        p.edge_margin = edge_margin;
        p.rank_tol = rank_tol;
        p.divergence_bound = divergence_bound;
        dmft::ProportionalResult r;
        {
          bindings::PythonInterrupts interrupts;  // Ctrl-C stops the time loop
          py::gil_scoped_release nogil;
          r = dmft::solve_proportional(p);
        }
        const py::ssize_t S = steps + 1, nt = static_cast<py::ssize_t>(p.tracked.size()), k = top_k;
        py::dict d;
        d["loss"] = vec(r.loss, {S});
        d["readout_norm2"] = vec(r.readout_norm2, {S});
        d["readout_delta2"] = vec(r.readout_delta2, {S});
        d["outliers"] = vec(r.outliers, {nt, k});
        d["delta_singular"] = vec(r.delta_singular, {nt, k});
        d["overlap_left"] = vec(r.overlap_left, {nt, k});
        d["overlap_right"] = vec(r.overlap_right, {nt, k});
        d["top_singular"] = vec(r.top_singular, {nt});
        d["sharpness"] = vec(r.sharpness, {nt});
        d["history_rank"] = vec(r.history_rank, {nt});
        d["edge"] = r.edge;
        d["diverged_step"] = r.diverged_step;
        return d;
      },
      py::arg("nu"), py::arg("gamma0"), py::arg("eta0"), py::arg("sigma_in"), py::arg("sigma_out"),
      py::arg("noise"), py::arg("steps"), py::arg("nodes"), py::arg("tracked"), py::arg("top_k"),
      py::arg("edge_margin"), py::arg("rank_tol"), py::arg("divergence_bound"),
      "Mode recursion and outliers of the proportional two-layer model (docs/theory.md).");

  m.def(
      "monte_carlo_two_layer",
      [](py::array_t<double, py::array::c_style | py::array::forcecast> X,
         py::array_t<double, py::array::c_style | py::array::forcecast> Y, double gamma0, double eta0,
         double sigma_in, double sigma_out, const std::string& activation, int steps, int particles, uint64_t seed,
         uint64_t replica, std::vector<int> tracked, double divergence_bound) {
        if (X.ndim() != 2 || Y.ndim() != 1 || Y.shape(0) != X.shape(0))
          throw std::invalid_argument("X must be (P, D) and Y (P,)");
        const int P = static_cast<int>(X.shape(0)), D = static_cast<int>(X.shape(1));
        dmft::MonteCarloParams p;
        p.gamma0 = gamma0;
        p.eta0 = eta0;
        p.sigma_in = sigma_in;
        p.sigma_out = sigma_out;
        p.activation = parse_activation(activation);
        p.steps = steps;
        p.particles = particles;
        p.seed = seed;
        p.replica = replica;
        p.tracked = std::move(tracked);
        p.divergence_bound = divergence_bound;
        dmft::MonteCarloResult r;
        {
          bindings::PythonInterrupts interrupts;  // Ctrl-C stops the time loop
          py::gil_scoped_release nogil;
          r = dmft::monte_carlo_two_layer(X.data(), Y.data(), P, D, p);
        }
        const py::ssize_t S = steps + 1, nt = static_cast<py::ssize_t>(p.tracked.size());
        py::dict d;
        d["loss"] = vec(r.loss, {S});
        d["outputs"] = vec(r.outputs, {S, P});
        d["phi"] = vec(r.phi, {nt, P, P});
        d["grad"] = vec(r.grad, {nt, P, P});
        d["sharpness"] = vec(r.sharpness, {nt});
        d["diverged_step"] = r.diverged_step;
        return d;
      },
      py::arg("X"), py::arg("Y"), py::arg("gamma0"), py::arg("eta0"), py::arg("sigma_in"), py::arg("sigma_out"),
      py::arg("activation"), py::arg("steps"), py::arg("particles"), py::arg("seed"), py::arg("replica"),
      py::arg("tracked"), py::arg("divergence_bound"),
      "One Monte Carlo replica of the muP two-layer DMFT (docs/theory.md).");

  m.def(
      "monte_carlo_deep",
      [](py::array_t<double, py::array::c_style | py::array::forcecast> X,
         py::array_t<double, py::array::c_style | py::array::forcecast> Y, double gamma0, double eta0,
         std::vector<double> sigma, const std::string& activation, int steps, int particles, int response_particles,
         uint64_t seed, uint64_t replica, std::vector<int> tracked, double divergence_bound) {
        if (X.ndim() != 2 || Y.ndim() != 1 || Y.shape(0) != X.shape(0))
          throw std::invalid_argument("X must be (P, D) and Y (P,)");
        const int P = static_cast<int>(X.shape(0)), D = static_cast<int>(X.shape(1));
        dmft::DeepMonteCarloParams p;
        p.gamma0 = gamma0;
        p.eta0 = eta0;
        p.depth = static_cast<int>(sigma.size()) - 1;
        p.sigma = std::move(sigma);
        p.activation = parse_activation(activation);
        p.steps = steps;
        p.particles = particles;
        p.response_particles = response_particles;
        p.seed = seed;
        p.replica = replica;
        p.tracked = std::move(tracked);
        p.divergence_bound = divergence_bound;
        dmft::DeepMonteCarloResult r;
        {
          bindings::PythonInterrupts interrupts;  // Ctrl-C stops the time loop
          py::gil_scoped_release nogil;
          r = dmft::monte_carlo_deep(X.data(), Y.data(), P, D, p);
        }
        const py::ssize_t S = steps + 1, nt = static_cast<py::ssize_t>(p.tracked.size()), L = p.depth;
        py::dict d;
        d["loss"] = vec(r.loss, {S});
        d["outputs"] = vec(r.outputs, {S, P});
        d["phi"] = vec(r.phi, {nt, L, P, P});
        d["grad"] = vec(r.grad, {nt, L, P, P});
        d["sharpness"] = vec(r.sharpness, {nt});
        d["diverged_step"] = r.diverged_step;
        return d;
      },
      py::arg("X"), py::arg("Y"), py::arg("gamma0"), py::arg("eta0"), py::arg("sigma"), py::arg("activation"),
      py::arg("steps"), py::arg("particles"), py::arg("response_particles"), py::arg("seed"), py::arg("replica"),
      py::arg("tracked"), py::arg("divergence_bound"),
      "One Monte Carlo replica of the muP DMFT of a network with len(sigma) - 1 hidden layers (docs/theory.md).");
  m.def("monte_carlo_deep_tangent_bytes", &dmft::monte_carlo_deep_tangent_bytes, py::arg("depth"),
        py::arg("steps"), py::arg("samples"), py::arg("response_particles"),
        "Bytes of tangent storage that monte_carlo_deep needs.");
}
