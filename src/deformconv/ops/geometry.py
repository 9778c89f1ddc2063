"""Geometry of deformable convolution, in one place, for any number of spatial dimensions.

Every caller (argument checks, fake implementations, both kernel families, ONNX, viz, bench)
takes the output size, the group counts and the per-group channel counts from here. The float64
oracle (``deformconv.reference``) stays independent on purpose.

Shapes, with ``R`` spatial dimensions (1, 2 or 3):

- input ``(N, C, *S)``, weight ``(O, C/groups, *k)``, offset ``(N, R*G*K, *o)``,
  mask ``(N, G*K, *o)`` with ``K = prod(k)`` taps and ``G`` offset groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Tuple


def out_size(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
             padding: Sequence[int], dilation: Sequence[int]) -> Tuple[int, ...]:
    """Output size along each spatial dimension, as ``nn.Conv{1,2,3}d`` computes it.

    Example:
        >>> out_size((6, 7), (3, 3), (1, 2), (1, 1), (1, 1))
        (6, 4)
    """
    return tuple((s + 2 * p - d * (k - 1) - 1) // st + 1
                 for s, k, st, p, d in zip(size, kernel, stride, padding, dilation))


@dataclass(frozen=True)
class Groups:
    """Group counts of one call, inferred from the tensor shapes.

    Attributes:
        groups: conv groups, ``C // weight.shape[1]``.
        offset_groups: ``G = offset.shape[1] // (R * K)``.
        taps: ``K``, the number of kernel taps.
        in_per_group: input channels per conv group, ``C // groups``.
        out_per_group: output channels per conv group, ``O // groups``.
        in_per_offset_group: input channels per offset group, ``C // G``.
    """

    groups: int
    offset_groups: int
    taps: int
    in_per_group: int
    out_per_group: int
    in_per_offset_group: int


def taps(kernel: Sequence[int]) -> int:
    """The number of kernel taps ``K``."""
    return math.prod(kernel)


def offset_groups(offset_channels: int, kernel: Sequence[int]) -> int:
    """``G`` from the offset's channel count (``R`` displacements per tap and group)."""
    return offset_channels // (len(kernel) * taps(kernel))


def groups_of(in_channels: int, weight_shape: Sequence[int], offset_channels: int) -> Groups:
    """All group counts of a call from the input channels, the weight shape and the offset
    channels. Assumes shapes already validated (``deform_conv.check``)."""
    O, Cg, *kernel = weight_shape
    groups = in_channels // Cg
    G = offset_groups(offset_channels, kernel)
    return Groups(groups=groups, offset_groups=G, taps=taps(kernel), in_per_group=Cg,
                  out_per_group=O // groups, in_per_offset_group=in_channels // G)
