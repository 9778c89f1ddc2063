"""``DCNv3``: InternImage's DCNv3 layer, with its constructor, forward, initialisation and
state-dict keys, so InternImage checkpoints load with ``strict=True``.

The operator is :func:`deformconv.dcnv3` (any device, CPU included; numerics of InternImage's
CUDA kernel, ``docs/dcnv3.md``).
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.dcnv3.functional import dcnv3

_ACTS = {"ReLU": lambda: nn.ReLU(inplace=True), "SiLU": lambda: nn.SiLU(inplace=True),
         "GELU": nn.GELU}


class _ToChannelsLast(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1)


class _ToChannelsFirst(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 3, 1, 2)


def norm_layer_nchw_to_nhwc(channels: int, norm_layer: str) -> nn.Sequential:
    """InternImage's norm after the depthwise conv, channels first in, channels last out:
    ``'LN'`` is (to channels last, LayerNorm eps 1e-6), keys ``1.weight``; ``'BN'`` is
    (BatchNorm2d, to channels last), keys ``0.*``."""
    if norm_layer == "LN":
        return nn.Sequential(_ToChannelsLast(), nn.LayerNorm(channels, eps=1e-6))
    if norm_layer == "BN":
        return nn.Sequential(nn.BatchNorm2d(channels), _ToChannelsLast())
    raise ValueError(f"norm_layer must be 'LN' or 'BN', got {norm_layer!r}")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_int(name: str, v, minimum: int) -> int:
    if not _is_int(v):
        raise TypeError(f"{name} must be an int, got {v!r}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


def _check_flag(name: str, v) -> None:
    if not (isinstance(v, bool) or (_is_int(v) and int(v) in (0, 1))):
        raise TypeError(f"{name} must be a bool, got {v!r}")


def check_layer_args(channels, kernel_size, dw_kernel_size, stride, pad, dilation, group,
                     offset_scale, center_feature_scale, remove_center) -> int:
    """Check the constructor arguments both layers share; returns the channels per group.

    The offsets are predicted at the input's resolution, so the op's output must keep the
    input's size: stride 1 and ``2 * pad == dilation * (kernel_size - 1)``; the depthwise conv
    keeps the size only with an odd kernel."""
    _check_int("channels", channels, 1)
    _check_int("group", group, 1)
    if channels % group:
        raise ValueError(f"channels ({channels}) must be divisible by group ({group})")
    _check_int("kernel_size", kernel_size, 1)
    _check_flag("center_feature_scale", center_feature_scale)
    _check_flag("remove_center", remove_center)
    if remove_center and kernel_size % 2 == 0:
        raise ValueError(f"remove_center needs an odd kernel_size, got {kernel_size}")
    if remove_center and kernel_size == 1:
        raise ValueError("remove_center needs kernel_size >= 3 (a 1x1 kernel has only the "
                         "centre tap), got kernel_size=1")
    if dw_kernel_size is not None:
        _check_int("dw_kernel_size", dw_kernel_size, 1)
        if dw_kernel_size % 2 == 0:
            raise ValueError(f"dw_kernel_size must be odd (the depthwise conv keeps the input's "
                             f"size), got {dw_kernel_size}")
    _check_int("stride", stride, 1)
    if stride != 1:
        raise ValueError(f"stride must be 1 (offsets are predicted at the input's resolution, "
                         f"so the output keeps the input's size), got {stride}")
    _check_int("dilation", dilation, 1)
    _check_int("pad", pad, 0)
    if 2 * pad != dilation * (kernel_size - 1):
        raise ValueError(f"pad must be dilation*(kernel_size-1)/2 = {dilation}*"
                         f"({kernel_size}-1)/2 so the output keeps the input's size, got "
                         f"pad={pad}")
    if not isinstance(offset_scale, numbers.Real) or isinstance(offset_scale, bool):
        raise TypeError(f"offset_scale must be a float, got {offset_scale!r}")
    if not -math.inf < offset_scale < math.inf:
        raise ValueError(f"offset_scale must be finite, got {offset_scale!r}")
    return channels // group


class CenterFeatureScale(nn.Module):
    """The optional centre-feature scaling of both layers: ``s = sigmoid(linear(q))`` per
    group, broadcast over the group's channels; ``x * (1 - s) + x_proj * s``. Its parameters
    live on the layer (upstream's key names), so this holds none."""

    def forward(self, x: Tensor, x_proj: Tensor, query: Tensor, weight: Tensor,
                bias: Tensor) -> Tensor:
        s = torch.sigmoid(F.linear(query, weight, bias))
        s = s.repeat_interleave(x.shape[-1] // s.shape[-1], dim=-1)
        return x * (1 - s) + x_proj * s


def add_center_feature_scale(layer: nn.Module, channels: int, group: int) -> None:
    """Give ``layer`` the zero-initialised ``center_feature_scale_proj_weight`` (G, C) and
    ``center_feature_scale_proj_bias`` (G,) and the scaling module."""
    layer.center_feature_scale_proj_weight = nn.Parameter(torch.zeros(group, channels))
    layer.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))
    layer.center_feature_scale_module = CenterFeatureScale()


class DCNv3(nn.Module):
    """InternImage's DCNv3 layer: (N, H, W, C) -> (N, H, W, C).

    Input projection; a depthwise conv + norm + activation whose features predict the offsets
    and the masks (softmax over each group's taps); the ``dcnv3`` op; optional centre-feature
    scaling; output projection. Offsets are predicted at the input's resolution, so the op's
    output must have the input's size (stride 1, ``pad = dilation*(kernel_size-1)//2``, as
    InternImage uses).

    Args:
        channels (int): C.
        kernel_size (int): the op's square kernel (odd with ``remove_center``).
        dw_kernel_size (int, optional): the depthwise conv's kernel, odd (default
            ``kernel_size``).
        stride (int): must be 1 (the offsets are predicted at the input's resolution).
        pad, dilation (int): the op's; ``2 * pad == dilation * (kernel_size - 1)``.
        group (int): groups; ``channels`` must be divisible by it (any group channels).
        offset_scale (float): the op's.
        act_layer (str): ``'GELU'``, ``'ReLU'`` or ``'SiLU'``.
        norm_layer (str): ``'LN'`` or ``'BN'``.
        center_feature_scale (bool): centre-feature scaling (parameters ``(G, C)``, ``(G,)``).
        remove_center (bool): drop the centre tap.

    State dict: ``dw_conv.0`` (depthwise conv), ``dw_conv.1.1`` (LayerNorm; ``dw_conv.1.0``
    BatchNorm2d with 'BN'), ``offset``, ``mask``, ``input_proj``, ``output_proj``,
    ``center_feature_scale_proj_weight``/``_bias``: InternImage's keys and shapes.
    """

    def __init__(self, channels: int = 64, kernel_size: int = 3, dw_kernel_size=None,
                 stride: int = 1, pad: int = 1, dilation: int = 1, group: int = 4,
                 offset_scale: float = 1.0, act_layer: str = "GELU", norm_layer: str = "LN",
                 center_feature_scale: bool = False, remove_center: bool = False):
        super().__init__()
        self.group_channels = check_layer_args(channels, kernel_size, dw_kernel_size, stride,
                                               pad, dilation, group, offset_scale,
                                               center_feature_scale, remove_center)
        if not isinstance(act_layer, str) or act_layer not in _ACTS:
            raise ValueError(f"act_layer must be one of {sorted(_ACTS)}, got {act_layer!r}")
        if not isinstance(norm_layer, str) or norm_layer not in ("LN", "BN"):
            raise ValueError(f"norm_layer must be 'LN' or 'BN', got {norm_layer!r}")
        if self.group_channels & (self.group_channels - 1):
            warnings.warn(f"channels per group ({self.group_channels}) is not a power of 2: "
                          f"fine here, though InternImage's CUDA kernel is slower so",
                          stacklevel=2)
        self.channels, self.kernel_size, self.stride = channels, kernel_size, stride
        self.pad, self.dilation, self.group = pad, dilation, group
        self.offset_scale = offset_scale
        self.dw_kernel_size = kernel_size if dw_kernel_size is None else dw_kernel_size
        self.center_feature_scale = center_feature_scale
        self.remove_center = int(remove_center)
        P = kernel_size * kernel_size - self.remove_center
        self.dw_conv = nn.Sequential(
            nn.Conv2d(channels, channels, self.dw_kernel_size, stride=1,
                      padding=(self.dw_kernel_size - 1) // 2, groups=channels),
            norm_layer_nchw_to_nhwc(channels, norm_layer), _ACTS[act_layer]())
        self.offset = nn.Linear(channels, group * P * 2)
        self.mask = nn.Linear(channels, group * P)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        self.reset_parameters()
        if center_feature_scale:
            add_center_feature_scale(self, channels, group)

    def reset_parameters(self) -> None:
        """Zero offset and mask predictors (the plain grid, weights 1/P), xavier-uniform
        projections with zero bias; the depthwise conv keeps PyTorch's default."""
        for m in (self.offset, self.mask):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        for m in (self.input_proj, self.output_proj):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, input: Tensor) -> Tensor:
        """(N, H, W, C) -> (N, H, W, C)."""
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
        if input.dim() != 4 or input.shape[-1] != self.channels:
            raise ValueError(f"input must be channels last (N, H, W, C) with C = channels = "
                             f"{self.channels}, got shape {tuple(input.shape)}")
        N, H, W, _ = input.shape
        x = self.input_proj(input)
        x_proj = x
        x1 = self.dw_conv(input.permute(0, 3, 1, 2))
        offset = self.offset(x1)
        mask = F.softmax(self.mask(x1).view(N, H, W, self.group, -1), -1)
        mask = mask.reshape(N, H, W, -1).to(x.dtype)
        x = dcnv3(x, offset, mask, self.kernel_size, self.kernel_size, self.stride,
                  self.stride, self.pad, self.pad, self.dilation, self.dilation, self.group,
                  self.group_channels, self.offset_scale, bool(self.remove_center))
        if self.center_feature_scale:
            x = self.center_feature_scale_module(x, x_proj, x1,
                                                 self.center_feature_scale_proj_weight,
                                                 self.center_feature_scale_proj_bias)
        return self.output_proj(x)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, group={self.group}, "
                f"offset_scale={self.offset_scale}, remove_center={bool(self.remove_center)}")
