"""CUDA kernels of the registered ops: Triton when it imports, else the pure-PyTorch path.

The ops stay the same two custom ops (``registry``), so ``torch.compile`` and
``torch.export`` see one opaque node whichever kernel runs. Triton is imported on the first
CUDA call, never at package import, so CPU-only installs and the Triton interpreter tests
(which must set ``TRITON_INTERPRET`` before the kernels are compiled) are unaffected.
"""

from __future__ import annotations

import functools
from typing import List, Optional

from torch import Tensor

from . import registry, torch_impl


@functools.lru_cache(maxsize=None)
def backend():
    """The module whose ``deform_conv2d_fwd``/``deform_conv2d_bwd`` serve CUDA tensors.

    ``deformconv.ops.triton.launch`` when ``triton`` imports, else ``torch_impl``.
    """
    try:
        from .triton import launch
    except ImportError:
        return torch_impl
    return launch


@registry.deform_conv2d_op.register_kernel("cuda")
def _deform_conv2d_cuda(input: Tensor, weight: Tensor, offset: Tensor, mask: Optional[Tensor],
                        bias: Optional[Tensor], stride_h: int, stride_w: int, pad_h: int,
                        pad_w: int, dil_h: int, dil_w: int) -> Tensor:
    return backend().deform_conv2d_fwd(input, weight, offset, mask, bias, stride_h, stride_w,
                                       pad_h, pad_w, dil_h, dil_w)


@registry.deform_conv2d_backward_op.register_kernel("cuda")
def _deform_conv2d_backward_cuda(grad_out: Tensor, input: Tensor, weight: Tensor,
                                 offset: Tensor, mask: Optional[Tensor], bias: Optional[Tensor],
                                 stride_h: int, stride_w: int, pad_h: int, pad_w: int,
                                 dil_h: int, dil_w: int, output_mask: List[bool]):
    return backend().deform_conv2d_bwd(grad_out, input, weight, offset, mask, bias, stride_h,
                                       stride_w, pad_h, pad_w, dil_h, dil_w, output_mask)
