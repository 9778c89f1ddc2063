"""Autocast (mixed precision): one rule for the deformable convolutions of every dimensionality
(``deformconv::deform_conv{1,2,3}d``), registered by ``register``.

**CUDA** (where the tensor cores are): under ``torch.autocast("cuda", dtype=D)`` the input, the
weight and the bias are cast to ``D`` (float16 or bfloat16), the offsets and the mask to
float32, and the output has dtype ``D``. So the sampled columns and the weights meet on the
tensor cores in ``D`` while the sampling positions keep full precision: an offset rounded to
bfloat16 (8 significant bits) would move a sample at x = 200 by up to 0.4 pixel. Accumulation
is float32 in every kernel. Gradients come back in each argument's dtype (float32 for the
offsets and the mask) and flow through the casts to the caller's parameters. When the op runs
on the pure-PyTorch path instead (``dispatch``), it computes these mixed arguments in float32
and returns the output in ``D``: the same rule, without the speed.

**CPU**: every float16/bfloat16/float32 argument is cast to float32 and the output is float32
(torchvision's rule for its ``deform_conv2d``). The CPU kernels compute half precision in
float32 anyway, so a low-precision output would only add a rounding.

float64 arguments are never cast, on either device. The float32 TF32 rule (no autocast) is
``triton.spec.input_precision``: every op follows ``torch.backends.cudnn.allow_tf32``, as
``nn.Conv{1,2,3}d`` do.

Deformable RoI pooling runs in float32 under autocast on both devices (``FLOAT32``): it has no
matrix products for tensor cores to speed up, and its RoI boxes and offsets must keep full
precision.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

# Device types whose autocast the ops register a rule for.
DEVICE_TYPES = ("cpu", "cuda")
FLOAT32 = torch.float32
_LOW = (torch.float16, torch.bfloat16, torch.float32)
_lib = torch.library.Library("deformconv", "IMPL")


def _cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return t.to(dtype) if t is not None and t.dtype in _LOW else t


def cuda_cast(input: Tensor, weight: Tensor, offset: Tensor, mask: Optional[Tensor],
              bias: Optional[Tensor], dtype: torch.dtype):
    """The arguments as the CUDA rule casts them for autocast dtype ``dtype``: ``(input,
    weight, offset, mask, bias)``. Nothing is cast when the input is float64."""
    if input.dtype == torch.float64:
        return input, weight, offset, mask, bias
    return (_cast(input, dtype), _cast(weight, dtype), _cast(offset, torch.float32),
            _cast(mask, torch.float32), _cast(bias, dtype))


def register(op, name: str) -> None:
    """Register the float32 rule for CPU and the mixed rule for CUDA on the convolution op
    ``op`` (``deformconv::<name>``, arguments ``input, weight, offset, mask, bias, ...``)."""
    torch.library.register_autocast(op, "cpu", FLOAT32)
    overload = getattr(torch.ops.deformconv, name).default
    exclude = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCUDA)

    def autocast_cuda(keyset, input, weight, offset, mask, bias, *params):
        args = cuda_cast(input, weight, offset, mask, bias, torch.get_autocast_dtype("cuda"))
        with torch._C._ExcludeDispatchKeyGuard(exclude):
            return overload(*args, *params)

    _lib.impl(name, autocast_cuda, "AutocastCUDA", with_keyset=True)
