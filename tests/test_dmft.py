"""One-bulk DMFT (docs/theory.md, One-bulk model): exactness, numerics, agreement with finite-width GD.

References used here are independent of the C++ solver: plain NumPy GD of the
network itself (bench/dmft_numpy.py, with the multipliers of
specdyn.parameterization), LAPACK SVDs of the trained hidden matrix, and a
NumPy transcription of the recursion.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
import dmft_numpy as dn  # noqa: E402

import specdyn  # noqa: E402
from specdyn import parameterization as PZ  # noqa: E402
from specdyn.theory import one_bulk, one_bulk_finite, quarter_circle_nodes  # noqa: E402
from specdyn.theory.one_bulk import limit_initial, solve_modes  # noqa: E402

dn.single_thread_blas()


def teacher(P, D, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, D))
    return X, X @ rng.standard_normal(D) / math.sqrt(D)


@pytest.fixture(scope="module")
def data():
    return teacher(16, 8)


def config(**kw):
    base = dict(width=1000, input_dim=8, samples=16, gamma0=4.0, eta0=0.2, steps=40, top_k=3)
    base.update(kw)
    return specdyn.RunConfig(**base)


# ---- the finite-width recursion is GD -------------------------------------------------

@pytest.mark.parametrize("scaling", ["mup", "ntk"])
def test_finite_modes_reproduce_gd(scaling, data):
    """On the SVD modes of one network the recursion equals that network's GD to rounding."""
    X, y = data
    N, T = 80, 25
    cfg = config(width=N, steps=T, scaling=scaling, gamma0=4.0 if scaling == "mup" else 1.5, top_k=4)
    W0, W1, w = dn.init_network(N, 8, seed=5)
    sc = PZ.scales(scaling, N, 2, 8, 1, cfg.gamma0, cfg.eta0, 1.0)
    sim = dn.simulate_gd(W0, W1, w, X, y, sc.multipliers, sc.learning_rate, T, track=range(T + 1), top_k=4)
    th = one_bulk_finite(cfg, (W0, W1, w), (X, y), steps=T, top_k=4)
    np.testing.assert_allclose(th.loss.values, sim["loss"], rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(th.beta_f.values, sim["beta_f"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(th.normalized_sharpness.values, sim["sharpness"], rtol=1e-9)
    edge = th.attrs["bulk_edge"]
    for n in range(1, T + 1):
        ref = sim["singular_values"][n]
        got = th.singular_values.sel(step=n, layer="W1").values
        out = ref > edge * (1 + 1e-9)
        np.testing.assert_allclose(got[out], ref[out], rtol=1e-9)
        assert np.all(np.isnan(got[~out]))
        # the increment's singular values are those of A(t) - A(0)
        np.testing.assert_allclose(th.delta_singular_values.sel(step=n, layer="W1").values,
                                   sim["delta_singular_values"][n], rtol=1e-7, atol=1e-10)
    if scaling == "mup":
        assert np.isfinite(th.singular_values.values[-1, 0, 0])  # an outlier escaped: the test has teeth
        # residues: overlaps of the outlier singular vectors of A(T) with the top
        # singular vectors of the increment A(T) - A(0)
        m1 = sc.multipliers[1]
        UA, sA, VAt = np.linalg.svd(m1 * sim["weights"][1])
        Ud, _, Vdt = np.linalg.svd(m1 * (sim["weights"][1] - W1))
        k = int(np.sum(np.isfinite(th.singular_values.values[-1, 0])))
        np.testing.assert_allclose(th.overlap_spike_left.values[-1, 0, :k], (UA[:, :k].T @ Ud[:, 0]) ** 2,
                                   rtol=1e-6)
        np.testing.assert_allclose(th.overlap_spike_right.values[-1, 0, :k], (VAt[:k] @ Vdt[0]) ** 2,
                                   rtol=1e-6)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(N=st.integers(6, 30), D=st.integers(1, 5), P=st.integers(1, 7), gamma0=st.floats(0.3, 5.0),
       eta0=st.floats(0.01, 0.15), sig=st.floats(0.5, 1.5), seed=st.integers(0, 10**6))
def test_mode_recursion_is_gd_property(N, D, P, gamma0, eta0, sig, seed):
    X, y = teacher(P, D, seed)
    T = 12
    W0, W1, w = dn.init_network(N, D, seed, sigma=[sig, 1.0, 1.2])
    sc = PZ.scales("mup", N, 2, D, 1, gamma0, eta0, [sig, 1.0, 1.2])
    try:
        with np.errstate(all="ignore"):
            sim = dn.simulate_gd(W0, W1, w, X, y, sc.multipliers, sc.learning_rate, T)
    except np.linalg.LinAlgError:
        assume(False)
    assume(np.all(np.isfinite(sim["loss"])) and np.max(sim["loss"]) < 1e3)   # GD itself stable
    s, p, a0, B0, _, _ = dn.finite_modes(W0, sc.layers[1].normalizer * W1, w)
    sol = solve_modes(s, p, a0, B0, X, y, eta0 * gamma0, gamma0, eta0, T, history_tol=0.0)
    scale = max(1.0, float(np.max(sim["loss"])))
    assert np.max(np.abs(sol.loss - sim["loss"])) < 1e-10 * scale
    np.testing.assert_allclose(sol.sharpness, sim["sharpness"], rtol=1e-8, atol=1e-12)


# ---- native solver against the NumPy oracle -------------------------------------------

@pytest.mark.parametrize("tol", [0.0, 1e-13])
def test_native_matches_numpy_oracle(tol):
    X, y = teacher(7, 5, seed=3)
    M, T, c, g, eta0 = 40, 50, 0.125, 2.5, 0.05
    s, p = quarter_circle_nodes(M)
    a0, B0 = limit_initial(s, 5, 0.9, 1.1)
    ref = dn.mode_recursion(s, p, a0, B0, X, y, c, g, eta0, T)
    sol = solve_modes(s, p, a0, B0, X, y, c, g, eta0, T, history_tol=tol)
    for name in ("loss", "beta_f", "Cw", "Cq", "sharpness"):
        got, want = getattr(sol, name), ref[name]
        assert np.max(np.abs(got - want)) <= 1e-12 * max(1.0, np.max(np.abs(want))), name
    from specdyn import _core
    steps = [10, 30, 50]
    res = _core.dmft_outliers(sol, steps, 3, c, 2.002)
    for i, n in enumerate(steps):
        want = dn.outliers(ref, n, s, p, c, 2.002, top_k=3)
        # the oracle compresses through the Gram eigendecomposition (accurate to ~sqrt(eps)
        # in direction space), the core through an orthonormal row basis: agree to ~1e-10
        np.testing.assert_allclose(res["values"][i], want, rtol=1e-8, equal_nan=True)
    assert np.isfinite(res["values"][-1, 0])


def test_native_matches_oracle_when_history_rank_is_full():
    """Exact histories (tol 0) of one finite network whose ranks pass 64 (qhat's reaches N):
    the solver's coefficient products (grown past their first allocation) still give the
    oracle's order parameters, including <qhat(j) m(n)>."""
    N, D, T = 70, 16, 150
    X, y = teacher(12, D, seed=4)
    W0, W1, w = dn.init_network(N, D, 5)
    sc = PZ.scales("mup", N, 2, D, 1, 2.0, 0.05, 1.0)
    s, p, a0, B0, _, _ = dn.finite_modes(W0, sc.layers[1].normalizer * W1, w)
    ref = dn.mode_recursion(s, p, a0, B0, X, y, 0.1, 2.0, 0.05, T)
    sol = solve_modes(s, p, a0, B0, X, y, 0.1, 2.0, 0.05, T, history_tol=0.0)
    assert min(sol.rank_a, sol.rank_q) > 64
    for name in ("loss", "beta_f", "Cw", "Cq", "Cqm", "sharpness"):
        got, want = getattr(sol, name), ref[name]
        if name == "Cqm":
            want = np.triu(want)   # [j, n] for j <= n
        assert np.max(np.abs(got - want)) <= 1e-12 * max(1.0, np.max(np.abs(want))), name


# ---- numerics ----------------------------------------------------------------------

@pytest.mark.parametrize("gamma0,eta0", [(4.0, 0.2), (3.0, 0.4), (6.0, 0.1)])
def test_quadrature_converges(data, gamma0, eta0):
    cfg = config(gamma0=gamma0, eta0=eta0, steps=60)
    a = one_bulk(cfg, data, nodes=64, steps=list(range(0, 61, 5)))
    b = one_bulk(cfg, data, nodes=128, steps=list(range(0, 61, 5)))
    assert float(np.max(np.abs(a.loss - b.loss))) < 1e-5
    np.testing.assert_array_equal(np.isnan(a.singular_values), np.isnan(b.singular_values))
    assert float(np.nanmax(np.abs(a.singular_values - b.singular_values))) < 1e-5
    assert np.isfinite(b.singular_values.values[-1, 0, 0])


def test_small_steps_approach_gradient_flow(data):
    """At fixed time t = n eta0 the discrete recursion converges at first order in eta0."""
    t_end = 4.0
    vals = []
    for eta0 in (0.04, 0.02, 0.01):
        n = int(round(t_end / eta0))
        ds = one_bulk(config(eta0=eta0, steps=n), data, nodes=48, steps=[n // 2, n], top_k=1)
        vals.append(np.array([*ds.loss.values, *ds.normalized_sharpness.values / eta0,
                              *ds.singular_values.values[:, 0, 0]]))
    d1, d2 = vals[0] - vals[1], vals[1] - vals[2]
    ratio = np.abs(d1) / np.abs(d2)
    assert np.all(np.isfinite(vals[2]))
    assert np.all((ratio > 1.7) & (ratio < 2.3)), ratio        # error ~ C eta0
    assert np.max(np.abs(d2) / np.abs(vals[2])) < 0.05


def test_ntk_is_mup_at_effective_richness(data):
    N = 4096
    ntk = one_bulk(config(scaling="ntk", width=N, steps=30), data, steps=30)
    g = PZ.effective_richness("ntk", N, 4.0)
    assert ntk.attrs["richness"] == pytest.approx(g)
    mup = one_bulk(config(scaling="mup", gamma0=g, steps=30), data, steps=30)
    np.testing.assert_allclose(ntk.loss.values, mup.loss.values, rtol=1e-12)
    # lazy: no outlier escapes at this width, the muP limit has one
    assert np.all(np.isnan(ntk.singular_values.values))
    assert np.isfinite(one_bulk(config(steps=30), data, steps=30).singular_values.values[-1, 0, 0])


# ---- agreement with finite-width simulations (fast subset) ---------------------------

def test_agreement_with_simulation_small(data):
    X, y = data
    cfg = config(steps=30, top_k=2)
    steps = [0, 5, 10, 20, 30]
    th = one_bulk(cfg, data, steps=steps)
    sim = dn.simulation_dataset(cfg.replace(width=400), X, y, seeds=(0, 1, 2), steps=steps, top_k=2)
    cmp = specdyn.compare(sim, th)
    summ = cmp.attrs["summary"]
    assert summ["singular_values"]["max_abs_gap"] < 0.05
    assert summ["singular_values"]["points"] == 4
    assert float(cmp.loss_rel_gap.sel(step=[5, 10]).max()) < 0.12
    assert summ["normalized_sharpness"]["max_rel_gap"] < 0.08
    # a wrong theory is caught: the same comparison against gamma0 = 3 fails
    wrong = specdyn.compare(sim, one_bulk(cfg.replace(gamma0=3.0), data, steps=steps)).attrs["summary"]
    assert wrong["singular_values"]["max_abs_gap"] > 0.06


def test_naive_bgn_misses_the_outlier(data):
    """The increment alone is below the BBP threshold, yet an outlier escapes (claim 4)."""
    X, y = data
    cfg = config(steps=30, top_k=2)
    th = one_bulk(cfg, data, steps=[30])
    assert float(th.delta_singular_values.values[0, 0, 0]) < 1.0            # below threshold sigma = 1
    assert np.all(np.isnan(th.naive_singular_values.values))
    s1 = float(th.singular_values.values[0, 0, 0])
    assert s1 > 2.1
    sim = dn.simulation_dataset(cfg.replace(width=500), X, y, seeds=(7,), steps=[30], top_k=2)
    s1_sim = float(sim.singular_values.values[0, 0, 0, 0])
    assert s1_sim > 2.08 and abs(s1_sim - s1) < 0.06


def test_sharpness_rises_toward_edge_of_stability(data):
    X, y = data
    cfg = config(eta0=0.3, steps=30, top_k=1)
    steps = [0, 2, 4, 6, 10, 20, 30]
    th = one_bulk(cfg, data, steps=steps)
    S = th.normalized_sharpness.values
    assert S[0] < 0.35 and S[-1] > 1.8 and S[-1] < 2.0
    sim = dn.simulation_dataset(cfg.replace(width=300), X, y, seeds=(0, 1), steps=steps, top_k=1)
    gap = specdyn.compare(sim, th).normalized_sharpness_gap.values
    assert np.max(np.abs(gap)) < 0.08


# ---- bad input ------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    (dict(nodes=4), "nodes"),
    (dict(steps=-1), "steps"),
    (dict(steps=[3, -2]), "steps"),
    (dict(top_k=0), "top_k"),
    (dict(outlier_steps=[7]), "outlier_steps"),
])
def test_bad_arguments(data, kw, match):
    with pytest.raises(ValueError, match=match):
        one_bulk(config(steps=5), data, **{"steps": 5, **kw})


@pytest.mark.parametrize("change", [dict(depth=3), dict(activation="tanh"),
                                    dict(scaling="sp"), dict(batch_size=4), dict(online=True)])
def test_configs_outside_the_model(data, change):
    with pytest.raises(ValueError, match="one-bulk theory covers"):
        one_bulk(config(steps=5).replace(**change), data)


def test_bad_data(data):
    X, y = data
    cfg = config(steps=5)
    for bad in [(X[:, :5], y), (X, y[:10]), (X[:10], y[:10]), (X, np.ones((16, 2))), X]:
        with pytest.raises(ValueError, match="data"):
            one_bulk(cfg, bad)
    Xn = X.copy()
    Xn[3, 2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        one_bulk(cfg, (Xn, y))
    yi = y.copy()
    yi[0] = np.inf
    with pytest.raises(ValueError, match="finite"):
        one_bulk(cfg, (X, yi))
    with pytest.raises(ValueError, match="RunConfig"):
        one_bulk({"width": 10}, data)


def test_schema_and_divergence(data):
    th = one_bulk(config(steps=20, track_every=5), data)
    assert list(th.step.values) == [0, 5, 10, 15, 20]
    assert th.attrs["kind"] == "theory" and th.attrs["status"] == "ok" and th.attrs["diverged_step"] == -1
    assert th.singular_values.dims == ("step", "layer", "rank") and list(th.layer.values) == ["W1"]
    assert th.beta_f.dims == ("step", "input")
    assert float(th.loss[0]) == pytest.approx(np.mean(data[1] ** 2) / 2)   # muP: f(0) = 0
    bad = one_bulk(config(gamma0=6.0, eta0=0.6, steps=60), data, steps=60)
    assert bad.attrs["status"] == "diverged" and bad.attrs["diverged_step"] > 0
    assert np.all(np.isnan(bad.singular_values.sel(step=slice(bad.attrs["diverged_step"], None)).values))


def test_per_layer_sigma_matches_simulation(data):
    """sigma = [W0, bulk, readout]: the bulk edge 2 sigma_1 and the initial rows follow each layer."""
    X, y = data
    cfg = config(sigma=[0.8, 1.2, 0.9], steps=20, top_k=1)
    steps = [0, 2, 5, 10, 20]
    th = one_bulk(cfg, data, steps=steps)
    assert th.attrs["bulk_edge"] == pytest.approx(2 * 1.2 * (1 + 1e-3))
    sim = dn.simulation_dataset(cfg.replace(width=400), X, y, seeds=(0, 1), steps=steps, top_k=1)
    cmp = specdyn.compare(sim, th)
    assert float(cmp.loss_rel_gap.sel(step=[2, 5, 10]).max()) < 0.1
    assert cmp.attrs["summary"]["normalized_sharpness"]["max_rel_gap"] < 0.08
    assert cmp.attrs["summary"]["singular_values"]["max_abs_gap"] < 0.06
    # the same data with sigma = 1 everywhere is visibly different
    other = one_bulk(cfg.replace(sigma=1.0), data, steps=steps)
    wrong = specdyn.compare(sim, other).attrs["summary"]
    assert wrong["loss"]["max_rel_gap"] > 0.2 or wrong["singular_values"]["max_abs_gap"] > 0.15
