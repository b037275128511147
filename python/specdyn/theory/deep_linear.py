"""Infinite-width theory of deep linear networks (depth L >= 2 hidden layers, C >= 1 outputs).

The network is h1 = W0 x / sqrt(D), h^{l+1} = A_l h^l with square bulks
A_l = W_l / sqrt(N) (l = 1 .. L-1), f_a = w_a . h^L / (gamma sqrt(N)) for C outputs,
trained by full-batch GD under muP (the backward signals, one per output, are
C-vectors per neuron). At infinite width every neuron of layer l is a
single-site process driven by Gaussian fields whose covariances are the
feature and gradient kernels of the neighbouring layers, plus response terms
(docs/theory.md, "Deep linear networks"). The C++ core solves it exactly by
forward time stepping (``_core.dmft_deep_linear_solve``), then finds the
outliers of each bulk from its singular modes
(``_core.dmft_deep_linear_outliers``). At depth 2 it reproduces
``one_bulk`` to rounding.
"""
from __future__ import annotations

import numpy as np

from .. import _core
from .. import _validate as V
from .. import results
from .. import parameterization as PZ
from ..rmt import bgn_outliers
from ..config import check_limit
from .one_bulk import MEMORY_LIMIT, _data, _outlier_steps, _steps, quarter_circle_nodes

__all__ = ["deep_linear"]

# level one keeps coefficient rows of length ~2 (T + 1)(D + 1) for (T + 1) D rows per layer
_MEMORY_LIMIT = MEMORY_LIMIT


def _check_config(config) -> None:
    check_limit(config, "deep_linear")


def memory_estimate(depth: int, input_dim: int, steps: int, nodes: int, outputs: int = 1) -> int:
    """Bytes of level one's coefficient rows and two-time kernels, plus one bulk's mode
    histories and their bases at level two (an upper bound)."""
    T1, D, C = steps + 1, input_dim, outputs
    K = 2 * T1 * (D + C)
    per_layer = T1 * (D + C) * K + T1 * T1 * (D * D + 2 * D * C + C * C) + T1 * D * T1 * D + T1 * D * K
    level_two = 4 * T1 * C * nodes * T1 * (D + C)
    return 8 * (depth * per_layer + level_two)


def deep_linear(config, data=None, nodes: int = 128, steps=None, top_k: int | None = None, outlier_steps=None,
                edge_margin: float = 1e-3, basis_tol: float = 1e-12):
    """Infinite-width curves of a deep linear network for a run configuration.

    Parameters
    ----------
    config : RunConfig with depth >= 2, activation="linear", any output_dim (either
        output_normalization), batch_size=None;
        scaling "mup" (the limit at richness gamma0) or "ntk" (the same equations at the
        effective richness gamma0 / sqrt(width)). sigma: one float or depth + 1 floats
        [sigma_W0, sigma_W1, ..., sigma_readout].
    data : (X (P, D), y (P,) or (P, 1); (P, C) for C outputs); None draws ``specdyn.data.teacher``
        from config.data_seed.
    nodes : quadrature nodes M >= 8 over each bulk's quarter circle (outliers only).
    steps : None (config.steps, output at config.tracked_steps()), an int T (every step) or a
        list of output steps (run to the largest).
    top_k : outliers per bulk and step (default config.top_k).
    outlier_steps : output steps at which to solve for outliers (default all).
    edge_margin : outliers must exceed 2 sigma_l (1 + edge_margin).
    basis_tol : relative tolerance below which a new source direction adds no coordinate.

    Returns
    -------
    xarray.Dataset, coords step, layer (the bulks "W1" .. "W{L-1}"), hidden ("h1" .. "hL"),
    rank, input (and output for C > 1); variables loss(step), beta_f(step, input[, output]),
    normalized_sharpness(step),
    singular_values(step, layer, rank) (NaN: no outlier), naive_singular_values,
    delta_singular_values, overlap_spike_left/right, feature_kernel_trace(step, hidden)
    = tr Phi^l(t, t) / D, gradient_kernel(step, hidden) = tr G^l(t, t) / C, bulk_edge_law(layer);
    attrs kind="theory",
    model="deep_linear", status, diverged_step. Cost O(L T^3 (D + C)^3) for level one plus
    O(M T^2 C (D + C) R) per bulk for the outliers, R <= (T + 1)(D + C).
    """
    _check_config(config)
    nodes = V.integer("nodes", nodes, 8)
    T, out_steps = _steps(config, steps)
    top_k = config.top_k if top_k is None else V.integer("top_k", top_k, 1)
    o_steps = _outlier_steps(outlier_steps, out_steps)
    edge_margin = V.real("edge_margin", edge_margin, 0.0)
    basis_tol = V.real("basis_tol", basis_tol, 0.0, 1e-3)
    need = memory_estimate(config.depth, config.input_dim, T, nodes, config.output_dim)
    if need > _MEMORY_LIMIT:
        raise ValueError(f"steps={T}, input_dim={config.input_dim}, depth={config.depth}, nodes={nodes} need about "
                         f"{need / 2**30:.1f} GiB for the deep linear DMFT (limit {_MEMORY_LIMIT >> 30} GiB); "
                         "use fewer steps, nodes or a smaller input_dim")
    X, y = _data(config, data)
    sig = config.layer_sigmas()
    L = config.depth
    g = PZ.effective_richness(config.scaling, config.width, config.gamma0)
    c = config.eta0 * g
    C = config.output_dim
    K = PZ.output_normalizer(config.output_normalization, C)
    flags = np.zeros(T + 1, dtype=np.uint8)
    flags[out_steps] = 1
    with np.errstate(all="ignore"):
        sol = _core.dmft_deep_linear_solve(X, y, sig, c, g, config.eta0, T, flags, config.divergence_bound,
                                           basis_tol, K)
    div = int(sol.diverged_step)
    idx = np.asarray(out_steps, dtype=np.int64)
    bulks = [f"W{l}" for l in range(1, L)]
    S = len(idx)
    shape = (S, L - 1, top_k)
    sv, naive, dsv, ol, orr = (np.full(shape, np.nan) for _ in range(5))
    pos = {n: i for i, n in enumerate(out_steps)}
    live = [n for n in o_steps if div < 0 or n < div]
    if live:
        for j, l in enumerate(range(1, L)):
            s, w = quarter_circle_nodes(nodes, sig[l])
            edge = 2.0 * sig[l] * (1.0 + edge_margin)
            res = _core.dmft_deep_linear_outliers(sol, l, s, w, live, top_k, edge)
            rows = [pos[n] for n in live]
            sv[rows, j] = res["values"]
            ol[rows, j] = res["overlap_left"]
            orr[rows, j] = res["overlap_right"]
            theta = res["delta_singular_values"]
            dsv[rows, j] = np.where(np.isfinite(theta), theta, 0.0)
            b = bgn_outliers(np.nan_to_num(theta, nan=0.0), ratio=1.0, sigma=sig[l])
            naive[rows, j] = np.where(b["is_outlier"], b["singular_values"], np.nan)
    Phi = sol.feature_kernel                       # (L, T1, T1, D, D)
    Gk = sol.gradient_kernel                       # (L, T1, T1)
    D = config.input_dim
    phi_tr = np.stack([np.trace(Phi[l][idx, idx], axis1=1, axis2=2) / D for l in range(L)], axis=1)
    if C > 1:   # the trace over outputs of each C x C block G^l(t, t), divided by C
        Gk = np.einsum("ltsaa->lts", Gk) / C
    g_diag = np.stack([Gk[l][idx, idx] for l in range(L)], axis=1)
    loss = np.asarray(sol.loss)[idx]
    if div >= 0:
        after = idx >= div
        for arr in (sv, naive, dsv, ol, orr):
            arr[after] = np.nan
    dims3 = ("step", "layer", "rank")
    coords = {"step": idx, "layer": bulks, "hidden": [f"h{l}" for l in range(1, L + 1)],
              "rank": np.arange(top_k), "input": np.arange(D)}
    beta_dims = ("step", "input")
    extra = {}
    descriptions = {"singular_values": "outliers of A_l = W_l/sqrt(N) above the bulk edge (NaN: none)",
                    "delta_singular_values": "singular values of A_l(t) - A_l(0)",
                    "gradient_kernel": "G^l(t, t) = |g^l(t)|^2 / N, equal times"}
    # ---- added for C outputs and the bulk edge: beta_f gains an output dimension, G^l(t, t) is
    # the mean over the outputs' backward signals; the edge of each bulk's initial law
    extra["bulk_edge_law"] = ("layer", [2.0 * sig[l] for l in range(1, L)])
    if C > 1:
        beta_dims = ("step", "input", "output_unit")
        coords["output_unit"] = np.arange(C)
        descriptions.update({"loss": "(1 / 2PK) sum over samples and outputs of (f - y)^2, K = 1 (sum) or C (mean)",
                             "gradient_kernel": "tr G^l(t, t) / C, G^l_ab = g^l_a . g^l_b / N (a, b outputs)"})
    # ----
    return results.dataset(
        {
            "loss": ("step", loss),
            "beta_f": (beta_dims, np.asarray(sol.beta_f)[idx]),
            "normalized_sharpness": ("step", np.asarray(sol.sharpness)[idx]),
            "singular_values": (dims3, sv),
            "naive_singular_values": (dims3, naive),
            "delta_singular_values": (dims3, dsv),
            "overlap_spike_left": (dims3, ol),
            "overlap_spike_right": (dims3, orr),
            "feature_kernel_trace": (("step", "hidden"), phi_tr),
            "gradient_kernel": (("step", "hidden"), g_diag),
            **extra,
        },
        coords,
        results.run_attrs(config, "theory", div, model="deep_linear", nodes=nodes, richness=g,
                          update_strength=float(c / K), steps_run=int(T)),
        descriptions)
