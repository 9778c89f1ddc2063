"""Launchers of ``dcnv4``: ``dcnv3``'s Triton kernels addressing the fused ``offset_mask``
through its strides (no split copies). Signatures and returns as ``dcnv4.torch_kernels``."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ...dcnv3.torch_kernels import Geometry
from ...dcnv3.triton.launch import launch_bwd, launch_fwd
from .. import torch_kernels
from ..torch_kernels import views


def dcnv4_fwd(input: Tensor, offset_mask: Tensor, *params) -> Tensor:
    g = Geometry(*params)
    return launch_fwd(input, *views(offset_mask.contiguous(), g), g)


def dcnv4_bwd(grad_out: Tensor, input: Tensor, offset_mask: Tensor, *params_and_mask
              ) -> Tuple[Tensor, Tensor]:
    *params, (need_in, need_om) = params_and_mask
    if input.dtype == torch.float64:
        return torch_kernels.dcnv4_bwd(grad_out, input, offset_mask, *params_and_mask)
    g = Geometry(*params)
    om = offset_mask.contiguous()
    # Zeroed: the kernels never write the padding columns, whose gradient is 0.
    g_om = torch.zeros_like(om) if need_om else None
    g_in = launch_bwd(grad_out, input, *views(om, g), g, need_in, need_om,
                      *(views(g_om, g) if need_om else (None, None)))
    empty = input.new_empty(0)
    return g_in if need_in else empty, g_om if need_om else empty
