"""Hessian and NTK operators of a PyTorch model, as callables for :func:`specdyn.top_eigs`.

Everything goes through ``torch.func`` on the model's own parameters swapped in
by ``functional_call``: a Hessian-vector product is forward-over-reverse
(``jvp`` of ``grad``), an NTK product is one ``vjp`` and one ``jvp``. Blocks of
vectors from the Lanczos solver are applied column by column.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.func import functional_call, grad, jvp, vjp


class _Call(torch.nn.Module):
    """Runs a user callable with the model's parameters swapped by ``functional_call``."""

    def __init__(self, model: torch.nn.Module, fn):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self):
        return self.fn()


class Operators:
    """Loss Hessian (whole and per weight block) and NTK of ``model`` on a fixed batch.

    ``loss_fn()`` returns the scalar loss; ``output_fn()`` (optional) the model
    outputs, shape (P, ...) with P samples.
    """

    def __init__(self, model: torch.nn.Module, loss_fn, output_fn=None):
        self.loss_call = _Call(model, loss_fn)
        self.out_call = _Call(model, output_fn) if output_fn is not None else None
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.model = model

    def params(self) -> dict:
        own = dict(self.model.named_parameters())
        return {n: own[n].detach() for n in self.names}

    def _loss(self, params: dict):
        return functional_call(self.loss_call, {f"model.{n}": p for n, p in params.items()}, ())

    def _out(self, params: dict):
        return functional_call(self.out_call, {f"model.{n}": p for n, p in params.items()}, ())

    # ---- flattening --------------------------------------------------------------
    @staticmethod
    def size(params: dict) -> int:
        return sum(p.numel() for p in params.values())

    @staticmethod
    def unflatten(x: np.ndarray, like: dict) -> dict:
        out, i = {}, 0
        for n, p in like.items():
            out[n] = torch.as_tensor(x[i:i + p.numel()], dtype=p.dtype, device=p.device).reshape(p.shape)
            i += p.numel()
        return out

    @staticmethod
    def flatten(d: dict) -> np.ndarray:
        return np.concatenate([t.detach().reshape(-1).to("cpu", torch.float64).numpy() for t in d.values()])

    # ---- operators -----------------------------------------------------------------
    def hessian(self, params: dict):
        """(n, callable X -> H X) of the loss Hessian over all parameters."""
        g = grad(self._loss)

        def apply(X):
            cols = [self.flatten(jvp(g, (params,), (self.unflatten(X[:, j], params),))[1])
                    for j in range(X.shape[1])]
            return np.stack(cols, axis=1)

        return self.size(params), apply

    def hessian_block(self, params: dict, name: str):
        """(n, callable) of the Hessian block of one parameter (the others held fixed)."""
        rest = {n: p for n, p in params.items() if n != name}
        w = params[name]

        def loss_of(wl):
            return self._loss({**rest, name: wl})

        g = grad(loss_of)

        def apply(X):
            cols = [jvp(g, (w,), (torch.as_tensor(X[:, j], dtype=w.dtype, device=w.device).reshape(w.shape),))[1]
                    .reshape(-1).to("cpu", torch.float64).numpy() for j in range(X.shape[1])]
            return np.stack(cols, axis=1)

        return w.numel(), apply

    def ntk(self, params: dict):
        """(n, callable, P): the NTK on the smaller of output space (J J^T) and parameter space (J^T J).

        Both have the same nonzero eigenvalues; P is the number of samples.
        """
        out, pull = vjp(self._out, params)
        if out.ndim < 1:
            raise ValueError("output function must return the model outputs with samples on the first axis, "
                             f"got a tensor of shape {tuple(out.shape)}")
        samples, shape = int(out.shape[0]), out.shape
        n_out, n_par = out.numel(), self.size(params)
        dtype, device = out.dtype, out.device

        if n_out <= n_par:
            def apply(X):
                cols = []
                for j in range(X.shape[1]):
                    (jt,) = pull(torch.as_tensor(X[:, j], dtype=dtype, device=device).reshape(shape))
                    cols.append(jvp(self._out, (params,), (jt,))[1].reshape(-1).to("cpu", torch.float64).numpy())
                return np.stack(cols, axis=1)

            return n_out, apply, samples

        def apply(X):
            cols = []
            for j in range(X.shape[1]):
                jv = jvp(self._out, (params,), (self.unflatten(X[:, j], params),))[1]
                cols.append(self.flatten(pull(jv)[0]))
            return np.stack(cols, axis=1)

        return n_par, apply, samples
