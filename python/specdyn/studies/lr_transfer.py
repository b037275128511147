"""Learning-rate transfer (claim 2): the loss after a fixed number of steps against eta0, per width and scaling."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .._format import number
from ..config import RunConfig
from ..sweeps import collect
from ._common import Study, listed, statuses, summary_base, table

LR_TRANSFER_ETA0S = tuple(2.0 ** k for k in range(-6, 7))


class LrTransfer(Study):
    name = "lr_transfer"
    grid_keys = ("eta0s", "widths", "scalings", "seeds")

    def default_base(self) -> RunConfig:
        # depth 3 tanh, D = 16, P = 64, 30 steps: every scaling's loss-vs-eta0 curve has an interior minimum
        # on the 2^-6 .. 2^6 grid (the solvable model's NTK optimum sat at the top of any grid)
        return RunConfig(depth=3, activation="tanh", input_dim=16, output_dim=1, samples=64, sigma=1.0, top_k=4,
                         data_seed=0, scaling="mup", gamma0=1.0, eta0=0.1, steps=30, track_every=30,
                         track_sharpness=False)

    def run(self, eta0s=LR_TRANSFER_ETA0S, widths=(128, 256, 512, 1024), scalings=("mup", "ntk", "sp"),
            seeds=(0,), base=None, store=None, client=None, workers=None, progress=True):
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
        base = self.base(base)
        grid = {"scaling": listed("scalings", scalings, str), "width": listed("widths", widths, int),
                "eta0": listed("eta0s", eta0s, float), "seed": listed("seeds", seeds, int)}
        return self.sweep_and_analyze(grid, base, store, client, workers, progress)

    def analyze(self, store, groups=None):
        """``final_loss(scaling, width, eta0)``: seed-mean loss at the last step (inf if
        any seed diverged); ``optimal_eta0[scaling][N]`` its argmin over eta0 (NaN when
        every run diverged), ``optimum_bound[scaling][N]`` "<= x" / ">= x" when that argmin
        sits at an end of the grid (None inside it); ``drift_log2[scaling]`` = log2(max/min)
        of the optimal eta0 across widths when every optimum is inside the grid, else NaN
        with ``drift_bound[scaling]`` (min, max) and the reason in ``drift_note[scaling]``."""
        ds = collect(store, dims=("scaling", "width", "eta0", "seed"), groups=groups)
        head = summary_base(store, ("scaling", "width", "eta0", "seed"), self.name)
        last = ds.loss.isel(step=-1)
        last = last.where(np.isfinite(last) & (ds.status != "diverged"), np.inf)
        final = last.mean("seed")
        ds["final_loss"] = final
        head.update(lr_transfer_headline(final))
        head["statuses"] = statuses(ds)
        return ds, head

    def figures(self, ds, summary, out_dir) -> list[str]:
        from .. import plots

        return [plots.loss_vs_eta0(ds, summary, Path(out_dir) / "lr_transfer_loss_vs_eta0.png")]

    def headline(self, summary: dict, console) -> None:
        widths = sorted({w for d in summary["optimal_eta0"].values() for w in d})
        t = table("optimal eta0 (argmin of the final loss) per width", ["scaling"],
                  [f"N={w}" for w in widths] + ["drift (log2)"])
        bounds = summary.get("optimum_bound", {})
        for sc, opt in summary["optimal_eta0"].items():
            cells = [(bounds.get(sc) or {}).get(w) or number(opt.get(w, float("nan"))) for w in widths]
            t.add_row(sc, *cells, _drift_cell(summary, sc))
        console.print(t)
        for sc, note in summary.get("drift_note", {}).items():
            if note:
                console.print(f"{sc}: {note}", highlight=False)


def _drift_cell(summary: dict, sc: str) -> str:
    """The drift of the optimal eta0: its value, a bound when an optimum is off the grid, or undefined."""
    drift = summary["drift_log2"][sc]
    if math.isfinite(drift):
        return number(drift, 3)
    lo, hi = (summary.get("drift_bound") or {}).get(sc, (float("nan"), float("nan")))
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{number(lo, 3)} .. {number(hi, 3)}"
    if math.isfinite(lo):
        return f">= {number(lo, 3)}"
    return "undefined"


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


STUDY = LrTransfer()
