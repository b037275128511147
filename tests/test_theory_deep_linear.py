"""The deep linear DMFT against independent references.

* depth 2 is the one-bulk model: ``deep_linear`` (general kernels and
  response functions) must reproduce ``one_bulk`` (singular modes of the
  one bulk), two unrelated solutions of the same limit, to rounding;
* level two's mode averages must reproduce level one's kernels;
* depth 3 and 4 against seed-averaged ``specdyn.simulate`` runs: loss,
  sharpness and the outliers of every bulk within finite-width error, the
  gap shrinking with N (slow).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import specdyn
from specdyn import _core
from specdyn.theory import deep_linear, one_bulk, quarter_circle_nodes


def _cfg(**kw):
    base = dict(width=1000, depth=3, input_dim=8, samples=16, gamma0=4.0, eta0=0.04, steps=40, track_every=4,
                top_k=2)
    base.update(kw)
    return specdyn.RunConfig(**base)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(D=st.integers(1, 6), P=st.integers(2, 12), gamma0=st.floats(0.5, 5.0), eta0=st.floats(0.01, 0.3),
       sig=st.lists(st.floats(0.6, 1.4), min_size=3, max_size=3), seed=st.integers(0, 2**16))
def test_depth_two_equals_the_one_bulk_mode_solver(D, P, gamma0, eta0, sig, seed):
    cfg = _cfg(depth=2, input_dim=D, samples=P, gamma0=gamma0, eta0=eta0, sigma=sig, steps=24, track_every=1,
               data_seed=seed)
    ref = one_bulk(cfg, nodes=96, history_tol=0.0)
    got = deep_linear(cfg, nodes=96, basis_tol=0.0)
    # compare while GD is stable (S < 2): past the edge of stability the dynamics amplify
    # rounding exponentially (1e-16 grows to 4e-8 in 24 steps in some drawn cases)
    live = np.cumprod(np.nan_to_num(ref.normalized_sharpness.values, nan=np.inf) < 2.0).astype(bool)
    scale = max(1.0, float(np.max(np.abs(ref.loss.values[live]))))
    np.testing.assert_allclose(got.loss.values[live], ref.loss.values[live], rtol=1e-9, atol=1e-12 * scale)
    np.testing.assert_allclose(got.normalized_sharpness.values[live], ref.normalized_sharpness.values[live],
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.beta_f.values[live], ref.beta_f.values[live], rtol=1e-8, atol=1e-10)
    a = got.singular_values.sel(layer="W1").values[live]
    b = ref.singular_values.sel(layer="W1").values[live]
    assert np.array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, rtol=1e-8)


def test_mode_averages_reproduce_the_level_one_kernels():
    X, Y = specdyn.data.teacher(samples=12, input_dim=6, seed=3)
    sol = _core.dmft_deep_linear_solve(X, Y[:, 0].copy(), [1.0, 0.9, 1.1, 1.0], 0.12, 3.0, 0.04, 30)
    Phi, G = sol.feature_kernel, sol.gradient_kernel
    for layer, sig in ((1, 0.9), (2, 1.1)):
        s, w = quarter_circle_nodes(128, sig)
        out = _core.dmft_deep_linear_outliers(sol, layer, s, w, [30], 2, 2 * sig * 1.001)
        diag = lambda K: np.trace(K, axis1=2, axis2=3).diagonal()
        np.testing.assert_allclose(out["phi_in"], diag(Phi[layer - 1]), rtol=1e-10)
        np.testing.assert_allclose(out["phi_out"], diag(Phi[layer]), rtol=1e-10)
        np.testing.assert_allclose(out["g_in"], G[layer - 1].diagonal(), rtol=1e-10)
        np.testing.assert_allclose(out["g_out"], G[layer].diagonal(), rtol=1e-10)


@pytest.fixture(scope="module")
def depth3_runs():
    X, y = specdyn.data.teacher(samples=16, input_dim=8, seed=1)
    cfg = _cfg(width=1000)
    theory = deep_linear(cfg, (X, y))
    sims = [specdyn.simulate(cfg.replace(seed=s), (X, y)) for s in range(4)]
    return theory, sims


def test_depth_three_matches_seed_averaged_simulations(depth3_runs):
    theory, sims = depth3_runs
    steps = sims[0].step.values
    th = theory.sel(step=steps)
    mean = lambda f: np.mean([f(d) for d in sims], axis=0)
    S = mean(lambda d: d.normalized_sharpness.values)
    # the sharpness grows twentyfold; at N = 1000 it is within 1% after the feature-learning phase
    assert th.normalized_sharpness.values[-1] > 20 * th.normalized_sharpness.values[0]
    np.testing.assert_allclose(S[3:], th.normalized_sharpness.values[3:], rtol=0.015)
    loss = mean(lambda d: d.loss.values)
    np.testing.assert_allclose(loss[:5], th.loss.values[:5], rtol=0.15)
    for layer in ("W1", "W2"):
        s1 = mean(lambda d: d.singular_values.sel(layer=layer, rank=0).values)
        s1_th = th.singular_values.sel(layer=layer, rank=0).values
        escaped = np.isfinite(s1_th)
        assert escaped[-1] and s1_th[-1] > 2.15                 # the outlier leaves the edge 2 clearly
        np.testing.assert_allclose(s1[escaped], s1_th[escaped], atol=0.02)
        # no second outlier in the limit, and the simulation's s2 sits at the bulk edge
        assert np.all(np.isnan(th.singular_values.sel(layer=layer, rank=1).values))
        s2 = mean(lambda d: d.singular_values.sel(layer=layer, rank=1).values)
        assert np.all(s2 < 2.0 + 0.01)


def test_unsupported_configurations_say_what_is_covered():
    with pytest.raises(ValueError, match="depth=1"):
        deep_linear(_cfg(depth=1))
    with pytest.raises(ValueError, match="activation='tanh'"):
        deep_linear(_cfg(activation="tanh"))
    with pytest.raises(ValueError, match="scaling='sp'"):
        deep_linear(_cfg(scaling="sp"))
    with pytest.raises(ValueError, match="steps=4000"):
        deep_linear(_cfg(steps=4000, input_dim=32))
    with pytest.raises(ValueError, match="nodes"):
        deep_linear(_cfg(), nodes=2)


def test_a_diverging_run_is_recorded_not_raised():
    cfg = _cfg(depth=3, eta0=3.0, steps=30, track_every=1)
    ds = deep_linear(cfg, nodes=32)
    assert ds.attrs["status"] == "diverged" and ds.attrs["diverged_step"] > 0
    after = ds.step.values >= ds.attrs["diverged_step"]
    assert np.all(np.isnan(ds.singular_values.values[after]))


@pytest.mark.slow
@pytest.mark.parametrize("depth", [3, 4])
def test_gap_to_simulation_shrinks_with_width(depth):
    X, y = specdyn.data.teacher(samples=16, input_dim=8, seed=1)
    cfg = _cfg(depth=depth)
    theory = deep_linear(cfg, (X, y))
    gaps, sgaps = [], []
    for N in (500, 2000):
        sims = [specdyn.simulate(cfg.replace(width=N, seed=s), (X, y)) for s in range(8)]
        th = theory.sel(step=sims[0].step.values)
        g = []
        for layer in theory.layer.values:
            s1 = np.mean([d.singular_values.sel(layer=layer, rank=0).values for d in sims], axis=0)
            s1_th = th.singular_values.sel(layer=layer, rank=0).values
            ok = np.isfinite(s1_th)
            g.append(np.max(np.abs(s1[ok] - s1_th[ok])))
        gaps.append(max(g))
        S = np.mean([d.normalized_sharpness.values for d in sims], axis=0)
        sgaps.append(np.max(np.abs(S[3:] / th.normalized_sharpness.values[3:] - 1)))
    assert gaps[1] < 0.015 and sgaps[1] < 0.01
    assert gaps[1] < 0.7 * gaps[0] and sgaps[1] < 0.7 * sgaps[0]
