"""The benchmarks of ``run_gpu.py``: steps ``bench_bf16``, ``bench_fp16``, ``bench_fp32`` (the
four main 2-D shapes), ``bench_small`` (small FPN maps), ``bench_nd`` and ``bench_roi``.

2-D: 3x3, padding 1, offsets N(0, 2^2) pixels, masks U(0, 1), weights scaled to unit output
variance; float32 with TF32 off (cuDNN's flag, which our kernels and conv2d follow);
contenders in one process, alternating within every repeat: cuDNN ``conv2d`` (the floor),
torchvision ``deform_conv2d`` (it has no bfloat16 kernel: in the bfloat16 runs it runs in
float16, its rows marked ``"alongside": "bfloat16"``), deformops
(``deformops.integrations.torchvision.deform_conv2d``; in ``--deformops-dtypes`` only, its
autotuner compiles 40 configurations per dtype), ours, and the N-D kernel family (the
library's 1-D/3-D kernels) called at R=2 through its launcher (``deformconv_nd_r2``). A
contender that is missing or fails is a row with the reason, never a crash; a shape whose
estimate no longer fits the budget is a row saying so.
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

MAIN_SHAPES = [((8, 128, 100, 168), 128), ((8, 256, 50, 84), 256), ((8, 512, 25, 42), 512),
               ((32, 64, 56, 56), 64)]
SMALL_SHAPES = [((1, 256, 13, 21), 256), ((1, 256, 25, 42), 256)]
DRY_MAIN = [((1, 4, 3, 4), 4)]  # with a 1x1 kernel: the interpreter is slow
DTYPES = ("bfloat16", "float16", "float32")
OURS, FLOOR, ND_R2 = "deformconv", "cudnn_conv2d", "deformconv_nd_r2"
CONTENDERS = (FLOOR, "torchvision", "deformops", OURS, ND_R2)
# Seconds on the GPU machine per (shape, dtype) of the 2-D benchmark (README.md "Estimates"):
# every shape pays our autotuning (8 configurations of 3 kernels x ~0.2 s), cuDNN's algorithm
# search and the timing itself (5 contenders x 2 modes x (reps + 3) calls of 1-50 ms): SHAPE_S;
# deformops' autotuner times its 40 configurations at each new size: DEFORMOPS_SHAPE_S. The
# first shape of a dtype loads the kernels the correctness step compiled (FIRST_SHAPE_S; their
# compiles, if that step did not run: 8 configurations x ~2.5 s) and deformops' 40
# (DEFORMOPS_FIRST_S).
FIRST_SHAPE_S = {"bfloat16": 5, "float16": 5, "float32": 5}
DEFORMOPS_FIRST_S = 8
DEFORMOPS_SHAPE_S = 8
SHAPE_S = 5


def shape_name(shape, O) -> str:
    return "x".join(map(str, shape)) + f"->{O}"


def problem(shape, O, k=3):
    """``k x k`` kernel (3 in every GPU row), padding ``k // 2``."""
    from deformconv.testing import Problem
    N, C, H, W = shape
    return Problem(N=N, C=C, O=O, size=(H, W), kernel=(k, k), padding=k // 2,
                   offset_scale=2.0, weight_scale=(C * k * k) ** -0.5)


def timer(torch, dev):
    """``fn -> milliseconds``: CUDA events around one call on the GPU, wall clock on CPU."""
    if dev == "cuda":
        def run(fn):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            return a.elapsed_time(b)
    else:
        def run(fn):
            t = time.perf_counter()
            fn()
            return 1e3 * (time.perf_counter() - t)
    return run


def _call_fn(name):
    """The contender's function ``f(x, offset, w, b, mask, stride, padding, dilation)``, or
    raises ImportError/RuntimeError with the reason it cannot run."""
    import torch.nn.functional as F
    if name == FLOOR:
        return lambda x, off, w, b, m, s, p, d: F.conv2d(x, w, b, s, p, d)
    if name == "torchvision":
        from torchvision.ops import deform_conv2d as tv
        return lambda x, off, w, b, m, s, p, d: tv(x, off, w, b, s, p, d, mask=m)
    if name == "deformops":
        from deformops.integrations.torchvision import deform_conv2d as dops
        return lambda x, off, w, b, m, s, p, d: dops(x, off, w, b, stride=s, padding=p,
                                                     dilation=d, mask=m)
    if name == OURS:
        from deformconv import deform_conv2d
        return lambda x, off, w, b, m, s, p, d: deform_conv2d(x, off, w, b, stride=s,
                                                              padding=p, dilation=d, mask=m)
    if name == ND_R2:
        return nd_r2_function()
    raise ValueError(f"unknown contender {name!r}")


def nd_r2_function():
    """The N-D kernel family's launchers (the 1-D/3-D kernels of the library) called on the 2-D
    tensors, R=2, with an autograd wrapper: ``f(x, offset, w, b, mask, stride, padding,
    dilation)``. Raises RuntimeError on CPU tensors outside Triton's interpreter."""
    import torch

    from deformconv.ops import dispatch
    from deformconv.ops.deform_conv.triton import launch_nd

    class NdR2(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, off, w, b, m, s, p, d):
            ctx.save_for_backward(x, off, w, b, m)
            ctx.geometry = (s, p, d)
            return launch_nd.deform_conv_fwd(input=x, weight=w, offset=off, mask=m, bias=b,
                                             stride=s, padding=p, dilation=d)

        @staticmethod
        def backward(ctx, go):
            x, off, w, b, m = ctx.saved_tensors
            s, p, d = ctx.geometry
            gi, gw, goff, gm, gb = launch_nd.deform_conv_bwd(
                grad_out=go, input=x, weight=w, offset=off, mask=m, bias=b, stride=s,
                padding=p, dilation=d, output_mask=[True] * 4)
            return gi, goff, gw, gb, gm, None, None, None

    def call(x, off, w, b, m, s, p, d):
        if not x.is_cuda and not dispatch.interpreting():
            raise RuntimeError("the N-D Triton kernels run on CUDA tensors, or on CPU tensors "
                               "in Triton's interpreter (TRITON_INTERPRET=1)")
        return NdR2.apply(x, off, w, b, m, tuple(s), tuple(p), tuple(d))
    return call


def version_of(name) -> str:
    mod = {"torchvision": "torchvision", "deformops": "deformops", OURS: "deformconv",
           ND_R2: "deformconv"}.get(name)
    if mod is None:
        return "torch"
    try:
        return __import__(mod).__version__
    except Exception as e:  # noqa: BLE001
        return f"unavailable ({type(e).__name__})"


class Contender:
    """One contender's leaves (its own copies, in its dtype) and its two timed callables."""

    def __init__(self, torch, name, t, gy, kw):
        f = _call_fn(name)
        keys = ("input", "weight", "bias") if name == FLOOR else (
            "input", "offset", "weight", "bias", "mask")
        self.leaves = {k: t[k].detach().clone().requires_grad_() for k in keys}
        lv = self.leaves
        s, p, d = kw["stride"], kw["padding"], kw["dilation"]
        self.call = functools.partial(f, lv["input"], lv.get("offset"), lv["weight"], lv["bias"],
                                      lv.get("mask"), s, p, d)
        self.torch, self.gy, self.name = torch, gy, name

    def fwd(self):
        with self.torch.no_grad():
            return self.call()

    def fwd_bwd(self):
        out = self.call()
        return self.torch.autograd.grad(out, list(self.leaves.values()), self.gy)


def peak_bytes(torch, dev, fn):
    """Peak allocated bytes of one call above what was allocated before it (CUDA only)."""
    if dev != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    res = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del res
    return peak


def bench_one(rec, torch, dev, shape, O, dname, reps, main, warmup, k=3, skip=None):
    """All contenders at one shape and dtype; rows as the issue asks. ``warmup=None``: no
    probe call either (the dry run; a failure then shows while timing). ``skip``: contender
    -> the reason it does not run here."""
    dtype = getattr(torch, dname)
    p = problem(shape, O, k)
    t = p.tensors(dtype, dev, 0)
    gy = p.grad_out(dtype, dev, 1)
    kw = p.kwargs()
    sname = shape_name(shape, O)
    common = dict(shape=sname, main=main, dtype=dname, tf32="off", reps=reps,
                  kernel=f"{k}x{k}", padding=k // 2,
                  cudnn_benchmark=bool(torch.backends.cudnn.benchmark))
    cons, reasons = {}, {}
    # torchvision has no bfloat16 kernel: in a bfloat16 run it runs in float16 (what its users
    # train with) on the same values, alternating with the others; its rows say float16 and
    # "alongside": "bfloat16", and its speedup_of_ours is over ours in bfloat16 (the goal).
    alongside = {"torchvision": torch.float16} if dname == "bfloat16" else {}
    for name in CONTENDERS:
        if skip and name in skip:
            reasons[name] = skip[name]
            continue
        try:
            cast = alongside.get(name)
            c = Contender(torch, name, t if cast is None else {
                k: v if v is None else v.to(cast) for k, v in t.items()},
                gy if cast is None else gy.to(cast), kw)
            for _ in range(0 if warmup is None else 1 + warmup):  # autotunes and compiles
                c.fwd()
                c.fwd_bwd()
            cons[name] = c
        except Exception as e:  # noqa: BLE001 - not installed, no kernel, failed: a row
            reasons[name] = f"failed: {type(e).__name__}: {str(e).strip()[:300]}"
            if dev == "cuda":
                try:  # an out-of-memory error leaves cached blocks; a sticky error re-raises
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                except Exception:  # noqa: BLE001 - the next contender will say so
                    pass
    tm = timer(torch, dev)
    times = {(n, m): [] for n in cons for m in ("fwd", "fwd+bwd")}
    for _ in range(reps):  # alternate: clocks, caches and drift hit every contender alike
        for n in list(cons):
            try:
                times[(n, "fwd")].append(tm(cons[n].fwd))
                times[(n, "fwd+bwd")].append(tm(cons[n].fwd_bwd))
            except Exception as e:  # noqa: BLE001
                reasons[n] = f"failed while timing: {type(e).__name__}: {str(e)[:300]}"
                del cons[n]
    peaks = {}
    for n in list(cons):
        try:
            peaks[n] = peak_bytes(torch, dev, cons[n].fwd_bwd)
        except Exception as e:  # noqa: BLE001
            reasons[n] = f"failed measuring memory: {type(e).__name__}: {str(e)[:300]}"
            del cons[n]
    med = {(n, m): statistics.median(ts) for (n, m), ts in times.items() if n in cons and ts}
    flops = p.flops()
    for n in CONTENDERS:
        if n not in cons:
            rec.add(**common, contender=n, version=version_of(n), mode="fwd+bwd",
                    median_ms=None, skipped=reasons.get(n, "not run"))
            print(f"{sname} {dname:8s} {n:13s} {reasons.get(n)}", flush=True)
            continue
        own = {} if n not in alongside else dict(
            dtype=str(alongside[n]).replace("torch.", ""), alongside=dname)
        for mode in ("fwd", "fwd+bwd"):
            ms = med[(n, mode)]
            floor = med.get((FLOOR, mode))
            ours = med.get((OURS, mode))
            fl = flops * (3 if mode == "fwd+bwd" else 1)
            pk, pk0 = peaks.get(n), peaks.get(FLOOR)
            row = dict(common, **own, contender=n, version=version_of(n), mode=mode,
                       median_ms=ms,
                       min_ms=min(times[(n, mode)]), tflops=fl / ms / 1e9,
                       ratio_to_conv2d=ms / floor if floor else None,
                       peak_bytes_fwd_bwd=pk,
                       peak_ratio_to_conv2d=pk / pk0 if pk and pk0 else None)
            if n != OURS:
                row["speedup_of_ours"] = ms / ours if ours else None
            rec.add(**row)
            print(f"{sname} {row['dtype']:8s} {n:13s} {mode:8s} {ms:9.3f} ms "
                  f"{row['tflops']:7.2f} TFLOP/s  x{row['ratio_to_conv2d'] or 0:5.2f} conv2d"
                  + (f"  peak x{row['peak_ratio_to_conv2d']:.2f}"
                     if row["peak_ratio_to_conv2d"] else ""), flush=True)
    del cons
    if dev == "cuda":
        torch.cuda.empty_cache()


def bench_shapes(rec, ctx, dname, shapes, main, compiled=False, deformops=True):
    """The 2-D benchmark in ``dname`` at ``shapes``; a shape whose estimate no longer fits the
    budget is a row saying so (the next, smaller one may still fit)."""
    torch, dev = ctx.torch, ctx.dev
    old = torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    torch.backends.cudnn.allow_tf32 = False  # float32 rows: TF32 off (stated in every row)
    torch.backends.cudnn.benchmark = True    # the floor: cuDNN's fastest algorithm per shape
    skip = {}
    if not deformops:
        skip["deformops"] = ("skipped: not on the small maps (its autotuner times 40 "
                             "configurations at each new size)")
    elif dname not in ctx.deformops_dtypes:
        skip["deformops"] = (f"skipped: not in --deformops-dtypes ({','.join(ctx.deformops_dtypes)}"
                             "): its autotuner compiles 40 configurations per dtype")
    try:
        for i, (shape, O) in enumerate(DRY_MAIN if ctx.dry else shapes):
            first = i == 0 and not compiled
            dops = "deformops" not in skip
            est = (SHAPE_S + (FIRST_SHAPE_S[dname] if first else 0)
                   + (DEFORMOPS_SHAPE_S + (DEFORMOPS_FIRST_S if first else 0) if dops else 0))
            if not ctx.fits(est):
                rec.add(shape=shape_name(shape, O), main=main, dtype=dname, contender=None,
                        status_shape="skipped", estimate_s=est,
                        skipped=f"budget: {ctx.remaining():.0f} s left, shape estimated at "
                                f"{est} s")
                print(f"{shape_name(shape, O)} {dname}: skipped, budget", flush=True)
                continue
            bench_one(rec, torch, dev, shape, O, dname, ctx.reps, main,
                      warmup=None if ctx.dry else 2, k=1 if ctx.dry else 3, skip=skip)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = old


def step_bench_bf16(rec, ctx):
    bench_shapes(rec, ctx, "bfloat16", MAIN_SHAPES, True)


def step_bench_fp16(rec, ctx):
    bench_shapes(rec, ctx, "float16", MAIN_SHAPES, True)


def step_bench_fp32(rec, ctx):
    bench_shapes(rec, ctx, "float32", MAIN_SHAPES, True)
    if not ctx.dry:
        for row in autotune_choices():
            rec.add(**row)


def step_bench_small(rec, ctx):
    """The small FPN maps, bfloat16 and float16 (kernels compiled by the main shapes)."""
    for dname in ("bfloat16",) if ctx.dry else ("bfloat16", "float16"):
        bench_shapes(rec, ctx, dname, SMALL_SHAPES, False, compiled=True, deformops=False)


def autotune_choices() -> list:
    """The configuration Triton's autotuner chose for each 2-D kernel and autotune key seen
    in this process: ``launch._tuned``'s autotuners' caches."""
    try:
        from deformconv.ops.deform_conv.triton import launch
        rows = []
        for name in ("fwd", "bwd_data", "bwd_weight"):
            for fam in ("float32", "half", "float32_i64", "half_i64"):
                tuner = launch._tuned(name, fam)
                for key, cfg in getattr(tuner, "cache", {}).items():
                    rows.append({"check": "autotune_choice", "kernel": name, "family": fam,
                                 "key": [str(k) for k in key], "config": str(cfg)})
        return rows
    except Exception as e:  # noqa: BLE001 - private API: a row saying why, never a crash
        return [{"check": "autotune_choice", "error": f"{type(e).__name__}: {e}"}]


# --- 1-D/3-D and RoI pooling -------------------------------------------------------------------

# Seconds per (shape, dtype): the N-D kernels at the benchmark's specialisation are compiled
# by the correctness step's hostile cases (fixed blocks, no autotuning); the 3-D shape's
# forward+backward is the longest call (~10-20 ms) x 2 contenders x (reps + 2) rounds. RoI
# pooling: its compiles (~8 configurations x 0.7 s per dtype) in the first unit, timing.
ND_UNIT_S = 5
ROI_UNIT_S = 5
DRY_ROI = dict(N=1, C=4, H=6, W=8, R=6, output_size=2, spatial_scale=1 / 2)


def _dry_nd():
    from deformconv.testing import Problem
    return [Problem(N=1, C=4, O=4, size=(16,), kernel=(3,), padding=1),
            Problem(N=1, C=2, O=2, size=(2, 3, 3), kernel=(1, 1, 2), padding=0)]

def step_bench_nd(rec, ctx):
    """1-D and 3-D deformable convolution against cuDNN's conv1d/conv3d of the same shape,
    at ``benchmarks/nd_cpu.py``'s shapes, float32 and bfloat16, forward and forward+backward,
    alternating. The dry run uses the pure-PyTorch kernels (interpreted ones take minutes)."""
    import torch.nn.functional as F

    from deformconv import deform_conv1d, deform_conv3d, use_backend
    torch, dev = ctx.torch, ctx.dev
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import nd_cpu
    tm = timer(torch, dev)
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with use_backend("torch" if ctx.dry else "auto"):
            for p in _dry_nd() if ctx.dry else nd_cpu.SHAPES:
                deform, conv = {1: (deform_conv1d, F.conv1d), 3: (deform_conv3d, F.conv3d)}[
                    p.ndim]
                for dtype in (torch.bfloat16, torch.float32):
                    if not ctx.fits(ND_UNIT_S):
                        rec.add(shape=p.name, dtype=str(dtype).replace("torch.", ""),
                                contender=None, estimate_s=ND_UNIT_S,
                                skipped=f"budget: {ctx.remaining():.0f} s left")
                        continue
                    _bench_nd_one(rec, torch, dev, tm, p, deform, conv, dtype, ctx.reps)
    finally:
        torch.backends.cudnn.allow_tf32 = old


def _bench_nd_one(rec, torch, dev, tm, p, deform, conv, dtype, reps):
    t = p.tensors(dtype, device=dev, requires_grad=True)
    go = p.grad_out(dtype, device=dev)
    kw = p.kwargs()
    floor_name = f"cudnn_conv{p.ndim}d"
    fns = {"deformconv": functools.partial(deform, t["input"], t["offset"], t["weight"],
                                           t["bias"], mask=t["mask"], **kw),
           floor_name: functools.partial(conv, t["input"], t["weight"], t["bias"], **kw)}

    def fb(fn):
        out = fn()
        return torch.autograd.grad(out, [v for v in t.values() if v is not None],
                                   go, allow_unused=True)
    times = {(n, m): [] for n in fns for m in ("fwd", "fwd+bwd")}
    for i in range(reps + 2):  # two warm-up rounds (autotuning), then alternate
        for n, fn in fns.items():
            with torch.no_grad():
                tf = tm(fn)
            tb = tm(functools.partial(fb, fn))
            if i >= 2:
                times[(n, "fwd")].append(tf)
                times[(n, "fwd+bwd")].append(tb)
    d = str(dtype).replace("torch.", "")
    for (n, mode), ts in times.items():
        floor = statistics.median(times[(floor_name, mode)])
        ms = statistics.median(ts)
        rec.add(shape=p.name, contender=n, dtype=d, tf32="off", mode=mode, median_ms=ms,
                ratio_to_floor=ms / floor, floor=floor_name, reps=reps)
        print(f"{p.name} {d:8s} {n:12s} {mode:8s} {ms:9.3f} ms  x{ms / floor:5.2f} {floor_name}",
              flush=True)


def step_bench_roi(rec, ctx):
    """Deformable RoI pooling: ``benchmarks/roi_pool_cpu.py``'s contenders (the op, the op
    without offsets, torchvision's ``roi_align`` when it imports) at its detector shape and at
    2000 regions on a stride-8 level, float32 and bfloat16. The dry run uses a quick shape on
    the pure-PyTorch kernels."""
    from deformconv import use_backend
    torch, dev = ctx.torch, ctx.dev
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import roi_pool_cpu
    shapes = [DRY_ROI] if ctx.dry else [
        roi_pool_cpu.SHAPE, dict(N=2, C=256, H=100, W=168, R=2000, output_size=7,
                                 spatial_scale=1 / 8)]
    with use_backend("torch" if ctx.dry else "auto"):
        for shape in shapes:
            for dtype in (torch.bfloat16, torch.float32):
                if not ctx.fits(ROI_UNIT_S):
                    rec.add(shape=str(shape), dtype=str(dtype), contender=None,
                            estimate_s=ROI_UNIT_S, skipped=f"budget: {ctx.remaining():.0f} s left")
                    continue
                for r in roi_pool_cpu.run(torch, shape, ctx.reps, dev, dtype,
                                          warmup=0 if ctx.dry else 2):
                    r = {k: v for k, v in r.items() if k not in ("gpu", "torch", "triton",
                                                                 "commit")}
                    rec.add(**{**r, "shape": str(r.get("shape")),
                               "dtype": str(dtype).replace("torch.", ""),
                               "ours": r.get("contender") == "deform_roi_pool"})
