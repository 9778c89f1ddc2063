"""CPU benchmark of deform_conv1d / deform_conv3d against conv1d / conv3d of the same shape.

Method (as benchmarks/README.md for 2-D): float32, zero padding keeping the size, random
offsets (std 1) and a mask; every contender warmed up, then ``--repeats`` rounds in which the
contenders alternate (order reversed every other round, so drift hits all alike); medians and
minima reported, with the ratio to the plain convolution (the floor). Modes: ``forward``
(no grad) and ``train`` (forward + backward of every input). Peak memory: the extra resident
memory of one forward beyond its inputs and output, measured in a fresh process (Linux).
Results are written as JSON with the machine, versions and commit.

    python benchmarks/nd_cpu.py --out benchmarks/results/nd-cpu.json
    python benchmarks/nd_cpu.py --quick          # tiny shapes, a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

from deformconv import bench, deform_conv1d, deform_conv3d
from deformconv.testing import Problem

SHAPES = [Problem(N=8, C=256, O=256, size=(4096,), kernel=(3,), padding=1, offset_scale=1.0),
          Problem(N=2, C=64, O=64, size=(16, 56, 56), kernel=(3, 3, 3), padding=1,
                  offset_scale=1.0)]
QUICK = [Problem(N=2, C=16, O=16, size=(256,), kernel=(3,), padding=1, offset_scale=1.0),
         Problem(N=1, C=8, O=8, size=(6, 10, 10), kernel=(3, 3, 3), padding=1,
                 offset_scale=1.0)]
OPS = {1: (deform_conv1d, F.conv1d), 3: (deform_conv3d, F.conv3d)}


def _contenders(p: Problem, mode: str):
    deform, conv = OPS[p.ndim]
    t = p.tensors(torch.float32, requires_grad=mode == "train")
    go = p.grad_out(torch.float32)
    kw = p.kwargs()

    def run_deform():
        return deform(t["input"], t["offset"], t["weight"], t["bias"], mask=t["mask"], **kw)

    def run_conv():
        return conv(t["input"], t["weight"], t["bias"], **kw)

    def train(fn):
        def step():
            fn().backward(go)
        return step

    if mode == "forward":
        return {f"conv{p.ndim}d": torch.no_grad()(run_conv),
                "deformconv": torch.no_grad()(run_deform)}
    return {f"conv{p.ndim}d": train(run_conv), "deformconv": train(run_deform)}


_CHILD = r"""
import json, sys, torch, torch.nn.functional as F
from deformconv import deform_conv1d, deform_conv3d
from deformconv.bench import peak_extra_bytes
from deformconv.testing import Problem
p = Problem(**json.loads(sys.argv[1]))
which = sys.argv[2]
t = p.tensors(torch.float32)
def call(q, s):
    fn = {(1, 'deform'): deform_conv1d, (3, 'deform'): deform_conv3d}.get((q.ndim, which))
    if fn is None:
        conv = F.conv1d if q.ndim == 1 else F.conv3d
        return conv(s['input'], s['weight'], s['bias'], **q.kwargs())
    return fn(s['input'], s['offset'], s['weight'], s['bias'], mask=s['mask'], **q.kwargs())
tiny = p.__class__(**{**json.loads(sys.argv[1]), 'N': 1, 'size': [6] * p.ndim})
with torch.no_grad():
    call(tiny, tiny.tensors(torch.float32))  # warm up (libraries, allocator)
    grown, y = peak_extra_bytes(lambda: call(p, t))
    print(json.dumps(grown - y.numel() * y.element_size()))
"""


def peak_extra_bytes(p: Problem, which: str) -> int:
    """Extra peak resident memory of one forward (``which``: 'deform' or 'conv')."""
    spec = json.dumps({k: getattr(p, k) for k in ("N", "C", "O", "size", "kernel", "stride",
                                                    "padding", "dilation", "groups",
                                                    "offset_groups", "mask", "bias",
                                                    "offset_scale")})
    done = subprocess.run([sys.executable, "-c", _CHILD, spec, which], capture_output=True,
                          text=True, check=True, env=dict(os.environ))
    return max(0, int(done.stdout.strip().splitlines()[-1]))


def run(shapes, repeats: int, warmup: int, memory: bool, log=print) -> dict:
    # the machine's load over the minute before the run (the run's own threads would count)
    load = bench.load_average()
    rows = []
    for p in shapes:
        for mode in ("forward", "train"):
            times = bench.time_contenders(_contenders(p, mode), repeats, warmup)
            for name, (med, low, ratio) in bench.medians(times, f"conv{p.ndim}d").items():
                rows.append(dict(shape=p.name, mode=mode, contender=name,
                                 median_ms=round(1e3 * med, 3), min_ms=round(1e3 * low, 3),
                                 ratio_to_conv=round(ratio, 3), repeats=repeats))
                log(f"{p.name:40s} {mode:8s} {name:11s} {1e3 * med:10.2f} ms x{ratio:.2f}")
        if memory:
            extra = {w: peak_extra_bytes(p, w) for w in ("conv", "deform")}
            rows.append(dict(shape=p.name, mode="forward-peak-extra-bytes", **extra))
            log(f"{p.name:40s} peak extra memory of a forward: deform "
                f"{extra['deform'] / 2**20:.1f} MiB, conv {extra['conv'] / 2**20:.1f} MiB")
    return {"machine": bench.machine_info(), "load_average_before": load,
            "provisional": bench.is_provisional(load), "rows": rows}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes (seconds)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    ap.add_argument("--out", help="write the JSON results here")
    a = ap.parse_args(argv)
    result = run(QUICK if a.quick else SHAPES, a.repeats, a.warmup, not a.no_memory)
    if a.out:
        bench.write_json(a.out, result)


if __name__ == "__main__":
    main()
