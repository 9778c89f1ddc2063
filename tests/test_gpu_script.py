"""The GPU script's own logic, without a GPU: the order of the two device commands' steps,
the budget (steps and shapes that no longer fit are rows saying so), the row schema, rows
written as they arrive, errors recorded instead of raised, the operator plug-ins, the parsers
of pytest's and compute-sanitizer's output, and ``table.py``'s tables and goals on synthetic
rows and on a dry run."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "benchmarks" / "gpu"
sys.path.append(str(GPU))  # after everything else: these modules shadow nothing


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


import gpu_bench  # noqa: E402
import gpu_checks  # noqa: E402
import gpu_tools  # noqa: E402
import run_gpu  # noqa: E402

table = _load("deformconv_gpu_table", GPU / "table.py")  # "table" is too common a name

META = {"gpu": "test", "driver": "0", "torch": "0", "triton": "0", "commit": "c0ffee",
        "dry_run": False}


def test_steps_are_selected_in_order_and_unknown_ones_refused():
    assert run_gpu.parse_steps("bench_fp16,compile,correctness") == [
        "correctness", "bench_fp16", "compile"]
    assert run_gpu.parse_steps("all") == run_gpu.PLANS[1]
    assert run_gpu.parse_steps("all", 2) == ["sanitizer", "pytest"]
    assert run_gpu.parse_steps("pytest,sanitizer,correctness", 2) == [
        "sanitizer", "pytest", "correctness"]
    with pytest.raises(ValueError, match="bnech"):
        run_gpu.parse_steps("bench_bf16,bnech")
    with pytest.raises(ValueError):
        run_gpu.parse_steps(",")


def test_the_first_command_runs_correctness_then_bfloat16_then_the_rest():
    plan = run_gpu.PLANS[1]
    assert plan[:4] == ["correctness", "bench_bf16", "bench_fp16", "bench_fp32"]
    assert plan[4:7] == ["bench_small", "bench_nd", "bench_roi"]
    assert plan[7:-1] == [f"bench_{op}" for op in run_gpu.OPERATOR_MODULES]
    assert plan[-1] == "compile"
    assert run_gpu.PLANS[2] == ["sanitizer", "pytest"]
    # every step has an estimate and a phase file; at most 8 files come back per command
    for steps in run_gpu.PLANS.values():
        assert all(run_gpu.ESTIMATES[s] > 0 for s in steps)
        assert len({run_gpu.PHASE[s] for s in steps}) <= 5
    assert {run_gpu.PHASE[s] for s in run_gpu.PLANS[1]} == {"correctness", "bench", "compile"}
    # the whole first command fits its --budget 420 by the estimates
    assert run_gpu.STARTUP_S + sum(run_gpu.ESTIMATES[s] for s in plan) <= 420


def test_plan_prints_the_steps_in_order_with_their_estimates(capsys):
    assert run_gpu.main(["--plan"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == ["start"] + run_gpu.PLANS[1]
    total = run_gpu.STARTUP_S + sum(run_gpu.ESTIMATES[s] for s in run_gpu.PLANS[1])
    assert f"cumulative {total:4d} s" in lines[-1]
    assert run_gpu.main(["--plan", "--command", "2"]) == 0
    assert [ln.split()[0] for ln in capsys.readouterr().out.splitlines()] == [
        "start", "sanitizer", "pytest"]


def _ctx(tmp_path, budget, steps=(), dry=False):
    args = run_gpu._args(["--out", str(tmp_path)] + (["--budget", str(budget)]
                                                     if budget is not None else []))
    ctx = run_gpu.Context(__import__("torch"), args, steps)
    ctx.dry, ctx.dev = dry, "cpu"
    return ctx


def test_budget_skips_what_no_longer_fits_and_runs_what_still_does(tmp_path, monkeypatch):
    """A budget of 100 s: correctness (estimated 60) runs and takes 40 s (simulated), so
    bench_bf16 (75) no longer fits and is a skipped row, bench_fp16 (30) still fits; rows of
    one phase share one file."""
    monkeypatch.setitem(run_gpu.ESTIMATES, "correctness", 60)
    monkeypatch.setitem(run_gpu.ESTIMATES, "bench_bf16", 75)
    monkeypatch.setitem(run_gpu.ESTIMATES, "bench_fp16", 30)
    ran = []

    def fake(name):
        def step(rec, ctx):
            ran.append(name)
            ctx.start -= 40 if name == "correctness" else 0  # 40 s go by
            rec.add(check=name, passed=True)
        return step
    steps = ["correctness", "bench_bf16", "bench_fp16"]
    ctx = _ctx(tmp_path, 100, steps)
    failed = run_gpu.run_plan(steps, {s: fake(s) for s in steps}, tmp_path, META, ctx)
    assert ran == ["correctness", "bench_fp16"] and failed == ["bench_bf16"]
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["step"], r.get("status")) for r in bench] == [
        ("bench_bf16", "skipped"), ("bench_fp16", None), ("bench_fp16", "done")]
    assert "budget" in bench[0]["reason"] and bench[0]["estimate_s"] == 75
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "correctness.json"]


def test_a_shape_that_no_longer_fits_is_a_row(tmp_path):
    """With no budget left every main shape of a benchmark step is a skipped row, and
    nothing is computed."""
    ctx = _ctx(tmp_path, 0)
    rec = run_gpu.Recorder(tmp_path, "bench_bf16", META)
    gpu_bench.step_bench_bf16(rec, ctx)
    assert [r["shape"] for r in rec.rows] == [gpu_bench.shape_name(*s)
                                              for s in gpu_bench.MAIN_SHAPES]
    assert all("budget" in r["skipped"] and r["estimate_s"] > 0 for r in rec.rows)
    assert rec.rows[0]["estimate_s"] > rec.rows[1]["estimate_s"]  # the first one compiles


def test_timing_rows_carry_the_schema_and_speedup_of_ours(tmp_path):
    rec = run_gpu.Recorder(tmp_path, "bench_msda", META)
    for c, ms in (("deformconv", 2.0), ("grid_sample", 6.0), ("deformops", None)):
        rec.add(check="time", scale="encoder", dtype="bfloat16", mode="fwd", contender=c,
                median_ms=ms)
    rec.add(check="time", scale="decoder", dtype="bfloat16", mode="fwd",
            contender="grid_sample", median_ms=1.0)
    rec.add(check="not a timing row", passed=True)
    rec.finish()
    rows = json.loads((tmp_path / "bench_msda.json").read_text())
    for r in rows[:4]:
        assert set(run_gpu.TIMING_KEYS) <= set(r) and r["gpu"] == "test"
        assert ("speedup_of_ours" in r) == (r["contender"] != "deformconv")
    assert rows[1]["speedup_of_ours"] == pytest.approx(3.0)
    assert rows[2]["speedup_of_ours"] is None and rows[3]["speedup_of_ours"] is None
    assert "contender" not in rows[4] and "speedup_of_ours" not in rows[4]


def test_operator_modules_plug_into_both_phases(tmp_path, monkeypatch):
    """An operator module is one line of OPERATOR_MODULES: its correctness runs as a task of
    the correctness step, its timing as step bench_<op>; one that is not there is a row."""
    (tmp_path / "gpu_fake_op.py").write_text(
        "def correctness(rec, ctx):\n"
        "    rec.add(check='oracle', dtype='float32', passed=ctx.dev == 'cpu')\n"
        "def timing(rec, ctx):\n"
        "    rec.add(shape='s', dtype='bfloat16', mode='fwd', contender='deformconv',\n"
        "            median_ms=1.0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(run_gpu, "OPERATOR_MODULES", {"fake": "gpu_fake_op",
                                                      "absent": "gpu_no_such_module"})
    rows = gpu_checks.operator_task("fake", True)
    assert rows == [{"check": "oracle", "dtype": "float32", "passed": True,
                     "operator": "fake"}]
    absent = gpu_checks.operator_task("absent", True)
    assert absent[0]["passed"] is None and "gpu_no_such_module.py" in absent[0]["skipped"]
    fns = run_gpu.step_functions()
    rec = run_gpu.Recorder(tmp_path, "bench_fake", META)
    fns["bench_fake"](rec, _ctx(tmp_path, None, dry=True))
    assert rec.rows[0]["median_ms"] == 1.0
    tasks = gpu_checks.correctness_tasks(True, ("fake", "absent"))
    assert [a[0] for n, a in tasks if n == "operator_task"] == ["fake", "absent"]


@pytest.mark.slow
def test_worker_tasks_past_their_time_are_rows_and_the_workers_end(tmp_path, monkeypatch):
    """Two spawned workers: a quick task's rows arrive, a task that would hang is given up
    after 1.5 x the estimate (10 s floor) as a row, and the step returns (about 15 s)."""
    (tmp_path / "gpu_fake_tasks.py").write_text(
        "import time\n"
        "def quick(x):\n"
        "    return [{'check': 'quick', 'x': x, 'passed': True}]\n"
        "def hang(x):\n"
        "    time.sleep(600)\n"
        "    return []\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ctx = _ctx(tmp_path, 1000)
    ctx.args.workers = 2
    rec = run_gpu.Recorder(tmp_path, "correctness", META)
    t0 = __import__("time").perf_counter()
    gpu_checks.run_step_tasks(rec, ctx, [("gpu_fake_tasks:hang", (1,)),
                                         ("gpu_fake_tasks:quick", (2,))], estimate=4)
    assert __import__("time").perf_counter() - t0 < 40
    assert rec.rows[0] == {**META, "step": "correctness", "check": "quick", "x": 2,
                           "passed": True}
    late = rec.rows[1]
    assert late["passed"] is False and "budget" in late["skipped"]
    assert late["task"] == [1]


def test_correctness_tasks_cover_every_operator_and_the_torch_path_once():
    tasks = gpu_checks.correctness_tasks(False, tuple(run_gpu.OPERATOR_MODULES))
    names = [n for n, _ in tasks]
    oracle = [a for n, a in tasks if n == "oracle_task"]
    two_d = set(gpu_checks.oracle_cases(False)) - {"batch0"}
    assert {(a[1], a[2][0]) for a in oracle if a[2][0] in two_d and a[0] == "triton"} == {
        (d, c) for d in gpu_checks.DTYPES for c in two_d}
    assert all(a[0] in ("triton", gpu_checks.ND_R2) for a in oracle[:-1])
    # the N-D kernels at R=2 (the benchmark's contender) on the 2-D cases, every dtype
    assert {(a[1], tuple(a[2])) for a in oracle if a[0] == gpu_checks.ND_R2} == {
        (d, tuple(c for c in gpu_checks.oracle_cases(False) if c != "batch0"))
        for d in gpu_checks.DTYPES}
    assert tasks[-1] == ("oracle_task", ("torch", "float32", list(gpu_checks.oracle_cases(
        False)), False))  # the pure-PyTorch path, once, last
    assert names[0] == "hostile_task"  # the longest first
    assert [a for a in oracle if set(a[2]) == set(gpu_checks.nd_cases(False))]
    assert names.count("roi_task") == 3 and names.count("hostile_task") == 1
    present = [op for op in run_gpu.OPERATOR_MODULES if run_gpu.operator_module(op)]
    by_dtype = [op for op in present
                if getattr(run_gpu.operator_module(op), "CORRECTNESS_BY_DTYPE", False)]
    assert names.count("operator_task") == (len(run_gpu.OPERATOR_MODULES) + 2 * len(by_dtype))
    assert "dcnv3" in by_dtype
    assert names.count("deformops_warm_task") == gpu_checks.DEFORMOPS_PARTS
    cases = gpu_checks.oracle_cases(False)
    assert any(p.groups > 1 and p.offset_groups % p.groups for p, _ in cases.values())
    assert any(len(set(p.kernel)) > 1 and max(p.strides) > 1 and max(p.dilations) > 1
               for p, _ in cases.values())
    assert any(hostile for _, hostile in cases.values())


def test_rows_are_on_disk_as_they_arrive_and_a_failing_step_is_a_row(tmp_path):
    seen = []

    def step(rec, ctx):
        rec.add(check="a", passed=True)
        seen.append(json.loads((tmp_path / "demo.json").read_text()))
        raise RuntimeError("boom")
    rec = run_gpu.run_step("demo", step, tmp_path, META, None)
    assert len(seen[0]) == 1 and seen[0][0]["check"] == "a"  # written before the step ended
    rows = json.loads((tmp_path / "demo.json").read_text())
    assert rows[-1]["status"] == "error" and "boom" in rows[-1]["error"]
    assert rec.failed()
    ok = run_gpu.run_step("fine", lambda rec, ctx: rec.add(check="b", passed=True), tmp_path,
                          META, None)
    assert not ok.failed() and ok.rows[-1]["status"] == "done"
    assert all(r["commit"] == "c0ffee" and r["step"] == "fine" for r in ok.rows)


def test_guard_turns_an_exception_into_a_failed_row(tmp_path):
    rec = run_gpu.Recorder(tmp_path, "x", META)
    row = gpu_checks.guard(rec, lambda: 1 / 0, check="oracle", dtype="float32")
    assert row["passed"] is False and "ZeroDivisionError" in row["error"]


def test_junit_summary_groups_and_failures(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite>'
        '<testcase classname="tests.triton.test_kernels" name="test_a"/>'
        '<testcase classname="tests.triton.test_kernels" name="test_b">'
        '<failure message="AssertionError: bad">trace</failure></testcase>'
        '<testcase classname="tests.test_ops" name="test_c[cuda]"/>'
        '<testcase classname="tests.test_ops" name="test_c[cpu]">'
        '<skipped message="no reason"/></testcase>'
        '<testcase classname="tests.test_ops" name="test_d[cuda-float32]">'
        '<error message="RuntimeError: x"/></testcase>'
        '</testsuite></testsuites>')
    s = gpu_checks.junit_summary(xml)
    assert s["groups"]["triton"] == {"passed": 1, "failed": 1}
    assert s["groups"]["cuda"] == {"passed": 1, "errors": 1}
    assert s["groups"]["other"] == {"skipped": 1}
    assert [f["test"] for f in s["failures"]] == ["tests.triton.test_kernels::test_b",
                                                  "tests.test_ops::test_d[cuda-float32]"]
    assert s["skip_reasons"] == [("no reason", 1)]


@pytest.mark.slow
def test_pytest_step_is_interrupted_at_its_timeout_and_keeps_its_counts(tmp_path):
    """The GPU path of the pytest step, given what is left of a 45 s budget (20 s, less 25 s
    for the summary: its floor of 20 s), stopped by SIGINT (the three folders take minutes on
    one core; three files that took a minute once ran in 17 s on a quiet machine): the step
    ends, says it was interrupted, keeps the counts so far, and fails."""
    args = run_gpu._args(["--out", str(tmp_path), "--budget", "45",
                          "--pytest-workers", "0", "--pytest-args",
                          "tests/deform_conv tests/dcn tests/roi_pool"])
    ctx = run_gpu.Context(None, args, ["pytest"])
    ctx.dry = False
    rec = run_gpu.run_step("pytest", gpu_checks.step_pytest, tmp_path, META, ctx)
    row = next(r for r in rec.rows if r.get("check") == "pytest")
    assert row["interrupted"] is True and row["passed"] is False and row["timeout_s"] == 20
    assert row["seconds"] < 90 and row.get("n_passed", 0) > 0


def test_sanitizer_error_counts():
    assert gpu_tools.sanitizer_errors("========= ERROR SUMMARY: 0 errors") == 0
    assert gpu_tools.sanitizer_errors("========= ERROR SUMMARY: 12 errors") == 12
    assert gpu_tools.sanitizer_errors(
        "========= RACECHECK SUMMARY: 3 hazards displayed (1 error, 2 warnings)") == 1
    assert gpu_tools.sanitizer_errors("Segmentation fault") is None


FAKE_SANITIZER = """import subprocess, sys
args = sys.argv[1:]
tool = args[args.index("--tool") + 1]
r = subprocess.run(args[args.index("--print-limit") + 2:])
print("========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)"
      if tool == "racecheck" else "========= ERROR SUMMARY: 0 errors")
sys.exit(r.returncode)
"""


def _stand_in(tmp_path, monkeypatch, name: str, script: str) -> None:
    """A Python stand-in for the GPU tool ``name``, found by the script, whose child runs on
    the CPU."""
    fake = tmp_path / name
    fake.write_text(f"#!{sys.executable}\n" + script)
    fake.chmod(0o755)
    monkeypatch.setattr(gpu_tools, "find_tool", lambda tool: str(fake))
    monkeypatch.setattr(gpu_tools, "CHILD_DEVICE", "cpu")
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src"))


@pytest.mark.slow
def test_sanitizer_step_plumbing_with_a_stand_in_tool(tmp_path, monkeypatch):
    """The GPU path of the sanitizer step (plain run, then memcheck, its log parsed) with a
    stand-in for compute-sanitizer and the child on CPU."""
    _stand_in(tmp_path, monkeypatch, "compute-sanitizer", FAKE_SANITIZER)
    args = run_gpu._args(["--out", str(tmp_path), "--sanitizer-timeout", "120"])
    ctx = run_gpu.Context(None, args, ["sanitizer"])
    ctx.dry = False
    rec = run_gpu.run_step("sanitizer", gpu_tools.step_sanitizer, tmp_path, META, ctx)
    rows = {r.get("tool"): r for r in rec.rows}
    assert rows["none (plain run)"]["passed"] is True
    assert set(rows) == {"none (plain run)", "memcheck", None}  # None: the status row
    r = rows["memcheck"]
    assert (r["exit_code"], r["errors"], r["child_ok"], r["passed"]) == (0, 0, True, True)
    assert not rec.failed()


def _fake_contenders(monkeypatch):
    """torchvision and deformops stand-ins with the signatures of torchvision 0.26's
    ``ops.deform_conv2d`` and deformops 3.0.1's ``integrations.torchvision.deform_conv2d``
    (read from its wheel), computing with ours."""
    from deformconv import deform_conv2d

    def tv(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
           mask=None):
        return deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)

    def dops(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0),
             dilation=(1, 1), mask=None, *, backend=None):
        assert backend is None
        return deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)
    mods = {"torchvision": dict(__version__="fake-tv"), "torchvision.ops": dict(deform_conv2d=tv),
            "deformops": dict(__version__="fake-dops"), "deformops.integrations": {},
            "deformops.integrations.torchvision": dict(deform_conv2d=dops)}
    for name, attrs in mods.items():
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, m)
    sys.modules["torchvision"].ops = sys.modules["torchvision.ops"]


def test_bench_rows_carry_the_issue_fields(tmp_path, monkeypatch):
    """One shape on CPU (pure-PyTorch kernels), every contender present (stand-ins), then one
    missing: the fields the issue asks for, speedup_of_ours on the others' rows, a row with
    the reason for each contender that did not run."""
    import torch
    _fake_contenders(monkeypatch)
    rec = run_gpu.Recorder(tmp_path, "bench", META)
    for dtype in ("bfloat16", "float32"):
        gpu_bench.bench_one(rec, torch, "cpu", (1, 4, 3, 4), 4, dtype, reps=2, main=True,
                            warmup=0, k=1)
    rows = json.loads((tmp_path / "bench.json").read_text())
    need = {"step", "gpu", "driver", "torch", "triton", "commit", "shape", "contender", "dtype",
            "mode", "median_ms", "tflops", "ratio_to_conv2d", "peak_ratio_to_conv2d"}
    timed = [r for r in rows if r.get("median_ms") is not None]
    assert timed and all(need <= set(r) for r in timed)
    f32 = {(r["contender"], r["mode"]) for r in timed if r["dtype"] == "float32"}
    assert f32 == {(c, m) for c in gpu_bench.CONTENDERS if c != gpu_bench.ND_R2
                   for m in ("fwd", "fwd+bwd")}
    # the N-D kernels at R=2 need CUDA tensors or the interpreter: a row saying so, not a crash
    nd = [r for r in rows if r["contender"] == gpu_bench.ND_R2]
    assert len(nd) == 2 and all("TRITON_INTERPRET" in r["skipped"] for r in nd)
    for r in timed:
        assert ("speedup_of_ours" in r) == (r["contender"] != "deformconv")
        assert r["tf32"] == "off" and r["version"]
    skip = run_gpu.Recorder(tmp_path, "bench3", META)
    gpu_bench.bench_one(skip, torch, "cpu", (1, 4, 3, 4), 4, "float32", reps=1, main=True,
                        warmup=None, k=1, skip={"deformops": "skipped: not in this dtype"})
    assert next(r for r in skip.rows if r["contender"] == "deformops")["skipped"] == (
        "skipped: not in this dtype")
    # torchvision has no bfloat16 kernel: in the bfloat16 run it runs in float16 beside ours,
    # and the goal compares that run with ours in bfloat16
    tv = [r for r in rows if r["contender"] == "torchvision" and r.get("alongside")]
    assert {(r["mode"], r["dtype"], r["alongside"]) for r in tv} == {
        ("fwd", "float16", "bfloat16"), ("fwd+bwd", "float16", "bfloat16")}
    ours = next(r for r in rows if r["contender"] == "deformconv" and r["dtype"] == "bfloat16"
                and r["mode"] == "fwd+bwd")
    tv_fb = next(r for r in tv if r["mode"] == "fwd+bwd")
    assert tv_fb["speedup_of_ours"] == pytest.approx(tv_fb["median_ms"] / ours["median_ms"])
    goal = next(g for g in table.goals(rows) if g["goal"].startswith("torchvision"))
    assert goal["measured"] == pytest.approx(tv_fb["speedup_of_ours"])
    monkeypatch.setitem(sys.modules, "deformops.integrations.torchvision", None)
    rec2 = run_gpu.Recorder(tmp_path, "bench2", META)
    gpu_bench.bench_one(rec2, torch, "cpu", (1, 4, 3, 4), 4, "float16", reps=1, main=True,
                        warmup=None, k=1)
    miss = [r for r in rec2.rows if r["contender"] == "deformops"]
    assert len(miss) == 1 and miss[0]["median_ms"] is None and "failed" in miss[0]["skipped"]
    goals = table.goals(rows)
    assert next(g for g in goals if g["goal"].startswith("deformops forward"))["shapes"] == 1
    choices = gpu_bench.autotune_choices()  # nothing autotunes on CPU; no error either
    assert isinstance(choices, list) and not any("error" in c for c in choices)


# --- table.py ----------------------------------------------------------------------------------

def _rows(tv16=30.0, dops=12.0, peak=1.1, shapes=4):
    """bench rows: conv2d 1 ms fwd / 3 ms fwd+bwd; ours 1.2 / 5.0 (bf16), 1.1 / 4.0 (fp16)."""
    rows = []
    mains = [f"8x{c}x10x10->{c}" for c in (128, 256, 512, 64)][:shapes]
    for shape, main in [(s, True) for s in mains] + [("1x256x13x21->256", False)]:
        for dtype in ("bfloat16", "float16"):
            ours = {"fwd": 1.2, "fwd+bwd": 5.0} if dtype == "bfloat16" else {
                "fwd": 1.1, "fwd+bwd": 4.0}
            conv = {"fwd": 1.0, "fwd+bwd": 3.0}
            for c, times in (("cudnn_conv2d", conv),
                             ("deformconv", ours),
                             ("deformops", {"fwd": dops, "fwd+bwd": dops}),
                             ("torchvision", {"fwd": tv16, "fwd+bwd": tv16})):
                if c == "torchvision" and dtype == "bfloat16":
                    rows.append({**META, "step": "bench", "shape": shape, "main": main,
                                 "dtype": dtype, "contender": c, "mode": "fwd+bwd",
                                 "median_ms": None, "skipped": "skipped: no bf16"})
                    continue
                for mode, ms in times.items():
                    rows.append({**META, "step": "bench", "shape": shape, "main": main,
                                 "dtype": dtype, "contender": c, "mode": mode, "median_ms": ms,
                                 "tflops": 1.0, "ratio_to_conv2d": ms / conv[mode],
                                 "peak_ratio_to_conv2d": peak if c == "deformconv" else 1.0,
                                 "reps": 20, "kernel": "3x3", "padding": 1})
    rows.append({**META, "step": "bench", "status": "done"})
    return rows


def test_goals_on_synthetic_rows():
    g = {" ".join(x["goal"].split(" ")[:2]): x for x in table.goals(_rows())}
    fwd = g["forward /"]
    assert fwd["measured"] == pytest.approx(1.2) and fwd["met"] is True and fwd["shapes"] == 4
    fb = g["forward+backward /"]
    assert fb["measured"] == pytest.approx(5.0 / 3.0) and fb["met"] is True
    tv = g["torchvision fwd+bwd"]  # torchvision fp16 30 ms over ours bf16 5 ms
    assert tv["measured"] == pytest.approx(6.0) and tv["met"] is True
    assert "float16 vs float16): 7.50x" in tv["note"]
    assert g["deformops forward"]["measured"] == pytest.approx(12 / 1.2)
    assert g["deformops fwd+bwd"]["measured"] == pytest.approx(12 / 5.0)
    assert g["deformops fwd+bwd"]["met"] is True
    peak = g["peak memory"]
    assert peak["measured"] == pytest.approx(1.1) and peak["met"] is True


def test_goals_not_met_and_missing_are_said():
    gs = table.goals(_rows(tv16=9.0, dops=1.0, peak=1.5, shapes=3))
    by = {x["goal"]: x for x in gs}
    tv = next(x for x in gs if x["goal"].startswith("torchvision"))
    assert tv["measured"] == pytest.approx(1.8) and tv["met"] is False
    assert "only 3 of 4 main shapes" in tv["note"]
    dfwd = next(x for x in gs if x["goal"].startswith("deformops forward"))
    assert dfwd["met"] is False  # 1.0 / 1.2 < 1
    peak = next(x for x in gs if x["goal"].startswith("peak"))
    assert peak["met"] is False and math.isclose(peak["measured"], 1.5)
    md = table.goals_markdown(gs)
    assert "**no** (3/4 shapes)" in md and len(by) == 6
    none = table.goals([r for r in _rows() if r.get("contender") != "deformops"])
    d = next(x for x in none if x["goal"].startswith("deformops forward"))
    assert d["measured"] is None and d["met"] is None
    assert "| deformops forward / ours forward (bf16) | no data |" in table.goals_markdown(none)


def test_markdown_table_from_synthetic_rows(tmp_path):
    (tmp_path / "bench.json").write_text(json.dumps(_rows()))
    (tmp_path / "notes.json").write_text(json.dumps({"not": "a list"}))
    rows = table.load_rows(tmp_path)
    md = table.markdown_tables(rows)
    assert "**bfloat16**" in md and "**float16**" in md and "DRY RUN" not in md
    assert "| 8x128x10x10->128 | fwd+bwd | 3.000 | 5.000 | 1.67 |" in md
    assert "| 1x256x13x21->256 (small map) | fwd |" in md
    assert "| 30.000 (27.27x) |" in md  # torchvision fp16 forward: 30 ms, ours 1.1 ms
    assert "- torchvision, bfloat16: skipped: no bf16" in md
    assert table.main([str(tmp_path)]) == 0


@pytest.mark.slow
def test_dry_run_steps_and_table(tmp_path):
    """The dry run of three steps, the correctness tasks in two worker processes as on the
    GPU, writes their phase files; table.py reads them (about a minute)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, str(GPU / "run_gpu.py"), "--dry-run", "--steps",
                        "bench_bf16,compile,correctness", "--workers", "2", "--out",
                        str(tmp_path)],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "compile.json",
                                                           "correctness.json"]
    checks = json.loads((tmp_path / "correctness.json").read_text())
    oracle = [r for r in checks if r.get("check") == "oracle" and r.get("passed") is not None]
    assert {(r["operator"], r.get("backend")) for r in oracle} >= {
        ("deform_conv2d", "triton"), ("deform_conv2d", "torch"), ("deform_conv1d", "triton"),
        ("deform_conv3d", "triton"), ("deform_roi_pool", "auto")}
    assert all(r["passed"] for r in oracle) and any(r.get("hostile") for r in oracle)
    assert any(r.get("check") == "hostile" and r["passed"] for r in checks)
    assert any(r.get("operator") == "dcnv3" and r["passed"] for r in checks)
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench[-1]["status"] == "done" and all(r["dry_run"] for r in bench)
    ours = [r for r in bench if r.get("contender") == "deformconv"]
    assert {(r["dtype"], r["mode"]) for r in ours} == {("bfloat16", "fwd"),
                                                       ("bfloat16", "fwd+bwd")}
    compile_rows = json.loads((tmp_path / "compile.json").read_text())
    graph = [r for r in compile_rows if r.get("check") == "cuda_graph"]
    assert graph and all(r["skipped"] == "skipped: dry run" for r in graph)
    t = subprocess.run([sys.executable, str(GPU / "table.py"), str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert t.returncode == 0 and "DRY RUN" in t.stdout and "| goal" in t.stdout


def test_find_tool_looks_on_path_then_in_the_named_folders(tmp_path, monkeypatch):
    tool = tmp_path / "cuda" / "bin" / "fake-sanitizer"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("DEFORMCONV_TOOL_DIRS", raising=False)
    assert gpu_tools.find_tool("fake-sanitizer") is None
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda"))
    assert gpu_tools.find_tool("fake-sanitizer") == str(tool)
    monkeypatch.delenv("CUDA_HOME")
    monkeypatch.setenv("DEFORMCONV_TOOL_DIRS", os.pathsep.join(["", str(tool.parent)]))
    assert gpu_tools.find_tool("fake-sanitizer") == str(tool)
    monkeypatch.setenv("PATH", str(tool.parent) + os.pathsep + os.environ["PATH"])
    monkeypatch.delenv("DEFORMCONV_TOOL_DIRS")
    assert gpu_tools.find_tool("fake-sanitizer") == str(tool)
