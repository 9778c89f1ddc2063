"""Where 1-D and 3-D deformable layers sample, as tensors.

Coordinates are input indices in the spatial dimensions' order (1-D ``(x,)``, 3-D
``(z, y, x)``, depth first): tap ``t`` of output position ``o`` in offset group ``g`` reads
``o_d*stride_d - pad_d + t_d*dil_d + offset[n, (g*K + k)*R + d, o]`` (``docs/conventions.md``).
"""

from __future__ import annotations

import itertools
from typing import Sequence, Union

import torch
from torch import Tensor, nn

from .nn.deform_conv import _PackNd
from .ops import geometry
from .ops.checks import int_tuple

_Size = Union[int, Sequence[int]]


def sampling_locations_nd(offset: Tensor, kernel_size: _Size, stride: _Size = 1,
                          padding: _Size = 0, dilation: _Size = 1) -> Tensor:
    """Input positions read by every output position and kernel tap.

    Args:
        offset (Tensor[N, R*G*K, *o]): offsets of ``deform_conv1d`` (R = 1) or
            ``deform_conv3d`` (R = 3), ``K`` = the number of taps.
        kernel_size, stride, padding, dilation: an int or R ints, as the op takes them.

    Returns:
        Tensor[N, G, K, *o, R]: the positions, last axis in the spatial dimensions' order.

    Example:
        >>> loc = sampling_locations_nd(torch.zeros(1, 3, 5), kernel_size=3, padding=1)
        >>> loc[0, 0, :, 2, 0].tolist()
        [1.0, 2.0, 3.0]
    """
    if not isinstance(offset, Tensor) or offset.dim() not in (3, 5):
        raise ValueError(f"offset must be a 3-D (1-D op) or 5-D (3-D op) Tensor, got "
                         f"{tuple(offset.shape) if isinstance(offset, Tensor) else offset!r}")
    R = offset.dim() - 2
    kernel = int_tuple("kernel_size", kernel_size, R, 1)
    stride, padding, dilation = (int_tuple(n, v, R, m) for n, v, m in
                                 (("stride", stride, 1), ("padding", padding, 0),
                                  ("dilation", dilation, 1)))
    K = geometry.taps(kernel)
    N, ch, *o = offset.shape
    if ch == 0 or ch % (R * K):
        raise ValueError(f"offset channels must be a positive multiple of {R * K}, got {ch}")
    off = offset.reshape(N, ch // (R * K), K, R, *o).movedim(3, -1)  # (N, G, K, *o, R)
    taps = torch.tensor(list(itertools.product(*(range(k) for k in kernel))),
                        dtype=offset.dtype, device=offset.device)  # (K, R), row-major
    grid = torch.stack(torch.meshgrid(*(torch.arange(s, dtype=offset.dtype,
                                                     device=offset.device) for s in o),
                                      indexing="ij"), dim=-1)  # (*o, R)
    st, pd, dl = (torch.tensor(v, dtype=offset.dtype, device=offset.device)
                  for v in (stride, padding, dilation))
    regular = (grid * st - pd).unsqueeze(0) + (taps * dl).view(K, *[1] * R, R)  # (K, *o, R)
    return regular + off


@torch.no_grad()
def layer_sampling_locations(layer: nn.Module, input: Tensor) -> Tensor:
    """Positions a 1-D/3-D Pack layer (or an ``nn.Conv1d``/``nn.Conv3d``, which samples the
    regular grid with one offset group) reads on ``input``: Tensor[N, G, K, *o, R]."""
    if isinstance(layer, _PackNd):
        offset, _ = layer.offset_and_mask(input)
    elif type(layer) in (nn.Conv1d, nn.Conv3d) and not isinstance(layer.padding, str):
        R = input.dim() - 2
        out = geometry.out_size(input.shape[2:], layer.kernel_size, layer.stride,
                                layer.padding, layer.dilation)
        offset = input.new_zeros(input.shape[0], R * geometry.taps(layer.kernel_size), *out)
    else:
        raise TypeError(f"layer must be a 1-D/3-D Pack layer or an nn.Conv1d/nn.Conv3d with "
                        f"integer padding, got {type(layer).__name__}")
    return sampling_locations_nd(offset, layer.kernel_size, layer.stride, layer.padding,
                                 layer.dilation)
