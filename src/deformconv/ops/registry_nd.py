"""The registered operators ``deformconv::deform_conv1d``/``deform_conv3d`` and their backward.

The N-D counterparts of ``registry.py``, defined once for each dimensionality by
:func:`_define`: ``torch.library`` custom ops with fake (shape) implementations, registered
autograd (explicit backward; double backward raises), a float32 autocast rule on CPU and CUDA
(the 2-D op's policy, see ``autocast.py``) and kernels chosen by ``dispatch`` (Triton on
CUDA, else pure PyTorch).
``stride``, ``padding`` and ``dilation`` are lists of ``R`` ints. Arguments are assumed valid:
the public functions check them.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import dispatch, geometry, torch_impl_nd
from .autocast import AUTOCAST_DTYPE, DEVICE_TYPES
from .registration import forbid_double_backward

_Grads = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def _run(direction: str, fn: str, R: int, *args):
    """``fn`` on the kernels ``dispatch`` chooses (Triton ``nd_launch`` or ``torch_impl_nd``)."""
    input = args[1] if direction == "backward" else args[0]
    return dispatch.run(f"deform_conv{R}d", direction, fn, torch_impl_nd, "triton.nd_launch",
                        input.device, input.dtype, *args)


def _define(R: int):
    """Define, register and return the forward and backward ops for ``R`` dimensions."""
    name = f"deform_conv{R}d"

    def forward(input: Tensor, weight: Tensor, offset: Tensor, mask: Optional[Tensor],
                bias: Optional[Tensor], stride: List[int], padding: List[int],
                dilation: List[int]) -> Tensor:
        return torch_impl_nd.deform_conv_nd_fwd(input, weight, offset, mask, bias, stride,
                                                padding, dilation)

    fwd = torch.library.custom_op(f"deformconv::{name}", forward, mutates_args=())

    @fwd.register_fake
    def _(input, weight, offset, mask, bias, stride, padding, dilation):
        out = geometry.out_size(input.shape[2:], weight.shape[2:], stride, padding, dilation)
        return input.new_empty(input.shape[0], weight.shape[0], *out)

    def backward(grad_out: Tensor, input: Tensor, weight: Tensor, offset: Tensor,
                 mask: Optional[Tensor], bias: Optional[Tensor], stride: List[int],
                 padding: List[int], dilation: List[int], output_mask: List[bool]) -> _Grads:
        grads = torch_impl_nd.deform_conv_nd_bwd(grad_out, input, weight, offset, mask, bias,
                                                 stride, padding, dilation, output_mask)
        # The fake implementation promises contiguous gradients (inductor checks strides).
        return tuple(g.contiguous() for g in grads)

    bwd = torch.library.custom_op(f"deformconv::{name}_backward", backward, mutates_args=())

    @bwd.register_fake
    def _(grad_out, input, weight, offset, mask, bias, stride, padding, dilation, output_mask):
        need_in, need_w, need_om, need_b = output_mask

        def like(t, needed):
            return t.new_empty(t.shape) if needed and t is not None else input.new_empty(0)

        return (like(input, need_in), like(weight, need_w), like(offset, need_om),
                like(mask, need_om), like(bias, need_b))

    def setup_context(ctx, inputs, output):
        input, weight, offset, mask, bias, *params = inputs
        ctx.save_for_backward(input, weight, offset, mask, bias)
        ctx.params = params

    def grad(ctx, grad_out):
        saved = ctx.saved_tensors
        want = [n and t is not None for n, t in zip(ctx.needs_input_grad[:5], saved)]
        output_mask = [want[0], want[1], want[2] or want[3], want[4]]
        grads = bwd(grad_out.contiguous(), *saved, *ctx.params, output_mask)
        return tuple(g if w else None for g, w in zip(grads, want)) + (None,) * 3

    fwd.register_autograd(grad, setup_context=setup_context)

    forbid_double_backward(bwd, name)

    @fwd.register_kernel(("cpu", "cuda"))
    def _(input, weight, offset, mask, bias, stride, padding, dilation):
        return _run("forward", "deform_conv_nd_fwd", R, input, weight, offset, mask, bias,
                    stride, padding, dilation)

    @bwd.register_kernel(("cpu", "cuda"))
    def _(grad_out, input, weight, offset, mask, bias, stride, padding, dilation, output_mask):
        return tuple(g.contiguous() for g in _run(
            "backward", "deform_conv_nd_bwd", R, grad_out, input, weight, offset, mask, bias,
            stride, padding, dilation, output_mask))

    for device_type in DEVICE_TYPES:
        torch.library.register_autocast(fwd, device_type, AUTOCAST_DTYPE)
    return fwd, bwd


deform_conv1d_op, deform_conv1d_backward_op = _define(1)
deform_conv3d_op, deform_conv3d_backward_op = _define(3)
OPS = {1: deform_conv1d_op, 3: deform_conv3d_op}
