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

# TF32 keeps 10 explicit mantissa bits. Converting a float32 operand costs at most u = 2**-11
# relative when it is rounded to nearest (cuDNN, cvt.rna) and u = 2**-10 when the tensor cores
# simply drop the low 13 bits of a float32 register (what a Triton tf32 dot may do), so a
# product is off by at most 2u + u**2 <= 1.95e-3 (float32 accumulation adds ~1e-7). Allowed:
# 10x that worst per-product bound, as TOLERANCE allows ~10x the measured error for the other
# dtypes. The error is relative to max(1, max |expected|): rounding errors of random sign over
# the C*K terms of a dot grow like sqrt(C*K), as the dot does, and truncation's bias (toward
# zero) scales the result by at most (1 - 2u), so one product's bound holds for the sum.
TF32_TOLERANCE = 10 * 2 * 2.0 ** -10          # 1.95e-2
HOSTILE_VALUES = (float("nan"), float("inf"), -float("inf"), 1e30, -1e30)


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
        limit = ctx.args.pytest_timeout
        if ctx.remaining() != float("inf"):  # leave the later steps their estimated time
            limit = max(60, min(limit, ctx.remaining() - ctx.reserve_after("pytest") - 30))
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


def oracle_cases(dry: bool) -> dict:
    """name -> (Problem, hostile offsets?). Weights scaled to unit output variance."""
    from deformconv.testing import Problem

    def P(**kw):
        kw.setdefault("offset_scale", 2.0)
        C, g, k = kw.get("C", 4), kw.get("groups", 1), kw.get("kernel", (3, 3))
        return Problem(weight_scale=(C // g * k[0] * k[1]) ** -0.5, **kw)
    if dry:  # the script's code path: one- and two-tap kernels (interpreted 3x3 is slow)
        return {"groups2-og3": (P(N=1, C=6, O=4, size=(3, 4), kernel=(1, 1), padding=0,
                                  groups=2, offset_groups=3), False),
                "hostile": (P(N=1, C=2, O=2, size=(3, 4), kernel=(1, 2), padding=0), True),
                "batch0": (P(N=0, C=4, O=4, size=(3, 4), kernel=(1, 1), padding=0), False)}
    return {
        # offset groups of 8 channels straddle conv groups of 12; C not a multiple of 16
        "groups2-og3": (P(N=2, C=24, O=20, size=(11, 13), groups=2, offset_groups=3), False),
        "stride2-dil2": (P(N=1, C=64, O=48, size=(9, 10), stride=2, dilation=2, padding=1),
                         False),
        "kernel3x2-asym": (P(N=2, C=32, O=16, size=(12, 9), kernel=(3, 2), stride=(2, 1),
                             padding=(1, 2), dilation=(1, 2)), False),
        "kernel5x3-depthwise": (P(N=1, C=16, O=32, size=(10, 8), kernel=(5, 3),
                                  padding=(2, 1), groups=16, offset_groups=4), False),
        "v1-nomask-nobias": (P(N=2, C=20, O=12, size=(7, 9), mask=False, bias=False), False),
        "batch0": (P(N=0, C=16, O=8, size=(7, 8)), False),
        "hostile": (P(N=2, C=32, O=24, size=(9, 11), offset_groups=2), True),
        "big-offsets": (P(N=2, C=16, O=16, size=(8, 8), offset_scale=8.0), False),
    }


def poison(torch, p, t: dict, seed: int = 7):
    """Put NaN, +-inf and +-1e30 into ~15% of the (sample, tap, position) offsets of ``t`` (in
    place, one of dy or dx each). Returns the boolean (N, G*K, oH, oW) map of poisoned taps."""
    g = torch.Generator().manual_seed(seed)
    off = t["offset"]
    N, two_gk, *o = off.shape
    sel = torch.rand(N, two_gk // 2, *o, generator=g) < 0.15
    which = torch.randint(0, 2, sel.shape, generator=g)        # 0: dy, 1: dx
    vals = torch.tensor(HOSTILE_VALUES, dtype=torch.float64)[
        torch.randint(0, len(HOSTILE_VALUES), sel.shape, generator=g)]
    full = off.detach().cpu().double().view(N, two_gk // 2, 2, *o)
    for comp in (0, 1):
        hit = sel & (which == comp)
        full[:, :, comp][hit] = vals[hit]
    with torch.no_grad():
        off.copy_(full.view_as(off).to(off.dtype))
    return sel


def compare_oracle(torch, p, dtype, dev, backend, hostile, tol, seed=0) -> dict:
    """Forward and the five gradients of the registered op on ``backend`` against the float64
    oracle on the same rounded inputs. Hostile offsets: the oracle runs with the original
    offsets and the poisoned taps masked out (the convention: they contribute 0), and the
    mask gradient of a poisoned tap is 0."""
    from deformconv import deform_conv2d, use_backend
    from deformconv.ops.deform_conv.reference import deform_conv_ref
    from deformconv.testing import outputs_and_grads, relative_error

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
        got = outputs_and_grads(deform_conv2d, p, t, go)
    want = outputs_and_grads(deform_conv_ref, p, t64, go.cpu().double())
    if bad is not None:
        want["mask"] = want["mask"].masked_fill(bad, 0.0)
    errors, problems = {}, []
    for k, e in want.items():
        a = got[k]
        if tuple(a.shape) != tuple(e.shape):
            problems.append(f"{k}: shape {tuple(a.shape)} != {tuple(e.shape)}")
            continue
        want_dtype = dtype if k == "output" else t[k].dtype
        if a.dtype != want_dtype or a.device.type != dev:
            problems.append(f"{k}: {a.dtype} on {a.device}, expected {want_dtype} on {dev}")
        finite = bool(torch.isfinite(a).all()) if a.numel() else True
        errors[k] = relative_error(a, e) if finite else float("inf")
        if not finite:
            problems.append(f"{k}: non-finite values")
    worst = max(errors.values()) if errors else float("inf")
    return {"errors": errors, "max_rel_error": worst, "tolerance": tol,
            "problems": problems, "passed": not problems and worst <= tol}


VARIANTS = (("float32", False), ("float32", True), ("float16", False), ("bfloat16", False))


def _spy(torch):
    """A dispatch mode that records the dtypes going into and out of deformconv's ops."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Spy(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = str(getattr(func, "name", lambda: func)())
            if name.startswith("deformconv::"):
                def dt(v):
                    if isinstance(v, torch.Tensor):
                        return str(v.dtype).replace("torch.", "")
                    if isinstance(v, (tuple, list)):
                        return [dt(x) for x in v]
                    return None
                self.calls.append({"op": name, "args": [dt(a) for a in args
                                                        if isinstance(a, torch.Tensor)],
                                   "out": dt(out)})
            return out
    return Spy()


def check_autocast(torch, dev, low) -> dict:
    """Under autocast(low): the op gets input/weight/bias in ``low`` and offsets/mask in
    float32 (CUDA; on CPU everything float32), the output has that dtype, the backward op
    returns the offset and mask gradients in float32, and the values match the float64
    oracle on the cast arguments within TOLERANCE of the autocast dtype."""
    from deformconv import deform_conv2d
    from deformconv.ops.autocast import cuda_cast
    from deformconv.ops.deform_conv.reference import deform_conv_ref
    from deformconv.testing import TOLERANCE, outputs_and_grads, relative_error

    p = oracle_cases(dev == "cpu")["groups2-og3"][0]
    t = p.tensors(torch.float32, dev, 0, requires_grad=True)
    go = p.grad_out(torch.float32, dev, 1)
    args = [t[k] for k in ("input", "weight", "offset", "mask", "bias")]
    if dev == "cuda":
        cast = cuda_cast(*[a.detach() for a in args], low)
        data, pos = low, torch.float32
    else:
        cast = [a.detach() for a in args]
        data = pos = torch.float32
    spy = _spy(torch)
    with spy:
        with torch.autocast(dev, dtype=low):
            out = deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], mask=t["mask"],
                                **p.kwargs())
        names = ("input", "offset", "weight", "bias", "mask")
        grads = torch.autograd.grad(out, [t[k] for k in names], go.to(out.dtype))
    c64 = dict(zip(("input", "weight", "offset", "mask", "bias"),
                   (c.double().cpu().requires_grad_() for c in cast)))
    want = outputs_and_grads(deform_conv_ref, p, c64, go.cpu().double())
    got = {"output": out, **dict(zip(names, grads))}
    tol = TOLERANCE[data]
    errors = {k: relative_error(got[k], want[k]) for k in want}
    s = lambda d: str(d).replace("torch.", "")  # noqa: E731
    problems = []
    fwd = [c for c in spy.calls if c["op"].endswith("deform_conv2d")
           or c["op"].endswith("deform_conv2d.default")]
    bwd = [c for c in spy.calls if "backward" in c["op"]]
    want_args = [s(data), s(data), s(pos), s(pos), s(data)]  # input, weight, offset, mask, bias
    if not fwd:
        problems.append("the forward op was not seen")
    elif fwd[0]["args"] != want_args:
        problems.append(f"forward op args {fwd[0]['args']}, expected {want_args}")
    if out.dtype != data:
        problems.append(f"output {out.dtype}, expected {data}")
    want_grads = [s(data), s(data), s(pos), s(pos), s(data)]
    # A dispatch mode follows autograd onto its device threads in current PyTorch; should
    # one not, the row says so (backward_seen) and the leaves' dtypes are still checked.
    if bwd and bwd[0]["out"] != want_grads:
        problems.append(f"backward op returned {bwd[0]['out']}, expected {want_grads} "
                        "(input, weight, offset, mask, bias)")
    for k, g in zip(names, grads):
        if g.dtype != t[k].dtype:
            problems.append(f"grad of {k}: {g.dtype}, expected the leaf's {t[k].dtype}")
    worst = max(errors.values())
    return {"autocast_dtype": s(low), "op_forward": fwd[:1], "op_backward": bwd[:1],
            "backward_seen": bool(bwd),
            "errors": errors, "max_rel_error": worst, "tolerance": tol, "problems": problems,
            "passed": not problems and worst <= tol}


class ListRecorder:
    """The rows of a worker process, sent back to the step's recorder."""

    def __init__(self):
        self.rows = []

    def add(self, **fields) -> dict:
        self.rows.append(fields)
        return fields


def _worker_setup(dry: bool):
    import torch
    if dry:  # CPU tensors through the Triton launchers, as in the parent
        from deformconv.ops import dispatch
        dispatch.set_backend("triton")
    return torch, "cpu" if dry else "cuda"


def oracle_task(backend: str, dname: str, on: bool, dry: bool) -> list:
    """One backend and dtype variant over every case (a worker process's share)."""
    torch, dev = _worker_setup(dry)
    from deformconv.testing import TOLERANCE

    rec = ListRecorder()
    dtype = getattr(torch, dname)
    tol = TF32_TOLERANCE if on else TOLERANCE[dtype]
    for name, (p, hostile) in oracle_cases(dry).items():
        with tf32(torch, on):
            guard(rec, functools.partial(compare_oracle, torch, p, dtype, dev, backend,
                                         hostile, tol),
                  check="oracle", backend=backend, dtype=dname, tf32="on" if on else "off",
                  case=name, problem=p.name, hostile=hostile)
    return rec.rows


def autocast_task(dname: str, dry: bool) -> list:
    torch, dev = _worker_setup(dry)
    rec = ListRecorder()
    with tf32(torch, False):
        guard(rec, functools.partial(check_autocast, torch, dev, getattr(torch, dname)),
              check="autocast", dtype=dname)
    return rec.rows


def step_correctness(rec, ctx):
    """The oracle matrix and the autocast checks, spread over worker processes (spawned, one
    task per backend and dtype variant) so that their Triton compiles run in parallel; rows
    are recorded as each task ends."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    tasks = [(oracle_task, (backend, dname, on, ctx.dry)) for backend in ("triton", "torch")
             for dname, on in VARIANTS]
    tasks += [(autocast_task, (d, ctx.dry)) for d in
              (("bfloat16",) if ctx.dry else ("bfloat16", "float16"))]
    workers = max(1, min(ctx.args.workers, len(tasks)))
    chunks = [[(fn.__name__, args) for fn, args in tasks[i::workers]] for i in range(workers)]
    if workers > 1:
        try:
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        except (OSError, ImportError, NotImplementedError) as e:  # no semaphores, say
            print(f"no worker processes ({type(e).__name__}: {e}): tasks run in this process")
            workers = 1
    if workers == 1:  # in this process (the dry run's default: spawning costs seconds)
        for chunk in chunks:
            for r in run_tasks(chunk):
                rec.add(**r)
        return
    with pool as ex:
        futures = {ex.submit(run_tasks, chunk): chunk for chunk in chunks}
        for f in as_completed(futures):
            try:
                rows = f.result()
            except Exception as e:  # noqa: BLE001 - a crashed worker: its tasks are failed rows
                rows = [{"check": name.replace("_task", ""), "task": list(args[:-1]),
                         "passed": False, "error": f"{type(e).__name__}: {str(e)[:500]}"}
                        for name, args in futures[f]]
            for r in rows:
                rec.add(**r)


def run_tasks(chunk) -> list:
    """A worker's tasks, by function name, one after the other."""
    rows = []
    for name, args in chunk:
        rows += globals()[name](*args)
    return rows


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
    torch = ctx.torch
    with tf32(torch, False):
        for dtype in (torch.float32,) if ctx.dry else (torch.float32, torch.bfloat16):
            d = str(dtype).replace("torch.", "")
            guard(rec, functools.partial(check_compile, torch, ctx, dtype), check="torch_compile",
                  dtype=d, fullgraph=True)
            if ctx.dry:
                rec.add(check="cuda_graph", dtype=d, passed=None, skipped="skipped: dry run")
                print(f"cuda_graph {d}: skipped: dry run")
            else:
                guard(rec, functools.partial(check_cuda_graph, torch, ctx, dtype),
                      check="cuda_graph",
                      dtype=d)
            for backend in ("triton", "torch"):
                guard(rec, functools.partial(check_deterministic, torch, ctx, dtype, backend),
                      check="deterministic", dtype=d, backend=backend)
