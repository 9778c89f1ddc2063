"""Pictures of where deformable layers read (matplotlib, imported lazily): every figure of the
package, for the library, the demo and ``deformconv visualize``.

Points are ``(y, x)`` in an image's pixel coordinates (``sampling``'s conventions); a point's
weight is how much its read counts (the product of the v2 masks along its path).
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .sampling import off_image, weighted_spread


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
    from matplotlib.patches import Circle, Rectangle
    ax.add_patch(Rectangle((-0.5, -0.5), W, H, fill=False, edgecolor="white", linewidth=0.8))
    spread = weighted_spread(p, w)
    mean = (w[:, None] * p).sum(0) / w.sum().clamp_min(1e-300)
    ax.add_patch(Circle((mean[1].item(), mean[0].item()), spread.item(), fill=False,
                        edgecolor=RING_COLOUR, linestyle="--", linewidth=1.2))
    if mark is not None:
        ax.scatter([mark[1]], [mark[0]], s=60, c=MARK_COLOUR, marker="x", linewidths=2)
    ax.set(xlim=ext[:2], ylim=ext[2:], xticks=[], yticks=[])
    off = off_image(p, H, W)
    return {"points": len(p), "off_image": int(off.sum()),
            "off_weight": (w[off].sum() / w.sum().clamp_min(1e-300)).item(),
            "spread": spread.item()}


def _save(fig, path, **layout) -> str:
    """Lay out, write (100 dpi) and close ``fig``; the path written."""
    fig.tight_layout(**layout)
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return str(path)


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
    return _save(fig, path)


class Cell(NamedTuple):
    """One panel pair of :func:`comparison_figure`: where a deformable network reads for one
    location (``points``, ``weights``) above where a plain one reads there (``plain_points``,
    ``plain_weights``), over the grey ``image`` (Tensor[S, S]), ``mark`` (y, x) crossed."""

    image: Tensor
    mark: Tuple[float, float]
    caption: str
    points: Tensor
    weights: Optional[Tensor]
    plain_points: Tensor
    plain_weights: Optional[Tensor]


def comparison_figure(rows: Sequence[Sequence[Cell]], path, title: str, note: str = "",
                      points_label: str = "where the layers read: brighter = counts more"
                      ) -> Dict[str, list]:
    """Draw each :class:`Cell` of each row as a pair: where the deformable layers read (top)
    above the fixed grid a plain network reads at the same place (below), at the same scale;
    write a PNG with a legend (``points_label`` explains the heat map) and ``note`` below it.

    Returns ``{"cells": [...]}``: per cell its caption, the points off the canvas and the
    spreads (for a report's text).
    """
    plt = _pyplot()
    ncol = max(len(r) for r in rows)
    legend_h = 1.0 + (0.5 if note else 0)
    fig, axes = plt.subplots(2 * len(rows), ncol,
                             figsize=(max(2.6 * ncol, 7.2), 6.6 * len(rows) + legend_h),
                             squeeze=False)
    cells = []
    for r, row in enumerate(rows):
        for c, (image, mark, caption, pts, w, plain_pts, plain_w) in enumerate(row):
            top, bottom = axes[2 * r][c], axes[2 * r + 1][c]
            d = draw_sampling(top, image, pts, w, mark=mark, margin=8)
            f = draw_sampling(bottom, image, plain_pts, plain_w, mark=mark, margin=8)
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
        Patch(color="#ffb020", label=points_label),
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
    _save(fig, path, rect=(0, (legend_h + 0.1) / total_h, 1, 1 - 0.35 / total_h), h_pad=2.5)
    return {"cells": cells}


def spread_plot(sizes: Sequence[float], per_seed: Sequence[Sequence[float]],
                background: Sequence[float], path, seeds: Optional[Sequence[int]] = None,
                plain: float = 8.0, object_name: str = "digit") -> str:
    """Receptive field size against object size: one thin line per seed, their mean with the
    seeds' standard deviation, the plain network's constant ``plain``, and the mean over
    background locations. ``per_seed[s][b]`` is seed ``s``'s mean spread of size bin ``b``
    (NaN when the bin is empty); ``background[s]`` seed ``s``'s mean spread at background
    locations; ``seeds`` name the thin lines (default 0, 1, ...)."""
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
    ax.axhline(plain, color="grey", linestyle="--",
               label=f"plain network (fixed grid): {plain:.1f} px everywhere")
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
    ax.set_xlabel(f"{object_name} size on the canvas (px)")
    ax.set_ylabel("receptive field size (weighted spread, px)")
    ax.set_title(f"Does the receptive field grow with the {object_name}?", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


__all__: List[str] = ["density", "draw_sampling", "plot_sampling_points", "Cell",
                      "comparison_figure", "spread_plot", "POINT_COLOUR", "MARK_COLOUR",
                      "RING_COLOUR"]
