"""The GPU script's ``msda`` step runs in ``--dry-run`` on CPU (the Triton interpreter, tiny
shapes) and records its checks and timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_msda_step_dry_run(tmp_path):
    """MSDA is an operator module of the GPU script: its timing is step bench_msda, its checks
    a task of the correctness step."""
    pytest.importorskip("triton")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "run_gpu.py"),
                        "--dry-run", "--steps", "bench_msda", "--out", str(tmp_path)], env=env,
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert rows[-1]["status"] == "done"
    timed = {(r["scale"], r["dtype"], r["mode"], r["contender"]) for r in rows
             if r.get("check") == "time" and r.get("median_ms") is not None}
    assert {(s, d, m, c) for s in ("encoder", "decoder") for d in ("float32", "bfloat16")
            for m in ("fwd", "fwd+bwd") for c in ("deformconv", "grid_sample")} <= timed
    code = ("import json, sys; sys.path[:0] = [sys.argv[1]]; import gpu_checks; "
            "print(json.dumps(gpu_checks.operator_task('msda', True)))")
    r = subprocess.run([sys.executable, "-c", code, str(ROOT / "benchmarks/gpu")],
                       env=dict(env, TRITON_INTERPRET="1"), cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    checks = json.loads(r.stdout.strip().splitlines()[-1])
    oracle = [c for c in checks if c.get("check") == "oracle"]
    assert {(c["dtype"], c["hostile"]) for c in oracle} == {
        (d, h) for d in ("float32", "float16", "bfloat16") for h in (False, True)}
    assert all(c["passed"] for c in checks if "passed" in c)
