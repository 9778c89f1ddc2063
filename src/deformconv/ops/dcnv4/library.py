"""The registered operators ``deformconv::dcnv4`` and ``deformconv::dcnv4_backward``: defined
by ``dcnv3.library.define`` (fake implementations, autograd, double-backward guard, the
autocast rule of ``dcnv3``: input in the autocast dtype, ``offset_mask`` float32), kernels
from ``torch_kernels`` or the Triton launcher ``dcnv4.triton.launch``."""

from __future__ import annotations

from ..dcnv3.library import define
from . import torch_kernels

dcnv4_op, dcnv4_backward_op = define("dcnv4", ("input", "offset_mask"), torch_kernels,
                                     "dcnv4.triton.launch")
