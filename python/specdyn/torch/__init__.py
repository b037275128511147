"""Spectral instruments on any PyTorch model (the optional extra ``specdyn[torch]``).

* :class:`SpectralMonitor` -- certified, warm-started top-k spectra of every
  weight (and of W - W(0)), singular-vector overlaps, bulk histograms beside
  the initial random-matrix law, Hessian / NTK sharpness through ``torch.func``,
  as an ``xarray.Dataset`` in the layout of ``specdyn.simulate`` and, with
  ``store=``, appended to a Zarr store as it goes (read back, also after a
  crash, with ``specdyn.storage.load``).
* :func:`mlp` -- the network ``specdyn.simulate`` trains, as an ``nn.Module``.
* :func:`width_sweep` -- the spectral coordinate check of a model factory.

``import specdyn`` does not import PyTorch; ``import specdyn.torch`` does.
"""
from __future__ import annotations

from .models import mlp, specdyn_loss
from .monitor import SpectralMonitor
from .sweep import width_sweep, width_sweep_figure

__all__ = ["SpectralMonitor", "mlp", "specdyn_loss", "width_sweep", "width_sweep_figure"]
