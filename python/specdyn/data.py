"""Training data: the Gaussian teacher of THEORY.md and checks of user arrays.

The teacher is generated in C++ from counter-based streams of ``seed``, so the
samples a run draws online (fresh each step) continue the same sequence:
sample mu is the same vector whichever call produces it.
"""
from __future__ import annotations

import math

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
    first = V.integer("first", first, 0)
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
