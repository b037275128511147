"""Studies: the claims of docs/theory.md as one call each.

Every study runs a grid of simulations through :func:`specdyn.sweep`
(so it resumes in a store and scales over Dask), collects the runs into one
``xarray.Dataset`` and returns ``(dataset, summary)``: the summary holds the
headline numbers, computed from that dataset by the ``analyze_*`` function of
the study (which the CLI also calls on a stored sweep). Figures live in
:mod:`specdyn.plots`.

=====================  ========================================================
study                  headline
=====================  ========================================================
width_consistency      spread of s_1(t) across widths per scaling, its decay in N
lr_transfer            optimal eta0 per width and its drift in log2 units
edge_of_stability      steady normalized sharpness S, width spread, catapults
many_outputs           no isolated outlier; top bulk edge vs N, fitted rate
naive_vs_two_level     outliers of the two-level theory and of naive BBP vs sim
=====================  ========================================================
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import parameterization, storage
from .config import RunConfig
from .sweeps import collect, sweep

THEORY_GROUP = "theory/dmft"


def simulate_run(config: RunConfig):
    """The run function of every study: ``specdyn.simulate(config)`` (picklable)."""
    from .training import simulate

    return simulate(config)


# ---------------------------------------------------------------------------------
# base configurations (the solvable model of docs/theory.md, One-bulk model, unless noted)
# ---------------------------------------------------------------------------------
def default_base(study: str) -> RunConfig:
    """The default base config of a study (fields not swept)."""
    one_bulk = dict(depth=2, activation="linear", input_dim=8, output_dim=1, samples=16, sigma=1.0,
                    top_k=4, data_seed=0)
    if study in ("width_consistency", "naive_vs_two_level"):
        # gamma0 = 8 lets one outlier escape to s ~ 2.8 in ~40 steps at every width
        return RunConfig(**one_bulk, scaling="mup", gamma0=8.0, eta0=0.02, steps=80, track_every=4,
                         bulk_steps=[80] if study == "width_consistency" else [])
    if study == "lr_transfer":
        # depth 3 tanh, D = 16, P = 64, 30 steps: every scaling's loss-vs-eta0 curve has an interior minimum
        # on the 2^-6 .. 2^6 grid (the solvable model's NTK optimum sat at the top of any grid)
        return RunConfig(depth=3, activation="tanh", input_dim=16, output_dim=1, samples=64, sigma=1.0, top_k=4,
                         data_seed=0, scaling="mup", gamma0=1.0, eta0=0.1, steps=30, track_every=30,
                         track_sharpness=False)
    if study == "edge_of_stability":
        # tanh: the sharpness of a linear net barely moves; the Hessian (Lanczos on
        # Hessian-vector products) costs ~5 steps, hence every 2nd step
        return RunConfig(**{**one_bulk, "activation": "tanh", "input_dim": 16, "samples": 32}, scaling="mup",
                         gamma0=1.0, eta0=1.0, steps=100, track_every=2, track_hessian=True)
    if study == "many_outputs":
        # gamma = gamma0 (scaling "ntk") with the proportional rate eta0 gamma0^2 N (many_outputs multiplies
        # eta0 by N): the one setting where C, D, P ~ N give a full-rank O(1) update of W1 per step (see
        # many_outputs). input_dim, output_dim, samples are set per width by the study.
        return RunConfig(depth=2, activation="linear", input_dim=64, output_dim=32, samples=64, scaling="ntk",
                         gamma0=4.0, eta0=0.003, steps=80, track_every=10, top_k=4, track_sharpness=False,
                         bulk_steps=[0, 80], bulk_bins=60)
    raise ValueError(f"unknown study {study!r}; known: {', '.join(STUDIES)}")


def _base(study: str, base) -> RunConfig:
    if base is None:
        return default_base(study)
    if isinstance(base, RunConfig):
        return base
    if isinstance(base, dict):
        return default_base(study).replace(**base) if base else default_base(study)
    raise ValueError(f"base must be a RunConfig, a dict of RunConfig fields or None; got {type(base).__name__}")


def _listed(name: str, values, kind=float) -> list:
    if isinstance(values, (int, float, str)):
        values = [values]
    values = list(values)
    if not values:
        raise ValueError(f"{name} must list at least one value")
    return [kind(v) for v in values]


class _Store:
    """A store path, or a temporary directory kept until the results are loaded."""

    def __init__(self, store):
        self._tmp = tempfile.TemporaryDirectory(prefix="specdyn-") if store is None else None
        self.path = f"{self._tmp.name}/study.zarr" if store is None else str(store)

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        if self._tmp is not None:
            self._tmp.cleanup()


def _hidden_layers(ds) -> list[str]:
    """Square hidden matrices W1..W(L-1) (W0 and the readout are rectangular)."""
    layers = [str(l) for l in ds.layer.values]
    return layers[1:-1] or layers[:1]


def _sigma_of(config: RunConfig, layer: int) -> float:
    return float(config.sigma[layer] if isinstance(config.sigma, list) else config.sigma)


def _fit_power(x, y) -> float:
    """Exponent p of y ~ a x^-p by least squares in log-log (NaN with < 2 usable points)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(y) & (y > 0) & (x > 0)
    if ok.sum() < 2:
        return float("nan")
    slope = np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0]
    return float(-slope)


def _seed_mean(da):
    return da.mean("seed") if "seed" in da.dims else da


def _summary_base(store: str, dims) -> dict:
    meta = storage.read_attrs(store).get("specdyn_sweep", {})  # a store not written by sweep has none
    return {"study": meta.get("study"), "store": str(store), "dims": list(dims)}


# ---------------------------------------------------------------------------------
# theory (branch dmft): used where the config is the solvable model
# ---------------------------------------------------------------------------------
def theory_fits(config: RunConfig) -> tuple[bool, str]:
    """Whether an exact linear DMFT (one_bulk at depth 2, deep_linear deeper) describes this config, and why not."""
    if config.depth < 2 or config.activation != "linear" or config.output_dim != 1:
        return False, "the linear DMFT needs depth >= 2, activation='linear', output_dim=1"
    if config.scaling not in ("mup", "ntk"):
        return False, "the linear DMFT covers scaling 'mup' or 'ntk'"
    if config.batch_size is not None or config.online:
        return False, "the linear DMFT is for full-batch GD on a fixed sample"
    return True, ""


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
    from . import theory

    th = theory.one_bulk(config) if config.depth == 2 else theory.deep_linear(config)
    th.attrs["source_config"] = config.to_json()
    th.attrs.setdefault("kind", "theory")
    if store is not None:
        storage.save(th, store, group)
    return th, name


def _theory_on_steps(th, name: str, steps, layer: str = "W1"):
    """Theory variable ``name`` (rank) on the simulation's steps (nearest theory step)."""
    if th is None or name not in th:
        return None
    da = th[name]
    if "layer" in da.dims:
        if layer not in [str(l) for l in da.layer.values]:
            return None
        da = da.sel(layer=layer)
    return da.reindex(step=np.asarray(steps), method="nearest")


# ---------------------------------------------------------------------------------
# width consistency (claim 1)
# ---------------------------------------------------------------------------------
def width_consistency(widths=(256, 512, 1024), scalings=("mup", "ntk"), seeds=(0,), base=None, theory=True,
                      store=None, client=None, workers=None, progress=True, match_width=None):
    """Outlier trajectories s_k(t) of the hidden layers across widths, per scaling.

    ``base`` sets everything but width/scaling/seed (default: the solvable
    one-bulk model with gamma0 = 8). ``match_width``: NTK runs use the gamma0
    that makes NTK at that width the same network as muP (docs/theory.md, Notation and scalings: NTK at
    width N is muP with richness gamma0/sqrt(N)); default the smallest width,
    so the two scalings start from the same run and differ only in how they
    change with N. Pass ``match_width=0`` to give NTK the base gamma0.
    Returns ``(dataset, summary)``; see :func:`analyze_width_consistency`.
    """
    base = _base("width_consistency", base)
    widths = _listed("widths", widths, int)
    seeds = _listed("seeds", seeds, int)
    scalings = _listed("scalings", scalings, str)
    points = []
    match = min(widths) if match_width is None else int(match_width)
    for sc in scalings:
        gamma0 = base.gamma0
        if sc == "ntk" and match > 0:
            gamma0 = base.gamma0 / parameterization.effective_richness("ntk", match, 1.0)
        points += [{"scaling": sc, "width": n, "seed": s, "gamma0": gamma0} for n in widths for s in seeds]
    with _Store(store) as path:
        summary = sweep(simulate_run, [{**base.to_dict(), **p} for p in points], path, client=client,
                        workers=workers, progress=progress,
                        study_attrs={"study": "width_consistency", "base": base.to_json(), "theory": bool(theory),
                                     "match_width": match})
        if theory:
            limit_theory(base, path)
        ds, head = analyze_width_consistency(path, groups=summary["groups"])
    head["sweep"] = _sweep_brief(summary)
    return ds, head


def _sweep_brief(summary: dict) -> dict:
    return {k: summary[k] for k in ("total", "skipped", "completed", "diverged", "failed", "wall_s")}


def analyze_width_consistency(store, groups=None):
    """Collect a width-consistency store; headline from the data.

    ``spread[scaling]`` = max over tracked t of (max - min over widths) of the
    seed-mean s_1(t) of the first hidden layer W1; ``deviation[scaling][N]`` =
    max_t |s_1^N(t) - reference(t)|, the reference being the linear DMFT
    (muP, when stored) or the largest width; ``decay_exponent[scaling]``: p of
    deviation ~ N^-p; ``spread_ratio`` = spread(mup) / spread(ntk).
    """
    ds = collect(store, dims=("scaling", "width", "seed"), groups=groups)
    head = _summary_base(store, ("scaling", "width", "seed"))
    head["study"] = "width_consistency"
    layer = _hidden_layers(ds)[0]
    head["layer"] = layer
    s1 = _seed_mean(ds.singular_values.sel(layer=layer, rank=0))  # (scaling, width, step)
    th = storage.load(store, THEORY_GROUP) if storage.is_complete(store, THEORY_GROUP) else None
    theory_s = _theory_on_steps(th, "singular_values", ds.step.values, layer)
    if theory_s is not None:
        ds["theory_singular_values"] = theory_s.drop_vars([c for c in theory_s.coords if c not in ("step", "rank")])
    head["theory"] = theory_s is not None
    if theory_s is None:
        fits, why = theory_fits(RunConfig.from_json(ds.attrs["config"]))
        head["theory_note"] = why if not fits else "not computed for this store (theory=False)"
    widths = [int(w) for w in ds.width.values]
    head["widths"] = widths
    head["spread"], head["deviation"], head["decay_exponent"], head["reference"] = {}, {}, {}, {}
    for sc in [str(s) for s in ds.scaling.values]:
        curves = s1.sel(scaling=sc)  # (width, step)
        spread = (curves.max("width") - curves.min("width")).max("step")
        head["spread"][sc] = float(spread)
        if theory_s is not None and sc == "mup":
            # no outlier in the limit: the top singular value sits at the bulk edge
            edge = 2.0 * _sigma_of(RunConfig.from_json(ds.attrs["config"]), 1)
            ref, ref_name = theory_s.sel(rank=0).fillna(edge), "theory"
            ws = widths
        else:
            ref, ref_name = curves.sel(width=max(widths)), f"N={max(widths)}"
            ws = [w for w in widths if w != max(widths)]
        dev = {w: float(abs(curves.sel(width=w) - ref).max("step")) for w in ws}
        head["deviation"][sc] = dev
        head["reference"][sc] = ref_name
        head["decay_exponent"][sc] = _fit_power(list(dev), list(dev.values()))
    # every square hidden layer (W1..W(L-1)): the same spread, per layer
    head["spread_by_layer"] = {
        str(l): {str(sc): float((lambda c: (c.max("width") - c.min("width")).max("step"))(
            _seed_mean(ds.singular_values.sel(layer=l, rank=0, scaling=sc)))) for sc in ds.scaling.values}
        for l in _hidden_layers(ds)}
    if "mup" in head["spread"] and "ntk" in head["spread"] and head["spread"]["ntk"] > 0:
        head["spread_ratio"] = head["spread"]["mup"] / head["spread"]["ntk"]
    head["final_s1"] = {str(sc): {int(w): float(s1.sel(scaling=sc, width=w).isel(step=-1)) for w in widths}
                        for sc in ds.scaling.values}
    head["statuses"] = _statuses(ds)
    return ds, head


def _statuses(ds) -> dict:
    st = ds["status"].values.ravel()
    return {str(s): int((st == s).sum()) for s in sorted(set(st)) if s}


# ---------------------------------------------------------------------------------
# learning-rate transfer (claim 2)
# ---------------------------------------------------------------------------------
LR_TRANSFER_ETA0S = tuple(2.0 ** k for k in range(-6, 7))


def lr_transfer(eta0s=LR_TRANSFER_ETA0S, widths=(128, 256, 512, 1024), scalings=("mup", "ntk", "sp"), seeds=(0,),
                base=None, store=None, client=None, workers=None, progress=True):
    """Loss after ``base.steps`` steps against eta0, per width and scaling.

    Defaults: eta0 = 2^-6 .. 2^6 (factors of 2), depth-3 tanh network, 30
    steps (about 45 s on one core). Measured there (seed 0; seed 1 agrees):
    the muP optimum is eta0 = 2 at N = 128 .. 1024 (drift 0); SP (raw rate
    eta0, kernel ~ N) is the non-transferring peer, its stability limit and
    optimum fall with N (0.25, 0.125, 0.125, 0.0625: drift 2); NTK as
    parameterized here (gamma = gamma0, raw rate eta0 gamma0^2) has a
    width-independent kernel, so its optimum sits just below a
    width-independent stability limit (32, 32, 16, 32: drift 1, no trend).

    Returns ``(dataset, summary)``; see :func:`analyze_lr_transfer`.
    """
    base = _base("lr_transfer", base)
    grid = {"scaling": _listed("scalings", scalings, str), "width": _listed("widths", widths, int),
            "eta0": _listed("eta0s", eta0s, float), "seed": _listed("seeds", seeds, int)}
    with _Store(store) as path:
        summary = sweep(simulate_run, grid, path, client=client, workers=workers, progress=progress, base=base,
                        study_attrs={"study": "lr_transfer", "base": base.to_json()})
        ds, head = analyze_lr_transfer(path, groups=summary["groups"])
    head["sweep"] = _sweep_brief(summary)
    return ds, head


def lr_optimum(eta0s, final_loss) -> dict:
    """The argmin of a final-loss curve over an eta0 grid, and whether the grid brackets it.

    ``final_loss`` is inf (or NaN) where the run diverged. Returns ``eta0`` (NaN when
    every run diverged), ``loss``, ``bound`` ("<=": the optimum is the smallest eta0 of
    the grid, so the true one may lie below it; ">=": the largest, the true one may lie
    above; None: interior, known to grid resolution) and ``interval`` (lo, hi) of eta0
    the true optimum lies in (0 / inf for an open side; NaN, NaN when undefined).
    """
    eta0s, loss = np.asarray(eta0s, float), np.asarray(final_loss, float)
    order = np.argsort(eta0s)
    eta0s, loss = eta0s[order], loss[order]
    ok = np.isfinite(loss)
    if not ok.any():
        return {"eta0": float("nan"), "loss": float("inf"), "bound": None, "interval": (float("nan"), float("nan")),
                "note": "every run diverged"}
    i = int(np.argmin(np.where(ok, loss, np.inf)))
    v = float(eta0s[i])
    out = {"eta0": v, "loss": float(loss[i]), "bound": None, "interval": (v, v), "note": None}
    # Only the ends of the grid leave a side open: a diverged run next to the argmin is a
    # stability limit, which brackets the optimum.
    if len(eta0s) == 1:
        out.update(bound="?", interval=(0.0, float("inf")), note=f"a grid of one eta0 ({v:g}) brackets nothing")
    elif i == 0:
        out.update(bound="<=", interval=(0.0, v), note=f"optimum at the smallest eta0 of the grid: <= {v:g}")
    elif i == len(eta0s) - 1:
        out.update(bound=">=", interval=(v, float("inf")), note=f"optimum at the largest eta0 of the grid: >= {v:g}")
    return out


def lr_drift(optima: dict) -> dict:
    """Drift in log2 of the optimal eta0 across widths from ``{width: lr_optimum(...)}``.

    ``drift_log2`` is log2(max/min) when every optimum is interior; otherwise NaN, with
    ``bound`` (min, max) the range the true drift lies in (a lower bound when some optimum
    sits at a grid edge; NaN, NaN when some width has no optimum) and ``note`` saying why.
    """
    missing = [w for w, o in optima.items() if not np.isfinite(o["eta0"])]
    if missing:
        return {"drift_log2": float("nan"), "bound": (float("nan"), float("nan")),
                "note": f"drift undefined: every run diverged at N = {', '.join(map(str, missing))}"}
    if not optima:
        return {"drift_log2": float("nan"), "bound": (float("nan"), float("nan")), "note": "drift undefined: no widths"}
    lo = [o["interval"][0] for o in optima.values()]
    hi = [o["interval"][1] for o in optima.values()]
    edges = [w for w, o in optima.items() if o["bound"] is not None]
    if not edges:
        d = float(np.log2(max(lo) / min(lo)))
        return {"drift_log2": d, "bound": (d, d), "note": None}
    with np.errstate(divide="ignore"):
        least = max(0.0, float(np.log2(max(lo) / min(hi))))
        most = float(np.log2(max(hi) / min(lo))) if min(lo) > 0 else float("inf")
    return {"drift_log2": float("nan"), "bound": (least, most),
            "note": f"optimum outside the grid at N = {', '.join(map(str, edges))}: drift >= {least:g} (log2)"}


def analyze_lr_transfer(store, groups=None):
    """``final_loss(scaling, width, eta0)``: seed-mean loss at the last step (inf if
    any seed diverged); ``optimal_eta0[scaling][N]`` its argmin over eta0 (NaN when
    every run diverged), ``optimum_bound[scaling][N]`` "<= x" / ">= x" when that argmin
    sits at an end of the grid (None inside it); ``drift_log2[scaling]`` = log2(max/min)
    of the optimal eta0 across widths when every optimum is inside the grid, else NaN
    with ``drift_bound[scaling]`` (min, max) and the reason in ``drift_note[scaling]``."""
    ds = collect(store, dims=("scaling", "width", "eta0", "seed"), groups=groups)
    head = _summary_base(store, ("scaling", "width", "eta0", "seed"))
    head["study"] = "lr_transfer"
    last = ds.loss.isel(step=-1)
    last = last.where(np.isfinite(last) & (ds.status != "diverged"), np.inf)
    final = last.mean("seed")
    ds["final_loss"] = final
    head.update(lr_transfer_headline(final))
    head["statuses"] = _statuses(ds)
    return ds, head


def lr_transfer_headline(final) -> dict:
    """The optima and drifts of :func:`analyze_lr_transfer` from ``final_loss(scaling, width, eta0)``
    (an ``xarray.DataArray``; inf or NaN where a run diverged)."""
    head = {key: {} for key in ("optimal_eta0", "optimal_loss", "optimum_bound", "drift_log2", "drift_bound",
                                "drift_note")}
    for sc in [str(s) for s in final.scaling.values]:
        optima = {int(w): lr_optimum(final.eta0.values, final.sel(scaling=sc, width=w).values)
                  for w in final.width.values}
        head["optimal_eta0"][sc] = {w: o["eta0"] for w, o in optima.items()}
        head["optimal_loss"][sc] = {w: o["loss"] for w, o in optima.items()}
        head["optimum_bound"][sc] = {w: o["bound"] and f"{o['bound']} {o['eta0']:g}" for w, o in optima.items()}
        drift = lr_drift(optima)
        head["drift_log2"][sc], head["drift_bound"][sc] = drift["drift_log2"], list(drift["bound"])
        head["drift_note"][sc] = drift["note"]
    return head


# ---------------------------------------------------------------------------------
# edge of stability (claim 3)
# ---------------------------------------------------------------------------------
def detect_catapults(loss, factor: float = 2.0) -> list[dict]:
    """Catapults in a loss curve: the loss rises above ``factor`` x its running
    minimum, then comes back below that level before the curve ends.

    ``loss`` is a 1-D array over tracked steps (NaN ends the curve: a spike
    that never recovers is divergence, not a catapult). Returns a list of
    ``{"start", "peak", "end"}`` indices into ``loss`` and ``"ratio"`` (peak /
    running minimum).
    """
    loss = np.asarray(loss, float)
    out, i, n = [], 1, len(loss)
    while i < n:
        if not np.isfinite(loss[i]):
            break
        level = np.min(loss[:i][np.isfinite(loss[:i])]) if np.isfinite(loss[:i]).any() else np.inf
        if loss[i] > factor * level > 0:
            j = i
            while j < n and np.isfinite(loss[j]) and loss[j] > factor * level:
                j += 1
            if j < n and np.isfinite(loss[j]):
                peak = i + int(np.argmax(loss[i:j]))
                out.append({"start": i, "peak": peak, "end": j, "ratio": float(loss[peak] / level)})
            i = j + 1
        else:
            i += 1
    return out


def edge_of_stability(eta0s=(1.0, 2.0, 4.0, 8.0), widths=(64, 128, 256), scalings=("mup",), seeds=(0,),
                      base=None, store=None, client=None, workers=None, progress=True, catapult_factor=2.0):
    """S(t) = eta lambda_max(K)/P and eta x (Hessian top) against 2 over eta0 and widths.

    Returns ``(dataset, summary)``; see :func:`analyze_edge_of_stability`.
    """
    base = _base("edge_of_stability", base)
    grid = {"scaling": _listed("scalings", scalings, str), "width": _listed("widths", widths, int),
            "eta0": _listed("eta0s", eta0s, float), "seed": _listed("seeds", seeds, int)}
    with _Store(store) as path:
        summary = sweep(simulate_run, grid, path, client=client, workers=workers, progress=progress, base=base,
                        study_attrs={"study": "edge_of_stability", "base": base.to_json(),
                                     "catapult_factor": catapult_factor})
        ds, head = analyze_edge_of_stability(path, catapult_factor, groups=summary["groups"])
    head["sweep"] = _sweep_brief(summary)
    return ds, head


def analyze_edge_of_stability(store, catapult_factor: float | None = None, groups=None):
    """``steady_sharpness(scaling, width, eta0)``: mean of the seed-mean S over the
    last quarter of the run's steps (step >= 0.75 T); NaN where a seed diverged.
    ``width_spread[scaling][eta0]``: max - min of it across widths;
    ``largest_stable_eta0[scaling]``: the largest eta0 with no diverged run;
    ``catapults``: loss spikes (``detect_catapults``) per run, marked in
    ``catapult(scaling, width, eta0, seed, step)``. ``hessian_sharpness`` =
    raw eta x hessian_top (the full-Hessian stability ratio, also against 2)."""
    ds = collect(store, dims=("scaling", "width", "eta0", "seed"), groups=groups)
    meta = storage.read_attrs(store).get("specdyn_sweep", {})
    factor = float(catapult_factor if catapult_factor is not None else meta.get("catapult_factor", 2.0))
    head = _summary_base(store, ("scaling", "width", "eta0", "seed"))
    head["study"] = "edge_of_stability"
    base = RunConfig.from_json(meta["base"]) if "base" in meta else None
    steps = ds.step.values
    t_end = steps.max()
    late = steps >= 0.75 * t_end
    S = ds.normalized_sharpness.where(ds.status != "diverged")
    steady = _seed_mean(S.isel(step=np.flatnonzero(late)).mean("step", skipna=False))
    ds["steady_sharpness"] = steady
    if "hessian_top" in ds and base is not None:
        import xarray as xr

        eta = xr.DataArray([[[parameterization.learning_rate(str(sc), int(w), base.gamma0, float(e))
                              for e in ds.eta0.values] for w in ds.width.values] for sc in ds.scaling.values],
                           dims=("scaling", "width", "eta0"),
                           coords={"scaling": ds.scaling, "width": ds.width, "eta0": ds.eta0})
        ds["hessian_sharpness"] = ds.hessian_top * eta
    head["steady_sharpness"], head["width_spread"], head["largest_stable_eta0"] = {}, {}, {}
    for sc in [str(s) for s in ds.scaling.values]:
        st = ds.status.sel(scaling=sc)
        stable = [float(e) for e in ds.eta0.values if not bool((st.sel(eta0=e) == "diverged").any())]
        head["largest_stable_eta0"][sc] = max(stable) if stable else float("nan")
        head["steady_sharpness"][sc] = {float(e): {int(w): float(steady.sel(scaling=sc, width=w, eta0=e))
                                                   for w in ds.width.values} for e in ds.eta0.values}
        head["width_spread"][sc] = {float(e): float(steady.sel(scaling=sc, eta0=e).max("width")
                                                    - steady.sel(scaling=sc, eta0=e).min("width"))
                                    for e in ds.eta0.values}
    marks = np.zeros(ds.loss.shape, dtype=bool)
    catapults = []
    loss = ds.loss.transpose("scaling", "width", "eta0", "seed", "step")
    for idx in np.ndindex(loss.shape[:-1]):
        for c in detect_catapults(loss.values[idx], factor):
            marks[idx + (c["peak"],)] = True
            catapults.append({"scaling": str(ds.scaling.values[idx[0]]), "width": int(ds.width.values[idx[1]]),
                              "eta0": float(ds.eta0.values[idx[2]]), "seed": int(ds.seed.values[idx[3]]),
                              "start_step": int(steps[c["start"]]), "peak_step": int(steps[c["peak"]]),
                              "end_step": int(steps[c["end"]]), "ratio": c["ratio"]})
    ds["catapult"] = loss.copy(data=marks)
    head["catapults"] = catapults
    head["catapult_factor"] = factor
    head["statuses"] = _statuses(ds)
    return ds, head


# ---------------------------------------------------------------------------------
# many outputs (claim 5)
# ---------------------------------------------------------------------------------
def many_outputs(kappa=0.5, widths=(64, 128, 256, 512), seeds=(0, 1), base=None, input_ratio=1.0, sample_ratio=1.0,
                 proportional_lr=True, store=None, client=None, workers=None, progress=True, outlier_gap=0.1):
    """C = kappa N outputs, D = input_ratio N inputs, P = sample_ratio N samples:
    the update of W1 is full rank, the bulk deforms, no isolated outlier escapes.

    Why this setting (docs/theory.md, claim 5). Write A0 = W0/sqrt(D), A1 = W1/sqrt(N),
    A2 = W2/sqrt(N) (all O(1) operator norm at init) and the teacher
    y = T x with T = B/sqrt(D) (C x D, O(1) operator norm, O(1) per output).

    * The update of A1 has rank <= min(C, D, P): D and P must grow with N too,
      else it is a rank-D (or rank-P) spike and D (P) outliers escape.
    * Under muP, f = A2 A1 A0 x / (gamma0 sqrt(N)): reaching an O(1)-per-output
      target on C ~ N outputs needs ||A2 A1 A0|| ~ sqrt(N), so the weights (and
      the edge of W1) grow with N at fixed eta0; dividing eta0 by C instead
      slows the readout as well and learning stalls. Neither has a limit.
    * With gamma = gamma0 (scaling "ntk"), f = A2 A1 A0 x / gamma0 and the
      target are both O(1) maps; the loss gradient in A1 is
      A2^T (M - T) (X X^T / P) A0^T / gamma0 = O(1), but the raw rate
      eta0 gamma0^2 moves A1 by eta / N per step. The proportional rate
      eta0 gamma0^2 N of docs/theory.md, Proportional two-layer model (``proportional_lr``: each run
      gets eta0 = :func:`parameterization.proportional_run_eta0`) makes every
      step an O(1), full-rank change of A0, A1, A2, so s_k(W1, t) at a fixed
      step count has an N -> infinity limit. The loss sums over outputs (it
      grows like C); loss / C has the limit.

    ``base.eta0`` is that width-free rate when ``proportional_lr`` (which needs
    scaling "ntk"); otherwise it is passed to every run as is. Bulk histograms
    at ``base.bulk_steps``. Returns ``(dataset, summary)``; see
    :func:`analyze_many_outputs`.
    """
    from . import _validate as V

    kappa = V.real("kappa", kappa, 0.0, None, lo_open=True)
    input_ratio = V.real("input_ratio", input_ratio, 0.0, None, lo_open=True)
    sample_ratio = V.real("sample_ratio", sample_ratio, 0.0, None, lo_open=True)
    if not isinstance(proportional_lr, (bool, np.bool_)):
        raise ValueError(f"proportional_lr must be true or false; got {proportional_lr!r}")
    base = _base("many_outputs", base)
    if proportional_lr and base.scaling != "ntk":
        raise ValueError(f"proportional_lr needs base scaling 'ntk' (gamma = gamma0); got {base.scaling!r} "
                         "(pass proportional_lr=False to run eta0 as is)")
    points = []
    for n in _listed("widths", widths, int):
        eta0 = parameterization.proportional_run_eta0(n, base.eta0) if proportional_lr else base.eta0
        for s in _listed("seeds", seeds, int):
            points.append({**base.to_dict(), "width": n, "seed": s, "output_dim": max(1, round(kappa * n)),
                           "input_dim": max(1, round(input_ratio * n)), "samples": max(1, round(sample_ratio * n)),
                           "eta0": eta0})
    with _Store(store) as path:
        summary = sweep(simulate_run, points, path, client=client, workers=workers, progress=progress,
                        study_attrs={"study": "many_outputs", "base": base.to_json(), "kappa": kappa,
                                     "outlier_gap": outlier_gap, "proportional_lr": bool(proportional_lr)})
        ds, head = analyze_many_outputs(path, outlier_gap, groups=summary["groups"])
    head["sweep"] = _sweep_brief(summary)
    return ds, head


def _fit_edge(widths, edges, free_rate: bool = True) -> dict:
    """edge(N) = edge_inf + a N^-p: least squares (p free with >= 3 widths and
    ``free_rate``, else p = 2/3, the Tracy-Widom scale of a bulk edge)."""
    x, y = np.asarray(widths, float), np.asarray(edges, float)
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2:
        return {"edge_inf": float("nan"), "rate": float("nan"), "amplitude": float("nan"), "rate_fitted": False}
    if len(x) >= 3 and free_rate:
        from scipy.optimize import curve_fit

        import warnings

        try:
            with warnings.catch_warnings():  # an exact fit (3 widths) has no covariance
                warnings.simplefilter("ignore")
                (e, a, p), _ = curve_fit(lambda n, e, a, p: e + a * n ** (-p), x, y, p0=(y[-1], (y[0] - y[-1]) * x[0] ** (2 / 3), 2 / 3),
                                         bounds=([-np.inf, -np.inf, 0.05], [np.inf, np.inf, 3.0]), maxfev=20000)
            return {"edge_inf": float(e), "rate": float(p), "amplitude": float(a), "rate_fitted": True}
        except RuntimeError as exc:  # no convergence: recorded, and the fixed-rate fit below is reported
            failure = f"the free-rate fit did not converge ({exc})"
    else:
        failure = None
    p = 2 / 3
    A = np.stack([np.ones_like(x), x ** (-p)], axis=1)
    (e, a), *_ = np.linalg.lstsq(A, y, rcond=None)
    out = {"edge_inf": float(e), "rate": p, "amplitude": float(a), "rate_fitted": False}
    if failure:
        out["rate_fit_failure"] = failure
    return out


def analyze_many_outputs(store, outlier_gap: float | None = None, groups=None):
    """``edge(N)``: seed-mean top singular value of W1 at the last step (without an
    outlier, the top of the bulk); ``relative_gap(N)`` = (s_1 - s_2) / s_1 there,
    ``isolated_outlier`` when it exceeds ``outlier_gap``; ``edge_fit``: edge(N) =
    edge_inf + a N^-rate (rate fitted with >= 3 widths), ``edge_fit_two_thirds``
    the same with the rate fixed at 2/3; ``edge_difference[N_i]``
    = |edge(N_i) - edge(N_{i-1})| over successive widths; ``loss_per_output(N)``:
    seed-mean final loss / C (the loss sums over the C outputs)."""
    ds = collect(store, dims=("width", "seed"), groups=groups)
    meta = storage.read_attrs(store).get("specdyn_sweep", {})
    gap_limit = float(outlier_gap if outlier_gap is not None else meta.get("outlier_gap", 0.1))
    head = _summary_base(store, ("width", "seed"))
    head["study"] = "many_outputs"
    layer = _hidden_layers(ds)[0]
    head["layer"] = layer
    sv = _seed_mean(ds.singular_values.sel(layer=layer).isel(step=-1))  # (width, rank)
    s0 = _seed_mean(ds.singular_values.sel(layer=layer).isel(step=0))
    edge = sv.isel(rank=0)
    gap = (sv.isel(rank=0) - sv.isel(rank=1)) / sv.isel(rank=0)
    ds["edge"], ds["relative_gap"] = edge, gap
    widths = [int(w) for w in ds.width.values]
    head["widths"] = widths
    head["edge"] = {w: float(edge.sel(width=w)) for w in widths}
    head["initial_edge"] = {w: float(s0.isel(rank=0).sel(width=w)) for w in widths}
    head["relative_gap"] = {w: float(gap.sel(width=w)) for w in widths}
    head["outlier_gap"] = gap_limit
    head["isolated_outlier"] = bool(any(g > gap_limit for g in head["relative_gap"].values()))
    head["edge_fit"] = _fit_edge(widths, [head["edge"][w] for w in widths])
    # with few noisy widths the free rate is ill-determined: the fit at rate 2/3 too
    head["edge_fit_two_thirds"] = _fit_edge(widths, [head["edge"][w] for w in widths], free_rate=False)
    # convergence without a fit: |edge(N_i) - edge(N_{i-1})| over successive widths, keyed by N_i
    head["edge_difference"] = {b: abs(head["edge"][b] - head["edge"][a]) for a, b in zip(widths, widths[1:])}
    kappa = meta.get("kappa")
    if kappa is not None:  # the study's C(N) = max(1, round(kappa N))
        final = _seed_mean(ds.loss.isel(step=-1))
        head["loss_per_output"] = {w: float(final.sel(width=w)) / max(1, round(kappa * w)) for w in widths}
    head["kappa"] = meta.get("kappa")
    head["statuses"] = _statuses(ds)
    return ds, head


# ---------------------------------------------------------------------------------
# naive BBP vs the two-level theory (claim 4)
# ---------------------------------------------------------------------------------
def naive_vs_two_level(widths=(256, 512), seeds=(0,), base=None, store=None, client=None, workers=None,
                       progress=True):
    """Outliers of W1 predicted by the two-level one-bulk theory and by naive BBP
    (spike = A(t) - A(0) independent of the bulk) against muP simulations.

    Needs the linear DMFT (``theory.one_bulk`` at depth 2, ``theory.deep_linear`` deeper). Returns ``(dataset, summary)``; see
    :func:`analyze_naive_vs_two_level`.
    """
    base = _base("naive_vs_two_level", base).replace(scaling="mup")
    ok, why = theory_fits(base)
    if not ok:
        raise ValueError(f"naive_vs_two_level: {why}")
    grid = {"width": _listed("widths", widths, int), "seed": _listed("seeds", seeds, int)}
    with _Store(store) as path:
        summary = sweep(simulate_run, grid, path, client=client, workers=workers, progress=progress, base=base,
                        study_attrs={"study": "naive_vs_two_level", "base": base.to_json()})
        th, note = limit_theory(base, path)
        if th is None:
            raise RuntimeError(f"naive_vs_two_level needs the linear DMFT: {note}")
        ds, head = analyze_naive_vs_two_level(path, groups=summary["groups"])
    head["sweep"] = _sweep_brief(summary)
    return ds, head


def analyze_naive_vs_two_level(store, groups=None):
    """Errors max_t |s_1^sim(t) - s_1^pred(t)| of both predictions per width (a
    prediction without an outlier counts as the bulk edge 2 sigma); ``missed``:
    tracked steps where the simulation at the largest width has s_1 above the
    edge by > 0.05 and a theory predicts no outlier."""
    from .rmt import quarter_circle_edge

    ds = collect(store, dims=("width", "seed"), groups=groups)
    head = _summary_base(store, ("width", "seed"))
    head["study"] = "naive_vs_two_level"
    if not storage.is_complete(store, THEORY_GROUP):
        raise ValueError(f"store {store!r} holds no theory group {THEORY_GROUP!r}")
    th = storage.load(store, THEORY_GROUP)
    meta = storage.read_attrs(store).get("specdyn_sweep", {})
    base = RunConfig.from_json(meta["base"]) if "base" in meta else RunConfig.from_json(th.attrs["source_config"])
    edge = quarter_circle_edge(_sigma_of(base, 1))
    sim = _seed_mean(ds.singular_values.sel(layer="W1", rank=0))  # (width, step)
    widths = [int(w) for w in ds.width.values]
    head["widths"], head["bulk_edge"] = widths, edge
    head["error"], head["missed"] = {}, {}
    for name, var in (("two_level", "singular_values"), ("naive", "naive_singular_values")):
        pred = _theory_on_steps(th, var, ds.step.values, "W1")
        if pred is None:
            head["error"][name] = None
            continue
        p1 = pred.sel(rank=0) if "rank" in pred.dims else pred
        p1 = p1.drop_vars([c for c in p1.coords if c != "step"])
        ds[f"{name}_prediction"] = p1
        filled = p1.fillna(edge)
        head["error"][name] = {w: float(abs(sim.sel(width=w) - filled).max("step")) for w in widths}
        big = sim.sel(width=max(widths))
        head["missed"][name] = int(((big > edge + 0.05) & p1.isnull()).sum())
    head["decay_exponent_two_level"] = (_fit_power(widths, list(head["error"]["two_level"].values()))
                                        if head["error"].get("two_level") else float("nan"))
    head["statuses"] = _statuses(ds)
    return ds, head


# ---------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Study:
    """A study: its runner, its analysis of a store and its figures."""

    name: str
    run: Callable          # keyword arguments -> (Dataset, summary)
    analyze: Callable      # store -> (Dataset, summary)
    grid_keys: tuple       # keyword arguments of ``run`` that a TOML [grid] table may set
    run_one: Callable = simulate_run

    def figures(self, ds, summary, out_dir) -> list[str]:
        from . import plots

        return plots.study_figures(self.name, ds, summary, out_dir)


STUDIES = {
    "width_consistency": Study("width_consistency", width_consistency, analyze_width_consistency,
                               ("widths", "scalings", "seeds", "theory", "match_width")),
    "lr_transfer": Study("lr_transfer", lr_transfer, analyze_lr_transfer, ("eta0s", "widths", "scalings", "seeds")),
    "edge_of_stability": Study("edge_of_stability", edge_of_stability, analyze_edge_of_stability,
                               ("eta0s", "widths", "scalings", "seeds", "catapult_factor")),
    "many_outputs": Study("many_outputs", many_outputs, analyze_many_outputs,
                          ("kappa", "widths", "seeds", "input_ratio", "sample_ratio", "proportional_lr",
                           "outlier_gap")),
    "naive_vs_two_level": Study("naive_vs_two_level", naive_vs_two_level, analyze_naive_vs_two_level,
                                ("widths", "seeds")),
}


def get(name: str) -> Study:
    """The study called ``name`` (ValueError listing the known ones)."""
    try:
        return STUDIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown study {name!r}; known studies: {', '.join(STUDIES)}") from None


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
