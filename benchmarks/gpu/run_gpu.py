"""One script for a GPU lease: correctness per dtype, a memory check, and the benchmark.

    python benchmarks/gpu/run_gpu.py [--out DIR] [--reps 20] [--skip-sanitizer]
    python benchmarks/gpu/run_gpu.py --dry-run   # no GPU: Triton interpreter, tiny shapes

Steps (method in README.md next to this file):
1. correctness: the registered op on CUDA (Triton) against the float64 oracle, float32 (TF32
   off), float16 and bfloat16, forward and all five gradients;
2. memcheck: ``compute-sanitizer --tool memcheck`` on a forward+backward with NaN/inf/1e30
   offsets (skipped, and said so, when compute-sanitizer is not on PATH);
3. benchmark: the issue's four shapes in bfloat16, ours against cuDNN ``conv2d`` of the same
   shape and dtype and torchvision's ``deform_conv2d`` (float16) when it imports; forward and
   forward+backward medians over alternating repeats (CUDA events), and peak memory.

Every row written (``results.json``, ``results.csv``) carries the GPU name, torch and triton
versions and the git commit.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHAPES = [  # (N, C, H, W) -> O, 3x3, padding 1
    ((8, 128, 100, 168), 128), ((8, 256, 50, 84), 256), ((8, 512, 25, 42), 512),
    ((32, 64, 56, 56), 64)]
DRY_SHAPES = [((1, 8, 5, 7), 8)]


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "benchmarks/gpu/results")),
                   help="folder for results.json / results.csv (default: $OUT)")
    p.add_argument("--reps", type=int, default=20, help="timed repeats per contender")
    p.add_argument("--skip-sanitizer", action="store_true")
    p.add_argument("--dry-run", action="store_true",
                   help="no GPU: run every step on CPU under the Triton interpreter, tiny shapes")
    return p.parse_args()


def _meta(torch):
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    try:
        import triton
        tv = triton.__version__
    except ImportError:
        tv = "not installed"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (dry run)"
    return {"gpu": gpu, "torch": torch.__version__, "triton": tv, "commit": commit}


def _problem(N, C, H, W, O, **kwargs):
    """A 3x3, padding 1 problem with weights scaled to unit output variance."""
    from deformconv.testing import Problem

    scale = (C // kwargs.get("groups", 1) * 9) ** -0.5
    return Problem(N=N, C=C, O=O, size=(H, W), kernel=(3, 3), padding=1, weight_scale=scale,
                   **kwargs)


def _leaves(p, dtype, dev):
    """input, offset, weight, bias, mask of ``p`` on ``dev``, requiring gradients."""
    t = p.tensors(dtype, device=dev, requires_grad=True)
    return [t[k] for k in ("input", "offset", "weight", "bias", "mask")]


def check_correctness(torch, dev, meta):
    """Registered op (Triton on CUDA) vs the float64 oracle, forward and all grads."""
    from deformconv.ops import deform_conv2d
    from deformconv.reference import deform_conv2d_ref
    from deformconv.testing import TOLERANCE, relative_error

    torch.backends.cudnn.allow_tf32 = False  # the flag the kernels follow for float32
    cases = [_problem(2, 24, 11, 13, 20, groups=2, offset_groups=3),
             _problem(1, 64, 9, 10, 48, stride=2, dilation=2)]
    if dev == "cpu":
        cases = [_problem(1, 6, 5, 6, 4, groups=2, offset_groups=3)]
    rows = []
    for dname in ("float32", "float16", "bfloat16"):
        dtype = getattr(torch, dname)
        for p in cases:
            ts = _leaves(p, dtype, dev)
            x, off, w, b, m = ts
            out = deform_conv2d(x, off, w, b, mask=m, **p.kwargs())
            go = p.grad_out(dtype, device=dev)
            grads = torch.autograd.grad(out, ts, go)
            rs = [v.detach().cpu().double().requires_grad_() for v in ts]
            ref = deform_conv2d_ref(rs[0], rs[1], rs[2], rs[3], mask=rs[4], **p.kwargs())
            rgrads = torch.autograd.grad(ref, rs, go.cpu().double())
            worst = 0.0
            for a, r in zip((out, *grads), (ref, *rgrads)):
                finite = bool(torch.isfinite(a).all())
                worst = max(worst, relative_error(a, r) if finite else float("inf"))
            ok = worst <= TOLERANCE[dtype]
            rows.append({**meta, "step": "correctness", "dtype": dname, "case": p.name,
                         "max_rel_error": worst, "tolerance": TOLERANCE[dtype], "passed": ok})
            print(f"correctness {dname} {p.name}: max rel error {worst:.2e} "
                  f"{'ok' if ok else 'FAILED'}")
    return rows


DRY_DISPATCH = """
from deformconv.ops import dispatch
dispatch.set_backend("triton")  # CPU tensors through the Triton launchers, interpreted
"""
HOSTILE = """
import torch
from deformconv.ops import deform_conv2d
{setup}
dev = "{dev}"
N, C, H, W = {shape}
x = torch.randn(N, C, H, W, device=dev, requires_grad=True)
w = torch.randn(24, C, 3, 3, device=dev, requires_grad=True)
off = 2 * torch.randn(N, 18, H, W, device=dev)
flat = off.view(-1)
bad = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 3e38], device=dev)
flat[::7] = bad.repeat(flat[::7].numel() // 6 + 1)[:flat[::7].numel()]
off.requires_grad_()
m = torch.rand(N, 9, H, W, device=dev, requires_grad=True)
out = deform_conv2d(x, off, w, padding=1, mask=m)
out.square().sum().backward()
assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
assert torch.isfinite(off.grad).all() and torch.isfinite(m.grad).all()
{sync}
print("hostile offsets: finite outputs and gradients")
"""


def check_memory(dev, meta, skip):
    """Hostile offsets under compute-sanitizer memcheck (or plainly, in a dry run)."""
    code = HOSTILE.format(dev=dev, sync="torch.cuda.synchronize()" if dev == "cuda" else "",
                          setup=DRY_DISPATCH if dev == "cpu" else "",
                          shape=(2, 16, 9, 11) if dev == "cuda" else (1, 4, 5, 6))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    tool = shutil.which("compute-sanitizer")
    if dev == "cpu" or skip or tool is None:
        why = "dry run" if dev == "cpu" else ("skipped" if skip else "compute-sanitizer missing")
        cmd = [sys.executable, "-c", code]
    else:
        why = "memcheck"
        cmd = [tool, "--tool", "memcheck", "--error-exitcode", "1", sys.executable, "-c", code]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
    print(f"memory check ({why}): exit {r.returncode}: {' | '.join(tail)}")
    return [{**meta, "step": "memcheck", "mode": why, "exit_code": r.returncode,
             "passed": r.returncode == 0, "tail": " | ".join(tail)}]


def _timer(torch, dev):
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


def _contenders(torch, dev, shape, O):
    """name -> (forward fn, forward+backward fn, dtype), inputs allocated once."""
    import torch.nn.functional as F

    from deformconv.ops import deform_conv2d
    res = {}
    bf16 = torch.bfloat16 if dev == "cuda" else torch.float32
    p = _problem(*shape, O)
    x, off, w, b, m = _leaves(p, bf16, dev)
    gy = p.grad_out(bf16, device=dev)
    res["deformconv_triton"] = (lambda: deform_conv2d(x, off, w, b, padding=1, mask=m),
                                lambda: deform_conv2d(x, off, w, b, padding=1,
                                                      mask=m).backward(gy), bf16)
    xc, wc, bc = (v.detach().clone().requires_grad_() for v in (x, w, b))
    res["cudnn_conv2d"] = (lambda: F.conv2d(xc, wc, bc, padding=1),
                           lambda: F.conv2d(xc, wc, bc, padding=1).backward(gy), bf16)
    try:
        from torchvision.ops import deform_conv2d as tv_dcn
        h = [v.detach().half().requires_grad_() for v in (x, off, w, b, m)]
        gh = gy.half()
        res["torchvision_fp16"] = (lambda: tv_dcn(h[0], h[1], h[2], h[3], padding=1, mask=h[4]),
                                   lambda: tv_dcn(h[0], h[1], h[2], h[3], padding=1,
                                                  mask=h[4]).backward(gh), torch.float16)
    except Exception as e:  # noqa: BLE001 - not installed, or no CUDA build
        print(f"torchvision deform_conv2d unavailable: {type(e).__name__}: {e}")
    return res


def benchmark(torch, dev, meta, reps, shapes):
    timer = _timer(torch, dev)
    rows = []
    for shape, O in shapes:
        cons = _contenders(torch, dev, shape, O)
        flops = _problem(*shape, O).flops()
        for fwd, fb, _ in cons.values():  # warm-up (autotuning, cuDNN heuristics)
            for _ in range(2 if dev == "cuda" else 0):
                with torch.no_grad():
                    fwd()
                fb()
        times = {(n, mode): [] for n in cons for mode in ("fwd", "fwd+bwd")}
        for _ in range(reps):  # alternate contenders so clocks and caches drift evenly
            for n, (fwd, fb, _) in cons.items():
                with torch.no_grad():
                    times[(n, "fwd")].append(timer(fwd))
                times[(n, "fwd+bwd")].append(timer(fb))
        peak = {}
        for n, (_, fb, _) in cons.items():
            if dev == "cuda":
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                fb()
                torch.cuda.synchronize()
                peak[n] = torch.cuda.max_memory_allocated() - base
            else:
                peak[n] = None
        for (n, mode), ts in times.items():
            med = statistics.median(ts)
            floor = statistics.median(times[("cudnn_conv2d", mode)])
            fl = flops * (3 if mode == "fwd+bwd" else 1)
            rows.append({**meta, "step": "benchmark", "shape": f"{shape}->{O}", "contender": n,
                         "dtype": str(cons[n][2]).replace("torch.", ""), "mode": mode,
                         "median_ms": med, "tflops": fl / med / 1e9,
                         "ratio_to_conv2d": med / floor,
                         "peak_bytes_fwd_bwd": peak[n],
                         "peak_ratio_to_conv2d": (peak[n] / peak["cudnn_conv2d"]
                                                  if peak[n] and peak["cudnn_conv2d"] else None),
                         "reps": reps})
            print(f"{shape}->{O} {n:18s} {mode:8s} {med:9.3f} ms  x{med / floor:5.2f} conv2d")
        ours = {r["mode"]: r["median_ms"] for r in rows
                if r["shape"] == f"{shape}->{O}" and r["contender"] == "deformconv_triton"}
        for r in rows:
            if r["shape"] == f"{shape}->{O}" and r["contender"] == "torchvision_fp16":
                r["speedup_of_ours"] = r["median_ms"] / ours[r["mode"]]
        del cons
    return rows


def main():
    a = _args()
    if a.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton or the kernels are imported
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    if a.dry_run:
        # Route CPU tensors through the CUDA dispatch (Triton launchers, interpreted) so the
        # dry run exercises the same code path as the GPU run.
        exec(DRY_DISPATCH, {})

    dev = "cpu" if a.dry_run else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU: run on a GPU, or pass --dry-run")
    meta = _meta(torch)
    rows = check_correctness(torch, dev, meta)
    rows += check_memory(dev, meta, a.skip_sanitizer)
    rows += benchmark(torch, dev, meta, 1 if a.dry_run else a.reps,
                      DRY_SHAPES if a.dry_run else SHAPES)
    if a.dry_run:  # the script's code path only: interpreted kernels would take minutes
        from deformconv import use_backend
        with use_backend("torch"):
            rows += benchmark_nd(torch, meta, 1, dev)
            rows += benchmark_roi_pool(torch, meta, 1, dev)
    else:
        rows += benchmark_nd(torch, meta, a.reps, dev)
        rows += benchmark_roi_pool(torch, meta, a.reps, dev)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    keys = sorted({k for r in rows for k in r})
    with open(out / "results.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, keys)
        wr.writeheader()
        wr.writerows(rows)
    print(f"wrote {len(rows)} rows to {out}")
    failed = [r for r in rows if r.get("passed") is False]
    sys.exit(1 if failed else 0)


def benchmark_roi_pool(torch, meta, reps, dev="cuda"):
    """Deformable RoI pooling on the GPU: ``benchmarks/roi_pool_cpu.py``'s contenders (the op,
    the op without offsets, torchvision's ``roi_align`` when it imports) at its detector shape
    and at 2000 regions on a stride-8 level, float32 and bfloat16, CUDA-synchronised medians.
    Rows are tagged ``step: benchmark_roi_pool``. The dry run uses a quick shape on CPU."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import roi_pool_cpu
    shapes = [roi_pool_cpu.SHAPE, dict(N=2, C=256, H=100, W=168, R=2000, output_size=7,
                                       spatial_scale=1 / 8)] if dev == "cuda" else \
        [roi_pool_cpu.QUICK]
    rows = []
    for shape in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            for r in roi_pool_cpu.run(torch, shape, reps, dev, dtype):
                rows.append({**r, **meta, "step": "benchmark_roi_pool"})
    return rows


def _nd_calls(deform, conv, ndim, t, kw):
    return {"deformconv": functools.partial(deform, t["input"], t["offset"], t["weight"],
                                            t["bias"], mask=t["mask"], **kw),
            f"cudnn_conv{ndim}d": functools.partial(conv, t["input"], t["weight"], t["bias"],
                                                    **kw)}


def _backward(fn, go):
    fn().backward(go)


def benchmark_nd(torch, meta, reps, dev="cuda"):
    """1-D and 3-D deformable convolution on the GPU against cuDNN's conv1d/conv3d of the same
    shape (the floor), at ``benchmarks/nd_cpu.py``'s shapes, float32 and bfloat16, forward and
    forward+backward, alternating, CUDA-event medians. Rows: ``step: benchmark_nd``."""
    import torch.nn.functional as F

    from deformconv import deform_conv1d, deform_conv3d
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import nd_cpu
    timer = _timer(torch, dev)
    rows = []
    for p in nd_cpu.SHAPES if dev == "cuda" else nd_cpu.QUICK:
        deform, conv = {1: (deform_conv1d, F.conv1d), 3: (deform_conv3d, F.conv3d)}[p.ndim]
        for dtype in (torch.float32, torch.bfloat16):
            t = p.tensors(dtype, device=dev, requires_grad=True)
            go = p.grad_out(dtype, device=dev)
            kw = p.kwargs()
            fns = _nd_calls(deform, conv, p.ndim, t, kw)
            times = {(n, m): [] for n in fns for m in ("fwd", "fwd+bwd")}
            for i in range(reps + 2):  # two warm-up rounds (autotuning), then alternate
                for n, fn in fns.items():
                    with torch.no_grad():
                        tf = timer(fn)
                    tb = timer(functools.partial(_backward, fn, go))
                    if i >= 2:
                        times[(n, "fwd")].append(tf)
                        times[(n, "fwd+bwd")].append(tb)
            for (n, mode), ts in times.items():
                floor = statistics.median(times[(f"cudnn_conv{p.ndim}d", mode)])
                med = statistics.median(ts)
                rows.append({**meta, "step": "benchmark_nd", "shape": p.name, "contender": n,
                             "dtype": str(dtype).replace("torch.", ""), "mode": mode,
                             "median_ms": med, "ratio_to_conv2d": med / floor, "reps": reps})
                print(f"{p.name} {n:14s} {mode:8s} {med:9.3f} ms  x{med / floor:5.2f} floor")
    return rows


if __name__ == "__main__":
    main()
