"""The registered operators ``deformconv::deform_conv2d`` and its backward.

Both are ``torch.library`` custom ops with fake (shape) implementations, so ``torch.compile``
traces them without graph breaks and ``torch.export`` keeps the forward as one node. The
default kernel is the pure-PyTorch one (any device); device-specific kernels register on top
(``register_kernel``). The public function checks the arguments; the op's default kernel
and its fake check them again (``check_args``), so a direct ``torch.ops.deformconv`` call gets
the same errors instead of a ZeroDivisionError (the fake checks shapes only when they are
static, so symbolic sizes get no extra guards).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import checks, geometry, torch_impl
from .registration import forbid_double_backward

_Grads = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


@torch.library.custom_op("deformconv::deform_conv2d", mutates_args=())
def deform_conv2d_op(input: Tensor, weight: Tensor, offset: Tensor, mask: Optional[Tensor],
                     bias: Optional[Tensor], stride_h: int, stride_w: int, pad_h: int,
                     pad_w: int, dil_h: int, dil_w: int) -> Tensor:
    check_args(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
    return torch_impl.deform_conv2d_fwd(input, weight, offset, mask, bias, stride_h, stride_w,
                                        pad_h, pad_w, dil_h, dil_w)


def check_args(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h,
               dil_w, shapes: bool = True) -> None:
    """The public function's checks, for direct calls of the registered op."""
    stride = checks.int_tuple("stride", (stride_h, stride_w), 2, 1)
    padding = checks.int_tuple("padding", (pad_h, pad_w), 2, 0)
    dilation = checks.int_tuple("dilation", (dil_h, dil_w), 2, 1)
    if shapes:
        checks.check_deform_conv(input, offset, weight, bias, mask, stride, padding, dilation,
                                 ndim=2)


def _static(*tensors) -> bool:
    return all(isinstance(d, int) for t in tensors if t is not None for d in t.shape)


@deform_conv2d_op.register_fake
def _(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    check_args(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
               shapes=_static(input, weight, offset, mask, bias))
    N, _, *size = input.shape
    O, _, *kernel = weight.shape
    out = geometry.out_size(size, kernel, (stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w))
    return input.new_empty(N, O, *out)


@torch.library.custom_op("deformconv::deform_conv2d_backward", mutates_args=())
def deform_conv2d_backward_op(grad_out: Tensor, input: Tensor, weight: Tensor, offset: Tensor,
                              mask: Optional[Tensor], bias: Optional[Tensor], stride_h: int,
                              stride_w: int, pad_h: int, pad_w: int, dil_h: int, dil_w: int,
                              output_mask: List[bool]) -> _Grads:
    grads = torch_impl.deform_conv2d_bwd(grad_out, input, weight, offset, mask, bias, stride_h,
                                         stride_w, pad_h, pad_w, dil_h, dil_w, output_mask)
    # The fake implementation promises contiguous gradients (inductor checks the strides).
    return tuple(g.contiguous() for g in grads)


@deform_conv2d_backward_op.register_fake
def _(grad_out, input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h,
      dil_w, output_mask):
    need_in, need_w, need_om, need_b = output_mask
    def e():
        return input.new_empty(0)

    return (input.new_empty(input.shape) if need_in else e(),
            weight.new_empty(weight.shape) if need_w else e(),
            offset.new_empty(offset.shape) if need_om else e(),
            mask.new_empty(mask.shape) if need_om and mask is not None else e(),
            input.new_empty(bias.shape) if need_b and bias is not None else e())


def _setup_context(ctx, inputs, output):
    input, weight, offset, mask, bias, *params = inputs
    ctx.save_for_backward(input, weight, offset, mask, bias)
    ctx.params = params


def _backward(ctx, grad_out):
    input, weight, offset, mask, bias = ctx.saved_tensors
    n = ctx.needs_input_grad
    need_om = n[2] or (mask is not None and n[3])
    output_mask = [n[0], n[1], need_om, bias is not None and n[4]]
    gi, gw, go, gm, gb = deform_conv2d_backward_op(grad_out.contiguous(), input, weight, offset,
                                                   mask, bias, *ctx.params, output_mask)
    return (gi if n[0] else None, gw if n[1] else None, go if n[2] else None,
            gm if mask is not None and n[3] else None, gb if output_mask[3] else None,
            None, None, None, None, None, None)


deform_conv2d_op.register_autograd(_backward, setup_context=_setup_context)


forbid_double_backward(deform_conv2d_backward_op, "deform_conv2d")
