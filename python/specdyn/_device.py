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
