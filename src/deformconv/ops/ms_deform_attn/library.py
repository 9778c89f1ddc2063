"""The registered operators ``deformconv::ms_deform_attn`` and ``ms_deform_attn_backward``.

``torch.library`` custom ops with fake (shape) implementations, so ``torch.compile(fullgraph=
True)`` traces them without graph breaks and ``torch.export`` keeps the forward as one node
(the output's shape depends on no value of ``spatial_shapes``, so N and Q stay dynamic).
Registered autograd with an explicit backward; double backward raises. Kernels on CPU and CUDA
are chosen by ``dispatch`` (Triton on CUDA when it imports, else ``torch_kernels``).

Autocast, on CPU and CUDA alike: ``value`` is cast to the autocast dtype and the sampling
locations and attention weights to float32 (the 2-D convolution's rule for its offsets and
mask: a location rounded to bfloat16 would move a sample on a 134-pixel level by up to a quarter
of a pixel); the output has the autocast dtype. Kernels compute in float32. float64 arguments
are never cast.

Arguments are assumed valid: the public function checks them, and the kernels below check
them again for a direct ``torch.ops.deformconv`` call.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from .. import dispatch
from ..registration import forbid_double_backward
from . import torch_kernels

NAME = "ms_deform_attn"
TRITON_MODULE = "ms_deform_attn.triton.launch"
AUTOCAST_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}


@torch.library.custom_op("deformconv::ms_deform_attn", mutates_args=())
def ms_deform_attn_op(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                      sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    return torch_kernels.ms_deform_attn_fwd(value, spatial_shapes, level_start_index,
                                            sampling_locations, attention_weights)


@ms_deform_attn_op.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    N, Q = sampling_locations.shape[:2]
    return value.new_empty(N, Q, value.shape[2] * value.shape[3])


@torch.library.custom_op("deformconv::ms_deform_attn_backward", mutates_args=())
def ms_deform_attn_backward_op(grad_out: Tensor, value: Tensor, spatial_shapes: Tensor,
                               level_start_index: Tensor, sampling_locations: Tensor,
                               attention_weights: Tensor,
                               output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    grads = torch_kernels.ms_deform_attn_bwd(grad_out, value, spatial_shapes, level_start_index,
                                             sampling_locations, attention_weights, output_mask)
    return tuple(g.contiguous() for g in grads)


@ms_deform_attn_backward_op.register_fake
def _(grad_out, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
      output_mask):
    return tuple(t.new_empty(t.shape) if need else t.new_empty(0)
                 for t, need in zip((value, sampling_locations, attention_weights), output_mask))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_out):
    value, shapes, starts, loc, att = ctx.saved_tensors
    n = ctx.needs_input_grad
    want = [n[0], n[3], n[4]]
    gv, gl, ga = ms_deform_attn_backward_op(grad_out.contiguous(), value, shapes, starts, loc,
                                            att, want)
    return (gv if want[0] else None, None, None, gl if want[1] else None,
            ga if want[2] else None)


ms_deform_attn_op.register_autograd(_backward, setup_context=_setup_context)
forbid_double_backward(ms_deform_attn_backward_op, NAME)


def _run(direction: str, fn: str, value: Tensor, *args):
    return dispatch.run(NAME, direction, fn, torch_kernels, TRITON_MODULE, value.device,
                        value.dtype, *args)


def _check(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    from .functional import check_ms_deform_attn  # noqa: PLC0415 (functional imports us)

    check_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                         attention_weights, mixed=True)


@ms_deform_attn_op.register_kernel(("cpu", "cuda"))
def _ms_deform_attn_kernel(value, spatial_shapes, level_start_index, sampling_locations,
                           attention_weights):
    _check(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    return _run("forward", "ms_deform_attn_fwd", value, value, spatial_shapes,
                level_start_index, sampling_locations, attention_weights).contiguous()


@ms_deform_attn_backward_op.register_kernel(("cpu", "cuda"))
def _ms_deform_attn_backward_kernel(grad_out, value, spatial_shapes, level_start_index,
                                    sampling_locations, attention_weights, output_mask):
    grads = _run("backward", "ms_deform_attn_bwd", value, grad_out, value, spatial_shapes,
                 level_start_index, sampling_locations, attention_weights, output_mask)
    return tuple(g.contiguous() for g in grads)


def autocast_cast(value: Tensor, sampling_locations: Tensor, attention_weights: Tensor,
                  dtype: torch.dtype):
    """The arguments as the autocast rule casts them for autocast dtype ``dtype``."""
    if value.dtype == torch.float64:
        return value, sampling_locations, attention_weights
    low = (torch.float16, torch.bfloat16, torch.float32)

    def to(t, d):
        return t.to(d) if t.dtype in low else t

    return (to(value, dtype), to(sampling_locations, torch.float32),
            to(attention_weights, torch.float32))


def _autocast_rule(device_type: str):
    key = getattr(torch._C.DispatchKey, AUTOCAST_KEYS[device_type])

    def rule(keyset, value, spatial_shapes, level_start_index, sampling_locations,
             attention_weights):
        v, loc, att = autocast_cast(value, sampling_locations, attention_weights,
                                    torch.get_autocast_dtype(device_type))
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return ms_deform_attn_op._opoverload(v, spatial_shapes, level_start_index, loc,
                                                 att)
    return rule


_lib = torch.library.Library("deformconv", "IMPL")
for _device_type, _key in AUTOCAST_KEYS.items():
    _lib.impl(NAME, _autocast_rule(_device_type), _key, with_keyset=True)
