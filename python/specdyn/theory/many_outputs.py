"""The proportional many-output limit of the two-layer linear model (docs/theory.md,
"Many outputs: the proportional limit").

C = kappa N outputs, D = alpha_D N inputs, population loss, the teacher-driven
(frozen-error) regime gamma0 -> infinity at fixed rate c = eta0 gamma0. There the
first layer is A(t) = A(0) p_t(R) + B(0)^T T u_t(R) with R = T^T T, so A(t) A(t)^T
is a Gaussian matrix times a deterministic population matrix: its spectrum solves
one scalar self-consistent resolvent equation per point (generalized
Marchenko-Pastur), with the population law the image of the teacher's spectrum.

``many_outputs_density`` solves it (NumPy, vectorized over the grid),
``many_outputs_crossover`` finds the kappa at which the teacher-driven island of
singular values merges into the bulk, and ``many_outputs_simulation`` is the
finite-N population GD of the same network in plain NumPy (full matrices, any
gamma0), the reference the limit is checked against.

``many_outputs_isotropic_density`` is the exact limit at finite gamma0 for an isotropic
teacher (T^T T = tau^2 I, C >= D) and a zero-initialized readout, where A(t) = A(0) a_t(S).
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from .. import _validate as V
from .. import results, rmt


def _common(kappa, alpha_d, rate, steps, sigma, sigma_readout, teacher_scale):
    return dict(kappa=V.real("kappa", kappa, 0.0, None, lo_open=True),
                alpha_d=V.real("alpha_d", alpha_d, 0.0, None, lo_open=True),
                rate=V.real("rate", rate, 0.0),
                steps=V.integer("steps", steps, 0, 10_000),
                sigma=V.real("sigma", sigma, 0.0, None, lo_open=True),
                sigma_readout=V.real("sigma_readout", sigma_readout, 0.0),
                teacher_scale=V.real("teacher_scale", teacher_scale, 0.0))


def _gamma0(gamma0) -> float:
    if isinstance(gamma0, bool) or not isinstance(gamma0, (int, float)) or not gamma0 > 0:
        raise ValueError(f"gamma0 must be a real number in (0, inf]; got {gamma0!r}")
    return float(gamma0)


def _tracked(steps: int, track_every) -> np.ndarray:
    if isinstance(track_every, (list, tuple, np.ndarray)):
        return np.array(sorted({V.integer("track_every[]", s, 0, steps) for s in track_every} | {steps}), dtype=np.int64)
    every = V.integer("track_every", track_every, 1, max(steps, 1))
    return np.array(sorted(set(range(0, steps + 1, every)) | {steps}), dtype=np.int64)


# ---------------------------------------------------------------------------------
# the mode recursion on the teacher's spectrum
# ---------------------------------------------------------------------------------
def teacher_nodes(kappa: float, alpha_d: float, teacher_scale: float = 1.0, nodes: int = 200):
    """Quadrature of the law of the D eigenvalues r of R = T^T T (T = teacher_scale G / sqrt(D),
    G a C x D standard Gaussian, C / D = kappa / alpha_d): (r, weight), the atom at r = 0
    (weight 1 - C/D when C < D) first. The nonzero part is Marchenko-Pastur with ratio C/D,
    taken with a Gauss-Chebyshev (second kind) rule in the variable of its support."""
    ratio = kappa / alpha_d
    lo, hi = rmt.marchenko_pastur_edges(ratio, teacher_scale) if teacher_scale > 0 else (0.0, 0.0)
    k = np.arange(1, nodes + 1)
    theta = k * np.pi / (nodes + 1)
    r = 0.5 * (lo + hi) + 0.5 * (hi - lo) * np.cos(theta)
    # density sqrt((hi - r)(r - lo)) / r and dr = half-width sin(theta) dtheta: weight ~ sin^2(theta) / r
    w = np.sin(theta) ** 2 / np.maximum(r, 1e-300)
    w *= min(ratio, 1.0) / w.sum()
    if ratio < 1.0:
        r, w = np.concatenate([[0.0], r]), np.concatenate([[1.0 - ratio], w])
    return r, w


def mode_recursion(r, rate: float, alpha_d: float, steps: int):
    """p_t(r), u_t(r) for t = 0..steps: A(t) = A(0) p_t(R) + B(0)^T T u_t(R) (frozen error e = -T).

    p_{t+1} = p_t + (c / alpha_D) r q_t,   q_{t+1} = q_t + c p_t      (A(0) -> B^T T -> T A^T loop)
    u_{t+1} = u_t + (c / alpha_D) v_t,     v_{t+1} = v_t + c r u_t    (B(0) -> A -> B loop)
    with p_0 = v_0 = 1, q_0 = u_0 = 0. Returns two arrays (steps + 1, len(r))."""
    r = np.asarray(r, float)
    p, q, u, v = np.ones_like(r), np.zeros_like(r), np.zeros_like(r), np.ones_like(r)
    ps, us = [p], [u]
    for _ in range(steps):
        p, q, u, v = p + rate / alpha_d * r * q, q + rate * p, u + rate / alpha_d * v, v + rate * r * u
        ps.append(p)
        us.append(u)
    return np.array(ps), np.array(us)


def population_law(p, u, r, alpha_d: float, sigma: float, sigma_readout: float):
    """The values g of the population law of A(t) A(t)^T = Z diag(g) Z^T / D (Z iid N(0,1), N x D):
    g(r) = sigma^2 p(r)^2 + alpha_D sigma_readout^2 r u(r)^2 (one per node; weights = the nodes')."""
    return sigma**2 * p**2 + alpha_d * sigma_readout**2 * r * u**2


# ---------------------------------------------------------------------------------
# generalized Marchenko-Pastur: m(z) = 1 / (-z + E_g[g / (1 + g m / alpha_D)])
# ---------------------------------------------------------------------------------
def _stieltjes(lam, g, w, alpha_d: float, eps_final: float = 1e-9, continuation: int = 32, newton: int = 4):
    """m(lambda + i0) = (1/N) tr (A A^T - z)^{-1} for real lambda, by Newton on
    F(m) = 1/m + z - E[g / (1 + g m / alpha_D)] along z = lambda + i eps, eps from the
    spectrum's scale down to eps_final times it (the root with Im m > 0 followed continuously)."""
    scale = max(float(np.max(g)) * (1 + 1 / alpha_d), 1e-300)
    lam = np.asarray(lam, float)
    wg, wg2 = w * g, w * g**2 / alpha_d
    ga = g[None, :] / alpha_d

    def F(m, z):
        inv = 1.0 / (1.0 + ga * m[:, None])
        return 1.0 / m + z - inv @ wg, -1.0 / m**2 + (inv * inv) @ wg2

    z = lam + 1j * scale
    m = -1.0 / z
    for _ in range(30):  # at Im z ~ the scale the fixed-point map contracts
        m = 1.0 / (-z + (1.0 / (1.0 + ga * m[:, None])) @ wg)
    for eps in scale * np.geomspace(1.0, eps_final, continuation):
        z = lam + 1j * eps
        for _ in range(newton):
            f, df = F(m, z)
            step = f / df
            new = m - step
            # stay on the branch Im m > 0: halve a step that crosses the real axis
            for _ in range(30):
                bad = new.imag < 0
                if not bad.any():
                    break
                step = np.where(bad, step / 2, step)
                new = m - step
            m = new
    return m, z


def _edge(g, w, alpha_d: float) -> float:
    """Top edge of the spectrum of A A^T: z(m*) with z'(m*) = 0 on (-alpha_D / g_max, 0), where
    z(m) = -1/m + E[g / (1 + g m / alpha_D)] (z' increases there, so one root; bisection)."""
    gmax = float(g.max())
    zp = lambda m: 1.0 / m**2 - np.sum(w * g**2 / alpha_d / (1.0 + g * m / alpha_d) ** 2)
    lo, hi = -alpha_d / gmax * (1 - 1e-15), -alpha_d / gmax * 1e-9
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if zp(mid) < 0:
            lo = mid
        else:
            hi = mid
    m = 0.5 * (lo + hi)
    return float(-1.0 / m + np.sum(w * g / (1.0 + g * m / alpha_d)))


def _island_gap(g, w, alpha_d: float, g_bulk: float):
    """The gap (lambda_lo, lambda_hi) between the bulk of the atom g_bulk (the directions the
    teacher does not touch) and the teacher-driven island (the nodes with g > g_bulk), or None.
    Outside the support z'(m) > 0 (Silverstein-Choi); the gap is the z-image of the m-interval
    between the island's lowest pole -alpha_D / g_1 and the atom's pole -alpha_D / g_bulk where
    z' > 0."""
    island = g > g_bulk * (1 + 1e-12)
    if not island.any():
        return None
    g1 = float(g[island].min())
    lo_m, hi_m = -alpha_d / g1, -alpha_d / g_bulk
    ms = np.linspace(lo_m, hi_m, 4002)[1:-1]
    den = 1.0 + g[None, :] * ms[:, None] / alpha_d
    zp = 1.0 / ms**2 - (w * g**2 / alpha_d / den**2).sum(1)
    pos = np.flatnonzero(zp > 0)
    if pos.size == 0:
        return None
    z = -1.0 / ms + (w * g / den).sum(1)
    # z is monotone where z' > 0: the gap runs between z at the ends of that m-interval
    return tuple(sorted((float(z[pos[0]]), float(z[pos[-1]]))))


def many_outputs_density(kappa: float, alpha_d: float = 1.0, rate: float = 0.1, steps: int = 10, *,
                         sigma: float = 1.0, sigma_readout: float = 1.0, teacher_scale: float = 1.0,
                         track_every=1, grid: int = 400, s_max: float | None = None, nodes: int = 200) -> xr.Dataset:
    """Limit density of the singular values of the first layer A(t) = W0(t) / sqrt(D) of the
    two-layer linear network f(x) = W1 W0 x / (gamma0 sqrt(N D)) with C = kappa N outputs and
    D = alpha_D N inputs, trained by GD on the population loss (summed over outputs) at the
    proportional rate (raw rate eta0 gamma0^2 N, docs/theory.md), in the limit N -> infinity,
    then gamma0 -> infinity at fixed ``rate`` c = eta0 gamma0 (the error stays the teacher's).

    ``sigma``: init std of W0, ``sigma_readout``: of W1 (0 is the zero-initialized readout),
    ``teacher_scale``: tau in y = tau G x / sqrt(D), G a C x D standard Gaussian. ``grid``
    points on [0, s_max] (default 1.1 times the largest edge), ``nodes`` of the teacher law.

    Returns an ``xarray.Dataset`` with coords ``step``, ``s`` and

    - ``singular_value_density(step, s)``: density of the min(N, D) nonzero singular values of A(t);
    - ``bulk_edge(step)``: top edge of its support;
    - ``island_gap_lower(step)``, ``island_gap_upper(step)``: the gap between the untouched bulk and
      the teacher-driven island (NaN when they touch), ``island_isolated(step)``: whether there is one;
    - ``mean_squared_singular_value(step)``: (1/N) tr A A^T = E[g] in closed form (a check of the
      density).
    """
    a = _common(kappa, alpha_d, rate, steps, sigma, sigma_readout, teacher_scale)
    grid = V.integer("grid", grid, 8, 1_000_000)
    nodes = V.integer("nodes", nodes, 8, 100_000)
    if s_max is not None:
        s_max = V.real("s_max", s_max, 0.0, None, lo_open=True)
    tracked = _tracked(a["steps"], track_every)
    r, w = teacher_nodes(a["kappa"], a["alpha_d"], a["teacher_scale"], nodes)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported just below
        p, u = mode_recursion(r, a["rate"], a["alpha_d"], a["steps"])
        laws = [population_law(p[t], u[t], r, a["alpha_d"], a["sigma"], a["sigma_readout"]) for t in tracked]
    if not all(np.all(np.isfinite(g)) for g in laws):
        raise ValueError(f"rate = {a['rate']:g} over steps = {a['steps']} overflows float64 (the teacher modes grow "
                         "like (1 + rate / sqrt(alpha_d))^steps); lower rate or steps")
    edges = np.array([_edge(g, w, a["alpha_d"]) for g in laws])
    top = float(np.sqrt(edges.max())) * 1.1 if s_max is None else s_max
    s = np.linspace(0.0, top, grid)
    nonzero = min(1.0, a["alpha_d"])  # share of nonzero eigenvalues of A A^T among its N
    dens = np.empty((len(tracked), grid))
    gap_lo, gap_hi = np.full(len(tracked), np.nan), np.full(len(tracked), np.nan)
    g_bulk = a["sigma"] ** 2  # p(0) = 1, u(0)-term vanishes at r = 0
    for i, g in enumerate(laws):
        m, z = _stieltjes(s**2, g, w, a["alpha_d"])
        if a["alpha_d"] < 1:  # N > D: remove the atom (1 - D/N) at 0, whose Lorentzian at finite eps leaks
            m = m + (1 - a["alpha_d"]) / z
        dens[i] = 2 * s * np.maximum(m.imag, 0.0) / np.pi / nonzero
        gap = _island_gap(g, w, a["alpha_d"], g_bulk)
        if gap is not None:
            gap_lo[i], gap_hi[i] = np.sqrt(max(gap[0], 0.0)), np.sqrt(gap[1])
    return results.dataset(
        {
            "singular_value_density": (("step", "s"), dens),
            "bulk_edge": ("step", np.sqrt(edges)),
            "island_gap_lower": ("step", gap_lo),
            "island_gap_upper": ("step", gap_hi),
            "island_isolated": ("step", np.isfinite(gap_lo)),
            "mean_squared_singular_value": ("step", np.array([np.sum(w * g) for g in laws])),
        },
        {"step": tracked, "s": s},
        {"kind": "theory", "model": "many_outputs", "limit": "N -> inf, then gamma0 -> inf at fixed rate",
         **{k: (float(v) if k != "steps" else int(v)) for k, v in a.items()}, "nodes": nodes},
        {"singular_value_density": "of W0(t) / sqrt(D), over its min(N, D) nonzero singular values",
         "mean_squared_singular_value": "E[g] over the population law: a closed-form check of the density"})


def many_outputs_crossover(alpha_d: float = 1.0, rate: float = 0.1, steps: int = 10, *, sigma: float = 1.0,
                           sigma_readout: float = 1.0, teacher_scale: float = 1.0, nodes: int = 400,
                           kappa_max: float = 64.0, tol: float = 1e-4) -> float:
    """The kappa = C / N above which the teacher-driven singular values of A(steps) no longer
    stand apart from the bulk (the island merges): bisection on ``island_isolated``. NaN when they are
    not separated even as kappa -> 0 (the teacher spike is below the BBP threshold)."""
    a = _common(1.0, alpha_d, rate, steps, sigma, sigma_readout, teacher_scale)
    kappa_max = V.real("kappa_max", kappa_max, 0.0, None, lo_open=True)
    tol = V.real("tol", tol, 0.0, None, lo_open=True)

    def isolated(kappa):
        r, w = teacher_nodes(kappa, a["alpha_d"], a["teacher_scale"], nodes)
        p, u = mode_recursion(r, a["rate"], a["alpha_d"], a["steps"])
        g = population_law(p[-1], u[-1], r, a["alpha_d"], a["sigma"], a["sigma_readout"])
        return _island_gap(g, w, a["alpha_d"], a["sigma"] ** 2) is not None

    lo = tol
    if not isolated(lo):
        return float("nan")
    hi = kappa_max
    if isolated(hi):
        return float("inf")
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if isolated(mid) else (lo, mid)
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------------------------
# the finite-N reference: population GD on the full matrices
# ---------------------------------------------------------------------------------
def many_outputs_simulation(width: int, kappa: float, alpha_d: float = 1.0, rate: float = 0.1, steps: int = 10, *,
                            gamma0: float = np.inf, sigma: float = 1.0, sigma_readout: float = 1.0,
                            teacher_scale: float = 1.0, seed: int = 0, track_every=1, outputs: int | None = None,
                            teacher_term: bool = True, teacher: str = "gaussian") -> xr.Dataset:
    """Population GD of f(x) = W1 W0 x / (gamma0 sqrt(N D)) in normalized coordinates
    A = W0 / sqrt(D), B = W1 / sqrt(N), error E = B A / gamma0 - T (E = -T when gamma0 is inf):

        A <- A - (c / alpha_D) B^T E,    B <- B - c E A^T,    c = ``rate``.

    ``teacher``: "gaussian" (T = tau G / sqrt(D)) or "orthogonal" (T = tau Q with Q^T Q = I_D, C >= D:
    the isotropic teacher of ``many_outputs_isotropic_density``).
    ``outputs`` overrides C = round(kappa N) (C fixed, for the finite-C side of the crossover);
    ``teacher_term=False`` drops T from E (for the mutation checks). Returns ``singular_values``
    (step, index) of A(t), all min(N, D), descending, and the population ``loss`` per output."""
    a = _common(kappa, alpha_d, rate, steps, sigma, sigma_readout, teacher_scale)
    n = V.integer("width", width, 2, 1 << 15)
    gamma0 = _gamma0(gamma0)
    d = max(1, round(a["alpha_d"] * n))
    c_out = max(1, round(a["kappa"] * n)) if outputs is None else V.integer("outputs", outputs, 1, 1 << 16)
    tracked = _tracked(a["steps"], track_every)
    rng = np.random.default_rng(V.integer("seed", seed, 0))
    A = a["sigma"] * rng.standard_normal((n, d)) / np.sqrt(d)
    B = a["sigma_readout"] * rng.standard_normal((c_out, n)) / np.sqrt(n)
    V.choice("teacher", teacher, ("gaussian", "orthogonal"))
    if teacher == "orthogonal" and c_out < d:
        raise ValueError(f"teacher 'orthogonal' needs output_dim >= input_dim (kappa >= alpha_d); got C = {c_out}, "
                         f"D = {d}")
    G = rng.standard_normal((c_out, d))
    T = a["teacher_scale"] * (G / np.sqrt(d) if teacher == "gaussian" else np.linalg.qr(G)[0])
    if not teacher_term:
        T = np.zeros_like(T)
    c, alpha = a["rate"], d / n
    out, loss = [], []
    for t in range(a["steps"] + 1):
        E = -T if np.isinf(gamma0) else B @ A / gamma0 - T
        if t in tracked:
            out.append(np.linalg.svd(A, compute_uv=False))
            loss.append(0.5 * np.sum(E**2) / c_out)
        if t == a["steps"]:
            break
        A, B = A - (c / alpha) * (B.T @ E), B - c * (E @ A.T)
    return results.dataset({"singular_values": (("step", "index"), np.array(out)), "loss": ("step", np.array(loss))},
                           {"step": tracked},
                           {"kind": "simulation", "model": "many_outputs", "width": n, "input_dim": d,
                            "output_dim": c_out, "seed": int(seed), "gamma0": float(gamma0), **a},
                           {"singular_values": "all min(N, D) singular values of W0(t) / sqrt(D), descending",
                            "loss": "population loss per output, ||B A / gamma0 - T||_F^2 / (2 C)"})


def many_outputs_gap_scan(kappas, widths=(256, 512), seeds=(0, 1), alpha_d: float = 1.0, rate: float = 0.15,
                          steps: int = 10, *, sigma: float = 1.0, sigma_readout: float = 1.0,
                          teacher_scale: float = 1.0, neighbours: int = 5, resolved_ratio: float = 3.0) -> xr.Dataset:
    """How the C teacher-driven singular values of A(steps) merge into the bulk as C = kappa N grows:
    simulation (``many_outputs_simulation``) beside the limit (``many_outputs_density``).

    Per (kappa, width, seed): ``island_gap`` = s_C - s_{C+1} (the C-th and (C+1)-th singular values, the
    split a separated island of C values makes), ``island_spacing`` = the mean of the ``neighbours``
    spacings on each side of it, ``island_resolved`` = gap > ``resolved_ratio`` x spacing. Per
    kappa: ``island_gap_theory`` = the width of the gap of the limit (0 when merged). attrs ``kappa_theory``
    (``many_outputs_crossover``) and, per width, ``kappa_simulation_<N>``: the first kappa of the
    grid at which a majority of seeds is not resolved."""
    kappas = np.array(sorted({V.real("kappas[]", k, 0.0, None, lo_open=True) for k in np.atleast_1d(kappas)}))
    widths = [V.integer("widths[]", n, 8) for n in np.atleast_1d(widths)]
    seeds = [V.integer("seeds[]", s, 0) for s in np.atleast_1d(seeds)]
    neighbours = V.integer("neighbours", neighbours, 1, 1000)
    resolved_ratio = V.real("resolved_ratio", resolved_ratio, 0.0, None, lo_open=True)
    kw = dict(alpha_d=alpha_d, rate=rate, steps=steps, sigma=sigma, sigma_readout=sigma_readout,
              teacher_scale=teacher_scale)
    gap = np.full((len(kappas), len(widths), len(seeds)), np.nan)
    spacing = np.full_like(gap, np.nan)
    for i, kappa in enumerate(kappas):
        for j, n in enumerate(widths):
            for k, seed in enumerate(seeds):
                sim = many_outputs_simulation(n, kappa, seed=seed, track_every=[steps], **kw)
                sv, c = sim.singular_values.values[-1], sim.attrs["output_dim"]
                if c + neighbours >= sv.size or c - 1 - neighbours < 0:
                    continue  # no room for the neighbouring spacings: left NaN
                d = -np.diff(sv)  # d[i] = s_{i+1} - s_{i+2} (1-based ranks)
                gap[i, j, k] = d[c - 1]
                spacing[i, j, k] = np.mean(np.concatenate([d[c - 1 - neighbours:c - 1], d[c:c + neighbours]]))
    theory = []
    for kappa in kappas:
        limit = many_outputs_density(kappa, track_every=[steps], grid=8, **kw).isel(step=-1)
        theory.append(float(np.nan_to_num(limit.island_gap_upper - limit.island_gap_lower)))
    theory = np.array(theory)
    resolved = gap > resolved_ratio * spacing
    ds = results.dataset({"island_gap": (("kappa", "width", "seed"), gap),
                          "island_spacing": (("kappa", "width", "seed"), spacing),
                          "island_resolved": (("kappa", "width", "seed"), resolved),
                          "island_gap_theory": ("kappa", theory)},
                         {"kappa": kappas, "width": widths, "seed": seeds},
                         {"kind": "comparison", "model": "many_outputs", "resolved_ratio": resolved_ratio,
                          "neighbours": neighbours, "kappa_theory": many_outputs_crossover(**kw), **kw})
    for j, n in enumerate(widths):
        assessed = np.isfinite(gap[:, j, :])  # C too close to 1 or min(N, D) leaves no neighbours
        share = np.where(assessed.any(1), (resolved[:, j, :] & assessed).sum(1) / np.maximum(assessed.sum(1), 1), 1.0)
        unresolved = np.flatnonzero(share <= 0.5)
        ds.attrs[f"kappa_simulation_{n}"] = float(kappas[unresolved[0]]) if unresolved.size else float("nan")
    return ds


# ---------------------------------------------------------------------------------
# the isotropic teacher (R = tau^2 I, C >= D) with a zero-initialized readout: every gamma0
# ---------------------------------------------------------------------------------
def isotropic_recursion(x, rate: float, alpha_d: float, gamma0: float, teacher_scale: float, steps: int):
    """a_t(x), e_t(x) for t = 0..steps: A(t) = A(0) a_t(S), E(t) = T e_t(S), S = A(0)^T A(0).

    e_t = b_t x a_t / gamma0 - 1,  a_{t+1} = a_t - (c / alpha_D) tau^2 b_t e_t,  b_{t+1} = b_t - c e_t a_t,
    a_0 = 1, b_0 = 0 (B(t) = T b_t(S) A(0)^T). Returns two arrays (steps + 1, len(x))."""
    x = np.asarray(x, float)
    a, b = np.ones_like(x), np.zeros_like(x)
    As, Es = [], []
    for _ in range(steps + 1):
        e = b * x * a / gamma0 - 1.0
        As.append(a)
        Es.append(e)
        a, b = a - rate / alpha_d * teacher_scale**2 * b * e, b - rate * e * a
    return np.array(As), np.array(Es)


def many_outputs_isotropic_density(kappa: float, alpha_d: float = 0.5, rate: float = 0.15, gamma0: float = 4.0,
                                   steps: int = 10, *, sigma: float = 1.0, teacher_scale: float = 1.0,
                                   track_every=1, grid: int = 400, s_max: float | None = None,
                                   cells: int = 20_000) -> xr.Dataset:
    """The same limit at finite ``gamma0`` for the isotropic teacher T = tau Q (Q^T Q = I_D, which
    needs C >= D: kappa >= alpha_d) and a zero-initialized readout: the singular values of A(t) are
    s = sqrt(x) |a_t(x)| for x the eigenvalues of A(0)^T A(0) (Marchenko-Pastur), a push-forward.

    Returns ``singular_value_density(step, s)`` (the mass of each grid cell of width ds around s,
    over ds), ``bulk_edge(step)``, ``loss(step)`` (the population loss per output,
    tau^2 (D / C) E_x[e_t(x)^2] / 2) and ``mean_squared_singular_value(step)``."""
    a = _common(kappa, alpha_d, rate, steps, sigma, 0.0, teacher_scale)
    gamma0 = _gamma0(gamma0)
    if a["kappa"] < a["alpha_d"]:
        raise ValueError(f"kappa must be >= alpha_d = {a['alpha_d']:g} for the isotropic teacher (C >= D); "
                         f"got {a['kappa']:g}")
    grid = V.integer("grid", grid, 8, 1_000_000)
    cells = V.integer("cells", cells, 100, 10_000_000)
    if s_max is not None:
        s_max = V.real("s_max", s_max, 0.0, None, lo_open=True)
    tracked = _tracked(a["steps"], track_every)
    ratio = 1.0 / a["alpha_d"]  # A(0) is N x D: squared singular values MP with ratio N / D
    lo, hi = rmt.marchenko_pastur_edges(ratio, a["sigma"])
    # cells of equal width in theta, x = center - half cos(theta): fine at both square-root edges
    th = np.linspace(0.0, np.pi, cells + 1)
    xe = 0.5 * (lo + hi) - 0.5 * (hi - lo) * np.cos(th)
    xm = 0.5 * (xe[1:] + xe[:-1])
    mass = np.diff(np.concatenate([[0.0], np.cumsum(
        rmt.marchenko_pastur_density(xm, ratio, a["sigma"]) * np.diff(xe))]))
    mass /= mass.sum()
    with np.errstate(over="ignore", invalid="ignore"):
        amp, err = isotropic_recursion(xe, a["rate"], a["alpha_d"], float(gamma0), a["teacher_scale"], a["steps"])
        amp_m, err_m = isotropic_recursion(xm, a["rate"], a["alpha_d"], float(gamma0), a["teacher_scale"], a["steps"])
    if not (np.all(np.isfinite(amp[tracked])) and np.all(np.isfinite(err_m))):
        raise ValueError(f"rate = {a['rate']:g}, gamma0 = {gamma0:g} over steps = {a['steps']} diverge (float64 "
                         "overflow); lower rate or steps")
    sv = np.sqrt(xe)[None, :] * np.abs(amp[tracked])  # singular value at each cell edge
    edges = sv.max(1)
    top = 1.1 * float(edges.max()) if s_max is None else s_max
    s = np.linspace(0.0, top, grid)
    ds_ = s[1] - s[0]
    bounds = np.concatenate([[s[0] - ds_ / 2], 0.5 * (s[1:] + s[:-1]), [s[-1] + ds_ / 2]])
    dens = np.empty((len(tracked), grid))
    for i in range(len(tracked)):
        # each x-cell spreads its mass uniformly over the s-interval its ends map to
        y0, y1 = np.minimum(sv[i, :-1], sv[i, 1:]), np.maximum(sv[i, :-1], sv[i, 1:])
        width = np.maximum(y1 - y0, 1e-300)
        below = np.clip((bounds[:, None] - y0[None, :]) / width[None, :], 0.0, 1.0)
        cdf = below @ mass
        dens[i] = np.diff(cdf) / ds_
    # E over the D eigenvalues of S: the nonzero ones (share min(1, N/D)) and zeros (e = -1)
    share = min(1.0, ratio)
    msq = err_m[tracked] ** 2 @ mass * share + (1 - share)
    loss = 0.5 * a["teacher_scale"] ** 2 * (a["alpha_d"] / a["kappa"]) * msq
    mean_sq = (xm[None, :] * amp_m[tracked] ** 2) @ mass * min(1.0, a["alpha_d"])
    return results.dataset(
        {"singular_value_density": (("step", "s"), dens), "bulk_edge": ("step", edges), "loss": ("step", loss),
         "mean_squared_singular_value": ("step", mean_sq)},
        {"step": tracked, "s": s},
        {"kind": "theory", "model": "many_outputs_isotropic", "gamma0": float(gamma0),
         **{k: (float(v) if k != "steps" else int(v)) for k, v in a.items() if k != "sigma_readout"},
         "cells": cells},
        {"singular_value_density": "of W0(t) / sqrt(D), over its min(N, D) nonzero singular values",
         "loss": "population loss per output, tau^2 (D / C) E[e_t(x)^2] / 2"})
