"""The public deformable convolutions, 1-, 2- and 3-D: docs, argument checks, and the call of
the registered op. The numerics are those of ``docs/conventions.md``.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

from torch import Tensor

from ..checks import check_deform_conv, int_tuple
from ..registration import check_not_functorch_autodiff
from . import onnx as _onnx
from .library import OPS, op_args

_Int1 = Union[int, Tuple[int]]
_IntPair = Union[int, Tuple[int, int]]
_Int3 = Union[int, Tuple[int, int, int]]


def _call(R: int, input, offset, weight, bias, stride, padding, dilation, mask) -> Tensor:
    """Check the arguments of ``deform_conv{R}d`` and run it (or, while exporting to ONNX,
    emit the ``DeformConv`` node)."""
    stride = int_tuple("stride", stride, R, 1)
    padding = int_tuple("padding", padding, R, 0)
    dilation = int_tuple("dilation", dilation, R, 1)
    check_deform_conv(input, offset, weight, bias, mask, stride, padding, dilation, ndim=R)
    check_not_functorch_autodiff(f"deform_conv{R}d", input, offset, weight, mask, bias)
    if _onnx.exporting_with_symbolic(input):
        return _onnx.deform_conv_symbolic(input, weight, offset, mask, bias, stride, padding,
                                          dilation)
    return OPS[R](input, weight, offset, mask, bias, *op_args(R, stride, padding, dilation))


def deform_conv1d(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  stride: _Int1 = 1, padding: _Int1 = 0, dilation: _Int1 = 1,
                  mask: Optional[Tensor] = None) -> Tensor:
    r"""1-D deformable convolution, v1 (no ``mask``) and v2 (with ``mask``).

    For output position ``ox`` and tap ``j`` the input is read by linear interpolation at
    ``ox*stride - pad + j*dil + dx`` (zero outside ``(-1, W)``, each missing neighbour 0),
    multiplied by the mask value and the weight, and summed, as ``deform_conv2d`` does in 2-D.

    Args:
        input (Tensor[N, C, W]): input.
        offset (Tensor[N, offset_groups * kW, oW]): one displacement per tap, channel
            ``g*kW + j``. ``offset_groups`` is inferred and must divide ``C``.
        weight (Tensor[O, C / groups, kW]): weights; ``groups`` is inferred.
        bias (Tensor[O], optional): bias.
        stride, padding, dilation (int or (int,)): as in ``nn.Conv1d`` (symmetric zero
            padding).
        mask (Tensor[N, offset_groups * kW, oW], optional): modulation (v2), the offsets'
            groups. No sigmoid is applied here.

    Returns:
        Tensor[N, O, oW] of the input's dtype, ``oW = (W + 2*pad - dil*(kW-1) - 1) // stride
        + 1``. float16 and bfloat16 are computed in float32; non-finite or far offsets
        contribute 0 and have zero offset and mask gradients.

    Example:
        >>> import torch
        >>> x = torch.randn(2, 4, 10)
        >>> w = torch.randn(6, 4, 3)
        >>> y = deform_conv1d(x, torch.zeros(2, 3, 8), w)
        >>> torch.allclose(y, torch.nn.functional.conv1d(x, w), atol=1e-5)
        True
    """
    return _call(1, input, offset, weight, bias, stride, padding, dilation, mask)


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
        >>> tuple(y.shape)
        (1, 6, 6, 6)
    """
    return _call(2, input, offset, weight, bias, stride, padding, dilation, mask)


def deform_conv3d(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  stride: _Int3 = 1, padding: _Int3 = 0, dilation: _Int3 = 1,
                  mask: Optional[Tensor] = None) -> Tensor:
    r"""3-D deformable convolution, v1 (no ``mask``) and v2 (with ``mask``).

    For output position ``(oz, oy, ox)`` and tap ``(a, i, j)`` the input is read by trilinear
    interpolation at ``(oz*s_d - p_d + a*d_d + dz, oy*s_h - p_h + i*d_h + dy,
    ox*s_w - p_w + j*d_w + dx)`` (zero outside, each missing corner 0), multiplied by the mask
    value and the weight, and summed. Dimensions are depth-first, as in ``nn.Conv3d``.

    Args:
        input (Tensor[N, C, D, H, W]): input.
        offset (Tensor[N, 3 * offset_groups * kD * kH * kW, oD, oH, oW]): offsets interleaved
            per tap, depth first: channel ``3*(g*K + k)`` is ``dz``, ``+1`` ``dy``, ``+2``
            ``dx``, with tap ``k = (a*kH + i)*kW + j`` and ``K = kD*kH*kW``.
        weight (Tensor[O, C / groups, kD, kH, kW]): weights; ``groups`` is inferred.
        bias (Tensor[O], optional): bias.
        stride, padding, dilation (int or (int, int, int)): as in ``nn.Conv3d`` (symmetric
            zero padding).
        mask (Tensor[N, offset_groups * kD * kH * kW, oD, oH, oW], optional): modulation (v2),
            channel ``g*K + k``. No sigmoid is applied here.

    Returns:
        Tensor[N, O, oD, oH, oW] of the input's dtype. float16 and bfloat16 are computed in
        float32; non-finite or far offsets contribute 0 and have zero offset and mask
        gradients.

    Example:
        >>> import torch
        >>> x = torch.randn(1, 2, 4, 5, 6)
        >>> w = torch.randn(3, 2, 3, 3, 3)
        >>> y = deform_conv3d(x, torch.zeros(1, 81, 4, 5, 6), w, padding=1)
        >>> torch.allclose(y, torch.nn.functional.conv3d(x, w, padding=1), atol=1e-5)
        True
    """
    return _call(3, input, offset, weight, bias, stride, padding, dilation, mask)
