"""Pure-PyTorch deformable convolution: forward and explicit backward, on any device.

Layout. The input is copied once to channels-last with a one-pixel zero border,
``src[(n, y + 1, x + 1, g), c]`` of shape ``(N * (H+2) * (W+2) * G, C/G)``. Every bilinear
corner of a position inside ``[-1, H) x [-1, W)`` then has a row in ``src``, and corners
beyond the image read the zero border: no per-corner validity test and no clamping.

Work is cut into chunks of whole images or of output rows so that the sampled columns of one
chunk stay near ``COLUMN_BUDGET_BYTES``; no column buffer for the whole batch is built.
Per chunk:

1. ``_plan`` computes, once per (position, tap, offset group), the four corner rows of ``src``
   and their bilinear weights times the mask. Channels of one offset group share that plan, so
   each corner is a contiguous run of ``C/G`` values.
2. Forward: ``embedding_bag(mode="sum", per_sample_weights=...)`` gathers and blends the four
   corners in one vectorised pass. The rows are ordered so that the result is the
   channels-last image ``S`` whose kH x kW patches hold each output pixel's taps; the
   deformable convolution is then ``conv2d(S, weight, stride=(kH, kW), groups=groups)``, which
   runs on oneDNN (measured about 2x faster than a plain GEMM of the same size on this CPU).
3. Backward: the column gradient is the input gradient of that convolution; it is scattered
   to the input by a stably sorted ``embedding_bag`` gather (deterministic, no atomics); the
   weight gradient is a GEMM on recomputed columns; the offset and mask gradients need the four
   dot products ``<column gradient, corner value>``, which are exactly the gradient of
   ``embedding_bag`` with respect to its per-sample weights.

Launchers here assume validated arguments (see ``deform_conv.py``).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import bilinear, geometry

# Target size of the sampled columns of one chunk: big enough that the GEMMs run at full speed
# and per-op overheads vanish, small enough to stay in the last-level cache.
COLUMN_BUDGET_BYTES = 8 << 20


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 are computed in float32; float32/float64 in their own precision."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _chunks(N: int, oH: int, row_bytes: int):
    """Yield (n0, n1, r0, r1): whole images when several fit the budget, else row blocks."""
    rows = max(1, COLUMN_BUDGET_BYTES // max(1, row_bytes))
    if rows >= oH:
        per = max(1, rows // oH)
        for n0 in range(0, N, per):
            yield n0, min(N, n0 + per), 0, oH
    else:
        for n in range(N):
            for r0 in range(0, oH, rows):
                yield n, n + 1, r0, min(oH, r0 + rows)


def _padded_channels_last(input: Tensor, G: int, dtype: torch.dtype) -> Tensor:
    """(N, C, H, W) -> (N*(H+2)*(W+2)*G, C/G), zero border, in the compute dtype."""
    return bilinear.bordered_source(input.movedim(1, -1), dtype).view(-1, input.shape[1] // G)


def _plan(offset: Tensor, mask: Optional[Tensor], n0: int, n1: int, r0: int, r1: int, H: int,
          W: int, kH: int, kW: int, sh: int, sw: int, ph: int, pw: int, dh: int, dw: int,
          G: int, dtype: torch.dtype, index_dtype: torch.dtype) -> bilinear.Corners:
    """Rows are ordered (b, R, kH, oW, kW, G): the sampled columns are then, in memory, the
    channels-last image ``S`` of shape (b, R*kH, oW*kW, C) whose kH x kW patches are the taps of
    each output pixel, so the convolution is ``conv2d(S, weight, stride=(kH, kW))``."""
    b, R = n1 - n0, r1 - r0
    oW = offset.shape[-1]
    dev = offset.device
    # offset channel 2*(g*K + i*kW + j) is dy, +1 is dx: (b, G, kH, kW, 2, R, oW)
    off = offset[n0:n1, :, r0:r1].view(b, G, kH, kW, 2, R, oW).to(dtype)
    order = (0, 4, 2, 5, 3, 1)  # (b, G, kH, kW, R, oW) -> (b, R, kH, oW, kW, G)
    dy = off[:, :, :, :, 0].permute(*order)
    dx = off[:, :, :, :, 1].permute(*order)
    base_y = ((torch.arange(r0, r1, device=dev) * sh - ph).view(R, 1)
              + (torch.arange(kH, device=dev) * dh).view(1, kH)).to(dtype)
    base_x = ((torch.arange(oW, device=dev) * sw - pw).view(oW, 1)
              + (torch.arange(kW, device=dev) * dw).view(1, kW)).to(dtype)
    # Logical (row-major) order from here on, whatever the offsets' strides.
    y = (base_y.view(1, R, kH, 1, 1, 1) + dy).contiguous()
    x = (base_x.view(1, 1, 1, oW, kW, 1) + dx).contiguous()
    msk = None
    if mask is not None:
        msk = mask[n0:n1, :, r0:r1].view(b, G, kH, kW, R, oW).permute(*order)
        msk = msk.to(dtype).contiguous()
    img = (torch.arange(n0, n1, device=dev) * ((H + 2) * (W + 2) * G)).view(b, 1, 1, 1, 1, 1)
    base = img + torch.arange(G, device=dev)
    return bilinear.corner_plan((y, x), (H, W), scale=msk, base=base, rows_per_cell=G,
                                index_dtype=index_dtype)


def _sample(src: Tensor, p: bilinear.Corners) -> Tensor:
    """Columns (M, C/G): the four corners gathered and blended in one pass."""
    return bilinear.sample(src, p)


def _group_cols(cols: Tensor, K: int, groups: int, j: int) -> Tensor:
    """Columns of conv group j, (P, K*Cg); a view when there is one group."""
    if groups == 1:
        return cols
    P, KC = cols.shape
    Cg = KC // K // groups
    return cols.view(P, K, groups, Cg)[:, :, j].reshape(P, K * Cg)


def _index_dtype(src: Tensor) -> torch.dtype:
    return bilinear.index_dtype(src.shape[0])


def deform_conv2d_fwd(input: Tensor, weight: Tensor, offset: Tensor, mask: Optional[Tensor],
                      bias: Optional[Tensor], sh: int, sw: int, ph: int, pw: int, dh: int,
                      dw: int) -> Tensor:
    N, C, H, W = input.shape
    O, Cg, kH, kW = weight.shape
    K = kH * kW
    grp = geometry.groups_of(C, weight.shape, offset.shape[1])
    groups, G = grp.groups, grp.offset_groups
    oH, oW = geometry.out_size((H, W), (kH, kW), (sh, sw), (ph, pw), (dh, dw))
    ct = _compute_dtype(input.dtype)
    if N == 0:
        return input.new_empty(N, O, oH, oW)
    out = torch.empty(N, O, oH, oW, dtype=ct, device=input.device)
    src = _padded_channels_last(input, G, ct)
    it = _index_dtype(src)
    w = weight.to(ct)
    b_ = bias.to(ct) if bias is not None else None
    for n0, n1, r0, r1 in _chunks(N, oH, oW * K * C * src.element_size()):
        p = _plan(offset, mask, n0, n1, r0, r1, H, W, kH, kW, sh, sw, ph, pw, dh, dw, G, ct, it)
        S = _as_image(_sample(src, p), n1 - n0, r1 - r0, oW, kH, kW)
        out[n0:n1, :, r0:r1] = F.conv2d(S, w, b_, stride=(kH, kW), groups=groups)
    return out.to(input.dtype)


def _as_image(cols: Tensor, b: int, R: int, oW: int, kH: int, kW: int) -> Tensor:
    """Sampled columns (M, C/G) as the NCHW view of the channels-last image S."""
    return cols.view(b, R * kH, oW * kW, -1).permute(0, 3, 1, 2)


def deform_conv2d_bwd(grad_out: Tensor, input: Tensor, weight: Tensor, offset: Tensor,
                      mask: Optional[Tensor], bias: Optional[Tensor], sh: int, sw: int,
                      ph: int, pw: int, dh: int, dw: int,
                      output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of (input, weight, offset, mask, bias); those not asked for come back empty.

    ``output_mask`` = [input, weight, offset and mask, bias], as in aten's convolution_backward.
    """
    need_in, need_w, need_om, need_b = output_mask
    N, C, H, W = input.shape
    O, Cg, kH, kW = weight.shape
    K = kH * kW
    grp = geometry.groups_of(C, weight.shape, offset.shape[1])
    groups, Og, G = grp.groups, grp.out_per_group, grp.offset_groups
    oH, oW = grad_out.shape[2], grad_out.shape[3]
    ct = _compute_dtype(input.dtype)
    dev = input.device

    g_in = (torch.zeros(N * (H + 2) * (W + 2) * G, C // G, dtype=ct, device=dev)
            if need_in else None)
    # Weight gradient as (O, K*Cg), columns ordered (tap, channel). oneDNN's weight gradient
    # of the tap-image convolution was measured 1.1-1.4x slower per training step (2 threads).
    g_w = torch.zeros(O, K * Cg, dtype=ct, device=dev) if need_w else None
    g_off = torch.zeros(offset.shape, dtype=ct, device=dev) if need_om else None
    g_mask = (torch.zeros(mask.shape, dtype=ct, device=dev)
              if need_om and mask is not None else None)

    if N > 0 and (need_in or need_w or need_om):
        src = _padded_channels_last(input, G, ct)
        it = _index_dtype(src)
        w = weight.to(ct)
        go_all = grad_out.to(ct)
        for n0, n1, r0, r1 in _chunks(N, oH, oW * K * C * src.element_size()):
            b, R = n1 - n0, r1 - r0
            p = _plan(offset, mask, n0, n1, r0, r1, H, W, kH, kW, sh, sw, ph, pw, dh, dw, G,
                      ct, it)
            go = go_all[n0:n1, :, r0:r1]
            if need_w:
                # grad_out (O, P) @ columns (P, K*C), tap-major per position.
                cols = _sample(src, p).view(b, R, kH, oW, kW, C).permute(0, 1, 3, 2, 4, 5)
                cols = cols.reshape(b, R * oW, K * C)
                for n in range(b):
                    go_n = go[n].reshape(O, R * oW)
                    for j in range(groups):
                        o = slice(j * Og, (j + 1) * Og)
                        g_w[o].addmm_(go_n[o], _group_cols(cols[n], K, groups, j))
            if not (need_in or need_om):
                continue
            # Column gradient: the input gradient of conv2d(S, weight, stride=(kH, kW)).
            S_like = torch.empty(b, R * kH, oW * kW, C, dtype=ct, device=dev)
            (gS, _, _) = torch.ops.aten.convolution_backward(
                go, S_like.permute(0, 3, 1, 2), w, None, [kH, kW], [0, 0], [1, 1], False,
                [0, 0], groups, [True, False, False])
            gcol = gS.permute(0, 2, 3, 1).reshape(-1, C // G)
            if need_in:
                bilinear.scatter_rows(g_in, gcol, p)
            if need_om:
                dots = bilinear.corner_dots(gcol, src, p)
                _offset_mask_grad(dots, p, g_off, g_mask, n0, n1, r0, r1)

    dt = input.dtype

    def empty():
        return input.new_empty(0)

    gi = (g_in.view(N, H + 2, W + 2, C)[:, 1:H + 1, 1:W + 1].permute(0, 3, 1, 2)
          .to(dt).contiguous() if need_in else empty())
    gw = (g_w.view(O, kH, kW, Cg).permute(0, 3, 1, 2).to(dt).contiguous()
          if need_w else empty())
    go_ = g_off.to(dt) if need_om else empty()
    gm = g_mask.to(dt) if g_mask is not None else empty()
    gb = (grad_out.to(ct).sum((0, 2, 3)).to(dt) if need_b and bias is not None else empty())
    return gi, gw, go_, gm, gb


def _offset_mask_grad(s: Tensor, p: bilinear.Corners, g_off: Tensor, g_mask: Optional[Tensor],
                      n0: int, n1: int, r0: int, r1: int) -> None:
    """d/d(dy, dx, mask) from s[:, ab] = <column gradient, corner value>, in the offsets'
    layout."""
    b, R, kH, oW, kW, G = p.shape
    gy, gx = bilinear.position_grad(s, p)
    back = (0, 5, 2, 4, 1, 3)  # (b, R, kH, oW, kW, G) -> (b, G, kH, kW, R, oW)
    view = g_off[n0:n1, :, r0:r1].view(b, G, kH, kW, 2, R, oW)
    view[:, :, :, :, 0].copy_(gy.permute(*back))
    view[:, :, :, :, 1].copy_(gx.permute(*back))
    if g_mask is not None:
        g_mask[n0:n1, :, r0:r1].view(b, G, kH, kW, R, oW).copy_(
            bilinear.scale_grad(s, p).permute(*back))
