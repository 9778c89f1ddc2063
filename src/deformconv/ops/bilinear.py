"""Shared pure-PyTorch multilinear sampling for R = 1, 2 or 3 spatial dimensions.

Every pure-PyTorch kernel that samples a feature map at fractional positions (deformable
convolution, and the operators built the same way) uses these pieces; see
``docs/conventions.md`` for the sampling conventions.

Design. The source is copied once to channels-last rows with a one-cell zero border in every
spatial dimension (``bordered_source``): a map ``(B, *S, C)`` becomes rows ``(B * prod(S + 2),
C)``, the cell ``(b, s_1, .., s_R)`` at row ``b * prod(S + 2) + sum_d (s_d + 1) * pitch_d``.
Every corner of a position inside ``[-1, S_d)`` then has a row, and corners beyond the map read
the zero border: no per-corner test and no clamping. A corner plan (``corner_plan``) gives, per
sample, the ``2^R`` corner rows and their weights; ``sample`` gathers and blends them with one
``embedding_bag`` pass. The backward pieces are ``scatter_rows`` (row gradients back to the
source, deterministic: a stably sorted gather, no atomics), ``corner_dots`` (the ``2^R`` dot
products ``<row gradient, corner value>``) and, from those, ``position_grad`` and
``scale_grad``.

Corners are ordered with the first spatial dimension's bit most significant: in 2-D (y, x)
the order is (y0, x0), (y0, x1), (y1, x0), (y1, x1); in 3-D (z, y, x) corner ``c`` has bits
``(c >> 2) & 1, (c >> 1) & 1, c & 1``.

Positions are pixel coordinates (sample ``s`` sits at ``s``; the caller subtracts 0.5 first
for align_corners=False style normalised locations). A sample contributes (is "inside") when
for every dimension ``lower < p_d < S_d`` holds, where the lower cut-off is

- inclusive (``strict=False``): ``p_d >= -1``, the deformable-convolution convention. At
  exactly ``-1`` the sampled value is 0 (the only corner inside the map has weight 0) but the
  one-sided position derivative is not: ``value(0) - 0``;
- strict (``strict=True``): ``p_d > -1``, the convention of the multi-scale deformable
  attention and DCNv3 kernels: at exactly ``-1`` there is neither a value nor a gradient.

A sample outside, or with a non-finite coordinate (NaN fails every comparison, infinities and
1e30 fail the bounds), gets weight 0, zero position and scale gradients and a safe corner row
(that of position 0), so no input can address a row outside the source.

Position gradients are the one-sided derivatives of the convention: each corner weight
``prod_d w_d`` (``w_d = 1 - f_d`` for the lower corner, ``f_d`` for the upper, ``f_d = p_d -
floor(p_d)``) is differentiated in ``f_d`` with the floor held constant.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Corners", "bordered_interior", "bordered_source", "corner_dots", "corner_plan",
           "index_dtype", "position_grad", "sample", "scale_grad", "scatter_rows"]

# Rows of a source (or elements of any indexed tensor) from which indices need 64 bits.
INDEX_64_FROM = 2 ** 31 - 1


def index_dtype(rows: int) -> torch.dtype:
    """``torch.int32`` when every row index of a source of ``rows`` rows fits in 32 bits, else
    ``torch.int64`` (the plan's index tables are then twice as big)."""
    return torch.int32 if rows < INDEX_64_FROM else torch.int64


def corner_bits(R: int) -> List[Tuple[int, ...]]:
    """The ``2^R`` corners in plan order, as per-dimension bits (0: lower, 1: upper)."""
    return [tuple((c >> (R - 1 - d)) & 1 for d in range(R)) for c in range(2 ** R)]


def bordered_source(x: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """``(B, *S, C)`` (any strides, e.g. ``input.movedim(1, -1)`` of an NC... tensor) -> rows
    ``(B * prod(S + 2), C)``, contiguous, with a one-cell zero border in every spatial
    dimension, in ``dtype`` (default: the input's). Rows may be re-viewed as ``(-1, C // G)``
    for G groups of channels: cell ``r``, group ``g`` is then row ``r * G + g``."""
    B, *S, C = x.shape
    src = torch.empty(B, *(s + 2 for s in S), C, dtype=dtype or x.dtype, device=x.device)
    # Zero only the border faces: filling the whole buffer first was measured 3.5x slower.
    for d, s in enumerate(S):
        src.narrow(1 + d, 0, 1).zero_()
        src.narrow(1 + d, s + 1, 1).zero_()
    interior = src
    for d, s in enumerate(S):
        interior = interior.narrow(1 + d, 1, s)
    interior.copy_(x)
    return src.view(-1, C)


def bordered_interior(rows: Tensor, batch: int, size: Sequence[int],
                      channels: Optional[int] = None) -> Tensor:
    """The interior ``(B, *S, C)`` view of bordered rows ``(B * prod(S + 2), C)`` (or of the
    same memory viewed with more rows and fewer columns), e.g. of a source gradient.
    ``channels`` (``C``) is inferred when not given; give it when ``B`` may be 0."""
    v = rows.view(batch, *(s + 2 for s in size), -1 if channels is None else channels)
    for d, s in enumerate(size):
        v = v.narrow(1 + d, 1, s)
    return v


class Corners:
    """A corner plan (built by ``corner_plan``) for ``M`` samples of shape ``shape``.

    Attributes:
        index: ``(M, 2^R)`` row of each corner in the source (``index_dtype``).
        weight: ``(M, 2^R)`` corner weights ``inside * scale * prod_d w_d``.
        frac: R tensors of ``shape``: ``p_d - floor(p_d)`` (0 where not inside).
        inside: bool tensor of ``shape``: whether the sample contributes.
        scale: the ``scale`` given to ``corner_plan`` (of ``shape``), or None.
        shape: the positions' (common) shape; ``M = prod(shape)``, flattened row-major.
    """

    __slots__ = ("frac", "index", "inside", "scale", "shape", "weight")

    def __init__(self, index, weight, frac, inside, scale, shape):
        self.index, self.weight, self.frac = index, weight, frac
        self.inside, self.scale, self.shape = inside, scale, shape


def corner_plan(positions: Sequence[Tensor], size: Sequence[int], *,
                scale: Optional[Tensor] = None, base: Optional[Tensor] = None,
                rows_per_cell: int = 1, strict: bool = False,
                index_dtype: torch.dtype = torch.int64) -> Corners:
    """The ``2^R`` corner rows and weights of samples at ``positions``.

    Args:
        positions: R floating tensors of one shape (any shape; read in row-major order), the
            pixel coordinates along spatial dimensions 1..R of a map of ``size``. Their dtype
            is the compute dtype of the weights.
        size: the map's spatial size ``(S_1, .., S_R)`` (without border).
        scale: optional tensor broadcastable to the positions' shape multiplied into every
            weight (a modulation mask, attention weights); its gradient is ``scale_grad``.
        base: optional integer tensor broadcastable to the positions' shape added to every
            row index: the row of the first cell of the sample's bordered map times
            ``rows_per_cell``, plus the channel group (e.g. ``(b * prod(S + 2)) * G + g``).
            Without it, indices are relative to one bordered map.
        rows_per_cell: rows per bordered cell (``G`` when the rows were viewed as
            ``(-1, C // G)``); corner steps are multiplied by it.
        strict: the lower cut-off: False is ``p >= -1`` (deformable convolution), True is
            ``p > -1`` (multi-scale deformable attention, DCNv3); see the module docstring.
        index_dtype: dtype of the index table (``index_dtype(source rows)``).

    Returns:
        Corners: ``index = base + rows_per_cell * (cell of the all-lower corner + corner
        step)``; for samples not inside, weight 0 and the rows of position 0.
    """
    R = len(positions)
    shape = torch.broadcast_shapes(*(p.shape for p in positions))
    dev, dtype = positions[0].device, positions[0].dtype
    inside = torch.ones(shape, dtype=torch.bool, device=dev)
    for p, s in zip(positions, size):
        inside &= ((p > -1) if strict else (p >= -1)) & (p < s)
    padded = [s + 2 for s in size]
    frac, cell = [], None
    for d, p in enumerate(positions):
        p = torch.where(inside, p, 0.0)
        low = torch.floor(p)
        frac.append(p - low)
        # In the index dtype: the cells are rows of the source, so they fit.
        lo = low.to(index_dtype) + 1
        cell = lo if cell is None else torch.add(lo, cell, alpha=padded[d])
    cell = cell * rows_per_cell if rows_per_cell != 1 else cell
    if base is not None:
        cell = cell + base.to(index_dtype)
    first = cell.expand(shape).reshape(-1)
    M = first.shape[0]
    pitch = [math.prod(padded[d + 1:]) * rows_per_cell for d in range(R)]
    bits = corner_bits(R)
    index = torch.empty(M, len(bits), dtype=index_dtype, device=dev)
    # Filled column by column: broadcasting into an inner size of 2^R does not vectorise
    # (measured 40x slower in 2-D).
    for c, corner in enumerate(bits):
        torch.add(first, sum(p * u for p, u in zip(pitch, corner)), out=index[:, c])
    m = inside.to(dtype)
    if scale is not None:
        m = m * scale
    m = m.expand(shape).reshape(-1)
    per_dim = [((1 - f).reshape(-1), f.reshape(-1)) for f in frac]
    weight = torch.empty(M, len(bits), dtype=dtype, device=dev)
    # Products staged one dimension at a time in corner order (2 + 4 + 8 products in 3-D
    # instead of 8 * 3); the last stage writes its column directly.
    stage = [m]
    for d in range(R - 1):
        stage = [s_ * w for s_ in stage for w in per_dim[d]]
    for c, (s_, w) in enumerate((s_, w) for s_ in stage for w in per_dim[R - 1]):
        torch.mul(s_, w, out=weight[:, c])
    return Corners(index, weight, frac, inside, scale, shape)


def sample(src: Tensor, plan: Corners) -> Tensor:
    """``(M, C')``: for each sample, the corners' rows of ``src`` (``(rows, C')``, the dtype of
    the plan's weights) blended with the plan's weights, in one ``embedding_bag`` pass."""
    return F.embedding_bag(plan.index, src, per_sample_weights=plan.weight, mode="sum")


def scatter_rows(grad_src: Tensor, grad_rows: Tensor, plan: Corners) -> None:
    """``grad_src[index[m, c]] += weight[m, c] * grad_rows[m]`` (in place, the adjoint of
    ``sample``) without atomics: the corner rows are sorted stably, so every source row sums
    its contributions in a fixed order (bitwise repeatable), and one ``embedding_bag`` sums,
    for each source row in the touched range, the rows of ``grad_rows`` that sampled it."""
    corners = plan.index.shape[1]
    if plan.index.numel() == 0:
        return
    # Sorted as 32-bit keys where the rows fit: measured 4x faster than 64-bit keys (CPU,
    # 225k corners), the larger part of this function's time.
    keys = plan.index.reshape(-1)
    if keys.dtype != torch.int32 and grad_src.shape[0] < INDEX_64_FROM:
        keys = keys.to(torch.int32)
    targets, perm = torch.sort(keys, stable=True)
    first, last = int(targets[0]), int(targets[-1])
    starts = torch.searchsorted(targets, torch.arange(first, last + 1, dtype=targets.dtype,
                                                      device=targets.device))
    grad_src[first:last + 1] += F.embedding_bag(
        torch.div(perm, corners, rounding_mode="floor"), grad_rows, starts, mode="sum",
        per_sample_weights=plan.weight.reshape(-1).index_select(0, perm))


def corner_dots(grad_rows: Tensor, src: Tensor, plan: Corners) -> Tensor:
    """``(M, 2^R)``: ``<grad_rows[m], src[index[m, c]]>``, the gradient of ``sample`` with
    respect to the plan's weights (input to ``position_grad`` and ``scale_grad``)."""
    M, corners = plan.index.shape
    lin = plan.index.reshape(-1)
    owner = torch.div(torch.arange(M * corners, dtype=lin.dtype, device=lin.device), corners,
                      rounding_mode="floor")
    starts = torch.arange(0, M * corners, corners, dtype=lin.dtype, device=lin.device)
    dots = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        grad_rows, src, lin, starts, owner, 0, -1)
    return dots.view(M, corners)


def _contract(t: Tensor, fracs: Sequence[Tensor]) -> Tensor:
    """Contract ``t`` of shape (M, 2, .., 2) over its corner axes in order with the weights
    ``(1 - f, f)`` of each ``f`` in ``fracs``."""
    for f in fracs:
        lo, hi = t.select(1, 0), t.select(1, 1)
        fv = f.reshape(-1, *([1] * (lo.dim() - 1)))
        t = lo * (1 - fv) + hi * fv
    return t


def position_grad(dots: Tensor, plan: Corners) -> List[Tensor]:
    """The R position gradients (each of the plan's shape) from ``dots = corner_dots(...)``:
    ``d/dp_d sum_c dots[:, c] * weight[:, c]``, including ``inside`` and ``scale``."""
    R = len(plan.frac)
    s = dots.view(-1, *([2] * R))
    m = plan.inside.to(dots.dtype)
    if plan.scale is not None:
        m = m * plan.scale
    out = []
    for d in range(R):
        diff = s.select(1 + d, 1) - s.select(1 + d, 0)
        others = [f for e, f in enumerate(plan.frac) if e != d]
        out.append(m * _contract(diff, others).view(plan.shape))
    return out


def scale_grad(dots: Tensor, plan: Corners) -> Tensor:
    """The gradient of the plan's ``scale`` (of the plan's shape, not reduced to the scale's
    broadcast shape) from ``dots = corner_dots(...)``: ``inside * prod_d w_d`` against
    ``dots``."""
    R = len(plan.frac)
    t = _contract(dots.view(-1, *([2] * R)), plan.frac)
    return plan.inside.to(dots.dtype) * t.view(plan.shape)
