"""Autocast (mixed precision) rule of ``deformconv::deform_conv2d``.

Policy: under ``torch.autocast`` on CPU or CUDA the op runs in **float32**, whatever the
autocast dtype (bfloat16 or float16): its float16/bfloat16/float32 tensor arguments are cast to
float32, float64 ones are left alone, and the output is float32. This is torchvision's policy
for its ``deform_conv2d``, chosen here because

- the kernels compute float16/bfloat16 in float32 anyway (sampling, blending and GEMM), so a
  low-precision run would save no arithmetic, only memory of the saved tensors;
- sampling positions are the least tolerant part of the op: an offset rounded to bfloat16
  (8 significant bits) moves a sample by up to 1/256 of its value, and float32 keeps what
  precision the offsets still have;
- mixed dtypes (a float32 input with bfloat16 offsets from an autocast ``conv_offset``) are
  resolved in one place, so the layers need no casts of their own.

The following layers receive a float32 output; autocast casts it again where they run in low
precision, as it does after any op on its float32 list. The registration uses the public
``torch.library.register_autocast`` (torch >= 2.5); the gradients flow through the casts.
"""

from __future__ import annotations

import torch

from .checks import AUTOCAST_DEVICE_TYPES, autocast_enabled  # noqa: F401 (re-exported)
from .registry import deform_conv2d_op

AUTOCAST_DTYPE = torch.float32
DEVICE_TYPES = AUTOCAST_DEVICE_TYPES


def register() -> None:
    """Register the float32 autocast rule for every device type in ``DEVICE_TYPES``."""
    for device_type in DEVICE_TYPES:
        torch.library.register_autocast(deform_conv2d_op, device_type, AUTOCAST_DTYPE)
