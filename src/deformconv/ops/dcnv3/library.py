"""The registered operators ``deformconv::dcnv3`` and ``deformconv::dcnv3_backward``.

``torch.library`` custom ops with fake (shape) implementations, registered autograd (explicit
backward; double backward raises), the autocast rule below, and kernels chosen by
``dispatch.run`` (Triton ``dcnv3.triton.launch`` on CUDA, else ``torch_kernels``). Arguments
are assumed valid: the public function checks them.

**Autocast** (CPU and CUDA): under ``torch.autocast(device, dtype=D)`` a float16/bfloat16/float32
input is cast to ``D`` and the offsets and the mask to float32, so sampling positions keep full
precision (an offset rounded to bfloat16 would move a sample at x = 200 by up to 0.4 pixel)
while the sampled values travel in ``D``; the output has dtype ``D`` and accumulation is float32
in every kernel. float64 arguments are never cast.
"""

from __future__ import annotations

import importlib
from typing import List, Tuple

import torch
from torch import Tensor

from .. import dispatch
from ..checks import AUTOCAST_DEVICE_TYPES
from ..registration import forbid_double_backward
from . import torch_kernels

_LOW = (torch.float16, torch.bfloat16, torch.float32)


def run(op: str, direction: str, fn: str, torch_module, triton_module: str, input: Tensor,
        *args):
    """``fn(*args)`` on the kernels ``dispatch`` chooses for data like ``input``."""
    return dispatch.run(op, direction, fn, torch_module, triton_module, input.device,
                        input.dtype, *args)


# The scalar arguments after the tensors, in InternImage's order (schema types).
PARAMS = ("int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w, "
          "int dilation_h, int dilation_w, int group, int group_channels, float offset_scale, "
          "bool remove_center")


def define(name: str, tensors: Tuple[str, ...], torch_module, triton_module: str):
    """Define and register ``deformconv::<name>`` and ``deformconv::<name>_backward``.

    The forward takes ``tensors`` (the input first, channels last, then its per-position
    tensors) and ``PARAMS``, checks them with ``deformconv.ops.<name>.functional.check_call``
    and returns (N, oH, oW, C) with oH, oW from the second tensor.
    The backward takes the output gradient, the same arguments and ``output_mask`` = [input,
    the per-position tensors] and returns one gradient per tensor (empty when not asked for).
    Kernels: ``<name>_fwd``/``<name>_bwd`` of ``torch_module`` or of the Triton launcher
    module ``triton_module``. Returns (forward op, backward op).
    """
    args = ", ".join(f"Tensor {t}" for t in tensors)
    grads = ", ".join("Tensor" for _ in tensors)

    def forward(*a):
        # A direct torch.ops.deformconv call gets the public function's clear errors too. The
        # autocast rule's mixed dtypes (positions in float32) are the op's to accept: checked
        # as stand-ins of the input's dtype (same shapes and devices, one element each).
        k = len(tensors)
        ts = a[:k]
        if {t.dtype for t in ts} <= set(_LOW) and len({t.dtype for t in ts}) > 1:
            ts = [torch.empty_strided(t.shape, (0,) * t.dim(), dtype=a[0].dtype,
                                      device=t.device) for t in ts]
        importlib.import_module(f"{__package__.rsplit('.', 1)[0]}.{name}.functional"
                                ).check_call(*ts, *a[k:])
        return run(name, "forward", f"{name}_fwd", torch_module, triton_module, a[0], *a)

    fwd = torch.library.custom_op(f"deformconv::{name}", forward, mutates_args=(),
                                  schema=f"({args}, {PARAMS}) -> Tensor")

    @fwd.register_fake
    def _(input, per_position, *rest):
        return input.new_empty(input.shape[0], per_position.shape[1], per_position.shape[2],
                               input.shape[3])

    def backward(grad_out, *a):
        out = run(name, "backward", f"{name}_bwd", torch_module, triton_module, a[0],
                  grad_out, *a)
        return tuple(g.contiguous() for g in out)

    bwd = torch.library.custom_op(
        f"deformconv::{name}_backward", backward, mutates_args=(),
        schema=f"(Tensor grad_out, {args}, {PARAMS}, bool[] output_mask) -> ({grads})")

    @bwd.register_fake
    def _(grad_out, *a):
        need_in, need_rest = a[-1]
        needs = (need_in,) + (need_rest,) * (len(tensors) - 1)
        return tuple(t.new_empty(t.shape) if need else a[0].new_empty(0)
                     for t, need in zip(a[:len(tensors)], needs))

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:len(tensors)])
        ctx.params = inputs[len(tensors):]

    def grad(ctx, grad_out):
        n = ctx.needs_input_grad[:len(tensors)]
        out = bwd(grad_out.contiguous(), *ctx.saved_tensors, *ctx.params,
                  [n[0], any(n[1:])])
        return (*(g if need else None for g, need in zip(out, n)), *(None,) * len(ctx.params))

    fwd.register_autograd(grad, setup_context=setup_context)
    forbid_double_backward(bwd, name)
    register_autocast(name, len(tensors) - 1)
    return fwd, bwd


def autocast_cast(input: Tensor, *position_tensors: Tensor, device_type: str):
    """The autocast rule: input in the autocast dtype, offsets/mask float32; float64 kept."""
    if input.dtype == torch.float64:
        return (input, *position_tensors)
    dtype = torch.get_autocast_dtype(device_type)
    return (input.to(dtype) if input.dtype in _LOW else input,
            *(t.float() if t.dtype in _LOW else t for t in position_tensors))


def register_autocast(op_name: str, n_position_tensors: int) -> None:
    """Register the rule above for ``deformconv::<op_name>`` on every autocast device type:
    the op's first tensor is the input, the next ``n_position_tensors`` are cast to float32."""
    lib = torch.library.Library("deformconv", "IMPL")
    _LIBS.append(lib)
    op = getattr(torch.ops.deformconv, op_name).default
    for device_type in AUTOCAST_DEVICE_TYPES:
        key = "Autocast" + device_type.upper()

        def rule(keyset, input, *args, _device_type=device_type, _key=key):
            tensors = autocast_cast(input, *args[:n_position_tensors],
                                    device_type=_device_type)
            with torch._C._ExcludeDispatchKeyGuard(
                    torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, _key))):
                return op(*tensors, *args[n_position_tensors:])

        lib.impl(op_name, rule, key, with_keyset=True)


_LIBS: List[torch.library.Library] = []  # kept alive: a dropped Library unregisters its impls
dcnv3_op, dcnv3_backward_op = define("dcnv3", ("input", "offset", "mask"), torch_kernels,
                                     "dcnv3.triton.launch")
