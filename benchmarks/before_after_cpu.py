"""CPU before/after of a code change: deform_conv1d/2d/3d of an older commit and of this tree,
against conv1d/2d/3d, in one process.

Method (benchmarks/README.md): float32, zero padding keeping the size, random offsets (std 1)
and a mask; every contender warmed up, then ``--repeats`` rounds in which the contenders
alternate (order reversed every other round, so drift hits all alike); medians and minima,
with the ratio to the plain convolution. Modes: ``forward`` (no grad) and ``train`` (forward +
backward of every input). The older version is extracted with ``git archive <commit>`` into a
temporary folder and imported as the package ``deformconv_old`` with its ops registered under
the namespace ``deformconv_old``, so both versions live in one process. The load averages, the
machine (CPU, vector extension, versions, commit) and the older commit are written with the
results.

    python benchmarks/before_after_cpu.py --before <commit> --out results.json
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile

import torch
import torch.nn.functional as F

import deformconv
from deformconv import bench
from deformconv.testing import Problem

SHAPES = [Problem(N=4, C=128, O=128, size=(2048,), kernel=(3,), padding=1, offset_scale=1.0),
          Problem(N=2, C=64, O=64, size=(56, 56), kernel=(3, 3), padding=1, offset_scale=1.0),
          Problem(N=1, C=32, O=32, size=(8, 28, 28), kernel=(3, 3, 3), padding=1,
                  offset_scale=1.0)]
QUICK = [Problem(N=1, C=8, O=8, size=(64,), kernel=(3,), padding=1, offset_scale=1.0),
         Problem(N=1, C=8, O=8, size=(12, 12), kernel=(3, 3), padding=1, offset_scale=1.0),
         Problem(N=1, C=4, O=4, size=(4, 6, 6), kernel=(3, 3, 3), padding=1, offset_scale=1.0)]
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def import_old(commit: str, folder: str):
    """``deformconv`` of ``commit`` as the package ``deformconv_old`` (ops under the
    ``deformconv_old`` namespace), extracted into ``folder``."""
    repo = pathlib.Path(__file__).resolve().parents[1]
    tar = pathlib.Path(folder) / "old.tar"
    with open(tar, "wb") as f:
        subprocess.run(["git", "-C", str(repo), "archive", commit, "src/deformconv"],
                       stdout=f, check=True)
    with tarfile.open(tar) as t:
        t.extractall(folder)  # noqa: S202 (our own repository's archive)
    src = pathlib.Path(folder) / "src" / "deformconv"
    dst = pathlib.Path(folder) / "deformconv_old"
    src.rename(dst)
    for path in dst.rglob("*.py"):
        text = path.read_text()
        text = text.replace("deformconv::", "deformconv_old::")
        # every reference to the op namespace, also getattr(torch.ops.deformconv, name)
        text = re.sub(r"\btorch\.ops\.deformconv\b", "torch.ops.deformconv_old", text)
        text = re.sub(r'Library\("deformconv"', 'Library("deformconv_old"', text)
        text = re.sub(r"\b(from|import) deformconv\b", r"\1 deformconv_old", text)
        path.write_text(text)
    sys.path.insert(0, folder)
    return importlib.import_module("deformconv_old")


def _contenders(p: Problem, mode: str, old) -> dict:
    R = p.ndim
    t = p.tensors(torch.float32, requires_grad=mode == "train")
    go = p.grad_out(torch.float32)
    kw = p.kwargs()
    new_fn = getattr(deformconv, f"deform_conv{R}d")
    old_fn = getattr(old, f"deform_conv{R}d")

    def call(fn):
        return lambda: fn(t["input"], t["offset"], t["weight"], t["bias"], mask=t["mask"], **kw)

    fns = {f"conv{R}d": lambda: CONV[R](t["input"], t["weight"], t["bias"], **kw),
           "before": call(old_fn), "after": call(new_fn)}
    if mode == "forward":
        return {k: torch.no_grad()(f) for k, f in fns.items()}

    def train(fn):
        def step():
            fn().backward(go)
        return step
    return {k: train(f) for k, f in fns.items()}


def run(shapes, repeats: int, warmup: int, old, log=print) -> dict:
    load = bench.load_average()
    rows = []
    for p in shapes:
        for mode in ("forward", "train"):
            times = bench.time_contenders(_contenders(p, mode, old), repeats, warmup)
            for name, (med, low, ratio) in bench.medians(times, f"conv{p.ndim}d").items():
                rows.append(dict(shape=p.name, mode=mode, contender=name,
                                 median_ms=round(1e3 * med, 3), min_ms=round(1e3 * low, 3),
                                 ratio_to_conv=round(ratio, 3), repeats=repeats))
                log(f"{p.name:40s} {mode:8s} {name:8s} {1e3 * med:10.2f} ms x{ratio:.2f}")
    return {"machine": bench.machine_info(), "load_average_before": load,
            "load_average_after": bench.load_average(),
            "provisional": bench.is_provisional(load), "rows": rows}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="the older commit")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (seconds)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", help="write the JSON results here")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        old = import_old(a.before, folder)
        result = run(QUICK if a.quick else SHAPES, a.repeats, a.warmup, old)
    result["before_commit"] = subprocess.run(["git", "rev-parse", a.before], text=True,
                                             capture_output=True).stdout.strip()
    if a.out:
        bench.write_json(a.out, result)


if __name__ == "__main__":
    main()
