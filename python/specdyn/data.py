"""Training data: the Gaussian teacher (docs/theory.md, Notation and scalings), a real data set (digits)
and checks of user arrays.

The teacher is generated in C++ from counter-based streams of ``seed``, so the
samples a run draws online (fresh each step) continue the same sequence:
sample mu is the same vector whichever call produces it.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _core
from . import _validate as V

TEACHER_KINDS = ("linear", "tanh")


def teacher_scale(input_dim: int) -> float:
    """The 1/sqrt(D) of the data model y = beta . x / sqrt(D) (a data convention, not a width scaling)."""
    return 1.0 / math.sqrt(input_dim)


def teacher(samples: int, input_dim: int, output_dim: int = 1, seed: int = 0, kind: str = "linear",
            noise: float = 0.0, first: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian inputs and a random teacher.

    x ~ N(0, I_D) (stream kData + 1 of ``seed``); one beta ~ N(0, I_D) per output
    (stream kData); y = beta . x / sqrt(D) for ``kind="linear"``, tanh of it for
    ``kind="tanh"``, plus ``noise`` times N(0, 1) (stream kData + 2).

    Returns X of shape (samples, input_dim) and Y of shape (samples, output_dim),
    float64. ``first`` skips that many samples of the sequence (online training
    draws samples ``samples + t * batch ...`` at step t).
    """
    samples = V.integer("samples", samples, 1)
    input_dim = V.integer("input_dim", input_dim, 1)
    output_dim = V.integer("output_dim", output_dim, 1)
    seed = V.integer("seed", seed, 0, 2**63 - 1)
    V.choice("kind", kind, TEACHER_KINDS)
    noise = V.real("noise", noise, 0.0)
    first = V.integer("first", first, 0, 2**62)
    V.fits_in_memory(f"samples = {samples}, input_dim = {input_dim}, output_dim = {output_dim}",
                     8 * samples * (input_dim + output_dim))
    return _core.nets_teacher(first, samples, input_dim, output_dim, seed, TEACHER_KINDS.index(kind),
                              teacher_scale(input_dim), noise)


def check_data(data, samples: int, input_dim: int, output_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate user data ``(X, Y)``: X (P, D), Y (P, C) or (P,), finite, matching the config.

    Returns float64 C-contiguous X (P, D) and Y (P, C). Raises one ValueError naming the problem.
    """
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError("data must be a pair (X, Y) with X of shape (samples, input_dim) and Y of shape "
                         "(samples, output_dim) or (samples,)")
    X = V.finite_array("data X", data[0], ndim=2)
    Y = V.finite_array("data Y", data[1], ndim=(1, 2))
    if X.shape != (samples, input_dim):
        raise ValueError(f"data X must have shape (samples, input_dim) = ({samples}, {input_dim}) from the config; "
                         f"got {X.shape}")
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.shape != (samples, output_dim):
        raise ValueError(f"data Y must have shape (samples, output_dim) = ({samples}, {output_dim}) or ({samples},) "
                         f"from the config; got {Y.shape}")
    return np.ascontiguousarray(X, dtype=np.float64), np.ascontiguousarray(Y, dtype=np.float64)


DIGITS_TARGETS = ("one_hot", "centered")


class Digits(NamedTuple):
    """A train/test split of the handwritten digits; X standardized, Y one row of 10 targets per image."""

    X_train: np.ndarray
    Y_train: np.ndarray
    X_test: np.ndarray
    Y_test: np.ndarray
    labels_train: np.ndarray
    labels_test: np.ndarray


def digits(test_fraction: float = 0.25, seed: int = 0, targets: str = "one_hot",
           dtype: str = "float64") -> Digits:
    """scikit-learn's bundled handwritten digits (1797 images of 8 x 8 pixels, 10 classes; no download).

    The split is a permutation drawn from ``seed`` (NumPy's default generator):
    the last ``round(test_fraction * 1797)`` images of it are the test set.
    Pixels are standardized with the mean and standard deviation of the
    training set (a pixel constant on it is only centered). ``targets``:
    "one_hot" (1 for the class, 0 elsewhere) or "centered" (one-hot minus 1/10,
    so every target row sums to 0). Needs scikit-learn.
    """
    test_fraction = V.real("test_fraction", test_fraction, 0.0, 1.0, hi_open=True)
    seed = V.integer("seed", seed, 0, 2**63 - 1)
    V.choice("targets", targets, DIGITS_TARGETS)
    dt = V.dtype("dtype", dtype)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("specdyn.data.digits needs scikit-learn (pip install scikit-learn, "
                          "or the extra specdyn[torch])") from None
    images, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(labels.size)
    n_test = int(round(test_fraction * labels.size))
    train, test = order[: labels.size - n_test], order[labels.size - n_test:]
    mean = images[train].mean(axis=0)
    std = images[train].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    X = (images - mean) / std
    Y = np.eye(10)[labels]
    if targets == "centered":
        Y = Y - 0.1
    return Digits(X[train].astype(dt), Y[train].astype(dt), X[test].astype(dt), Y[test].astype(dt),
                  labels[train].astype(np.int64), labels[test].astype(np.int64))


NAMED_DATA = ("digits",)
# digits: 1797 images of 8 x 8 pixels, 10 classes; the training split of named() (test_fraction 0.25)
_NAMED_SIZES = {"digits": (1797 - round(0.25 * 1797), 64, 10)}


def check_named_sizes(name: str, samples: int, input_dim: int, output_dim: int) -> None:
    """The sizes a run needs for a named data set (no data is loaded); one ValueError naming the field."""
    V.choice("data", name, NAMED_DATA)
    samples = V.integer("samples", samples, 1)
    most, pixels, classes = _NAMED_SIZES[name]
    if input_dim != pixels:
        raise ValueError(f"input_dim must be {pixels} when data = {name!r}; got {input_dim}")
    if output_dim != classes:
        raise ValueError(f"output_dim must be {classes} when data = {name!r}; got {output_dim}")
    if not 1 <= samples <= most:
        raise ValueError(f"samples must be in [1, {most}] when data = {name!r} (its training split); got {samples}")


def for_run(config, data=None) -> tuple[np.ndarray, np.ndarray]:
    """The training arrays ``(X (P, D), Y (P, C))`` of a run (float64, C-contiguous): ``data`` checked
    against the config's sizes (:func:`check_data`), or, when None, the named data set of
    ``config.data`` (:func:`named`) or the teacher of ``config.data_seed`` (:func:`teacher`).
    The one loader of the simulation and of every theory."""
    if data is not None:
        return check_data(data, config.samples, config.input_dim, config.output_dim)
    if config.data != "teacher":
        return named(config.data, config.samples, config.input_dim, config.output_dim, seed=config.data_seed)
    return teacher(config.samples, config.input_dim, config.output_dim, config.data_seed, config.teacher,
                   config.noise)


def named(name: str, samples: int, input_dim: int, output_dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Training arrays ``(X, Y)`` of a named data set for a run of the given sizes.

    ``"digits"``: the first ``samples`` images of the training split of
    :func:`digits` (``seed`` draws the split) with centered targets; the run
    needs input_dim 64 and output_dim 10. Raises one ValueError naming the
    mismatched field.
    """
    check_named_sizes(name, samples, input_dim, output_dim)
    d = digits(seed=seed, targets="centered")
    return np.ascontiguousarray(d.X_train[:samples]), np.ascontiguousarray(d.Y_train[:samples])
