"""Argument checks shared by every public entry point.

Each check raises one ``ValueError`` that names the argument and the allowed
range, before any native code runs.
"""
from __future__ import annotations

import math
import numbers

import numpy as np


def integer(name: str, value, lo: int | None = None, hi: int | None = None, because: str = "") -> int:
    """Return ``value`` as int if it is an integer in [lo, hi], else raise.

    ``because`` names the other fields a bound comes from (``"width = 8"``), so an
    error caused by changing one field also names that field.
    """
    why = f" ({because})" if because else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer{_range(lo, hi)}{why}, got {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} must be an integer{_range(lo, hi)}{why}, got {value}")
    return value


def real(name: str, value, lo: float | None = None, hi: float | None = None,
         lo_open: bool = False, hi_open: bool = False) -> float:
    """Return ``value`` as a finite float in the given interval, else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite real number{_interval(lo, hi, lo_open, hi_open)}, got {value!r}")
    value = float(value)
    bad = not math.isfinite(value)
    if lo is not None:
        bad |= value <= lo if lo_open else value < lo
    if hi is not None:
        bad |= value >= hi if hi_open else value > hi
    if bad:
        raise ValueError(f"{name} must be a finite real number{_interval(lo, hi, lo_open, hi_open)}, got {value}")
    return value


def choice(name: str, value, allowed) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def dtype(name: str, value, allowed=("float32", "float64")) -> np.dtype:
    """Return a NumPy dtype among ``allowed`` (names), else raise."""
    try:
        dt = np.dtype(value)
    except TypeError:
        dt = None
    if dt is None or dt.name not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return dt


def finite_array(name: str, a, ndim: int | tuple[int, ...] | None = None,
                 dtypes=("float32", "float64"), check_finite: bool = True) -> np.ndarray:
    """Return ``a`` as an ndarray of a supported float dtype (no copy when it is one).

    Integer and boolean input is converted to float64. With ``check_finite``
    a NaN or inf entry raises.
    """
    if not isinstance(a, np.ndarray):
        try:
            a = np.asarray(a)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise ValueError(f"{name} must be an array of {'/'.join(dtypes)}: {exc}") from None
    if a.dtype.kind in "iub":
        a = a.astype(np.float64)
    if a.dtype.name not in dtypes:
        raise ValueError(f"{name} must have dtype {' or '.join(dtypes)}, got {a.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if a.ndim not in allowed:
            raise ValueError(f"{name} must have ndim {' or '.join(map(str, allowed))}, got shape {a.shape}")
    if check_finite:
        # One streaming pass without a temporary; a non-finite sum is either a
        # NaN/inf entry or an overflow, which the exact check tells apart.
        with np.errstate(over="ignore", invalid="ignore"):
            total = np.add.reduce(a, axis=None)
        if not np.isfinite(total) and not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must contain only finite values (found NaN or inf)")
    return a


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def _interval(lo, hi, lo_open, hi_open) -> str:
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f" {'>' if lo_open else '>='} {lo}"
    if lo is None:
        return f" {'<' if hi_open else '<='} {hi}"
    return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def physical_memory() -> int:
    """Bytes of physical memory of this machine."""
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def fits_in_memory(what: str, nbytes: int) -> None:
    """Raise a ValueError naming ``what`` (the sizes) when ``nbytes`` exceeds physical memory."""
    have = physical_memory()
    if nbytes > have:
        raise ValueError(f"{what} need at least {nbytes / 2**30:.3g} GiB; this machine has {have / 2**30:.3g} GiB")
