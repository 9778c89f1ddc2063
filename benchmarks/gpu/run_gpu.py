"""One script for a GPU lease of 15 minutes: check, measure, then test, in two commands.

    python benchmarks/gpu/run_gpu.py --budget 420 [--out DIR]            # first command
    python benchmarks/gpu/run_gpu.py --command 2 --budget 330 [--out DIR] # second, if time
    python benchmarks/gpu/run_gpu.py --dry-run [--command 1|2] [--out DIR] # no GPU
    python benchmarks/gpu/run_gpu.py --plan [--command 1|2]               # the steps, in order
    python benchmarks/gpu/table.py DIR                                     # README tables

Command 1 runs its steps in this order (:data:`PLANS`), most important first, so that a budget
that runs out cuts the least important ones:

1. ``correctness``: every operator (2-D, 1-D/3-D, RoI pooling, and each operator module of
   :data:`OPERATOR_MODULES` present) compiled on the GPU against its float64 oracle, forward
   and every gradient, float32 (TF32 off), float16, bfloat16, on a handful of cases (groups
   straddling offset groups, stride, dilation, non-square kernels, NaN/inf/1e30 offsets); the
   pure-PyTorch 2-D path on CUDA once. Sub-tasks run in spawned worker processes, so the
   Triton compiles overlap; deformops' autotuning configurations are compiled there too;
2. ``bench_bf16``, ``bench_fp16``, ``bench_fp32``: the four main 2-D shapes, forward and
   forward+backward and peak memory, against cuDNN ``conv2d``, torchvision (in float16
   beside the bfloat16 runs: it has no bfloat16 kernel), deformops 3.0.1 (bfloat16) and the
   N-D kernel family at R=2;
   ``bench_small`` (the small FPN maps), ``bench_nd`` (1-D/3-D), ``bench_roi`` (RoI pooling),
   then each operator module's timing (``bench_<op>``);
3. ``compile``: ``torch.compile(fullgraph=True)`` forward and backward, one CUDA-graph capture
   and replay, deterministic mode.

Command 2: ``sanitizer`` (compute-sanitizer memcheck on forward+backward with hostile offsets
and hostile regions of interest), then ``pytest`` (the compiled suite) for the time left.

Rows are JSON, one file per phase (``correctness.json``, ``bench.json``, ``compile.json``;
``sanitizer.json``, ``pytest.json``: the GPU tool returns at most 8 files), rewritten after
every row so that a command cut off at its limit still leaves what it measured. Every row
carries ``step``, the GPU name, the driver, the torch and Triton versions and the commit;
every timing row has ``shape, contender, dtype, mode, median_ms, ratio_to_conv2d,
peak_ratio_to_conv2d`` (None where they do not apply) and, on every contender's row but
ours, ``speedup_of_ours``. A step whose estimate (:data:`ESTIMATES`, from Triton compile times
measured offline, see README.md) no longer fits in ``--budget`` is a row saying so. The exit
code is 1 when a check failed, a step raised or was skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

# Operator modules next to this file that plug into both phases: each defines
# ``correctness(rec, ctx)`` and ``timing(rec, ctx)``; a module that is not there is a row
# saying so. Adding an operator is one line here (its estimates: ESTIMATES).
OPERATOR_MODULES = {"dcnv3": "gpu_dcnv3", "msda": "gpu_ms_deform_attn"}

# Step -> estimated GPU-machine seconds (Triton compiles included), which --budget plans with.
# Compiles: results/compile_seconds_sm90a.json (compile_times.py, offline for sm_90a) measured
# a median of 1.8-2.8 s per 2-D or N-D kernel configuration, 0.6-1.4 s for RoI pooling, DCNv3
# and MSDA, on a loaded 2-core machine (an upper bound for the GPU machine's 16 cores).
# Autotuning: ~0.2 s per configuration and key (Triton's 25 + 100 ms benchmark). README.md
# "Estimates" gives each step's arithmetic.
STARTUP_S = 15  # python, torch, CUDA's start, before the first step
ESTIMATES = {
    "correctness": 90, "bench_bf16": 65, "bench_fp16": 30, "bench_fp32": 30,
    "bench_small": 20, "bench_nd": 20, "bench_roi": 20, "bench_dcnv3": 30, "bench_msda": 25,
    "compile": 45, "sanitizer": 150, "pytest": 120,
}
PLANS = {
    1: ["correctness", "bench_bf16", "bench_fp16", "bench_fp32", "bench_small", "bench_nd",
        "bench_roi", *(f"bench_{op}" for op in OPERATOR_MODULES), "compile"],
    2: ["sanitizer", "pytest"],
}
# The file each step's rows go to (a phase).
PHASE = {s: ("bench" if s.startswith("bench") else s) for p in PLANS.values() for s in p}
# Every row with a ``contender`` has these keys (None where one does not apply).
TIMING_KEYS = ("step", "gpu", "shape", "contender", "dtype", "mode", "median_ms",
               "ratio_to_conv2d", "peak_ratio_to_conv2d")
OURS = "deformconv"


def parse_steps(text: str, command: int = 1) -> list:
    """``"a,b"`` -> the named steps in the order of :data:`PLANS` (``command``'s plan first,
    then the other's); ``"all"`` -> ``command``'s plan."""
    order = PLANS[command] + [s for c, p in PLANS.items() if c != command for s in p]
    names = [s.strip() for s in text.split(",") if s.strip()]
    if names == ["all"]:
        return list(PLANS[command])
    unknown = [s for s in names if s not in order]
    if unknown or not names:
        raise ValueError(f"--steps: unknown step(s) {unknown or text!r}; choose from "
                         f"{', '.join(order)} or 'all'")
    return [s for s in order if s in names]


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--command", type=int, choices=sorted(PLANS), default=1,
                   help="which device command's plan to run (default 1)")
    p.add_argument("--steps", default="all",
                   help="comma-separated steps (see --plan), or 'all' (default): the "
                        "command's plan")
    p.add_argument("--plan", action="store_true",
                   help="print the steps in order with their estimates, and exit")
    p.add_argument("--out", default=None,
                   help="folder for the row files (default: $OUT, else results/ next to "
                        "this script; a dry run without --out writes to a new temporary "
                        "folder, never into results/)")
    p.add_argument("--reps", type=int, default=15, help="timed repeats per contender")
    p.add_argument("--commit", default=None,
                   help="commit to record (default: git rev-parse HEAD, else $GIT_COMMIT); the "
                        "GPU machine gets a copy of the tree without .git, so pass it there")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds this command may take: a step (or a shape) whose estimate "
                        "no longer fits is a row saying so; pytest gets what is left")
    p.add_argument("--workers", type=int, default=None,
                   help="processes of the correctness step (default 12; dry run 1: in this "
                        "process)")
    p.add_argument("--deformops-dtypes", default="bfloat16",
                   help="dtypes in which deformops runs (its autotuner compiles 40 "
                        "configurations per dtype; default bfloat16, where its goals are)")
    p.add_argument("--pytest-workers", default="12", help="pytest-xdist workers (-n)")
    p.add_argument("--pytest-args", default="tests/triton tests",
                   help="what the pytest step runs (default: the Triton suite first, then "
                        "the rest)")
    p.add_argument("--sanitizer-timeout", type=int, default=200,
                   help="seconds for the compute-sanitizer run")
    p.add_argument("--dry-run", action="store_true",
                   help="no GPU: every step on CPU, kernels in the Triton interpreter, tiny "
                        "shapes (steps that need CUDA-only tools record 'skipped: dry run')")
    return p.parse_args(argv)


def _run(cmd, **kw) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True,
                              timeout=30, **kw).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def meta(torch, commit=None, dry_run=False) -> dict:
    """The fields every row carries."""
    commit = (commit or _run(["git", "rev-parse", "HEAD"], cwd=ROOT)
              or os.environ.get("GIT_COMMIT") or "unknown")
    try:
        import triton
        tv = triton.__version__
    except ImportError:
        tv = "not installed"
    if torch.cuda.is_available() and not dry_run:
        gpu = torch.cuda.get_device_name()
        driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        driver = driver.splitlines()[0] if driver else "unknown"
    else:
        gpu, driver = "cpu (dry run)", "none"
    return {"gpu": gpu, "driver": driver, "torch": torch.__version__, "triton": tv,
            "commit": commit, "dry_run": dry_run}


class RowFile:
    """The rows of one phase, rewritten to ``OUT/PHASE.json`` after each row (atomically)."""

    def __init__(self, path: Path):
        self.path, self.rows = Path(path), []

    def flush(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.rows, indent=1, default=str))
        tmp.replace(self.path)


class Recorder:
    """One step's rows, appended to its phase's :class:`RowFile` (``OUT/STEP.json`` when no
    file is given) and on disk after each one."""

    def __init__(self, out: Path, step: str, meta: dict, file: RowFile = None):
        self.file = file or RowFile(Path(out) / f"{step}.json")
        self.path = self.file.path
        self.step, self.meta, self.rows = step, meta, []

    def add(self, **fields) -> dict:
        row = {**self.meta, "step": self.step, **fields}
        if row.get("contender") is not None:
            row = {**dict.fromkeys(TIMING_KEYS), **row}
        self.rows.append(row)
        self.file.rows.append(row)
        self.file.flush()
        return row

    def finish(self) -> None:
        """``speedup_of_ours`` on every other contender's timing row (its median / ours at the
        same shape, dtype, mode and scale) where the step did not set it."""
        ours = {_match_key(r): r["median_ms"] for r in self.rows if _ours(r)
                and r.get("median_ms")}
        for r in self.rows:
            if r.get("contender") is None or _ours(r) or "speedup_of_ours" in r:
                continue
            mine = ours.get(_match_key(r))
            r["speedup_of_ours"] = (r["median_ms"] / mine if mine and r.get("median_ms")
                                    else None)
        self.file.flush()

    def failed(self) -> bool:
        return any(r.get("passed") is False or r.get("status") in ("error", "skipped")
                   for r in self.rows)


def _ours(r: dict) -> bool:
    """A timing row of this library's operator (``contender`` deformconv, or ``ours``)."""
    return r.get("contender") == OURS or r.get("ours") is True


def _match_key(r: dict) -> tuple:
    return tuple(str(r.get(k)) for k in ("shape", "dtype", "mode", "scale", "queries",
                                         "sampling_ratio"))


def run_step(name, fn, out, meta, ctx, file: RowFile = None) -> Recorder:
    """Run ``fn(rec, ctx)``; an exception becomes an ``error`` status row, never a crash."""
    rec = Recorder(out, name, meta, file)
    t0 = time.perf_counter()
    print(f"=== step {name}", flush=True)
    try:
        fn(rec, ctx)
        status, err = "done", None
    except Exception as e:  # noqa: BLE001 - recorded; the next step still runs
        status, err = "error", f"{type(e).__name__}: {e}"
        traceback.print_exc()
    rec.finish()
    seconds = time.perf_counter() - t0
    est = ESTIMATES.get(name)
    rec.add(status=status, seconds=round(seconds, 2), rows=len(rec.rows),
            **({"estimate_s": est} if est else {}), **({"error": err} if err else {}))
    print(f"=== step {name}: {status} in {seconds:.1f} s (estimate {est} s), "
          f"{len(rec.rows) - 1} rows" + (" (failures)" if rec.failed() else ""), flush=True)
    return rec


class Context:
    """What every step needs: torch, the device, the options, the time left."""

    def __init__(self, torch, args, steps=()):
        self.torch, self.args = torch, args
        self.dry = args.dry_run
        self.dev = "cpu" if args.dry_run else "cuda"
        self.reps = 1 if args.dry_run else args.reps
        self.start = time.perf_counter()
        self.steps = list(steps)
        self.deformops_dtypes = tuple(d.strip() for d in
                                      getattr(args, "deformops_dtypes", "bfloat16").split(",")
                                      if d.strip())

    def remaining(self) -> float:
        """Seconds left of ``--budget`` (infinite without one)."""
        b = getattr(self.args, "budget", None)
        return float("inf") if b is None else b - (time.perf_counter() - self.start)

    def fits(self, seconds: float) -> bool:
        """Whether ``seconds`` more fit in the budget (always in a dry run)."""
        return self.dry or self.remaining() >= seconds


def operator_module(op: str):
    """The module of :data:`OPERATOR_MODULES` for ``op``, or None when it is not there."""
    import importlib
    import importlib.util
    name = OPERATOR_MODULES[op]
    if importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name)


def _operator_timing(op):
    def step(rec, ctx):
        mod = operator_module(op)
        if mod is None:
            rec.add(check="timing", operator=op, passed=None,
                    skipped=f"skipped: {OPERATOR_MODULES[op]}.py is not in this tree")
            return
        mod.timing(rec, ctx)
    return step


def step_functions() -> dict:
    import gpu_bench as bench
    import gpu_checks as checks
    import gpu_tools as tools
    fns = {"correctness": checks.step_correctness, "compile": checks.step_compile,
           "bench_bf16": bench.step_bench_bf16, "bench_fp16": bench.step_bench_fp16,
           "bench_fp32": bench.step_bench_fp32, "bench_small": bench.step_bench_small,
           "bench_nd": bench.step_bench_nd, "bench_roi": bench.step_bench_roi,
           "sanitizer": tools.step_sanitizer, "pytest": checks.step_pytest}
    fns.update({f"bench_{op}": _operator_timing(op) for op in OPERATOR_MODULES})
    return fns


def plan_text(steps) -> str:
    lines, total = [f"{'start':14s} {STARTUP_S:4d} s"], STARTUP_S
    for s in steps:
        total += ESTIMATES[s]
        lines.append(f"{s:14s} {ESTIMATES[s]:4d} s  (cumulative {total:4d} s) -> "
                     f"{PHASE[s]}.json")
    return "\n".join(lines)


def main(argv=None):
    started = time.perf_counter()  # the budget counts the imports and CUDA's start too
    a = _args(argv)
    try:
        steps = parse_steps(a.steps, a.command)
    except ValueError as e:
        sys.exit(str(e))
    if a.plan:
        print(plan_text(steps))
        return 0
    if a.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton or the kernels are imported
    # Deterministic mode (step compile) needs this before cuBLAS starts; harmless otherwise.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    for p in (str(HERE), str(ROOT / "src")):
        if p not in sys.path:
            sys.path.insert(0, p)
    import torch
    if a.dry_run:
        # CPU tensors through the Triton launchers, interpreted: the GPU run's code path.
        from deformconv.ops import dispatch
        dispatch.set_backend("triton")
    elif not torch.cuda.is_available():
        sys.exit("no CUDA GPU: run on a GPU, or pass --dry-run")
    if a.out is None:
        a.out = (tempfile.mkdtemp(prefix="deformconv-gpu-dry-") if a.dry_run
                 else os.environ.get("OUT") or str(HERE / "results"))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    m = meta(torch, a.commit, a.dry_run)
    print(json.dumps(m), flush=True)
    print(plan_text(steps), flush=True)
    if a.workers is None:
        a.workers = 1 if a.dry_run else 12
    ctx = Context(torch, a, steps)
    ctx.start = started
    failed = run_plan(steps, step_functions(), out, m, ctx)
    return 1 if failed else 0


def run_plan(steps, fns, out, meta, ctx) -> list:
    """Run ``steps`` in order, each one's rows into its phase's file under ``out``; a step
    whose estimate no longer fits the budget is a ``skipped`` row (the later, smaller ones
    still run if they fit). Returns the steps that failed, raised or were skipped."""
    out = Path(out)
    files, failed = {}, []
    t0 = time.perf_counter()
    for name in steps:
        phase = PHASE[name]
        if phase not in files:
            files[phase] = RowFile(out / f"{phase}.json")
        if not ctx.fits(ESTIMATES[name]):
            rec = Recorder(out, name, meta, files[phase])
            rec.add(status="skipped", estimate_s=ESTIMATES[name],
                    reason=f"budget: {ctx.remaining():.0f} s left, step estimated at "
                           f"{ESTIMATES[name]} s")
            print(f"=== step {name}: skipped, {ctx.remaining():.0f} s of the budget left "
                  f"(estimate {ESTIMATES[name]} s)", flush=True)
            failed.append(name)
            continue
        if run_step(name, fns[name], out, meta, ctx, files[phase]).failed():
            failed.append(name)
    print(f"steps {','.join(steps)} in {time.perf_counter() - t0:.1f} s; results in {out}"
          + (f"; FAILED or skipped: {','.join(failed)}" if failed else "; no failure"),
          flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())
