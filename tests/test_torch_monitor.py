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
import warnings
from pathlib import Path

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
PYTHON_DIR = str(Path(specdyn.__file__).resolve().parents[1])  # the specdyn under test, installed or in-tree


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
    # the tolerance every value was certified at: the requested one, or float32's floor
    np.testing.assert_array_equal(ds.tolerance.values, 1e-10 if dtype == torch.float64 else 1e-4)
    return ds


def test_topk_matches_svdvals_float64():
    ds = train_and_check(conv_net(torch.float64), torch.float64, 1e-8)
    assert np.isnan(ds.singular_values.sel(layer="5.weight", rank=3)).all()  # a 3 x 40 layer has 3 values
    assert float(ds.singular_values_residual.max()) < 1e-9 * float(ds.singular_values.max())


def test_topk_matches_svdvals_float32():
    with pytest.warns(RuntimeWarning, match="tol=1e-10 is below what layer '0.weight' .*float32"):
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


@settings(max_examples=10, deadline=None)
@given(rows=st.integers(1, 110), cols=st.integers(1, 110), k=st.integers(1, 7), seed=st.integers(0, 2**31),
       conv=st.booleans())
def test_topk_at_the_bulk_edge_property(rows, cols, k, seed, conv):
    """No outlier: every tracked value sits in (or at the edge of) the random bulk, where values crowd.
    The explicit tol holds for each of them, the residual bounds each error, W and W - W(0) alike."""
    torch.manual_seed(seed)
    if conv:
        layer = torch.nn.Conv2d(max(1, cols // 4), rows, 2, dtype=torch.float64)
    else:
        layer = torch.nn.Linear(cols, rows, dtype=torch.float64)
    W0 = layer.weight.detach().clone()
    mon = SpectralMonitor(layer, top_k=k, tol=1e-10)
    for step in range(3):
        row = mon.observe(step)
        W = layer.weight.detach()
        for key, M in (("singular_values", W), ("delta_singular_values", W - W0)):
            ref = reference(M, k)
            got, res = row[key][0], row[key + "_residual"][0]
            if step == 0 and key == "delta_singular_values":
                np.testing.assert_array_equal(got[np.isfinite(ref)], 0.0)
                continue
            np.testing.assert_allclose(got, ref, rtol=1e-8, err_msg=key)
            assert np.all(res[np.isfinite(ref)] <= 1e-10 * ref[0]), key  # tol honoured for every value
            assert np.all(np.abs(got - ref)[np.isfinite(ref)] <= res[np.isfinite(ref)] + 1e-13 * ref[0]), key
        assert row["certified"][0] and row["tolerance"][0] == 1e-10
        with torch.no_grad():  # a full-rank random step: W - W(0) is a bulk too
            layer.weight.add_(0.05 * torch.randn_like(layer.weight))


def test_float32_values_at_the_bulk_edge_below_an_outlier():
    """float32, tol=1e-10: the solver floors the tolerance at 1e-4, which the monitor says (warning and
    the 'tolerance' variable); every value still matches float64 LAPACK to 1e-4, and a value the
    float32 solver cannot certify (a crowded bulk edge under a large outlier) is flagged, with a warning."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(150, 200, bias=False)
    W0 = layer.weight.detach().double().clone()
    with pytest.warns(RuntimeWarning, match=r"tol=1e-10 is below .*certified at tol=0.0001"):
        mon = SpectralMonitor(layer, top_k=4, tol=1e-10)
        mon.observe(0)
    x = torch.randn(1, 150)
    with torch.no_grad():  # one rank-one step: an outlier of W and a rank-one W - W(0)
        layer.weight.add_(-0.2 * layer(x).T @ x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        row = mon.observe(1)
    W = layer.weight.detach().double()
    ref = reference(W, 4)
    np.testing.assert_allclose(row["singular_values"][0], ref, rtol=1e-4)
    dref = reference(W - W0, 4)
    np.testing.assert_allclose(row["delta_singular_values"][0], dref, rtol=1e-4, atol=1e-4 * dref[0])
    assert row["tolerance"][0] == 1e-4
    norm = ref[0]
    within = bool(np.all(row["singular_values_residual"][0] <= 1.001e-4 * norm)
                  and np.all(row["delta_singular_values_residual"][0] <= 1.001e-4 * dref[0]))
    flagged = any(issubclass(w.category, lanczos.ConvergenceWarning) for w in caught)
    # certified exactly when every residual is within the tolerance; otherwise flagged and warned
    assert bool(row["certified"][0]) == within
    assert within or flagged


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_lanczos_reads_the_parameter_memory(monkeypatch, dtype):
    """The native solver gets the parameter's own buffer (same data pointer), for Linear and Conv2d,
    large enough for the Krylov path (not the small-matrix LAPACK one); W - W(0) is one reused buffer."""
    from specdyn import _core

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Tanh(), torch.nn.Conv2d(8, 40, 3)).to(dtype)
    seen = []
    for name in ("top_singular_f32", "top_singular_f64"):
        real = getattr(_core, name)

        def spy(A, *args, real=real, **kwargs):
            out = real(A, *args, **kwargs)
            seen.append((A.__array_interface__["data"][0], A.dtype, A.shape, out[3]["dense"]))
            return out

        monkeypatch.setattr(_core, name, spy)
    mon = SpectralMonitor(model, top_k=2)
    weights = [model[0].weight, model[2].weight]
    mon.observe(0)
    assert [(ptr, shape) for ptr, _, shape, _ in seen] == [(weights[0].data_ptr(), (48, 64)),
                                                             (weights[1].data_ptr(), (40, 72))]
    with torch.no_grad():
        for w in weights:
            w.add_(0.01 * torch.randn_like(w))
    seen.clear()
    mon.observe(1)
    buffers = [layer.delta.data_ptr() for layer in mon.layers]
    assert [ptr for ptr, *_ in seen] == [weights[0].data_ptr(), buffers[0], weights[1].data_ptr(), buffers[1]]
    assert all(dt == np.dtype(str(dtype).split(".")[1]) and not dense for _, dt, _, dense in seen)
    seen.clear()
    mon.observe(2)
    assert [ptr for ptr, *_ in seen] == [weights[0].data_ptr(), buffers[0], weights[1].data_ptr(), buffers[1]]


def test_strided_weights_are_read_correctly(monkeypatch):
    """A transposed (Fortran-ordered) weight is still read in place; a channels_last kernel is not a
    contiguous (out, in kh kw) matrix, so it is reshaped (a copy), with the right values either way."""
    from specdyn import _core

    torch.manual_seed(2)
    lin = torch.nn.Linear(50, 60, dtype=torch.float64)
    lin.weight = torch.nn.Parameter(torch.randn(50, 60, dtype=torch.float64).t())
    conv = torch.nn.Conv2d(6, 40, 3, dtype=torch.float64).to(memory_format=torch.channels_last)
    model = torch.nn.Sequential(lin, torch.nn.Tanh(), torch.nn.Unflatten(1, (6, 10)), conv)
    assert not lin.weight.is_contiguous() and not conv.weight.is_contiguous()
    seen = []
    real = _core.top_singular_f64
    monkeypatch.setattr(_core, "top_singular_f64",
                        lambda A, *a, **k: seen.append(A.__array_interface__["data"][0]) or real(A, *a, **k))
    W0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    mon = SpectralMonitor(model, top_k=3, tol=1e-10)
    for step in range(2):
        row = mon.observe(step)
        for i, name in enumerate(mon.layer_names):
            W = dict(model.named_parameters())[name]
            np.testing.assert_allclose(row["singular_values"][i], reference(W, 3), rtol=1e-8)
            if step:
                np.testing.assert_allclose(row["delta_singular_values"][i], reference(W - W0[name], 3), rtol=1e-8)
        if not step:
            assert seen[0] == lin.weight.data_ptr()
        with torch.no_grad():
            for p in (lin.weight, conv.weight):
                p.add_(0.1 * torch.randn_like(p))


class FakeCudaParameter(torch.nn.Parameter):
    """A CPU parameter that says it lives on a CUDA device (there is no GPU here)."""

    @property
    def is_cuda(self):
        return True


def _no_device_backend(monkeypatch):
    monkeypatch.setattr(monitor_mod.backend, "gpu_available", lambda: False)
    monkeypatch.setattr(monitor_mod.backend, "gpu_status", lambda: "off: no CUDA runtime (test)")
    calls = []
    monkeypatch.setattr(monitor_mod.lanczos, "top_singular", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: calls.append("cpu"))
    return calls


def test_cuda_weight_without_device_backend_fails_at_construction(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    model[1].weight = FakeCudaParameter(model[1].weight.detach().clone())
    calls = _no_device_backend(monkeypatch)
    with pytest.raises(RuntimeError, match=r"'1.weight' is a CUDA tensor.*gpu_status\(\)") as err:
        SpectralMonitor(model, top_k=2)
    assert "no CUDA runtime (test)" in str(err.value) and "never copies" in str(err.value)
    assert calls == []  # no solve, no host copy


def test_cuda_weight_without_device_backend_fails_at_observe(monkeypatch):
    model = torch.nn.Linear(6, 5)
    mon = SpectralMonitor(model, top_k=2)
    mon.observe(0)
    mon.layers[0].param = FakeCudaParameter(model.weight.detach().clone())  # as after model.cuda()
    calls = _no_device_backend(monkeypatch)
    with pytest.raises(RuntimeError, match=r"gpu_status\(\)"):
        mon.observe(1)
    assert calls == [] and len(mon._rows) == 1  # nothing measured, nothing copied, nothing recorded


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


def test_uncertified_sharpness_is_marked(monkeypatch):
    model, X, Y = small_model()
    real = lanczos.top_eigs

    def unconverged(*args, **kwargs):
        vals, vecs, info = real(*args, **kwargs)
        return vals, vecs, {**info, "converged": False}

    monkeypatch.setattr(monitor_mod.lanczos, "top_eigs", unconverged)
    mon = SpectralMonitor(model, top_k=1, sharpness=lambda: ((model(X) - Y) ** 2).sum(), output=lambda: model(X))
    row = mon.observe(0, lr=0.1)
    assert not row["sharpness_certified"] and row["certified"].all()
    assert np.isfinite(row["hessian_top"]) and np.isfinite(row["hessian_top_residual"])
    assert np.isfinite(row["ntk_top_residual"]) and np.isfinite(row["hessian_block_residual"]).all()


def test_non_finite_weights_mark_the_run_diverged_without_raising():
    model, X, Y = small_model()
    loss = lambda: ((model(X) - Y) ** 2).sum()  # noqa: E731
    mon = SpectralMonitor(model, top_k=2, sharpness=loss, output=lambda: model(X))
    mon.observe(0, lr=0.1)
    with torch.no_grad():
        model[0].weight[0, 0] = float("inf")
    with pytest.warns(RuntimeWarning, match="non-finite weights at step 1"):
        row = mon.observe(1, lr=0.1)
    assert np.isnan(row["singular_values"][0]).all() and not row["certified"][0]
    assert np.isfinite(row["singular_values"][1]).all() and row["certified"][1]  # the finite layer is measured
    for key in ("hessian_top", "ntk_top", "normalized_sharpness"):
        assert np.isnan(row[key]), key
    assert not row["sharpness_certified"]
    ds = mon.dataset()
    assert ds.attrs["status"] == "diverged" and ds.attrs["diverged_step"] == 1


# ---- sharpness ---------------------------------------------------------------------------
def small_model():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(4, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2)).double()
    X = torch.randn(5, 4, dtype=torch.float64)
    Y = torch.randn(5, 2, dtype=torch.float64)
    return model, X, Y


def small_conv_model():
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 2), torch.nn.Tanh(), torch.nn.Flatten(),
                                torch.nn.Linear(3 * 2 * 2, 2)).double()
    X = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    Y = torch.randn(4, 2, dtype=torch.float64)
    return model, X, Y


@pytest.mark.parametrize("make", [small_model, small_conv_model])
def test_hessian_ntk_and_blocks_match_dense(make):
    from torch.func import functional_call, hessian, jacrev

    model, X, Y = make()
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


def test_attach_measures_the_weights_after_each_step():
    """Observation k is taken after the k-th optimizer.step(): its values are those of the updated weights."""
    model, X, Y = small_model()
    W0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    mon = SpectralMonitor(model, top_k=2, tol=1e-10)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    mon.attach(opt, every=2)
    after = {0: {n: p.detach().clone() for n, p in model.named_parameters()}}
    for t in range(1, 6):
        opt.zero_grad()
        ((model(X) - Y) ** 2).mean().backward()
        opt.step()
        after[t] = {n: p.detach().clone() for n, p in model.named_parameters()}
    ds = mon.dataset()
    assert ds.step.values.tolist() == [0, 2, 4]
    for t in (0, 2, 4):
        for name in mon.layer_names:
            got = ds.sel(step=t, layer=name)
            np.testing.assert_allclose(got.singular_values.values, reference(after[t][name], 2), rtol=1e-8)
            if t:
                np.testing.assert_allclose(got.delta_singular_values.values,
                                           reference(after[t][name] - W0[name], 2), rtol=1e-8)
                # and not the weights before that step
                assert not np.allclose(got.singular_values.values, reference(after[t - 1][name], 2), rtol=1e-8)


def test_learning_rate_of_several_groups_is_unknown():
    model, X, Y = small_model()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                           {"params": model[2].parameters(), "lr": 0.2}])
    mon = SpectralMonitor(model, top_k=1, sharpness=lambda: ((model(X) - Y) ** 2).sum(), output=lambda: model(X))
    mon.attach(opt)
    row = mon._rows[0]
    assert np.isnan(row["learning_rate"]) and np.isnan(row["normalized_sharpness"]) and np.isfinite(row["ntk_top"])
    row = mon.observe(1, lr=0.2)  # an explicit rate
    assert row["normalized_sharpness"] == pytest.approx(0.2 * row["ntk_top"] / X.shape[0], rel=1e-12)


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
    sim = specdyn.simulate(specdyn.RunConfig(width=16, depth=1, steps=2, top_k=2, bulk_steps=[0, 2]))
    model, X, Y = small_model()
    mon = SpectralMonitor(model, top_k=2, bulk_every=2)
    for t in range(3):
        mon.observe(t, loss=float(t))
    ds = mon.dataset()
    # every variable and coordinate of a simulation (beta_f / input: the teacher's linear predictor only)
    for name in set(sim.variables) - {"beta_f", "input"}:
        assert name in ds.variables, name
        assert ds[name].dims == sim[name].dims, name
        assert ds[name].dtype.kind == sim[name].dtype.kind or name == "bulk_counts", name
    assert set(sim.attrs) <= set(ds.attrs)
    assert ds.attrs["kind"] == "monitor" and ds.attrs["status"] == "ok" and ds.attrs["diverged_step"] == -1
    # specdyn.compare takes a monitor's dataset on either side
    cmp = specdyn.compare(ds, ds)
    assert cmp.attrs["summary"]["singular_values"]["max_abs_gap"] == 0.0
    assert cmp.attrs["steps"] == [0, 1, 2]
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
    (dict(top_k=0), r"top_k must be an integer in \[1, "), (dict(top_k=-3), r"top_k must be an integer in \[1, "),
    (dict(top_k=2.5), "top_k must be an integer"), (dict(top_k=True), "top_k must be an integer"),
    (dict(normalize="spectral"), "normalize must be one of 'fan_in', 'none'"),
    (dict(layers=["nope"]), r"layers: unknown parameter names \['nope'\]; allowed: .*\['0.weight'\]"),
    (dict(layers=["0.weight", "0.weight"]), "layers: each parameter name at most once"),
    (dict(layers="0.weight"), "layers must be None"), (dict(layers=[]), "layers: the selection holds no"),
    (dict(layers=["0.bias"]), "ndim >= 2"),
    (dict(bulk_every=0), "bulk_every must be an integer >= 1"),
    (dict(bulk_every=-2), "bulk_every must be an integer >= 1"),
    (dict(tol=0.0), r"tol must be a finite real number in \(0.0, 0.1\]"), (dict(tol=-1e-8), r"tol .*\(0.0, 0.1\]"),
    (dict(tol=2.0), r"tol .*\(0.0, 0.1\]"), (dict(tol=float("nan")), r"tol .*\(0.0, 0.1\]"),
    (dict(tol=float("inf")), r"tol .*\(0.0, 0.1\]"), (dict(tol="1e-8"), "tol must be a finite real number"),
    (dict(sharpness=3), "sharpness must be None or a closure"), (dict(sharpness="loss"), "sharpness must be None"),
    (dict(output=lambda: None), "output needs sharpness"), (dict(sharpness=lambda: 0, output=1), "output must be"),
    (dict(delta="yes"), "delta must be true or false"), (dict(overlaps=1), "overlaps must be true or false"),
    (dict(attrs=["x"]), "attrs must be None or a dict"),
])
def test_bad_arguments_raise_one_value_error_before_any_work(monkeypatch, kwargs, match):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4))

    def no_work(*args, **kwargs):
        raise AssertionError("a weight was read before the arguments were checked")

    monkeypatch.setattr(monitor_mod, "_Layer", no_work)
    with pytest.raises(ValueError, match=match):
        SpectralMonitor(model, **kwargs)


def test_bad_model_and_observe_arguments():
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        SpectralMonitor(torch.zeros(3, 3))
    mon = SpectralMonitor(torch.nn.Linear(3, 4), top_k=1)
    for bad, match in ((-1, r"step must be an integer >= 0"), (1.5, "step must be an integer")):
        with pytest.raises(ValueError, match=match):
            mon.observe(bad)
    with pytest.raises(ValueError, match=r"lr must be a finite real number >= 0"):
        mon.observe(0, lr=-0.1)
    assert mon._rows == []


@pytest.mark.parametrize("every", [0, -1, 2.0, None])
def test_attach_checks_every_before_observing(every):
    model, X, Y = small_model()
    mon = SpectralMonitor(model, top_k=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"every must be an integer >= 1"):
        mon.attach(opt, every=every)
    opt.zero_grad()
    ((model(X) - Y) ** 2).mean().backward()
    opt.step()
    assert mon._rows == []  # nothing observed, no hook left behind
    with pytest.raises(ValueError, match="optimizer must be a torch.optim.Optimizer"):
        mon.attach(object())
    with pytest.raises(ValueError, match="loss must be None or a callable"):
        mon.attach(opt, loss=0.5)


def test_steps_must_increase_and_layers_predicate():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    mon = SpectralMonitor(model, layers=lambda name, p: name.startswith("1."), top_k=1)
    assert mon.layer_names == ["1.weight"]
    mon.observe(3)
    with pytest.raises(ValueError, match="step must increase"):
        mon.observe(3)
