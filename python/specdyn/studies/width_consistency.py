"""Width consistency (claim 1): the outlier trajectories s_k(t) of the hidden layers across widths, per scaling."""
from __future__ import annotations

from pathlib import Path

from .. import parameterization
from .._format import number
from ..config import RunConfig
from ..sweeps import collect
from ._common import Study, fit_power, hidden_layers, listed, seed_mean, statuses, summary_base, table
from .limit import limit_theory, stored_limit, theory_fits, theory_on_steps


class WidthConsistency(Study):
    name = "width_consistency"
    grid_keys = ("widths", "scalings", "seeds", "theory", "match_width")

    def default_base(self) -> RunConfig:
        # the solvable one-bulk model; gamma0 = 8 lets one outlier escape to s ~ 2.8 in ~40 steps at every width
        return RunConfig(depth=2, activation="linear", input_dim=8, output_dim=1, samples=16, sigma=1.0, top_k=4,
                         data_seed=0, scaling="mup", gamma0=8.0, eta0=0.02, steps=80, track_every=4,
                         bulk_steps=[80])

    def run(self, widths=(256, 512, 1024), scalings=("mup", "ntk"), seeds=(0,), base=None, theory=True,
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
        base = self.base(base)
        widths = listed("widths", widths, int)
        seeds = listed("seeds", seeds, int)
        scalings = listed("scalings", scalings, str)
        points = []
        match = min(widths) if match_width is None else int(match_width)
        for sc in scalings:
            gamma0 = base.gamma0
            if sc == "ntk" and match > 0:
                gamma0 = base.gamma0 / parameterization.effective_richness("ntk", match, 1.0)
            points += [{"scaling": sc, "width": n, "seed": s, "gamma0": gamma0} for n in widths for s in seeds]
        return self.sweep_and_analyze(points, base, store, client, workers, progress,
                                      before_analyze=(lambda path: limit_theory(base, path)) if theory else None,
                                      theory=bool(theory), match_width=match)

    def analyze(self, store, groups=None):
        """Collect a width-consistency store; headline from the data.

        ``spread[scaling]`` = max over tracked t of (max - min over widths) of the
        seed-mean s_1(t) of the first hidden layer W1; ``deviation[scaling][N]`` =
        max_t |s_1^N(t) - reference(t)|, the reference being the linear DMFT
        (muP, when stored) or the largest width; ``decay_exponent[scaling]``: p of
        deviation ~ N^-p; ``spread_ratio`` = spread(mup) / spread(ntk).
        """
        ds = collect(store, dims=("scaling", "width", "seed"), groups=groups)
        head = summary_base(store, ("scaling", "width", "seed"), self.name)
        layer = hidden_layers(ds)[0]
        head["layer"] = layer
        s1 = seed_mean(ds.singular_values.sel(layer=layer, rank=0))  # (scaling, width, step)
        theory_s = theory_on_steps(stored_limit(store), "singular_values", ds.step.values, layer)
        if theory_s is not None:
            ds["theory_singular_values"] = theory_s.drop_vars([c for c in theory_s.coords
                                                               if c not in ("step", "rank")])
        head["theory"] = theory_s is not None
        config = RunConfig.from_json(ds.attrs["config"])
        if theory_s is None:
            fits, why = theory_fits(config)
            head["theory_note"] = why if not fits else "not computed for this store (theory=False)"
        widths = [int(w) for w in ds.width.values]
        head["widths"] = widths
        head["spread"], head["deviation"], head["decay_exponent"], head["reference"] = {}, {}, {}, {}
        for sc in [str(s) for s in ds.scaling.values]:
            curves = s1.sel(scaling=sc)  # (width, step)
            head["spread"][sc] = float(_spread(curves))
            if theory_s is not None and sc == "mup":
                # no outlier in the limit: the top singular value sits at the bulk edge
                edge = 2.0 * config.layer_sigma(1)
                ref, ref_name = theory_s.sel(rank=0).fillna(edge), "theory"
                ws = widths
            else:
                ref, ref_name = curves.sel(width=max(widths)), f"N={max(widths)}"
                ws = [w for w in widths if w != max(widths)]
            dev = {w: float(abs(curves.sel(width=w) - ref).max("step")) for w in ws}
            head["deviation"][sc] = dev
            head["reference"][sc] = ref_name
            head["decay_exponent"][sc] = fit_power(list(dev), list(dev.values()))
        # every square hidden layer (W1..W(L-1)): the same spread, per layer
        head["spread_by_layer"] = {
            str(l): {str(sc): float(_spread(seed_mean(ds.singular_values.sel(layer=l, rank=0, scaling=sc))))
                     for sc in ds.scaling.values}
            for l in hidden_layers(ds)}
        if "mup" in head["spread"] and "ntk" in head["spread"] and head["spread"]["ntk"] > 0:
            head["spread_ratio"] = head["spread"]["mup"] / head["spread"]["ntk"]
        head["final_s1"] = {str(sc): {int(w): float(s1.sel(scaling=sc, width=w).isel(step=-1)) for w in widths}
                            for sc in ds.scaling.values}
        head["statuses"] = statuses(ds)
        return ds, head

    def figures(self, ds, summary, out_dir) -> list[str]:
        from .. import plots

        out = Path(out_dir)
        paths = [plots.singular_value_trajectories(ds, summary, out / "width_consistency_s1.png")]
        run = plots.largest_run_with_bulk(ds, "mup")
        if run is not None:
            predicted = None
            if "theory_singular_values" in ds:
                t = int(run.bulk_step.values[-1])
                if t in ds.step.values:
                    predicted = ds.theory_singular_values.sel(step=t).values
            layer = summary.get("layer", "W1")
            paths.append(plots.spectrum_histogram(
                run, out / "width_consistency_spectrum.png", layer=layer, predicted=predicted,
                sigma=RunConfig.from_json(ds.attrs["config"]).layer_sigma(layer),
                title=f"spectrum of {layer}, muP, N = {int(run.width)}, step {int(run.bulk_step.values[-1])}"))
        return paths

    def headline(self, summary: dict, console) -> None:
        t = table(f"spread of s1(t) of {summary.get('layer')} across widths {summary.get('widths')}", ["scaling"],
                  ["spread max_t (max-min over N)", "max_t |s1_N - ref| per N"])
        t.add_column("reference")
        t.add_column("decay exponent p (N^-p)", justify="right")
        for sc, spread in summary["spread"].items():
            dev = ", ".join(f"{w}: {number(v, 3)}" for w, v in summary["deviation"][sc].items())
            t.add_row(sc, number(spread), dev, summary["reference"][sc], number(summary["decay_exponent"][sc], 3))
        console.print(t)
        if "spread_ratio" in summary:
            overlay = "yes" if summary.get("theory") else f"no: {summary.get('theory_note', 'not stored')}"
            console.print(f"spread ratio muP / NTK = [bold]{summary['spread_ratio']:.3f}[/]"
                          f"  (theory overlay: {overlay})")


def _spread(curves):
    """max over steps of (max - min over widths)."""
    return (curves.max("width") - curves.min("width")).max("step")


STUDY = WidthConsistency()
