"""Shared helpers of the benchmarks: timing, thread pinning, tables, JSON."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def in_tree_if_asked() -> None:
    """With ``--in-tree`` on the command line, import specdyn from ../python (the build of
    tools/dev_build.sh); without it, the installed package. Call before importing specdyn."""
    if "--in-tree" in sys.argv:
        sys.argv.remove("--in-tree")
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))


def best_time(fn, repeat: int = 5, warmup: int = 1) -> float:
    """Best wall time in seconds of ``fn()`` over ``repeat`` calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def machine() -> dict:
    import numpy

    import specdyn

    info = specdyn.info()
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "numpy": numpy.__version__,
            "blas": info["blas"], "omp_threads": info["omp_threads"], "specdyn": info["specdyn"],
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows`` (dicts) restricted to ``columns``."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path
