"""The demo's data: scikit-learn's bundled 8x8 handwritten digits on a larger canvas.

Each digit is placed by a random affine map (scale, rotation, shear, translation) so that the
classes vary in geometry far more than in the original data: the setting where a fixed
sampling grid is at a disadvantage. Nothing is downloaded; the digits ship with scikit-learn.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F


class Digits(NamedTuple):
    """Raw digits ``images`` Tensor[M, 8, 8] in [0, 1] and ``labels`` Tensor[M] (int64)."""

    images: Tensor
    labels: Tensor


class Placed(NamedTuple):
    """Digits on the canvas: ``images`` Tensor[M, 1, S, S], ``labels`` Tensor[M], ``scale``
    Tensor[M] (digit size / 8 px) and ``centre`` Tensor[M, 2] ((y, x) in canvas pixels)."""

    images: Tensor
    labels: Tensor
    scale: Tensor
    centre: Tensor


def load_digits_split(test_fraction: float = 0.3, limit: int = 0,
                      split_seed: int = 0) -> Tuple[Digits, Digits]:
    """Train and test digits, split once by ``split_seed``; ``limit`` > 0 keeps that many of
    each (for quick tests)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the demo needs scikit-learn: pip install 'deformconv[demo]'") from e
    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
    n_test = int(round(len(labels) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    if limit > 0:
        test, train = test[:limit], train[:limit]
    return Digits(images[train], labels[train]), Digits(images[test], labels[test])


def place_on_canvas(digits: Digits, generator: torch.Generator, canvas: int = 32,
                    scale: Tuple[float, float] = (1.0, 3.4), max_rotation: float = 30.0,
                    max_shear: float = 0.3) -> Placed:
    """Put every digit on a ``canvas`` x ``canvas`` image under a random affine map.

    The size is log-uniform in ``scale`` times 8 px, the rotation uniform within
    +-``max_rotation`` degrees, the shear uniform within +-``max_shear``, and the digit is
    shifted at random as far as the canvas allows. Bilinear resampling, zero background.
    """
    M = len(digits.labels)
    g = generator
    lo, hi = math.log(scale[0]), math.log(scale[1])
    s = torch.exp(lo + (hi - lo) * torch.rand(M, generator=g))
    rot = torch.deg2rad((2 * torch.rand(M, generator=g) - 1) * max_rotation)
    sh = (2 * torch.rand(M, generator=g) - 1) * max_shear
    # Forward map (x, y) in digit pixels about its centre -> canvas pixels: A = s R(rot) Shear.
    c, si = torch.cos(rot), torch.sin(rot)
    R = torch.stack((torch.stack((c, -si), -1), torch.stack((si, c), -1)), -2)
    Sh = torch.eye(2).repeat(M, 1, 1)
    Sh[:, 0, 1] = sh
    A = s[:, None, None] * (R @ Sh)
    room = (canvas / 2 - 4.4 * s * (1 + sh.abs())).clamp_min(0)
    t = (2 * torch.rand(M, 2, generator=g) - 1) * room[:, None]  # (x, y) shift in pixels
    # affine_grid maps canvas coordinates normalised by canvas/2 to digit coordinates
    # normalised by 4 (align_corners=False): u_d = (canvas/8) A^-1 u_c - A^-1 t / 4.
    Ainv = torch.linalg.inv(A)
    theta = torch.cat(((canvas / 8) * Ainv, -(Ainv @ t[:, :, None]) / 4), dim=2)
    grid = F.affine_grid(theta, (M, 1, canvas, canvas), align_corners=False)
    images = F.grid_sample(digits.images[:, None], grid, mode="bilinear",
                           padding_mode="zeros", align_corners=False)
    centre = torch.stack((t[:, 1], t[:, 0]), -1) + (canvas - 1) / 2
    return Placed(images, digits.labels, s, centre)


#: Below this contrast (the ink's peak above the page, on a 0-1 scale) an image has no ink.
MIN_CONTRAST = 0.05


def load_image(path: str, canvas: int) -> Tuple[Tensor, str]:
    """A grey image file as Tensor[1, 1, canvas, canvas] in [0, 1] with a dark background,
    like the demo's digits, keeping its aspect ratio: the longer side is resized to ``canvas``
    and the shorter one padded with background, centred. Transparent pixels count as page;
    the page's level (the median of the border pixels) becomes 0 and the ink's peak 1, so the
    padding matches the page. Returns the image and a sentence saying what was done;
    ``ValueError`` naming ``--image`` when the file is no image or holds no ink."""
    try:
        import matplotlib.image as mpimg
    except ImportError as e:
        raise ImportError("reading images needs matplotlib: pip install 'deformconv[plots]'") \
            from e
    try:
        a = torch.tensor(mpimg.imread(path), dtype=torch.float32)
    except Exception as e:  # not an image matplotlib can read
        raise ValueError(f"--image: expected an image file (PNG, ...), got {path!r}, which "
                         f"cannot be read ({type(e).__name__}: {e})") from None
    if a.dim() == 3 and a.shape[-1] in (1, 2, 3, 4):
        if a.max() > 1:
            a = a / 255.0
        colour = a.shape[-1] in (3, 4)
        grey = a[..., :3].mean(-1) if colour else a[..., 0]
        if a.shape[-1] in (2, 4):  # alpha: composite onto the page the opaque pixels show
            alpha = a[..., -1]
            opaque = grey[alpha > 0.5]
            page = 1.0 if opaque.numel() == 0 or opaque.mean() < 0.5 else 0.0
            grey = alpha * grey + (1 - alpha) * page
        a = grey
    elif a.max() > 1:
        a = a / 255.0
    if a.dim() != 2 or min(a.shape) < 1:
        raise ValueError(f"--image: expected a 2-D image, got {path!r} of shape "
                         f"{tuple(a.shape)}")
    border = torch.cat((a[0], a[-1], a[:, 0], a[:, -1]))
    page = border.median()
    inverted = bool(page > 0.5)
    if inverted:  # dark strokes on a light page: invert, the demo's digits are light
        a, page = 1 - a, 1 - page
    peak = a.max() - page
    if peak < MIN_CONTRAST:
        raise ValueError(f"--image: expected strokes that stand out from the page, got "
                         f"{path!r}, whose pixels differ from its border's level by at most "
                         f"{peak.item():.3f} (of 1): no ink found")
    a = ((a - page) / peak).clamp(0, 1)
    H, W = a.shape
    h, w = max(1, round(canvas * H / max(H, W))), max(1, round(canvas * W / max(H, W)))
    small = F.interpolate(a[None, None], size=(h, w), mode="bilinear", antialias=True,
                          align_corners=False).clamp(0, 1)
    top, left = (canvas - h) // 2, (canvas - w) // 2
    out = F.pad(small, (left, canvas - w - left, top, canvas - h - top))
    note = f"resized {W}x{H} to {w}x{h} (aspect ratio kept)"
    if (h, w) != (canvas, canvas):
        note += f", padded with background to {canvas}x{canvas}"
    if inverted:
        note += ", light background inverted"
    if page > 0.02:
        note += f", page level {page.item():.2f} taken as background"
    return out, note
