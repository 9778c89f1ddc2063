"""Where deformable layers sample, as tensors, for 1-, 2- and 3-D layers.

Coordinates are input indices in the spatial dimensions' order (1-D ``(x,)``, 2-D ``(y, x)``,
3-D ``(z, y, x)``), as in the op's conventions (``docs/conventions.md``): tap ``t`` of output
position ``o`` in offset group ``g`` reads
``o_d*stride_d - pad_d + t_d*dil_d + offset[n, (g*K + k)*R + d, o]``, taps in row-major order.
The composition of stacked layers (``effective_sampling``) is 2-D.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..nn.deform_conv import _PackNd
from ..ops import geometry
from ..ops.checks import int_tuple

_Size = Union[int, Sequence[int]]


class LayerSampling(NamedTuple):
    """The offsets of one layer on one input, with the geometry needed to place them.

    ``offset`` is ``Tensor[N, R*G*K, *o]`` (``R`` displacements per tap, depth/height
    first; for 2-D ``Tensor[N, 2*G*kH*kW, oH, oW]``, dy first); ``mask`` is the v2 mask
    ``Tensor[N, G*K, *o]`` after its sigmoid, or None. ``kernel_size``, ``stride``,
    ``padding`` and ``dilation`` are an int or ``R`` ints, as the op takes them.
    """

    offset: Tensor
    kernel_size: _Size
    stride: _Size = 1
    padding: _Size = 0
    dilation: _Size = 1
    mask: Optional[Tensor] = None


@torch.no_grad()
def layer_sampling(layer: nn.Module, input: Tensor) -> LayerSampling:
    """Offsets (and mask) that ``layer`` uses on ``input`` (Tensor[N, C, *S]).

    ``layer`` is a deformable ``Pack`` layer of any dimensionality (``DeformConv2dPack``,
    ``ModulatedDeformConv3dPack``, ...), or an ``nn.Conv1d/2d/3d`` with integer padding,
    which samples the regular grid (zero offsets, one offset group).
    """
    if isinstance(layer, _PackNd):
        offset, mask = layer.offset_and_mask(input)
    elif isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) \
            and not isinstance(layer.padding, str):
        R = len(layer.kernel_size)
        out = geometry.out_size(input.shape[2:], layer.kernel_size, layer.stride,
                                layer.padding, layer.dilation)
        offset = input.new_zeros(input.shape[0], R * geometry.taps(layer.kernel_size), *out)
        mask = None
    else:
        raise TypeError(f"layer must be a deformable Pack layer or an nn.Conv1d/2d/3d with "
                        f"integer padding, got {type(layer).__name__}")
    return LayerSampling(offset, tuple(layer.kernel_size), tuple(layer.stride),
                         tuple(layer.padding), tuple(layer.dilation), mask)


def _geometry(s: LayerSampling, R: int) -> Tuple[Tuple[int, ...], ...]:
    """``s``'s kernel size, stride, padding and dilation as ``R``-tuples (checked)."""
    return (int_tuple("kernel_size", s.kernel_size, R, 1), int_tuple("stride", s.stride, R, 1),
            int_tuple("padding", s.padding, R, 0), int_tuple("dilation", s.dilation, R, 1))


def _regular(points: Tensor, s: LayerSampling) -> Tensor:
    """Regular-grid positions of every tap of output positions ``points`` (Tensor[..., R],
    fractional allowed) -> Tensor[..., K, R], taps in row-major order."""
    kernel, *steps = _geometry(s, points.shape[-1])
    stride, padding, dilation = (torch.tensor(v, dtype=points.dtype, device=points.device)
                                 for v in steps)
    taps = torch.tensor(list(itertools.product(*map(range, kernel))), dtype=points.dtype,
                        device=points.device)  # (K, R)
    return (points * stride - padding).unsqueeze(-2) + taps * dilation


def _as_sampling(source, input, kernel_size, stride, padding, dilation) -> LayerSampling:
    if isinstance(source, nn.Module):
        if input is None:
            raise ValueError("input is required when source is a layer, got None")
        return layer_sampling(source, input)
    if isinstance(source, LayerSampling):
        return source
    if isinstance(source, Tensor):
        if kernel_size is None:
            raise ValueError("kernel_size is required when source is an offset tensor")
        return LayerSampling(source, kernel_size, stride, padding, dilation)
    raise TypeError(f"source must be a LayerSampling, an offset Tensor or a layer, got "
                    f"{type(source).__name__}")


def sampling_locations(source: Union[LayerSampling, Tensor, nn.Module],
                       input: Optional[Tensor] = None, kernel_size: Optional[_Size] = None,
                       stride: _Size = 1, padding: _Size = 0, dilation: _Size = 1) -> Tensor:
    """Input positions read by every output position and kernel tap of a deformable layer of
    any dimensionality ``R`` (1, 2 or 3).

    Args:
        source: a ``LayerSampling``; or an offset ``Tensor[N, R*G*K, *o]`` (of
            ``deform_conv1d/2d/3d``) together with ``kernel_size``, ``stride``, ``padding``
            and ``dilation`` (an int or ``R`` ints each); or a layer (see ``layer_sampling``)
            together with its ``input``.
        input (Tensor[N, C, *S], optional): the layer's input, when ``source`` is a layer.

    Returns:
        Tensor[N, G, K, *o, R]: the positions in the input's coordinates, last axis in the
        spatial dimensions' order; for 2-D ``Tensor[N, G, kH*kW, oH, oW, 2]``, ``(y, x)``.

    Example:
        >>> loc = sampling_locations(torch.zeros(1, 18, 4, 4), kernel_size=3, padding=1)
        >>> loc[0, 0, :, 1, 2].tolist()[:3]
        [[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]]
        >>> loc = sampling_locations(torch.zeros(1, 3, 5), kernel_size=3, padding=1)  # 1-D
        >>> loc[0, 0, :, 2, 0].tolist()
        [1.0, 2.0, 3.0]
    """
    s = _as_sampling(source, input, kernel_size, stride, padding, dilation)
    off = s.offset
    if not isinstance(off, Tensor) or off.dim() not in (3, 4, 5):
        raise ValueError(f"offset must be a Tensor (N, R*G*K, *out) with R = 1, 2 or 3 "
                         f"spatial dimensions, got "
                         f"{tuple(off.shape) if isinstance(off, Tensor) else off!r}")
    R = off.dim() - 2
    K = geometry.taps(_geometry(s, R)[0])
    N, ch, *o = off.shape
    if ch == 0 or ch % (R * K):
        raise ValueError(f"offset must be (N, {R}*G*{K}, *out) for a kernel of {K} taps, got "
                         f"{tuple(off.shape)}")
    off = off.reshape(N, ch // (R * K), K, R, *o).movedim(3, -1)  # (N, G, K, *o, R)
    grid = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=off.dtype, device=off.device)
                                        for n in o), indexing="ij"), dim=-1)  # (*o, R)
    return _regular(grid, s).movedim(-2, 0) + off  # (K, *o, R) + (N, G, K, *o, R)


def _interp(field: Tensor, y: Tensor, x: Tensor, batch: Tensor) -> Tensor:
    """Bilinear values of ``field`` (B, C, H, W) at (M,) positions, clamped to the border:
    point ``m`` reads ``field[batch[m]]`` -> (M, C). Exact at integer positions inside."""
    H, W = field.shape[-2:]
    y = y.clamp(0, H - 1)
    x = x.clamp(0, W - 1)
    y0, x0 = y.floor().long(), x.floor().long()
    y1, x1 = (y0 + 1).clamp(max=H - 1), (x0 + 1).clamp(max=W - 1)
    ly, lx = (y - y0)[:, None], (x - x0)[:, None]
    f = field.permute(0, 2, 3, 1)
    return ((1 - ly) * ((1 - lx) * f[batch, y0, x0] + lx * f[batch, y0, x1])
            + ly * ((1 - lx) * f[batch, y1, x0] + lx * f[batch, y1, x1]))


def effective_sampling(stack: Sequence[LayerSampling], pixel: Tuple[float, float],
                       batch: int = 0, group: int = 0) -> Tuple[Tensor, Tensor]:
    """Where a stack of deformable layers, composed, reads the first layer's input for one
    pixel, and how much each of those reads counts.

    Starting from ``pixel`` of the last layer's output, each layer maps every point to its
    ``kH*kW`` sampling positions in its input (= the previous layer's output); positions that
    fall between output pixels of the previous layer take that layer's offsets (and mask) by
    bilinear interpolation (clamped at the border). Layers in between (activations) must not
    change the geometry. One 3x3 layer gives 9 points, two give 81, three 729 (DCN paper,
    Fig. 5). A point's weight is the product of the v2 masks along its path (1 for layers
    without a mask): the factor by which that read is scaled before the layers' weights.

    Args:
        stack: the layers' ``LayerSampling``, first layer first.
        pixel ((y, x)): output position of the last layer.
        batch, group: which image and which offset group.

    Returns:
        ``(points, weights)``: Tensor[P, 2] ``(y, x)`` in the first layer's input pixel
        coordinates, the last layer's taps varying slowest, and Tensor[P] the path weights,
        ``P = prod(kH*kW)``.
    """
    pts, w = effective_sampling_batch(
        stack, torch.tensor([list(map(float, pixel))], dtype=torch.float64),
        torch.tensor([batch]), group)
    return pts[0], w[0]


def effective_sampling_batch(stack: Sequence[LayerSampling], pixels: Tensor, batch: Tensor,
                             group: int = 0) -> Tuple[Tensor, Tensor]:
    """``effective_sampling`` for many pixels at once: ``pixels`` Tensor[B, 2] (y, x) of the
    last layer's output, in images ``batch`` Tensor[B] (indices), both moved to the offsets'
    device. Returns Tensor[B, P, 2] and Tensor[B, P]."""
    if len(stack) == 0:
        raise ValueError("stack must hold at least one LayerSampling, got none")
    B = len(pixels)
    pts = pixels.to(stack[-1].offset).reshape(B, 2)
    weight = torch.ones(B, dtype=pts.dtype, device=pts.device)
    owner = batch.reshape(B).to(pts.device)
    for s in reversed(stack):
        if s.offset.dim() != 4:
            raise ValueError(f"effective_sampling composes 2-D layers: every offset must be "
                             f"(N, 2*G*K, oH, oW), got {tuple(s.offset.shape)}")
        K = geometry.taps(_geometry(s, 2)[0])
        N, _, oH, oW = s.offset.shape
        field = s.offset.reshape(N, -1, 2 * K, oH, oW)[:, group]
        off = _interp(field, pts[:, 0], pts[:, 1], owner).reshape(-1, K, 2)
        if s.mask is not None:
            m = s.mask.reshape(N, -1, K, oH, oW)[:, group]
            weight = (weight[:, None] * _interp(m, pts[:, 0], pts[:, 1], owner)).reshape(-1)
        else:
            weight = weight.repeat_interleave(K)
        pts = (_regular(pts, s) + off).reshape(-1, 2)  # (M, K, 2) -> (M*K, 2)
        owner = owner.repeat_interleave(K)
    return pts.reshape(B, -1, 2), weight.reshape(B, -1)


def effective_sampling_points(stack: Sequence[LayerSampling], pixel: Tuple[float, float],
                              batch: int = 0, group: int = 0) -> Tensor:
    """The points of ``effective_sampling`` without their weights: Tensor[P, 2] ``(y, x)``."""
    return effective_sampling(stack, pixel, batch, group)[0]


def weighted_spread(points: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """Root-mean-square distance of ``points`` (Tensor[..., P, 2]) from their weighted mean,
    each point counting by its weight (Tensor[..., P]; all 1 when None): the size of a
    receptive field. Returns Tensor[...]."""
    w = torch.ones(points.shape[:-1], dtype=points.dtype, device=points.device) \
        if weights is None else weights.to(points.dtype)
    w = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(points.dtype).tiny)
    mean = (w[..., None] * points).sum(-2, keepdim=True)
    return (w * (points - mean).square().sum(-1)).sum(-1).sqrt()


def off_image(points: Tensor, height: int, width: int) -> Tensor:
    """Bool Tensor[P]: which ``(y, x)`` points lie outside the image's pixel area."""
    y, x = points[:, 0], points[:, 1]
    return (y < -0.5) | (y > height - 0.5) | (x < -0.5) | (x > width - 0.5)


__all__ = ["LayerSampling", "layer_sampling", "sampling_locations", "effective_sampling",
           "effective_sampling_batch", "effective_sampling_points", "weighted_spread",
           "off_image"]
