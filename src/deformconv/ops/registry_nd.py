"""The registered operators ``deformconv::deform_conv1d``/``deform_conv3d`` and their backward.

The N-D counterparts of ``registry.py``, defined once for each dimensionality by
:func:`_define`: ``torch.library`` custom ops with fake (shape) implementations, registered
autograd (explicit backward; double backward raises), a float32 autocast rule on CPU and CUDA
(the 2-D op's policy, see ``autocast.py``) and a CUDA kernel chosen by :func:`cuda_backend`.
``stride``, ``padding`` and ``dilation`` are lists of ``R`` ints. Arguments are assumed valid:
the public functions check them.
"""

from __future__ import annotations

import warnings
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import geometry, torch_impl_nd
from .autocast import AUTOCAST_DTYPE, DEVICE_TYPES

_Grads = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


_backend = None  # the CUDA kernel module, chosen on the first CUDA call


def cuda_backend():
    """The module whose ``deform_conv_nd_fwd``/``deform_conv_nd_bwd`` serve CUDA tensors:
    ``deformconv.ops.triton.nd_launch`` when ``triton`` imports, else ``torch_impl_nd``."""
    global _backend
    if _backend is None:
        try:
            from .triton import nd_launch as _backend
        except ImportError:
            _backend = torch_impl_nd
    return _backend


def _on_cuda(name: str, *args):
    """Run ``name`` of the CUDA backend; when a Triton kernel fails, warn and use PyTorch from
    then on (a compiler or driver problem should cost speed, not the run)."""
    global _backend
    backend = cuda_backend()
    if backend is not torch_impl_nd:
        try:
            return getattr(backend, name)(*args)
        except Exception as e:  # noqa: BLE001 - any kernel failure falls back
            warnings.warn(f"deformconv: the Triton N-D kernel failed ({type(e).__name__}: "
                          f"{e}); using the pure-PyTorch kernel", RuntimeWarning, stacklevel=3)
            _backend = torch_impl_nd
    return getattr(torch_impl_nd, name)(*args)


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

    def no_double_backward(ctx, *grads):
        raise RuntimeError(
            f"{name} supports first-order gradients only: double backward (create_graph=True "
            f"through the backward, e.g. gradient penalties) is not implemented")

    bwd.register_autograd(no_double_backward, setup_context=lambda ctx, inputs, output: None)

    @fwd.register_kernel("cuda")
    def _(input, weight, offset, mask, bias, stride, padding, dilation):
        return _on_cuda("deform_conv_nd_fwd", input, weight, offset, mask, bias, stride,
                        padding, dilation)

    @bwd.register_kernel("cuda")
    def _(grad_out, input, weight, offset, mask, bias, stride, padding, dilation, output_mask):
        return tuple(g.contiguous() for g in _on_cuda(
            "deform_conv_nd_bwd", grad_out, input, weight, offset, mask, bias, stride, padding,
            dilation, output_mask))

    for device_type in DEVICE_TYPES:
        torch.library.register_autocast(fwd, device_type, AUTOCAST_DTYPE)
    return fwd, bwd


deform_conv1d_op, deform_conv1d_backward_op = _define(1)
deform_conv3d_op, deform_conv3d_backward_op = _define(3)
OPS = {1: deform_conv1d_op, 3: deform_conv3d_op}
