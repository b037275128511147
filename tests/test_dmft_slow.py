"""Large-width validation of the one-bulk limit against seed-averaged NumPy GD (slow).

Run with ``PYTHONPATH=python python -m pytest tests/test_dmft_slow.py -m slow``
(about 3 minutes on one core). The fast subset lives in test_dmft.py.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
import dmft_numpy as dn  # noqa: E402

import specdyn  # noqa: E402
from specdyn.theory import one_bulk  # noqa: E402

dn.single_thread_blas()
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((16, 8))
    return X, X @ rng.standard_normal(8) / math.sqrt(8)


def config(**kw):
    base = dict(width=1000, input_dim=8, samples=16, gamma0=4.0, eta0=0.2, steps=40, top_k=2)
    base.update(kw)
    return specdyn.RunConfig(**base)


def test_limit_matches_simulations_and_gap_shrinks(data):
    X, y = data
    cfg = config()
    steps = [0, 5, 10, 20, 40]
    th = one_bulk(cfg, data, steps=steps)
    s1 = th.singular_values.sel(layer="W1", rank=0)
    assert np.all(np.isfinite(s1.values[1:]))
    rms = {}
    for N, seeds in ((250, 16), (1000, 8), (2000, 8)):
        sim = dn.simulation_dataset(cfg.replace(width=N), X, y, seeds=range(100, 100 + seeds), steps=steps,
                                    top_k=2, track_delta=False)
        per_seed = (sim.singular_values.sel(layer="W1", rank=0) - s1).values[:, 1:]
        rms[N] = float(np.sqrt(np.mean(per_seed**2)))
        cmp = specdyn.compare(sim, th)
        if N >= 1000:
            # seed-averaged s_1(t) within 0.03 of the limit, loss within a few percent
            # while it falls by three decades, sharpness within 3%
            assert float(np.abs(cmp.singular_values_gap.sel(layer="W1", rank=0)[1:]).max()) < 0.03
            assert float(cmp.loss_rel_gap.sel(step=[5, 10, 20]).max()) < 0.06
            assert cmp.attrs["summary"]["normalized_sharpness"]["max_rel_gap"] < 0.03
    # per-seed gap shrinks with width, roughly like N^-1/2
    assert rms[250] > 1.5 * rms[1000]
    assert rms[2000] < 1.2 * rms[1000]
    slope = np.polyfit(np.log([250, 1000, 2000]), np.log([rms[250], rms[1000], rms[2000]]), 1)[0]
    assert -0.9 < slope < -0.25, (rms, slope)


def test_naive_baseline_misses_what_theory_and_simulation_show(data):
    X, y = data
    cfg = config(steps=30)
    th = one_bulk(cfg, data, steps=[10, 20, 30])
    assert np.all(np.isnan(th.naive_singular_values.values))
    sim = dn.simulation_dataset(cfg.replace(width=2000), X, y, seeds=(0, 1), steps=[10, 20, 30], top_k=2)
    s_sim = sim.singular_values.sel(layer="W1", rank=0).mean("seed").values
    s_th = th.singular_values.sel(layer="W1", rank=0).values
    assert np.all(s_sim > 2.05) and np.max(np.abs(s_sim - s_th)) < 0.03
    # the simulated increment is below the BBP threshold too, so BGN has nothing to offer
    assert np.all(sim.delta_singular_values.sel(layer="W1", rank=0).values < 1.0)


def test_edge_of_stability_rise_is_followed(data):
    X, y = data
    cfg = config(eta0=0.3, steps=30)
    steps = [0, 1, 2, 3, 4, 6, 8, 10, 15, 20, 30]
    th = one_bulk(cfg, data, steps=steps)
    S = th.normalized_sharpness.values
    assert S[0] < 0.3 and S[-1] > 1.85 and np.all(np.diff(S[3:]) > -1e-3)
    sim = dn.simulation_dataset(cfg.replace(width=1000), X, y, seeds=(0, 1, 2), steps=steps, top_k=1,
                                track_delta=False)
    gap = specdyn.compare(sim, th).normalized_sharpness_gap.values
    assert np.max(np.abs(gap)) < 0.04
