"""Cost of the proportional-model limit curve against the simulations it replaces.

For each case: wall time of ``specdyn.theory.proportional`` (native recursion +
outlier solver) versus seed-averaged finite-size population GD in NumPy
(tests/proportional_oracle.py: the same quantities, loss every step and the top
singular values at the tracked steps) at width N = nu D. Reported as ratios
simulation / theory, measured in the same run. Timings on a shared machine are
noisy; the ratios are what to read.

    python bench/theory_ext_bench.py --quick     # one small case (~10 s)
    python bench/theory_ext_bench.py             # D up to 1600, 8 seeds
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "python"), os.path.join(HERE, "..", "tests")]

from specdyn.theory.proportional import proportional  # noqa: E402
from proportional_oracle import simulate_population  # noqa: E402


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
    for D in sizes:
        t0 = time.perf_counter()
        runs = [simulate_population(D, nu, gamma0, eta0, steps, tracked, s) for s in range(seeds)]
        t_sim = time.perf_counter() - t0
        gap = abs(np.mean([r["sv"][-1, 0] for r in runs]) - s_th[-1])
        print(f"{D:>6} {int(nu * D):>6} {seeds:>5} {t_sim:>8.2f} {t_sim / t_theory:>11.0f} {gap:>20.4f}")


if __name__ == "__main__":
    main()
