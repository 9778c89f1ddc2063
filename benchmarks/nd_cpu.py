"""CPU benchmark of deform_conv1d/2d/3d against conv1d/2d/3d of the same shape.

Also, in 2-D, onnxruntime's DeformConv at inference.

Method (as benchmarks/README.md for 2-D): float32, zero padding keeping the size, random
offsets and a mask; every contender warmed up, then ``--repeats`` rounds in which the
contenders alternate (order reversed every other round, so drift hits all alike); medians and
minima reported, with the ratio to the plain convolution (the floor). Modes: ``forward``
(no grad) and ``train`` (forward + backward of every input). The 2-D shapes are those of
``deformconv bench`` (``deformconv.bench.cpu.SHAPES``). ``--threads`` takes a list (e.g.
``2,1``): every shape is timed at each thread count in turn, in the same process. Peak
memory: the extra resident memory of one forward (and of one forward+backward) beyond its
inputs and output, measured in a fresh process (Linux; glibc's mmap threshold fixed at 64 KiB
so that the peak follows the live tensors). ``--before <commit>`` adds that
commit's deformconv (imported as in ``before_after_cpu.py``) as the contender ``before``.
Results are written as JSON with the machine, versions, commit, load averages and threads;
the summary holds, per dimensionality, mode, contender and thread count, the geometric mean
of the ratios over the shapes.

    python benchmarks/nd_cpu.py --threads 2,1 --out benchmarks/results/nd-cpu.json
    python benchmarks/nd_cpu.py --quick          # tiny shapes, a few seconds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

import deformconv
from deformconv.bench import cpu
from deformconv.bench.contenders import onnxruntime_deformconv
from deformconv.bench.cpu import machine_info, time_contenders
from deformconv.testing import Problem

SHAPES = [Problem(N=8, C=256, O=256, size=(4096,), kernel=(3,), padding=1, offset_scale=1.0),
          *cpu.SHAPES,
          Problem(N=2, C=64, O=64, size=(16, 56, 56), kernel=(3, 3, 3), padding=1,
                  offset_scale=1.0)]
QUICK = [Problem(N=2, C=16, O=16, size=(256,), kernel=(3,), padding=1, offset_scale=1.0),
         *cpu.QUICK[:1],
         Problem(N=1, C=8, O=8, size=(6, 10, 10), kernel=(3, 3, 3), padding=1,
                 offset_scale=1.0)]
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _contenders(p: Problem, mode: str, old=None):
    R = p.ndim
    t = p.tensors(torch.float32, requires_grad=mode == "train")
    go = p.grad_out(torch.float32)
    kw = p.kwargs()

    def deform_of(module):
        fn = getattr(module, f"deform_conv{R}d")
        return lambda: fn(t["input"], t["offset"], t["weight"], t["bias"], mask=t["mask"],
                          **kw)

    fns = {f"conv{R}d": lambda: CONV[R](t["input"], t["weight"], t["bias"], **kw),
           "deformconv": deform_of(deformconv)}
    if old is not None:
        fns["before"] = deform_of(old)
    if mode == "forward":
        fns = {k: torch.no_grad()(f) for k, f in fns.items()}
        if R == 2:
            ort = onnxruntime_deformconv(p)["forward"]
            if ort is not None:
                fns["onnxruntime"] = ort
        return fns

    leaves = [v for v in t.values() if v is not None]

    def train(fn):
        def step():
            for v in leaves:
                v.grad = None
            fn().backward(go)
        return step
    return {k: train(f) for k, f in fns.items()}


_CHILD = r"""
import importlib, json, math, sys, torch, torch.nn.functional as F
which, mode, module, path = sys.argv[2:6]
if path:
    sys.path.insert(0, path)
deformconv = importlib.import_module(module)
Problem = importlib.import_module(module + '.testing').Problem
p = Problem(**json.loads(sys.argv[1]))
train = mode == 'train'
def rss(key):
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))
def call(q, s):
    if which == 'deform':
        fn = getattr(deformconv, f'deform_conv{q.ndim}d')
        y = fn(s['input'], s['offset'], s['weight'], s['bias'], mask=s['mask'], **q.kwargs())
    else:
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[q.ndim]
        y = conv(s['input'], s['weight'], s['bias'], **q.kwargs())
    if train:
        y.backward(torch.ones_like(y))
    return y
# Warm-up on two small inputs: one whose weight outweighs its columns, one whose columns
# outweigh its weight, so that each of the CPU kernel's column products (plain GEMM,
# tap-volume convolution) has made its one-time allocations before the measured call.
big = (math.ceil((2 * p.O) ** (1 / p.ndim)) + 2) * max(p.strides)
t = p.tensors(torch.float32, requires_grad=train)
with torch.set_grad_enabled(train):
    for s in (6, big):
        tiny = p.__class__(**{**json.loads(sys.argv[1]), 'N': 1, 'size': [s] * p.ndim})
        call(tiny, tiny.tensors(torch.float32, requires_grad=train))
    grads = 0
    if train:  # the gradients' memory is the inputs' again: counted as input, not extra
        for v in t.values():
            if v is not None:
                v.grad = torch.zeros_like(v)
                grads += v.numel() * v.element_size()
    open('/proc/self/clear_refs', 'w').write('5')
    before = rss('VmRSS:')
    y = call(p, t)
    print(json.dumps(rss('VmHWM:') - before - y.numel() * y.element_size()))
"""


def peak_extra_bytes(p: Problem, which: str, mode: str = "forward",
                     module: str = "deformconv", path: str = "") -> int:
    """Extra peak resident memory of one forward or forward+backward (``mode``: 'forward' or
    'train'; ``which``: 'deform' or 'conv') beyond the inputs, their gradients and the output;
    deform is ``module``'s (imported from ``path`` when given: an older commit's copy)."""
    spec = json.dumps({k: getattr(p, k) for k in ("N", "C", "O", "size", "kernel", "stride",
                                                    "padding", "dilation", "groups",
                                                    "offset_groups", "mask", "bias",
                                                    "offset_scale", "weight_scale")})
    # A fixed mmap threshold: buffers above 64 KiB are mapped and unmapped when freed, so the
    # resident peak follows the live tensors. glibc's default threshold moves up after the
    # first large free, and what the heap then keeps moved the peak by up to 30 MiB between
    # runs of one code (measured on 2x512x25x42->512 training).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    done = subprocess.run([sys.executable, "-c", _CHILD, spec, which, mode, module, path],
                          capture_output=True, text=True, check=True, env=env)
    return max(0, int(done.stdout.strip().splitlines()[-1]))


def geomean(xs) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def summarize(rows) -> list:
    """Geometric mean of the ratios over the shapes, per R, mode, contender and threads."""
    groups = {}
    for r in rows:
        if "ratio_to_conv" in r:
            key = (r["ndim"], r["mode"], r["contender"], r["threads"])
            groups.setdefault(key, []).append(r["ratio_to_conv"])
    return [dict(ndim=k[0], mode=k[1], contender=k[2], threads=k[3], shapes=len(v),
                 geomean_ratio=round(geomean(v), 3)) for k, v in sorted(groups.items())]


def run(shapes, repeats: int, warmup: int, memory: bool, threads=(None,), old=None,
        timing: bool = True, log=print) -> dict:
    # the machine's load over the minute before the run (the run's own threads would count)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    default_threads = torch.get_num_threads()
    rows = []
    for p in shapes:
        for n in threads if timing else ():
            torch.set_num_threads(n or default_threads)
            for mode in ("forward", "train"):
                times = time_contenders(_contenders(p, mode, old), repeats, warmup)
                floor = statistics.median(times[f"conv{p.ndim}d"])
                for name, ts in times.items():
                    med = statistics.median(ts)
                    rows.append(dict(shape=p.name, mode=mode, contender=name,
                                     median_ms=round(1e3 * med, 3),
                                     min_ms=round(1e3 * min(ts), 3),
                                     ratio_to_conv=round(med / floor, 3), repeats=repeats,
                                     ndim=p.ndim, threads=torch.get_num_threads()))
                    log(f"{p.name:40s} {torch.get_num_threads()}t {mode:8s} {name:11s} "
                        f"{1e3 * med:10.2f} ms x{med / floor:.2f}")
        torch.set_num_threads(default_threads)
        if memory:
            for mode in ("forward", "train"):
                extra = {w: peak_extra_bytes(p, w, mode) for w in ("conv", "deform")}
                if old is not None:
                    extra["before"] = peak_extra_bytes(
                        p, "deform", mode, old.__name__,
                        os.path.dirname(os.path.dirname(os.path.abspath(old.__file__))))
                rows.append(dict(shape=p.name, mode=f"{mode}-peak-extra-bytes", ndim=p.ndim,
                                 **extra))
                log(f"{p.name:40s} peak extra memory of a {mode}: " + ", ".join(
                    f"{k} {v / 2**20:.1f} MiB" for k, v in extra.items()))
    summary = summarize(rows)
    for s in summary:
        log(f"geomean {s['ndim']}-D {s['threads']}t {s['mode']:8s} {s['contender']:11s} "
            f"x{s['geomean_ratio']:.2f}")
    after = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {"machine": machine_info(), "load_average_before": list(load),
            "load_average_after": list(after),
            "provisional": load[0] > 0.5 * (os.cpu_count() or 1), "rows": rows,
            "summary": summary}


def table(result: dict) -> str:
    """The README's Markdown table of a results file: per shape and thread count, the forward
    and forward+backward ratios to the plain convolution of every contender, and the peak extra
    memory of deformconv against the plain convolution."""
    cell, mem = {}, {}
    for r in result["rows"]:
        if "ratio_to_conv" in r:
            cell.setdefault((r["shape"], r["threads"]), {})[(r["mode"], r["contender"])] = r
        else:
            mem[(r["shape"], r["mode"].split("-")[0])] = r
    names = [n for n in ("deformconv", "before", "onnxruntime")
             if any(k[1] == n for c in cell.values() for k in c)]
    cols = [f"forward {n}" for n in names] + [f"train {n}" for n in names if n != "onnxruntime"]
    out = ["| shape | threads | conv forward / train ms | " + " | ".join(cols)
           + " | peak extra MiB forward / train |", "|" + "---|" * (len(cols) + 4)]
    for (shape, threads), c in cell.items():
        conv = [v for (m, n), v in c.items() if n.startswith("conv")]
        vals = []
        for col in cols:
            mode, n = col.split(" ")
            r = c.get(("forward" if mode == "forward" else "train", n))
            vals.append(f"x{r['ratio_to_conv']:.2f}" if r else "-")
        peaks = []
        for mode in ("forward", "train"):
            m = mem.get((shape, mode))
            before = f", before {m['before'] / 2**20:.0f}" if m and "before" in m else ""
            peaks.append(f"{m['deform'] / 2**20:.0f} (conv {m['conv'] / 2**20:.0f}{before})"
                         if m else "-")
        out.append(f"| {shape.split(',s')[0]} | {threads} | "
                   + " / ".join(f"{v['median_ms']:.0f}" for v in conv) + " | "
                   + " | ".join(vals) + " | " + " / ".join(peaks) + " |")
    out.append("")
    for s in result["summary"]:
        if s["contender"] in names:
            out.append(f"- geomean {s['ndim']}-D, {s['threads']} thread(s), {s['mode']}: "
                       f"{s['contender']} x{s['geomean_ratio']:.2f}")
    m = result["machine"]
    out.append(f"- machine: {m['cpu']} ({m['vector_isa']}), torch {m['torch']}, onnxruntime "
               f"{m.get('onnxruntime', '-')}, commit {m['commit']}, before = "
               f"{result.get('before_commit', '-')[:7]}, load average before/after "
               f"{result['load_average_before'][0]:.1f}/{result['load_average_after'][0]:.1f}"
               + (" (provisional)" if result["provisional"] else ""))
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes (seconds)")
    ap.add_argument("--dims", default="1,2,3", help="comma-separated R to run (default all)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", default=None,
                    help="comma-separated thread counts, each run in turn (default: torch's)")
    ap.add_argument("--before", help="also time deformconv of this older commit")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    ap.add_argument("--no-timing", action="store_true", help="only the peak-memory children")
    ap.add_argument("--out", help="write the JSON results here")
    ap.add_argument("--table", metavar="RESULTS", nargs="+",
                    help="print the Markdown table of results files (timings of the first, "
                    "peak memory of the last that has it) and exit")
    a = ap.parse_args(argv)
    if a.table:
        results = []
        for path in a.table:
            with open(path) as f:
                results.append(json.load(f))
        first = results[0]
        first["rows"] = [r for res in results for r in res["rows"]]
        print(table(first))
        return
    dims = {int(x) for x in a.dims.split(",")}
    shapes = [p for p in (QUICK if a.quick else SHAPES) if p.ndim in dims]
    threads = [int(x) for x in a.threads.split(",")] if a.threads else [None]
    with tempfile.TemporaryDirectory() as folder:
        old = None
        if a.before:
            from before_after_cpu import import_old  # this folder
            old = import_old(a.before, folder)
        result = run(shapes, a.repeats, a.warmup, not a.no_memory, threads, old,
                     timing=not a.no_timing)
    if a.before:
        result["before_commit"] = subprocess.run(["git", "rev-parse", a.before], text=True,
                                                 capture_output=True).stdout.strip()
    result["command"] = "python benchmarks/nd_cpu.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
