"""Studies: the claims of docs/theory.md as one call each.

Every study is an object (:class:`Study`) in a module of its own: its default
base config, its run (a grid of simulations through :func:`specdyn.sweep`, so
it resumes in a store and scales over Dask), the analysis of its store into
``(dataset, summary)``, its figures and its printed headline. The command line
and the plots ask the study object; :data:`STUDIES` maps names to them.

=====================  ========================================================
study                  headline
=====================  ========================================================
width_consistency      spread of s_1(t) across widths per scaling, its decay in N
lr_transfer            optimal eta0 per width and its drift in log2 units
edge_of_stability      steady normalized sharpness S, width spread, catapults
many_outputs           resolvable outliers of W1 vs C (muP), theory beside; crossover C/P
naive_vs_two_level     outliers of the two-level theory and of naive BBP vs sim
=====================  ========================================================

``width_consistency(...)``, ``analyze_width_consistency(store)`` and the like
are the run and analyze methods of those objects. The package attribute
``studies.many_outputs`` is that function; the module of the same name is
``importlib.import_module("specdyn.studies.many_outputs")`` (its object: ``STUDY``).
"""
from __future__ import annotations

from .. import storage
from ..config import RunConfig
from . import edge_of_stability as _edge_of_stability
from . import lr_transfer as _lr_transfer
from . import many_outputs as _many_outputs
from . import naive_vs_two_level as _naive_vs_two_level
from . import width_consistency as _width_consistency
from ._common import Study, simulate_run, to_json
from .edge_of_stability import detect_catapults
from .limit import THEORY_GROUP, limit_theory, same_limit, theory_fits
from .lr_transfer import LR_TRANSFER_ETA0S, lr_drift, lr_optimum, lr_transfer_headline
from .many_outputs import _fit_edge  # noqa: F401  (the edge fit, tested on its own)

STUDIES: dict[str, Study] = {s.name: s for s in (_width_consistency.STUDY, _lr_transfer.STUDY,
                                                 _edge_of_stability.STUDY, _many_outputs.STUDY,
                                                 _naive_vs_two_level.STUDY)}

width_consistency = _width_consistency.STUDY.run
analyze_width_consistency = _width_consistency.STUDY.analyze
lr_transfer = _lr_transfer.STUDY.run
analyze_lr_transfer = _lr_transfer.STUDY.analyze
edge_of_stability = _edge_of_stability.STUDY.run
analyze_edge_of_stability = _edge_of_stability.STUDY.analyze
many_outputs = _many_outputs.STUDY.run
analyze_many_outputs = _many_outputs.STUDY.analyze
naive_vs_two_level = _naive_vs_two_level.STUDY.run
analyze_naive_vs_two_level = _naive_vs_two_level.STUDY.analyze

__all__ = ["Study", "STUDIES", "get", "analyze", "default_base", "to_json", "simulate_run", "THEORY_GROUP",
           "theory_fits", "same_limit", "limit_theory", "LR_TRANSFER_ETA0S", "lr_optimum", "lr_drift",
           "lr_transfer_headline", "detect_catapults", *(n for s in STUDIES for n in (s, f"analyze_{s}"))]


def get(name: str) -> Study:
    """The study called ``name`` (ValueError listing the known ones)."""
    try:
        return STUDIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown study {name!r}; known studies: {', '.join(STUDIES)}") from None


def default_base(study: str) -> RunConfig:
    """The default base config of a study (fields not swept): ``get(study).default_base()``."""
    return get(study).default_base()


def analyze(store):
    """(dataset, summary) of a study store, by the study recorded in it."""
    meta = storage.read_attrs(store).get("specdyn_sweep", {})
    name = meta.get("study")
    if name not in STUDIES:
        raise ValueError(f"store {str(store)!r} was not written by a study (recorded study: {name!r}); "
                         f"known studies: {', '.join(STUDIES)}")
    done = set(storage.completed_groups(store))
    groups = [g for g in meta.get("groups") or [] if g in done] or None
    return STUDIES[name].analyze(store, groups=groups)
