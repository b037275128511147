"""specdyn.sweep (module specdyn.sweeps): grids, Dask execution, resume after a real SIGKILL, divergence, collect."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import specdyn
from specdyn import storage
from specdyn.config import RunConfig
from specdyn.sweeps import collect, expand_grid, run_group, run_groups

# the folder that holds the specdyn under test (installed, or the in-tree build)
PACKAGE_PARENT = Path(specdyn.__file__).resolve().parents[1]

# A stand-in run function with the result schema (no training: it tests the
# plumbing of sweeps, not the engine). Defined as source so that a subprocess
# and Dask workers can import it.
FAKE_RUN = textwrap.dedent('''
    import os, time
    import numpy as np, xarray as xr

    def fake_run(config):
        log = os.environ.get("FAKE_RUN_LOG")
        if log:
            with open(log, "a") as fh:
                fh.write(f"{config.scaling} {config.width} {config.eta0} {config.seed}\\n")
        time.sleep(float(os.environ.get("FAKE_RUN_SLEEP", "0")))
        if config.eta0 == 13.0:
            raise RuntimeError("boom")
        steps = np.array(config.tracked_steps(), dtype=np.int64)
        rng = np.random.default_rng([config.seed, config.width])
        loss = np.exp(-config.eta0 * steps / max(config.steps, 1)) + 0.01 * rng.random(len(steps))
        status, dstep = "ok", -1
        if config.eta0 > 5:  # a diverging run, recorded the way the engine does it
            half = len(steps) // 2
            loss[half:] = np.nan
            status, dstep = "diverged", int(steps[half])
        sv = 2 + rng.random((len(steps), config.depth + 1, config.top_k))
        return xr.Dataset(
            {"loss": ("step", loss), "singular_values": (("step", "layer", "rank"), sv)},
            coords={"step": steps, "layer": config.layer_names, "rank": np.arange(config.top_k)},
            attrs={"config": config.to_json(), "status": status, "diverged_step": dstep, "kind": "simulation",
                   "scaling": config.scaling, "width": config.width, "seed": config.seed})
''')


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    d = tmp_path_factory.mktemp("fake")
    (d / "fake_runs.py").write_text(FAKE_RUN)
    sys.path.insert(0, str(d))
    import fake_runs

    yield d, fake_runs.fake_run
    sys.path.remove(str(d))


BASE = {"steps": 8, "top_k": 2, "depth": 2}


def test_expand_grid_product_and_errors():
    cfgs = expand_grid({"widths": [8, 16], "eta0": [0.1, 0.2, 0.4], "seeds": [0, 1], "scaling": ["mup", "ntk"]},
                       base=BASE)
    assert len(cfgs) == 24
    assert {(c.width, c.eta0, c.seed, c.scaling) for c in cfgs} == {
        (w, e, s, sc) for w in (8, 16) for e in (0.1, 0.2, 0.4) for s in (0, 1) for sc in ("mup", "ntk")}
    assert all(c.steps == 8 for c in cfgs)
    assert len({run_group(c) for c in cfgs}) == 24
    with pytest.raises(ValueError, match="'grid.widht'"):
        expand_grid({"widht": [8]})
    with pytest.raises(ValueError, match="eta0"):
        expand_grid({"eta0": [0.1, -1.0]})
    with pytest.raises(ValueError, match="scaling"):
        expand_grid({"scaling": ["mup", "xyz"]})


def test_serial_sweep_divergence_failure_and_resume(tmp_path, fake, monkeypatch):
    _, fake_run = fake
    log = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_RUN_LOG", str(log))
    grid = {"widths": [8, 16], "eta0": [0.5, 13.0, 50.0], "seeds": [0]}
    store = tmp_path / "s.zarr"
    summary = specdyn.sweep(fake_run, grid, store, client="serial", progress=False, base=BASE)
    assert summary["total"] == 6 and summary["completed"] == 4 and summary["skipped"] == 0
    # the raising run is reported, not stored; the diverged one is stored and listed
    assert len(summary["failed"]) == 2 and all("boom" in m for m in summary["failed"].values())
    assert sorted(summary["diverged"]) == sorted(g for g in summary["groups"] if "eta50" in g)
    for g in summary["diverged"]:
        ds = storage.load(store, g)
        assert ds.attrs["status"] == "diverged" and ds.attrs["diverged_step"] > 0
    assert len(log.read_text().splitlines()) == 6
    again = specdyn.sweep(fake_run, grid, store, client="serial", progress=False, base=BASE)
    assert again["skipped"] == 4 and again["completed"] == 0 and len(again["failed"]) == 2
    # only the two failed runs were retried
    assert len(log.read_text().splitlines()) == 8


def test_dask_threads_client_and_collect(tmp_path, fake):
    from distributed import Client, LocalCluster

    _, fake_run = fake
    grid = {"scalings": ["mup", "ntk"], "widths": [8, 16], "seeds": [0, 1]}
    store = tmp_path / "s.zarr"
    calls = []
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        summary = specdyn.sweep(fake_run, grid, store, client=client,
                                progress=lambda done, total, g: calls.append((done, total)), base=BASE)
    assert summary["completed"] == 8 and not summary["failed"] and not summary["diverged"]
    assert calls[-1] == (8, 8) and len(calls) == 8
    assert sorted(run_groups(store)) == sorted(summary["groups"])
    both = collect(store, dims=("scaling", "width", "seed"))
    assert both.loss.dims == ("scaling", "width", "seed", "step")
    for g in summary["groups"]:
        ds = storage.load(store, g)
        cfg = RunConfig.from_json(ds.attrs["config"])
        np.testing.assert_array_equal(
            both.loss.sel(scaling=cfg.scaling, width=cfg.width, seed=cfg.seed).values, ds.loss.values)
    assert set(both.status.values.ravel()) == {"ok"}


def test_scheduler_address(tmp_path, fake):
    from distributed import LocalCluster

    _, fake_run = fake
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        summary = specdyn.sweep(fake_run, {"widths": [8, 16]}, tmp_path / "s.zarr",
                                client=cluster.scheduler_address, progress=False, base=BASE)
    assert summary["completed"] == 2 and len(run_groups(tmp_path / "s.zarr")) == 2


def test_killed_sweep_resumes_none_lost_none_repeated(tmp_path, fake, monkeypatch):
    fake_dir, fake_run = fake
    store = tmp_path / "kill.zarr"
    log = tmp_path / "calls.log"
    grid = {"widths": [8, 16, 24, 32], "eta0": [0.1, 0.2], "seeds": [0, 1]}  # 16 runs
    script = tmp_path / "run_sweep.py"
    script.write_text(textwrap.dedent(f'''
        import sys
        sys.path[:0] = [{str(fake_dir)!r}, {str(PACKAGE_PARENT)!r}]
        import specdyn, fake_runs
        specdyn.sweep(fake_runs.fake_run, {grid!r}, {str(store)!r}, client="serial", progress=False,
                      base={BASE!r})
    '''))
    env = dict(os.environ, FAKE_RUN_LOG=str(log), FAKE_RUN_SLEEP="0.25")
    proc = subprocess.Popen([sys.executable, str(script)], env=env)
    try:
        deadline = time.time() + 60
        while len(storage.completed_groups(store)) < 4:
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.time() < deadline, "the sweep made no progress"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = set(storage.completed_groups(store))
    assert 4 <= len(before) < 16
    calls_before = len(log.read_text().splitlines())
    monkeypatch.setenv("FAKE_RUN_LOG", str(log))

    summary = specdyn.sweep(fake_run, grid, store, client="serial", progress=False, base=BASE)
    after_calls = log.read_text().splitlines()[calls_before:]
    assert summary["skipped"] == len(before)
    assert summary["completed"] == 16 - len(before) == len(after_calls)
    # none repeated: no run stored before the kill was computed again
    before_keys = set()
    for g in before:
        c = RunConfig.from_json(storage.load(store, g).attrs["config"])
        before_keys.add(f"{c.scaling} {c.width} {c.eta0} {c.seed}")
    assert not before_keys & set(after_calls)
    # none lost: exactly the grid, each group loading to its own config
    groups = storage.completed_groups(store)
    assert sorted(groups) == sorted(summary["groups"]) and len(groups) == 16
    for g in groups:
        ds = storage.load(store, g)
        assert run_group(RunConfig.from_json(ds.attrs["config"])) == g


@pytest.mark.slow
def test_default_local_cluster_processes(tmp_path, fake):
    # the default scheduler: LocalCluster with worker processes
    _, fake_run = fake
    summary = specdyn.sweep(fake_run, {"widths": [8, 16]}, tmp_path / "s.zarr", workers=2, progress=False,
                            base=BASE)
    assert summary["completed"] == 2


def test_bad_arguments(tmp_path, fake):
    _, fake_run = fake
    with pytest.raises(ValueError, match="workers"):
        specdyn.sweep(fake_run, {"widths": [8]}, tmp_path / "s.zarr", workers=0)
    with pytest.raises(ValueError, match="run_fn"):
        specdyn.sweep(42, {"widths": [8]}, tmp_path / "s.zarr")
    with pytest.raises(ValueError, match="holds no complete runs"):
        collect(tmp_path / "empty.zarr")
