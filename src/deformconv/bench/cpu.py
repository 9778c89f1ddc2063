"""CPU benchmark: contenders alternating in one process, medians, ratios to nn.Conv2d.

The method is written down in ``benchmarks/README.md``. Results are rows of data (JSON) with
the machine, the versions and the commit they came from.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import List, Optional

import torch

from ..testing import Problem
from .contenders import CONTENDERS, bench_tensors, label, problem
from .timing import is_provisional, load_average, machine_info, medians, time_contenders, write_json

__all__ = ["run", "machine_info", "time_contenders"]  # the last two: older scripts import them

# The DCN layers of a detector at 800x1333 (strides 8, 16, 32) and a few-channel shape where
# sampling dominates; then the sweep's variants.
SHAPES = [problem(2, 128, 100, 168, 128), problem(2, 256, 50, 84, 256),
          problem(2, 512, 25, 42, 512), problem(8, 64, 56, 56, 64)]
VARIANTS = [problem(2, 256, 50, 84, 256, offset_groups=4),
            problem(2, 256, 50, 84, 256, stride=2),
            problem(2, 256, 50, 84, 256, dilation=2, padding=2)]
QUICK = [problem(1, 32, 20, 24, 32), problem(2, 16, 12, 12, 16, offset_groups=2)]


def peak_extra_forward_bytes(p: Problem) -> int:
    """Peak memory a forward adds beyond its inputs and output (buffers, columns): in a fresh
    process that allocates the inputs and warms the op up on two small inputs (the kernel's
    GEMM and its tap-volume convolution), the growth
    :func:`~deformconv.bench.timing.peak_extra_bytes` measures, minus the output's size."""
    fields = {k: getattr(p, k) for k in p.__dataclass_fields__ if k != "extra"}
    code = (
        "import torch, json\n"
        "from deformconv.bench.contenders import bench_tensors\n"
        "from deformconv.testing import Problem\n"
        "from deformconv import deform_conv2d\n"
        "from deformconv.bench.timing import peak_extra_bytes\n"
        f"p = Problem(**{fields!r})\n"
        "x, off, w, b, m, _ = bench_tensors(p)\n"
        # Two warm-ups: the kernel's GEMM (weight above the columns) and its tap-volume
        # convolution (columns above the weight) make their one-time allocations there.
        f"for s in (8, {math.ceil((2 * p.O) ** 0.5) + 2}):\n"
        "    small = p.with_(N=1, size=(s,) * p.ndim, stride=1, dilation=1)\n"
        "    deform_conv2d(**small.tensors(torch.float32), **small.kwargs())\n"
        "grown, y = peak_extra_bytes(lambda: deform_conv2d(x, off, w, b, mask=m, **p.kwargs()))\n"
        "print(json.dumps(grown - y.numel() * y.element_size()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ))
    return max(0, json.loads(out.stdout.strip().splitlines()[-1]))


def run_problem(p: Problem, names: List[str], repeats: int, warmup: int) -> List[dict]:
    rows = []
    built = {k: CONTENDERS[k](p) for k in names}
    for mode in ("forward", "train"):
        fns = {k: v[mode] for k, v in built.items() if v[mode] is not None}
        with torch.set_grad_enabled(mode == "train"):
            times = time_contenders(fns, repeats, warmup)
        for k, (med, low, ratio) in medians(times, "conv2d").items():
            rows.append({"shape": label(p), "mode": mode, "contender": k,
                         "median_ms": round(med * 1e3, 3), "min_ms": round(low * 1e3, 3),
                         "ratio_to_conv2d": round(ratio, 3), "repeats": len(times[k])})
    return rows


def summarize(rows: List[dict], shapes: List[Problem]) -> List[dict]:
    """Geometric mean of the ratios over the main shapes, per contender and mode."""
    main = {label(p) for p in shapes}
    out = []
    for mode in ("forward", "train"):
        for k in CONTENDERS:
            rs = [r["ratio_to_conv2d"] for r in rows
                  if r["mode"] == mode and r["contender"] == k and r["shape"] in main]
            if rs and len(rs) == len(main):
                out.append({"mode": mode, "contender": k,
                            "geomean_ratio": round(statistics.geometric_mean(rs), 3)})
    return out


def run(shapes: List[Problem], variants: List[Problem], names: List[str], repeats: int,
        warmup: int, memory: bool, out_path: Optional[str], log=print) -> dict:
    load = load_average()
    info = machine_info()
    log(f"# {info['cpu']}, {info['threads']} threads, torch {info['torch']}, "
        f"commit {info['commit']}")
    rows: List[dict] = []
    for p in shapes + variants:
        new = run_problem(p, names, repeats, warmup)
        rows += new
        for r in new:
            log(f"{r['shape']:<28} {r['mode']:<8} {r['contender']:<20} "
                f"{r['median_ms']:>10.2f} ms  x{r['ratio_to_conv2d']:.2f}")
    summary = summarize(rows, shapes)
    for s in summary:
        log(f"geomean over main shapes: {s['mode']:<8} {s['contender']:<20} "
            f"x{s['geomean_ratio']:.2f}")
    result = {"machine": info, "rows": rows, "summary": summary,
              "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "load_average_before": load, "load_average_after": load_average(),
              "provisional": is_provisional(load)}
    if memory and shapes:
        p = shapes[0]
        extra = peak_extra_forward_bytes(p)
        x, _, _, _, _, go = bench_tensors(p)
        io = (x.numel() + go.numel()) * 4
        result["memory"] = {"shape": label(p), "peak_extra_forward_bytes": extra,
                            "input_plus_output_bytes": io, "ratio": round(extra / io, 3)}
        log(f"peak extra memory of a forward on {label(p)}: {extra / 2**20:.1f} MiB = "
            f"{extra / io:.2f} x (input + output = {io / 2**20:.1f} MiB)")
    if out_path:
        write_json(out_path, result)
        log(f"wrote {out_path}")
    return result
