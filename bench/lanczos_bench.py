"""Benchmark of specdyn.top_singular / spectral_density against SciPy, NumPy and PRIMME.

One run measures, on the same machine state:
  * the memory read bandwidth (a threaded NumPy sum over a large array),
  * top-k singular triplets of spiked N x N float64 matrices (N in {1024, 2048,
    4096}, k in {1, 5, 10}) by specdyn, scipy.sparse.linalg.svds (arpack,
    propack, lobpcg), PRIMME (when importable) and numpy.linalg.svd, each with
    its achieved residual max(||A v - s u||, ||A^T u - s v||) / ||A|| and its
    largest singular-value error, so that accuracies can be matched,
  * the three spectrum classes (outliers far above the bulk edge, outliers
    crowding down to it, the bulk alone) at k in {1, 10, 50} in float64 and
    k = 10 in float32, with specdyn's passes over A and its time against the
    floor of that many reads of A (one read: the fastest read of a matrix this
    run saw),
  * the slowdown of specdyn and its peers when a second process spins on one
    core (started and stopped by the bench; --no-busy skips it),
  * bytes of A read per second by specdyn's fused sweep vs that bandwidth, and
    one read of A three ways in interleaved rounds: the fused pass, specdyn's
    A^T Y alone, and NumPy's A v and A^T u (the products of PROPACK's steps),
  * a warm start after a relative perturbation of 1e-2 vs a cold start,
  * the SLQ density of a Wishart matrix vs the exact LAPACK histogram.

Usage:  PYTHONPATH=python python bench/lanczos_bench.py [--quick] [--out PATH]
--quick uses small sizes (N in {512, 1024}) and one repetition; it writes
bench/results/lanczos_quick.json unless --out is given. Solvers are timed in
interleaved rounds (every solver once per round); tables give the median and
the JSON every round, so the spread is visible. On a shared machine timings
are noisy.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# specdyn first: it sets the idle-thread policy that NumPy's OpenBLAS then loads with, so peers and specdyn run under the same one
from _common import in_tree_if_asked  # noqa: E402

in_tree_if_asked()
import specdyn  # noqa: I001
import numpy as np
from specdyn import _core

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model():
    """The CPU's model name (Linux), else what the platform module says."""
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else ():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def cpu_caches():
    """The caches of CPU 0 as sysfs lists them ({"L2": "2048K", ...}); empty where sysfs has none."""
    out = {}
    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        if not (d / "size").exists():
            continue
        level, kind, size = ((d / f).read_text().strip() for f in ("level", "type", "size"))
        out[f"L{level}" + ("d" if kind == "Data" else "i" if kind == "Instruction" else "")] = size
    return out


def best_time(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def memory_bandwidth(nbytes=1 << 29, repeats=5):
    """Read bandwidth (bytes/s): x.x (BLAS ddot, vectorized, one read of x) over a
    512 MiB array, one chunk per core in parallel threads (NumPy releases the GIL)."""
    a = np.ones(nbytes // 8)
    threads = os.cpu_count() or 1
    chunks = np.array_split(a, threads)
    with ThreadPoolExecutor(threads) as pool:
        t, _ = best_time(lambda: list(pool.map(lambda c: c @ c, chunks)), repeats)
    return a.nbytes / t


# The spectrum classes: a Gaussian bulk of edge 2 plus ten spikes. The first is the
# easy case (outliers far above the edge); in the second the outliers crowd down to
# the edge; the third has no outliers, so the top-k are the clustered values at the
# bulk edge (a network's weights at initialization).
SPECTRA = {"spikes": (6.0, 2.5), "crowded": (3.0, 1.6), "bulk": None}


def spectrum_matrix(n, spectrum="spikes", dtype=np.float64, spikes=10, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n)) / np.sqrt(n)
    top = SPECTRA[spectrum]
    if top is not None:
        U, _ = np.linalg.qr(rng.standard_normal((n, spikes)))
        V, _ = np.linalg.qr(rng.standard_normal((n, spikes)))
        A += (U * np.linspace(*top, spikes)) @ V.T
    return np.ascontiguousarray(A, dtype=dtype)


def spiked(n, spikes=10, seed=0):
    """Gaussian bulk (singular values in [0, 2]) plus `spikes` outliers 6 ... 2.5."""
    return spectrum_matrix(n, "spikes", spikes=spikes, seed=seed)


def quality(A, s, U, V, ref):
    """Residual certificate and value error, both relative to ||A|| (in float64)."""
    order = np.argsort(s)[::-1]
    s = np.asarray(s, dtype=np.float64)[order]
    U = np.asarray(U, dtype=np.float64)[:, order]
    V = np.asarray(V, dtype=np.float64)[:, order]
    A = np.asarray(A, dtype=np.float64)
    norm = ref[0]
    r1 = np.linalg.norm(A @ V - U * s, axis=0)
    r2 = np.linalg.norm(A.T @ U - V * s, axis=0)
    return {
        "residual": float(np.max(np.maximum(r1, r2)) / norm),
        "value_error": float(np.max(np.abs(s - ref[: s.size])) / norm),
    }


def solvers(k, tol, lobpcg=True):
    from scipy.sparse.linalg import svds

    out = {
        "specdyn": lambda A: specdyn.top_singular(A, k, tol=tol, check_finite=False),
        "arpack": lambda A: svds(A, k=k, tol=tol, solver="arpack", random_state=0),
        "propack": lambda A: svds(A, k=k, tol=tol, solver="propack", random_state=0),
    }
    if lobpcg:
        # LOBPCG cannot reach 1e-10 residuals on these matrices; it gets a looser
        # tolerance and its achieved accuracy is reported next to its time.
        out["lobpcg"] = lambda A: svds(A, k=k, tol=max(tol, 1e-6), solver="lobpcg", random_state=0, maxiter=500)
    try:
        import primme

        out["primme"] = lambda A: _primme(primme, A, k, tol)
    except ImportError:
        pass
    return out


def peer_reads(A, k, tol, names):
    """How many times each SciPy peer reads A (one product with A or A^T, of a
    vector or a block, is one read): the same svds call, untimed, on a counting
    operator. Its count against specdyn's passes compares the algorithms apart
    from how fast each product runs."""
    from scipy.sparse.linalg import LinearOperator

    out = {}
    for name in names:
        count = [0]

        def counted(f):
            def g(x):
                count[0] += 1
                return f(x)
            return g

        op = LinearOperator(A.shape, dtype=A.dtype, matvec=counted(lambda x: A @ x),
                            rmatvec=counted(lambda x: A.T @ x), matmat=counted(lambda X: A @ X),
                            rmatmat=counted(lambda X: A.T @ X))
        fn = solvers(k, tol, lobpcg=name == "lobpcg")[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(op)
        out[name] = count[0]
    return out


def _primme(primme, A, k, tol):
    U, s, Vt = primme.svds(A, k, tol=tol, which="LM", return_singular_vectors=True)
    return U, s, Vt


def as_triplet(name, res):
    if name == "specdyn":
        s, U, V, _ = res
        return s, U, V
    U, s, Vt = res
    return s, U, Vt.T


def spread(times):
    ts = sorted(times)
    med = ts[len(ts) // 2] if len(ts) % 2 else 0.5 * (ts[len(ts) // 2 - 1] + ts[len(ts) // 2])
    return {"time_s": med, "min_s": ts[0], "max_s": ts[-1], "times_s": times}


def interleaved(fns, A, rounds, slow_s=20.0):
    """Time every solver once per round, solvers interleaved within a round, so that
    load drifting on a shared machine hits each alike. A solver that raises is a
    recorded failure; one slower than `slow_s` runs only in the first round."""
    times = {name: [] for name in fns}
    last, failed = {}, {}
    for r in range(rounds):
        for name, fn in fns.items():
            if name in failed or (r > 0 and times[name] and times[name][0] > slow_s):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = time.perf_counter()
                try:
                    last[name] = fn(A)
                except Exception as exc:  # a peer failing is a result, not a crash
                    failed[name] = f"{type(exc).__name__}: {exc}"[:200]
                    continue
                times[name].append(time.perf_counter() - t)
    return times, last, failed


def measure_case(A, k, tol, rounds, ref, read_s, lobpcg=True, slow_s=20.0):
    """One row: every solver on A with its achieved accuracy; specdyn's passes over A
    and its time against the floor of `passes` reads of A. A first, untimed round
    (which also warms caches and thread pools) gives each solver's achieved residual;
    a peer that stopped at a larger residual than specdyn's is then also compared with
    specdyn asked for that residual ("matched"), timed in the same interleaved rounds
    as the peers, so that both sides of the ratio see the same machine state. A solver
    slower than `slow_s` in the first round is timed by that round alone."""
    fns = solvers(k, tol, lobpcg)
    first_times, first, failed = interleaved(fns, A, 1)
    row = {name: {"error": msg} for name, msg in failed.items()}
    residual = {name: quality(A, *as_triplet(name, res), ref)["residual"] for name, res in first.items()}
    matched = {}
    if "specdyn" in first:
        for name, r in residual.items():
            if name != "specdyn" and r > 2 * residual["specdyn"] and r < 0.1:
                matched[name] = r
    slow = {name for name, t in first_times.items() if t and t[0] > slow_s}
    timed = {name: fn for name, fn in fns.items() if name in first and name not in slow}
    for name, t_m in matched.items():
        timed[f"specdyn@{name}"] = lambda A, t_m=t_m: specdyn.top_singular(A, k, tol=t_m, check_finite=False)
    times, last, failed_timed = interleaved(timed, A, rounds, slow_s=float("inf"))
    for name in slow:
        times[name], last[name] = first_times[name], first[name]
    for name, msg in failed_timed.items():
        if name in fns:
            row[name] = {"error": msg}
    for name in fns:
        if name in last and name not in failed_timed:
            row[name] = {**spread(times[name]), **quality(A, *as_triplet(name, last[name]), ref)}
    for name, t_m in matched.items():
        key = f"specdyn@{name}"
        if "error" in row.get(name, {"error": ""}):
            continue
        if key not in last:
            row[name]["matched"] = {"specdyn_tol": t_m, "error": failed_timed.get(key, "not run")}
            continue
        s_, U_, V_ = as_triplet("specdyn", last[key])
        mt = spread(times[key])
        row[name]["matched"] = {"specdyn_tol": t_m, **mt, **quality(A, s_, U_, V_, ref),
                                "ratio": row[name]["time_s"] / mt["time_s"],
                                # the same round's peer time over specdyn's, round by round
                                "round_ratios": [tp / ts for tp, ts in zip(times[name], times[key])]}
    for name, reads in peer_reads(A, k, tol, [n for n in ("arpack", "propack") if "error" not in row.get(n, {"error": ""})]).items():
        row[name]["reads"] = reads
    if "specdyn" in last and "error" not in row["specdyn"]:
        info = last["specdyn"][3]
        passes = int(info["matrix_passes"])
        row["specdyn"].update(passes=passes, block=int(info["block"]), converged=bool(info["converged"]),
                              tol_used=float(info["tol"]),
                              floor_s=passes * read_s, time_over_floor=row["specdyn"]["time_s"] / (passes * read_s))
    return row


def reference_values(A, kmax):
    """Singular values to compare against: LAPACK where affordable, else a tight
    certified specdyn run in float64."""
    A64 = np.asarray(A, dtype=np.float64)
    if A.shape[0] <= 2048:
        return np.linalg.svd(A64, compute_uv=False)
    return specdyn.top_singular(A64, kmax, tol=1e-13, check_finite=False)[0]


def bench_topk(sizes, ks, rounds, full_svd_sizes, bw, tol=1e-10):
    """The classic table: the easy spiked spectrum over N and k."""
    rows = []
    for n in sizes:
        A = spiked(n)
        ref = reference_values(A, max(ks))
        svd_time = None
        if n in full_svd_sizes:
            svd_time, _ = best_time(lambda: np.linalg.svd(A, full_matrices=False), 1)
        for k in ks:
            row = {"N": n, "k": k, "tol": tol, "spectrum": "spikes", "dtype": "float64", "full_svd_s": svd_time,
                   **measure_case(A, k, tol, rounds, ref, A.nbytes / bw)}
            rows.append(row)
            print_row(row)
    return rows


def bench_spectra(n, ks, dtypes, rounds, bw, tol=1e-10):
    """Each spectrum class at k = 1, 10, 50 (float64) and float32, peers at the same
    tolerance (float32: specdyn floors it at 1e-4, and so do the peers here)."""
    rows = []
    for spectrum in SPECTRA:
        base = spectrum_matrix(n, spectrum)
        ref = reference_values(base, max(ks))
        for dtype in dtypes:
            A = base if dtype == np.float64 else base.astype(dtype)
            t = tol if dtype == np.float64 else max(tol, 1e-4)
            for k in ks if dtype == np.float64 else (10,):
                row = {"N": n, "k": k, "tol": t, "spectrum": spectrum, "dtype": np.dtype(dtype).name,
                       "full_svd_s": None, **measure_case(A, k, t, rounds, ref, A.nbytes / bw, lobpcg=False)}
                rows.append(row)
                print_row(row)
    return rows


def bench_busy(n, k, rounds, tol=1e-10):
    """Slowdown when another process spins on one core: quiet and busy rounds
    alternate (the spinner is started and stopped by this function), each solver on
    the same matrix; slowdown = median busy / median quiet."""
    import subprocess

    out = []
    for spectrum in ("spikes", "crowded"):
        A = spectrum_matrix(n, spectrum)
        fns = {name: fn for name, fn in solvers(k, tol, lobpcg=False).items() if name in ("specdyn", "propack", "arpack")}
        quiet = {name: [] for name in fns}
        busy = {name: [] for name in fns}
        for _ in range(rounds):
            tq, _, fq = interleaved(fns, A, 1)
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                time.sleep(0.2)
                tb, _, fb = interleaved(fns, A, 1)
            finally:
                spinner.kill()
                spinner.wait()
            for name in fns:
                quiet[name] += tq[name]
                busy[name] += tb[name]
        row = {"N": n, "k": k, "spectrum": spectrum}
        for name in fns:
            if not quiet[name] or not busy[name]:
                row[name] = {"error": "failed"}
                continue
            q, b = spread(quiet[name])["time_s"], spread(busy[name])["time_s"]
            row[name] = {"quiet_s": q, "busy_s": b, "slowdown": b / q, "quiet_times_s": quiet[name],
                         "busy_times_s": busy[name]}
        out.append(row)
        print(f"busy core  {spectrum:8s} N={n} k={k}  " + "  ".join(
            f"{name} {r['quiet_s'] * 1e3:.0f} -> {r['busy_s'] * 1e3:.0f} ms (x{r['slowdown']:.2f})"
            for name, r in row.items() if isinstance(r, dict) and "slowdown" in r), flush=True)
    return out


def print_row(row):
    sd = row["specdyn"]
    if "error" in sd:
        print(f"N={row['N']:5d} k={row['k']:2d} {row['spectrum']:8s} {row['dtype']}  specdyn failed: {sd['error']}")
        return
    t0 = sd["time_s"]
    parts = [f"N={row['N']:5d} k={row['k']:2d} {row['spectrum']:7s} {row['dtype'][5:]}  specdyn {t0 * 1e3:8.1f} ms "
             f"[{sd['min_s'] * 1e3:.0f}..{sd['max_s'] * 1e3:.0f}] (res {sd['residual']:.1e}, {sd['passes']} passes, "
             f"b={sd['block']}, floor x{sd['time_over_floor']:.2f})"]
    for name in ("arpack", "propack", "lobpcg", "primme"):
        if name in row:
            r = row[name]
            parts.append(f"{name} " + ("failed" if "error" in r else f"x{r['time_s'] / t0:6.2f} (res {r['residual']:.0e}"
                                        + (f", {r['reads']} reads" if "reads" in r else "")
                                        + (f"; x{r['matched']['ratio']:.2f} matched" if "ratio" in r.get("matched", {}) else "")
                                        + ")"))
    if row["full_svd_s"]:
        parts.append(f"svd x{row['full_svd_s'] / t0:6.1f}")
    print("  ".join(parts), flush=True)


def bench_bandwidth(n, blocks, repeats, bw):
    A = spiked(n)
    out = []
    for b in blocks:
        X = np.asfortranarray(np.random.default_rng(1).standard_normal((n, b)))
        t, _ = best_time(lambda: _core.gram_sweep_f64(A, X), repeats)
        out.append({"N": n, "block": b, "sweep_s": t, "bytes_per_s": A.nbytes / t, "fraction_of_bandwidth": A.nbytes / t / bw})
        print(f"fused sweep N={n} b={b}: {t * 1e3:.2f} ms, {A.nbytes / t / 1e9:.1f} GB/s = {A.nbytes / t / bw:.0%} of bandwidth",
              flush=True)
    return out


def bench_pass_anatomy(n, rounds=15, b=2):
    """One read of A, three ways, in interleaved rounds: specdyn's fused pass (A X,
    then A^T (A X) while each panel is in cache: A is read from memory once and
    each panel a second time from cache), specdyn's A^T Y alone (one streaming
    read), and the two products of PROPACK's steps (NumPy's A v and A^T u)."""
    A = spiked(n)
    rng = np.random.default_rng(1)
    X = np.asfortranarray(rng.standard_normal((n, b)))
    v = rng.standard_normal(n)
    fns = {"fused_pass": lambda A: _core.gram_sweep_f64(A, X),
           "transpose_only": lambda A: _core.transpose_sweep_f64(A, X),
           "numpy_A_v": lambda A: A @ v, "numpy_At_u": lambda A: v @ A}
    interleaved(fns, A, 2)  # warm-up
    times, _, failed = interleaved(fns, A, rounds)
    if failed:
        raise RuntimeError(f"pass anatomy: {failed}")
    out = {"N": n, "block": b, "bytes": A.nbytes, **{name: spread(t) for name, t in times.items()}}
    med = {name: out[name]["time_s"] for name in fns}
    print(f"one read of A (N={n}, b={b}, medians of {rounds} rounds): fused pass {med['fused_pass'] * 1e3:.2f} ms, "
          f"A^T Y alone {med['transpose_only'] * 1e3:.2f} ms, NumPy A v {med['numpy_A_v'] * 1e3:.2f} ms, "
          f"A^T u {med['numpy_At_u'] * 1e3:.2f} ms", flush=True)
    return out


def bench_warm(n, k, repeats, rel=1e-2, tol=1e-10):
    A = spiked(n)
    rng = np.random.default_rng(5)
    V = specdyn.top_singular(A, k, tol=tol)[3]["warm"]  # the warm block: V and the next value's vector
    E = rng.standard_normal((n, n))
    norm = np.linalg.norm(A, 2)
    B = A + rel * norm * E / np.linalg.norm(E, 2)
    tc, cold = best_time(lambda: specdyn.top_singular(B, k, tol=tol, check_finite=False), repeats)
    tw, warm = best_time(lambda: specdyn.top_singular(B, k, tol=tol, v0=V, check_finite=False), repeats)
    out = {"N": n, "k": k, "perturbation": rel, "tol": tol, "cold_s": tc, "warm_s": tw, "speedup": tc / tw,
           "cold_passes": int(cold[3]["matrix_passes"]), "warm_passes": int(warm[3]["matrix_passes"])}
    # The same at a looser tolerance, where a warm start has less to add.
    for t6 in (1e-6,):
        tc6, c6 = best_time(lambda: specdyn.top_singular(B, k, tol=t6, check_finite=False), repeats)
        tw6, w6 = best_time(lambda: specdyn.top_singular(B, k, tol=t6, v0=V, check_finite=False), repeats)
        out[f"speedup_tol{t6:g}"] = tc6 / tw6
    print(f"warm start N={n} k={k} after {rel:g} perturbation: cold {tc * 1e3:.1f} ms ({out['cold_passes']} passes), "
          f"warm {tw * 1e3:.1f} ms ({out['warm_passes']} passes): x{tc / tw:.2f}; at tol 1e-6 x{out['speedup_tol1e-06']:.2f}",
          flush=True)
    return out


def bench_slq(n, repeats, probes=16, degree=48, bins=40):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((n, n)) / np.sqrt(n)  # X^T X is Wishart with ratio 1: MP law on [0, 4]
    grid = np.linspace(0.0, 4.2, bins + 1)
    t_slq, (d, err) = best_time(lambda: specdyn.spectral_density(X, grid, probes=probes, degree=degree), repeats)
    t_ex, (de, _) = best_time(lambda: specdyn.spectral_density(X, grid, method="exact"), 1)
    l1 = float(np.sum(np.abs(d - de) * np.diff(grid)))
    out = {"N": n, "probes": probes, "degree": degree, "bins": bins, "slq_s": t_slq, "exact_s": t_ex,
           "time_ratio": t_slq / t_ex, "l1_error": l1, "l1_error_estimate": float(np.sum(err * np.diff(grid)))}
    print(f"SLQ density of {n}x{n} Wishart: L1 {l1:.3%} (estimate {out['l1_error_estimate']:.3%}), "
          f"{t_slq:.3f} s vs exact {t_ex:.3f} s = {t_slq / t_ex:.3f} of the exact time", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--no-busy", action="store_true", help="skip the busy-core rounds")
    args = p.parse_args(argv)
    if args.quick:
        sizes, ks, repeats, svd_sizes, nwarm, nslq = [512, 1024], [1, 5, 10], 1, [512, 1024], 1024, 1024
    else:
        sizes, ks, repeats, svd_sizes, nwarm, nslq = [1024, 2048, 4096], [1, 5, 10], 3, [1024, 2048, 4096], 4096, 4096
    out_path = args.out or RESULTS / ("lanczos_quick.json" if args.quick else "lanczos.json")
    bw = memory_bandwidth()
    print(f"memory read bandwidth: {bw / 1e9:.1f} GB/s ({os.cpu_count()} cores, OpenBLAS threads "
          f"{_core.blas_threads()}, OpenMP threads {_core.omp_max_threads()})", flush=True)
    result = {
        "machine": {"platform": platform.platform(), "processor": cpu_model(), "cores": os.cpu_count(),
                    "caches": cpu_caches(),
                    "python": sys.version.split()[0], "numpy": np.__version__, "blas": _core.blas_config()},
        "quick": args.quick,
        "memory_bandwidth_bytes_per_s": bw,
        "bandwidth": bench_bandwidth(sizes[-1], [1, 2, 4, 8, 12], repeats, bw),
        "pass_anatomy": bench_pass_anatomy(sizes[-1]),
    }
    # The floor's unit, one read of A: the fastest read of a matrix seen here (the
    # threaded dot products over a vector, or any of the four reads of the pass
    # anatomy), so that no row runs below its floor.
    anatomy = result["pass_anatomy"]
    read_bw = max([bw] + [anatomy["bytes"] / anatomy[name]["time_s"]
                          for name in ("fused_pass", "transpose_only", "numpy_A_v", "numpy_At_u")])
    result["read_bytes_per_s"] = read_bw
    print(f"one read of A, the floors' unit: {read_bw / 1e9:.1f} GB/s", flush=True)
    result |= {
        "topk": bench_topk(sizes, ks, repeats, svd_sizes, read_bw),
        "spectra": bench_spectra(sizes[-1], (1, 10, 50), (np.float64, np.float32), repeats, read_bw),
        "busy": [] if args.no_busy else bench_busy(sizes[-1], 10, 2 * repeats + 1),
        "warm_start": bench_warm(nwarm, 10, repeats),
        "slq": bench_slq(nslq, repeats, probes=16, degree=48, bins=40),
    }
    result["bandwidth_after"] = memory_bandwidth()
    # The sweep kernel each kind of sweep settled on (timed on its first sweeps; same bits either way).
    result["sweep_kernels"] = _core.sweep_kernel_choices()
    for k in result["sweep_kernels"]:
        times = ", ".join(f"{t * 1e3:.2f}" if math.isfinite(t) else "-" for t in k["best_s"])
        print(f"sweep kernel, {k['dtype']} b={k['block']} 2^{k['size_log2']} bytes: {k['kernel']} "
              f"(best ms panel by panel, pipelined: {times})", flush=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
