"""Set a simulation against a theory, variable by variable.

``compare(sim, theory)`` aligns two result Datasets of the shared schema
(``specdyn.simulate`` and ``specdyn.theory.one_bulk`` use the same names and
dims) on their common coordinates (step, layer, rank, input) and reports,
for every variable they share, the two values and the gaps.
"""
from __future__ import annotations

import numpy as np

# Variables compared when both sides have them (in this order); other shared
# variables with matching dims are compared too.
COMPARED = ("loss", "singular_values", "delta_singular_values", "normalized_sharpness", "beta_f",
            "hessian_top", "overlap_input", "overlap_backward")


def compare(sim, theory, variables=None, average_over=("seed",)):
    """Align ``sim`` and ``theory`` and report the gap of every shared variable.

    Parameters
    ----------
    sim, theory : xarray.Dataset of the shared result schema (any two runs work:
        simulation vs theory, theory vs theory, width vs width).
    variables : names to compare (default: the shared ones among ``COMPARED``
        and any other shared numeric data variable; boolean flags are left out).
    average_over : dims averaged out of either side before comparing when present
        (e.g. a ``seed`` dimension of a seed sweep).

    Returns
    -------
    xarray.Dataset on the common coordinates with, per variable ``v``:
    ``v_sim``, ``v_theory``, ``v_gap`` = sim - theory and ``v_rel_gap`` =
    |sim - theory| / |theory|. NaN on either side (no outlier, not tracked)
    stays NaN and is left out of the summary. ``attrs["summary"]`` is a dict
    ``{v: {"max_abs_gap", "mean_abs_gap", "max_rel_gap", "mean_rel_gap", "points",
    "missing_sim", "missing_theory"}}`` where ``missing_*`` counts the points
    defined on the other side only (e.g. an outlier one side sees and the
    other does not), plus ``attrs["steps"]``, the compared steps.
    """
    import xarray as xr

    if not isinstance(sim, xr.Dataset) or not isinstance(theory, xr.Dataset):
        raise ValueError("sim and theory must be xarray.Dataset results (specdyn.simulate / specdyn.theory)")
    if "step" not in sim.dims or "step" not in theory.dims:
        raise ValueError("sim and theory must both have a 'step' dimension")
    a, b = sim, theory
    for dim in average_over:
        if dim in a.dims:
            a = a.mean(dim, skipna=True, keep_attrs=True)
        if dim in b.dims:
            b = b.mean(dim, skipna=True, keep_attrs=True)
    shared = [v for v in a.data_vars if v in b.data_vars]
    # numbers only: flags (e.g. a monitor's ``certified``) and strings have no gap
    numeric = [v for v in shared if a[v].dtype.kind in "iuf" and b[v].dtype.kind in "iuf"]
    if variables is None:
        names = [v for v in COMPARED if v in numeric] + [v for v in numeric if v not in COMPARED]
    else:
        names = list(variables)
        missing = [v for v in names if v not in shared]
        if missing:
            raise ValueError(f"variables {missing} are not in both datasets; shared: {sorted(shared)}")
        flags = [v for v in names if v not in numeric]
        if flags:
            raise ValueError(f"variables {flags} are not numeric (flags or text have no gap); numeric shared "
                             f"variables: {sorted(numeric)}")
    out = {}
    summary = {}
    for v in names:
        x, y = a[v], b[v]
        if set(x.dims) != set(y.dims):
            if variables is not None:
                raise ValueError(f"variable {v!r} has dims {x.dims} in sim and {y.dims} in theory")
            continue
        x, y = xr.align(x, y.transpose(*x.dims), join="inner")
        if x.size == 0:
            continue
        gap = x - y
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.abs(gap) / np.abs(y)
        out[f"{v}_sim"] = x.drop_attrs() if hasattr(x, "drop_attrs") else x
        out[f"{v}_theory"] = y
        out[f"{v}_gap"] = gap
        out[f"{v}_rel_gap"] = rel
        g = np.abs(gap.values)
        r = rel.values
        ok = np.isfinite(g)
        okr = ok & np.isfinite(r)
        fx, fy = np.isfinite(x.values), np.isfinite(y.values)
        summary[v] = {
            "max_abs_gap": float(g[ok].max()) if ok.any() else float("nan"),
            "mean_abs_gap": float(g[ok].mean()) if ok.any() else float("nan"),
            "max_rel_gap": float(r[okr].max()) if okr.any() else float("nan"),
            "mean_rel_gap": float(r[okr].mean()) if okr.any() else float("nan"),
            "points": int(ok.sum()),
            "missing_sim": int((fy & ~fx).sum()),
            "missing_theory": int((fx & ~fy).sum()),
        }
    if not out:
        raise ValueError("sim and theory share no variable on common coordinates")
    ds = xr.Dataset(out)
    ds.attrs["summary"] = summary
    ds.attrs["steps"] = [int(s) for s in ds["step"].values] if "step" in ds.coords else []
    ds.attrs["kind"] = "comparison"
    for side, src in (("sim", sim), ("theory", theory)):
        for key in ("kind", "scaling", "width"):
            if key in src.attrs:
                ds.attrs[f"{side}_{key}"] = src.attrs[key]
    return ds
