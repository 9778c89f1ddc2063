"""The registered operators ``deformconv::deform_roi_pool`` and its backward.

``torch.library`` custom ops with fake (shape) implementations and registered autograd, so
``torch.compile(fullgraph=True)`` traces them without graph breaks and ``torch.export`` keeps
the forward as one node. The default kernel is the pure-PyTorch one (any device); on CPU and
CUDA ``dispatch`` chooses (Triton on CUDA when it imports, else pure PyTorch). Autocast runs
the op in float32.
Arguments are assumed valid: the public function checks them.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import dispatch, roi_pool_torch
from .registration import forbid_double_backward

AUTOCAST_DTYPE = torch.float32
AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")


@torch.library.custom_op("deformconv::deform_roi_pool", mutates_args=())
def deform_roi_pool_op(input: Tensor, rois: Tensor, offset: Optional[Tensor], pooled_h: int,
                       pooled_w: int, spatial_scale: float, sampling_ratio: int,
                       gamma: float) -> Tensor:
    return roi_pool_torch.deform_roi_pool_fwd(input, rois, offset, pooled_h, pooled_w,
                                              spatial_scale, sampling_ratio, gamma)


@deform_roi_pool_op.register_fake
def _(input, rois, offset, pooled_h, pooled_w, spatial_scale, sampling_ratio, gamma):
    return input.new_empty(rois.shape[0], input.shape[1], pooled_h, pooled_w)


@torch.library.custom_op("deformconv::deform_roi_pool_backward", mutates_args=())
def deform_roi_pool_backward_op(grad_out: Tensor, input: Tensor, rois: Tensor,
                                offset: Optional[Tensor], pooled_h: int, pooled_w: int,
                                spatial_scale: float, sampling_ratio: int, gamma: float,
                                need_input: bool, need_offset: bool) -> Tuple[Tensor, Tensor]:
    gi, go = roi_pool_torch.deform_roi_pool_bwd(grad_out, input, rois, offset, pooled_h,
                                                pooled_w, spatial_scale, sampling_ratio, gamma,
                                                need_input, need_offset)
    return gi.contiguous(), go.contiguous()


@deform_roi_pool_backward_op.register_fake
def _(grad_out, input, rois, offset, pooled_h, pooled_w, spatial_scale, sampling_ratio, gamma,
      need_input, need_offset):
    gi = input.new_empty(input.shape) if need_input else input.new_empty(0)
    go = (input.new_empty(offset.shape) if need_offset and offset is not None
          else input.new_empty(0))
    return gi, go


def _setup_context(ctx, inputs, output):
    input, rois, offset, *params = inputs
    ctx.save_for_backward(input, rois, offset)
    ctx.params = params


def _backward(ctx, grad_out):
    input, rois, offset = ctx.saved_tensors
    n = ctx.needs_input_grad
    need_offset = offset is not None and n[2]
    gi, go = deform_roi_pool_backward_op(grad_out.contiguous(), input, rois, offset,
                                         *ctx.params, n[0], need_offset)
    return (gi if n[0] else None, None, go if need_offset else None,
            None, None, None, None, None)


deform_roi_pool_op.register_autograd(_backward, setup_context=_setup_context)


forbid_double_backward(deform_roi_pool_backward_op, "deform_roi_pool")

for _device_type in AUTOCAST_DEVICE_TYPES:
    torch.library.register_autocast(deform_roi_pool_op, _device_type, AUTOCAST_DTYPE)


def _run(direction: str, fn: str, input: Tensor, *args):
    """``fn`` on the kernels ``dispatch`` chooses (Triton ``roi_pool_launch`` or
    ``roi_pool_torch``)."""
    return dispatch.run("deform_roi_pool", direction, fn, roi_pool_torch,
                        "triton.roi_pool_launch",
                        input.device, input.dtype, *args)


@deform_roi_pool_op.register_kernel(("cpu", "cuda"))
def _deform_roi_pool_cuda(input: Tensor, rois: Tensor, offset: Optional[Tensor], pooled_h: int,
                          pooled_w: int, spatial_scale: float, sampling_ratio: int,
                          gamma: float) -> Tensor:
    return _run("forward", "deform_roi_pool_fwd", input, input, rois, offset, pooled_h,
                pooled_w, spatial_scale, sampling_ratio, gamma)


@deform_roi_pool_backward_op.register_kernel(("cpu", "cuda"))
def _deform_roi_pool_backward_cuda(grad_out: Tensor, input: Tensor, rois: Tensor,
                                   offset: Optional[Tensor], pooled_h: int, pooled_w: int,
                                   spatial_scale: float, sampling_ratio: int, gamma: float,
                                   need_input: bool, need_offset: bool):
    gi, go = _run("backward", "deform_roi_pool_bwd", input, grad_out, input, rois, offset,
                  pooled_h, pooled_w, spatial_scale, sampling_ratio, gamma, need_input,
                  need_offset)
    return gi.contiguous(), go.contiguous()
