"""The registered operators ``deformconv::deform_roi_pool`` and its backward.

``torch.library`` custom ops with fake (shape) implementations and registered autograd, so
``torch.compile(fullgraph=True)`` traces them without graph breaks and ``torch.export`` keeps
the forward as one node. ``dispatch`` chooses the kernel on every device (Triton on CUDA when
it imports, else pure PyTorch). Autocast runs the op in float32.
A direct ``torch.ops.deformconv.deform_roi_pool`` call gets the public function's argument
errors too (``check_args``).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import autocast, checks, dispatch
from ..registration import forbid_double_backward
from . import torch_kernels as roi_pool_torch


@torch.library.custom_op("deformconv::deform_roi_pool", mutates_args=())
def deform_roi_pool_op(input: Tensor, rois: Tensor, offset: Optional[Tensor], pooled_h: int,
                       pooled_w: int, spatial_scale: float, sampling_ratio: int,
                       gamma: float) -> Tensor:
    check_args(input, rois, offset, pooled_h, pooled_w)
    return _run("forward", "deform_roi_pool_fwd", input, input, rois, offset, pooled_h,
                pooled_w, spatial_scale, sampling_ratio, gamma)


@deform_roi_pool_op.register_fake
def _(input, rois, offset, pooled_h, pooled_w, spatial_scale, sampling_ratio, gamma):
    return input.new_empty(rois.shape[0], input.shape[1], pooled_h, pooled_w)


@torch.library.custom_op("deformconv::deform_roi_pool_backward", mutates_args=())
def deform_roi_pool_backward_op(grad_out: Tensor, input: Tensor, rois: Tensor,
                                offset: Optional[Tensor], pooled_h: int, pooled_w: int,
                                spatial_scale: float, sampling_ratio: int, gamma: float,
                                need_input: bool, need_offset: bool) -> Tuple[Tensor, Tensor]:
    gi, go = _run("backward", "deform_roi_pool_bwd", input, grad_out, input, rois, offset,
                  pooled_h, pooled_w, spatial_scale, sampling_ratio, gamma, need_input,
                  need_offset)
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

for _device_type in autocast.DEVICE_TYPES:  # float32 (see autocast.py)
    torch.library.register_autocast(deform_roi_pool_op, _device_type, autocast.FLOAT32)


def check_args(input, rois, offset, pooled_h: int, pooled_w: int) -> None:
    """The public function's checks of arguments and shapes, for direct calls of the registered
    op. Not the batch indices' values: the kernels pool a region whose index is out of range,
    or NaN, to 0 without reading out of bounds, which the hostile-input checks exercise."""
    from .functional import check_deform_roi_pool  # noqa: PLC0415 (it imports this module)

    ph, pw = checks.int_tuple("output_size", (pooled_h, pooled_w), 2, 1)
    check_deform_roi_pool(input, rois, offset, ph, pw, values=False)


def _run(direction: str, fn: str, input: Tensor, *args):
    """``fn`` on the kernels ``dispatch`` chooses (Triton ``triton/launch.py`` or
    ``torch_kernels``)."""
    return dispatch.run("deform_roi_pool", direction, fn, roi_pool_torch,
                        "roi_pool.triton.launch",
                        input.device, input.dtype, *args)
