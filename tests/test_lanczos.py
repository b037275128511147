"""top_singular / top_eigs / spectral_density against LAPACK (numpy.linalg)."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import specdyn
from specdyn.lanczos import ConvergenceWarning, _krylov_options

KINDS = ("separated", "clustered", "repeated", "rank_deficient")


def spiked(n, m, k, kind, seed, dtype=np.float64, order="C"):
    """A Gaussian bulk (top edge ~ 1 + sqrt(m/n)... scaled to about 1) plus spikes."""
    rng = np.random.default_rng(seed)
    r = min(n, m)
    q = min(k + 3, r)
    U, _ = np.linalg.qr(rng.standard_normal((n, q)))
    V, _ = np.linalg.qr(rng.standard_normal((m, q)))
    if kind == "separated":
        s = 3.0 + 2.0 * np.arange(q)[::-1]
    elif kind == "clustered":
        s = 4.0 + 1e-3 * np.arange(q)[::-1]
    elif kind == "repeated":
        s = np.repeat([6.0, 4.0, 3.0], int(np.ceil(q / 3)))[:q]
    else:  # low rank: no bulk, rank q <= k + 3
        s = 1.0 + np.arange(q)[::-1]
        return np.asarray((U * s) @ V.T, dtype=dtype, order=order)
    A = (U * s) @ V.T + rng.standard_normal((n, m)) / np.sqrt(n + m)
    return np.asarray(A, dtype=dtype, order=order)


def check_triplets(A, s, U, V, k, tol):
    Ad = A.astype(np.float64)
    ref = np.linalg.svd(Ad, compute_uv=False)
    norm = ref[0]
    assert s.shape == (k,) and U.shape == (A.shape[0], k) and V.shape == (A.shape[1], k)
    assert np.all(np.diff(s) <= 1e-12 * norm)  # descending
    np.testing.assert_allclose(s, ref[:k], rtol=0, atol=10 * tol * norm + 1e-13 * norm)
    Ud, Vd = U.astype(np.float64), V.astype(np.float64)
    # Residuals recomputed here, independently of info.
    r1 = np.linalg.norm(Ad @ Vd - Ud * s, axis=0)
    r2 = np.linalg.norm(Ad.T @ Ud - Vd * s, axis=0)
    assert np.all(r1 <= 10 * tol * norm + 1e-12 * norm)
    assert np.all(r2 <= 10 * tol * norm + 1e-12 * norm)
    np.testing.assert_allclose(Vd.T @ Vd, np.eye(k), atol=100 * tol + 1e-10)
    np.testing.assert_allclose(Ud.T @ Ud, np.eye(k), atol=100 * tol + 1e-10)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 600),
    m=st.integers(1, 600),
    k=st.integers(1, 20),
    kind=st.sampled_from(KINDS),
    order=st.sampled_from("CF"),
    seed=st.integers(0, 2**31),
)
def test_top_singular_float64_matches_lapack(n, m, k, kind, order, seed):
    k = min(k, n, m)
    A = spiked(n, m, k, kind, seed, np.float64, order)
    if kind == "rank_deficient":
        k = min(k, np.linalg.matrix_rank(A))
    tol = 1e-10
    s, U, V, info = specdyn.top_singular(A, k, tol=tol)
    assert info["converged"]
    assert np.all(info["residuals"] <= tol * info["norm_estimate"] * (1 + 1e-12))
    check_triplets(A, s, U, V, k, tol)


@settings(max_examples=8, deadline=None)
@given(
    n=st.integers(40, 400),
    m=st.integers(40, 400),
    k=st.integers(1, 10),
    kind=st.sampled_from(KINDS[:3]),
    seed=st.integers(0, 2**31),
)
def test_top_singular_float32(n, m, k, kind, seed):
    A = spiked(n, m, k, kind, seed, np.float32)
    s, U, V, info = specdyn.top_singular(A, k)
    assert U.dtype == np.float32 and V.dtype == np.float32
    assert info["tol"] == pytest.approx(1e-4)
    assert info["converged"]
    check_triplets(A, s, U, V, k, 1e-4)


@pytest.mark.parametrize("order", "CF")
def test_repeated_outliers_subspace(order):
    # Singular value 5 with multiplicity 4: the subspace must be the exact one.
    rng = np.random.default_rng(3)
    n, m = 500, 300
    U0, _ = np.linalg.qr(rng.standard_normal((n, 6)))
    V0, _ = np.linalg.qr(rng.standard_normal((m, 6)))
    A = (U0 * [5, 5, 5, 5, 3, 2]) @ V0.T + 0.02 * rng.standard_normal((n, m)) / np.sqrt(n)
    A = np.asarray(A, order=order)
    s, U, V, info = specdyn.top_singular(A, 5)
    ref_U, ref_s, ref_Vt = np.linalg.svd(A, full_matrices=False)
    check_triplets(A, s, U, V, 5, 1e-10)
    # The subspace of the 4 (nearly) repeated values: principal angles ~ 0.
    cosines = np.linalg.svd(V[:, :4].T @ ref_Vt[:4].T, compute_uv=False)
    assert np.min(cosines) > 1 - 1e-8


def test_c_and_fortran_order_agree():
    A = spiked(400, 350, 6, "separated", 1)
    sc, Uc, Vc, _ = specdyn.top_singular(A, 6)
    sf, Uf, Vf, _ = specdyn.top_singular(np.asfortranarray(A), 6)
    np.testing.assert_allclose(sc, sf, rtol=1e-12)
    np.testing.assert_allclose(np.abs(np.sum(Uc * Uf, axis=0)), 1, atol=1e-9)
    # A strided view is accepted too (one copy).
    B = np.zeros((800, 350))
    B[::2] = A
    sv, *_ = specdyn.top_singular(B[::2], 6)
    np.testing.assert_allclose(sv, sc, rtol=1e-12)


@pytest.mark.parametrize("order", "CF")
@pytest.mark.parametrize("k", [1, 5, 10])
def test_warm_start_from_exact_converges_in_one_or_two_steps(order, k):
    A = spiked(400, 300, k, "separated", 7, order=order)
    _, _, Vt = np.linalg.svd(A, full_matrices=False)
    s, U, V, info = specdyn.top_singular(A, k, v0=Vt[:k].T)
    assert info["converged"]
    assert info["iterations"] <= 2
    check_triplets(A, s, U, V, k, 1e-10)


@pytest.mark.parametrize("rel", [1e-11, 1e-6, 1e-2])
def test_warm_start_after_perturbation(rel):
    A = spiked(500, 400, 5, "separated", 11)
    s, U, V, _ = specdyn.top_singular(A, 5)
    E = np.random.default_rng(0).standard_normal(A.shape)
    B = A + rel * s[0] * E / np.linalg.norm(E, 2)
    s2, U2, V2, warm = specdyn.top_singular(B, 5, v0=V)
    *_, cold = specdyn.top_singular(B, 5)
    check_triplets(B, s2, U2, V2, 5, 1e-10)
    if rel < 1e-10:  # barely moved: the previous block converges at once
        assert warm["iterations"] <= 2 and warm["matrix_passes"] < cold["matrix_passes"]
    else:  # moved: the warm probe (one wide step) never costs more passes than a cold solve
        assert warm["matrix_passes"] <= cold["matrix_passes"]


def test_non_convergence_is_reported():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((500, 500))  # no gap at the top edge: slow
    with pytest.warns(ConvergenceWarning):
        s, U, V, info = specdyn.top_singular(A, 10, max_passes=3)
    assert not info["converged"] and info["status"] == "not_converged"
    with pytest.warns(ConvergenceWarning):
        info_e = specdyn.top_eigs(A + A.T, k=3, which="both", max_passes=2)[2]
    assert info_e["status"] == "not_converged"
    assert specdyn.top_singular(A, 2)[3]["status"] == "converged"


def bench_spectrum(n, top, seed):
    """A Gaussian bulk of edge 2 plus ten spikes evenly from top[0] down to top[1] (none if top is None)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n)) / np.sqrt(n)
    if top is not None:
        U, _ = np.linalg.qr(rng.standard_normal((n, 10)))
        V, _ = np.linalg.qr(rng.standard_normal((n, 10)))
        A += (U * np.linspace(*top, 10)) @ V.T
    return A


@pytest.mark.parametrize("certify", ["all", "resolvable"])
@pytest.mark.parametrize("k", [5, 10, 20])
@pytest.mark.parametrize("top", [None, (6.0, 2.5), (3.0, 1.6)], ids=["bulk", "spikes", "crowded"])
def test_solve_stops_near_the_first_pass_that_certifies(top, k, certify):
    """The Rayleigh-Ritz solve is amortized over passes, and a forecast of the
    residuals brings it forward near convergence: the same solve capped a few
    passes short of where it stopped does not converge (the cap forces a
    Rayleigh-Ritz at the last pass, so a late stop would show as a converged
    capped run)."""
    A = bench_spectrum(1024, top, 3)
    tol = 1e-10 if certify == "all" else 1e-6
    s, U, V, info = specdyn.top_singular(A, k, tol=tol, certify=certify)
    assert info["converged"]
    if certify == "all":
        check_triplets(A, s, U, V, k, tol)
    passes = info["matrix_passes"]
    cap = passes - max(2, int(np.ceil(0.04 * passes)))
    with pytest.warns(ConvergenceWarning):
        capped = specdyn.top_singular(A, k, tol=tol, certify=certify, max_passes=cap)[3]
    assert not capped["converged"], (passes, cap)


def test_pass_cap_below_the_basis_size_still_returns_k():
    A = spiked(400, 400, 10, "separated", 2)
    with pytest.warns(ConvergenceWarning):
        s, U, V, info = specdyn.top_singular(A, 10, max_passes=1)
    assert s.shape == (10,) and np.all(np.isfinite(s)) and not info["converged"]


def test_zero_matrix_and_tiny():
    s, U, V, info = specdyn.top_singular(np.zeros((200, 150)), 3)
    np.testing.assert_array_equal(s, 0)
    assert info["converged"]
    s, U, V, info = specdyn.top_singular(np.array([[3.0]]), 1)
    assert s[0] == pytest.approx(3.0)


def test_rank_deficient_k_above_rank():
    # Only the values are well defined beyond the rank; the zero ones are found.
    A = spiked(300, 200, 2, "rank_deficient", 5)  # rank 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        s, U, V, info = specdyn.top_singular(A, 8)
    ref = np.linalg.svd(A, compute_uv=False)
    np.testing.assert_allclose(s, ref[:8], atol=1e-9 * ref[0])
    assert np.linalg.norm(A @ V - U * s) <= 1e-9 * ref[0]


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.ones((5, 4)), 5), "k must be"),
        ((np.ones((5, 4)), 0), "k must be"),
        ((np.ones((5, 4)), 1.5), "k must be"),
        ((np.array([[1.0, np.nan], [0.0, 1.0]]), 1), "finite"),
        ((np.array([[1.0, np.inf], [0.0, 1.0]]), 1), "finite"),
        ((np.ones((3, 3), dtype=complex), 1), "dtype"),
        ((np.ones(5), 1), "ndim"),
        ((np.ones((2, 2, 2)), 1), "ndim"),
        ((np.ones((0, 3)), 1), "at least one"),
    ],
)
def test_top_singular_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        specdyn.top_singular(*args)


def test_top_singular_bad_options():
    A = np.ones((10, 8))
    with pytest.raises(ValueError, match="tol"):
        specdyn.top_singular(A, 1, tol=0.0)
    with pytest.raises(ValueError, match="v0"):
        specdyn.top_singular(A, 1, v0=np.ones((7, 2)))
    with pytest.raises(ValueError, match="v0"):
        specdyn.top_singular(A, 1, v0=np.full((8, 1), np.nan))
    with pytest.raises(ValueError, match="block"):
        specdyn.top_singular(A, 1, block=0)


def sym_spectrum(n, seed):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    ev = rng.uniform(-1, 1, n)
    top, bottom = [10, 9, 9, 8, 7.5], [-6, -6, -7, -8]
    if n >= 9:
        ev[:5], ev[-4:] = top, bottom
    A = (Q * ev) @ Q.T
    return (A + A.T) / 2


@settings(max_examples=12, deadline=None)
@given(n=st.integers(2, 300), k=st.integers(1, 8), which=st.sampled_from(["largest", "both"]),
       as_callable=st.booleans(), seed=st.integers(0, 2**31))
def test_top_eigs_matches_eigh(n, k, which, as_callable, seed):
    k = min(k, n if which == "largest" else n // 2)
    A = sym_spectrum(n, seed)
    w = np.linalg.eigvalsh(A)
    op = (lambda X: A @ X) if as_callable else A
    vals, vecs, info = specdyn.top_eigs(op, n=n, k=k, which=which)
    assert info["converged"]
    ref = w[::-1][:k] if which == "largest" else np.concatenate([w[::-1][:k], w[:k]])
    norm = np.max(np.abs(w))
    np.testing.assert_allclose(vals, ref, atol=1e-8 * norm)
    res = np.linalg.norm(A @ vecs - vecs * vals, axis=0)
    assert np.all(res <= 1e-9 * norm)
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(vals.size), atol=1e-8)


def test_top_eigs_warm_start_and_vector_callable():
    A = sym_spectrum(300, 2)
    w, Q = np.linalg.eigh(A)
    vals, vecs, info = specdyn.top_eigs(A, k=3, v0=Q[:, ::-1][:, :3])
    assert info["iterations"] <= 2
    # A callable written for matvecs on (n,) inputs works when b == 1.
    vals1, _, info1 = specdyn.top_eigs(lambda x: A @ x[:, 0] if x.ndim == 2 and x.shape[1] == 1 else A @ x,
                                       n=300, k=1, block=1)
    assert vals1[0] == pytest.approx(w[-1], rel=1e-9)


def test_top_eigs_bad_input():
    A = sym_spectrum(50, 0)
    with pytest.raises(ValueError, match="shape"):
        specdyn.top_eigs(lambda X: (A @ X)[:-1], n=50, k=2)
    with pytest.raises(ValueError, match="non-finite"):
        specdyn.top_eigs(lambda X: X * np.nan, n=50, k=2)
    with pytest.raises(ValueError, match="n "):
        specdyn.top_eigs(lambda X: X, k=2)
    with pytest.raises(ValueError, match="symmetric"):
        specdyn.top_eigs(np.triu(np.ones((5, 5))), k=1)
    with pytest.raises(ValueError, match="square"):
        specdyn.top_eigs(np.ones((5, 4)), k=1)
    with pytest.raises(ValueError, match="k must be"):
        specdyn.top_eigs(A, k=26, which="both")
    with pytest.raises(ValueError, match="which"):
        specdyn.top_eigs(A, k=1, which="smallest")


def test_spectral_density_exact_is_histogram():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 200)) / np.sqrt(300)
    grid = np.linspace(0, 3.5, 15)
    d, e = specdyn.spectral_density(X, grid, method="exact")
    ref = np.histogram(np.linalg.svd(X, compute_uv=False) ** 2, bins=grid)[0] / 200 / np.diff(grid)
    np.testing.assert_allclose(d, ref)
    assert np.all(e == 0)


@pytest.mark.parametrize("layout", ["C", "F", "wide", "symmetric", "callable"])
def test_spectral_density_slq_close_to_exact(layout):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((900, 600)) / np.sqrt(900)
    kw = {}
    if layout == "F":
        X = np.asfortranarray(X)
    elif layout == "wide":
        X = np.ascontiguousarray(X.T)
    elif layout in ("symmetric", "callable"):
        S = X.T @ X
        X = S if layout == "symmetric" else (lambda Z: S @ Z)
        kw = {"n": 600} if layout == "callable" else {}
    grid = np.linspace(0, 3.2, 17)
    d, e = specdyn.spectral_density(X, grid, probes=12, degree=60, **kw)
    de, _ = specdyn.spectral_density(X, grid, method="exact", **kw)
    l1 = np.sum(np.abs(d - de) * np.diff(grid))
    assert l1 < 0.06
    assert np.all(e >= 0)
    assert np.sum(d * np.diff(grid)) == pytest.approx(1.0, abs=0.02)


def test_spectral_density_bad_input():
    X = np.ones((5, 4))
    with pytest.raises(ValueError, match="grid"):
        specdyn.spectral_density(X, [1.0, 0.5])
    with pytest.raises(ValueError, match="method"):
        specdyn.spectral_density(X, [0, 1], method="kpm")
    with pytest.raises(ValueError, match="probes"):
        specdyn.spectral_density(X, [0, 1], probes=0)
    with pytest.raises(ValueError, match="n "):
        specdyn.spectral_density(lambda Z: Z, [0, 1])


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS[:3])
def test_top_singular_large(kind):
    A = spiked(2500, 1800, 20, kind, 3)
    s, U, V, info = specdyn.top_singular(A, 20)
    assert info["converged"]
    check_triplets(A, s, U, V, 20, 1e-10)


@pytest.mark.slow
def test_spectral_density_slq_large():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((2048, 2048)) / np.sqrt(2048)
    grid = np.linspace(0, 4.2, 41)
    d, e = specdyn.spectral_density(X, grid, probes=32, degree=64)
    de, _ = specdyn.spectral_density(X, grid, method="exact")
    assert np.sum(np.abs(d - de) * np.diff(grid)) < 0.05


# Each solver once in a fresh process; the script writes every returned array.
# The sizes put the basis dimension above one row chunk (4096) and the sweep
# over several panel groups, so both fixed-order reductions are exercised.
_THREADS_SNIPPET = r"""
import sys
import numpy as np
import specdyn.lanczos as L

rng = np.random.default_rng(3)
out = {}
A = rng.standard_normal((400, 5000))
A[:, :3] *= 4.0  # three outliers over a bulk
for dtype in ("float64", "float32"):
    s, U, V = L.top_singular(A.astype(dtype), 6, tol=1e-8 if dtype == "float64" else 1e-4, seed=1)[:3]
    out["s_" + dtype], out["U_" + dtype], out["V_" + dtype] = s, U, V
    s, U, V = L.top_singular(A.T.astype(dtype), 4, v0=U[:, :4], seed=2)[:3]  # column-major view, warm start
    out["sw_" + dtype], out["Vw_" + dtype] = s, V
n = 9000
diag = np.sort(rng.uniform(0.0, 1.0, n))
diag[-4:] += np.array([0.5, 0.3, 0.3001, 0.2])
diag[:3] -= np.array([0.4, 0.25, 0.2])  # separated bottom values keep "both" short

def op(X):  # elementwise only: the operator itself rounds the same at any thread count
    return diag[:, None] * X + 0.01 * (np.roll(X, 1, axis=0) + np.roll(X, -1, axis=0))

vals, vecs = L.top_eigs(op, n, k=3, tol=1e-9, seed=4)[:2]
out["eig_vals"], out["eig_vecs"] = vals, vecs
vals, vecs = L.top_eigs(op, n, k=2, which="both", tol=1e-8, seed=5, v0=vecs[:, :1])[:2]
out["both_vals"], out["both_vecs"] = vals, vecs
dens, err = L.spectral_density(op, np.linspace(-0.1, 1.6, 18), probes=6, degree=24, seed=6, n=n)
out["slq"], out["slq_err"] = dens, err
np.savez(sys.argv[1], **out)
"""


def assert_same_bits_at_1_and_2_threads(snippet: str, tmp_path, env2: dict | None = None, threads2: int = 2) -> None:
    """Run ``snippet`` (it saves arrays to the .npz named by argv[1]) at 1 and 2 (or ``threads2``) threads;
    compare bit for bit. ``env2`` adds variables to the second run."""
    outs = []
    for threads in (1, threads2):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   PYTHONPATH=str(Path(specdyn.__file__).parent.parent), **((env2 or {}) if threads > 1 else {}))
        out = tmp_path / f"t{threads}.npz"
        subprocess.run([sys.executable, "-c", snippet, str(out)], env=env, check=True, timeout=300)
        outs.append(np.load(out))
    for k in outs[0].files:
        np.testing.assert_array_equal(outs[0][k], outs[1][k], err_msg=k)


def test_solvers_give_the_same_bits_at_any_thread_count(tmp_path):
    assert_same_bits_at_1_and_2_threads(_THREADS_SNIPPET, tmp_path)


_STALL_SNIPPET = r"""
import sys
import numpy as np
import specdyn

rng = np.random.default_rng(4)
out = {}
A = rng.standard_normal((3000, 1000)) / np.sqrt(3000)
A += (np.linalg.qr(rng.standard_normal((3000, 3)))[0] * [5.0, 4.0, 3.0]) @ np.linalg.qr(rng.standard_normal((1000, 3)))[0].T
for dtype in ("float64", "float32"):
    M = A.astype(dtype)
    f = specdyn._core.gram_sweep_f64 if dtype == "float64" else specdyn._core.gram_sweep_f32
    for b in (1, 2, 5):
        out[f"sweep_{dtype}_{b}"] = f(M, np.asfortranarray(rng.standard_normal((1000, b)).astype(dtype)))
    s, U, V, info = specdyn.top_singular(M, 4, tol=1e-10 if dtype == "float64" else 1e-4, seed=1)
    out[f"s_{dtype}"], out[f"U_{dtype}"], out[f"r_{dtype}"] = s, U, info["residuals"]
    s, U, V, info = specdyn.top_singular(M + 1e-3 * M[::-1], 4, v0=info["warm"], seed=2)
    out[f"sw_{dtype}"], out[f"Vw_{dtype}"] = s, V
    # the row sums of a solve's first sweep (norms and beta_f in training)
    f = specdyn._core.top_singular_f64 if dtype == "float64" else specdyn._core.top_singular_f32
    info = f(M, 2, specdyn.lanczos._krylov_options(max_passes=2), None, True, rng.standard_normal(3000))[3]
    out[f"rowsq_{dtype}"], out[f"rowp_{dtype}"] = info["row_squares"], info["row_weighted"]
np.savez(sys.argv[1], **out)
"""


def test_a_stalled_sweep_thread_changes_no_bit(tmp_path):
    """Each pool thread is parked for 3 ms inside the first group it takes, as when another
    process takes its core (a sweep here takes under 1 ms): the caller computes that group
    too and the first result wins. Every answer keeps the bits of the one-thread run."""
    assert_same_bits_at_1_and_2_threads(_STALL_SNIPPET, tmp_path, env2={"SPECDYN_SWEEP_STALL_US": "3000"})


def test_oversubscribed_sweep_threads_change_no_bit(tmp_path):
    """Five sweep threads on this 2-core machine: the OS parks some of them in the middle of
    their groups all the time, which the others recompute."""
    assert_same_bits_at_1_and_2_threads(_STALL_SNIPPET, tmp_path, threads2=5)


_POOL_SNIPPET = r"""
import os, sys
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import specdyn

rng = np.random.default_rng(8)
mats = [rng.standard_normal((900 + 37 * i, 700)) for i in range(4)]
X = np.asfortranarray(rng.standard_normal((700, 3)))

def answers():
    out = [specdyn._core.gram_sweep_f64(A, X) for A in mats]
    out += [specdyn.top_singular(A, 3, tol=1e-10, seed=1)[0] for A in mats]
    return out

blas = specdyn._core.blas_threads()
ref = answers()
# Several callers at once share one pool (a caller that finds it busy sweeps alone) and
# OpenBLAS's one thread count: every round gives the same bits and leaves the count as it was.
same, kept = True, True
for _ in range(6):
    with ThreadPoolExecutor(3) as ex:
        runs = list(ex.map(lambda _: answers(), range(3)))
    for run in runs:
        for j, (a, b) in enumerate(zip(ref, run)):
            if not np.array_equal(a, b):
                same = False
                print("answer", j, "differs by", float(np.max(np.abs(a - b))), file=sys.stderr)
    kept = kept and specdyn._core.blas_threads() == blas
# A forked child starts its own pool (the parent's threads do not exist in it).
pid = os.fork()
if pid == 0:
    ok = all(np.array_equal(a, b) for a, b in zip(ref, answers())) and specdyn._core.blas_threads() == blas
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print(same, kept, os.waitstatus_to_exitcode(status))
"""


def test_sweep_pool_serves_concurrent_callers_and_forked_children():
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(Path(specdyn.__file__).parent.parent))
    out = subprocess.run([sys.executable, "-c", _POOL_SNIPPET], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    assert out.stdout.split() == ["True", "True", "0"], out.stdout + out.stderr
    # and the sweep itself against NumPy
    rng = np.random.default_rng(9)
    A, X = rng.standard_normal((1300, 800)), np.asfortranarray(rng.standard_normal((800, 3)))
    np.testing.assert_allclose(specdyn._core.gram_sweep_f64(A, X), A.T @ (A @ X), rtol=1e-12, atol=1e-9)


def _moving_spikes(n, m, t, seed=11):
    """Two spikes (4 and 3) on a Gaussian bulk of edge ~1, their right vectors turning
    smoothly with t (as a weight matrix moves along gradient descent)."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, 2)))
    V, _ = np.linalg.qr(rng.standard_normal((m, 4)))
    turn = np.stack([np.cos(t) * V[:, 0] + np.sin(t) * V[:, 2], np.cos(t) * V[:, 1] + np.sin(t) * V[:, 3]], 1)
    bulk = rng.standard_normal((n, m)) / (np.sqrt(n) + np.sqrt(m))
    return (U * np.array([4.0, 3.0])) @ turn.T + bulk


@pytest.mark.parametrize("certify", ["all", "resolvable"])
def test_warm_block_chain_tracks_a_moving_matrix(certify):
    """info["warm"] (V, the next value's Ritz vector, then the starting vectors of the
    isolated values) chained from call to call: every answer agrees with LAPACK, the
    block has that layout, and the chain needs far fewer passes than cold solves."""
    n, m, k, tol = 500, 400, 4, 1e-10
    warm, cold_passes, warm_passes = None, 0, 0
    for step in range(6):
        A = _moving_spikes(n, m, 0.01 * step)
        s, U, V, info = specdyn.top_singular(A, k, tol=tol, v0=warm, certify=certify)
        if certify == "all":
            check_triplets(A, s, U, V, k, tol)
        else:
            np.testing.assert_allclose(s[:2], np.linalg.svd(A, compute_uv=False)[:2], rtol=10 * tol)
        W = info["warm"]
        np.testing.assert_array_equal(W[:, :k], V)
        # the next value's vector completes V to an orthonormal block
        np.testing.assert_allclose(W[:, :k + 1].T @ W[:, :k + 1], np.eye(k + 1), atol=1e-8)
        if warm is None:
            assert W.shape == (m, k + 1)  # a cold solve has no history
        else:
            # the two spikes are isolated (the bulk-edge values are not): their starting vectors follow
            assert W.shape == (m, k + 3)
            np.testing.assert_array_equal(W[:, k + 1:], warm[:, :2])
            cold_passes += specdyn.top_singular(A, k, tol=tol, certify=certify)[3]["matrix_passes"]
            warm_passes += info["matrix_passes"]
        warm = W
    assert warm_passes <= 0.5 * cold_passes, (warm_passes, cold_passes)


def test_warm_block_chain_at_a_moving_bulk_edge_keeps_the_top_vector():
    """No outliers: the top-4 sit in the clustered edge of a random bulk, which drifts as in
    training. The warm block keeps the largest value's starting vector all the same (the top
    of the edge moves as a whole), and the tracking certificate holds against LAPACK: each
    value within its residual bound of a true singular value."""
    rng = np.random.default_rng(5)
    n, m, k = 600, 500, 4
    G, D = rng.standard_normal((n, m)) / np.sqrt(n), rng.standard_normal((n, m)) / np.sqrt(n)
    warm = None
    for step in range(5):
        A = G + 2e-3 * step * D
        s, U, V, info = specdyn.top_singular(A, k, tol=1e-10, v0=warm, certify="resolvable")
        assert info["converged"] and np.all(np.asarray(info["spacing"]) > 0)  # all four clustered
        ref = np.linalg.svd(A, compute_uv=False)
        for j in range(k):
            assert np.min(np.abs(ref - s[j])) <= info["residuals"][j] * (1 + 1e-9)
        W = info["warm"]
        np.testing.assert_array_equal(W[:, :k], V)
        if warm is None:
            assert W.shape == (m, k + 1)
        else:
            assert W.shape == (m, k + 2)
            np.testing.assert_array_equal(W[:, k + 1], warm[:, 0])
        warm = W


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_warm_block_far_from_the_answer_narrows(dtype):
    """The probe: a warm block from an unrelated matrix is not close to invariant, so the
    solve narrows to the cold block and stays correct; one from the same matrix stays wide."""
    n, m, k = 500, 400, 4
    tol = 1e-10 if dtype == np.float64 else 1e-4
    A = _moving_spikes(n, m, 0.0, seed=3).astype(dtype)
    other = _moving_spikes(n, m, 0.0, seed=4).astype(dtype)
    cold = specdyn.top_singular(A, k, tol=tol)
    far = specdyn.top_singular(other, k, tol=tol)[3]["warm"]
    s, U, V, info = specdyn.top_singular(A, k, tol=tol, v0=far)
    assert info["converged"] and info["block"] == cold[3]["block"] == 2
    check_triplets(A, s, U, V, k, max(tol, 1e-4 if dtype == np.float32 else tol))
    same = specdyn.top_singular(A, k, tol=tol, v0=cold[3]["warm"])[3]
    assert same["block"] == k + 1 and same["matrix_passes"] <= 2
    # Isolated values (the two spikes alone) converge in a few narrow passes from any
    # start: after the probe the solve narrows even from a good warm block.
    B = _moving_spikes(n, m, 0.02, seed=3).astype(dtype)
    s, U, V, info = specdyn.top_singular(B, 2, tol=tol, v0=specdyn.top_singular(A, 2, tol=tol)[3]["warm"])
    assert info["converged"] and info["block"] == 1
    check_triplets(B, s, U, V, 2, tol)


@pytest.mark.parametrize("spectrum", [(6.0, 2.5), (3.0, 1.6), None], ids=["spikes", "crowded", "bulk"])
def test_reported_residuals_are_those_of_the_returned_triplets(spectrum):
    # The certificate is combined from the products the Lanczos sweeps computed (no pass of its
    # own); it must still be the residual of what is returned, recomputed here with NumPy.
    rng = np.random.default_rng(5)
    n = 700
    A = rng.standard_normal((n, n)) / np.sqrt(n)
    if spectrum is not None:
        P, _ = np.linalg.qr(rng.standard_normal((n, 10)))
        Q, _ = np.linalg.qr(rng.standard_normal((n, 10)))
        A += (P * np.linspace(*spectrum, 10)) @ Q.T
    s, U, V, info = specdyn.top_singular(A, 10, tol=1e-10)
    norm = np.linalg.norm(A, 2)
    true = np.maximum(np.linalg.norm(A @ V - U * s, axis=0), np.linalg.norm(A.T @ U - V * s, axis=0))
    assert info["converged"] and np.all(true <= 1e-10 * norm * (1 + 1e-6))
    np.testing.assert_allclose(info["residuals"], true, rtol=0.05, atol=1e-13 * norm)
    np.testing.assert_allclose(s, np.linalg.svd(A, compute_uv=False)[:10], rtol=0, atol=1e-10 * norm)


@pytest.mark.parametrize("case", ["bulk", "spikes", "dominant"])
def test_float32_certificate_from_kept_products_is_the_true_residual(case):
    # Float matrices certify from the kept Gram products (no pass of their own) while the
    # smallest wanted value is large enough that the products' rounding, amplified by
    # s1 / s_k, stays far below the tolerance; below that B^T U is formed in one more pass.
    # Either way the reported residuals must be those of the returned triplets (float64
    # NumPy on the float32 matrix and vectors).
    rng = np.random.default_rng(11)
    n, tol = 700, 1e-4
    A = rng.standard_normal((n, n)) / np.sqrt(n)
    P, _ = np.linalg.qr(rng.standard_normal((n, 10)))
    Q, _ = np.linalg.qr(rng.standard_normal((n, 10)))
    k = {"bulk": 4, "spikes": 10, "dominant": 3}[case]
    if case == "spikes":
        A += (P * np.linspace(6.0, 2.5, 10)) @ Q.T
    elif case == "dominant":
        A += 40.0 * np.outer(P[:, 0], Q[:, 0])  # s_k / s1 ~ 0.05
    A = A.astype(np.float32)
    s, U, V, info = specdyn.top_singular(A, k, tol=tol)
    A64, U64, V64 = A.astype(np.float64), U.astype(np.float64), V.astype(np.float64)
    norm = np.linalg.norm(A64, 2)
    true = np.maximum(np.linalg.norm(A64 @ V64 - U64 * s, axis=0), np.linalg.norm(A64.T @ U64 - V64 * s, axis=0))
    assert info["converged"] and np.all(true <= tol * norm * 1.01)
    np.testing.assert_allclose(info["residuals"], true, rtol=0, atol=1e-3 * tol * norm)
    np.testing.assert_allclose(s, np.linalg.svd(A64, compute_uv=False)[:k], rtol=0, atol=tol * norm)
    if case == "dominant":  # (each explicit certificate is a pass of its own)
        assert info["matrix_passes"] > info["iterations"]
    else:
        assert info["matrix_passes"] == info["iterations"]


@pytest.mark.parametrize("which", ["largest", "both"])
def test_top_eigs_certificate_needs_no_extra_application(which):
    # Every application of the operator is a Lanczos step (counted here); the residuals in info
    # are still those of the returned pairs.
    A = sym_spectrum(300, 4)
    applied = []

    def op(X):
        applied.append(X.shape[1])
        return A @ X

    vals, vecs, info = specdyn.top_eigs(op, n=300, k=3, which=which)
    assert info["converged"] and len(applied) == info["matrix_passes"] == info["iterations"]
    norm = np.max(np.abs(np.linalg.eigvalsh(A)))
    true = np.linalg.norm(A @ vecs - vecs * vals, axis=0)
    np.testing.assert_allclose(info["residuals"], true, rtol=0.05, atol=1e-13 * norm)


_SWEEP_CHILD = """
import hashlib
import sys
import numpy as np
from specdyn import _core
from specdyn.lanczos import _krylov_options
rng = np.random.default_rng(3)
worst = 0.0
digest = hashlib.sha256()
for dtype in ("float64", "float32"):
    fn = getattr(_core, "gram_sweep_" + dtype.replace("float", "f"))
    tn = getattr(_core, "transpose_sweep_" + dtype.replace("float", "f"))  # A^T Y alone (certificates)
    unit = 1e-13 if dtype == "float64" else 2e-5
    for n, m in ((301, 77), (64, 1000), (1000, 4097), (1500, 2048)):
        A = rng.standard_normal((n, m)).astype(dtype)
        A64 = A.astype(np.float64)
        for b in range(1, 10):
            X = np.asfortranarray(rng.standard_normal((m, b)).astype(dtype))
            X64 = X.astype(np.float64)
            ref = A64.T @ (A64 @ X64)
            scale = np.abs(A64).T @ (np.abs(A64) @ np.abs(X64))
            Z = fn(A, X)
            digest.update(Z.tobytes())
            worst = max(worst, np.max(np.abs(Z.astype(np.float64) - ref) / scale) / unit)
        for b in (1, 3, 8, 11):
            Y = np.asfortranarray(rng.standard_normal((n, b)).astype(dtype))
            Y64 = Y.astype(np.float64)
            err = np.abs(tn(A, Y).astype(np.float64) - A64.T @ Y64) / (np.abs(A64).T @ np.abs(Y64))
            worst = max(worst, np.max(err) / unit)
        # the row sums of a solve's first sweep (block 2: a pipelined sweep where forced)
        w = rng.standard_normal(n)
        info = getattr(_core, "top_singular_" + dtype.replace("float", "f"))(
            A, 2, _krylov_options(tol=1e-4, max_passes=2), None, True, w)[3]
        if not info["dense"]:
            digest.update(np.float64(info["row_squares"]).tobytes() + info["row_weighted"].tobytes())
            worst = max(worst, abs(info["row_squares"] / np.sum(A64 * A64) - 1) / 1e-13)
            err = np.abs(info["row_weighted"] - A64.T @ w) / (np.abs(A64).T @ np.abs(w))
            worst = max(worst, np.max(err) / 1e-13)
print(worst, digest.hexdigest())
"""


def _sweep_child(env):
    proc = subprocess.run([sys.executable, "-c", _SWEEP_CHILD], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    worst, digest = proc.stdout.split()
    return float(worst), digest


@pytest.mark.parametrize("env", [{}, {"SPECDYN_NO_AVX512": "1"}, {"SPECDYN_NO_AVX512": "1", "SPECDYN_NO_KERNEL": "1"}],
                         ids=["best", "avx2", "openblas"])
def test_fused_gram_sweep_on_every_kernel_path(env):
    # The fused sweep M^T (M X) and the transposed one M^T Y take the AVX-512 kernel (double and
    # float), the AVX2 one, or OpenBLAS, chosen per process by the CPU and these switches; each
    # against NumPy, for every block width the kernels special-case, odd and power-of-two-plus-one
    # widths.
    assert _sweep_child(env)[0] <= 1.0


@pytest.mark.parametrize("isa", [{}, {"SPECDYN_NO_AVX512": "1"}], ids=["best", "avx2"])
def test_panel_prefetch_is_exact(isa):
    # Matrices that stream from memory have each next panel requested during the update (a
    # prefetch); these small ones get it forced on. It must leave every bit as it was and the
    # products as NumPy's.
    on, off = _sweep_child({**isa, "SPECDYN_PREFETCH": "1"}), _sweep_child({**isa, "SPECDYN_PREFETCH": "0"})
    assert on[0] <= 1.0
    assert on[1] == off[1]


@pytest.mark.parametrize("isa", [{}, {"SPECDYN_NO_AVX512": "1"}], ids=["best", "avx2"])
def test_pipelined_sweep_is_exact(isa):
    # A sweep of b <= 2 runs panel by panel or pipelined (each panel's update inside the next
    # one's product), whichever the process timed faster. Forced either way, every bit must be the
    # same, and the products NumPy's. The two large shapes pipeline: panels of 7 and 15 rows
    # (single rows only) and of 16 and 32 rows (whole tiles), each with a shorter last panel.
    on, off = _sweep_child({**isa, "SPECDYN_PIPELINE": "1"}), _sweep_child({**isa, "SPECDYN_PIPELINE": "0"})
    assert on[0] <= 1.0
    assert on[1] == off[1]


def _at_line_offset(A, offset):
    """A copy of A whose data starts `offset` bytes after a 64-byte boundary."""
    buf = np.empty(A.size + 128 // A.itemsize, A.dtype)
    start = (-buf.ctypes.data) % 64 // A.itemsize + offset // A.itemsize
    out = buf[start:start + A.size].reshape(A.shape)
    out[...] = A
    assert out.ctypes.data % 64 == offset
    return out


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from(["float64", "float32"]), rows=st.integers(1, 300),
       cols=st.sampled_from([16, 48, 256, 1040]), b=st.integers(1, 9), line=st.integers(1, 15),
       seed=st.integers(0, 2**16))
def test_sweep_bits_do_not_depend_on_where_the_matrix_starts_in_a_line(dtype, rows, cols, b, line, seed):
    # NumPy's large arrays start 16 bytes into a cache line. The AVX-512 kernels then run on whole
    # lines, with masked loads at both ends of each row and the lanes rotated back before they are
    # summed: the same arithmetic as from a line start, so the same bits, and NumPy's products.
    # Widths are multiples of 16 (the lanes of a float32 vector), where that path applies.
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((rows, cols)).astype(dtype)
    X = np.asfortranarray(rng.standard_normal((cols, b)).astype(dtype))
    Y = np.asfortranarray(rng.standard_normal((rows, b)).astype(dtype))
    offset = line * A.itemsize % 64
    sweep = getattr(specdyn._core, "gram_sweep_" + dtype.replace("float", "f"))
    transpose = getattr(specdyn._core, "transpose_sweep_" + dtype.replace("float", "f"))
    at_start, shifted = _at_line_offset(A, 0), _at_line_offset(A, offset)
    Z0, Z1 = sweep(at_start, X), sweep(shifted, X)
    T0, T1 = transpose(at_start, Y), transpose(shifted, Y)
    assert np.array_equal(Z0, Z1) and np.array_equal(T0, T1)
    A64, X64, Y64 = A.astype(np.float64), X.astype(np.float64), Y.astype(np.float64)
    unit = 1e-13 if dtype == "float64" else 2e-5
    scale = np.abs(A64).T @ (np.abs(A64) @ np.abs(X64))
    assert np.max(np.abs(Z1 - A64.T @ (A64 @ X64)) / scale) <= unit
    assert np.max(np.abs(T1 - A64.T @ Y64) / (np.abs(A64).T @ np.abs(Y64))) <= unit


_LINE_OFFSETS_CHILD = """
import numpy as np
from specdyn import _core
rng = np.random.default_rng(11)
for dtype in ("float64", "float32"):
    sweep = getattr(_core, "gram_sweep_" + dtype.replace("float", "f"))
    transpose = getattr(_core, "transpose_sweep_" + dtype.replace("float", "f"))
    for rows, cols in ((37, 48), (300, 256), (1030, 1024)):
        A = rng.standard_normal((rows, cols)).astype(dtype)
        for b in (1, 2, 3, 5, 6, 8):
            X = np.asfortranarray(rng.standard_normal((cols, b)).astype(dtype))
            Y = np.asfortranarray(rng.standard_normal((rows, b)).astype(dtype))
            ref = None
            for offset in range(0, 64, A.itemsize):
                buf = np.empty(A.size + 128 // A.itemsize, A.dtype)
                start = (-buf.ctypes.data) % 64 // A.itemsize + offset // A.itemsize
                M = buf[start:start + A.size].reshape(A.shape)
                M[...] = A
                got = (sweep(M, X), transpose(M, Y))
                ref = ref or got
                assert all(np.array_equal(g, r) for g, r in zip(got, ref)), (dtype, rows, cols, b, offset)
            A64, X64 = A.astype(np.float64), X.astype(np.float64)
            scale = np.abs(A64).T @ (np.abs(A64) @ np.abs(X64))
            unit = 1e-13 if dtype == "float64" else 2e-5
            assert np.max(np.abs(ref[0] - A64.T @ (A64 @ X64)) / scale) <= unit
print("ok")
"""


@pytest.mark.parametrize("isa", [{}, {"SPECDYN_NO_AVX512": "1"}], ids=["best", "avx2"])
def test_sweep_bits_at_every_line_offset_on_each_kernel(isa):
    # The same property on the AVX2 kernels too (32-byte lines there), in a child process since
    # the kernels are chosen once per process: every offset of the matrix in a cache line gives
    # the bits of the aligned copy, and NumPy's products.
    proc = subprocess.run([sys.executable, "-c", _LINE_OFFSETS_CHILD], capture_output=True, text=True,
                          env={**os.environ, **isa}, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_sweep_kernel_choice_is_timed_then_kept():
    # Unforced, the first sweeps of a kind alternate the two kernels, and the faster one is kept;
    # the answers are the same bits throughout.
    code = """
import os
import numpy as np
from specdyn import _core
A = np.random.default_rng(0).standard_normal((1500, 2048))
X = np.asfortranarray(np.random.default_rng(1).standard_normal((2048, 2)))
Z = [_core.gram_sweep_f64(A, X) for _ in range(9)]
assert all(np.array_equal(z, Z[0]) for z in Z)
kinds = [k for k in _core.sweep_kernel_choices() if k["block"] == 2]
flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else ["avx2", "fma"]
if not ("avx2" in flags and "fma" in flags):  # no vectorized kernels: OpenBLAS, nothing to choose
    assert kinds == [], kinds
    print("ok")
    raise SystemExit
(k,) = kinds
assert k["dtype"] == "float64" and 2 ** k["size_log2"] <= A.nbytes < 2 ** (k["size_log2"] + 1), k
assert k["trials"] == (3, 3) and k["kernel"] == ("pipelined" if k["best_s"][1] < k["best_s"][0] else "panel by panel"), k
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "SPECDYN_PIPELINE"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def _solve_with_row_sums(A, k, weights=None, **opt):
    fn = specdyn._core.top_singular_f64 if A.dtype == np.float64 else specdyn._core.top_singular_f32
    return fn(A, k, _krylov_options(**opt), None, True, weights)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(["float64", "float32"]), n=st.integers(1, 700), m=st.integers(1, 400),
       weighted=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_row_sums_of_the_first_sweep_match_numpy(dtype, n, m, weighted, seed):
    # The first sweep of a solve also sums the squares of A and, given row weights w, forms A^T w
    # (a training step's weight norms and beta_f, without a read of their own). Against NumPy in
    # double, on every shape: the pooled sweep (n m >= 2^16), the serial one, and the small
    # problems a direct SVD solves, which make no sweep and say so (None).
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, m)).astype(dtype)
    w = rng.standard_normal(n) if weighted else None
    k = min(2, n, m)
    s, U, V, info = _solve_with_row_sums(A, k, w, tol=1e-4, max_passes=3)
    A64 = A.astype(np.float64)
    if info["dense"]:
        assert info["row_squares"] is None and info["row_weighted"] is None
        return
    np.testing.assert_allclose(info["row_squares"], np.sum(A64 * A64), rtol=1e-12)
    if w is None:
        assert info["row_weighted"] is None
    else:
        err = np.abs(info["row_weighted"] - A64.T @ w) / (np.abs(A64).T @ np.abs(w))
        assert np.max(err) <= 1e-13


def test_row_sums_need_a_row_major_matrix():
    # A Fortran-ordered A is swept along its columns: no row sums, said as None.
    A = np.asfortranarray(np.random.default_rng(0).standard_normal((400, 300)))
    info = _solve_with_row_sums(A, 2, np.ones(400), max_passes=2)[3]
    assert info["row_squares"] is None and info["row_weighted"] is None
    with pytest.raises(ValueError, match="row_weights"):
        _solve_with_row_sums(np.ones((400, 300)), 2, np.ones(399))
