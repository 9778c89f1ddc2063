"""The float64 oracle: deformable convolution written straight from the formula (slow).

Slow and obvious on purpose. Every fast path is checked against it. Its gradients come from
autograd through the formula: with ``floor`` treated as a constant, autograd yields exactly the
one-sided, floor-based derivative the conventions prescribe, and the corner masks give zero
gradient outside the image.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def bilinear(img: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Sample ``img`` (N, Cg, H, W) at positions ``y``, ``x`` (N, oH, oW) -> (N, Cg, oH, oW).

    Zero when y <= -1, y >= H, x <= -1 or x >= W; each corner outside the image counts as 0.
    Non-finite positions are outside the image and give 0. At exactly -1 the formula itself
    gives 0 (the image corner's weight is 0) while its one-sided derivative does not, so -1 is
    kept inside: the derivative there is the floor-based one, as in torchvision.
    """
    N, Cg, H, W = img.shape
    inside = (y >= -1) & (y < H) & (x >= -1) & (x < W)
    y = torch.where(inside, y, torch.zeros_like(y))
    x = torch.where(inside, x, torch.zeros_like(x))
    y0 = torch.floor(y).detach()
    x0 = torch.floor(x).detach()
    ly, lx = y - y0, x - x0
    n_idx = torch.arange(N).view(N, 1, 1, 1)
    c_idx = torch.arange(Cg).view(1, Cg, 1, 1)
    out = img.new_zeros(N, Cg, *y.shape[1:])
    for a, b, w in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx),
                    (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
        yy, xx = y0 + a, x0 + b
        ok = inside & (yy >= 0) & (yy <= H - 1) & (xx >= 0) & (xx <= W - 1)
        yi = torch.where(ok, yy, torch.zeros_like(yy)).long().unsqueeze(1)
        xi = torch.where(ok, xx, torch.zeros_like(xx)).long().unsqueeze(1)
        v = img[n_idx, c_idx, yi, xi]
        out = out + torch.where(ok.unsqueeze(1), w.unsqueeze(1) * v, torch.zeros_like(v))
    return out


def deform_conv2d_ref(input, offset, weight, bias=None, stride=1, padding=0, dilation=1,
                      mask=None):
    """Loop reference with torchvision's signature. Differentiable by autograd."""
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    N, C, H, W = input.shape
    O, Cg, kH, kW = weight.shape
    K = kH * kW
    groups = C // Cg
    G = offset.shape[1] // (2 * K)
    Cpg = C // G
    oH = (H + 2 * ph - dh * (kH - 1) - 1) // sh + 1
    oW = (W + 2 * pw - dw * (kW - 1) - 1) // sw + 1
    oy = torch.arange(oH, dtype=input.dtype).view(1, oH, 1)
    ox = torch.arange(oW, dtype=input.dtype).view(1, 1, oW)

    # cols[n, c, k, oy, ox] = mask * sample(input[n, c], y, x)
    per_group = []
    for g in range(G):
        taps = []
        for i in range(kH):
            for j in range(kW):
                k = i * kW + j
                dy = offset[:, 2 * (g * K + k)]
                dx = offset[:, 2 * (g * K + k) + 1]
                y = (oy * sh - ph + i * dh) + dy
                x = (ox * sw - pw + j * dw) + dx
                s = bilinear(input[:, g * Cpg:(g + 1) * Cpg], y, x)
                if mask is not None:
                    s = s * mask[:, g * K + k].unsqueeze(1)
                taps.append(s)
        per_group.append(torch.stack(taps, dim=2))  # (N, Cpg, K, oH, oW)
    cols = torch.cat(per_group, dim=1)  # (N, C, K, oH, oW)

    Og = O // groups
    outs = []
    for j in range(groups):
        w = weight[j * Og:(j + 1) * Og].reshape(Og, Cg, K)
        outs.append(torch.einsum("nckhw,ock->nohw", cols[:, j * Cg:(j + 1) * Cg], w))
    out = torch.cat(outs, dim=1)
    if bias is not None:
        out = out + bias.view(1, O, 1, 1)
    return out
