"""Every study end to end at tiny sizes; headlines checked against a direct
computation on the stored runs (loaded group by group, not through collect)."""
import json

import numpy as np
import pytest

from specdyn import storage, studies
from specdyn.config import RunConfig
from specdyn.sweeps import run_groups

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def stored_runs(store):
    """[(config, dataset)] of every complete run group, read directly."""
    out = []
    for g in run_groups(store):
        ds = storage.load(store, g)
        out.append((RunConfig.from_json(ds.attrs["config"]), ds))
    return out


def test_width_consistency(tmp_path):
    store = tmp_path / "wc.zarr"
    base = studies.default_base("width_consistency").replace(steps=24, track_every=4, bulk_steps=[24])
    ds, head = studies.width_consistency(widths=(16, 32), seeds=(0, 1), base=base, store=store,
                                         client="serial", progress=False)
    runs = stored_runs(store)
    assert len(runs) == 8 and head["sweep"]["completed"] == 8
    # NTK runs take the gamma0 that equals muP at the smallest width
    for cfg, _ in runs:
        assert cfg.gamma0 == pytest.approx(8.0 if cfg.scaling == "mup" else 8.0 * 4.0)
    for sc in ("mup", "ntk"):
        curves = {}
        for w in (16, 32):
            s = [ds_.singular_values.sel(layer="W1", rank=0).values for c, ds_ in runs
                 if c.scaling == sc and c.width == w]
            curves[w] = np.mean(s, axis=0)
        spread = np.max(np.max([curves[16], curves[32]], axis=0) - np.min([curves[16], curves[32]], axis=0))
        assert head["spread"][sc] == pytest.approx(spread, rel=1e-12)
        ref = curves[32] if sc == "ntk" else None
        if ref is not None:
            assert head["deviation"][sc][16] == pytest.approx(np.max(np.abs(curves[16] - ref)), rel=1e-12)
    assert head["spread_ratio"] == pytest.approx(head["spread"]["mup"] / head["spread"]["ntk"])
    # the one-bulk theory is stored and overlaid on muP
    assert head["theory"] and storage.is_complete(store, studies.THEORY_GROUP)
    th = storage.load(store, studies.THEORY_GROUP)
    np.testing.assert_allclose(ds.theory_singular_values.sel(rank=0).values,
                               th.singular_values.sel(layer="W1", rank=0).sel(step=ds.step.values).values)
    edge = 2.0
    ref = np.nan_to_num(th.singular_values.sel(layer="W1", rank=0).sel(step=ds.step.values).values, nan=edge)
    for w in (16, 32):
        assert head["deviation"]["mup"][w] == pytest.approx(
            np.max(np.abs(ds.singular_values.sel(scaling="mup", width=w, layer="W1", rank=0).mean("seed").values - ref)))
    # re-running the same study resumes: nothing recomputed, same headline
    ds2, head2 = studies.width_consistency(widths=(16, 32), seeds=(0, 1), base=base, store=store,
                                           client="serial", progress=False)
    assert head2["sweep"]["skipped"] == 8 and head2["sweep"]["completed"] == 0
    assert head2["spread"] == head["spread"]
    paths = studies.get("width_consistency").figures(ds, head, tmp_path / "fig")
    assert len(paths) == 2 and all((tmp_path / "fig" / p.split("/")[-1]).stat().st_size > 10_000 for p in paths)


def test_lr_transfer_with_a_diverged_run(tmp_path):
    store = tmp_path / "lr.zarr"
    base = studies.default_base("lr_transfer").replace(steps=10, track_every=10)
    eta0s = (0.05, 0.2, 0.8, 1e4)  # the last one diverges
    ds, head = studies.lr_transfer(eta0s=eta0s, widths=(16, 32), scalings=("mup", "ntk"), base=base, store=store,
                                   client="serial", progress=False)
    runs = stored_runs(store)
    assert len(runs) == 16  # the diverged runs are stored too
    diverged = [c for c, d in runs if d.attrs["status"] == "diverged"]
    assert {c.eta0 for c in diverged} == {1e4}
    assert len(head["sweep"]["diverged"]) == len(diverged) > 0 and not head["sweep"]["failed"]
    for sc in ("mup", "ntk"):
        opts = {}
        for w in (16, 32):
            final = {c.eta0: (float(d.loss.values[-1]) if d.attrs["status"] == "ok" else np.inf)
                     for c, d in runs if c.scaling == sc and c.width == w}
            opts[w] = min(final, key=final.get)
            assert head["optimal_eta0"][sc][w] == opts[w]
        assert head["drift_log2"][sc] == pytest.approx(abs(np.log2(opts[32] / opts[16])))
    paths = studies.get("lr_transfer").figures(ds, head, tmp_path)
    assert all(p.endswith(".png") for p in paths)


def test_detect_catapults():
    loss = np.array([1.0, 0.5, 0.3, 0.2, 0.9, 1.5, 0.6, 0.1, 0.05, 0.04])
    (c,) = studies.detect_catapults(loss, factor=2.0)
    assert (c["start"], c["peak"], c["end"]) == (4, 5, 7) and c["ratio"] == pytest.approx(7.5)
    # a spike that never comes back is divergence, not a catapult
    assert studies.detect_catapults([1.0, 0.5, 3.0, 10.0, np.nan]) == []
    assert studies.detect_catapults(np.geomspace(1, 1e-3, 20)) == []


def test_edge_of_stability(tmp_path):
    store = tmp_path / "eos.zarr"
    base = studies.default_base("edge_of_stability").replace(steps=20)
    ds, head = studies.edge_of_stability(eta0s=(0.5, 2.0), widths=(16, 32), base=base, store=store,
                                         client="serial", progress=False)
    runs = stored_runs(store)
    assert len(runs) == 4
    for c, d in runs:
        steps = d.step.values
        late = steps >= 0.75 * steps.max()
        want = np.mean(d.normalized_sharpness.values[late]) if d.attrs["status"] == "ok" else np.nan
        got = head["steady_sharpness"]["mup"][c.eta0][c.width]
        np.testing.assert_allclose(got, want, rtol=1e-12)
        # the hessian stability ratio uses the raw learning rate of the parameterization
        from specdyn.parameterization import learning_rate

        h = ds.hessian_sharpness.sel(scaling="mup", width=c.width, eta0=c.eta0, seed=c.seed).values
        np.testing.assert_allclose(h, d.hessian_top.values * learning_rate("mup", c.width, c.gamma0, c.eta0))
    for e in (0.5, 2.0):
        vals = [head["steady_sharpness"]["mup"][e][w] for w in (16, 32)]
        np.testing.assert_allclose(head["width_spread"]["mup"][e], max(vals) - min(vals))
    stable = [e for e in (0.5, 2.0) if all(d.attrs["status"] == "ok" for c, d in runs if c.eta0 == e)]
    assert head["largest_stable_eta0"]["mup"] == (max(stable) if stable else pytest.approx(np.nan, nan_ok=True))
    n_marks = int(ds.catapult.sum())
    assert n_marks == len(head["catapults"])
    assert studies.get("edge_of_stability").figures(ds, head, tmp_path)


def test_many_outputs_ntk_setting(tmp_path):
    # the earlier proportional NTK study, kept as setting "ntk" (its own base)
    store = tmp_path / "mo.zarr"
    base = studies.get("many_outputs").base_for("ntk", None).replace(steps=10, track_every=5, bulk_steps=[0, 10],
                                                                       top_k=2)
    ds, head = studies.many_outputs(setting="ntk", kappa=0.5, widths=(16, 24, 32), seeds=(0,), base=base, store=store,
                                    client="serial", progress=False)
    runs = stored_runs(store)
    assert {(c.width, c.output_dim, c.input_dim, c.samples) for c, _ in runs} == {
        (16, 8, 16, 16), (24, 12, 24, 24), (32, 16, 32, 32)}
    # proportional rate: the RunConfig eta0 (scaling ntk) is base.eta0 x N
    assert all(c.scaling == "ntk" and c.eta0 == pytest.approx(base.eta0 * c.width) for c, _ in runs)
    for c, d in runs:
        assert head["loss_per_output"][c.width] == pytest.approx(float(d.loss.values[-1]) / c.output_dim)
        s = d.singular_values.sel(layer="W1").values[-1]
        assert head["edge"][c.width] == pytest.approx(s[0])
        assert head["relative_gap"][c.width] == pytest.approx((s[0] - s[1]) / s[0])
        assert "bulk_counts" in d and int(d.bulk_counts.sel(layer="W1").sum("bin")[0]) == c.width
    fit = head["edge_fit"]
    assert fit["rate_fitted"]
    # The fitted power law (rate free in [0.05, 3]) is at least as good as the
    # least-squares fit with the rate fixed at 2/3, computed here independently.
    x = np.array([16.0, 24.0, 32.0])
    y = np.array([head["edge"][w] for w in (16, 24, 32)])
    fitted = fit["edge_inf"] + fit["amplitude"] * x ** (-fit["rate"])
    A = np.stack([np.ones_like(x), x ** (-2 / 3)], axis=1)
    ref = A @ np.linalg.lstsq(A, y, rcond=None)[0]
    assert np.sum((fitted - y) ** 2) <= np.sum((ref - y) ** 2) + 1e-12
    two = head["edge_fit_two_thirds"]
    assert not two["rate_fitted"] and two["rate"] == pytest.approx(2 / 3)
    assert two["edge_inf"] + two["amplitude"] * x ** (-2 / 3) == pytest.approx(ref)
    assert 0.05 <= fit["rate"] <= 3.0
    assert head["isolated_outlier"] == any(g > head["outlier_gap"] for g in head["relative_gap"].values())
    assert head["edge_difference"] == {24: pytest.approx(abs(y[1] - y[0])), 32: pytest.approx(abs(y[2] - y[1]))}
    assert len(studies.get("many_outputs").figures(ds, head, tmp_path)) == 2
    assert studies.analyze(store)[1]["edge"] == head["edge"]  # a stored ntk study is analyzed as one
    with pytest.raises(ValueError, match="proportional_lr"):
        studies.many_outputs(setting="ntk", widths=(16,), base=base.replace(scaling="mup"), store=tmp_path / "m.zarr",
                             client="serial", progress=False)


def test_naive_vs_two_level(tmp_path):
    store = tmp_path / "nv.zarr"
    base = studies.default_base("naive_vs_two_level").replace(steps=30, track_every=5)
    ds, head = studies.naive_vs_two_level(widths=(16, 32), base=base, store=store, client="serial", progress=False)
    th = storage.load(store, studies.THEORY_GROUP)
    runs = stored_runs(store)
    for name, var in (("two_level", "singular_values"), ("naive", "naive_singular_values")):
        pred = np.nan_to_num(th[var].sel(layer="W1", rank=0).sel(step=ds.step.values).values, nan=2.0)
        for c, d in runs:
            sim = d.singular_values.sel(layer="W1", rank=0).values
            assert head["error"][name][c.width] == pytest.approx(np.max(np.abs(sim - pred)))
    assert studies.get("naive_vs_two_level").figures(ds, head, tmp_path)


def test_analyze_from_store_and_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown study"):
        studies.get("nope")
    with pytest.raises(ValueError, match="kappa"):
        studies.many_outputs(setting="ntk", kappa=-1, store=tmp_path / "x.zarr", client="serial", progress=False)
    with pytest.raises(ValueError, match="naive_vs_two_level"):
        studies.naive_vs_two_level(base={"activation": "tanh"}, store=tmp_path / "y.zarr", client="serial", progress=False)
    store = tmp_path / "lr.zarr"
    base = studies.default_base("lr_transfer").replace(steps=4, track_every=4)
    _, head = studies.lr_transfer(eta0s=(0.1, 0.3), widths=(16,), scalings=("mup",), base=base, store=store,
                                  client="serial", progress=False)
    _, again = studies.analyze(store)
    assert again["optimal_eta0"] == head["optimal_eta0"]
    json.loads(studies.to_json(head))


def test_each_study_is_an_object_that_the_cli_and_plots_ask(tmp_path, capsys):
    import specdyn
    from specdyn import plots
    from specdyn.cli import print_headline

    for name, study in studies.STUDIES.items():
        assert study.name == name and isinstance(study.default_base(), RunConfig)
        assert studies.default_base(name) == study.default_base()
        assert study.grid_keys and set(study.grid_keys) <= set(__import__("inspect").signature(study.run).parameters)
    # the many_outputs defaults live in its own module
    import importlib

    mo_module = importlib.import_module("specdyn.studies.many_outputs")  # the package attribute is the function

    assert mo_module.STUDY is studies.get("many_outputs")
    assert studies.many_outputs.__self__ is mo_module.STUDY
    # a study name is no run function
    with pytest.raises(ValueError, match="run_fn.*studies.get"):
        specdyn.sweep("width_consistency", {"widths": [8]}, tmp_path / "s.zarr")
    # the headline is the study's: an lr_transfer summary printed through the CLI
    summary = {"study": "lr_transfer", "optimal_eta0": {"mup": {8: 0.5}}, "drift_log2": {"mup": 0.0},
               "optimum_bound": {"mup": {8: None}}, "drift_note": {"mup": None}}
    print_headline(summary)
    assert "optimal eta0" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown study"):
        print_headline({"study": "nope"})
    with pytest.deprecated_call():
        with pytest.raises(ValueError, match="unknown study"):
            plots.study_figures("nope", None, {}, tmp_path)


def test_run_config_answers_sigma_and_which_limit_covers_it():
    from specdyn.config import check_limit

    cfg = RunConfig(depth=3, sigma=[0.5, 1.5, 2.0, 0.7])
    assert cfg.layer_sigmas() == [0.5, 1.5, 2.0, 0.7]
    assert cfg.layer_sigma(2) == 2.0 and cfg.layer_sigma("W3") == 0.7
    assert RunConfig(depth=2, sigma=1.3).layer_sigmas() == [1.3, 1.3, 1.3]
    with pytest.raises(ValueError, match="layer"):
        cfg.layer_sigma("W4")
    # the coverage of each theory, written out by hand from its model
    cases = [(dict(depth=2), ["one_bulk", "deep_linear", "deep_monte_carlo"]),
             (dict(depth=2, scaling="ntk"), ["one_bulk", "deep_linear"]),
             (dict(depth=5, activation="tanh"), ["deep_monte_carlo"]),
             (dict(depth=9, activation="tanh"), []),
             (dict(depth=1), ["two_layer_monte_carlo", "deep_monte_carlo"]),
             (dict(depth=1, online=True, scaling="ntk"), ["proportional"]),
             (dict(depth=2, batch_size=4), []),
             (dict(depth=2, output_dim=2), ["one_bulk", "deep_linear"]),
             (dict(depth=3, output_dim=4, output_normalization="mean"), ["deep_linear"])]
    for fields, covering in cases:
        assert RunConfig(**fields).limits() == covering, fields
    assert RunConfig(depth=3, activation="tanh").limit_gaps("one_bulk") == ["depth=3", "activation='tanh'"]
    with pytest.raises(ValueError, match="one-bulk theory covers.*got depth=3"):
        check_limit(RunConfig(depth=3), "one_bulk")
    with pytest.raises(ValueError, match="RunConfig"):
        check_limit({"depth": 2}, "one_bulk")
    with pytest.raises(ValueError, match="model"):
        RunConfig().limit_gaps("two_bulk")
