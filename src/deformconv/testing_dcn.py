"""Test harness of ``dcnv3`` / ``dcnv4``: one problem generator, and InternImage's pure-PyTorch
formulation written from its published description (a ``grid_sample`` per group), which the
tests compare with and the benchmark runs as a contender.

Closeness is checked with :func:`deformconv.testing.assert_close` and its per-dtype table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .testing import assert_close


@dataclass(frozen=True)
class DCNProblem:
    """One ``dcnv3``/``dcnv4`` call. ``offset_std`` is the offsets' standard deviation in
    pixels; masks are uniform in [0, 1)."""

    N: int = 2
    H: int = 5
    W: int = 6
    group: int = 2
    group_channels: int = 3
    kernel: Tuple[int, int] = (3, 3)
    stride: Tuple[int, int] = (1, 1)
    pad: Tuple[int, int] = (1, 1)
    dilation: Tuple[int, int] = (1, 1)
    offset_scale: float = 1.0
    remove_center: bool = False
    offset_std: float = 1.5

    @property
    def points(self) -> int:
        return self.kernel[0] * self.kernel[1] - int(self.remove_center)

    @property
    def out(self) -> Tuple[int, int]:
        return tuple((s + 2 * p - (d * (k - 1) + 1)) // st + 1 for s, p, d, k, st in zip(
            (self.H, self.W), self.pad, self.dilation, self.kernel, self.stride))

    @property
    def om_width(self) -> int:
        """Columns of DCNv4's fused offset_mask: G*3*P rounded up to a multiple of 8."""
        return math.ceil(self.group * 3 * self.points / 8) * 8

    def params(self) -> tuple:
        """The arguments after the tensors, in InternImage's order."""
        return (*self.kernel, *self.stride, *self.pad, *self.dilation, self.group,
                self.group_channels, self.offset_scale, self.remove_center)

    def with_(self, **changes) -> "DCNProblem":
        return replace(self, **changes)

    def tensors(self, dtype: torch.dtype = torch.float64, device="cpu", seed: int = 0,
                requires_grad: bool = False) -> Dict[str, Tensor]:
        """input, offset, mask, offset_mask (dcnv4 layout, padding columns random) and
        grad_out, drawn in float64 and rounded once to ``dtype``."""
        g = torch.Generator().manual_seed(seed)
        G, P = self.group, self.points
        oH, oW = self.out
        d = dict(input=torch.randn(self.N, self.H, self.W, G * self.group_channels,
                                   generator=g, dtype=torch.float64),
                 offset=self.offset_std * torch.randn(self.N, oH, oW, G * P * 2, generator=g,
                                                      dtype=torch.float64),
                 mask=torch.rand(self.N, oH, oW, G * P, generator=g, dtype=torch.float64),
                 grad_out=torch.randn(self.N, oH, oW, G * self.group_channels, generator=g,
                                      dtype=torch.float64))
        d = {k: v.to(dtype).double() for k, v in d.items()}  # rounded once
        pad = torch.randn(self.N, oH, oW, self.om_width - G * 3 * P, generator=g,
                          dtype=torch.float64).to(dtype).double()
        d["offset_mask"] = torch.cat([d["offset"].unflatten(-1, (G, 2 * P)),
                                      d["mask"].unflatten(-1, (G, P))], -1).flatten(-2)
        d["offset_mask"] = torch.cat([d["offset_mask"], pad], -1)
        out = {k: v.to(device=device, dtype=dtype) for k, v in d.items()}
        if requires_grad:
            for k in ("input", "offset", "mask", "offset_mask"):
                out[k].requires_grad_()
        return out


def internimage_pytorch(input: Tensor, offset: Tensor, mask: Tensor, kernel_h: int,
                        kernel_w: int, stride_h: int, stride_w: int, pad_h: int, pad_w: int,
                        dilation_h: int, dilation_w: int, group: int, group_channels: int,
                        offset_scale: float, remove_center: bool = False,
                        pad_as_written: bool = False) -> Tensor:
    """InternImage's pure-PyTorch DCNv3 (its "debug" function), from the published method.

    The input is zero-padded, reference points at the padded grid's output pixel centres and a
    dilated kernel grid about them (x outer, y inner) are normalised to [0, 1], the offsets
    scaled by ``offset_scale`` are added, and one ``grid_sample(align_corners=False)`` per
    (sample, group) reads all points; the mask weights the points and they are summed. This
    materialises every sample: (N*G, Cg, oH*oW, P).

    Upstream pads H by ``pad_w`` and W by ``pad_h``; ``pad_as_written=True`` reproduces that,
    the default pads as the CUDA kernel does (H by ``pad_h``). The grids are built in the
    input's dtype (upstream: float32), so float64 runs are exact.
    """
    ph, pw = (pad_w, pad_h) if pad_as_written else (pad_h, pad_w)
    x = F.pad(input, [0, 0, pw, pw, ph, ph])
    N, H, W, _ = x.shape
    _, oH, oW, _ = offset.shape
    G, Cg = group, group_channels
    dt, dev = input.dtype, input.device
    c_h = dilation_h * (kernel_h - 1) // 2
    c_w = dilation_w * (kernel_w - 1) // 2
    ref_y, ref_x = torch.meshgrid(
        torch.linspace(c_h + 0.5, c_h + 0.5 + (oH - 1) * stride_h, oH, dtype=dt, device=dev),
        torch.linspace(c_w + 0.5, c_w + 0.5 + (oW - 1) * stride_w, oW, dtype=dt, device=dev),
        indexing="ij")
    ref = torch.stack((ref_x / W, ref_y / H), -1).view(1, oH, oW, 1, 2)
    gx, gy = torch.meshgrid(
        torch.linspace(-c_w, -c_w + (kernel_w - 1) * dilation_w, kernel_w, dtype=dt, device=dev),
        torch.linspace(-c_h, -c_h + (kernel_h - 1) * dilation_h, kernel_h, dtype=dt, device=dev),
        indexing="ij")
    grid = torch.stack((gx / W, gy / H), -1).reshape(-1, 2)
    if remove_center:
        keep = [p for p in range(kernel_h * kernel_w) if p != (kernel_h * kernel_w - 1) // 2]
        grid = grid[keep]
    P = grid.shape[0]
    grid = grid.view(1, 1, 1, 1, P, 2).expand(1, 1, 1, G, P, 2).reshape(1, 1, 1, G * P, 2)
    loc = ref + grid * offset_scale
    norm = torch.tensor([W, H], dtype=dt, device=dev)
    loc = loc + offset.view(N, oH, oW, G * P, 2) * offset_scale / norm
    grids = (2 * loc - 1).view(N, oH * oW, G, P, 2).transpose(1, 2).flatten(0, 1)
    value = x.view(N, H * W, G * Cg).transpose(1, 2).reshape(N * G, Cg, H, W)
    sampled = F.grid_sample(value, grids, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
    m = mask.view(N, oH * oW, G, P).transpose(1, 2).reshape(N * G, 1, oH * oW, P)
    out = (sampled * m).sum(-1).view(N, G * Cg, oH * oW)
    return out.transpose(1, 2).reshape(N, oH, oW, G * Cg)


LEAVES = ("input", "offset", "mask")


def run_both(p: DCNProblem, dtype: torch.dtype, device="cpu", seed: int = 0, fn=None):
    """(got, want): output and gradients of ``fn`` (default the public dcnv3) in ``dtype``
    and of the oracle in float64 on the same rounded values."""
    if fn is None:
        from . import dcnv3 as fn
    from .ops.dcnv3.reference import dcnv3_ref

    t = p.tensors(dtype, device, seed, requires_grad=True)
    out = fn(t["input"], t["offset"], t["mask"], *p.params())
    got = {"output": out.detach()}
    want_t = {k: t[k].detach().cpu().double().requires_grad_() for k in LEAVES}
    ref = dcnv3_ref(*(want_t[k] for k in LEAVES), *p.params())
    want = {"output": ref.detach()}
    go = t["grad_out"]
    if out.numel():
        got.update(zip(LEAVES, torch.autograd.grad(out, [t[k] for k in LEAVES], go)))
        want.update(zip(LEAVES, torch.autograd.grad(ref, [want_t[k] for k in LEAVES],
                                                     go.cpu().double())))
    return got, want


def check(got, want, dtype, name, tol=None):
    """assert_close each output/gradient (exact zeros where the oracle's are zero)."""
    for k, w in want.items():
        g = got[k]
        assert g.dtype == dtype and g.shape == w.shape, (k, g.dtype, g.shape)
        if w.numel() == 0:
            continue
        if w.abs().max() > 0:
            assert_close(g, w, dtype, f"{name} {k}", tol)
        else:
            assert g.abs().max() == 0, f"{name} {k}: not zero"


CASES: Dict[str, DCNProblem] = {
    "default": DCNProblem(),
    "one-group": DCNProblem(group=1, group_channels=4),
    "groups4": DCNProblem(group=4, group_channels=2),
    "remove-center": DCNProblem(remove_center=True),
    "remove-center-5x3": DCNProblem(kernel=(5, 3), pad=(2, 1), remove_center=True),
    "asym": DCNProblem(H=7, W=6, kernel=(3, 2), stride=(2, 1), pad=(1, 2), dilation=(1, 2)),
    "offset-scale": DCNProblem(offset_scale=0.5, dilation=(2, 1), pad=(2, 1)),
    "stride2-dil2": DCNProblem(H=8, W=9, stride=(2, 2), dilation=(2, 2), pad=(2, 2)),
    "kernel1": DCNProblem(kernel=(1, 1), pad=(0, 0)),
    "kernel5x4": DCNProblem(H=6, W=7, kernel=(5, 4), pad=(2, 1)),
    "1x1-image": DCNProblem(H=1, W=1, group_channels=5),
    "far-offsets": DCNProblem(offset_std=6.0),
    "batch0": DCNProblem(N=0),
}


def bench_contenders(p: DCNProblem, dtype: torch.dtype = torch.float32, device="cpu"):
    """The benchmarks' contenders on ``p``'s tensors: ``{name: {"forward": fn, "train": fn}}``
    for ``dcnv3`` (this library), ``internimage_pytorch`` (the formulation above) and
    ``dwconv3x3`` (a channels-last depthwise 3x3 ``conv2d`` of the same channels, the floor).
    ``train`` differentiates input, offsets and mask (the floor: input and weight) against a
    fixed output gradient."""
    from . import dcnv3

    t = p.tensors(dtype, device)
    leaves = [t[k].clone().requires_grad_() for k in LEAVES]
    go = t["grad_out"]
    C = p.group * p.group_channels
    w = torch.randn(C, 1, 3, 3, dtype=dtype, device=device, requires_grad=True)
    x_cf = t["input"].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    x_cf.requires_grad_()

    def op(fn):
        def forward():
            with torch.no_grad():
                return fn(*leaves, *p.params())

        def train():
            return torch.autograd.grad(fn(*leaves, *p.params()), leaves, go)
        return {"forward": forward, "train": train}

    def conv_forward():
        with torch.no_grad():
            return F.conv2d(x_cf, w, padding=1, groups=C)

    def conv_train():
        y = F.conv2d(x_cf, w, padding=1, groups=C)
        return torch.autograd.grad(y, [x_cf, w], go.permute(0, 3, 1, 2))

    return {"dcnv3": op(dcnv3), "internimage_pytorch": op(internimage_pytorch),
            "dwconv3x3": {"forward": conv_forward, "train": conv_train}}
