// An interrupt::Scope whose poll raises the pending Python signal (Ctrl-C ->
// KeyboardInterrupt). Construct it on the calling thread before releasing the GIL.
#pragma once
#include <pybind11/pybind11.h>

#include "specdyn/interrupt.hpp"

namespace specdyn::bindings {

class PythonInterrupts {
 public:
  PythonInterrupts()
      : scope_([] {
          pybind11::gil_scoped_acquire gil;
          if (PyErr_CheckSignals() != 0) throw pybind11::error_already_set();
        }) {}

 private:
  interrupt::Scope scope_;
};

}  // namespace specdyn::bindings
