"""Which native backends are usable here: the C++ core always, CUDA lazily."""
from __future__ import annotations

import importlib
import os
import platform

from . import _core

_cuda_module = None
_cuda_error: str | None = None


def cuda_module():
    """Return ``specdyn._cuda`` or raise RuntimeError saying why it is unusable."""
    global _cuda_module, _cuda_error
    if _cuda_module is None and _cuda_error is None:
        try:
            mod = importlib.import_module("specdyn._cuda")
        except ImportError as exc:
            _cuda_error = f"the CUDA module was not built (no CUDA compiler at build time): {exc}"
        else:
            try:
                count = mod.device_count()
            except Exception as exc:  # driver missing or broken
                _cuda_error = f"the CUDA module is built but the driver is unusable: {exc}"
            else:
                if count < 1:
                    _cuda_error = "the CUDA module is built but no CUDA device is visible"
                else:
                    _cuda_module = mod
    if _cuda_module is None:
        raise RuntimeError(_cuda_error)
    return _cuda_module


def gpu_available() -> bool:
    """True when the CUDA module is built and a device is usable."""
    try:
        cuda_module()
    except RuntimeError:
        return False
    return True


def gpu_status() -> str:
    """One line: 'usable (N devices)' or why the GPU path is off."""
    try:
        mod = cuda_module()
    except RuntimeError as exc:
        return f"off: {exc}"
    return f"usable ({mod.device_count()} device(s))"


def info() -> dict:
    """Versions, BLAS, thread counts and GPU status, as a dict of strings/ints."""
    import numpy
    import scipy

    from . import __version__

    return {
        "specdyn": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "blas": _core.blas_config(),
        "blas_threads": _core.blas_threads(),
        "omp_threads": _core.omp_max_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
        "gpu": gpu_status(),
    }
