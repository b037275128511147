"""Device training loop and device DMFT mode solver: skipped where no CUDA device is usable (CI has none).

The same algorithms are checked on the CPU in test_device_emulation.py (host twin of
the launcher); here the CUDA kernels themselves are held against the CPU engine and
the compressed CPU solver.
"""
import importlib

import numpy as np
import pytest

import specdyn

from device_runs import assert_same_run

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not specdyn.gpu_available(), reason="no usable CUDA device")]

one_bulk_mod = importlib.import_module("specdyn.theory.one_bulk")


def _cuda():
    from specdyn.backend import cuda_module

    return cuda_module()


def _assert_datasets_close(a, b, tol):
    # overlaps: singular vectors, to about residual / gap (see device_runs.assert_same_run)
    assert_same_run(a, b, tol, 1e-6 if tol < 1e-6 else 2e-3)


def test_device_training_100_steps_float64_matches_the_cpu_run():
    # svd_tol: every value certified on both paths (the default tracking certificate resolves
    # clustered values only to a tenth of their spacing, and their vectors not at all)
    cfg = specdyn.RunConfig(width=96, depth=2, input_dim=8, samples=24, steps=100, eta0=0.3, gamma0=1.0,
                            track_every=10, bulk_steps=[50], svd_tol=1e-12)
    a = specdyn.simulate(cfg)
    b = specdyn.simulate(cfg, device="cuda")
    assert b.attrs["status"] == "ok" and b.attrs["device"] == "cuda"
    _assert_datasets_close(a, b, 1e-8)


@pytest.mark.parametrize("case", [
    dict(width=100, depth=3, activation="tanh", scaling="ntk", dtype="float64", eta0=0.5),
    dict(width=70, depth=2, activation="relu", scaling="sp", dtype="float64", eta0=0.05),
    dict(width=130, depth=3, activation="tanh", scaling="mup", dtype="float32", eta0=0.5),
], ids=["tanh-ntk-f64", "relu-sp-f64", "tanh-mup-f32"])
def test_device_training_nonlinear_and_float32(case):
    # widths that are not multiples of the 64 x 64 GEMM tiles
    cfg = specdyn.RunConfig(input_dim=9, samples=33, steps=40, gamma0=1.0,
                            svd_tol=1e-12 if case["dtype"] == "float64" else None, **case)
    a = specdyn.simulate(cfg)
    b = specdyn.simulate(cfg, device="cuda")
    _assert_datasets_close(a, b, 2e-4 if cfg.dtype == "float32" else 1e-8)


def test_device_initial_weights_equal_the_cpu_streams_bit_for_bit():
    from specdyn.training import build_trainer, device_spec

    for dtype in ("float64", "float32"):
        cfg = specdyn.RunConfig(width=257, depth=2, input_dim=7, samples=5, seed=5, dtype=dtype)
        tr, (X, Y) = build_trainer(cfg)
        dt = np.dtype(dtype)
        dev = _cuda().device_trainer(device_spec(cfg), X.astype(dt), Y.astype(dt))
        for layer, w in enumerate(tr.get_state()["weights"]):
            np.testing.assert_array_equal(dev.weights(layer, dt == np.float32), w)


def test_device_divergence_stops_at_the_cpu_step():
    cfg = specdyn.RunConfig(width=64, depth=2, input_dim=5, samples=12, steps=80, eta0=200.0, track_every=5)
    a = specdyn.simulate(cfg)
    b = specdyn.simulate(cfg, device="cuda")
    assert a.attrs["status"] == b.attrs["status"] == "diverged"
    assert a.attrs["diverged_step"] == b.attrs["diverged_step"]


def test_device_trainer_equals_its_host_twin():
    from specdyn import _core
    from specdyn.data import for_run
    from specdyn.training import device_spec

    cfg = specdyn.RunConfig(width=150, depth=3, input_dim=9, samples=40, activation="tanh", eta0=0.4)
    X, Y = for_run(cfg, None)
    spec = device_spec(cfg)
    dev = _cuda().device_trainer(spec, X, Y)
    host = _core.device_emulation.device_trainer(spec, X, Y)
    for t in (dev, host):
        t.run(30)
        t.evaluate()
    np.testing.assert_allclose(dev.losses(), host.losses(), rtol=1e-11)
    np.testing.assert_allclose(dev.frobenius_norms(), host.frobenius_norms(), rtol=1e-12)


def test_device_dmft_curves_match_the_cpu_solver():
    cfg = specdyn.RunConfig(width=1000, depth=2, input_dim=6, samples=20, gamma0=2.0, eta0=0.1, steps=200,
                            track_every=10, top_k=3)
    a = specdyn.theory.one_bulk(cfg, nodes=64, history_tol=0.0)
    b = specdyn.theory.one_bulk(cfg, nodes=64, history_tol=0.0, device="cuda")
    assert b.attrs["device"] == "cuda"
    for name in ("loss", "beta_f", "normalized_sharpness", "C_w", "C_q", "C_w_two_time", "C_q_two_time"):
        np.testing.assert_allclose(b[name].values, a[name].values, rtol=1e-10, atol=1e-12, err_msg=name)
    for name in ("singular_values", "delta_singular_values"):
        x, y = a[name].values, b[name].values
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=name)
        np.testing.assert_allclose(y[np.isfinite(y)], x[np.isfinite(x)], rtol=1e-8, err_msg=name)


def test_device_dmft_equals_its_host_twin_bit_for_bit():
    """No FMA on either side (--fmad=false, -ffp-contract=off) and the same reduction order."""
    from specdyn import _core

    rng = np.random.default_rng(0)
    s, w = one_bulk_mod.quarter_circle_nodes(40, 1.0)
    a0, B0 = one_bulk_mod.limit_initial(s, 5, 1.0, 1.0)
    X = rng.standard_normal((17, 5))
    y = X @ rng.standard_normal(5) / np.sqrt(5)
    args = (s, w, a0, B0, X, y, 0.3, 1.5, 60, [0, 30, 60])
    dev = _cuda().dmft_direct(*args)
    host = _core.device_emulation.dmft_direct(*args)
    for key in ("loss", "beta_f", "Cw", "Cq", "Cqm", "mm", "YY", "BB", "hist_a", "hist_q"):
        np.testing.assert_array_equal(dev[key], host[key], err_msg=key)
