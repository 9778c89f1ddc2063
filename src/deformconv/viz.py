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
from .ops.geometry import out_size

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
        kH, kW = layer.kernel_size
        oH, oW = out_size((H, W), layer.kernel_size, layer.stride, layer.padding,
                          layer.dilation)
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


def _interp(field: Tensor, y: Tensor, x: Tensor, batch: Optional[Tensor] = None) -> Tensor:
    """Bilinear values of ``field`` (C, H, W) at (M,) positions, clamped to the border -> (M, C).

    With ``batch`` (Tensor[M] of indices) ``field`` is (B, C, H, W) and point ``m`` reads
    ``field[batch[m]]``. Exact at integer positions inside the field.
    """
    H, W = field.shape[-2:]
    y = y.clamp(0, H - 1)
    x = x.clamp(0, W - 1)
    y0, x0 = y.floor().long(), x.floor().long()
    y1, x1 = (y0 + 1).clamp(max=H - 1), (x0 + 1).clamp(max=W - 1)
    ly, lx = (y - y0)[:, None], (x - x0)[:, None]
    if batch is None:
        f = field.permute(1, 2, 0)

        def at(a, b):
            return f[a, b]
    else:
        f = field.permute(0, 2, 3, 1)

        def at(a, b):
            return f[batch, a, b]
    return ((1 - ly) * ((1 - lx) * at(y0, x0) + lx * at(y0, x1))
            + ly * ((1 - lx) * at(y1, x0) + lx * at(y1, x1)))


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
    last = stack[-1].offset if len(stack) else None
    if last is None:
        raise ValueError("stack must hold at least one LayerSampling, got none")
    pts, w = effective_sampling_batch(
        stack, torch.tensor([list(map(float, pixel))], dtype=last.dtype, device=last.device),
        torch.tensor([batch], device=last.device), group)
    return pts[0], w[0]


def effective_sampling_batch(stack: Sequence[LayerSampling], pixels: Tensor, batch: Tensor,
                             group: int = 0) -> Tuple[Tensor, Tensor]:
    """``effective_sampling`` for many pixels at once: ``pixels`` Tensor[B, 2] (y, x) of the
    last layer's output, in images ``batch`` Tensor[B] (indices). Returns Tensor[B, P, 2] and
    Tensor[B, P]."""
    if len(stack) == 0:
        raise ValueError("stack must hold at least one LayerSampling, got none")
    B = len(pixels)
    pts = pixels.to(stack[-1].offset.dtype).reshape(B, 2)
    weight = torch.ones(B, dtype=pts.dtype, device=pts.device)
    owner = batch.reshape(B).to(pts.device)
    for s in reversed(stack):
        K = s.kernel_size[0] * s.kernel_size[1]
        N, _, oH, oW = s.offset.shape
        field = s.offset.reshape(N, -1, 2 * K, oH, oW)[:, group]
        off = _interp(field, pts[:, 0], pts[:, 1], owner).reshape(-1, K, 2)
        if s.mask is not None:
            m = s.mask.reshape(N, -1, K, oH, oW)[:, group]
            weight = (weight[:, None] * _interp(m, pts[:, 0], pts[:, 1], owner)).reshape(-1)
        else:
            weight = weight.repeat_interleave(K)
        ry, rx = _regular(pts[:, 0], pts[:, 1], s)  # (M, K)
        pts = torch.stack((ry + off[..., 0], rx + off[..., 1]), dim=-1).reshape(-1, 2)
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


def density(points: Tensor, weights: Optional[Tensor], height: int, width: int,
            margin: float, bins_per_px: int = 2, blur: float = 0.8) -> Tensor:
    """Weighted density of ``points`` (Tensor[P, 2], ``(y, x)``) on a grid of
    ``bins_per_px`` bins per pixel covering the image and ``margin`` px around it, blurred by
    a Gaussian of ``blur`` px and scaled to a maximum of 1: Tensor[rows, cols]."""
    w = torch.ones(len(points), dtype=torch.float64) if weights is None else weights.double()
    lo = -0.5 - margin
    rows = int(round((height + 2 * margin) * bins_per_px))
    cols = int(round((width + 2 * margin) * bins_per_px))
    iy = ((points[:, 0].double() - lo) * bins_per_px).floor().long()
    ix = ((points[:, 1].double() - lo) * bins_per_px).floor().long()
    keep = (iy >= 0) & (iy < rows) & (ix >= 0) & (ix < cols)
    grid = torch.zeros(rows * cols, dtype=torch.float64)
    grid.index_add_(0, iy[keep] * cols + ix[keep], w[keep])
    r = max(1, int(3 * blur * bins_per_px))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / (blur * bins_per_px)) ** 2)
    g = g / g.sum()
    img = torch.nn.functional.conv2d(grid.reshape(1, 1, rows, cols), g.reshape(1, 1, 1, -1),
                                     padding=(0, r))
    img = torch.nn.functional.conv2d(img, g.reshape(1, 1, -1, 1), padding=(r, 0))[0, 0]
    return img / img.max().clamp_min(1e-300)


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'deformconv[plots]'") from e
    return plt


#: Colours of the sampling-point drawings (readable on the grey images).
POINT_COLOUR, MARK_COLOUR, RING_COLOUR = "#ff7f0e", "#00e000", "#39c0ff"


def off_image(points: Tensor, height: int, width: int) -> Tensor:
    """Bool Tensor[P]: which ``(y, x)`` points lie outside the image's pixel area."""
    y, x = points[:, 0], points[:, 1]
    return (y < -0.5) | (y > height - 0.5) | (x < -0.5) | (x > width - 0.5)


def draw_sampling(ax, image: Tensor, points: Tensor, weights: Optional[Tensor] = None,
                  mark: Optional[Tuple[float, float]] = None, margin: float = 0.0) -> dict:
    """Draw where ``points`` (Tensor[P, 2], ``(y, x)``) read over the grey ``image``
    (Tensor[H, W]) on a matplotlib axis, as a heat map: each point adds its weight (all 1 when
    ``weights`` is None), so brighter orange means the layers count that place more. A dashed
    ring of radius ``weighted_spread`` sits around the weighted mean, ``mark`` is a cross. The
    view extends ``margin`` pixels beyond the image, whose border is outlined, so points off
    the image stay visible.

    Returns:
        ``{"points", "off_image", "off_weight", "spread"}``: the point count, how many lie off
        the image, the share of the total weight they carry, and the weighted spread.
    """
    img = image.detach().float().cpu()
    H, W = img.shape
    p = points.detach().double().cpu()
    w = (torch.ones(len(p), dtype=torch.float64) if weights is None
         else weights.detach().double().cpu())
    ax.set_facecolor("#505050")
    ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1, extent=(-0.5, W - 0.5, H - 0.5, -0.5))
    d = density(p, w, H, W, margin)
    rgba = torch.zeros(*d.shape, 4, dtype=torch.float64)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 1.0, 0.45 + 0.45 * d, 0.05
    rgba[..., 3] = 0.9 * d.sqrt()
    ext = (-0.5 - margin, W - 0.5 + margin, H - 0.5 + margin, -0.5 - margin)
    ax.imshow(rgba.numpy(), extent=ext, interpolation="bilinear")
    ax.add_patch(_rectangle((-0.5, -0.5), W, H))
    spread = weighted_spread(p, w)
    mean = (w[:, None] * p).sum(0) / w.sum().clamp_min(1e-300)
    ax.add_patch(_circle((mean[1].item(), mean[0].item()), spread.item()))
    if mark is not None:
        ax.scatter([mark[1]], [mark[0]], s=60, c=MARK_COLOUR, marker="x", linewidths=2)
    ax.set_xlim(ext[0], ext[1])
    ax.set_ylim(ext[2], ext[3])
    ax.set_xticks([])
    ax.set_yticks([])
    off = off_image(p, H, W)
    return {"points": len(p), "off_image": int(off.sum()),
            "off_weight": (w[off].sum() / w.sum().clamp_min(1e-300)).item(),
            "spread": spread.item()}


def _rectangle(xy, width, height):
    from matplotlib.patches import Rectangle
    return Rectangle(xy, width, height, fill=False, edgecolor="white", linewidth=0.8)


def _circle(xy, radius):
    from matplotlib.patches import Circle
    return Circle(xy, radius, fill=False, edgecolor=RING_COLOUR, linestyle="--", linewidth=1.2)


def plot_sampling_points(images: Sequence[Tensor], regular: Sequence[Tensor],
                         learned: Sequence[Tensor], centres: Sequence[Tuple[float, float]],
                         path, titles: Optional[Sequence[str]] = None,
                         weights: Optional[Sequence[Tensor]] = None) -> str:
    """Draw, per image, the regular grid beside the learned sampling points; save a PNG.

    Args:
        images: ``Tensor[H, W]`` grey images.
        regular, learned: ``Tensor[P, 2]`` points ``(y, x)`` in image pixel coordinates.
        centres: the output pixel the points belong to, in image coordinates.
        path: where to write the PNG.
        titles: one caption per image (optional).
        weights: per image, ``Tensor[P]`` weights of the learned points (e.g. the product of
            the v2 masks from ``effective_sampling``), drawn as point size and opacity.

    Returns:
        The path written.
    """
    plt = _pyplot()
    n = len(images)
    if not (len(regular) == len(learned) == len(centres) == n) or n == 0:
        raise ValueError(f"images, regular, learned and centres must have the same non-zero "
                         f"length, got {n}, {len(regular)}, {len(learned)}, {len(centres)}")
    if weights is not None and len(weights) != n:
        raise ValueError(f"weights must have one entry per image ({n}), got {len(weights)}")
    for r, img in enumerate(images):
        if img.dim() != 2:
            raise ValueError(f"images[{r}] must be a 2-D grey image Tensor[H, W] (e.g. "
                             f"x[0, 0] of an (N, C, H, W) batch), got shape {tuple(img.shape)}")
    fig, axes = plt.subplots(n, 2, figsize=(6.4, 3.4 * n), squeeze=False)
    for r in range(n):
        margin = 0.25 * max(images[r].shape)
        for c, (pts, w, name) in enumerate((
                (regular[r], None, "plain convolution (fixed grid)"),
                (learned[r], None if weights is None else weights[r], "deformable"))):
            d = draw_sampling(axes[r][c], images[r], pts, w, centres[r], margin)
            cap = (f"{name}: spread {d['spread']:.1f} px\n{d['points']} points, "
                   f"{d['off_image']} off the image")
            if titles is not None:
                cap = f"{titles[r]}\n{cap}"
            axes[r][c].set_title(cap, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


__all__: List[str] = ["LayerSampling", "layer_sampling", "sampling_locations",
                      "effective_sampling", "effective_sampling_batch",
                      "effective_sampling_points", "weighted_spread", "density", "off_image",
                      "draw_sampling", "plot_sampling_points"]
