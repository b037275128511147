"""The Krylov solvers at extreme scales and thread counts, against LAPACK.

A matrix whose Gram entries underflow (a 1e-200 matrix) or overflow (a 1e160
one) must give the singular values LAPACK gives, with a computed certificate;
a power-of-two scale must change nothing but the exponent. Dense symmetric
operators and spectral densities give the same bits at 1 and 2 threads.
"""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import specdyn


def _matrix(seed, n, m):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, m))
    A[:, :2] *= 3.0  # two outliers over a bulk
    return A


@settings(max_examples=25, deadline=None)
@given(exponent=st.integers(-300, 300), seed=st.integers(0, 2**16), order=st.sampled_from("CF"),
       shape=st.sampled_from([(300, 200), (200, 300), (260, 260)]))
def test_top_singular_float64_at_any_scale_matches_lapack(exponent, seed, order, shape):
    A = np.asarray(_matrix(seed, *shape) * 10.0**exponent, order=order)
    ref = np.linalg.svd(A, compute_uv=False)[:3]
    s, U, V, info = specdyn.top_singular(A, 3, tol=1e-10)
    np.testing.assert_allclose(s, ref, rtol=1e-9)
    assert info["converged"]
    res = np.asarray(info["residuals"])
    assert np.all(np.isfinite(res)) and np.all(res <= 1e-10 * ref[0] * 1.01)
    # the certificate is computed: it matches an explicit residual in units of s1
    B, t = A / ref[0], s / ref[0]
    r = np.maximum(np.linalg.norm(B @ V - U * t, axis=0), np.linalg.norm(B.T @ U - V * t, axis=0))
    np.testing.assert_allclose(r, res / ref[0], rtol=0.5, atol=1e-13)


def test_subnormal_matrix_is_accurate_or_flagged():
    """Below ~1e-301 the entries are subnormal and products lose digits: the answer is
    either LAPACK's or marked as not certified, never a wrong value called converged."""
    A = _matrix(0, 300, 200) * 1e-308
    ref = np.linalg.svd(A, compute_uv=False)[:3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", specdyn.lanczos.ConvergenceWarning)
        s, _, _, info = specdyn.top_singular(A, 3, tol=1e-10)
    assert (not info["converged"]) or np.allclose(s, ref, rtol=1e-9)
    np.testing.assert_allclose(s, ref, rtol=1e-6)


@settings(max_examples=20, deadline=None)
@given(exponent=st.integers(-36, 36), seed=st.integers(0, 2**16), order=st.sampled_from("CF"))
def test_top_singular_float32_at_any_scale_matches_lapack(exponent, seed, order):
    A64 = _matrix(seed, 300, 200) * 10.0**exponent
    A = np.asarray(A64.astype(np.float32), order=order)
    ref = np.linalg.svd(A.astype(np.float64), compute_uv=False)[:3]
    s, _, _, info = specdyn.top_singular(A, 3, tol=1e-5)
    np.testing.assert_allclose(s, ref, rtol=1e-4)
    assert info["converged"] and np.all(np.isfinite(info["residuals"]))


@pytest.mark.parametrize("exponent", [-700, -400, 400, 700])
def test_power_of_two_scale_changes_only_the_exponent(exponent):
    """Inside or outside the safe range, s(2^e A) = 2^e s(A) to the last bit, vectors unchanged."""
    A = _matrix(1, 500, 300)
    s0, U0, V0, _ = specdyn.top_singular(A, 4, tol=1e-10)
    s, U, V, info = specdyn.top_singular(A * 2.0**exponent, 4, tol=1e-10)
    np.testing.assert_array_equal(s * 2.0**-exponent, s0)
    np.testing.assert_array_equal(U, U0)
    np.testing.assert_array_equal(V, V0)
    assert info["converged"]


@pytest.mark.parametrize("exponent", [-250, 250])
def test_warm_start_of_a_column_major_matrix_at_extreme_scale(exponent):
    A = _matrix(2, 300, 500)
    ref = np.linalg.svd(A, compute_uv=False)[:4]
    _, U, _, _ = specdyn.top_singular(A.T, 4, tol=1e-10)
    B = np.asfortranarray(A * 10.0**exponent)  # column-major: the warm block is A v0
    s, _, _, info = specdyn.top_singular(B, 4, tol=1e-10, v0=U)
    np.testing.assert_allclose(s * 10.0**-exponent, ref, rtol=1e-9)
    assert info["converged"]


@pytest.mark.parametrize("exponent", [-280, -150, 0, 150, 280])
@pytest.mark.parametrize("which", ["largest", "both"])
def test_top_eigs_at_extreme_scale_matches_eigvalsh(exponent, which):
    rng = np.random.default_rng(3)
    G = rng.standard_normal((300, 300))
    S = (G + G.T) * 10.0**exponent
    w = np.linalg.eigvalsh(S)
    ref = w[::-1][:2] if which == "largest" else np.concatenate([w[::-1][:2], w[:2]])
    for op, n in ((S, None), (lambda X: S @ X, 300)):
        vals, _, info = specdyn.top_eigs(op, n=n, k=2, which=which, tol=1e-10)
        np.testing.assert_allclose(vals, ref, rtol=1e-9)
        assert info["converged"]
        assert np.all(np.isfinite(info["residuals"])) and max(info["residuals"]) <= 1e-10 * abs(w).max() * 1.01


def test_top_eigs_operator_that_overflows_is_an_error():
    def op(X):
        Y = np.full_like(X, np.inf)
        return Y

    with pytest.raises(ValueError, match="non-finite"):
        specdyn.top_eigs(op, n=200, k=1)


_THREADS = r"""
import sys
import numpy as np
import specdyn.lanczos as L

rng = np.random.default_rng(0)
n = 1500
G = rng.standard_normal((n, n)) / np.sqrt(n)
S = (G + G.T) / 2
out = {}
out["vals"], out["vecs"] = L.top_eigs(S, k=3, tol=1e-10, seed=1)[:2]
out["both"] = L.top_eigs(S, k=2, which="both", tol=1e-10, seed=1)[0]
out["small"] = L.top_eigs(S[:50, :50], k=3)[1]
out["slq"], out["slq_err"] = L.spectral_density(S, np.linspace(-2, 2, 21), probes=4, degree=30, seed=2)
np.savez(sys.argv[1], **out)
"""


def test_dense_symmetric_solvers_give_the_same_bits_at_any_thread_count(tmp_path):
    from test_lanczos import assert_same_bits_at_1_and_2_threads

    assert_same_bits_at_1_and_2_threads(_THREADS, tmp_path)
