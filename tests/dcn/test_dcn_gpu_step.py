"""The GPU script's dcnv3 step in its dry run (CPU, Triton interpreter, tiny shapes), and the
CPU benchmark's quick run: the plumbing works without a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_step_dry_run(tmp_path, gpu_script):
    """DCNv3 is an operator module of the GPU script: its checks are a task of the
    correctness step, its timing is step bench_dcnv3."""
    rows = gpu_script.dry_run("bench_dcnv3", tmp_path)
    assert rows[-1]["status"] == "done" and all(r["dry_run"] for r in rows)
    timing = [r for r in rows if r.get("kind") == "timing"]
    assert {(r["contender"], r["mode"]) for r in timing} == {
        (c, m) for c in ("deformconv", "internimage_pytorch", "dwconv3x3")
        for m in ("fwd", "fwd+bwd")}
    checks = gpu_script.operator_task("dcnv3")
    assert {c["check"] for c in checks} == {"dcnv3_vs_oracle", "dcnv4_equals_dcnv3"}
    assert all(c["passed"] and c["operator"] == "dcnv3" for c in checks)


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
