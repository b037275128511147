"""Hostile input over the public API and the CLI, each batch in its own process.

Hypothesis draws cases (matrices of every dtype, shape and scale, NaN and inf,
mutated configs, crafted checkpoints, damaged stores, bad CLI arguments);
``hostile_worker.py`` runs them in a child process and judges each against an
independent reference. Every case must end in a checked result, an honest
"not certified" flag, or one ValueError naming the argument at fault: no crash,
no hang, no other exception, no wrong answer, nothing lost from a store.

The counts (tried / clear error / correct) are printed at the end of the session.
``SPECDYN_HOSTILE_EXAMPLES`` sets the batches per kind (default 3, the CI run; 20 or more for a longer hunt).
"""
from __future__ import annotations

import collections
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import specdyn

WORKER = Path(__file__).with_name("hostile_worker.py")
BATCH = 12
EXAMPLES = int(os.environ.get("SPECDYN_HOSTILE_EXAMPLES", "3"))
COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
OK = {"correct", "flagged", "clear"}


def run_batch(cases, timeout=900):
    env = dict(os.environ, PYTHONPATH=str(Path(specdyn.__file__).parent.parent), OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    p = subprocess.run([sys.executable, str(WORKER)], input=pickle.dumps(cases), capture_output=True,
                       env=env, timeout=timeout)
    results, started = [], None
    for line in p.stdout.decode().splitlines():
        msg = json.loads(line)
        if "start" in msg:
            started = msg["start"]
        else:
            results.append(msg)
    if p.returncode != 0 or len(results) != len(cases):
        case = cases[started] if started is not None else None
        raise AssertionError(f"worker died (exit {p.returncode}) in case {started}: {case!r:.600}\n"
                             f"{p.stderr.decode()[-2000:]}")
    bad = []
    for r, c in zip(results, cases):
        COUNTS[c["kind"]]["tried"] += 1
        COUNTS[c["kind"]][r["outcome"]] += 1
        if r["outcome"] not in OK:
            bad.append(f"{r['outcome']}: {r['detail']} <- {_short(c)}")
    assert not bad, "\n".join(bad)


def _short(c):
    return {k: (f"array{getattr(v, 'shape', '')}:{getattr(v, 'dtype', '')}" if isinstance(v, np.ndarray) else v)
            for k, v in c.items()}


def summary_lines() -> list[str]:
    """The counts table (printed at the end of the session by conftest.pytest_terminal_summary)."""
    if not COUNTS:
        return []
    lines = ["hostile inputs: kind             tried  clear error  correct  flagged  other"]
    total = collections.Counter()
    for kind, c in sorted(COUNTS.items()):
        other = c["tried"] - c["clear"] - c["correct"] - c["flagged"]
        lines.append(f"hostile inputs: {kind:<17}{c['tried']:>5}{c['clear']:>13}{c['correct']:>9}"
                     f"{c['flagged']:>9}{other:>7}")
        total.update(c)
    lines.append(f"hostile inputs: {'all':<17}{total['tried']:>5}{total['clear']:>13}{total['correct']:>9}"
                 f"{total['flagged']:>9}{total['tried'] - total['clear'] - total['correct'] - total['flagged']:>7}")
    return lines


SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))

# ---- matrices --------------------------------------------------------------------------------------------

DTYPES = ["float64", "float32", "int64", "complex128", "bool", "object", "float16"]


@st.composite
def matrices(draw, square=False):
    kind = draw(st.sampled_from(["ok"] * 4 + ["ndim", "empty", "nan", "inf", "dtype", "list"]))
    n = draw(st.integers(1, 40))
    m = n if square else draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**16))
    A = np.random.default_rng(seed).standard_normal((n, m)) * 10.0 ** draw(st.integers(-300, 300))
    if square:
        A = A + A.T
    if kind == "ndim":
        return A.reshape(-1) if draw(st.booleans()) else A[None]
    if kind == "empty":
        return np.zeros((0, m))
    if kind in ("nan", "inf"):
        A = A.copy()
        A.flat[draw(st.integers(0, A.size - 1))] = np.nan if kind == "nan" else -np.inf
    if kind == "dtype":
        dt = draw(st.sampled_from(DTYPES))
        with np.errstate(all="ignore"):
            A = A.astype(object).astype(str) if dt == "object" else A.astype(dt)
    if kind == "list":
        return A.tolist()
    return A


HOSTILE_INTS = st.one_of(st.integers(-3, 50), st.sampled_from([2**63, -(2**70), 1.5, float("nan"), "3", None, True]))
HOSTILE_TOLS = st.one_of(st.just(1e-10), st.sampled_from([0.0, -1.0, 1.0, 2.0, float("nan"), float("inf"), 1e-300,
                                                          "1e-8", None, 0.5]))


@st.composite
def lanczos_cases(draw):
    """One argument at a time is hostile (or none): the others are valid, so a case reaches the solver."""
    fn = draw(st.sampled_from(["top_singular", "top_singular", "top_eigs", "spectral_density"]))
    hostile = draw(st.sampled_from(["none", "none", "A", "k", "tol", "op"]))
    if fn == "top_singular":
        A = draw(matrices()) if hostile == "A" else draw(valid_matrix())
        kmax = min(A.shape) if isinstance(A, np.ndarray) and A.ndim == 2 else 1
        k = draw(HOSTILE_INTS) if hostile == "k" else draw(st.integers(1, max(1, kmax)))
        tol = draw(HOSTILE_TOLS) if hostile == "tol" else draw(st.sampled_from([1e-10, 1e-6, 1e-3]))
        return {"kind": fn, "A": A, "k": k, "tol": tol, "names": ("A", "k", "tol")}
    if fn == "top_eigs":
        n = draw(st.integers(2, 90))
        S = np.random.default_rng(draw(st.integers(0, 99))).standard_normal((n, n))
        S = (S + S.T) * 10.0 ** draw(st.integers(-250, 250))
        which = draw(st.sampled_from(["largest", "both", "x"])) if hostile == "k" else \
            draw(st.sampled_from(["largest", "both"]))
        k = draw(HOSTILE_INTS) if hostile == "k" else draw(st.integers(1, max(1, n // 2 if which == "both" else n)))
        kind = draw(st.sampled_from(["complex", "nan", "shape"])) if hostile == "op" else \
            draw(st.sampled_from([None, "plain"]))
        return {"kind": fn, "A": S, "k": k, "which": which, "callable": kind, "names": ("op", "k", "which", "n")}
    A = draw(matrices()) if hostile == "A" else draw(valid_matrix(140))  # (densities are of s^2)
    grid = draw(st.sampled_from([np.array([1.0]), np.array([2.0, 1.0]), np.array([0.0, np.nan, 1.0]),
                                 "grid"])) if hostile in ("k", "tol", "op") else None
    if grid is None:
        B = np.asarray(A, dtype=np.float64) if isinstance(A, np.ndarray) and A.dtype.kind in "fiu" else None
        with np.errstate(all="ignore"):
            ok = B is not None and B.ndim == 2 and B.size and np.all(np.isfinite(B)) and np.abs(B).max() < 1e140
            top = float(np.linalg.norm(B, 2)) ** 2 if ok else 1.0
        grid = np.linspace(0, 1.1 * top + 1e-300, 9)
    return {"kind": fn, "A": A, "grid": grid, "names": ("A", "grid")}


@st.composite
def valid_matrix(draw, exponent=290):
    n, m = draw(st.integers(1, 60)), draw(st.integers(1, 60))
    A = np.random.default_rng(draw(st.integers(0, 2**16))).standard_normal((n, m))
    A = A * 10.0 ** draw(st.integers(-exponent, exponent))
    return A.astype(draw(st.sampled_from(["float64", "float64", "float32"]))) if abs(np.log10(np.abs(A).max())) < 30 \
        else A


@SETTINGS
@given(st.lists(lanczos_cases(), min_size=BATCH, max_size=BATCH))
def test_hostile_lanczos(cases):
    run_batch(cases)


# ---- the rest of the public API ----------------------------------------------------------------------

HOSTILE_ANY = [-1, 0, 1, 2**64, -(2**70), 1.5, float("nan"), float("inf"), -float("inf"), 1e300, "3", None, True,
               [], [1.0, 2.0], {"a": 1}, np.float64(2.0), np.int64(7)]
API_VALID = {
    "gaussian": dict(n=st.integers(1, 80), m=st.integers(1, 80), seed=st.integers(0, 2**64 - 1),
                     sigma=st.sampled_from([0.0, 1e-3, 1.0, 7.5]), dtype=st.sampled_from(["float64", "float32"]),
                     stream=st.integers(0, 9)),
    "density": dict(law=st.sampled_from(["quarter_circle", "marchenko_pastur"]),
                    x=st.sampled_from([np.linspace(-1, 5, 13), [0.5, float("nan"), 1.0], 1.0, np.array([])]),
                    ratio=st.sampled_from([0.05, 0.5, 1.0, 3.0]), sigma=st.sampled_from([0.1, 1.0, 4.0])),
    "bgn": dict(thetas=st.sampled_from([[3.0, 1.5], 0.2, [0.0], [1.0, 2.0, 10.0]]),
                ratio=st.sampled_from([0.25, 1.0, 2.0]), sigma=st.sampled_from([0.5, 1.0])),
    "teacher": dict(samples=st.integers(1, 40), input_dim=st.integers(1, 12), output_dim=st.integers(1, 3),
                    seed=st.integers(0, 2**63 - 1), kind=st.sampled_from(["linear", "tanh"]),
                    noise=st.sampled_from([0.0, 0.1])),
    "store_group": dict(group=st.sampled_from([None, "a", "runs/mup_1024", "x=1/y+2"])),
}
API_HOSTILE = {"group": ["", "/", "a//b", "../x", ".hidden", "a/../../b", "a b", "a\\b", 3, "x" * 300, "/abs"],
               "kind": ["quadratic", "", None, 3], "dtype": ["float16", "int8", "complex128", None, "f8x"],
               "law": None, "thetas": [[-1.0], [float("nan")], "abc", [[1.0, 2.0]], [1e308, float("inf")]],
               "x": None}


@st.composite
def api_cases(draw):
    fn = draw(st.sampled_from(sorted(API_VALID)))
    args = {k: draw(v) for k, v in API_VALID[fn].items()}
    names = [k for k in args if API_HOSTILE.get(k, ()) is not None]
    hostile = draw(st.sampled_from(["none"] + names))
    if hostile != "none":
        args[hostile] = draw(st.sampled_from(HOSTILE_ANY + list(API_HOSTILE.get(hostile, []))))
    return {"kind": "api", "fn": fn, "args": args, "names": (hostile,) if hostile != "none" else ("",)}


@SETTINGS
@given(st.lists(api_cases(), min_size=BATCH, max_size=BATCH))
def test_hostile_api(cases):
    run_batch(cases)


# ---- configs ---------------------------------------------------------------------------------------------

BASE = dict(width=24, depth=2, input_dim=4, samples=6, steps=4, top_k=2, gamma0=1.0, eta0=0.1)
FIELDS = ["width", "depth", "input_dim", "output_dim", "samples", "activation", "scaling", "gamma0", "eta0", "sigma",
          "steps", "batch_size", "online", "seed", "data_seed", "teacher", "noise", "track_every", "top_k",
          "track_sharpness", "track_hessian", "bulk_steps", "bulk_bins", "dtype", "divergence_bound",
          "checkpoint_every", "svd_tol", "data"]
HOSTILE_VALUES = [-1, 0, 1, 3, 2**63, 300_000, "digits", 1e300, -1e300, float("nan"), float("inf"), "no", "yes", True, False, None, [],
                  [-3, 2], [1, 2, 3], 3.5, "float16", "tanh", "sp", 5000, 1e-300, {"a": 1}]


@st.composite
def config_cases(draw):
    field = draw(st.sampled_from(FIELDS))
    return {"kind": "config", "base": BASE, "field": field, "value": draw(st.sampled_from(HOSTILE_VALUES)),
            "mode": draw(st.sampled_from(["construct", "assign"])), "names": (field,)}


@SETTINGS
@given(st.lists(config_cases(), min_size=BATCH, max_size=BATCH))
def test_hostile_configs(cases):
    run_batch(cases)


@st.composite
def checkpoint_cases(draw):
    return {"kind": "checkpoint", "base": {**BASE, "steps": 6, "checkpoint_every": 2}, "stop": draw(st.sampled_from([2, 4])),
            "key": draw(st.integers(0, 1000)),
            "how": draw(st.sampled_from(["drop", "transpose", "shrink", "nan", "negative", "huge", "true", "float32"])),
            "names": ("checkpoint",)}


@SETTINGS
@given(st.lists(checkpoint_cases(), min_size=BATCH, max_size=BATCH))
def test_hostile_checkpoints(cases):
    run_batch(cases)


# ---- stores ----------------------------------------------------------------------------------------------

@st.composite
def store_cases(draw):
    return {"kind": "store", "file": draw(st.integers(0, 1000)), "pos": draw(st.integers(0, 10**6)),
            "how": draw(st.sampled_from(["delete", "flip", "flip", "truncate", "garbage", "rmdir"])), "names": ()}


@SETTINGS
@given(st.lists(store_cases(), min_size=BATCH, max_size=BATCH))
def test_hostile_stores(cases):
    run_batch(cases)


# ---- the CLI ---------------------------------------------------------------------------------------------

def _toml(field, value):
    def lit(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, float) and not np.isfinite(v):
            return "nan" if np.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, list):
            return "[" + ", ".join(lit(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {lit(x)}" for k, x in v.items()) + " }"
        return repr(v)

    table = {**BASE, field: value}
    return "[run]\n" + "".join(f"{k} = {lit(v)}\n" for k, v in table.items() if v is not None)


@st.composite
def cli_cases(draw):
    what = draw(st.sampled_from(["run", "run", "theory", "plot", "run_dir", "sweep_scheduler"]))
    if what in ("run", "theory"):
        field = draw(st.sampled_from(FIELDS))
        value = draw(st.sampled_from(HOSTILE_VALUES))
        args = ["run", "{cfg}", "--out", "{dir}/o.zarr"] if what == "run" else ["theory", "{cfg}", "--out", "{dir}/t"]
        return {"kind": "cli", "args": args, "toml": _toml(field, value), "names": ()}
    if what == "plot":
        target = draw(st.sampled_from(["{dir}/afile", "{dir}", "{dir}/missing.zarr"]))
        return {"kind": "cli", "args": [draw(st.sampled_from(["plot", "verify"])), target], "make_file": True,
                "names": ()}
    if what == "run_dir":
        return {"kind": "cli", "args": ["run", "{dir}"], "names": ()}
    return {"kind": "cli", "args": ["sweep", "{cfg}", "--scheduler", draw(st.sampled_from(["nonsense", "tcp://",
                                                                                         "tcp://127.0.0.1:1"]))],
            "toml": "[study]\nname = \"grid\"\n" + _toml("steps", 2) + "[grid]\nwidth = [16]\n", "names": ()}


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.lists(cli_cases(), min_size=4, max_size=4))
def test_hostile_cli(cases):
    run_batch(cases)
