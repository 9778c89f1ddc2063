"""Launchers of the deformable RoI pooling Triton kernels: layouts, allocation, grids.

``deform_roi_pool_fwd`` and ``deform_roi_pool_bwd`` have the signatures and returns of their
namesakes in ``roi_pool_torch`` and assume validated arguments. They run on CUDA tensors, and
on CPU tensors when the kernels were compiled by the Triton interpreter (``TRITON_INTERPRET=1``
set before Triton is imported), which is how the tests run them without a GPU.

Dtypes: float16/bfloat16/float32 compute in float32 (``dispatch`` sends float64 to
``roi_pool_torch``). Determinism: the forward and the offset gradient are deterministic
(per-channel-block partial sums added here); the input gradient uses atomics
(``NONDETERMINISTIC``: under ``torch.use_deterministic_algorithms(True)`` ``dispatch`` runs the
backward on ``roi_pool_torch``).

The channel blocks and warps used on a GPU (``GPU_BLOCKS_C``, ``num_warps``) live beside the
kernels, whose ``KERNEL_SPECS`` the offline register/spill report compiles.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

import triton

from ...triton import spec
from . import kernels
from .kernels import GPU_BLOCKS_C, num_warps

# Block sizes on CPU tensors (the interpreter): small, so tiny test shapes still run several
# channel blocks. Tests may change them.
INTERPRETER_BLOCKS = {"roi_pool": dict(BLOCK_C=4)}
# Functions whose results depend on the order of atomic additions (see dispatch).
NONDETERMINISTIC = ("deform_roi_pool_bwd",)


def _index_64(N: int, C: int, H: int, W: int, R: int, ph: int, pw: int) -> bool:
    """The one rule (``spec.index_64``) on the element counts the kernels address."""
    return spec.index_64(N * H * W * C, R * C * ph * pw, R * 2 * ph * pw * max(1, C))


def _new(shape, like: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    return spec.empty(shape, dtype or like.dtype, like.device)


def _common(input: Tensor, rois: Tensor, offset: Optional[Tensor], ph: int, pw: int):
    N, C, H, W = input.shape
    R = rois.shape[0]
    x = input.permute(0, 2, 3, 1).contiguous()
    r = rois.contiguous()
    off = offset.contiguous() if offset is not None else r
    bc = (max(GPU_BLOCKS_C[0], min(GPU_BLOCKS_C[-1], triton.next_power_of_2(C)))
          if input.is_cuda else INTERPRETER_BLOCKS["roi_pool"]["BLOCK_C"])
    grid = (R * ph * pw, triton.cdiv(C, bc))
    consts = dict(PH=ph, PW=pw, HAS_OFFSET=offset is not None,
                  INDEX_64=_index_64(N, C, H, W, R, ph, pw), BLOCK_C=bc)
    if input.is_cuda:
        consts["num_warps"] = num_warps(bc)
    return x, r, off, grid, consts


def deform_roi_pool_fwd(input: Tensor, rois: Tensor, offset: Optional[Tensor], ph: int,
                        pw: int, spatial_scale: float, sampling_ratio: int,
                        gamma: float) -> Tensor:
    """Forward, see ``roi_pool_torch.deform_roi_pool_fwd``."""
    N, C, H, W = input.shape
    R = rois.shape[0]
    out = _new((R, C, ph, pw), input)
    if out.numel() == 0:
        return out
    x, r, off, grid, consts = _common(input, rois, offset, ph, pw)
    with spec.on_device(input):
        kernels._deform_roi_pool_fwd_kernel[grid](
            x_ptr=x, rois_ptr=r, off_ptr=off, out_ptr=out, N=N, C=C, H=H, W=W,
            spatial_scale=float(spatial_scale), gamma=float(gamma),
            sampling_ratio=int(sampling_ratio), **consts)
    return out


def deform_roi_pool_bwd(grad_out: Tensor, input: Tensor, rois: Tensor, offset: Optional[Tensor],
                        ph: int, pw: int, spatial_scale: float, sampling_ratio: int,
                        gamma: float, need_input: bool,
                        need_offset: bool) -> Tuple[Tensor, Tensor]:
    """(grad_input, grad_offset), see ``roi_pool_torch.deform_roi_pool_bwd``."""
    need_offset = need_offset and offset is not None
    N, C, H, W = input.shape
    R = rois.shape[0]
    dt = input.dtype
    empty = input.new_empty(0)
    g_in = (torch.zeros((N, H, W, C), dtype=torch.float32, device=input.device)
            if need_input else None)
    g_off = None
    if (need_input or need_offset) and R * C > 0:
        x, r, off, grid, consts = _common(input, rois, offset, ph, pw)
        partial = (_new((grid[1], R, 2, ph, pw), input, torch.float32) if need_offset
                   else empty)
        with spec.on_device(input):
            kernels._deform_roi_pool_bwd_kernel[grid](
                x_ptr=x, rois_ptr=r, off_ptr=off, go_ptr=grad_out.contiguous(),
                gin_ptr=g_in if need_input else x, goff_ptr=partial if need_offset else x,
                N=N, C=C, H=H, W=W, R=R, spatial_scale=float(spatial_scale),
                gamma=float(gamma), sampling_ratio=int(sampling_ratio),
                NEED_INPUT=need_input, NEED_OFFSET=need_offset, **consts)
        if need_offset:
            g_off = partial.sum(0).to(dt)
    if need_offset and g_off is None:
        g_off = torch.zeros(offset.shape, dtype=dt, device=input.device)
    gi = g_in.permute(0, 3, 1, 2).to(dt).contiguous() if need_input else empty
    return gi, (g_off if need_offset else empty)
