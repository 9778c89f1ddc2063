"""Pure-PyTorch multi-scale deformable attention: forward and explicit backward, any device.

Layout. ``value`` is copied once, in the compute dtype, to ``src`` of shape
``(N * Sp * M, D)``: every level with a one-pixel zero border, ``(H+2) x (W+2)`` rows per level
stored one after another (``Sp`` rows per batch element), and the heads innermost, so one
bilinear corner of one head is a contiguous run of ``D`` values. Every corner of a sample
inside ``-1 < h < H``, ``-1 < w < W`` then has a row in ``src``; corners beyond the map read the
zero border, with no per-corner test.

Work is cut into chunks of ``(batch, query)`` rows whose sampling plan stays near
``PLAN_BUDGET_BYTES``; nothing of size ``N x Q x M x L x P x D`` is ever built. Per chunk:

1. ``_plan`` computes, once per sample, the four corner rows of ``src`` and their bilinear
   weights times the attention weight (0 for a skipped sample).
2. Forward: one ``embedding_bag(mode="sum", per_sample_weights=...)`` whose bags are the
   ``(batch, query, head)`` triples gathers and blends all ``L*P*4`` corners of each; its
   ``(rows * M, D)`` result is the output's head-major channels as they lie in memory.
3. Backward: the value gradient is a deterministic scatter (per level the samples sorted
   stably by corner row, then one ``embedding_bag`` gather per corner, no atomics); the
   location and attention-weight gradients need the four dot products ``<output gradient,
   corner value>``, which are exactly the gradient of ``embedding_bag`` with respect to its
   per-sample weights. The location derivative is the floor-based one-sided one (``floor``
   held constant).

Arguments are assumed valid (``functional.py`` checks them). float16 and bfloat16 are computed
in float32; results come back in each argument's dtype.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

# Target size of one chunk's sampling plan (corner rows and weights): large enough that the
# per-call overheads vanish, small enough to stay in the last-level cache.
PLAN_BUDGET_BYTES = 4 << 20


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _shapes(spatial_shapes: Tensor) -> List[Tuple[int, int]]:
    return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]


def _padded_starts(shapes: Sequence[Tuple[int, int]]) -> List[int]:
    starts, s = [], 0
    for H, W in shapes:
        starts.append(s)
        s += (H + 2) * (W + 2)
    return starts + [s]


def _padded_source(value: Tensor, shapes, pstarts, dtype: torch.dtype) -> Tensor:
    """(N, S, M, D) -> (N * Sp * M, D): every level with a zero border, in ``dtype``."""
    N, _, M, D = value.shape
    src = torch.zeros(N, pstarts[-1], M, D, dtype=dtype, device=value.device)
    start = 0
    for (H, W), ps in zip(shapes, pstarts):
        level = src[:, ps:ps + (H + 2) * (W + 2)].view(N, H + 2, W + 2, M, D)
        level[:, 1:H + 1, 1:W + 1].copy_(value[:, start:start + H * W].unflatten(1, (H, W)))
        start += H * W
    return src.view(-1, D)


def _unpad(g_src: Tensor, shapes, pstarts, N: int, M: int, D: int) -> Tensor:
    """The inverse of ``_padded_source``'s layout: (N * Sp * M, D) -> (N, S, M, D)."""
    g = g_src.view(N, pstarts[-1], M, D)
    parts = [g[:, ps:ps + (H + 2) * (W + 2)].view(N, H + 2, W + 2, M, D)[:, 1:H + 1, 1:W + 1]
             .reshape(N, H * W, M, D) for (H, W), ps in zip(shapes, pstarts)]
    return torch.cat(parts, 1) if parts else g.new_zeros(N, 0, M, D)


class _Plan:
    """Sampling plan of rows ``r0:r1`` of (batch, query): ``idx``/``wts`` are (b*M*L*P, 4)."""

    __slots__ = ("idx", "wts", "lh", "lw", "att", "inside", "base")

    def __init__(self, idx, wts, lh, lw, att, inside, base):
        self.idx, self.wts, self.lh, self.lw, self.att, self.inside, self.base = (
            idx, wts, lh, lw, att, inside, base)


def _plan(loc: Tensor, att: Tensor, r0: int, r1: int, Q: int, M: int, shapes, pstarts,
          dtype: torch.dtype, index_dtype: torch.dtype) -> _Plan:
    """``loc`` (N*Q, M, L, P, 2) and ``att`` (N*Q, M, L, P), any dtype."""
    dev = loc.device
    L = len(shapes)
    lvl = dict(dtype=dtype, device=dev)
    Hs = torch.tensor([h for h, _ in shapes], **lvl).view(1, 1, L, 1)
    Ws = torch.tensor([w for _, w in shapes], **lvl).view(1, 1, L, 1)
    lo = loc[r0:r1].to(dtype)
    # Pixel coordinates: pixel centres at integers (grid_sample's align_corners=False).
    h = lo[..., 1] * Hs - 0.5
    w = lo[..., 0] * Ws - 0.5
    # The sample counts only strictly inside (-1, H) x (-1, W); NaN fails every comparison.
    inside = (h > -1) & (h < Hs) & (w > -1) & (w < Ws)
    h = torch.where(inside, h, 0.0)
    w = torch.where(inside, w, 0.0)
    h0, w0 = torch.floor(h), torch.floor(w)
    lh, lw = h - h0, w - w0
    a = torch.where(inside, att[r0:r1].to(dtype), 0.0)
    b = r1 - r0
    Wp = torch.tensor([w_ + 2 for _, w_ in shapes], dtype=torch.long, device=dev).view(1, 1, L, 1)
    first = torch.tensor(pstarts[:-1], dtype=torch.long, device=dev).view(1, 1, L, 1)
    n = (torch.arange(r0, r1, device=dev) // Q).view(b, 1, 1, 1)
    m = torch.arange(M, device=dev).view(1, M, 1, 1)
    base = ((n * pstarts[-1] + first + (h0.long() + 1) * Wp + (w0.long() + 1)) * M + m)
    shape = base.shape + (4,)
    # (E, 4) tables filled one column at a time (an inner broadcast of 4 does not vectorise).
    idx = torch.empty(shape, dtype=index_dtype, device=dev)
    for c, step in enumerate((0, M, Wp * M, (Wp + 1) * M)):
        torch.add(base, step, out=idx[..., c])
    hy, vy = (1 - lh) * a, lh * a
    hx, vx = 1 - lw, lw
    wts = torch.empty(shape, dtype=dtype, device=dev)
    for c, (u, v) in enumerate(((hy, hx), (hy, vx), (vy, hx), (vy, vx))):
        torch.mul(u, v, out=wts[..., c])
    return _Plan(idx, wts, lh, lw, a, inside, base)


def _chunks(N: int, Q: int, per_row_bytes: int):
    """(r0, r1) blocks of (batch, query) rows within one batch element each, so the corner
    rows a chunk reads in each level stay a narrow band."""
    step = max(1, PLAN_BUDGET_BYTES // max(1, per_row_bytes))
    for n in range(N):
        for q0 in range(0, Q, step):
            yield n * Q + q0, n * Q + min(Q, q0 + step)


def _index_dtype(rows: int) -> torch.dtype:
    return torch.int32 if rows < 2 ** 31 - 1 else torch.int64


def _setup(value, spatial_shapes, sampling_locations, attention_weights):
    N, _, M, D = value.shape
    Q, _, L, P = sampling_locations.shape[1:5]
    ct = _compute_dtype(value, sampling_locations, attention_weights)
    shapes = _shapes(spatial_shapes)
    pstarts = _padded_starts(shapes)
    loc = sampling_locations.reshape(N * Q, M, L, P, 2)
    att = attention_weights.reshape(N * Q, M, L, P)
    per_row = M * L * P * 4 * (ct.itemsize + 8)
    return N, Q, M, D, L, P, ct, shapes, pstarts, loc, att, per_row


def ms_deform_attn_fwd(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                       sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Output (N, Q, M*D) in ``value``'s dtype (``level_start_index`` follows from the shapes
    and is not read)."""
    N, Q, M, D, L, P, ct, shapes, pstarts, loc, att, per_row = _setup(
        value, spatial_shapes, sampling_locations, attention_weights)
    out = torch.zeros(N * Q, M * D, dtype=ct, device=value.device)
    if out.numel() == 0 or L * P == 0:
        return out.view(N, Q, M * D).to(value.dtype)
    src = _padded_source(value, shapes, pstarts, ct)
    it = _index_dtype(src.shape[0])
    for r0, r1 in _chunks(N, Q, per_row):
        p = _plan(loc, att, r0, r1, Q, M, shapes, pstarts, ct, it)
        bags = (r1 - r0) * M
        out[r0:r1] = F.embedding_bag(p.idx.view(bags, -1), src, mode="sum",
                                     per_sample_weights=p.wts.view(bags, -1)).view(r1 - r0, -1)
    return out.view(N, Q, M * D).to(value.dtype)


def _scatter(g_src: Tensor, gcol: Tensor, p: _Plan, shapes, M: int) -> None:
    """``g_src[idx[e, c]] += wts[e, c] * gcol[bag(e)]`` without atomics.

    Per level, the samples are sorted stably by their first corner's row (a fixed summation
    order: bitwise repeatable); for each of the four corners one ``embedding_bag`` then sums,
    for every row of the level's band, the gradient rows of the samples whose corner ``c``
    falls there, and the band is added at that corner's row offset.
    """
    b, _, L, P = p.base.shape
    key_dtype = torch.int32 if g_src.shape[0] < 2 ** 31 - 1 else torch.int64
    for lvl, (_, W) in enumerate(shapes):
        keys, order = torch.sort(p.base[:, :, lvl].reshape(-1).to(key_dtype), stable=True)
        lo, hi = int(keys[0]), int(keys[-1]) + 1
        bounds = torch.searchsorted(keys, torch.arange(lo, hi + 1, dtype=key_dtype,
                                                       device=keys.device))
        owner = order // P
        wts = p.wts[:, :, lvl].reshape(-1, 4)[order]
        for c, step in enumerate((0, M, (W + 2) * M, (W + 3) * M)):
            g_src[lo + step:hi + step] += F.embedding_bag(
                owner, gcol, bounds, mode="sum", per_sample_weights=wts[:, c],
                include_last_offset=True)


def _corner_dots(gcol: Tensor, src: Tensor, p: _Plan, per_bag: int) -> Tensor:
    """(b, M, L, P, 4): ``<gcol[bag], src[idx[e]]>``, the gradient of the forward's
    ``embedding_bag`` with respect to its per-sample weights."""
    flat = p.idx.reshape(-1)
    E = flat.shape[0]
    bags = torch.arange(0, E, per_bag, dtype=flat.dtype, device=flat.device)
    owner = torch.arange(E, dtype=flat.dtype, device=flat.device) // per_bag
    dots = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        gcol, src, flat, bags, owner, 0, -1)
    return dots.view(p.idx.shape)


def ms_deform_attn_bwd(grad_out: Tensor, value: Tensor, spatial_shapes: Tensor,
                       level_start_index: Tensor, sampling_locations: Tensor,
                       attention_weights: Tensor, output_mask: Sequence[bool]
                       ) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of (value, sampling_locations, attention_weights), each in its argument's
    dtype; an empty tensor where ``output_mask`` says it is not needed."""
    need_v, need_loc, need_att = output_mask
    N, Q, M, D, L, P, ct, shapes, pstarts, loc, att, per_row = _setup(
        value, spatial_shapes, sampling_locations, attention_weights)
    dev = value.device
    empty = value.new_empty(0)
    src = _padded_source(value, shapes, pstarts, ct)
    g_src = torch.zeros_like(src) if need_v else None
    g_loc = (torch.zeros(N * Q, M, L, P, 2, dtype=ct, device=dev) if need_loc else None)
    g_att = torch.zeros(N * Q, M, L, P, dtype=ct, device=dev) if need_att else None
    g = grad_out.reshape(N * Q, M * D)
    per_bag = L * P * 4
    if N * Q * M * L * P > 0:
        it = _index_dtype(src.shape[0])
        for r0, r1 in _chunks(N, Q, per_row):
            p = _plan(loc, att, r0, r1, Q, M, shapes, pstarts, ct, it)
            gcol = g[r0:r1].to(ct).reshape((r1 - r0) * M, D)
            if need_v:
                _scatter(g_src, gcol, p, shapes, M)
            if need_loc or need_att:
                s00, s01, s10, s11 = _corner_dots(gcol, src, p, per_bag).unbind(-1)
                lh, lw = p.lh, p.lw
                if need_att:
                    blend = ((1 - lh) * ((1 - lw) * s00 + lw * s01)
                             + lh * ((1 - lw) * s10 + lw * s11))
                    g_att[r0:r1] = torch.where(p.inside, blend, 0.0)
                if need_loc:
                    # d/dh and d/dw of the bilinear blend with floor held constant, then the
                    # chain rule through h = y*H - 0.5, w = x*W - 0.5.
                    Hs = torch.tensor([h for h, _ in shapes], dtype=ct, device=dev)
                    Ws = torch.tensor([w for _, w in shapes], dtype=ct, device=dev)
                    d_w = (1 - lh) * (s01 - s00) + lh * (s11 - s10)
                    d_h = (1 - lw) * (s10 - s00) + lw * (s11 - s01)
                    g_loc[r0:r1, ..., 0] = p.att * d_w * Ws.view(1, 1, L, 1)
                    g_loc[r0:r1, ..., 1] = p.att * d_h * Hs.view(1, 1, L, 1)
    gv = (_unpad(g_src, shapes, pstarts, N, M, D).to(value.dtype) if need_v else empty)
    gl = (g_loc.view(sampling_locations.shape).to(sampling_locations.dtype) if need_loc
          else empty)
    ga = (g_att.view(attention_weights.shape).to(attention_weights.dtype) if need_att
          else empty)
    return gv, gl, ga
