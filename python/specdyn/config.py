"""Run configurations: validated dataclasses, loadable from TOML.

A bad value raises one ``ValueError`` naming the field and its allowed range,
before any work starts.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from . import _validate as V
from .parameterization import OUTPUT_NORMALIZATIONS, SCALINGS, scales

# NTK Grams beyond this many rows (samples x outputs) would need more memory
# than a tracked measurement should take.
MAX_GRAM_ROWS = 4096

ACTIVATIONS = ("linear", "tanh", "relu")
TEACHERS = ("linear", "tanh")
MAX_SIZE = 2**31 - 1  # width, input_dim, output_dim, samples
DATA = ("teacher", "digits")  # the Gaussian teacher, or a named data set of specdyn.data
MAX_DEPTH = 64
MONTE_CARLO_MAX_DEPTH = 8  # hidden layers of the Monte Carlo DMFT (its tangents grow like depth steps^2 P^2)

# The infinite-width limits of specdyn.theory, each with the runs it covers: {field: allowed values}.
# RunConfig.limit_gaps / limits / check_limit read this table; the theories and the studies ask those.
_FULL_BATCH = {"batch_size": (None,), "online": (False,)}
LIMIT_RULES = {
    "one_bulk": {"depth": (2,), "activation": ("linear",), "scaling": ("mup", "ntk"), **_FULL_BATCH},
    "deep_linear": {"depth": range(2, MAX_DEPTH + 1), "activation": ("linear",), "scaling": ("mup", "ntk"),
                    **_FULL_BATCH},
    "proportional": {"depth": (1,), "activation": ("linear",), "output_dim": (1,), "teacher": ("linear",),
                     "online": (True,)},
    "two_layer_monte_carlo": {"depth": (1,), "scaling": ("mup",), "output_dim": (1,), **_FULL_BATCH},
    "deep_monte_carlo": {"depth": range(1, MONTE_CARLO_MAX_DEPTH + 1), "scaling": ("mup",), "output_dim": (1,),
                         **_FULL_BATCH},
}
LIMIT_COVERS = {
    "one_bulk": "the one-bulk theory covers depth=2 (W0, one square bulk W1, readout W2), activation='linear', "
                "any output_dim, full-batch GD (batch_size=None, online=False) on fixed data, scaling 'mup' or "
                "'ntk' (as muP at richness gamma0/sqrt(width)); deeper linear networks: theory.deep_linear",
    "deep_linear": "the deep linear theory covers depth >= 2 (W0, depth - 1 square bulks, readout), "
                   "activation='linear', any output_dim, full-batch GD (batch_size=None, online=False) on fixed "
                   "data, scaling 'mup' or 'ntk' (as muP at richness gamma0/sqrt(width)); depth 1 and nonlinear "
                   "networks: theory.two_layer_monte_carlo",
    "proportional": "the proportional limit covers depth=1 (W0, W1), activation='linear', output_dim=1, "
                    "teacher='linear' and online=True (population GD; full-batch GD on a fixed sample set and "
                    "deeper or nonlinear networks are not derived)",
    "two_layer_monte_carlo": "the two-layer Monte Carlo DMFT covers depth=1 (W0, W1), scaling 'mup' (the "
                             "mean-field limit; the NTK limit is lazy and SP has no width-independent limit "
                             "here), output_dim=1, full-batch GD (batch_size=None, online=False) on fixed samples",
    "deep_monte_carlo": f"the Monte Carlo DMFT covers depth in [1, {MONTE_CARLO_MAX_DEPTH}], scaling 'mup' (the "
                        "mean-field limit; the NTK limit is lazy and SP has no width-independent limit here), "
                        "output_dim=1, full-batch GD (batch_size=None, online=False) on fixed samples",
}


@dataclass
class RunConfig:
    """One training run of an MLP (notation of docs/theory.md, Notation and scalings).

    Sizes: ``width`` N, ``depth`` L hidden layers (weight matrices W0..WL;
    W1..W(L-1) are the square hidden matrices), ``input_dim`` D,
    ``output_dim`` C, ``samples`` P. Data: a teacher drawn from ``data_seed``
    unless arrays are given to ``simulate``; ``online`` draws fresh samples
    each step. ``data = "digits"`` trains on the first ``samples`` images of
    the training split of ``specdyn.data.digits`` (split drawn from
    ``data_seed``, centered targets; needs input_dim 64, output_dim 10,
    samples <= 1348, online false and scikit-learn). Training: full-batch GD when ``batch_size`` is None, else SGD.
    Tracking happens at every ``track_every``-th step (or at the listed steps)
    and always at step 0 and at the last step.
    ``output_normalization`` is "sum" (the loss (1/2P) sum over samples and
    outputs, the default) or "mean" (divided by C as well: the normalization
    under which muP with many outputs has a width limit). A config at the
    default "sum" leaves the field out of ``to_json`` (``to_dict`` has every
    field), so that
    configs, stored results and checkpoints written before the field existed
    compare equal on resume.
    """

    width: int = 256
    depth: int = 2
    input_dim: int = 8
    output_dim: int = 1
    samples: int = 16
    activation: str = "linear"
    scaling: str = "mup"
    gamma0: float = 1.0
    eta0: float = 0.1
    sigma: float | list[float] = 1.0
    steps: int = 100
    batch_size: int | None = None
    online: bool = False
    seed: int = 0
    data_seed: int = 0
    teacher: str = "linear"
    noise: float = 0.0
    track_every: int | list[int] = 1
    top_k: int = 4
    track_sharpness: bool = True
    track_hessian: bool = False
    bulk_steps: list[int] = field(default_factory=list)
    bulk_bins: int = 80
    dtype: str = "float64"
    divergence_bound: float = 1e8
    checkpoint_every: int = 0
    svd_tol: float | None = None
    data: str = "teacher"
    output_normalization: str = "sum"

    def __post_init__(self) -> None:
        self._check_fields()
        object.__setattr__(self, "_checked", True)

    def __setattr__(self, name: str, value) -> None:
        # Every assignment after construction is validated like the constructor's
        # arguments (with the other fields, for the ranges that depend on them);
        # a bad value raises and leaves the config as it was.
        if not self.__dict__.get("_checked"):
            object.__setattr__(self, name, value)
            return
        if name not in _FIELD_NAMES:
            raise AttributeError(f"RunConfig has no field {name!r}; fields: {', '.join(sorted(_FIELD_NAMES))}")
        try:
            checked = dataclasses.replace(self, **{name: value})
        except ValueError as exc:
            if str(exc).startswith(name):
                raise
            # another field's range depends on this one: say which assignment broke it
            raise ValueError(f"{name} = {value!r} conflicts with the other fields: {exc}") from None
        for key in _FIELD_NAMES:
            object.__setattr__(self, key, getattr(checked, key))

    def validated(self) -> "RunConfig":
        """A validated copy (catches in-place edits of list fields such as ``cfg.bulk_steps.append(-1)``)."""
        return dataclasses.replace(self)

    def _check_fields(self) -> None:
        # sizes are C++ ints; what fits in memory is checked by simulate (see training.check_memory)
        self.width = V.integer("width", self.width, 1, MAX_SIZE)
        self.depth = V.integer("depth", self.depth, 1, MAX_DEPTH)
        self.input_dim = V.integer("input_dim", self.input_dim, 1, MAX_SIZE)
        self.output_dim = V.integer("output_dim", self.output_dim, 1, MAX_SIZE)
        self.samples = V.integer("samples", self.samples, 1, MAX_SIZE)
        V.choice("activation", self.activation, ACTIVATIONS)
        V.choice("scaling", self.scaling, SCALINGS)
        V.choice("output_normalization", self.output_normalization, OUTPUT_NORMALIZATIONS)
        V.choice("teacher", self.teacher, TEACHERS)
        self.gamma0 = V.real("gamma0", self.gamma0, 0.0, None, lo_open=True)
        self.eta0 = V.real("eta0", self.eta0, 0.0, None, lo_open=True)
        if isinstance(self.sigma, (list, tuple)):
            n = self.depth + 1
            if len(self.sigma) != n:
                raise ValueError(f"sigma must be one float or a list of {n} floats (layers W0..W{self.depth}); "
                                 f"got {len(self.sigma)} values")
            self.sigma = [V.real(f"sigma[{i}]", s, 0.0, None, lo_open=True) for i, s in enumerate(self.sigma)]
        else:
            self.sigma = V.real("sigma", self.sigma, 0.0, None, lo_open=True)
        self.steps = V.integer("steps", self.steps, 0)
        if self.batch_size is not None:
            self.batch_size = V.integer("batch_size", self.batch_size, 1, self.samples,
                                        because=f"samples = {self.samples}")
        _boolean("online", self.online)
        self.seed = V.integer("seed", self.seed, 0, 2**63 - 1)
        self.data_seed = V.integer("data_seed", self.data_seed, 0, 2**63 - 1)
        self.noise = V.real("noise", self.noise, 0.0)
        V.choice("data", self.data, DATA)
        if self.data != "teacher":
            from .data import check_named_sizes

            if self.online:
                raise ValueError(f"online must be false when data = {self.data!r} (online training draws fresh "
                                 "teacher samples)")
            check_named_sizes(self.data, self.samples, self.input_dim, self.output_dim)
        if isinstance(self.track_every, (list, tuple)):
            self.track_every = sorted({V.integer("track_every[]", s, 0, self.steps, because=f"steps = {self.steps}") for s in self.track_every})
        else:
            self.track_every = V.integer("track_every", self.track_every, 1)
        # per layer, at most min(fan_out, fan_in) values are tracked
        self.top_k = V.integer("top_k", self.top_k, 1, max(1, self.width - 1),
                               because=f"at most width - 1, width = {self.width}")
        _boolean("track_sharpness", self.track_sharpness)
        _boolean("track_hessian", self.track_hessian)
        if not isinstance(self.bulk_steps, (list, tuple)):
            raise ValueError(f"bulk_steps must be a list of steps in [0, {self.steps}] (e.g. [{self.steps}]); "
                             f"got {self.bulk_steps!r}")
        self.bulk_steps = sorted({V.integer("bulk_steps[]", s, 0, self.steps, because=f"steps = {self.steps}") for s in self.bulk_steps})
        self.bulk_bins = V.integer("bulk_bins", self.bulk_bins, 4, 10000)
        V.choice("dtype", self.dtype, ("float32", "float64"))
        self.divergence_bound = V.real("divergence_bound", self.divergence_bound, 0.0, None, lo_open=True)
        self.checkpoint_every = V.integer("checkpoint_every", self.checkpoint_every, 0)
        # Lanczos residual tolerance of tracked spectra (relative to ||A||); None: 1e-8 (float64), 1e-4 (float32)
        if self.svd_tol is not None:
            self.svd_tol = V.real("svd_tol", self.svd_tol, 0.0, 0.1, lo_open=True)
        if self.track_sharpness and self.samples * self.output_dim > MAX_GRAM_ROWS:
            raise ValueError(f"samples * output_dim must be <= {MAX_GRAM_ROWS} when track_sharpness is true "
                             f"(the NTK Gram is (P C) x (P C)); got {self.samples} * {self.output_dim}")
        self._check_scales()

    def _check_scales(self) -> None:
        """gamma0 and eta0 must give finite, nonzero multipliers and learning rate at this width."""
        bad = (f"gamma0 = {self.gamma0:g} and eta0 = {self.eta0:g} at width {self.width} ({self.scaling}) make "
               "{what} {value}; they must keep it finite and > 0")
        try:
            sc = scales(self.scaling, self.width, self.depth, self.input_dim, self.output_dim, self.gamma0,
                        self.eta0, self.sigma)
        except OverflowError:  # float ** overflows with an error rather than to inf
            raise ValueError(bad.format(what="the raw learning rate", value="overflow")) from None
        derived = {"the output scale gamma": sc.gamma, "the raw learning rate": sc.learning_rate,
                   "the readout multiplier 1/(gamma sqrt(N))": sc.multipliers[-1],
                   "the initial weight std": min(sc.init_stds)}
        for what, value in derived.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(bad.format(what=what, value=f"{value:g}"))

    # ---- derived -----------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        """Names of the weight matrices, W0 .. WL."""
        return [f"W{l}" for l in range(self.depth + 1)]

    def layer_sigmas(self) -> list[float]:
        """The initial weight scale sigma of every matrix W0..WL (one ``sigma`` stands for all)."""
        if isinstance(self.sigma, list):
            return [float(s) for s in self.sigma]
        return [float(self.sigma)] * (self.depth + 1)

    def layer_sigma(self, layer) -> float:
        """sigma of one weight matrix, by index ``l`` or name ``"Wl"``."""
        l = int(str(layer)[1:]) if isinstance(layer, str) and str(layer).startswith("W") else layer
        sigmas = self.layer_sigmas()
        if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < len(sigmas):
            raise ValueError(f"layer must be an index in [0, {self.depth}] or a name W0..W{self.depth}; "
                             f"got {layer!r}")
        return sigmas[l]

    def limit_gaps(self, model: str) -> list[str]:
        """The fields of this run outside what the limit ``model`` covers (``"depth=3"``, ...); [] when covered."""
        V.choice("model", model, tuple(LIMIT_RULES))
        return [f"{key}={getattr(self, key)!r}" for key, allowed in LIMIT_RULES[model].items()
                if getattr(self, key) not in allowed]

    def limits(self) -> list[str]:
        """The infinite-width limits of ``specdyn.theory`` that cover this run (in the order of LIMIT_RULES)."""
        return [m for m in LIMIT_RULES if not self.limit_gaps(m)]

    def tracked_steps(self) -> list[int]:
        """Steps at which spectra and the loss are recorded (0 and the last always)."""
        if isinstance(self.track_every, list):
            steps = set(self.track_every)
        else:
            steps = set(range(0, self.steps + 1, self.track_every))
        steps |= {0, self.steps}
        return sorted(steps)

    # ---- I/O ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        d = self.to_dict()
        # fields added after results were stored: absent at their default (see the class docstring)
        for name, default in _OMITTED_AT_DEFAULT.items():
            if d[name] == default:
                del d[name]
        return json.dumps(d, sort_keys=True)

    def replace(self, **changes) -> "RunConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> "RunConfig":
        if not isinstance(d, dict):
            raise ValueError(f"a run config must be a table of RunConfig fields; got {type(d).__name__}")
        for key in d:
            if key not in _FIELD_NAMES:
                raise ValueError(f"unknown key {where}{key!r}; allowed keys: {', '.join(sorted(_FIELD_NAMES))}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_toml(cls, path: str | Path) -> "RunConfig":
        """Load a ``[run]`` table (or a top-level table) from a TOML file."""
        data = load_toml(path)
        table = data.get("run", data)
        return cls.from_dict(table, where="run.")


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(RunConfig))
_OMITTED_AT_DEFAULT = {"output_normalization": "sum"}


def check_limit(config, model: str) -> None:
    """One ValueError, saying what the limit ``model`` covers and which fields are outside it,
    unless ``config`` is a RunConfig that ``model`` covers (the check of every theory)."""
    if not isinstance(config, RunConfig):
        raise ValueError(f"config must be a specdyn.RunConfig; got {type(config).__name__}")
    gaps = config.limit_gaps(model)
    if gaps:
        raise ValueError(f"{LIMIT_COVERS[model]}; got {', '.join(gaps)}")


def _boolean(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false; got {value!r}")


def load_toml(path: str | Path) -> dict:
    """Parse a TOML file; a syntax error becomes a ValueError naming the file."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib  # type: ignore
    path = Path(path)
    if not path.exists():
        raise ValueError(f"config file {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} is not a file (a directory?); pass a TOML file")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {str(path)!r} is not valid TOML: {exc}") from None

