"""Edge of stability (claim 3): S(t) = eta lambda_max(K)/P and eta x (Hessian top) against 2 over eta0 and widths."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import parameterization
from .._format import number
from ..config import RunConfig
from ..sweeps import collect
from ._common import Study, listed, seed_mean, statuses, summary_base, sweep_meta, table
from .width_consistency import STUDY as WIDTH_CONSISTENCY


class EdgeOfStability(Study):
    name = "edge_of_stability"
    grid_keys = ("eta0s", "widths", "scalings", "seeds", "catapult_factor")

    def default_base(self) -> RunConfig:
        # the solvable model's shape with tanh (the sharpness of a linear net barely moves); the Hessian
        # (Lanczos on Hessian-vector products) costs ~5 steps, hence every 2nd step
        return WIDTH_CONSISTENCY.default_base().replace(activation="tanh", input_dim=16, samples=32, gamma0=1.0,
                                                        eta0=1.0, steps=100, track_every=2, track_hessian=True,
                                                        bulk_steps=[])

    def run(self, eta0s=(1.0, 2.0, 4.0, 8.0), widths=(64, 128, 256), scalings=("mup",), seeds=(0,), base=None,
            store=None, client=None, workers=None, progress=True, catapult_factor=2.0):
        """S(t) = eta lambda_max(K)/P and eta x (Hessian top) against 2 over eta0 and widths.

        Returns ``(dataset, summary)``; see :func:`analyze_edge_of_stability`.
        """
        base = self.base(base)
        grid = {"scaling": listed("scalings", scalings, str), "width": listed("widths", widths, int),
                "eta0": listed("eta0s", eta0s, float), "seed": listed("seeds", seeds, int)}
        return self.sweep_and_analyze(grid, base, store, client, workers, progress, (catapult_factor,),
                                      catapult_factor=catapult_factor)

    def analyze(self, store, catapult_factor: float | None = None, groups=None):
        """``steady_sharpness(scaling, width, eta0)``: mean of the seed-mean S over the
        last quarter of the run's steps (step >= 0.75 T); NaN where a seed diverged.
        ``width_spread[scaling][eta0]``: max - min of it across widths;
        ``largest_stable_eta0[scaling]``: the largest eta0 with no diverged run;
        ``catapults``: loss spikes (``detect_catapults``) per run, marked in
        ``catapult(scaling, width, eta0, seed, step)``. ``hessian_sharpness`` =
        raw eta x hessian_top (the full-Hessian stability ratio, also against 2)."""
        ds = collect(store, dims=("scaling", "width", "eta0", "seed"), groups=groups)
        meta = sweep_meta(store)
        factor = float(catapult_factor if catapult_factor is not None else meta.get("catapult_factor", 2.0))
        head = summary_base(store, ("scaling", "width", "eta0", "seed"), self.name)
        base = RunConfig.from_json(meta["base"]) if "base" in meta else None
        steps = ds.step.values
        t_end = steps.max()
        late = steps >= 0.75 * t_end
        S = ds.normalized_sharpness.where(ds.status != "diverged")
        steady = seed_mean(S.isel(step=np.flatnonzero(late)).mean("step", skipna=False))
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
        head["statuses"] = statuses(ds)
        return ds, head

    def figures(self, ds, summary, out_dir) -> list[str]:
        from .. import plots

        return [plots.sharpness_trajectories(ds, summary, Path(out_dir) / f"edge_of_stability_{sc}.png",
                                             scaling=str(sc)) for sc in ds.scaling.values]

    def headline(self, summary: dict, console) -> None:
        for sc, per_eta in summary["steady_sharpness"].items():
            widths = sorted({w for d in per_eta.values() for w in d})
            t = table(f"{sc}: steady S (mean over the last quarter) per eta0 and width",
                      right=["eta0"] + [f"N={w}" for w in widths] + ["width spread"])
            for e, per_w in per_eta.items():
                t.add_row(number(e), *[number(per_w[w], 3) for w in widths],
                          number(summary["width_spread"][sc][e], 3))
            console.print(t)
            console.print(f"largest stable eta0 ({sc}): [bold]{number(summary['largest_stable_eta0'][sc])}[/]")
        console.print(f"catapults (loss > {summary['catapult_factor']:g} x running min, then recovers): "
                      f"{len(summary['catapults'])}")


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


STUDY = EdgeOfStability()
