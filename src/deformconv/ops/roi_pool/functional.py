"""The public deformable RoI pooling: docs, argument checks, and the call of the registered op."""

from __future__ import annotations

import numbers
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ..checks import FLOATS, _autocast_mix, _check_tensor, _is_int, int_tuple
from ..registration import check_not_functorch_autodiff
from .library import deform_roi_pool_op

_IntPair = Union[int, Tuple[int, int]]


def deform_roi_pool(input: Tensor, rois: Tensor, offset: Optional[Tensor], output_size: _IntPair,
                    spatial_scale: float = 1.0, sampling_ratio: int = 0,
                    gamma: float = 0.1) -> Tensor:
    r"""Deformable RoI pooling (Dai et al. 2017), mmcv's ``deform_roi_pool``.

    Each region is cut into ``ph x pw`` bins; bin ``(i, j)`` is shifted by
    ``gamma * (roi_w * offset[r, 0, i, j], roi_h * offset[r, 1, i, j])`` (x first) and pooled
    as the average of a ``gh x gw`` grid of bilinear samples, RoIAlign style (pixel centres at
    integer coordinates, ``aligned=True``). ``gh = sampling_ratio`` if positive, else
    ``ceil(roi_h / ph)`` per region (likewise ``gw``). Samples up to one pixel outside the image
    take the edge value, farther ones 0. Zero offsets give RoIAlign (``aligned=True``).

    Args:
        input (Tensor[N, C, H, W]): feature map.
        rois (Tensor[R, 5]): regions ``(batch_index, x1, y1, x2, y2)`` in image coordinates
            (multiplied by ``spatial_scale``), on the input's device, of the input's dtype or,
            with float16/bfloat16 input, float32 (the positions are computed in float32; boxes
            rounded to bfloat16 move by up to 1/256 of their coordinate). The batch index is
            truncated to an int and must lie in ``[0, N)``.
        offset (Tensor[R, 2, ph, pw], optional): normalised bin shifts, channel 0 is x (width),
            channel 1 is y. ``None`` pools without shift.
        output_size (int or (int, int)): ``(ph, pw)``.
        spatial_scale (float): input-image to feature-map scale (> 0), e.g. ``1/16``.
        sampling_ratio (int): samples per bin and axis; ``<= 0`` picks ``ceil(size / bins)``.
        gamma (float): offset scale.

    Returns:
        Tensor[R, C, ph, pw] of the input's dtype; float16/bfloat16 are computed in float32.
        Gradients flow to ``input`` and ``offset``, not to ``rois``. Zero regions give an empty
        output and zero gradients.

    Hostile values: a sample whose position is NaN or infinite is outside the image and adds 0.
    A region whose adaptive grid ratio (``roi_h / ph`` or ``roi_w / pw``) is NaN, infinite or
    not positive has no samples and pools to 0; that ratio is capped at ``2**24`` samples per
    axis. Only the samples that can fall in the image are visited, so a huge region costs what
    an image-sized one does. Nothing reads or writes out of bounds, whatever the values.

    Example:
        >>> import torch
        >>> x = torch.arange(16.).view(1, 1, 4, 4)
        >>> rois = torch.tensor([[0., 0., 0., 3., 3.]])
        >>> deform_roi_pool(x, rois, None, 2, sampling_ratio=2)
        tensor([[[[1.5625, 3.0000],
                  [7.3125, 8.7500]]]])
    """
    (ph, pw), spatial_scale, sampling_ratio, gamma = pool_args(output_size, spatial_scale,
                                                               sampling_ratio, gamma)
    if torch.onnx.is_in_onnx_export():
        raise RuntimeError(
            "deform_roi_pool cannot be exported to ONNX: ONNX has no deformable RoI pooling "
            "operator (RoiAlign cannot shift bins), and this library emits no custom-domain "
            "node. Export the model up to the pooling, or run it with torch.export or "
            "torch.jit.trace")
    check_deform_roi_pool(input, rois, offset, ph, pw)
    check_not_functorch_autodiff("deform_roi_pool", input, rois, offset)
    return deform_roi_pool_op(input, rois, offset, ph, pw, spatial_scale, sampling_ratio, gamma)


def pool_args(output_size, spatial_scale, sampling_ratio, gamma
              ) -> Tuple[Tuple[int, int], float, int, float]:
    """The checked scalar arguments as Python values: ``((ph, pw), spatial_scale,
    sampling_ratio, gamma)``; the layers check their constructor with it too."""
    ph, pw = int_tuple("output_size", output_size, 2, 1)
    spatial_scale = _real("spatial_scale", spatial_scale)
    if spatial_scale <= 0:
        raise ValueError(f"spatial_scale must be > 0, got {spatial_scale!r}")
    gamma = _real("gamma", gamma)
    if not _is_int(sampling_ratio):
        raise TypeError(f"sampling_ratio must be an int, got {sampling_ratio!r}")
    return (ph, pw), spatial_scale, int(sampling_ratio), gamma


def _real(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {v!r}")
    v = float(v)
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return v


def check_deform_roi_pool(input, rois, offset, ph: int, pw: int, values: bool = True) -> None:
    """Validate one call; ``ph``/``pw`` already parsed. The batch-index check reads the rois
    (a device sync), so it runs on real tensors in eager mode only, and only with ``values``:
    not inside a compiled or traced graph, not on meta or fake tensors (which have shapes, no
    values), not in the registered op (whose kernels pool an out-of-range region to 0)."""
    _check_tensor("input", input, 4, None)
    # float32 boxes with float16/bfloat16 features keep their precision: the positions are
    # computed in float32 either way, and rounding coordinates to the low dtype moves them.
    wide_rois = (isinstance(rois, Tensor) and rois.dtype == torch.float32
                 and input.dtype in (torch.float16, torch.bfloat16))
    if (isinstance(rois, Tensor) and rois.dtype in FLOATS and rois.dtype != input.dtype
            and not wide_rois and not _autocast_mix(rois, input)):
        raise TypeError(f"rois must have the input's dtype {input.dtype} (or float32 with "
                        f"float16/bfloat16 input), got {rois.dtype}")
    _check_tensor("rois", rois, 2, None)
    if rois.device != input.device:
        raise ValueError(f"rois must be on the input's device {input.device}, got "
                         f"{rois.device}")
    if offset is not None:
        _check_tensor("offset", offset, 4, input)
    N, C, H, W = input.shape
    R = rois.shape[0]
    if rois.shape[1] != 5:
        raise ValueError(f"rois must have shape (R, 5), rows (batch_index, x1, y1, x2, y2), "
                         f"got {tuple(rois.shape)}")
    if H < 1 or W < 1:
        raise ValueError(f"input height and width must be >= 1, got {H}x{W}")
    if offset is not None and tuple(offset.shape) != (R, 2, ph, pw):
        raise ValueError(f"offset must have shape (R, 2, ph, pw) = {(R, 2, ph, pw)}, got "
                         f"{tuple(offset.shape)}")
    tracing = (torch.compiler.is_compiling() or torch.jit.is_tracing()
               or torch.onnx.is_in_onnx_export())
    if R and values and not tracing and _has_values(rois):
        b = torch.trunc(rois[:, 0].detach())
        bad = ~((b >= 0) & (b < N))               # NaN is bad too
        if bool(bad.any()):
            k = int(bad.nonzero()[0, 0])
            raise ValueError(f"rois[:, 0] (batch index) must lie in [0, N) = [0, {N}) after "
                             f"truncation, got {rois[k, 0].item()!r} in row {k}")


def _has_values(t: Tensor) -> bool:
    """False for meta tensors and under fake tensors (FakeTensorMode, fake-mode tracing)."""
    if t.is_meta:
        return False
    from torch._guards import detect_fake_mode  # noqa: PLC0415 (private; used here only)
    return detect_fake_mode([t]) is None
