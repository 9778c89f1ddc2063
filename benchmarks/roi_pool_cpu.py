"""Deformable RoI pooling benchmark at detector sizes: forward and forward+backward medians.

    python benchmarks/roi_pool_cpu.py [--reps 10] [--out FILE.json] [--device cpu|cuda] [--quick]

Shape: one FPN level of an 800x1344 image at stride 16 (2 x 256 x 50 x 84), 512 regions of
32 to 320 pixels, 7x7 bins, ``spatial_scale=1/16``, ``sampling_ratio`` 0 (adaptive) and 2.

Contenders, timed alternately (``deformconv.bench.time_contenders``: each repeat runs every
contender and mode once, in an order reversed every other repeat, so drift and the other
processes on the machine hit all of them alike), medians reported:

- ``deform_roi_pool``: the op with offsets (the public function, default kernel of the device);
- ``deform_roi_pool_no_offset``: the same op with ``offset=None`` (RoIAlign's numbers, the
  op's own path without the shift);
- ``torchvision_roi_align``: ``torchvision.ops.roi_align(aligned=True)`` with the same
  ``sampling_ratio``, when torchvision imports: the cost floor of plain RoIAlign.

Each row of the JSON output carries the machine, versions and commit. Numbers taken on a busy
machine are provisional (``"provisional": true`` when the load average of the minute before
the run exceeds half the cores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(N=2, C=256, H=50, W=84, R=512, output_size=7, spatial_scale=1 / 16)
QUICK = dict(N=1, C=32, H=20, W=30, R=64, output_size=7, spatial_scale=1 / 16)


def problem(torch, N, C, H, W, R, output_size, spatial_scale, device, dtype, seed=0):
    """input, rois (image coordinates), offsets, upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    img_h, img_w = H / spatial_scale, W / spatial_scale
    size = 32 + 288 * torch.rand(R, 2, generator=g, dtype=torch.float64)
    ctr = torch.rand(R, 2, generator=g, dtype=torch.float64) * torch.tensor([img_w, img_h])
    b = torch.randint(0, N, (R, 1), generator=g).double()
    rois = torch.cat([b, ctr - size / 2, ctr + size / 2], 1)
    x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    off = 0.3 * torch.randn(R, 2, output_size, output_size, generator=g, dtype=torch.float64)
    go = torch.randn(R, C, output_size, output_size, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (x, rois, off, go)]


def contenders(torch, shape, sampling_ratio, device, dtype):
    """name -> (forward fn, forward+backward fn)."""
    from deformconv import deform_roi_pool
    x, rois, off, go = problem(torch, **shape, device=device, dtype=dtype)
    ps = dict(output_size=shape["output_size"], spatial_scale=shape["spatial_scale"],
              sampling_ratio=sampling_ratio)
    xs = x.clone().requires_grad_()
    offs = off.clone().requires_grad_()
    res = {
        "deform_roi_pool": (lambda: deform_roi_pool(x, rois, off, **ps),
                            lambda: deform_roi_pool(xs, rois, offs, **ps).backward(go)),
        "deform_roi_pool_no_offset": (lambda: deform_roi_pool(x, rois, None, **ps),
                                      lambda: deform_roi_pool(xs, rois, None, **ps).backward(go)),
    }
    try:
        from torchvision.ops import roi_align
    except Exception as e:  # noqa: BLE001 - not installed or broken build
        print(f"torchvision roi_align unavailable ({type(e).__name__}); not compared")
    else:
        k = dict(output_size=shape["output_size"], spatial_scale=shape["spatial_scale"],
                 sampling_ratio=sampling_ratio, aligned=True)
        res["torchvision_roi_align"] = (lambda: roi_align(x, rois, **k),
                                        lambda: roi_align(xs, rois, **k).backward(go))
    return res


def run(torch, shape, reps, device="cpu", dtype=None, warmup=2):
    from deformconv.bench import (
        is_provisional,
        load_average,
        machine_info,
        medians,
        time_contenders,
    )

    dtype = dtype or torch.float32
    sync = torch.cuda.synchronize if device == "cuda" else None
    rows = []
    load = load_average()
    m = dict(machine_info(device), load_average=load, provisional=is_provisional(load))
    for sr in (0, 2):
        cons = contenders(torch, shape, sr, device, dtype)
        fns = {}
        for n, (fwd, fb) in cons.items():
            fns[n, "fwd"] = torch.no_grad()(fwd)
            fns[n, "fwd+bwd"] = fb
        times = time_contenders(fns, reps, warmup, sync=sync)
        for mode in ("fwd", "fwd+bwd"):
            of_mode = {n: times[n, mode] for n in cons}
            for n, (med, _, ratio) in medians(of_mode, "deform_roi_pool_no_offset").items():
                rows.append({**m, "shape": shape, "sampling_ratio": sr, "dtype": str(dtype),
                             "contender": n, "mode": mode, "median_ms": 1e3 * med,
                             "reps": reps, "ratio_to_no_offset": ratio})
                print(f"sr={sr} {n:26s} {mode:8s} {1e3 * med:10.2f} ms  x{ratio:5.2f} no-offset")
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="a small shape (smoke test)")
    p.add_argument("--out", default=None, help="JSON file for the rows")
    a = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    rows = run(torch, QUICK if a.quick else SHAPE, a.reps, a.device)
    if a.out:
        from deformconv.bench import write_json
        write_json(a.out, rows)
        print(f"wrote {len(rows)} rows to {a.out}")


if __name__ == "__main__":
    main()
