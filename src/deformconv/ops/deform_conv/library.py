"""The registered operators ``deformconv::deform_conv{1,2,3}d`` and their backward ops.

Defined once for every dimensionality by :func:`_define`: ``torch.library`` custom ops with
fake (shape) implementations, so ``torch.compile`` traces them without graph breaks and
``torch.export`` keeps the forward as one node; registered autograd (explicit backward; double
backward raises); the autocast rule of ``autocast.py``; kernels chosen by ``dispatch`` on every
device (Triton ``triton/launch.py`` in 2-D, ``triton/launch_nd.py`` in 1-D/3-D, else the
pure-PyTorch ``torch_kernels``).

Schemas: the 1-D/3-D ops take ``stride``, ``padding``, ``dilation`` as lists of ``R`` ints; the
2-D ops keep their first schema, six ints ``stride_h, stride_w, pad_h, pad_w, dil_h, dil_w``,
so programs saved by ``torch.export`` with it still load.

A direct ``torch.ops.deformconv`` call gets the public function's argument errors: the kernels
and the fake check the arguments again (the fake checks shapes only when they are static, so
symbolic sizes get no extra guards).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from .. import autocast, checks, dispatch, geometry
from ..registration import forbid_double_backward
from . import torch_kernels

_TRITON = {1: "deform_conv.triton.launch_nd", 2: "deform_conv.triton.launch",
           3: "deform_conv.triton.launch_nd"}
_SCALARS_2D = "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dil_h, " \
              "SymInt dil_w"
_LISTS = "SymInt[] stride, SymInt[] padding, SymInt[] dilation"
_ARGS = "Tensor input, Tensor weight, Tensor offset, Tensor? mask, Tensor? bias"


def params(R: int, flat: Sequence) -> Tuple[List[int], List[int], List[int]]:
    """``(stride, padding, dilation)`` from an op's trailing arguments: three lists, or in 2-D
    the six ints of its schema."""
    if R == 2:
        sh, sw, ph, pw, dh, dw = flat
        return [sh, sw], [ph, pw], [dh, dw]
    return tuple(list(p) for p in flat)


def op_args(R: int, stride, padding, dilation) -> list:
    """The op's trailing arguments for ``stride``, ``padding``, ``dilation``."""
    if R == 2:
        return [*stride, *padding, *dilation]
    return [list(stride), list(padding), list(dilation)]


def check_args(R: int, input, weight, offset, mask, bias, stride, padding, dilation,
               shapes: bool = True) -> None:
    """The public function's checks, for direct calls of the registered op."""
    stride = checks.int_tuple("stride", tuple(stride), R, 1)
    padding = checks.int_tuple("padding", tuple(padding), R, 0)
    dilation = checks.int_tuple("dilation", tuple(dilation), R, 1)
    if shapes:
        checks.check_deform_conv(input, offset, weight, bias, mask, stride, padding, dilation,
                                 ndim=R)


def _run(R: int, direction: str, fn: str, input: Tensor, *args):
    return dispatch.run(f"deform_conv{R}d", direction, fn, torch_kernels, _TRITON[R],
                        input.device, input.dtype, *args)


def _define(R: int):
    """Define, register and return the forward and backward ops for ``R`` dimensions."""
    name = f"deform_conv{R}d"
    tail = _SCALARS_2D if R == 2 else _LISTS

    def forward(input, weight, offset, mask, bias, *flat):
        stride, padding, dilation = params(R, flat)
        check_args(R, input, weight, offset, mask, bias, stride, padding, dilation)
        return _run(R, "forward", "deform_conv_fwd", input, input, weight, offset, mask, bias,
                    stride, padding, dilation)

    fwd = torch.library.custom_op(f"deformconv::{name}", forward, mutates_args=(),
                                  schema=f"({_ARGS}, {tail}) -> Tensor")

    @fwd.register_fake
    def _(input, weight, offset, mask, bias, *flat):
        stride, padding, dilation = params(R, flat)
        static = all(isinstance(d, int) for t in (input, weight, offset, mask, bias)
                     if t is not None for d in t.shape)
        check_args(R, input, weight, offset, mask, bias, stride, padding, dilation, static)
        out = geometry.out_size(input.shape[2:], weight.shape[2:], stride, padding, dilation)
        return input.new_empty(input.shape[0], weight.shape[0], *out)

    def backward(grad_out, input, weight, offset, mask, bias, *flat_and_mask):
        *flat, output_mask = flat_and_mask
        grads = _run(R, "backward", "deform_conv_bwd", input, grad_out, input, weight, offset,
                     mask, bias, *params(R, flat), output_mask)
        # The fake implementation promises contiguous gradients (inductor checks strides).
        return tuple(g.contiguous() for g in grads)

    bwd = torch.library.custom_op(
        f"deformconv::{name}_backward", backward, mutates_args=(),
        schema=f"(Tensor grad_out, {_ARGS}, {tail}, bool[] output_mask) -> "
               f"(Tensor, Tensor, Tensor, Tensor, Tensor)")

    @bwd.register_fake
    def _(grad_out, input, weight, offset, mask, bias, *flat_and_mask):
        need_in, need_w, need_om, need_b = flat_and_mask[-1]

        def like(t, needed):
            return t.new_empty(t.shape) if needed and t is not None else input.new_empty(0)

        return (like(input, need_in), like(weight, need_w), like(offset, need_om),
                like(mask, need_om), like(bias, need_b))

    def setup_context(ctx, inputs, output):
        input, weight, offset, mask, bias, *flat = inputs
        ctx.save_for_backward(input, weight, offset, mask, bias)
        ctx.flat = flat

    def grad(ctx, grad_out):
        saved = ctx.saved_tensors
        want = [n and t is not None for n, t in zip(ctx.needs_input_grad[:5], saved)]
        output_mask = [want[0], want[1], want[2] or want[3], want[4]]
        grads = bwd(grad_out.contiguous(), *saved, *ctx.flat, output_mask)
        return tuple(g if w else None for g, w in zip(grads, want)) + (None,) * len(ctx.flat)

    fwd.register_autograd(grad, setup_context=setup_context)
    forbid_double_backward(bwd, name)

    autocast.register(fwd, name)
    return fwd, bwd


OPS: Dict[int, object] = {}
BACKWARD_OPS: Dict[int, object] = {}
for _R in (1, 2, 3):
    OPS[_R], BACKWARD_OPS[_R] = _define(_R)
deform_conv2d_op, deform_conv2d_backward_op = OPS[2], BACKWARD_OPS[2]
