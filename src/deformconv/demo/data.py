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
