"""DCNv3 on CPU at InternImage-T's stage shapes: forward and forward+backward time, peak memory.

    python benchmarks/dcnv3_cpu.py [--reps 5] [--threads 1] [--out FILE.json] [--quick]

Shapes (N, H, W, C) with G groups, 3x3, stride 1, pad 1, offsets N(0, 1.5^2) pixels, masks
U(0, 1), float32: (1, 56, 56, 64) G=4, (1, 28, 28, 128) G=8, (1, 14, 14, 256) G=16,
(1, 7, 7, 512) G=32, and the same at batch 8.

Contenders (``deformconv.testing_dcn.bench_contenders``, shared with the GPU step), built
once per shape and timed alternately (each repeat runs every contender once,
in alternating order, so drift and the machine's other load hit all alike); medians reported:

- ``dcnv3``: this library's ``deformconv.dcnv3`` (pure-PyTorch kernels on CPU);
- ``internimage_pytorch``: InternImage's pure-PyTorch formulation (``grid_sample`` on every
  point of every group, written from its published description);
- ``dwconv3x3``: a depthwise 3x3 ``conv2d`` of the same channels (channels-last), the same
  multiply-adds on a fixed grid: the floor.

``train`` is forward and backward of input, offsets and mask (the floor: input and weight)
with a fixed output gradient. Peak memory: in a fresh process per contender and mode, the
growth of the peak resident size (``VmHWM`` after resetting it through
``/proc/self/clear_refs``) over one call, minus the output's size, with glibc's
``MALLOC_MMAP_THRESHOLD_=4096`` so freed memory leaves the resident set. Each row carries the
machine, versions, commit, threads and the load average of the minute before the run
(``provisional`` when it exceeds half the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = [(56, 64, 4), (28, 128, 8), (14, 256, 16), (7, 512, 32)]
QUICK = [(1, 12, 16, 2), (2, 6, 32, 4)]


def shapes(quick: bool):
    if quick:
        return QUICK
    return [(N, H, C, G) for N in (1, 8) for H, C, G in STAGES]


def contenders(N: int, H: int, C: int, G: int):
    """{name: {"forward": fn, "train": fn}} on one shape's float32 tensors."""
    from deformconv.testing_dcn import DCNProblem, bench_contenders

    return bench_contenders(DCNProblem(N=N, H=H, W=H, group=G, group_channels=C // G))


def peak_child(N: int, H: int, C: int, G: int, name: str, mode: str, threads: int) -> None:
    """In this (fresh) process: the peak extra bytes of one call, printed as JSON."""
    import torch

    from deformconv.bench import peak_extra_bytes

    torch.set_num_threads(threads)
    fn = contenders(1, 6, 2 * G, G)[name][mode]
    fn()  # warm up code paths on a tiny shape
    fn = contenders(N, H, C, G)[name][mode]
    grown, out = peak_extra_bytes(fn)
    out_bytes = sum(o.numel() * o.element_size() for o in
                    (out if isinstance(out, (tuple, list)) else [out]))
    print(json.dumps(max(0, grown - out_bytes)))


def peak_bytes(shape, name: str, mode: str, threads: int) -> int:
    code = [sys.executable, __file__, "--peak-child", json.dumps([*shape, name, mode, threads])]
    # Every allocation above 4 KiB is its own mapping, returned on free: the resident size
    # then follows live memory, and a call cannot hide its peak in heap freed before it.
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), MALLOC_MMAP_THRESHOLD_="4096")
    out = subprocess.run(code, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--peak-child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.peak_child:
        peak_child(*json.loads(a.peak_child))
        return
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from deformconv.bench import (
        is_provisional,
        load_average,
        machine_info,
        medians,
        time_contenders,
    )

    torch.set_num_threads(a.threads)
    load = load_average()
    info = dict(machine_info(), threads=a.threads, load_average=round(load, 2),
                provisional=is_provisional(load), dtype="float32")
    rows = []
    for shape in shapes(a.quick):
        N, H, C, G = shape
        built = contenders(*shape)
        for mode in ("forward", "train"):
            times = time_contenders({k: v[mode] for k, v in built.items()}, a.reps, 1)
            for name, (med, low, ratio) in medians(times, "dwconv3x3").items():
                row = dict(info, shape=f"{N}x{H}x{H}x{C}", group=G, mode=mode,
                           contender=name, median_ms=round(med * 1e3, 3),
                           min_ms=round(low * 1e3, 3), reps=len(times[name]),
                           ratio_to_dwconv=round(ratio, 2))
                if not a.no_memory:
                    row["peak_extra_mb"] = round(peak_bytes(shape, name, mode, a.threads)
                                                 / 2 ** 20, 2)
                rows.append(row)
                print(f"{row['shape']} G={G} {mode:8s} {name:20s} {row['median_ms']:9.2f} ms"
                      f"  x{row['ratio_to_dwconv']:<6} {row.get('peak_extra_mb', '-')} MB",
                      flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
