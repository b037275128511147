"""specdyn: spectral dynamics of wide networks.

Train finite-width networks and track the spectra of their weight matrices
(``simulate``), extract outliers (``top_singular``, ``top_eigs``,
``spectral_density``), predict them at infinite width (``specdyn.theory``),
and compare (``compare``), over sweeps (``sweep``) and studies
(``specdyn.studies``).
"""
from __future__ import annotations

import ctypes as _ctypes
import importlib as _importlib

__version__ = "0.1.0"


def _polite_threads() -> None:
    # Idle OpenMP and OpenBLAS threads spin by default. The core's parallel regions
    # are short, so on a machine with other work (another run, a test runner, a
    # neighbour's job) each region then waits for descheduled spinners: a depth-3,
    # N = 1000 run took 2.7 s instead of 0.7 s next to one busy core. Sleeping at
    # once costs nothing measurable when the machine is quiet (0.47 s vs 0.96 s on
    # that run, the same on large ones). Both are read when the runtimes load, and
    # a value the user set wins.
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def _preload_openblas() -> str | None:
    # The core links against libscipy_openblas.so by soname; loading the wheel's
    # copy first makes that resolve for installed, editable and in-tree builds.
    # Returns why the wheel's copy could not be loaded (None when it was, or when
    # the wheel is absent and the RPATH applies), for the error if the core then
    # cannot load.
    import os

    try:
        import scipy_openblas32 as _ob
    except ImportError:
        return None
    path = os.path.join(_ob.get_lib_dir(), "libscipy_openblas.so")
    if not os.path.exists(path):
        return None
    try:
        _ctypes.CDLL(path, mode=_ctypes.RTLD_GLOBAL)
    except OSError as exc:
        return f"loading {path} failed: {exc}"
    return None


_polite_threads()
_preload_failure = _preload_openblas()

try:
    from . import _core  # noqa: E402  (needs the preload above)
except ImportError as _exc:
    if _preload_failure is None:
        raise
    raise ImportError(f"{_exc} (after {_preload_failure})") from _exc
from .backend import gpu_available, info  # noqa: E402

# Public names resolved lazily, so that ``import specdyn`` stays light
# (xarray, dask and matplotlib load only when used).
_LAZY = {
    "rmt": ("specdyn.rmt", None),
    "data": ("specdyn.data", None),
    "theory": ("specdyn.theory", None),
    "studies": ("specdyn.studies", None),
    "parameterization": ("specdyn.parameterization", None),
    "torch": ("specdyn.torch", None),  # needs PyTorch (the extra specdyn[torch])
    "top_singular": ("specdyn.lanczos", "top_singular"),
    "top_eigs": ("specdyn.lanczos", "top_eigs"),
    "spectral_density": ("specdyn.lanczos", "spectral_density"),
    "RunConfig": ("specdyn.config", "RunConfig"),
    "simulate": ("specdyn.training", "simulate"),
    "save": ("specdyn.storage", "save"),
    "load": ("specdyn.storage", "load"),
    "compare": ("specdyn.comparison", "compare"),
    "sweep": ("specdyn.sweeps", "sweep"),
}

__all__ = ["gpu_available", "info", *_LAZY]


def __getattr__(name: str):
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'specdyn' has no attribute {name!r}") from None
    mod = _importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
