"""The float64 oracle of ``dcnv3``, written straight from the conventions in ``docs/dcnv3.md``.

Slow loops on purpose (one sample at a time); every fast path is checked against it. Its
gradients come from autograd through the formula: ``floor`` is held constant, which gives the
one-sided, floor-based derivative, and a sample outside ``-1 < y < H``, ``-1 < x < W`` never
enters the graph, so its offset and mask gradients are 0.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _sample(img: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Bilinear sample of ``img`` (H, W, Cg) at (y, x); corners outside the image read 0."""
    H, W = img.shape[:2]
    y0 = torch.floor(y).detach()
    x0 = torch.floor(x).detach()
    ly, lx = y - y0, x - x0
    out = img.new_zeros(img.shape[2])
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            yy, xx = int(y0) + dy, int(x0) + dx
            if 0 <= yy < H and 0 <= xx < W:
                out = out + wy * wx * img[yy, xx]
    return out


def dcnv3_ref(input: Tensor, offset: Tensor, mask: Tensor, kernel_h: int, kernel_w: int,
              stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
              dilation_w: int, group: int, group_channels: int, offset_scale: float,
              remove_center: bool = False) -> Tensor:
    """DCNv3 by loops: (N, H, W, G*Cg) -> (N, oH, oW, G*Cg), in the arguments' dtype.

    Tap ``p`` runs x outer, y inner (``p = i*kernel_h + j`` for kernel column ``i`` and row
    ``j``), skipping the centre tap when ``remove_center``. The sample of output (ho, wo) and
    tap (i, j) is at ``x = wo*stride_w - pad_w + c_w - c_w*s + (i*dilation_w + dx)*s`` with
    ``c_w = dilation_w*(kernel_w-1)//2`` and ``s = offset_scale``, and likewise for y.
    """
    N, H, W, _ = input.shape
    oH, oW = offset.shape[1:3]
    G, Cg = group, group_channels
    s = offset_scale
    c_h = dilation_h * (kernel_h - 1) // 2
    c_w = dilation_w * (kernel_w - 1) // 2
    taps = [(i, j) for i in range(kernel_w) for j in range(kernel_h)
            if not (remove_center and i == kernel_w // 2 and j == kernel_h // 2)]
    P = len(taps)
    off = offset.reshape(N, oH, oW, G, P, 2)
    msk = mask.reshape(N, oH, oW, G, P)
    img = input.reshape(N, H, W, G, Cg)
    rows = []
    for n in range(N):
        for ho in range(oH):
            for wo in range(oW):
                for g in range(G):
                    acc = input.new_zeros(Cg)
                    for p, (i, j) in enumerate(taps):
                        x = wo * stride_w - pad_w + c_w - c_w * s + (i * dilation_w
                                                                     + off[n, ho, wo, g, p, 0]) * s
                        y = ho * stride_h - pad_h + c_h - c_h * s + (j * dilation_h
                                                                     + off[n, ho, wo, g, p, 1]) * s
                        if -1 < y < H and -1 < x < W:  # False for NaN
                            acc = acc + msk[n, ho, wo, g, p] * _sample(img[n, :, :, g], y, x)
                    rows.append(acc)
    if not rows:
        return input.new_zeros(N, oH, oW, G * Cg)
    return torch.stack(rows).reshape(N, oH, oW, G * Cg)
