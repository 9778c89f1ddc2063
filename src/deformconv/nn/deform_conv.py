"""Deformable convolution layers.

- ``DeformConv2d``: offsets (and mask) are given to ``forward``, as in torchvision.
- ``DeformConv2dPack`` (v1) and ``ModulatedDeformConv2dPack`` (v2): the layer predicts its own
  offsets (and mask) from its input with ``conv_offset``, an ordinary convolution of the same
  kernel size, stride, padding and dilation, initialised to zero. Parameter names and channel
  routing are those of mmcv/mmdetection, so their DCN checkpoints load unchanged.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn
from ..ops import deform_conv2d
from ..ops.deform_conv import _pair

_Size = Union[int, Tuple[int, int]]


def _positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _padding(padding, kernel_size, stride, dilation):
    """An int or pair, or 'valid' / 'same' as in nn.Conv2d ('same': stride 1, symmetric)."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        if stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
        total = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
        if any(t % 2 for t in total):
            raise ValueError(f"padding='same' needs an even dilation*(kernel_size-1) to pad "
                             f"symmetrically, got kernel_size={kernel_size}, "
                             f"dilation={dilation}")
        return (total[0] // 2, total[1] // 2)
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int, a pair of ints, 'valid' or 'same', "
                         f"got {padding!r}")
    return _pair("padding", padding, 0)


class _ZeroInitConv2d(nn.Conv2d):
    """The offset predictor: an nn.Conv2d whose initialisation is zero, so every way of
    (re)initialising a layer (``reset_parameters``, meta device then ``to_empty``) starts it on
    the regular grid. Its parameters are ``weight`` and ``bias`` as in nn.Conv2d."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class DeformConv2d(nn.Module):
    """Deformable convolution with externally given offsets; parameters as ``nn.Conv2d``'s.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias:
            as in ``nn.Conv2d`` (zero padding only).
        device, dtype: factory keywords for the parameters.

    Shape:
        ``forward(input[N, C, H, W], offset[N, 2*G*kH*kW, oH, oW], mask[N, G*kH*kW, oH, oW]
        = None) -> [N, out_channels, oH, oW]``; the offset groups ``G`` follow from ``offset``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _Size,
                 stride: _Size = 1, padding: _Size = 0, dilation: _Size = 1, groups: int = 1,
                 bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        in_channels = _positive_int("in_channels", in_channels)
        out_channels = _positive_int("out_channels", out_channels)
        groups = _positive_int("groups", groups)
        if in_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by groups "
                             f"({groups})")
        if out_channels % groups:
            raise ValueError(f"out_channels ({out_channels}) must be divisible by groups "
                             f"({groups})")
        factory = {"device": device, "dtype": dtype}
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair("kernel_size", kernel_size, 1)
        self.stride = _pair("stride", stride, 1)
        self.dilation = _pair("dilation", dilation, 1)
        self.padding = _padding(padding, self.kernel_size, self.stride, self.dilation)
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups,
                                               *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialisation of ``nn.Conv2d``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2] * self.weight.shape[3]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor, offset: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return deform_conv2d(input, offset, self.weight, self.bias, self.stride, self.padding,
                             self.dilation, mask)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}")
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class DeformConv2dPack(DeformConv2d):
    """Deformable convolution v1 that predicts its own offsets (Dai et al. 2017).

    ``conv_offset`` maps the input to ``2*offset_groups*kH*kW`` offset channels with the same
    kernel size, stride, padding and dilation. It starts at zero, so a new layer samples the
    regular grid and equals ``nn.Conv2d`` with the same weight and bias.

    Args:
        offset_groups: channel groups that share one set of offsets; must divide
            ``in_channels``.
        deform_groups: mmcv's name for ``offset_groups`` (keyword only), accepted so that
            mmcv/mmdetection layer arguments carry over; give one or the other.
        The others as ``nn.Conv2d``. Note mmcv's v1 layer defaults to ``bias=False`` and
        ours, like ``nn.Conv2d``, to ``bias=True``: pass it explicitly when porting.
    """

    _mask = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _Size,
                 stride: _Size = 1, padding: _Size = 0, dilation: _Size = 1, groups: int = 1,
                 bias: bool = True, offset_groups: int = 1, device=None, dtype=None, *,
                 deform_groups: Optional[int] = None) -> None:
        if deform_groups is not None:
            if offset_groups not in (1, deform_groups):
                raise ValueError(f"offset_groups ({offset_groups}) and its mmcv alias "
                                 f"deform_groups ({deform_groups}) disagree; give only one")
            offset_groups = deform_groups
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, device=device, dtype=dtype)
        if (not isinstance(offset_groups, int) or isinstance(offset_groups, bool)
                or offset_groups < 1 or in_channels % offset_groups):
            raise ValueError(f"offset_groups must be >= 1 and divide in_channels "
                             f"({in_channels}), got {offset_groups!r}")
        self.offset_groups = offset_groups
        per_group = (3 if self._mask else 2) * self.kernel_size[0] * self.kernel_size[1]
        # Zero-initialised (in its own reset_parameters too): a new layer samples the grid.
        self.conv_offset = _ZeroInitConv2d(in_channels, offset_groups * per_group,
                                           self.kernel_size, self.stride, self.padding,
                                           self.dilation, bias=True, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s initialisation for the weight and bias, zero for ``conv_offset``."""
        super().reset_parameters()
        if "conv_offset" in self._modules:  # not yet built while the base class initialises
            self.init_offset()

    def init_offset(self) -> None:
        """Zero the offset predictor: the layer starts on the regular grid."""
        self.conv_offset.reset_parameters()

    def offset_and_mask(self, input: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """The offsets (and, for v2, the mask after its sigmoid) this layer uses on ``input``."""
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
        if input.dim() != 4 or input.shape[1] != self.in_channels:
            raise ValueError(f"input must have shape (N, {self.in_channels}, H, W), got "
                             f"{tuple(input.shape)}")
        return self._split(self.conv_offset(input))

    def _split(self, out: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        return out, None

    def forward(self, input: Tensor) -> Tensor:  # type: ignore[override]
        offset, mask = self.offset_and_mask(input)
        return deform_conv2d(input, offset, self.weight, self.bias, self.stride, self.padding,
                             self.dilation, mask)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", offset_groups={self.offset_groups}" if self.offset_groups != 1 else "")


class ModulatedDeformConv2dPack(DeformConv2dPack):
    """Deformable convolution v2 that predicts its own offsets and mask (Zhu et al. 2018).

    ``conv_offset`` has ``3*offset_groups*kH*kW`` output channels: the first
    ``2*offset_groups*kH*kW`` are the offsets (interleaved, dy first), the last
    ``offset_groups*kH*kW`` are mask logits passed through a sigmoid, as in mmcv's
    ``ModulatedDeformConv2dPack``. With ``conv_offset`` at zero the mask is ``sigmoid(0) = 0.5``
    everywhere, so a new layer computes ``0.5 * conv2d(input, weight) + bias``: the mmcv
    convention, kept so that mmcv checkpoints and training recipes transfer unchanged.
    """

    _mask = True

    def _split(self, out: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        n_off = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        return out[:, :n_off], torch.sigmoid(out[:, n_off:])
