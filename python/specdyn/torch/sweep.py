"""``width_sweep``: the spectral coordinate check of a user's model factory.

Trains the factory's model at each width (serially in this process, or as
Dask tasks) with a :class:`SpectralMonitor` on it and reports, per layer, how much the top
singular value s1(t) still moves with width. Under a width-consistent
parameterization (muP) the curves of different widths collapse and their
spread shrinks as the widths grow; under SP it does not.
"""
from __future__ import annotations

import os

import numpy as np

from .monitor import SpectralMonitor


def width_sweep(make_model, widths, train, *, top_k: int = 4, monitor_kwargs: dict | None = None,
                progress=None, figure=None, figure_layer: str | None = None, label: str = "width sweep",
                client=None, workers: int | None = None):
    """Train ``make_model(width)`` at every width with a monitor; returns ``(dataset, summary)``.

    Parameters
    ----------
    make_model : callable ``width -> torch.nn.Module``; every width must give
        the same parameter names for the tracked layers
    widths : sequence of distinct integers >= 1
    train : callable ``(model, monitor) -> None`` running the training loop;
        it observes through ``monitor.attach(optimizer)`` or ``monitor.observe``
        at the same steps for every width
    top_k, monitor_kwargs : passed to :class:`SpectralMonitor` (``store`` is
        not allowed here: one store per width would be needed)
    progress : optional callable ``(width, dataset)`` called after each width
    client : None (default): the widths one after the other in this process;
        ``"local"``: a Dask LocalCluster of ``workers`` processes (as
        :func:`specdyn.sweep` starts one); a ``distributed.Client`` or a
        scheduler address: that cluster. Each width is one task, so
        ``make_model`` and ``train`` must be picklable by cloudpickle (closures
        are); a task that fails raises here.
    figure : optional path of a PNG: :func:`width_sweep_figure` of this sweep
        (layer ``figure_layer``, default the second tracked layer; column title
        ``label``) is written there and its path stored as ``summary["figure"]``

    Returns
    -------
    dataset : the monitors' datasets concatenated along a new ``width`` dimension
        (steps joined; a step missing at one width is NaN there)
    summary : dict with, per layer, ``spread`` (max over steps of the max - min
        over widths of s1(t)), ``delta_spread`` (the same for the top singular
        value of W - W(0), when tracked), ``deviation`` ({width: max over steps of
        |s1(t) - s1 at the largest width|}) and ``decay_exponent`` (p of
        deviation ~ width^-p by least squares in log-log; NaN with fewer than
        two usable widths), plus ``widths`` (and ``figure`` when asked for).
    """
    import xarray as xr

    from .. import _validate as v

    if not callable(make_model) or not callable(train):
        raise ValueError("make_model (width -> nn.Module) and train ((model, monitor) -> None) must be callables")
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
        raise ValueError(f"widths must be a non-empty list of distinct integers >= 1; got {widths!r}")
    widths = [v.integer("widths[]", w, 1) for w in widths]
    if len(widths) < 1 or len(set(widths)) != len(widths):
        raise ValueError(f"widths must be a non-empty list of distinct integers >= 1; got {widths}")
    kwargs = dict(monitor_kwargs or {})
    if "store" in kwargs:
        raise ValueError("monitor_kwargs must not hold 'store' (width_sweep keeps every width in memory)")
    if progress is not None and not callable(progress):
        raise ValueError("progress must be None or a callable (width, dataset) -> None")
    if figure is not None and not isinstance(figure, (str, os.PathLike)):
        raise ValueError(f"figure must be None or the path of a PNG file; got {type(figure).__name__}")
    if figure_layer is not None and not isinstance(figure_layer, str):
        raise ValueError(f"figure_layer must be None or a tracked parameter name; got {figure_layer!r}")
    runs, names, statuses = [], None, []
    for width, ds in _run_widths(make_model, train, widths, top_k, kwargs, client, workers):
        if ds.sizes["step"] == 0:
            raise ValueError(f"train made no observation at width {width}: call monitor.observe(step) or "
                             f"monitor.attach(optimizer) in it")
        layer_names = [str(x) for x in ds.layer.values]
        if names is not None and layer_names != names:
            raise ValueError(f"make_model({width}) has tracked layers {layer_names}, the first width had {names}")
        names = layer_names
        runs.append(ds.expand_dims(width=[width]))
        statuses.append((str(ds.attrs.get("status", "ok")), int(ds.attrs.get("diverged_step", -1))))
        if progress is not None:
            progress(width, ds)
    attrs = dict(runs[0].attrs)
    ds = xr.concat(runs, dim="width", join="outer", combine_attrs="drop_conflicts")
    ds.attrs.update(kind="width_sweep", status="ok" if all(st == "ok" for st, _ in statuses)
                    else "diverged", config=attrs.get("config", ""))
    # each width's own outcome (the concatenation keeps only the attributes all widths share)
    ds["width_status"] = ("width", np.array([st for st, _ in statuses]))
    ds["width_diverged_step"] = ("width", np.array([step for _, step in statuses], dtype=np.int64))
    summary = summarize(ds)
    if figure is not None:
        if figure_layer is not None and figure_layer not in names:
            raise ValueError(f"figure_layer must be one of the tracked layers {names}; got {figure_layer!r}")
        summary["figure"] = width_sweep_figure({label: (ds, summary)}, figure, layer=figure_layer)
    return ds, summary


def _one_width(make_model, train, width: int, top_k: int, kwargs: dict):
    """The monitor's dataset of one width (a Dask task when the sweep runs on a cluster)."""
    model = make_model(width)
    with SpectralMonitor(model, top_k=top_k, **kwargs) as monitor:
        train(model, monitor)
        return monitor.dataset()


def _run_widths(make_model, train, widths, top_k, kwargs, client, workers):
    """(width, dataset) in the order of ``widths``: in this process, or gathered from Dask tasks."""
    if client is None:
        for width in widths:
            yield width, _one_width(make_model, train, width, top_k, kwargs)
        return
    from .. import sweeps

    if isinstance(client, str) and client.lower() in sweeps.SERIAL:
        raise ValueError(f"client must be None (this process), 'local', a distributed.Client or a scheduler "
                         f"address; got {client!r}")
    cl, cleanup = sweeps._open_client(None if client == "local" else client, workers, len(widths))
    try:
        futures = [cl.submit(_one_width, make_model, train, w, top_k, kwargs, pure=False) for w in widths]
        for width, future in zip(widths, futures):
            yield width, future.result()
    finally:
        cleanup()


def _fit_power(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(y) & (y > 0) & (x > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(-np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def summarize(ds) -> dict:
    """Per layer: spread of s1(t) across widths, deviation from the largest width, its decay exponent.

    Over the widths whose run did not diverge (``diverged_widths`` lists the
    others with the step where each diverged): a blown-up run would otherwise
    make the spread the size of its last finite value. With fewer than two
    such widths every spread is NaN and ``note`` says why.
    """
    all_widths = [int(w) for w in ds.width.values]
    status = ([str(x) for x in ds.width_status.values] if "width_status" in ds else ["ok"] * len(all_widths))
    steps = ([int(x) for x in ds.width_diverged_step.values] if "width_diverged_step" in ds
             else [-1] * len(all_widths))
    widths = [w for w, st in zip(all_widths, status) if st == "ok"]
    out = {"widths": widths, "diverged_widths": {w: step for w, st, step in zip(all_widths, status, steps)
                                                 if st != "ok"}, "layers": {}}
    if len(widths) < 2:
        out["note"] = (f"fewer than two widths ran without diverging ({widths}); spreads and deviations are "
                       f"undefined (NaN)")
    ds = ds.sel(width=widths)
    for layer in [str(x) for x in ds.layer.values]:
        if len(widths) < 2:
            out["layers"][layer] = {"spread": float("nan"), "delta_spread": float("nan"), "deviation": {},
                                    "decay_exponent": float("nan"), "final_s1": {}}
            continue
        s1 = ds.singular_values.sel(layer=layer, rank=0)  # (width, step)
        spread = float((s1.max("width") - s1.min("width")).max("step"))
        ref = s1.sel(width=max(widths))
        dev = {w: float(abs(s1.sel(width=w) - ref).max("step")) for w in widths if w != max(widths)}
        delta = float("nan")
        if "delta_singular_values" in ds:
            d1 = ds.delta_singular_values.sel(layer=layer, rank=0)
            delta = float((d1.max("width") - d1.min("width")).max("step"))
        out["layers"][layer] = {"spread": spread, "delta_spread": delta, "deviation": dev,
                                "decay_exponent": _fit_power(list(dev), list(dev.values())),
                                "final_s1": {w: float(s1.sel(width=w).dropna("step").isel(step=-1))
                                             for w in widths}}
    return out


def width_sweep_figure(sweeps: dict, path, layer: str | None = None) -> str:
    """s1(t) of one layer across widths, one column per sweep (e.g. {"muP": (ds, summary), "SP": ...}).

    Top row: s1 of the normalized weight, with the layer's initial bulk edge
    dotted (the random-matrix law of its shape and initial scale). Bottom row,
    when tracked: s1 of W - W(0), what training added. Titles give the spread
    across widths. Writes a PNG and returns its path.
    """
    from .. import plots

    plt = plots._plt()
    if not sweeps:
        raise ValueError("sweeps must hold at least one (dataset, summary) pair")
    labels = list(sweeps)
    first = sweeps[labels[0]][0]
    layer = layer or str(first.layer.values[min(1, first.sizes["layer"] - 1)])
    rows = [("singular_values", "spread", "s1")]
    if all("delta_singular_values" in ds for ds, _ in sweeps.values()):
        rows.append(("delta_singular_values", "delta_spread", "s1 of W - W(0)"))
    fig, axes = plt.subplots(len(rows), len(labels), figsize=(5.2 * len(labels), 3.8 * len(rows)), squeeze=False)
    for r, (var, key, what) in enumerate(rows):
        for ax, label in zip(axes[r], labels):
            ds, summary = sweeps[label]
            colors = plots._width_colors(ds.width.values)
            for w in summary["widths"]:  # the widths that did not diverge
                s1 = ds[var].sel(width=w, layer=layer, rank=0)
                ok = np.isfinite(s1.values)
                ax.plot(ds.step.values[ok], s1.values[ok], color=colors[int(w)], lw=1.6, label=f"N = {int(w)}")
            if r == 0:
                edge = float(ds.bulk_edge_law.sel(layer=layer).mean("width"))
                ax.axhline(edge, color="0.6", lw=0.8, ls=":", label="initial bulk edge")
            spread = summary["layers"][layer][key]
            gone = ", ".join(f"N = {w} diverged at t = {t}" for w, t in summary.get("diverged_widths", {}).items())
            ax.set_title(f"{label}: spread of {what} across widths = {spread:.3g}" + (f"\n({gone})" if gone else ""),
                         fontsize=10)
            ax.set_xlabel("training step t (optimizer steps)")
            ax.set_ylabel(f"{what} of {layer} (normalized)", fontsize=9)
            ax.legend(fontsize=8, loc="best")
            ax.grid(alpha=0.3)
    return plots._save(fig, path)
