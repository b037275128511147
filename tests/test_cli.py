"""The specdyn CLI: commands end to end at tiny sizes, and one clear error for a bad config."""
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from specdyn import storage, studies
from specdyn.cli import app, read_sweep_file

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_info():
    res = invoke("info")
    assert res.exit_code == 0, res.output
    for key in ("specdyn", "blas", "omp_threads", "gpu"):
        assert key in res.output


@pytest.mark.parametrize("text, key", [
    ("[run]\nwidht = 16\n", "widht"),
    ("[run]\nwidth = 0\n", "width"),
    ("[run]\nscaling = 'xyz'\n", "scaling"),
    ("[study]\nname = 'lr_transfer'\n[grid]\nwidths = [16]\nlrs = [0.1]\n", "grid.lrs"),
    ("[study]\nname = 'lr_transfer'\n[grid]\neta0s = [0.1, -2.0]\n", "eta0"),
    ("[study]\nname = 'no_such_study'\n", "no_such_study"),
    ("[study]\nname = 'width_consistency'\n[run]\neta0 = 'fast'\n", "eta0"),
    ("[runn]\nwidth = 16\n", "runn"),
    ("[run\nwidth = 16\n", "not valid TOML"),
])
def test_bad_config_one_clear_error(tmp_path, text, key):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    res = invoke("sweep", cfg)
    assert res.exit_code == 2
    assert key in res.output
    assert "Traceback" not in res.output
    assert len([l for l in res.output.splitlines() if l.strip()]) <= 3
    assert not (tmp_path / "bad.zarr").exists()  # no work started


def test_bad_run_config(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[run]\nwidth = 16\nactivation = 'sigmoid'\n")
    res = invoke("run", cfg)
    assert res.exit_code == 2 and "activation" in res.output and "Traceback" not in res.output


def test_run_plot(tmp_path):
    cfg = tmp_path / "one.toml"
    cfg.write_text("[run]\nwidth = 16\nsteps = 6\ntrack_every = 2\ntop_k = 2\n")
    res = invoke("run", cfg, "--no-progress")
    assert res.exit_code == 0, res.output
    ds = storage.load(tmp_path / "one.zarr")
    assert ds.attrs["status"] == "ok" and ds.sizes["step"] == 4
    res = invoke("plot", tmp_path / "one.zarr", "--out", tmp_path / "figs")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "figs" / "one.png").stat().st_size > 10_000


def test_sweep_study_plot_compare(tmp_path):
    cfg = tmp_path / "wc.toml"
    cfg.write_text("[study]\nname = 'width_consistency'\n[run]\nsteps = 12\ntrack_every = 4\nbulk_steps = [12]\n"
                   "[grid]\nwidths = [16, 32]\nscalings = ['mup', 'ntk']\nseeds = [0]\n")
    res = invoke("sweep", cfg, "--scheduler", "serial")
    assert res.exit_code == 0, res.output
    assert "spread" in res.output and "mup" in res.output
    summary = json.loads((tmp_path / "width_consistency_summary.json").read_text())
    assert set(summary["spread"]) == {"mup", "ntk"}
    assert (tmp_path / "width_consistency_s1.png").exists()
    again = invoke("sweep", cfg, "--scheduler", "serial", "--no-figures")
    assert again.exit_code == 0 and "0 new, 4 already stored" in again.output
    res = invoke("plot", tmp_path / "wc.zarr", "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p" / "width_consistency_s1.png").exists()
    res = invoke("compare", tmp_path / "wc.zarr")
    assert res.exit_code == 0, res.output
    assert "mup_N16" in res.output and "mup_N32" in res.output and "ntk_N" not in res.output


def test_sweep_plain_grid_with_a_diverged_run(tmp_path):
    cfg = tmp_path / "g.toml"
    cfg.write_text("[run]\nwidth = 16\nsteps = 6\ntop_k = 2\n[grid]\neta0 = [0.1, 1e4]\n")
    res = invoke("sweep", cfg, "--scheduler", "serial")
    assert res.exit_code == 0, res.output
    assert "diverged: 1" in res.output and "eta10000" in res.output


def test_demo_tiny(tmp_path):
    out = tmp_path / "demo"
    res = invoke("demo", "--out", out, "--widths", "16,32", "--steps", "12", "--serial")
    assert res.exit_code == 0, res.output
    assert "spread ratio muP / NTK" in res.output
    assert (out / "width_consistency_s1.png").stat().st_size > 10_000
    assert (out / "width_consistency_spectrum.png").exists()
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["theory"] is True and summary["spread_ratio"] == pytest.approx(
        summary["spread"]["mup"] / summary["spread"]["ntk"])
    assert len(storage.completed_groups(out / "demo.zarr")) == 5  # 4 runs + theory
    # a second demo with other settings in the same folder analyzes its own runs only
    res = invoke("demo", "--out", out, "--widths", "16,24", "--steps", "8", "--serial")
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["widths"] == [16, 24]
    res = invoke("plot", out / "demo.zarr")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_examples_parse(path):
    from specdyn.config import RunConfig, load_toml

    if "grid" in load_toml(path) or "study" in load_toml(path):
        spec = read_sweep_file(path)
        assert spec.base.width >= 1
    else:
        RunConfig.from_toml(path)


def test_deep_linear_sweep_compares_every_bulk_to_its_limit(tmp_path):
    # depth 3: the study stores the deep linear DMFT and `compare` reports both bulks
    cfg = tmp_path / "deep.toml"
    cfg.write_text("[study]\nname = 'width_consistency'\n[run]\ndepth = 3\nsteps = 8\ntrack_every = 4\n"
                   "bulk_steps = [8]\n[grid]\nwidths = [24, 48]\nscalings = ['mup']\nseeds = [0]\n")
    res = invoke("sweep", cfg, "--scheduler", "serial", "--no-figures")
    assert res.exit_code == 0, res.output
    th = storage.load(tmp_path / "deep.zarr", studies.THEORY_GROUP)
    assert th.attrs["model"] == "deep_linear" and list(th.layer.values) == ["W1", "W2"]
    res = invoke("compare", tmp_path / "deep.zarr")
    assert res.exit_code == 0, res.output
    assert "mup_N24" in res.output and "mup_N48" in res.output


def test_theory_command_picks_the_limit_and_stores_it(tmp_path):
    lin = tmp_path / "lin.toml"
    lin.write_text("[run]\ndepth = 3\nsteps = 12\ntrack_every = 4\neta0 = 0.04\n")
    res = invoke("theory", lin)
    assert res.exit_code == 0, res.output
    th = storage.load(tmp_path / "lin_theory.zarr")
    assert th.attrs["model"] == "deep_linear" and th.sizes["step"] == 4
    assert (tmp_path / "lin_theory.png").stat().st_size > 10_000
    # the exact one-bulk solver writes the same curve at depth 2 as the general one would
    two = tmp_path / "two.toml"
    two.write_text("[run]\ndepth = 2\nsteps = 8\ntrack_every = 4\n")
    assert invoke("theory", two).exit_code == 0
    assert storage.load(tmp_path / "two_theory.zarr").attrs["model"] == "one_bulk"
    nl = tmp_path / "nl.toml"
    nl.write_text("[run]\ndepth = 2\nactivation = 'tanh'\ninput_dim = 4\nsamples = 8\nsteps = 4\n")
    res = invoke("theory", nl, "--particles", "1024", "--replicas", "2")
    assert res.exit_code == 0, res.output
    assert storage.load(tmp_path / "nl_theory.zarr").attrs["model"] == "deep_monte_carlo"
    sp = tmp_path / "sp.toml"
    sp.write_text("[run]\nscaling = 'sp'\nsteps = 4\n")
    res = invoke("theory", sp)
    assert res.exit_code == 2 and "no limit for this config" in res.output and "scaling='sp'" in res.output


# ---- config and theory errors: one line on stderr, exit code 2, the field named --------------------------
@pytest.mark.parametrize("command, text, key", [
    ("run", "[run]\ntrack_sharpness = 'no'\n", "track_sharpness"),
    ("run", "[run]\ntrack_hessian = 2\n", "track_hessian"),
    ("run", "[run]\nbulk_steps = 3\n", "bulk_steps"),
    ("run", "[run]\ngamma0 = 1e300\n", "gamma0"),
    ("run", "[run]\nsamples = 5000\n", "samples"),
    ("run", "[run]\ndtype = 'float16'\n", "dtype"),
    ("theory", "[run]\nwidth = 64\ndepth = 2\nsteps = 300000\n", "steps"),
    ("theory", "[run]\ntrack_hessian = 2\n", "track_hessian"),
    ("sweep", "[study]\nname = 'width_consistency'\ntheory = 'yes'\n", "theory"),
    ("sweep", "[study]\nname = 'many_outputs'\nkappa = 'half'\n", "kappa"),
])
def test_config_errors_are_one_line_and_exit_2(tmp_path, command, text, key):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    res = invoke(command, cfg)
    assert res.exit_code == 2, res.output
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in res.output, res.output
    assert not list(tmp_path.glob("*.zarr"))  # no work started


@pytest.mark.parametrize("command", ["run", "theory", "sweep"])
def test_a_directory_as_config_is_one_line_and_exit_2(tmp_path, command):
    res = invoke(command, tmp_path)
    assert res.exit_code == 2, res.output
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and "not a file" in lines[0], res.output


def test_demo_does_not_rerun_serially_when_the_cluster_fails(tmp_path, monkeypatch):
    from specdyn import sweeps

    calls = []

    def width_consistency(**kw):
        calls.append(kw["client"])
        if kw["client"] is None:  # what the old demo did: the study started the cluster itself
            raise OSError("no ports")
        raise AssertionError("the study ran")

    def no_cluster(*args, **kwargs):
        raise OSError("no ports")

    monkeypatch.setattr(studies, "width_consistency", width_consistency)
    monkeypatch.setattr(sweeps, "_open_client", no_cluster)
    res = invoke("demo", "--out", tmp_path / "demo", "--widths", "16,32", "--steps", "4")
    assert res.exit_code == 1 and "--serial" in res.output and "no ports" in res.output, res.output
    assert calls == []  # neither a serial rerun nor any run


def test_lr_transfer_headline_prints_bounds_and_undefined_drifts(capsys):
    import xarray as xr

    from specdyn.cli import print_headline

    eta0s = np.array([0.25, 1.0, 4.0, 16.0])
    bowl = lambda c: 1.0 + (np.log2(eta0s) - np.log2(c)) ** 2  # noqa: E731
    final = xr.DataArray(np.array([[bowl(1.0), bowl(1.0)], [bowl(64.0), bowl(1.0)], [bowl(1.0), np.full(4, np.inf)]]),
                         dims=("scaling", "width", "eta0"),
                         coords={"scaling": ["mup", "ntk", "sp"], "width": [128, 512], "eta0": eta0s})
    summary = {"study": "lr_transfer", **studies.lr_transfer_headline(final)}
    print_headline(summary)
    out = capsys.readouterr().out
    rows = {l.strip("│ ").split()[0]: l for l in out.splitlines()
            if l.strip("│ ").split()[:1] in (["mup"], ["ntk"], ["sp"])}
    assert ">= 16" in rows["ntk"] and ">= 4" in rows["ntk"]  # drift >= log2(16 / 1)
    assert rows["mup"].split("│")[-2].strip() == "0"  # both optima inside the grid: drift 0
    assert "undefined" in rows["sp"]
    assert "every run diverged at N = 512" in out
