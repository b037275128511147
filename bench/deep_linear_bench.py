"""Cost of the deep linear DMFT limit against the simulations it replaces.

``specdyn.theory.deep_linear`` (level one + the outliers of every bulk) versus
seed-averaged ``specdyn.simulate`` runs of the same configuration (native engine,
top-2 singular values of every layer tracked) at growing width. Reported as the
ratio simulation time / theory time, measured in the same run, with the largest
gap between the seed-mean s1 of any bulk and its limit, and the relative gap of
the final sharpness. Timings on a shared machine are noisy; the ratios are what
to read.

    python bench/deep_linear_bench.py --quick    # depth 3, N = 1000, 2 seeds (~15 s)
    python bench/deep_linear_bench.py            # depths 3, 4; N = 1000, 2000, 4096; 8 seeds
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

# specdyn first: it sets the idle-thread policy that NumPy's OpenBLAS then loads with, so peers and specdyn run under the same one
import specdyn  # noqa: E402
import numpy as np  # noqa: E402
from _common import save, table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    depths, widths, seeds = ((3,), (1000,), 2) if args.quick else ((3, 4), (1000, 2000, 4096), 8)
    X, y = specdyn.data.teacher(samples=16, input_dim=8, seed=1)
    rows = []
    for depth in depths:
        cfg = specdyn.RunConfig(width=1000, depth=depth, input_dim=8, samples=16, gamma0=4.0, eta0=0.04, steps=40,
                                track_every=4, top_k=2)
        t0 = time.perf_counter()
        th = specdyn.theory.deep_linear(cfg, (X, y))
        t_th = time.perf_counter() - t0
        for N in widths:
            t0 = time.perf_counter()
            sims = [specdyn.simulate(cfg.replace(width=N, seed=s), (X, y)) for s in range(seeds)]
            t_sim = time.perf_counter() - t0
            gap, rms = 0.0, 0.0
            for layer in th.layer.values:
                runs = np.array([d.singular_values.sel(layer=layer, rank=0).values for d in sims])
                ref = th.singular_values.sel(layer=layer, rank=0).values
                ok = np.isfinite(ref)
                gap = max(gap, float(np.max(np.abs(runs.mean(0)[ok] - ref[ok]))))
                # single runs against the limit (bias and spread): the quantity with a clean rate
                rms = max(rms, float(np.sqrt(np.mean((runs[:, ok] - ref[ok]) ** 2))))
            S = np.mean([d.normalized_sharpness.values[-1] for d in sims])
            rows.append({"depth": depth, "N": N, "seeds": seeds, "theory_s": t_th, "sim_s": t_sim,
                         "sim/theory": t_sim / t_th, "max s1 gap": gap, "s1 rms dev": rms,
                         "S rel gap": abs(S / float(th.normalized_sharpness[-1]) - 1)})
            print(table(rows[-1:], list(rows[-1])), flush=True)
    rates = {}
    for depth in depths:
        sel = [r for r in rows if r["depth"] == depth]
        if len(sel) > 1:
            rates[depth] = float(np.polyfit(np.log([r["N"] for r in sel]), np.log([r["s1 rms dev"] for r in sel]), 1)[0])
    print()
    print(table(rows, ["depth", "N", "seeds", "theory_s", "sim_s", "sim/theory", "max s1 gap", "s1 rms dev",
                       "S rel gap"]))
    for depth, rate in rates.items():
        print(f"depth {depth}: rms deviation of single runs from the limit ~ N^{rate:.2f}")
    print("saved", save("deep_linear", {"quick": args.quick, "rows": rows, "rms_rate": rates}))


if __name__ == "__main__":
    main()
