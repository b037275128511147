"""Cost of the C-output limits against the seed-averaged simulations they replace.

For each limit with C > 1 outputs (``specdyn.theory.one_bulk`` at depth 2,
``specdyn.theory.deep_linear`` at depth 3) and each C, the theory (level one + up to top_k outliers per step) is timed once,
then ``seeds`` runs of ``specdyn.simulate`` of the same configuration (muP,
output_normalization="mean") at two widths. Reported: simulation time /
theory time, measured in the same run, and the largest gap between the seed
mean of an outlier the theory predicts and its limit, next to the standard
error of that seed mean. Timings on a shared machine are noisy; the ratios are
what to read.

    python bench/many_outputs_bench.py --quick    # C = 4; N = 500, 1000; 2 seeds
    python bench/many_outputs_bench.py            # C = 4, 16; N = 1000, 4000; 6 seeds
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

# name: (depth, solver, eta0)
LIMITS = {"one_bulk": (2, specdyn.theory.one_bulk, 0.2), "deep_linear": (3, specdyn.theory.deep_linear, 0.1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    outputs, widths, seeds = ((4,), (500, 1000), 2) if args.quick else ((4, 16), (1000, 4000), 6)
    rows = []
    for name, (depth, limit, eta0) in LIMITS.items():
        for C in outputs:
            cfg = specdyn.RunConfig(width=widths[0], depth=depth, input_dim=8, samples=24, output_dim=C, gamma0=4.0,
                                    eta0=eta0, steps=40, track_every=10, top_k=4, track_sharpness=False,
                                    output_normalization="mean")
            t0 = time.perf_counter()
            th = limit(cfg)
            t_th = time.perf_counter() - t0
            ref = th.singular_values.values          # (step, layer, rank), NaN: no outlier
            ok = np.isfinite(ref)
            for N in widths:
                t0 = time.perf_counter()
                sims = [specdyn.simulate(cfg.replace(width=N, seed=s)) for s in range(seeds)]
                t_sim = time.perf_counter() - t0
                runs = np.stack([d.singular_values.sel(layer=list(th.layer.values)).values for d in sims])
                gap = float(np.max(np.abs(runs.mean(0)[ok] - ref[ok]))) if ok.any() else float("nan")
                sem = float(np.max(runs.std(0, ddof=1)[ok]) / np.sqrt(seeds)) if ok.any() else float("nan")
                rows.append({"limit": name, "C": C, "N": N, "seeds": seeds, "outliers": int(ok[-1].sum()),
                             "theory_s": t_th, "sim_s": t_sim, "sim/theory": t_sim / t_th, "max gap": gap,
                             "max sem": sem})
                print(table(rows[-1:], list(rows[-1])), flush=True)
    print()
    print(table(rows, ["limit", "C", "N", "seeds", "outliers", "theory_s", "sim_s", "sim/theory", "max gap",
                       "max sem"]))
    print("saved", save("many_outputs", {"quick": args.quick, "rows": rows}))


if __name__ == "__main__":
    main()
