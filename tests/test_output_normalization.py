"""output_normalization = "mean": the loss averaged over the C outputs, in the CPU
trainer and the device twin, against PyTorch autograd (losses, weights,
NTK sharpness, Hessian); the config field, its validation and its JSON form."""
from __future__ import annotations

import json

import numpy as np
import pytest

import specdyn
from specdyn import _core
from specdyn.config import RunConfig
from specdyn.data import teacher
from specdyn.parameterization import output_normalizer, scales

torch = pytest.importorskip("torch")

K_WEIGHTS = 1 << 32  # rng::kWeights: the stream of the initial weights


def torch_run(cfg: RunConfig, X, Y):
    """Full-batch GD by autograd on (1 / 2 P C) sum |f - y|^2; per step: loss, weights,
    eta lambda_max(J J^T) / (P C) and the top Hessian eigenvalue."""
    sc = scales(cfg.scaling, cfg.width, cfg.depth, cfg.input_dim, cfg.output_dim, cfg.gamma0, cfg.eta0, cfg.sigma)
    W = [torch.tensor(_core.gaussian_f64(l.fan_out, l.fan_in, cfg.seed, K_WEIGHTS + i, l.init_std))
         for i, l in enumerate(sc.layers)]
    shapes = [w.shape for w in W]
    sizes = [w.numel() for w in W]
    phi = {"linear": lambda z: z, "tanh": torch.tanh, "relu": torch.relu}[cfg.activation]
    Xt, Yt = torch.as_tensor(X), torch.as_tensor(Y)
    P, C = X.shape[0], Y.shape[1]

    def f(flat):
        h = Xt
        for l, (w, s, m) in enumerate(zip(torch.split(flat, sizes), shapes, sc.multipliers)):
            h = m * h @ w.reshape(s).T
            if l < cfg.depth:
                h = phi(h)
        return h

    def loss(flat):
        return ((f(flat) - Yt) ** 2).sum() / (2 * P * C)

    flat = torch.cat([w.reshape(-1) for w in W])
    out = {"loss": [], "weights": [], "sharpness": [], "hessian": []}
    for _ in range(cfg.steps + 1):
        x = flat.clone().requires_grad_(True)
        value = loss(x)
        (grad,) = torch.autograd.grad(value, x)
        J = torch.autograd.functional.jacobian(f, flat).reshape(P * C, -1)
        out["loss"].append(float(value))
        out["weights"].append([w.reshape(s).numpy() for w, s in zip(torch.split(flat, sizes), shapes)])
        out["sharpness"].append(sc.learning_rate * np.linalg.eigvalsh((J @ J.T).numpy())[-1] / (P * C))
        out["hessian"].append(np.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat).numpy())[-1])
        flat = flat - sc.learning_rate * grad
    return out, sc


@pytest.mark.parametrize("act,scaling", [("linear", "mup"), ("tanh", "mup"), ("relu", "ntk"), ("tanh", "sp")])
def test_mean_normalization_matches_autograd(act, scaling):
    cfg = RunConfig(width=10, depth=3, input_dim=4, output_dim=3, samples=7, activation=act, scaling=scaling,
                    gamma0=0.8, eta0=0.4 if scaling != "sp" else 0.05, steps=4, top_k=2, track_hessian=True,
                    output_normalization="mean")
    X, Y = teacher(cfg.samples, cfg.input_dim, cfg.output_dim, seed=cfg.data_seed)
    ds = specdyn.simulate(cfg)
    ref, sc = torch_run(cfg, X, Y)
    np.testing.assert_allclose(ds.loss.values, ref["loss"], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(ds.normalized_sharpness.values, ref["sharpness"], rtol=1e-9)
    np.testing.assert_allclose(ds.hessian_top.values, ref["hessian"], rtol=1e-6)
    for t in ds.step.values:
        for l, lay in enumerate(sc.layers):
            s = np.linalg.svd(lay.normalizer * ref["weights"][t][l], compute_uv=False)
            np.testing.assert_allclose(ds.singular_values.values[t, l, :2], s[:2], rtol=1e-9)


def test_mean_is_sum_with_the_learning_rate_divided_by_c():
    # the same weights at every step: GD on L / C with rate eta is GD on L with rate eta / C
    base = dict(width=16, depth=2, input_dim=5, output_dim=4, samples=9, steps=6, track_every=2, top_k=2,
                scaling="ntk", gamma0=0.9)
    mean = specdyn.simulate(RunConfig(eta0=0.8, output_normalization="mean", **base))
    summ = specdyn.simulate(RunConfig(eta0=0.2, **base))
    np.testing.assert_allclose(mean.loss.values * 4, summ.loss.values, rtol=1e-12)
    np.testing.assert_allclose(mean.singular_values.values, summ.singular_values.values, rtol=1e-10)
    # the normalized sharpness is eta lambda_max of the Hessian of the loss actually minimized: equal too
    np.testing.assert_allclose(mean.normalized_sharpness.values, summ.normalized_sharpness.values, rtol=1e-10)


def test_device_twin_uses_the_same_normalization():
    cfg = RunConfig(width=24, depth=2, input_dim=5, output_dim=3, samples=12, steps=10, track_every=5, top_k=2,
                    output_normalization="mean", eta0=0.7)
    a = specdyn.simulate(cfg)
    b = specdyn.simulate(cfg, device="host-emulation")
    np.testing.assert_allclose(b.loss.values, a.loss.values, rtol=1e-11)
    np.testing.assert_allclose(b.singular_values.values, a.singular_values.values, rtol=1e-10)
    c = specdyn.simulate(cfg.replace(output_normalization="sum"), device="host-emulation")
    assert not np.allclose(c.loss.values[1:] / 3, b.loss.values[1:])


def test_output_normalizer_values_and_bad_names():
    assert output_normalizer("sum", 7) == 1.0
    assert output_normalizer("mean", 7) == 7.0
    with pytest.raises(ValueError, match="output_normalization must be one of"):
        output_normalizer("average", 7)


@pytest.mark.parametrize("value", ["average", "", None, 1])
def test_config_refuses_unknown_normalizations(value):
    with pytest.raises(ValueError, match=r"^output_normalization must be one of 'sum', 'mean'"):
        RunConfig(output_normalization=value)


def test_default_is_left_out_of_the_json_form():
    # configs stored before the field existed compare equal on resume
    cfg = RunConfig(output_dim=3)
    assert "output_normalization" not in json.loads(cfg.to_json())
    assert cfg.to_dict()["output_normalization"] == "sum"
    assert RunConfig.from_json(cfg.to_json()) == cfg
    mean = cfg.replace(output_normalization="mean")
    assert json.loads(mean.to_json())["output_normalization"] == "mean"
    assert RunConfig.from_json(mean.to_json()) == mean
    assert mean.to_json() != cfg.to_json()


def test_default_run_is_bit_identical_to_an_explicit_sum():
    cfg = RunConfig(width=20, depth=2, input_dim=4, output_dim=1, samples=8, steps=5, track_every=1, top_k=2)
    a = specdyn.simulate(cfg)
    b = specdyn.simulate(cfg.replace(output_normalization="mean"))  # C = 1: K = 1 as well
    for name in ("loss", "singular_values", "normalized_sharpness"):
        np.testing.assert_array_equal(a[name].values, b[name].values)


# ---- the width limit under muP ----------------------------------------------------------

def per_output_loss(cfg, seeds):
    """Seed mean of the loss per output, (1 / 2PC) sum |f - y|^2, whatever the normalization."""
    K = 1 if cfg.output_normalization == "mean" else cfg.output_dim
    return np.mean([specdyn.simulate(cfg.replace(seed=s)).loss.values / K for s in range(seeds)], axis=0)


def width_config(width, outputs, norm, steps=40):
    return RunConfig(width=width, depth=2, input_dim=8, output_dim=outputs, samples=32, steps=steps, gamma0=1.0,
                     eta0=0.5, track_every=10, top_k=2, track_sharpness=False, output_normalization=norm)


def test_summed_loss_diverges_with_many_outputs_and_the_mean_does_not():
    # C = N/4 outputs under muP at fixed (gamma0, eta0): the summed loss blows up, sooner at larger N
    steps = [specdyn.simulate(width_config(n, n // 4, "sum", steps=20)).attrs["diverged_step"] for n in (64, 256)]
    assert 0 < steps[1] < steps[0], steps
    mean_run = specdyn.simulate(width_config(256, 64, "mean", steps=20))
    assert mean_run.attrs["status"] == "ok"
    assert mean_run.loss.values[-1] < mean_run.loss.values[0]


@pytest.mark.slow
def test_loss_per_output_converges_across_widths_under_mup():
    widths = (128, 256, 512, 1024)
    # C = 4: the curves approach one another (gaps between neighbouring widths shrink)
    curves = [per_output_loss(width_config(n, 4, "mean"), 3) for n in widths]
    gaps = [float(np.max(np.abs(b - a) / a[0])) for a, b in zip(curves, curves[1:])]
    assert gaps[-1] < 0.05 and max(gaps) < 0.1, gaps
    # C = N/4: finite at every width, the gap between neighbouring widths shrinking; the limit learns
    # at a rate of order 1/C, so the loss at a fixed step rises with N toward its initial value
    curves = [per_output_loss(width_config(n, n // 4, "mean"), 3) for n in widths]
    assert all(np.all(np.isfinite(c)) for c in curves)
    gaps = [float(np.max(np.abs(b - a))) for a, b in zip(curves, curves[1:])]
    assert gaps[-1] < gaps[0], gaps
    drop = [c[0] - c[-1] for c in curves]
    assert all(x > y for x, y in zip(drop, drop[1:])), drop
