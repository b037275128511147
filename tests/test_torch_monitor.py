"""SpectralMonitor against independent references: LAPACK singular values
(torch.linalg.svdvals), dense Hessians and Jacobians (torch.func), and a
kill -9 of a monitored run with a store."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch")

import specdyn  # noqa: E402
from specdyn import lanczos, storage  # noqa: E402
from specdyn.torch import SpectralMonitor  # noqa: E402
from specdyn.storage import load  # noqa: E402
from specdyn.torch import monitor as monitor_mod  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_DIR = os.path.join(os.path.dirname(HERE), "python")


def conv_net(dtype, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 5, 3), torch.nn.Tanh(), torch.nn.Flatten(),
        torch.nn.Linear(5 * 4 * 4, 40), torch.nn.Tanh(), torch.nn.Linear(40, 3)).to(dtype)


def reference(W, k):
    """Top-k singular values of W / sqrt(fan_in), the kernel read as out x (in kh kw), in float64."""
    A = W.detach().double().reshape(W.shape[0], -1)
    s = torch.linalg.svdvals(A / math.sqrt(A.shape[1]))[:k].numpy()
    return np.concatenate([s, np.full(k - s.size, np.nan)])


def train_and_check(model, dtype, rtol, steps=4, k=4):
    X = torch.randn(12, 2, 6, 6, dtype=dtype)
    Y = torch.randn(12, 3, dtype=dtype)
    mon = SpectralMonitor(model, top_k=k, tol=1e-10)
    assert mon.layer_names == ["0.weight", "3.weight", "5.weight"]
    W0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for t in range(steps + 1):
        row = mon.observe(t)
        for i, name in enumerate(mon.layer_names):
            W = dict(model.named_parameters())[name]
            np.testing.assert_allclose(row["singular_values"][i], reference(W, k), rtol=rtol)
            if t > 0:
                np.testing.assert_allclose(row["delta_singular_values"][i], reference(W - W0[name], k), rtol=rtol)
            else:
                np.testing.assert_array_equal(row["delta_singular_values"][i][:min(W.shape[0], 4)], 0.0)
        opt.zero_grad()
        ((model(X) - Y) ** 2).mean().backward()
        opt.step()
    ds = mon.dataset()
    assert bool(ds.certified.all())
    assert ds.sizes == {"step": steps + 1, "layer": 3, "rank": k}
    return ds


def test_topk_matches_svdvals_float64():
    ds = train_and_check(conv_net(torch.float64), torch.float64, 1e-8)
    assert np.isnan(ds.singular_values.sel(layer="5.weight", rank=3)).all()  # a 3 x 40 layer has 3 values
    assert float(ds.singular_values_residual.max()) < 1e-9 * float(ds.singular_values.max())


def test_topk_matches_svdvals_float32():
    train_and_check(conv_net(torch.float32, seed=1), torch.float32, 1e-4)


def test_normalize_none_and_weight_norm():
    model = torch.nn.Linear(50, 30, dtype=torch.float64)
    mon = SpectralMonitor(model, top_k=3, normalize="none", tol=1e-10, delta=False)
    row = mon.observe(0)
    s = torch.linalg.svdvals(model.weight.detach()).numpy()[:3]
    np.testing.assert_allclose(row["singular_values"][0], s, rtol=1e-10)
    assert np.isnan(row["delta_singular_values"]).all()
    np.testing.assert_allclose(row["weight_norm"][0], torch.linalg.norm(model.weight).item(), rtol=1e-12)


@settings(max_examples=12, deadline=None)
@given(rows=st.integers(1, 70), cols=st.integers(1, 70), k=st.integers(1, 6), seed=st.integers(0, 2**31),
       conv=st.booleans())
def test_topk_property_over_shapes(rows, cols, k, seed, conv):
    torch.manual_seed(seed)
    if conv:
        layer = torch.nn.Conv2d(max(1, cols // 4), rows, 2, dtype=torch.float64)
    else:
        layer = torch.nn.Linear(cols, rows, dtype=torch.float64)
    with torch.no_grad():  # a rank-one spike so that some values stand out of the bulk
        layer.weight.add_(3.0 * torch.randn(rows, 1, *layer.weight.shape[2:], dtype=torch.float64))
    mon = SpectralMonitor(layer, top_k=k, tol=1e-10)
    row = mon.observe(0)
    np.testing.assert_allclose(row["singular_values"][0], reference(layer.weight, k), rtol=1e-8)


def test_zero_copy_of_weights(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Conv2d(3, 8, 3))
    seen = []
    real = lanczos.top_singular

    def spy(A, *args, **kwargs):
        seen.append(A)
        return real(A, *args, **kwargs)

    monkeypatch.setattr(monitor_mod.lanczos, "top_singular", spy)
    mon = SpectralMonitor(model, top_k=2, delta=True)
    mon.observe(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    mon.observe(1)
    params = dict(model.named_parameters())
    weights = [params["0.weight"], params["2.weight"]]
    # step 0: W only (W - W0 = 0 needs no solve); step 1: W, then the preallocated delta buffer
    assert len(seen) == 2 + 4
    for A, W in zip(seen[:2] + seen[2::2], weights * 2):
        assert np.shares_memory(A, W.detach().numpy())
    buffers = [mon.layers[0].delta, mon.layers[1].delta]
    for A, buf in zip(seen[3::2], buffers):
        assert np.shares_memory(A, buf.numpy())
    # the next observation reuses the same delta buffers
    mon.observe(2)
    assert mon.layers[0].delta is buffers[0]


def test_cuda_weight_without_device_backend_is_one_clear_error(monkeypatch):
    class FakeParam:
        is_cuda = True

    monkeypatch.setattr(monitor_mod.backend, "gpu_available", lambda: False)
    monkeypatch.setattr(monitor_mod.backend, "gpu_status", lambda: "off: no CUDA runtime (test)")
    with pytest.raises(RuntimeError, match=r"gpu_status\(\)") as err:
        monitor_mod._require_device_lanczos("fc.weight", FakeParam())
    assert "no CUDA runtime (test)" in str(err.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_weight_runs_on_device():
    if not specdyn.backend.gpu_available():
        pytest.skip("specdyn was built without a usable GPU backend")
    model = torch.nn.Linear(300, 200, dtype=torch.float64).cuda()
    row = SpectralMonitor(model, top_k=3, tol=1e-10).observe(0)
    np.testing.assert_allclose(row["singular_values"][0], reference(model.weight.cpu(), 3), rtol=1e-8)


def test_uncertified_values_are_marked(monkeypatch):
    real = lanczos.top_singular

    def unconverged(A, *args, **kwargs):
        s, U, V, info = real(A, *args, **kwargs)
        return s, U, V, {**info, "converged": False}

    monkeypatch.setattr(monitor_mod.lanczos, "top_singular", unconverged)
    mon = SpectralMonitor(torch.nn.Linear(40, 40), top_k=2)
    row = mon.observe(0)
    assert not row["certified"][0]
    assert not bool(mon.dataset().certified.any())


# ---- sharpness ---------------------------------------------------------------------------
def small_model():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(4, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2)).double()
    X = torch.randn(5, 4, dtype=torch.float64)
    Y = torch.randn(5, 2, dtype=torch.float64)
    return model, X, Y


def test_hessian_ntk_and_blocks_match_dense():
    from torch.func import functional_call, hessian, jacrev

    model, X, Y = small_model()
    loss = lambda: ((model(X) - Y) ** 2).sum() / (2 * X.shape[0])  # noqa: E731
    mon = SpectralMonitor(model, top_k=2, tol=1e-10, sharpness=loss, output=lambda: model(X))
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    mon.attach(opt)
    for _ in range(2):
        opt.zero_grad()
        loss().backward()
        opt.step()
    params = {n: p.detach() for n, p in model.named_parameters()}
    names = list(params)
    sizes = [p.numel() for p in params.values()]

    def flat_loss(theta):
        parts = dict(zip(names, [t.reshape(params[n].shape) for t, n in zip(theta.split(sizes), names)]))
        return ((functional_call(model, parts, (X,)) - Y) ** 2).sum() / (2 * X.shape[0])

    theta = torch.cat([p.reshape(-1) for p in params.values()])
    H = hessian(flat_loss)(theta)
    row = mon.dataset().isel(step=-1)
    assert int(row.step) == 2
    assert abs(float(row.hessian_top) - torch.linalg.eigvalsh(H)[-1].item()) < 1e-6
    J = jacrev(lambda th: functional_call(model, dict(zip(names, [t.reshape(params[n].shape) for t, n in
                                                                  zip(th.split(sizes), names)])), (X,)).reshape(-1))(theta)
    ntk_top = torch.linalg.eigvalsh(J @ J.T)[-1].item()
    assert abs(float(row.ntk_top) - ntk_top) < 1e-6
    np.testing.assert_allclose(float(row.normalized_sharpness), 0.3 * ntk_top / X.shape[0], rtol=1e-6)
    offsets = np.cumsum([0] + sizes)
    for i, name in enumerate(mon.layer_names):
        j = names.index(name)
        block = H[offsets[j]:offsets[j + 1], offsets[j]:offsets[j + 1]]
        assert abs(float(row.hessian_block_top.sel(layer=name)) - torch.linalg.eigvalsh(block)[-1].item()) < 1e-6
    assert bool(row.sharpness_certified)
    assert float(row.loss) == pytest.approx(loss().item(), rel=1e-12)


def test_ntk_in_parameter_space_when_outputs_outnumber_parameters():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2, bias=False).double()
    X = torch.randn(40, 3, dtype=torch.float64)  # 80 outputs > 6 parameters
    mon = SpectralMonitor(model, top_k=1, tol=1e-10, sharpness=lambda: (model(X) ** 2).sum(),
                          output=lambda: model(X))
    row = mon.observe(0, lr=0.1)
    # f = X W^T: J^T J = I_2 (x) X^T X, top eigenvalue = top eigenvalue of X^T X
    expect = torch.linalg.eigvalsh(X.T @ X)[-1].item()
    assert abs(row["ntk_top"] - expect) < 1e-6 * expect
    assert row["normalized_sharpness"] == pytest.approx(0.1 * expect / 40, rel=1e-8)


# ---- attach, bulk, dataset -------------------------------------------------------------
def test_attach_observes_after_optimizer_steps():
    model, X, Y = small_model()
    mon = SpectralMonitor(model, top_k=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon.attach(opt, every=3, loss=lambda: 1.5)
    for _ in range(7):
        opt.zero_grad()
        ((model(X) - Y) ** 2).mean().backward()
        opt.step()
    ds = mon.dataset()
    assert ds.step.values.tolist() == [0, 3, 6]
    np.testing.assert_allclose(ds.learning_rate.values, 0.1)
    np.testing.assert_allclose(ds.loss.values, 1.5)
    mon.close()
    opt.step()
    assert mon.dataset().sizes["step"] == 3


def test_bulk_histogram_and_law():
    torch.manual_seed(0)
    model = torch.nn.Linear(200, 100, bias=False).double()
    with torch.no_grad():
        model.weight.normal_(0.0, 1.0)
    mon = SpectralMonitor(model, top_k=2, bulk_every=2)
    for t in range(4):
        mon.observe(t)
    ds = mon.dataset()
    assert ds.bulk_step.values.tolist() == [0, 2]
    counts = ds.bulk_counts.sel(layer="weight")
    assert (counts.sum("bin") == 100).all()
    s = torch.linalg.svdvals(model.weight.detach() / math.sqrt(200)).numpy()
    np.testing.assert_array_equal(counts.isel(bulk_step=0).values,
                                  np.histogram(s, bins=ds.bulk_edges.sel(layer="weight").isel(bulk_step=0).values)[0])
    # initial scale sigma = 1 and aspect ratio 1/2: Marchenko-Pastur edge 1 + sqrt(1/2)
    assert float(ds.initial_scale.sel(layer="weight")) == pytest.approx(1.0, rel=0.02)
    assert float(ds.bulk_edge_law.sel(layer="weight")) == pytest.approx(1 + math.sqrt(0.5), rel=0.02)


def test_dataset_layout_matches_simulate_and_plots_accept_it(tmp_path):
    sim = specdyn.simulate(specdyn.RunConfig(width=16, depth=1, steps=2, top_k=2))
    model, X, Y = small_model()
    mon = SpectralMonitor(model, top_k=2)
    for t in range(3):
        mon.observe(t, loss=float(t))
    ds = mon.dataset()
    for name in ("loss", "singular_values", "delta_singular_values", "normalized_sharpness", "hessian_top",
                 "weight_norm", "overlap_input", "overlap_backward"):
        assert ds[name].dims == sim[name].dims, name
    for key in ("config", "status", "diverged_step", "kind", "scaling", "width", "seed"):
        assert key in ds.attrs
    assert ds.attrs["kind"] == "monitor"
    from specdyn import plots

    assert os.path.exists(plots.run_overview(ds, tmp_path / "overview.png"))


def test_store_roundtrip_and_storage_load(tmp_path):
    model, X, Y = small_model()
    path = tmp_path / "run.zarr"
    mon = SpectralMonitor(model, top_k=2, store=path, bulk_every=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon.attach(opt, loss=lambda: 0.25)
    for _ in range(3):
        opt.zero_grad()
        ((model(X) - Y) ** 2).mean().backward()
        opt.step()
    expected = mon.dataset()
    got = load(path)
    for name in expected.data_vars:
        np.testing.assert_array_equal(got[name].values, expected[name].values, err_msg=name)
    assert got.layer.values.tolist() == expected.layer.values.tolist()
    assert storage.is_complete(path)
    via_storage = storage.load(path)  # the store is a complete run for specdyn.storage (specdyn plot)
    np.testing.assert_array_equal(via_storage.singular_values.values, expected.singular_values.values)
    assert via_storage.attrs["kind"] == "monitor"
    from typer.testing import CliRunner

    from specdyn.cli import app

    res = CliRunner().invoke(app, ["plot", str(path), "--out", str(tmp_path / "figs")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "figs" / "run.png").exists()


CHILD = """
import sys, time
import torch
from specdyn.torch import SpectralMonitor
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(30, 60), torch.nn.Tanh(), torch.nn.Linear(60, 60), torch.nn.Tanh(),
                            torch.nn.Linear(60, 3)).double()
X, Y = torch.randn(20, 30, dtype=torch.float64), torch.randn(20, 3, dtype=torch.float64)
mon = SpectralMonitor(model, top_k=3, store=sys.argv[1], bulk_every=5)
opt = torch.optim.SGD(model.parameters(), lr=0.05)
for t in range(int(sys.argv[2])):
    opt.zero_grad()
    loss = ((model(X) - Y) ** 2).mean()
    mon.observe(t, loss=loss.item())
    print(t, flush=True)
    loss.backward()
    opt.step()
"""


def replay(steps):
    env = {}
    exec(CHILD.replace("sys.argv[1]", "None").replace("int(sys.argv[2])", str(steps))
         .replace("print(t, flush=True)", "pass"), env)
    return env["mon"].dataset()


def test_kill_9_leaves_every_flushed_observation(tmp_path):
    rng = np.random.default_rng()
    path = tmp_path / "killed.zarr"
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD), str(path), "100000"], env=env,
                            stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # the first observation is flushed
    assert first.strip() == "0"
    time.sleep(float(rng.uniform(0.0, 1.5)))
    proc.send_signal(signal.SIGKILL)
    printed = [first] + proc.stdout.readlines()
    proc.wait()
    last_printed = int(printed[-1]) if printed[-1].strip() else int(printed[-2])
    got = load(path)
    n = got.sizes["step"]
    assert n >= last_printed + 1  # every observation flushed before the kill is there
    assert got.step.values.tolist() == list(range(n))
    ref = replay(n)
    for name in ("loss", "singular_values", "delta_singular_values", "weight_norm", "certified"):
        np.testing.assert_array_equal(got[name].values, ref[name].values, err_msg=name)
    np.testing.assert_array_equal(got.bulk_step.values, ref.bulk_step.values)
    np.testing.assert_array_equal(got.bulk_counts.values, ref.bulk_counts.values)
    assert storage.is_complete(path) and storage.verify(path) == []  # killed anywhere: no damage


def test_a_changed_observation_is_reported_as_damage(tmp_path):
    import zarr

    model, X, Y = small_model()
    path = tmp_path / "run.zarr"
    mon = SpectralMonitor(model, top_k=2, store=path)
    for t in range(3):
        mon.observe(t, loss=float(t))
    assert storage.verify(path) == []
    arr = zarr.open_array(str(path / "loss"), mode="r+")
    arr[1] = 7.0  # a valid chunk (its CRC32C rewritten) with a value that was never observed
    assert [g for g, _ in storage.verify(path)] == [""]
    with pytest.raises(storage.DamagedGroupError, match="loss"):
        storage.load(path)


def test_store_refuses_what_it_may_not_replace(tmp_path):
    model, _, _ = small_model()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes"):
        SpectralMonitor(model, top_k=2, store=tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


# ---- light import and validation -----------------------------------------------------------
def test_import_specdyn_does_not_import_torch():
    code = "import sys, specdyn; specdyn.data; specdyn.parameterization; print('torch' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("kwargs,match", [
    (dict(top_k=0), "top_k"), (dict(normalize="spectral"), "normalize"), (dict(layers=["nope"]), "unknown"),
    (dict(layers=["0.bias"]), "ndim >= 2"), (dict(bulk_every=0), "bulk_every"), (dict(tol=2.0), "tol"),
    (dict(sharpness=3), "sharpness"), (dict(output=lambda: None), "output needs sharpness"),
    (dict(delta="yes"), "delta"),
])
def test_bad_arguments_raise_one_value_error(kwargs, match):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4))
    with pytest.raises(ValueError, match=match):
        SpectralMonitor(model, **kwargs)


def test_steps_must_increase_and_layers_predicate():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    mon = SpectralMonitor(model, layers=lambda name, p: name.startswith("1."), top_k=1)
    assert mon.layer_names == ["1.weight"]
    mon.observe(3)
    with pytest.raises(ValueError, match="step must increase"):
        mon.observe(3)
