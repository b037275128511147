"""The ``device`` argument of ``simulate`` and ``theory.one_bulk``.

``"cpu"`` (default) runs the C++ core; ``"cuda"`` runs the device algorithms of
the ``_cuda`` module; ``"host-emulation"`` runs those same device algorithms,
launch for launch, on the host (``_core.device_emulation``: slow, for tests and
for checking the device code where no GPU exists).
"""
from __future__ import annotations

DEVICES = ("cpu", "cuda", "host-emulation")


def check(device) -> str:
    """Validate ``device``; ValueError naming the allowed values."""
    if not isinstance(device, str) or device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(repr(d) for d in DEVICES)}; got {device!r}")
    return device


def module(device: str, what: str):
    """The native module running the device algorithms for ``device`` ("cuda" or "host-emulation").

    Raises the one RuntimeError of ``backend.require_gpu`` (naming ``what`` and why) when
    device="cuda" and no GPU is usable.
    """
    if device == "host-emulation":
        from . import _core

        return _core.device_emulation
    from . import backend

    return backend.require_gpu(what)


class EmulatedKrylov:
    """The device Krylov entry points of ``_cuda`` (``top_singular_device``, ``slq_device``, ...) on the
    host emulation of the device backend (``_core.device_emulation``): "device memory" is host memory,
    and a "device pointer" is the address of a NumPy array registered here (``DeviceCopy`` registers
    a copy). ``lanczos.top_singular(..., device="host-emulation")`` runs the whole device path on it."""

    def __init__(self):
        from . import _core

        self._emu = _core.device_emulation
        self._arrays = {}

    def register(self, a):
        self._arrays[a.__array_interface__["data"][0]] = a
        return a

    def release(self, ptr) -> None:
        self._arrays.pop(ptr, None)

    def _view(self, ptr, n, m, row_major, ld, single):
        import numpy as np

        base = self._arrays[ptr]
        e = 4 if single else 8
        if base.dtype.itemsize != e:
            raise ValueError("the registered array has another dtype")
        strides = (ld * e, e) if row_major else (e, ld * e)
        return np.lib.stride_tricks.as_strided(base, shape=(n, m), strides=strides, writeable=False)

    def top_singular_device(self, ptr, n, m, row_major, ld, single, k, opt, v0=None):
        return self._emu.top_singular(self._view(ptr, n, m, row_major, ld, single), row_major, ld, k, opt, v0)

    def top_eigs_device(self, ptr, n, ld, single, k, both, opt, v0=None):
        return self._emu.top_eigs(self._view(ptr, n, n, True, ld, single), True, ld, k, both, opt, v0)

    def slq_device(self, ptr, n, m, row_major, ld, single, probes, degree, seed, symmetric):
        return self._emu.slq(self._view(ptr, n, m, row_major, ld, single), row_major, ld, probes, degree, seed,
                             symmetric)

    def abs_max_device(self, *args):
        import numpy as np

        return float(np.max(np.abs(self._view(*args))))

    def asymmetry_device(self, ptr, n, ld, single):
        import numpy as np

        A = self._view(ptr, n, n, True, ld, single)
        return float(np.max(np.abs(A - A.T)))

    def copy_to_host(self, *args):
        return self._view(*args).copy(order="K")

    def DeviceCopy(self, A):  # noqa: N802  (the name of the _cuda class it stands in for)
        return _EmulatedCopy(self, A)


class _EmulatedCopy:
    def __init__(self, mod: EmulatedKrylov, A):
        self._mod = mod
        self.a = mod.register(A.copy(order="K"))
        self.ptr = self.a.__array_interface__["data"][0]
        self.n, self.m = A.shape
        self.row_major = bool(self.a.flags.c_contiguous)
        self.ld = self.m if self.row_major else self.n
        self.single = A.dtype.itemsize == 4

    def close(self) -> None:
        self._mod.release(self.ptr)


def krylov_module(device: str, what: str):
    """The module running the device Krylov solvers for ``device`` ("cuda" or "host-emulation")."""
    if device == "host-emulation":
        return EmulatedKrylov()
    from . import backend

    return backend.require_gpu(what)
