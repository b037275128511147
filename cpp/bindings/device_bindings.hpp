// Bindings of the device algorithms, shared by _cuda (CUDA launcher) and
// _core (the host launcher that runs the same launches on the CPU, for tests):
//   device_trainer(spec: dict, X, Y) -> DeviceTrainer   (dtype from X)
//   dmft_direct(s, weights, a0, B0, X, y, c, richness, steps, gram_steps) -> dict
// Conversions only. Types are module-local: both modules may be loaded at once.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "mode_problem.hpp"
#include "specdyn/dmft_direct.hpp"
#include "specdyn/lanczos.hpp"
#include "specdyn/nets.hpp"
#include "specdyn/nets_device.hpp"

namespace specdyn::bind_device {

namespace py = pybind11;

using MakeTrainer = std::function<std::unique_ptr<nets::DeviceTrainer>(const nets::DeviceTrainSpec&, const void*,
                                                                       const void*, bool)>;
using SolveDirect = std::function<dmft::DirectSolution(const dmft::ModeProblem&)>;
// The device Krylov top_singular on a row-major n x m matrix in the trainer's memory
// (s, U, V, info), run by the module's kernel set (CUDA kernels or their host emulation).
using TopSingular = std::function<py::tuple(const void* W, int64_t n, int64_t m, bool single, int k,
                                            const lanczos::Options& opt, const py::object& v0)>;

inline py::array_t<double> vec(const std::vector<double>& v, std::vector<py::ssize_t> shape) {
  py::array_t<double> a(shape);
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

inline nets::DeviceTrainSpec spec_from(const py::dict& d) {
  nets::DeviceTrainSpec s;
  s.input_dim = d["input_dim"].cast<int64_t>();
  s.width = d["width"].cast<int64_t>();
  s.output_dim = d["output_dim"].cast<int64_t>();
  s.samples = d["samples"].cast<int64_t>();
  s.depth = d["depth"].cast<int>();
  s.activation = parse_activation(d["activation"].cast<std::string>());
  s.multipliers = d["multipliers"].cast<std::vector<double>>();
  s.init_stds = d["init_stds"].cast<std::vector<double>>();
  s.learning_rate = d["learning_rate"].cast<double>();
  // optional: 1 (the loss summed over outputs) unless the spec says otherwise
  if (d.contains("output_normalizer")) s.output_normalizer = d["output_normalizer"].cast<double>();
  s.seed = d["seed"].cast<uint64_t>();
  s.divergence_bound = d["divergence_bound"].cast<double>();
  s.check();
  return s;
}

template <class T>
using carr = py::array_t<T, py::array::c_style | py::array::forcecast>;

inline void bind(py::module_& m, MakeTrainer make, SolveDirect solve, TopSingular top) {
  using nets::DeviceTrainer;
  py::class_<DeviceTrainer>(m, "DeviceTrainer", py::module_local(),
                            "Full-batch GD of an MLP in device memory (nets_device.hpp)")
      .def(
          "run",
          [](DeviceTrainer& t, int64_t until) {
            py::gil_scoped_release nogil;
            return t.run(until);
          },
          py::arg("until"), "GD steps until step == until (stops early on divergence); returns the step")
      .def(
          "evaluate",
          [](DeviceTrainer& t) {
            py::gil_scoped_release nogil;
            return t.evaluate();
          },
          "Loss at the current weights (forward pass, no update)")
      .def_property_readonly("step", &DeviceTrainer::step)
      .def_property_readonly("diverged_step", &DeviceTrainer::diverged_step)
      .def("losses", [](DeviceTrainer& t) {
        auto v = t.losses();
        return vec(v, {static_cast<py::ssize_t>(v.size())});
      })
      .def("frobenius_norms", [](DeviceTrainer& t) {
        std::vector<double> v;
        {
          py::gil_scoped_release nogil;
          v = t.frobenius_norms();
        }
        return vec(v, {static_cast<py::ssize_t>(v.size())});
      })
      .def(
          "weights",
          [](DeviceTrainer& t, int l, bool single) -> py::array {
            const auto& s = t.spec();
            if (l < 0 || l >= s.layers()) throw py::index_error("layer out of range");
            std::vector<py::ssize_t> shape{s.fan_out(l), s.fan_in(l)};
            if (single) {
              py::array_t<float> a(shape);
              t.copy_weights(l, a.mutable_data());
              return a;
            }
            py::array_t<double> a(shape);
            t.copy_weights(l, a.mutable_data());
            return a;
          },
          py::arg("layer"), py::arg("single"), "Host copy of W^l, (fan_out, fan_in), float32 if single")
      .def(
          "top_singular",
          [top](DeviceTrainer& t, int l, bool single, int k, const lanczos::Options& opt, py::object v0,
                bool delta) {
            const auto& s = t.spec();
            if (l < 0 || l >= s.layers()) throw py::index_error("layer out of range");
            return top(delta ? t.delta_data(l) : t.weights_data(l), s.fan_out(l), s.fan_in(l), single, k, opt, v0);
          },
          py::arg("layer"), py::arg("single"), py::arg("k"), py::arg("opt"), py::arg("v0") = py::none(),
          py::arg("delta") = false,
          "Top-k singular triplets of W^l (delta: of W^l - W^l(0)) by the device Krylov solver on the "
          "trainer's memory, in place")
      .def(
          "signal_means",
          [](DeviceTrainer& t) {
            std::vector<std::vector<double>> in, bw;
            {
              py::gil_scoped_release nogil;
              t.signal_means(in, bw);
            }
            py::list li, lb;
            for (size_t l = 0; l < in.size(); ++l) {
              li.append(vec(in[l], {static_cast<py::ssize_t>(in[l].size())}));
              lb.append(vec(bw[l], {static_cast<py::ssize_t>(bw[l].size())}));
            }
            return py::make_tuple(li, lb);
          },
          "After evaluate(): (inputs, backward), per layer the mean over samples of its input and of the "
          "backward signal at its output (signal-only backward pass on the device)");

  m.def(
      "device_trainer",
      [make](const py::dict& spec, py::array X, py::array Y) {
        const auto s = spec_from(spec);
        const bool single = X.dtype().is(py::dtype::of<float>());
        auto check = [&](const py::array& A, int64_t cols, const char* name) {
          if (A.ndim() != 2 || A.shape(0) != s.samples || A.shape(1) != cols)
            throw std::invalid_argument(std::string(name) + " must have shape (samples, " +
                                        (cols == s.input_dim ? "input_dim" : "output_dim") + ")");
        };
        check(X, s.input_dim, "X");
        check(Y, s.output_dim, "Y");
        if (single) {
          auto x = carr<float>::ensure(X);
          auto y = carr<float>::ensure(Y);
          return make(s, x.data(), y.data(), true);
        }
        auto x = carr<double>::ensure(X);
        auto y = carr<double>::ensure(Y);
        return make(s, x.data(), y.data(), false);
      },
      py::arg("spec"), py::arg("X"), py::arg("Y"),
      "A DeviceTrainer; spec: dict of input_dim, width, output_dim, samples, depth, activation, multipliers, "
      "init_stds, learning_rate, seed, divergence_bound and optionally output_normalizer (K of the loss "
      "(1 / 2 P K) sum |f - y|^2; default 1). float32 when X is float32, else float64.");

  m.def(
      "dmft_direct",
      [solve](carr<double> s, carr<double> weights, carr<double> a0, carr<double> B0, carr<double> X,
              carr<double> y, double c, double richness, int steps, py::object gram_steps) {
        dmft::ModeProblem pb = bindings::mode_problem(s, weights, a0, B0, X, y, c, richness, steps);
        const int M = pb.nodes, R = pb.coef, D = pb.input_dim;
        std::vector<uint8_t> flags;
        if (!gram_steps.is_none()) {
          flags.assign(size_t(steps) + 1, 0);
          for (auto n : gram_steps.cast<std::vector<int>>()) {
            if (n < 0 || n > steps) throw std::invalid_argument("gram_steps: out of range");
            flags[n] = 1;
          }
          pb.sharpness_steps = flags.data();
        }
        dmft::DirectSolution d;
        {
          py::gil_scoped_release nogil;
          d = solve(pb);
        }
        const py::ssize_t T1 = steps + 1, L = py::ssize_t(M) * R, S = py::ssize_t(d.gram_steps.size());
        py::dict out;
        out["steps"] = d.steps;
        out["nodes"] = d.nodes;
        out["coef"] = d.coef;
        out["input_dim"] = d.input_dim;
        out["loss"] = vec(d.loss, {T1});
        out["beta_f"] = vec(d.beta_f, {T1, D});
        out["Cw"] = vec(d.Cw, {T1, T1});
        out["Cq"] = vec(d.Cq, {T1, T1});
        out["Cqm"] = vec(d.Cqm, {T1, T1});
        out["mm"] = vec(d.mm, {T1});
        out["gram_steps"] = d.gram_steps;
        out["YY"] = vec(d.YY, {S, D, D});
        out["BB"] = vec(d.BB, {S, D, D});
        out["hist_a"] = vec(d.hist_a, {T1, L});
        out["hist_q"] = vec(d.hist_q, {T1, L});
        out["s_row"] = vec(d.s_row, {L});
        return out;
      },
      py::arg("s"), py::arg("weights"), py::arg("a0"), py::arg("B0"), py::arg("X"), py::arg("y"), py::arg("c"),
      py::arg("richness"), py::arg("steps"), py::arg("gram_steps") = py::none(),
      "Direct one-bulk mode recursion (dmft_direct.hpp): order parameters, Grams at gram_steps, full histories");
}

}  // namespace specdyn::bind_device
