"""``mlp(config)``: the network that ``specdyn.simulate`` trains, as a ``torch.nn.Module``."""
from __future__ import annotations

import torch

from ..parameterization import scales


class ScaledLinear(torch.nn.Module):
    """pre-activation = multiplier * x @ W^T, with the raw weight W trained (no bias)."""

    specdyn_linear = True  # read by SpectralMonitor: the weight multiplies this module's input

    def __init__(self, weight: torch.Tensor, multiplier: float):
        super().__init__()
        self.weight = torch.nn.Parameter(weight)
        self.multiplier = float(multiplier)

    def forward(self, x):
        return self.multiplier * (x @ self.weight.T)

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, multiplier={self.multiplier:.6g}"


class MLP(torch.nn.Module):
    """h^{l+1} = m_l W^l phi(h^l); the layers are named W0 .. WL (parameters ``W0.weight`` ...)."""

    def __init__(self, weights, multipliers, activation: str):
        super().__init__()
        self.layers = torch.nn.ModuleDict({f"W{l}": ScaledLinear(w, m)
                                           for l, (w, m) in enumerate(zip(weights, multipliers))})
        self.activation = activation

    def phi(self, h):
        if self.activation == "tanh":
            return torch.tanh(h)
        if self.activation == "relu":
            return torch.relu(h)
        return h

    def forward(self, x):
        mods = list(self.layers.values())
        h = x
        for l, mod in enumerate(mods):
            h = mod(h)
            if l < len(mods) - 1:
                h = self.phi(h)
        return h


def mlp(config, data=None) -> torch.nn.Module:
    """The ``nn.Module`` that ``specdyn.simulate(config, data)`` trains, with its initial weights.

    Same layers, same muP / NTK / SP multipliers (``specdyn.parameterization``)
    and the same W(0), taken from the native trainer built for the config (so
    the same seed gives the same weights bit for bit). Parameters are named
    ``layers.W0.weight`` .. ``layers.WL.weight`` and have the config's dtype.

    The model returns f(x) of shape (samples, output_dim); specdyn's loss is
    ``((f - y) ** 2).sum() / (2 * samples)`` and its raw learning rate is
    ``model.learning_rate`` (plain SGD on that loss trains as ``simulate`` does).
    """
    from ..training import _as_config, build_trainer

    cfg = _as_config(config)
    sc = scales(cfg.scaling, cfg.width, cfg.depth, cfg.input_dim, cfg.output_dim, cfg.gamma0, cfg.eta0, cfg.sigma)
    trainer, _ = build_trainer(cfg, data)
    initial = trainer.get_state()["initial_weights"]
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    # the trainer's state holds each W^l flat, row-major (fan_out, fan_in)
    weights = [torch.tensor(w, dtype=dtype).reshape(l.fan_out, l.fan_in) for w, l in zip(initial, sc.layers)]
    model = MLP(weights, sc.multipliers, cfg.activation)
    model.learning_rate = sc.learning_rate
    model.specdyn_attrs = {"scaling": cfg.scaling, "width": cfg.width, "seed": cfg.seed, "config": cfg.to_json()}
    return model


def specdyn_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """specdyn's training loss: sum of squared errors over outputs, averaged over samples, halved."""
    return ((output - target) ** 2).sum() / (2 * output.shape[0])
