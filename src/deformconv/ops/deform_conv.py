"""The public deformable convolution: docs, argument checks, and the call of the registered op."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from . import onnx as _onnx
from .autocast import autocast_enabled
from .registry import deform_conv2d_op
from .torch_impl import out_size

_IntPair = Union[int, Tuple[int, int]]
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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
    stride_h, stride_w = _pair("stride", stride, 1)
    pad_h, pad_w = _pair("padding", padding, 0)
    dil_h, dil_w = _pair("dilation", dilation, 1)
    _check(input, offset, weight, bias, mask, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
    if _onnx.exporting_with_symbolic():
        # torch.onnx.export(dynamo=True): emit the standard ONNX DeformConv node directly.
        return _onnx.deform_conv2d_symbolic(input, weight, offset, mask, bias, stride_h,
                                            stride_w, pad_h, pad_w, dil_h, dil_w)
    return deform_conv2d_op(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w,
                            dil_h, dil_w)


def _pair(name: str, value, minimum: int) -> Tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    elif (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


def _check_tensor(name: str, t, ndim: int, ref: Optional[Tensor]) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if ref is not None and t.dtype != ref.dtype and not _autocast_mix(t, ref):
        raise TypeError(f"{name} must have the input's dtype {ref.dtype}, got {t.dtype}")
    if ref is not None and t.device != ref.device:
        raise ValueError(f"{name} must be on the input's device {ref.device}, got {t.device}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")


def _autocast_mix(t: Tensor, ref: Tensor) -> bool:
    """Mixed float16/bfloat16/float32 arguments are fine under autocast: its rule casts them
    all to float32 before the op runs (see ``autocast.py``)."""
    low = (torch.float16, torch.bfloat16, torch.float32)
    return t.dtype in low and ref.dtype in low and autocast_enabled(ref.device)


def _check(input, offset, weight, bias, mask, sh, sw, ph, pw, dh, dw) -> None:
    _check_tensor("input", input, 4, None)
    _check_tensor("offset", offset, 4, input)
    _check_tensor("weight", weight, 4, input)
    if mask is not None:
        _check_tensor("mask", mask, 4, input)
    if bias is not None:
        _check_tensor("bias", bias, 1, input)
    N, C, H, W = input.shape
    O, Cg, kH, kW = weight.shape
    if Cg < 1 or kH < 1 or kW < 1 or O < 1:
        raise ValueError(f"weight must have shape (O, C/groups, kH, kW) with all sizes >= 1, "
                         f"got {tuple(weight.shape)}")
    if C % Cg:
        raise ValueError(f"input channels ({C}) must be a multiple of weight.shape[1] ({Cg}), "
                         f"which gives the conv groups")
    groups = C // Cg
    if O % groups:
        raise ValueError(f"weight.shape[0] ({O}) must be divisible by groups ({groups} = "
                         f"input channels {C} / weight.shape[1] {Cg})")
    oH, oW = out_size(H, W, kH, kW, sh, sw, ph, pw, dh, dw)
    if oH < 1 or oW < 1:
        raise ValueError(f"output would be {oH}x{oW}, smaller than 1x1: input {H}x{W}, kernel "
                         f"{kH}x{kW}, stride {(sh, sw)}, padding {(ph, pw)}, dilation {(dh, dw)}")
    K = kH * kW
    if offset.shape[0] != N:
        raise ValueError(f"offset batch size must equal the input's ({N}), got "
                         f"{offset.shape[0]}")
    if offset.shape[1] == 0 or offset.shape[1] % (2 * K):
        raise ValueError(f"offset channels must be a positive multiple of 2*kH*kW = {2 * K}, "
                         f"got {offset.shape[1]}")
    G = offset.shape[1] // (2 * K)
    if C % G:
        raise ValueError(f"input channels ({C}) must be divisible by the offset groups ({G} = "
                         f"offset channels {offset.shape[1]} / (2*{kH}*{kW}))")
    if tuple(offset.shape[2:]) != (oH, oW):
        raise ValueError(f"offset spatial size must be the output size {(oH, oW)}, got "
                         f"{tuple(offset.shape[2:])}")
    if mask is not None:
        if mask.shape[0] != N:
            raise ValueError(f"mask batch size must equal the input's ({N}), got "
                             f"{mask.shape[0]}")
        if mask.shape[1] != G * K:
            raise ValueError(f"mask channels must be offset_groups*kH*kW = {G}*{K} = {G * K}, "
                             f"got {mask.shape[1]}")
        if tuple(mask.shape[2:]) != (oH, oW):
            raise ValueError(f"mask spatial size must be the output size {(oH, oW)}, got "
                             f"{tuple(mask.shape[2:])}")
    if bias is not None and bias.shape[0] != O:
        raise ValueError(f"bias must have shape ({O},), got {tuple(bias.shape)}")
