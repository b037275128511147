"""Infinite-width theory of the one-bulk model (docs/theory.md, One-bulk model).

The network is h1 = W0 x / sqrt(D), h2 = A h1 with the square bulk
A = W1 / sqrt(N), f_a = w_a . h2 / (gamma sqrt(N)) for C outputs a = 1..C,
trained by full-batch GD. Under muP its dynamics close on mode averages over
the singular values s of A(0) (quarter circle on [0, 2 sigma]); the C++ core
runs that recursion on a Gauss rule (``specdyn._core.dmft_solve_modes`` for
C = 1, ``dmft_solve_modes_outputs`` with C-vectors per mode for C > 1) and the
outlier solver (``dmft_outliers``) finds the singular values of
A(t) = A(0) + c U V^T above the bulk edge (U V^T of rank up to t C).

Public entry points:

* ``one_bulk(config, data)``: the N -> infinity curves as an ``xarray.Dataset``
  with the names of ``specdyn.simulate``.
* ``one_bulk_finite(config, weights, data)``: the same recursion on the actual
  SVD modes of one finite network: it reproduces that network's GD to rounding.
* ``quarter_circle_nodes(nodes, sigma)``: the quadrature rule.
"""
from __future__ import annotations

import math

import numpy as np

from .. import _core
from .. import _device
from .. import _validate as V
from .. import results
from .. import parameterization as PZ
from ..config import check_limit
from ..data import for_run
from ..rmt import bgn_outliers

LAYER = "W1"


def quarter_circle_nodes(nodes: int, sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre rule in phi for the quarter-circle law, s = 2 sigma sin(phi).

    rho(s) ds = (4 / pi) cos(phi)^2 dphi on [0, pi / 2]; the integrand of every
    mode average is smooth in phi. Returns (s, weights), shapes (nodes,), weights
    summing to 1.
    """
    nodes = V.integer("nodes", nodes, 8)
    sigma = V.real("sigma", sigma, 0.0, None, lo_open=True)
    x, w = np.polynomial.legendre.leggauss(nodes)
    phi = (x + 1.0) * (np.pi / 4.0)
    return 2.0 * sigma * np.sin(phi), w * np.cos(phi) ** 2


# ---- inputs ------------------------------------------------------------------------

def _check_config(config) -> None:
    check_limit(config, "one_bulk")


def _data(config, data) -> tuple[np.ndarray, np.ndarray]:
    """X (P, D) and the targets (``data.for_run``): y (P,) for one output, Y (P, C) for C > 1."""
    X, Y = for_run(config, data)
    return X, np.ascontiguousarray(Y[:, 0] if config.output_dim == 1 else Y)


def _steps(config, steps) -> tuple[int, list[int]]:
    """(T, output steps)."""
    if steps is None:
        out = config.tracked_steps()
        return config.steps, out
    if isinstance(steps, (list, tuple, np.ndarray)):
        out = sorted({V.integer("steps[]", int(s) if isinstance(s, np.integer) else s, 0) for s in steps})
        if not out:
            raise ValueError("steps must be a non-negative integer or a non-empty list of them")
        return out[-1], out
    T = V.integer("steps", steps, 0)
    return T, list(range(T + 1))


# What a theory solve may allocate (its histories and two-time kernels) before it is refused.
MEMORY_LIMIT = 4 << 30


def _check_memory(T: int, nodes: int) -> None:
    """The recursion keeps three (T+1)^2 two-time kernels and (T+1) x min(T+1, nodes) history
    coefficients; the Dataset two more (T+1)^2 kernels. Refuse sizes past MEMORY_LIMIT up front."""
    def need(T):
        T1 = T + 1
        return 8 * (5 * T1 * T1 + 2 * T1 * min(T1, nodes))
    if need(T) > MEMORY_LIMIT:
        t_max = math.isqrt(MEMORY_LIMIT // 56)  # need(T) <= 56 (T+1)^2 bytes
        while need(t_max + 1) <= MEMORY_LIMIT:
            t_max += 1
        while need(t_max) > MEMORY_LIMIT:
            t_max -= 1
        raise ValueError(f"steps = {T} needs about {need(T) / 2**30:.1f} GiB for the one-bulk DMFT "
                         f"(limit {MEMORY_LIMIT >> 30} GiB): steps must be <= {t_max} with nodes = {nodes}")


def _check_memory_outputs(T: int, length: int, outputs: int) -> None:
    """The C-output recursion keeps full histories, two ((T+1) C, L) arrays of mode rows of length L,
    and three ((T+1) C)^2 kernels."""
    rows = (T + 1) * outputs
    need = 8 * (2 * rows * length + 3 * rows * rows)
    if need > MEMORY_LIMIT:
        raise ValueError(f"steps = {T} with output_dim = {outputs} needs about {need / 2**30:.1f} GiB for the "
                         f"one-bulk DMFT with C outputs (limit {MEMORY_LIMIT >> 30} GiB): use fewer steps or nodes")


def _outlier_steps(outlier_steps, out_steps) -> list[int]:
    if outlier_steps is None:
        return list(out_steps)
    if isinstance(outlier_steps, (int, np.integer)) and not isinstance(outlier_steps, bool):
        outlier_steps = [outlier_steps]
    chosen = sorted({V.integer("outlier_steps[]", int(s) if isinstance(s, np.integer) else s, 0)
                     for s in outlier_steps})
    missing = [s for s in chosen if s not in set(out_steps)]
    if missing:
        raise ValueError(f"outlier_steps must be among the output steps; {missing} are not")
    return chosen


# ---- the solver --------------------------------------------------------------------

def _sharpness_flags(steps, sharpness_steps):
    """(steps + 1,) uint8 flags of the steps whose sharpness is taken; None: every step."""
    if sharpness_steps is None:
        return None
    flags = np.zeros(steps + 1, dtype=np.uint8)
    flags[list(sharpness_steps)] = 1
    return flags


def solve_modes(s, weights, a0, B0, X, y, c, richness, eta0, steps, history_tol=1e-13, sharpness_steps=None):
    """Run the mode recursion in the C++ core (no argument checks: internal and tests).

    s, weights (M,); a0 (M, R), B0 (M, D, R) coefficient rows of omega and zeta at t = 0;
    X (P, D), y (P,); c = eta0 * richness. Returns the core's ``DmftModeSolution``
    (loss, beta_f, Cw, Cq, Cqm, sharpness; compressed histories for ``dmft_outliers``).
    """
    return _core.dmft_solve_modes(np.ascontiguousarray(s, float), np.ascontiguousarray(weights, float),
                                  np.ascontiguousarray(a0, float), np.ascontiguousarray(B0, float),
                                  X, y, float(c), float(richness), float(eta0), int(steps),
                                  float(history_tol), _sharpness_flags(steps, sharpness_steps))


def solve_modes_direct(module, s, weights, a0, B0, X, y, c, richness, eta0, steps, history_tol=1e-13,
                       sharpness_steps=None):
    """The same recursion in its direct form (full histories, dmft_direct.hpp) on ``module``.

    ``module`` is ``specdyn._cuda`` (the device) or ``_core.device_emulation`` (the device
    algorithm on the host). The Grams come back from the device; the normalized
    sharpness eta0 lambda_max(Sigma^1/2 Mm Sigma^1/2), Mm = (<y y^T> + Cw(n, n) <zeta zeta^T>
    + <m m> I) / D, is taken here on the host, and the histories are compressed
    (tolerance history_tol) into the core's ``DmftModeSolution`` for ``dmft_outliers``.
    """
    T = int(steps)
    gram = list(range(T + 1)) if sharpness_steps is None else sorted({int(n) for n in sharpness_steps})
    d = module.dmft_direct(np.ascontiguousarray(s, float), np.ascontiguousarray(weights, float),
                           np.ascontiguousarray(a0, float), np.ascontiguousarray(B0, float),
                           np.ascontiguousarray(X, float), np.ascontiguousarray(y, float),
                           float(c), float(richness), T, gram)
    P, D = X.shape
    evals, evecs = np.linalg.eigh(X.T @ X / P)
    root = (evecs * np.sqrt(np.maximum(evals, 0.0))) @ evecs.T
    sharp = np.full(T + 1, np.nan)
    for i, n in enumerate(d["gram_steps"]):
        Mm = (d["YY"][i] + d["Cw"][n, n] * d["BB"][i] + d["mm"][n] * np.eye(D)) / D
        with np.errstate(all="ignore"):
            if np.all(np.isfinite(Mm)):
                sharp[n] = eta0 * np.linalg.eigvalsh(root @ Mm @ root)[-1]
    return _core.dmft_solution_from_histories(d, sharp, float(history_tol))


def limit_initial(s, input_dim: int, sigma_in: float, sigma_out: float, outputs: int = 1
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Coefficient rows at t = 0 in xi ~ N(0, I_{C+D}): omega_a(0) = sigma_out xi_a, zeta(0) = sigma_in xi_{C:}.

    a0 has shape (M, C + D) for one output (the layout of ``solve_modes``) and
    (M, C, C + D) for C > 1 (``solve_modes_outputs``); B0 (M, D, C + D).
    """
    M, D, C = len(s), input_dim, outputs
    a0 = np.zeros((M, C, C + D))
    a0[:, np.arange(C), np.arange(C)] = sigma_out
    B0 = np.zeros((M, D, C + D))
    B0[:, np.arange(D), C + np.arange(D)] = sigma_in
    return (a0[:, 0] if C == 1 else a0), B0


class _OutputsSolution:
    """The C-output solution in the shapes ``_dataset`` reads: C_w, C_q averaged over the
    outputs (tr Cw(i, j) / C), beta_f (T + 1, D, C), outliers of A(n) at history row n C."""

    def __init__(self, sol):
        self.core = sol
        self.steps = sol.steps
        self.outputs = sol.outputs
        self.loss = sol.loss
        self.beta_f = sol.beta_f
        self.sharpness = sol.sharpness
        self.Cw = np.einsum("iaja->ij", sol.Cw) / sol.outputs
        self.Cq = np.einsum("iaja->ij", sol.Cq) / sol.outputs


def solve_modes_outputs(s, weights, a0, B0, X, Y, c, richness, eta0, steps, output_normalizer=1.0,
                        history_tol=1e-13, sharpness_steps=None):
    """The recursion with C outputs in the C++ core (no argument checks: internal and tests).

    a0 (M, C, R), B0 (M, D, R), Y (P, C); c = eta0 * richness (divided by
    output_normalizer inside, with the loss and the sharpness).
    """
    return _core.dmft_solve_modes_outputs(np.ascontiguousarray(s, float), np.ascontiguousarray(weights, float),
                                          np.ascontiguousarray(a0, float), np.ascontiguousarray(B0, float),
                                          X, Y, float(c), float(richness), float(eta0), int(steps),
                                          float(output_normalizer), float(history_tol),
                                          _sharpness_flags(steps, sharpness_steps))


def _dataset(config, sol, out_steps, outlier_steps, top_k, c, edge, sigma_bulk, kind_attrs):
    T = sol.steps
    idx = np.asarray(out_steps, dtype=np.int64)
    loss = np.asarray(sol.loss)
    diverged = np.flatnonzero(~np.isfinite(loss) | (loss > config.divergence_bound))
    div_step = int(diverged[0]) if diverged.size else -1
    live = [n for n in outlier_steps if div_step < 0 or n < div_step]
    S = len(idx)
    sv = np.full((S, 1, top_k), np.nan)
    naive = np.full((S, 1, top_k), np.nan)
    dsv = np.full((S, 1, top_k), np.nan)
    ol = np.full((S, 1, top_k), np.nan)
    orr = np.full((S, 1, top_k), np.nan)
    if live:
        if isinstance(sol, _OutputsSolution):   # rows (j, a) of the history, j < n
            res = _core.dmft_outliers(sol.core.history, [n * sol.outputs for n in live], top_k, float(c),
                                      float(edge))
        else:
            res = _core.dmft_outliers(sol, live, top_k, float(c), float(edge))
        pos = {n: i for i, n in enumerate(out_steps)}
        for i, n in enumerate(live):
            j = pos[n]
            sv[j, 0] = res["values"][i]
            ol[j, 0] = res["overlap_left"][i]
            orr[j, 0] = res["overlap_right"][i]
            theta = c * res["spikes"][i]                     # singular values of A(n) - A(0)
            dsv[j, 0] = np.where(np.isfinite(theta), theta, 0.0 if n > 0 else np.nan)
            if n == 0:
                dsv[j, 0] = 0.0
            th = np.nan_to_num(theta, nan=0.0)
            b = bgn_outliers(th, ratio=1.0, sigma=sigma_bulk)
            naive[j, 0] = np.where(b["is_outlier"], b["singular_values"], np.nan)
    Cw = np.asarray(sol.Cw)
    Cq = np.asarray(sol.Cq)
    beta_f = np.asarray(sol.beta_f)[idx]
    sharp = np.asarray(sol.sharpness)[idx]
    if div_step >= 0:
        after = idx >= div_step
        for arr in (sv, naive, dsv, ol, orr):
            arr[after] = np.nan
    coords = {"step": idx, "layer": [LAYER], "rank": np.arange(top_k), "input": np.arange(config.input_dim),
              "step_b": idx}
    beta_dims = ("step", "input")
    descriptions = {"singular_values": "outliers of A = W1/sqrt(N) above the bulk edge (NaN: none)",
                    "delta_singular_values": "singular values of A(t) - A(0) = c U V^T"}
    # ---- C outputs: beta_f gains an output dimension; C_w, C_q are means over the outputs
    if isinstance(sol, _OutputsSolution):
        beta_dims = ("step", "input", "output_unit")
        coords["output_unit"] = np.arange(sol.outputs)
        descriptions.update({"loss": "(1 / 2PK) sum over samples and outputs of (f - y)^2, K = 1 (sum) or C (mean)",
                             "C_w": "mean over the C readout rows w_a of |w_a(t)|^2 / N",
                             "C_q": "mean over the C outputs of |q_a(t)|^2 / N"})
    # ----
    dims3 = ("step", "layer", "rank")
    return results.dataset(
        {
            "loss": ("step", loss[idx]),
            "beta_f": (beta_dims, beta_f),
            "normalized_sharpness": ("step", sharp),
            "singular_values": (dims3, sv),
            "naive_singular_values": (dims3, naive),
            "delta_singular_values": (dims3, dsv),
            "overlap_spike_left": (dims3, ol),
            "overlap_spike_right": (dims3, orr),
            "C_w": ("step", np.diag(Cw)[idx]),
            "C_q": ("step", np.diag(Cq)[idx]),
            "C_w_two_time": (("step", "step_b"), Cw[np.ix_(idx, idx)]),
            "C_q_two_time": (("step", "step_b"), Cq[np.ix_(idx, idx)]),
        },
        coords,
        results.run_attrs(config, kind_attrs["kind"], div_step, update_strength=float(c), bulk_edge=float(edge),
                          steps_run=int(T), **{k: v for k, v in kind_attrs.items() if k != "kind"}),
        descriptions)


def one_bulk(config, data=None, nodes: int = 128, steps=None, top_k: int | None = None, outlier_steps=None,
             edge_margin: float = 1e-3, history_tol: float = 1e-13, device: str = "cpu"):
    """Infinite-width curves of the one-bulk model for a run configuration.

    Parameters
    ----------
    config : RunConfig with depth=2, activation="linear", any output_dim C (either
        output_normalization), batch_size=None, scaling "mup" (the muP limit, richness
        gamma0) or "ntk" (the same recursion at the effective richness gamma0 / sqrt(width)
        of ``parameterization.effective_richness``). sigma may be one float or
        [sigma_W0, sigma_bulk, sigma_readout].
    data : (X (P, D), y (P,) or (P, C)) with P = config.samples, D = config.input_dim;
        None draws the teacher of ``specdyn.data.teacher`` from config.data_seed.
    nodes : quadrature nodes M >= 8 over the quarter circle.
    steps : None (config.steps, output at config.tracked_steps()), an int T (every step
        0..T) or a list of output steps (run to the largest).
    top_k : outliers reported per step (default config.top_k).
    outlier_steps : output steps at which to solve for outliers (default all of them).
    edge_margin : outliers must exceed 2 sigma_bulk (1 + edge_margin).
    history_tol : relative tolerance of the compressed histories (0: exact to rounding).
    device : "cpu" (the compressed C++ solver), "cuda" (the direct recursion on the GPU:
        nodes in parallel, mode averages as deterministic reductions, full histories in
        device memory, O(T M (1 + D)) doubles; the outliers are then solved on the host
        from the device's histories) or "host-emulation" (the device algorithm on the
        host, for tests). "cuda" without a usable GPU raises RuntimeError saying why.

    Returns
    -------
    xarray.Dataset with coords step, layer=["W1"], rank, input (and step_b for the
    two-time order parameters; output_unit for C > 1) and variables loss(step),
    beta_f(step, input) (beta_f(step, input, output_unit) for C > 1),
    normalized_sharpness(step), singular_values(step, layer, rank) (NaN: no outlier),
    naive_singular_values, delta_singular_values, overlap_spike_left/right,
    C_w(step), C_q(step), C_w_two_time / C_q_two_time(step, step_b) (means over the
    outputs); attrs kind="theory", bulk_edge. Cost O(T^2 M D) at worst, O(T M D (r + D))
    with a history of numerical rank r; for C > 1, O(T^2 C^2 M (C + D)) with full histories.
    """
    _check_config(config)
    device = _device.check(device)
    direct = _device.module(device, "theory.one_bulk") if device != "cpu" else None
    nodes = V.integer("nodes", nodes, 8)
    T, out_steps = _steps(config, steps)
    _check_memory(T, nodes)
    top_k = config.top_k if top_k is None else V.integer("top_k", top_k, 1)
    o_steps = _outlier_steps(outlier_steps, out_steps)
    edge_margin = V.real("edge_margin", edge_margin, 0.0)
    history_tol = V.real("history_tol", history_tol, 0.0, 1e-3)
    X, y = _data(config, data)
    sig_in, sig_bulk, sig_out = config.layer_sigmas()
    g = PZ.effective_richness(config.scaling, config.width, config.gamma0)
    c = config.eta0 * g
    s, wts = quarter_circle_nodes(nodes, sig_bulk)
    C = config.output_dim
    a0, B0 = limit_initial(s, config.input_dim, sig_in, sig_out, C)
    edge = 2.0 * sig_bulk * (1.0 + edge_margin)
    attrs = {"kind": "theory", "model": "one_bulk", "nodes": nodes, "richness": g, "device": device}
    if C > 1:
        if direct is not None:
            raise ValueError(f"device must be 'cpu' for output_dim > 1 (got {device!r}); the device recursion "
                             "carries one output")
        K = PZ.output_normalizer(config.output_normalization, C)
        _check_memory_outputs(T, nodes * (C + config.input_dim), C)
        with np.errstate(all="ignore"):
            sol = _OutputsSolution(solve_modes_outputs(s, wts, a0, B0, X, y, c, g, config.eta0, T, K, history_tol,
                                                       sharpness_steps=out_steps))
        return _dataset(config, sol, out_steps, o_steps, top_k, c / K, edge, sig_bulk, attrs)
    with np.errstate(all="ignore"):
        if direct is None:
            sol = solve_modes(s, wts, a0, B0, X, y, c, g, config.eta0, T, history_tol, sharpness_steps=out_steps)
        else:
            sol = solve_modes_direct(direct, s, wts, a0, B0, X, y, c, g, config.eta0, T, history_tol,
                                     sharpness_steps=out_steps)
    return _dataset(config, sol, out_steps, o_steps, top_k, c, edge, sig_bulk, attrs)


def one_bulk_finite(config, weights, data=None, steps=None, top_k: int | None = None, outlier_steps=None,
                    history_tol: float = 0.0):
    """The same recursion on the actual SVD modes of one finite network.

    ``weights`` = (W0 (N, D), W1 (N, N), w (N,) or (1, N); (C, N) for C outputs): raw weights at t = 0 of the
    network of ``config`` (width N = config.width). One node per singular mode of
    A(0) = W1 / sqrt(N) with weight 1/N; the result equals that network's full-batch
    GD to rounding (loss, beta_f, sharpness, the top singular values of A(t) above
    the largest s_k(0)). Same Dataset schema as ``one_bulk``, kind="finite_modes".
    Cost O(N^3) for the SVD plus O(T N (T + D)).
    """
    _check_config(config)
    T, out_steps = _steps(config, steps)
    _check_memory(T, config.width)
    top_k = config.top_k if top_k is None else V.integer("top_k", top_k, 1)
    o_steps = _outlier_steps(outlier_steps, out_steps)
    history_tol = V.real("history_tol", history_tol, 0.0, 1e-3)
    X, y = _data(config, data)
    N, D, C = config.width, config.input_dim, config.output_dim
    w_shape = f"({N},)" if C == 1 else f"({C}, {N})"
    if not isinstance(weights, (tuple, list)) or len(weights) != 3:
        raise ValueError(f"weights must be (W0 ({N}, {D}), W1 ({N}, {N}), w {w_shape})")
    W0 = V.finite_array("weights W0", weights[0], ndim=2).astype(np.float64)
    W1 = V.finite_array("weights W1", weights[1], ndim=2).astype(np.float64)
    w = V.finite_array("weights w", weights[2], ndim=(1, 2)).astype(np.float64)
    w = w.reshape(-1) if C == 1 else w
    if W0.shape != (N, D) or W1.shape != (N, N) or w.shape != ((N,) if C == 1 else (C, N)):
        raise ValueError(f"weights must have shapes W0 ({N}, {D}), W1 ({N}, {N}), w {w_shape}; got "
                         f"{W0.shape}, {W1.shape}, {np.shape(weights[2])}")
    sc = PZ.scales(config.scaling, N, 2, D, C, config.gamma0, config.eta0, config.sigma)
    A = sc.layers[1].normalizer * W1
    U, s, Vt = np.linalg.svd(A)
    B0 = (Vt @ W0)[:, :, None]
    g = PZ.effective_richness(config.scaling, N, config.gamma0)
    c = config.eta0 * g
    edge = float(s[0]) * (1.0 + 1e-12)
    attrs = {"kind": "finite_modes", "model": "one_bulk", "nodes": N, "richness": g}
    if C > 1:
        K = PZ.output_normalizer(config.output_normalization, C)
        _check_memory_outputs(T, N, C)
        with np.errstate(all="ignore"):
            sol = _OutputsSolution(solve_modes_outputs(s, np.full(N, 1.0 / N), (U.T @ w.T)[:, :, None], B0, X, y,
                                                       c, g, config.eta0, T, K, history_tol,
                                                       sharpness_steps=out_steps))
        return _dataset(config, sol, out_steps, o_steps, top_k, c / K, edge, config.layer_sigma(1), attrs)
    a0 = (U.T @ w)[:, None]
    with np.errstate(all="ignore"):
        sol = solve_modes(s, np.full(N, 1.0 / N), a0, B0, X, y, c, g, config.eta0, T, history_tol,
                          sharpness_steps=out_steps)
    return _dataset(config, sol, out_steps, o_steps, top_k, c, edge, config.layer_sigma(1), attrs)
