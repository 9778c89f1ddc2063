"""Argument checks of the deformable convolution ops, for 1, 2 or 3 spatial dimensions.

Validation happens once, here, called by the public functions; each failure is a
``TypeError``/``ValueError`` naming the argument, what was expected and what was given. The
registered operators and the kernels assume valid arguments.
"""

from __future__ import annotations

import numbers
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import geometry
from .autocast import DEVICE_TYPES as AUTOCAST_DEVICE_TYPES

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_KERNEL_NAMES = {1: ("kW",), 2: ("kH", "kW"), 3: ("kD", "kH", "kW")}
_COUNT_WORDS = {1: "a tuple of 1 int", 2: "a pair of ints", 3: "a tuple of 3 ints"}


def _is_int(v) -> bool:
    # numbers.Integral covers Python and NumPy integers; bool is an int subclass, not a size.
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and \
        type(v).__name__ != "bool_"


def int_tuple(name: str, value, ndim: int, minimum: int) -> Tuple[int, ...]:
    """An int or a tuple/list of ``ndim`` ints (Python or NumPy), each ``>= minimum``."""
    if _is_int(value):
        out = (int(value),) * ndim
    elif (isinstance(value, (tuple, list)) and len(value) == ndim
          and all(_is_int(v) for v in value)):
        out = tuple(int(v) for v in value)
    else:
        raise TypeError(f"{name} must be an int or {_COUNT_WORDS[ndim]}, got {value!r}")
    if min(out) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return out


def _check_tensor(name: str, t, ndim: int, ref: Optional[Tensor]) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if t.dtype not in FLOATS:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if ref is not None and t.dtype != ref.dtype and not _autocast_mix(t, ref):
        raise TypeError(f"{name} must have the input's dtype {ref.dtype}, got {t.dtype}")
    if ref is not None and t.device != ref.device:
        raise ValueError(f"{name} must be on the input's device {ref.device}, got {t.device}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")


def autocast_enabled(device: torch.device) -> bool:
    """Whether autocast is on for ``device``'s type and our rule covers it."""
    return device.type in AUTOCAST_DEVICE_TYPES and torch.is_autocast_enabled(device.type)


def _autocast_mix(t: Tensor, ref: Tensor) -> bool:
    """Mixed float16/bfloat16/float32 arguments are fine under autocast: its rule casts them
    before the op runs (see ``autocast.py``)."""
    low = (torch.float16, torch.bfloat16, torch.float32)
    return t.dtype in low and ref.dtype in low and autocast_enabled(ref.device)


def check_deform_conv(input, offset, weight, bias, mask, stride, padding, dilation,
                      ndim: int) -> None:
    """Validate one deformable convolution call with ``ndim`` spatial dimensions.

    ``stride``, ``padding`` and ``dilation`` are tuples already parsed by :func:`int_tuple`.
    """
    R = ndim
    full = R + 2
    _check_tensor("input", input, full, None)
    _check_tensor("offset", offset, full, input)
    _check_tensor("weight", weight, full, input)
    if mask is not None:
        _check_tensor("mask", mask, full, input)
    if bias is not None:
        _check_tensor("bias", bias, 1, input)
    N, C, *size = input.shape
    O, Cg, *kernel = weight.shape
    names = _KERNEL_NAMES[R]
    if min(weight.shape) < 1:
        raise ValueError(f"weight must have shape (O, C/groups, {', '.join(names)}) with all "
                         f"sizes >= 1, got {tuple(weight.shape)}")
    if C % Cg:
        raise ValueError(f"input channels ({C}) must be a multiple of weight.shape[1] ({Cg}), "
                         f"which gives the conv groups")
    groups = C // Cg
    if O % groups:
        raise ValueError(f"weight.shape[0] ({O}) must be divisible by groups ({groups} = "
                         f"input channels {C} / weight.shape[1] {Cg})")
    out = geometry.out_size(size, kernel, stride, padding, dilation)
    if min(out) < 1:
        raise ValueError(
            f"output would be {'x'.join(map(str, out))}, smaller than {'x'.join('1' * R)}: "
            f"input {'x'.join(map(str, size))}, kernel {'x'.join(map(str, kernel))}, "
            f"stride {tuple(stride)}, padding {tuple(padding)}, dilation {tuple(dilation)}")
    K = geometry.taps(kernel)
    per_tap = f"{R}*{'*'.join(names)}"
    if offset.shape[0] != N:
        raise ValueError(f"offset batch size must equal the input's ({N}), got "
                         f"{offset.shape[0]}")
    if offset.shape[1] == 0 or offset.shape[1] % (R * K):
        raise ValueError(f"offset channels must be a positive multiple of {per_tap} = {R * K}, "
                         f"got {offset.shape[1]}")
    G = geometry.offset_groups(offset.shape[1], kernel)
    if C % G:
        raise ValueError(f"input channels ({C}) must be divisible by the offset groups ({G} = "
                         f"offset channels {offset.shape[1]} / ({per_tap}))")
    if tuple(offset.shape[2:]) != out:
        raise ValueError(f"offset spatial size must be the output size {out}, got "
                         f"{tuple(offset.shape[2:])}")
    if mask is not None:
        if mask.shape[0] != N:
            raise ValueError(f"mask batch size must equal the input's ({N}), got "
                             f"{mask.shape[0]}")
        if mask.shape[1] != G * K:
            raise ValueError(f"mask channels must be offset_groups*{'*'.join(names)} = "
                             f"{G}*{K} = {G * K}, got {mask.shape[1]}")
        if tuple(mask.shape[2:]) != out:
            raise ValueError(f"mask spatial size must be the output size {out}, got "
                             f"{tuple(mask.shape[2:])}")
    if bias is not None and bias.shape[0] != O:
        raise ValueError(f"bias must have shape ({O},), got {tuple(bias.shape)}")
