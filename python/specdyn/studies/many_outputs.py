"""Many outputs (claim 5): C = kappa N outputs, D and P ~ N; the update of W1 is full rank, the bulk
deforms and no isolated outlier escapes. Everything this study decides (its base config, its grid,
its rate, its fit of the bulk edge) lives in this module."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import _validate as V
from .. import parameterization
from .._format import number
from ..config import RunConfig
from ..sweeps import collect
from ._common import Study, hidden_layers, listed, seed_mean, statuses, summary_base, sweep_meta, table


class ManyOutputs(Study):
    name = "many_outputs"
    grid_keys = ("kappa", "widths", "seeds", "input_ratio", "sample_ratio", "proportional_lr", "outlier_gap")

    def default_base(self) -> RunConfig:
        # gamma = gamma0 (scaling "ntk") with the proportional rate eta0 gamma0^2 N (run multiplies
        # eta0 by N): the one setting where C, D, P ~ N give a full-rank O(1) update of W1 per step (see
        # run). input_dim, output_dim, samples are set per width by the study.
        return RunConfig(depth=2, activation="linear", input_dim=64, output_dim=32, samples=64, scaling="ntk",
                         gamma0=4.0, eta0=0.003, steps=80, track_every=10, top_k=4, track_sharpness=False,
                         bulk_steps=[0, 80], bulk_bins=60)

    def run(self, kappa=0.5, widths=(64, 128, 256, 512), seeds=(0, 1), base=None, input_ratio=1.0,
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
        base = self.base(base)
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
        return self.sweep_and_analyze(points, base, store, client, workers, progress, (outlier_gap,), kappa=kappa,
                                      outlier_gap=outlier_gap, proportional_lr=bool(proportional_lr))

    def analyze(self, store, outlier_gap: float | None = None, groups=None):
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

    def figures(self, ds, summary, out_dir) -> list[str]:
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

    def headline(self, summary: dict, console) -> None:
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


STUDY = ManyOutputs()
