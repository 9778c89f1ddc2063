"""Pure-PyTorch DCNv3 kernels: forward and explicit backward, on any device.

The design of the deformable convolution's CPU path (``torch_impl``), for DCNv3's layout:

- The input is copied once to a channels-last source with a one-pixel zero border,
  ``src[((n*(H+2) + y+1)*(W+2) + x+1)*G + g]`` a row of the group's ``Cg`` channels. Every
  corner of a position inside ``-1 < y < H``, ``-1 < x < W`` has a row; corners off the image
  read the border: no per-corner test, no clamping.
- A plan gives, per (output position, group), the ``4*P`` corner rows of its ``P`` taps and
  their bilinear weights times the mask; one ``embedding_bag`` gathers and sums them, and its
  ``(N*oH*oW*G, Cg)`` result is the channels-last output itself. Nothing the size of
  InternImage's ``(N*G, Cg, oH*oW, P)`` sample tensor is built: work runs in chunks of
  ``torch_impl.COLUMN_BUDGET_BYTES`` of plan.
- Backward: the output gradient is scattered to the source by a stably sorted gather
  (deterministic, no atomics, ``torch_impl_nd._gather_scatter``); the offset and mask gradients
  come from the ``4*P`` dot products ``<grad_out row, corner row>`` (the gradient of
  ``embedding_bag`` in its weights), with the floor held constant: the one-sided derivative.

The kernels take the offsets as a (N, oH, oW, G, P, 2) and the mask as a (N, oH, oW, G, P)
view of any strides, so ``dcnv4`` runs them on its fused tensor without copies. Arguments are
assumed valid (``functional.py``).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ..torch_impl import _chunks, _compute_dtype, _index_dtype
from ..torch_impl_nd import _corner_dots, _gather_scatter


class Geometry(NamedTuple):
    """The scalar arguments of one call, in InternImage's order."""

    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dilation_h: int
    dilation_w: int
    group: int
    group_channels: int
    offset_scale: float
    remove_center: bool

    @property
    def points(self) -> int:
        return self.kernel_h * self.kernel_w - int(self.remove_center)

    def out_size(self, H: int, W: int) -> Tuple[int, int]:
        """(oH, oW): ``(H + 2*pad_h - (dilation_h*(kernel_h-1) + 1)) // stride_h + 1``."""
        return ((H + 2 * self.pad_h - (self.dilation_h * (self.kernel_h - 1) + 1))
                // self.stride_h + 1,
                (W + 2 * self.pad_w - (self.dilation_w * (self.kernel_w - 1) + 1))
                // self.stride_w + 1)

    def taps(self) -> Tuple[List[int], List[int]]:
        """Kernel column ``i`` and row ``j`` of each tap slot: x outer, y inner, the centre
        skipped when ``remove_center``."""
        cols, rows = [], []
        for i in range(self.kernel_w):
            for j in range(self.kernel_h):
                if self.remove_center and i == self.kernel_w // 2 and j == self.kernel_h // 2:
                    continue
                cols.append(i)
                rows.append(j)
        return cols, rows


def offset_mask_views(offset: Tensor, mask: Tensor, g: Geometry) -> Tuple[Tensor, Tensor]:
    """DCNv3's offset and mask as the kernels' (N, oH, oW, G, P, 2) and (N, oH, oW, G, P)."""
    return (offset.unflatten(-1, (g.group, g.points, 2)),
            mask.unflatten(-1, (g.group, g.points)))


class _Plan(NamedTuple):
    idx: Tensor     # (M, 4P) corner rows of src, M = b*R*oW*G, corners (y0x0, y0x1, y1x0, y1x1)
    wts: Tensor     # (M, 4P) bilinear weight times mask (0 outside the cut-off)
    ly: Tensor      # (b, R, oW, G, P) fractional parts
    lx: Tensor
    m: Tensor       # (b, R, oW, G, P) mask where inside, else 0
    inside: Tensor  # (b, R, oW, G, P)


def _source(input: Tensor, G: int, dtype: torch.dtype) -> Tensor:
    """(N, H, W, G*Cg) -> (N*(H+2)*(W+2)*G, Cg): zero border, compute dtype."""
    N, H, W, C = input.shape
    src = torch.empty(N, H + 2, W + 2, C, dtype=dtype, device=input.device)
    src[:, 0].zero_()
    src[:, H + 1].zero_()
    src[:, :, 0].zero_()
    src[:, :, W + 1].zero_()
    src[:, 1:H + 1, 1:W + 1].copy_(input)
    return src.view(-1, C // G)


def _plan(off: Tensor, msk: Tensor, n0: int, n1: int, r0: int, r1: int, H: int, W: int,
          g: Geometry, dtype: torch.dtype, index_dtype: torch.dtype) -> _Plan:
    dev = off.device
    b, R, oW, G = n1 - n0, r1 - r0, off.shape[2], g.group
    s = g.offset_scale
    cols, rows = g.taps()
    c_h = g.dilation_h * (g.kernel_h - 1) // 2
    c_w = g.dilation_w * (g.kernel_w - 1) // 2
    # Grid position with the centre kept and the spread scaled, as the CUDA kernel computes:
    # (wo*stride - pad + c - c*s) + (i*dil + dx)*s.
    x0 = (torch.arange(oW, device=dev, dtype=dtype) * g.stride_w - g.pad_w + c_w) - c_w * s
    y0 = (torch.arange(r0, r1, device=dev, dtype=dtype) * g.stride_h - g.pad_h + c_h) - c_h * s
    ix = torch.tensor(cols, device=dev, dtype=dtype) * g.dilation_w
    jy = torch.tensor(rows, device=dev, dtype=dtype) * g.dilation_h
    o = off[n0:n1, r0:r1].to(dtype)
    # Logical (row-major) order from here on, whatever the offsets' strides.
    x = (x0.view(1, 1, oW, 1, 1) + (ix + o[..., 0]) * s).contiguous()
    y = (y0.view(1, R, 1, 1, 1) + (jy + o[..., 1]) * s).contiguous()
    inside = (y > -1) & (y < H) & (x > -1) & (x < W)  # strict; False for NaN
    y = torch.where(inside, y, 0.0)
    x = torch.where(inside, x, 0.0)
    fy, fx = torch.floor(y), torch.floor(x)
    ly, lx = y - fy, x - fx
    m = torch.where(inside, msk[n0:n1, r0:r1].to(dtype), 0.0)
    Wp = W + 2
    img = (torch.arange(n0, n1, device=dev) * (H + 2)).view(b, 1, 1, 1, 1)
    grp = torch.arange(G, device=dev).view(1, 1, 1, G, 1)
    base = ((img + fy.long() + 1) * Wp + fx.long() + 1) * G + grp
    P = base.shape[-1]
    M = b * R * oW * G
    idx = torch.empty(M, P, 4, dtype=index_dtype, device=dev)
    wts = torch.empty(M, P, 4, dtype=dtype, device=dev)
    base = base.view(M, P)
    hy, vy = ((1 - ly) * m).view(M, P), (ly * m).view(M, P)
    hx, vx = (1 - lx).view(M, P), lx.view(M, P)
    for c, (step, a, b_) in enumerate(((0, hy, hx), (G, hy, vx), (Wp * G, vy, hx),
                                       ((Wp + 1) * G, vy, vx))):
        torch.add(base, step, out=idx[:, :, c])
        torch.mul(a, b_, out=wts[:, :, c])
    return _Plan(idx.view(M, 4 * P), wts.view(M, 4 * P), ly, lx, m, inside)


def _row_bytes(oW: int, g: Geometry, dtype: torch.dtype) -> int:
    """Plan bytes of one output row (index + weight per corner, and the per-tap temporaries)."""
    return oW * g.group * g.points * (4 * (8 + torch.finfo(dtype).bits // 8) + 64)


def forward(input: Tensor, off: Tensor, msk: Tensor, g: Geometry) -> Tensor:
    """Output (N, oH, oW, G*Cg) in the input's dtype, from the kernels' offset/mask views."""
    N, H, W, C = input.shape
    oH, oW = off.shape[1:3]
    ct = _compute_dtype(input.dtype)
    out = torch.empty(N, oH, oW, C, dtype=ct, device=input.device)
    if out.numel() == 0:
        return out.to(input.dtype)
    src = _source(input, g.group, ct)
    it = _index_dtype(src)
    for n0, n1, r0, r1 in _chunks(N, oH, _row_bytes(oW, g, ct)):
        p = _plan(off, msk, n0, n1, r0, r1, H, W, g, ct, it)
        out[n0:n1, r0:r1] = torch.nn.functional.embedding_bag(
            p.idx, src, per_sample_weights=p.wts, mode="sum").view(n1 - n0, r1 - r0, oW, C)
    return out.to(input.dtype)


def backward(grad_out: Tensor, input: Tensor, off: Tensor, msk: Tensor, g: Geometry,
             need_input: bool, need_offset_mask: bool
             ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of (input, offsets, mask) in their dtypes and the views' shapes (offsets
    (N, oH, oW, G, P, 2), mask (N, oH, oW, G, P)); None for those not asked for."""
    N, H, W, C = input.shape
    oH, oW = off.shape[1:3]
    G, Cg = g.group, g.group_channels
    ct = _compute_dtype(input.dtype)
    dev = input.device
    g_src = torch.zeros(N * (H + 2) * (W + 2) * G, Cg, dtype=ct, device=dev) \
        if need_input else None
    g_off = torch.zeros(off.shape, dtype=ct, device=dev) if need_offset_mask else None
    g_msk = torch.zeros(msk.shape, dtype=ct, device=dev) if need_offset_mask else None
    if grad_out.numel() and (need_input or need_offset_mask):
        src = _source(input, G, ct)
        it = _index_dtype(src)
        for n0, n1, r0, r1 in _chunks(N, oH, _row_bytes(oW, g, ct)):
            p = _plan(off, msk, n0, n1, r0, r1, H, W, g, ct, it)
            gcol = grad_out[n0:n1, r0:r1].to(ct).reshape(-1, Cg)
            if need_input:
                _gather_scatter(g_src, gcol, p)
            if need_offset_mask:
                _offset_mask_grad(_corner_dots(gcol, src, p), p, g, g_off[n0:n1, r0:r1],
                                  g_msk[n0:n1, r0:r1])
    g_in = None
    if need_input:
        g_in = g_src.view(N, H + 2, W + 2, C)[:, 1:H + 1, 1:W + 1].to(input.dtype)
    return (g_in, g_off.to(off.dtype) if g_off is not None else None,
            g_msk.to(msk.dtype) if g_msk is not None else None)


def _offset_mask_grad(dots: Tensor, p: _Plan, g: Geometry, g_off: Tensor,
                      g_msk: Tensor) -> None:
    """Write the offset and mask gradients of one chunk from the corner dot products."""
    d00, d01, d10, d11 = dots.view(*p.ly.shape, 4).unbind(-1)
    ly, lx = p.ly, p.lx
    hy, hx = 1 - ly, 1 - lx
    g_msk.copy_(torch.where(p.inside, (d00 * hx + d01 * lx) * hy + (d10 * hx + d11 * lx) * ly,
                            0.0))
    ms = p.m * g.offset_scale
    g_off[..., 0] = ms * ((d01 - d00) * hy + (d11 - d10) * ly)
    g_off[..., 1] = ms * ((d10 - d00) * hx + (d11 - d01) * lx)


def dcnv3_fwd(input: Tensor, offset: Tensor, mask: Tensor, *params) -> Tensor:
    """``dcnv3`` forward; ``params`` in InternImage's order after the tensors."""
    g = Geometry(*params)
    return forward(input, *offset_mask_views(offset, mask, g), g)


def dcnv3_bwd(grad_out: Tensor, input: Tensor, offset: Tensor, mask: Tensor, *params_and_mask
              ) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of (input, offset, mask); ``params_and_mask`` ends with ``[need input, need
    offset and mask]``. Those not asked for come back empty."""
    *params, (need_in, need_om) = params_and_mask
    g = Geometry(*params)
    g_in, g_off, g_msk = backward(grad_out, input, *offset_mask_views(offset, mask, g), g,
                                  need_in, need_om)
    empty = input.new_empty(0)
    return (g_in.contiguous() if need_in else empty,
            g_off.reshape(offset.shape) if need_om else empty,
            g_msk.reshape(mask.shape) if need_om else empty)
