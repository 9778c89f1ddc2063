"""Step ``sanitizer`` of ``run_gpu.py``: compute-sanitizer memcheck around ``gpu_child.py
hostile`` (forward+backward with hostile offsets and hostile regions of interest)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CHILD = HERE / "gpu_child.py"
CHILD_DEVICE = "cuda"  # the tests point it at "cpu" to run the plumbing without a GPU
SANITIZER_TOOLS = ("memcheck",)


def find_tool(name: str):
    """``name`` on PATH, else in ``$CUDA_HOME/bin`` or a folder of ``$DEFORMCONV_TOOL_DIRS``
    (``os.pathsep``-separated), else None."""
    dirs = [os.path.join(os.environ["CUDA_HOME"], "bin")] if os.environ.get("CUDA_HOME") else []
    dirs += [d for d in os.environ.get("DEFORMCONV_TOOL_DIRS", "").split(os.pathsep) if d]
    hit = shutil.which(name)
    if hit or not dirs:
        return hit
    return shutil.which(name, path=os.pathsep.join(dirs))


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH"))
                                        if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def sanitizer_command(tool_path: str, tool: str) -> list:
    return [tool_path, "--tool", tool, "--error-exitcode", "2", "--print-limit", "30",
            sys.executable, str(CHILD), "hostile", "--device", CHILD_DEVICE]


def sanitizer_errors(text: str):
    """The error count compute-sanitizer printed (memcheck: 'ERROR SUMMARY: N errors';
    racecheck: 'RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)'), else None."""
    m = re.search(r"RACECHECK SUMMARY: \d+ hazards? displayed \((\d+) errors?", text)
    if m:
        return int(m.group(1))
    m = re.search(r"ERROR SUMMARY: (\d+) errors?", text)
    return int(m.group(1)) if m else None


def step_sanitizer(rec, ctx):
    """memcheck on ``gpu_child.py hostile`` (after a plain run that fills Triton's disk
    cache and gives the child's verdict without the tool): exit code, error count, the
    child's verdict; the pytest step after it gets the time left.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that stray accesses are not hidden inside the caching
    allocator's blocks. Zero errors and a passing child required."""
    torch = ctx.torch
    if ctx.dry:
        import gpu_child as child
        verdict = "ok"
        try:
            child.run_hostile(torch, "cpu")
        except AssertionError as e:
            verdict = f"FAILED: {e}"
        for tool in SANITIZER_TOOLS:
            rec.add(check="sanitizer", tool=tool, passed=None if verdict == "ok" else False,
                    skipped="skipped: dry run (the hostile checks ran in-process on CPU "
                            f"without compute-sanitizer: {verdict})",
                    command=" ".join(sanitizer_command("compute-sanitizer", tool)))
        print(f"sanitizer: skipped: dry run; hostile checks in-process: {verdict}")
        return
    path = find_tool("compute-sanitizer")
    env = _child_env()
    env["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"
    if path is None:
        r = subprocess.run([sys.executable, str(CHILD), "hostile"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=ctx.args.sanitizer_timeout)
        rec.add(check="sanitizer", tool="none", passed=None, exit_code=r.returncode,
                skipped="compute-sanitizer not found: hostile checks ran plainly",
                child_ok="hostile: ok" in r.stdout, tail=(r.stdout + r.stderr)[-1500:])
        return
    # A plain run first: the child's verdict without a tool, and the Triton compiles and
    # autotuning done (disk cache) before the tools slow every kernel down.
    plain = [sys.executable, str(CHILD), "hostile", "--device", CHILD_DEVICE]
    r = subprocess.run(plain, env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=max(60, min(ctx.args.sanitizer_timeout, ctx.remaining() - 60)))
    rec.add(check="sanitizer", tool="none (plain run)", exit_code=r.returncode,
            child_ok="hostile: ok" in r.stdout, passed=r.returncode == 0,
            tail=(r.stdout + r.stderr)[-1500:])
    print(f"hostile checks without a tool: exit {r.returncode}", flush=True)
    # at least a minute of the budget is left for the pytest step after this one
    limit = max(60, min(ctx.args.sanitizer_timeout, ctx.remaining() - 60))
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tool in SANITIZER_TOOLS:
            cmd = sanitizer_command(path, tool)
            print("+", " ".join(cmd), flush=True)
            log = open(os.path.join(tmp, f"{tool}.log"), "w+")
            runs[tool] = (cmd, log, subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log,
                                                     stderr=subprocess.STDOUT,
                                                     start_new_session=True))
        t0 = time.perf_counter()
        for tool, (cmd, log, proc) in runs.items():
            try:
                code, timed_out = proc.wait(max(1, limit - (time.perf_counter() - t0))), False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code, timed_out = None, True
            log.seek(0)
            text = log.read()
            log.close()
            errors = sanitizer_errors(text)
            child_ok = "hostile: ok" in text
            rec.add(check="sanitizer", tool=tool, exit_code=code, errors=errors,
                    child_ok=child_ok, timed_out=timed_out, timeout_s=round(limit),
                    command=" ".join(cmd), passed=(code == 0 and errors == 0 and child_ok),
                    tail=text[-3000:])
            print(f"sanitizer {tool}: exit {code}, errors {errors}, child ok {child_ok}"
                  + (" (timed out)" if timed_out else ""), flush=True)
