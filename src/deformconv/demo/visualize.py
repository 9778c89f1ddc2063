"""Where a trained demo network's deformable layers read, on a demo image or the user's own.

Library code for ``deformconv visualize``: errors are ``ValueError``s that name the argument.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

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
    from .figures import attention_figure, background_location, centre_of_mass, traced_location

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


__all__ = ["load_image", "load_model", "visualize"]
