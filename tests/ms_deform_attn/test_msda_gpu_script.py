"""The GPU script's ``msda`` step runs in ``--dry-run`` on CPU (the Triton interpreter, tiny
shapes) and records its checks and timings."""

from __future__ import annotations

import pytest


def test_msda_step_dry_run(tmp_path, gpu_script):
    """MSDA is an operator module of the GPU script: its timing is step bench_msda, its checks
    a task of the correctness step."""
    pytest.importorskip("triton")
    rows = gpu_script.dry_run("bench_msda", tmp_path)
    assert rows[-1]["status"] == "done"
    timed = {(r["scale"], r["dtype"], r["mode"], r["contender"]) for r in rows
             if r.get("check") == "time" and r.get("median_ms") is not None}
    assert {(s, d, m, c) for s in ("encoder", "decoder") for d in ("float32", "bfloat16")
            for m in ("fwd", "fwd+bwd") for c in ("deformconv", "grid_sample")} <= timed
    checks = gpu_script.operator_task("msda")
    oracle = [c for c in checks if c.get("check") == "oracle"]
    assert {(c["dtype"], c["hostile"]) for c in oracle} == {
        (d, h) for d in ("float32", "float16", "bfloat16") for h in (False, True)}
    assert all(c["passed"] for c in checks if "passed" in c)
