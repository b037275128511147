"""Cost of the proportional many-output limit against the simulations it replaces.

``specdyn.theory.many_outputs_density`` (10 tracked steps, a 400-point density grid) versus
seed-averaged ``many_outputs_simulation`` runs of the same network (population GD on the full
matrices, all singular values at every tracked step) at two widths, with the L1 distance
between the predicted bin masses and the pooled simulated spectrum at the last step.
Reported as the ratio simulation time / theory time, measured in the same run; on a shared
machine the ratios are what to read.

    python bench/many_outputs_limit_bench.py --quick    # N = 256, 512; 2 seeds
    python bench/many_outputs_limit_bench.py            # N = 1024, 2048; 4 seeds
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _common import in_tree_if_asked  # noqa: E402

in_tree_if_asked()

# specdyn first: it sets the idle-thread policy that NumPy's OpenBLAS then loads with
import specdyn  # noqa: E402
import numpy as np  # noqa: E402
from _common import save, table  # noqa: E402

SETTING = dict(kappa=0.5, alpha_d=1.0, rate=0.15, steps=10, track_every=1)


def _l1(theory, sv, bins) -> float:
    s, rho = theory.s.values, theory.singular_value_density.values
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (rho[1:] + rho[:-1]) * np.diff(s))])
    h = np.histogram(sv, bins)[0]
    return float(abs(np.diff(np.interp(bins, s, cdf)) - h / h.sum()).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    widths, seeds = ((256, 512), 2) if args.quick else ((1024, 2048), 4)
    t0 = time.perf_counter()
    th = specdyn.theory.many_outputs_density(**SETTING, grid=400)
    t_th = time.perf_counter() - t0
    last = th.isel(step=-1)
    bins = np.linspace(0, 1.02 * float(last.bulk_edge), 41)
    rows = []
    for n in widths:
        t0 = time.perf_counter()
        sims = [specdyn.theory.many_outputs_simulation(n, seed=s, **SETTING) for s in range(seeds)]
        t_sim = time.perf_counter() - t0
        sv = np.concatenate([x.singular_values.isel(step=-1).values for x in sims])
        rows.append({"width": n, "seeds": seeds, "theory_s": t_th, "simulation_s": t_sim,
                     "ratio": t_sim / t_th, "l1_last_step": _l1(last, sv, bins)})
    print(table(rows, ["width", "seeds", "theory_s", "simulation_s", "ratio", "l1_last_step"]))
    print("saved", save("many_outputs_limit_quick" if args.quick else "many_outputs_limit",
                        {"setting": SETTING, "rows": rows}))


if __name__ == "__main__":
    main()
