"""Gaussian fill throughput of specdyn.rmt.gaussian against NumPy's generator.

    python bench/rng_bench.py [--n 4096] [--repeat 5]

Prints a table (GB/s and the ratio to NumPy's default_rng().standard_normal,
measured in the same run on the same threads) and saves bench/results/rng.json.
"""
from __future__ import annotations

import argparse

from _common import in_tree_if_asked

in_tree_if_asked()
# specdyn first: it sets the idle-thread policy that NumPy's OpenBLAS then loads with, so peers and specdyn run under the same one
from specdyn import _core, rmt  # noqa: I001
import numpy as np

from _common import best_time, save, table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n = args.n
    gen = np.random.default_rng(0)
    rows = []
    threads_all = _core.omp_max_threads()
    for dtype in ("float64", "float32"):
        nbytes = n * n * np.dtype(dtype).itemsize
        t_np = best_time(lambda: gen.standard_normal((n, n), dtype=dtype), args.repeat)
        for threads in sorted({1, threads_all}):
            _core.set_omp_threads(threads)
            t_sd = best_time(lambda: rmt.gaussian(n, n, seed=1, dtype=dtype), args.repeat)
            rows.append({"dtype": dtype, "n": n, "threads": threads, "specdyn_GBps": nbytes / t_sd / 1e9,
                         "numpy_GBps": nbytes / t_np / 1e9, "ratio_vs_numpy": t_np / t_sd})
        _core.set_omp_threads(threads_all)
    cols = ["dtype", "n", "threads", "specdyn_GBps", "numpy_GBps", "ratio_vs_numpy"]
    print(table(rows, cols))
    print("saved", save("rng", {"rows": rows, "note": "numpy is single-threaded by design; ratio = t_numpy / t_specdyn"}))


if __name__ == "__main__":
    main()
