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
        arrays[key] = a.T.copy() if a.ndim == 2 else a[::-1].copy()
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
    if "runs/b" not in specdyn.storage.completed_groups(d):
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


CASES = {"top_singular": case_top_singular, "top_eigs": case_top_eigs, "spectral_density": case_spectral_density,
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
