"""Infinite-width (muP) limit of a two-layer nonlinear network by Monte Carlo over single sites.

Network (RunConfig depth 1): h = W0 x / sqrt(D), f(x) = w . phi(h) / (gamma sqrt(N)) with
gamma = gamma0 sqrt(N), raw rate eta0 gamma0^2 N, full-batch GD on P fixed samples. As
N -> infinity (D, P fixed) the neurons become iid single-site processes

    h_i(x_mu) = W0_i . x_mu / sqrt(D),   g_i(x_mu) = w_i phi'(h_i(x_mu)),
    f_mu = < w phi(h_mu) > / gamma0,     r_mu = y_mu - f_mu,
    w_i   += (c / P) sum_mu r_mu phi(h_i(x_mu)),
    W0_i  += (c / (P sqrt D)) sum_mu r_mu g_i(x_mu) x_mu,          c = eta0 gamma0,

coupled only through the site average < . > (docs/theory.md). The average is estimated
with M sampled sites (antithetic in w) per replica, natively (``_core.monte_carlo_two_layer``);
independent replicas give the sampling error.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from .. import _core
from .. import _validate as V
from .. import results
from ..config import MONTE_CARLO_MAX_DEPTH, RunConfig, check_limit
from ..data import for_run

__all__ = ["two_layer_monte_carlo", "deep_monte_carlo", "extrapolate_width", "extrapolated_outliers", "MAX_DEPTH"]

def _check_sampling(config, model: str, particles, most_particles: int, replicas, seed) -> tuple[int, int, int]:
    """The config covered by ``model`` (else one ValueError), then the validated sampling arguments."""
    check_limit(config, model)
    particles = V.integer("particles", particles, 2, most_particles)
    if particles % 2:
        raise ValueError(f"particles must be even (antithetic pairs); got {particles}")
    return particles, V.integer("replicas", replicas, 1, 10_000), V.integer("seed", seed, 0, 2**63 - 1)


def two_layer_monte_carlo(config: RunConfig, data=None, *, particles: int = 1 << 14, replicas: int = 4,
                          seed: int = 0) -> xr.Dataset:
    """Loss, kernels and sharpness of the muP limit of a two-layer network, with sampling error.

    ``config``: RunConfig with depth 1, scaling "mup", output_dim 1, full batch; its gamma0,
    eta0, sigma (one float or [sigma_W0, sigma_w]), activation, steps, track_every are used
    (width is irrelevant in the limit). ``data``: (X (P, D), Y (P,) or (P, 1)) arrays; when
    None, ``specdyn.data.teacher`` draws them from config.data_seed. ``particles``: sampled
    sites per replica (even); ``replicas``: independent replicas (>= 2 for an error bar).

    Returns an ``xarray.Dataset`` with coords ``step`` (tracked steps), ``sample``/``sample2``
    (0..P-1), ``replica``; variables (mean over replicas, and ``*_stderr`` = standard
    deviation over replicas / sqrt(replicas)):

    - ``loss(step)``: (1/2P) sum_mu (f_mu - y_mu)^2;
    - ``output(step, sample)``: f(x_mu);
    - ``feature_kernel(step, sample, sample2)``: Phi = <phi(h_mu) phi(h_nu)>;
    - ``gradient_kernel(step, sample, sample2)``: G = <g_mu g_nu>, g = w phi'(h);
    - ``normalized_sharpness(step)``: eta lambda_max(K) / P = eta0 lambda_max(Phi + G o X X^T / D) / P;
    - ``loss_replicas(replica, step)``: the per-replica curves;
    - attrs ``kind`` = "theory", ``model`` = "two_layer_monte_carlo", ``particles``, ``status``.
    """
    particles, replicas, seed = _check_sampling(config, "two_layer_monte_carlo", particles, 1 << 28, replicas, seed)
    X, Y = _load_data(config, data)
    s_in, s_out = config.layer_sigmas()
    tracked = config.tracked_steps()
    runs = [
        _core.monte_carlo_two_layer(X, Y, config.gamma0, config.eta0, s_in, s_out,
                                    config.activation, config.steps, particles, seed, r,
                                    tracked, config.divergence_bound)
        for r in range(replicas)
    ]
    return _replica_dataset(runs, tracked, len(Y), ("step", "sample", "sample2"), {}, config, seed,
                            {"model": "two_layer_monte_carlo", "particles": particles})


# ---- deeper networks -------------------------------------------------------------------

MAX_DEPTH = MONTE_CARLO_MAX_DEPTH  # hidden layers; the tangent storage grows like (depth - 1) steps^2 samples^2
_TANGENT_BYTES_LIMIT = 6 * 2**30


def _load_data(config, data):
    """X (P, D) and y (P,) of a one-output run (``data.for_run``)."""
    X, Y = for_run(config, data)
    return X, Y[:, 0].copy()


def deep_monte_carlo(config: RunConfig, data=None, *, particles: int = 1 << 14, replicas: int = 4,
                     seed: int = 0, response_particles: int | None = None) -> xr.Dataset:
    """Loss, per-layer kernels and sharpness of the muP limit of a deep nonlinear network.

    The network of ``config`` has L = config.depth hidden layers (1 <= L <= 8): W0 (N x D),
    square W1..W(L-1), readout WL; phi = config.activation (tanh, relu or linear); muP
    (gamma = gamma0 sqrt(N), raw rate eta0 gamma0^2 N); full-batch GD on P fixed samples,
    one output. At N -> infinity each hidden layer's neurons are iid single sites driven by
    Gaussian fields whose two-time covariances are the neighbouring layers' kernels, plus
    response terms (docs/theory.md, "Deeper nonlinear networks in muP"). The site averages
    are estimated with ``particles`` (M, even) sampled sites per layer and replica; the
    responses are averaged tangents of the first ``response_particles`` (default
    min(M, 1024)) sites. The tangent storage is about 32 (L - 1) (T + 1)^2 P^2 Mr / 2
    bytes: a ValueError names ``response_particles`` when it would exceed 6 GiB. Cost
    per replica ~ (L - 1) T^3 P^3 Mr flops (tangents) + L T^2 P^2 M (fields, kernels).
    ``depth = 1`` runs the same equations as ``two_layer_monte_carlo`` (another estimator).
    Replicas average the O(M^{-1/2}) fluctuation away but not the O(1/M) bias (it shows
    in a small late loss): compare against width N with M well above N.

    Returns an ``xarray.Dataset`` with coords ``step`` (tracked steps), ``layer``
    ("h1".."hL", hidden layer l), ``sample``/``sample2``, ``replica``; variables (mean over
    ``replicas``, ``*_stderr`` = std over replicas / sqrt(replicas)):

    - ``loss(step)``, ``output(step, sample)``;
    - ``feature_kernel(step, layer, sample, sample2)``: Phi^l = <phi(h^l_mu) phi(h^l_nu)>;
    - ``gradient_kernel(step, layer, sample, sample2)``: G^l = <g^l_mu g^l_nu>, g^l the
      backward field at h^l scaled to O(1) (g^L = w phi'(h^L));
    - ``normalized_sharpness(step)``: eta lambda_max(K) / P with
      eta K = eta0 (Phi^L + sum_{l=1}^{L-1} G^{l+1} o Phi^l + G^1 o X X^T / D);
    - ``loss_replicas(replica, step)``; attrs ``kind`` = "theory", ``model`` =
      "deep_monte_carlo", ``depth``, ``particles``, ``response_particles``, ``status``.
    """
    particles, replicas, seed = _check_sampling(config, "deep_monte_carlo", particles, 1 << 24, replicas, seed)
    if response_particles is None:
        response_particles = min(particles, 1024)
    response_particles = V.integer("response_particles", response_particles, 2, particles)
    if response_particles % 2:
        raise ValueError(f"response_particles must be even (whole antithetic pairs); got {response_particles}")
    X, Y = _load_data(config, data)
    L = config.depth
    need = _core.monte_carlo_deep_tangent_bytes(L, config.steps, len(Y), response_particles)
    if need > _TANGENT_BYTES_LIMIT:
        raise ValueError(f"response_particles = {response_particles} needs {need / 2**30:.1f} GiB of tangents at "
                         f"depth {L}, {config.steps} steps, {len(Y)} samples (limit 6 GiB): lower it, or the "
                         "steps or samples")
    sigmas = config.layer_sigmas()
    tracked = config.tracked_steps()
    runs = [
        _core.monte_carlo_deep(X, Y, config.gamma0, config.eta0, sigmas, config.activation,
                               config.steps, particles, response_particles, seed, r, tracked,
                               config.divergence_bound)
        for r in range(replicas)
    ]
    return _replica_dataset(runs, tracked, len(Y), ("step", "layer", "sample", "sample2"),
                            {"layer": [f"h{l}" for l in range(1, L + 1)]}, config, seed,
                            {"model": "deep_monte_carlo", "depth": L, "particles": particles,
                             "response_particles": response_particles})


def _replica_dataset(runs, tracked, P, kernel_dims, extra_coords, config, seed, attrs) -> xr.Dataset:
    """Mean over the Monte Carlo replicas of the core's per-replica results, with
    ``*_stderr`` = standard deviation over replicas / sqrt(replicas) (NaN for one replica)."""
    idx = np.asarray(tracked)
    replicas = len(runs)

    def stack(key, sel=None):
        a = np.stack([r[key] if sel is None else r[key][sel] for r in runs])
        mean = a.mean(0)
        err = a.std(0, ddof=1) / np.sqrt(replicas) if replicas > 1 else np.full_like(mean, np.nan)
        return a, mean, err

    loss_all, loss, loss_err = stack("loss", idx)
    _, out, out_err = stack("outputs", idx)
    _, phi, phi_err = stack("phi")
    _, grad, grad_err = stack("grad")
    _, sharp, sharp_err = stack("sharpness")
    diverged = [int(r["diverged_step"]) for r in runs]
    return results.dataset(
        {
            "loss": ("step", loss), "loss_stderr": ("step", loss_err),
            "output": (("step", "sample"), out), "output_stderr": (("step", "sample"), out_err),
            "feature_kernel": (kernel_dims, phi), "feature_kernel_stderr": (kernel_dims, phi_err),
            "gradient_kernel": (kernel_dims, grad), "gradient_kernel_stderr": (kernel_dims, grad_err),
            "normalized_sharpness": ("step", sharp), "normalized_sharpness_stderr": ("step", sharp_err),
            "loss_replicas": (("replica", "step"), loss_all),
        },
        {"step": idx.astype(np.int64), **extra_coords, "sample": np.arange(P), "sample2": np.arange(P),
         "replica": np.arange(replicas)},
        {**results.run_attrs(config, "theory", min([d for d in diverged if d >= 0], default=-1)), **attrs,
         "replicas": replicas, "scaling": "mup", "seed": seed},
        {"gradient_kernel": "G^l = <g^l_mu g^l_nu>, g^l the backward field at h^l scaled to O(1)"})


def extrapolate_width(widths, values, stderr=None) -> dict:
    """Extrapolate finite-width measurements to N -> infinity with a fit v(N) = v_inf + b / sqrt(N).

    For quantities without a derived limit (e.g. outlier singular values of nonlinear
    networks), the limit is estimated from seed-averaged finite-width runs.

    ``widths``: (K,) widths N (K >= 2, distinct, > 0); ``values``: (K,) or (K, ...)
    seed-averaged measurements at those widths; ``stderr``: their standard errors (same
    shape), used as weights 1/stderr^2. Without ``stderr`` the fit is unweighted and the
    uncertainty comes from the residuals (needs K >= 3).

    Returns a dict of arrays shaped like one ``values[k]``: ``limit`` (v_inf),
    ``limit_stderr``, ``slope`` (b) and ``slope_stderr``.
    """
    N = V.finite_array("widths", widths, ndim=1)
    y = V.finite_array("values", values)
    if len(N) < 2 or np.any(N <= 0) or len(np.unique(N)) != len(N):
        raise ValueError("widths must hold at least 2 distinct positive widths")
    if y.shape[0] != len(N):
        raise ValueError(f"values must have one row per width ({len(N)}); got shape {y.shape}")
    X = np.stack([np.ones_like(N), 1.0 / np.sqrt(N)], axis=1)     # (K, 2)
    Y = y.reshape(len(N), -1)
    if stderr is not None:
        s = V.finite_array("stderr", stderr).reshape(Y.shape)
        if np.any(s <= 0):
            raise ValueError("stderr must be > 0")
        limit, lim_err, slope, slope_err = [], [], [], []
        for j in range(Y.shape[1]):
            w = 1.0 / s[:, j] ** 2
            A = X.T @ (w[:, None] * X)
            cov = np.linalg.inv(A)
            coef = cov @ (X.T @ (w * Y[:, j]))
            limit.append(coef[0]); slope.append(coef[1])
            lim_err.append(np.sqrt(cov[0, 0])); slope_err.append(np.sqrt(cov[1, 1]))
        out = [np.array(v) for v in (limit, lim_err, slope, slope_err)]
    else:
        if len(N) < 3:
            raise ValueError("an unweighted fit needs at least 3 widths (or give stderr)")
        coef, *_ = np.linalg.lstsq(X, Y, rcond=None)
        resid = Y - X @ coef
        dof = len(N) - 2
        cov = np.linalg.inv(X.T @ X)
        s2 = (resid**2).sum(0) / dof
        out = [coef[0], np.sqrt(cov[0, 0] * s2), coef[1], np.sqrt(cov[1, 1] * s2)]
    shape = y.shape[1:]
    names = ("limit", "limit_stderr", "slope", "slope_stderr")
    return {k: np.asarray(v).reshape(shape) for k, v in zip(names, out)}


def extrapolated_outliers(config: RunConfig, data=None, *, widths=(512, 1024, 2048), seeds=4) -> xr.Dataset:
    """Outlier trajectories at infinite width from finite-width simulations (any network).

    Runs ``specdyn.simulate`` at every width in ``widths`` with seeds 0..seeds-1 (the rest of
    ``config`` fixed; muP keeps a width-independent limit), takes the seed mean and standard
    error of each tracked singular value, and fits v(N) = v_inf + b / sqrt(N) per (step, layer,
    rank) with ``extrapolate_width`` (weighted by the standard errors). Where no limit is derived
    (nonlinear networks) this is the estimate of the outliers, with its fitted uncertainty.

    ``widths``: >= 2 distinct widths (>= 3 recommended); ``seeds``: seeds per width (>= 2).
    Returns an ``xarray.Dataset`` with coords step, layer, rank, width: ``singular_values``
    (the limit v_inf), ``singular_values_stderr``, ``slope`` (b), ``seed_mean`` and
    ``seed_stderr`` (width, step, layer, rank); NaN where a width lacks the value (a run
    that diverged, or a layer with fewer singular values); attrs kind="extrapolation".
    Cost: len(widths) x seeds simulations.
    """
    from ..training import simulate

    if not isinstance(config, RunConfig):
        raise ValueError(f"config must be a RunConfig; got {type(config).__name__}")
    if config.scaling != "mup":
        raise ValueError("config.scaling must be 'mup': only muP has a width-independent limit to extrapolate "
                         f"to; got {config.scaling!r}")
    if isinstance(widths, (int, np.integer)) or len(widths) < 2:
        raise ValueError(f"widths must list at least 2 distinct widths; got {widths!r}")
    widths = sorted({V.integer("widths[]", int(w), 1, 1 << 20) for w in widths})
    if len(widths) < 2:
        raise ValueError("widths must list at least 2 distinct widths")
    seeds = V.integer("seeds", seeds, 2, 10_000)
    means, errs = [], []
    ref = None
    for N in widths:
        runs = [simulate(config.replace(width=N, seed=s), data, progress=False) for s in range(seeds)]
        sv = np.stack([r.singular_values.values for r in runs])   # (seed, step, layer, rank)
        means.append(np.nanmean(sv, axis=0) if np.isfinite(sv).any() else sv[0])
        errs.append(np.nanstd(sv, axis=0, ddof=1) / np.sqrt(np.sum(np.isfinite(sv), axis=0).clip(1)))
        ref = runs[0]
    means, errs = np.stack(means), np.stack(errs)              # (width, step, layer, rank)
    shape = means.shape[1:]
    lim, lim_err, slope = (np.full(shape, np.nan) for _ in range(3))
    ok = np.all(np.isfinite(means), axis=0) & np.all(errs > 0, axis=0)
    if ok.any():
        fit = extrapolate_width(np.asarray(widths, float), means[:, ok], stderr=errs[:, ok])
        lim[ok], lim_err[ok], slope[ok] = fit["limit"], fit["limit_stderr"], fit["slope"]
    dims = ("step", "layer", "rank")
    return results.dataset(
        {"singular_values": (dims, lim), "singular_values_stderr": (dims, lim_err), "slope": (dims, slope),
         "seed_mean": (("width",) + dims, means), "seed_stderr": (("width",) + dims, errs)},
        {"step": ref.step.values, "layer": ref.layer.values, "rank": ref["rank"].values, "width": widths},
        {"kind": "extrapolation", "model": "v(N) = v_inf + b / sqrt(N)", "seeds": seeds,
         "config": config.to_json(), "scaling": "mup"},
        {"singular_values": "v_inf of the fit v(N) = v_inf + b / sqrt(N) over the seed means"})
