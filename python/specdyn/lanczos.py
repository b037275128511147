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

GPU. :func:`top_singular` and :func:`spectral_density` also run on a CUDA
device (``cuda/lanczos*.cu``: the same algorithm, with the matrix and the
Krylov basis in device memory):

* an input exposing ``__cuda_array_interface__`` (a CuPy array, a Numba or
  PyTorch CUDA array) runs on the device in place, without a copy (C or
  Fortran order, padded rows or columns allowed); ``device="cpu"`` with such an
  input is a ``ValueError`` (copy it to the host yourself, e.g. ``A.get()``);
* ``device="cuda"`` with a NumPy input copies it to the device for the call;
* results come back as NumPy arrays (s, U, V and the SLQ density are small;
  ``cupy.asarray(U)`` moves them back if needed), ``info["device"] == "cuda"``;
* asking for a GPU where none is usable raises one ``RuntimeError`` that says
  why (see :func:`specdyn.backend.gpu_status`).

The device kernels run on the legacy default CUDA stream of the current
device: an array written on another stream must be synchronized first.
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np

from . import _core
from . import _device as _device_words
from . import _validate as v
from . import backend

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



def _device(device) -> str | None:
    return None if device is None else _device_words.check(device)


def _on_gpu(name: str, A, device: str | None) -> bool:
    """Where a call runs: True for a device array (unless device='cpu', an error), device='cuda' or
    device='host-emulation' (the device path on the host emulation of its kernels)."""
    if backend.is_device_array(A):
        if device in ("cpu", "host-emulation"):
            raise ValueError(f"{name} is a CUDA device array (it has __cuda_array_interface__) but "
                             f"device={device!r}; copy it to the host first (e.g. {name}.get() for CuPy) or use "
                             f"device=None / 'cuda'")
        return True
    return device in ("cuda", "host-emulation")


def _host_vector_block(name: str, v0):
    """A warm start given as a device array is copied to the host (it is k columns)."""
    if backend.is_device_array(v0):
        if not hasattr(v0, "get"):
            raise ValueError(f"{name}: a device array warm start needs a .get() method (CuPy), "
                             f"or pass a NumPy array")
        v0 = v0.get()
    return v0


class _DeviceInput:
    """The device matrix of a GPU call: a device array in place, or a NumPy array copied for the call."""

    def __init__(self, name: str, A, check_finite: bool):
        self.copy = None
        if backend.is_device_array(A):
            self.dm = backend.device_matrix(name, A)
            self.host = None
        else:
            self.host = _matrix(name, A, check_finite)
            self.dm = None
        self.check_finite = check_finite
        self.name = name

    @property
    def shape(self):
        return self.dm.shape if self.dm is not None else self.host.shape

    @property
    def dtype(self):
        return self.dm.dtype if self.dm is not None else self.host.dtype

    def open(self, mod) -> tuple:
        """(ptr, n, m, row_major, ld, single) for the _cuda entry points."""
        if self.dm is None:
            self.copy = mod.DeviceCopy(self.host)
            c = self.copy
            return (c.ptr, c.n, c.m, c.row_major, c.ld, c.single)
        d = self.dm
        args = (d.ptr, d.n, d.m, d.row_major, d.ld, d.single)
        if self.check_finite:
            top = mod.abs_max_device(*args)
            if not np.isfinite(top):
                raise ValueError(f"{self.name} must contain only finite values (found NaN or inf)")
        return args

    def close(self) -> None:
        if self.copy is not None:
            self.copy.close()
            self.copy = None


def _top_singular_gpu(A, k, tol, v0, block, max_passes, max_basis, seed, check_finite, device, resolvable):
    src = _DeviceInput("A", A, check_finite)
    n, m = src.shape
    k = v.integer("k", k, 1, min(n, m))
    opt = _krylov_options(tol, block, max_passes, max_basis, seed, warm_extra=1, resolvable=resolvable)
    v0 = _warm("v0", _host_vector_block("v0", v0), m, np.float64)
    mod = _device_words.krylov_module(device or "cuda", "top_singular")
    try:
        args = src.open(mod)
        s, U, V, info = mod.top_singular_device(*args, k, opt, v0)
    finally:
        src.close()
    _warn("top_singular", info)
    return s, U, V, info


def _krylov_options(tol=1e-10, block=None, max_passes=None, max_basis=None, seed=0, warm_extra=0,
                    resolvable=False):
    """Validated solver options shared by top_singular and top_eigs (None: automatic), as the one
    parameter object of the C++ solvers (``_core.KrylovOptions``, lanczos::Options)."""
    fields = dict(tol=v.real("tol", tol, 0.0, 1.0, lo_open=True, hi_open=True),
                  block=_opt_int("block", block, 1, 256),
                  max_passes=_opt_int("max_passes", max_passes, 1, 10**7),
                  max_basis=_opt_int("max_basis", max_basis, 2, 10**6),
                  seed=v.integer("seed", seed, 0, 2**64 - 1),
                  warm_extra=v.integer("warm_extra", warm_extra, 0, 256),
                  resolvable=bool(resolvable))
    opt = _core.KrylovOptions()
    for name, value in fields.items():
        setattr(opt, name, value)
    return opt


def top_singular(A, k: int, tol: float = 1e-10, v0=None, block: int | None = None, *,
                 max_passes: int | None = None, max_basis: int | None = None, seed: int = 0,
                 check_finite: bool = True, device: str | None = None, certify: str = "all"):
    """The k largest singular triplets of a dense matrix.

    Parameters
    ----------
    A : ndarray (n, m), float32 or float64
        C- or Fortran-ordered arrays are used in place (no copy); other strides
        are copied once. Integer arrays are converted to float64.
    k : int in [1, min(n, m)]
    tol : float in (0, 1)
        Stop when every returned triplet has ``||A v - s u|| <= tol * ||A||``
        and ``||A^T u - s v|| <= tol * ||A||``, computed explicitly from the
        products of A the solve made (no pass of its own).
        For float32 matrices the tolerance is floored at 1e-4 (float
        products; the Gram operator squares their rounding error), and
        ``A^T u`` is formed with one more pass when the smallest wanted value
        is too small next to the largest for the kept float products to
        certify it (below ~0.37 of it at N = 2048).
    v0 : ndarray (m,) or (m, k0), optional
        Warm start: best ``info["warm"]`` of the previous call on a nearby
        matrix (e.g. the last training step), which also holds the Ritz vector
        of the next value; a previous right singular block works too.
    block : int, optional
        Block size (vectors per pass over A). Default: 1 for k <= 2, else 2
        (on a memory-bound sweep that was measured cheapest), widened to
        k + 2 when the answer holds a repeated value that could hide more
        copies; with ``v0`` one step with the whole warm block comes first,
        and the solve keeps that width when the step finds the block close to
        invariant around clustered values (the matrix moved little). A given
        ``block`` disables these adaptations.
    max_passes, max_basis, seed : advanced controls (pass cap, Krylov basis
        columns before a thick restart, random start stream).
    certify : "all" or "resolvable"
        "all": every returned triplet is certified to ``tol``. "resolvable" (the
        tracking certificate, for training loops): a value inside a cluster (its
        nearest neighbour closer than 1% of ``||A||``, as at the edge of a random
        bulk, whose finite-N values fluctuate far more than ``tol``) is certified
        once its residual, a distance within which a true singular value lies, is
        at most a tenth of that spacing; every other value (an outlier) to ``tol``.
        ``info["spacing"]`` gives, per value, 0 (certified to ``tol``) or the
        spacing it was resolved against (for the last value, a lower bound that
        allows for the next value not being converged itself). The same engine
        certifies the same way on every device.
    device : None, "cpu", "cuda" or "host-emulation"
        None: a device array (``__cuda_array_interface__``, e.g. CuPy) runs
        on the GPU in place, anything else on the CPU. "cuda": a NumPy A is
        copied to the device for the call. "host-emulation": the device
        solver on the host emulation of its kernels (no GPU needed; slow, for
        tests). "cpu" with a device array is a ValueError. On the GPU the default block is k + 2 within [4, 16]
        (a pass costs about the same for any block up to 16 vectors), and
        ``check_finite`` costs one extra read of A.

    Returns
    -------
    s : ndarray (k,) float64, descending
    U : ndarray (n, k), left vectors, dtype of A
    V : ndarray (m, k), right vectors, dtype of A
    info : dict
        ``iterations`` (block steps), ``restarts``, ``matrix_passes`` (reads of
        A), ``residuals`` (k,), ``converged``, ``norm_estimate``, ``tol``,
        ``block``, ``dense`` (True when solved directly by LAPACK because the
        matrix is small), ``warm``: the ``v0`` for the next call on a nearby matrix,
        V, then the Ritz vector of the next value, then (when this call was
        warm-started) the starting vectors of the isolated values and of the
        largest one, so that a chain of calls spans each outlier's (and the top
        of a bulk edge's) extrapolation from the last two steps (V alone after
        a dense solve or for a Fortran-ordered A); ``status`` ("converged", "not_converged" or
        "numerical_issue": a NaN or infinity in the answer); on the device
        path also ``device`` ("cuda" or "host-emulation") and
        ``host_syncs`` (device-to-host copies during the solve, about 6 per
        block step plus the certificate). A non-converged
        result also emits :class:`ConvergenceWarning`. On the GPU, s, U and V
        are NumPy arrays too.
    """
    device = _device(device)
    resolvable = v.choice("certify", certify, ("all", "resolvable")) == "resolvable"
    if _on_gpu("A", A, device):
        return _top_singular_gpu(A, k, tol, v0, block, max_passes, max_basis, seed, check_finite, device,
                                 resolvable)
    A = _matrix("A", A, check_finite)
    n, m = A.shape
    k = v.integer("k", k, 1, min(n, m))
    opt = _krylov_options(tol, block, max_passes, max_basis, seed, warm_extra=1, resolvable=resolvable)
    v0 = _warm("v0", v0, m, A.dtype)
    fn = _core.top_singular_f64 if A.dtype == np.float64 else _core.top_singular_f32
    s, U, V, info = fn(A, k, opt, v0)
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
        Y = np.asarray(op(X))
        # a complex (or object, string) result would lose its imaginary part in the cast below
        if Y.dtype.kind not in "fiub":
            raise ValueError(f"op must return real values (an operator on real vectors); its output has dtype {Y.dtype}")
        Y = Y.astype(np.float64, copy=False)
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
             seed: int = 0, device: str | None = None):
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
        computed explicitly from the operator's products the solve made (no extra
        application).
    v0 : ndarray (n,) or (n, k0), optional warm start.
    device : None, "cpu", "cuda" or "host-emulation", as in :func:`top_singular`
        (a matrix op only; on the device path the matrix must be symmetric to
        max |A - A^T| <= 1e-6 max |A|).

    Returns
    -------
    values : ndarray, ``(k,)`` descending for "largest"; ``(2k,)`` for "both":
        the k largest descending, then the k smallest ascending
    vectors : ndarray (n, len(values)), orthonormal columns
    info : dict as in :func:`top_singular`.
    """
    which = v.choice("which", which, ("largest", "both"))
    device = _device(device)
    if not callable(op) and _on_gpu("op", op, device):
        return _top_eigs_gpu(op, n, k, which, tol, v0, block, max_passes, max_basis, seed, device)
    if callable(op) and device in ("cuda", "host-emulation"):
        raise ValueError(f"device={device!r} needs a matrix op; a callable operator runs on the CPU "
                         f"(device=None or 'cpu')")
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
    opt = _krylov_options(tol, block, max_passes, max_basis, seed)
    v0 = _warm("v0", v0, n, np.float64)
    both = which == "both"
    if A is not None:
        vals, vecs, info = _core.top_eigs_dense(A, k, both, opt, v0)
    else:
        vals, vecs, info = _core.top_eigs_op(_callable(op, n), n, k, both, opt, v0)
    _warn("top_eigs", info)
    return vals, vecs, info


def _top_eigs_gpu(op, n, k, which, tol, v0, block, max_passes, max_basis, seed, device):
    src = _DeviceInput("op", op, True)
    rows, cols = src.shape
    if rows != cols:
        raise ValueError(f"op must be square (a symmetric operator), got shape {(rows, cols)}")
    if n is not None and v.integer("n", n, 1) != rows:
        raise ValueError(f"n must equal the size of op ({rows}), got {n}")
    k = v.integer("k", k, 1, rows if which == "largest" else rows // 2)
    opt = _krylov_options(tol, block, max_passes, max_basis, seed)
    v0 = _warm("v0", _host_vector_block("v0", v0), rows, np.float64)
    mod = _device_words.krylov_module(device or "cuda", "top_eigs")
    try:
        ptr, _, _, _, ld, single = src.open(mod)
        scale = mod.abs_max_device(ptr, rows, cols, True, ld, single)
        if rows > 1 and mod.asymmetry_device(ptr, rows, ld, single) > 1e-6 * max(scale, np.finfo(np.float64).tiny):
            raise ValueError("op must be symmetric (max |A - A^T| <= 1e-6 max |A|)")
        # (a symmetric matrix reads the same in either order: the row-major view of its storage)
        vals, vecs, info = mod.top_eigs_device(ptr, rows, ld, single, k, which == "both", opt, v0)
    finally:
        src.close()
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
                     spectrum: str = "auto", n: int | None = None, device: str | None = None):
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
    device : None, "cpu", "cuda" or "host-emulation", as in :func:`top_singular`. On the GPU the
        SLQ recurrences run on the device (same probes as on the CPU for a
        seed); method="exact" copies the matrix to the host. A callable runs on
        the CPU only.

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
    device = _device(device)
    if not callable(A) and _on_gpu("A", A, device):
        nodes, weights, lower, vals = _slq_gpu(A, method, spectrum, probes, degree, seed, device)
        if vals is not None:
            return np.histogram(vals, bins=grid)[0] / (vals.size * widths), np.zeros(widths.size)
    elif callable(A) and device in ("cuda", "host-emulation"):
        raise ValueError(f"device={device!r} needs an array A; a callable operator runs on the CPU "
                         f"(device=None or 'cpu')")
    elif callable(A) and not isinstance(A, np.ndarray):
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
    return _density_from_quadrature(nodes, weights, grid, widths, lower)


def _density_from_quadrature(nodes, weights, grid, widths, lower):
    per_probe = np.stack([np.diff(_cdf_from_quadrature(nodes[p], weights[p], grid, lower)) / widths
                          for p in range(nodes.shape[0])])
    density = per_probe.mean(axis=0)
    error = per_probe.std(axis=0, ddof=1) / np.sqrt(per_probe.shape[0]) if per_probe.shape[0] > 1 \
        else np.full(widths.size, np.nan)
    return density, error


def _slq_gpu(A, method, spectrum, probes, degree, seed, device):
    """SLQ on the device: (nodes, weights, lower, None), or (None, None, None, exact values) for method='exact'."""
    src = _DeviceInput("A", A, True)
    n, m = src.shape
    if spectrum == "eigenvalues" and n != m:
        raise ValueError(f"A must be square (a symmetric operator), got shape {(n, m)}")
    mod = _device_words.krylov_module(device or "cuda", "spectral_density")
    try:
        args = src.open(mod)
        ptr, _, _, _, ld, single = args
        if spectrum == "auto":
            spectrum = "eigenvalues" if n == m and mod.asymmetry_device(ptr, n, ld, single) == 0.0 \
                else "squared_singular_values"
        if spectrum == "eigenvalues":
            scale = mod.abs_max_device(*args)
            if n > 1 and mod.asymmetry_device(ptr, n, ld, single) > 1e-6 * max(scale, np.finfo(np.float64).tiny):
                raise ValueError("A must be symmetric (max |A - A^T| <= 1e-6 max |A|)")
        if method == "exact":
            H = mod.copy_to_host(*args).astype(np.float64)
            vals = np.linalg.eigvalsh(H) if spectrum == "eigenvalues" else np.linalg.svd(H, compute_uv=False) ** 2
            return None, None, None, vals
        nodes, weights = mod.slq_device(*args, probes, degree, seed, spectrum == "eigenvalues")
    finally:
        src.close()
    return nodes, weights, (0.0 if spectrum == "squared_singular_values" else None), None
