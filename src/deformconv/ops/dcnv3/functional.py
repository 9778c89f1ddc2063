"""``dcnv3``: InternImage's deformable convolution v3, the public function, docs and checks.

The numerics follow InternImage's CUDA kernel; ``docs/dcnv3.md`` states the conventions and
the tests pin each one. Validation happens here, once; the registered operators
(``library.py``) and the kernels assume valid arguments.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from ..checks import _check_tensor, _is_int
from ..registration import check_not_functorch_autodiff
from . import library, onnx
from .torch_kernels import Geometry

_MINIMUM = {"kernel_h": 1, "kernel_w": 1, "stride_h": 1, "stride_w": 1, "pad_h": 0, "pad_w": 0,
            "dilation_h": 1, "dilation_w": 1, "group": 1, "group_channels": 1}


def geometry(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
             group, group_channels, offset_scale, remove_center, im2col_step=None) -> Geometry:
    """Check the scalar arguments and return them as a :class:`Geometry`."""
    values = dict(kernel_h=kernel_h, kernel_w=kernel_w, stride_h=stride_h, stride_w=stride_w,
                  pad_h=pad_h, pad_w=pad_w, dilation_h=dilation_h, dilation_w=dilation_w,
                  group=group, group_channels=group_channels)
    for name, v in values.items():
        if isinstance(v, torch.SymInt):  # traced with dynamic shapes: checked when concrete
            continue
        if not _is_int(v):
            raise TypeError(f"{name} must be an int, got {v!r}")
        if v < _MINIMUM[name]:
            raise ValueError(f"{name} must be >= {_MINIMUM[name]}, got {v}")
    symbolic = isinstance(offset_scale, torch.SymFloat)  # a traced float: no value check
    if not symbolic and (not isinstance(offset_scale, numbers.Real)
                         or isinstance(offset_scale, bool)):
        raise TypeError(f"offset_scale must be a float, got {offset_scale!r}")
    if not symbolic and not -math.inf < offset_scale < math.inf:  # False for NaN
        raise ValueError(f"offset_scale must be finite, got {offset_scale!r}")
    if not (isinstance(remove_center, bool) or (_is_int(remove_center)
                                                 and int(remove_center) in (0, 1))):
        raise TypeError(f"remove_center must be a bool (or 0/1), got {remove_center!r}")
    if im2col_step is not None and (not _is_int(im2col_step) or im2col_step < 1):
        raise ValueError(f"im2col_step must be a positive int (it has no effect here), got "
                         f"{im2col_step!r}")
    if remove_center and (kernel_h % 2 == 0 or kernel_w % 2 == 0):
        raise ValueError(f"remove_center needs an odd kernel (it drops the centre tap), got "
                         f"kernel_h={kernel_h}, kernel_w={kernel_w}")
    if remove_center and kernel_h * kernel_w == 1:
        raise ValueError("remove_center with a 1x1 kernel leaves no tap")
    return Geometry(*(v if isinstance(v, torch.SymInt) else int(v) for v in values.values()),
                    offset_scale if symbolic else float(offset_scale), bool(remove_center))


def check_input(input, g: Geometry):
    """Check ``input`` against ``g``; return the output size (oH, oW)."""
    _check_tensor("input", input, 4, None)
    N, H, W, C = input.shape
    if C != g.group * g.group_channels:
        raise ValueError(f"input's last dimension must be group*group_channels = {g.group}*"
                         f"{g.group_channels} = {g.group * g.group_channels} (channels last: "
                         f"(N, H, W, C)), got shape {tuple(input.shape)}")
    oH, oW = g.out_size(H, W)
    if oH < 1 or oW < 1:
        raise ValueError(f"output would be {oH}x{oW}, smaller than 1x1: input {H}x{W}, kernel "
                         f"{g.kernel_h}x{g.kernel_w}, stride ({g.stride_h}, {g.stride_w}), "
                         f"pad ({g.pad_h}, {g.pad_w}), dilation ({g.dilation_h}, "
                         f"{g.dilation_w})")
    return oH, oW


def check_per_position(name: str, t, input: Tensor, out, channels: int, what: str) -> None:
    """Check a (N, oH, oW, channels) tensor of per-position values."""
    _check_tensor(name, t, 4, input)
    want = (input.shape[0], *out, channels)
    if tuple(t.shape) != want:
        raise ValueError(f"{name} must have shape (N, oH, oW, {what}) = {want}, got "
                         f"{tuple(t.shape)}")


def check_call(input, offset, mask, *params) -> Geometry:
    """All of ``dcnv3``'s checks (also run by the registered op, for direct calls)."""
    g = geometry(*params)
    out = check_input(input, g)
    check_per_position("offset", offset, input, out, g.group * g.points * 2, "group*P*2")
    check_per_position("mask", mask, input, out, g.group * g.points, "group*P")
    return g


def dcnv3(input: Tensor, offset: Tensor, mask: Tensor, kernel_h: int, kernel_w: int,
          stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
          dilation_w: int, group: int, group_channels: int, offset_scale: float,
          remove_center: bool = False, *, im2col_step=None) -> Tensor:
    r"""DCNv3 (InternImage), channels last, with the numerics of InternImage's CUDA kernel.

    Each group's ``Cg`` channels are sampled at ``P = kernel_h*kernel_w - remove_center``
    positions per output pixel with that group's offsets and summed with the mask as weights
    (no softmax here; the modules apply it). Tap ``p`` is kernel column ``i = p // kernel_h``,
    row ``j = p % kernel_h`` (x outer, y inner), the centre skipped and the later taps moved up
    one slot when ``remove_center``. With ``c_w = dilation_w*(kernel_w-1)//2`` and
    ``s = offset_scale`` the sample of output ``(ho, wo)`` lies at
    ``x = wo*stride_w - pad_w + c_w - c_w*s + (i*dilation_w + dx)*s`` (and likewise ``y``):
    ``offset_scale`` scales the grid's spread about its centre as well as the offsets. Samples
    are bilinear, zero unless ``-1 < y < H`` and ``-1 < x < W``, each corner off the image
    reading 0. See ``docs/dcnv3.md``.

    Args:
        input (Tensor[N, H, W, group*group_channels]): input, channels last.
        offset (Tensor[N, oH, oW, group*P*2]): per group, ``P`` pairs ``(dx, dy)`` in pixels.
        mask (Tensor[N, oH, oW, group*P]): per group, ``P`` weights, used as given.
        kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w (int):
            the sampling grid (any kernel size; odd for ``remove_center``).
        group, group_channels (int): groups and channels per group (any counts).
        offset_scale (float): scales the offsets and the grid's spread.
        remove_center (bool): drop the centre tap.
        im2col_step (int, keyword): accepted for InternImage's ``DCNv3Function`` argument
            list; no effect.

    Returns:
        Tensor[N, oH, oW, group*group_channels] of the input's dtype, ``oH = (H + 2*pad_h -
        (dilation_h*(kernel_h-1) + 1)) // stride_h + 1`` (likewise ``oW``). float16 and
        bfloat16 are computed in float32. Non-finite or far offsets contribute 0 and get zero
        offset and mask gradients.

    Example:
        >>> import torch
        >>> x = torch.randn(1, 5, 6, 8)
        >>> off, m = torch.zeros(1, 5, 6, 2 * 9 * 2), torch.ones(1, 5, 6, 2 * 9)
        >>> y = dcnv3(x, off, m, 3, 3, 1, 1, 1, 1, 1, 1, 2, 4, 1.0)
        >>> box = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2), torch.ones(8, 1, 3, 3),
        ...                                  padding=1, groups=8)
        >>> torch.allclose(y, box.permute(0, 2, 3, 1), atol=1e-5)
        True
    """
    g = check_call(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                   dilation_h, dilation_w, group, group_channels, offset_scale, remove_center,
                   im2col_step)
    check_not_functorch_autodiff("dcnv3", input, offset, mask)
    if onnx.exporting():
        return onnx.dcnv3_decomposed(input, offset, mask, *g)
    return library.dcnv3_op(input, offset, mask, *g)
