"""Pictures of where the demo network's deformable layers read, and of how far they reach.

For one location of the last stage, the three 3x3 layers read 9 x 9 x 9 = 729 points of the
second stage's output (composed through the layers), each scaled by the product of the three
v2 masks along its path: its weight. The weighted spread of these points (the rms distance from
their weighted mean, in canvas pixels) is the size of the location's receptive field. A plain
network reads the fixed 9x9 grid with stride 4 at every location: spread 8.0 px.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

from ..viz import (
    MARK_COLOUR,
    RING_COLOUR,
    LayerSampling,
    _pyplot,
    draw_sampling,
    effective_sampling_batch,
    layer_sampling,
    weighted_spread,
)
from .model import OFFSET, STRIDE, DigitNet

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
    y, x = _centres_of_mass(image[None])[0].tolist()
    return y, x


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
def sampling_spread(model: DigitNet, images: Tensor, centres, batch_size: int = 256) -> Tensor:
    """Tensor[M]: the weighted spread (canvas px) of the composed sampling points of the
    feature pixel nearest ``centres[i]`` (Tensor[M, 2] or (y, x) pairs) in image ``i``;
    ``PLAIN_SPREAD`` for a plain model."""
    return survey(model, images, [torch.as_tensor(centres, dtype=torch.float32)],
                  batch_size)[1][0]


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


def attention_figure(model: DigitNet, rows: Sequence[Sequence[Tuple[Tensor, Point, str]]],
                     path, title: str, note: str = "") -> Dict[str, list]:
    """Draw, for each cell ``(image Tensor[S, S], location (y, x), caption)`` of each row,
    where the trained deformable layers read for that location (top) above the fixed grid a
    plain network reads there (below), at the same scale; write a PNG with a legend.

    Returns ``{"cells": [...]}``: per cell its caption, the points off the canvas and the
    spreads (for the report's text).
    """
    plt = _pyplot()
    ncol = max(len(r) for r in rows)
    legend_h = 1.0 + (0.5 if note else 0)
    fig, axes = plt.subplots(2 * len(rows), ncol,
                             figsize=(max(2.6 * ncol, 7.2), 6.6 * len(rows) + legend_h),
                             squeeze=False)
    cells = []
    for r, row in enumerate(rows):
        images = torch.stack([im for im, _, _ in row])[:, None]
        locs = [loc for _, loc, _ in row]
        learned = composed(model, images, locs)
        fixed = composed(model, images, locs, plain=True)
        for c, (image, loc, caption) in enumerate(row):
            mark = traced_location(loc, image.shape[-1])
            top, bottom = axes[2 * r][c], axes[2 * r + 1][c]
            d = draw_sampling(top, image, learned[0][c], learned[1][c], mark=mark, margin=8)
            f = draw_sampling(bottom, image, fixed[0][c], fixed[1][c], mark=mark, margin=8)
            off = (f"{d['off_image']} of {d['points']} points off the canvas "
                   f"({100 * d['off_weight']:.0f}% of weight)" if d["off_image"] else
                   f"all {d['points']} points on the canvas")
            top.set_title(f"{caption}\nDEFORMABLE: size {d['spread']:.1f} px\n{off}",
                          fontsize=7.5)
            plain_off = (f"\n{f['off_image']} of {f['points']} points off the canvas "
                         f"({100 * f['off_weight']:.0f}% of weight)" if f["off_image"] else "")
            bottom.set_title(f"PLAIN network, same place: size {f['spread']:.1f} px{plain_off}",
                             fontsize=7.5)
            cells.append({"caption": caption, "spread": d["spread"],
                          "off_canvas": d["off_image"], "points": d["points"],
                          "off_canvas_weight": d["off_weight"],
                          "plain_off_canvas": f["off_image"]})
        for c in range(len(row), ncol):
            axes[2 * r][c].axis("off")
            axes[2 * r + 1][c].axis("off")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    handles = [
        Patch(color="#ffb020", label="where the layers read: brighter = counts more (729 "
              "points, each weighted by the product of the three v2 masks on its path)"),
        Line2D([], [], marker="x", linestyle="", color=MARK_COLOUR, markeredgewidth=2,
               label="the location whose receptive field is drawn"),
        Line2D([], [], linestyle="--", color=RING_COLOUR,
               label="receptive field size: circle with radius = weighted spread (the 'size')"),
        Line2D([], [], linestyle="-", color="white", label="canvas border (outside it: off "
               "the image, reads zeros)")]
    fig.suptitle(title, fontsize=10)
    total_h = fig.get_size_inches()[1]
    leg = fig.legend(handles=handles, loc="lower center", fontsize=7, ncol=1, frameon=True,
                     facecolor="#505050", labelcolor="white",
                     bbox_to_anchor=(0.5, (0.5 if note else 0.05) / total_h))
    leg.get_frame().set_edgecolor("none")
    if note:
        import textwrap
        fig.text(0.5, 0.05 / total_h, "\n".join(textwrap.wrap(note, 125)), ha="center",
                 va="bottom", fontsize=7)
    fig.tight_layout(rect=(0, (legend_h + 0.1) / total_h, 1, 1 - 0.35 / total_h), h_pad=2.5)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {"cells": cells}


def spread_plot(sizes: Sequence[float], per_seed: Sequence[Sequence[float]],
                background: Sequence[float], path,
                seeds: Optional[Sequence[int]] = None) -> str:
    """Receptive field size against digit size: one thin line per seed, their mean with the
    seeds' standard deviation, the plain network's constant, and the mean over background
    locations. ``per_seed[s][b]`` is seed ``s``'s mean spread of size bin ``b`` (NaN when the
    bin is empty); ``background[s]`` seed ``s``'s mean spread at background locations;
    ``seeds`` name the thin lines (default 0, 1, ...)."""
    plt = _pyplot()
    seeds = list(range(len(per_seed))) if seeds is None else list(seeds)
    t = torch.tensor(per_seed, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    labels = []  # (y at the line's right end, x there, seed)
    for s, ys in enumerate(t):
        ax.plot(sizes, ys.tolist(), color="#ff7f0e", alpha=0.35, linewidth=1,
                label="deformable, each seed (labelled at its right end)" if s == 0 else None)
        ends = [i for i in range(len(sizes)) if ys[i] == ys[i]]  # bins that are not NaN
        if ends:
            labels.append((ys[ends[-1]].item(), sizes[ends[-1]], seeds[s]))
    mean = t.nanmean(0)
    sd = (t - mean).square().nansum(0).div(max(len(t) - 1, 1)).sqrt()
    ax.errorbar(sizes, mean.tolist(), yerr=sd.tolist(), color="#d95f02", linewidth=2,
                capsize=3, marker="o", label=f"deformable, mean ± sd over {len(t)} seeds")
    ax.axhline(PLAIN_SPREAD, color="grey", linestyle="--",
               label=f"plain network (fixed grid): {PLAIN_SPREAD:.1f} px everywhere")
    if len(background):
        bg = sum(background) / len(background)
        ax.axhline(bg, color="#7570b3", linestyle=":",
                   label=f"deformable, at background locations: {bg:.1f} px (mean)")
    ax.set_xlim(right=sizes[-1] + 0.12 * (sizes[-1] - sizes[0]))  # room for the seed labels
    lo, hi = ax.get_ylim()
    gap, last = 0.045 * (hi - lo), -float("inf")
    for y, x, seed in sorted(labels):  # bottom to top, each label at least `gap` above the last
        last = max(y, last + gap)
        ax.annotate(f"seed {seed}", (x, y), xytext=(x + 0.015 * (sizes[-1] - sizes[0]), last),
                    fontsize=6.5, color="#b35900", va="center")
    ax.set_xlabel("digit size on the canvas (px)")
    ax.set_ylabel("receptive field size (weighted spread, px)")
    ax.set_title("Does the receptive field grow with the digit?", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
