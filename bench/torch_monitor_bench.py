"""Cost of SpectralMonitor in a PyTorch training loop, next to what a user would write instead.

One run, one thread count for PyTorch and specdyn: a 4-layer float32 MLP
(four 2048 x 2048 weights, tanh) trained by SGD on batches of 512 on the CPU;
at every step, interleaved:

* one training step (forward, backward, update);
* ``monitor.observe``: certified top-4 of every layer (warm-started Lanczos,
  zero copy), without and with the delta spectra of W - W(0);
* ``torch.linalg.svdvals`` of every layer (all singular values, LAPACK);
* ``torch.svd_lowrank(W, q=4 + 6, niter=2)`` of every layer (randomized, no
  accuracy guarantee), with its error against svdvals.

Reports medians and spreads (min .. max) over the steps, the monitor's cost as
a fraction of a training step when observing every step and every 10 steps,
and the accuracy each method reached. Writes bench/results/torch_monitor.json
(torch_monitor_quick.json with --quick).

Usage:  python bench/torch_monitor_bench.py [--quick] [--threads T] [--in-tree]
It imports the installed specdyn; --in-tree puts ../python first on sys.path.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="width 256, batch 64, 6 steps")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--steps", type=int, default=None)
    return p.parse_args()


def spread(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main():
    sys.path.insert(0, str(HERE))
    from _common import in_tree_if_asked

    in_tree_if_asked()
    args = parse()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import specdyn  # noqa: F401  (first: it sets the thread policy the runtimes load with)
    import numpy as np
    import torch
    from specdyn import _core
    from specdyn.torch import SpectralMonitor

    sys.path.insert(0, str(HERE))
    from _common import machine, table

    torch.set_num_threads(args.threads)
    _core.set_omp_threads(args.threads)
    width, batch, steps = (256, 64, 6) if args.quick else (2048, 512, 20)
    steps = args.steps or steps
    k = 4
    torch.manual_seed(0)
    layers = []
    for _ in range(4):
        layers += [torch.nn.Linear(width, width), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers[:-1])
    X, Y = torch.randn(batch, width), torch.randn(batch, width)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    mon = SpectralMonitor(model, top_k=k, delta=False, overlaps=False)
    mon_delta = SpectralMonitor(model, top_k=k, delta=True, overlaps=False)

    def train_step():
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(X), Y).backward()
        opt.step()

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return time.perf_counter() - t, out

    def svdvals_all():
        with torch.no_grad():
            return [torch.linalg.svdvals(w) for w in weights]

    def lowrank_all():
        with torch.no_grad():
            return [torch.svd_lowrank(w, q=k + 6, niter=2)[1][:k] for w in weights]

    train_step()  # warm up allocators and threads
    t = {"train_step": [], "monitor": [], "monitor_delta": [], "svdvals": [], "svd_lowrank": []}
    err = {"monitor": [], "svd_lowrank": []}
    for step in range(1, steps + 1):
        dt, _ = timed(train_step)
        t["train_step"].append(dt)
        dt, row = timed(lambda: mon.observe(step))
        t["monitor"].append(dt)
        dt, _ = timed(lambda: mon_delta.observe(step))
        t["monitor_delta"].append(dt)
        dt, exact = timed(svdvals_all)
        t["svdvals"].append(dt)
        dt, low = timed(lowrank_all)
        t["svd_lowrank"].append(dt)
        # accuracy against LAPACK in float64 of the same float32 weights
        ref = [torch.linalg.svdvals(w.detach().double())[:k].numpy() for w in weights]
        s_mon = row["singular_values"] * np.sqrt(width)  # back to raw W (normalize="fan_in")
        err["monitor"].append(max(float(np.max(np.abs(s_mon[i] - r) / r)) for i, r in enumerate(ref)))
        err["svd_lowrank"].append(max(float(np.max(np.abs(low[i].double().numpy() - r) / r))
                                      for i, r in enumerate(ref)))
        del exact
    ts = statistics.median(t["train_step"])
    summary = {name: spread(v) for name, v in t.items()}
    frac = {
        "monitor_every_step": statistics.median(t["monitor"]) / ts,
        "monitor_every_10_steps": statistics.median(t["monitor"]) / (10 * ts),
        "monitor_delta_every_step": statistics.median(t["monitor_delta"]) / ts,
        "monitor_delta_every_10_steps": statistics.median(t["monitor_delta"]) / (10 * ts),
        "svdvals_every_step": statistics.median(t["svdvals"]) / ts,
        "svd_lowrank_every_step": statistics.median(t["svd_lowrank"]) / ts,
    }
    speedup = statistics.median(t["svdvals"]) / statistics.median(t["monitor"])
    rows = [
        {"method": "training step", "median_ms": 1e3 * ts, "spread_ms": _fmt(t["train_step"]), "per_step": 1.0,
         "max_rel_error": ""},
        {"method": "monitor top-4 (certified)", "median_ms": 1e3 * statistics.median(t["monitor"]),
         "spread_ms": _fmt(t["monitor"]), "per_step": frac["monitor_every_step"],
         "max_rel_error": max(err["monitor"])},
        {"method": "monitor top-4 + delta", "median_ms": 1e3 * statistics.median(t["monitor_delta"]),
         "spread_ms": _fmt(t["monitor_delta"]), "per_step": frac["monitor_delta_every_step"],
         "max_rel_error": ""},
        {"method": "torch.linalg.svdvals", "median_ms": 1e3 * statistics.median(t["svdvals"]),
         "spread_ms": _fmt(t["svdvals"]), "per_step": frac["svdvals_every_step"], "max_rel_error": "(reference)"},
        {"method": "torch.svd_lowrank q=10 niter=2", "median_ms": 1e3 * statistics.median(t["svd_lowrank"]),
         "spread_ms": _fmt(t["svd_lowrank"]), "per_step": frac["svd_lowrank_every_step"],
         "max_rel_error": max(err["svd_lowrank"])},
    ]
    print(f"4 x ({width} x {width}) float32 MLP, batch {batch}, {steps} steps, {args.threads} threads "
          f"(torch and specdyn)")
    print(table(rows, ["method", "median_ms", "spread_ms", "per_step", "max_rel_error"]))
    print(f"monitor every 10 steps: {100 * frac['monitor_every_10_steps']:.2f}% of training; "
          f"svdvals / monitor = {speedup:.1f}x")
    payload = {"machine": machine(), "width": width, "batch": batch, "steps": steps, "threads": args.threads,
               "torch": torch.__version__, "times_s": summary, "fraction_of_step": frac,
               "svdvals_over_monitor": speedup, "max_rel_error": {k2: max(v) for k2, v in err.items()},
               "certified": bool(mon.dataset().certified.all()), "rows": rows}
    out = HERE / "results" / ("torch_monitor_quick.json" if args.quick else "torch_monitor.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=float))
    print(f"wrote {out}")


def _fmt(xs) -> str:
    return f"{1e3 * min(xs):.3g} .. {1e3 * max(xs):.3g}"


if __name__ == "__main__":
    main()
