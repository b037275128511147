"""Benchmark of the one-bulk DMFT solver.

1. Mode solver (level one): the C++ core against the NumPy transcription in
   bench/dmft_numpy.py (same recursion, same outputs incl. S(t) at every step),
   at T = 1000 steps, M = 400 nodes, D = 16 (``--quick``: T = 500).
2. The whole limit curve (``specdyn.theory.one_bulk``: level one plus outliers
   at every 10th step) against one finite-width simulation of the same steps at
   N = 4096 (``specdyn.simulate`` when present, else the NumPy GD of
   bench/dmft_numpy.py, with the top singular values at the last step).

Prints a table and writes bench/results/dmft.json. Timings are wall-clock,
best of ``--repeat`` runs; on a shared machine they are noisy.

    PYTHONPATH=python python bench/dmft_bench.py --quick
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _common import in_tree_if_asked  # noqa: E402

in_tree_if_asked()
# specdyn first: it sets the idle-thread policy that NumPy's OpenBLAS then loads with, so peers and specdyn run under the same one
import specdyn  # noqa: E402,F401
import numpy as np  # noqa: E402
import dmft_numpy as dn  # noqa: E402


CPU = {}


def best_of(fn, repeat, key=None):
    """Best wall-clock time of ``repeat`` calls; the CPU time of that call goes to CPU[key]."""
    times, out = [], None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append((time.perf_counter() - t, time.process_time() - c))
    wall, cpu = min(times)
    if key:
        CPU[key] = cpu
    return wall, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (shared machines, CI)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "dmft.json"))
    ap.add_argument("--figure", metavar="PNG", help="only draw the README figure (theory vs three widths) to PNG")
    args = ap.parse_args(argv)
    if args.figure:
        return figure(args.figure)

    import xarray  # noqa: F401  (imported before any timing)

    import specdyn
    from specdyn.theory import one_bulk, quarter_circle_nodes
    from specdyn.theory.one_bulk import limit_initial, solve_modes

    dn.single_thread_blas()   # both sides on one BLAS thread: a like-for-like comparison
    T, M, D, P = (500, 400, 16, 32) if args.quick else (1000, 400, 16, 32)
    gamma0, eta0 = 4.0, 0.2
    rng = np.random.default_rng(0)
    X = rng.standard_normal((P, D))
    y = X @ rng.standard_normal(D) / math.sqrt(D)
    s, p = quarter_circle_nodes(M)
    a0, B0 = limit_initial(s, D, 1.0, 1.0)
    c = eta0 * gamma0

    t_cpp, sol = best_of(lambda: solve_modes(s, p, a0, B0, X, y, c, gamma0, eta0, T), args.repeat, "cpp")
    t_np, ref = best_of(lambda: dn.mode_recursion(s, p, a0, B0, X, y, c, gamma0, eta0, T), args.repeat,
                       "numpy")
    err = float(np.max(np.abs(sol.loss - ref["loss"])) / np.max(ref["loss"]))
    err_s = float(np.max(np.abs(sol.sharpness - ref["sharpness"])))
    rows = [("mode solver", f"T={T} M={M} D={D} P={P}", "C++ core", t_cpp),
            ("mode solver", f"T={T} M={M} D={D} P={P}", "NumPy oracle", t_np)]

    # limit curve vs one simulation at N = 4096
    N = 4096
    Tc = 100 if args.quick else 300
    cfg = specdyn.RunConfig(width=N, input_dim=D, samples=P, gamma0=gamma0, eta0=eta0, steps=Tc,
                            track_every=10, top_k=4)
    t_th, th = best_of(lambda: one_bulk(cfg, (X, y), nodes=128), args.repeat)
    sim_kind = "numpy GD"
    try:
        simulate = specdyn.simulate
        sim_kind = "specdyn.simulate"
        t_sim, _ = best_of(lambda: simulate(cfg, (X, y)), 1)
    except (AttributeError, ImportError, ModuleNotFoundError):
        from specdyn import parameterization as PZ
        sc = PZ.scales("mup", N, 2, D, 1, gamma0, eta0, 1.0)
        W0, W1, w = dn.init_network(N, D, 0)
        t_sim, _ = best_of(lambda: dn.simulate_gd(W0, W1, w, X, y, sc.multipliers, sc.learning_rate, Tc,
                                                  track=[Tc], top_k=4, sharpness=True, track_delta=False), 1)
    rows += [("limit curve", f"T={Tc}, outliers every 10 steps, M=128", "one_bulk", t_th),
             ("limit curve", f"T={Tc}, N={N}, 1 seed", sim_kind, t_sim)]

    print(f"{'what':<13} {'size':<42} {'implementation':<17} {'seconds':>9}")
    for what, size, impl, t in rows:
        print(f"{what:<13} {size:<42} {impl:<17} {t:>9.3f}")
    print(f"speedup of the C++ mode solver over NumPy: {t_np / t_cpp:.1f}x wall, "
          f"{CPU['numpy'] / CPU['cpp']:.1f}x CPU time (goal >= 20x); "
          f"max rel. loss difference {err:.1e}, max S difference {err_s:.1e}; "
          f"history ranks {sol.rank_a}, {sol.rank_q} of {min(T + 1, M * (1 + D))}")
    print(f"limit curve vs one N={N} simulation: {t_sim / t_th:.1f}x faster")

    result = {
        "quick": args.quick, "machine": platform.machine(), "python": platform.python_version(),
        "note": "wall-clock (and CPU time), best of repeat, one BLAS thread on both sides; shared machine: noisy",
        "mode_solver": {"T": T, "M": M, "D": D, "P": P, "cpp_s": t_cpp, "numpy_s": t_np,
                        "speedup": t_np / t_cpp, "cpp_cpu_s": CPU["cpp"], "numpy_cpu_s": CPU["numpy"],
                        "speedup_cpu": CPU["numpy"] / CPU["cpp"], "max_rel_loss_diff": err, "max_sharpness_diff": err_s,
                        "history_rank_omega": sol.rank_a, "history_rank_qhat": sol.rank_q},
        "limit_vs_simulation": {"T": Tc, "N": N, "theory_s": t_th, "simulation_s": t_sim,
                                "simulation": sim_kind, "ratio": t_sim / t_th},
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {args.out}")
    return result


def figure(path, widths=(250, 1000, 2000), seeds=2):
    """Theory vs NumPy GD at three widths: s_1(t), loss and S(t) (the README figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import specdyn
    from specdyn.theory import one_bulk

    dn.single_thread_blas()
    rng = np.random.default_rng(1)
    X = rng.standard_normal((16, 8))
    y = X @ rng.standard_normal(8) / math.sqrt(8)
    cfg = specdyn.RunConfig(width=1000, input_dim=8, samples=16, gamma0=4.0, eta0=0.2, steps=40, top_k=2)
    steps = list(range(0, 41, 4))
    th = one_bulk(cfg, (X, y), steps=list(range(41)))
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.4))
    for N, col in zip(widths, ("tab:orange", "tab:green", "tab:blue")):
        sim = dn.simulation_dataset(cfg.replace(width=N), X, y, seeds=range(seeds), steps=steps, top_k=2,
                                    track_delta=False).mean("seed")
        ax[0].plot(steps, sim.singular_values.sel(layer="W1", rank=0), "o", ms=3, color=col, label=f"N={N}")
        ax[1].semilogy(steps, sim.loss, "o", ms=3, color=col)
        ax[2].plot(steps, sim.normalized_sharpness, "o", ms=3, color=col)
    ts = th.step.values
    ax[0].plot(ts, th.singular_values.sel(layer="W1", rank=0), "k-", label="theory (N=inf)")
    ax[0].plot(ts, th.naive_singular_values.sel(layer="W1", rank=0).fillna(2.0), "k:",
               label="naive BGN (edge: none)")
    ax[0].axhline(2.0, color="gray", lw=0.5)
    ax[1].semilogy(ts, th.loss, "k-")
    ax[2].plot(ts, th.normalized_sharpness, "k-")
    for a, name in zip(ax, ("top singular value of W1/sqrt(N)", "training loss", "normalized sharpness S")):
        a.set_xlabel("GD step")
        a.set_title(name, fontsize=10)
    ax[0].legend(fontsize=8)
    fig.suptitle("one-bulk model, muP, D=8, P=16, gamma0=4, eta0=0.2: limit theory vs GD (mean of "
                 f"{seeds} seeds)", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
