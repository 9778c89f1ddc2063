"""ONNX export of ``dcnv3``: a decomposition into standard nodes (no custom domain).

Inside ``torch.onnx.export`` (``dynamo=True``, or the TorchScript exporter) the public function
computes the op with plain tensor operations that export as ``Gather``, ``Floor``, ``Where``
and arithmetic, which any ONNX runtime runs: the input gets a one-pixel zero border and is
viewed as rows of a group's channels, each tap's four corner rows are gathered, weighted by
the bilinear weights times the mask (0 outside the strict cut-off ``-1 < y < H``), and summed.
It materialises (N, oH, oW, G, P, 4, Cg), so it is meant for export, not for training; outside
an export the registered op runs. Models exported with ``torch.export`` first keep the
``deformconv::dcnv3`` node instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def exporting() -> bool:
    """True inside ``torch.onnx.export``: the public functions then emit the decomposition."""
    return torch.onnx.is_in_onnx_export()


def sample_views(input: Tensor, off: Tensor, msk: Tensor, kernel_h: int, kernel_w: int,
                 stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
                 dilation_w: int, group: int, group_channels: int, offset_scale: float,
                 remove_center: bool) -> Tensor:
    """The decomposition on the offsets (N, oH, oW, G, P, 2) and mask (N, oH, oW, G, P)."""
    N, H, W, C = input.shape
    oH, oW = off.shape[1], off.shape[2]
    G, Cg = group, group_channels
    dt = torch.float64 if input.dtype == torch.float64 else torch.float32
    taps = [(i, j) for i in range(kernel_w) for j in range(kernel_h)
            if not (remove_center and i == kernel_w // 2 and j == kernel_h // 2)]
    s = offset_scale
    c_h = dilation_h * (kernel_h - 1) // 2
    c_w = dilation_w * (kernel_w - 1) // 2
    ix = torch.tensor([i * dilation_w for i, _ in taps], dtype=dt)
    jy = torch.tensor([j * dilation_h for _, j in taps], dtype=dt)
    wo = torch.arange(oW).to(dt) * stride_w + float(c_w - pad_w) - c_w * s
    ho = torch.arange(oH).to(dt) * stride_h + float(c_h - pad_h) - c_h * s
    x = wo.view(1, 1, -1, 1, 1) + (ix + off[..., 0].to(dt)) * s
    y = ho.view(1, -1, 1, 1, 1) + (jy + off[..., 1].to(dt)) * s
    inside = (y > -1) & (y < H) & (x > -1) & (x < W)
    zero = torch.zeros((), dtype=dt)
    y = torch.where(inside, y, zero)
    x = torch.where(inside, x, zero)
    fy, fx = torch.floor(y), torch.floor(x)
    ly, lx = y - fy, x - fx
    m = torch.where(inside, msk.to(dt), zero)
    rows = (torch.arange(N).view(-1, 1, 1, 1, 1) * (H + 2) + fy.long() + 1) * (W + 2) \
        + fx.long() + 1
    rows = rows * G + torch.arange(G).view(1, 1, 1, -1, 1)
    src = F.pad(input.to(dt), (0, 0, 1, 1, 1, 1)).reshape(-1, Cg)
    step = (W + 2) * G
    out = None
    for delta, w in ((0, (1 - ly) * (1 - lx)), (G, (1 - ly) * lx), (step, ly * (1 - lx)),
                     (step + G, ly * lx)):
        v = src[rows + delta] * (w * m).unsqueeze(-1)  # (N, oH, oW, G, P, Cg)
        out = v if out is None else out + v
    return out.sum(4).reshape(N, oH, oW, C).to(input.dtype)


def dcnv3_decomposed(input: Tensor, offset: Tensor, mask: Tensor, *params) -> Tensor:
    """``dcnv3`` as standard tensor operations (arguments validated, ``params`` in
    InternImage's order)."""
    group = params[8]
    P = mask.shape[-1] // group
    return sample_views(input, offset.unflatten(-1, (group, P, 2)),
                        mask.unflatten(-1, (group, P)), *params)
