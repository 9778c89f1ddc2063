"""``DCNv4``: FlashInternImage's DCNv4 layer, with its constructor, forward, initialisation and
state-dict keys, so its checkpoints load with ``strict=True``. The operator is
:func:`deformconv.dcnv4` (any GPU Triton runs on, CPU; any group channels)."""

from __future__ import annotations

import math
from typing import Optional, Tuple

from torch import Tensor, nn

from ..ops.dcnv4.functional import dcnv4, offset_mask_width
from .dcnv3 import _check_flag, _is_int, add_center_feature_scale, check_layer_args


class DCNv4(nn.Module):
    """FlashInternImage's DCNv4 layer: (N, L, C) with ``shape=(H, W)`` -> (N, L, C).

    Value projection; one linear layer (after an optional depthwise conv) predicts the fused
    offset/mask tensor, padded to a multiple of 8 columns, which goes to the op as is (no
    softmax); optional centre-feature scaling computed from the op's output; output projection.

    Args:
        channels, kernel_size, stride, pad, dilation, group, offset_scale: as ``DCNv3``
            (stride 1, ``2 * pad == dilation * (kernel_size - 1)``: the output keeps the
            input's size).
        dw_kernel_size (int, optional): a depthwise conv (odd kernel) before the offset/mask
            predictor.
        center_feature_scale (bool): centre-feature scaling.
        remove_center (bool): drop the centre tap.
        output_bias (bool): bias of ``output_proj``.
        without_pointwise (bool): no ``value_proj``/``output_proj``.

    State dict: ``offset_mask`` (``ceil(3*G*P/8)*8`` rows), ``offset_mask_dw``, ``value_proj``,
    ``output_proj``, ``center_feature_scale_proj_weight``/``_bias``: upstream's keys and shapes.
    Upstream's limit of 16-multiple group channels does not apply.
    """

    def __init__(self, channels: int = 64, kernel_size: int = 3, stride: int = 1, pad: int = 1,
                 dilation: int = 1, group: int = 4, offset_scale: float = 1.0,
                 dw_kernel_size: Optional[int] = None, center_feature_scale: bool = False,
                 remove_center: bool = False, output_bias: bool = True,
                 without_pointwise: bool = False):
        super().__init__()
        self.group_channels = check_layer_args(channels, kernel_size, dw_kernel_size, stride,
                                               pad, dilation, group, offset_scale,
                                               center_feature_scale, remove_center)
        _check_flag("output_bias", output_bias)
        _check_flag("without_pointwise", without_pointwise)
        self.channels, self.kernel_size, self.stride = channels, kernel_size, stride
        self.pad, self.dilation, self.group = pad, dilation, group
        self.offset_scale, self.dw_kernel_size = offset_scale, dw_kernel_size
        self.center_feature_scale = center_feature_scale
        self.remove_center = int(remove_center)
        self.without_pointwise = without_pointwise
        self.K = group * (kernel_size * kernel_size - self.remove_center)
        if dw_kernel_size is not None:
            self.offset_mask_dw = nn.Conv2d(channels, channels, dw_kernel_size, stride=1,
                                            padding=(dw_kernel_size - 1) // 2, groups=channels)
        self.offset_mask = nn.Linear(channels, offset_mask_width(self.K, 1))
        if not without_pointwise:
            self.value_proj = nn.Linear(channels, channels)
            self.output_proj = nn.Linear(channels, channels, bias=output_bias)
        self.reset_parameters()
        if center_feature_scale:
            add_center_feature_scale(self, channels, group)

    def reset_parameters(self) -> None:
        """Zero offset/mask predictor (all masks 0: the op's output is 0 at init),
        xavier-uniform projections with zero biases."""
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        if not self.without_pointwise:
            for m in (self.value_proj, self.output_proj):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, input: Tensor, shape: Optional[Tuple[int, int]] = None) -> Tensor:
        """(N, L, C) -> (N, L, C); ``shape`` is (H, W), default a square of side sqrt(L)."""
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
        if input.dim() != 3 or input.shape[-1] != self.channels:
            raise ValueError(f"input must be (N, L, C) with L = H*W and C = channels = "
                             f"{self.channels}, got shape {tuple(input.shape)}")
        N, L, C = input.shape
        if shape is None:
            H = W = math.isqrt(L)
            if H * W != L:
                raise ValueError(f"input's L = {L} is not a square: pass shape=(H, W) with "
                                 f"H*W = {L}")
        else:
            if (not isinstance(shape, (tuple, list)) or len(shape) != 2
                    or not all(_is_int(v) for v in shape)):
                raise TypeError(f"shape must be a pair of ints (H, W), got {shape!r}")
            H, W = shape
            if H < 1 or W < 1 or H * W != L:
                raise ValueError(f"shape (H, W) = ({H}, {W}) must have H*W = L = {L}, H >= 1 "
                                 f"and W >= 1")
        x = input if self.without_pointwise else self.value_proj(input)
        x = x.reshape(N, H, W, -1)
        om_in = input
        if self.dw_kernel_size is not None:
            om_in = self.offset_mask_dw(input.view(N, H, W, C).permute(0, 3, 1, 2))
            om_in = om_in.permute(0, 2, 3, 1).reshape(N, L, C)
        offset_mask = self.offset_mask(om_in).reshape(N, H, W, -1)
        x_proj = x
        x = dcnv4(x, offset_mask, self.kernel_size, self.kernel_size, self.stride, self.stride,
                  self.pad, self.pad, self.dilation, self.dilation, self.group,
                  self.group_channels, self.offset_scale, bool(self.remove_center))
        if self.center_feature_scale:
            x = self.center_feature_scale_module(x, x_proj, x,
                                                 self.center_feature_scale_proj_weight,
                                                 self.center_feature_scale_proj_bias)
        x = x.reshape(N, L, -1)
        return x if self.without_pointwise else self.output_proj(x)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, group={self.group}, "
                f"offset_scale={self.offset_scale}, remove_center={bool(self.remove_center)}")
