"""The one place that turns (scaling, width, gamma0, eta0, sigma) into numbers.

docs/theory.md, Notation and scalings, for depth L hidden layers of width N, input D, C outputs:

    h^1     = W^0 x / sqrt(D)
    h^{l+1} = W^l phi(h^l) / sqrt(N)
    f(x)    = W^L phi(h^L) / (gamma sqrt(N))

========  ====================  =====================  ==========================
scaling   gamma                 raw learning rate      init of raw weights
========  ====================  =====================  ==========================
mup       gamma0 sqrt(N)        eta0 gamma0^2 N        N(0, sigma^2)
ntk       gamma0                eta0 gamma0^2          N(0, sigma^2)
sp        (none)                eta0                   N(0, sigma^2 / fan_in)
========  ====================  =====================  ==========================

The loss is L = (1 / 2 P K) sum_mu |f(x_mu) - y_mu|^2 with K = 1 ("sum" over the C
outputs, the default) or K = C ("mean" over them): see :func:`output_normalizer`.

Every other module asks this one for multipliers; none multiplies by sqrt(N).
The *normalized matrix* of a layer is what multiplies its input in the forward
pass, without the output scale 1/gamma: W / sqrt(fan_in) (muP, NTK) or W (SP).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

SCALINGS = ("mup", "ntk", "sp")
OUTPUT_NORMALIZATIONS = ("sum", "mean")


@dataclass(frozen=True)
class LayerScale:
    """Scales of one weight matrix W^l (shape fan_out x fan_in)."""

    name: str            # "W0" .. "WL"
    fan_in: int
    fan_out: int
    init_std: float      # std of the raw entries of W at initialization
    multiplier: float    # forward: pre-activation = multiplier * W @ input
    normalizer: float    # normalized matrix = normalizer * W


@dataclass(frozen=True)
class Scales:
    """All multipliers of a network and its raw learning rate."""

    layers: tuple[LayerScale, ...]
    learning_rate: float   # raw eta of theta <- theta - eta grad L, same for every layer
    gamma: float           # output scale (1 for SP)

    @property
    def multipliers(self) -> list[float]:
        return [l.multiplier for l in self.layers]

    @property
    def init_stds(self) -> list[float]:
        return [l.init_std for l in self.layers]

    @property
    def normalizers(self) -> list[float]:
        return [l.normalizer for l in self.layers]


def layer_shapes(width: int, depth: int, input_dim: int, output_dim: int) -> list[tuple[int, int]]:
    """(fan_out, fan_in) of W^0 .. W^L for ``depth`` hidden layers."""
    shapes = [(width, input_dim)]
    shapes += [(width, width)] * (depth - 1)
    shapes.append((output_dim, width))
    return shapes


def output_scale(scaling: str, width: int, gamma0: float) -> float:
    """The output multiplier gamma: gamma0 sqrt(N) under muP, gamma0 under NTK, 1 under SP."""
    if scaling == "mup":
        return gamma0 * math.sqrt(width)
    if scaling == "ntk":
        return gamma0
    if scaling == "sp":
        return 1.0
    raise ValueError(f"scaling must be one of {SCALINGS}; got {scaling!r}")


def learning_rate(scaling: str, width: int, gamma0: float, eta0: float) -> float:
    """Raw learning rate: eta0 gamma0^2 N (muP), eta0 gamma0^2 (NTK), eta0 (SP)."""
    if scaling == "mup":
        return eta0 * gamma0**2 * width
    if scaling == "ntk":
        return eta0 * gamma0**2
    if scaling == "sp":
        return eta0
    raise ValueError(f"scaling must be one of {SCALINGS}; got {scaling!r}")


def output_normalizer(output_normalization: str, output_dim: int) -> float:
    """K of the loss (1 / 2 P K) sum_mu |f(x_mu) - y_mu|^2: 1 for "sum", C for "mean".

    Averaging over the C outputs is the same as dividing the raw learning rate
    and the error signal by C: under muP every weight then moves by an O(1)
    (sum over outputs) / C, so the width limit at fixed (gamma0, eta0) exists for
    C fixed and for C proportional to N. Summing keeps C = 1 runs as they were;
    with C ~ N outputs the hidden update grows with C (docs/theory.md, Many outputs under muP).
    The same K divides the NTK in the normalized sharpness eta lambda_max(K) / (P K).
    """
    if output_normalization == "sum":
        return 1.0
    if output_normalization == "mean":
        return float(output_dim)
    raise ValueError(f"output_normalization must be one of {OUTPUT_NORMALIZATIONS}; got {output_normalization!r}")


def effective_richness(scaling: str, width: int, gamma0: float) -> float:
    """Richness of the muP limit that a finite-width run corresponds to.

    NTK at width N is muP with richness gamma0 / sqrt(N) (docs/theory.md, Notation and scalings);
    muP keeps gamma0. Used to run the one-bulk recursion for an NTK network.
    """
    if scaling == "mup":
        return gamma0
    if scaling == "ntk":
        return gamma0 / math.sqrt(width)
    raise ValueError(f"the infinite-width theory covers scaling 'mup' or 'ntk'; got {scaling!r}")


def scales(scaling: str, width: int, depth: int, input_dim: int, output_dim: int,
           gamma0: float, eta0: float, sigma) -> Scales:
    """Multipliers, init stds and the raw learning rate of a network.

    ``sigma`` is one float or one per weight matrix (depth + 1 values).
    """
    shapes = layer_shapes(width, depth, input_dim, output_dim)
    sigmas = list(sigma) if isinstance(sigma, (list, tuple)) else [float(sigma)] * len(shapes)
    if len(sigmas) != len(shapes):
        raise ValueError(f"sigma must be one float or {len(shapes)} floats (one per layer W0..W{depth}); "
                         f"got {len(sigmas)}")
    gamma = output_scale(scaling, width, gamma0)
    layers = []
    for l, ((fan_out, fan_in), s) in enumerate(zip(shapes, sigmas)):
        root = math.sqrt(fan_in)
        if scaling == "sp":
            init_std, mult, norm = s / root, 1.0, 1.0
        else:
            init_std, mult, norm = s, 1.0 / root, 1.0 / root
            if l == len(shapes) - 1:
                mult = 1.0 / (gamma * root)
        layers.append(LayerScale(f"W{l}", fan_in, fan_out, init_std, mult, norm))
    return Scales(tuple(layers), learning_rate(scaling, width, gamma0, eta0), gamma)


def fan_in_normalizer(fan_in: int) -> float:
    """1 / sqrt(fan_in): the factor that turns a raw weight of any model into W / sqrt(fan_in).

    Monitors of user models (``specdyn.torch``) scale singular values by it
    instead of scaling the matrix (which would copy it).
    """
    if isinstance(fan_in, bool) or not isinstance(fan_in, int) or fan_in < 1:
        raise ValueError(f"fan_in must be an integer >= 1; got {fan_in!r}")
    return 1.0 / math.sqrt(fan_in)


def normalized(scale: LayerScale, weights):
    """The normalized matrix of a layer from its raw weights (W / sqrt(fan_in) or W)."""
    return weights * scale.normalizer


def proportional_scales(width: int, input_dim: int, gamma0: float, eta0: float, sigma=1.0) -> Scales:
    """Scales of the proportional two-layer model (docs/theory.md, Proportional two-layer model).

    W^0 is N x D with N / D fixed; the output scale is gamma = gamma0 (as under
    NTK) but the raw learning rate is eta0 gamma0^2 N (as under muP): then the
    readout and the first layer both take O(1) rank-one steps and the loss and
    the outliers of W^0 / sqrt(D) move together on O(1) steps as D -> infinity.
    """
    base = scales("ntk", width, 1, input_dim, 1, gamma0, eta0, sigma)
    return dataclasses.replace(base, learning_rate=eta0 * gamma0**2 * width)


def proportional_eta0(scaling: str, width: int, eta0: float) -> float:
    """The eta0 of the proportional model that a RunConfig's (scaling, width, eta0) runs at.

    Only scaling "ntk" shares the output scale gamma = gamma0 of the proportional
    model; its raw rate eta0 gamma0^2 equals the proportional eta0' gamma0^2 N
    with eta0' = eta0 / N.
    """
    if scaling != "ntk":
        raise ValueError("scaling must be 'ntk' for the proportional limit (gamma = gamma0); under 'mup' "
                         "(gamma = gamma0 sqrt(N)) the loss is frozen for O(1) steps and no O(1)-step limit "
                         f"curve is derived; got {scaling!r}")
    return eta0 / width


def proportional_run_eta0(width: int, eta0: float) -> float:
    """The RunConfig eta0 (scaling "ntk") whose raw rate is the proportional rate eta0 gamma0^2 N.

    Inverse of :func:`proportional_eta0`: with gamma = gamma0 and many outputs
    (C, D, P proportional to N) the update of a hidden matrix is full rank with
    O(1) operator norm per step only at this rate (studies.many_outputs).
    """
    return eta0 * width
