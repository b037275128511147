"""The muP limit of a study's base config: the exact linear DMFT (``theory.one_bulk`` at depth 2,
``theory.deep_linear`` deeper), stored beside the runs in the group ``theory/dmft``."""
from __future__ import annotations

import numpy as np

from .. import storage
from ..config import LIMIT_COVERS, RunConfig

THEORY_GROUP = "theory/dmft"
LINEAR_LIMITS = ("one_bulk", "deep_linear")


def theory_fits(config: RunConfig) -> tuple[bool, str]:
    """Whether an exact linear DMFT (one_bulk at depth 2, deep_linear deeper) describes this config, and why not."""
    if any(m in config.limits() for m in LINEAR_LIMITS):
        return True, ""
    return False, f"{LIMIT_COVERS['deep_linear']}; got {', '.join(config.limit_gaps('deep_linear'))}"


_LIMIT_FREE = ("width", "seed", "scaling", "top_k", "bulk_steps", "bulk_bins", "track_sharpness", "track_hessian",
               "checkpoint_every", "divergence_bound", "dtype")


def same_limit(a: RunConfig, b: RunConfig) -> bool:
    """Whether two muP configs share the infinite-width limit (all fields but width, seed, tracking)."""
    da, db = a.to_dict(), b.to_dict()
    return all(da[k] == db[k] for k in da if k not in _LIMIT_FREE)


def limit_theory(config: RunConfig, store: str | None = None, group: str = THEORY_GROUP):
    """The muP limit of ``config``: ``theory.one_bulk`` at depth 2, ``theory.deep_linear`` deeper
    (stored when ``store``).

    Returns ``(dataset or None, note)``: None with the reason when no linear DMFT
    covers the config (decided by :func:`theory_fits`); a theory that covers the
    config and fails raises.
    """
    ok, why = theory_fits(config)
    if not ok:
        return None, why
    config = config.replace(scaling="mup")
    name = "one-bulk DMFT" if config.depth == 2 else "deep linear DMFT"
    if store is not None and storage.is_complete(store, group):
        th = storage.load(store, group)
        if same_limit(RunConfig.from_json(th.attrs["source_config"]), config):
            return th, f"{name} (stored)"
    from .. import theory

    th = theory.one_bulk(config) if config.depth == 2 else theory.deep_linear(config)
    th.attrs["source_config"] = config.to_json()
    th.attrs.setdefault("kind", "theory")
    if store is not None:
        storage.save(th, store, group)
    return th, name


def stored_limit(store):
    """The limit stored in a study store, or None."""
    return storage.load(store, THEORY_GROUP) if storage.is_complete(store, THEORY_GROUP) else None


def theory_on_steps(th, name: str, steps, layer: str = "W1"):
    """Theory variable ``name`` (rank) on the simulation's steps (nearest theory step)."""
    if th is None or name not in th:
        return None
    da = th[name]
    if "layer" in da.dims:
        if layer not in [str(l) for l in da.layer.values]:
            return None
        da = da.sel(layer=layer)
    return da.reindex(step=np.asarray(steps), method="nearest")
