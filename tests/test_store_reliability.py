"""Stores a hostile user cannot break: writes replace only what they name, atomically;
damage is detected and named; nested groups are listed; concurrent readers never see a torn run;
checkpoint temporaries are never written through a planted link; store errors exit with one line."""
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import specdyn
from specdyn import storage
from specdyn.cli import app
from specdyn.config import RunConfig
from specdyn.sweeps import run_group
from test_storage import schema_dataset

PACKAGE_PARENT = Path(specdyn.__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(res):
    lines = [l for l in res.output.splitlines() if l.strip()]
    return res.exit_code == 2 and "Traceback" not in res.output and len(lines) == 1


def two_runs(store):
    a, b = schema_dataset(seed=1), schema_dataset(seed=2)
    storage.save(a, store, "runs/a")
    storage.save(b, store, "runs/b")
    return {"runs/a": a, "runs/b": b}


def assert_runs_intact(store, runs):
    assert storage.completed_groups(store) == sorted(runs)
    for g, ds in runs.items():
        xr.testing.assert_identical(storage.load(store, g), ds)
    assert storage.verify(store) == []


def first_chunk(group_dir: Path, var: str) -> Path:
    return min(p for p in (group_dir / var / "c").rglob("*") if p.is_file())


def hidden_entries(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------------
# 1. a write never deletes what it did not name
# ---------------------------------------------------------------------------------
def test_root_save_refuses_a_store_holding_runs(tmp_path):
    store = tmp_path / "sweep.zarr"
    runs = two_runs(store)
    with pytest.raises(ValueError, match="refusing to replace the root group.*runs"):
        storage.save(schema_dataset(seed=3), store)
    with pytest.raises(ValueError, match="refusing to replace group 'runs'.*a, b"):
        storage.save(schema_dataset(seed=3), store, group="runs")
    assert_runs_intact(store, runs)
    assert hidden_entries(store) == [] and hidden_entries(store / "runs") == []


def test_root_save_refuses_a_foreign_folder(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.tex").write_text("months of work")
    with pytest.raises(ValueError, match="not a Zarr group.*thesis.tex"):
        storage.save(schema_dataset(), folder)
    assert (folder / "thesis.tex").read_text() == "months of work"


def test_cli_run_out_refuses_a_sweep_store(tmp_path):
    store = tmp_path / "sweep.zarr"
    runs = two_runs(store)
    cfg = tmp_path / "one.toml"
    cfg.write_text("[run]\nwidth = 16\nsteps = 4\ntrack_every = 2\ntop_k = 2\n")
    res = invoke("run", cfg, "--out", store, "--no-progress")
    assert one_line_error(res), res.output
    assert "refusing to replace the root group" in res.output
    assert_runs_intact(store, runs)


def test_replacing_a_run_keeps_its_siblings(tmp_path):
    store = tmp_path / "s.zarr"
    runs = two_runs(store)
    runs["runs/a"] = schema_dataset(seed=7)
    storage.save(runs["runs/a"], store, "runs/a")
    assert_runs_intact(store, runs)


# ---------------------------------------------------------------------------------
# 2. a failed overwrite leaves the previous group
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_failed_overwrite_keeps_the_previous_group(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(storage, "_LIBC", [None])
    store = tmp_path / "s.zarr"
    runs = two_runs(store)
    bad = schema_dataset(seed=9)
    bad["objects"] = ("step", np.array([{}] * bad.sizes["step"], dtype=object))
    with pytest.raises(ValueError):
        storage.save(bad, store, "runs/a")
    assert_runs_intact(store, runs)
    assert hidden_entries(store / "runs") == []  # the temporary is gone
    runs["runs/a"] = schema_dataset(seed=10)
    storage.save(runs["runs/a"], store, "runs/a")  # a good overwrite, by either swap
    assert_runs_intact(store, runs)
    assert hidden_entries(store / "runs") == []


# ---------------------------------------------------------------------------------
# 3. damage is detected and named
# ---------------------------------------------------------------------------------
def _damage_cases():
    def delete_chunk(var):
        return lambda g: os.remove(g / var / "c" / "0")

    def garble(rel):
        return lambda g: (g / rel).write_text('{"zarr_format": 3, "node_')

    return {
        "loss chunk deleted": (delete_chunk("loss"), "'loss' has 0 chunk"),
        "step chunk deleted": (delete_chunk("step"), "'step' has 0 chunk"),
        "array deleted": (lambda g: shutil.rmtree(g / "weight_norm"), "'weight_norm' is missing"),
        "array metadata garbled": (garble("loss/zarr.json"), "'loss'"),
        "group metadata garbled": (garble("zarr.json"), "zarr.json is not valid JSON"),
    }


@pytest.mark.parametrize("case", list(_damage_cases()))
def test_damage_is_named(tmp_path, case):
    damage, reason = _damage_cases()[case]
    store = tmp_path / "s.zarr"
    runs = two_runs(store)
    damage(store / "runs" / "a")
    with pytest.raises(storage.DamagedGroupError, match="group 'runs/a'") as err:
        storage.load(store, "runs/a")
    assert reason in str(err.value)
    report = storage.verify(store)
    assert [g for g, _ in report] == ["runs/a"] and reason in report[0][1]
    assert storage.verify(store, "runs/b") == []
    xr.testing.assert_identical(storage.load(store, "runs/b"), runs["runs/b"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(var=st.sampled_from(["loss", "step", "singular_values", "delta_singular_values", "layer", "beta_f"]),
       where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_any_flipped_bit_in_a_chunk_is_detected(tmp_path_factory, var, where, bit):
    store = tmp_path_factory.mktemp("flip") / "s.zarr"
    ds = schema_dataset(seed=4)
    storage.save(ds, store, "g")
    chunk = first_chunk(store / "g", var)
    data = bytearray(chunk.read_bytes())
    data[int(where * len(data))] ^= 1 << bit
    chunk.write_bytes(bytes(data))
    with pytest.raises(storage.DamagedGroupError, match=f"'{var}': a chunk fails its CRC32C checksum"):
        storage.load(store, "g")
    assert [g for g, _ in storage.verify(store)] == ["g"]


def test_values_changed_behind_valid_checksums_are_detected(tmp_path):
    # a chunk of another (valid) write put in place: checksums pass, the recorded hash does not
    store = tmp_path / "s.zarr"
    storage.save(schema_dataset(seed=1), store, "a")
    storage.save(schema_dataset(seed=2), store, "b")
    shutil.copy(store / "b" / "loss" / "c" / "0", store / "a" / "loss" / "c" / "0")
    with pytest.raises(storage.DamagedGroupError, match="'loss': its values differ"):
        storage.load(store, "a")


def test_sweep_resume_redoes_a_damaged_run(tmp_path):
    base = RunConfig(width=16, depth=2, top_k=4, steps=4)
    calls = []

    def tiny_run(config):
        calls.append(config.seed)
        ds = schema_dataset(seed=config.seed)
        ds.attrs["config"] = config.to_json()
        return ds

    store = tmp_path / "s.zarr"
    first = specdyn.sweep(tiny_run, {"seeds": [0, 1]}, store, client="serial", progress=False, base=base)
    assert first["completed"] == 2 and first["damaged"] == {}
    g0 = run_group(base.replace(seed=0))
    os.remove(store / g0 / "loss" / "c" / "0")
    again = specdyn.sweep(tiny_run, {"seeds": [0, 1]}, store, client="serial", progress=False, base=base)
    assert list(again["damaged"]) == [g0] and "'loss'" in again["damaged"][g0]
    assert again["completed"] == 1 and again["skipped"] == 1
    assert sorted(calls[:2]) == [0, 1] and calls[2:] == [0]  # only the damaged run was run again
    assert storage.verify(store) == []
    np.testing.assert_array_equal(storage.load(store, g0)["loss"].values, schema_dataset(seed=0)["loss"].values)


def test_sweep_records_a_run_that_cannot_be_stored(tmp_path):
    base = RunConfig(width=16, depth=2, top_k=4, steps=4)

    def unstorable(config):
        ds = schema_dataset(seed=config.seed)
        ds["objects"] = ("step", np.array([{}] * ds.sizes["step"], dtype=object))
        return ds

    summary = specdyn.sweep(unstorable, {"seeds": [0]}, tmp_path / "s.zarr", client="serial", progress=False,
                            base=base)
    (group, why), = summary["failed"].items()
    assert summary["completed"] == 0 and "could not store the run" in why
    assert storage.completed_groups(tmp_path / "s.zarr") == []


# ---------------------------------------------------------------------------------
# 5. nested groups; hidden temporaries are never listed
# ---------------------------------------------------------------------------------
def test_nested_groups_are_listed(tmp_path):
    store = tmp_path / "s.zarr"
    outer, inner, root = schema_dataset(seed=1), schema_dataset(seed=2), schema_dataset(seed=3)
    storage.save(root, store)
    storage.save(outer, store, "r")
    storage.save(inner, store, "r/sub")
    assert storage.completed_groups(store) == ["", "r", "r/sub"]
    for g, ds in {"": root, "r": outer, "r/sub": inner}.items():
        xr.testing.assert_identical(storage.load(store, g or None), ds)
    with pytest.raises(ValueError, match="refusing to replace group 'r'.*sub"):
        storage.save(schema_dataset(seed=4), store, "r")
    # leftovers of an interrupted save (hidden names) are not runs
    shutil.copytree(store / "r" / "sub", store / "r" / ".tmp-sub-0123")
    shutil.copytree(store / "r" / "sub", store / ".trash-r-0123")
    assert storage.completed_groups(store) == ["", "r", "r/sub"]
    assert storage.verify(store) == []
    with pytest.raises(ValueError, match="group"):
        storage.save(outer, store, "r/.tmp-sub-0123")


# ---------------------------------------------------------------------------------
# 4. concurrent readers never see a torn run
# ---------------------------------------------------------------------------------
WRITER = textwrap.dedent('''
    import sys
    sys.path[:0] = [{tests!r}, {package!r}]
    from pathlib import Path
    from specdyn import storage
    from test_storage import schema_dataset
    if not {exchange!r}:
        storage._LIBC[:] = [None]  # the two-rename swap
    versions = [schema_dataset(seed=1), schema_dataset(seed=2)]
    stop, count = Path({stop!r}), Path({count!r})
    i = 0
    while not stop.exists():
        storage.save(versions[i % 2], {store!r}, "g")
        i += 1
        count.write_text(str(i))
''')


def concurrent_reads(tmp_path, loads: int, exchange: bool) -> dict:
    """A writer process re-saves group g (two versions, in turn) while this process loads it."""
    store = tmp_path / "s.zarr"
    versions = [schema_dataset(seed=1), schema_dataset(seed=2)]
    storage.save(versions[0], store, "g")
    stop, count = tmp_path / "stop", tmp_path / "count"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(Path(__file__).parent), package=str(PACKAGE_PARENT),
                                    exchange=exchange, stop=str(stop), count=str(count), store=str(store)))
    writer = subprocess.Popen([sys.executable, str(script)])
    counts = {"loads": 0, "torn": 0, "errors": 0, "not_complete": 0, "seen": set(), "saves": 0}
    try:
        deadline = time.monotonic() + 300

        def saves() -> int:
            return int(count.read_text() or 0) if count.exists() else 0

        # enough loads, and the writer really replaced the group meanwhile (a loaded machine slows it)
        while (counts["loads"] < loads or saves() < 5) and time.monotonic() < deadline:
            assert writer.poll() is None, "the writer died"
            if not storage.is_complete(store, "g"):
                counts["not_complete"] += 1
                continue
            try:
                ds = storage.load(store, "g")
            except ValueError as exc:
                counts["errors"] += 1
                counts.setdefault("messages", []).append(str(exc))
                counts["loads"] += 1
                continue
            counts["loads"] += 1
            match = [i for i, v in enumerate(versions) if ds.identical(v)]
            if match:
                counts["seen"].add(match[0])
            else:
                counts["torn"] += 1
                differ = [n for n in ds.variables if not any(ds[n].identical(v[n]) for v in versions
                                                             if n in v.variables)]
                counts.setdefault("messages", []).append(f"torn: variables {differ}, attrs {ds.attrs}")
    finally:
        stop.write_text("")
        writer.wait(timeout=60)
    counts["saves"] = int(count.read_text()) if count.exists() else 0
    return counts


def check_no_torn_reads(counts, loads):
    # the writer really replaced the group while we read (both versions seen, many saves)
    assert counts["seen"] == {0, 1} and counts["saves"] >= 5, counts
    assert counts["loads"] >= loads
    assert counts["torn"] == 0 and counts["errors"] == 0, (counts, counts.get("messages"))


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_concurrent_readers_never_see_a_torn_run(tmp_path, exchange):
    counts = concurrent_reads(tmp_path, 120, exchange)
    check_no_torn_reads(counts, 120)


@pytest.mark.slow
@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_concurrent_readers_never_see_a_torn_run_long(tmp_path, exchange):
    counts = concurrent_reads(tmp_path, 600, exchange)
    print({k: v for k, v in counts.items() if k != "messages"})
    check_no_torn_reads(counts, 600)


# ---------------------------------------------------------------------------------
# 13. checkpoint temporaries are never written through a planted link
# ---------------------------------------------------------------------------------
class _Stop(Exception):
    pass


def test_checkpoint_temporary_does_not_follow_a_planted_link(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    (shared / "x.ckpt.tmp").symlink_to(victim)
    cfg = RunConfig(width=16, depth=2, input_dim=4, samples=8, steps=12, track_every=3, top_k=2,
                    checkpoint_every=2)

    def stop(step, steps, loss):
        if step >= 7:
            raise _Stop  # an interrupted run

    with pytest.raises(_Stop):
        specdyn.simulate(cfg, checkpoint=shared / "x.ckpt", progress=stop)
    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in shared.iterdir()) == ["x.ckpt", "x.ckpt.tmp"]  # no stray temporaries
    with np.load(shared / "x.ckpt") as z:
        assert str(z["config"]) == cfg.to_json()
    full = specdyn.simulate(cfg)
    resumed = specdyn.simulate(cfg, checkpoint=shared / "x.ckpt", resume=True)
    np.testing.assert_array_equal(full["loss"].values, resumed["loss"].values)
    assert victim.read_bytes() == b"precious"


# ---------------------------------------------------------------------------------
# 12. store errors in the CLI: one line on stderr, exit code 2
# ---------------------------------------------------------------------------------
def test_cli_run_out_under_a_file(tmp_path):
    cfg = tmp_path / "one.toml"
    cfg.write_text("[run]\nwidth = 16\nsteps = 4\ntrack_every = 2\ntop_k = 2\n")
    (tmp_path / "file.txt").write_text("")
    res = invoke("run", cfg, "--out", tmp_path / "file.txt" / "x.zarr", "--no-progress")
    assert one_line_error(res) and "is a file" in res.output, res.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_cli_run_out_in_a_read_only_folder(tmp_path):
    cfg = tmp_path / "one.toml"
    cfg.write_text("[run]\nwidth = 16\nsteps = 4\ntrack_every = 2\ntop_k = 2\n")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    res = invoke("run", cfg, "--out", locked / "x.zarr", "--no-progress")
    assert one_line_error(res) and "not writable" in res.output, res.output


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_cli_run_out_on_a_read_only_file_system(tmp_path):
    cfg = tmp_path / "one.toml"
    cfg.write_text("[run]\nwidth = 16\nsteps = 4\ntrack_every = 2\ntop_k = 2\n")
    res = invoke("run", cfg, "--out", "/proc/specdyn-test.zarr", "--no-progress")
    assert one_line_error(res) and "not writable" in res.output, res.output


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_text("not a store"), "is a file"),
    (lambda p: p.mkdir(), "does not exist"),
    (lambda p: (p.mkdir(), (p / "zarr.json").write_text("{garbled")), "not valid JSON"),
], ids=["file", "empty folder", "garbled zarr.json"])
def test_cli_plot_on_a_non_store(tmp_path, make, words):
    target = tmp_path / "thing.zarr"
    make(target)
    res = invoke("plot", target)
    assert one_line_error(res) and words in res.output, res.output


def test_cli_plot_names_a_damaged_run(tmp_path):
    store = tmp_path / "s.zarr"
    two_runs(store)
    os.remove(store / "runs" / "b" / "loss" / "c" / "0")
    res = invoke("plot", store, "--out", tmp_path)
    assert one_line_error(res) and "'runs/b'" in res.output and "'loss'" in res.output, res.output


@pytest.mark.parametrize("address", ["not an address::", "tcp://127.0.0.1:9"], ids=["malformed", "unreachable"])
def test_cli_sweep_bad_scheduler(tmp_path, address):
    cfg = tmp_path / "grid.toml"
    cfg.write_text("[run]\nwidth = 16\nsteps = 2\ntop_k = 2\n[grid]\nseeds = [0, 1]\n")
    res = invoke("sweep", cfg, "--scheduler", address)
    assert one_line_error(res) and "scheduler" in res.output, res.output
    assert not (tmp_path / "grid.zarr").exists()  # no work started


# ---------------------------------------------------------------------------------
# 14. the default local cluster accepts only this process
# ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_local_cluster_is_loopback_tls_only():
    from distributed import Client

    from specdyn.sweeps import _open_client

    cl, cleanup = _open_client(None, 1, 1)
    try:
        address = cl.scheduler.address
        assert address.startswith("tls://127.0.0.1:"), address
        assert cl.submit(int, "7").result() == 7
        with pytest.raises((OSError, TypeError)):
            Client(address, timeout=3)  # no certificate of this cluster: refused
        with pytest.raises(OSError):
            Client(address.replace("tls://", "tcp://"), timeout=3)
    finally:
        cleanup()


def test_a_group_name_too_long_for_the_file_system_is_one_clear_error(tmp_path):
    import xarray as xr

    ds = xr.Dataset({"loss": (("step",), np.arange(3.0))})
    with pytest.raises(ValueError, match="at most 200 characters"):
        storage.save(ds, tmp_path / "s.zarr", "runs/" + "x" * 201)
    assert not (tmp_path / "s.zarr").exists()  # refused before anything is written
    storage.save(ds, tmp_path / "s.zarr", "runs/" + "x" * 200)
    xr.testing.assert_identical(storage.load(tmp_path / "s.zarr", "runs/" + "x" * 200), ds)


def test_cli_verify_reports_a_damaged_run_and_passes_a_clean_store(tmp_path):
    import xarray as xr

    store = tmp_path / "s.zarr"
    for g in ("runs/a", "runs/b"):
        storage.save(xr.Dataset({"loss": (("step",), np.arange(4.0))}), store, g)
    res = invoke("verify", store)
    assert res.exit_code == 0 and "2 complete run(s)" in res.output, res.output
    chunk = next(p for p in (store / "runs" / "a" / "loss").rglob("*") if p.is_file() and p.parent.name == "c"
                 or p.name == "c" and p.is_file())
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 1
    chunk.write_bytes(bytes(data))
    res = invoke("verify", store)
    assert res.exit_code == 1 and "damaged: runs/a" in res.output and "runs/b" not in res.output, res.output
    res = invoke("verify", tmp_path / "missing.zarr")
    assert one_line_error(res), res.output
    (tmp_path / "empty").mkdir()
    res = invoke("verify", tmp_path / "empty")
    assert one_line_error(res) and "not a Zarr store" in res.output, res.output


def test_an_edited_attribute_is_damage_and_write_attrs_keeps_the_checksum(tmp_path):
    import json

    import xarray as xr

    store = tmp_path / "s.zarr"
    ds = xr.Dataset({"loss": (("step",), np.arange(4.0))}, attrs={"status": "diverged", "diverged_step": 3})
    storage.save(ds, store, "runs/a")
    storage.write_attrs(store, {"note": "checked by hand"}, "runs/a")  # through the API: still intact
    assert storage.verify(store) == []
    assert storage.load(store, "runs/a").attrs["note"] == "checked by hand"
    meta_path = store / "runs" / "a" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["status"] = "ok"  # valid JSON, a plausible value: only the checksum can tell
    meta_path.write_text(json.dumps(meta))
    assert [g for g, _ in storage.verify(store)] == ["runs/a"]
    with pytest.raises(storage.DamagedGroupError, match="attributes differ"):
        storage.load(store, "runs/a")


def test_a_variable_whose_folder_is_empty_is_damage_not_a_missing_variable(tmp_path):
    # what a reader sees while a replaced copy of the group is deleted under it
    store = tmp_path / "s.zarr"
    ds = xr.Dataset({"loss": (("step",), np.arange(4.0)), "acc": (("step",), np.ones(4))})
    storage.save(ds, store, "g")
    shutil.rmtree(store / "g" / "acc")
    (store / "g" / "acc").mkdir()
    with pytest.raises(storage.DamagedGroupError, match="'acc' has no zarr.json"):
        storage.load(store, "g")
    assert [g for g, _ in storage.verify(store)] == ["g"]
