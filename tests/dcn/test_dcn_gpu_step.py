"""The GPU script's dcnv3 step in its dry run (CPU, Triton interpreter, tiny shapes), and the
CPU benchmark's quick run: the plumbing works without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_step_dry_run(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu/run_gpu.py"), "--dry-run",
                        "--steps", "dcnv3", "--out", str(tmp_path)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = json.loads((tmp_path / "dcnv3.json").read_text())
    assert rows[-1]["status"] == "done" and all(r["dry_run"] for r in rows)
    checks = [r for r in rows if "check" in r]
    assert {r["check"] for r in checks} == {"dcnv3_vs_oracle", "dcnv4_equals_dcnv3"}
    assert all(r["passed"] for r in checks)
    timing = [r for r in rows if r.get("kind") == "timing"]
    assert {(r["contender"], r["mode"]) for r in timing} == {
        (c, m) for c in ("dcnv3", "internimage_pytorch", "dwconv3x3")
        for m in ("forward", "train")}


@pytest.mark.slow
def test_cpu_benchmark_quick(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/dcnv3_cpu.py"), "--quick",
                        "--reps", "1", "--out", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert len(rows) == 2 * 2 * 3
    assert all({"load_average", "commit", "threads", "peak_extra_mb", "median_ms"} <= set(x)
               for x in rows)
