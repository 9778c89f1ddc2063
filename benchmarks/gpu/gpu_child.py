"""What ``run_gpu.py`` runs under compute-sanitizer, in a process of its own:

    python benchmarks/gpu/gpu_child.py hostile [--device cuda]   # step sanitizer

``hostile``: forward+backward of the 2-D op with NaN/inf/1e30 offsets, and of deformable RoI
pooling with hostile regions (NaN/inf/1e30 coordinates, batch indices out of range through the
raw op, which the public function would refuse) and hostile offsets, float32 and bfloat16;
every output and gradient must be finite, a region with a batch index out of range pools to 0.
Exit 0 and a last line ``hostile: ok`` when so; 1 with the failed check otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BAD = (float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 3e38)


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(what)


def hostile_conv(torch, dev, dtype, shape=(2, 16, 9, 11), O=24):
    from deformconv import deform_conv2d
    N, C, H, W = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, H, W, generator=g).to(dev, dtype).requires_grad_()
    w = (torch.randn(O, C, 3, 3, generator=g) / (C * 9) ** 0.5).to(dev, dtype).requires_grad_()
    b = torch.randn(O, generator=g).to(dev, dtype).requires_grad_()
    off = 2 * torch.randn(N, 2 * 2 * 9, H, W, generator=g)       # two offset groups
    flat = off.view(-1)
    bad = torch.tensor(BAD).repeat(flat[::5].numel() // len(BAD) + 1)[:flat[::5].numel()]
    flat[::5] = bad
    off = off.to(dev, dtype).requires_grad_()
    m = torch.rand(N, 2 * 9, H, W, generator=g).to(dev, dtype).requires_grad_()
    out = deform_conv2d(x, off, w, b, padding=1, mask=m)
    go = torch.randn(out.shape, generator=g).to(dev, dtype)
    grads = torch.autograd.grad(out, [x, off, w, b, m], go)
    for name, t in zip(("output", "input", "offset", "weight", "bias", "mask"), (out, *grads)):
        _check(bool(torch.isfinite(t).all()), f"conv2d {dtype}: non-finite {name}")


def hostile_roi(torch, dev, dtype, small=False):
    from deformconv.ops.roi_pool.library import deform_roi_pool_op
    from deformconv.testing import RoIProblem
    p = (RoIProblem(N=2, C=2, H=4, W=5, R=0, output_size=(1, 1), spatial_scale=0.5) if small
         else RoIProblem(N=2, C=8, H=9, W=11, R=14, output_size=(3, 3), spatial_scale=0.5))
    ph, pw = p.output_size
    t = p.tensors(torch.float64, "cpu", 0)
    nan, inf = float("nan"), float("inf")
    bad_rows = torch.tensor([
        [0, nan, 1, 5, 6], [1, 1, nan, nan, 6], [0, -inf, -inf, inf, inf], [1, 0, 0, inf, 4],
        [0, 1e30, 1e30, 2e30, 2e30], [1, -1e30, -1e30, 1e30, 1e30], [0, 3, 3, 1e30, 3],
        [-1, 1, 1, 6, 6], [2, 1, 1, 6, 6], [1e9, 1, 1, 6, 6], [nan, 1, 1, 6, 6],
        [-1e30, 1, 1, 6, 6]], dtype=torch.float64)
    out_of_range = torch.tensor([False] * 7 + [True] * 5)
    rois = torch.cat([t["rois"], bad_rows])
    R = rois.shape[0]
    g = torch.Generator().manual_seed(3)
    off = torch.randn(R, 2, ph, pw, generator=g, dtype=torch.float64)
    off.view(-1)[::4] = torch.tensor(BAD, dtype=torch.float64).repeat(20)[:off.view(-1)[::4]
                                                                          .numel()]
    x = t["input"].to(dev, dtype).requires_grad_()
    off = off.to(dev, dtype).requires_grad_()
    out = deform_roi_pool_op(x, rois.to(dev, dtype), off, ph, pw, p.spatial_scale, 0, p.gamma)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dev, dtype)
    gx, goff = torch.autograd.grad(out, [x, off], go)
    for name, v in (("output", out), ("input grad", gx), ("offset grad", goff)):
        _check(bool(torch.isfinite(v).all()), f"roi pool {dtype}: non-finite {name}")
    bad_out = out[-len(bad_rows):][out_of_range.to(dev)]
    _check(bool((bad_out == 0).all()), f"roi pool {dtype}: a region with its batch index out "
                                       f"of range did not pool to 0")


def run_hostile(torch, dev) -> None:
    """Every hostile check; on CPU (the dry run, interpreted) float32 only, tiny shapes."""
    cpu = dev == "cpu"
    for dtype in (torch.float32,) if cpu else (torch.float32, torch.bfloat16):
        hostile_conv(torch, dev, dtype, *(((1, 2, 3, 4), 2) if cpu else ()))
        hostile_roi(torch, dev, dtype, small=cpu)
        if dev == "cuda":
            torch.cuda.synchronize()
    print("hostile: ok", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["hostile"])
    p.add_argument("--device", default="cuda")
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    try:
        run_hostile(torch, a.device)
    except AssertionError as e:
        print(f"hostile: FAILED: {e}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
