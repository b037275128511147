"""Network kernels against PyTorch autograd (float64): outputs, gradients,
the NTK Gram over all parameters and exact Hessian-vector products, for every
activation, scaling and depth 1..4."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch")

from specdyn import _core  # noqa: E402
from specdyn.parameterization import scales  # noqa: E402

ACTS = ("linear", "tanh", "relu")
SCALINGS = ("mup", "ntk", "sp")
TOL = 1e-10


def make_net(scaling, depth, width=6, input_dim=5, output_dim=2, n=7, seed=0, gamma0=0.7):
    sc = scales(scaling, width, depth, input_dim, output_dim, gamma0, 0.1, 1.3)
    rng = np.random.default_rng(seed)
    W = [rng.normal(0.0, l.init_std, (l.fan_out, l.fan_in)) for l in sc.layers]
    X = rng.normal(size=(n, input_dim))
    Y = rng.normal(size=(n, output_dim))
    V = [rng.normal(size=w.shape) for w in W]
    return sc.multipliers, W, X, Y, V


def torch_f(params, mults, act, X):
    phi = {"linear": lambda z: z, "tanh": torch.tanh, "relu": torch.relu}[act]
    h = torch.as_tensor(X)
    for l, (w, m) in enumerate(zip(params, mults)):
        h = m * h @ w.T
        if l < len(params) - 1:
            h = phi(h)
    return h  # (n, C)


def torch_loss(params, mults, act, X, Y):
    f = torch_f(params, mults, act, X)
    return ((f - torch.as_tensor(Y)) ** 2).sum() / (2 * X.shape[0])


def leaves(W):
    return [torch.tensor(w, dtype=torch.float64, requires_grad=True) for w in W]


def close(a, b, tol=TOL):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(1.0, float(np.max(np.abs(b))))
    assert np.max(np.abs(a - b)) <= tol * scale, np.max(np.abs(a - b)) / scale


CASES = [(a, s, d) for a in ACTS for s in SCALINGS for d in (1, 2, 3, 4)]


@pytest.mark.parametrize("act,scaling,depth", CASES)
def test_forward_and_gradient(act, scaling, depth):
    mults, W, X, Y, _ = make_net(scaling, depth, seed=depth)
    close(_core.nets_forward(W, mults, act, X), torch_f([torch.tensor(w) for w in W], mults, act, X).numpy())
    loss, grads = _core.nets_loss_grad(W, mults, act, X, Y)
    p = leaves(W)
    tl = torch_loss(p, mults, act, X, Y)
    tg = torch.autograd.grad(tl, p)
    close(loss, tl.item())
    for g, t in zip(grads, tg):
        close(g, t.numpy())


@pytest.mark.parametrize("act,scaling,depth", CASES)
def test_ntk_gram(act, scaling, depth):
    mults, W, X, _, _ = make_net(scaling, depth, seed=10 + depth)
    K = _core.nets_ntk_gram(W, mults, act, X)
    p = leaves(W)
    f = torch_f(p, mults, act, X).reshape(-1)  # index mu * C + a
    rows = []
    for i in range(f.numel()):
        g = torch.autograd.grad(f[i], p, retain_graph=True)
        rows.append(torch.cat([x.reshape(-1) for x in g]))
    J = torch.stack(rows).numpy()
    close(K, J @ J.T)


@pytest.mark.parametrize("act,scaling,depth", CASES)
def test_hessian_vector_product(act, scaling, depth):
    mults, W, X, Y, V = make_net(scaling, depth, seed=20 + depth)
    HV = _core.nets_hvp(W, mults, act, X, Y, V)
    p = leaves(W)
    tl = torch_loss(p, mults, act, X, Y)
    g = torch.autograd.grad(tl, p, create_graph=True)
    dot = sum((gi * torch.as_tensor(vi)).sum() for gi, vi in zip(g, V))
    th = torch.autograd.grad(dot, p)
    for h, t in zip(HV, th):
        close(h, t.numpy())


@settings(max_examples=15, deadline=None)
@given(width=st.integers(1, 9), input_dim=st.integers(1, 6), output_dim=st.integers(1, 3), n=st.integers(1, 6),
       depth=st.integers(1, 4), act=st.sampled_from(ACTS), scaling=st.sampled_from(SCALINGS),
       seed=st.integers(0, 2**31))
def test_gradient_and_ntk_property(width, input_dim, output_dim, n, depth, act, scaling, seed):
    mults, W, X, Y, V = make_net(scaling, depth, width, input_dim, output_dim, n, seed)
    _, grads = _core.nets_loss_grad(W, mults, act, X, Y)
    p = leaves(W)
    tg = torch.autograd.grad(torch_loss(p, mults, act, X, Y), p)
    for g, t in zip(grads, tg):
        close(g, t.numpy())
    # The NTK Gram is the Jacobian Gram: for the squared loss, the gradient is J^T r / n.
    K = _core.nets_ntk_gram(W, mults, act, X)
    assert np.allclose(K, K.T, atol=1e-12 * max(1.0, np.abs(K).max()))
    assert np.linalg.eigvalsh(K).min() > -1e-9 * max(1.0, np.abs(K).max())


def test_float32_kernels_match_float64():
    mults, W, X, _, _ = make_net("mup", 3, width=16, seed=3)
    f64 = _core.nets_forward(W, mults, "tanh", X)
    f32 = _core.nets_forward([w.astype(np.float32) for w in W], mults, "tanh", X.astype(np.float32))
    assert f32.dtype == np.float32
    np.testing.assert_allclose(f32, f64, rtol=1e-4, atol=1e-5)
