"""The public multi-scale deformable attention: docs, argument checks, the registered op.

Conventions (``docs/ms_deform_attn.md``): a normalised location ``(x, y)`` maps to pixel
coordinates ``w = x*W - 0.5``, ``h = y*H - 0.5`` of its level (pixel centres at integers); the
sample counts only when ``-1 < h < H`` and ``-1 < w < W``; it is the bilinear blend of the four
neighbouring pixels, each outside the map reading 0, times its attention weight.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..checks import FLOATS, autocast_enabled
from ..registration import check_not_functorch_autodiff
from . import library, onnx

_INTS = (torch.int32, torch.int64)
_LOW = (torch.float16, torch.bfloat16, torch.float32)


def ms_deform_attn(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                   sampling_locations: Tensor, attention_weights: Tensor,
                   im2col_step: Optional[int] = None) -> Tensor:
    r"""Multi-scale deformable attention (Deformable DETR), the core op without projections.

    The arguments of mmcv's and Deformable DETR's ``MultiScaleDeformableAttnFunction.apply``,
    in their order. For batch ``n``, query ``q``, head ``m`` the output is
    ``sum_{l,p} attention_weights[n,q,m,l,p] * bilinear(value_l[n,:,:,m], loc[n,q,m,l,p])``,
    with ``loc = (x, y)`` in ``[0, 1]`` across level ``l`` (0 the left/top edge, 1 the
    right/bottom edge). The attention weights are used as given (no softmax).

    Args:
        value (Tensor[N, S, M, D]): the levels' features, ``S = sum_l H_l*W_l``, level ``l`` in
            rows ``[start_l, start_l + H_l*W_l)``, row-major (row ``y*W_l + x``).
        spatial_shapes (Tensor[L, 2]): int64 (or int32) ``(H_l, W_l)`` rows, on ``value``'s
            device. A level may be empty (``H_l*W_l == 0``); it contributes 0.
        level_start_index (Tensor[L]): ``[0, H_0*W_0, H_0*W_0 + H_1*W_1, ...]``; checked.
        sampling_locations (Tensor[N, Q, M, L, P, 2]): normalised ``(x, y)``.
        attention_weights (Tensor[N, Q, M, L, P]): one weight per sample.
        im2col_step (int, optional): accepted for compatibility; no effect.

    Returns:
        Tensor[N, Q, M*D] of ``value``'s dtype, head-major channels (``m*D + d``). float16
        and bfloat16 are computed in float32. A location that is NaN, infinite or outside
        ``-1 < h < H``, ``-1 < w < W`` contributes 0 and has zero gradients.

    Example:
        >>> import torch
        >>> shapes = torch.tensor([[4, 6], [2, 3]])
        >>> value = torch.randn(1, 30, 2, 8)
        >>> loc = torch.rand(1, 5, 2, 2, 3, 2)
        >>> weights = torch.rand(1, 5, 2, 2, 3)
        >>> ms_deform_attn(value, shapes, torch.tensor([0, 24]), loc, weights).shape
        torch.Size([1, 5, 16])
    """
    check_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                         attention_weights, im2col_step)
    check_not_functorch_autodiff("ms_deform_attn", value, sampling_locations, attention_weights)
    if onnx.exporting():
        return onnx.ms_deform_attn_decomposed(value, spatial_shapes, level_start_index,
                                              sampling_locations, attention_weights)
    return library.ms_deform_attn_op(value, spatial_shapes, level_start_index,
                                     sampling_locations, attention_weights)


def _tensor(name: str, t, ndim: int, dtypes, words: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must be {words}, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")


def check_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                         attention_weights, im2col_step=None, mixed: bool = False) -> None:
    """Validate one call: ``TypeError``/``ValueError`` naming the argument, what was expected
    and what was given. The checks that read ``spatial_shapes``' values run in eager mode only
    (a compiled graph keeps no data-dependent check; the op's kernel runs them then).
    ``mixed`` accepts float16/bfloat16/float32 mixes (what the autocast rule passes on)."""
    floats = "float16, bfloat16, float32 or float64"
    _tensor("value", value, 4, FLOATS, floats)
    _tensor("spatial_shapes", spatial_shapes, 2, _INTS, "int64 or int32")
    _tensor("level_start_index", level_start_index, 1, _INTS, "int64 or int32")
    _tensor("sampling_locations", sampling_locations, 6, FLOATS, floats)
    _tensor("attention_weights", attention_weights, 5, FLOATS, floats)
    if im2col_step is not None and (not isinstance(im2col_step, int)
                                    or isinstance(im2col_step, bool)):
        raise TypeError(f"im2col_step must be an int or None, got {im2col_step!r}")
    for name, t in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index),
                    ("sampling_locations", sampling_locations),
                    ("attention_weights", attention_weights)):
        if t.device != value.device:
            raise ValueError(f"{name} must be on value's device {value.device}, got {t.device}")
    mixed = mixed or autocast_enabled(value.device)
    for name, t in (("sampling_locations", sampling_locations),
                    ("attention_weights", attention_weights)):
        if t.dtype != value.dtype and not (mixed and t.dtype in _LOW and value.dtype in _LOW):
            raise TypeError(f"{name} must have value's dtype {value.dtype}, got {t.dtype}")
    N, S, M, D = value.shape
    L = spatial_shapes.shape[0]
    if spatial_shapes.shape[1] != 2:
        raise ValueError(f"spatial_shapes must have shape (L, 2) of (H, W) rows, got "
                         f"{tuple(spatial_shapes.shape)}")
    if tuple(level_start_index.shape) != (L,):
        raise ValueError(f"level_start_index must have shape ({L},) (one start per level of "
                         f"spatial_shapes), got {tuple(level_start_index.shape)}")
    loc = tuple(sampling_locations.shape)
    if loc[0] != N or loc[2] != M or loc[3] != L or loc[5] != 2:
        raise ValueError(f"sampling_locations must have shape (N, Q, M, L, P, 2) = ({N}, Q, "
                         f"{M}, {L}, P, 2) from value (N, S, M, D) and spatial_shapes (L, 2), "
                         f"got {loc}")
    if tuple(attention_weights.shape) != loc[:5]:
        raise ValueError(f"attention_weights must have shape {loc[:5]} (sampling_locations' "
                         f"first five), got {tuple(attention_weights.shape)}")
    if not torch.compiler.is_compiling():
        check_levels(spatial_shapes, level_start_index, S)


def check_levels(spatial_shapes: Tensor, level_start_index: Tensor, S: int) -> None:
    """The data-dependent checks: sizes >= 0, ``S = sum H*W``, starts that agree."""
    shapes = spatial_shapes.tolist()
    if any(h < 0 or w < 0 for h, w in shapes):
        raise ValueError(f"spatial_shapes must hold sizes >= 0, got {shapes}")
    total, starts = 0, []
    for h, w in shapes:
        starts.append(total)
        total += h * w
    if total != S:
        raise ValueError(f"value.shape[1] must be the sum of H*W over spatial_shapes "
                         f"({total} for {shapes}), got {S}")
    given = level_start_index.tolist()
    if given != starts:
        raise ValueError(f"level_start_index must be {starts} (the running sum of H*W over "
                         f"spatial_shapes {shapes}), got {given}")
