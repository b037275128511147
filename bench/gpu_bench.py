"""GPU benchmark of the device outlier extraction (run by bench/gpu_check.sh).

Top-k singular triplets of an N x N float32 spiked matrix generated on the
device (Gaussian bulk from the counter-based stream, plus k rank-one spikes),
timed against peers measured in the same run:

* cupyx.scipy.sparse.linalg.svds (Lanczos) and cupy.linalg.svd (dense), when
  CuPy is importable ("cupy missing" otherwise); the dense SVD runs in a child
  process with a time limit (it is O(N^3));
* the device-to-device copy bandwidth, to express one Gram pass (M X then
  M^T Y: two streaming reads of A) as a fraction of the achievable bandwidth.

Sizes: SPECDYN_BENCH_N (32768), SPECDYN_BENCH_K (10), SPECDYN_BENCH_SVD_TIMEOUT
seconds for the dense SVD child (150; 0 skips it), SPECDYN_BENCH_REPEATS (3).
Writes gpu_bench.json into $OUT (or bench/results). Exits 0 with a message and
a "skipped" JSON where no GPU is usable.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import in_tree_if_asked  # noqa: E402

in_tree_if_asked()


def env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


N = env_int("SPECDYN_BENCH_N", 32768)
K = env_int("SPECDYN_BENCH_K", 10)
REPEATS = max(1, env_int("SPECDYN_BENCH_REPEATS", 3))
SVD_TIMEOUT = env_int("SPECDYN_BENCH_SVD_TIMEOUT", 150)
SEED = 7


def out_dir() -> Path:
    d = Path(os.environ.get("OUT") or HERE / "results")
    d.mkdir(parents=True, exist_ok=True)
    return d


def write(result: dict) -> None:
    path = out_dir() / "gpu_bench.json"
    path.write_text(json.dumps(result, indent=1, default=str))


def spikes(n: int, k: int):
    """U (n, k) and W (n, k) with A += U W^T: spikes of strength theta_l = 6 .. 3 on orthonormal directions."""
    rng = np.random.default_rng(SEED)
    u, _ = np.linalg.qr(rng.standard_normal((n, k)))
    w, _ = np.linalg.qr(rng.standard_normal((n, k)))
    theta = np.linspace(6.0, 3.0, k)
    return u * theta, w


def build_matrix(mod, n: int, k: int):
    """The spiked N x N float32 matrix on the device: G / sqrt(N) + sum_l theta_l u_l w_l^T."""
    A = mod.DeviceMatrix(n, n, True)
    mod.normal_fill(A.ptr, n * n, SEED, 1, 1.0 / np.sqrt(n), True)
    U, W = spikes(n, k)
    mod.add_low_rank_device(A.ptr, n, n, n, True, U, W)
    return A


def cupy_view(cp, A):
    mem = cp.cuda.UnownedMemory(A.ptr, A.n * A.m * 4, A)
    return cp.ndarray((A.n, A.m), dtype=cp.float32, memptr=cp.cuda.MemoryPointer(mem, 0))


def timed(fn, repeats: int):
    """(best seconds, last result) over repeats calls, each synchronized by the callee."""
    best, res = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        res = fn()
        best = min(best, time.perf_counter() - t)
    return best, res


def dense_svd_child() -> None:
    """Child mode: time cupy.linalg.svd (values only) of the same matrix; print JSON."""
    import cupy as cp

    import specdyn  # noqa: F401  (preloads OpenBLAS for _cuda)
    from specdyn.backend import cuda_module

    mod = cuda_module()
    A = build_matrix(mod, N, K)
    dA = cupy_view(cp, A)
    cp.cuda.Device().synchronize()
    t = time.perf_counter()
    s = cp.linalg.svd(dA, compute_uv=False)
    cp.cuda.Device().synchronize()
    sec = time.perf_counter() - t
    print(json.dumps({"seconds": sec, "top": cp.asnumpy(s[:K]).astype(float).tolist()}))


def main() -> int:
    result: dict = {"n": N, "k": K, "dtype": "float32", "repeats": REPEATS, "status": "started"}
    try:
        import specdyn
        from specdyn import backend
    except Exception as exc:  # build missing
        result.update(status="skipped", reason=f"specdyn not importable: {exc}")
        write(result)
        print(f"gpu_bench: skipped, {result['reason']}")
        return 0
    if not backend.gpu_available():
        result.update(status="skipped", reason=backend.gpu_status())
        write(result)
        print(f"gpu_bench: skipped, no usable GPU ({backend.gpu_status()})")
        return 0
    mod = backend.cuda_module()
    result["gpu"] = backend.gpu_status()
    write(result)
    try:
        A = build_matrix(mod, N, K)
        bytes_a = N * N * 4
        # Bandwidth peer: a device copy reads and writes `bytes` each.
        copy_bytes = min(bytes_a, 2 << 30)
        mod.device_copies(copy_bytes, 1)  # warm-up
        t0 = time.perf_counter()
        mod.device_copies(copy_bytes, 10)  # (synchronizes before returning)
        t_copy = (time.perf_counter() - t0) / 10
        copy_bw = 2 * copy_bytes / t_copy
        result["copy_bandwidth_GBps"] = copy_bw / 1e9
        passes = {}
        for b in (1, 4, 12, 16):
            mod.gram_applications(A.ptr, N, N, True, N, True, b, 1)  # warm-up
            t0 = time.perf_counter()
            mod.gram_applications(A.ptr, N, N, True, N, True, b, 3)  # (synchronizes before returning)
            t = (time.perf_counter() - t0) / 3
            passes[str(b)] = {"seconds": t, "bytes_read_GBps": 2 * bytes_a / t / 1e9,
                              "fraction_of_copy_bandwidth": (2 * bytes_a / t) / copy_bw}
        result["gram_pass"] = passes
        result["gram_pass_note"] = ("one Gram application = M X then M^T Y: two streaming reads of A; "
                                    "fraction = bytes read per second / device copy bytes (read + write) per second")
        write(result)

        def solve():
            out = specdyn.top_singular(A, K, tol=1e-4)
            return out

        t_solve, (s, U, V, info) = timed(solve, REPEATS)
        result["specdyn"] = {"seconds": t_solve, "top": s.tolist(), "matrix_passes": info["matrix_passes"],
                             "restarts": info["restarts"], "block": info["block"], "converged": info["converged"],
                             "max_residual": float(np.max(info["residuals"])), "norm": info["norm_estimate"]}
        t_warm, (s_w, _, _, info_w) = timed(lambda: specdyn.top_singular(A, K, tol=1e-4, v0=V), REPEATS)
        result["specdyn_warm_same_matrix"] = {"seconds": t_warm, "matrix_passes": info_w["matrix_passes"],
                                              "converged": info_w["converged"]}
        write(result)

        try:
            import cupy as cp
            import cupyx.scipy.sparse.linalg as cpsla
        except Exception as exc:
            result["cupy"] = f"cupy missing ({type(exc).__name__}: {exc})"
        else:
            result["cupy"] = cp.__version__
            dA = cupy_view(cp, A)

            def svds():
                u, sv, vt = cpsla.svds(dA, k=K)
                cp.cuda.Device().synchronize()
                return cp.asnumpy(sv)

            try:
                t_svds, sv = timed(svds, REPEATS)
                sv = np.sort(sv.astype(float))[::-1]
                result["cupy_svds"] = {"seconds": t_svds, "top": sv.tolist(),
                                       "max_rel_diff_vs_specdyn": float(np.max(np.abs(sv - s) / s)),
                                       "ratio_svds_over_specdyn": t_svds / t_solve}
            except Exception as exc:
                result["cupy_svds"] = f"failed: {type(exc).__name__}: {exc}"
            write(result)
            if SVD_TIMEOUT > 0:
                try:
                    child = subprocess.run([sys.executable, __file__, "--dense-svd"], capture_output=True, text=True,
                                           timeout=SVD_TIMEOUT)
                    line = child.stdout.strip().splitlines()[-1] if child.stdout.strip() else ""
                    if child.returncode == 0 and line:
                        d = json.loads(line)
                        result["cupy_svd"] = {"seconds": d["seconds"], "top": d["top"],
                                              "ratio_svd_over_specdyn": d["seconds"] / t_solve}
                    else:
                        result["cupy_svd"] = f"failed (rc {child.returncode}): {child.stderr[-800:]}"
                except subprocess.TimeoutExpired:
                    result["cupy_svd"] = {"seconds": f"> {SVD_TIMEOUT} (stopped)",
                                          "ratio_svd_over_specdyn": f"> {SVD_TIMEOUT / t_solve:.1f}"}
            else:
                result["cupy_svd"] = "skipped (SPECDYN_BENCH_SVD_TIMEOUT=0)"
        result["status"] = "ok"
    except Exception as exc:
        result["status"] = "error"
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-3000:]
    write(result)
    print(json.dumps({k: v for k, v in result.items() if k != "traceback"}, indent=1, default=str))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    if "--dense-svd" in sys.argv:
        dense_svd_child()
        sys.exit(0)
    sys.exit(main())
