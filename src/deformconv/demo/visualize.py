"""Where a trained demo network's deformable layers read, on a demo image or the user's own.

Library code for ``deformconv visualize``: errors are ``ValueError``s that name the argument.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F


def load_image(path: str, canvas: int) -> Tuple[Tensor, str]:
    """A grey image file as Tensor[1, 1, canvas, canvas] in [0, 1] with a dark background,
    keeping its aspect ratio: the longer side is resized to ``canvas`` and the shorter one
    padded with background, centred. Returns the image and a sentence saying what was done."""
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
    if a.dim() == 3:
        a = a[..., :3].mean(-1)
    if a.dim() != 2 or min(a.shape) < 1:
        raise ValueError(f"--image: expected a 2-D image, got {path!r} of shape "
                         f"{tuple(a.shape)}")
    if a.max() > 1:
        a = a / 255.0
    inverted = bool(a.mean() > 0.5)
    if inverted:  # dark strokes on a light page: invert, the demo's digits are light
        a = 1 - a
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
    return out, note


def load_model(path: str):
    """The demo network saved at ``path``; ``ValueError`` naming ``--model`` otherwise."""
    from .model import model_from_state_dict

    if not os.path.isfile(path):
        raise ValueError(f"--model: no model at {path!r}; run `deformconv demo` first or pass "
                         f"--model")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or pickles more than tensors
        raise ValueError(f"--model: expected a state dict saved by `deformconv demo`, got "
                         f"{path!r}, which torch.load cannot read ({type(e).__name__})") \
            from None
    if not isinstance(state, dict) or "head.weight" not in state:
        raise ValueError(f"--model: expected a state dict saved by `deformconv demo`, got "
                         f"{path!r}, which holds a {type(state).__name__} without "
                         f"'head.weight'")
    if not any(k.endswith("conv_offset.weight") for k in state):
        raise ValueError(f"--model: {path!r} is a plain demo network without deformable "
                         f"layers (it samples the regular grid); pass a deformable_seedN.pt")
    try:
        return model_from_state_dict(state)
    except Exception as e:  # right keys, wrong shapes
        raise ValueError(f"--model: expected a state dict saved by `deformconv demo`, got "
                         f"{path!r}, which does not load into the demo network "
                         f"({type(e).__name__})") from None


def visualize(model, image: Tensor, path: str, title: str,
              pixel: Optional[Tuple[float, float]] = None) -> dict:
    """Draw where ``model``'s deformable layers read for one location of ``image``
    (Tensor[1, 1, S, S]), beside the plain grid, and at a background location when the image
    has one; write the PNG ``path``. ``pixel``: the canvas location (y, x) traced (default:
    the ink's centre of mass). Returns the figure's per-cell numbers."""
    from .figures import attention_figure, background_location, centre_of_mass

    img = image[0, 0]
    centre = tuple(pixel) if pixel is not None else centre_of_mass(img)
    with torch.no_grad():
        pred = model(image).argmax(1).item()
    cells = [(img, centre, f"{title}\npredicted {pred}; traced at "
                           f"({centre[0]:.0f}, {centre[1]:.0f})")]
    bg = background_location(img)
    if bg is not None:
        cells.append((img, bg, "background location\n(farthest from the ink)"))
    return attention_figure(model, [cells], path, "Where the deformable layers read (x)")


__all__ = ["load_image", "load_model", "visualize"]
