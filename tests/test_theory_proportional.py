"""specdyn.theory.proportional against independent references.

References: closed forms at t = 0 and t = 1 (the rectangular BGN law of
specdyn.rmt for a rank-one spike independent of the bulk), an explicit-Jacobian
Gauss-Newton Hessian, and seed-averaged finite-size population GD in plain
NumPy (tests/proportional_oracle.py) at growing D with N = nu D.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from specdyn import rmt
from specdyn.config import RunConfig
from specdyn.parameterization import proportional_scales
from specdyn.theory.proportional import proportional

from proportional_oracle import gauss_newton_top, simulate_population


def _outlier(ds, step, rank=0):
    return float(ds.singular_values.sel(layer="W0", step=step, rank=rank))


# ---- closed forms ------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(nu=st.floats(0.2, 4.0), gamma0=st.floats(0.3, 5.0), s_in=st.floats(0.5, 2.0), s_out=st.floats(0.0, 1.5),
       noise=st.floats(0.0, 0.5))
def test_initial_state_closed_form(nu, gamma0, s_in, s_out, noise):
    ds = proportional(nu=nu, gamma0=gamma0, eta0=0.01, sigma=[s_in, s_out], noise=noise, steps=1, top_k=2,
                      nodes=32)
    # beta_f(0) = A^T w / (gamma0 sqrt(nu)) has per-component variance s_in^2 s_out^2 / gamma0^2
    loss0 = 0.5 * (1.0 + (s_in * s_out / gamma0) ** 2) + 0.5 * noise**2
    assert float(ds.loss[0]) == pytest.approx(loss0, rel=1e-10)
    edge = s_in * (1 + np.sqrt(nu))
    assert ds.attrs["bulk_edge"] == pytest.approx(edge)
    assert float(ds.top_singular_value[0]) == pytest.approx(edge)
    assert float(ds.singular_values.sel(layer="W1", step=0, rank=0)) == pytest.approx(s_out, rel=1e-10)
    assert np.all(np.isnan(ds.singular_values.sel(layer="W0", step=0)))
    assert float(ds.normalized_sharpness[0]) == pytest.approx(0.01 * (edge**2 + nu * s_out**2), rel=1e-10)


@settings(max_examples=25, deadline=None)
@given(nu=st.floats(0.25, 4.0), c=st.floats(0.5, 6.0), s_in=st.floats(0.5, 2.0), s_out=st.floats(0.3, 1.5))
def test_first_step_outlier_matches_rectangular_bgn(nu, c, s_in, s_out):
    # With gamma0 -> infinity the first error is the teacher itself, independent of the
    # bulk, so A(1) = A(0) + theta u v^T with u, v independent of A(0): the rectangular
    # BGN law applies. This exercises the 1/z terms of the |N - D| unpaired zero modes.
    gamma0 = 1e4
    ds = proportional(nu=nu, gamma0=gamma0, eta0=c / gamma0, sigma=[s_in, s_out], steps=1, top_k=2)
    theta = c * nu * s_out * np.sqrt(2 * float(ds.loss[0]))
    assert float(ds.delta_singular_values.sel(layer="W0", step=1, rank=0)) == pytest.approx(theta, rel=1e-9)
    assert np.isnan(float(ds.delta_singular_values.sel(layer="W0", step=1, rank=1)))
    ref = rmt.bgn_outliers([theta], ratio=nu, sigma=s_in)
    thr = rmt.bgn_threshold(nu, s_in)
    if abs(theta - thr) < 0.03 * thr:
        return  # too close to the transition for a clean yes/no
    got = _outlier(ds, 1)
    if ref["is_outlier"][0]:
        assert got == pytest.approx(ref["singular_values"][0], abs=2e-3)
        # the residue at the root gives the BGN overlaps of an independent spike
        sel = dict(layer="W0", step=1, rank=0)
        assert float(ds.overlap_spike_left.sel(**sel)) == pytest.approx(ref["overlap_left"][0], abs=5e-3)
        assert float(ds.overlap_spike_right.sel(**sel)) == pytest.approx(ref["overlap_right"][0], abs=5e-3)
    else:
        assert np.isnan(got)
    assert np.isnan(_outlier(ds, 1, rank=1))


@pytest.mark.parametrize("nu", [0.5, 1.0, 1.03, 2.0])
def test_quadrature_converges(nu):
    # Gauss rule of the Marchenko-Pastur law: the loss is a polynomial moment (exact once
    # nodes > steps + 1), the outliers converge geometrically, also at nu ~ 1
    kw = dict(nu=nu, gamma0=5.0, eta0=0.04, steps=20, track_every=5, top_k=2)
    coarse, fine = proportional(nodes=64, **kw), proportional(nodes=1000, **kw)
    np.testing.assert_allclose(coarse.loss, fine.loss, rtol=1e-10)
    np.testing.assert_allclose(coarse.singular_values.sel(layer="W0"), fine.singular_values.sel(layer="W0"),
                               rtol=1e-6)


def test_sharpness_formula_against_explicit_jacobian():
    # eta lambda_max(GN) = eta0 (s_max(W0/sqrt D)^2 + |w|^2 / D), checked at a small size
    rng = np.random.default_rng(3)
    N, D, gamma0, eta0 = 14, 9, 1.7, 0.05
    sc = proportional_scales(N, D, gamma0, eta0)
    W0, w = rng.normal(size=(N, D)), rng.normal(size=N)
    explicit = sc.learning_rate * gauss_newton_top(W0, w, sc.layers[0].multiplier, sc.layers[1].multiplier)
    smax = np.linalg.svd(W0 / np.sqrt(D), compute_uv=False)[0]
    assert explicit == pytest.approx(eta0 * (smax**2 + w @ w / D), rel=1e-10)


# ---- the API -----------------------------------------------------------------------

def test_config_maps_to_model_arguments():
    cfg = RunConfig(width=300, input_dim=150, depth=1, scaling="ntk", gamma0=5.0, eta0=0.04 * 300,
                    online=True, steps=12, track_every=4, top_k=2, sigma=[1.0, 0.8])
    a = proportional(cfg)
    b = proportional(nu=2.0, gamma0=5.0, eta0=0.04, sigma=[1.0, 0.8], steps=12, track_every=4, top_k=2)
    np.testing.assert_allclose(a.loss, b.loss)
    np.testing.assert_allclose(a.singular_values, b.singular_values)
    assert a.attrs["kind"] == "theory" and a.attrs["scaling"] == "ntk" and a.attrs["width"] == 300
    assert list(a.step.values) == cfg.tracked_steps()


@pytest.mark.parametrize("change, word", [
    (dict(depth=2), "depth"), (dict(activation="tanh"), "activation"), (dict(scaling="mup"), "scaling"),
    (dict(online=False), "online"), (dict(output_dim=2), "output_dim"),
])
def test_config_without_a_derived_limit_raises(change, word):
    base = dict(width=64, input_dim=32, depth=1, scaling="ntk", online=True, steps=3)
    base.update(change)
    with pytest.raises(ValueError, match=word):
        proportional(RunConfig(**base))


@pytest.mark.parametrize("kw, word", [
    (dict(), "nu"), (dict(nu=-1.0), "nu"), (dict(nu=1.0, eta0=0.0), "eta0"), (dict(nu=1.0, nodes=3), "nodes"),
    (dict(nu=1.0, sigma=[1.0, 1.0, 1.0]), "sigma"), (dict(nu=1.0, track_every=[0, 99], steps=5), "track_every"),
])
def test_bad_arguments_raise(kw, word):
    with pytest.raises(ValueError, match=word):
        proportional(**kw)


def test_config_and_arguments_together_raise():
    cfg = RunConfig(width=64, input_dim=32, depth=1, scaling="ntk", online=True, steps=3)
    with pytest.raises(ValueError, match="either a config"):
        proportional(cfg, gamma0=2.0)


def test_divergence_is_reported():
    ds = proportional(nu=1.0, gamma0=1.0, eta0=3.0, steps=60, top_k=1)
    assert ds.attrs["status"] == "diverged" and ds.attrs["diverged_step"] > 0
    assert np.isnan(float(ds.loss[-1]))


# ---- against finite-size simulation --------------------------------------------------

CASES = {  # nu, gamma0, eta0: both shapes of the bulk, outliers escaping within ~10 steps
    "wide": (2.0, 5.0, 0.04),
    "narrow": (0.5, 5.0, 0.10),
}
STEPS, TRACKED = 20, [0, 3, 6, 10, 20]


def _seed_average(case, D, seeds):
    nu, g0, eta0 = CASES[case]
    runs = [simulate_population(D, nu, g0, eta0, STEPS, TRACKED, s) for s in range(seeds)]
    return {k: np.array([r[k] for r in runs]) for k in ("loss", "sv", "dsv", "readout", "sharpness", "ovl", "ovr")}


def _theory(case):
    nu, g0, eta0 = CASES[case]
    return proportional(nu=nu, gamma0=g0, eta0=eta0, steps=STEPS, track_every=TRACKED, top_k=2)


def _compare(th, sim, tol_loss, tol_sv, tol_sharp, tol_ov):
    tl = th.loss.values
    sl = sim["loss"][:, TRACKED].mean(0)
    big = tl > 1e-2 * tl[0]          # where the loss is still O(1): relative error
    assert np.all(np.abs(sl - tl)[big] / tl[big] < tol_loss), (sl, tl)
    assert np.all(np.abs(sl - tl) < tol_loss * tl[0])
    ts = th.singular_values.sel(layer="W0", rank=0).values
    out = ~np.isnan(ts)
    assert out.sum() >= 3, "the case must produce an outlier"
    gap = np.abs(sim["sv"][:, :, 0].mean(0) - ts)[out]
    assert np.all(gap < tol_sv), gap
    tds = th.delta_singular_values.sel(layer="W0", rank=0).values[1:]
    assert np.all(np.abs(sim["dsv"][:, 1:, 0].mean(0) - tds) < tol_sv)
    tr = th.singular_values.sel(layer="W1", rank=0).values
    assert np.all(np.abs(sim["readout"].mean(0) - tr) < tol_sv)
    tsh = th.normalized_sharpness.values
    assert np.all(np.abs(sim["sharpness"].mean(0) - tsh) / tsh < tol_sharp)
    # overlaps of the top outlier's singular vectors with the top spike directions
    for side, key in (("left", "ovl"), ("right", "ovr")):
        to = th[f"overlap_spike_{side}"].sel(layer="W0", rank=0).values
        assert np.all(np.abs(sim[key][:, :, 0].mean(0) - to)[out] < tol_ov), (side, sim[key][:, :, 0].mean(0), to)


@pytest.mark.parametrize("case, D", [("wide", 150), ("narrow", 300)])
def test_small_simulation_agrees(case, D):
    _compare(_theory(case), _seed_average(case, D, seeds=4), tol_loss=0.2, tol_sv=0.1, tol_sharp=0.08, tol_ov=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_simulation_converges_to_the_limit(case):
    sizes, seeds = (200, 400, 800, 1600), 8
    rms = []
    th = _theory(case)
    ts = th.singular_values.sel(layer="W0", rank=0).values
    out = ~np.isnan(ts)
    for D in sizes:
        sim = _seed_average(case, D, seeds)
        print(f"{case} D={D}: seed-mean outlier gap", np.round(np.abs(sim["sv"][:, out, 0].mean(0) - ts[out]), 4))
        # root-mean-square deviation of single runs from the limit (bias and spread)
        rms.append(np.sqrt(np.mean((sim["sv"][:, out, 0] - ts[out]) ** 2)))
    # outliers: within a few hundredths at the largest size (seed-averaged)
    _compare(th, sim, tol_loss=0.05, tol_sv=0.03, tol_sharp=0.03, tol_ov=0.03)
    rate = np.polyfit(np.log(sizes), np.log(rms), 1)[0]
    print(f"{case}: rms deviation {np.round(rms, 4)}, fitted rate D^{rate:.2f}")
    assert rms[-1] < 0.6 * rms[0], rms
    assert -0.9 < rate < -0.25, (rate, rms)   # about D^{-1/2}
