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
  (``bilinear.scatter_samples``: one sort key per tap, deterministic, no atomics); the offset
  and mask gradients are the output gradient row dotted with blends of each tap's four
  corners (``bilinear.sample_grads``), with the floor held constant: the one-sided
  derivative.

The kernels take the offsets as a (N, oH, oW, G, P, 2) and the mask as a (N, oH, oW, G, P)
view of any strides, so ``dcnv4`` runs them on its fused tensor without copies. Arguments are
assumed valid (``functional.py``).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .. import bilinear
from ..deform_conv.torch_kernels import _chunks, _compute_dtype


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


def _plan(off: Tensor, msk: Tensor, n0: int, n1: int, r0: int, r1: int, H: int, W: int,
          g: Geometry, dtype: torch.dtype, index_dtype: torch.dtype
          ) -> Tuple[bilinear.Corners, bilinear.Corners]:
    """The shared bilinear plan of one chunk's samples (b, R, oW, G, P), and the same plan
    viewed as one bag of ``4*P`` corners per (position, group), a row of the output."""
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
    base = ((torch.arange(n0, n1, device=dev) * ((H + 2) * (W + 2) * G)).view(b, 1, 1, 1, 1)
            + torch.arange(G, device=dev).view(1, 1, 1, G, 1))
    plan = bilinear.corner_plan((y, x), (H, W), scale=msk[n0:n1, r0:r1].to(dtype), base=base,
                                rows_per_cell=G, strict=True, index_dtype=index_dtype)
    M = b * R * oW * G
    bags = bilinear.Corners(plan.index.view(M, -1), plan.weight.view(M, -1), plan.frac,
                            plan.inside, plan.scale, (M,))
    return plan, bags


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
    src = bilinear.bordered_source(input, ct).view(-1, g.group_channels)
    it = bilinear.index_dtype(src.shape[0])
    for n0, n1, r0, r1 in _chunks(N, oH, _row_bytes(oW, g, ct)):
        _, bags = _plan(off, msk, n0, n1, r0, r1, H, W, g, ct, it)
        out[n0:n1, r0:r1] = bilinear.sample(src, bags).view(n1 - n0, r1 - r0, oW, C)
    return out.to(input.dtype)


def backward(grad_out: Tensor, input: Tensor, off: Tensor, msk: Tensor, g: Geometry,
             need_input: bool, need_offset_mask: bool
             ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of (input, offsets, mask) in their dtypes and the views' shapes (offsets
    (N, oH, oW, G, P, 2), mask (N, oH, oW, G, P)); None for those not asked for."""
    N, H, W, C = input.shape
    oH, oW = off.shape[1:3]
    Cg = g.group_channels
    ct = _compute_dtype(input.dtype)
    dev = input.device
    g_src = torch.zeros(N * (H + 2) * (W + 2) * g.group, Cg, dtype=ct, device=dev) \
        if need_input else None
    g_off = torch.zeros(off.shape, dtype=ct, device=dev) if need_offset_mask else None
    g_msk = torch.zeros(msk.shape, dtype=ct, device=dev) if need_offset_mask else None
    if grad_out.numel() and (need_input or need_offset_mask):
        src = bilinear.bordered_source(input, ct).view(-1, Cg)
        it = bilinear.index_dtype(src.shape[0])
        for n0, n1, r0, r1 in _chunks(N, oH, _row_bytes(oW, g, ct)):
            plan, _ = _plan(off, msk, n0, n1, r0, r1, H, W, g, ct, it)
            rows = grad_out[n0:n1, r0:r1].to(ct).reshape(-1, Cg)
            if need_input:
                bilinear.scatter_samples(g_src, rows, plan, g.points)
            if need_offset_mask:
                (gy, gx), gm = bilinear.sample_grads(rows, src, plan, g.points)
                g_off[n0:n1, r0:r1, ..., 0] = gx * g.offset_scale
                g_off[n0:n1, r0:r1, ..., 1] = gy * g.offset_scale
                g_msk[n0:n1, r0:r1] = gm
    g_in = None
    if need_input:
        g_in = bilinear.bordered_interior(g_src.view(-1, C), N, (H, W)).to(input.dtype)
    return (g_in, g_off.to(off.dtype) if g_off is not None else None,
            g_msk.to(msk.dtype) if g_msk is not None else None)


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
