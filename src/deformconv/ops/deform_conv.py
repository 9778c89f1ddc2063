"""The public deformable convolution: docs, argument checks, and the call of the registered op."""

from __future__ import annotations

from typing import Optional, Tuple, Union

from torch import Tensor

from . import onnx as _onnx
from .checks import check_deform_conv, int_tuple
from .registration import check_not_functorch_autodiff
from .registry import deform_conv2d_op

_IntPair = Union[int, Tuple[int, int]]


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  stride: _IntPair = 1, padding: _IntPair = 0, dilation: _IntPair = 1,
                  mask: Optional[Tensor] = None) -> Tensor:
    r"""Deformable convolution v1 (no ``mask``) and v2 (with ``mask``).

    Same signature and numerics as ``torchvision.ops.deform_conv2d``. For output pixel
    ``(oy, ox)`` and kernel tap ``(i, j)`` the input is read by bilinear interpolation at
    ``(oy*stride_h - pad_h + i*dil_h + dy, ox*stride_w - pad_w + j*dil_w + dx)``, multiplied by
    the mask value and the weight, and summed. Positions outside the image read zeros.

    Args:
        input (Tensor[N, C, H, W]): input.
        offset (Tensor[N, 2 * offset_groups * kH * kW, oH, oW]): offsets, interleaved per tap,
            ``dy`` (height) first. ``offset_groups`` is inferred and must divide ``C``.
        weight (Tensor[O, C / groups, kH, kW]): weights; ``groups`` is inferred.
        bias (Tensor[O], optional): bias.
        stride, padding, dilation (int or (int, int)): as in ``nn.Conv2d``.
        mask (Tensor[N, offset_groups * kH * kW, oH, oW], optional): modulation (v2). No
            sigmoid is applied here.

    Returns:
        Tensor[N, O, oH, oW], of the input's dtype. float16 and bfloat16 are computed in
        float32.

    Non-finite offsets: a sampling position that is NaN or infinite lies outside the image and
    contributes 0, as does any position beyond the border; offsets of any size (1e30 included)
    never read or write out of bounds. Its offset and mask gradients are 0.

    Example:
        >>> import torch
        >>> x = torch.randn(1, 4, 8, 8)
        >>> w = torch.randn(6, 4, 3, 3)
        >>> offset = torch.zeros(1, 2 * 9, 6, 6)
        >>> y = deform_conv2d(x, offset, w)
        >>> torch.allclose(y, torch.nn.functional.conv2d(x, w), atol=1e-5)
        True
    """
    stride_h, stride_w = int_tuple("stride", stride, 2, 1)
    pad_h, pad_w = int_tuple("padding", padding, 2, 0)
    dil_h, dil_w = int_tuple("dilation", dilation, 2, 1)
    check_deform_conv(input, offset, weight, bias, mask, (stride_h, stride_w), (pad_h, pad_w),
                      (dil_h, dil_w), ndim=2)
    check_not_functorch_autodiff("deform_conv2d", input, offset, weight, mask, bias)
    if _onnx.exporting_with_symbolic():
        # torch.onnx.export(dynamo=True): emit the standard ONNX DeformConv node directly.
        return _onnx.deform_conv2d_symbolic(input, weight, offset, mask, bias, stride_h,
                                            stride_w, pad_h, pad_w, dil_h, dil_w)
    return deform_conv2d_op(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w,
                            dil_h, dil_w)


def _pair(name: str, value, minimum: int) -> Tuple[int, int]:
    """An int or a pair of ints (the layers' kernel_size/stride/... parsing)."""
    return int_tuple(name, value, 2, minimum)
