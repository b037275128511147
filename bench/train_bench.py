"""Training-step benchmark: specdyn against PyTorch CPU and plain NumPy.

Same model for every implementation: an MLP with L = 3 hidden layers,
N = 2048, D = 256, P = 512 (full-batch GD on MSE, muP multipliers), tanh and
linear, float32 and float64, all in one run on the same number of threads.
Steps of all implementations are timed in interleaved rounds (min over
rounds), so load drifting on a shared machine hits each alike. Reports ms per
step and ratios against the faster peer, and the overhead of
tracking the top-4 singular values of every hidden layer at every step
(warm-started Lanczos) as a fraction of the plain step.

    python bench/train_bench.py            # full (integrator)
    python bench/train_bench.py --quick    # few steps, for a shared machine

Writes bench/results/train.json. Timings on a loaded machine are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few timed steps (shared machines)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every implementation")
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--input-dim", type=int, default=256)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="timed rounds (one step of each implementation per round)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train.json"))
    ap.add_argument("--no-torch", action="store_true")
    return ap.parse_args()


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import in_tree_if_asked  # noqa: E402

in_tree_if_asked()  # takes --in-tree off the command line before argparse sees it
ARGS = parse()
# Thread counts must be fixed before NumPy/torch/OpenBLAS start their pools.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

# specdyn first: it sets the idle-thread policy that NumPy's OpenBLAS then loads with, so peers and specdyn run under the same one
import specdyn  # noqa: E402
import numpy as np  # noqa: E402
from specdyn import _core  # noqa: E402
from specdyn.config import RunConfig  # noqa: E402
from specdyn.parameterization import scales  # noqa: E402
from specdyn.training import build_trainer  # noqa: E402


def gflop_per_step(cfg: RunConfig) -> float:
    N, D, P, L = cfg.width, cfg.input_dim, cfg.samples, cfg.depth
    fwd = 2 * P * (N * D + (L - 1) * N * N + N * cfg.output_dim)
    # backward: weight gradients (same as forward) + signals (all but the first layer)
    bwd = fwd + 2 * P * ((L - 1) * N * N + N * cfg.output_dim)
    return (fwd + bwd) / 1e9


def interleaved(steps: dict, rounds: int, warmup: int = 1) -> dict:
    """Time one call of each step function per round, rounds interleaved so that
    load drifting on a shared machine hits every implementation alike.
    Returns {name: {"min_ms", "median_ms", "rounds_ms"}} (rounds_ms: every
    round's time, in round order, so that two series can be compared round by round)."""
    for f in steps.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for k, f in steps.items():
            t = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t) * 1e3)
    return {k: {"min_ms": float(np.min(v)), "median_ms": float(np.median(v)), "rounds_ms": [float(x) for x in v]}
            for k, v in times.items()}


def paired_overhead(t: dict, name: str, base: str = "specdyn") -> float:
    """The median over rounds of (name - base) in the same round, over base's
    median: steadier than a ratio of two minima, as each round's pair shares
    the machine's state."""
    a, b = np.asarray(t[base]["rounds_ms"]), np.asarray(t[name]["rounds_ms"])
    return float(np.median(b - a) / np.median(a))


def numpy_peer(cfg: RunConfig, X, Y):
    """The same GD step in plain NumPy (fused in-place update, no autograd)."""
    sc = scales(cfg.scaling, cfg.width, cfg.depth, cfg.input_dim, cfg.output_dim, cfg.gamma0, cfg.eta0, cfg.sigma)
    dt = np.dtype(cfg.dtype)
    rng = np.random.default_rng(0)
    W = [rng.normal(0, l.init_std, (l.fan_out, l.fan_in)).astype(dt) for l in sc.layers]
    X, Y = X.astype(dt), Y.astype(dt)
    m = [dt.type(v) for v in sc.multipliers]
    lr, P, L = dt.type(sc.learning_rate), cfg.samples, cfg.depth
    tanh = cfg.activation == "tanh"

    def step():
        hs = [X]
        for l in range(L + 1):
            z = hs[-1] @ W[l].T
            z *= m[l]
            if l < L and tanh:
                np.tanh(z, out=z)
            hs.append(z)
        e = hs[-1] - Y
        e *= dt.type(1.0 / P)
        for l in range(L, -1, -1):
            g = e.T @ hs[l]
            if l > 0:
                e = e @ W[l]
                e *= m[l]
                if tanh:
                    e *= 1 - hs[l] ** 2
            W[l] -= (lr * m[l]) * g
    step.weights = W  # (read by warm_vs_cold)
    return step


def torch_peer(cfg: RunConfig, X, Y):
    import torch

    torch.set_num_threads(ARGS.threads)
    sc = scales(cfg.scaling, cfg.width, cfg.depth, cfg.input_dim, cfg.output_dim, cfg.gamma0, cfg.eta0, cfg.sigma)
    dt = torch.float64 if cfg.dtype == "float64" else torch.float32
    g = torch.Generator().manual_seed(0)
    W = [(torch.randn(l.fan_out, l.fan_in, generator=g, dtype=dt) * l.init_std).requires_grad_(True)
         for l in sc.layers]
    Xt, Yt = torch.as_tensor(X, dtype=dt), torch.as_tensor(Y, dtype=dt)
    m, lr, L, P = sc.multipliers, sc.learning_rate, cfg.depth, cfg.samples
    phi = torch.tanh if cfg.activation == "tanh" else (lambda z: z)

    def step():
        h = Xt
        for l in range(L + 1):
            h = m[l] * (h @ W[l].T)
            if l < L:
                h = phi(h)
        loss = ((h - Yt) ** 2).sum() / (2 * P)
        loss.backward()
        with torch.no_grad():
            for w in W:
                w -= lr * w.grad
                w.grad = None
    return step


def certified_accuracy(cfg: RunConfig) -> dict:
    """What the tracking certificate certifies at initialization, per hidden layer:
    the top-4 values of the normalized matrix, the distance each is certified to (its
    residual bound), and how many were certified as clustered bulk-edge values."""
    sc = scales(cfg.scaling, cfg.width, cfg.depth, cfg.input_dim, cfg.output_dim, cfg.gamma0, cfg.eta0, cfg.sigma)
    rng = np.random.default_rng(1)
    out = {}
    for l, lay in enumerate(sc.layers[1:-1], start=1):
        W = (rng.standard_normal((lay.fan_out, lay.fan_in)) * lay.init_std * sc.multipliers[l]).astype(cfg.dtype)
        tol = 1e-8 if cfg.dtype == "float64" else 1e-4
        s, _, _, info = specdyn.top_singular(W, cfg.top_k, tol=tol, certify="resolvable")
        out[f"W{l}"] = {"s": s.tolist(), "accuracy": list(info["residuals"]),
                        "spacing": list(info["spacing"]), "clustered": int(np.sum(np.asarray(info["spacing"]) > 0)),
                        "passes": int(info["matrix_passes"])}
    return out


def warm_vs_cold(width: int, k: int = 4, steps: int = 40, tracked: int = 8) -> dict:
    """Passes of warm-started solves (each from the previous step's warm block,
    ``info["warm"]``) against cold ones on the same matrices, for the top-k of a
    hidden matrix of a two-hidden-layer linear muP network trained by GD (NumPy)
    until its top value has escaped the bulk, then over `tracked` further steps."""
    cfg = RunConfig(width=width, depth=2, input_dim=32, samples=64, activation="linear", scaling="mup",
                    gamma0=1.0, eta0=1.0, steps=steps, dtype="float64")
    sc = scales(cfg.scaling, cfg.width, cfg.depth, cfg.input_dim, cfg.output_dim, cfg.gamma0, cfg.eta0, cfg.sigma)
    X, Y = specdyn.data.teacher(cfg.samples, cfg.input_dim)
    step = numpy_peer(cfg, X, Y)
    W, m = step.weights, sc.multipliers
    for _ in range(steps):
        step()
    certs = ("all", "resolvable")
    s0, _, _, first = specdyn.top_singular(m[1] * W[1], k, tol=1e-8)
    block = {c: specdyn.top_singular(m[1] * W[1], k, tol=1e-8, certify=c)[3]["warm"] for c in certs}
    out = {"width": width, "k": k, "after_steps": steps, "tracked_steps": tracked, "s": s0.tolist()}
    for c in certs:
        out[c] = {"cold_passes": [], "warm_passes": []}
    for _ in range(tracked):
        step()
        A = m[1] * W[1]
        for c in certs:
            _, _, _, cold = specdyn.top_singular(A, k, tol=1e-8, certify=c)
            _, _, _, warm = specdyn.top_singular(A, k, tol=1e-8, v0=block[c], certify=c)
            block[c] = warm["warm"]
            out[c]["cold_passes"].append(int(cold["matrix_passes"]))
            out[c]["warm_passes"].append(int(warm["matrix_passes"]))
    for c in certs:
        out[c]["ratio"] = sum(out[c]["warm_passes"]) / sum(out[c]["cold_passes"])
    print(f"warm vs cold, N={width}, top value {s0[0]:.3f} (bulk edge 2), passes per step over {tracked} steps: "
          + ", ".join(f"{c}: {np.mean(out[c]['warm_passes']):.1f} vs {np.mean(out[c]['cold_passes']):.1f} "
                      f"({out[c]['ratio']:.2f})" for c in certs), flush=True)
    return out


def specdyn_stepper(cfg: RunConfig, X, Y, total: int, **flags):
    """One native step per call (tracking included where the schedule says so)."""
    trainer, _ = build_trainer(cfg.replace(steps=total + 1), (X, Y), **flags)
    return lambda: trainer.run(trainer.step + 1)


def main():
    quick = ARGS.quick
    steps = ARGS.steps or (3 if quick else 12)
    _core.set_blas_threads(ARGS.threads)
    _core.set_omp_threads(ARGS.threads)
    results = {"model": dict(depth=ARGS.depth, width=ARGS.width, input_dim=ARGS.input_dim, samples=ARGS.samples,
                             scaling="mup"),
               "threads": ARGS.threads, "quick": quick, "timed_rounds": steps, "statistic": "step times: min over interleaved rounds; tracking cost (tracking_overhead): median over rounds of the same-round difference tracked - untracked, over the untracked median (tracking_overhead_minima: ratio of the two minima)", "info": specdyn.info(),
               "machine": platform.platform(), "cases": []}
    try:
        import torch
        results["torch"] = torch.__version__
        have_torch = not ARGS.no_torch
    except ImportError:
        have_torch = False
    for dtype in ("float32", "float64"):
        for act in ("tanh", "linear"):
            cfg = RunConfig(width=ARGS.width, depth=ARGS.depth, input_dim=ARGS.input_dim, samples=ARGS.samples,
                            activation=act, scaling="mup", gamma0=1.0, eta0=0.05, steps=steps + 4, dtype=dtype,
                            track_sharpness=False, top_k=4)
            X, Y = specdyn.data.teacher(cfg.samples, cfg.input_dim)
            row = {"dtype": dtype, "activation": act, "gflop_per_step": gflop_per_step(cfg)}
            total = steps + 4
            never = dict(track_spectra=False, track_sharpness=False, track_overlaps=False, track_delta=False)
            # top-4 singular values of every layer's normalized matrix at every step (warm-started Lanczos),
            # at the dtype's default tolerance and at a loose "live" tolerance 1e-4 of ||A||
            track = dict(track_spectra=True, track_sharpness=False, track_overlaps=False, track_delta=False)
            fns = {"specdyn": specdyn_stepper(cfg.replace(track_every=10**6), X, Y, total, **never),
                   "numpy": numpy_peer(cfg, X, Y)}
            if have_torch:
                fns["torch"] = torch_peer(cfg, X, Y)
            # default: the tracking certificate (outliers to the dtype's tolerance, clustered
            # bulk-edge values to a tenth of their spacing); "exact": that tolerance for every value
            fns["tracked"] = specdyn_stepper(cfg.replace(track_every=1), X, Y, total, **track)
            exact_tol = 1e-8 if dtype == "float64" else 1e-4
            fns["tracked_exact"] = specdyn_stepper(cfg.replace(track_every=1, svd_tol=exact_tol), X, Y, total, **track)
            fns["tracked_live"] = specdyn_stepper(cfg.replace(track_every=1, svd_tol=1e-4), X, Y, total, **track)
            t = interleaved(fns, steps, warmup=2)
            row["times"] = t
            ms = {k: v["min_ms"] for k, v in t.items()}  # min over rounds: least disturbed by other load
            row["specdyn_ms"], row["numpy_ms"] = ms["specdyn"], ms["numpy"]
            if have_torch:
                row["torch_ms"] = ms["torch"]
            peers = [row[k] for k in ("numpy_ms", "torch_ms") if k in row]
            row["faster_peer_ms"] = min(peers)
            row["ratio_vs_faster_peer"] = row["specdyn_ms"] / row["faster_peer_ms"]
            row["ratio_vs_numpy"] = row["specdyn_ms"] / row["numpy_ms"]
            if "torch_ms" in row:
                row["ratio_vs_torch"] = row["specdyn_ms"] / row["torch_ms"]
            row["specdyn_gflops"] = row["gflop_per_step"] / row["specdyn_ms"] * 1e3
            row["tracked_ms"], row["tracked_live_ms"] = ms["tracked"], ms["tracked_live"]
            row["tracked_exact_ms"] = ms["tracked_exact"]
            # The tracking cost is a difference of a few percent between two noisy series: the
            # median of same-round differences (each pair shares the machine's state) rather than
            # a ratio of two minima, which a single lucky round of either side sets.
            row["tracking_overhead"] = paired_overhead(t, "tracked")
            row["tracking_overhead_minima"] = row["tracked_ms"] / row["specdyn_ms"] - 1.0
            row["tracking_overhead_exact"] = paired_overhead(t, "tracked_exact")
            row["certified_at_init"] = certified_accuracy(cfg)
            row["tracking_overhead_live"] = paired_overhead(t, "tracked_live")
            results["cases"].append(row)
            print(f"{dtype} {act:6s} specdyn {row['specdyn_ms']:7.1f} ms  numpy {row['numpy_ms']:7.1f}  "
                  f"torch {row.get('torch_ms', float('nan')):7.1f}  ratio {row['ratio_vs_faster_peer']:.2f}  "
                  f"tracked {row['tracked_ms']:7.1f} ms (+{100 * row['tracking_overhead']:.1f}%, paired rounds; "
                  f"minima +{100 * row['tracking_overhead_minima']:.1f}%), "
                  f"every value to tol: +{100 * row['tracking_overhead_exact']:.1f}%, "
                  f"tol 1e-4: +{100 * row['tracking_overhead_live']:.1f}%", flush=True)
            for name, acc in row["certified_at_init"].items():
                print(f"    {name}: s = {np.round(acc['s'], 4).tolist()}  certified to "
                      f"{np.array(acc['accuracy']).round(8).tolist()} ({acc['clustered']} clustered)", flush=True)
    results["warm_vs_cold"] = warm_vs_cold(ARGS.width)
    results["goals"] = {"step_ratio_max": 0.9, "tracking_overhead_max": 0.10,
                        "step_ratio_met": all(r["ratio_vs_faster_peer"] <= 0.9 for r in results["cases"]),
                        "tracking_overhead_met": all(r["tracking_overhead"] <= 0.10 for r in results["cases"]),
                        "tracking_overhead_minima_met": all(r["tracking_overhead_minima"] <= 0.10
                                                            for r in results["cases"]),
                        "tracking_overhead_live_met": all(r["tracking_overhead_live"] <= 0.10 for r in results["cases"])}
    out = Path(ARGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
