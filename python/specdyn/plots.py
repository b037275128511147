"""Figures of the studies (matplotlib, Agg backend: no display needed).

Each function takes the ``(dataset, summary)`` of a study (or one run) and a
path, writes one PNG and returns its path. Axes carry units; legends label
widths; theory curves are dashed. The figures of a study are drawn by its
study object (``specdyn.studies.get(name).figures``).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

_DPI = 130


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "cairo"):
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    _plt().close(fig)
    return str(path)


def _width_colors(widths):
    plt = _plt()
    cmap = plt.get_cmap("viridis")
    n = max(len(widths) - 1, 1)
    return {int(w): cmap(0.85 * i / n) for i, w in enumerate(sorted(int(w) for w in widths))}


def _seed_mean(da):
    return da.mean("seed") if "seed" in da.dims else da


def _title(scaling: str) -> str:
    return {"mup": "muP (mean field)", "ntk": "NTK", "sp": "SP"}.get(scaling, scaling)


# ---------------------------------------------------------------------------------
# s_k(t) across widths
# ---------------------------------------------------------------------------------
def singular_value_trajectories(ds, summary, path, layer=None, ranks=(0,)):
    """s_k(t) of a hidden layer, one panel per scaling, one line per width (seed mean,
    band = seed min..max), the one-bulk theory dashed."""
    plt = _plt()
    layer = layer or summary.get("layer", "W1")
    scalings = [str(s) for s in ds.scaling.values] if "scaling" in ds.dims else [None]
    colors = _width_colors(ds.width.values)
    fig, axes = plt.subplots(1, len(scalings), figsize=(5.2 * len(scalings), 4.0), sharey=True, squeeze=False)
    steps = ds.step.values
    for ax, sc in zip(axes[0], scalings):
        sub = ds if sc is None else ds.sel(scaling=sc)
        for w in sub.width.values:
            for k in ranks:
                da = sub.singular_values.sel(width=w, layer=layer, rank=k)
                mean = _seed_mean(da).values
                ax.plot(steps, mean, color=colors[int(w)], lw=1.6,
                        label=f"N = {int(w)}" if k == ranks[0] else None)
                if "seed" in da.dims and da.sizes["seed"] > 1:
                    ax.fill_between(steps, da.min("seed").values, da.max("seed").values, color=colors[int(w)],
                                    alpha=0.2, lw=0)
        if "theory_singular_values" in ds and sc in (None, "mup"):
            for k in ranks:
                th = ds.theory_singular_values.sel(rank=k).values
                ax.plot(steps, th, "k--", lw=1.6, zorder=5,
                        label="one-bulk theory (N = inf)" if k == ranks[0] else None)
        ax.axhline(2.0 * _sigma(ds, layer), color="0.6", lw=0.8, ls=":", label="bulk edge 2 sigma")
        if sc is not None:
            spread = summary.get("spread", {}).get(sc)
            extra = f", spread of s1 = {spread:.3f}" if spread is not None else ""
            ax.set_title(f"{_title(sc)}{extra}")
        ax.set_xlabel("training step t (GD steps)")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
    ranks_txt = ", ".join(f"s{k + 1}" for k in ranks)
    axes[0][0].set_ylabel(f"top singular value {ranks_txt} of {layer}/sqrt(N)")
    return _save(fig, path)


def _sigma(ds, layer) -> float:
    """sigma of ``layer`` in the config the runs carry (1 without one)."""
    from .config import RunConfig

    cfg = ds.attrs.get("config")
    return RunConfig.from_json(cfg).layer_sigma(layer) if cfg else 1.0


# ---------------------------------------------------------------------------------
# spectrum histogram with theory density and outliers
# ---------------------------------------------------------------------------------
def spectrum_histogram(run, path, layer="W1", bulk_step=-1, predicted=None, sigma=1.0, title=None):
    """Histogram of all singular values of one layer's normalized matrix at a bulk
    step of one run (``bulk_counts``/``bulk_edges``), with the initial bulk density
    (quarter circle for square layers, Marchenko-Pastur otherwise), the run's top-k
    singular values (ticks) and ``predicted`` outlier positions (dashed lines)."""
    from . import rmt

    plt = _plt()
    if "bulk_counts" not in run:
        raise ValueError("the run has no bulk histogram; set bulk_steps in its config")
    bstep = run.bulk_step.values[bulk_step] if isinstance(bulk_step, int) and bulk_step < 0 else bulk_step
    counts = run.bulk_counts.sel(bulk_step=bstep, layer=layer).values.astype(float)
    edges = run.bulk_edges.sel(bulk_step=bstep, layer=layer).values
    widths = np.diff(edges)
    density = counts / max(counts.sum(), 1.0) / widths
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    ax.bar(edges[:-1], density, width=widths, align="edge", color="C0", alpha=0.55,
           label=f"simulation, step {int(bstep)}")
    s = np.linspace(0, edges[-1] * 1.05, 600)
    import json

    cfg = json.loads(run.attrs.get("config", "{}"))
    shapes = None
    if cfg:
        from .parameterization import layer_shapes

        shapes = layer_shapes(cfg["width"], cfg["depth"], cfg["input_dim"], cfg["output_dim"])
    l = int(str(layer)[1:])
    if shapes is None or shapes[l][0] == shapes[l][1]:
        ax.plot(s, rmt.quarter_circle_density(s, sigma), "k--", lw=1.4, label="quarter circle (initial bulk)")
    else:
        n, m = shapes[l]
        ratio = n / m
        ax.plot(s, 2 * s * rmt.marchenko_pastur_density(s ** 2, ratio, sigma), "k--", lw=1.4,
                label=f"Marchenko-Pastur, ratio {ratio:.2g}")
    if "singular_values" in run and bstep in run.step.values:
        top = run.singular_values.sel(step=bstep, layer=layer).values
        top = top[np.isfinite(top)]
        ax.plot(top, np.zeros_like(top), "v", color="C3", ms=8, clip_on=False, label="top-k (Lanczos)")
    for i, p in enumerate(np.atleast_1d(predicted) if predicted is not None else []):
        if np.isfinite(p):
            ax.axvline(p, color="C1", ls="--", lw=1.4, label="predicted outlier (theory)" if i == 0 else None)
    ax.set_xlabel(f"singular value s of {layer}/sqrt(fan_in)")
    ax.set_ylabel("density of singular values (1/unit s)")
    ax.set_title(title or f"spectrum of {layer}, N = {cfg.get('width', '?')}, step {int(bstep)}")
    ax.set_yscale("symlog", linthresh=0.05)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------------------------
# loss vs eta0
# ---------------------------------------------------------------------------------
def loss_vs_eta0(ds, summary, path):
    """Final loss against eta0 (log-log), one panel per scaling, one line per width,
    the optimum of each width marked with a star; diverged runs are left out."""
    plt = _plt()
    scalings = [str(s) for s in ds.scaling.values]
    colors = _width_colors(ds.width.values)
    fig, axes = plt.subplots(1, len(scalings), figsize=(5.2 * len(scalings), 4.0), sharey=True, squeeze=False)
    final = ds.final_loss if "final_loss" in ds else _seed_mean(ds.loss.isel(step=-1))
    for ax, sc in zip(axes[0], scalings):
        for w in ds.width.values:
            y = final.sel(scaling=sc, width=w).values
            ok = np.isfinite(y)
            ax.plot(ds.eta0.values[ok], y[ok], "o-", color=colors[int(w)], ms=4, label=f"N = {int(w)}")
            opt = summary.get("optimal_eta0", {}).get(sc, {}).get(int(w))
            if opt is not None and np.isfinite(opt):
                ax.plot([opt], [float(final.sel(scaling=sc, width=w, eta0=opt))], "*", color=colors[int(w)],
                        ms=15, mec="k")
        drift = summary.get("drift_log2", {}).get(sc)
        ax.set_title(f"{_title(sc)}" + (f", drift of optimum = {drift:.2f} (log2)" if drift is not None else ""))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width-free learning rate eta0")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    steps = int(ds.step.values.max())
    axes[0][0].set_ylabel(f"training loss after {steps} steps (MSE/2)")
    return _save(fig, path)


# ---------------------------------------------------------------------------------
# S(t) against 2
# ---------------------------------------------------------------------------------
def sharpness_trajectories(ds, summary, path, scaling=None):
    """Normalized sharpness S(t) = eta lambda_max(K)/P (solid) and eta x Hessian top
    (dotted) against the edge of stability 2, one column per eta0, lines per width;
    the loss below with catapult peaks marked (x)."""
    plt = _plt()
    sc = scaling or str(ds.scaling.values[0])
    sub = ds.sel(scaling=sc)
    etas = sub.eta0.values
    colors = _width_colors(sub.width.values)
    fig, axes = plt.subplots(2, len(etas), figsize=(3.6 * len(etas), 5.8), sharex=True, squeeze=False)
    steps = sub.step.values
    for j, e in enumerate(etas):
        top, bot = axes[0][j], axes[1][j]
        for w in sub.width.values:
            run = sub.sel(eta0=e, width=w)
            c = colors[int(w)]
            top.plot(steps, _seed_mean(run.normalized_sharpness).values, color=c, lw=1.4, label=f"N = {int(w)}")
            if "hessian_sharpness" in run and np.isfinite(run.hessian_sharpness.values).any():
                top.plot(steps, _seed_mean(run.hessian_sharpness).values, color=c, lw=1.0, ls=":")
            loss = _seed_mean(run.loss).values
            bot.plot(steps, loss, color=c, lw=1.2)
            if "catapult" in run:
                marks = run.catapult.any("seed").values if "seed" in run.catapult.dims else run.catapult.values
                bot.plot(steps[marks], loss[marks], "x", color="C3", ms=9, mew=2)
            if (run.status == "diverged").any():
                top.annotate("diverged", (0.5, 0.9), xycoords="axes fraction", ha="center", color="C3")
        top.axhline(2.0, color="k", ls="--", lw=1.0, label="edge of stability (2)")
        if j == len(etas) - 1:
            top.plot([], [], color="0.4", ls=":", label="eta x top Hessian eigenvalue")
            bot.plot([], [], "x", color="C3", ms=9, mew=2, label="catapult peak")
            bot.legend(fontsize=8)
        top.set_title(f"{_title(sc)}, eta0 = {e:g}")
        top.grid(alpha=0.3)
        bot.set_yscale("log")
        bot.grid(alpha=0.3)
        bot.set_xlabel("training step t (GD steps)")
    axes[0][0].set_ylabel("sharpness S = eta lambda_max(K) / P")
    axes[1][0].set_ylabel("training loss (MSE/2)")
    axes[0][-1].legend(fontsize=8)
    return _save(fig, path)


# ---------------------------------------------------------------------------------
# bulk edge vs N
# ---------------------------------------------------------------------------------
def bulk_edge_vs_width(ds, summary, path):
    """Top singular value (the bulk edge, no outlier) at the last step against N,
    with the fitted edge_inf + a N^-rate; right: |edge - edge_inf| on log-log axes."""
    plt = _plt()
    widths = np.array(summary["widths"], float)
    edge = np.array([summary["edge"][int(w)] for w in widths])
    init = np.array([summary["initial_edge"][int(w)] for w in widths])
    fit = summary["edge_fit"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(widths, edge, "o-", label="after training")
    a.plot(widths, init, "s--", color="0.5", label="at initialization")
    if np.isfinite(fit["edge_inf"]):
        n = np.geomspace(widths.min(), widths.max() * 4, 100)
        a.plot(n, fit["edge_inf"] + fit["amplitude"] * n ** (-fit["rate"]), "k:",
               label=f"fit: {fit['edge_inf']:.3f} + a N^-{fit['rate']:.2f}")
        a.axhline(fit["edge_inf"], color="k", lw=0.8)
        dev = np.abs(edge - fit["edge_inf"])
        b.loglog(widths, dev, "o", label="|edge(N) - edge_inf|")
        b.loglog(n, np.abs(fit["amplitude"]) * n ** (-fit["rate"]), "k:", label=f"N^-{fit['rate']:.2f}")
        b.legend(fontsize=8)
    a.set_xscale("log", base=2)
    a.set_xlabel("width N")
    a.set_ylabel(f"top singular value of {summary.get('layer', 'W1')}/sqrt(N)")
    a.set_title(f"many outputs (kappa = {summary.get('kappa')}): bulk edge vs N")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    b.set_xlabel("width N")
    b.set_ylabel("distance to the extrapolated edge")
    b.grid(alpha=0.3, which="both")
    return _save(fig, path)


# ---------------------------------------------------------------------------------
# naive vs two-level
# ---------------------------------------------------------------------------------
def outlier_predictions(ds, summary, path):
    """s_1(t) of W1 in simulations (per width) against the two-level theory (dashed)
    and naive BBP on A(t) - A(0) (dotted); no outlier = the bulk edge."""
    plt = _plt()
    colors = _width_colors(ds.width.values)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    steps = ds.step.values
    for w in ds.width.values:
        ax.plot(steps, _seed_mean(ds.singular_values.sel(width=w, layer="W1", rank=0)).values,
                color=colors[int(w)], lw=1.6, label=f"simulation N = {int(w)}")
    if "two_level_prediction" in ds:
        ax.plot(steps, ds.two_level_prediction.values, "k--", lw=1.6, label="two-level DMFT")
    if "naive_prediction" in ds:
        ax.plot(steps, ds.naive_prediction.values, "C3:", lw=2.0, label="naive BBP (independent spike)")
    ax.axhline(summary.get("bulk_edge", 2.0), color="0.6", lw=0.8, label="bulk edge 2 sigma")
    ax.set_xlabel("training step t (GD steps)")
    ax.set_ylabel("top singular value s1 of W1/sqrt(N)")
    ax.set_title("outlier of the hidden layer: predictions vs simulation")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------
def run_overview(run, path):
    """One run (or limit curve): the loss (log) and the top singular values s_k(t) of every
    layer; without singular values (Monte Carlo limits) the normalized sharpness instead."""
    plt = _plt()
    layers = [str(l) for l in run.layer.values] if "singular_values" in run else []
    panels = 1 + max(len(layers), 1 if "normalized_sharpness" in run else 0)
    fig, axes = plt.subplots(1, panels, figsize=(3.8 * panels, 3.6), squeeze=False)
    if not layers and "normalized_sharpness" in run:
        ax = axes[0][1]
        ax.plot(run.step.values, run.normalized_sharpness.values, "k-")
        ax.axhline(2.0, color="0.6", ls=":", label="edge of stability")
        ax.set_xlabel("training step t (GD steps)")
        ax.set_ylabel("normalized sharpness eta lambda_max / P")
        ax.legend(fontsize=8)
    steps = run.step.values
    axes[0][0].plot(steps, run.loss.values, "k-")
    axes[0][0].set_yscale("log")
    axes[0][0].set_xlabel("training step t (GD steps)")
    axes[0][0].set_ylabel("training loss (MSE/2)")
    axes[0][0].set_title(f"{run.attrs.get('scaling')} N = {run.attrs.get('width')}, {run.attrs.get('status')}")
    for ax, layer in zip(axes[0][1:], layers):
        sv = run.singular_values.sel(layer=layer)
        for k in sv["rank"].values:
            if np.isfinite(sv.sel(rank=k).values).any():
                ax.plot(steps, sv.sel(rank=k).values, label=f"s{int(k) + 1}")
        ax.set_xlabel("training step t (GD steps)")
        ax.set_ylabel(f"singular values of normalized {layer}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:  # a limit curve before any outlier has escaped the bulk
            ax.text(0.5, 0.5, "no outlier above the bulk edge", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------------------------
# all figures of a study
# ---------------------------------------------------------------------------------
def study_figures(name: str, ds, summary, out_dir) -> list[str]:
    """Deprecated: ``specdyn.studies.get(name).figures(ds, summary, out_dir)``."""
    from . import studies  # the one import back into studies, for this deprecated name only

    warnings.warn("plots.study_figures is deprecated; use specdyn.studies.get(name).figures", DeprecationWarning,
                  stacklevel=2)
    return studies.get(name).figures(ds, summary, out_dir)


def largest_run_with_bulk(ds, scaling):
    """One run (largest width, first seed) as a plain run dataset, if it has a bulk histogram."""
    if "bulk_counts" not in ds:
        return None
    sel = {"width": int(ds.width.values.max())}
    if scaling is not None and "scaling" in ds.dims:
        if scaling not in ds.scaling.values:
            return None
        sel["scaling"] = scaling
    run = ds.sel(sel)
    for d in ("seed", "eta0", "scaling"):
        if d in run.dims:
            run = run.isel({d: 0})
    if not np.isfinite(run.bulk_counts.values).any():
        return None
    return run


# ---------------------------------------------------------------------------------
# many outputs under muP: outliers, top distance, bulk density against C
# ---------------------------------------------------------------------------------
def many_outputs_panels(ds, summary, path):
    """Three panels against C / P, one colour per width: (a) the seed-mean number of resolvable
    outliers of W1 at the last step (simulation, markers; finite-C limit at that width's threshold,
    lines, only for the C it covers); (b) (s_1 - edge) / edge (simulation) with the limit's value and
    each width's threshold r N^(-2/3) (dotted); (c) the histogram of all singular values at the last
    step of the largest width, smallest and largest C, with the quarter circle (the limit bulk at
    every C of this setting)."""
    from . import rmt

    plt = _plt()
    widths = summary["widths"]
    colors = _width_colors(widths)
    P = summary["samples"]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.3))
    for w in widths:
        cs = sorted(cc for (ww, cc) in summary["outlier_count"] if ww == w)
        x = np.array(cs, float) / P
        a.plot(x, [summary["outlier_count"][(w, cc)] for cc in cs], "o", color=colors[w], label=f"simulation N = {w}")
        b.plot(x, [summary["top_distance"][(w, cc)] for cc in cs], "o", color=colors[w], label=f"simulation N = {w}")
        tc = [cc for cc in cs if (w, cc) in summary["theory_outlier_count"]]
        if tc:
            a.plot(np.array(tc, float) / P, [summary["theory_outlier_count"][(w, cc)] for cc in tc], "-",
                   color=colors[w], label=f"finite-C limit, resolvable at N = {w}")
        b.axhline(summary["resolve_factor"] * w ** (-2 / 3), color=colors[w], ls=":", lw=1.2,
                  label=f"threshold r N^-2/3, N = {w}")
    tc = sorted({cc for (_, cc) in summary["theory_top_distance"]})
    if tc:
        w0 = widths[0]
        b.plot(np.array(tc, float) / P, [summary["theory_top_distance"][(w0, cc)] for cc in tc], "k-",
               label="finite-C limit (one_bulk, exact as N -> inf)")
    for ax, ylabel in ((a, "resolvable outliers of W1 (seed mean)"), (b, "(s_1 - edge) / edge at the last step")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("C / P (outputs over samples)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    a.set_title("(a) isolated outliers")
    b.set_title("(b) top value above the bulk edge")
    wmax = max(widths)
    sigma = summary["bulk_edge"] / 2
    shown = [cc for cc in ds.output_dim.values if (wmax, int(cc)) in summary["outlier_count"]]
    for i, cc in enumerate((shown[0], shown[-1]) if len(shown) > 1 else shown[:1]):
        run = ds.sel(width=wmax, output_dim=cc).isel(seed=0)
        counts = run.bulk_counts.values
        edges = run.bulk_edges.values
        ok = np.isfinite(counts)
        counts, edges = counts[ok], edges[: ok.sum() + 1]
        dens = counts / max(counts.sum(), 1.0) / np.diff(edges)
        c.stairs(dens, edges, color=f"C{i}", lw=1.5, label=f"simulation N = {wmax}, C = {int(cc)}")
        top = run.singular_values.values
        top = top[np.isfinite(top)]
        c.plot(top, np.full(top.size, -0.02 - 0.03 * i), "|", color=f"C{i}", ms=10, clip_on=False)
    s = np.linspace(0, summary["bulk_edge"] * 1.4, 400)
    c.plot(s, rmt.quarter_circle_density(s, sigma), "k--", lw=1.2, label="quarter circle (limit bulk, every C)")
    c.axvline(summary["bulk_edge"], color="0.5", lw=0.8)
    c.set_xlabel("singular value of W1 / sqrt(N) (ticks: top values)")
    c.set_ylabel("density at the last step")
    c.set_title("(c) bulk at the last step")
    c.legend(fontsize=7)
    c.grid(alpha=0.3)
    fig.suptitle(f"many outputs under {summary['scaling']}, loss {summary['output_normalization']} over outputs, "
                 f"D = {summary['input_dim']}, P = {P}; resolvable: s > edge (1 + {summary['resolve_factor']:g} N^-2/3)",
                 fontsize=10)
    return _save(fig, path)
