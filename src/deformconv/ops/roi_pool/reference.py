"""The float64 oracle of deformable RoI pooling, written straight from the conventions (slow).

One Python loop per region, bin and sample, channels as a vector. It computes the output and
both gradients explicitly (the input gradient as the forward's scatter, the offset gradient
with mmcv's formula, which is not the forward's derivative within one pixel of the border), so
it shares no code with the kernels. Use it on small problems only: it does not bound the work
of huge regions.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor


def _corners(y: float, x: float, H: int, W: int):
    """None outside the sampling range, else (y_low, y_high, x_low, x_high, ly, lx)."""
    if not (-1.0 <= y <= H and -1.0 <= x <= W):  # also rejects NaN
        return None
    yc, xc = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(math.floor(yc)), int(math.floor(xc))
    if y_low >= H - 1:
        y_low = y_high = H - 1
        yc = float(H - 1)
    else:
        y_high = y_low + 1
    if x_low >= W - 1:
        x_low = x_high = W - 1
        xc = float(W - 1)
    else:
        x_high = x_low + 1
    return y_low, y_high, x_low, x_high, yc - y_low, xc - x_low


def _grid(extent_per_bin: float, sampling_ratio: int) -> int:
    if sampling_ratio > 0:
        return sampling_ratio
    if not math.isfinite(extent_per_bin):
        return 0
    return max(0, math.ceil(extent_per_bin))


def deform_roi_pool_ref(input: Tensor, rois: Tensor, offset: Optional[Tensor],
                        output_size: Tuple[int, int], spatial_scale: float = 1.0,
                        sampling_ratio: int = 0, gamma: float = 0.1,
                        grad_out: Optional[Tensor] = None):
    """Output, and with ``grad_out`` also (grad_input, grad_offset), all in float64.

    ``grad_offset`` is None when ``offset`` is None.
    """
    ph, pw = output_size
    I = input.detach().double()
    rr = rois.detach().double().tolist()
    off = offset.detach().double() if offset is not None else None
    N, C, H, W = I.shape
    R = len(rr)
    out = torch.zeros(R, C, ph, pw, dtype=torch.float64)
    gi = torch.zeros_like(I)
    go = torch.zeros(R, 2, ph, pw, dtype=torch.float64) if off is not None else None
    g = grad_out.detach().double() if grad_out is not None else None
    for r, (bf, x1, y1, x2, y2) in enumerate(rr):
        b = int(bf)
        xs, ys = x1 * spatial_scale - 0.5, y1 * spatial_scale - 0.5
        roi_w = (x2 * spatial_scale - 0.5) - xs
        roi_h = (y2 * spatial_scale - 0.5) - ys
        bin_w, bin_h = roi_w / pw, roi_h / ph
        gh, gw = _grid(roi_h / ph, sampling_ratio), _grid(roi_w / pw, sampling_ratio)
        count = max(gh * gw, 1)
        for i in range(ph):
            for j in range(pw):
                x0, y0 = xs, ys
                if off is not None:
                    x0 += gamma * roi_w * off[r, 0, i, j].item()
                    y0 += gamma * roi_h * off[r, 1, i, j].item()
                acc = torch.zeros(C, dtype=torch.float64)
                gb = g[r, :, i, j] / count if g is not None else None
                for iy in range(gh):
                    y = y0 + i * bin_h + (iy + 0.5) * bin_h / gh
                    for ix in range(gw):
                        x = x0 + j * bin_w + (ix + 0.5) * bin_w / gw
                        c = _corners(y, x, H, W)
                        if c is None:
                            continue
                        yl, yh, xl, xh, ly, lx = c
                        v00, v01 = I[b, :, yl, xl], I[b, :, yl, xh]
                        v10, v11 = I[b, :, yh, xl], I[b, :, yh, xh]
                        w00, w01 = (1 - ly) * (1 - lx), (1 - ly) * lx
                        w10, w11 = ly * (1 - lx), ly * lx
                        acc += w00 * v00 + w01 * v01 + w10 * v10 + w11 * v11
                        if gb is None:
                            continue
                        for (yy, xx), w in (((yl, xl), w00), ((yl, xh), w01),
                                            ((yh, xl), w10), ((yh, xh), w11)):
                            gi[b, :, yy, xx] += w * gb
                        if go is not None:
                            # mmcv's rule: unclamped y, x against the clamped corner indices.
                            dx = (yh - y) * (v01 - v00) + (y - yl) * (v11 - v10)
                            dy = (xh - x) * (v10 - v00) + (x - xl) * (v11 - v01)
                            go[r, 0, i, j] += gamma * roi_w * (gb * dx).sum()
                            go[r, 1, i, j] += gamma * roi_h * (gb * dy).sum()
                out[r, :, i, j] = acc / count
    if grad_out is None:
        return out
    return out, gi, go
