"""Many outputs (claim 5): how the change of the hidden matrix W1 goes from a few
isolated outliers to no resolvable outlier as the number of outputs C grows.

Two settings, both in this module (its base configs, grids, analyses and figures):

* ``setting="mup"`` (the default): muP with the loss averaged over the outputs
  (``output_normalization="mean"``), D and P fixed, C swept from 1 to N/2 at a few
  widths. Beside the simulations: the finite-C limit ``theory.one_bulk`` (exact as
  N -> infinity at fixed C, D, P and step count) for C <= ``theory_max_outputs``, and
  the quarter circle as the limit bulk density at every C (the update of W1 has rank at
  most P (steps + 1), fixed as N grows). Headline: the number of resolvable outliers,
  the distance of the top value from the bulk edge and the crossover C / P at which the
  outliers stop being resolvable, from the theory and from the simulation.
* ``setting="ntk"``: the earlier study, C = kappa N, D and P ~ N, gamma = gamma0 with
  the proportional rate; the update of W1 is full rank and the study follows the top
  bulk edge across widths.

Resolvable outlier (docs/theory.md, "Many outputs: the study"): a singular value s of
W1 / sqrt(N) at the last step with s > edge (1 + ``resolve_factor`` N^(-2/3)), edge = 2
sigma_W1 the top of the limit bulk; N^(-2/3) is the Tracy-Widom scale of the top of
the bulk at width N.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import _validate as V
from .. import parameterization, rmt
from .._format import number
from ..config import RunConfig
from ..sweeps import collect
from ._common import Study, hidden_layers, listed, seed_mean, statuses, summary_base, sweep_meta, table

SETTINGS = ("mup", "ntk")
LAYER = "W1"


def _ntk_base() -> RunConfig:
    # gamma = gamma0 (scaling "ntk") with the proportional rate eta0 gamma0^2 N (run multiplies
    # eta0 by N): the one setting where C, D, P ~ N give a full-rank O(1) update of W1 per step.
    # input_dim, output_dim, samples are set per width by the study.
    return RunConfig(depth=2, activation="linear", input_dim=64, output_dim=32, samples=64, scaling="ntk",
                     gamma0=4.0, eta0=0.003, steps=80, track_every=10, top_k=4, track_sharpness=False,
                     bulk_steps=[0, 80], bulk_bins=60)


def output_grid(width: int) -> list[int]:
    """C = 1, 2, 3, 4, 6, 8, 12, .. (powers of two and their midpoints 3 2^k) up to width / 2."""
    top = max(width // 2, 1)
    return sorted({2**k for k in range(32) if 2**k <= top} | {3 * 2**k for k in range(32) if 3 * 2**k <= top})


def resolvable_threshold(width: int, edge: float, resolve_factor: float) -> float:
    """edge (1 + resolve_factor N^(-2/3)): above it a singular value stands out of the top of a
    bulk of width N by more than ``resolve_factor`` times the Tracy-Widom scale."""
    return edge * (1.0 + resolve_factor * float(width) ** (-2.0 / 3.0))


def count_resolvable(values, width: int, edge: float, resolve_factor: float) -> int:
    """How many of ``values`` (singular values; NaN ignored) lie above :func:`resolvable_threshold`."""
    v = np.asarray(values, float)
    return int(np.sum(v[np.isfinite(v)] > resolvable_threshold(width, edge, resolve_factor)))


def top_distance(values, edge: float) -> float:
    """(s_1 - edge) / edge for the largest finite value (NaN when there is none)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return float((v.max() - edge) / edge) if v.size else float("nan")


def crossover(outputs, counts, samples: int) -> dict:
    """The first C of ``outputs`` (ascending) with no resolvable outlier, after the last C that had
    one: ``{"outputs": C, "ratio": C / P, "last_resolved": C'}`` (C' the grid point before it; NaN
    C when every C has an outlier, and when none has one C = the first grid point with
    ``last_resolved`` NaN). ``counts`` may hold NaN (not assessed); those points are skipped."""
    pts = [(int(c), float(n)) for c, n in sorted(zip(outputs, counts)) if np.isfinite(n)]
    if not pts:
        return {"outputs": float("nan"), "ratio": float("nan"), "last_resolved": float("nan")}
    resolved = [c for c, n in pts if n > 0]
    last = max(resolved) if resolved else None
    after = [c for c, n in pts if n == 0 and (last is None or c > last)]
    first = after[0] if after else float("nan")
    return {"outputs": first, "ratio": first / samples if after else float("nan"),
            "last_resolved": float(last) if last is not None else float("nan")}


class ManyOutputs(Study):
    name = "many_outputs"
    grid_keys = ("setting", "outputs", "widths", "seeds", "resolve_factor", "theory_max_outputs", "theory_nodes",
                 "kappa", "input_ratio", "sample_ratio", "proportional_lr", "outlier_gap")

    def default_base(self) -> RunConfig:
        # muP, the loss averaged over the outputs (the normalization with a width limit at any C);
        # D, P fixed so that the finite-C limit (theory.one_bulk) is exact at every fixed C.
        return RunConfig(depth=2, activation="linear", input_dim=8, output_dim=1, samples=32, scaling="mup",
                         output_normalization="mean", gamma0=4.0, eta0=0.1, steps=20, track_every=20, top_k=4,
                         track_sharpness=False, bulk_steps=[20], bulk_bins=60)

    def base_for(self, setting: str, base) -> RunConfig:
        """``base`` over the default of ``setting`` ("mup": :meth:`default_base`, "ntk": the earlier study's)."""
        V.choice("setting", setting, SETTINGS)
        if setting == "mup":
            return self.base(base)
        if base is None or isinstance(base, RunConfig):
            return _ntk_base() if base is None else base
        if isinstance(base, dict):
            return _ntk_base().replace(**base)
        raise ValueError(f"base must be a RunConfig, a dict of RunConfig fields or None; got {type(base).__name__}")

    def run(self, setting="mup", outputs=None, widths=(128, 256, 512), seeds=(0, 1, 2), base=None,
            resolve_factor=1.0, theory_max_outputs=64, theory_nodes=96, kappa=0.5, input_ratio=1.0, sample_ratio=1.0,
            proportional_lr=True, outlier_gap=0.1, store=None, client=None, workers=None, progress=True):
        """Sweep the number of outputs C (``setting="mup"``, the default) or run the earlier
        proportional NTK study (``setting="ntk"``, see :meth:`run_ntk`).

        ``setting="mup"``: every width N of ``widths`` runs C in ``outputs`` (default
        :func:`output_grid`: 1, 2, 3, 4, 6, 8, 12, .., N/2) with D = ``base.input_dim`` and P = ``base.samples`` fixed,
        ``seeds`` per point. ``theory_max_outputs``: the largest C given the finite-C limit
        (``theory.one_bulk``, cost O(T^2 C^2 M (C + D)) with M = ``theory_nodes``); 0 runs none.
        ``resolve_factor``: r of the resolvable threshold edge (1 + r N^(-2/3)).
        Returns ``(dataset, summary)``; see :meth:`analyze`.
        """
        V.choice("setting", setting, SETTINGS)
        if setting == "ntk":
            return self.run_ntk(kappa=kappa, widths=widths, seeds=seeds, base=base, input_ratio=input_ratio,
                                sample_ratio=sample_ratio, proportional_lr=proportional_lr, store=store,
                                client=client, workers=workers, progress=progress, outlier_gap=outlier_gap)
        resolve_factor = V.real("resolve_factor", resolve_factor, 0.0)
        theory_max_outputs = V.integer("theory_max_outputs", theory_max_outputs, 0, 64)
        theory_nodes = V.integer("theory_nodes", theory_nodes, 8, 4096)
        base = self.base_for("mup", base)
        if base.depth != 2 or base.activation != "linear":
            raise ValueError(f"many_outputs (setting 'mup') needs base depth 2 and activation 'linear' (the model of "
                             f"its theory); got depth {base.depth}, activation {base.activation!r}")
        ws = listed("widths", widths, int)
        if outputs is not None:
            cs = sorted(set(listed("outputs", outputs, int)))
            if cs[0] < 1:
                raise ValueError(f"outputs must be >= 1; got {cs[0]}")
        points = []
        for n in ws:
            grid_c = cs if outputs is not None else output_grid(n)
            for c in grid_c:
                if c > n:
                    raise ValueError(f"outputs must be <= width; got C = {c} at N = {n}")
                for s in listed("seeds", seeds, int):
                    # top values tracked: enough to count C outliers and see the bulk below them
                    points.append({**base.to_dict(), "width": n, "seed": s, "output_dim": c,
                                   "top_k": min(c + 3, 20, n), "track_every": base.steps,
                                   "bulk_steps": [base.steps]})
        theory_cs = sorted({p["output_dim"] for p in points if p["output_dim"] <= theory_max_outputs})
        return self.sweep_and_analyze(points, base, store, client, workers, progress, (resolve_factor,),
                                      before_analyze=lambda path: _store_theory(path, base, theory_cs, theory_nodes),
                                      setting="mup", resolve_factor=resolve_factor,
                                      theory_max_outputs=theory_max_outputs, theory_nodes=theory_nodes)

    def analyze(self, store, resolve_factor: float | None = None, groups=None):
        """``setting="mup"`` stores (the ntk ones go to :meth:`analyze_ntk`). Per (width, output_dim):

        * ``outlier_count``: seed-mean number of resolvable outliers of W1 at the last step
          (values above edge (1 + r N^(-2/3)), edge = 2 sigma_W1), and ``outlier_count_capped``
          where a seed had every tracked value above it (the count is then a lower bound);
        * ``top_distance``: seed-mean (s_1 - edge) / edge;
        * theory (C <= theory_max_outputs): ``theory_outlier_count`` (the limit's outliers above the
          same threshold at that N), ``theory_outlier_count_limit`` (all the limit's outliers) and
          ``theory_top_distance`` (0 when the limit has no outlier);
        * ``crossover``: per width, the first C with no resolvable outlier in a majority of seeds
          (simulation) and in the limit (theory at that N's threshold, and as N -> infinity), as C
          and C / P; ``crossover_limit``: the limit's crossover with C refined to single outputs
          between the grid points that bracket it; ``theory_failures``: the C whose limit failed, with the error (reported, never
          replaced by a value).
        """
        meta = sweep_meta(store)
        if meta.get("setting", "ntk") == "ntk":
            return self.analyze_ntk(store, groups=groups)
        r = float(resolve_factor if resolve_factor is not None else meta.get("resolve_factor", 1.0))
        ds = _last_step_runs(store, groups)
        head = summary_base(store, ("width", "output_dim", "seed"), self.name)
        cfg = RunConfig.from_json(ds.attrs["config"])
        edge = rmt.quarter_circle_edge(cfg.layer_sigma(LAYER))
        widths = [int(w) for w in ds.width.values]
        head.update(setting="mup", layer=LAYER, widths=widths, resolve_factor=r, bulk_edge=edge,
                    samples=cfg.samples, input_dim=cfg.input_dim, scaling=cfg.scaling,
                    output_normalization=cfg.output_normalization)
        sv = ds.singular_values  # (width, output_dim, seed, rank) at the last step
        theory = _load_theory(store)
        head["theory_failures"] = theory["failures"]
        head["theory_outputs"] = sorted(theory["values"])
        count, capped, dist, ran = {}, {}, {}, {}
        th_count, th_limit, th_dist = {}, {}, {}
        for w in widths:
            for c in (int(c) for c in ds.output_dim.values):
                per_seed = sv.sel(width=w, output_dim=c)
                runs = [per_seed.sel(seed=s).values for s in per_seed.seed.values]
                runs = [v[np.isfinite(v)] for v in runs if np.isfinite(v).any()]
                if not runs:
                    continue  # C not in this width's grid
                key = (w, c)
                n = [count_resolvable(v, w, edge, r) for v in runs]
                count[key] = float(np.mean(n))
                ran[key] = n
                capped[key] = bool(any(k == v.size for k, v in zip(n, runs)))
                dist[key] = float(np.mean([top_distance(v, edge) for v in runs]))
                if c in theory["values"]:
                    vals = theory["values"][c]
                    th_count[key] = float(count_resolvable(vals, w, edge, r))
                    th_limit[key] = float(np.sum(np.isfinite(vals)))
                    th_dist[key] = max(top_distance(vals, edge), 0.0) if np.isfinite(vals).any() else 0.0
        head.update(outlier_count=count, outlier_count_capped=capped, outlier_count_per_seed=ran, top_distance=dist,
                    theory_outlier_count=th_count, theory_outlier_count_limit=th_limit, theory_top_distance=th_dist)
        cross = {}
        for w in widths:
            cs = sorted(c for (ww, c) in count if ww == w)
            sim_resolved = [float(np.sum(np.array(ran[(w, c)]) > 0) > len(ran[(w, c)]) / 2) for c in cs]
            th_cs = [c for c in cs if (w, c) in th_count]
            cross[w] = {"simulation": crossover(cs, sim_resolved, cfg.samples),
                        "theory": _theory_crossover(th_cs, [th_count[(w, c)] for c in th_cs], cs, cfg.samples),
                        "theory_limit": _theory_crossover(th_cs, [th_limit[(w, c)] for c in th_cs], cs,
                                                          cfg.samples)}
        head["crossover"] = cross
        solved = sorted(theory["values"])
        # over every C the limit was solved at (the grid, refined to single outputs around its crossover)
        head["crossover_limit"] = _theory_crossover(
            solved, [float(np.isfinite(theory["values"][c]).any()) for c in solved],
            [c for (_, c) in count] or solved, cfg.samples)
        for name, values in (("outlier_count", count), ("top_distance", dist), ("theory_outlier_count", th_count),
                             ("theory_top_distance", th_dist)):
            arr = np.full((len(widths), ds.output_dim.size), np.nan)
            for (w, c), v in values.items():
                arr[widths.index(w), list(ds.output_dim.values).index(c)] = v
            ds[name] = (("width", "output_dim"), arr)
        head["statuses"] = statuses(ds)
        return ds, head

    def figures(self, ds, summary, out_dir) -> list[str]:
        from .. import plots

        if summary.get("setting", "ntk") == "ntk":
            return self.figures_ntk(ds, summary, out_dir)
        return [plots.many_outputs_panels(ds, summary, Path(out_dir) / "many_outputs.png")]

    def headline(self, summary: dict, console) -> None:
        if summary.get("setting", "ntk") == "ntk":
            return self.headline_ntk(summary, console)
        t = table(f"many outputs under {summary['scaling']} ({summary['output_normalization']} over outputs), "
                  f"D = {summary['input_dim']}, P = {summary['samples']}: outliers of {summary['layer']}",
                  right=["N", "C", "C/P", "outliers (sim)", "outliers (theory)", "(s1-edge)/edge sim",
                         "(s1-edge)/edge theory"])
        for (w, c), n in sorted(summary["outlier_count"].items()):
            th = summary["theory_outlier_count"].get((w, c))
            td = summary["theory_top_distance"].get((w, c))
            t.add_row(str(w), str(c), number(c / summary["samples"], 3),
                      number(n, 3) + ("+" if summary["outlier_count_capped"][(w, c)] else ""),
                      "-" if th is None else number(th, 3), number(summary["top_distance"][(w, c)], 3),
                      "-" if td is None else number(td, 3))
        console.print(t)
        console.print(f"resolvable: s > edge (1 + {number(summary['resolve_factor'], 3)} N^-2/3), edge = "
                      f"{number(summary['bulk_edge'])}; theory: finite-C limit (one_bulk) for C in "
                      f"{summary['theory_outputs']}")
        c = table("crossover: first C with no resolvable outlier", right=["N", "simulation C/P", "theory C/P",
                                                                        "theory C/P (N -> inf)"])
        for w, x in summary["crossover"].items():
            c.add_row(str(w), *(_crossover_text(x[k]) for k in ("simulation", "theory", "theory_limit")))
        console.print(c)
        console.print(f"finite-C limit, refined to single C: {_crossover_text(summary['crossover_limit'])} "
                      f"(last outlier at C = {summary['crossover_limit']['last_resolved']:g})")
        for oc, msg in summary["theory_failures"].items():
            console.print(f"[red]theory failed at C = {oc}: {msg}[/]")

    def run_ntk(self, kappa=0.5, widths=(64, 128, 256, 512), seeds=(0, 1), base=None, input_ratio=1.0,
            sample_ratio=1.0, proportional_lr=True, store=None, client=None, workers=None, progress=True,
            outlier_gap=0.1):
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
        kappa = V.real("kappa", kappa, 0.0, None, lo_open=True)
        input_ratio = V.real("input_ratio", input_ratio, 0.0, None, lo_open=True)
        sample_ratio = V.real("sample_ratio", sample_ratio, 0.0, None, lo_open=True)
        if not isinstance(proportional_lr, (bool, np.bool_)):
            raise ValueError(f"proportional_lr must be true or false; got {proportional_lr!r}")
        base = self.base_for("ntk", base)
        if proportional_lr and base.scaling != "ntk":
            raise ValueError(f"proportional_lr needs base scaling 'ntk' (gamma = gamma0); got {base.scaling!r} "
                             "(pass proportional_lr=False to run eta0 as is)")
        points = []
        for n in listed("widths", widths, int):
            eta0 = parameterization.proportional_run_eta0(n, base.eta0) if proportional_lr else base.eta0
            for s in listed("seeds", seeds, int):
                points.append({**base.to_dict(), "width": n, "seed": s, "output_dim": max(1, round(kappa * n)),
                               "input_dim": max(1, round(input_ratio * n)),
                               "samples": max(1, round(sample_ratio * n)), "eta0": eta0})
        return self.sweep_and_analyze(points, base, store, client, workers, progress, (), setting="ntk", kappa=kappa,
                                      outlier_gap=outlier_gap, proportional_lr=bool(proportional_lr))

    def analyze_ntk(self, store, outlier_gap: float | None = None, groups=None):
        """``edge(N)``: seed-mean top singular value of W1 at the last step (without an
        outlier, the top of the bulk); ``relative_gap(N)`` = (s_1 - s_2) / s_1 there,
        ``isolated_outlier`` when it exceeds ``outlier_gap``; ``edge_fit``: edge(N) =
        edge_inf + a N^-rate (rate fitted with >= 3 widths), ``edge_fit_two_thirds``
        the same with the rate fixed at 2/3; ``edge_difference[N_i]``
        = |edge(N_i) - edge(N_{i-1})| over successive widths; ``loss_per_output(N)``:
        seed-mean final loss / C (the loss sums over the C outputs)."""
        ds = collect(store, dims=("width", "seed"), groups=groups)
        meta = sweep_meta(store)
        gap_limit = float(outlier_gap if outlier_gap is not None else meta.get("outlier_gap", 0.1))
        head = summary_base(store, ("width", "seed"), self.name)
        layer = hidden_layers(ds)[0]
        head["layer"] = layer
        sv = seed_mean(ds.singular_values.sel(layer=layer).isel(step=-1))  # (width, rank)
        s0 = seed_mean(ds.singular_values.sel(layer=layer).isel(step=0))
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
            final = seed_mean(ds.loss.isel(step=-1))
            head["loss_per_output"] = {w: float(final.sel(width=w)) / max(1, round(kappa * w)) for w in widths}
        head["kappa"] = meta.get("kappa")
        head["statuses"] = statuses(ds)
        return ds, head

    def figures_ntk(self, ds, summary, out_dir) -> list[str]:
        from .. import plots

        out = Path(out_dir)
        paths = [plots.bulk_edge_vs_width(ds, summary, out / "many_outputs_edge_vs_N.png")]
        run = plots.largest_run_with_bulk(ds, None)
        if run is not None:
            layer = summary.get("layer", "W1")
            paths.append(plots.spectrum_histogram(
                run, out / "many_outputs_spectrum.png", layer=layer,
                sigma=RunConfig.from_json(ds.attrs["config"]).layer_sigma(layer),
                title=f"spectrum of {layer}, N = {int(run.width)}, C = {summary.get('kappa')} N, "
                      f"step {int(run.bulk_step.values[-1])}"))
        return paths

    def headline_ntk(self, summary: dict, console) -> None:
        t = table(f"many outputs, kappa = {summary.get('kappa')}: top of the bulk of {summary.get('layer')}",
                  right=["N", "edge at t=0", "edge after training", "(s1-s2)/s1"])
        for w in summary["widths"]:
            t.add_row(str(w), number(summary["initial_edge"][w]), number(summary["edge"][w]),
                      number(summary["relative_gap"][w], 3))
        console.print(t)
        fit = summary["edge_fit"]
        console.print(f"isolated outlier: [bold]{summary['isolated_outlier']}[/]; edge(N) = {number(fit['edge_inf'])} "
                      f"+ {number(fit['amplitude'], 3)} N^-{number(fit['rate'], 3)}"
                      f"{'' if fit['rate_fitted'] else ' (rate fixed)'}")
        if fit.get("rate_fit_failure"):
            console.print(f"[yellow]{fit['rate_fit_failure']}[/]")
        two = summary.get("edge_fit_two_thirds")
        if two:
            console.print(f"at rate 2/3: edge(N) = {number(two['edge_inf'])} + {number(two['amplitude'], 3)} N^-2/3")



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



THEORY_GROUP = "theory/one_bulk_outputs"


def _last_step_runs(store, groups=None):
    """The runs of a ``setting="mup"`` store at their last step, on dims (width, output_dim, seed): the top
    singular values of W1 (rank padded with NaN: C sets top_k), its bulk histogram (``bulk_counts``,
    ``bulk_edges`` over ``bin``/``bin_edge``) and ``status``; attrs ``config``: the first run's config.
    (The runs' other variables differ in shape with C, so ``collect`` does not join them.)"""
    import xarray as xr

    from .. import storage
    from ..sweeps import run_groups

    groups = run_groups(store) if groups is None else list(groups)
    if not groups:
        raise ValueError(f"store {str(store)!r} holds no complete runs")
    runs, first = {}, None
    for g in groups:
        d = storage.load(store, g)
        cfg = RunConfig.from_json(d.attrs["config"])
        first = first or d.attrs["config"]
        runs[(cfg.width, cfg.output_dim, cfg.seed)] = d
    ws, cs, ss = (sorted({k[i] for k in runs}) for i in range(3))
    k = max(d.sizes["rank"] for d in runs.values())
    nb = max(d.bulk_counts.sizes["bin"] for d in runs.values())
    sv = np.full((len(ws), len(cs), len(ss), k), np.nan)
    counts = np.full((len(ws), len(cs), len(ss), nb), np.nan)
    edges = np.full((len(ws), len(cs), len(ss), nb + 1), np.nan)
    status = np.full((len(ws), len(cs), len(ss)), "", dtype=object)
    for (w, c, s), d in runs.items():
        i = (ws.index(w), cs.index(c), ss.index(s))
        v = d.singular_values.sel(layer=LAYER).isel(step=-1).values
        sv[i][: v.size] = v
        b = d.bulk_counts.sel(layer=LAYER).isel(bulk_step=-1).values
        counts[i][: b.size] = b
        edges[i][: b.size + 1] = d.bulk_edges.sel(layer=LAYER).isel(bulk_step=-1).values
        status[i] = d.attrs.get("status", "ok")
    dims = ("width", "output_dim", "seed")
    return xr.Dataset({"singular_values": (dims + ("rank",), sv), "bulk_counts": (dims + ("bin",), counts),
                       "bulk_edges": (dims + ("bin_edge",), edges), "status": (dims, status.astype(str))},
                      coords={"width": ws, "output_dim": cs, "seed": ss, "rank": np.arange(k)},
                      attrs={"config": first})


def _store_theory(store, base: RunConfig, outputs, nodes: int) -> None:
    """The finite-C limit (``theory.one_bulk``) at the last step for each C of ``outputs``, then for every
    integer C between the last grid C where the limit has an outlier and the next grid C where it has
    none (the crossover of the limit to one output): its outliers of W1 (NaN: none) into the store's
    group ``THEORY_GROUP``, and the C whose limit failed with the error (a failed or diverged limit is
    recorded, never replaced by 'no outlier')."""
    import json

    import xarray as xr

    from .. import storage
    from ..theory import one_bulk

    solved, failures = {}, {}

    def solve(c):
        config = base.replace(output_dim=c, top_k=min(c + 3, 20))
        try:
            th = one_bulk(config, nodes=nodes, steps=[base.steps])
        except (ValueError, RuntimeError, MemoryError) as exc:  # recorded and shown; no value stands in
            failures[int(c)] = f"{type(exc).__name__}: {exc}"
            return
        if th.attrs["status"] != "ok":
            failures[int(c)] = f"the limit diverged at step {th.attrs['diverged_step']}"
            return
        solved[int(c)] = th.singular_values.sel(layer=LAYER).isel(step=-1).values

    for c in outputs:
        solve(c)
    crossing = crossover(sorted(solved), [float(np.isfinite(solved[c]).any()) for c in sorted(solved)], 1)
    if np.isfinite(crossing["outputs"]) and np.isfinite(crossing["last_resolved"]):
        for c in range(int(crossing["last_resolved"]) + 1, int(crossing["outputs"])):
            solve(c)
    cs = sorted(set(solved) | set(failures))
    k = min(max(cs, default=1) + 3, 20)
    values = np.full((len(cs), k), np.nan)
    for i, c in enumerate(cs):
        if c in solved:
            values[i, : solved[c].size] = solved[c]
    ds = xr.Dataset({"singular_values": (("output_dim", "rank"), values)},
                    coords={"output_dim": np.asarray(cs, dtype=np.int64), "rank": np.arange(k)},
                    attrs={"failures": json.dumps(failures), "nodes": int(nodes)})
    storage.save(ds, store, THEORY_GROUP)


def _load_theory(store) -> dict:
    """``{"values": {C: outlier values}, "failures": {C: message}}`` of the store's theory group."""
    import json

    from .. import storage

    if not storage.is_complete(store, THEORY_GROUP):
        return {"values": {}, "failures": {}}
    th = storage.load(store, THEORY_GROUP)
    failures = {int(c): m for c, m in json.loads(th.attrs["failures"]).items()}
    values = {int(c): th.singular_values.sel(output_dim=c).values for c in th.output_dim.values
              if int(c) not in failures}
    return {"values": values, "failures": failures}


def _theory_crossover(theory_outputs, counts, grid_outputs, samples: int) -> dict:
    """:func:`crossover` over the C the theory covers; when the theory still has an outlier at its largest
    C and the grid goes further, the crossover lies above it: ``above`` = that C (``outputs`` NaN)."""
    x = crossover(theory_outputs, counts, samples)
    if theory_outputs and not np.isfinite(x["outputs"]) and max(grid_outputs) > max(theory_outputs):
        x["above"] = int(max(theory_outputs))
    return x


def _crossover_text(x: dict) -> str:
    if np.isfinite(x["outputs"]):
        return f"{number(x['ratio'], 3)} (C = {int(x['outputs'])})"
    if "above" in x:
        return f"> {x['above']} (beyond the theory's C)"
    return "none in the grid" if np.isfinite(x["last_resolved"]) else "-"


STUDY = ManyOutputs()
