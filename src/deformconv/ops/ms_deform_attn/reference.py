"""The float64 oracle of multi-scale deformable attention, written from the conventions in
``docs/ms_deform_attn.md``.

Slow and obvious on purpose, and independent of the kernels: Python loops over every batch
element, query, head, level and point, with Python floats (float64). The forward and the three
gradients are written out by hand: at integer pixel coordinates the derivative is the
floor-based one-sided one (``floor`` held constant), and a sample outside ``-1 < h < H`` and
``-1 < w < W`` (or not finite) contributes nothing and has zero gradients.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch
from torch import Tensor


def _corners(x: float, y: float, H: int, W: int):
    """(h0, w0, lh, lw) of a normalised location, or None when the sample is skipped."""
    h, w = y * H - 0.5, x * W - 0.5
    if not (math.isfinite(h) and math.isfinite(w) and -1 < h < H and -1 < w < W):
        return None
    h0, w0 = math.floor(h), math.floor(w)
    return h0, w0, h - h0, w - w0


def _levels(spatial_shapes: Tensor) -> List[Tuple[int, int, int]]:
    """(start, H, W) of every level: levels stored one after another, row-major."""
    out, start = [], 0
    for H, W in spatial_shapes.tolist():
        out.append((start, int(H), int(W)))
        start += int(H) * int(W)
    return out


def _samples(spatial_shapes: Tensor, sampling_locations: Tensor):
    """Every sampling point that lies on its level's map (``_corners``), as
    ``(n, q, m, level, p, start, H, W, h0, w0, lh, lw)``, in loop order."""
    levels = _levels(spatial_shapes)
    for n, per_n in enumerate(sampling_locations.double().tolist()):
        for q, per_q in enumerate(per_n):
            for m, per_m in enumerate(per_q):
                for li, (start, H, W) in enumerate(levels):
                    for p, (x, y) in enumerate(per_m[li]):
                        c = _corners(x, y, H, W)
                        if c is not None:
                            yield (n, q, m, li, p, start, H, W, *c)


def ms_deform_attn_ref(value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor,
                       attention_weights: Tensor) -> Tensor:
    """Output (N, Q, M*D) in float64."""
    v = value.double()
    aw = attention_weights.double().tolist()
    N, S, M, D = v.shape
    Q = sampling_locations.shape[1]
    out = torch.zeros(N, Q, M, D, dtype=torch.float64)

    def read(n, start, W, H, hh, ww, m):
        if 0 <= hh < H and 0 <= ww < W:
            return v[n, start + hh * W + ww, m]
        return torch.zeros(D, dtype=torch.float64)

    for n, q, m, li, p, start, H, W, h0, w0, lh, lw in _samples(spatial_shapes,
                                                                 sampling_locations):
        s = ((1 - lh) * (1 - lw) * read(n, start, W, H, h0, w0, m)
             + (1 - lh) * lw * read(n, start, W, H, h0, w0 + 1, m)
             + lh * (1 - lw) * read(n, start, W, H, h0 + 1, w0, m)
             + lh * lw * read(n, start, W, H, h0 + 1, w0 + 1, m))
        out[n, q, m] += aw[n][q][m][li][p] * s
    return out.view(N, Q, M * D)


def ms_deform_attn_grads_ref(grad_out: Tensor, value: Tensor, spatial_shapes: Tensor,
                             sampling_locations: Tensor, attention_weights: Tensor
                             ) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of (value, sampling_locations, attention_weights) in float64."""
    v = value.double()
    N, S, M, D = v.shape
    Q = sampling_locations.shape[1]
    g = grad_out.double().view(N, Q, M, D)
    aw = attention_weights.double().tolist()
    gv = torch.zeros_like(v)
    gl = torch.zeros(sampling_locations.shape, dtype=torch.float64)
    ga = torch.zeros(attention_weights.shape, dtype=torch.float64)
    for n, q, m, li, p, start, H, W, h0, w0, lh, lw in _samples(spatial_shapes,
                                                                 sampling_locations):
        go, a = g[n, q, m], aw[n][q][m][li][p]
        corner = {}
        for dh in (0, 1):
            for dw in (0, 1):
                hh, ww = h0 + dh, w0 + dw
                if 0 <= hh < H and 0 <= ww < W:
                    row = start + hh * W + ww
                    wt = (lh if dh else 1 - lh) * (lw if dw else 1 - lw)
                    gv[n, row, m] += a * wt * go
                    corner[dh, dw] = float(go @ v[n, row, m])
                else:
                    corner[dh, dw] = 0.0
        s00, s01, s10, s11 = corner[0, 0], corner[0, 1], corner[1, 0], corner[1, 1]
        ga[n, q, m, li, p] = ((1 - lh) * (1 - lw) * s00 + (1 - lh) * lw * s01
                              + lh * (1 - lw) * s10 + lh * lw * s11)
        d_h = (1 - lw) * (s10 - s00) + lw * (s11 - s01)
        d_w = (1 - lh) * (s01 - s00) + lh * (s11 - s10)
        gl[n, q, m, li, p, 0] = a * d_w * W
        gl[n, q, m, li, p, 1] = a * d_h * H
    return gv, gl, ga


def ms_deform_attn_grid_sample(value, spatial_shapes, sampling_locations, attention_weights):
    """The second oracle and the benchmarks' baseline: one ``grid_sample(align_corners=False,
    padding_mode="zeros")`` per level on ``2*loc - 1``, weighted and summed, the pure-PyTorch
    fallback of mmcv, Deformable DETR and transformers (written here from that formula).
    Differentiable by autograd; its gradient differs from the op's only at pixel coordinate
    exactly -1 (it keeps the sample)."""
    N, S, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    levels = value.split(sizes, dim=1)
    grids = 2 * sampling_locations - 1
    samples = []
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        v = levels[lvl].permute(0, 2, 3, 1).reshape(N * M, D, h, w)
        grid = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)          # (N*M, Q, P, 2)
        samples.append(torch.nn.functional.grid_sample(          # (N*M, D, Q, P)
            v, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(N * M, 1, Q, L * P)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(N, M * D, Q).transpose(1, 2)


# The op's arguments in order, the ones with gradients, and the problems (``make_inputs``
# keywords) the kernels' tests run: several levels, single pixels and rows, one point, one
# channel, locations far outside.
ARGS = ("value", "spatial_shapes", "level_start_index", "sampling_locations",
        "attention_weights")
GRAD_ARGS = ("value", "sampling_locations", "attention_weights")
CASES = (
    dict(),
    dict(N=1, Q=7, M=3, D=5, shapes=((4, 4),), P=1),
    dict(N=3, Q=2, M=1, D=1, shapes=((2, 9), (6, 1), (1, 1), (3, 3)), P=4),
    dict(N=2, Q=4, M=4, D=8, shapes=((8, 11), (4, 6)), P=2, margin=0.6),
)

# Deformable DETR's four encoder levels at its usual input size (H, W).
DETR_LEVELS = ((100, 134), (50, 67), (25, 34), (13, 17))


def make_inputs(N: int = 2, Q: int = 5, M: int = 2, D: int = 4, shapes=((5, 7), (3, 2), (1, 1)),
                P: int = 3, dtype: torch.dtype = torch.float64, device="cpu", seed: int = 0,
                margin: float = 0.15, requires_grad: bool = False) -> dict:
    """One problem for the tests, the benchmarks and the GPU script: ``value``,
    ``spatial_shapes``, ``level_start_index``, ``sampling_locations`` (uniform in
    ``[-margin, 1 + margin]``, so some samples straddle or leave the border) and
    ``attention_weights`` (uniform in [0, 1)), drawn in float64 from a seeded generator and
    rounded once to ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    shapes_t = torch.tensor(shapes, dtype=torch.int64).view(-1, 2)
    sizes = (shapes_t[:, 0] * shapes_t[:, 1]).tolist()
    starts = torch.tensor([sum(sizes[:i]) for i in range(len(sizes))], dtype=torch.int64)
    L = len(sizes)
    out = dict(
        value=torch.randn(N, sum(sizes), M, D, generator=g, dtype=torch.float64),
        spatial_shapes=shapes_t, level_start_index=starts,
        sampling_locations=torch.rand(N, Q, M, L, P, 2, generator=g, dtype=torch.float64)
        * (1 + 2 * margin) - margin,
        attention_weights=torch.rand(N, Q, M, L, P, generator=g, dtype=torch.float64))
    for k, t in out.items():
        t = t.to(device)
        if t.is_floating_point():
            t = t.to(dtype).requires_grad_(requires_grad)
        out[k] = t
    return out
