"""1-D and 3-D deformable convolution layers, on a dimension-generic base.

- ``DeformConv1d``/``DeformConv3d``: offsets (and mask) are given to ``forward``.
- ``DeformConv1dPack``/``DeformConv3dPack`` (v1) and ``ModulatedDeformConv1dPack``/
  ``ModulatedDeformConv3dPack`` (v2): the layer predicts its own offsets (and mask logits)
  with ``conv_offset``, an ``nn.Conv1d``/``nn.Conv3d`` of the same kernel size, stride,
  padding and dilation, initialised to zero. Parameter names and channel routing are those of
  the 2-D Pack layers (``weight``, ``bias``, ``conv_offset.*``; v2: offsets, then mask logits),
  and a v2 mask starts at ``sigmoid(0) = 0.5``.

:class:`_DeformConvNd` and :class:`_PackNd` hold everything; a concrete class only names its
number of spatial dimensions (``_ndim``), so the 2-D classes could adopt the same base.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..ops.checks import int_tuple
from ..ops.deform_conv_nd import deform_conv1d, deform_conv3d
from ._scripting import NotScriptable
from .deform_conv import _Convertible, _copy_conv, _positive_int

_Size = Union[int, Tuple[int, ...]]
_FUNCTIONS = {1: deform_conv1d, 3: deform_conv3d}


def _symmetric_padding(padding, kernel_size, stride, dilation, R: int) -> Tuple[int, ...]:
    """An int or R-tuple, or 'valid' / 'same' as in nn.Conv{R}d ('same': stride 1, even
    total padding so that it splits symmetrically)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * R
        if padding != "same":
            raise ValueError(f"padding must be an int, a tuple of {R} ints, 'valid' or 'same', "
                             f"got {padding!r}")
        if set(stride) != {1}:
            raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
        halves = [divmod(d * (k - 1), 2) for d, k in zip(dilation, kernel_size)]
        if any(odd for _, odd in halves):
            raise ValueError(f"padding='same' needs an even dilation*(kernel_size-1) to pad "
                             f"symmetrically, got kernel_size={kernel_size}, "
                             f"dilation={dilation}")
        return tuple(half for half, _ in halves)
    return int_tuple("padding", padding, R, 0)


def _resolve_offset_groups(offset_groups, deform_groups, in_channels: int) -> int:
    """``offset_groups``, or mmcv's alias ``deform_groups`` when that one is given."""
    chosen = offset_groups if deform_groups is None else deform_groups
    if deform_groups is not None and offset_groups not in (1, deform_groups):
        raise ValueError(f"offset_groups ({offset_groups}) and its mmcv alias deform_groups "
                         f"({deform_groups}) disagree; give only one")
    valid = isinstance(chosen, int) and not isinstance(chosen, bool) and chosen >= 1
    if not valid or in_channels % chosen:
        raise ValueError(f"offset_groups must be >= 1 and divide in_channels ({in_channels}), "
                         f"got {chosen!r}")
    return chosen


class _ZeroInit:
    """Mixin for the offset predictor: zero initialisation in ``reset_parameters``, so every
    way of (re)initialising a layer starts it on the regular grid."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class _ZeroInitConv1d(_ZeroInit, nn.Conv1d):
    pass


class _ZeroInitConv3d(_ZeroInit, nn.Conv3d):
    pass


_OFFSET_CONVS = {1: _ZeroInitConv1d, 3: _ZeroInitConv3d}


class _DeformConvNd(NotScriptable, nn.Module):
    """Deformable convolution of ``_ndim`` spatial dimensions with external offsets;
    parameters, initialisation and constructor as ``nn.Conv{_ndim}d`` (zero padding only)."""

    _ndim = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _Size,
                 stride: _Size = 1, padding: Union[_Size, str] = 0, dilation: _Size = 1,
                 groups: int = 1, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        R = self._ndim
        in_channels = _positive_int("in_channels", in_channels)
        out_channels = _positive_int("out_channels", out_channels)
        groups = _positive_int("groups", groups)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value % groups:
                raise ValueError(f"{name} ({value}) must be divisible by groups ({groups})")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = int_tuple("kernel_size", kernel_size, R, 1)
        self.stride = int_tuple("stride", stride, R, 1)
        self.dilation = int_tuple("dilation", dilation, R, 1)
        self.padding = _symmetric_padding(padding, self.kernel_size, self.stride,
                                          self.dilation, R)
        empty = functools.partial(torch.empty, device=device, dtype=dtype)
        self.weight = nn.Parameter(empty(out_channels, in_channels // groups,
                                         *self.kernel_size))
        self.register_parameter("bias", nn.Parameter(empty(out_channels)) if bias else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialisation of ``nn.Conv{R}d``: its own code, so the same random draws."""
        nn.modules.conv._ConvNd.reset_parameters(self)

    def _conv(self, input: Tensor, offset: Tensor, mask: Optional[Tensor]) -> Tensor:
        return _FUNCTIONS[self._ndim](input, offset, self.weight, self.bias, self.stride,
                                      self.padding, self.dilation, mask)

    def forward(self, input: Tensor, offset: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return self._conv(input, offset, mask)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}")
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + (", bias=False" if self.bias is None else "")


class DeformConv1d(_DeformConvNd):
    """1-D deformable convolution with given offsets; arguments as ``nn.Conv1d``.

    Shape:
        ``forward(input[N, C, W], offset[N, G*kW, oW], mask[N, G*kW, oW] = None)
        -> [N, out_channels, oW]``; the offset groups ``G`` follow from ``offset``.
    """

    _ndim = 1


class DeformConv3d(_DeformConvNd):
    """3-D deformable convolution with given offsets; arguments as ``nn.Conv3d``.

    Shape:
        ``forward(input[N, C, D, H, W], offset[N, 3*G*K, oD, oH, oW],
        mask[N, G*K, oD, oH, oW] = None) -> [N, out_channels, oD, oH, oW]`` with
        ``K = kD*kH*kW``; offsets interleaved per tap, depth first.
    """

    _ndim = 3


class _PackNd(_Convertible):
    """Mixin (first base) for the layers that predict their own offsets (and mask).

    ``conv_offset`` maps the input to ``R*G*K`` offset channels (v1), or ``(R+1)*G*K`` (v2:
    offsets, then mask logits through a sigmoid), with the layer's kernel size, stride,
    padding and dilation; it starts at zero, so a new layer samples the regular grid.
    ``deform_groups`` is mmcv's name for ``offset_groups`` (keyword only).

    Loading and ``mask_gain`` are the 2-D Pack layers' (``_Convertible``): a layer made by
    :meth:`from_conv` keeps the plain weight, v2 multiplies its mask by a persistent
    ``mask_gain = 2``, and it accepts the plain convolution's state dict.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _Size,
                 stride: _Size = 1, padding: Union[_Size, str] = 0, dilation: _Size = 1,
                 groups: int = 1, bias: bool = True, offset_groups: int = 1, device=None,
                 dtype=None, *, deform_groups: Optional[int] = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, device=device, dtype=dtype)
        offset_groups = _resolve_offset_groups(offset_groups, deform_groups, in_channels)
        self.offset_groups = offset_groups
        R = self._ndim
        per_group = (R + 1 if self._mask else R) * math.prod(self.kernel_size)
        self.conv_offset = _OFFSET_CONVS[R](in_channels, offset_groups * per_group,
                                            self.kernel_size, self.stride, self.padding,
                                            self.dilation, bias=True, device=device,
                                            dtype=dtype)
        self._watch_loading()

    def reset_parameters(self) -> None:
        """``nn.Conv{R}d``'s initialisation for the weight and bias, zero for
        ``conv_offset``."""
        super().reset_parameters()
        if "conv_offset" in self._modules:  # not yet built while the base initialises
            self.init_offset()

    def offset_and_mask(self, input: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """The offsets (and, for v2, the mask after its sigmoid) this layer uses on
        ``input``."""
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
        if input.dim() != self._ndim + 2 or input.shape[1] != self.in_channels:
            raise ValueError(f"input must have shape (N, {self.in_channels}, "
                             f"{', '.join('DHW'[3 - self._ndim:])}), got {tuple(input.shape)}")
        out = self.conv_offset(input)
        if not self._mask:
            return out, None
        n_off = self._ndim * self.offset_groups * math.prod(self.kernel_size)
        return out[:, :n_off], self._gained(torch.sigmoid(out[:, n_off:]))

    def forward(self, input: Tensor) -> Tensor:  # type: ignore[override]
        offset, mask = self.offset_and_mask(input)
        return self._conv(input, offset, mask)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", offset_groups={self.offset_groups}" if self.offset_groups != 1 else "")

    @classmethod
    def from_conv(cls, conv: nn.Module, offset_groups: int = 1,
                  preserve_output: bool = True) -> "_PackNd":
        """A layer of this class that starts as the same function as ``conv``
        (an ``nn.Conv{R}d`` with ``padding_mode='zeros'``).

        Copies channels, kernel, stride, padding, dilation, groups, bias (unchanged), device,
        dtype, training mode and ``requires_grad``. v2 with ``preserve_output`` gets the
        persistent buffer ``mask_gain = 2``: its mask ``2 * sigmoid(0)`` is exactly 1 at the
        start, and the plain state dict loaded later keeps its meaning (see ``_PackNd``);
        without it the layer starts at mmcv's mask 0.5.
        """
        want = {1: nn.Conv1d, 3: nn.Conv3d}[cls._ndim]
        if not isinstance(conv, want):
            raise TypeError(f"conv must be an {want.__name__}, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"conv must have zero padding, got padding_mode="
                             f"{conv.padding_mode!r}")
        w = conv.weight
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                  conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                  offset_groups, device=w.device, dtype=w.dtype)
        return _copy_conv(new, conv, preserve_output)


class DeformConv1dPack(_PackNd, DeformConv1d):
    """1-D deformable convolution v1 predicting its own offsets; arguments as ``nn.Conv1d``
    plus ``offset_groups``. ``forward(input[N, C, W]) -> [N, out_channels, oW]``."""


class ModulatedDeformConv1dPack(DeformConv1dPack):
    """1-D deformable convolution v2 predicting its own offsets and mask (``conv_offset``:
    ``G*kW`` offsets, then ``G*kW`` mask logits). A new layer computes
    ``0.5 * conv1d(input, weight) + bias``; one made by ``from_conv`` the convolution itself."""

    _mask = True


class DeformConv3dPack(_PackNd, DeformConv3d):
    """3-D deformable convolution v1 predicting its own offsets; arguments as ``nn.Conv3d``
    plus ``offset_groups``. ``forward(input[N, C, D, H, W]) -> [N, out_channels, oD, oH,
    oW]``."""


class ModulatedDeformConv3dPack(DeformConv3dPack):
    """3-D deformable convolution v2 predicting its own offsets and mask (``conv_offset``:
    ``3*G*K`` offsets depth first, then ``G*K`` mask logits). A new layer computes
    ``0.5 * conv3d(input, weight) + bias``; one made by ``from_conv`` the convolution itself."""

    _mask = True


def deformable_from_conv(conv: nn.Module, version: int = 2, offset_groups: int = 1,
                         preserve_output: bool = True) -> _PackNd:
    """The Pack layer (v1 or v2) of ``conv``'s dimensionality that starts as ``conv``: the
    N-D mapping of ``convert_to_deformable`` for ``nn.Conv1d`` and ``nn.Conv3d``."""
    classes = {nn.Conv1d: (DeformConv1dPack, ModulatedDeformConv1dPack),
               nn.Conv3d: (DeformConv3dPack, ModulatedDeformConv3dPack)}
    if type(conv) not in classes:
        raise TypeError(f"conv must be an nn.Conv1d or nn.Conv3d, got {type(conv).__name__}")
    return classes[type(conv)][version == 2].from_conv(conv, offset_groups, preserve_output)
