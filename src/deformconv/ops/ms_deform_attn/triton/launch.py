"""Launchers of the multi-scale deformable attention Triton kernels: layouts, allocation, grids.

``ms_deform_attn_fwd`` and ``ms_deform_attn_bwd`` have the signatures and returns of their
namesakes in ``torch_kernels`` and assume validated arguments. They run on CUDA tensors, and on
CPU tensors when the kernels were compiled by Triton's interpreter (``TRITON_INTERPRET=1`` set
before Triton is imported), which is how the tests run them without a GPU.

Dtypes: float16/bfloat16/float32 compute in float32 (mixed value / location dtypes, as the
autocast rule passes them, included); float64 goes to ``torch_kernels``.
Determinism: the forward and the location and attention-weight gradients are deterministic
(each written once); the value gradient uses atomics, so under
``torch.use_deterministic_algorithms(True)`` it comes from ``torch_kernels`` (a stably sorted
gather) instead.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor

import triton

from ... import dispatch
from ...triton import spec
from .. import torch_kernels
from . import kernels

# Blocks on CPU tensors (the interpreter): small query tiles, so tiny test shapes still run
# several tiles. Tests may change it.
INTERPRETER_BLOCK_Q = 4
INT32_MAX = 2 ** 31 - 1


def empty(shape, dtype, device) -> Tensor:
    """Allocation of buffers the kernels write completely (tests fill them with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _float64(*tensors: Tensor) -> bool:
    return any(t.dtype == torch.float64 for t in tensors)


def _launch_args(role, value, spatial_shapes, level_start_index, sampling_locations,
                 attention_weights):
    N, S, M, D = value.shape
    Q, _, L, P = sampling_locations.shape[1:5]
    if value.is_cuda:
        blocks = kernels.gpu_config(D, role)
        extra = dict(num_warps=blocks.pop("num_warps"))
    else:
        blocks = dict(BLOCK_Q=INTERPRETER_BLOCK_Q, BLOCK_D=triton.next_power_of_2(max(1, D)))
        extra = {}
    index_64 = max(N * S * M * D, N * Q * M * L * P * 2, N * Q * M * D) > INT32_MAX
    grid = (triton.cdiv(Q, blocks["BLOCK_Q"]), N, M)
    tensors = dict(value_ptr=value.contiguous(), shapes_ptr=spatial_shapes.contiguous(),
                   starts_ptr=level_start_index.contiguous(),
                   loc_ptr=sampling_locations.contiguous(),
                   att_ptr=attention_weights.contiguous())
    consts = dict(Q=Q, S=S, M=M, D=D, L=L, P=P, INDEX_64=index_64, **blocks, **extra)
    return grid, tensors, consts


def ms_deform_attn_fwd(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                       sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Forward, see ``torch_kernels.ms_deform_attn_fwd``."""
    args = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if _float64(value, sampling_locations, attention_weights):
        return torch_kernels.ms_deform_attn_fwd(*args)
    N, _, M, D = value.shape
    Q, _, L, P = sampling_locations.shape[1:5]
    if N * Q * M * D == 0 or L * P == 0:
        return torch.zeros(N, Q, M * D, dtype=value.dtype, device=value.device)
    out = empty((N, Q, M * D), value.dtype, value.device)
    grid, tensors, consts = _launch_args("fwd", *args)
    with spec.on_device(value):
        kernels._ms_deform_attn_fwd_kernel[grid](out_ptr=out, **tensors, **consts)
    return out


def ms_deform_attn_bwd(grad_out: Tensor, value: Tensor, spatial_shapes: Tensor,
                       level_start_index: Tensor, sampling_locations: Tensor,
                       attention_weights: Tensor, output_mask: Sequence[bool]
                       ) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of (value, sampling_locations, attention_weights), see
    ``torch_kernels.ms_deform_attn_bwd``."""
    args = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if _float64(grad_out, value, sampling_locations, attention_weights):
        return torch_kernels.ms_deform_attn_bwd(grad_out, *args, output_mask)
    need_v, need_loc, need_att = output_mask
    dev = value.device
    gv_det = None
    if need_v and dispatch.deterministic():
        gv_det = torch_kernels.ms_deform_attn_bwd(grad_out, *args, [True, False, False])[0]
        need_v = False
    N, S, M, D = value.shape
    Q, _, L, P = sampling_locations.shape[1:5]
    need_pos = need_loc or need_att
    g_val = torch.zeros(value.shape, dtype=torch.float32, device=dev) if need_v else None
    g_loc = empty(sampling_locations.shape, torch.float32, dev) if need_pos else None
    g_att = empty(attention_weights.shape, torch.float32, dev) if need_pos else None
    work = N * Q * M * L * P > 0 and D > 0
    if not work and need_pos:
        g_loc.zero_()
        g_att.zero_()
    if work and (need_v or need_pos):
        grid, tensors, consts = _launch_args("bwd", *args)
        dummy = tensors["value_ptr"]
        with spec.on_device(value):
            kernels._ms_deform_attn_bwd_kernel[grid](
                gout_ptr=grad_out.contiguous(), gval_ptr=g_val if need_v else dummy,
                gloc_ptr=g_loc if need_pos else dummy, gatt_ptr=g_att if need_pos else dummy,
                NEED_VALUE=need_v, NEED_LOC=need_pos, **tensors, **consts)
    empty_t = value.new_empty(0)
    if gv_det is not None:
        gv = gv_det
    else:
        gv = g_val.to(value.dtype) if need_v else empty_t
    gl = g_loc.to(sampling_locations.dtype) if need_loc else empty_t
    ga = g_att.to(attention_weights.dtype) if need_att else empty_t
    return gv, gl, ga
