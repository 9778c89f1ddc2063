"""One script for a GPU lease: check, sanitize, measure and profile the GPU path (issue 10).

    python benchmarks/gpu/run_gpu.py --steps STEP,STEP,... [--out DIR] [--reps 20]
    python benchmarks/gpu/run_gpu.py --dry-run --out DIR   # no GPU: interpreter, tiny shapes
    python benchmarks/gpu/table.py DIR                      # README table and goals from DIR

Steps (``--steps``, comma-separated, run in this order; default all; README.md next to this
file gives each one's method, its GPU-time estimate and the device commands that group them):

- ``correctness``: the registered op against the float64 oracle (Triton and pure-PyTorch
  kernels on CUDA; float32 with TF32 off and on, float16, bfloat16; forward and all five
  gradients; groups, straddling offset groups, stride, dilation, non-square kernels, batch 0,
  hostile offsets) and the autocast policy;
- ``compile``: ``torch.compile(fullgraph=True)`` forward and backward against eager, CUDA-graph
  capture and replay against eager, deterministic mode bitwise repeatable;
- ``pytest``: the whole test suite on the GPU machine, compiled (no interpreter): the Triton
  suite ``tests/triton`` on CUDA tensors and every ``device=cuda`` case of ``tests/``;
  pass/fail/skip counts per group;
- ``sanitizer``: compute-sanitizer memcheck and racecheck on forward+backward with hostile
  offsets and hostile regions of interest;
- ``bench``: the 2-D benchmark of the issue (six shapes, bfloat16/float16/float32, forward and
  forward+backward, peak memory; contenders cuDNN ``conv2d``, torchvision, deformops, ours);
- ``bench_nd``, ``bench_roi``: 1-D/3-D convolution and deformable RoI pooling on the GPU;
- ``msda``: multi-scale deformable attention (``gpu_ms_deform_attn.py``): the Triton kernels
  against the float64 oracle and the grid_sample formula, deterministic mode, and time and
  peak memory at Deformable DETR's encoder and decoder scales against the grid_sample
  fallback and deformops' MSDA;
- ``dcnv3``: DCNv3/DCNv4 against the float64 oracle and timed at InternImage-T's stage shapes
  (``gpu_dcnv3.py``);
- ``ncu``: Nsight Compute on one forward and one backward of ours, bfloat16, one main shape.

Each step writes ``STEP.json`` (a list of rows, rewritten as rows arrive, so a command cut
off at its time limit still leaves what it measured) under ``--out``; its last row has
``"status"`` (``done`` or ``error``) and the seconds it took. Every row carries the GPU, the
driver, the torch and Triton versions and the commit. The exit code is 1 when a check failed
or a step raised.
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
# Step name -> rough GPU-machine seconds on an H100 (Triton compiles included), for planning
# the device commands; README.md explains each estimate. The dry run takes seconds per step.
# The targeted checks come first, so the pytest step's Triton compiles hit the disk cache they
# filled, and a budget squeezes the broad suite rather than them.
STEPS = {"correctness": 150, "compile": 90, "pytest": 300, "sanitizer": 240, "bench": 240,
         "bench_nd": 90, "bench_roi": 60, "msda": 120, "dcnv3": 120, "ncu": 150}


def parse_steps(text: str) -> list:
    """``"a,b"`` -> the named steps in :data:`STEPS` order; ``"all"`` -> every step."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if names == ["all"]:
        return list(STEPS)
    unknown = [s for s in names if s not in STEPS]
    if unknown or not names:
        raise ValueError(f"--steps: unknown step(s) {unknown or text!r}; choose from "
                         f"{', '.join(STEPS)} or 'all'")
    return [s for s in STEPS if s in names]


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default="all",
                   help=f"comma-separated steps of {','.join(STEPS)}, or 'all' (default)")
    p.add_argument("--out", default=None,
                   help="folder for the STEP.json files (default: $OUT, else results/ next "
                        "to this script; a dry run without --out writes to a new temporary "
                        "folder, never into results/)")
    p.add_argument("--reps", type=int, default=20, help="timed repeats per contender (bench*)")
    p.add_argument("--commit", default=None,
                   help="commit to record (default: git rev-parse HEAD, else $GIT_COMMIT); the "
                        "GPU machine gets a copy of the tree without .git, so pass it there")
    p.add_argument("--pytest-timeout", type=int, default=330,
                   help="seconds before the pytest step is interrupted (its counts so far kept)")
    p.add_argument("--pytest-workers", default="12", help="pytest-xdist workers (-n)")
    p.add_argument("--pytest-args", default="tests",
                   help="what the pytest step runs (default: the whole suite, 'tests'); e.g. "
                        "'tests/triton tests -k cuda' when time is short")
    p.add_argument("--workers", type=int, default=None,
                   help="processes for the correctness step's tasks (default 10; dry run 1: "
                        "in this process)")
    p.add_argument("--sanitizer-timeout", type=int, default=240,
                   help="seconds per compute-sanitizer run")
    p.add_argument("--ncu-set", default="full",
                   help="Nsight Compute section set (full, detailed, basic)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds this command may take: a step whose estimate no longer fits "
                        "is skipped with a row saying so; the pytest step's timeout and the "
                        "benchmark's shape loop shrink to fit")
    p.add_argument("--skip-done", action="store_true",
                   help="skip a step whose STEP.json under --out already ends with status done")
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


class Recorder:
    """Collects one step's rows and rewrites ``OUT/STEP.json`` after each one."""

    def __init__(self, out: Path, step: str, meta: dict):
        self.path = Path(out) / f"{step}.json"
        self.step, self.meta, self.rows = step, meta, []

    def add(self, **fields) -> dict:
        row = {**self.meta, "step": self.step, **fields}
        self.rows.append(row)
        self.flush()
        return row

    def flush(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.rows, indent=1, default=str))
        tmp.replace(self.path)

    def failed(self) -> bool:
        return any(r.get("passed") is False or r.get("status") == "error" for r in self.rows)


def step_done(path: Path) -> bool:
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return bool(rows) and rows[-1].get("status") == "done"


def run_step(name, fn, out, meta, ctx) -> Recorder:
    """Run ``fn(rec, ctx)``; an exception becomes an ``error`` status row, never a crash."""
    rec = Recorder(out, name, meta)
    t0 = time.perf_counter()
    print(f"=== step {name}", flush=True)
    try:
        fn(rec, ctx)
        status, err = "done", None
    except Exception as e:  # noqa: BLE001 - recorded; the next step still runs
        status, err = "error", f"{type(e).__name__}: {e}"
        traceback.print_exc()
    seconds = time.perf_counter() - t0
    rec.add(status=status, seconds=round(seconds, 2), rows=len(rec.rows),
            **({"error": err} if err else {}))
    print(f"=== step {name}: {status} in {seconds:.1f} s, {len(rec.rows) - 1} rows"
          + (" (failures)" if rec.failed() else ""), flush=True)
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

    def remaining(self) -> float:
        """Seconds left of ``--budget`` (infinite without one)."""
        b = getattr(self.args, "budget", None)
        return float("inf") if b is None else b - (time.perf_counter() - self.start)

    def reserve_after(self, step: str) -> float:
        """The estimated seconds of the steps after ``step`` in this command."""
        later = self.steps[self.steps.index(step) + 1:] if step in self.steps else []
        return 0.0 if self.dry else float(sum(STEPS[s] for s in later))


def step_functions() -> dict:
    import gpu_bench as bench
    import gpu_checks as checks
    import gpu_dcnv3
    import gpu_ms_deform_attn as msda
    import gpu_tools as tools
    return {"pytest": checks.step_pytest, "correctness": checks.step_correctness,
            "compile": checks.step_compile, "sanitizer": tools.step_sanitizer,
            "bench": bench.step_bench, "bench_nd": bench.step_bench_nd,
            "bench_roi": bench.step_bench_roi, "msda": msda.step_msda,
            "dcnv3": gpu_dcnv3.step_dcnv3, "ncu": tools.step_ncu}


def main(argv=None):
    a = _args(argv)
    try:
        steps = parse_steps(a.steps)
    except ValueError as e:
        sys.exit(str(e))
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
    if a.workers is None:
        a.workers = 1 if a.dry_run else 10
    ctx = Context(torch, a, steps)
    fns = step_functions()
    failed = []
    t0 = time.perf_counter()
    for name in steps:
        if a.skip_done and step_done(out / f"{name}.json"):
            print(f"=== step {name}: already done in {out}, skipped")
            continue
        if not a.dry_run and ctx.remaining() < min(STEPS[name], 60):
            rec = Recorder(out, name, m)
            rec.add(status="skipped", reason=f"budget: {ctx.remaining():.0f} s left, step "
                                             f"estimated at {STEPS[name]} s")
            print(f"=== step {name}: skipped, {ctx.remaining():.0f} s of the budget left")
            failed.append(name)
            continue
        if run_step(name, fns[name], out, m, ctx).failed():
            failed.append(name)
    print(f"steps {','.join(steps)} in {time.perf_counter() - t0:.1f} s; results in {out}"
          + (f"; FAILED: {','.join(failed)}" if failed else "; no failure"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
