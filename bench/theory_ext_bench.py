"""Cost of each limit curve of theory-ext against the simulations it replaces.

1. Proportional two-layer model: ``specdyn.theory.proportional`` (native recursion +
   outlier solver) versus seed-averaged finite-size population GD in NumPy
   (tests/proportional_oracle.py: loss every step, top singular values at the
   tracked steps) at width N = nu D.
2. Nonlinear two-layer muP network: ``two_layer_monte_carlo`` (native Monte Carlo
   over sites, replicas for the error bar) versus seed-averaged finite-width muP
   networks in NumPy (tests/nonlinear_oracle.py).
3. Deep nonlinear muP network (depth 3, tanh): ``deep_monte_carlo`` (sites with
   Gaussian fields and tangent responses) versus seed-averaged ``specdyn.simulate``.

Reported as ratios simulation / theory, measured in the same run, with the gap
between the seed average and the limit. Timings on a shared machine are noisy;
the ratios are what to read.

    python bench/theory_ext_bench.py --quick     # small cases (~30 s)
    python bench/theory_ext_bench.py             # D up to 1600 / N up to 4096, 8 seeds
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "tests")]
from _common import in_tree_if_asked  # noqa: E402

in_tree_if_asked()

# specdyn first: it sets the idle-thread policy that NumPy's OpenBLAS then loads with, so peers and specdyn run under the same one
import specdyn  # noqa: E402,F401
import numpy as np  # noqa: E402
from specdyn.theory.proportional import proportional  # noqa: E402
from proportional_oracle import simulate_population  # noqa: E402
from nonlinear_oracle import simulate_mup  # noqa: E402
from specdyn.config import RunConfig  # noqa: E402
from specdyn.theory.nonlinear import deep_monte_carlo, two_layer_monte_carlo  # noqa: E402
from _common import save  # noqa: E402


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one small case, two seeds")
    args = ap.parse_args()
    nu, gamma0, eta0, steps = 2.0, 5.0, 0.04, 30
    tracked = [0, 5, 10, 20, 30]
    sizes, seeds = ((400,), 2) if args.quick else ((400, 800, 1600), 8)
    t_theory, th = best_of(lambda: proportional(nu=nu, gamma0=gamma0, eta0=eta0, steps=steps,
                                                track_every=tracked, top_k=2), 3)
    s_th = th.singular_values.sel(layer="W0", rank=0).values
    print(f"proportional model nu={nu} gamma0={gamma0} eta0={eta0} steps={steps} tracked={tracked}")
    print(f"theory (nodes={th.attrs['nodes']}): {t_theory * 1e3:.1f} ms; final outlier {s_th[-1]:.4f}")
    print(f"{'D':>6} {'N':>6} {'seeds':>5} {'sim s':>8} {'sim/theory':>11} {'|gap| final outlier':>20}")
    rows = {"proportional": [], "nonlinear": []}
    for D in sizes:
        t0 = time.perf_counter()
        runs = [simulate_population(D, nu, gamma0, eta0, steps, tracked, s) for s in range(seeds)]
        t_sim = time.perf_counter() - t0
        gap = abs(np.mean([r["sv"][-1, 0] for r in runs]) - s_th[-1])
        print(f"{D:>6} {int(nu * D):>6} {seeds:>5} {t_sim:>8.2f} {t_sim / t_theory:>11.0f} {gap:>20.4f}")
        rows["proportional"].append({"D": D, "N": int(nu * D), "seeds": seeds, "theory_s": t_theory, "sim_s": t_sim,
                                     "ratio": t_sim / t_theory, "outlier_gap": float(gap)})

    # nonlinear two-layer muP network
    rng = np.random.default_rng(7)
    P, D = 12, 6
    X = rng.normal(size=(P, D))
    Y = np.tanh(X @ rng.normal(size=D) / np.sqrt(D))
    cfg = RunConfig(width=256, depth=1, input_dim=D, samples=P, activation="tanh", scaling="mup", gamma0=1.0,
                    eta0=0.5, steps=100, track_every=[0, 10, 30, 60, 100])
    tr = cfg.tracked_steps()
    particles, replicas = (1 << 14, 4) if args.quick else (1 << 16, 4)
    t_mc, mc = best_of(lambda: two_layer_monte_carlo(cfg, (X, Y), particles=particles, replicas=replicas), 2)
    print(f"\nnonlinear two-layer muP (tanh, P={P}, D={D}, steps={cfg.steps}): Monte Carlo "
          f"{particles} sites x {replicas} replicas: {t_mc:.2f} s; final loss "
          f"{float(mc.loss[-1]):.3e} +- {float(mc.loss_stderr[-1]):.1e}")
    widths, seeds = ((1024,), 2) if args.quick else ((1024, 4096), 8)
    print(f"{'N':>6} {'seeds':>5} {'sim s':>8} {'sim/theory':>11} {'rel gap final loss':>19}")
    for N in widths:
        t0 = time.perf_counter()
        runs = [simulate_mup(X, Y, N, cfg.gamma0, cfg.eta0, cfg.steps, tr, s) for s in range(seeds)]
        t_sim = time.perf_counter() - t0
        gap = abs(np.mean([r["loss"][-1] for r in runs]) / float(mc.loss[-1]) - 1)
        print(f"{N:>6} {seeds:>5} {t_sim:>8.2f} {t_sim / t_mc:>11.2f} {gap:>19.4f}")
        rows["nonlinear"].append({"N": N, "seeds": seeds, "theory_s": t_mc, "sim_s": t_sim, "ratio": t_sim / t_mc,
                                  "loss_rel_gap": float(gap)})

    # deep nonlinear muP network (depth 3)
    import specdyn
    Xd, yd = specdyn.data.teacher(samples=8, input_dim=4, seed=1)
    yd = np.tanh(2.0 * yd)
    cfg = RunConfig(width=1024, depth=3, input_dim=4, samples=8, activation="tanh", scaling="mup", gamma0=1.0,
                    eta0=0.5, steps=20, track_every=[0, 5, 10, 20], top_k=1)
    particles, resp = (1 << 13, 512) if args.quick else (1 << 14, 2048)
    t_mc, mc = best_of(lambda: deep_monte_carlo(cfg, (Xd, yd), particles=particles, replicas=4,
                                                response_particles=resp), 1)
    print(f"\ndeep muP (depth 3, tanh, P=8, D=4, steps={cfg.steps}): Monte Carlo {particles} sites "
          f"({resp} with tangents) x 4 replicas: {t_mc:.2f} s; final loss {float(mc.loss[-1]):.3e} "
          f"+- {float(mc.loss_stderr[-1]):.1e}")
    widths, seeds = ((1024,), 4) if args.quick else ((1024, 4096), 8)
    print(f"{'N':>6} {'seeds':>5} {'sim s':>8} {'sim/theory':>11} {'rel gap final loss':>19} {'rel gap final S':>16}")
    rows["deep"] = []
    for N in widths:
        t0 = time.perf_counter()
        runs = [specdyn.simulate(cfg.replace(width=N, seed=s), (Xd, yd)) for s in range(seeds)]
        t_sim = time.perf_counter() - t0
        gap = abs(np.mean([r.loss.values[-1] for r in runs]) / float(mc.loss[-1]) - 1)
        gap_s = abs(np.mean([r.normalized_sharpness.values[-1] for r in runs]) / float(mc.normalized_sharpness[-1]) - 1)
        print(f"{N:>6} {seeds:>5} {t_sim:>8.2f} {t_sim / t_mc:>11.2f} {gap:>19.4f} {gap_s:>16.4f}")
        rows["deep"].append({"N": N, "seeds": seeds, "theory_s": t_mc, "sim_s": t_sim, "ratio": t_sim / t_mc,
                             "loss_rel_gap": float(gap), "sharpness_rel_gap": float(gap_s)})
    print("saved", save("theory_ext", {"quick": args.quick, **rows}))


if __name__ == "__main__":
    main()
