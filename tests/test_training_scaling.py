"""Width scaling laws that a wrong multiplier or learning rate breaks
(docs/theory.md, claim 1): under muP the top singular value of the hidden matrix
after a fixed number of steps is the same at every width; under NTK the change
||A(t) - A(0)||_op shrinks like N^(-1/2). Small widths run in CI; the widths
of the issue are marked slow."""
from __future__ import annotations

import numpy as np
import pytest

import specdyn
from specdyn.config import RunConfig


def top_hidden(cfg: RunConfig, seeds, var: str) -> float:
    vals = []
    for seed in seeds:
        ds = specdyn.simulate(cfg.replace(seed=seed))
        assert ds.attrs["status"] == "ok"
        vals.append(float(ds[var].sel(layer="W1").values[-1, 0]))
    return float(np.mean(vals))


def mup_config(width: int) -> RunConfig:
    # gamma0 = 3: an outlier escapes the bulk edge 2 sigma = 2 within 40 steps
    return RunConfig(width=width, depth=2, input_dim=16, samples=32, steps=40, track_every=40, scaling="mup",
                     gamma0=3.0, eta0=0.2, top_k=1, track_sharpness=False)


def ntk_config(width: int, activation: str) -> RunConfig:
    return RunConfig(width=width, depth=2, input_dim=16, samples=32, steps=20, track_every=20, scaling="ntk",
                     gamma0=1.0, eta0=0.5, top_k=1, track_sharpness=False, activation=activation)


def test_mup_outlier_is_width_independent_small():
    small, large = (top_hidden(mup_config(n), range(3), "singular_values") for n in (128, 256))
    assert small > 2.3 and large > 2.3  # escaped from the bulk edge at 2
    assert abs(small - large) < 0.05


def test_ntk_change_shrinks_like_inverse_sqrt_width_small():
    widths = [64, 128, 256, 512]
    deltas = [top_hidden(ntk_config(n, "tanh"), range(6), "delta_singular_values") for n in widths]
    slope = np.polyfit(np.log(widths), np.log(deltas), 1)[0]
    assert abs(slope + 0.5) < 0.1, slope


@pytest.mark.slow
def test_mup_outlier_is_width_independent():
    small, large = (top_hidden(mup_config(n), range(4), "singular_values") for n in (256, 1024))
    assert small > 2.3 and large > 2.3
    assert abs(small - large) < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["linear", "tanh"])
def test_ntk_change_shrinks_like_inverse_sqrt_width(activation):
    widths = [256, 512, 1024, 2048]
    deltas = [top_hidden(ntk_config(n, activation), range(8), "delta_singular_values") for n in widths]
    slope = np.polyfit(np.log(widths), np.log(deltas), 1)[0]
    assert abs(slope + 0.5) < 0.1, slope
