"""Outlier extraction: top singular triplets, extreme eigenpairs and spectral densities.

Thin Python front of the native Krylov solvers (``cpp/src/lanczos*.cpp``):

* :func:`top_singular` -- the k largest singular values and vectors of a dense
  matrix by block Golub-Kahan-Lanczos (run as block Lanczos on the Gram
  operator, which reads A once per block step), thick restarts, full
  reorthogonalization, warm starts, and an explicit residual certificate.
* :func:`top_eigs` -- extreme eigenpairs of a symmetric matrix or of an operator
  given as a callable ``X (n, b) -> Op X (n, b)`` (NTK Gram, Hessian-vector
  products).
* :func:`spectral_density` -- density of eigenvalues / squared singular values
  on a grid of bin edges, by stochastic Lanczos quadrature or exactly (LAPACK).

The solvers' own reductions are split into a fixed number of parts summed in a
fixed order: the same inputs and seed give the same bits at any thread count
(for a callable operator, as long as the callable itself does).

Arguments are checked here, before native code runs; each bad argument raises
one ``ValueError`` naming it and the allowed range.
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np

from . import _core
from . import _validate as v

__all__ = ["top_singular", "top_eigs", "spectral_density", "ConvergenceWarning"]


class ConvergenceWarning(RuntimeWarning):
    """A Krylov solver stopped before its residual certificate held."""


def _matrix(name: str, A, check_finite: bool) -> np.ndarray:
    A = v.finite_array(name, A, ndim=2, check_finite=check_finite)
    if A.shape[0] < 1 or A.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape {A.shape}")
    if not (A.flags.c_contiguous or A.flags.f_contiguous):
        A = np.ascontiguousarray(A)  # strided views: one copy, the solver needs a leading dimension
    return A


def _opt_int(name, value, lo, hi):
    return 0 if value is None else v.integer(name, value, lo, hi)


def _warm(name: str, v0, rows: int, dtype) -> np.ndarray | None:
    if v0 is None:
        return None
    v0 = v.finite_array(name, v0, ndim=(1, 2))
    if v0.ndim == 1:
        v0 = v0[:, None]
    if v0.shape[0] != rows or not 1 <= v0.shape[1] <= rows:
        raise ValueError(f"{name} must have shape ({rows},) or ({rows}, k0) with 1 <= k0 <= {rows}, got {v0.shape}")
    return np.asfortranarray(v0, dtype=dtype)


def _warn(what: str, info: dict) -> None:
    if not info["converged"]:
        res = np.max(info["residuals"]) if len(info["residuals"]) else float("nan")
        warnings.warn(
            f"{what} did not converge after {info['matrix_passes']} passes: largest residual {res:.3g} "
            f"> tol * norm = {info['tol'] * info['norm_estimate']:.3g}; the returned values are not certified",
            ConvergenceWarning,
            stacklevel=3,
        )



def _krylov_options(tol, block, max_passes, max_basis, seed) -> tuple:
    """Validated solver options shared by top_singular and top_eigs (None: automatic)."""
    return (v.real("tol", tol, 0.0, 1.0, lo_open=True, hi_open=True),
            _opt_int("block", block, 1, 256),
            _opt_int("max_passes", max_passes, 1, 10**7),
            _opt_int("max_basis", max_basis, 2, 10**6),
            v.integer("seed", seed, 0, 2**64 - 1))


def top_singular(A, k: int, tol: float = 1e-10, v0=None, block: int | None = None, *,
                 max_passes: int | None = None, max_basis: int | None = None, seed: int = 0,
                 check_finite: bool = True):
    """The k largest singular triplets of a dense matrix.

    Parameters
    ----------
    A : ndarray (n, m), float32 or float64
        C- or Fortran-ordered arrays are used in place (no copy); other strides
        are copied once. Integer arrays are converted to float64.
    k : int in [1, min(n, m)]
    tol : float in (0, 1)
        Stop when every returned triplet has ``||A v - s u|| <= tol * ||A||``
        and ``||A^T u - s v|| <= tol * ||A||`` (computed explicitly at the end).
        For float32 matrices the tolerance is floored at 1e-4 (float
        products; the Gram operator squares their rounding error).
    v0 : ndarray (m,) or (m, k0), optional
        Warm start: a previous right singular block (e.g. from the last
        training step).
    block : int, optional
        Block size (vectors per pass over A). Default: 1 for k <= 2, else 2
        (on a memory-bound sweep that was measured cheapest), widened to
        k + 2 when the answer holds a repeated value that could hide more
        copies; with ``v0`` one step with the whole previous block is tried
        first. A given ``block`` disables these adaptations.
    max_passes, max_basis, seed : advanced controls (pass cap, Krylov basis
        columns before a thick restart, random start stream).

    Returns
    -------
    s : ndarray (k,) float64, descending
    U : ndarray (n, k), left vectors, dtype of A
    V : ndarray (m, k), right vectors, dtype of A
    info : dict
        ``iterations`` (block steps), ``restarts``, ``matrix_passes`` (reads of
        A), ``residuals`` (k,), ``converged``, ``norm_estimate``, ``tol``,
        ``block``, ``dense`` (True when solved directly by LAPACK because the
        matrix is small). A non-converged result also emits
        :class:`ConvergenceWarning`.
    """
    A = _matrix("A", A, check_finite)
    n, m = A.shape
    k = v.integer("k", k, 1, min(n, m))
    tol, block, max_passes, max_basis, seed = _krylov_options(tol, block, max_passes, max_basis, seed)
    v0 = _warm("v0", v0, m, A.dtype)
    fn = _core.top_singular_f64 if A.dtype == np.float64 else _core.top_singular_f32
    s, U, V, info = fn(A, k, tol, block, max_passes, max_basis, seed, v0)
    _warn("top_singular", info)
    return s, U, V, info


def _symmetric(name: str, A) -> np.ndarray:
    A = _matrix(name, A, True)
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"{name} must be square (a symmetric operator), got shape {A.shape}")
    scale = float(np.max(np.abs(A))) if A.size else 0.0
    if A.shape[0] > 1 and float(np.max(np.abs(A - A.T))) > 1e-6 * max(scale, np.finfo(np.float64).tiny):
        raise ValueError(f"{name} must be symmetric (max |A - A^T| <= 1e-6 max |A|)")
    # Fortran view without copy: a symmetric C-ordered array equals its transpose.
    A = A.astype(np.float64, copy=False)
    return A if A.flags.f_contiguous else A.T


def _callable(op, n: int):
    def apply(X):
        Y = np.asarray(op(X), dtype=np.float64)
        if Y.shape != X.shape:
            if X.shape[1] == 1 and Y.shape == (n,):
                Y = Y[:, None]
            else:
                raise ValueError(f"op must map an array of shape {X.shape} to the same shape, returned {Y.shape}")
        if not np.all(np.isfinite(Y)):
            raise ValueError("op returned non-finite values (NaN or inf)")
        return Y

    return apply


def top_eigs(op, n: int | None = None, k: int = 1, which: str = "largest", tol: float = 1e-10, v0=None,
             block: int | None = None, *, max_passes: int | None = None, max_basis: int | None = None,
             seed: int = 0):
    """Extreme eigenpairs of a symmetric operator.

    Parameters
    ----------
    op : ndarray (n, n) symmetric, or callable
        A callable is applied to float64 blocks ``X`` of shape ``(n, b)`` and
        must return ``op @ X`` of the same shape (for ``b == 1`` an ``(n,)``
        result is accepted). A wrong shape raises ``ValueError``.
    n : int, required for a callable (dimension of the operator)
    k : int >= 1; at most n ("largest") or n // 2 ("both")
    which : "largest" (the k algebraically largest) or "both" (k largest and k smallest)
    tol : float in (0, 1); residuals ``||op x - lam x|| <= tol * max|lam|``,
        computed explicitly at the end.
    v0 : ndarray (n,) or (n, k0), optional warm start.

    Returns
    -------
    values : ndarray, ``(k,)`` descending for "largest"; ``(2k,)`` for "both":
        the k largest descending, then the k smallest ascending
    vectors : ndarray (n, len(values)), orthonormal columns
    info : dict as in :func:`top_singular`.
    """
    which = v.choice("which", which, ("largest", "both"))
    if isinstance(op, np.ndarray) or (not callable(op) and hasattr(op, "__array__")):
        A = _symmetric("op", op)
        if n is not None and v.integer("n", n, 1) != A.shape[0]:
            raise ValueError(f"n must equal the size of op ({A.shape[0]}), got {n}")
        n = A.shape[0]
    elif callable(op):
        if n is None:
            raise ValueError("n (the operator dimension, an integer >= 1) is required when op is a callable")
        n = v.integer("n", n, 1)
        A = None
    else:
        raise ValueError(f"op must be a symmetric 2-d array or a callable, got {type(op).__name__}")
    k = v.integer("k", k, 1, n if which == "largest" else n // 2)
    tol, block, max_passes, max_basis, seed = _krylov_options(tol, block, max_passes, max_basis, seed)
    v0 = _warm("v0", v0, n, np.float64)
    both = which == "both"
    if A is not None:
        vals, vecs, info = _core.top_eigs_dense(A, k, both, tol, block, max_passes, max_basis, seed, v0)
    else:
        vals, vecs, info = _core.top_eigs_op(_callable(op, n), n, k, both, tol, block, max_passes, max_basis,
                                             seed, v0)
    _warn("top_eigs", info)
    return vals, vecs, info


def _cdf_from_quadrature(nodes: np.ndarray, weights: np.ndarray, x: np.ndarray,
                         lower: float | None = None) -> np.ndarray:
    """Cumulative distribution of one Gauss quadrature rule at points x.

    The true spectral CDF passes through each jump of the quadrature's step
    function (Chebyshev-Markov-Stieltjes), so it is interpolated linearly
    through the jump midpoints, and reaches 0 and 1 half a node spacing
    outside the extreme nodes -- but not below ``lower`` when the spectrum is
    known to be bounded there (0 for squared singular values: without it a
    hard edge at 0 leaks mass to negative values).
    """
    keep = weights > 0
    t, w = nodes[keep], weights[keep]
    order = np.argsort(t)
    t, w = t[order], w[order] / w.sum()
    if t.size == 1:
        return (x >= t[0]).astype(np.float64)
    mid = np.cumsum(w) - 0.5 * w
    lo = t[0] - 0.5 * (t[1] - t[0])
    if lower is not None:
        lo = min(max(lo, lower), t[0])
    hi = t[-1] + 0.5 * (t[-1] - t[-2])
    xs = np.concatenate([[lo], t, [hi]])
    cs = np.concatenate([[0.0], mid, [1.0]])
    return np.interp(x, xs, cs, left=0.0, right=1.0)


def spectral_density(A, grid, method: str = "slq", probes: int = 16, degree: int = 48, seed: int = 0, *,
                     spectrum: str = "auto", n: int | None = None):
    """Spectral density on a grid of bin edges.

    Parameters
    ----------
    A : ndarray (n, m) or callable
        For ``spectrum="squared_singular_values"`` the density of the
        min(n, m) values s_i(A)^2 (eigenvalues of the smaller Gram matrix); for
        ``"eigenvalues"`` the eigenvalues of a symmetric A or operator. "auto"
        picks eigenvalues for a callable or an exactly symmetric square array,
        squared singular values otherwise.
    grid : 1-d increasing array of bin edges, length >= 2
    method : "slq" (stochastic Lanczos quadrature) or "exact" (LAPACK)
    probes, degree : SLQ random probe vectors and Lanczos steps per probe
    seed : SLQ probe stream
    n : operator dimension, required for a callable

    Returns
    -------
    density : ndarray (len(grid) - 1,)
        Mass of the spectrum in each bin divided by the bin width; the whole
        spectrum has mass 1 (mass outside the grid is not shown).
    error : ndarray (len(grid) - 1,)
        Standard error of the density across SLQ probes (zeros for "exact").
        It measures the probe noise, not the quadrature bias (which shrinks
        with ``degree``).
    """
    method = v.choice("method", method, ("slq", "exact"))
    spectrum = v.choice("spectrum", spectrum, ("auto", "eigenvalues", "squared_singular_values"))
    grid = v.finite_array("grid", grid, ndim=1, dtypes=("float32", "float64")).astype(np.float64)
    if grid.size < 2 or np.any(np.diff(grid) <= 0):
        raise ValueError("grid must be a strictly increasing 1-d array of at least 2 bin edges")
    probes = v.integer("probes", probes, 1, 100_000)
    degree = v.integer("degree", degree, 1, 100_000)
    seed = v.integer("seed", seed, 0, 2**64 - 1)
    widths = np.diff(grid)
    lower = None  # known lower bound of the spectrum
    if callable(A) and not isinstance(A, np.ndarray):
        if spectrum == "squared_singular_values":
            raise ValueError("spectrum='squared_singular_values' needs an array A, not a callable")
        if n is None:
            raise ValueError("n (the operator dimension, an integer >= 1) is required when A is a callable")
        n = v.integer("n", n, 1)
        fn = _callable(A, n)
        if method == "exact":
            vals = np.linalg.eigvalsh(fn(np.eye(n)))
            return np.histogram(vals, bins=grid)[0] / (vals.size * widths), np.zeros(widths.size)
        nodes, weights = _core.slq_op(fn, n, probes, degree, seed)
    else:
        M = _matrix("A", A, True)
        if spectrum == "auto":
            square = M.shape[0] == M.shape[1]
            spectrum = "eigenvalues" if square and np.array_equal(M, M.T) else "squared_singular_values"
        if spectrum == "eigenvalues":
            S = _symmetric("A", M)
            if method == "exact":
                vals = np.linalg.eigvalsh(S)
            else:
                nodes, weights = _core.slq_dense(S, probes, degree, seed)
        else:
            if method == "exact":
                vals = np.linalg.svd(M, compute_uv=False).astype(np.float64) ** 2
            else:
                fn = _core.slq_gram_f64 if M.dtype == np.float64 else _core.slq_gram_f32
                nodes, weights = fn(M, probes, degree, seed)
                lower = 0.0
        if method == "exact":
            return np.histogram(vals, bins=grid)[0] / (vals.size * widths), np.zeros(widths.size)
    per_probe = np.stack([np.diff(_cdf_from_quadrature(nodes[p], weights[p], grid, lower)) / widths
                          for p in range(nodes.shape[0])])
    density = per_probe.mean(axis=0)
    error = per_probe.std(axis=0, ddof=1) / np.sqrt(per_probe.shape[0]) if per_probe.shape[0] > 1 \
        else np.full(widths.size, np.nan)
    return density, error
