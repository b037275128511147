// Bindings of the nets concern: the Trainer (the whole training loop, GIL
// released) and the kernels on given weights, exposed for autograd tests.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "specdyn/nets.hpp"
#include "python_interrupt.hpp"

namespace py = pybind11;
using namespace specdyn;
using nets::Arch;

namespace {

template <class T>
using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <class T>
Arch arch_of(const std::vector<Arr<T>>& W, const std::vector<double>& mult, const std::string& act) {
  if (W.size() < 2) throw std::invalid_argument("weights: need at least W0 and W1 (depth >= 1)");
  Arch a;
  a.depth = static_cast<int>(W.size()) - 1;
  a.input_dim = W[0].shape(1);
  a.width = W[0].shape(0);
  a.output_dim = W.back().shape(0);
  a.activation = parse_activation(act);
  a.multipliers = mult;
  a.check();
  for (int l = 0; l <= a.depth; ++l)
    if (W[l].ndim() != 2 || W[l].shape(0) != a.fan_out(l) || W[l].shape(1) != a.fan_in(l))
      throw std::invalid_argument("weights[" + std::to_string(l) + "] has the wrong shape");
  return a;
}

template <class T>
nets::ConstWeights<T> cptrs(const std::vector<Arr<T>>& W) {
  nets::ConstWeights<T> p;
  for (auto& w : W) p.push_back(w.data());
  return p;
}

template <class T>
void check_data(const Arch& a, const Arr<T>& X, const Arr<T>* Y) {
  if (X.ndim() != 2 || X.shape(1) != a.input_dim) throw std::invalid_argument("X must have shape (n, input_dim)");
  if (Y && (Y->ndim() != 2 || Y->shape(0) != X.shape(0) || Y->shape(1) != a.output_dim))
    throw std::invalid_argument("Y must have shape (n, output_dim)");
}

template <class T>
Arr<T> forward(const std::vector<Arr<T>>& W, const std::vector<double>& mult, const std::string& act, const Arr<T>& X) {
  Arch a = arch_of(W, mult, act);
  check_data<T>(a, X, nullptr);
  const int64_t n = X.shape(0);
  nets::Pass<T> ps;
  {
    py::gil_scoped_release nogil;
    nets::forward(a, cptrs(W), X.data(), n, ps);
  }
  Arr<T> F({n, a.output_dim});
  std::copy(ps.F.begin(), ps.F.end(), F.mutable_data());
  return F;
}

template <class T>
py::tuple loss_grad(const std::vector<Arr<T>>& W, const std::vector<double>& mult, const std::string& act,
                    const Arr<T>& X, const Arr<T>& Y) {
  Arch a = arch_of(W, mult, act);
  check_data<T>(a, X, &Y);
  const int64_t n = X.shape(0);
  std::vector<Arr<T>> G;
  nets::Weights<T> gp;
  for (int l = 0; l <= a.depth; ++l) {
    G.emplace_back(std::vector<py::ssize_t>{a.fan_out(l), a.fan_in(l)});
    gp.push_back(G.back().mutable_data());
  }
  std::vector<Arr<T>> Wc;  // backward takes mutable pointers; Gradient mode never writes W
  nets::Weights<T> wp;
  for (auto& w : W) wp.push_back(const_cast<T*>(w.data()));
  double loss;
  {
    py::gil_scoped_release nogil;
    nets::Pass<T> ps;
    nets::forward(a, cptrs(W), X.data(), n, ps);
    loss = nets::residual(a, Y.data(), static_cast<double>(n), ps);
    nets::backward(a, wp, ps, nets::BackwardMode{nets::BackwardMode::Gradient, 0}, &gp);
  }
  py::list gl;
  for (auto& g : G) gl.append(g);
  return py::make_tuple(loss, gl);
}

template <class T>
py::array_t<double> ntk(const std::vector<Arr<T>>& W, const std::vector<double>& mult, const std::string& act,
                        const Arr<T>& X) {
  Arch a = arch_of(W, mult, act);
  check_data<T>(a, X, nullptr);
  const int64_t n = X.shape(0), m = n * a.output_dim;
  std::vector<double> K;
  {
    py::gil_scoped_release nogil;
    nets::Pass<T> ps;
    nets::forward(a, cptrs(W), X.data(), n, ps);
    nets::ntk_gram(a, cptrs(W), ps, K);
  }
  py::array_t<double> out({m, m});
  std::copy(K.begin(), K.end(), out.mutable_data());
  return out;
}

template <class T>
py::list hvp(const std::vector<Arr<T>>& W, const std::vector<double>& mult, const std::string& act, const Arr<T>& X,
             const Arr<T>& Y, const std::vector<Arr<T>>& V) {
  Arch a = arch_of(W, mult, act);
  check_data<T>(a, X, &Y);
  if (V.size() != W.size()) throw std::invalid_argument("V must have one matrix per weight matrix");
  for (size_t l = 0; l < V.size(); ++l)
    if (V[l].ndim() != 2 || V[l].shape(0) != W[l].shape(0) || V[l].shape(1) != W[l].shape(1))
      throw std::invalid_argument("V[" + std::to_string(l) + "] must have the shape of weights[" + std::to_string(l) + "]");
  const int64_t n = X.shape(0);
  std::vector<Arr<T>> HV;
  nets::Weights<T> hp;
  for (int l = 0; l <= a.depth; ++l) {
    HV.emplace_back(std::vector<py::ssize_t>{a.fan_out(l), a.fan_in(l)});
    hp.push_back(HV.back().mutable_data());
  }
  {
    py::gil_scoped_release nogil;
    nets::Pass<T> ps;
    nets::forward(a, cptrs(W), X.data(), n, ps);
    nets::residual(a, Y.data(), static_cast<double>(n), ps);
    nets::hvp(a, cptrs(W), ps, cptrs(V), hp);
  }
  py::list out;
  for (auto& h : HV) out.append(h);
  return out;
}

template <class T>
py::array_t<T> vec_to_array(const std::vector<T>& v, std::vector<py::ssize_t> shape) {
  py::array_t<T> a(shape);
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

template <class T>
void bind_trainer(py::module_& m, const char* name) {
  using Tr = nets::Trainer<T>;
  py::class_<Tr>(m, name)
      .def(py::init([](const nets::TrainSpec& s, const Arr<T>& X, const Arr<T>& Y) {
             if (X.ndim() != 2 || X.shape(0) != s.samples || X.shape(1) != s.arch.input_dim)
               throw std::invalid_argument("X must have shape (samples, input_dim)");
             if (Y.ndim() != 2 || Y.shape(0) != s.samples || Y.shape(1) != s.arch.output_dim)
               throw std::invalid_argument("Y must have shape (samples, output_dim)");
             return new Tr(s, X.data(), Y.data());
           }),
           py::arg("spec"), py::arg("X"), py::arg("Y"))
      .def(
          "run",
          [](Tr& t, int64_t until, py::object progress, double interval) {
            std::function<void(int64_t, double)> cb;
            if (!progress.is_none()) {
              cb = [progress](int64_t step, double loss) {
                py::gil_scoped_acquire gil;
                progress(step, loss);
              };
            }
            bindings::PythonInterrupts interrupts;  // Ctrl-C stops the loop between steps
            py::gil_scoped_release nogil;
            return t.run(until, cb, interval);
          },
          py::arg("until"), py::arg("progress") = py::none(), py::arg("interval") = 0.5)
      .def(
          "measure",
          [](Tr& t, int64_t step, const std::vector<Arr<T>>& W) {
            const auto& a = t.spec().arch;
            if (static_cast<int>(W.size()) != a.layers())
              throw std::invalid_argument("weights: need one matrix per layer (" + std::to_string(a.layers()) + ")");
            for (int l = 0; l < a.layers(); ++l)
              if (W[l].ndim() != 2 || W[l].shape(0) != a.fan_out(l) || W[l].shape(1) != a.fan_in(l))
                throw std::invalid_argument("weights[" + std::to_string(l) + "] must have shape (" +
                                            std::to_string(a.fan_out(l)) + ", " + std::to_string(a.fan_in(l)) + ")");
            for (int l = 0; l < a.layers(); ++l) t.weights(l).assign(W[l].data(), W[l].data() + W[l].size());
            py::gil_scoped_release nogil;
            t.measure(step);
          },
          py::arg("step"), py::arg("weights"),
          "At the given weights, the step's measurements a device cannot make (NTK sharpness, Hessian, beta_f, "
          "bulk histograms) into the record; takes no step")
      .def_property_readonly("step", &Tr::step)
      .def_property_readonly("finished", &Tr::finished)
      .def_property_readonly("diverged_step", &Tr::diverged_step)
      .def("record",
           [](Tr& t) {
             const auto& r = t.record();
             py::dict d;
             d["loss"] = vec_to_array(r.loss, {r.T});
             d["normalized_sharpness"] = vec_to_array(r.sharpness, {r.T});
             d["hessian_top"] = vec_to_array(r.hessian, {r.T});
             d["singular_values"] = vec_to_array(r.sv, {r.T, r.Lw, r.k});
             d["delta_singular_values"] = vec_to_array(r.dsv, {r.T, r.Lw, r.k});
             d["overlap_input"] = vec_to_array(r.ov_in, {r.T, r.Lw, r.k});
             d["overlap_backward"] = vec_to_array(r.ov_bw, {r.T, r.Lw, r.k});
             d["weight_norm"] = vec_to_array(r.wnorm, {r.T, r.Lw});
             d["beta_f"] = vec_to_array(r.beta_f, {r.T, r.D});
             d["bulk_counts"] = vec_to_array(r.bulk_counts, {r.nb, r.Lw, r.bins});
             d["bulk_edges"] = vec_to_array(r.bulk_edges, {r.nb, r.Lw, r.bins + 1});
             return d;
           })
      .def("set_record",
           [](Tr& t, py::dict d) {
             auto& r = t.record();
             auto put = [&](const char* key, std::vector<double>& v) {
               auto a = d[key].cast<py::array_t<double, py::array::c_style | py::array::forcecast>>();
               if (static_cast<size_t>(a.size()) != v.size())
                 throw std::invalid_argument(std::string("checkpoint record '") + key + "' has the wrong size");
               std::copy(a.data(), a.data() + a.size(), v.begin());
             };
             put("loss", r.loss);
             put("normalized_sharpness", r.sharpness);
             put("hessian_top", r.hessian);
             put("singular_values", r.sv);
             put("delta_singular_values", r.dsv);
             put("overlap_input", r.ov_in);
             put("overlap_backward", r.ov_bw);
             put("weight_norm", r.wnorm);
             put("beta_f", r.beta_f);
             put("bulk_counts", r.bulk_counts);
             put("bulk_edges", r.bulk_edges);
           })
      .def("get_state",
           [](Tr& t) {
             const auto& a = t.spec().arch;
             py::dict d;
             py::list W, W0, warm, warm_d;
             for (int l = 0; l < a.layers(); ++l) {
               W.append(vec_to_array(t.weights(l), {a.fan_out(l), a.fan_in(l)}));
               W0.append(vec_to_array(t.initial_weights(l), {static_cast<py::ssize_t>(t.initial_weights(l).size())}));
               warm.append(vec_to_array(t.warm(l, false), {static_cast<py::ssize_t>(t.warm(l, false).size())}));
               warm_d.append(vec_to_array(t.warm(l, true), {static_cast<py::ssize_t>(t.warm(l, true).size())}));
             }
             d["weights"] = W;
             d["initial_weights"] = W0;
             d["warm"] = warm;
             d["warm_delta"] = warm_d;
             d["hessian_warm"] = vec_to_array(t.hessian_warm(), {static_cast<py::ssize_t>(t.hessian_warm().size())});
             d["step"] = t.step();
             d["finished"] = t.finished();
             d["diverged_step"] = t.diverged_step();
             return d;
           })
      .def("set_state", [](Tr& t, py::dict d) {
        // Every array is size-checked before anything is copied (the Python loader checks
        // shapes, dtypes and values; this is the last line against a bad state).
        const auto& a = t.spec().arch;
        auto W = d["weights"].cast<std::vector<Arr<T>>>();
        auto W0 = d["initial_weights"].cast<std::vector<Arr<T>>>();
        auto warm = d["warm"].cast<std::vector<Arr<T>>>();
        auto warm_d = d["warm_delta"].cast<std::vector<Arr<T>>>();
        auto hw = d["hessian_warm"].cast<py::array_t<double, py::array::c_style | py::array::forcecast>>();
        if (static_cast<int>(W.size()) != a.layers() || W0.size() != W.size() || warm.size() != W.size() ||
            warm_d.size() != W.size())
          throw std::invalid_argument("checkpoint state has the wrong number of layers");
        auto bad = [](const char* name, int l, const std::string& want) {
          return std::invalid_argument(std::string("checkpoint ") + name + "[" + std::to_string(l) + "] must " + want);
        };
        for (int l = 0; l < a.layers(); ++l) {
          const py::ssize_t fi = a.fan_in(l), fo = a.fan_out(l);
          if (W[l].ndim() != 2 || W[l].shape(0) != fo || W[l].shape(1) != fi)
            throw bad("weights", l, "have shape (" + std::to_string(fo) + ", " + std::to_string(fi) + ")");
          // W(0) is kept only when delta spectra are tracked: the size the trainer drew
          if (static_cast<size_t>(W0[l].size()) != t.initial_weights(l).size())
            throw bad("initial_weights", l, "have " + std::to_string(t.initial_weights(l).size()) + " values");
          // warm-start blocks: whole columns of length fan_in, at most min(fan_in, fan_out) of them
          for (auto* w : {&warm[l], &warm_d[l]})
            if (w->size() % fi != 0 || w->size() / fi > std::min(fi, fo))
              throw bad(w == &warm[l] ? "warm" : "warm_delta", l,
                        "hold whole columns of length " + std::to_string(fi));
        }
        if (hw.size() != 0 && hw.size() != a.num_params())
          throw std::invalid_argument("checkpoint hessian_warm must be empty or hold one value per parameter");
        t.set_position(d["step"].cast<int64_t>(), d["finished"].cast<bool>(), d["diverged_step"].cast<int64_t>());
        for (int l = 0; l < a.layers(); ++l) {
          t.weights(l).assign(W[l].data(), W[l].data() + W[l].size());
          t.initial_weights(l).assign(W0[l].data(), W0[l].data() + W0[l].size());
          t.warm(l, false).assign(warm[l].data(), warm[l].data() + warm[l].size());
          t.warm(l, true).assign(warm_d[l].data(), warm_d[l].data() + warm_d[l].size());
        }
        t.hessian_warm().assign(hw.data(), hw.data() + hw.size());
      });
}

}  // namespace

void bind_nets(py::module_& m) {
  py::class_<nets::TrainSpec>(m, "TrainSpec")
      .def(py::init<>())
      .def_property(
          "arch", [](nets::TrainSpec&) { return py::none(); },
          [](nets::TrainSpec& s, py::dict d) {
            s.arch.input_dim = d["input_dim"].cast<int64_t>();
            s.arch.width = d["width"].cast<int64_t>();
            s.arch.output_dim = d["output_dim"].cast<int64_t>();
            s.arch.depth = d["depth"].cast<int>();
            s.arch.activation = parse_activation(d["activation"].cast<std::string>());
            s.arch.multipliers = d["multipliers"].cast<std::vector<double>>();
            s.arch.check();
          })
      .def_readwrite("init_stds", &nets::TrainSpec::init_stds)
      .def_readwrite("normalizers", &nets::TrainSpec::normalizers)
      .def_readwrite("learning_rate", &nets::TrainSpec::learning_rate)
      .def_readwrite("output_normalizer", &nets::TrainSpec::output_normalizer)
      .def_readwrite("samples", &nets::TrainSpec::samples)
      .def_readwrite("batch", &nets::TrainSpec::batch)
      .def_readwrite("online", &nets::TrainSpec::online)
      .def_readwrite("steps", &nets::TrainSpec::steps)
      .def_readwrite("seed", &nets::TrainSpec::seed)
      .def_readwrite("data_seed", &nets::TrainSpec::data_seed)
      .def_readwrite("teacher_kind", &nets::TrainSpec::teacher_kind)
      .def_readwrite("teacher_scale", &nets::TrainSpec::teacher_scale)
      .def_readwrite("noise", &nets::TrainSpec::noise)
      .def_readwrite("tracked_steps", &nets::TrainSpec::tracked_steps)
      .def_readwrite("bulk_steps", &nets::TrainSpec::bulk_steps)
      .def_readwrite("top_k", &nets::TrainSpec::top_k)
      .def_readwrite("track_spectra", &nets::TrainSpec::track_spectra)
      .def_readwrite("track_delta", &nets::TrainSpec::track_delta)
      .def_readwrite("track_overlaps", &nets::TrainSpec::track_overlaps)
      .def_readwrite("track_sharpness", &nets::TrainSpec::track_sharpness)
      .def_readwrite("track_hessian", &nets::TrainSpec::track_hessian)
      .def_readwrite("track_beta", &nets::TrainSpec::track_beta)
      .def_readwrite("bulk_bins", &nets::TrainSpec::bulk_bins)
      .def_readwrite("divergence_bound", &nets::TrainSpec::divergence_bound)
      .def_readwrite("svd_tol", &nets::TrainSpec::svd_tol);

  m.def(
      "squared_overlaps",
      [](py::array_t<double, py::array::f_style | py::array::forcecast> V,
         py::array_t<double, py::array::c_style | py::array::forcecast> d) {
        if (V.ndim() != 2 || d.ndim() != 1 || d.shape(0) != V.shape(0))
          throw std::invalid_argument("V must be (dim, k) and d (dim,)");
        py::array_t<double> out(V.shape(1));
        {
          py::gil_scoped_release nogil;
          nets::squared_overlaps(V.data(), V.shape(0), V.shape(1), d.data(), out.mutable_data());
        }
        return out;
      },
      py::arg("V"), py::arg("d"),
      "(v_r . d)^2 / |d|^2 for the unit columns v_r of V: overlaps of singular vectors with a mean signal");

  bind_trainer<double>(m, "Trainer_f64");
  bind_trainer<float>(m, "Trainer_f32");

  m.def("nets_forward", &forward<double>, py::arg("weights"), py::arg("multipliers"), py::arg("activation"),
        py::arg("X"));
  m.def("nets_forward", &forward<float>, py::arg("weights"), py::arg("multipliers"), py::arg("activation"),
        py::arg("X"));
  m.def("nets_loss_grad", &loss_grad<double>, py::arg("weights"), py::arg("multipliers"), py::arg("activation"),
        py::arg("X"), py::arg("Y"));
  m.def("nets_ntk_gram", &ntk<double>, py::arg("weights"), py::arg("multipliers"), py::arg("activation"),
        py::arg("X"));
  m.def("nets_hvp", &hvp<double>, py::arg("weights"), py::arg("multipliers"), py::arg("activation"), py::arg("X"),
        py::arg("Y"), py::arg("V"));
  m.def(
      "nets_teacher",
      [](int64_t first, int64_t n, int64_t D, int64_t C, uint64_t seed, int kind, double scale, double noise) {
        py::array_t<double> X({n, D}), Y({n, C});
        double* xp = X.mutable_data();
        double* yp = Y.mutable_data();
        {
          py::gil_scoped_release nogil;
          nets::teacher<double>(first, n, D, C, seed, kind, scale, noise, xp, yp);
        }
        return py::make_tuple(X, Y);
      },
      py::arg("first"), py::arg("n"), py::arg("input_dim"), py::arg("output_dim"), py::arg("seed"), py::arg("kind"),
      py::arg("scale"), py::arg("noise"));
}
