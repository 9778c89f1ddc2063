"""Seconds Triton takes to compile each shipped kernel configuration for the H100/H200
(sm_90a), offline, no GPU: what the GPU script's budget estimates are built from.

    python benchmarks/gpu/compile_times.py [--kernel SUBSTRING] [--out FILE]

Each row of ``deformconv kernels`` (kernel x configuration x dtype x index width) is compiled
in a fresh Triton cache; a row's ``compile_s`` is ``triton.compile`` alone (the report's second
``ptxas -v`` pass, which a launch does not make, is timed apart as ``report_ptxas_s``). The
summary gives seconds per configuration for each kernel family and the machine it ran on (a
shared, loaded machine compiles more slowly than the GPU machine's own cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernel", default="", help="only kernels whose name contains this")
    p.add_argument("--out", default=str(HERE / "results" / "compile_seconds_sm90a.json"))
    a = p.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="deformconv-compile-times-")
    sys.path.insert(0, str(ROOT / "src"))
    import triton
    from deformconv.ops.triton import report

    spent = {"ptxas": 0.0}
    usage = report._ptxas_usage

    def timed_usage(*args):
        t0 = time.perf_counter()
        try:
            return usage(*args)
        finally:
            spent["ptxas"] += time.perf_counter() - t0
    report._ptxas_usage = timed_usage
    rows = []
    for spec, config, label, arch, i64 in report._jobs("sm_90a", a.kernel):
        spent["ptxas"] = 0.0
        t0 = time.perf_counter()
        row = report.compile_row(spec, config, label, arch, i64)
        total = time.perf_counter() - t0
        row.update(compile_s=round(total - spent["ptxas"], 3),
                   report_ptxas_s=round(spent["ptxas"], 3))
        rows.append(row)
        print(f"{row['kernel']:28s} {row['dtype']:5s} {row['config']:60s} "
              f"{row['compile_s']:6.2f} s", flush=True)
    families = {}
    for r in rows:
        families.setdefault(r["kernel"], []).append(r["compile_s"])
    summary = {k: {"configs": len(v), "median_s": round(statistics.median(v), 2),
                   "max_s": round(max(v), 2), "total_s": round(sum(v), 1)}
               for k, v in families.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    out = {"machine": {"cpu_count": os.cpu_count(), "load_average_1min": load,
                       "python": platform.python_version(), "triton": triton.__version__},
           "summary": summary, "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    for k, s in summary.items():
        print(f"{k:28s} {s['configs']:3d} configs, median {s['median_s']:5.2f} s, "
              f"max {s['max_s']:5.2f} s")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
