"""Plain NumPy version of the one-bulk model (docs/theory.md, One-bulk model).

Two things live here, both deliberately simple:

* ``mode_recursion``: the DMFT mode recursion, step by step with NumPy
  arrays. It is the test oracle of the C++ solver and its benchmark peer.
  The same function runs the finite-width recursion (one node per actual SVD
  mode of A(0), weights 1/N, one-dimensional "coefficients" = the actual
  projections) and the infinite-width one (quadrature nodes, coefficient rows
  in the initial Gaussian vector xi = (omega(0), zeta(0)) in R^{1+D}).
* ``simulate_gd``: gradient descent on the actual finite-width network
  h1 = W0 x / sqrt(D), h2 = A h1 with A = W1 / sqrt(N), f = w . h2 / (gamma sqrt(N)),
  with the muP multipliers and learning rate of ``specdyn.parameterization``.

Nothing here is imported by the package; the tests import it via sys.path.
"""
from __future__ import annotations

import numpy as np


def single_thread_blas() -> None:
    """Run NumPy's (and specdyn's) OpenBLAS on one thread.

    On a shared machine a multithreaded OpenBLAS pool can be 30x slower than one
    thread for the modest sizes used here; tests and benchmarks call this first.
    """
    import ctypes
    import glob
    import os

    libs = os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "libscipy_openblas*.so")
    for path in glob.glob(libs):
        try:
            lib = ctypes.CDLL(path)
            for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                         "openblas_set_num_threads"):
                if hasattr(lib, name):
                    getattr(lib, name)(ctypes.c_int(1))
                    break
        except OSError:  # pragma: no cover
            pass
    try:
        from specdyn import _core
    except ImportError:  # the NumPy reference itself runs without specdyn
        return
    _core.set_blas_threads(1)


# ---- nodes ------------------------------------------------------------------------

def quarter_circle_nodes(nodes: int, sigma: float = 1.0):
    """Gauss-Legendre rule in phi for the quarter circle, s = 2 sigma sin(phi).

    rho(s) ds = (4/pi) cos(phi)^2 dphi on [0, pi/2]. Returns (s, weights), weights sum to 1.
    """
    x, w = np.polynomial.legendre.leggauss(nodes)
    phi = (x + 1) * np.pi / 4
    wphi = w * np.pi / 4
    return 2 * sigma * np.sin(phi), wphi * (4 / np.pi) * np.cos(phi) ** 2


def limit_initial(s, input_dim: int, sigma_in: float = 1.0, sigma_out: float = 1.0):
    """Coefficient rows at t = 0 in xi = (omega(0), zeta(0)) / (sigma_out, sigma_in) ~ N(0, I).

    Returns a0 (M, R), B0 (M, D, R) with R = 1 + D.
    """
    M, D = len(s), input_dim
    a0 = np.zeros((M, 1 + D))
    a0[:, 0] = sigma_out
    B0 = np.zeros((M, D, 1 + D))
    B0[:, np.arange(D), 1 + np.arange(D)] = sigma_in
    return a0, B0


def finite_modes(W0, A, w):
    """The modes of one finite network: s_k, weights 1/N, a0 (N, 1), B0 (N, D, 1), and U, V of A."""
    U, s, Vt = np.linalg.svd(A)
    N = len(s)
    omega = U.T @ w                 # (N,)
    zeta = Vt @ W0                  # (N, D): row k is W0^T v_k
    return s, np.full(N, 1.0 / N), omega[:, None], zeta[:, :, None], U, Vt.T


# ---- level one ----------------------------------------------------------------------

def mode_recursion(s, p, a0, B0, X, y, c, richness, eta0, steps):
    """Run the mode recursion for ``steps`` GD steps.

    s, p: (M,) nodes and weights; a0 (M, R), B0 (M, D, R): coefficient rows of
    omega and zeta; X (P, D), y (P,); c = eta0 * richness. Returns a dict with
    loss (T+1,), beta_f (T+1, D), Cw, Cq, Cqm ((T+1, T+1), upper triangles
    filled: [j, n] for j <= n), sharpness (T+1,), and the histories
    Ha, Hq (T+1, M, R) of omega and qhat coefficient rows.
    """
    s = np.asarray(s, float)
    p = np.asarray(p, float)
    X = np.asarray(X, float)
    y = np.asarray(y, float).reshape(-1)
    M, R = a0.shape
    P, D = X.shape
    T = steps
    rD = np.sqrt(D)
    Sig = X.T @ X / P
    ev, E = np.linalg.eigh(Sig)
    Sroot = (E * np.sqrt(np.clip(ev, 0, None))) @ E.T

    a = a0.copy()
    B = B0.copy()
    Y = s[:, None, None] * B0          # rows u_k^T A W0
    Ha = np.zeros((T + 1, M, R))
    Hq = np.zeros((T + 1, M, R))
    Cw = np.zeros((T + 1, T + 1))
    Cq = np.zeros((T + 1, T + 1))
    Cqm = np.zeros((T + 1, T + 1))
    loss = np.zeros(T + 1)
    beta_f = np.zeros((T + 1, D))
    sharp = np.zeros(T + 1)

    def avg(H, g):                      # <H[j] g> for every stored j
        return np.tensordot(H, p[:, None] * g, axes=([1, 2], [0, 1]))

    for n in range(T + 1):
        Ha[n] = a
        Cw[: n + 1, n] = avg(Ha[: n + 1], a)
        m = s[:, None] * a + c * np.tensordot(Cw[:n, n], Hq[:n], axes=(0, 0))
        beta_f[n] = np.einsum("k,kdr,kr->d", p, B, m) / richness
        delta = y - X @ beta_f[n] / rD
        loss[n] = delta @ delta / (2 * P)
        r = X.T @ delta / P
        qh = np.einsum("kdr,d->kr", B, r) / rD
        Hq[n] = qh
        Cq[: n + 1, n] = avg(Hq[: n + 1], qh)
        Cqm[: n + 1, n] = avg(Hq[: n + 1], m)
        # normalized sharpness of the NTK at step n
        YY = np.einsum("k,kdr,ker->de", p, Y, Y)
        BB = np.einsum("k,kdr,ker->de", p, B, B)
        mm = np.sum(p[:, None] * m * m)
        Mm = (YY + Cw[n, n] * BB + mm * np.eye(D)) / D
        sharp[n] = eta0 * np.linalg.eigvalsh(Sroot @ Mm @ Sroot)[-1]
        if n == T:
            break
        # updates (all from the state at step n)
        zq = np.einsum("k,kdr,kr->d", p, B, qh)             # q^T W0 / N
        AAw = s[:, None] * m + c * np.tensordot(Cqm[:n, n], Ha[:n], axes=(0, 0))
        a_new = a + c * (s[:, None] * qh + c * np.tensordot(Cq[:n, n], Ha[:n], axes=(0, 0)))
        B_new = B + c * (r / rD)[None, :, None] * m[:, None, :]
        Y_new = (Y + c * (r / rD)[None, :, None] * (AAw + c * Cqm[n, n] * a)[:, None, :]
                 + c * zq[None, :, None] * a[:, None, :])
        a, B, Y = a_new, B_new, Y_new
    Cw = np.triu(Cw) + np.triu(Cw, 1).T
    Cq = np.triu(Cq) + np.triu(Cq, 1).T
    return {"loss": loss, "beta_f": beta_f, "Cw": Cw, "Cq": Cq, "Cqm": Cqm, "sharpness": sharp,
            "Ha": Ha, "Hq": Hq}


# ---- level two ----------------------------------------------------------------------

def increment_spikes(Cw, Cq, n, tol=1e-12):
    """Singular values theta and transforms Tu, Tv of U V^T for the first n steps.

    U = [w_0 .. w_{n-1}] / sqrt(N) with Gram Cw[:n, :n], V likewise with Cq.
    U V^T = sum_i theta_i (U Tu_i) (V Tv_i)^T with orthonormal U Tu_i, V Tv_i.
    """
    lu, Eu = np.linalg.eigh(Cw[:n, :n])
    lv, Ev = np.linalg.eigh(Cq[:n, :n])
    ku = lu > tol * max(lu[-1], 1e-300)
    kv = lv > tol * max(lv[-1], 1e-300)
    lu, Eu, lv, Ev = lu[ku], Eu[:, ku], lv[kv], Ev[:, kv]
    K = np.sqrt(lu)[:, None] * (Eu.T @ Ev) * np.sqrt(lv)[None, :]
    Pk, th, Qt = np.linalg.svd(K, full_matrices=False)
    keep = th > tol * max(th[0] if th.size else 0, 1e-300)
    Tu = (Eu / np.sqrt(lu)) @ Pk[:, keep]
    Tv = (Ev / np.sqrt(lv)) @ Qt.T[:, keep]
    return th[keep], Tu, Tv


def outlier_count(z, s, p, tu, tv, c, theta):
    """Number of singular values of A(n) above z (z above the bulk), by inertia."""
    F = _F(z, s, p, tu, tv, c, theta)
    return int(np.sum(np.linalg.eigvalsh(F) < 0)) - len(theta)


def _F(z, s, p, tu, tv, c, theta):
    r = len(theta)
    wz = p * z / (z * z - s * s)
    ws = p * s / (z * z - s * s)
    Guu = np.einsum("k,kri,krj->ij", wz, tu, tu)
    Gvv = np.einsum("k,kri,krj->ij", wz, tv, tv)
    Guv = np.einsum("k,kri,krj->ij", ws, tu, tv)
    # congruence by diag(sqrt(c theta)): same inertia, well conditioned
    d = np.sqrt(c * theta)
    d2 = np.concatenate([d, d])
    F = np.zeros((2 * r, 2 * r))
    F[:r, r:] = np.eye(r)
    F[r:, :r] = np.eye(r)
    F -= d2[:, None] * np.block([[Guu, Guv], [Guv.T, Gvv]]) * d2[None, :]
    return F


def outliers(res, n, s, p, c, edge, top_k=4, tol=1e-12):
    """Top outlier singular values of A(n) above ``edge`` (NaN where none), by bisection."""
    out = np.full(top_k, np.nan)
    if n == 0:
        return out
    theta, Tu, Tv = increment_spikes(res["Cw"], res["Cq"], n, tol)
    if theta.size == 0:
        return out
    tu = np.einsum("jkr,ji->kri", res["Ha"][:n], Tu)
    tv = np.einsum("jkr,ji->kri", res["Hq"][:n], Tv)
    cnt = outlier_count(edge, s, p, tu, tv, c, theta)
    hi0 = edge + c * theta[0] + 1e-9
    for k in range(min(cnt, top_k)):
        lo, hi = edge, hi0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if outlier_count(mid, s, p, tu, tv, c, theta) >= k + 1:
                lo = mid
            else:
                hi = mid
            if hi - lo < 1e-14 * hi:
                break
        out[k] = 0.5 * (lo + hi)
    return out


# ---- finite-width simulation ------------------------------------------------------------

def init_network(width, input_dim, seed, sigma=1.0):
    """Raw weights W0 (N, D), W1 (N, N), w (N,) with iid N(0, sigma^2) entries (NumPy RNG)."""
    sig = [sigma] * 3 if np.isscalar(sigma) else list(sigma)
    rng = np.random.default_rng(seed)
    W0 = sig[0] * rng.standard_normal((width, input_dim))
    W1 = sig[1] * rng.standard_normal((width, width))
    w = sig[2] * rng.standard_normal(width)
    return W0, W1, w


def simulate_gd(W0, W1, w, X, y, multipliers, lr, steps, track=(), top_k=4, sharpness=True, track_delta=True):
    """Full-batch GD on L = (1/2P) sum (f - y)^2 with f = m2 w . (m1 W1 (m0 W0 x)).

    ``multipliers`` = (m0, m1, m2) from specdyn.parameterization.scales; ``lr`` the raw rate.
    Returns loss (T+1,), beta_f (T+1, D) in units f = beta_f . x / sqrt(D),
    sharpness (T+1,) = lr * lambda_max(NTK) / P, and for each tracked step the
    top singular values of A = m1 W1 and of m1 (W1 - W1(0)), plus the final weights.
    """
    m0, m1, m2 = multipliers
    W0, W1, w = W0.copy(), W1.copy(), w.copy()
    W1_init = W1.copy()
    X = np.asarray(X, float)
    y = np.asarray(y, float).reshape(-1)
    P, D = X.shape
    loss = np.zeros(steps + 1)
    beta_f = np.zeros((steps + 1, D))
    sharp = np.full(steps + 1, np.nan)
    sv, dsv = {}, {}
    track = set(track)
    for n in range(steps + 1):
        H1 = m0 * X @ W0.T                      # (P, N)
        H2 = m1 * H1 @ W1.T
        f = m2 * H2 @ w
        delta = f - y
        loss[n] = delta @ delta / (2 * P)
        g2 = m2 * w                              # df/dh2
        g1 = m1 * W1.T @ g2                      # df/dh1
        beta_f[n] = m0 * (W0.T @ g1) * np.sqrt(D)
        if sharpness:
            K = (m2**2 * H2 @ H2.T + m1**2 * (g2 @ g2) * H1 @ H1.T + m0**2 * (g1 @ g1) * X @ X.T)
            sharp[n] = lr * np.linalg.eigvalsh(K)[-1] / P
        if n in track:
            sv[n] = np.linalg.svd(m1 * W1, compute_uv=False)[:top_k]
            if track_delta:
                dsv[n] = np.linalg.svd(m1 * (W1 - W1_init), compute_uv=False)[:top_k]
            else:
                dsv[n] = np.full(top_k, np.nan)
        if n == steps:
            break
        e = delta / P
        gw = m2 * H2.T @ e
        gW1 = m1 * np.outer(g2, H1.T @ e)
        gW0 = m0 * np.outer(g1, X.T @ e)
        w -= lr * gw
        W1 -= lr * gW1
        W0 -= lr * gW0
    return {"loss": loss, "beta_f": beta_f, "sharpness": sharp, "singular_values": sv,
            "delta_singular_values": dsv, "weights": (W0, W1, w)}


def simulation_dataset(config, X, y, seeds=(0,), steps=None, top_k=None, sharpness=True, track_delta=True):
    """Finite-width GD of a RunConfig's one-bulk network, as an xarray.Dataset of the shared schema.

    One run per seed (NumPy RNG, not the training engine's streams), stacked on a
    ``seed`` dim: loss(seed, step), beta_f, normalized_sharpness, and for layer W1
    singular_values / delta_singular_values(seed, step, layer, rank).
    """
    import xarray as xr
    from specdyn import parameterization as PZ

    N, D = config.width, config.input_dim
    T = config.steps if steps is None else max(steps)
    out_steps = config.tracked_steps() if steps is None else sorted(steps)
    k = config.top_k if top_k is None else top_k
    sc = PZ.scales(config.scaling, N, 2, D, 1, config.gamma0, config.eta0, config.sigma)
    sig = config.sigma if isinstance(config.sigma, list) else [config.sigma] * 3
    runs = []
    for seed in seeds:
        W0, W1, w = init_network(N, D, seed, sig)
        r = simulate_gd(W0, W1, w, X, y, sc.multipliers, sc.learning_rate, T, track=out_steps, top_k=k,
                        sharpness=sharpness, track_delta=track_delta)
        idx = np.asarray(out_steps)
        sv = np.stack([r["singular_values"][n] for n in out_steps])[:, None, :]
        dsv = np.stack([r["delta_singular_values"][n] for n in out_steps])[:, None, :]
        runs.append(xr.Dataset(
            {"loss": ("step", r["loss"][idx]), "beta_f": (("step", "input"), r["beta_f"][idx]),
             "normalized_sharpness": ("step", r["sharpness"][idx]),
             "singular_values": (("step", "layer", "rank"), sv),
             "delta_singular_values": (("step", "layer", "rank"), dsv)},
            coords={"step": idx, "layer": ["W1"], "rank": np.arange(k), "input": np.arange(D)}))
    ds = xr.concat(runs, dim="seed").assign_coords(seed=list(seeds))
    ds.attrs.update({"kind": "simulation", "scaling": config.scaling, "width": N, "config": config.to_json()})
    return ds
