"""The many_outputs study under muP: its analysis against independent references (planted spikes
on Gaussian bulks from specdyn.rmt, a synthetic outlier-count curve with a known crossing, one_bulk
called directly), a tiny end-to-end run, and a failing theory reported in the summary."""
import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specdyn import rmt, storage, studies
from specdyn.config import RunConfig
from specdyn.sweeps import run_groups
from specdyn.theory import one_bulk

mo = importlib.import_module("specdyn.studies.many_outputs")  # the package attribute is the run method

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def test_default_is_mup_with_the_mean_over_outputs():
    base = studies.default_base("many_outputs")
    assert base.scaling == "mup" and base.output_normalization == "mean"
    assert base.depth == 2 and base.activation == "linear"
    assert mo.output_grid(128) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    ntk = studies.get("many_outputs").base_for("ntk", None)
    assert ntk.scaling == "ntk" and ntk.output_normalization == "sum"
    with pytest.raises(ValueError, match="setting"):
        studies.many_outputs(setting="sp", client="serial", progress=False)
    with pytest.raises(ValueError, match="outputs"):
        studies.many_outputs(widths=(16,), outputs=(0, 2), client="serial", progress=False)
    with pytest.raises(ValueError, match="outputs must be <= width"):
        studies.many_outputs(widths=(16,), outputs=(32,), client="serial", progress=False)
    with pytest.raises(ValueError, match="depth 2"):
        studies.many_outputs(widths=(16,), base={"depth": 3}, client="serial", progress=False)


def test_no_resolvable_outlier_on_pure_gaussian_bulks():
    # the threshold edge (1 + N^-2/3) sits about 3 Tracy-Widom units above the edge: a square Gaussian
    # matrix with no spike crosses it in none of 40 draws
    for n in (100, 400):
        for seed in range(20):
            s = np.linalg.svd(rmt.gaussian(n, n, seed=seed, sigma=1 / np.sqrt(n)), compute_uv=False)
            assert mo.count_resolvable(s, n, rmt.quarter_circle_edge(1.0), 1.0) == 0


@settings(max_examples=12, deadline=None)
@given(k=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_planted_spikes_above_the_bbp_threshold_are_counted(k, seed):
    # rank-k spikes of strength 1.6 .. 2.5 (threshold 1): BGN outliers s = theta + 1 / theta >= 2.225,
    # far above edge (1 + N^-2/3) = 2.04 at N = 400; spikes of strength 0.5 (below threshold) add none
    n = 400
    thetas = np.linspace(1.6, 2.5, k)
    A, _, _ = rmt.spiked(n, n, np.concatenate([thetas, [0.5, 0.5]]), seed=seed)
    s = np.linalg.svd(A, compute_uv=False)
    assert mo.count_resolvable(s, n, 2.0, 1.0) == k
    expected = rmt.bgn_outliers(thetas)["singular_values"].max()
    assert mo.top_distance(s[:5], 2.0) == pytest.approx((expected - 2.0) / 2.0, abs=0.05)
    assert mo.count_resolvable(s, n, 2.0, 1.0) == mo.count_resolvable(np.r_[s, np.nan], n, 2.0, 1.0)


@given(c_star=st.sampled_from([2, 3, 8, 12, 48]), peak=st.integers(1, 6))
def test_crossover_on_a_synthetic_count_curve(c_star, peak):
    # counts rise then fall to zero at a known C*: the crossover is C* (first zero after the last nonzero)
    grid = mo.output_grid(128)
    counts = [0.0 if c >= c_star else float(max(1, peak - abs(c - 4))) for c in grid]
    counts[0] = 0.0  # no outlier at C = 1 is not a crossover: the curve rises after it
    if c_star <= 2:
        counts = [0.0] * len(grid)
        counts[0] = 1.0
    x = mo.crossover(grid, counts, samples=32)
    assert x["outputs"] == c_star and x["ratio"] == pytest.approx(c_star / 32)
    assert x["last_resolved"] == max(c for c, n in zip(grid, counts) if n > 0)
    # NaN (not assessed) points are skipped, every C resolved gives NaN, none resolved gives the first C
    skipped = mo.crossover(grid, [np.nan if c == c_star else n for c, n in zip(grid, counts)], 32)
    assert skipped["outputs"] == min(c for c in grid if c > c_star)
    assert np.isnan(mo.crossover(grid, [1.0] * len(grid), 32)["outputs"])
    none = mo.crossover(grid, [0.0] * len(grid), 32)
    assert none["outputs"] == 1 and np.isnan(none["last_resolved"])
    beyond = mo._theory_crossover([1, 2, 4], [1.0, 2.0, 1.0], grid, 32)
    assert np.isnan(beyond["outputs"]) and beyond["above"] == 4


def _tiny_base():
    return studies.default_base("many_outputs").replace(steps=8, track_every=8, bulk_steps=[8], bulk_bins=20)


def test_tiny_end_to_end(tmp_path):
    store = tmp_path / "mo.zarr"
    base = _tiny_base()
    ds, head = studies.many_outputs(widths=(16, 32), seeds=(0, 1), base=base, theory_max_outputs=4, theory_nodes=32,
                                    store=store, client="serial", progress=False)
    runs = {}
    for g in run_groups(store):
        d = storage.load(store, g)
        c = RunConfig.from_json(d.attrs["config"])
        runs[(c.width, c.output_dim, c.seed)] = (c, d)
    assert {k[:2] for k in runs} == {(16, c) for c in mo.output_grid(16)} | {(32, c) for c in mo.output_grid(32)}
    assert all(c.scaling == "mup" and c.output_normalization == "mean" and c.samples == base.samples
               and c.input_dim == base.input_dim for c, _ in runs.values())
    assert head["bulk_edge"] == pytest.approx(2.0)
    for (w, c) in head["outlier_count"]:
        thr = 2.0 * (1 + w ** (-2 / 3))
        tops = [runs[(w, c, s)][1].singular_values.sel(layer="W1").values[-1] for s in (0, 1)]
        assert head["outlier_count"][(w, c)] == pytest.approx(np.mean([np.sum(t > thr) for t in tops]))
        assert head["top_distance"][(w, c)] == pytest.approx(np.mean([(t[0] - 2.0) / 2.0 for t in tops]))
        assert float(ds.outlier_count.sel(width=w, output_dim=c)) == pytest.approx(head["outlier_count"][(w, c)])
    # the theory is one_bulk at the last step, called here directly
    assert head["theory_outputs"] == [1, 2, 3, 4] and head["theory_failures"] == {}
    for c in (1, 3):
        th = one_bulk(base.replace(output_dim=c, top_k=c + 3), nodes=32, steps=[base.steps])
        v = th.singular_values.sel(layer="W1").values[-1]
        for w in (16, 32):
            assert head["theory_outlier_count"][(w, c)] == np.sum(v[np.isfinite(v)] > 2.0 * (1 + w ** (-2 / 3)))
            assert head["theory_top_distance"][(w, c)] == pytest.approx(
                max((np.nanmax(v) - 2.0) / 2.0, 0.0) if np.isfinite(v).any() else 0.0)
    for w in (16, 32):  # the simulated crossover follows from the majority-of-seeds counts
        cs = mo.output_grid(w)
        per = [float(np.sum(np.array(head["outlier_count_per_seed"][(w, c)]) > 0) > 1) for c in cs]
        assert head["crossover"][w]["simulation"] == mo.crossover(cs, per, base.samples)
    paths = studies.get("many_outputs").figures(ds, head, tmp_path)
    assert len(paths) == 1 and (tmp_path / "many_outputs.png").stat().st_size > 0
    again = studies.analyze(store)[1]  # from the store alone
    assert again["outlier_count"] == head["outlier_count"] and again["crossover"] == head["crossover"]


def test_a_failing_theory_is_reported_not_replaced(tmp_path, monkeypatch, capsys):
    from rich.console import Console

    import specdyn.theory as theory

    real = theory.one_bulk

    def failing(config, **kw):
        if config.output_dim == 2:
            raise ValueError("output_dim: the recursion failed (injected)")
        th = real(config, **kw)
        if config.output_dim == 3:  # a diverged limit is a failure too, not 'no outlier'
            th.attrs["status"], th.attrs["diverged_step"] = "diverged", 5
        return th

    monkeypatch.setattr(theory, "one_bulk", failing)
    ds, head = studies.many_outputs(widths=(16,), outputs=(1, 2, 3), seeds=(0,), base=_tiny_base(),
                                    theory_max_outputs=3, theory_nodes=32, store=tmp_path / "f.zarr",
                                    client="serial", progress=False)
    assert set(head["theory_failures"]) == {2, 3}
    assert "injected" in head["theory_failures"][2] and "diverged at step 5" in head["theory_failures"][3]
    assert (16, 2) not in head["theory_outlier_count"] and (16, 3) not in head["theory_outlier_count"]
    assert (16, 1) in head["theory_outlier_count"]
    console = Console(width=200, record=True)
    studies.get("many_outputs").headline(head, console)
    text = console.export_text()
    assert "theory failed at C = 2" in text and "theory failed at C = 3" in text


def test_the_limit_crossover_is_refined_to_single_outputs(tmp_path, monkeypatch):
    # a stand-in limit with outliers exactly for C <= 19: the grid brackets the crossover by (16, 24],
    # the refinement solves C = 17..23 and finds 20
    import xarray as xr

    import specdyn.theory as theory

    solved = []

    def planted(config, nodes=None, steps=None):
        solved.append(config.output_dim)
        v = np.full(config.top_k, np.nan)
        if config.output_dim <= 19:
            v[0] = 2.5
        return xr.Dataset({"singular_values": (("step", "layer", "rank"), v[None, None, :])},
                          coords={"step": steps, "layer": ["W1"], "rank": np.arange(config.top_k)},
                          attrs={"status": "ok", "diverged_step": -1})

    monkeypatch.setattr(theory, "one_bulk", planted)
    store = str(tmp_path / "r.zarr")
    mo._store_theory(store, _tiny_base(), [1, 8, 16, 24, 32], nodes=8)
    assert sorted(solved) == [1, 8, 16, 17, 18, 19, 20, 21, 22, 23, 24, 32]
    th = mo._load_theory(store)
    counts = [float(np.isfinite(th["values"][c]).any()) for c in sorted(th["values"])]
    x = mo.crossover(sorted(th["values"]), counts, 32)
    assert x["outputs"] == 20 and x["last_resolved"] == 19 and x["ratio"] == pytest.approx(20 / 32)
