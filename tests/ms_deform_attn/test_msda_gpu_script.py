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
    pytest.importorskip("triton")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "run_gpu.py"),
                        "--dry-run", "--steps", "msda", "--out", str(tmp_path)], env=env,
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = json.loads((tmp_path / "msda.json").read_text())
    assert rows[-1]["status"] == "done"
    oracle = [r for r in rows if r.get("check") == "oracle"]
    assert {(r["dtype"], r["hostile"]) for r in oracle} == {
        (d, h) for d in ("float32", "float16", "bfloat16") for h in (False, True)}
    assert all(r["passed"] for r in rows if "passed" in r)
    timed = {(r["scale"], r["dtype"], r["mode"], r["contender"]) for r in rows
             if r.get("check") == "time" and "median_ms" in r}
    assert {(s, d, m, c) for s in ("encoder", "decoder") for d in ("float32", "bfloat16")
            for m in ("fwd", "fwd+bwd") for c in ("deformconv", "grid_sample")} <= timed
