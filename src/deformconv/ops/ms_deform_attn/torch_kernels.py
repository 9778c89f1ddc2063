"""Pure-PyTorch multi-scale deformable attention: forward and explicit backward, any device.

Built on the shared bilinear sampling pieces (``deformconv.ops.bilinear``) with the strict
cut-off ``-1 < h < H``, ``-1 < w < W``.

Layout. ``value`` is copied once, in the compute dtype, to ``src`` of shape
``(N * Sp * M, D)``: every level with a one-pixel zero border, ``(H+2) x (W+2)`` cells per
level stored one after another (``Sp`` cells per batch element), and the ``M`` heads innermost
(``rows_per_cell = M``), so one bilinear corner of one head is a contiguous run of ``D``
values. Every corner of a sample inside the cut-off then has a row in ``src``; corners beyond
the map read the zero border, with no per-corner test.

Work is cut into chunks of queries of one batch element whose sampling plans stay near
``PLAN_BUDGET_BYTES``; nothing of size ``N x Q x M x L x P x D`` is ever built. Per chunk and
level:

1. ``bilinear.corner_plan`` gives, once per sample, the four corner rows of ``src`` and their
   bilinear weights times the attention weight (0 for a skipped sample).
2. Forward: the levels' plans side by side, one ``embedding_bag`` whose bags are the
   ``(query, head)`` pairs gathers and blends the ``L*P*4`` corners of each; its
   ``(rows * M, D)`` result is the output's head-major channels as they lie in memory.
3. Backward, per level: the value gradient is a deterministic scatter
   (``bilinear.scatter_samples``: a stably sorted gather on each sample's first corner, no
   atomics); the location and attention-weight gradients are the output gradient rows
   dotted with blends of each sample's four corners (``bilinear.sample_grads``: floor-based
   one-sided derivative, times the level's size for the normalised coordinates).

Arguments are assumed valid (``functional.py`` checks them). float16 and bfloat16 are computed
in float32; results come back in each argument's dtype.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import bilinear

# Target size of one chunk's sampling plan (corner rows and weights of every level). Large
# enough that per-call overheads vanish: at 4 MiB the encoder-scale forward was measured the
# same with one thread but twice as slow with two on a loaded 2-core machine (each of the many
# small ops waits for a descheduled thread); the plan stays far below the value's size.
PLAN_BUDGET_BYTES = 32 << 20


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _shapes(spatial_shapes: Tensor) -> List[Tuple[int, int]]:
    return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]


def _padded_starts(shapes: Sequence[Tuple[int, int]]) -> List[int]:
    """First bordered cell of every level, and the total ``Sp`` last."""
    starts, s = [], 0
    for H, W in shapes:
        starts.append(s)
        s += (H + 2) * (W + 2)
    return starts + [s]


def _levels(rows: Tensor, shapes, pstarts, N: int, M: int):
    """The bordered ``(N, H+2, W+2, M, D)`` view of every level of ``(N*Sp*M, D)`` rows."""
    M_D = rows.view(N, pstarts[-1], M, rows.shape[-1])
    for (H, W), ps in zip(shapes, pstarts):
        yield M_D[:, ps:ps + (H + 2) * (W + 2)].unflatten(1, (H + 2, W + 2))


def _padded_source(value: Tensor, shapes, pstarts, dtype: torch.dtype) -> Tensor:
    """(N, S, M, D) -> (N * Sp * M, D): every level with a zero border, in ``dtype``."""
    N, _, M, D = value.shape
    src = torch.empty(N * pstarts[-1] * M, D, dtype=dtype, device=value.device)
    start = 0
    for (H, W), level in zip(shapes, _levels(src, shapes, pstarts, N, M)):
        # Zero only the border (as bilinear.bordered_source does: a full fill first was
        # measured 3.5x slower there), then copy the interior.
        for rows in (level[:, 0], level[:, H + 1], level[:, :, 0], level[:, :, W + 1]):
            rows.zero_()
        level[:, 1:H + 1, 1:W + 1].copy_(value[:, start:start + H * W].unflatten(1, (H, W)))
        start += H * W
    return src


def _unpad(g_src: Tensor, shapes, pstarts, N: int, M: int, D: int) -> Tensor:
    """The inverse of ``_padded_source``'s layout: (N * Sp * M, D) -> (N, S, M, D)."""
    parts = [level[:, 1:H + 1, 1:W + 1].reshape(N, H * W, M, D)
             for (H, W), level in zip(shapes, _levels(g_src, shapes, pstarts, N, M))]
    return torch.cat(parts, 1) if parts else g_src.new_zeros(N, 0, M, D)


def _plan(loc: Tensor, att: Tensor, n: int, q0: int, q1: int, lvl: int, shapes, pstarts,
          M: int, dtype: torch.dtype, index_dtype: torch.dtype) -> bilinear.Corners:
    """Corner plan of batch element ``n``, queries ``q0:q1``, level ``lvl``: samples of shape
    ``(q1 - q0, M, P)``. A sample that is skipped weighs 0 whatever its attention weight (an
    infinite weight times 0 would be NaN)."""
    H, W = shapes[lvl]
    xy = loc[n, q0:q1, :, lvl].to(dtype)
    # Pixel coordinates: pixel centres at integers (grid_sample's align_corners=False).
    h = xy[..., 1] * H - 0.5
    w = xy[..., 0] * W - 0.5
    m = torch.arange(M, device=loc.device).view(1, M, 1)
    base = (n * pstarts[-1] + pstarts[lvl]) * M + m
    plan = bilinear.corner_plan((h, w), (H, W), scale=att[n, q0:q1, :, lvl].to(dtype),
                                base=base, rows_per_cell=M, strict=True,
                                index_dtype=index_dtype)
    plan.weight.masked_fill_(~plan.inside.view(-1, 1), 0.0)
    return plan


def _chunks(N: int, Q: int, per_query_bytes: int):
    """(n, q0, q1): query blocks of one batch element, so the corner rows a chunk reads in
    each level stay a narrow band."""
    step = max(1, PLAN_BUDGET_BYTES // max(1, per_query_bytes))
    for n in range(N):
        for q0 in range(0, Q, step):
            yield n, q0, min(Q, q0 + step)


def _setup(value, spatial_shapes, sampling_locations, attention_weights):
    N, _, M, D = value.shape
    Q, _, L, P = sampling_locations.shape[1:5]
    ct = _compute_dtype(value, sampling_locations, attention_weights)
    shapes = _shapes(spatial_shapes)
    pstarts = _padded_starts(shapes)
    per_query = M * L * P * 4 * (ct.itemsize + 8)
    return N, Q, M, D, L, P, ct, shapes, pstarts, per_query


def ms_deform_attn_fwd(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                       sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Output (N, Q, M*D) in ``value``'s dtype (``level_start_index`` follows from the shapes
    and is not read)."""
    N, Q, M, D, L, P, ct, shapes, pstarts, per_query = _setup(
        value, spatial_shapes, sampling_locations, attention_weights)
    out = torch.empty(N, Q, M * D, dtype=ct, device=value.device)
    if out.numel() == 0 or L * P == 0:
        return out.zero_().to(value.dtype)
    src = _padded_source(value, shapes, pstarts, ct)
    it = bilinear.index_dtype(src.shape[0])
    for n, q0, q1 in _chunks(N, Q, per_query):
        bags = (q1 - q0) * M
        # The levels' plans side by side, (query, head, level, point, corner): one bag of
        # L*P*4 corners per (query, head), blended in one pass (measured about twice as fast
        # as one embedding_bag per level and a sum).
        index = torch.empty(bags, L, P * 4, dtype=it, device=value.device)
        weight = torch.empty(bags, L, P * 4, dtype=ct, device=value.device)
        for lvl in range(L):
            p = _plan(sampling_locations, attention_weights, n, q0, q1, lvl, shapes, pstarts,
                      M, ct, it)
            index[:, lvl] = p.index.view(bags, P * 4)
            weight[:, lvl] = p.weight.view(bags, P * 4)
        out[n, q0:q1] = F.embedding_bag(index.view(bags, -1), src, mode="sum",
                                        per_sample_weights=weight.view(bags, -1)
                                        ).view(q1 - q0, M * D)
    return out.to(value.dtype)


def ms_deform_attn_bwd(grad_out: Tensor, value: Tensor, spatial_shapes: Tensor,
                       level_start_index: Tensor, sampling_locations: Tensor,
                       attention_weights: Tensor, output_mask: Sequence[bool]
                       ) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of (value, sampling_locations, attention_weights), each in its argument's
    dtype; an empty tensor where ``output_mask`` says it is not needed."""
    need_v, need_loc, need_att = output_mask
    N, Q, M, D, L, P, ct, shapes, pstarts, per_query = _setup(
        value, spatial_shapes, sampling_locations, attention_weights)
    dev = value.device
    empty = value.new_empty(0)
    src = _padded_source(value, shapes, pstarts, ct)
    g_src = torch.zeros_like(src) if need_v else None
    # Every element of these is written below (empty tensors when there are no samples).
    g_loc = torch.empty(sampling_locations.shape, dtype=ct, device=dev) if need_loc else None
    g_att = torch.empty(attention_weights.shape, dtype=ct, device=dev) if need_att else None
    if N * Q * M * L * P > 0:
        it = bilinear.index_dtype(src.shape[0])
        for n, q0, q1 in _chunks(N, Q, per_query):
            gcol = grad_out[n, q0:q1].to(ct).reshape((q1 - q0) * M, D)
            for lvl, (H, W) in enumerate(shapes):
                p = _plan(sampling_locations, attention_weights, n, q0, q1, lvl, shapes,
                          pstarts, M, ct, it)
                if need_v:
                    bilinear.scatter_samples(g_src, gcol, p, P)
                if not (need_loc or need_att):
                    continue
                (gy, gx), ga = bilinear.sample_grads(gcol, src, p, P)
                if need_att:
                    g_att[n, q0:q1, :, lvl] = ga
                if need_loc:
                    # Through h = y*H - 0.5, w = x*W - 0.5; a skipped sample has none (an
                    # infinite attention weight times 0 would be NaN).
                    g_loc[n, q0:q1, :, lvl, :, 0] = torch.where(p.inside, gx * W, 0.0)
                    g_loc[n, q0:q1, :, lvl, :, 1] = torch.where(p.inside, gy * H, 0.0)
    del src  # not needed past here: the value gradient's copy below then needs no more peak
    gv = _unpad(g_src, shapes, pstarts, N, M, D).to(value.dtype) if need_v else empty
    gl = g_loc.to(sampling_locations.dtype) if need_loc else empty
    ga = g_att.to(attention_weights.dtype) if need_att else empty
    return gv, gl, ga
