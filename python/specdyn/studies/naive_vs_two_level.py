"""Naive BBP vs the two-level theory (claim 4): the outliers of W1 predicted by the one-bulk DMFT and by
naive BBP (an independent spike A(t) - A(0)) against muP simulations."""
from __future__ import annotations

from pathlib import Path

from .._format import number
from ..config import RunConfig
from ..sweeps import collect
from ._common import Study, fit_power, listed, seed_mean, statuses, summary_base, sweep_meta, table
from .limit import THEORY_GROUP, limit_theory, stored_limit, theory_fits, theory_on_steps
from .width_consistency import STUDY as WIDTH_CONSISTENCY


class NaiveVsTwoLevel(Study):
    name = "naive_vs_two_level"
    grid_keys = ("widths", "seeds")

    def default_base(self) -> RunConfig:
        # the solvable model of width_consistency, without bulk histograms
        return WIDTH_CONSISTENCY.default_base().replace(bulk_steps=[])

    def run(self, widths=(256, 512), seeds=(0,), base=None, store=None, client=None, workers=None, progress=True):
        """Outliers of W1 predicted by the two-level one-bulk theory and by naive BBP
        (spike = A(t) - A(0) independent of the bulk) against muP simulations.

        Needs the linear DMFT (``theory.one_bulk`` at depth 2, ``theory.deep_linear`` deeper). Returns
        ``(dataset, summary)``; see :func:`analyze_naive_vs_two_level`.
        """
        base = self.base(base).replace(scaling="mup")
        ok, why = theory_fits(base)
        if not ok:
            raise ValueError(f"naive_vs_two_level: {why}")
        grid = {"width": listed("widths", widths, int), "seed": listed("seeds", seeds, int)}

        def theory(path):
            th, note = limit_theory(base, path)
            if th is None:
                raise RuntimeError(f"naive_vs_two_level needs the linear DMFT: {note}")

        return self.sweep_and_analyze(grid, base, store, client, workers, progress, before_analyze=theory)

    def analyze(self, store, groups=None):
        """Errors max_t |s_1^sim(t) - s_1^pred(t)| of both predictions per width (a
        prediction without an outlier counts as the bulk edge 2 sigma); ``missed``:
        tracked steps where the simulation at the largest width has s_1 above the
        edge by > 0.05 and a theory predicts no outlier."""
        from ..rmt import quarter_circle_edge

        ds = collect(store, dims=("width", "seed"), groups=groups)
        head = summary_base(store, ("width", "seed"), self.name)
        th = stored_limit(store)
        if th is None:
            raise ValueError(f"store {store!r} holds no theory group {THEORY_GROUP!r}")
        meta = sweep_meta(store)
        base = RunConfig.from_json(meta["base"] if "base" in meta else th.attrs["source_config"])
        edge = quarter_circle_edge(base.layer_sigma(1))
        sim = seed_mean(ds.singular_values.sel(layer="W1", rank=0))  # (width, step)
        widths = [int(w) for w in ds.width.values]
        head["widths"], head["bulk_edge"] = widths, edge
        head["error"], head["missed"] = {}, {}
        for name, var in (("two_level", "singular_values"), ("naive", "naive_singular_values")):
            pred = theory_on_steps(th, var, ds.step.values, "W1")
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
        head["decay_exponent_two_level"] = (fit_power(widths, list(head["error"]["two_level"].values()))
                                            if head["error"].get("two_level") else float("nan"))
        head["statuses"] = statuses(ds)
        return ds, head

    def figures(self, ds, summary, out_dir) -> list[str]:
        from .. import plots

        return [plots.outlier_predictions(ds, summary, Path(out_dir) / "naive_vs_two_level.png")]

    def headline(self, summary: dict, console) -> None:
        t = table("max_t |s1 sim - s1 predicted| of W1", right=["N", "two-level DMFT", "naive BBP"])
        for w in summary["widths"]:
            two = (summary["error"].get("two_level") or {}).get(w, float("nan"))
            nai = (summary["error"].get("naive") or {}).get(w, float("nan"))
            t.add_row(str(w), number(two, 3), number(nai, 3))
        console.print(t)
        console.print(f"steps where an outlier is missed: {summary['missed']}")


STUDY = NaiveVsTwoLevel()
