"""What every study shares: the Study object, the run function, the store and the summary helpers."""
from __future__ import annotations

import json
import math
import tempfile

import numpy as np

from .. import storage
from ..config import RunConfig


def simulate_run(config: RunConfig):
    """The run function of every study: ``specdyn.simulate(config)`` (picklable)."""
    from ..training import simulate

    return simulate(config)


class Study:
    """A study: its default base config, its run, the analysis of its store, its figures and its headline.

    A subclass sets ``name`` and ``grid_keys`` (the keyword arguments of ``run`` that a
    TOML [grid] or [study] table may set) and writes the five methods. ``run_one`` is the
    run function its sweep sends to the workers (a module-level function, so it pickles).
    """

    name: str = ""
    grid_keys: tuple = ()
    run_one = staticmethod(simulate_run)

    def default_base(self) -> RunConfig:
        """The config of every run before the study's grid sets width, seed, ..."""
        raise NotImplementedError

    def base(self, base) -> RunConfig:
        """``base`` (a RunConfig, a dict of fields over the default, or None for the default)."""
        if base is None:
            return self.default_base()
        if isinstance(base, RunConfig):
            return base
        if isinstance(base, dict):
            return self.default_base().replace(**base) if base else self.default_base()
        raise ValueError(f"base must be a RunConfig, a dict of RunConfig fields or None; got {type(base).__name__}")

    def run(self, **kwargs):
        """Run the study's sweep; ``(dataset, summary)``."""
        raise NotImplementedError

    def sweep_and_analyze(self, grid, base: RunConfig, store, client, workers, progress, analyze_args=(),
                          before_analyze=None, **attrs):
        """Sweep ``grid`` over ``base`` into ``store`` (a temporary one when None), recording this study,
        its base and ``attrs``; then ``before_analyze(path)`` and the analysis. ``(dataset, summary)``."""
        from ..sweeps import sweep

        with StudyStore(store) as path:
            summary = sweep(self.run_one, grid, path, client=client, workers=workers, progress=progress,
                            base=base, study_attrs={"study": self.name, "base": base.to_json(), **attrs})
            if before_analyze is not None:
                before_analyze(path)
            ds, head = self.analyze(path, *analyze_args, groups=summary["groups"])
        head["sweep"] = sweep_brief(summary)
        return ds, head

    def analyze(self, store, groups=None):
        """``(dataset, summary)`` of a store this study wrote."""
        raise NotImplementedError

    def figures(self, ds, summary, out_dir) -> list[str]:
        """Write the study's figures into ``out_dir``; their paths."""
        raise NotImplementedError

    def headline(self, summary: dict, console) -> None:
        """Print the headline numbers of ``summary`` on a rich ``console``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<study {self.name}>"


def table(title: str, left=(), right=()):
    """A rich Table of a headline: the ``left`` columns (labels), then the ``right``-justified ones (numbers)."""
    from rich.table import Table

    t = Table(title=title)
    for name in left:
        t.add_column(name)
    for name in right:
        t.add_column(name, justify="right")
    return t


def listed(name: str, values, kind=float) -> list:
    if isinstance(values, (int, float, str)):
        values = [values]
    values = list(values)
    if not values:
        raise ValueError(f"{name} must list at least one value")
    return [kind(v) for v in values]


class StudyStore:
    """A store path, or a temporary directory kept until the results are loaded."""

    def __init__(self, store):
        self._tmp = tempfile.TemporaryDirectory(prefix="specdyn-") if store is None else None
        self.path = f"{self._tmp.name}/study.zarr" if store is None else str(store)

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        if self._tmp is not None:
            self._tmp.cleanup()


def hidden_layers(ds) -> list[str]:
    """Square hidden matrices W1..W(L-1) (W0 and the readout are rectangular)."""
    layers = [str(l) for l in ds.layer.values]
    return layers[1:-1] or layers[:1]


def fit_power(x, y) -> float:
    """Exponent p of y ~ a x^-p by least squares in log-log (NaN with < 2 usable points)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(y) & (y > 0) & (x > 0)
    if ok.sum() < 2:
        return float("nan")
    slope = np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0]
    return float(-slope)


def seed_mean(da):
    return da.mean("seed") if "seed" in da.dims else da


def sweep_meta(store) -> dict:
    """The study description ``sweep`` recorded in a store ({} for a store not written by a sweep)."""
    return storage.read_attrs(store).get("specdyn_sweep", {})


def summary_base(store: str, dims, study: str) -> dict:
    return {"study": study, "store": str(store), "dims": list(dims)}


def sweep_brief(summary: dict) -> dict:
    return {k: summary[k] for k in ("total", "skipped", "completed", "diverged", "failed", "wall_s")}


def statuses(ds) -> dict:
    st = ds["status"].values.ravel()
    return {str(s): int((st == s).sum()) for s in sorted(set(st)) if s}


def to_json(summary: dict) -> str:
    """The summary as JSON (NaN and inf as strings, keys as strings)."""
    def clean(v):
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (float, np.floating)):
            return float(v) if math.isfinite(v) else str(float(v))
        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, np.bool_):
            return bool(v)
        return v

    return json.dumps(clean(summary), indent=2)
