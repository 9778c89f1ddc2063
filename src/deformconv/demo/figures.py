"""Pictures of where the demo network's deformable layers read, and of how far they reach:
the demo's figures and ``deformconv visualize``'s (drawn by ``deformconv.viz``).

For one location of the last stage, the three 3x3 layers read 9 x 9 x 9 = 729 points of the
second stage's output (composed through the layers), each scaled by the product of the three
v2 masks along its path: its weight. The weighted spread of these points (the rms distance from
their weighted mean, in canvas pixels) is the size of the location's receptive field. A plain
network reads the fixed 9x9 grid with stride 4 at every location: spread 8.0 px.
"""

from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

from ..viz import (
    Cell,
    LayerSampling,
    comparison_figure,
    effective_sampling_batch,
    layer_sampling,
    weighted_spread,
)
from .data import load_image
from .model import OFFSET, STRIDE, DigitNet, load_model

#: Spread of the fixed 3x3x3 grid at stride 4: a plain network's receptive field here.
PLAIN_SPREAD = 8.0
Point = Tuple[float, float]


@torch.no_grad()
def last_stage_sampling(model: DigitNet, images: Tensor,
                        logits: Optional[List[Tensor]] = None) -> List[LayerSampling]:
    """``LayerSampling`` of the three last-stage convolutions on ``images`` (N, 1, S, S);
    the network's output is appended to ``logits`` when given."""
    layers = model.last_stage()
    inputs: List[Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for m in layers]
    try:
        out = model(images)
    finally:
        for h in hooks:
            h.remove()
    if logits is not None:
        logits.append(out)
    return [layer_sampling(m, x) for m, x in zip(layers, inputs)]


def feature_pixel(centre: Point, size: int) -> Tuple[int, int]:
    """The last-stage feature pixel nearest to canvas position ``centre`` (y, x)."""
    return tuple(int(min(max(round((c - OFFSET) / STRIDE), 0), size - 1))  # type: ignore
                 for c in centre)


def traced_location(centre: Point, canvas: int) -> Point:
    """The canvas position (y, x) of the feature pixel nearest to ``centre``: where the
    layers' output for ``centre`` really sits."""
    return tuple(p * STRIDE + OFFSET for p in feature_pixel(centre, canvas // STRIDE))


def centre_of_mass(image: Tensor) -> Point:
    """Intensity-weighted centre (y, x) of a grey image Tensor[H, W]."""
    return tuple(_centres_of_mass(image[None])[0].tolist())  # type: ignore


def _centres_of_mass(images: Tensor) -> Tensor:
    """Tensor[N, 2]: intensity-weighted centres (y, x) of grey images Tensor[N, H, W]."""
    N, H, W = images.shape
    w = images.clamp_min(0)
    total = w.sum((1, 2)).clamp_min(1e-12)
    ys = torch.arange(H, dtype=w.dtype)
    xs = torch.arange(W, dtype=w.dtype)
    return torch.stack(((w.sum(2) * ys).sum(1) / total, (w.sum(1) * xs).sum(1) / total), -1)


def background_locations(images: Tensor, margin: float = 8.0, clear: int = 4) -> Tensor:
    """Background locations of grey images Tensor[N, S, S]: among the feature pixels whose
    canvas position is at least ``margin`` px from every edge and has no ink within ``clear``
    px, the one farthest from the ink's centre of mass. Tensor[N, 2] (y, x), NaN where an
    image has none."""
    N, S, _ = images.shape
    cands = [(p * STRIDE + OFFSET, q * STRIDE + OFFSET) for p in range(S // STRIDE)
             for q in range(S // STRIDE)]
    cands = torch.tensor([c for c in cands if min(c[0], c[1], S - 1 - c[0], S - 1 - c[1])
                          >= margin], dtype=images.dtype).reshape(-1, 2)
    ink = F.max_pool2d(images[:, None], 2 * clear + 2, stride=1)[:, 0]
    iy, ix = cands[:, 0].long() - clear, cands[:, 1].long() - clear
    free = ink[:, iy, ix] <= 0.05  # (N, candidates)
    dist = (cands[None] - _centres_of_mass(images)[:, None]).norm(dim=-1)
    best = dist.masked_fill(~free, -1).argmax(1)
    out = cands[best].clone()
    out[~free.any(1)] = float("nan")
    return out


def background_location(image: Tensor, margin: float = 8.0, clear: int = 4) -> Optional[Point]:
    """``background_locations`` of one image Tensor[S, S]: (y, x), or None when it has none."""
    y, x = background_locations(image[None], margin, clear)[0].tolist()
    return None if math.isnan(y) else (y, x)


@torch.no_grad()
def composed(model: DigitNet, images: Tensor, centres: Sequence[Point],
             plain: bool = False) -> Tuple[Tensor, Tensor]:
    """The composed sampling points (Tensor[N, 729, 2], canvas (y, x)) of the feature pixel
    nearest ``centres[i]`` in image ``i`` and their weights (Tensor[N, 729], the product of
    the v2 masks). ``plain``: the fixed grid a plain network reads instead (weights 1)."""
    device = next(model.parameters()).device
    stack = last_stage_sampling(model.eval(), images.to(device))
    if plain:
        stack = [LayerSampling(torch.zeros_like(s.offset), *s[1:5]) for s in stack]
    size = stack[-1].offset.shape[-1]
    px = torch.tensor([feature_pixel(c, size) for c in centres], dtype=torch.float32,
                      device=device).reshape(-1, 2)
    pts, w = effective_sampling_batch(stack, px, torch.arange(len(px), device=device))
    return pts.cpu() * STRIDE + OFFSET, w.cpu()


@torch.no_grad()
def survey(model: DigitNet, images: Tensor, locations: Sequence[Tensor],
           batch_size: int = 256) -> Tuple[Tensor, List[Tensor]]:
    """One pass over ``images`` (Tensor[M, 1, S, S]): the predicted classes Tensor[M] and, for
    each Tensor[M, 2] of canvas locations (y, x) in ``locations``, the weighted spread
    Tensor[M] of the composed sampling points there (NaN where the location is NaN)."""
    device = next(model.parameters()).device
    model.eval()
    preds: List[Tensor] = []
    spreads: List[List[Tensor]] = [[] for _ in locations]
    for b in range(0, len(images), batch_size):
        logits: List[Tensor] = []
        stack = last_stage_sampling(model, images[b:b + batch_size].to(device), logits)
        preds.append(logits[0].argmax(1).cpu())
        size = stack[-1].offset.shape[-1]
        for out, loc in zip(spreads, locations):
            loc = loc[b:b + batch_size]
            ok = ~loc.isnan().any(1)
            px = ((loc[ok] - OFFSET) / STRIDE).round().clamp(0, size - 1).to(device)
            sp = torch.full((len(loc),), float("nan"))
            if ok.any():
                pts, w = effective_sampling_batch(stack, px, ok.nonzero().flatten().to(device))
                sp[ok] = weighted_spread(pts * STRIDE, w).cpu().float()
            out.append(sp)
    cat = [torch.cat(o) if o else torch.empty(0) for o in spreads]
    return (torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64)), cat


#: What the heat map of the demo's figures shows.
POINTS_LABEL = ("where the layers read: brighter = counts more (729 points, each weighted by "
                "the product of the three v2 masks on its path)")


def attention_figure(model: DigitNet, rows: Sequence[Sequence[Tuple[Tensor, Point, str]]],
                     path, title: str, note: str = "") -> Dict[str, list]:
    """Draw, for each cell ``(image Tensor[S, S], location (y, x), caption)`` of each row,
    where the trained deformable layers read for that location (top) above the fixed grid a
    plain network reads there (below), at the same scale; write a PNG with a legend
    (``viz.comparison_figure``).

    Returns ``{"cells": [...]}``: per cell its caption, the points off the canvas and the
    spreads (for the report's text).
    """
    cells = []
    for row in rows:
        images = torch.stack([im for im, _, _ in row])[:, None]
        locs = [loc for _, loc, _ in row]
        (pts, w), (plain, plain_w) = (composed(model, images, locs, plain=p)
                                      for p in (False, True))
        cells.append([Cell(image, traced_location(loc, image.shape[-1]), caption, pts[c], w[c],
                           plain[c], plain_w[c])
                      for c, (image, loc, caption) in enumerate(row)])
    return comparison_figure(cells, path, title, note, POINTS_LABEL)


def visualize(model, image: Tensor, path: str, title: str,
              pixel: Optional[Tuple[float, float]] = None) -> dict:
    """Draw where ``model``'s deformable layers read for one location of ``image``
    (Tensor[1, 1, S, S]), beside the plain grid, and at a background location when the image
    has one; write the PNG ``path``. ``pixel``: the canvas location (y, x) traced (default:
    the ink's centre of mass). Returns the figure's per-cell numbers."""
    img = image[0, 0]
    asked = tuple(pixel) if pixel is not None else centre_of_mass(img)
    # the layers' output lives on the feature grid: the location traced is its nearest pixel
    traced = traced_location(asked, img.shape[-1])
    with torch.no_grad():
        pred = model(image).argmax(1).item()
    where = ("the ink's centre of mass" if pixel is None else
             f"asked ({asked[0]:g}, {asked[1]:g})")
    cells = [(img, traced, f"{title}\ndeformable network predicts {pred}\ntraced at "
                           f"({traced[0]:g}, {traced[1]:g}): nearest feature pixel to {where}")]
    bg = background_location(img)
    if bg is not None:
        cells.append((img, bg, "background location\n(farthest from the ink)"))
    result = attention_figure(model, [cells], path, "Where the deformable layers read (x)")
    result["traced"] = traced
    result["background"] = bg
    return result


def visualize_files(model_path: str, out: str, image_path: Optional[str] = None,
                    index: int = 0, pixel: Optional[Point] = None, canvas: int = 32) -> dict:
    """``deformconv visualize`` without its command line: the demo network saved at
    ``model_path`` traced on the image file ``image_path`` (fitted to a ``canvas``-pixel
    square, see ``load_image``) or else on demo test image ``index``, drawn by ``visualize``
    into ``out/visualize-<name>.png``.

    Returns ``visualize``'s numbers plus ``path`` (the PNG) and ``note`` (what was done to the
    image file, None for a demo image). Bad input is a ``ValueError`` naming ``--model``,
    ``--image`` or ``--index``.
    """
    model = load_model(model_path)
    if image_path is not None:
        image, note = load_image(image_path, canvas)
        title = os.path.basename(image_path)
        name, note = os.path.splitext(title)[0], f"{title}: {note}"
    else:
        from .pipeline import demo_test_set

        placed = demo_test_set()
        if not 0 <= index < len(placed.labels):
            raise ValueError(f"--index: expected an index in [0, {len(placed.labels)}), got "
                             f"{index}")
        image = placed.images[index:index + 1]
        title = (f"demo test image {index}: a {placed.labels[index].item()}, "
                 f"{8 * placed.scale[index].item():.0f} px")
        name, note = f"index{index}", None
    path = os.path.join(out, f"visualize-{name}.png")
    return dict(visualize(model, image, path, title, pixel), path=path, note=note)
