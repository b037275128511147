"""simulate(): the training loop and its tracking against a plain NumPy loop
and LAPACK, SGD/GD identity, reproducibility across thread counts,
divergence, checkpoint/resume and bad input."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import specdyn
from specdyn import _core
from specdyn.config import RunConfig
from specdyn.data import teacher
from specdyn.parameterization import scales
from specdyn.training import build_trainer

K_WEIGHTS = 1 << 32  # rng::kWeights


def numpy_run(cfg: RunConfig, X, Y, steps: int):
    """Plain NumPy full-batch GD of the same network; returns losses and weights per step."""
    sc = scales(cfg.scaling, cfg.width, cfg.depth, cfg.input_dim, cfg.output_dim, cfg.gamma0, cfg.eta0, cfg.sigma)
    W = [_core.gaussian_f64(l.fan_out, l.fan_in, cfg.seed, K_WEIGHTS + i, l.init_std) for i, l in enumerate(sc.layers)]
    phi = {"linear": (lambda z: z, lambda h: np.ones_like(h)),
           "tanh": (np.tanh, lambda h: 1 - h**2),
           "relu": (lambda z: np.maximum(z, 0), lambda h: (h > 0).astype(float))}[cfg.activation]
    P = X.shape[0]
    losses, history = [], [[w.copy() for w in W]]
    for t in range(steps + 1):
        hs = [X]
        for l, (w, m) in enumerate(zip(W, sc.multipliers)):
            z = m * hs[-1] @ w.T
            hs.append(phi[0](z) if l < cfg.depth else z)
        r = hs[-1] - Y
        losses.append((r**2).sum() / (2 * P))
        if t == steps:
            break
        e = r / P
        grads = [None] * len(W)
        for l in range(cfg.depth, -1, -1):
            m = sc.multipliers[l]
            grads[l] = m * e.T @ hs[l]
            if l > 0:
                e = (m * e @ W[l]) * phi[1](hs[l])
        W = [w - sc.learning_rate * g for w, g in zip(W, grads)]
        history.append([w.copy() for w in W])
    return np.array(losses), history, sc


def assert_close(a, b, tol=1e-10):
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = max(1.0, np.nanmax(np.abs(b)))
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    assert np.nanmax(np.abs(a - b)) <= tol * scale


@pytest.mark.parametrize("act,scaling", [("linear", "mup"), ("tanh", "ntk"), ("relu", "sp"), ("tanh", "mup")])
def test_gd_matches_numpy_loop_and_lapack(act, scaling):
    cfg = RunConfig(width=24, depth=3, input_dim=5, output_dim=2, samples=12, activation=act, scaling=scaling,
                    gamma0=0.8, eta0=0.3 if scaling != "sp" else 0.05, steps=9, track_every=3, top_k=3,
                    bulk_steps=[9], bulk_bins=10)
    X, Y = teacher(cfg.samples, cfg.input_dim, cfg.output_dim, seed=cfg.data_seed)
    ds = specdyn.simulate(cfg)
    losses, history, sc = numpy_run(cfg, X, Y, cfg.steps)
    steps = ds.step.values
    assert list(steps) == [0, 3, 6, 9]
    assert_close(ds.loss.values, losses[steps])
    for i, t in enumerate(steps):
        for l, lay in enumerate(sc.layers):
            A = lay.normalizer * history[t][l]
            s = np.linalg.svd(A, compute_uv=False)
            k = min(cfg.top_k, len(s))
            assert_close(ds.singular_values.values[i, l, :k], s[:k], 1e-8)
            assert np.all(np.isnan(ds.singular_values.values[i, l, k:]))
            d = np.linalg.svd(lay.normalizer * (history[t][l] - history[0][l]), compute_uv=False)
            assert_close(ds.delta_singular_values.values[i, l, :k], d[:k], 1e-8)
            assert_close(ds.weight_norm.values[i, l], np.linalg.norm(A))
    # bulk histogram of the last step: all singular values, counted
    counts = ds.bulk_counts.sel(bulk_step=9).values
    for l, lay in enumerate(sc.layers):
        s = np.linalg.svd(lay.normalizer * history[9][l], compute_uv=False)
        edges = ds.bulk_edges.sel(bulk_step=9).values[l]
        ref, _ = np.histogram(s, bins=edges)
        np.testing.assert_array_equal(counts[l], ref)


@pytest.mark.parametrize("kw", [
    # rows: 1030-row products cut into blocks of 544 + 486 rows (a tail that is no whole tile)
    dict(width=1030, depth=2, input_dim=9, output_dim=3, samples=40, activation="relu"),
    # columns: 1100 samples against width 300, so the forward and backward products are cut by columns
    # (576 + 524) and the 300 x 300 weight update by rows (160 + 140)
    dict(width=300, depth=2, input_dim=7, output_dim=2, samples=1100, activation="tanh"),
], ids=["rows", "columns"])
def test_products_cut_into_fixed_blocks_match_numpy(kw):
    cfg = RunConfig(**kw, steps=2, track_every=2, top_k=1, track_sharpness=False, gamma0=1.0, eta0=0.3)
    X, Y = teacher(cfg.samples, cfg.input_dim, cfg.output_dim, seed=cfg.data_seed)
    ds = specdyn.simulate(cfg)
    losses, history, sc = numpy_run(cfg, X, Y, cfg.steps)
    assert_close(ds.loss.values, losses[ds.step.values])
    for l, lay in enumerate(sc.layers):
        assert_close(ds.weight_norm.values[-1, l], lay.normalizer * np.linalg.norm(history[-1][l]))
    # every product of the network, forward
    F = _core.nets_forward(history[-1], sc.multipliers, cfg.activation, X)
    z = X
    for l, (w, m) in enumerate(zip(history[-1], sc.multipliers)):
        z = m * z @ w.T
        if l < cfg.depth:
            z = np.maximum(z, 0) if cfg.activation == "relu" else np.tanh(z)
    assert_close(F, z)


def test_sharpness_and_overlaps_match_reference():
    cfg = RunConfig(width=16, depth=2, input_dim=4, output_dim=1, samples=10, activation="tanh", steps=4,
                    track_every=2, top_k=2, gamma0=1.0, eta0=0.5)
    X, Y = teacher(cfg.samples, cfg.input_dim, cfg.output_dim)
    ds = specdyn.simulate(cfg)
    _, history, sc = numpy_run(cfg, X, Y, cfg.steps)
    for i, t in enumerate(ds.step.values):
        W = history[t]
        K = _core.nets_ntk_gram(W, sc.multipliers, cfg.activation, X)  # checked against autograd elsewhere
        S = sc.learning_rate * np.linalg.eigvalsh(K)[-1] / cfg.samples
        assert_close(ds.normalized_sharpness.values[i], S, 1e-9)
        # overlaps of the hidden layer W1 with its mean input and mean backward signal
        h1 = np.tanh(sc.multipliers[0] * X @ W[0].T)
        h2 = np.tanh(sc.multipliers[1] * h1 @ W[1].T)
        f = sc.multipliers[2] * h2 @ W[2].T
        e = (f - Y) / cfg.samples
        g2 = (sc.multipliers[2] * e @ W[2]) * (1 - h2**2)
        U, _, Vt = np.linalg.svd(W[1])
        m_in, m_bw = h1.mean(0), g2.mean(0)
        ov_in = (Vt[:2] @ m_in) ** 2 / (m_in @ m_in)
        ov_bw = (U[:, :2].T @ m_bw) ** 2 / (m_bw @ m_bw)
        assert_close(ds.overlap_input.sel(layer="W1").values[i], ov_in, 1e-7)
        assert_close(ds.overlap_backward.sel(layer="W1").values[i], ov_bw, 1e-7)


def test_schema_and_beta_f():
    cfg = RunConfig(width=32, depth=2, input_dim=6, samples=20, steps=5, top_k=3)
    X, Y = teacher(cfg.samples, cfg.input_dim)
    ds = specdyn.simulate(cfg)
    assert ds.step.dtype == np.int64 and list(ds.layer.values) == ["W0", "W1", "W2"]
    assert list(ds["rank"].values) == [0, 1, 2] and list(ds["input"].values) == list(range(6))
    for name, dims in [("loss", ("step",)), ("singular_values", ("step", "layer", "rank")),
                       ("delta_singular_values", ("step", "layer", "rank")), ("normalized_sharpness", ("step",)),
                       ("hessian_top", ("step",)), ("weight_norm", ("step", "layer")),
                       ("overlap_input", ("step", "layer", "rank")), ("overlap_backward", ("step", "layer", "rank")),
                       ("beta_f", ("step", "input"))]:
        assert ds[name].dims == dims, name
    assert ds.attrs["kind"] == "simulation" and ds.attrs["status"] == "ok" and ds.attrs["diverged_step"] == -1
    assert ds.attrs["scaling"] == "mup" and ds.attrs["width"] == 32 and ds.attrs["seed"] == 0
    assert RunConfig.from_json(ds.attrs["config"]) == cfg
    # f(x) = beta_f . x / sqrt(D): check against the network output
    _, history, sc = numpy_run(cfg, X, Y, cfg.steps)
    W = history[-1]
    f = _core.nets_forward(W, sc.multipliers, "linear", X)[:, 0]
    assert_close(X @ ds.beta_f.values[-1] / np.sqrt(cfg.input_dim), f)
    # the readout has one singular value; the rest is NaN
    assert np.all(np.isnan(ds.singular_values.sel(layer="W2").values[:, 1:]))
    assert "beta_f" not in specdyn.simulate(cfg.replace(activation="tanh", steps=1))


def test_user_data_and_one_dimensional_targets():
    cfg = RunConfig(width=16, depth=1, input_dim=3, samples=8, steps=3)
    X, Y = teacher(8, 3, seed=5)
    a = specdyn.simulate(cfg, data=(X, Y))
    b = specdyn.simulate(cfg, data=(X, Y[:, 0]))
    np.testing.assert_array_equal(a.loss.values, b.loss.values)
    c = specdyn.simulate(cfg.replace(data_seed=5))
    np.testing.assert_array_equal(a.loss.values, c.loss.values)


def test_sgd_with_full_batch_is_gd_exactly():
    cfg = RunConfig(width=32, depth=2, input_dim=5, samples=16, steps=6, activation="tanh", top_k=2)
    gd = specdyn.simulate(cfg)
    sgd = specdyn.simulate(cfg.replace(batch_size=16))
    for name in gd.data_vars:
        np.testing.assert_array_equal(gd[name].values, sgd[name].values)
    small = specdyn.simulate(cfg.replace(batch_size=4, steps=30))
    assert not np.array_equal(small.loss.values[:7], gd.loss.values)
    assert small.loss.values[-1] < small.loss.values[0]


def test_online_training_learns():
    cfg = RunConfig(width=32, depth=2, input_dim=5, samples=64, batch_size=16, online=True, steps=40,
                    track_every=10, eta0=0.5)
    ds = specdyn.simulate(cfg)
    assert ds.attrs["status"] == "ok"
    assert ds.loss.values[-1] < 0.7 * ds.loss.values[0]


def test_teacher_is_linear_and_continues_online():
    X, Y = teacher(40, 6, 2, seed=3)
    beta = np.linalg.lstsq(X, Y, rcond=None)[0] * np.sqrt(6)
    np.testing.assert_allclose(X @ beta / np.sqrt(6), Y, atol=1e-12)
    X2, Y2 = teacher(10, 6, 2, seed=3, first=30)
    np.testing.assert_array_equal(X2, X[30:])
    np.testing.assert_array_equal(Y2, Y[30:])
    Xt, Yt = teacher(40, 6, 2, seed=3, kind="tanh")
    np.testing.assert_allclose(Yt, np.tanh(Y), atol=1e-15)
    _, Yn = teacher(40, 6, 2, seed=3, noise=0.5)
    assert 0.3 < np.std(Yn - Y) < 0.7
    assert abs(X.mean()) < 0.2 and abs(X.std() - 1) < 0.15


_RUN_SNIPPET = """
import sys, numpy as np, specdyn
cfg = specdyn.RunConfig(**eval(sys.argv[2]))
ds = specdyn.simulate(cfg)
np.savez(sys.argv[1], **{k: ds[k].values for k in ds.data_vars})
"""

# width 256: the Lanczos panel sweep goes parallel; > 10^4 parameters: threaded BLAS dots in the
# Hessian solve. Width 1030 (not a multiple of OpenBLAS's tiles): threaded OpenBLAS gives other
# bits than one thread for its products, its LAPACK and the NTK operator (96 x 3 outputs > 512:
# the Lanczos path); the trainer's fixed-block products and serial LAPACK must not.
_RUNS = {
    "w256": dict(width=256, depth=3, input_dim=16, samples=48, steps=4, activation="tanh", track_every=4,
                 top_k=3, bulk_steps=[4], track_hessian=True),
    "w256-batch": dict(width=256, depth=3, input_dim=16, samples=48, steps=4, activation="tanh", track_every=4,
                       top_k=3, batch_size=20, bulk_steps=[4], track_hessian=True),
    "w1030": dict(width=1030, depth=2, input_dim=9, samples=196, steps=2, activation="relu", track_every=1,
                  top_k=3, bulk_steps=[0, 2], output_dim=3, eta0=0.2),
}


def _same_bits_at_1_and_2_threads(tmp_path, kw):
    """simulate(RunConfig(**kw)) in a child process at 1 and at 2 OpenMP and OpenBLAS threads: every
    output has the same bits; returns the one-thread outputs."""
    outs = []
    for threads in (1, 2):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   PYTHONPATH=str(Path(specdyn.__file__).parent.parent))
        out = tmp_path / f"t{threads}.npz"
        subprocess.run([sys.executable, "-c", _RUN_SNIPPET, str(out), repr(kw)], env=env, check=True, timeout=300)
        outs.append(np.load(out))
    for k in outs[0].files:
        np.testing.assert_array_equal(outs[0][k], outs[1][k], err_msg=k)
    return outs[0]


@pytest.mark.parametrize("run", sorted(_RUNS))
def test_same_seed_same_run_at_any_thread_count(tmp_path, run):
    _same_bits_at_1_and_2_threads(tmp_path, _RUNS[run])


def test_weight_norms_and_beta_f_of_wide_layers(tmp_path):
    """A tracked layer's norm and its factor of beta_f (W^T b) come from the first sweep of its
    solve (panels of 1030 x 1030 in groups over the threads; the layers are solved top-down for
    b), the small input layer's from a read of its own: the norms match NumPy, beta_f is the
    product of the weights, and 1 and 2 threads give the same bits."""
    kw = dict(width=1030, depth=2, input_dim=7, samples=8, steps=2, activation="linear", top_k=1,
              track_sharpness=False, eta0=0.5)
    cfg = RunConfig(**kw)
    out = _same_bits_at_1_and_2_threads(tmp_path, kw)
    X, Y = teacher(cfg.samples, cfg.input_dim)
    _, history, sc = numpy_run(cfg, X, Y, cfg.steps)
    for t in range(cfg.steps + 1):
        W = history[t]
        norms = [lay.normalizer * np.linalg.norm(w) for lay, w in zip(sc.layers, W)]
        np.testing.assert_allclose(out["weight_norm"][t], norms, rtol=1e-12)
        f = _core.nets_forward(W, sc.multipliers, "linear", X)[:, 0]
        assert_close(X @ out["beta_f"][t] / np.sqrt(cfg.input_dim), f)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_weight_norms_and_beta_f_without_solves(dtype):
    """Untracked spectra: every layer is read on its own, in 16 fixed row ranges over the
    threads (1030 rows: ranges of 65, so a tail row in each). The same norms and beta_f as NumPy,
    and as the run whose solves' sweeps gave them, to rounding."""
    cfg = RunConfig(width=1030, depth=2, input_dim=7, samples=8, steps=2, activation="linear", top_k=1,
                    track_sharpness=False, eta0=0.5, dtype=dtype)
    X, Y = teacher(cfg.samples, cfg.input_dim)
    recs = []
    for spectra in (False, True):
        trainer, _ = build_trainer(cfg, (X, Y), track_spectra=spectra, track_delta=False, track_overlaps=False)
        trainer.run(cfg.steps)
        recs.append(trainer.record())
    assert np.all(np.isnan(recs[0]["singular_values"])) and np.all(np.isfinite(recs[1]["singular_values"]))
    state = build_trainer(cfg, (X, Y))[0]
    state.run(cfg.steps)
    W = [w.astype(np.float64) for w in state.get_state()["weights"]]
    sc = scales(cfg.scaling, cfg.width, cfg.depth, cfg.input_dim, cfg.output_dim, cfg.gamma0, cfg.eta0, cfg.sigma)
    norms = [lay.normalizer * np.linalg.norm(w) for lay, w in zip(sc.layers, W)]
    t = cfg.steps
    np.testing.assert_allclose(recs[0]["weight_norm"][t], norms, rtol=1e-12)
    np.testing.assert_allclose(recs[0]["weight_norm"], recs[1]["weight_norm"], rtol=1e-12)
    np.testing.assert_allclose(recs[0]["beta_f"], recs[1]["beta_f"], rtol=1e-9, atol=1e-12)
    f = _core.nets_forward(W, sc.multipliers, "linear", X)[:, 0]
    assert_close(X @ recs[0]["beta_f"][t] / np.sqrt(cfg.input_dim), f)


def test_divergence_is_recorded_not_raised():
    cfg = RunConfig(width=32, depth=2, input_dim=4, samples=8, steps=50, eta0=200.0, gamma0=1.0,
                    activation="linear")
    ds = specdyn.simulate(cfg)
    assert ds.attrs["status"] == "diverged"
    t = ds.attrs["diverged_step"]
    assert 0 < t < 50
    after = ds.step.values > t
    assert np.all(np.isnan(ds.loss.values[after]))
    assert np.all(np.isnan(ds.singular_values.values[after]))
    at = ds.step.values == t
    assert not np.isfinite(ds.loss.values[at][0]) or ds.loss.values[at][0] > cfg.divergence_bound
    assert np.all(np.isfinite(ds.loss.values[ds.step.values < t]))
    # a bound reached before non-finite values also stops the run
    low = specdyn.simulate(cfg.replace(eta0=0.1, divergence_bound=1e-6))
    assert low.attrs["status"] == "diverged" and low.attrs["diverged_step"] == 0


class _Stop(Exception):
    pass


@pytest.mark.parametrize("batch", [None, 6])
def test_checkpoint_resume_is_bit_for_bit(tmp_path, batch):
    cfg = RunConfig(width=40, depth=3, input_dim=5, samples=16, steps=30, activation="tanh", track_every=[0, 3, 7, 11, 20],
                    top_k=3, checkpoint_every=5, batch_size=batch, bulk_steps=[10, 30], track_hessian=True)
    full = specdyn.simulate(cfg)
    path = tmp_path / "run.ckpt"

    def stop(step, steps, loss):
        if step >= 17:
            raise _Stop

    with pytest.raises(_Stop):
        specdyn.simulate(cfg, checkpoint=path, progress=stop)
    assert path.exists()
    resumed = specdyn.simulate(cfg, checkpoint=path, resume=True)
    for name in full.data_vars:
        np.testing.assert_array_equal(full[name].values, resumed[name].values, err_msg=name)
    assert not path.exists()  # a finished run leaves no checkpoint behind
    with pytest.raises(_Stop):
        specdyn.simulate(cfg, checkpoint=path, progress=stop)
    with pytest.raises(ValueError, match="different config"):
        specdyn.simulate(cfg.replace(seed=1), checkpoint=path, resume=True)


@pytest.mark.parametrize("changes,field", [
    (dict(width=0), "width"), (dict(activation="gelu"), "activation"), (dict(scaling="xyz"), "scaling"),
    (dict(eta0=0.0), "eta0"), (dict(batch_size=17), "batch_size"), (dict(top_k=16), "top_k"),
    (dict(depth=0), "depth"), (dict(gamma0=-1.0), "gamma0"), (dict(sigma=[1.0]), "sigma"),
    (dict(svd_tol=0.0), "svd_tol"), (dict(samples=9000, track_sharpness=True), "samples"),
])
def test_bad_config_raises_one_value_error(changes, field):
    base = dict(width=16, depth=2, input_dim=3, samples=16, steps=2)
    with pytest.raises(ValueError, match=field):
        specdyn.simulate(RunConfig(**{**base, **changes}))


def test_bad_data_and_arguments():
    cfg = RunConfig(width=16, depth=1, input_dim=3, samples=8, steps=2)
    X, Y = teacher(8, 3)
    with pytest.raises(ValueError, match="data X"):
        specdyn.simulate(cfg, data=(X[:7], Y))
    with pytest.raises(ValueError, match="data Y"):
        specdyn.simulate(cfg, data=(X, np.ones((8, 2))))
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        specdyn.simulate(cfg, data=(bad, Y))
    with pytest.raises(ValueError, match="data"):
        specdyn.simulate(cfg, data=X)
    with pytest.raises(ValueError, match="online"):
        specdyn.simulate(cfg.replace(online=True), data=(X, Y))
    with pytest.raises(ValueError, match="checkpoint"):
        specdyn.simulate(cfg, resume=True)
    with pytest.raises(ValueError, match="checkpoint_every"):
        specdyn.simulate(cfg, checkpoint="x.ckpt")
    with pytest.raises(ValueError, match="config"):
        specdyn.simulate("not a config")
    with pytest.raises(ValueError, match="progress"):
        specdyn.simulate(cfg, progress=3)


def test_float32_tracks_float64():
    cfg = RunConfig(width=64, depth=2, input_dim=8, samples=32, steps=10, activation="tanh", track_every=5)
    a = specdyn.simulate(cfg)
    b = specdyn.simulate(cfg.replace(dtype="float32"))
    np.testing.assert_allclose(b.loss.values, a.loss.values, rtol=1e-4)
    np.testing.assert_allclose(b.singular_values.values, a.singular_values.values, rtol=1e-4)


def test_hessian_top_matches_dense_hessian():
    torch = pytest.importorskip("torch")
    cfg = RunConfig(width=12, depth=2, input_dim=4, output_dim=2, samples=10, activation="tanh", steps=6,
                    track_every=3, track_hessian=True, gamma0=0.5, eta0=0.5, top_k=2)
    X, Y = teacher(cfg.samples, cfg.input_dim, cfg.output_dim)
    ds = specdyn.simulate(cfg)
    _, history, sc = numpy_run(cfg, X, Y, cfg.steps)
    shapes = [w.shape for w in history[0]]
    sizes = [int(np.prod(s)) for s in shapes]

    def loss(flat):
        h = torch.as_tensor(X)
        ws = torch.split(flat, sizes)
        for l, (w, s, m) in enumerate(zip(ws, shapes, sc.multipliers)):
            h = m * h @ w.reshape(s).T
            if l < cfg.depth:
                h = torch.tanh(h)
        return ((h - torch.as_tensor(Y)) ** 2).sum() / (2 * cfg.samples)

    for i, t in enumerate(ds.step.values):
        flat = torch.as_tensor(np.concatenate([w.ravel() for w in history[t]]))
        H = torch.autograd.functional.hessian(loss, flat).numpy()
        top = np.linalg.eigvalsh(H)[-1]
        assert abs(ds.hessian_top.values[i] - top) <= 1e-6 * abs(top)


def test_sharpness_by_lanczos_for_large_grams():
    # samples * outputs > 512: the top NTK eigenvalue comes from Lanczos on the Gram
    cfg = RunConfig(width=16, depth=2, input_dim=4, output_dim=1, samples=600, activation="relu", steps=2,
                    top_k=2)
    X, Y = teacher(cfg.samples, cfg.input_dim)
    ds = specdyn.simulate(cfg)
    _, history, sc = numpy_run(cfg, X, Y, cfg.steps)
    for i, t in enumerate(ds.step.values):
        K = _core.nets_ntk_gram(history[t], sc.multipliers, cfg.activation, X)
        S = sc.learning_rate * np.linalg.eigvalsh(K)[-1] / cfg.samples
        assert abs(ds.normalized_sharpness.values[i] - S) <= 1e-9 * S


def test_progress_reports_reach_the_last_step():
    cfg = RunConfig(width=16, depth=2, input_dim=3, samples=8, steps=25, track_every=5)
    seen = []
    ds = specdyn.simulate(cfg, progress=lambda step, steps, loss: seen.append((step, steps, loss)))
    assert seen and seen[-1][0] == 25 and all(s == 25 for _, s, _ in seen)
    assert seen[-1][2] == pytest.approx(ds.loss.values[-1])
    specdyn.simulate(cfg, progress=True)  # a rich progress bar; must not fail
