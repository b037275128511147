"""The device algorithms checked on the CPU (CI has no GPU).

The CUDA module's training loop and DMFT mode solver are written against one
launcher interface (cpp/include/specdyn/gpu_exec.hpp); ``_core.device_emulation``
runs the same launches on the host, block by block and lane by lane. These tests
hold that host twin against independent references: NumPy for the tiled GEMM,
the CPU engine for training, the compressed C++ solver for the DMFT recursion.
They also check the ``device`` argument of the public entry points.
"""
import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import specdyn
from specdyn import _core

from device_runs import assert_same_run

emu = _core.device_emulation
one_bulk_mod = importlib.import_module("specdyn.theory.one_bulk")


# ---- the device argument -------------------------------------------------------------

def test_device_must_be_a_known_name():
    cfg = specdyn.RunConfig(width=8, steps=1)
    with pytest.raises(ValueError, match="device must be one of"):
        specdyn.simulate(cfg, device="gpu")
    with pytest.raises(ValueError, match="device must be one of"):
        specdyn.theory.one_bulk(cfg, nodes=8, steps=1, device=0)


@pytest.mark.skipif(specdyn.gpu_available(), reason="a GPU is usable here")
def test_cuda_without_a_gpu_is_one_clear_runtime_error():
    cfg = specdyn.RunConfig(width=8, steps=1)
    for call in (lambda: specdyn.simulate(cfg, device="cuda"),
                 lambda: specdyn.theory.one_bulk(cfg, nodes=8, steps=1, device="cuda")):
        with pytest.raises(RuntimeError, match="a GPU was requested .* the GPU backend is off"):
            call()


@pytest.mark.parametrize("changes", [{"batch_size": 4}, {"online": True}])
def test_device_runs_full_batch_gd_only(changes):
    cfg = specdyn.RunConfig(width=8, samples=8, steps=1, **changes)
    with pytest.raises(ValueError, match="full-batch GD only"):
        specdyn.simulate(cfg, device="cuda")


def test_device_does_not_checkpoint(tmp_path):
    cfg = specdyn.RunConfig(width=8, steps=1, checkpoint_every=1)
    with pytest.raises(ValueError, match="does not checkpoint"):
        specdyn.simulate(cfg, device="cuda", checkpoint=tmp_path / "c.npz")


# ---- the tiled GEMM ----------------------------------------------------------------

def _colmajor(flat, ld, rows, cols):
    return flat.reshape(cols, ld).T[:rows, :cols]


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 140), n=st.integers(1, 140), k=st.integers(1, 70), ta=st.booleans(), tb=st.booleans(),
       pad=st.integers(0, 3), beta=st.sampled_from([0.0, 1.0, -0.5]), single=st.booleans(), seed=st.integers(0, 99))
def test_tiled_gemm_matches_numpy(m, n, k, ta, tb, pad, beta, single, seed):
    dt = np.float32 if single else np.float64
    rng = np.random.default_rng(seed)
    ra, ca = (k, m) if ta else (m, k)
    rb, cb = (n, k) if tb else (k, n)
    lda, ldb, ldc = ra + pad, rb + pad, m + pad
    A = rng.standard_normal(lda * ca).astype(dt)
    B = rng.standard_normal(ldb * cb).astype(dt)
    C = rng.standard_normal(ldc * n).astype(dt)
    if beta == 0.0:
        C[::7] = np.nan  # BLAS semantics: C is not read when beta == 0
    out = emu.gemm(ta, tb, m, n, k, dt(0.75), A, lda, B, ldb, dt(beta), C, ldc)
    opA = _colmajor(A.astype(np.float64), lda, ra, ca)
    opB = _colmajor(B.astype(np.float64), ldb, rb, cb)
    opA = opA.T if ta else opA
    opB = opB.T if tb else opB
    want = _colmajor(C.astype(np.float64), ldc, ldc, n).copy()
    old = want[:m, :n]
    want[:m, :n] = 0.75 * (opA @ opB) + (beta * old if beta != 0.0 else 0.0)
    got = _colmajor(out.astype(np.float64), ldc, ldc, n)
    tol = 1e-4 if single else 1e-12
    np.testing.assert_allclose(got[:m, :n], want[:m, :n], rtol=tol, atol=tol * (1 + np.sqrt(k)))
    # padding rows of C are untouched
    np.testing.assert_array_equal(got[m:, :], _colmajor(C.astype(np.float64), ldc, ldc, n)[m:, :])


# ---- the DMFT mode update ------------------------------------------------------------

def _mode_problem(M=16, D=3, P=10, seed=0):
    rng = np.random.default_rng(seed)
    s, w = one_bulk_mod.quarter_circle_nodes(M, 1.0)
    a0, B0 = one_bulk_mod.limit_initial(s, D, 1.0, 1.3)
    X = rng.standard_normal((P, D))
    y = X @ rng.standard_normal(D) / np.sqrt(D)
    return s, w, a0, B0, X, y


@pytest.mark.parametrize("R_finite", [False, True])
def test_direct_mode_recursion_matches_the_compressed_solver(R_finite):
    """mode_m / mode_advance and the reductions (host build) against dmft.cpp at history_tol = 0."""
    if R_finite:  # one finite network's modes: R = 1, weights 1/N
        rng = np.random.default_rng(3)
        N, D, P = 24, 3, 9
        A = rng.standard_normal((N, N)) / np.sqrt(N)
        U, s, Vt = np.linalg.svd(A)
        w = np.full(N, 1.0 / N)
        a0 = (U.T @ rng.standard_normal(N))[:, None]
        B0 = (Vt @ rng.standard_normal((N, D)))[:, :, None]
        X = rng.standard_normal((P, D))
        y = X @ rng.standard_normal(D) / np.sqrt(D)
    else:
        s, w, a0, B0, X, y = _mode_problem()
    c, g, eta0, T = 0.25, 1.2, 0.2, 30
    ref = one_bulk_mod.solve_modes(s, w, a0, B0, X, y, c, g, eta0, T, 0.0)
    got = one_bulk_mod.solve_modes_direct(emu, s, w, a0, B0, X, y, c, g, eta0, T, 0.0)
    for name in ("loss", "beta_f", "Cw", "Cq", "Cqm", "sharpness"):
        a, b = np.asarray(getattr(ref, name)), np.asarray(getattr(got, name))
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12 * np.max(np.abs(a)), err_msg=name)


def test_direct_recursion_histories_feed_the_outlier_solver():
    cfg = specdyn.RunConfig(width=512, depth=2, input_dim=4, samples=12, gamma0=2.0, eta0=0.1, steps=30, top_k=3)
    a = specdyn.theory.one_bulk(cfg, nodes=24)
    b = specdyn.theory.one_bulk(cfg, nodes=24, device="host-emulation")
    assert b.attrs["device"] == "host-emulation" and b.attrs["kind"] == "theory"
    assert np.isfinite(a.singular_values.values[-1, 0, 0])  # an outlier has escaped
    for name in a.data_vars:
        x, y = a[name].values, b[name].values
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=name)
        np.testing.assert_allclose(y[np.isfinite(y)], x[np.isfinite(x)], rtol=1e-10, atol=1e-12, err_msg=name)


# ---- the training loop --------------------------------------------------------------

CASES = [
    dict(width=40, depth=2, activation="linear", scaling="mup", dtype="float64", eta0=0.3, track_every=5,
         bulk_steps=[7]),
    dict(width=36, depth=3, activation="tanh", scaling="ntk", dtype="float64", eta0=0.5),
    dict(width=36, depth=2, activation="relu", scaling="sp", dtype="float64", eta0=0.05),
    dict(width=36, depth=3, activation="tanh", scaling="mup", dtype="float32", eta0=0.5),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['activation']}-{c['scaling']}-{c['dtype']}")
def test_emulated_device_training_matches_the_cpu_engine(case):
    # an explicit svd_tol certifies every value to it on both paths (the default tracking
    # certificate resolves clustered values only to a tenth of their spacing, and two
    # backends' roundings then stop at different points inside that)
    svd_tol = 1e-12 if case["dtype"] == "float64" else None
    cfg = specdyn.RunConfig(input_dim=5, samples=12, steps=25, gamma0=1.0, svd_tol=svd_tol, **case)
    a = specdyn.simulate(cfg)
    b = specdyn.simulate(cfg, device="host-emulation")
    assert b.attrs["status"] == "ok" and b.attrs["device"] == "host-emulation"
    _assert_same_run(a, b, cfg.dtype)


def _assert_same_run(a, b, dtype):
    # the CPU's and the emulated device's solvers agree on the overlaps to ~1e-11 (float64) and ~1e-6 (float32)
    if dtype == "float32":
        assert_same_run(a, b, 1e-6, 1e-4)
    else:
        assert_same_run(a, b, 1e-11, 1e-9)


def test_emulated_device_initial_weights_equal_the_cpu_streams_bit_for_bit():
    from specdyn.training import build_trainer, device_spec

    cfg = specdyn.RunConfig(width=33, depth=3, input_dim=7, output_dim=2, samples=5, seed=11, sigma=[1.0, 0.7, 1.3, 0.9])
    tr, (X, Y) = build_trainer(cfg)
    dev = emu.device_trainer(device_spec(cfg), X, Y)
    for layer, w in enumerate(tr.get_state()["weights"]):
        np.testing.assert_array_equal(dev.weights(layer, False), w)


def test_emulated_device_divergence_stops_at_the_cpu_step():
    cfg = specdyn.RunConfig(width=32, depth=2, input_dim=5, samples=12, steps=60, eta0=200.0, track_every=5)
    a = specdyn.simulate(cfg)
    b = specdyn.simulate(cfg, device="host-emulation")
    assert a.attrs["status"] == b.attrs["status"] == "diverged"
    assert a.attrs["diverged_step"] == b.attrs["diverged_step"]
    np.testing.assert_allclose(b.loss.values, a.loss.values, rtol=1e-12)


def _count_device_calls(monkeypatch):
    """Route device="host-emulation" through a trainer that logs its calls ((name, args) pairs)."""
    from specdyn import _device

    calls = []

    class Counting:
        def __init__(self, tr):
            self._tr = tr

        def __getattr__(self, name):
            attr = getattr(self._tr, name)
            if not callable(attr):
                return attr

            def logged(*a):
                calls.append((name, a))
                return attr(*a)

            return logged

    class Module:
        def device_trainer(self, *a):
            return Counting(emu.device_trainer(*a))

    monkeypatch.setattr(_device, "module", lambda device, what: Module())
    return calls


def test_emulated_device_spectra_come_from_the_device_krylov_solver(monkeypatch):
    # Wide enough for the Krylov plan (not the dense fallback): the spectra of W(t) are the device
    # solver's on the trainer's weights, equal to the CPU run's to the solver tolerance.
    calls = _count_device_calls(monkeypatch)
    cfg = specdyn.RunConfig(width=96, depth=2, input_dim=5, samples=12, steps=10, track_every=5, eta0=0.5,
                            activation="tanh", top_k=3, svd_tol=1e-10)
    a = specdyn.simulate(cfg)
    b = specdyn.simulate(cfg, device="host-emulation")
    solves = [args for name, args in calls if name == "top_singular" and args[0] == 1]
    # the hidden layer, once per tracked step, and its delta once per tracked step after step 0
    assert sum(not args[-1] for args in solves) == len(cfg.tracked_steps())
    assert sum(args[-1] for args in solves) == len(cfg.tracked_steps()) - 1
    np.testing.assert_allclose(b.singular_values.values, a.singular_values.values, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b.delta_singular_values.values, a.delta_singular_values.values, rtol=1e-8,
                               atol=1e-10)


def test_emulated_device_run_takes_no_host_step(monkeypatch):
    """No CPU step is run and discarded: the host Trainer only measures (NTK sharpness, bulk
    histograms) at the steps that need them, and without such quantities it is not built and
    no weights are copied off the device."""
    from specdyn import training

    built = []
    real_build = training.build_trainer

    class Measuring:
        def __init__(self, tr):
            self.tr, self.measured = tr, []

        def run(self, *a):
            raise AssertionError("the host trainer ran a training step in a device run")

        def measure(self, step, weights):
            self.measured.append(step)
            return self.tr.measure(step, weights)

        def record(self):
            return self.tr.record()

    def build(cfg, data=None, **flags):
        tr, xy = real_build(cfg, data, **flags)
        built.append(Measuring(tr))
        return built[-1], xy

    monkeypatch.setattr(training, "build_trainer", build)
    calls = _count_device_calls(monkeypatch)
    cfg = specdyn.RunConfig(width=40, depth=2, input_dim=5, samples=12, steps=12, track_every=4, eta0=0.5,
                            activation="tanh", bulk_steps=[6], svd_tol=1e-12)
    b = specdyn.simulate(cfg, device="host-emulation")
    assert len(built) == 1 and built[0].measured == [0, 4, 6, 8, 12]
    assert built[0].tr.step == 0  # measured only, never advanced
    copies = [args[0] for name, args in calls if name == "weights"]
    assert len(copies) == 5 * (cfg.depth + 1)  # W(t) copied at those five steps only
    monkeypatch.setattr(training, "build_trainer", real_build)
    _assert_same_run(specdyn.simulate(cfg), b, cfg.dtype)

    # nothing the device cannot measure: no host trainer, no weight copies
    built.clear()
    calls.clear()
    monkeypatch.setattr(training, "build_trainer", build)
    cfg = cfg.replace(track_sharpness=False, bulk_steps=[])
    b = specdyn.simulate(cfg, device="host-emulation")
    assert built == [] and not any(name == "weights" for name, _ in calls)
    monkeypatch.setattr(training, "build_trainer", real_build)
    _assert_same_run(specdyn.simulate(cfg), b, cfg.dtype)


def test_squared_overlaps_match_numpy(rng):
    V, _ = np.linalg.qr(rng.standard_normal((30, 4)))
    d = rng.standard_normal(30)
    np.testing.assert_allclose(_core.squared_overlaps(V, d), (d @ V) ** 2 / (d @ d), rtol=1e-13)
    assert np.all(np.isnan(_core.squared_overlaps(V, np.zeros(30))))  # no direction: undefined


def test_signal_means_match_numpy_and_need_an_evaluated_step():
    from specdyn.data import for_run
    from specdyn.parameterization import scales
    from specdyn.training import device_spec

    cfg = specdyn.RunConfig(width=24, depth=2, input_dim=5, samples=9, activation="tanh", eta0=0.3)
    X, Y = for_run(cfg, None)
    dev = emu.device_trainer(device_spec(cfg), X, Y)
    dev.run(3)
    with pytest.raises(RuntimeError, match="call evaluate"):
        dev.signal_means()
    dev.evaluate()
    inputs, backward = dev.signal_means()
    # NumPy forward and backward at the trainer's weights: inputs x, tanh(h^l); signals dL/dh^{l+1} * P
    W = [dev.weights(l, False) for l in range(3)]
    m = scales(cfg.scaling, cfg.width, cfg.depth, cfg.input_dim, cfg.output_dim, cfg.gamma0, cfg.eta0,
               cfg.sigma).multipliers
    H = [X]
    for l in range(2):
        H.append(np.tanh(m[l] * H[-1] @ W[l].T))
    E = (m[2] * H[2] @ W[2].T - Y) / len(X)
    signals = [E]
    for l in (2, 1):
        signals.insert(0, (m[l] * signals[0] @ W[l]) * (1 - H[l] ** 2))
    for l in range(3):
        np.testing.assert_allclose(inputs[l], H[l].mean(0), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(backward[l], signals[l].mean(0), rtol=1e-12, atol=1e-15)


def test_measure_refuses_bad_weights_and_unmeasured_steps():
    from specdyn.training import build_trainer

    cfg = specdyn.RunConfig(width=16, depth=2, input_dim=5, samples=8, steps=4, track_every=2)
    tr, _ = build_trainer(cfg)
    W = tr.get_state()["weights"]
    with pytest.raises(ValueError, match=r"weights\[1\] must have shape \(16, 16\)"):
        tr.measure(0, [W[0], W[1][:, :3], W[2]])
    with pytest.raises(ValueError, match="step 1 is neither tracked nor a bulk step"):
        tr.measure(1, W)
    tr.measure(2, W)
    assert tr.step == 0 and np.isfinite(tr.record()["normalized_sharpness"][1])
