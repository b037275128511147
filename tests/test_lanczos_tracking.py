"""The tracking certificate (``certify="resolvable"``) and the growing Krylov basis,
against LAPACK on every spectrum class: outliers far above a bulk, outliers
crowding down to its edge, a bulk alone, exactly repeated values and
rank-deficient matrices. What is checked is what the certificate claims: every
value lies within its residual of a LAPACK singular value; a value certified as
clustered has a neighbour closer than 1% of ||A|| and a residual of at most a
tenth of that spacing; every other value meets tol. And training keeps an
explicit ``svd_tol`` for every value.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import specdyn
from specdyn.config import RunConfig


def spectrum(n, m, kind, seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, m)) / np.sqrt(max(n, m))
    if kind in ("spikes", "crowded"):
        top = (6.0, 2.5) if kind == "spikes" else (3.0, 1.6)
        U, _ = np.linalg.qr(rng.standard_normal((n, 6)))
        V, _ = np.linalg.qr(rng.standard_normal((m, 6)))
        A += (U * np.linspace(*top, 6)) @ V.T
    elif kind == "repeated":  # a bulk plus a value repeated three times
        U, _ = np.linalg.qr(rng.standard_normal((n, 3)))
        V, _ = np.linalg.qr(rng.standard_normal((m, 3)))
        A += 4.0 * U @ V.T
    elif kind == "low_rank":  # rank 5: the rest of the spectrum is exactly 0
        A = rng.standard_normal((n, 5)) @ rng.standard_normal((5, m)) / np.sqrt(m)
    return A


def check_certificate(A, s, info, tol):
    ref = np.linalg.svd(A, compute_uv=False)
    norm = ref[0]
    res = np.asarray(info["residuals"])
    spacing = np.asarray(info["spacing"])
    assert info["converged"]
    # every value is within its residual (plus rounding) of some LAPACK singular value
    dist = np.min(np.abs(s[:, None] - ref[None, :]), axis=1)
    assert np.all(dist <= res + 1e-12 * norm), (dist, res)
    for i in range(s.size):
        if spacing[i] == 0:
            assert res[i] <= tol * info["norm_estimate"] * 1.0001
        else:
            assert spacing[i] <= 1e-2 * info["norm_estimate"] * 1.0001
            assert res[i] <= 0.1 * spacing[i] * 1.0001
            # the spacing claimed is the true one (LAPACK), up to what its neighbours' residuals allow
            true_gap = min(ref[i - 1] - ref[i] if i > 0 else np.inf, ref[i] - ref[i + 1])
            assert spacing[i] <= 1.25 * true_gap + 1e-12 * norm, (i, spacing[i], true_gap)
    return ref


@pytest.mark.parametrize("kind", ["spikes", "crowded", "bulk", "repeated", "low_rank"])
def test_resolvable_certificate_holds_against_lapack(kind):
    A = spectrum(700, 500, kind, seed=3)
    tol = 1e-10
    s, U, V, info = specdyn.top_singular(A, 6, tol=tol, certify="resolvable")
    ref = check_certificate(A, s, info, tol)
    _, _, _, exact = specdyn.top_singular(A, 6, tol=tol)
    # never more work than certifying every value to tol
    assert info["matrix_passes"] <= exact["matrix_passes"]
    if kind in ("spikes", "crowded", "repeated", "low_rank"):
        # outliers (and exact zeros' neighbours far apart) are certified to tol, as before
        np.testing.assert_allclose(s[:3], ref[:3], rtol=1e-9)


def test_bulk_edge_is_resolved_not_overresolved():
    # a bulk alone: the top values are a fraction of a percent of ||A|| apart, and
    # the certificate stops once they are told apart, in fewer passes than tol needs
    A = spectrum(1500, 1500, "bulk", seed=11)
    s, _, _, info = specdyn.top_singular(A, 4, tol=1e-10, certify="resolvable")
    ref = check_certificate(A, s, info, 1e-10)
    _, _, _, exact = specdyn.top_singular(A, 4, tol=1e-10)
    assert np.any(np.asarray(info["spacing"]) > 0)
    assert info["matrix_passes"] < exact["matrix_passes"]
    # told apart: each value is closer to its own LAPACK value than to a neighbour's
    np.testing.assert_array_equal(np.argmin(np.abs(s[:, None] - ref[None, :8]), axis=1), np.arange(4))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(120, 400), m=st.integers(120, 400), k=st.integers(1, 8),
       kind=st.sampled_from(["spikes", "crowded", "bulk", "repeated", "low_rank"]), seed=st.integers(0, 2**16),
       order=st.sampled_from("CF"), tol=st.sampled_from([1e-6, 1e-8, 1e-10]))
def test_resolvable_certificate_property(n, m, k, kind, seed, order, tol):
    A = np.asarray(spectrum(n, m, kind, seed), order=order)
    s, _, _, info = specdyn.top_singular(A, k, tol=tol, certify="resolvable")
    check_certificate(A, s, info, tol)


@settings(max_examples=10, deadline=None)
@given(kind=st.sampled_from(["spikes", "crowded", "bulk"]), seed=st.integers(0, 2**16), k=st.sampled_from([1, 5, 12]))
def test_growing_basis_matches_lapack(kind, seed, k):
    # a small starting basis that must grow (or restart) on the clustered spectra
    A = spectrum(600, 600, kind, seed)
    s, _, _, info = specdyn.top_singular(A, k, tol=1e-10)
    ref = np.linalg.svd(A, compute_uv=False)[:k]
    assert info["converged"]
    np.testing.assert_allclose(s, ref, rtol=1e-8, atol=1e-9 * ref[0])


@pytest.mark.parametrize("kind", ["spikes", "bulk"])
def test_device_engine_gives_the_same_certificate(kind):
    # the device backend (its host emulation here) runs the same engine: the same claims hold
    A = spectrum(600, 400, kind, seed=5)
    s, _, _, info = specdyn.top_singular(A, 5, tol=1e-10, certify="resolvable", device="host-emulation")
    assert info["device"] == "host-emulation"
    check_certificate(A, s, info, 1e-10)


def test_certify_word_is_checked():
    with pytest.raises(ValueError, match="certify"):
        specdyn.top_singular(np.eye(40), 2, certify="some")


@pytest.mark.parametrize("svd_tol,rtol", [(None, 1e-3), (1e-10, 1e-9)])
def test_training_keeps_an_explicit_tolerance_for_every_value(svd_tol, rtol):
    # at initialization the hidden matrix is a bulk: the default (tracking) certificate
    # resolves its top values; an explicit svd_tol certifies every value to it
    cfg = RunConfig(width=300, depth=2, input_dim=8, samples=16, activation="linear", scaling="mup", steps=1,
                    track_every=1, top_k=4, svd_tol=svd_tol, track_sharpness=False)
    ds = specdyn.simulate(cfg)
    from test_training import numpy_run

    X, Y = specdyn.data.teacher(cfg.samples, cfg.input_dim, cfg.output_dim, seed=cfg.data_seed)
    _, history, sc = numpy_run(cfg, X, Y, 0)
    ref = np.linalg.svd(sc.layers[1].normalizer * history[0][1], compute_uv=False)[:4]
    got = ds.singular_values.sel(layer=cfg.layer_names[1]).values[0, :4]
    np.testing.assert_allclose(got, ref, rtol=rtol)


_THREADS = r"""
import sys, numpy as np, specdyn
rng = np.random.default_rng(4)
out = {}
# a bulk that must grow its basis (2500 x 2500: basis products split over several row chunks),
# under both certificates
A = rng.standard_normal((2500, 2500)) / 50.0
for cert in ("all", "resolvable"):
    s, U, V, info = specdyn.top_singular(A, 6, tol=1e-10, certify=cert)
    out[cert + "_s"], out[cert + "_V"], out[cert + "_r"] = s, V, info["residuals"]
np.savez(sys.argv[1], **out)
"""


def test_growing_basis_and_tracking_give_the_same_bits_at_1_and_2_threads(tmp_path):
    from test_lanczos import assert_same_bits_at_1_and_2_threads

    assert_same_bits_at_1_and_2_threads(_THREADS, tmp_path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resolvable_certificate_after_a_warm_start(seed):
    # The tracking situation: the previous step's vectors start the solve on a nearby matrix
    # (an outlier just above a bulk). A warm solve stops early, while the Ritz value below the
    # wanted ones is still unconverged (it lies below the true value, and the last wanted value's
    # spacing would look wider than it is): the spacing claimed must be the true one.
    rng = np.random.default_rng(seed)
    n, m = 900, 700
    A0 = rng.standard_normal((n, m)) / np.sqrt(n)
    u, v = rng.standard_normal(n), rng.standard_normal(m)
    A0 += 1.3 * np.outer(u / np.linalg.norm(u), v / np.linalg.norm(v))
    _, _, V0, _ = specdyn.top_singular(A0, 4, tol=1e-8)
    A1 = A0 + 1e-2 * rng.standard_normal((n, m)) / np.sqrt(n)
    s, U, V, info = specdyn.top_singular(A1, 4, tol=1e-8, v0=V0, certify="resolvable")
    check_certificate(A1, s, info, 1e-8)
