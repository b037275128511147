"""Random matrices and their closed-form laws.

Conventions: a matrix A of shape (n, m) with iid N(0, sigma^2 / m) entries
is the *normalized* Gaussian matrix (W / sqrt(fan_in) with fan_in = m);
``ratio`` is n / m. Its squared singular values follow Marchenko-Pastur with
edges sigma^2 (1 -+ sqrt(ratio))^2; for n = m its singular values fill
[0, 2 sigma] with the quarter-circle law.
"""
from __future__ import annotations

import numpy as np

from . import _core
from . import _validate as V

_STREAM_USER = 0
_STREAM_SPIKES = 4 << 32


def gaussian(n: int, m: int, seed: int = 0, sigma: float = 1.0, dtype="float64", stream: int = 0) -> np.ndarray:
    """An (n, m) array of iid N(0, sigma^2) from the counter-based stream (seed, stream).

    Element (i, j) is element i*m + j of the stream, so the result does not
    depend on the thread count, and ``gaussian(n, m)[:k]`` equals ``gaussian(k, m)``.
    """
    n = V.integer("n", n, 1)
    m = V.integer("m", m, 1)
    seed = V.integer("seed", seed, 0, 2**64 - 1)
    stream = V.integer("stream", stream, 0, 2**64 - 1)
    sigma = V.real("sigma", sigma, 0.0)
    dt = V.dtype("dtype", dtype)
    V.fits_in_memory(f"n = {n}, m = {m} ({np.dtype(dt).name})", n * m * np.dtype(dt).itemsize)
    fill = _core.gaussian_f64 if dt == np.float64 else _core.gaussian_f32
    return fill(n, m, seed, stream, sigma)


# ---- closed-form laws -----------------------------------------------------------

def quarter_circle_edge(sigma: float = 1.0) -> float:
    """Top edge 2 sigma of the singular values of a square normalized Gaussian matrix."""
    return 2.0 * V.real("sigma", sigma, 0.0, None, lo_open=True)


# the densities divide by sigma (or sigma^2): scales where that stays a normal float64
_SIGMA_MIN, _SIGMA_MAX = 1e-300, 1e300


def quarter_circle_density(s, sigma: float = 1.0) -> np.ndarray:
    """Density of the singular values of a square normalized Gaussian matrix.

    rho(s) = sqrt(4 sigma^2 - s^2) / (pi sigma^2) on [0, 2 sigma], 0 elsewhere.
    """
    sigma = V.real("sigma", sigma, _SIGMA_MIN, _SIGMA_MAX)
    s = np.asarray(s, dtype=np.float64)
    inside = (s >= 0) & (s <= 2 * sigma)
    out = np.zeros_like(s)
    r = s[inside] / sigma  # in units of sigma: no square of sigma under- or overflows
    out[inside] = np.sqrt(np.maximum(4 - r**2, 0.0)) / (np.pi * sigma)
    out[np.isnan(s)] = np.nan  # no density at an undefined abscissa
    return out


def marchenko_pastur_edges(ratio: float, sigma: float = 1.0) -> tuple[float, float]:
    """Edges sigma^2 (1 -+ sqrt(ratio))^2 of the squared singular values."""
    ratio = V.real("ratio", ratio, 0.0, None, lo_open=True)
    sigma = V.real("sigma", sigma, 0.0, None, lo_open=True)
    r = np.sqrt(ratio)
    top = sigma * (1 + r)
    if not 1e-150 <= top <= 1e150:
        raise ValueError(f"sigma = {sigma:g} and ratio = {ratio:g} put the squared edge sigma^2 (1 + sqrt(ratio))^2 "
                         f"outside the float64 range: sigma (1 + sqrt(ratio)) must be in [1e-150, 1e150]")
    return float((sigma * (1 - r)) ** 2), float(top**2)


def marchenko_pastur_density(x, ratio: float, sigma: float = 1.0) -> np.ndarray:
    """Density of the nonzero squared singular values x of an (n, m) normalized Gaussian matrix.

    ``ratio`` = n / m. Normalized over the min(n, m) nontrivial singular values,
    so it integrates to 1 for any ratio:
    rho(x) = sqrt((x+ - x)(x - x-)) / (2 pi sigma^2 min(ratio, 1) x).
    """
    lo, hi = marchenko_pastur_edges(ratio, sigma)
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    inside = (x > lo) & (x < hi) & (x > 0)
    xi = x[inside]
    out[inside] = np.sqrt((hi - xi) * (xi - lo)) / (2 * np.pi * sigma**2 * min(ratio, 1.0) * xi)
    out[np.isnan(x)] = np.nan  # no density at an undefined abscissa
    return out


def singular_value_edge(ratio: float = 1.0, sigma: float = 1.0) -> float:
    """Top edge sigma (1 + sqrt(ratio)) of the singular values (2 sigma when square)."""
    ratio = V.real("ratio", ratio, 0.0, None, lo_open=True)
    sigma = V.real("sigma", sigma, 0.0, None, lo_open=True)
    return float(sigma * (1 + np.sqrt(ratio)))


def bgn_threshold(ratio: float = 1.0, sigma: float = 1.0) -> float:
    """Spike strength sigma * ratio^(1/4) below which no outlier separates."""
    ratio = V.real("ratio", ratio, 0.0, None, lo_open=True)
    sigma = V.real("sigma", sigma, 0.0, None, lo_open=True)
    return float(sigma * ratio**0.25)


def _thetas(thetas, flat: bool = True) -> np.ndarray:
    """Spike strengths as a float64 array (at least 1-d): real numbers, a flat sequence unless ``flat=False``."""
    a = np.asarray(thetas)
    if a.dtype.kind not in "iuf" or (flat and a.ndim > 1):
        shape = "a 1-d sequence" if flat else "an array"
        raise ValueError(f"thetas must be a real number or {shape} of real numbers; got {thetas!r:.80}")
    a = np.atleast_1d(a.astype(np.float64))
    if not np.all(np.isfinite(a)):
        raise ValueError(f"thetas must be finite; got {a.tolist()!r:.80}")
    return a


def bgn_outliers(thetas, ratio: float = 1.0, sigma: float = 1.0) -> dict:
    """Benaych-Georges-Nadakuditi outliers of independent spikes on a Gaussian bulk.

    For A = X + sum_i theta_i u_i v_i^T with X an (n, m) normalized Gaussian
    matrix (ratio = n / m) and unit vectors u_i, v_i independent of X, at
    n, m -> infinity each theta above the threshold sigma ratio^(1/4) gives an
    outlier singular value

        s = sigma sqrt((1 + t^2)(ratio + t^2)) / t,      t = theta / sigma,

    with squared overlaps |<u, u_hat>|^2 = 1 - ratio (1 + t^2) / (t^2 (t^2 + ratio))
    and |<v, v_hat>|^2 = 1 - (ratio + t^2) / (t^2 (t^2 + 1)). Below threshold the
    singular value sticks to the bulk edge and the overlaps vanish.

    Returns a dict of arrays (same order as ``thetas``): ``singular_values``
    (the edge where no outlier), ``is_outlier``, ``overlap_left``,
    ``overlap_right`` (squared), and the scalars ``threshold`` and ``edge``.
    """
    ratio = V.real("ratio", ratio, 0.0, None, lo_open=True)
    sigma = V.real("sigma", sigma, 0.0, None, lo_open=True)
    thetas = _thetas(thetas, flat=False)
    if np.any(thetas < 0):
        raise ValueError("thetas must be finite and >= 0")
    thr = bgn_threshold(ratio, sigma)
    edge = singular_value_edge(ratio, sigma)
    with np.errstate(over="ignore"):  # t = inf (theta far above sigma) is handled through u = 0
        t = thetas / sigma
    out = t > ratio**0.25
    # in u = 1/t, so that no square of t overflows: s = theta sqrt((1 + u^2)(1 + ratio u^2))
    u2 = np.where(out, (sigma / np.where(out, thetas, 1.0)) ** 2, 1.0)
    s = np.where(out, np.where(out, thetas, 0.0) * np.sqrt((1 + u2) * (1 + ratio * u2)), edge)
    ol = np.where(out, 1 - ratio * u2 * (1 + u2) / (1 + ratio * u2), 0.0)
    orr = np.where(out, 1 - u2 * (1 + ratio * u2) / (1 + u2), 0.0)
    return {"singular_values": s, "is_outlier": out, "overlap_left": ol, "overlap_right": orr,
            "threshold": thr, "edge": edge}


def spiked(n: int, m: int, thetas, seed: int = 0, sigma: float = 1.0, directions: str = "independent",
           dtype="float64"):
    """A normalized Gaussian bulk plus finite-rank spikes: A = X + sum_i theta_i u_i v_i^T.

    X is (n, m) with iid N(0, sigma^2 / m) entries (stream 0 of ``seed``).
    ``directions="independent"``: u_i, v_i are orthonormal random vectors
    independent of X (the BGN setting). ``"aligned"``: u_i, v_i are the i-th
    singular vectors of X itself, the extreme case of spikes that depend on the bulk.

    Returns ``(A, U, Vt)``: the matrix, U (n, r) and V (m, r) with unit columns.
    """
    n = V.integer("n", n, 1)
    m = V.integer("m", m, 1)
    sigma = V.real("sigma", sigma, 0.0)
    V.choice("directions", directions, ("independent", "aligned"))
    dt = V.dtype("dtype", dtype)
    thetas = _thetas(thetas)
    r = thetas.size
    if r > min(n, m):
        raise ValueError(f"thetas must have at most min(n, m) = {min(n, m)} entries, got {r}")
    if not np.all(np.isfinite(thetas)):
        raise ValueError("thetas must be finite")
    X = gaussian(n, m, seed=seed, sigma=sigma / np.sqrt(m), dtype="float64")
    if directions == "independent":
        gu = gaussian(n, r, seed=seed, stream=_STREAM_SPIKES, dtype="float64")
        gv = gaussian(m, r, seed=seed, stream=_STREAM_SPIKES + 1, dtype="float64")
        U, _ = np.linalg.qr(gu)
        Vm, _ = np.linalg.qr(gv)
    else:
        Ux, _, Vtx = np.linalg.svd(X, full_matrices=False)
        U, Vm = Ux[:, :r], Vtx[:r].T
    A = X + (U * thetas) @ Vm.T
    return A.astype(dt, copy=False), U.astype(dt, copy=False), Vm.astype(dt, copy=False)
