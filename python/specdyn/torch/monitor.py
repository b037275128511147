"""``SpectralMonitor``: certified, warm-started weight spectra of any ``torch.nn.Module``."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import torch

from .. import backend, lanczos, results, rmt, storage
from ..parameterization import fan_in_normalizer

NORMALIZE = ("fan_in", "none")
_DEFAULT_TOL = {torch.float64: 1e-8, torch.float32: 1e-4}
_BULK_BINS = 80


class _Layer:
    """One tracked weight: its 2-d view, normalization, W(0), delta buffer and warm starts."""

    def __init__(self, name: str, param: torch.nn.Parameter, k: int, normalize: str, delta: bool):
        self.name = name
        self.param = param
        self.rows = param.shape[0]
        self.cols = param.numel() // self.rows  # a conv kernel (out, in, kh, kw) reads as out x (in kh kw)
        self.fan_in = self.cols
        self.scale = fan_in_normalizer(self.fan_in) if normalize == "fan_in" else 1.0
        self.k = min(k, self.rows, self.cols)
        self.initial = param.detach().clone() if delta else None
        # the one buffer of W - W(0), reused at every observation
        self.delta = torch.empty_like(param.detach()) if delta else None
        self.warm = None        # warm block of W's last solve (right vectors, then the next value's)
        self.warm_delta = None  # ... of W - W(0)
        self.previous_right = None
        self.hessian_warm = None
        # scale sigma of the initial normalized matrix A in the convention of specdyn.rmt (entries of
        # variance sigma^2 / cols): sigma^2 = ||A||_F^2 / rows
        frobenius = float(torch.linalg.vector_norm(param.detach(), dtype=torch.float64))
        self.sigma = frobenius * self.scale / math.sqrt(self.rows)
        self.mean_input = None
        self.mean_backward = None

    def follow_device(self) -> None:
        """After ``model.to(device or dtype)``: W(0) and the delta buffer follow the weight (once)."""
        W = self.param.detach()
        if self.initial is not None and (self.initial.device != W.device or self.initial.dtype != W.dtype):
            self.initial = self.initial.to(W)
            self.delta = torch.empty_like(W)

    def matrix(self, tensor: torch.Tensor):
        """The (rows, cols) matrix of a weight tensor, read in place (NumPy view, or the CUDA tensor)."""
        t = tensor.detach().reshape(self.rows, self.cols)
        if t.dtype not in (torch.float32, torch.float64):
            t = t.to(torch.float32)  # half and bfloat16: one float32 copy, on the tensor's device
        if t.is_cuda:
            return t  # read in place by the device Lanczos (__cuda_array_interface__)
        return t.numpy()  # shares memory with the parameter


def _require_device_lanczos(name: str, param) -> None:
    """A CUDA weight is read in place by the device Lanczos; without one, one clear error (no host copy)."""
    if getattr(param, "is_cuda", False) and not backend.gpu_available():
        raise RuntimeError(f"layer {name!r} is a CUDA tensor but specdyn's device Lanczos is not usable "
                           f"({backend.gpu_status()}; see specdyn.backend.gpu_status()); the monitor never "
                           "copies a device weight to the host")


def _select_layers(model, layers) -> list[tuple[str, torch.nn.Parameter]]:
    named = list(model.named_parameters())
    if layers is None:
        chosen = [(n, p) for n, p in named if p.ndim >= 2 and n.endswith("weight")]
    elif callable(layers):
        chosen = [(n, p) for n, p in named if p.ndim >= 2 and layers(n, p)]
    elif isinstance(layers, (list, tuple)):
        own = dict(named)
        unknown = [n for n in layers if not isinstance(n, str) or n not in own]
        if unknown:
            raise ValueError(f"layers: unknown parameter names {unknown}; allowed: names from "
                             f"model.named_parameters() with ndim >= 2, here "
                             f"{[n for n, p in named if p.ndim >= 2][:20]}")
        repeated = sorted({n for n in layers if list(layers).count(n) > 1})
        if repeated:
            raise ValueError(f"layers: each parameter name at most once; repeated: {repeated}")
        chosen = [(n, own[n]) for n in layers]
    else:
        raise ValueError("layers must be None (every weight with ndim >= 2), a list of parameter names or "
                         f"a predicate (name, param) -> bool; got {type(layers).__name__}")
    bad = [n for n, p in chosen if p.ndim < 2]
    if bad:
        raise ValueError(f"layers must be parameters with ndim >= 2 (matrices or conv kernels); got {bad}")
    if not chosen:
        raise ValueError("layers: the selection holds no parameter (the model has no weight with ndim >= 2)")
    return chosen


class SpectralMonitor:
    """Spectral instruments on a PyTorch model.

    Parameters
    ----------
    model : torch.nn.Module
    top_k : int >= 1, singular values tracked per layer (fewer for a layer with
        a smaller side; the missing ranks are NaN)
    layers : None (every parameter with ndim >= 2 whose name ends in ``weight``),
        a list of parameter names, or a predicate ``(name, param) -> bool``
        (asked about the parameters with ndim >= 2).
        A conv kernel (out, in, kh, kw) is read as the matrix out x (in kh kw).
    normalize : "fan_in" (spectra of W / sqrt(fan_in)) or "none" (raw W)
    delta : also track the top-k of (W - W(0)) normalized alike
    bulk_every : None or int >= 1: every that many steps, a histogram of all
        singular values of each layer (exact, LAPACK) beside the initial bulk law
    sharpness : None or a closure returning the loss on a fixed batch: adds the
        top Hessian eigenvalue of that loss and of each tracked weight's own
        Hessian block
    output : None or a closure returning the model outputs (samples first) on
        the same batch: adds the top NTK eigenvalue and ``normalized_sharpness``
    store : None or a directory path: observations are appended to a Zarr store
        as they are taken (readable after a crash with :func:`specdyn.storage.load`)
    tol : residual tolerance of every value, relative to the norm of its matrix
        or operator, in (0, 0.1] (specdyn's solver floors it at 1e-4 for float32
        weights, which is reported once and recorded in the ``tolerance``
        variable). Default: 1e-8 in float64, 1e-4 in float32, with the tracking
        certificate for singular values: a value in a cluster (the
        edge of a random bulk) is certified once its residual is a tenth of the
        spacing to its nearest neighbour, every other value to that tolerance
        (see :func:`specdyn.top_singular`, ``certify="resolvable"``). The
        ``singular_values_residual`` variable holds the accuracy each value
        is certified to.
    attrs : extra dataset attributes (e.g. ``scaling``, ``width``)
    """

    def __init__(self, model, top_k: int = 4, layers=None, normalize: str = "fan_in", delta: bool = True,
                 bulk_every: int | None = None, sharpness=None, store=None, tol: float | None = None, *,
                 output=None, overlaps: bool = True, attrs: dict | None = None):
        from .. import _validate as v

        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        self.top_k = v.integer("top_k", top_k, 1, 10**6)
        self.normalize = v.choice("normalize", normalize, NORMALIZE)
        if not isinstance(delta, bool):
            raise ValueError(f"delta must be true or false; got {delta!r}")
        self.bulk_every = None if bulk_every is None else v.integer("bulk_every", bulk_every, 1)
        if sharpness is not None and not callable(sharpness):
            raise ValueError("sharpness must be None or a closure returning the loss on a fixed batch")
        if output is not None and not callable(output):
            raise ValueError("output must be None or a closure returning the model outputs on a fixed batch")
        if output is not None and sharpness is None:
            raise ValueError("output needs sharpness (the loss closure on the same batch)")
        self.tol = None if tol is None else v.real("tol", tol, 0.0, 0.1, lo_open=True)
        if not isinstance(overlaps, bool):
            raise ValueError(f"overlaps must be true or false; got {overlaps!r}")
        if attrs is not None and not isinstance(attrs, dict):
            raise ValueError(f"attrs must be None or a dict of dataset attributes; got {type(attrs).__name__}")
        chosen = _select_layers(model, layers)
        for name, param in chosen:  # before any work on a weight
            _require_device_lanczos(name, param)
        self.model = model
        self.delta = delta
        self.layers = [_Layer(n, p, self.top_k, self.normalize, delta) for n, p in chosen]
        self._ops = None
        if sharpness is not None:
            from ._sharpness import Operators

            self._ops = Operators(model, sharpness, output)
        self.output = output
        self._hessian_warm = None
        self._ntk_warm = None
        self._rows: list[dict] = []
        self._floored: set[str] = set()  # layers whose requested tol the solver raised (reported once)
        self._bulk: list[dict] = []
        self._optimizer = None
        self._hook = None
        self._hooks = []
        self._capture = True
        self.status, self.diverged_step = "ok", -1
        if overlaps:
            self._install_overlap_hooks()
        self.attrs = {"kind": "monitor", "status": "ok", "diverged_step": -1, "scaling": "", "width": 0, "seed": 0,
                      "config": json.dumps({"top_k": self.top_k, "normalize": self.normalize, "delta": delta,
                                            "bulk_every": self.bulk_every, "tol": self.tol,
                                            "model": type(model).__name__}, sort_keys=True),
                      "normalized_sharpness": "learning rate * top NTK eigenvalue / samples",
                      "overlap_previous": "squared overlap of right singular vector k with the previous one"}
        self.attrs.update(getattr(model, "specdyn_attrs", {}) or {})
        self.attrs.update(attrs or {})
        self._store = None
        if store is not None:
            self._store = self._open_store(store)

    # ---- layout -----------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return [l.name for l in self.layers]

    def _static(self) -> dict:
        names = np.array(self.layer_names)
        ratio = [l.rows / l.cols for l in self.layers]
        return {
            "layer": (("layer",), names),
            "rank": (("rank",), np.arange(self.top_k, dtype=np.int64)),
            "fan_in": (("layer",), np.array([l.fan_in for l in self.layers], dtype=np.int64)),
            "initial_scale": (("layer",), np.array([l.sigma for l in self.layers])),
            "bulk_edge_law": (("layer",), np.array([rmt.singular_value_edge(r, max(l.sigma, 1e-300))
                                                    for r, l in zip(ratio, self.layers)])),
        }

    def _growing(self) -> dict:
        nl, k = len(self.layers), self.top_k
        slr = ("step", "layer", "rank")
        g = {"step": (("step",), (), np.int64), "loss": (("step",), (), np.float64),
             "singular_values": (slr, (nl, k), np.float64), "singular_values_residual": (slr, (nl, k), np.float64),
             "delta_singular_values": (slr, (nl, k), np.float64),
             "delta_singular_values_residual": (slr, (nl, k), np.float64),
             "certified": (("step", "layer"), (nl,), bool), "weight_norm": (("step", "layer"), (nl,), np.float64),
             "tolerance": (("step", "layer"), (nl,), np.float64),
             "overlap_input": (slr, (nl, k), np.float64), "overlap_backward": (slr, (nl, k), np.float64),
             "overlap_previous": (slr, (nl, k), np.float64),
             "normalized_sharpness": (("step",), (), np.float64), "hessian_top": (("step",), (), np.float64),
             "hessian_top_residual": (("step",), (), np.float64), "ntk_top": (("step",), (), np.float64),
             "ntk_top_residual": (("step",), (), np.float64), "sharpness_certified": (("step",), (), bool),
             "learning_rate": (("step",), (), np.float64),
             "hessian_block_top": (("step", "layer"), (nl,), np.float64),
             "hessian_block_residual": (("step", "layer"), (nl,), np.float64)}
        if self.bulk_every is not None:
            g["bulk_step"] = (("bulk_step",), (), np.int64)
            g["bulk_counts"] = (("bulk_step", "layer", "bin"), (nl, _BULK_BINS), np.int64)
            g["bulk_edges"] = (("bulk_step", "layer", "bin_edge"), (nl, _BULK_BINS + 1), np.float64)
        return g

    def _open_store(self, path):
        return storage.GrowingGroup(path, self._static(), self._growing(), self.attrs,
                                    variable_attrs=results.variable_attrs)

    # ---- overlaps with the mean input / backward signal (nn.Linear layers) -----------
    def _install_overlap_hooks(self) -> None:
        for layer in self.layers:
            owner_name, _, attr = layer.name.rpartition(".")
            owner = self.model.get_submodule(owner_name) if owner_name else self.model
            if attr != "weight" or not isinstance(owner, torch.nn.Linear) and not getattr(owner, "specdyn_linear",
                                                                                           False):
                continue

            def forward_hook(module, inputs, output, layer=layer):
                if not self._capture or not torch.is_tensor(inputs[0]):
                    return
                x = inputs[0].detach()
                layer.mean_input = x.reshape(-1, x.shape[-1]).mean(0)
                if torch.is_grad_enabled() and output.requires_grad:
                    def grad_hook(g, layer=layer):
                        layer.mean_backward = g.detach().reshape(-1, g.shape[-1]).mean(0)
                    output.register_hook(grad_hook)

            self._hooks.append(owner.register_forward_hook(forward_hook))

    # ---- one observation ----------------------------------------------------------------
    def _tol(self, dtype) -> float:
        return self.tol if self.tol is not None else _DEFAULT_TOL.get(dtype, 1e-8)

    def _spectrum(self, A, layer: _Layer, warm, tol):
        """(values, residuals, converged, U, V, tolerance applied, warm block) of the top-k of the normalized
        A * layer.scale; the warm block (V and the next value's Ritz vector) starts the next observation.

        The solver floors the tolerance for float32 matrices; the one it applied is returned
        (and a requested tolerance below it is reported once).
        """
        k = layer.k
        # No tol given: the tracking certificate (clustered bulk-edge values resolved to a
        # tenth of their spacing, outliers to tol; the residual recorded is each value's
        # certified accuracy).
        certify = "resolvable" if self.tol is None else "all"
        s, U, V, info = lanczos.top_singular(A, k, tol=tol, v0=warm, check_finite=False, certify=certify)
        res = np.asarray(info["residuals"], dtype=np.float64)
        applied = float(info["tol"])
        if applied > tol and self.tol is not None and layer.name not in self._floored:
            self._floored.add(layer.name)
            warnings.warn(f"SpectralMonitor: tol={self.tol:g} is below what layer {layer.name!r} "
                          f"({A.dtype} weights) allows; its values are certified at tol={applied:g} "
                          "(see the dataset's 'tolerance')", RuntimeWarning, stacklevel=4)
        return s * layer.scale, res * layer.scale, bool(info["converged"]), U, V, applied, info["warm"]

    def observe(self, step: int, loss=None, lr: float | None = None) -> dict:
        """Measure every layer at training step ``step`` (increasing); returns the row recorded.

        ``loss`` (a float or a 0-d tensor) is stored as given; ``lr`` (default: the
        attached optimizer's) enables ``normalized_sharpness``.
        """
        from .. import _validate as v

        step = v.integer("step", step, 0)
        if self._rows and step <= self._rows[-1]["step"]:
            raise ValueError(f"step must increase from one observation to the next; got {step} after "
                             f"{self._rows[-1]['step']}")
        if lr is not None:
            lr = v.real("lr", lr, 0.0)
        for layer in self.layers:  # before any work: a device weight without the device Lanczos stops here
            _require_device_lanczos(layer.name, layer.param)
            layer.follow_device()
        if lr is None:
            lr = self._optimizer_lr()
        nl, k = len(self.layers), self.top_k
        row = {"step": step, "loss": float(loss) if loss is not None else np.nan,
               "learning_rate": float(lr) if lr is not None else np.nan}
        for key in ("singular_values", "singular_values_residual", "delta_singular_values",
                    "delta_singular_values_residual", "overlap_input", "overlap_backward", "overlap_previous"):
            row[key] = np.full((nl, k), np.nan)
        row["certified"] = np.zeros(nl, dtype=bool)
        row["weight_norm"] = np.full(nl, np.nan)
        row["tolerance"] = np.full(nl, np.nan)
        row["hessian_block_top"] = np.full(nl, np.nan)
        row["hessian_block_residual"] = np.full(nl, np.nan)
        bulk = self.bulk_every is not None and (step % self.bulk_every == 0 or not self._rows)
        if bulk:
            counts = np.zeros((nl, _BULK_BINS), dtype=np.int64)
            edges = np.full((nl, _BULK_BINS + 1), np.nan)
        finite = True
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                W = layer.param.detach()
                tol = self._tol(W.dtype)
                row["tolerance"][i] = tol
                norm = float(torch.linalg.vector_norm(W)) * layer.scale
                row["weight_norm"][i] = norm
                if not math.isfinite(norm):
                    self._diverged(step)
                    finite = False
                    continue
                A = layer.matrix(W)
                kk = layer.k
                ok = True

                def measure(M, zero: bool, warm_attr: str):
                    """(values, residuals, U, V) of M, warm-started from and saved to layer.<warm_attr>."""
                    nonlocal ok
                    if zero:  # nothing to measure (W(0) = 0, or no change yet)
                        return np.zeros(kk), np.zeros(kk), None, None
                    vals, resid, conv, U_, V_, applied, warm = self._spectrum(M, layer, getattr(layer, warm_attr), tol)
                    ok &= conv
                    row["tolerance"][i] = max(row["tolerance"][i], applied)
                    setattr(layer, warm_attr, warm)
                    return vals, resid, U_, V_

                s, res, U, V = measure(A, norm == 0.0, "warm")
                row["singular_values"][i, :kk] = s
                row["singular_values_residual"][i, :kk] = res
                if V is not None:
                    if layer.previous_right is not None:
                        row["overlap_previous"][i, :kk] = np.sum(V * layer.previous_right, axis=0) ** 2
                    layer.previous_right = np.array(V, dtype=np.float64)
                    self._signal_overlaps(layer, U, V, row, i)
                if self.delta:
                    torch.sub(W, layer.initial, out=layer.delta)
                    D = layer.matrix(layer.delta)
                    ds, dres, _, _ = measure(D, float(torch.linalg.vector_norm(layer.delta)) == 0.0, "warm_delta")
                    row["delta_singular_values"][i, :kk] = ds
                    row["delta_singular_values_residual"][i, :kk] = dres
                row["certified"][i] = ok
                if bulk:
                    sv = (torch.linalg.svdvals(A).cpu().double().numpy() if torch.is_tensor(A)
                          else np.linalg.svd(A, compute_uv=False).astype(np.float64)) * layer.scale
                    top = max(float(sv.max()), rmt.singular_value_edge(layer.rows / layer.cols,
                                                                       max(layer.sigma, 1e-300)))
                    edges[i] = np.linspace(0.0, 1.05 * top, _BULK_BINS + 1)
                    counts[i] = np.histogram(sv, bins=edges[i])[0]
        self._sharpness(row, finite)
        self._rows.append(row)
        if bulk:
            self._bulk.append({"bulk_step": step, "bulk_counts": counts, "bulk_edges": edges})
        if self._store is not None:
            rows = dict(row)
            if bulk:
                rows.update(self._bulk[-1])
            self._store.append(rows, {"status": self.status, "diverged_step": self.diverged_step})
        return row

    def _diverged(self, step: int, what: str = "weights") -> None:
        if self.status == "ok":
            self.status, self.diverged_step = "diverged", step
            warnings.warn(f"SpectralMonitor: non-finite {what} at step {step}; values are NaN and not certified",
                          RuntimeWarning, stacklevel=3)

    @staticmethod
    def _unit(x) -> np.ndarray | None:
        x = x.to("cpu", torch.float64).numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)
        n = float(np.linalg.norm(x))
        return x / n if n > 0 and math.isfinite(n) else None

    def _signal_overlaps(self, layer, U, V, row, i) -> None:
        """Squared overlaps of right (left) singular vectors with the mean input (backward signal).

        The signals are the batch means seen by the layer's module in the last
        forward (backward) pass before the observation.
        """
        kk = layer.k
        if layer.mean_input is not None and layer.mean_input.numel() == layer.cols:
            x = self._unit(layer.mean_input)
            if x is not None:
                row["overlap_input"][i, :kk] = (np.asarray(V, dtype=np.float64).T @ x) ** 2
        if layer.mean_backward is not None and layer.mean_backward.numel() == layer.rows:
            g = self._unit(layer.mean_backward)
            if g is not None:
                row["overlap_backward"][i, :kk] = (np.asarray(U, dtype=np.float64).T @ g) ** 2

    def _sharpness(self, row, finite: bool) -> None:
        """Hessian / NTK tops; NaN and not certified where the weights or the batch loss are not finite."""
        row.update(hessian_top=np.nan, hessian_top_residual=np.nan, ntk_top=np.nan, ntk_top_residual=np.nan,
                   normalized_sharpness=np.nan, sharpness_certified=False)
        if self._ops is None or not finite:
            return
        ops = self._ops
        self._capture = False
        try:
            params = ops.params()
            dtype = next(iter(params.values())).dtype
            tol = self._tol(dtype)
            with torch.no_grad():
                batch_loss = float(ops._loss(params))
            if math.isnan(row["loss"]):
                row["loss"] = batch_loss
            if not math.isfinite(batch_loss):
                self._diverged(row["step"], "sharpness loss")
                return
            ok = True
            n, apply = ops.hessian(params)
            vals, vecs, info = lanczos.top_eigs(apply, n, k=1, tol=tol, v0=self._hessian_warm)
            self._hessian_warm = vecs
            row["hessian_top"], row["hessian_top_residual"] = float(vals[0]), float(info["residuals"][0])
            ok &= bool(info["converged"])
            for i, layer in enumerate(self.layers):
                if layer.name not in params:
                    continue
                n, apply = ops.hessian_block(params, layer.name)
                vals, vecs, info = lanczos.top_eigs(apply, n, k=1, tol=tol, v0=layer.hessian_warm)
                layer.hessian_warm = vecs
                row["hessian_block_top"][i] = float(vals[0])
                row["hessian_block_residual"][i] = float(info["residuals"][0])
                ok &= bool(info["converged"])
            if ops.out_call is not None:
                n, apply, samples = ops.ntk(params)
                warm = self._ntk_warm if self._ntk_warm is not None and self._ntk_warm.shape[0] == n else None
                vals, vecs, info = lanczos.top_eigs(apply, n, k=1, tol=tol, v0=warm)
                self._ntk_warm = vecs
                row["ntk_top"], row["ntk_top_residual"] = float(vals[0]), float(info["residuals"][0])
                ok &= bool(info["converged"])
                row["normalized_sharpness"] = row["learning_rate"] * row["ntk_top"] / samples
            row["sharpness_certified"] = ok
        finally:
            self._capture = True

    # ---- optimizer hook ---------------------------------------------------------------
    def _optimizer_lr(self):
        if self._optimizer is None:
            return None
        lrs = {float(g["lr"]) for g in self._optimizer.param_groups if "lr" in g}
        return lrs.pop() if len(lrs) == 1 else None  # several rates: no single normalized sharpness

    def attach(self, optimizer, every: int = 1, loss=None):
        """Observe after every ``every``-th ``optimizer.step()`` (a post-step hook).

        Observes step 0 (the current weights) at once; the k-th optimizer step
        is observed as step k. ``loss``: optional callable returning the latest
        loss to store with each observation. Returns the hook handle.
        """
        from .. import _validate as v

        every = v.integer("every", every, 1)
        if not hasattr(optimizer, "register_step_post_hook"):
            raise ValueError("optimizer must be a torch.optim.Optimizer (it needs register_step_post_hook)")
        if loss is not None and not callable(loss):
            raise ValueError("loss must be None or a callable returning the latest loss")
        if self._hook is not None:
            self._hook.remove()
        self._optimizer = optimizer
        count = {"t": self._rows[-1]["step"] if self._rows else 0}

        def hook(opt, args, kwargs):
            count["t"] += 1
            if count["t"] % every == 0:
                self.observe(count["t"], loss() if loss is not None else None)

        if not self._rows:
            self.observe(0, loss() if loss is not None else None)
        self._hook = optimizer.register_step_post_hook(hook)
        return self._hook

    def close(self) -> None:
        """Remove the hooks (the store is already complete after every observation)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # ---- results ------------------------------------------------------------------------
    def dataset(self):
        """All observations as an ``xarray.Dataset`` (the variables, dims and attrs of ``specdyn.simulate``)."""
        growing = self._growing()
        variables, coords = {}, {}
        for name, (dims, values) in self._static().items():
            (coords if name in dims else variables)[name] = (dims, values)
        for name, (dims, trailing, dtype) in growing.items():
            src = self._bulk if dims[0] == "bulk_step" else self._rows
            data = np.asarray([r[name] for r in src], dtype=dtype).reshape(len(src), *trailing)
            (coords if name == dims[0] else variables)[name] = (dims, data)
        attrs = dict(self.attrs)
        attrs.update(status=self.status, diverged_step=self.diverged_step)
        return results.dataset(variables, coords, attrs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
