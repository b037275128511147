"""Which native backends are usable here: the C++ core always, CUDA lazily."""
from __future__ import annotations

import importlib
import os
import platform
from dataclasses import dataclass

import numpy as np

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


def cuda_extension():
    """Return ``specdyn._cuda`` whether or not a device is usable; RuntimeError if not built."""
    try:
        return importlib.import_module("specdyn._cuda")
    except ImportError as exc:
        raise RuntimeError(f"the CUDA module was not built (no CUDA compiler at build time): {exc}") from None


def require_gpu(what: str):
    """``cuda_module()``, or one RuntimeError saying that `what` asked for a GPU and why none is usable."""
    try:
        return cuda_module()
    except RuntimeError as exc:
        raise RuntimeError(f"{what}: a GPU was requested (device='cuda' or a device array) but the GPU backend "
                           f"is off: {exc}") from None


def is_device_array(a) -> bool:
    """True for objects exposing the CUDA array interface (CuPy, Numba, PyTorch CUDA tensors)."""
    return not isinstance(a, np.ndarray) and hasattr(a, "__cuda_array_interface__")


@dataclass(frozen=True)
class DeviceMatrix:
    """A 2-d device array read from its ``__cuda_array_interface__`` (no copy).

    ``row_major``: rows have unit stride between columns (C order, possibly
    with padded rows); otherwise columns are contiguous (Fortran order).
    ``ld``: the stride, in elements, between consecutive rows (row_major) or
    columns (otherwise). ``owner`` keeps the array alive while its pointer is used.
    """

    ptr: int
    n: int
    m: int
    row_major: bool
    ld: int
    dtype: np.dtype
    owner: object

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.m)

    @property
    def single(self) -> bool:
        return self.dtype == np.float32


def device_matrix(name: str, a) -> DeviceMatrix:
    """Parse the CUDA array interface of a 2-d float32/float64 device matrix.

    Raises one ValueError naming `name` for anything the device solvers cannot
    read in place: masks, other dtypes or byte orders, ndim != 2, empty
    shapes, a null pointer, or strides without a unit-stride axis (copy such
    views first, e.g. ``cupy.ascontiguousarray``).
    """
    try:
        iface = a.__cuda_array_interface__
    except Exception as exc:
        raise ValueError(f"{name}: cannot read __cuda_array_interface__: {exc}") from None
    if not isinstance(iface, dict) or not {"shape", "typestr", "data"} <= set(iface):
        raise ValueError(f"{name}: __cuda_array_interface__ must be a dict with shape, typestr and data")
    if iface.get("mask") is not None:
        raise ValueError(f"{name}: masked device arrays are not supported")
    try:
        dt = np.dtype(iface["typestr"])
    except TypeError:
        raise ValueError(f"{name} must have dtype float32 or float64, got typestr {iface['typestr']!r}") from None
    if dt.kind != "f" or dt.itemsize not in (4, 8) or not dt.isnative:
        raise ValueError(f"{name} must have dtype float32 or float64 (native byte order), got {iface['typestr']!r}")
    shape = tuple(iface["shape"])
    if len(shape) != 2:
        raise ValueError(f"{name} must have ndim 2, got shape {shape}")
    n, m = (int(x) for x in shape)
    if n < 1 or m < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape {shape}")
    data = iface["data"]
    ptr = int(data[0]) if isinstance(data, (tuple, list)) and data else 0
    if ptr == 0:
        raise ValueError(f"{name}: the device pointer is null")
    e = dt.itemsize
    strides = iface.get("strides")
    s0, s1 = (m * e, e) if strides is None else (int(strides[0]), int(strides[1]))
    if m == 1:
        s1 = e  # the stride of a length-1 axis is arbitrary
    if n == 1:
        s0 = m * e if s1 == e else e
    if s1 == e and s0 % e == 0 and s0 // e >= m:
        row_major, ld = True, s0 // e
    elif s0 == e and s1 % e == 0 and s1 // e >= n:
        row_major, ld = False, s1 // e
    else:
        raise ValueError(f"{name} must have unit stride along one axis (C or Fortran order, rows or columns may be "
                         f"padded), got strides {strides} for shape {shape} and itemsize {e}; copy it first "
                         f"(e.g. cupy.ascontiguousarray)")
    return DeviceMatrix(ptr=ptr, n=n, m=m, row_major=row_major, ld=ld, dtype=dt, owner=a)


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
