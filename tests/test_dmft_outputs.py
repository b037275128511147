"""The linear limits with C outputs (theory.one_bulk and theory.deep_linear, output_dim > 1):
the C-vector recursion against the scalar one at C = 1 and against finite-width GD
on the actual modes (to rounding), the deep single-site DMFT at depth 2 against the
mode recursion (two derivations, equal to rounding), the limits against seed means
of ``simulate`` with tolerances from the seed spread, and two models that drop the
coupling between outputs (the one-output theory run per output; the BGN baseline of
an independent spike), which the simulations refute. The large validation
(C = 2..16, P below and above C, N = 500..4000; depth 3) is marked slow."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

import specdyn
from specdyn import _core
from specdyn.config import RunConfig
from specdyn.parameterization import scales
from specdyn.theory import deep_linear

OB = importlib.import_module("specdyn.theory.one_bulk")


def config(**kw):
    base = dict(width=500, input_dim=8, samples=4, output_dim=4, gamma0=4.0, eta0=0.2, steps=40, top_k=4,
                output_normalization="mean", track_every=10, track_sharpness=False)
    base.update(kw)
    return RunConfig(**base)


def seed_runs(cfg, seeds):
    runs = [specdyn.simulate(cfg.replace(seed=s)) for s in range(seeds)]
    loss = np.stack([d.loss.values for d in runs])
    sv = np.stack([d.singular_values.sel(layer="W1").values for d in runs])
    return loss, sv


def test_c_output_recursion_at_one_output_is_the_scalar_recursion():
    cfg = config(output_dim=1, samples=8)
    X, y = OB._data(cfg, None)
    s, w = OB.quarter_circle_nodes(32)
    a0, B0 = OB.limit_initial(s, cfg.input_dim, 1.0, 1.0)
    ref = OB.solve_modes(s, w, a0, B0, X, y, 0.8, 4.0, 0.2, 15)
    new = OB.solve_modes_outputs(s, w, a0[:, None, :], B0, X, y[:, None], 0.8, 4.0, 0.2, 15)
    np.testing.assert_allclose(new.loss, ref.loss, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(new.sharpness, ref.sharpness, rtol=1e-12)
    np.testing.assert_allclose(new.Cw[:, 0, :, 0], ref.Cw, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(new.Cq[:, 0, :, 0], ref.Cq, rtol=1e-11, atol=1e-14)
    a = _core.dmft_outliers(ref, [5, 10, 15], 3, 0.8, 2.002)
    b = _core.dmft_outliers(new.history, [5, 10, 15], 3, 0.8, 2.002)
    assert np.isfinite(a["values"][-1, 0])
    np.testing.assert_allclose(b["values"], a["values"], rtol=1e-9)


@pytest.mark.parametrize("norm,C,eta0", [("mean", 3, 0.3), ("sum", 3, 0.1), ("mean", 7, 0.3)])
def test_finite_modes_reproduce_gd_of_a_network_with_c_outputs(norm, C, eta0):
    # the same recursion on the N actual SVD modes of one network is that network's GD
    cfg = RunConfig(width=40, depth=2, input_dim=5, output_dim=C, samples=6, steps=8, gamma0=3.0, eta0=eta0,
                    top_k=2, track_every=2, output_normalization=norm)
    sim = specdyn.simulate(cfg)
    sc = scales(cfg.scaling, cfg.width, 2, cfg.input_dim, C, cfg.gamma0, cfg.eta0, cfg.sigma)
    W = [_core.gaussian_f64(l.fan_out, l.fan_in, cfg.seed, (1 << 32) + i, l.init_std) for i, l in enumerate(sc.layers)]
    th = OB.one_bulk_finite(cfg, W)
    np.testing.assert_allclose(th.loss.values, sim.loss.values, rtol=1e-11)
    np.testing.assert_allclose(th.normalized_sharpness.values, sim.normalized_sharpness.values, rtol=1e-10)
    s_th = th.singular_values.sel(layer="W1").values     # values above the largest s_k(0)
    s_sim = sim.singular_values.sel(layer="W1").values
    found = np.isfinite(s_th)
    assert found[2:, 0].all()
    np.testing.assert_allclose(s_th[found], s_sim[found], rtol=1e-10)
    assert th.beta_f.dims == ("step", "input", "output_unit")


@pytest.fixture(scope="module")
def four_outputs():
    """C = 4 outputs from P = 4 samples (P <= C): the limit and four seeds at N = 1000."""
    cfg = config(width=1000)
    return cfg, OB.one_bulk(cfg), seed_runs(cfg, 4)


def test_limit_matches_seed_means_with_four_outputs(four_outputs):
    cfg, th, (loss, sv) = four_outputs
    s_th = th.singular_values.sel(layer="W1").values
    # tolerances: three per-seed standard deviations at this width (the seed mean's error plus
    # a finite-width bias of the same O(N^-1/2) order, which the slow test shows shrinking)
    sd_loss, sd_sv = loss.std(0, ddof=1), sv.std(0, ddof=1)
    assert np.all(np.abs(loss.mean(0) - th.loss.values) <= 3 * sd_loss + 1e-12)
    found = np.isfinite(s_th)
    assert found[-1].sum() == 2                     # two outliers for a rank-4 increment
    gap = np.abs(sv.mean(0) - s_th)[found]
    assert np.all(gap <= 3 * sd_sv[found]), (gap, sd_sv[found])
    # the simulated values the theory leaves in the bulk stay within 0.03 of its edge
    assert np.all(sv.mean(0)[~found][4:] < 2.0 + 0.03)
    assert th.attrs["bulk_edge"] == pytest.approx(2.0 * 1.001)


def test_one_output_theory_per_output_misses_the_simulation(four_outputs):
    # dropping the coupling of the outputs through the shared features (each output as its
    # own one-output network at rate c / C) gives a loss the seed spread rules out
    cfg, th, (loss, _) = four_outputs
    X, Y = OB._data(cfg, None)
    per = np.mean([OB.one_bulk(cfg.replace(output_dim=1, eta0=cfg.eta0 / cfg.output_dim), (X, Y[:, a])).loss.values
                   for a in range(cfg.output_dim)], axis=0)
    miss = np.abs(loss.mean(0) - per) > 3 * loss.std(0, ddof=1)
    assert miss[2:].all()


def test_independent_spike_baseline_misses_the_outliers():
    cfg = config(samples=24, output_dim=8, steps=20, track_every=10)
    th = OB.one_bulk(cfg)
    _, sv = seed_runs(cfg, 3)
    top_sim = sv.mean(0)[-1, 0]
    assert abs(th.singular_values.values[-1, 0, 0] - top_sim) <= 3 * sv.std(0, ddof=1)[-1, 0]
    assert top_sim - th.naive_singular_values.values[-1, 0, 0] > 0.3


def test_bad_inputs_name_the_problem():
    cfg = config(output_dim=3)
    X, Y = OB._data(cfg, None)
    with pytest.raises(ValueError, match=r"data Y must have shape \(samples, output_dim\) = \(4, 3\)"):
        OB.one_bulk(cfg, (X, Y[:, :2]))
    with pytest.raises(ValueError, match="device must be 'cpu' for output_dim > 1"):
        OB.one_bulk(cfg, device="host-emulation")
    with pytest.raises(ValueError, match=r"w \(3, 40\)"):
        OB.one_bulk_finite(cfg.replace(width=40), [np.zeros((40, 8)), np.zeros((40, 40)), np.zeros(40)])


@pytest.mark.parametrize("C,P,norm", [(3, 4, "mean"), (4, 24, "mean"), (2, 6, "sum")])
def test_deep_linear_at_depth_two_is_the_mode_recursion(C, P, norm):
    # the single-site DMFT with response functions and the mode recursion are separate
    # derivations; at depth 2 they must agree, outputs coupled the same way
    cfg = config(output_dim=C, samples=P, output_normalization=norm, eta0=0.1 if norm == "sum" else 0.2, steps=20,
                 input_dim=6, top_k=3, track_every=5, track_sharpness=True)
    a = OB.one_bulk(cfg, nodes=96, history_tol=0.0)
    b = deep_linear(cfg, nodes=96, basis_tol=0.0)
    np.testing.assert_allclose(b.loss.values, a.loss.values, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(b.normalized_sharpness.values, a.normalized_sharpness.values, rtol=1e-10)
    np.testing.assert_allclose(b.beta_f.values, a.beta_f.values, atol=1e-12)
    np.testing.assert_allclose(b.delta_singular_values.values, a.delta_singular_values.values, atol=1e-9)
    np.testing.assert_array_equal(np.isnan(b.singular_values.values), np.isnan(a.singular_values.values))
    assert np.isfinite(a.singular_values.values[-1, 0, 0])
    np.testing.assert_allclose(b.singular_values.values, a.singular_values.values, rtol=1e-9)


def deep_check(cfg, seeds, slack=0.0):
    """deep_linear against the seed means of simulate: loss, S and every predicted outlier of
    each bulk within three per-seed standard deviations (plus ``slack``). S from step 1 on: at
    step 0 it is small and its finite-N excess (the top eigenvalue of a random NTK, O(N^-1/2)
    relative) is larger than its seed spread."""
    th = deep_linear(cfg)
    np.testing.assert_allclose(th.bulk_edge_law.values, 2.0)
    runs = [specdyn.simulate(cfg.replace(seed=s)) for s in range(seeds)]
    for name, first in (("loss", 0), ("normalized_sharpness", 1)):
        sim = np.stack([d[name].values for d in runs])[:, first:]
        ref = th[name].values[first:]
        assert np.all(np.abs(sim.mean(0) - ref) <= 3 * sim.std(0, ddof=1) + slack * abs(ref)), name
    gaps = []
    for layer in th.layer.values:
        ref = th.singular_values.sel(layer=layer).values
        sim = np.stack([d.singular_values.sel(layer=layer).values for d in runs])
        found = np.isfinite(ref)
        found[0] = False
        assert found[-1, 0]
        gap = np.abs(sim.mean(0) - ref)[found]
        assert np.all(gap <= 3 * sim.std(0, ddof=1)[found] + slack), (layer, gap)
        gaps.append(gap)
    return np.concatenate(gaps)


def test_deep_linear_with_four_outputs_matches_seed_means():
    deep_check(config(depth=3, width=1000, eta0=0.1, top_k=3, track_sharpness=True), seeds=4)


# ---- large validation ------------------------------------------------------------------

GRID = [(C, P) for C in (2, 4, 8, 16) for P in (4, 24)]


@pytest.mark.slow
@pytest.mark.parametrize("C,P", GRID)
def test_limit_matches_simulations_and_gaps_shrink(C, P):
    cfg = config(output_dim=C, samples=P)
    th = OB.one_bulk(cfg)
    s_th = th.singular_values.sel(layer="W1").values
    found = np.isfinite(s_th)
    found[0] = False
    assert found[-1].any()
    gaps = {}
    for N, seeds in ((500, 6), (1000, 6), (2000, 4), (4000, 4)):
        loss, sv = seed_runs(cfg.replace(width=N), seeds)
        gap = np.abs(sv.mean(0) - s_th)[found]
        sd = sv.std(0, ddof=1)[found]
        assert np.all(gap <= 3 * sd + 0.01), (N, gap, sd)
        assert np.all(np.abs(loss.mean(0) - th.loss.values) <= 3 * loss.std(0, ddof=1) + 1e-3 * th.loss.values[0])
        gaps[N] = float(np.sqrt(np.mean(gap**2)))
    assert gaps[4000] < gaps[500], gaps


@pytest.mark.slow
@pytest.mark.parametrize("C,P", [(2, 24), (8, 4), (8, 24)])
def test_deep_linear_with_c_outputs_matches_simulations_and_gaps_shrink(C, P):
    cfg = config(depth=3, output_dim=C, samples=P, eta0=0.1, top_k=3, track_sharpness=True)
    rms = {N: float(np.sqrt(np.mean(deep_check(cfg.replace(width=N), seeds=4, slack=0.01) ** 2)))
           for N in (500, 1000, 2000)}
    assert rms[2000] < rms[500], rms
