"""Where deformable layers sample: locations as tensors, and plots of them (matplotlib, lazily).

Coordinates are pixel indices of the layer's input, ``(y, x)``, as in the op's conventions:
tap ``k = i*kW + j`` of output pixel ``(oy, ox)`` in offset group ``g`` reads
``(oy*stride_h - pad_h + i*dil_h + dy, ox*stride_w - pad_w + j*dil_w + dx)``.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .nn import DeformConv2dPack

_Size = Union[int, Tuple[int, int]]


class LayerSampling(NamedTuple):
    """The offsets of one layer on one input, with the geometry needed to place them.

    ``offset`` is ``Tensor[N, 2*G*kH*kW, oH, oW]`` (dy first); ``mask`` is the v2 mask
    ``Tensor[N, G*kH*kW, oH, oW]`` after its sigmoid, or None.
    """

    offset: Tensor
    kernel_size: Tuple[int, int]
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    dilation: Tuple[int, int] = (1, 1)
    mask: Optional[Tensor] = None


@torch.no_grad()
def layer_sampling(layer: nn.Module, input: Tensor) -> LayerSampling:
    """Offsets (and mask) that ``layer`` uses on ``input`` (Tensor[N, C, H, W]).

    ``layer`` is a ``DeformConv2dPack``/``ModulatedDeformConv2dPack``, or an ``nn.Conv2d``,
    which samples the regular grid (zero offsets, one offset group).
    """
    if isinstance(layer, DeformConv2dPack):
        offset, mask = layer.offset_and_mask(input)
    elif isinstance(layer, nn.Conv2d) and not isinstance(layer.padding, str):
        N, _, H, W = input.shape
        (kH, kW), (sh, sw) = layer.kernel_size, layer.stride
        (ph, pw), (dh, dw) = layer.padding, layer.dilation
        oH = (H + 2 * ph - dh * (kH - 1) - 1) // sh + 1
        oW = (W + 2 * pw - dw * (kW - 1) - 1) // sw + 1
        offset = input.new_zeros(N, 2 * kH * kW, oH, oW)
        mask = None
    else:
        raise TypeError(f"layer must be a DeformConv2dPack, ModulatedDeformConv2dPack or an "
                        f"nn.Conv2d with integer padding, got {type(layer).__name__}")
    return LayerSampling(offset, tuple(layer.kernel_size), tuple(layer.stride),
                         tuple(layer.padding), tuple(layer.dilation), mask)


def _regular(ys: Tensor, xs: Tensor, s: LayerSampling) -> Tuple[Tensor, Tensor]:
    """Regular-grid positions for output positions ``ys``, ``xs`` (any shape) -> (..., K)."""
    (kH, kW), (sh, sw) = s.kernel_size, s.stride
    (ph, pw), (dh, dw) = s.padding, s.dilation
    i = torch.arange(kH, dtype=ys.dtype, device=ys.device).repeat_interleave(kW)
    j = torch.arange(kW, dtype=ys.dtype, device=ys.device).repeat(kH)
    return (ys[..., None] * sh - ph + i * dh, xs[..., None] * sw - pw + j * dw)


def sampling_locations(source: Union[LayerSampling, Tensor, nn.Module],
                       input: Optional[Tensor] = None, kernel_size: Optional[_Size] = None,
                       stride: _Size = 1, padding: _Size = 0, dilation: _Size = 1) -> Tensor:
    """Input positions read by every output pixel and kernel tap of a deformable layer.

    Args:
        source: a ``LayerSampling``; or an offset ``Tensor[N, 2*G*kH*kW, oH, oW]`` together
            with ``kernel_size``, ``stride``, ``padding`` and ``dilation``; or a layer (see
            ``layer_sampling``) together with its ``input``.
        input (Tensor[N, C, H, W], optional): the layer's input, when ``source`` is a layer.

    Returns:
        Tensor[N, G, kH*kW, oH, oW, 2]: ``(y, x)`` in the input's pixel coordinates.

    Example:
        >>> loc = sampling_locations(torch.zeros(1, 18, 4, 4), kernel_size=3, padding=1)
        >>> loc[0, 0, :, 1, 2].tolist()[:3]
        [[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]]
    """
    if isinstance(source, nn.Module):
        if input is None:
            raise ValueError("input is required when source is a layer, got None")
        s = layer_sampling(source, input)
    elif isinstance(source, LayerSampling):
        s = source
    elif isinstance(source, Tensor):
        if kernel_size is None:
            raise ValueError("kernel_size is required when source is an offset tensor")
        s = LayerSampling(source, _pair(kernel_size), _pair(stride), _pair(padding),
                          _pair(dilation))
    else:
        raise TypeError(f"source must be a LayerSampling, an offset Tensor or a layer, got "
                        f"{type(source).__name__}")
    off = s.offset
    K = s.kernel_size[0] * s.kernel_size[1]
    if off.dim() != 4 or off.shape[1] == 0 or off.shape[1] % (2 * K):
        raise ValueError(f"offset must be (N, 2*G*{K}, oH, oW), got {tuple(off.shape)}")
    N, _, oH, oW = off.shape
    off = off.reshape(N, -1, K, 2, oH, oW)
    oy = torch.arange(oH, dtype=off.dtype, device=off.device)[:, None].expand(oH, oW)
    ox = torch.arange(oW, dtype=off.dtype, device=off.device)[None, :].expand(oH, oW)
    ry, rx = _regular(oy, ox, s)  # (oH, oW, K)
    ry, rx = ry.permute(2, 0, 1), rx.permute(2, 0, 1)
    return torch.stack((ry + off[:, :, :, 0], rx + off[:, :, :, 1]), dim=-1)


def _interp(field: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Bilinear values of ``field`` (C, H, W) at (M,) positions, clamped to the border -> (M, C).

    Exact at integer positions inside the field.
    """
    _, H, W = field.shape
    y = y.clamp(0, H - 1)
    x = x.clamp(0, W - 1)
    y0, x0 = y.floor().long(), x.floor().long()
    y1, x1 = (y0 + 1).clamp(max=H - 1), (x0 + 1).clamp(max=W - 1)
    ly, lx = (y - y0)[:, None], (x - x0)[:, None]
    f = field.permute(1, 2, 0)
    return ((1 - ly) * ((1 - lx) * f[y0, x0] + lx * f[y0, x1])
            + ly * ((1 - lx) * f[y1, x0] + lx * f[y1, x1]))


def effective_sampling_points(stack: Sequence[LayerSampling], pixel: Tuple[float, float],
                              batch: int = 0, group: int = 0) -> Tensor:
    """Where a stack of deformable layers, composed, reads the first layer's input for one pixel.

    Starting from ``pixel`` of the last layer's output, each layer maps every point to its
    ``kH*kW`` sampling positions in its input (= the previous layer's output); positions that
    fall between output pixels of the previous layer take that layer's offsets by bilinear
    interpolation (clamped at the border). Layers in between (activations) must not change
    the geometry. One 3x3 layer gives 9 points, two give 81, three 729 (DCN paper, Fig. 5).

    Args:
        stack: the layers' ``LayerSampling``, first layer first.
        pixel ((y, x)): output position of the last layer.
        batch, group: which image and which offset group.

    Returns:
        Tensor[prod(kH*kW), 2]: ``(y, x)`` in the first layer's input pixel coordinates, the
        last layer's taps varying slowest.
    """
    if len(stack) == 0:
        raise ValueError("stack must hold at least one LayerSampling, got none")
    last = stack[-1].offset
    pts = torch.tensor([list(map(float, pixel))], dtype=last.dtype, device=last.device)
    for s in reversed(stack):
        K = s.kernel_size[0] * s.kernel_size[1]
        field = s.offset[batch].reshape(-1, K, 2, *s.offset.shape[2:])[group]
        off = _interp(field.reshape(2 * K, *field.shape[2:]), pts[:, 0], pts[:, 1])
        ry, rx = _regular(pts[:, 0], pts[:, 1], s)  # (M, K)
        off = off.reshape(-1, K, 2)
        pts = torch.stack((ry + off[..., 0], rx + off[..., 1]), dim=-1).reshape(-1, 2)
    return pts


def plot_sampling_points(images: Sequence[Tensor], regular: Sequence[Tensor],
                         learned: Sequence[Tensor], centres: Sequence[Tuple[float, float]],
                         path, titles: Optional[Sequence[str]] = None) -> str:
    """Draw, per image, the regular grid beside the learned sampling points; save a PNG.

    Args:
        images: ``Tensor[H, W]`` grey images.
        regular, learned: ``Tensor[P, 2]`` points ``(y, x)`` in image pixel coordinates.
        centres: the output pixel the points belong to, in image coordinates.
        path: where to write the PNG.
        titles: one caption per image (optional).

    Returns:
        The path written.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'deformconv[plots]'") from e
    n = len(images)
    if not (len(regular) == len(learned) == len(centres) == n) or n == 0:
        raise ValueError(f"images, regular, learned and centres must have the same non-zero "
                         f"length, got {n}, {len(regular)}, {len(learned)}, {len(centres)}")
    for r, img in enumerate(images):
        if img.dim() != 2:
            raise ValueError(f"images[{r}] must be a 2-D grey image Tensor[H, W] (e.g. "
                             f"x[0, 0] of an (N, C, H, W) batch), got shape {tuple(img.shape)}")
    fig, axes = plt.subplots(n, 2, figsize=(6.4, 3.2 * n), squeeze=False)
    for r in range(n):
        img = images[r].detach().float().cpu()
        H, W = img.shape
        for c, (pts, name) in enumerate(((regular[r], "regular grid"),
                                         (learned[r], "deformable"))):
            ax = axes[r][c]
            ax.imshow(img.numpy(), cmap="gray", extent=(-0.5, W - 0.5, H - 0.5, -0.5))
            p = pts.detach().float().cpu()
            ax.scatter(p[:, 1].numpy(), p[:, 0].numpy(), s=6, c="tab:red", alpha=0.5,
                       linewidths=0)
            ax.scatter([centres[r][1]], [centres[r][0]], s=40, c="lime", marker="x")
            ax.set_xlim(-0.5, W - 0.5)
            ax.set_ylim(H - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            distinct = len(torch.unique(p, dim=0)) if len(p) else 0
            cap = f"{name}: {len(p)} points, {distinct} distinct"
            if titles is not None:
                cap = f"{titles[r]}\n{cap}"
            ax.set_title(cap, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


__all__: List[str] = ["LayerSampling", "layer_sampling", "sampling_locations",
                      "effective_sampling_points", "plot_sampling_points"]
