// The one-bulk mode problem from NumPy arrays: shape checks and the fields of
// dmft::ModeProblem, shared by the CPU solver's binding and the device one's.
#pragma once
#include <pybind11/numpy.h>

#include <stdexcept>

#include "specdyn/dmft.hpp"

namespace specdyn::bindings {

using ModeArray = pybind11::array_t<double, pybind11::array::c_style | pybind11::array::forcecast>;

// The arrays must outlive the returned problem (it points into them). With
// outputs, a0 is (M, C, R) and y (P, C) (solve_modes_outputs); else a0 (M, R), y (P,).
inline dmft::ModeProblem mode_problem(const ModeArray& s, const ModeArray& weights, const ModeArray& a0,
                                      const ModeArray& B0, const ModeArray& X, const ModeArray& y, double c,
                                      double richness, int steps, bool outputs = false) {
  auto need = [](bool ok, const char* what) {
    if (!ok) throw std::invalid_argument(what);
  };
  need(s.ndim() == 1 && weights.ndim() == 1 && s.shape(0) == weights.shape(0), "s, weights: (M,)");
  const int M = int(s.shape(0));
  if (outputs)
    need(a0.ndim() == 3 && a0.shape(0) == M, "a0: (M, C, R)");
  else
    need(a0.ndim() == 2 && a0.shape(0) == M, "a0: (M, R)");
  const int R = int(a0.shape(a0.ndim() - 1)), C = outputs ? int(a0.shape(1)) : 1;
  need(X.ndim() == 2, "X: (P, D)");
  const int P = int(X.shape(0)), D = int(X.shape(1));
  need(B0.ndim() == 3 && B0.shape(0) == M && B0.shape(1) == D && B0.shape(2) == R, "B0: (M, D, R)");
  if (outputs)
    need(y.ndim() == 2 && y.shape(0) == P && y.shape(1) == C, "y: (P, C)");
  else
    need(y.ndim() == 1 && y.shape(0) == P, "y: (P,)");
  need(steps >= 0, "steps >= 0");
  dmft::ModeProblem pb;
  pb.nodes = M;
  pb.coef = R;
  pb.input_dim = D;
  pb.samples = P;
  pb.steps = steps;
  pb.outputs = C;
  pb.s = s.data();
  pb.weights = weights.data();
  pb.a0 = a0.data();
  pb.B0 = B0.data();
  pb.X = X.data();
  pb.y = y.data();
  pb.c = c;
  pb.richness = richness;
  return pb;
}

}  // namespace specdyn::bindings
