"""Limit curves of the proportional two-layer linear model (docs/theory.md, Proportional two-layer model).

Model: h = W0 x / sqrt(D) with W0 of shape (N, D), f(x) = w . h / (gamma sqrt(N)),
population (online) GD on a linear teacher y = beta . x / sqrt(D) with
x ~ N(0, I_D), beta ~ N(0, I_D). Scaling (``parameterization.proportional_scales``):
gamma = gamma0 and raw learning rate eta0 gamma0^2 N. The limit is N, D -> infinity
with nu = N / D fixed, at a fixed number of steps. The derivation and the exact
equations solved here are in docs/theory.md ("Proportional two-layer model");
the recursion and the outlier solver run natively (``_core.proportional_solve``).
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from .. import _core
from .. import _validate as V
from .. import results
from ..config import RunConfig, check_limit
from ..parameterization import proportional_eta0

__all__ = ["proportional"]

_DEFAULTS = dict(gamma0=1.0, eta0=0.1, sigma=1.0, steps=100, track_every=1, top_k=4, noise=0.0)


def _from_config(config: RunConfig, nu) -> dict:
    """Model arguments that a RunConfig describes, or a ValueError saying why it has no limit here."""
    check_limit(config, "proportional")
    eta0 = proportional_eta0(config.scaling, config.width, config.eta0)
    ratio = config.width / config.input_dim
    if nu is not None and not np.isclose(V.real("nu", nu, 0.0, None, lo_open=True), ratio):
        raise ValueError(f"nu must equal config.width / config.input_dim = {ratio} when a config is given; got {nu}")
    return dict(nu=ratio, gamma0=config.gamma0, eta0=eta0, sigma=config.layer_sigmas(), steps=config.steps,
                track_every=config.track_every, top_k=config.top_k, noise=config.noise,
                divergence_bound=config.divergence_bound, config_json=config.to_json(),
                scaling=config.scaling, width=config.width)


def proportional(config: RunConfig | None = None, *, nu: float | None = None, gamma0: float | None = None,
                 eta0: float | None = None, sigma=None, steps: int | None = None, track_every=None,
                 top_k: int | None = None, noise: float | None = None, nodes: int = 400,
                 edge_margin: float = 1e-4, divergence_bound: float = 1e8) -> xr.Dataset:
    """Infinite-width limit curves of the proportional two-layer linear model.

    Either a ``RunConfig`` (depth 1, linear, output_dim 1, online, scaling "ntk"; then
    nu = width / input_dim and the proportional eta0 is ``config.eta0 / width``, so that
    the raw learning rate equals the config's) or keyword arguments in the model's own
    units: ``nu`` = N / D, ``gamma0`` (gamma = gamma0), ``eta0`` (raw rate eta0 gamma0^2 N),
    ``sigma`` (init std of W0 and w: one float or [sigma_W0, sigma_w]), ``steps``,
    ``track_every`` (int or list of steps), ``top_k``, ``noise`` (label-noise std).
    ``nodes``: Gauss nodes of the Marchenko-Pastur law (the loss is exact once
    nodes > steps + 1); ``edge_margin``: an outlier must exceed the bulk edge
    sigma (1 + sqrt(nu)) by this much.

    Returns an ``xarray.Dataset`` with coords ``step`` (tracked steps), ``layer``
    (["W0", "W1"]), ``rank`` (0..top_k-1) and

    - ``loss(step)``: population loss |beta - beta_f|^2 / (2D) + noise^2 / 2;
    - ``singular_values(step, layer, rank)``: for W0 the outliers of W0 / sqrt(D) above the
      bulk edge (NaN where none; ``rank`` counts outliers); for W1 the one singular value
      |w| / sqrt(N) of the normalized readout;
    - ``delta_singular_values(step, layer, rank)``: the same for W(t) - W(0) (W0: the
      singular values of the low-rank change; W1: |w(t) - w(0)| / sqrt(N));
    - ``top_singular_value(step)``: largest singular value of W0 / sqrt(D) (outlier or edge);
    - ``normalized_sharpness(step)``: eta lambda_max of the Gauss-Newton Hessian of the
      population loss = eta0 (s_top^2 + |w|^2 / D) (edge of stability at 2);
    - ``history_rank(step)``: rank of the compressed perturbation used by the outlier solver;
    - attrs ``kind`` = "theory", ``model`` = "proportional", ``nu``, ``bulk_edge``,
      ``status``, ``diverged_step``, ``scaling``, ``config``.
    """
    kw = dict(gamma0=gamma0, eta0=eta0, sigma=sigma, steps=steps, track_every=track_every, top_k=top_k,
              noise=noise)
    if config is not None:
        given = [k for k, v in kw.items() if v is not None]
        if given:
            raise ValueError(f"give either a config or the model arguments, not both; got config and {given}")
        args = _from_config(config, nu)
        divergence_bound = args["divergence_bound"]
    else:
        if nu is None:
            raise ValueError("nu (= N / D) must be given when no config is given")
        args = {k: (_DEFAULTS[k] if v is None else v) for k, v in kw.items()}
        args.update(nu=nu, config_json="", scaling="proportional", width=-1)
    nu = V.real("nu", args["nu"], 0.0, None, lo_open=True)
    g0 = V.real("gamma0", args["gamma0"], 0.0, None, lo_open=True)
    e0 = V.real("eta0", args["eta0"], 0.0, None, lo_open=True)
    sig = args["sigma"]
    if isinstance(sig, (list, tuple)):
        if len(sig) != 2:
            raise ValueError(f"sigma must be one float or two floats [sigma_W0, sigma_w]; got {len(sig)} values")
        s_in = V.real("sigma[0]", sig[0], 0.0, None, lo_open=True)
        s_out = V.real("sigma[1]", sig[1], 0.0)
    else:
        s_in = s_out = V.real("sigma", sig, 0.0, None, lo_open=True)
    T = V.integer("steps", args["steps"], 0, 20_000)   # memory O(steps * nodes), time O(steps^2 * nodes)
    k = V.integer("top_k", args["top_k"], 1, 1024)
    noise_ = V.real("noise", args["noise"], 0.0)
    nodes = V.integer("nodes", nodes, 16, 1_000_000)
    edge_margin = V.real("edge_margin", edge_margin, 0.0, None, lo_open=True)
    divergence_bound = V.real("divergence_bound", divergence_bound, 0.0, None, lo_open=True)
    te = args["track_every"]
    if isinstance(te, (list, tuple)):
        tracked = sorted({V.integer("track_every[]", s, 0, T) for s in te} | {0, T})
    else:
        tracked = sorted(set(range(0, T + 1, V.integer("track_every", te, 1))) | {0, T})

    r = _core.proportional_solve(nu, g0, e0, s_in, s_out, noise_, T, nodes, tracked, k, edge_margin,
                                 1e-11, divergence_bound)
    idx = np.asarray(tracked)
    sv = np.full((len(tracked), 2, k), np.nan)
    dsv = np.full_like(sv, np.nan)
    sv[:, 0, :] = r["outliers"]
    dsv[:, 0, :] = r["delta_singular"]
    ol = np.full_like(sv, np.nan)
    orr = np.full_like(sv, np.nan)
    ol[:, 0, :] = r["overlap_left"]
    orr[:, 0, :] = r["overlap_right"]
    sv[:, 1, 0] = np.sqrt(r["readout_norm2"][idx])
    dsv[:, 1, 0] = np.sqrt(np.maximum(r["readout_delta2"][idx], 0.0))
    diverged = int(r["diverged_step"])
    return results.dataset(
        {
            "loss": ("step", r["loss"][idx]),
            "singular_values": (("step", "layer", "rank"), sv),
            "delta_singular_values": (("step", "layer", "rank"), dsv),
            "overlap_spike_left": (("step", "layer", "rank"), ol),
            "overlap_spike_right": (("step", "layer", "rank"), orr),
            "top_singular_value": ("step", r["top_singular"]),
            "normalized_sharpness": ("step", r["sharpness"]),
            "history_rank": ("step", r["history_rank"].astype(np.int64)),
        },
        {"step": idx.astype(np.int64), "layer": ["W0", "W1"], "rank": np.arange(k)},
        {
            "kind": "theory",
            "model": "proportional",
            "nu": nu,
            "gamma0": g0,
            "eta0": e0,
            "bulk_edge": float(r["edge"]),
            "status": "ok" if diverged < 0 else "diverged",
            "diverged_step": diverged,
            "scaling": args["scaling"],
            "width": args["width"],
            "config": args["config_json"],
            "nodes": nodes,
        },
        {"loss": "population loss |beta - beta_f|^2 / (2D) + noise^2 / 2",
         "singular_values": "outliers of W0/sqrt(D) above the bulk edge; |w|/sqrt(N) for W1",
         "overlap_spike_left": "readout side; NaN for W1", "overlap_spike_right": "input side; NaN for W1"})
