"""Runs hostile cases in a child process for tests/test_hostile.py.

Reads a pickled list of cases on stdin, runs each, and prints one JSON line per
case: ``{"start": i}`` before it (so a crash names the case that caused it),
then ``{"i": i, "outcome": ..., "detail": ...}`` with outcome one of

* ``correct``  -- a result, checked against an independent reference;
* ``flagged``  -- a result that says it is not certified (a ConvergenceWarning
  or ``converged=False``), which is honest but not a value;
* ``clear``    -- one ValueError that names the argument or field at fault;
* ``unclear``  -- any other exception, or a ValueError that names nothing;
* ``wrong``    -- a result that disagrees with the reference.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import resource
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import numpy as np

# A hostile size is an error, not a swapped-out machine.
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

import specdyn  # noqa: E402
from specdyn import lanczos  # noqa: E402

CASE_SECONDS = 60


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"no answer within {CASE_SECONDS} s")


def _names(exc: BaseException, names) -> bool:
    text = str(exc)
    return any(n in text for n in names)


def _classify_error(exc: BaseException, names) -> tuple[str, str]:
    line = f"{type(exc).__name__}: {exc}".splitlines()[0][:300] if str(exc) else type(exc).__name__
    if isinstance(exc, ValueError) and _names(exc, names):
        return "clear", line
    return "unclear", line


# ---- lanczos ---------------------------------------------------------------------------------------------

def _is_real_matrix(A) -> bool:
    return (isinstance(A, np.ndarray) and A.ndim == 2 and A.dtype.kind in "fiu" and A.size > 0
            and bool(np.all(np.isfinite(A.astype(np.float64)))))


def case_top_singular(c):
    A, k, tol = c["A"], c["k"], c["tol"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s, U, V, info = specdyn.top_singular(A, k, tol=tol)
    if isinstance(A, list):  # an array-like is read as numpy.asarray reads it
        A = np.asarray(A)
    if not _is_real_matrix(A):
        return "wrong", f"returned a result for a non-real or non-finite A of dtype {getattr(A, 'dtype', None)}"
    B = A.astype(np.float64)
    ref = np.linalg.svd(B, compute_uv=False)[:k]
    if not info["converged"]:
        ok = any(issubclass(w.category, lanczos.ConvergenceWarning) for w in caught)
        return ("flagged", "not converged, warned") if ok else ("wrong", "not converged without a warning")
    scale = ref[0] if ref[0] > 0 else 1.0
    floor = 1e-4 if A.dtype == np.float32 else 1e-9
    if np.max(np.abs(s - ref)) > max(10 * tol, floor) * scale + 1e-300:
        return "wrong", f"s={s} ref={ref}"
    return "correct", ""


def case_top_eigs(c):
    S, k, which = c["A"], c["k"], c["which"]
    op = S
    if c["callable"]:
        kind = c["callable"]

        def op(X):
            Y = S @ X
            if kind == "complex":
                return Y + 1j * Y
            if kind == "nan":
                Y = Y.copy()
                Y.flat[0] = np.nan
                return Y
            if kind == "shape":
                return Y[:-1]
            return Y
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vals, vecs, info = specdyn.top_eigs(op, n=S.shape[0] if c["callable"] else None, k=k, which=which)
    if c["callable"] in ("complex", "nan", "shape"):
        return "wrong", f"accepted an operator that returns {c['callable']} values"
    w = np.linalg.eigvalsh(S)
    ref = w[::-1][:k] if which == "largest" else np.concatenate([w[::-1][:k], w[:k]])
    if not info["converged"]:
        ok = any(issubclass(x.category, lanczos.ConvergenceWarning) for x in caught)
        return ("flagged", "") if ok else ("wrong", "not converged without a warning")
    scale = max(abs(w).max(), 1e-300)
    if np.max(np.abs(vals - ref)) > 1e-8 * scale:
        return "wrong", f"vals={vals} ref={ref}"
    return "correct", ""


def case_spectral_density(c):
    A, grid = c["A"], c["grid"]
    dens, err = specdyn.spectral_density(A, grid, method="exact")
    B = np.asarray(A, dtype=np.float64)
    sym = B.shape[0] == B.shape[1] and np.array_equal(B, B.T)  # ("auto": exactly symmetric)
    ev = np.linalg.eigvalsh(B) if sym else np.linalg.svd(B, compute_uv=False) ** 2
    g = np.asarray(grid, dtype=np.float64)
    counts = np.histogram(ev, bins=g)[0]
    ref = counts / len(ev) / np.diff(g)
    if not np.allclose(dens, ref, rtol=1e-10, atol=1e-12 * max(1.0, np.abs(ref).max())):
        return "wrong", f"density {dens} vs histogram {ref}"
    return "correct", ""


# ---- configs, runs and checkpoints -----------------------------------------------------------------------

def _check_run(ds, cfg):
    if ds.attrs["status"] not in ("ok", "diverged"):
        return "wrong", f"status {ds.attrs['status']!r}"
    if list(ds["step"].values) != cfg.tracked_steps():
        return "wrong", f"steps {list(ds['step'].values)} != {cfg.tracked_steps()}"
    if ds.attrs["status"] == "ok" and not np.all(np.isfinite(ds["loss"].values)):
        return "wrong", "status ok with a non-finite loss"
    if ds.attrs["status"] == "ok" and np.dtype(cfg.dtype) != ds["loss"].dtype and cfg.dtype == "float16":
        return "wrong", "float16 ran as another dtype"
    return "correct", ""


def case_config(c):
    cfg = specdyn.RunConfig(**c["base"])
    if c["mode"] == "construct":
        cfg = specdyn.RunConfig(**{**c["base"], c["field"]: c["value"]})
    else:
        setattr(cfg, c["field"], c["value"])
    X, y = specdyn.data.teacher(cfg.samples, cfg.input_dim, cfg.output_dim, seed=cfg.data_seed)
    ds = specdyn.simulate(cfg, (X, y))
    return _check_run(ds, cfg)


def case_checkpoint(c):
    from specdyn import training

    cfg = specdyn.RunConfig(**c["base"])
    d = Path(tempfile.mkdtemp())
    path = d / "run.ckpt"
    trainer, (X, Y) = training.build_trainer(cfg, None)
    trainer.run(c["stop"], None)
    training._save_checkpoint(path, cfg, trainer, X, Y)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    key, how = c["key"], c["how"]
    keys = sorted(arrays)
    key = keys[key % len(keys)]
    a = arrays[key]
    if how == "drop":
        del arrays[key]
    elif how == "transpose":
        arrays[key] = a.T.copy() if a.ndim == 2 else (a[::-1].copy() if a.ndim == 1 else np.array([a]))
    elif how == "shrink":
        arrays[key] = a.reshape(-1)[: max(a.size - 1, 0)]
    elif how == "nan":
        arrays[key] = np.full_like(a, np.nan, dtype=np.float64) if a.dtype.kind != "U" else np.array("nan")
    elif how == "negative":
        arrays[key] = -np.abs(a.astype(np.float64)) - 1 if a.dtype.kind != "U" else np.array("{}")
    elif how == "huge":
        arrays[key] = np.full(a.shape, 2**40, dtype=np.int64) if a.dtype.kind != "U" else np.array("x" * 10)
    elif how == "true":
        arrays[key] = np.array(True)
    elif how == "float32":
        arrays[key] = a.astype(np.float32) if a.dtype.kind == "f" else a
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    detail = f"{key}:{how}"
    ds = specdyn.simulate(cfg, resume=True, checkpoint=path)
    ref = specdyn.simulate(cfg)
    for v in ("loss", "singular_values"):
        if not np.array_equal(ds[v].values, ref[v].values, equal_nan=True):
            return "wrong", f"{detail}: {v} differs from an uninterrupted run"
    if ds.attrs["status"] != ref.attrs["status"]:
        return "wrong", f"{detail}: status {ds.attrs['status']} vs {ref.attrs['status']}"
    return "correct", detail


# ---- stores ----------------------------------------------------------------------------------------------

def case_store(c):
    import xarray as xr

    d = Path(tempfile.mkdtemp()) / "s.zarr"
    runs = {}
    for i, g in enumerate(("runs/a", "runs/b")):
        ds = xr.Dataset({"loss": (("step",), np.linspace(1, 2, 6) + i), "step_index": (("step",), np.arange(6))},
                        coords={"step": np.arange(6) * 10}, attrs={"kind": "simulation", "i": i})
        specdyn.save(ds, d, group=g)
        runs[g] = ds
    files = sorted(p for p in (d / "runs" / "a").rglob("*") if p.is_file())
    target = files[c["file"] % len(files)]
    how = c["how"]
    data = target.read_bytes()
    if how == "delete":
        target.unlink()
    elif how == "flip" and data:
        pos = c["pos"] % len(data)
        target.write_bytes(data[:pos] + bytes([data[pos] ^ (1 << (c["pos"] % 8))]) + data[pos + 1:])
    elif how == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        target.write_bytes(b"\x00garbage{")
    elif how == "rmdir":
        import shutil

        shutil.rmtree(target.parent)
    detail = f"{how} {target.relative_to(d)}"
    # nothing lost: the undamaged run loads unchanged, whatever happened to its neighbour
    xr.testing.assert_identical(specdyn.load(d, "runs/b"), runs["runs/b"])
    try:
        listed = specdyn.storage.completed_groups(d)
    except specdyn.storage.DamagedGroupError as exc:  # unreadable metadata: the listing names the group
        return ("clear", f"{detail}: {str(exc)[:200]}") if "runs/a" in str(exc) else ("unclear", str(exc))
    if "runs/b" not in listed:
        return "wrong", f"{detail}: the undamaged run is no longer listed"
    try:
        got = specdyn.load(d, "runs/a")
    except ValueError as exc:
        if "runs/a" in str(exc):
            return "clear", f"{detail}: {str(exc)[:200]}"
        return "unclear", f"{detail}: {exc}"
    try:
        xr.testing.assert_identical(got, runs["runs/a"])
    except AssertionError:
        return "wrong", f"{detail}: a damaged run loaded with changed content"
    return "correct", detail


# ---- the CLI ---------------------------------------------------------------------------------------------

def case_cli(c):
    d = Path(tempfile.mkdtemp())
    args = list(c["args"])
    if c.get("toml") is not None:
        (d / "cfg.toml").write_text(c["toml"])
        args = [a.replace("{cfg}", str(d / "cfg.toml")) for a in args]
    args = [a.replace("{dir}", str(d)) for a in args]
    if c.get("make_file"):
        (d / "afile").write_text("not a store")
    env = dict(os.environ, COLUMNS="400", NO_COLOR="1")
    p = subprocess.run([sys.executable, "-m", "specdyn", *args], capture_output=True, text=True, env=env,
                       timeout=CASE_SECONDS, cwd=d)
    err = p.stderr.strip()
    if "Traceback" in p.stderr or p.returncode not in (0, 2):
        return "unclear", f"exit {p.returncode}: {err[-300:]}"
    if p.returncode == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        if len(lines) != 1:
            return "unclear", f"exit 2 with {len(lines)} lines: {err[:300]}"
        return "clear", lines[0][:200]
    return "correct", " ".join(args)


# ---- the rest of the public API: one hostile argument at a time, valid calls checked ---------------------

def _finite_real(x) -> bool:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return False
    return isinstance(x, (int, np.integer)) or bool(np.isfinite(x))


def _int_in(x, lo, hi=None) -> bool:
    return (isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= lo
            and (hi is None or x <= hi))


def _api_gaussian(a):
    valid = (_int_in(a["n"], 1, 2000) and _int_in(a["m"], 1, 2000) and _int_in(a["seed"], 0, 2**64 - 1)
             and _int_in(a["stream"], 0, 2**64 - 1) and _finite_real(a["sigma"]) and a["sigma"] >= 0
             and a["dtype"] in ("float64", "float32", np.float64, np.float32, None))  # None: NumPy's float64
    G = specdyn.rmt.gaussian(**a)
    if not valid:
        return "wrong", f"accepted {a}"
    if G.shape != (a["n"], a["m"]) or G.dtype != np.dtype(a["dtype"] or "float64"):
        return "wrong", f"shape {G.shape} dtype {G.dtype}"
    head = specdyn.rmt.gaussian(**{**a, "n": 1})
    if not np.array_equal(G[:1], head):  # row-major counter stream: a prefix of rows is the smaller draw
        return "wrong", "first row differs from gaussian(1, m)"
    if a["sigma"] == 0:
        return ("correct", "") if not np.any(G) else ("wrong", "sigma 0 gave nonzero entries")
    z = G.astype(np.float64).ravel() / a["sigma"]
    if z.size >= 400 and (abs(z.mean()) > 6 / np.sqrt(z.size) or abs(z.std() - 1) > 6 / np.sqrt(z.size)):
        return "wrong", f"mean {z.mean()}, std {z.std()} of N(0, 1) draws"
    return "correct", ""


def _api_density(a):
    fn, sigma = a["law"], a["sigma"]
    ok_sigma = _finite_real(sigma) and sigma > 0
    ok_ratio = fn == "quarter_circle" or (_finite_real(a["ratio"]) and a["ratio"] > 0)
    x = np.asarray(a["x"], dtype=np.float64)
    if fn == "quarter_circle":
        out = specdyn.rmt.quarter_circle_density(a["x"], sigma=sigma)
    else:
        out = specdyn.rmt.marchenko_pastur_density(a["x"], ratio=a["ratio"], sigma=sigma)
    if not (ok_sigma and ok_ratio):
        return "wrong", f"accepted sigma={sigma!r}, ratio={a.get('ratio')!r}"
    sigma = float(sigma)
    if fn != "quarter_circle":
        a["ratio"] = float(a["ratio"])
    if np.any(np.isnan(x) != np.isnan(out)):
        return "wrong", "a NaN abscissa gave a number (or a number gave NaN)"
    # independent: the density integrates to 1 (trapezoid on a fine grid of its own support)
    if fn == "quarter_circle":
        g = np.linspace(0, 2 * sigma, 200001)
        total = np.trapezoid(specdyn.rmt.quarter_circle_density(g, sigma), g)
    else:
        lo, hi = sigma**2 * (1 - np.sqrt(a["ratio"])) ** 2, sigma**2 * (1 + np.sqrt(a["ratio"])) ** 2
        g = lo + (hi - lo) * (0.5 - 0.5 * np.cos(np.linspace(0, np.pi, 200001)))  # dense at the edges
        total = np.trapezoid(specdyn.rmt.marchenko_pastur_density(g, a["ratio"], sigma), g)
    if abs(total - 1) > 2e-3:
        return "wrong", f"integrates to {total}"
    return "correct", ""


def _api_bgn(a):
    raw = np.asarray(a["thetas"]) if not isinstance(a["thetas"], dict) else np.asarray(None)
    th = np.atleast_1d(raw.astype(np.float64)) if raw.dtype.kind in "iuf" else None  # real numbers only
    valid = (th is not None and np.all(np.isfinite(th)) and np.all(th >= 0) and _finite_real(a["ratio"])
             and a["ratio"] > 0 and _finite_real(a["sigma"]) and a["sigma"] > 0)
    out = specdyn.rmt.bgn_outliers(a["thetas"], ratio=a["ratio"], sigma=a["sigma"])
    if not valid:
        return "wrong", f"accepted {a}"
    s, sig, c = out["singular_values"], float(a["sigma"]), float(a["ratio"])
    # closed form at c = 1 (theta/sigma + sigma/theta above threshold), and the edge below it
    edge = sig * (1 + np.sqrt(c))
    if np.any(s < edge * (1 - 1e-12)) or not np.all(np.isfinite(s)):
        return "wrong", "an outlier below the bulk edge"
    if c == 1.0:
        ref = np.where(th > sig, th + sig**2 / np.where(th > 0, th, 1), 2 * sig)
        if not np.allclose(s, ref, rtol=1e-12):
            return "wrong", f"{s} vs {ref}"
    return "correct", ""


def _api_teacher(a):
    valid = (_int_in(a["samples"], 1, 5000) and _int_in(a["input_dim"], 1, 500) and _int_in(a["output_dim"], 1, 50)
             and _int_in(a["seed"], 0, 2**63 - 1) and a["kind"] in ("linear", "tanh")
             and _finite_real(a["noise"]) and a["noise"] >= 0)
    X, Y = specdyn.data.teacher(**a)
    if not valid:
        return "wrong", f"accepted {a}"
    P, D, C = a["samples"], a["input_dim"], a["output_dim"]
    if X.shape != (P, D) or Y.shape != (P, C) or not (np.all(np.isfinite(X)) and np.all(np.isfinite(Y))):
        return "wrong", f"shapes {X.shape} {Y.shape} or non-finite values"
    if a["kind"] == "linear" and a["noise"] == 0 and P >= D + 2:  # Y lies in the span of X's columns
        res = Y - X @ np.linalg.lstsq(X, Y, rcond=None)[0]
        if np.abs(res).max() > 1e-8 * max(1.0, np.abs(Y).max()):
            return "wrong", "a noiseless linear teacher that X does not explain"
    return "correct", ""


def _api_store(a):
    import xarray as xr

    d = Path(tempfile.mkdtemp())
    ds = xr.Dataset({"loss": (("step",), np.arange(3.0))}, coords={"step": [0, 1, 2]}, attrs={"kind": "t"})
    group = a["group"]
    name = r"[A-Za-z0-9_=+-][A-Za-z0-9_.=+-]*"
    valid = group in (None, "") or (isinstance(group, str) and bool(re.fullmatch(rf"{name}(/{name})*", group))
                                    and max(map(len, group.split("/"))) <= 200)
    specdyn.save(ds, d / "s.zarr", group=group)
    if not valid:
        return "wrong", f"saved under group {group!r}"
    got = specdyn.load(d / "s.zarr", group=group)
    if not got.identical(ds):
        return "wrong", "round trip changed the run"
    outside = [p for p in d.iterdir() if p.name != "s.zarr"]
    return ("wrong", f"wrote outside the store: {outside}") if outside else ("correct", "")


_API = {"gaussian": _api_gaussian, "density": _api_density, "bgn": _api_bgn, "teacher": _api_teacher,
        "store_group": _api_store}


def case_api(c):
    return _API[c["fn"]](dict(c["args"]))


CASES = {"api": case_api, "top_singular": case_top_singular, "top_eigs": case_top_eigs, "spectral_density": case_spectral_density,
         "config": case_config, "checkpoint": case_checkpoint, "store": case_store, "cli": case_cli}


def main():
    cases = pickle.load(sys.stdin.buffer)
    signal.signal(signal.SIGALRM, _alarm)
    for i, c in enumerate(cases):
        print(json.dumps({"start": i}), flush=True)
        signal.alarm(CASE_SECONDS)
        try:
            outcome, detail = CASES[c["kind"]](c)
        except Hang as exc:
            outcome, detail = "hang", str(exc)
        except Exception as exc:  # classified, printed and judged by the parent test
            outcome, detail = _classify_error(exc, c.get("names", ()))
            if outcome == "unclear":
                detail += " | " + traceback.format_exc(limit=3).replace("\n", " ")[-400:]
        finally:
            signal.alarm(0)
        print(json.dumps({"i": i, "kind": c["kind"], "outcome": outcome, "detail": detail}), flush=True)


if __name__ == "__main__":
    main()
