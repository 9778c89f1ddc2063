"""The committed resource reports of the Triton kernels: ``deformconv kernels`` for sm_80 and
sm_90a under the installed Triton, one file per architecture,
``results/kernels-triton-<version>-<arch>.json``.

Every shipped configuration must compile without register spills under the Triton of the GPU
machines (3.6) and the newest (3.9); ``tests/test_kernels_report.py`` checks that each
committed file has exactly the configurations the kernel modules ship now, none spilling, so a
changed table without new reports fails. Another Triton runs from a private target:

    python -m pip install --no-deps --target "$T" triton==3.6.0   # T: any empty folder
    PYTHONPATH="$T:src" python benchmarks/kernel_reports.py
    PYTHONPATH=src python benchmarks/kernel_reports.py             # the installed Triton

Compiles everything offline (no GPU); a few minutes per architecture on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True).stdout
    sha = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    return sha + ("-dirty" if git("status", "--porcelain", "--untracked-files=no").strip()
                  else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", nargs="+", default=["sm_80", "sm_90a"])
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from deformconv.ops.triton import report
    out = subprocess.run([report._ptxas(80), "--version"], capture_output=True,
                         text=True).stdout
    ptxas = next((line for line in out.splitlines() if "release" in line), out.strip())
    for arch in a.arch:
        t0 = time.perf_counter()
        rows = report.resource_rows(arch)
        seconds = time.perf_counter() - t0
        spilling = [r for r in rows if r["spill_bytes"]]
        doc = {"what": f"deformconv kernels --arch {arch} --json under Triton "
                       f"{triton.__version__}: every shipped configuration",
               "command": "python benchmarks/kernel_reports.py",
               "triton": triton.__version__, "arch": arch,
               "ptxas": ptxas,
               "commit": _commit(), "seconds": round(seconds, 1),
               "spilling": len(spilling), "configurations": len(rows), "rows": rows}
        path = a.out / f"kernels-triton-{triton.__version__}-{arch}.json"
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"{path.name}: {len(spilling)} of {len(rows)} configurations spill "
              f"({seconds:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
