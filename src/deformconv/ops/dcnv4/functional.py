"""``dcnv4``: FlashInternImage's deformable convolution v4, the public function and checks.

DCNv3 with the offsets and the mask in one fused tensor and no softmax; positions, sampling
and ``remove_center`` are DCNv3's (``docs/dcnv3.md``).
"""

from __future__ import annotations

import math

from torch import Tensor

from ..dcnv3.functional import check_input, check_per_position, geometry
from ..registration import check_not_functorch_autodiff
from . import library, onnx


def offset_mask_width(group: int, points: int) -> int:
    """Columns of the fused tensor: ``group*3*points`` rounded up to a multiple of 8."""
    return math.ceil(group * 3 * points / 8) * 8


def check_call(input, offset_mask, *params):
    """All of ``dcnv4``'s checks (also run by the registered op, for direct calls)."""
    g = geometry(*params)
    out = check_input(input, g)
    check_per_position("offset_mask", offset_mask, input, out,
                       offset_mask_width(g.group, g.points), "ceil(group*3*P/8)*8")
    return g


def dcnv4(input: Tensor, offset_mask: Tensor, kernel_h: int, kernel_w: int, stride_h: int,
          stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
          group: int, group_channels: int, offset_scale: float, remove_center: bool = False,
          *, im2col_step=None) -> Tensor:
    r"""DCNv4 (FlashInternImage): ``dcnv3`` with one fused offset/mask tensor, channels last.

    For group ``g`` and ``P = kernel_h*kernel_w - remove_center``, columns
    ``[g*3P, g*3P + 2P)`` of ``offset_mask`` hold the ``P`` (dx, dy) pairs in ``dcnv3``'s tap
    order and ``[g*3P + 2P, (g+1)*3P)`` the ``P`` mask values (used as given: no softmax). The
    last ``ceil(G*3P/8)*8 - G*3P`` columns are padding: never read, zero gradient. So
    ``dcnv4(x, om, ...)`` equals ``dcnv3(x, offset, mask, ...)`` on the split tensors.

    Args:
        input (Tensor[N, H, W, group*group_channels]): input, channels last.
        offset_mask (Tensor[N, oH, oW, ceil(group*3*P/8)*8]): fused offsets and mask.
        kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
            group, group_channels, offset_scale, remove_center: as in ``dcnv3`` (any kernel
            size, any group channels).
        im2col_step (int, keyword): accepted for DCNv4's argument list; no effect.

    Returns:
        Tensor[N, oH, oW, group*group_channels] of the input's dtype.

    Example:
        >>> import torch
        >>> x = torch.randn(1, 5, 6, 8)
        >>> om = torch.zeros(1, 5, 6, 56)  # 2 groups * 27 = 54 columns, padded to 56
        >>> dcnv4(x, om, 3, 3, 1, 1, 1, 1, 1, 1, 2, 4, 1.0).abs().max().item()
        0.0
    """
    g = check_call(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                   dilation_h, dilation_w, group, group_channels, offset_scale, remove_center,
                   im2col_step)
    check_not_functorch_autodiff("dcnv4", input, offset_mask)
    if onnx.exporting():
        return onnx.dcnv4_decomposed(input, offset_mask, *g)
    return library.dcnv4_op(input, offset_mask, *g)
