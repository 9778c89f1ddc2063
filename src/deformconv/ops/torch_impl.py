"""Pure-PyTorch deformable convolution: forward and explicit backward, on any device.

The work is cut into chunks of whole images or of output rows, so the sampled columns of one
chunk stay small (``COLUMN_BUDGET_BYTES``) and no column buffer for the whole batch is built.
Per chunk:

1. ``_plan`` computes, once per (position, tap, offset group), the four corner row indices
   into a channels-last view of the input and their bilinear weights (mask and border folded
   in). Channels of one offset group share that plan, so every gather reads a contiguous run of
   ``C / offset_groups`` values.
2. The forward gathers the four corners, blends them into columns ``(positions, K*C)`` and
   multiplies by the weight (one GEMM per conv group).
3. The backward forms the column gradient with a GEMM, scatters it to the input with
   ``index_add_``, recomputes the columns for the weight gradient and reduces over channels for
   the offset and mask gradients.

Launchers here assume validated arguments (see ``deform_conv.py``).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

# Size of the sampled columns of one chunk. A few MiB keeps a chunk in the last-level cache
# while leaving the GEMM tall enough to run at full speed.
COLUMN_BUDGET_BYTES = 4 << 20


def out_size(H: int, W: int, kH: int, kW: int, sh: int, sw: int, ph: int, pw: int, dh: int,
             dw: int) -> Tuple[int, int]:
    oH = (H + 2 * ph - dh * (kH - 1) - 1) // sh + 1
    oW = (W + 2 * pw - dw * (kW - 1) - 1) // sw + 1
    return oH, oW


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 are computed in float32; float32/float64 in their own precision."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _chunks(N: int, oH: int, oW: int, row_bytes: int):
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


class _Plan:
    """Corner indices and weights of one chunk, shaped (b, R, oW, K, G) before flattening."""

    __slots__ = ("idx", "wts", "corner_ok", "ly", "lx", "inside", "mask", "shape")

    def __init__(self, idx, wts, corner_ok, ly, lx, inside, mask, shape):
        self.idx, self.wts, self.corner_ok = idx, wts, corner_ok
        self.ly, self.lx, self.inside, self.mask, self.shape = ly, lx, inside, mask, shape


def _plan(offset: Tensor, mask: Optional[Tensor], n0: int, n1: int, r0: int, r1: int, H: int,
          W: int, kH: int, kW: int, sh: int, sw: int, ph: int, pw: int, dh: int, dw: int,
          G: int, dtype: torch.dtype) -> _Plan:
    b, R = n1 - n0, r1 - r0
    K = kH * kW
    oW = offset.shape[-1]
    dev = offset.device
    # offset channel 2*(g*K + k) is dy, +1 is dx -> (b, G, K, 2, R, oW) -> (b, R, oW, K, G)
    off = offset[n0:n1, :, r0:r1].to(dtype).view(b, G, K, 2, R, oW)
    dy = off[:, :, :, 0].permute(0, 3, 4, 2, 1)
    dx = off[:, :, :, 1].permute(0, 3, 4, 2, 1)
    ki = torch.arange(K, device=dev)
    base_y = ((torch.arange(r0, r1, device=dev) * sh - ph).view(R, 1, 1)
              + (ki // kW * dh).view(1, 1, K)).to(dtype).view(1, R, 1, K, 1)
    base_x = ((torch.arange(oW, device=dev) * sw - pw).view(1, oW, 1)
              + (ki % kW * dw).view(1, 1, K)).to(dtype).view(1, 1, oW, K, 1)
    y = base_y + dy
    x = base_x + dx
    # Outside (-1, H) x (-1, W), or not finite (NaN fails every comparison): no contribution.
    inside = (y > -1) & (y < H) & (x > -1) & (x < W)
    zero = torch.zeros((), dtype=dtype, device=dev)
    y = torch.where(inside, y, zero)
    x = torch.where(inside, x, zero)
    y0f, x0f = torch.floor(y), torch.floor(x)
    ly, lx = y - y0f, x - x0f
    hy, hx = 1 - ly, 1 - lx
    y0, x0 = y0f.long(), x0f.long()  # in [-1, H-1] x [-1, W-1]
    vy0, vy1 = y0 >= 0, y0 < H - 1
    vx0, vx1 = x0 >= 0, x0 < W - 1
    y0c, y1c = y0.clamp(min=0), (y0 + 1).clamp(max=H - 1)
    x0c, x1c = x0.clamp(min=0), (x0 + 1).clamp(max=W - 1)
    # Row of the channels-last input viewed as (N*H*W*G, C/G).
    nn_ = torch.arange(n0, n1, device=dev).view(b, 1, 1, 1, 1)
    gg = torch.arange(G, device=dev).view(1, 1, 1, 1, G)

    def row(yc, xc):
        return ((nn_ * H + yc) * W + xc) * G + gg

    idx = (row(y0c, x0c), row(y0c, x1c), row(y1c, x0c), row(y1c, x1c))
    m = inside.to(dtype)
    msk = None
    if mask is not None:
        msk = mask[n0:n1, :, r0:r1].to(dtype).view(b, G, K, R, oW).permute(0, 3, 4, 2, 1)
        m = m * msk
    ok = (vy0 & vx0, vy0 & vx1, vy1 & vx0, vy1 & vx1)
    bil = (hy * hx, hy * lx, ly * hx, ly * lx)
    wts = [(w * c * m).reshape(-1, 1) for w, c in zip(bil, ok)]
    return _Plan([i.reshape(-1) for i in idx], wts, ok, ly, lx, inside, msk, (b, R, oW, K, G))


def _weight_mats(weight: Tensor, groups: int) -> Tensor:
    """(O, Cg, kH, kW) -> (groups, K*Cg, Og), rows ordered (tap, channel) like the columns."""
    O, Cg, kH, kW = weight.shape
    Og = O // groups
    return weight.view(groups, Og, Cg, kH, kW).permute(0, 3, 4, 2, 1).reshape(
        groups, kH * kW * Cg, Og)


def _to_groups(t: Tensor, P: int, K: int, groups: int) -> Tensor:
    """(P, K*C) columns -> (groups, P, K*Cg)."""
    C = t.shape[1] // K
    return t.view(P, K, groups, C // groups).permute(2, 0, 1, 3).reshape(groups, P, -1)


def _from_groups(t: Tensor, K: int) -> Tensor:
    """(groups, P, K*Cg) -> (P, K*C)."""
    groups, P, KCg = t.shape
    return t.view(groups, P, K, KCg // K).permute(1, 2, 0, 3).reshape(P, -1)


def deform_conv2d_fwd(input: Tensor, weight: Tensor, offset: Tensor, mask: Optional[Tensor],
                      bias: Optional[Tensor], sh: int, sw: int, ph: int, pw: int, dh: int,
                      dw: int) -> Tensor:
    N, C, H, W = input.shape
    O, Cg, kH, kW = weight.shape
    K = kH * kW
    groups = C // Cg
    G = offset.shape[1] // (2 * K)
    oH, oW = out_size(H, W, kH, kW, sh, sw, ph, pw, dh, dw)
    ct = _compute_dtype(input.dtype)
    out = torch.empty(N, O, oH, oW, dtype=input.dtype, device=input.device)
    if N == 0:
        return out
    src = input.to(ct).permute(0, 2, 3, 1).contiguous().view(-1, C // G)
    wmat = _weight_mats(weight.to(ct), groups)
    b_ = bias.to(ct) if bias is not None else None
    for n0, n1, r0, r1 in _chunks(N, oH, oW, oW * K * C * src.element_size()):
        p = _plan(offset, mask, n0, n1, r0, r1, H, W, kH, kW, sh, sw, ph, pw, dh, dw, G, ct)
        P = (n1 - n0) * (r1 - r0) * oW
        cols = _columns(src, p).view(P, K * C)
        res = torch.bmm(_to_groups(cols, P, K, groups), wmat)  # (groups, P, Og)
        res = res.permute(1, 0, 2).reshape(n1 - n0, r1 - r0, oW, O)
        if b_ is not None:
            res = res + b_
        out[n0:n1, :, r0:r1].copy_(res.permute(0, 3, 1, 2))
    return out


def _columns(src: Tensor, p: _Plan) -> Tensor:
    """Blend the four gathered corners: (M, C/G) with M = positions * K * G."""
    cols = torch.index_select(src, 0, p.idx[0]).mul_(p.wts[0])
    tmp = torch.empty_like(cols)
    for i in range(1, 4):
        torch.index_select(src, 0, p.idx[i], out=tmp)
        cols.addcmul_(tmp, p.wts[i])
    return cols


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
    groups = C // Cg
    G = offset.shape[1] // (2 * K)
    Cpg = C // G
    oH, oW = grad_out.shape[2], grad_out.shape[3]
    ct = _compute_dtype(input.dtype)
    dev = input.device

    g_in = torch.zeros(N * H * W * G, Cpg, dtype=ct, device=dev) if need_in else None
    g_w = torch.zeros(groups, K * Cg, O // groups, dtype=ct, device=dev) if need_w else None
    g_off = torch.zeros(offset.shape, dtype=ct, device=dev) if need_om else None
    g_mask = (torch.zeros(mask.shape, dtype=ct, device=dev)
              if need_om and mask is not None else None)

    if N > 0 and (need_in or need_w or need_om):
        src = input.to(ct).permute(0, 2, 3, 1).contiguous().view(-1, Cpg)
        wmat = _weight_mats(weight.to(ct), groups)
        go_all = grad_out.to(ct)
        for n0, n1, r0, r1 in _chunks(N, oH, oW, oW * K * C * src.element_size()):
            b, R = n1 - n0, r1 - r0
            P = b * R * oW
            p = _plan(offset, mask, n0, n1, r0, r1, H, W, kH, kW, sh, sw, ph, pw, dh, dw, G,
                      ct)
            go = go_all[n0:n1, :, r0:r1].permute(0, 2, 3, 1).reshape(P, groups, O // groups)
            go = go.transpose(0, 1)  # (groups, P, Og)
            if need_w:
                cols = _columns(src, p).view(P, K * C)
                g_w.baddbmm_(_to_groups(cols, P, K, groups).transpose(1, 2), go)
            if not (need_in or need_om):
                continue
            # Column gradient, laid out like the columns: (M, C/G).
            gcol = _from_groups(torch.bmm(go, wmat.transpose(1, 2)), K).view(-1, Cpg)
            if need_in:
                for i in range(4):
                    g_in.index_add_(0, p.idx[i], gcol * p.wts[i])
            if need_om:
                _offset_mask_grad(src, gcol, p, g_off, g_mask, n0, n1, r0, r1)

    # Back to the caller's layouts and dtype.
    dt = input.dtype
    gi = (g_in.view(N, H, W, C).permute(0, 3, 1, 2).to(dt).contiguous()
          if need_in else input.new_empty(0))
    gw = (g_w.view(groups, kH, kW, Cg, O // groups).permute(0, 4, 3, 1, 2)
          .to(dt).contiguous().view(O, Cg, kH, kW) if need_w else input.new_empty(0))
    go_ = g_off.to(dt) if need_om else input.new_empty(0)
    gm = g_mask.to(dt) if g_mask is not None else input.new_empty(0)
    gb = (grad_out.to(ct).sum((0, 2, 3)).to(dt) if need_b and bias is not None
          else input.new_empty(0))
    return gi, gw, go_, gm, gb


def _offset_mask_grad(src: Tensor, gcol: Tensor, p: _Plan, g_off: Tensor,
                      g_mask: Optional[Tensor], n0: int, n1: int, r0: int, r1: int) -> None:
    """d/d(dy, dx, mask) from the four corner dot products s_ab = <gcol, corner value>."""
    b, R, oW, K, G = p.shape
    s = []
    tmp = torch.empty_like(gcol)
    zero = gcol.new_zeros(())
    for i in range(4):
        torch.index_select(src, 0, p.idx[i], out=tmp)
        # A corner outside the image was gathered at a clamped index: it must count as 0.
        s.append(torch.where(p.corner_ok[i], (tmp * gcol).sum(1).view(b, R, oW, K, G), zero))
    s00, s01, s10, s11 = s
    ly, lx = p.ly, p.lx
    hy, hx = 1 - ly, 1 - lx
    m = p.inside.to(ly.dtype)
    m_all = m * p.mask if p.mask is not None else m
    gy = m_all * (hx * (s10 - s00) + lx * (s11 - s01))
    gx = m_all * (hy * (s01 - s00) + ly * (s11 - s10))
    # (b, R, oW, K, G) -> offset layout (b, G, K, 2, R, oW)
    view = g_off[n0:n1, :, r0:r1].view(b, G, K, 2, R, oW)
    view[:, :, :, 0].copy_(gy.permute(0, 4, 3, 1, 2))
    view[:, :, :, 1].copy_(gx.permute(0, 4, 3, 1, 2))
    if g_mask is not None:
        gm = m * (hy * hx * s00 + hy * lx * s01 + ly * hx * s10 + ly * lx * s11)
        g_mask[n0:n1, :, r0:r1].view(b, G, K, R, oW).copy_(gm.permute(0, 4, 3, 1, 2))
