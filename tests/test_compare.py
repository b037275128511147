"""specdyn.compare: alignment and gap bookkeeping on hand-made Datasets."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings, strategies as st

import specdyn


def make(steps, sv, loss, layers=("W1",), kind="simulation", extra_dims=None):
    steps = np.asarray(steps)
    k = sv.shape[-1]
    ds = xr.Dataset(
        {"loss": ("step", np.asarray(loss, float)),
         "singular_values": (("step", "layer", "rank"), np.asarray(sv, float))},
        coords={"step": steps, "layer": list(layers), "rank": np.arange(k)})
    ds.attrs["kind"] = kind
    return ds


def test_gaps_and_alignment():
    sim = make([0, 1, 2, 3], np.array([[[2.0, 1.9]], [[2.1, 1.95]], [[2.2, 1.96]], [[2.3, 1.97]]]),
               [1.0, 0.5, 0.25, 0.125])
    th = make([1, 3, 5], np.array([[[2.05, np.nan]], [[2.25, np.nan]], [[2.4, np.nan]]]), [0.4, 0.1, 0.05],
              kind="theory")
    cmp = specdyn.compare(sim, th)
    assert list(cmp.step.values) == [1, 3]
    np.testing.assert_allclose(cmp.loss_gap.values, [0.1, 0.025])
    np.testing.assert_allclose(cmp.loss_rel_gap.values, [0.25, 0.25])
    np.testing.assert_allclose(cmp.singular_values_gap.values[:, 0, 0], [0.05, 0.05])
    s = cmp.attrs["summary"]
    assert s["loss"]["points"] == 2 and s["loss"]["max_abs_gap"] == pytest.approx(0.1)
    assert s["singular_values"]["points"] == 2
    assert s["singular_values"]["missing_theory"] == 2          # sim sees a 2nd value, theory: no outlier
    assert s["singular_values"]["missing_sim"] == 0
    assert cmp.attrs["steps"] == [1, 3]
    assert cmp.attrs["sim_kind"] == "simulation" and cmp.attrs["theory_kind"] == "theory"


def test_layers_intersect_and_seeds_average():
    rng = np.random.default_rng(0)
    sv = rng.random((3, 2, 4, 2))   # seed, step, layer, rank
    sim = xr.Dataset({"singular_values": (("seed", "step", "layer", "rank"), sv),
                      "loss": (("seed", "step"), rng.random((3, 2)))},
                     coords={"seed": [0, 1, 2], "step": [0, 10], "layer": ["W0", "W1", "W2", "W3"],
                             "rank": [0, 1]})
    th = make([0, 10], np.zeros((2, 1, 2)), [0.0, 0.0], kind="theory")
    cmp = specdyn.compare(sim, th)
    assert list(cmp.layer.values) == ["W1"]
    np.testing.assert_allclose(cmp.singular_values_sim.values[:, 0], sv[:, :, 1].mean(axis=0))
    np.testing.assert_allclose(cmp.loss_gap.values, sim.loss.mean("seed").values)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=8), st.floats(-1, 1))
def test_constant_shift_is_reported(vals, shift):
    v = np.array(vals)
    steps = np.arange(len(v))
    a = make(steps, (v + shift)[:, None, None], v + shift)
    b = make(steps, v[:, None, None], v)
    s = specdyn.compare(a, b).attrs["summary"]
    assert s["loss"]["max_abs_gap"] == pytest.approx(abs(shift), abs=1e-12)
    assert s["singular_values"]["mean_abs_gap"] == pytest.approx(abs(shift), abs=1e-12)


def test_bad_input():
    a = make([0, 1], np.ones((2, 1, 1)), [1.0, 2.0])
    with pytest.raises(ValueError, match="Dataset"):
        specdyn.compare(a, {"loss": 1})
    with pytest.raises(ValueError, match="not in both"):
        specdyn.compare(a, a, variables=["normalized_sharpness"])
    b = xr.Dataset({"other": ("step", [1.0, 2.0])}, coords={"step": [0, 1]})
    with pytest.raises(ValueError, match="share no variable"):
        specdyn.compare(a, b)
    c = xr.Dataset({"loss": ("x", [1.0])})
    with pytest.raises(ValueError, match="step"):
        specdyn.compare(a, c)
