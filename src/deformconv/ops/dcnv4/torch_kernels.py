"""Pure-PyTorch DCNv4 kernels: ``dcnv3``'s kernels on views of the fused ``offset_mask``.

Per group the fused tensor holds ``P`` (dx, dy) pairs then ``P`` mask values; the trailing
padding columns are never read and get a zero gradient (``docs/dcnv3.md``).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ..dcnv3.torch_kernels import Geometry, backward, forward


def views(offset_mask: Tensor, g: Geometry) -> Tuple[Tensor, Tensor]:
    """The offsets (N, oH, oW, G, P, 2) and mask (N, oH, oW, G, P) inside ``offset_mask``."""
    P = g.points
    per = offset_mask[..., :g.group * 3 * P].unflatten(-1, (g.group, 3 * P))
    return per[..., :2 * P].unflatten(-1, (P, 2)), per[..., 2 * P:]


def fused_grad(g_off: Tensor, g_msk: Tensor, width: int) -> Tensor:
    """The ``offset_mask`` gradient from the offset (..., G, P, 2) and mask (..., G, P)
    gradients: per group pairs then mask values, zero in the ``width - G*3*P`` padding
    columns."""
    per = torch.cat([g_off.flatten(-2), g_msk], -1).flatten(-2)
    return torch.nn.functional.pad(per, (0, width - per.shape[-1]))


def dcnv4_fwd(input: Tensor, offset_mask: Tensor, *params) -> Tensor:
    """``dcnv4`` forward; ``params`` in DCNv4's order after the tensors."""
    g = Geometry(*params)
    return forward(input, *views(offset_mask, g), g)


def dcnv4_bwd(grad_out: Tensor, input: Tensor, offset_mask: Tensor, *params_and_mask
              ) -> Tuple[Tensor, Tensor]:
    """Gradients of (input, offset_mask); the last argument is ``[need input, need
    offset_mask]``. Those not asked for come back empty."""
    *params, (need_in, need_om) = params_and_mask
    g = Geometry(*params)
    g_in, g_off, g_msk = backward(grad_out, input, *views(offset_mask, g), g, need_in, need_om)
    empty = input.new_empty(0)
    return (g_in.contiguous() if need_in else empty,
            fused_grad(g_off, g_msk, offset_mask.shape[-1]) if need_om else empty)
