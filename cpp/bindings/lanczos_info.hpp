// The info dict of a Krylov result, shared by the CPU and device bindings.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>

#include "specdyn/lanczos.hpp"

namespace specdyn::bindings {

// The words of lanczos::Status in the info dict (beside the "converged" flag).
inline const char* status_name(lanczos::Status s) {
  switch (s) {
    case lanczos::Status::converged: return "converged";
    case lanczos::Status::not_converged: return "not_converged";
    default: return "numerical_issue";
  }
}

inline pybind11::dict lanczos_info(const lanczos::Info& i) {
  pybind11::dict d;
  d["iterations"] = i.iterations;
  d["restarts"] = i.restarts;
  d["matrix_passes"] = i.matrix_passes;
  d["converged"] = i.converged;
  d["status"] = status_name(i.status);
  d["residuals"] = pybind11::array_t<double>(static_cast<pybind11::ssize_t>(i.residuals.size()), i.residuals.data());
  d["norm_estimate"] = i.norm_estimate;
  d["tol"] = i.tol_used;
  d["block"] = i.block;
  d["dense"] = i.dense;
  if (!i.spacing.empty())  // (the tracking certificate, Options::resolvable)
    d["spacing"] = pybind11::array_t<double>(static_cast<pybind11::ssize_t>(i.spacing.size()), i.spacing.data());
  return d;
}

}  // namespace specdyn::bindings
