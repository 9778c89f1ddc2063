"""Figures of where the demo network's deformable layers sample, on canvas images."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..viz import LayerSampling, effective_sampling_points, layer_sampling, plot_sampling_points
from .model import OFFSET, STRIDE, DigitNet


@torch.no_grad()
def last_stage_sampling(model: DigitNet, images: Tensor) -> List[LayerSampling]:
    """``LayerSampling`` of the three last-stage convolutions on ``images`` (N, 1, S, S)."""
    layers = model.last_stage()
    inputs: List[Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for m in layers]
    try:
        model(images)
    finally:
        for h in hooks:
            h.remove()
    return [layer_sampling(m, x) for m, x in zip(layers, inputs)]


def feature_pixel(centre: Tuple[float, float], size: int) -> Tuple[int, int]:
    """The last-stage feature pixel nearest to canvas position ``centre`` (y, x)."""
    return tuple(int(min(max(round((c - OFFSET) / STRIDE), 0), size - 1))  # type: ignore
                 for c in centre)


def centre_of_mass(image: Tensor) -> Tuple[float, float]:
    """Intensity-weighted centre (y, x) of a grey image Tensor[H, W]."""
    H, W = image.shape
    w = image.clamp_min(0)
    total = w.sum().clamp_min(1e-12)
    ys = torch.arange(H, dtype=w.dtype)
    xs = torch.arange(W, dtype=w.dtype)
    return ((w.sum(1) * ys).sum() / total).item(), ((w.sum(0) * xs).sum() / total).item()


def sampling_figure(model: DigitNet, images: Tensor, path, centres: Sequence[Tuple[float, float]],
                    titles: Optional[Sequence[str]] = None) -> str:
    """Plot, for each image, the 729 points that the centre pixel's three deformable 3x3
    layers read (composed), beside the regular grid a plain network reads.

    Args:
        model: a ``DigitNet`` (its last stage deformable or not).
        images (Tensor[N, 1, S, S]): canvas images.
        path: PNG to write.
        centres: per image, the canvas position (y, x) whose feature pixel is traced.
        titles: per-image captions.
    """
    device = next(model.parameters()).device
    stack = last_stage_sampling(model.eval(), images.to(device))
    size = stack[-1].offset.shape[-1]
    zero = [s._replace(offset=torch.zeros_like(s.offset)) for s in stack]
    regular, learned, marks = [], [], []
    for i, c in enumerate(centres):
        px = feature_pixel(c, size)
        learned.append(effective_sampling_points(stack, px, batch=i).cpu() * STRIDE + OFFSET)
        regular.append(effective_sampling_points(zero, px, batch=i).cpu() * STRIDE + OFFSET)
        marks.append((px[0] * STRIDE + OFFSET, px[1] * STRIDE + OFFSET))
    return plot_sampling_points([im[0].cpu() for im in images], regular, learned, marks, path,
                                titles)


@torch.no_grad()
def sampling_spread(model: DigitNet, images: Tensor, centres: Tensor,
                    batch_size: int = 256) -> Tensor:
    """How far the composed sampling points of the digit's centre pixel spread, per image.

    Args:
        model: a ``DigitNet``.
        images (Tensor[M, 1, S, S]): canvas images.
        centres (Tensor[M, 2]): canvas position (y, x) traced in each image.

    Returns:
        Tensor[M]: root-mean-square distance, in canvas pixels, of the 729 points from their
        mean. A plain network's three 3x3 layers give ``4 * 2 = 8`` everywhere.
    """
    device = next(model.parameters()).device
    out = []
    for b in range(0, len(images), batch_size):
        stack = last_stage_sampling(model.eval(), images[b:b + batch_size].to(device))
        size = stack[-1].offset.shape[-1]
        for i, c in enumerate(centres[b:b + batch_size].tolist()):
            p = effective_sampling_points(stack, feature_pixel(c, size), batch=i) * STRIDE
            out.append((p - p.mean(0)).square().sum(1).mean().sqrt().cpu())
    return torch.stack(out) if out else torch.empty(0)
