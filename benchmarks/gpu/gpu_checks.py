"""The checks of ``run_gpu.py``: steps ``pytest``, ``correctness`` and ``compile``.

Every check is one row with ``check``, ``passed`` and what it measured; a check that raises
becomes a failed row with the error, and the step goes on with the next check.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

HOSTILE_VALUES = (float("nan"), float("inf"), -float("inf"), 1e30, -1e30)
# The correctness step's backend name for the N-D kernels' launchers at R=2 (the 2-D cases
# through ``gpu_bench.nd_r2_function``, the benchmark's contender ``deformconv_nd_r2``).
ND_R2 = "nd_r2"


def guard(rec, fn, **fields):
    """Run the check ``fn() -> dict``; its result (or the error) is one row."""
    t0 = time.perf_counter()
    try:
        res = fn()
    except Exception as e:  # noqa: BLE001 - a failed check, recorded; the step goes on
        res = {"passed": False, "error": f"{type(e).__name__}: {str(e)[:500]}"}
    row = rec.add(**fields, **res, seconds=round(time.perf_counter() - t0, 3))
    flag = {True: "ok", False: "FAILED", None: "-"}[row.get("passed")]
    desc = " ".join(str(v) for k, v in fields.items() if k != "check")
    detail = row.get("error") or row.get("skipped") or (
        f"max rel error {row['max_rel_error']:.2e} (tol {row['tolerance']:.1e})"
        if "max_rel_error" in row else "")
    print(f"{fields.get('check')} {desc}: {flag} {detail}", flush=True)
    return row


# --- step pytest -------------------------------------------------------------------------------

def pytest_command(dry: bool, junit: str, workers: str, targets: str = "tests") -> list:
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    if dry:  # the step's code path only: the interpreter suite would take minutes
        return base + ["tests/triton/test_dispatch.py::test_setting_precedence"]
    return base + ["-n", str(workers)] + shlex.split(targets)


def junit_summary(path) -> dict:
    """Counts per group (``triton``: tests/triton; ``cuda``: a ``cuda`` parameter elsewhere;
    ``other``), failures with their first message line, and the commonest skip reasons."""
    root = ET.parse(path).getroot()
    groups = {g: Counter() for g in ("triton", "cuda", "other")}
    failures, skips = [], Counter()
    for case in root.iter("testcase"):
        cls, name = case.get("classname", ""), case.get("name", "")
        group = ("triton" if ".triton." in f".{cls}." or cls.startswith("triton.") else
                 "cuda" if "cuda" in name else "other")
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "errors"
                msg = (child.get("message") or child.text or "").strip().splitlines()
                failures.append({"test": f"{cls}::{name}", "kind": child.tag,
                                 "message": (msg[0] if msg else "")[:300]})
            elif child.tag == "skipped":
                outcome = "skipped"
                skips[(child.get("message") or "")[:160]] += 1
        groups[group][outcome] += 1
    return {"groups": {g: dict(c) for g, c in groups.items()}, "failures": failures,
            "skip_reasons": skips.most_common(12)}


def step_pytest(rec, ctx):
    """The test suite on this machine, compiled on the GPU (tests/triton without the
    interpreter, and the device=cuda cases of tests/); counts per group from JUnit XML."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH"))
                                        if p)
    if ctx.dry:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)  # compiled kernels on the GPU
    with tempfile.TemporaryDirectory() as tmp:
        junit = os.path.join(tmp, "junit.xml")
        cmd = pytest_command(ctx.dry, junit, ctx.args.pytest_workers, ctx.args.pytest_args)
        print("+", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        interrupted = False
        # the time left, less what SIGINT, the summary and the JUnit file take
        limit = 600 if ctx.remaining() == float("inf") else max(20, int(ctx.remaining() - 25))
        try:
            out, _ = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            # SIGINT: pytest stops, prints its summary and writes the JUnit file so far.
            interrupted = True
            os.killpg(proc.pid, signal.SIGINT)
            try:
                out, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, _ = proc.communicate()
        tail = out.strip().splitlines()[-40:]
        print("\n".join(tail), flush=True)
        summary = (junit_summary(junit) if os.path.exists(junit) else
                   {"groups": {}, "failures": [], "skip_reasons": []})
    counts = Counter()
    for g, c in summary["groups"].items():
        counts.update(c)
        rec.add(check="pytest_group", group=g, **{f"n_{k}": v for k, v in c.items()})
    for f in summary["failures"][:100]:
        rec.add(check="pytest_failure", passed=False, **f)
    nfail = counts["failed"] + counts["errors"]
    rec.add(check="pytest", command=" ".join(cmd[1:]), exit_code=proc.returncode,
            interrupted=interrupted, timeout_s=limit,
            seconds=round(time.perf_counter() - t0, 1),
            **{f"n_{k}": v for k, v in counts.items()},
            skip_reasons=summary["skip_reasons"], last_line=tail[-1] if tail else "",
            passed=(proc.returncode == 0 and not interrupted and nfail == 0
                    and sum(counts.values()) > 0))


# --- step correctness --------------------------------------------------------------------------

@contextlib.contextmanager
def tf32(torch, on: bool):
    """cuDNN's TF32 flag (the one the kernels and conv2d follow) and the matmul flag (the
    pure-PyTorch path's products), restored afterwards."""
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _P(**kw):
    """A Problem with 2-pixel offsets and weights scaled to unit output variance."""
    from deformconv.testing import Problem
    kw.setdefault("offset_scale", 2.0)
    C, g = kw.get("C", 4), kw.get("groups", 1)
    k = kw.get("kernel", (3, 3))
    taps = 1
    for v in k:
        taps *= v
    return Problem(weight_scale=(C // g * taps) ** -0.5, **kw)


def oracle_cases(dry: bool) -> dict:
    """2-D: name -> (Problem, hostile offsets?). Each case is one compile specialisation of
    the kernels (the compiles dominate the step); ``hostile`` has the main benchmark shapes'
    specialisation (3x3, stride/padding/dilation 1, one group, channels multiples of 16), so
    it also compiles the kernels the benchmark steps then find in Triton's disk cache."""
    if dry:  # the script's code path: one- and two-tap kernels (interpreted 3x3 is slow)
        return {"groups2-og3": (_P(N=1, C=6, O=4, size=(3, 4), kernel=(1, 1), padding=0,
                                   groups=2, offset_groups=3), False),
                "hostile": (_P(N=1, C=2, O=2, size=(3, 4), kernel=(1, 2), padding=0), True),
                "batch0": (_P(N=0, C=4, O=4, size=(3, 4), kernel=(1, 1), padding=0), False)}
    return {
        # offset groups of 8 channels straddle conv groups of 12; C not a multiple of 16
        "groups2-og3": (_P(N=2, C=24, O=20, size=(11, 13), groups=2, offset_groups=3), False),
        # non-square kernel, stride, dilation and padding different in each direction
        "k3x2-stride-dil": (_P(N=2, C=32, O=16, size=(12, 9), kernel=(3, 2), stride=(2, 1),
                               padding=(1, 2), dilation=(2, 2)), False),
        # NaN, inf, 1e30 offsets at the benchmark's specialisation (C, O multiples of 16)
        "hostile": (_P(N=2, C=64, O=64, size=(9, 11), offset_scale=8.0), True),
        "batch0": (_P(N=0, C=16, O=8, size=(7, 8)), False),
    }


def nd_cases(dry: bool) -> dict:
    """1-D and 3-D: name -> (Problem, hostile offsets?)."""
    if dry:
        return {"1d-groups2-og3": (_P(N=1, C=6, O=4, size=(7,), kernel=(1,), padding=0,
                                      groups=2, offset_groups=3), False),
                "3d-hostile": (_P(N=1, C=2, O=2, size=(2, 3, 3), kernel=(1, 1, 2),
                                  padding=0), True)}
    return {
        "1d-groups2-og3-stride-dil": (_P(N=2, C=24, O=20, size=(29,), kernel=(3,), stride=2,
                                         padding=2, dilation=2, groups=2, offset_groups=3),
                                      False),
        # the 1-D and 3-D hostile cases have the benchmark's specialisations (kernel 3,
        # stride/dilation 1, padding 1, one group, channels multiples of 16)
        "1d-hostile": (_P(N=2, C=32, O=16, size=(23,), kernel=(3,), padding=1), True),
        "3d-k3x2x3-stride-dil": (_P(N=1, C=16, O=8, size=(5, 7, 6), kernel=(3, 2, 3),
                                    stride=(1, 2, 1), padding=(1, 1, 2), dilation=(1, 1, 2),
                                    offset_groups=2), False),
        "3d-hostile": (_P(N=1, C=16, O=16, size=(4, 5, 6), kernel=(3, 3, 3), padding=1), True),
    }


def poison(torch, p, t: dict, seed: int = 7):
    """Put NaN, +-inf and +-1e30 into ~15% of the (sample, tap, position) offsets of ``t`` (in
    place, one component each). Returns the boolean (N, G*K, *out) map of poisoned taps."""
    g = torch.Generator().manual_seed(seed)
    off = t["offset"]
    R = p.ndim
    N, rgk, *o = off.shape
    sel = torch.rand(N, rgk // R, *o, generator=g) < 0.15
    which = torch.randint(0, R, sel.shape, generator=g)
    vals = torch.tensor(HOSTILE_VALUES, dtype=torch.float64)[
        torch.randint(0, len(HOSTILE_VALUES), sel.shape, generator=g)]
    full = off.detach().cpu().double().view(N, rgk // R, R, *o)
    for comp in range(R):
        hit = sel & (which == comp)
        full[:, :, comp][hit] = vals[hit]
    with torch.no_grad():
        off.copy_(full.view_as(off).to(off.dtype))
    return sel


def compare_oracle(torch, p, dtype, dev, backend, hostile, tol, seed=0) -> dict:
    """Forward and every gradient of the registered op of ``p``'s dimension on ``backend``
    against the float64 oracle on the same rounded inputs. Hostile offsets: the oracle runs
    with the original offsets and the poisoned taps masked out (the convention: they
    contribute 0), and the mask gradient of a poisoned tap is 0."""
    import deformconv
    from deformconv import use_backend
    from deformconv.ops.deform_conv.reference import deform_conv_ref
    from deformconv.testing import outputs_and_grads

    fn = getattr(deformconv, f"deform_conv{p.ndim}d")
    if backend == ND_R2:  # the N-D kernels' launchers at R=2, the benchmark's contender
        import gpu_bench
        nd = gpu_bench.nd_r2_function()
        backend = "triton"

        def fn(x, off, w, b, mask, stride, padding, dilation):
            return nd(x, off, w, b, mask, stride, padding, dilation)
    t = p.tensors(dtype, dev, seed)
    go = p.grad_out(dtype, dev, seed + 1)
    t64 = {k: (v.detach().cpu().double() if v is not None else None) for k, v in t.items()}
    bad = None
    if hostile:
        bad = poison(torch, p, t)
        if t64["mask"] is None:
            raise ValueError("a hostile case needs a mask")
        t64["mask"] = t64["mask"].masked_fill(bad, 0.0)
    for v in t.values():
        if v is not None:
            v.requires_grad_()
    t64 = {k: (v.requires_grad_() if v is not None else None) for k, v in t64.items()}
    with use_backend(backend):
        got = outputs_and_grads(fn, p, t, go)
    want = outputs_and_grads(deform_conv_ref, p, t64, go.cpu().double())
    if bad is not None:
        want["mask"] = want["mask"].masked_fill(bad, 0.0)
    return _verdict(torch, got, want, {k: (dtype if k == "output" else t[k].dtype)
                                       for k in want}, dev, tol)


def _verdict(torch, got: dict, want: dict, dtypes: dict, dev, tol) -> dict:
    from deformconv.testing import relative_error
    errors, problems = {}, []
    for k, e in want.items():
        a = got[k]
        if tuple(a.shape) != tuple(e.shape):
            problems.append(f"{k}: shape {tuple(a.shape)} != {tuple(e.shape)}")
            continue
        if a.dtype != dtypes[k] or a.device.type != dev:
            problems.append(f"{k}: {a.dtype} on {a.device}, expected {dtypes[k]} on {dev}")
        finite = bool(torch.isfinite(a).all()) if a.numel() else True
        errors[k] = relative_error(a, e) if finite else float("inf")
        if not finite:
            problems.append(f"{k}: non-finite values")
    worst = max(errors.values()) if errors else float("inf")
    return {"errors": errors, "max_rel_error": worst, "tolerance": tol,
            "problems": problems, "passed": not problems and worst <= tol}


def compare_roi_oracle(torch, p, dtype, dev, tol, seed=0) -> dict:
    """Deformable RoI pooling (every kind of region of ``testing.ROI_KINDS``: tiny,
    degenerate, inverted, partly and wholly outside) forward, input and offset gradients
    against the float64 oracle."""
    from deformconv import deform_roi_pool
    from deformconv.ops.roi_pool.reference import deform_roi_pool_ref

    t = p.tensors(dtype, dev, seed, requires_grad=True)
    go = p.grad_out(dtype, dev, seed + 1)
    out = deform_roi_pool(t["input"], t["rois"], t["offset"], **p.kwargs())
    leaves = [t["input"]] + ([t["offset"]] if t["offset"] is not None else [])
    grads = torch.autograd.grad(out, leaves, go)
    got = {"output": out.detach(), "input": grads[0]}
    c = {k: (v.detach().cpu().double() if v is not None else None) for k, v in t.items()}
    ref, g_in, g_off = deform_roi_pool_ref(c["input"], c["rois"], c["offset"],
                                           grad_out=go.cpu().double(), **p.kwargs())
    want = {"output": ref, "input": g_in}
    if t["offset"] is not None:
        got["offset"], want["offset"] = grads[1], g_off
    return _verdict(torch, got, want, dict.fromkeys(want, dtype), dev, tol)


def roi_cases(dry: bool) -> dict:
    from deformconv.testing import RoIProblem
    if dry:
        return {"offsets": RoIProblem(N=1, C=2, H=4, W=5, R=7, output_size=(2, 2))}
    return {"offsets": RoIProblem(N=2, C=16, H=13, W=17, R=21, output_size=(3, 3)),
            "no-offset-sr2": RoIProblem(N=2, C=24, H=9, W=11, R=14, output_size=(2, 3),
                                        sampling_ratio=2, offset=False)}


DTYPES = ("bfloat16", "float16", "float32")  # float32 with TF32 off


class ListRecorder:
    """The rows of a worker process, sent back to the step's recorder."""

    def __init__(self):
        self.rows = []

    def add(self, **fields) -> dict:
        self.rows.append(fields)
        return fields


class WorkerContext:
    """What an operator module's ``correctness(rec, ctx)`` reads, in a worker process."""

    def __init__(self, torch, dry: bool, dtypes=None):
        self.torch, self.dry = torch, dry
        self.dev = "cpu" if dry else "cuda"
        self.reps = 1
        self.dtypes = tuple(dtypes) if dtypes else DTYPES


def _worker_setup(dry: bool):
    for p in (str(HERE), str(ROOT / "src")):
        if p not in sys.path:
            sys.path.insert(0, p)
    import torch
    if dry:  # CPU tensors through the Triton launchers, as in the parent
        from deformconv.ops import dispatch
        dispatch.set_backend("triton")
    return torch, "cpu" if dry else "cuda"


def oracle_task(backend: str, dname: str, cases: list, dry: bool) -> list:
    """The 2-D or N-D ``cases`` (names of :func:`oracle_cases` / :func:`nd_cases`) on one
    backend in one dtype, float32 with TF32 off."""
    torch, dev = _worker_setup(dry)
    from deformconv.testing import TOLERANCE

    rec = ListRecorder()
    dtype = getattr(torch, dname)
    table = {**oracle_cases(dry), **nd_cases(dry)}
    for name in cases:
        p, hostile = table[name]
        with tf32(torch, False):
            guard(rec, functools.partial(compare_oracle, torch, p, dtype, dev, backend,
                                         hostile, TOLERANCE[dtype]),
                  check="oracle", operator=f"deform_conv{p.ndim}d", backend=backend,
                  dtype=dname, tf32="off", case=name, problem=p.name, hostile=hostile)
    return rec.rows


def roi_task(dname: str, dry: bool) -> list:
    torch, dev = _worker_setup(dry)
    from deformconv.testing import TOLERANCE
    rec = ListRecorder()
    dtype = getattr(torch, dname)
    for name, p in roi_cases(dry).items():
        guard(rec, functools.partial(compare_roi_oracle, torch, p, dtype, dev,
                                     TOLERANCE[dtype]),
              check="oracle", operator="deform_roi_pool", backend="auto", dtype=dname,
              case=name)
    return rec.rows


def hostile_task(dry: bool) -> list:
    """``gpu_child``'s hostile checks in this process: the 2-D op with NaN/inf/1e30/3e38
    offsets and RoI pooling with hostile regions through the raw op; all finite, regions with
    a batch index out of range pool to 0 (command 2 runs the same under compute-sanitizer)."""
    torch, dev = _worker_setup(dry)
    import gpu_child
    rec = ListRecorder()

    def run():
        gpu_child.run_hostile(torch, dev)
        return {"passed": True}
    guard(rec, run, check="hostile", operator="deform_conv2d+deform_roi_pool")
    return rec.rows


def operator_task(op: str, dry: bool, dtype: str = None) -> list:
    """The ``correctness(rec, ctx)`` of an operator module of ``run_gpu.OPERATOR_MODULES``;
    ``ctx.dtypes`` is ``(dtype,)`` when given (a module with ``CORRECTNESS_BY_DTYPE = True``
    gets one task per dtype, so that its compiles spread over the workers)."""
    torch, dev = _worker_setup(dry)
    import run_gpu
    rec = ListRecorder()
    mod = run_gpu.operator_module(op)
    if mod is None:
        rec.add(check="oracle", operator=op, passed=None,
                skipped=f"skipped: {run_gpu.OPERATOR_MODULES[op]}.py is not in this tree")
        return rec.rows
    try:
        mod.correctness(rec, WorkerContext(torch, dry, (dtype,) if dtype else None))
    except Exception as e:  # noqa: BLE001 - a failed row; the other tasks go on
        rec.add(check="oracle", operator=op, passed=False,
                error=f"{type(e).__name__}: {str(e)[:500]}")
    for r in rec.rows:
        r.setdefault("operator", op)
    return rec.rows


# deformops' bfloat16 benchmark specialisations (its kernels specialise H, W and H*W on
# divisibility by 16: H*W a multiple of 16 as at 100x168 and 56x56, or not as at 50x84 and
# 25x42; channels multiples of 16, stride/padding/dilation 1).
DEFORMOPS_WARM_SHAPES = (((8, 64, 10, 24), 64), ((8, 64, 10, 10), 64))
DEFORMOPS_PARTS = 8


def deformops_warm_task(part: int, parts: int, dname: str, dry: bool) -> list:
    """Compile a ``part``-th share of deformops' autotuning configurations into Triton's disk
    cache (its autotuner compiles each of its 24 forward and 16 backward configurations one
    after the other on first use): the benchmark's autotuning then finds them compiled."""
    torch, dev = _worker_setup(dry)
    rec = ListRecorder()
    t0 = time.perf_counter()
    if dry:
        rec.add(check="deformops_warm", part=part, passed=None, skipped="skipped: dry run")
        return rec.rows
    try:
        import gpu_bench
        from deformops.backends.triton._kernels import conv_deform2d as k
        n = 0
        for tuner in (k._conv_forward_kernel, k._conv_backward_kernel):
            tuner.configs = tuner.configs[part::parts]
            n += len(tuner.configs)
        for shape, O in DEFORMOPS_WARM_SHAPES:
            p = gpu_bench.problem(shape, O)
            t = p.tensors(getattr(torch, dname), dev, 0)
            c = gpu_bench.Contender(torch, "deformops", t, p.grad_out(getattr(torch, dname),
                                                                       dev, 1), p.kwargs())
            c.fwd()
            c.fwd_bwd()
        torch.cuda.synchronize()
        rec.add(check="deformops_warm", part=part, configs=n, passed=None,
                seconds=round(time.perf_counter() - t0, 1))
    except Exception as e:  # noqa: BLE001 - the benchmark then compiles them itself
        rec.add(check="deformops_warm", part=part, passed=None,
                skipped=f"{type(e).__name__}: {str(e)[:300]}")
    return rec.rows


def correctness_tasks(dry: bool, operators=(), deformops_dtypes=("bfloat16",)) -> list:
    """``(function name, args)`` of the correctness step, the longest first (by their
    compiles: README.md "Estimates") so that the workers finish together: the hostile checks
    (two new 2-D specialisations in two dtypes, and RoI pooling), each operator module (one
    task per dtype where it asks for it), the 1-D/3-D cases per dtype, deformops'
    configurations in ``DEFORMOPS_PARTS`` shares, one task per 2-D case and dtype (each a
    compile specialisation), RoI pooling per dtype, and the pure-PyTorch path (2-D, float32)
    once, last."""
    import run_gpu
    dtypes = ("float32",) if dry else DTYPES
    tasks = [("hostile_task", (dry,))]
    for op in operators:
        mod = run_gpu.operator_module(op)
        if mod is not None and getattr(mod, "CORRECTNESS_BY_DTYPE", False) and not dry:
            tasks += [("operator_task", (op, dry, d)) for d in dtypes]
        else:
            tasks.append(("operator_task", (op, dry)))
    tasks += [("oracle_task", ("triton", d, list(nd_cases(dry)), dry)) for d in dtypes]
    # the N-D kernels at R=2 (the benchmark's contender): the 2-D cases that are one
    # specialisation each, hostile at the benchmark's (its kernels then come from the cache)
    tasks += [("oracle_task", (ND_R2, d, [n for n in oracle_cases(dry) if n != "batch0"], dry))
              for d in dtypes]
    tasks += [("deformops_warm_task", (i, DEFORMOPS_PARTS, d, dry))
              for d in deformops_dtypes for i in range(1 if dry else DEFORMOPS_PARTS)]
    for name in oracle_cases(dry):
        if name == "batch0":
            continue
        for d in dtypes:
            tasks.append(("oracle_task", ("triton", d, [name] + (["batch0"] if d == dtypes[0]
                                                                  else []), dry)))
    tasks += [("roi_task", (d, dry)) for d in dtypes]
    tasks.append(("oracle_task", ("torch", "float32", list(oracle_cases(dry)), dry)))
    return tasks


def step_correctness(rec, ctx):
    """Every task of :func:`correctness_tasks` in spawned worker processes (``--workers``),
    rows recorded as each task ends; tasks still pending when the step's share of the budget
    is spent are rows saying so."""
    import run_gpu
    tasks = correctness_tasks(ctx.dry, tuple(run_gpu.OPERATOR_MODULES), ctx.deformops_dtypes)
    run_step_tasks(rec, ctx, tasks, run_gpu.ESTIMATES["correctness"])


def run_step_tasks(rec, ctx, tasks, estimate: float) -> None:
    """``tasks`` (``(name, args)``, see :func:`run_task`) in ``--workers`` spawned processes,
    each task's rows recorded as it ends; what is pending after 1.5 x ``estimate`` seconds
    (or a minute before the budget ends) is a row saying so, and the workers are ended."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    workers = max(1, min(ctx.args.workers, len(tasks)))
    if workers > 1:
        try:
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        except (OSError, ImportError, NotImplementedError) as e:  # no semaphores, say
            print(f"no worker processes ({type(e).__name__}: {e}): tasks run in this process")
            workers = 1
    if workers == 1:  # in this process (the dry run's default: spawning costs seconds)
        for name, args in tasks:
            for r in run_task(name, args):
                rec.add(**r)
        return
    # The step may run past its estimate by half before what is left is given up.
    limit = (None if ctx.remaining() == float("inf") else
             max(10.0, min(ctx.remaining() - 60, 1.5 * estimate)))
    t0 = time.perf_counter()
    with pool as ex:
        futures = {ex.submit(run_task, name, args): (name, args) for name, args in tasks}
        pending = set(futures)
        while pending:
            left = None if limit is None else limit - (time.perf_counter() - t0)
            if left is not None and left <= 0:
                break
            done, pending = wait(pending, timeout=left, return_when=FIRST_COMPLETED)
            for f in done:
                name, args = futures[f]
                try:
                    rows = f.result()
                except Exception as e:  # noqa: BLE001 - a crashed worker: a failed row
                    rows = [{"check": name.replace("_task", ""), "task": list(args),
                             "passed": False, "error": f"{type(e).__name__}: {str(e)[:500]}"}]
                for r in rows:
                    rec.add(**r)
        for f in pending:
            name, args = futures[f]
            f.cancel()
            rec.add(check=name.replace("_task", ""), task=list(args), passed=False,
                    skipped=f"budget: not finished within {limit:.0f} s")
        if pending:
            for proc in list(getattr(ex, "_processes", {}).values()):
                proc.kill()  # the step's own workers only
            ex.shutdown(wait=False, cancel_futures=True)


def run_task(name: str, args) -> list:
    """Run the task function ``name`` of this module, or ``"module:function"``."""
    if ":" in name:
        import importlib
        mod, fn = name.split(":")
        return getattr(importlib.import_module(mod), fn)(*args)
    return globals()[name](*args)


# --- step compile ------------------------------------------------------------------------------

def _fwd_bwd(torch, fn, t, go, names):
    out = fn(*[t[k] for k in names])
    grads = torch.autograd.grad(out, [t[k] for k in names], go)
    return [out.detach(), *grads]


def _problem_for(ctx):
    from deformconv.testing import Problem
    if ctx.dry:
        return Problem(N=1, C=4, O=4, size=(3, 4), kernel=(1, 1), padding=0, offset_groups=2)
    return Problem(N=2, C=32, O=32, size=(20, 24), offset_groups=2, weight_scale=(32 * 9) ** -0.5)


NAMES = ("input", "offset", "weight", "bias", "mask")


def check_compile(torch, ctx, dtype) -> dict:
    """torch.compile(fullgraph=True) forward and backward against eager, same kernels."""
    from deformconv import deform_conv2d
    from deformconv.testing import TOLERANCE, relative_error

    p = _problem_for(ctx)
    kw = p.kwargs()

    def fn(x, off, w, b, m):
        return deform_conv2d(x, off, w, b, mask=m, **kw)
    backend = "aot_eager" if ctx.dry else "inductor"
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    t = p.tensors(dtype, ctx.dev, 0, requires_grad=True)
    go = p.grad_out(dtype, ctx.dev, 1)
    eager = _fwd_bwd(torch, fn, t, go, NAMES)
    comp = _fwd_bwd(torch, compiled, t, go, NAMES)
    # a second call (no recompile needed); the dry run's interpreter is too slow for it
    comp2 = [] if ctx.dry else _fwd_bwd(torch, compiled, t, go, NAMES)
    errors = {k: relative_error(c, e) for k, c, e in zip(("output",) + NAMES, comp, eager)}
    tol = TOLERANCE[dtype]  # same kernels; only the order of atomic adds may differ
    worst = max(errors.values())
    finite = all(bool(torch.isfinite(c).all()) for c in comp + comp2)
    return {"torch_compile_backend": backend, "errors": errors, "max_rel_error": worst,
            "tolerance": tol, "finite": finite, "passed": finite and worst <= tol}


def check_cuda_graph(torch, ctx, dtype) -> dict:
    """Warm up on a side stream, capture forward+backward in a CUDA graph, replay it on new
    input values copied into the static tensors, compare with eager on those values."""
    from deformconv import deform_conv2d
    from deformconv.testing import TOLERANCE, relative_error

    p = _problem_for(ctx)
    kw = p.kwargs()

    def fn(x, off, w, b, m):
        return deform_conv2d(x, off, w, b, mask=m, **kw)
    t = p.tensors(dtype, "cuda", 0, requires_grad=True)
    go = p.grad_out(dtype, "cuda", 1)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            _fwd_bwd(torch, fn, t, go, NAMES)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = _fwd_bwd(torch, fn, t, go, NAMES)
    fresh = p.tensors(dtype, "cuda", 5)
    results = []
    for src in (fresh, p.tensors(dtype, "cuda", 9)):
        with torch.no_grad():
            for k in NAMES:
                t[k].copy_(src[k])
        graph.replay()
        torch.cuda.synchronize()
        replayed = [v.clone() for v in static]
        eager = _fwd_bwd(torch, fn, {k: src[k].clone().requires_grad_() for k in NAMES}, go,
                         NAMES)
        results.append({k: relative_error(r, e)
                        for k, r, e in zip(("output",) + NAMES, replayed, eager)})
    worst = max(max(r.values()) for r in results)
    tol = TOLERANCE[dtype]
    return {"errors": results, "max_rel_error": worst, "tolerance": tol, "replays": 2,
            "passed": worst <= tol}


def check_deterministic(torch, ctx, dtype, backend) -> dict:
    """Under torch.use_deterministic_algorithms(True), two forward+backward runs on the same
    inputs are bitwise equal (output and all five gradients)."""
    from deformconv import deform_conv2d, use_backend

    p = _problem_for(ctx)
    kw = p.kwargs()

    def fn(x, off, w, b, m):
        return deform_conv2d(x, off, w, b, mask=m, **kw)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with use_backend(backend):
            runs = []
            for _ in range(2):
                t = p.tensors(dtype, ctx.dev, 0, requires_grad=True)
                runs.append(_fwd_bwd(torch, fn, t, p.grad_out(dtype, ctx.dev, 1), NAMES))
                if ctx.dev == "cuda":
                    torch.cuda.synchronize()
    finally:
        torch.use_deterministic_algorithms(was)
    same = {k: bool(torch.equal(a, b)) for k, a, b in zip(("output",) + NAMES, *runs)}
    return {"bitwise_equal": same, "passed": all(same.values())}


def step_compile(rec, ctx):
    """bfloat16 (float32 in the dry run): torch.compile(fullgraph=True) forward and backward,
    one CUDA-graph capture and two replays, deterministic mode on the Triton backend."""
    torch = ctx.torch
    with tf32(torch, False):
        dtype = torch.float32 if ctx.dry else torch.bfloat16
        d = str(dtype).replace("torch.", "")
        guard(rec, functools.partial(check_compile, torch, ctx, dtype), check="torch_compile",
              dtype=d, fullgraph=True)
        if ctx.dry:
            rec.add(check="cuda_graph", dtype=d, passed=None, skipped="skipped: dry run")
            print(f"cuda_graph {d}: skipped: dry run")
        else:
            guard(rec, functools.partial(check_cuda_graph, torch, ctx, dtype),
                  check="cuda_graph", dtype=d)
        guard(rec, functools.partial(check_deterministic, torch, ctx, dtype, "triton"),
              check="deterministic", dtype=d, backend="triton")
