"""specdyn.torch.mlp(cfg) trained by plain PyTorch SGD against specdyn.simulate(cfg),
and width_sweep against monitors run by hand."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import specdyn  # noqa: E402
from specdyn.torch import SpectralMonitor, mlp, specdyn_loss, width_sweep, width_sweep_figure  # noqa: E402

CASES = [(a, s, d) for a in ("linear", "tanh") for s in ("mup", "ntk") for d in (1, 2, 3)]


@pytest.mark.parametrize("activation,scaling,depth", CASES)
def test_two_engines_agree(activation, scaling, depth):
    cfg = specdyn.RunConfig(width=64, depth=depth, input_dim=8, samples=16, output_dim=2, steps=6, top_k=2,
                            activation=activation, scaling=scaling, eta0=0.5, svd_tol=1e-10, seed=depth,
                            track_sharpness=False)
    sim = specdyn.simulate(cfg)
    model = mlp(cfg)
    X, Y = (torch.tensor(a) for a in specdyn.data.teacher(cfg.samples, cfg.input_dim, cfg.output_dim,
                                                          cfg.data_seed, cfg.teacher, cfg.noise))
    mon = SpectralMonitor(model, top_k=2, tol=1e-10)
    opt = torch.optim.SGD(model.parameters(), lr=model.learning_rate)
    for t in range(cfg.steps + 1):
        opt.zero_grad()
        loss = specdyn_loss(model(X), Y)
        loss.backward()  # before observing: the overlaps read this pass's mean input and backward signal
        mon.observe(t, loss=loss.item())
        opt.step()
    ds = mon.dataset()
    assert ds.layer.values.tolist() == [f"layers.{n}.weight" for n in cfg.layer_names]
    np.testing.assert_allclose(ds.loss.values, sim.loss.values, rtol=1e-8)
    # muP and NTK: the normalized matrix is W / sqrt(fan_in), the monitor's default
    s1 = ds.singular_values.isel(rank=0).values
    np.testing.assert_allclose(s1, sim.singular_values.isel(rank=0).values, rtol=1e-8)
    assert ds.attrs["scaling"] == scaling and ds.attrs["width"] == 64
    # squared overlaps of the singular vectors with the mean input / backward signal of the layer
    for name in ("overlap_input", "overlap_backward"):
        np.testing.assert_allclose(ds[name].values, sim[name].values, atol=1e-8, err_msg=name)
    # specdyn.compare sets the monitor's run against the simulation (layers named as in simulate)
    cmp = specdyn.compare(ds.assign_coords(layer=cfg.layer_names), sim)
    summary = cmp.attrs["summary"]
    for name in ("loss", "singular_values", "delta_singular_values"):
        assert summary[name]["points"] > 0 and summary[name]["max_rel_gap"] < 1e-8, name


def test_mlp_initial_weights_are_the_native_ones():
    cfg = specdyn.RunConfig(width=32, depth=2, scaling="sp", seed=7)
    model = mlp(cfg)
    state = specdyn.training.build_trainer(cfg)[0].get_state()
    for w, p in zip(state["initial_weights"], model.parameters()):
        np.testing.assert_array_equal(p.detach().numpy().reshape(-1), np.asarray(w).reshape(-1))
    assert mlp(cfg.replace(dtype="float32")).layers.W0.weight.dtype == torch.float32


def _make(width):
    torch.manual_seed(width)
    return torch.nn.Sequential(torch.nn.Linear(6, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                               torch.nn.Tanh(), torch.nn.Linear(width, 2)).double()


def _train(model, monitor):
    torch.manual_seed(0)
    X, Y = torch.randn(10, 6, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    monitor.attach(opt)
    for _ in range(4):
        opt.zero_grad()
        ((model(X) - Y) ** 2).mean().backward()
        opt.step()


def test_width_sweep_matches_monitors_by_hand(tmp_path):
    widths = [8, 16, 32]
    ds, summary = width_sweep(_make, widths, _train, top_k=2)
    assert ds.sizes["width"] == 3 and ds.sizes["step"] == 5
    by_hand = {}
    for w in widths:
        model = _make(w)
        mon = SpectralMonitor(model, top_k=2)
        _train(model, mon)
        by_hand[w] = mon.dataset().singular_values.sel(layer="2.weight", rank=0).values
    curves = np.stack([by_hand[w] for w in widths])
    np.testing.assert_allclose(ds.singular_values.sel(layer="2.weight", rank=0).values, curves, rtol=1e-12)
    layer = summary["layers"]["2.weight"]
    assert layer["spread"] == pytest.approx(float((curves.max(0) - curves.min(0)).max()), rel=1e-12)
    dev = {w: float(np.abs(by_hand[w] - by_hand[32]).max()) for w in (8, 16)}
    assert layer["deviation"] == pytest.approx(dev, rel=1e-12)
    expect = -np.polyfit(np.log([8, 16]), np.log([dev[8], dev[16]]), 1)[0]
    assert layer["decay_exponent"] == pytest.approx(expect, rel=1e-9)
    path = width_sweep_figure({"tanh MLP": (ds, summary)}, tmp_path / "sweep.png", layer="2.weight")
    assert (tmp_path / "sweep.png").stat().st_size > 0 and path.endswith("sweep.png")


def test_width_sweep_of_specdyn_mlp_against_simulate(tmp_path):
    """width_sweep over specdyn.torch.mlp trained by SGD: the curves are simulate's at every width, and the
    summary (spread, deviation from the widest, its decay exponent) is numpy's on simulate's curves."""
    widths = [16, 32, 64]
    base = specdyn.RunConfig(width=16, depth=2, input_dim=6, samples=12, output_dim=1, steps=4, top_k=2,
                             activation="tanh", scaling="mup", eta0=0.5, svd_tol=1e-10, track_sharpness=False)

    def train(model, monitor):
        cfg = base.replace(width=model.layers.W1.weight.shape[0])
        X, Y = (torch.tensor(a) for a in specdyn.data.teacher(cfg.samples, cfg.input_dim, cfg.output_dim,
                                                              cfg.data_seed, cfg.teacher, cfg.noise))
        opt = torch.optim.SGD(model.parameters(), lr=model.learning_rate)
        monitor.attach(opt, loss=lambda: specdyn_loss(model(X), Y).item())
        for _ in range(cfg.steps):
            opt.zero_grad()
            specdyn_loss(model(X), Y).backward()
            opt.step()

    ds, summary = width_sweep(lambda w: mlp(base.replace(width=w)), widths, train, top_k=2,
                              monitor_kwargs={"tol": 1e-10}, figure=tmp_path / "mlp_sweep.png",
                              figure_layer="layers.W1.weight", label="muP tanh")
    assert summary["figure"] == str(tmp_path / "mlp_sweep.png") and (tmp_path / "mlp_sweep.png").stat().st_size > 0
    sims = {w: specdyn.simulate(base.replace(width=w)) for w in widths}
    for l, layer in enumerate(base.layer_names):
        curves = np.stack([sims[w].singular_values.isel(layer=l, rank=0).values for w in widths])
        name = f"layers.{layer}.weight"
        np.testing.assert_allclose(ds.singular_values.sel(layer=name, rank=0).values, curves, rtol=1e-8)
        got = summary["layers"][name]
        assert got["spread"] == pytest.approx(float((curves.max(0) - curves.min(0)).max()), rel=1e-6)
        dev = [float(np.abs(curves[i] - curves[-1]).max()) for i in range(len(widths) - 1)]
        assert [got["deviation"][w] for w in widths[:-1]] == pytest.approx(dev, rel=1e-6)
        slope = np.polyfit(np.log(widths[:-1]), np.log(dev), 1)[0]
        assert got["decay_exponent"] == pytest.approx(-slope, rel=1e-5)
    np.testing.assert_allclose(ds.loss.values, np.stack([sims[w].loss.values for w in widths]), rtol=1e-8)


def test_width_sweep_checks_its_arguments():
    with pytest.raises(ValueError, match="widths"):
        width_sweep(_make, [8, 8], _train)
    with pytest.raises(ValueError, match="no observation"):
        width_sweep(_make, [8], lambda model, monitor: None)
    with pytest.raises(ValueError, match="store"):
        width_sweep(_make, [8], _train, monitor_kwargs={"store": "x.zarr"})
    for bad in (8, "816", [], [0, 8], [8, 2.5]):
        with pytest.raises(ValueError, match="widths"):
            width_sweep(_make, bad, _train)
    with pytest.raises(ValueError, match="figure must be None or the path"):
        width_sweep(_make, [8], _train, figure=3)
    with pytest.raises(ValueError, match=r"figure_layer must be one of the tracked layers"):
        width_sweep(_make, [8], _train, figure="x.png", figure_layer="nope")
    with pytest.raises(ValueError, match="make_model"):
        width_sweep(None, [8], _train)


def test_width_sweep_leaves_a_diverged_width_out_of_the_spread_and_names_it(tmp_path):
    widths = [8, 16, 32]

    def train(model, monitor):
        _train(model, monitor)
        if model[0].weight.shape[0] == 32:  # this width blows up after the last normal observation
            with torch.no_grad():
                model[2].weight.mul_(1e30)
            monitor.observe(10**6)
            with torch.no_grad():
                model[2].weight.fill_(float("inf"))
            monitor.observe(10**6 + 1)

    ds, summary = width_sweep(_make, widths, train, top_k=2)
    assert ds.attrs["status"] == "diverged"
    assert ds.width_status.values.tolist() == ["ok", "ok", "diverged"]
    assert summary["widths"] == [8, 16] and summary["diverged_widths"] == {32: 10**6 + 1}
    curves = np.stack([ds.singular_values.sel(width=w, layer="2.weight", rank=0).values for w in (8, 16)])
    layer = summary["layers"]["2.weight"]
    assert layer["spread"] == pytest.approx(float(np.nanmax(curves.max(0) - curves.min(0))), rel=1e-12)
    assert layer["spread"] < 10  # not the 1e30 of the blown-up width
    width_sweep_figure({"x": (ds, summary)}, tmp_path / "d.png", layer="2.weight")
    _, alone = width_sweep(_make, [8, 32], train, top_k=2)  # one width left: nothing to compare
    assert "fewer than two widths" in alone["note"] and np.isnan(alone["layers"]["2.weight"]["spread"])


def test_width_sweep_on_a_dask_cluster_equals_the_serial_sweep():
    from distributed import Client

    widths = [8, 16]
    serial, s_summary = width_sweep(_make, widths, _train, top_k=2)
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as cl:
        dask, d_summary = width_sweep(_make, widths, _train, top_k=2, client=cl)
    np.testing.assert_array_equal(dask.singular_values.values, serial.singular_values.values)
    assert d_summary["layers"]["2.weight"]["spread"] == s_summary["layers"]["2.weight"]["spread"]
    with pytest.raises(ValueError, match="client"):
        width_sweep(_make, widths, _train, client="serial")
