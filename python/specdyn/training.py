"""Finite-width training with live spectral tracking: ``simulate(config)``.

Python decides what to compute (parameterization, data, schedule, checkpoints);
the C++ Trainer runs every step and every tracked measurement natively with
the GIL released, returning to Python only between checkpoint chunks and for
progress reports (at most every ``progress_interval`` seconds).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from . import _core
from . import _device
from . import _validate as V
from . import data as _data
from . import results
from .config import MAX_GRAM_ROWS, RunConfig  # noqa: F401  (MAX_GRAM_ROWS: re-exported)
from .parameterization import output_normalizer, scales

_RECORD_KEYS = ("loss", "normalized_sharpness", "hessian_top", "singular_values", "delta_singular_values",
                "overlap_input", "overlap_backward", "weight_norm", "beta_f", "bulk_counts", "bulk_edges")


def _as_config(config) -> RunConfig:
    if isinstance(config, RunConfig):
        return config.validated()  # list fields may have been edited in place since construction
    if isinstance(config, dict):
        return RunConfig.from_dict(config)
    raise ValueError(f"config must be a RunConfig or a dict of its fields; got {type(config).__name__}")


def _has_beta_f(cfg: RunConfig) -> bool:
    return cfg.activation == "linear" and cfg.output_dim == 1


def _check(cfg: RunConfig, data, resume: bool, checkpoint) -> None:
    if data is not None and cfg.online:
        raise ValueError("data must be None when online=True (online training draws fresh teacher samples)")
    if data is not None and cfg.data != "teacher":
        raise ValueError(f"data must be None when the config names a data set (data = {cfg.data!r}); pass "
                         "arrays with the config's data = 'teacher'")
    if not isinstance(resume, bool):
        raise ValueError(f"resume must be true or false; got {resume!r}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint (the path of the checkpoint file)")
    if checkpoint is not None and cfg.checkpoint_every < 1:
        raise ValueError("checkpoint_every must be >= 1 when a checkpoint path is given")


def memory_estimate(cfg: RunConfig) -> int:
    """Bytes a run holds at least: each weight matrix four times (W, W(0), its gradient, a
    work copy), the activations and their gradients of every layer, and the data."""
    item = np.dtype(cfg.dtype).itemsize
    fans = [cfg.input_dim] + [cfg.width] * cfg.depth + [cfg.output_dim]
    weights = sum(a * b for a, b in zip(fans[:-1], fans[1:]))
    batch = cfg.batch_size or cfg.samples
    activations = 2 * batch * sum(fans)
    return item * (4 * weights + activations) + 8 * cfg.samples * (cfg.input_dim + cfg.output_dim)


def check_memory(cfg: RunConfig) -> None:
    """Refuse up front a run whose arrays alone exceed this machine's physical memory."""
    V.fits_in_memory(f"width = {cfg.width}, depth = {cfg.depth}, input_dim = {cfg.input_dim}, output_dim = "
                     f"{cfg.output_dim}, samples = {cfg.samples}", memory_estimate(cfg))


def build_trainer(cfg: RunConfig, data=None, **flags):
    """The native Trainer of a validated config (internal; benchmarks use it to switch tracking parts).

    ``flags`` override TrainSpec switches: track_spectra, track_delta, track_overlaps,
    track_sharpness, track_hessian, svd_tol.
    """
    check_memory(cfg)
    sc = scales(cfg.scaling, cfg.width, cfg.depth, cfg.input_dim, cfg.output_dim, cfg.gamma0, cfg.eta0, cfg.sigma)
    X, Y = _data.for_run(cfg, data)
    spec = _core.TrainSpec()
    spec.arch = dict(input_dim=cfg.input_dim, width=cfg.width, output_dim=cfg.output_dim, depth=cfg.depth,
                     activation=cfg.activation, multipliers=sc.multipliers)
    spec.init_stds = sc.init_stds
    spec.normalizers = sc.normalizers
    spec.learning_rate = sc.learning_rate
    spec.output_normalizer = output_normalizer(cfg.output_normalization, cfg.output_dim)
    spec.samples = cfg.samples
    spec.batch = cfg.batch_size if cfg.batch_size is not None else cfg.samples
    spec.online = cfg.online
    spec.steps = cfg.steps
    spec.seed = cfg.seed
    spec.data_seed = cfg.data_seed
    spec.teacher_kind = _data.TEACHER_KINDS.index(cfg.teacher)
    spec.teacher_scale = _data.teacher_scale(cfg.input_dim)
    spec.noise = cfg.noise
    spec.tracked_steps = cfg.tracked_steps()
    spec.bulk_steps = list(cfg.bulk_steps)
    spec.top_k = cfg.top_k
    spec.track_sharpness = cfg.track_sharpness
    spec.track_hessian = cfg.track_hessian
    spec.track_beta = _has_beta_f(cfg)
    spec.bulk_bins = cfg.bulk_bins
    spec.divergence_bound = cfg.divergence_bound
    spec.svd_tol = 0.0 if cfg.svd_tol is None else cfg.svd_tol  # 0: chosen by dtype in C++
    for key, value in flags.items():
        setattr(spec, key, value)
    dt = np.dtype(cfg.dtype)
    cls = _core.Trainer_f64 if dt == np.float64 else _core.Trainer_f32
    return cls(spec, np.ascontiguousarray(X, dtype=dt), np.ascontiguousarray(Y, dtype=dt)), (X, Y)


def _save_checkpoint(path: Path, cfg: RunConfig, trainer, X, Y) -> None:
    import contextlib
    import tempfile

    state = trainer.get_state()
    rec = trainer.record()
    arrays = {"config": np.array(cfg.to_json()), "X": X, "Y": Y,
              "step": np.array(state["step"]), "finished": np.array(state["finished"]),
              "diverged_step": np.array(state["diverged_step"]), "hessian_warm": state["hessian_warm"]}
    for name in ("weights", "initial_weights", "warm", "warm_delta"):
        for l, a in enumerate(state[name]):
            arrays[f"{name}_{l}"] = a
    for key in _RECORD_KEYS:
        arrays[f"record_{key}"] = rec[key]
    arrays[_CHECKSUM_KEY] = np.array(json.dumps(_entry_hashes(arrays), sort_keys=True))
    # a fresh temporary in the target folder, created exclusively (mkstemp: O_CREAT|O_EXCL,
    # no following of links, random name): a file or link planted there is never written through
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic: a checkpoint is either the old one or the new one
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # our own temporary; the error propagates
        raise


_STATE_NAMES = ("weights", "initial_weights", "warm", "warm_delta")
_CHECKSUM_KEY = "sha256"


def _entry_hashes(arrays: dict) -> dict:
    """{entry: SHA-256 of its dtype, shape and bytes}: an edited or mixed-up entry that is still
    well-formed (a plausible X, a shifted record) would otherwise resume into a wrong run."""
    import hashlib

    out = {}
    for key in sorted(k for k in arrays if k != _CHECKSUM_KEY):
        a = np.asarray(arrays[key])
        h = hashlib.sha256(f"{a.dtype.str}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
        out[key] = h.hexdigest()
    return out


def _check_checksum(where: str, arrays: dict) -> None:
    stored = arrays[_CHECKSUM_KEY]
    try:
        recorded = json.loads(str(stored)) if stored.shape == () else None
    except ValueError:
        recorded = None
    if not isinstance(recorded, dict):
        raise ValueError(f"{where}: its {_CHECKSUM_KEY} entry is not a JSON table of checksums")
    actual = _entry_hashes(arrays)
    changed = sorted(k for k in actual if recorded.get(k) != actual[k])
    if changed:
        raise ValueError(f"{where}: {', '.join(changed)} differ(s) from what was written (SHA-256 checksum)")


def _load_checkpoint(path: Path, cfg: RunConfig, data):
    """Read a checkpoint and check every entry against the config (and the entries against each other).

    Returns ``((X, Y), state, record)``; a mismatch raises one ValueError naming the entry.
    """
    where = f"checkpoint {str(path)!r}"
    n = cfg.depth + 1
    dt = np.dtype(cfg.dtype)
    expected = ({"config", "X", "Y", "step", "finished", "diverged_step", "hessian_warm", _CHECKSUM_KEY}
                | {f"{name}_{l}" for name in _STATE_NAMES for l in range(n)}
                | {f"record_{key}" for key in _RECORD_KEYS})
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{where} is not a readable .npz archive: {exc}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):  # a bare .npy array
        raise ValueError(f"{where} is not an .npz archive (a single array)")
    with z:
        keys = set(z.files)
        if keys != expected:
            extra, missing = sorted(keys - expected), sorted(expected - keys)
            raise ValueError(f"{where} has the wrong entries (missing: {missing or 'none'}; "
                             f"unexpected: {extra or 'none'})")
        arrays = {key: z[key] for key in expected}
    if arrays["config"].shape != () or str(arrays["config"]) != cfg.to_json():
        raise ValueError(f"{where} was written by a different config; resume needs the same one")
    X, Y = _check_checkpoint_data(where, cfg, arrays["X"], arrays["Y"])
    if data is not None:
        Xd, Yd = _data.check_data(data, cfg.samples, cfg.input_dim, cfg.output_dim)
        if not (np.array_equal(Xd, X) and np.array_equal(Yd, Y)):
            raise ValueError(f"data differs from the data of {where}")
    step = _checkpoint_integer(where, "step", arrays["step"], 0, cfg.steps)
    finished = arrays["finished"]
    if finished.shape != () or finished.dtype != np.bool_:
        raise ValueError(f"{where}: finished must be a boolean scalar; got dtype {finished.dtype}, "
                         f"shape {finished.shape}")
    finished = bool(finished)
    diverged = _checkpoint_integer(where, "diverged_step", arrays["diverged_step"], -1, step)
    # The trainer stops at the step where it diverged and finishes only at the last step.
    if diverged not in (-1, step):
        raise ValueError(f"{where}: diverged_step must be -1 or the step it stopped at ({step}); got {diverged}")
    if finished and (step != cfg.steps or diverged != -1):
        raise ValueError(f"{where}: finished is true only at step == steps ({cfg.steps}) of a run that did not "
                         f"diverge; got step {step}, diverged_step {diverged}")
    state = {"step": step, "finished": finished, "diverged_step": diverged}
    for name in _STATE_NAMES:
        state[name] = [_checkpoint_state_array(where, cfg, name, l, arrays[f"{name}_{l}"], dt) for l in range(n)]
    hw = arrays["hessian_warm"]
    n_params = sum(a.size for a in state["weights"])
    if hw.dtype != np.float64 or hw.ndim != 1 or hw.size not in (0, n_params) or not np.all(np.isfinite(hw)):
        raise ValueError(f"{where}: hessian_warm must be a finite float64 vector of 0 or {n_params} values; "
                         f"got dtype {hw.dtype}, shape {hw.shape}")
    state["hessian_warm"] = hw
    record = _checkpoint_record(where, cfg, {key: arrays[f"record_{key}"] for key in _RECORD_KEYS}, step, finished,
                                diverged)
    # last: the checks above name the malformed entry; this catches a well-formed one that was edited
    _check_checksum(where, arrays)
    return (X, Y), state, record


def _check_checkpoint_data(where: str, cfg: RunConfig, X, Y):
    for name, a, cols in (("X", X, cfg.input_dim), ("Y", Y, cfg.output_dim)):
        if a.dtype != np.float64 or a.shape != (cfg.samples, cols) or not np.all(np.isfinite(a)):
            raise ValueError(f"{where}: {name} must be a finite float64 array of shape ({cfg.samples}, {cols}); "
                             f"got dtype {a.dtype}, shape {a.shape}")
    return X, Y


def _checkpoint_integer(where: str, name: str, a, lo: int, hi: int) -> int:
    if a.shape != () or a.dtype.kind not in "iu":
        raise ValueError(f"{where}: {name} must be an integer scalar; got dtype {a.dtype}, shape {a.shape}")
    value = int(a)
    if not lo <= value <= hi:
        raise ValueError(f"{where}: {name} must be in [{lo}, {hi}]; got {value}")
    return value


def _checkpoint_state_array(where: str, cfg: RunConfig, name: str, l: int, a, dt: np.dtype):
    fan_in = cfg.input_dim if l == 0 else cfg.width
    fan_out = cfg.output_dim if l == cfg.depth else cfg.width
    label = f"{where}: {name}_{l}"
    if a.dtype != dt:
        raise ValueError(f"{label} must have dtype {dt} (the config's dtype); got {a.dtype}")
    if name == "weights":
        ok = a.shape == (fan_out, fan_in)
        want = f"shape ({fan_out}, {fan_in})"
    elif name == "initial_weights":
        ok = a.shape == (fan_out * fan_in,)
        want = f"shape ({fan_out * fan_in},) (W{l}(0) flattened)"
    else:  # warm-start blocks: whole columns of length fan_in, at most min(fan_in, fan_out) of them
        ok = a.ndim == 1 and a.size % fan_in == 0 and a.size // fan_in <= min(fan_in, fan_out)
        want = f"a 1-d array of at most {min(fan_in, fan_out)} columns of length {fan_in}"
    if not ok:
        raise ValueError(f"{label} must be {want}; got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{label} must contain only finite values")
    return a


def _record_shapes(cfg: RunConfig) -> dict:
    T, n, k = len(cfg.tracked_steps()), cfg.depth + 1, cfg.top_k
    nb, bins = len(cfg.bulk_steps), cfg.bulk_bins
    return {"loss": (T,), "normalized_sharpness": (T,), "hessian_top": (T,), "singular_values": (T, n, k),
            "delta_singular_values": (T, n, k), "overlap_input": (T, n, k), "overlap_backward": (T, n, k),
            "weight_norm": (T, n), "beta_f": (T, cfg.input_dim), "bulk_counts": (nb, n, bins),
            "bulk_edges": (nb, n, bins + 1)}


def _checkpoint_record(where: str, cfg: RunConfig, record: dict, step: int, finished: bool, diverged: int) -> dict:
    """Shapes from the config; entries of steps not measured yet must be NaN, the loss of measured ones finite."""
    tracked = np.asarray(cfg.tracked_steps())
    bulk = np.asarray(cfg.bulk_steps, dtype=np.int64)
    # measured: every tracked step before `step`, and `step` itself once finished (or where it diverged)
    last = step if (finished or diverged >= 0) else step - 1
    for key, shape in _record_shapes(cfg).items():
        a = record[key]
        label = f"{where}: record_{key}"
        if a.dtype != np.float64 or a.shape != shape:
            raise ValueError(f"{label} must be float64 of shape {shape} (from the config's tracked steps); "
                             f"got dtype {a.dtype}, shape {a.shape}")
        steps = bulk if key.startswith("bulk") else tracked
        if not np.all(np.isnan(a[steps > last])):
            raise ValueError(f"{label} has values at steps after the checkpoint's step {step}")
    # the loss of the step where it diverged may be anything; every earlier one passed the check
    measured = record["loss"][tracked < (diverged if diverged >= 0 else last + 1)]
    if not np.all(np.isfinite(measured) & (measured <= cfg.divergence_bound)):
        raise ValueError(f"{where}: record_loss must be finite and <= divergence_bound at the tracked steps before "
                         f"step {step} (the run had not diverged there)")
    return record


def _progress_callback(progress, steps: int):
    if progress is None or progress is False:
        return None, None
    if callable(progress):
        return (lambda step, loss: progress(int(step), steps, float(loss))), None
    if progress is True:
        from rich.progress import Progress

        bar = Progress()
        task = bar.add_task("training", total=max(steps, 1))
        bar.start()

        def cb(step, loss):
            bar.update(task, completed=step, description=f"training (loss {loss:.3g})")

        return cb, bar
    raise ValueError("progress must be None, True (a progress bar) or a callable(step, steps, loss)")


def _check_device(cfg: RunConfig, device: str, resume: bool, checkpoint) -> None:
    if device == "cpu":
        return
    if cfg.batch_size is not None or cfg.online:
        raise ValueError(f"device={device!r} runs full-batch GD only: batch_size must be None and online false; "
                         f"got batch_size={cfg.batch_size}, online={cfg.online}")
    if resume or checkpoint is not None:
        raise ValueError(f"device={device!r} does not checkpoint: checkpoint must be None and resume false")


def device_spec(cfg: RunConfig) -> dict:
    """The device trainer's spec of a config (``module.device_trainer(spec, X, Y)``; internal)."""
    sc = scales(cfg.scaling, cfg.width, cfg.depth, cfg.input_dim, cfg.output_dim, cfg.gamma0, cfg.eta0, cfg.sigma)
    return dict(input_dim=cfg.input_dim, width=cfg.width, output_dim=cfg.output_dim, samples=cfg.samples,
                depth=cfg.depth, activation=cfg.activation, multipliers=list(sc.multipliers),
                init_stds=list(sc.init_stds), learning_rate=float(sc.learning_rate), seed=cfg.seed,
                output_normalizer=output_normalizer(cfg.output_normalization, cfg.output_dim),
                divergence_bound=float(cfg.divergence_bound))


def _simulate_device(cfg: RunConfig, data, module, cb):
    """Full-batch GD on the device, measured where the weights are.

    The device trainer (``module.device_trainer``) keeps weights, W(0), activations and
    the loss of every step in device memory, draws W(0) from the CPU engine's streams and
    checks divergence on the device's losses. At each tracked step t it measures, on the
    device: the loss, the weight norms, the spectra of W(t) and of W(t) - W(0) (the device
    Krylov solver on the trainer's memory in place, warm-started from the previous tracked
    step) and the mean input and backward signal of every layer, whose squared overlaps
    with the solver's singular vectors are formed on the host. What the device cannot
    measure yet -- NTK sharpness, Hessian, beta_f (as the config tracks them) and the bulk
    histograms -- is measured by a host Trainer's ``measure`` on copies of W(t), made only at
    the steps that need them; that Trainer takes no step. Returns (record, diverged_step).
    """
    X, Y = _data.for_run(cfg, data)
    sc = scales(cfg.scaling, cfg.width, cfg.depth, cfg.input_dim, cfg.output_dim, cfg.gamma0, cfg.eta0, cfg.sigma)
    dt = np.dtype(cfg.dtype)
    single = dt == np.float32
    dev = module.device_trainer(device_spec(cfg), np.ascontiguousarray(X, dtype=dt),
                                np.ascontiguousarray(Y, dtype=dt))
    tracked = cfg.tracked_steps()
    index = {t: i for i, t in enumerate(tracked)}
    bulk = set(cfg.bulk_steps)
    normalizers = np.asarray(sc.normalizers, dtype=np.float64)
    nl = cfg.depth + 1
    rec = {key: np.full(shape, np.nan) for key, shape in _record_shapes(cfg).items()}
    host_tracked = cfg.track_sharpness or cfg.track_hessian or _has_beta_f(cfg)
    host = None
    if host_tracked or bulk:  # the W(t)-only tracker: no spectra, no W(0) kept
        host, _ = build_trainer(cfg, (X, Y), track_spectra=False, track_delta=False, track_overlaps=False)
    warm = {False: [None] * nl, True: [None] * nl}
    for t in sorted(set(tracked) | bulk):
        dev.run(t)
        if dev.diverged_step >= 0:
            break
        loss = dev.evaluate()
        if dev.diverged_step >= 0:
            break
        ti = index.get(t)
        if ti is not None:
            rec["loss"][ti] = loss
            rec["weight_norm"][ti] = normalizers * dev.frobenius_norms()
            _device_measures(dev, cfg, t, single, normalizers, rec, ti, warm)
        if host is not None and (t in bulk or (ti is not None and host_tracked)):
            host.measure(t, [dev.weights(l, single) for l in range(nl)])
        if cb is not None:
            cb(t, loss)
    diverged = int(dev.diverged_step)
    if host is not None:
        measured = host.record()
        for key in ("normalized_sharpness", "hessian_top", "beta_f", "bulk_counts", "bulk_edges"):
            rec[key] = measured[key]
    if diverged >= 0 and diverged in index:
        rec["loss"][index[diverged]] = dev.losses()[diverged]
    return rec, diverged


def _device_measures(dev, cfg: RunConfig, t: int, single: bool, normalizers, rec: dict, ti: int, warm) -> None:
    """Row ti of the spectra, delta spectra and overlaps, measured on the device at step t:
    the normalized top singular values of W^l and W^l - W^l(0) by the device Krylov solver on
    the trainer's memory (warm[delta][l]: the warm block of the previous tracked step, updated),
    and the squared overlaps of W^l's singular vectors with the layer's mean signals."""
    from .lanczos import _krylov_options

    tol = cfg.svd_tol if cfg.svd_tol is not None else (1e-4 if single else 1e-8)
    sizes = [cfg.input_dim] + [cfg.width] * cfg.depth + [cfg.output_dim]
    inputs, backward = dev.signal_means()
    for layer in range(len(normalizers)):
        k = min(cfg.top_k, sizes[layer], sizes[layer + 1])
        for delta in (False, True):
            out = rec["delta_singular_values" if delta else "singular_values"][ti, layer]
            if delta and t == 0:
                out[:k] = 0.0  # W(0) - W(0) = 0 exactly
                continue
            # the same engine as the CPU trainer's, with the same certificate (tracking by default)
            opt = _krylov_options(tol=tol, seed=cfg.seed + layer + (104729 if delta else 0),
                                  warm_extra=1, resolvable=cfg.svd_tol is None)
            s, U, V, info = dev.top_singular(layer, single, k, opt, warm[delta][layer], delta)
            out[:k] = normalizers[layer] * s
            warm[delta][layer] = info.get("warm", V)
            if not delta:
                rec["overlap_input"][ti, layer, :k] = _core.squared_overlaps(V, inputs[layer])
                rec["overlap_backward"][ti, layer, :k] = _core.squared_overlaps(U, backward[layer])


def simulate(config, data=None, progress: bool | Callable[[int, int, float], None] | None = None,
             resume: bool = False, checkpoint: str | os.PathLike | None = None, device: str = "cpu"):
    """Train one network and track its spectra; returns an ``xarray.Dataset``.

    Parameters
    ----------
    config : RunConfig (or a dict of its fields)
    data : optional ``(X, Y)``, X of shape (samples, input_dim), Y of shape
        (samples, output_dim) or (samples,); default: ``specdyn.data.teacher``
        with the config's ``data_seed``, ``teacher`` and ``noise``, or the named
        data set of the config's ``data`` (``"digits"``: ``specdyn.data.named``).
    progress : None, True (a rich progress bar) or ``callable(step, steps, loss)``,
        called at most every ~0.5 s.
    resume, checkpoint : with ``checkpoint`` a path and ``config.checkpoint_every > 0``
        the state is saved every ``checkpoint_every`` steps; ``resume=True``
        continues from that file (if it exists) to the same result bit for bit.
    device : "cpu" (default, the C++ engine), "cuda" (full-batch GD on the GPU: forward,
        backward, update, loss and divergence checks in device memory, W(0) drawn on the
        device from the CPU's Philox streams, so the same seed gives the same initial
        weights bit for bit; loss, weight norms, the spectra of W(t) and W(t) - W(0) and the
        overlaps measured on the device, the spectra by the device Krylov solver in place;
        NTK sharpness, Hessian, beta_f and the bulk histograms on the host, from copies of
        W(t) made only at the steps that need them) or
        "host-emulation" (the device algorithm run on the host, for tests). "cuda" needs
        batch_size=None, online=False and no checkpoint; without a usable GPU it raises
        RuntimeError saying why.

    Returns
    -------
    Dataset with coords ``step`` (tracked steps), ``layer`` ("W0".."WL"),
    ``rank`` (0..top_k-1), ``input`` (0..D-1, linear nets with C = 1) and
    variables ``loss(step)``, ``singular_values(step, layer, rank)`` and
    ``delta_singular_values`` (of the normalized W and W - W(0)),
    ``normalized_sharpness(step)`` (eta lambda_max(K) / P), ``hessian_top(step)``,
    ``weight_norm(step, layer)`` (Frobenius, normalized), ``overlap_input`` and
    ``overlap_backward(step, layer, rank)`` (squared overlaps of the right/left
    singular vectors with the layer's mean input / mean backward signal),
    ``beta_f(step, input)``, and with ``bulk_steps`` the histograms
    ``bulk_counts(bulk_step, layer, bin)`` over ``bulk_edges(bulk_step, layer, bin_edge)``
    of all singular values of each normalized matrix. A diverged run (loss or
    weights non-finite, or loss > divergence_bound) stops: attrs ``status`` =
    "diverged", ``diverged_step``; later values are NaN.
    In online mode the loss is measured on the P samples of the evaluation set.
    Spectra of layers whose smaller side is >= 32 come from warm-started
    Lanczos with residual tolerance ``config.svd_tol`` (relative to ||A||) for
    every value; smaller layers from LAPACK. With ``svd_tol`` None (the default)
    the tolerance is 1e-8 (float32: 1e-4) under the tracking certificate of
    :func:`specdyn.top_singular` (``certify="resolvable"``): clustered bulk-edge
    values are resolved to a tenth of their spacing, outliers meet the tolerance.
    """
    cfg = _as_config(config)
    device = _device.check(device)
    _check(cfg, data, resume, checkpoint)
    _check_device(cfg, device, resume, checkpoint)
    if device != "cpu":
        module = _device.module(device, "simulate")
        cb, bar = _progress_callback(progress, cfg.steps)
        try:
            rec, diverged = _simulate_device(cfg, data, module, cb)
        finally:
            if bar is not None:
                bar.stop()
        return _to_dataset(cfg, rec, diverged, device)
    path = Path(checkpoint) if checkpoint is not None else None
    state = record = None
    if resume and path.exists():
        data_used, state, record = _load_checkpoint(path, cfg, data)
        trainer, (X, Y) = build_trainer(cfg, data_used)
        drawn = trainer.get_state()["initial_weights"]
        for l, (saved, fresh) in enumerate(zip(state["initial_weights"], drawn)):
            if not np.array_equal(saved, fresh):
                raise ValueError(f"checkpoint {str(path)!r}: initial_weights_{l} differs from the W{l}(0) that "
                                 f"seed {cfg.seed} draws")
        trainer.set_state(state)
        trainer.set_record(record)
    else:
        trainer, (X, Y) = build_trainer(cfg, data)

    cb, bar = _progress_callback(progress, cfg.steps)
    try:
        while not trainer.finished and trainer.diverged_step < 0:
            until = cfg.steps
            if path is not None:
                until = min(cfg.steps, (trainer.step // cfg.checkpoint_every + 1) * cfg.checkpoint_every)
            before = trainer.step
            trainer.run(until, cb)
            if trainer.step == before and not trainer.finished and trainer.diverged_step < 0:
                # a chunk that makes no progress would repeat forever
                raise RuntimeError(f"training made no progress at step {before} of {cfg.steps}")
            if path is not None and not trainer.finished and trainer.diverged_step < 0:
                _save_checkpoint(path, cfg, trainer, X, Y)
    finally:
        if bar is not None:
            bar.stop()

    diverged = int(trainer.diverged_step)
    ds = _to_dataset(cfg, trainer.record(), diverged, device)
    if diverged >= 0 and path is not None and path.exists():
        path.unlink()  # a diverged run is final; nothing to resume
    if trainer.finished and path is not None and path.exists():
        path.unlink()
    return ds


def _to_dataset(cfg: RunConfig, rec: dict, diverged: int, device: str):
    steps = np.asarray(cfg.tracked_steps(), dtype=np.int64)
    layers = cfg.layer_names
    ranks = np.arange(cfg.top_k, dtype=np.int64)
    slr = ("step", "layer", "rank")
    variables = {
        "loss": (("step",), rec["loss"]),
        "singular_values": (slr, rec["singular_values"]),
        "delta_singular_values": (slr, rec["delta_singular_values"]),
        "normalized_sharpness": (("step",), rec["normalized_sharpness"]),
        "hessian_top": (("step",), rec["hessian_top"]),
        "weight_norm": (("step", "layer"), rec["weight_norm"]),
        "overlap_input": (slr, rec["overlap_input"]),
        "overlap_backward": (slr, rec["overlap_backward"]),
    }
    coords = {"step": steps, "layer": layers, "rank": ranks}
    if _has_beta_f(cfg):
        variables["beta_f"] = (("step", "input"), rec["beta_f"])
        coords["input"] = np.arange(cfg.input_dim, dtype=np.int64)
    if cfg.bulk_steps:
        variables["bulk_counts"] = (("bulk_step", "layer", "bin"), rec["bulk_counts"])
        variables["bulk_edges"] = (("bulk_step", "layer", "bin_edge"), rec["bulk_edges"])
        coords["bulk_step"] = np.asarray(cfg.bulk_steps, dtype=np.int64)
    attrs = results.run_attrs(cfg, "simulation", diverged, **({"device": device} if device != "cpu" else {}))
    return results.dataset(variables, coords, attrs)
