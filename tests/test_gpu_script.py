"""The GPU script's own logic, without a GPU: step selection, rows written as they arrive,
errors recorded instead of raised, the parsers of pytest's, compute-sanitizer's and Nsight
Compute's output, and ``table.py``'s tables and goals on synthetic rows and on a dry run."""

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
    assert run_gpu.parse_steps("bench,pytest,correctness") == ["correctness", "pytest", "bench"]
    assert run_gpu.parse_steps("all") == list(run_gpu.STEPS)
    with pytest.raises(ValueError, match="bnech"):
        run_gpu.parse_steps("bench,bnech")
    with pytest.raises(ValueError):
        run_gpu.parse_steps(",")


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
    assert rec.failed() and not run_gpu.step_done(tmp_path / "demo.json")
    ok = run_gpu.run_step("fine", lambda rec, ctx: rec.add(check="b", passed=True), tmp_path,
                          META, None)
    assert not ok.failed() and run_gpu.step_done(tmp_path / "fine.json")
    assert all(r["commit"] == "c0ffee" and r["step"] == "fine" for r in ok.rows)


def test_guard_turns_an_exception_into_a_failed_row(tmp_path):
    rec = run_gpu.Recorder(tmp_path, "x", META)
    row = gpu_checks.guard(rec, lambda: 1 / 0, check="oracle", dtype="float32")
    assert row["passed"] is False and "ZeroDivisionError" in row["error"]


def test_tf32_tolerance_is_ten_times_the_per_product_bound():
    assert gpu_checks.TF32_TOLERANCE == pytest.approx(10 * 2 * 2.0 ** -10)


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
    """The GPU path of the pytest step stopped by SIGINT after 12 s (the three files take a
    minute): the step ends, says it was interrupted, keeps the counts so far, and fails."""
    args = run_gpu._args(["--out", str(tmp_path), "--pytest-timeout", "12",
                          "--pytest-workers", "0", "--pytest-args",
                          "tests/test_ops.py tests/test_nn.py tests/test_deform_conv_nd.py"])
    ctx = run_gpu.Context(None, args, ["pytest"])
    ctx.dry = False
    rec = run_gpu.run_step("pytest", gpu_checks.step_pytest, tmp_path, META, ctx)
    row = next(r for r in rec.rows if r.get("check") == "pytest")
    assert row["interrupted"] is True and row["passed"] is False and row["timeout_s"] == 12
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
    """The GPU path of the sanitizer step (plain run, then memcheck and racecheck side by
    side, logs parsed) with a stand-in for compute-sanitizer and the child on CPU."""
    _stand_in(tmp_path, monkeypatch, "compute-sanitizer", FAKE_SANITIZER)
    args = run_gpu._args(["--out", str(tmp_path), "--sanitizer-timeout", "120"])
    ctx = run_gpu.Context(None, args, ["sanitizer"])
    ctx.dry = False
    rec = run_gpu.run_step("sanitizer", gpu_tools.step_sanitizer, tmp_path, META, ctx)
    rows = {r.get("tool"): r for r in rec.rows}
    assert rows["none (plain run)"]["passed"] is True
    for tool in ("memcheck", "racecheck"):
        r = rows[tool]
        assert (r["exit_code"], r["errors"], r["child_ok"], r["passed"]) == (0, 0, True, True)
    assert not rec.failed()


FAKE_NCU = """import subprocess, sys
args = sys.argv[1:]
if "--import" in args:
    print('"ID","Kernel Name","Grid Size","Block Size","Section Name","Metric Name",'
          '"Metric Unit","Metric Value"')
    print('"0","_deform_conv2d_fwd_kernel","(1, 1, 1)","(128, 1, 1)","SOL","Duration",'
          '"us","3.5"')
    sys.exit(0)
report = args[args.index("--export") + 1] + ".ncu-rep"
r = subprocess.run(args[args.index("--export") + 2:])
open(report, "w").write("stand-in report")
sys.exit(r.returncode)
"""


@pytest.mark.slow
def test_ncu_step_plumbing_with_a_stand_in_tool(tmp_path, monkeypatch):
    _stand_in(tmp_path, monkeypatch, "ncu", FAKE_NCU)
    ctx = run_gpu.Context(None, run_gpu._args(["--out", str(tmp_path)]), ["ncu"])
    ctx.dry = False
    rec = run_gpu.run_step("ncu", gpu_tools.step_ncu, tmp_path, META, ctx)
    kernel = next(r for r in rec.rows if r.get("check") == "ncu_kernel")
    assert kernel["Duration [us]"] == "3.5"
    summary = next(r for r in rec.rows if r.get("check") == "ncu")
    assert summary["passed"] and summary["report"] == "ncu_bf16.ncu-rep"
    assert (tmp_path / "ncu_details.csv").read_text().startswith('"ID"')


def test_ncu_details_metrics():
    csv = ('"ID","Kernel Name","Grid Size","Block Size","Section Name","Metric Name",'
           '"Metric Unit","Metric Value"\n'
           '"0","_deform_conv2d_fwd_kernel","(10, 1, 1)","(128, 1, 1)","SOL",'
           '"Duration","us","12.5"\n'
           '"0","_deform_conv2d_fwd_kernel","(10, 1, 1)","(128, 1, 1)","SOL",'
           '"Ignored Metric","%","1"\n'
           '"1","_deform_conv2d_bwd_data_kernel","(9, 1, 1)","(128, 1, 1)","Occupancy",'
           '"Achieved Occupancy","%","40.1"\n')
    ks = gpu_tools.ncu_metrics(csv)
    assert [k["kernel"] for k in ks] == ["_deform_conv2d_fwd_kernel",
                                         "_deform_conv2d_bwd_data_kernel"]
    assert ks[0]["Duration [us]"] == "12.5" and "Ignored Metric [%]" not in ks[0]
    assert ks[1]["Achieved Occupancy [%]"] == "40.1"


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
    assert f32 == {(c, m) for c in gpu_bench.CONTENDERS for m in ("fwd", "fwd+bwd")}
    for r in timed:
        assert ("speedup_of_ours" in r) == (r["contender"] != "deformconv")
        assert r["tf32"] == "off" and r["version"]
    tv_bf16 = [r for r in rows if r["contender"] == "torchvision" and r["dtype"] == "bfloat16"]
    assert len(tv_bf16) == 1 and "no bfloat16" in tv_bf16[0]["skipped"]
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
    GPU, writes their files; table.py reads them (about 30 s)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, str(GPU / "run_gpu.py"), "--dry-run", "--steps",
                        "bench,compile,correctness", "--workers", "2", "--out", str(tmp_path)],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "compile.json",
                                                           "correctness.json"]
    checks = json.loads((tmp_path / "correctness.json").read_text())
    oracle = [r for r in checks if r.get("check") == "oracle"]
    assert {(r["backend"], r["dtype"], r["tf32"]) for r in oracle} == {
        (b, d, t) for b in ("triton", "torch") for d, t in (
            ("float32", "off"), ("float32", "on"), ("float16", "off"), ("bfloat16", "off"))}
    assert all(r["passed"] for r in oracle) and any(r["hostile"] for r in oracle)
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench[-1]["status"] == "done" and all(r["dry_run"] for r in bench)
    ours = [r for r in bench if r.get("contender") == "deformconv"]
    assert {(r["dtype"], r["mode"]) for r in ours} == {
        (d, m) for d in ("bfloat16", "float16", "float32") for m in ("fwd", "fwd+bwd")}
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
