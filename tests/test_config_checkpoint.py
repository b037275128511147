"""Bad configs, bad checkpoints and Ctrl-C: each is refused (or stopped) cleanly.

Configs are validated on every assignment as at construction, over each field's
full range; a checkpoint is checked entry by entry against its config before
anything reaches the native trainer (which size-checks again); Ctrl-C stops a
long native call between steps and leaves a checkpoint that resumes.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import specdyn
from specdyn import lanczos, studies
from specdyn.config import RunConfig
from specdyn.theory import deep_monte_carlo
from specdyn.training import build_trainer

ROOT = Path(__file__).resolve().parents[1]


# ---- configs: validated on assignment, full ranges at construction ---------------------------------
@pytest.mark.parametrize("field, value", [
    ("steps", -1), ("track_every", [-3, 2]), ("dtype", "float16"), ("track_sharpness", "no"),
    ("track_hessian", 2), ("online", 1), ("gamma0", 1e300), ("gamma0", 1e-300), ("samples", 5000),
    ("bulk_steps", 3), ("width", 0),
])
def test_bad_value_is_refused_at_construction_and_on_assignment(field, value):
    with pytest.raises(ValueError, match=field):
        RunConfig(**{"steps": 10, field: value})
    cfg = RunConfig(steps=10)
    before = cfg.to_dict()
    with pytest.raises(ValueError, match=field):
        setattr(cfg, field, value)
    assert cfg.to_dict() == before  # a refused assignment changes nothing


def test_assignment_checks_the_fields_it_depends_on():
    cfg = RunConfig(steps=10, track_every=[2, 8], bulk_steps=[10])
    with pytest.raises(ValueError, match="track_every"):
        cfg.steps = 5  # step 8 would lie past the end
    cfg.track_every = 3
    with pytest.raises(ValueError, match="bulk_steps"):
        cfg.steps = 5
    cfg.bulk_steps = []
    cfg.steps = 5
    assert cfg.tracked_steps() == [0, 3, 5]
    with pytest.raises(AttributeError, match="no field"):
        cfg.stpes = 3


def test_list_fields_edited_in_place_are_caught_before_a_run():
    cfg = RunConfig(width=8, depth=2, input_dim=3, samples=4, steps=4, track_every=[1, 2])
    cfg.track_every.append(-3)
    with pytest.raises(ValueError, match="track_every"):
        specdyn.simulate(cfg)


_VALUES = {
    "steps": st.integers(-3, 40),
    "track_every": st.one_of(st.integers(-2, 50), st.lists(st.integers(-5, 45), max_size=4)),
    "bulk_steps": st.one_of(st.integers(0, 3), st.lists(st.integers(-2, 45), max_size=3)),
    "gamma0": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.booleans()),
    "track_sharpness": st.one_of(st.booleans(), st.integers(0, 2), st.text(max_size=3)),
    "dtype": st.sampled_from(["float32", "float64", "float16", "int8", ""]),
    "samples": st.integers(-1, 6000),
}


@settings(max_examples=150, deadline=None)
@given(data=st.data(), field=st.sampled_from(sorted(_VALUES)))
def test_assignment_accepts_exactly_what_construction_accepts(data, field):
    """Property: ``cfg.field = v`` succeeds exactly when the constructor accepts v with the
    other fields unchanged, and then gives the constructor's config."""
    value = data.draw(_VALUES[field])
    base = dict(steps=30, track_every=[0, 10, 30], bulk_steps=[30])
    try:
        direct = RunConfig(**{**base, field: value})
    except ValueError:
        direct = None
    cfg = RunConfig(**base)
    if direct is None:
        with pytest.raises(ValueError, match=field):
            setattr(cfg, field, value)
        assert cfg == RunConfig(**base)
    else:
        setattr(cfg, field, value)
        assert cfg == direct


def test_deep_monte_carlo_refuses_data_of_another_shape():
    cfg = RunConfig(width=64, depth=2, input_dim=4, samples=6, activation="tanh", steps=2)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="input_dim"):
        deep_monte_carlo(cfg, (rng.standard_normal((6, 5)), rng.standard_normal(6)), particles=8, replicas=1)
    with pytest.raises(ValueError, match="samples"):
        deep_monte_carlo(cfg, (rng.standard_normal((9, 4)), rng.standard_normal(9)), particles=8, replicas=1)


def test_top_eigs_refuses_a_complex_operator():
    A = np.diag(np.arange(1.0, 11.0))
    with pytest.raises(ValueError, match="complex"):
        lanczos.top_eigs(lambda X: (A @ X) * (1 + 1e-3j), n=10, k=1)
    # the same operator with real output: LAPACK's top eigenvalue
    vals, _, _ = lanczos.top_eigs(lambda X: A @ X, n=10, k=1)
    assert vals[0] == pytest.approx(np.linalg.eigvalsh(A)[-1], rel=1e-10)


# ---- checkpoints: every entry checked before the trainer sees it --------------------------------------
class _Stop(Exception):
    pass


def _ckpt_config():
    # width 40: W1's spectra come from warm-started Lanczos, so the warm blocks are not empty
    return RunConfig(width=40, depth=2, input_dim=3, samples=8, steps=20, activation="tanh", checkpoint_every=5,
                     track_every=[0, 3, 7, 11, 20], bulk_steps=[10, 20], top_k=2, track_hessian=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(config, entries of a checkpoint written at step 10, the full run's dataset)."""
    cfg = _ckpt_config()
    path = tmp_path_factory.mktemp("ckpt") / "run.ckpt"

    def stop(step, steps, loss):
        if step >= 12:
            raise _Stop

    with pytest.raises(_Stop):
        specdyn.simulate(cfg, checkpoint=path, progress=stop)
    with np.load(path) as z:
        entries = {k: z[k] for k in z.files}
    assert int(entries["step"]) == 10
    return cfg, entries, specdyn.simulate(cfg)


def _write(path, entries):
    with open(path, "wb") as fh:
        np.savez(fh, **entries)


def _transposed(a):
    return np.ascontiguousarray(a.T)


def _future_loss(a):
    a = a.copy()
    a[-1] = 0.5  # step 20 is not measured at step 10
    return a


def _shifted(a):
    a = a.copy()
    a[0] += 1e-3
    return a


TAMPER = [
    ("initial_weights_1", lambda a: a[:-1], "initial_weights_1"),
    ("initial_weights_1", _shifted, "initial_weights_1"),
    ("weights_0", _transposed, "weights_0"),
    ("weights_1", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.nan, a), "weights_1"),
    ("warm_1", lambda a: a.astype(np.float32), "warm_1"),
    ("warm_delta_1", lambda a: np.concatenate([a, a[:1]]), "warm_delta_1"),
    ("hessian_warm", lambda a: a[:-1], "hessian_warm"),
    ("finished", lambda a: np.array(True), "finished"),
    ("step", lambda a: np.array(-1), "step"),
    ("step", lambda a: np.array(25), "step"),
    ("step", lambda a: np.array(10.0), "step"),
    ("diverged_step", lambda a: np.array(3), "diverged_step"),
    ("record_loss", lambda a: a[:-1], "record_loss"),
    ("record_loss", _future_loss, "record_loss"),
    ("record_bulk_counts", lambda a: np.ones_like(a), "record_bulk_counts"),
    ("X", lambda a: a[:, :2], "X"),
    ("record_beta_f", None, "missing"),
]


@pytest.mark.parametrize("key", ["X", "Y", "weights_1", "record_loss"])
def test_a_well_formed_edit_is_refused_by_the_checksum(tmp_path, checkpoint, key):
    cfg, entries, _ = checkpoint
    bad = dict(entries)
    a = entries[key].copy()
    i = np.flatnonzero(np.isfinite(a))[0]
    a.flat[i] = -np.abs(a.flat[i]) - 0.5  # still finite, right shape and dtype: only the checksum can tell
    bad[key] = a
    path = tmp_path / "run.ckpt"
    _write(path, bad)
    with pytest.raises(ValueError, match=f"{key} differ.*checksum"):
        specdyn.simulate(cfg, checkpoint=path, resume=True)


@pytest.mark.parametrize("key, change, field", TAMPER)
def test_tampered_checkpoint_is_refused_naming_the_field(tmp_path, checkpoint, key, change, field):
    cfg, entries, _ = checkpoint
    bad = dict(entries)
    if change is None:
        del bad[key]
    else:
        bad[key] = change(entries[key])
    path = tmp_path / "run.ckpt"
    _write(path, bad)
    with pytest.raises(ValueError, match=field):
        specdyn.simulate(cfg, checkpoint=path, resume=True)


def _npy(path):
    with open(path, "wb") as fh:
        np.save(fh, np.zeros(3))


@pytest.mark.parametrize("write", [lambda p: p.write_text("not a checkpoint"), _npy])
def test_a_file_that_is_no_archive_is_refused(tmp_path, write):
    path = tmp_path / "run.ckpt"
    write(path)
    with pytest.raises(ValueError, match="archive"):
        specdyn.simulate(_ckpt_config(), checkpoint=path, resume=True)


def test_untampered_checkpoint_resumes_bit_for_bit(tmp_path, checkpoint):
    cfg, entries, full = checkpoint
    path = tmp_path / "run.ckpt"
    _write(path, entries)
    resumed = specdyn.simulate(cfg, checkpoint=path, resume=True)
    for name in full.data_vars:
        np.testing.assert_array_equal(full[name].values, resumed[name].values, err_msg=name)
    assert resumed.attrs["status"] == "ok"


def test_native_set_state_size_checks_every_array():
    cfg = _ckpt_config()
    trainer, _ = build_trainer(cfg)
    good = trainer.get_state()
    # whole columns of length fan_in, at most min(fan_in, fan_out): W0 40 x 3, W1 40 x 40, W2 1 x 40
    good["warm"] = [np.zeros(3 * 3), np.zeros(5 * 40), np.zeros(40)]
    trainer.set_state(dict(good))  # accepted
    for key, l, value in [("initial_weights", 1, np.zeros(5)), ("warm", 1, np.zeros(13)),
                          ("warm_delta", 0, np.zeros(4 * 3)), ("warm", 2, np.zeros(2 * 40))]:
        state = dict(good)
        state[key] = list(good[key])
        state[key][l] = value
        with pytest.raises(ValueError, match=key):
            trainer.set_state(state)
    for pos in [dict(step=21), dict(step=-1), dict(finished=True), dict(diverged_step=4)]:
        with pytest.raises(ValueError, match="checkpoint"):
            trainer.set_state({**good, **pos})
    assert trainer.step == 0 and not trainer.finished  # a refused state changes nothing


# ---- Ctrl-C ---------------------------------------------------------------------------------------------
_CHILD = textwrap.dedent("""
    import sys
    import specdyn
    from specdyn.config import RunConfig
    from specdyn.theory import two_layer_monte_carlo
    what, path = sys.argv[1], sys.argv[2]
    if what == "simulate":
        cfg = RunConfig(width=64, depth=2, input_dim=4, samples=16, steps=10**8, track_every=10**8,
                        track_sharpness=False, checkpoint_every=int(sys.argv[3]))
        print("started", flush=True)
        specdyn.simulate(cfg, checkpoint=path if cfg.checkpoint_every else None)
    else:
        cfg = RunConfig(width=64, depth=1, input_dim=8, samples=16, activation="tanh", steps=20000,
                        track_every=20000)
        print("started", flush=True)
        two_layer_monte_carlo(cfg, particles=1 << 16, replicas=1)
""")

# generous: a run that ignores Ctrl-C goes on for minutes; one that polls stops in well under a second
_STOP_BOUND_S = 20


def _interrupt(args, ready=lambda: True):
    # the specdyn under test (installed, or the in-tree build on PYTHONPATH), not the bare source tree
    package_parent = str(Path(specdyn.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_parent, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "started"
        t0 = time.monotonic()
        while not ready() and time.monotonic() - t0 < 600:
            time.sleep(0.05)
        time.sleep(1.0)  # well inside the native loop
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=_STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("Ctrl-C did not stop the native loop")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err[-2000:]


@pytest.mark.parametrize("what", ["simulate", "monte_carlo"])
def test_ctrl_c_stops_a_long_native_call(tmp_path, what):
    _interrupt([what, tmp_path / "unused.ckpt", 0])


def test_ctrl_c_leaves_a_checkpoint_that_resumes(tmp_path):
    path = tmp_path / "run.ckpt"
    _interrupt(["simulate", path, 20000], ready=path.exists)
    assert path.exists()
    cfg = RunConfig(width=64, depth=2, input_dim=4, samples=16, steps=10**8, track_every=10**8,
                    track_sharpness=False, checkpoint_every=20000)
    with np.load(path) as z:
        start = int(z["step"])
    assert start > 0 and start % 20000 == 0
    seen = []

    def stop(step, steps, loss):
        seen.append(step)
        raise _Stop

    with pytest.raises(_Stop):
        specdyn.simulate(cfg, checkpoint=path, resume=True, progress=stop)
    assert seen and seen[0] >= start  # resumed from the checkpoint, not from step 0


# ---- honest summaries: an optimum off the grid or every run diverged is never a drift of 0 ----------
ETA0S = np.array([0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
WIDTHS = (128, 256, 512, 1024)


def _final_loss(curves: dict):
    """final_loss(scaling, width, eta0) from {scaling: {width: losses over ETA0S}} (inf: diverged)."""
    import xarray as xr

    scalings = list(curves)
    data = np.array([[curves[sc][w] for w in WIDTHS] for sc in scalings], dtype=float)
    return xr.DataArray(data, dims=("scaling", "width", "eta0"),
                        coords={"scaling": scalings, "width": list(WIDTHS), "eta0": ETA0S})


def _bowl(center: float, diverge_from: float = np.inf):
    """A loss curve with its minimum at eta0 = center, diverged at and above diverge_from."""
    loss = 1.0 + (np.log2(ETA0S) - np.log2(center)) ** 2
    return np.where(ETA0S >= diverge_from, np.inf, loss)


def test_lr_transfer_drift_is_undefined_when_every_run_of_a_width_diverged():
    inf = np.inf
    final = _final_loss({
        "mup": {w: _bowl(2.0) for w in WIDTHS},
        "sp": {128: _bowl(0.5, diverge_from=2.0), 256: _bowl(1.0, diverge_from=4.0),
               512: np.full(7, inf), 1024: np.full(7, inf)},
    })
    head = studies.lr_transfer_headline(final)
    # muP: the NumPy argmin of every curve is 2, inside the grid -> drift 0 exactly
    for w in WIDTHS:
        assert head["optimal_eta0"]["mup"][w] == ETA0S[np.argmin(_bowl(2.0))] == 2.0
    assert head["drift_log2"]["mup"] == 0.0 and head["drift_note"]["mup"] is None
    # SP: no optimum at 512 and 1024 -> the drift is undefined, not 0, and says why
    assert np.isnan(head["optimal_eta0"]["sp"][512]) and np.isnan(head["optimal_eta0"]["sp"][1024])
    assert np.isnan(head["drift_log2"]["sp"])
    assert "512" in head["drift_note"]["sp"] and "1024" in head["drift_note"]["sp"]


def test_lr_transfer_optimum_at_a_grid_edge_is_a_bound():
    final = _final_loss({
        "ntk": {128: _bowl(2.0), 256: _bowl(2.0), 512: _bowl(64.0), 1024: _bowl(64.0)},  # past the top
        "sp": {128: _bowl(1.0), 256: _bowl(0.5), 512: _bowl(1 / 16), 1024: _bowl(1 / 16)},  # below the bottom
    })
    head = studies.lr_transfer_headline(final)
    assert head["optimum_bound"]["ntk"][512] == ">= 16" and head["optimum_bound"]["ntk"][128] is None
    assert head["optimum_bound"]["sp"][1024] == "<= 0.25"
    # the true drift is at least log2 of the largest lower end over the smallest upper end
    assert np.isnan(head["drift_log2"]["ntk"])
    assert head["drift_bound"]["ntk"][0] == pytest.approx(np.log2(16.0 / 2.0))
    assert head["drift_bound"]["ntk"][1] == np.inf
    assert head["drift_bound"]["sp"][0] == pytest.approx(np.log2(1.0 / 0.25))
    assert ">=" in head["drift_note"]["sp"]


def test_a_free_rate_fit_that_fails_is_recorded(monkeypatch):
    import scipy.optimize

    def no_convergence(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found: maxfev reached")

    monkeypatch.setattr(scipy.optimize, "curve_fit", no_convergence)
    widths, edges = [16.0, 32.0, 64.0], [2.3, 2.2, 2.15]
    fit = studies._fit_edge(widths, edges)
    assert not fit["rate_fitted"] and "did not converge" in fit["rate_fit_failure"]
    # the fixed-rate fit reported instead is the least-squares one
    x = np.asarray(widths)
    A = np.stack([np.ones_like(x), x ** (-2 / 3)], axis=1)
    e, a = np.linalg.lstsq(A, np.asarray(edges), rcond=None)[0]
    assert fit["edge_inf"] == pytest.approx(e) and fit["amplitude"] == pytest.approx(a)


def test_limit_theory_raises_when_a_covering_theory_fails_and_explains_when_none_covers():
    ok = RunConfig(width=64, depth=2, input_dim=4, samples=8, steps=300_000, track_every=100_000)
    with pytest.raises(ValueError, match="steps"):  # was (None, "theory failed: ...")
        studies.limit_theory(ok)
    th, why = studies.limit_theory(ok.replace(activation="tanh"))
    assert th is None and "linear" in why


@pytest.mark.parametrize("field", ["width", "input_dim", "output_dim", "samples"])
def test_sizes_past_a_cpp_int_are_refused_naming_the_field(field):
    with pytest.raises(ValueError, match=f"{field} must be an integer in \\[1, 2147483647\\]"):
        RunConfig(**{field: 2**63})


def test_a_run_larger_than_the_machine_is_refused_before_any_work():
    # 300000^2 doubles per hidden matrix (720 GB): refused by simulate up front, naming the sizes
    cfg = RunConfig(width=300_000, depth=2, input_dim=4, samples=8, steps=2, top_k=2)
    with pytest.raises(ValueError, match="width = 300000.*GiB; this machine has"):
        specdyn.simulate(cfg)
