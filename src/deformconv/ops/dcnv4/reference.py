"""The float64 oracle of ``dcnv4``: the fused ``offset_mask`` split by its documented layout
(``docs/dcnv3.md``), then the ``dcnv3`` oracle."""

from __future__ import annotations

from torch import Tensor

from ..dcnv3.reference import dcnv3_ref


def split_offset_mask(offset_mask: Tensor, group: int, points: int):
    """(offset, mask) of a fused tensor: per group ``points`` (dx, dy) pairs, then ``points``
    mask values; trailing padding columns dropped."""
    per = offset_mask[..., :group * 3 * points].unflatten(-1, (group, 3 * points))
    offset = per[..., :2 * points].flatten(-2)
    mask = per[..., 2 * points:].flatten(-2)
    return offset, mask


def dcnv4_ref(input: Tensor, offset_mask: Tensor, kernel_h: int, kernel_w: int, stride_h: int,
              stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
              group: int, group_channels: int, offset_scale: float,
              remove_center: bool = False) -> Tensor:
    """DCNv4 by the DCNv3 loops on the split tensors."""
    P = kernel_h * kernel_w - int(remove_center)
    offset, mask = split_offset_mask(offset_mask, group, P)
    return dcnv3_ref(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                     dilation_h, dilation_w, group, group_channels, offset_scale, remove_center)
