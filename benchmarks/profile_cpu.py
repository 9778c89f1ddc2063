"""Where the CPU deformable convolution spends its time, per stage of the kernel, for the
forward and the forward+backward of the benchmark's shapes (``nd_cpu.py``'s).

Each stage of ``deformconv.ops.deform_conv.torch_kernels`` (the bordered channels-last source,
the sampling plan, the gather, the GEMM-shaped convolutions, the weight gradient, the column
scatter, the offset and mask gradients) is wrapped, for this run only, in a timer of the
thread's CPU time (``time.thread_time``: unlike wall time it does not count the time other
processes take from this one, so a shared machine shows the same split). Run with one thread
(the default here): with more, only the calling thread's CPU time would count. The plain
convolution of the same shape is timed alike for scale. ``--ops`` adds ``torch.profiler``'s
table of aten ops (self time, wall) for each call.

    python benchmarks/profile_cpu.py --out benchmarks/results/cpu-profile-<date>.txt
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import io
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import deformconv
from deformconv.bench.cpu import machine_info
from deformconv.ops import bilinear
from deformconv.ops.deform_conv import torch_kernels as tk

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nd_cpu import SHAPES  # noqa: E402 (this folder)

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
# The bound of the design: the passes no pure-PyTorch rearrangement removes (the GEMM-shaped
# products, and one gather or scatter of the 2^R corners per sample for each product); the
# rest (plan, copies, layout, autograd) is what only a fused kernel would remove.
GEMM_SHAPED = ("GEMM", "weight grad")
ONE_PASS = ("gather", "col2im", "offset/mask grad: corner dot")
SPENT = collections.defaultdict(float)
_STACK = []


def _timed(name, fn):
    """``fn`` counting its thread CPU time under ``name`` (nested stages are not counted twice:
    the enclosing stage gets only its own time)."""
    @functools.wraps(fn)
    def run(*a, **k):
        t0 = time.thread_time()
        _STACK.append(0.0)
        try:
            return fn(*a, **k)
        finally:
            spent = time.thread_time() - t0
            inner = _STACK.pop()
            SPENT[name] += spent - inner
            if _STACK:
                _STACK[-1] += spent
    return run


def instrument() -> None:
    stages = [(tk, "_source", "source: bordered channels-last copy"),
              (tk, "_plan", "plan: positions, corner rows, bilinear weights x mask"),
              (bilinear, "sample", "gather: embedding_bag of the 2^R corners"),
              (tk, "_weight_grad", "weight grad: gather in GEMM order + addmm"),
              (bilinear, "scatter_rows", "col2im: sorted scatter of column grads"),
              (bilinear, "corner_dots", "offset/mask grad: corner dot products"),
              (tk, "_offset_mask_grad", "offset/mask grad: contraction, layout")]
    for mod, attr, name in stages:
        setattr(mod, attr, _timed(name, getattr(mod, attr)))
    tk._columns_times_weight = _timed("GEMM: forward (tap-volume conv or GEMM)",
                                      tk._columns_times_weight)
    tk._column_grad = _timed("GEMM: column grad (conv data grad or GEMM)", tk._column_grad)


def profile_one(p, mode: str, reps: int, ops: bool, out) -> None:
    t = p.tensors(torch.float32, requires_grad=mode == "train")
    go = p.grad_out(torch.float32)
    fn = getattr(deformconv, f"deform_conv{p.ndim}d")
    kw = p.kwargs()

    def deform():
        y = fn(t["input"], t["offset"], t["weight"], t["bias"], mask=t["mask"], **kw)
        if mode == "train":
            y.backward(go)

    def conv():
        y = CONV[p.ndim](t["input"], t["weight"], t["bias"], **kw)
        if mode == "train":
            y.backward(go)

    totals = {"deform": [], "conv": []}
    split = collections.defaultdict(list)
    with torch.set_grad_enabled(mode == "train"):
        deform(), conv()
        for _ in range(reps):
            for name, f in (("conv", conv), ("deform", deform)):
                SPENT.clear()
                t0 = time.thread_time()
                f()
                totals[name].append(time.thread_time() - t0)
                if name == "deform":
                    for k, v in SPENT.items():
                        split[k].append(v)
        total = statistics.median(totals["deform"])
        floor = statistics.median(totals["conv"])
        out.write(f"\n## {p.name} {mode}: deformconv {1e3 * total:.1f} ms CPU, "
                  f"conv{p.ndim}d {1e3 * floor:.1f} ms ({total / floor:.2f}x)\n")
        rest = total
        for k, v in sorted(split.items(), key=lambda kv: -statistics.median(kv[1])):
            m = statistics.median(v)
            rest -= m
            out.write(f"  {k:56s} {1e3 * m:9.1f} ms {100 * m / total:5.1f}%\n")
        out.write(f"  {'other: autograd, casts, output copies':56s} {1e3 * rest:9.1f} ms "
                  f"{100 * rest / total:5.1f}%\n")
        med = {k: statistics.median(v) for k, v in split.items()}
        gemm = sum(v for k, v in med.items() if k.startswith(GEMM_SHAPED))
        passes = sum(v for k, v in med.items() if k.startswith(ONE_PASS))
        bound = gemm + passes
        out.write(f"  bound of the design: GEMM-shaped {1e3 * gemm:.1f} ms ({gemm / floor:.2f}x) + "
                  f"gathers/scatters {1e3 * passes:.1f} ms ({passes / floor:.2f}x) = "
                  f"{bound / floor:.2f}x conv{p.ndim}d; deformconv {total / floor:.2f}x, "
                  f"{total / bound:.2f}x the bound\n")
        if ops:
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                deform()
            out.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dims", default="1,2,3", help="comma-separated R to profile")
    ap.add_argument("--ops", action="store_true", help="add torch.profiler's op tables")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    instrument()
    dims = {int(x) for x in a.dims.split(",")}
    buf = io.StringIO()
    info = machine_info()
    buf.write(f"# {info['cpu']} ({info['vector_isa']}), {info['threads']} thread(s), torch "
              f"{info['torch']}, commit {info['commit']}, load average "
              f"{os.getloadavg()[0]:.2f}; thread CPU time, median of {a.reps}\n")
    for p in SHAPES:
        if p.ndim in dims:
            for mode in ("forward", "train"):
                with contextlib.redirect_stdout(sys.stderr):
                    profile_one(p, mode, a.reps, a.ops, buf)
    print(buf.getvalue())
    if a.out:
        with open(a.out, "w") as f:
            f.write(buf.getvalue())


if __name__ == "__main__":
    main()
