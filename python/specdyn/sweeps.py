"""Sweeps: a grid of runs (widths x eta0 x seeds x scalings x ...) on Dask.

Each run is one Dask task; the process that calls :func:`sweep` writes each
finished run to its own Zarr group (``runs/<name>``), so workers need no
access to the store and a killed sweep loses at most the runs in flight.
Restarting the same sweep on the same store skips every complete group whose
content checks out (:func:`specdyn.storage.verify`) and redoes damaged ones:
none lost, none repeated. A run that diverges is stored with
``status="diverged"`` and listed in the summary; a run whose function raises
is not stored (it is retried on the next start) and is listed as failed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import time
from typing import Callable, Iterable

from . import storage
from .config import RunConfig

RUN_PREFIX = "runs/"
# plural spellings accepted in grids, as in "widths x eta0 x seeds x scalings"
_ALIASES = {"widths": "width", "seeds": "seed", "scalings": "scaling", "eta0s": "eta0",
            "gamma0s": "gamma0", "depths": "depth", "activations": "activation"}


# ---------------------------------------------------------------------------------
# grids and names
# ---------------------------------------------------------------------------------
def _as_dict(base) -> dict:
    if base is None:
        return {}
    if isinstance(base, RunConfig):
        return base.to_dict()
    if isinstance(base, dict):
        return dict(base)
    raise ValueError(f"base must be a RunConfig, a dict of RunConfig fields or None; got {type(base).__name__}")


def expand_grid(grid, base=None) -> list[RunConfig]:
    """The runs of a grid, validated, in grid order (later keys vary fastest).

    ``grid`` is a dict ``{field: [values]}`` over RunConfig fields (plural
    spellings ``widths``, ``seeds``, ``scalings``, ``eta0s`` are accepted; a
    scalar means one value), applied on top of ``base`` (a RunConfig or a
    dict of fields); or an iterable of RunConfigs / dicts, taken as is.
    A bad key or value raises one ValueError naming it.
    """
    base_d = _as_dict(base)
    if isinstance(grid, RunConfig):
        return [grid]
    if not isinstance(grid, dict):
        out = []
        for item in grid:
            if isinstance(item, RunConfig):
                out.append(item)
            elif isinstance(item, dict):
                out.append(RunConfig.from_dict({**base_d, **item}, where="grid."))
            else:
                raise ValueError(f"grid items must be RunConfigs or dicts; got {type(item).__name__}")
        return out
    known = {f.name for f in dataclasses.fields(RunConfig)}
    keys, values = [], []
    for key, vals in grid.items():
        field = _ALIASES.get(key, key)
        if field not in known:
            raise ValueError(f"unknown key 'grid.{key}'; allowed keys: {', '.join(sorted(known))}")
        if field in keys:
            raise ValueError(f"grid key 'grid.{key}' repeats the field {field!r}")
        # list-valued fields (sigma, track_every, bulk_steps) take a list of lists
        if not isinstance(vals, (list, tuple)):
            vals = [vals]
        if len(vals) == 0:
            raise ValueError(f"grid.{key} must list at least one value")
        keys.append(field)
        values.append(list(vals))
    configs = []
    for combo in itertools.product(*values):
        d = {**base_d, **dict(zip(keys, combo))}
        try:
            configs.append(RunConfig.from_dict(d, where="run."))
        except ValueError as exc:
            raise ValueError(f"{exc} (in the grid point {dict(zip(keys, combo))})") from None
        except TypeError as exc:
            raise ValueError(f"bad grid value: {exc}") from None
    return configs


def config_hash(config: RunConfig) -> str:
    """A short stable hash of all the fields of a config."""
    return hashlib.sha1(config.to_json().encode()).hexdigest()[:10]


def run_name(config: RunConfig) -> str:
    """Group name of a run: readable fields plus the hash of the full config."""
    eta = f"{config.eta0:.6g}".replace("+", "")
    return (f"{config.scaling}_N{config.width}_eta{eta}_g{config.gamma0:.6g}_seed{config.seed}"
            f"_{config_hash(config)}")


def run_group(config: RunConfig) -> str:
    return RUN_PREFIX + run_name(config)


# ---------------------------------------------------------------------------------
# run functions
# ---------------------------------------------------------------------------------
def _check_run_function(run_fn) -> Callable:
    if isinstance(run_fn, str):
        raise ValueError(f"run_fn must be a function config -> xarray.Dataset; got the string {run_fn!r}: run a "
                         f"study with specdyn.studies.{run_fn}(...), or pass its run function "
                         f"specdyn.studies.get({run_fn!r}).run_one")
    if not callable(run_fn):
        raise ValueError(f"run_fn must be a function config -> xarray.Dataset (e.g. specdyn.simulate); "
                         f"got {type(run_fn).__name__}")
    return run_fn


def _finish(ds, config: RunConfig):
    """Fill in the attributes every stored run carries."""
    import numpy as np

    attrs = ds.attrs
    attrs.setdefault("config", config.to_json())
    attrs.setdefault("kind", "simulation")
    for key in ("scaling", "width", "seed"):
        attrs.setdefault(key, getattr(config, key))
    if "status" not in attrs:
        diverged = "loss" in ds and not bool(np.all(np.isfinite(ds["loss"].values)))
        attrs["status"] = "diverged" if diverged else "ok"
    attrs.setdefault("diverged_step", -1)
    return ds


def execute_run(run_fn: Callable, config_json: str):
    """One sweep task: ("ok", Dataset) or ("failed", message). Never raises."""
    import traceback

    config = RunConfig.from_json(config_json)
    try:
        ds = run_fn(config)
    except Exception as exc:  # recorded and retried on restart, never kills the sweep
        tb = traceback.format_exc(limit=4)
        return "failed", f"{type(exc).__name__}: {exc}\n{tb}"
    try:
        import xarray as xr

        if not isinstance(ds, xr.Dataset):
            return "failed", f"the run function returned {type(ds).__name__}, not an xarray.Dataset"
        return "ok", _finish(ds, config)
    except Exception as exc:
        return "failed", f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------
# schedulers
# ---------------------------------------------------------------------------------
SERIAL = ("serial", "sync", "synchronous")


# seconds to reach a scheduler given by address before giving up (it is either there or not)
SCHEDULER_TIMEOUT_S = 5


def _local_cluster(n: int):
    """A LocalCluster that only this process can use.

    The scheduler runs the pickled tasks it is sent, so whoever can connect to
    it can run code as this user. It listens on the loopback interface only,
    over TLS with a certificate made for this cluster and kept in memory
    (``Security.temporary()``): other users of the machine cannot connect.
    Without the ``cryptography`` package Dask cannot make that certificate;
    the cluster then listens on loopback TCP without authentication, and a
    warning says so.
    """
    import warnings

    from distributed import LocalCluster
    from distributed.security import Security

    try:
        security = Security.temporary()
    except ImportError as exc:
        warnings.warn(f"the local Dask cluster listens on 127.0.0.1 without authentication ({exc}); any user "
                      f"of this machine can submit tasks to it; install 'cryptography' for TLS", stacklevel=3)
        security = None
    # one thread per worker process: the native core parallelizes inside a
    # run and Dask's nanny already pins OMP/BLAS threads to 1 per worker
    return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                        security=security, dashboard_address=None, silence_logs=logging.ERROR)


def _probe(address: str) -> None:
    """Reach a tcp:// or tls:// scheduler with a plain socket first: a refused or silent port is one
    ValueError within the timeout, without Dask's client (whose failed start was seen to hang)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "tls"):
        return  # another transport: Dask's client reports it
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # a port that is not a number
        raise ValueError(f"client: cannot use the Dask scheduler {address!r} ({exc})") from None
    if not host or port is None:
        raise ValueError(f"client: cannot use the Dask scheduler {address!r} (expected tcp://HOST:PORT)")
    try:
        with socket.create_connection((host, port), timeout=SCHEDULER_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ValueError(f"client: cannot use the Dask scheduler {address!r} "
                         f"({type(exc).__name__}: {exc})") from None


def _connect(address: str):
    """A Client of the scheduler at ``address``; ValueError naming it when unreachable."""
    from distributed import Client

    _probe(address)
    try:
        return Client(address, timeout=SCHEDULER_TIMEOUT_S)
    except (OSError, ValueError, TypeError) as exc:  # malformed, refused, timed out, TLS mismatch
        raise ValueError(f"client: cannot use the Dask scheduler {address!r} "
                         f"({type(exc).__name__}: {exc})") from None


def _open_client(client, workers: int | None, n_tasks: int):
    """(client or None for serial, cleanup callable)."""
    if isinstance(client, str) and client.lower() in SERIAL:
        return None, lambda: None
    if client is None:
        from distributed import Client

        n = workers if workers is not None else min(os.cpu_count() or 1, max(n_tasks, 1))
        cluster = _local_cluster(max(1, int(n)))
        cl = Client(cluster)

        def cleanup():
            cl.close()
            cluster.close()

        return cl, cleanup
    if isinstance(client, str):
        cl = _connect(client)
        return cl, cl.close
    return client, lambda: None


def _progress_bar(progress, total: int, done: int):
    """A context manager and an advance(group) callable."""
    import contextlib

    if callable(progress) and not isinstance(progress, bool):
        state = {"n": done}

        def advance(group):
            state["n"] += 1
            progress(state["n"], total, group)

        return contextlib.nullcontext(), advance
    if not progress:
        return contextlib.nullcontext(), lambda group: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.description}"), transient=False)
    task = bar.add_task("", total=total, completed=done)

    def advance(group):
        bar.update(task, advance=1, description=group.removeprefix(RUN_PREFIX))

    return bar, advance


# ---------------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------------
def sweep(run_fn, grid, store, client=None, workers: int | None = None,
          progress=True, base=None, study_attrs: dict | None = None) -> dict:
    """Run every point of ``grid`` and store each run in its own Zarr group.

    Parameters
    ----------
    run_fn : a function ``RunConfig -> xarray.Dataset`` (e.g. ``specdyn.simulate``,
        or a study's ``run_one``). With Dask processes it must be picklable.
    grid : ``{field: [values]}`` over RunConfig fields (product, on top of
        ``base``) or an iterable of RunConfigs; see :func:`expand_grid`.
    store : path of the Zarr store (a directory); runs land in ``runs/<name>``.
    client : None for a ``LocalCluster`` of worker processes (loopback, TLS), a
        ``distributed.Client``, a scheduler address (``"tcp://host:8786"``),
        or ``"serial"`` to run in this process without Dask.
    workers : worker processes of the default LocalCluster (default: cores).
    progress : True for a rich progress bar counting runs, False for none, or
        a callable ``(done, total, group)``.

    Returns the summary: ``total``, ``skipped`` (already complete),
    ``completed`` (new this time), ``groups`` (all, grid order), ``diverged``
    (groups stored with status "diverged", old and new), ``failed``
    (``{group: message}``, not stored), ``damaged`` (``{group: reason}``:
    stored groups that failed :func:`specdyn.storage.verify` and were run
    again), ``store``, ``wall_s``. A scheduler address that cannot be
    reached within ``SCHEDULER_TIMEOUT_S`` seconds raises ``ValueError``
    before any work.
    """
    t0 = time.perf_counter()
    run_fn = _check_run_function(run_fn)
    study_name = getattr(run_fn, "__name__", "custom")
    configs = expand_grid(grid, base)
    groups = [run_group(c) for c in configs]
    unique = dict(zip(groups, configs))  # a grid with repeated points runs them once
    store = str(store) if isinstance(store, (str, os.PathLike)) else store
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be an integer >= 1; got {workers!r}")

    if groups:
        storage.check_save_target(store, groups[0])  # an unusable store fails before any work
    # resume: skip the complete groups whose content checks out; redo damaged ones
    damaged: dict[str, str] = {}
    done = set()
    for g in unique:
        try:
            complete = storage.is_complete(store, g)
        except storage.DamagedGroupError as exc:
            damaged[g] = exc.reason
            continue
        if complete:
            problems = storage.verify(store, g)
            if problems:
                damaged[g] = problems[0][1]
            else:
                done.add(g)
    todo = [(g, c) for g, c in unique.items() if g not in done]
    # longest runs first, so the last task to finish is a short one
    todo.sort(key=lambda gc: -(gc[1].width ** 2 * max(gc[1].steps, 1) * gc[1].depth))
    skipped = len(unique) - len(todo)
    failed: dict[str, str] = {}
    completed: list[str] = []
    # a scheduler given by address is reached (or refused) before anything is written
    cl, cleanup = _open_client(client, workers, len(todo)) if todo else (None, lambda: None)
    try:
        # the latest sweep's description: `specdyn plot STORE` analyzes these groups
        storage.write_attrs(store, {"specdyn_sweep": {
            "study": study_name,
            "grid": grid if isinstance(grid, dict) else None,
            "base": _as_dict(base) or None,
            **(study_attrs or {}),
            "groups": list(unique),
        }})
    except BaseException:
        cleanup()
        raise

    def store_result(group, result):
        status, payload = result
        if status == "ok":
            try:
                storage.save(payload, store, group)
            except (ValueError, OSError) as exc:  # recorded; the previous content of the group is intact
                failed[group] = f"could not store the run: {type(exc).__name__}: {exc}"
                return
            completed.append(group)
        else:
            failed[group] = payload

    bar, advance = _progress_bar(progress, len(unique), skipped)
    try:
        with bar:
            if todo and cl is None:
                for group, config in todo:
                    store_result(group, execute_run(run_fn, config.to_json()))
                    advance(group)
            elif todo:
                from distributed import as_completed

                futures = {}
                for group, config in todo:
                    fut = cl.submit(execute_run, run_fn, config.to_json(), pure=False,
                                    key=f"specdyn-{group.removeprefix(RUN_PREFIX)}-{time.time_ns()}")
                    futures[fut] = group
                for fut in as_completed(list(futures)):
                    group = futures[fut]
                    try:
                        result = fut.result()
                    except Exception as exc:  # a worker died or the task could not run
                        result = ("failed", f"{type(exc).__name__}: {exc}")
                    store_result(group, result)
                    advance(group)
                    fut.release()
    finally:
        cleanup()

    finished = done | set(completed)
    diverged = [g for g in unique if g in finished and
                storage.read_attrs(store, g).get("status") == "diverged"]
    return {
        "study": study_name,
        "store": store,
        "total": len(unique),
        "skipped": skipped,
        "completed": len(completed),
        "groups": list(unique),
        "diverged": diverged,
        "failed": failed,
        "damaged": damaged,
        "wall_s": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------------
# reading a sweep back
# ---------------------------------------------------------------------------------
def run_groups(store) -> list[str]:
    """The complete run groups of a sweep store."""
    return [g for g in storage.completed_groups(store) if g.startswith(RUN_PREFIX)]


def collect(store, dims: Iterable[str] = ("scaling", "width", "eta0", "seed"), groups=None):
    """Combine the runs of a store into one Dataset with one dimension per config field.

    ``dims`` are RunConfig fields that label the runs (their values become
    coordinates; fields constant across the runs become size-1 dimensions).
    Runs that share all of ``dims`` must not exist (ValueError). Steps that
    differ between runs are joined (NaN where a run has no value). Adds
    ``status(dims...)`` ("ok" / "diverged" / "" for missing combinations) and
    ``diverged_step``; ``attrs["config"]`` is the config of the first run.
    """
    import numpy as np
    import xarray as xr

    groups = run_groups(store) if groups is None else list(groups)
    if not groups:
        raise ValueError(f"store {store!r} holds no complete runs")
    dims = list(dims)
    known = {f.name for f in dataclasses.fields(RunConfig)}
    for d in dims:
        if d not in known:
            raise ValueError(f"dims: {d!r} is not a RunConfig field")
    parts, labels = [], []
    for g in groups:
        ds = storage.load(store, g)
        cfg = json.loads(ds.attrs["config"])
        label = tuple(cfg[d] for d in dims)
        if label in labels:
            raise ValueError(f"runs {groups[labels.index(label)]!r} and {g!r} share {dict(zip(dims, label))}; "
                             f"add the differing field to dims")
        labels.append(label)
        ds = ds.assign(status=xr.DataArray(ds.attrs.get("status", "ok")),
                       diverged_step=xr.DataArray(int(ds.attrs.get("diverged_step", -1))))
        ds.attrs = {}
        parts.append(ds.expand_dims({"run": [len(parts)]}))
    first_config = storage.load(store, groups[0]).attrs["config"]
    combined = xr.concat(parts, dim="run", join="outer", combine_attrs="drop", fill_value=np.nan)
    for i, d in enumerate(dims):
        combined = combined.assign_coords({d: ("run", [lab[i] for lab in labels])})
    fill = {name: np.nan for name in combined.data_vars}
    fill.update(status="", diverged_step=-1)  # missing combinations
    combined = combined.set_index(run=dims).unstack("run", fill_value=fill)
    combined["status"] = combined["status"].astype(str)
    for d in dims:
        if combined[d].dtype == object:
            combined[d] = combined[d].astype(str)
    order = dims + [d for d in combined.dims if d not in dims]
    combined = combined.transpose(*order)
    combined.attrs["config"] = first_config  # a representative run's config (fields outside dims)
    return combined
