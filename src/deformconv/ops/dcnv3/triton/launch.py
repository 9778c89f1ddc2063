"""Launchers of the DCNv3 Triton kernels (``kernels.py``): layouts, allocation, grids.

``dcnv3_fwd``/``dcnv3_bwd`` have the signatures and returns of their namesakes in
``dcnv3.torch_kernels`` and assume validated arguments; ``launch_fwd``/``launch_bwd`` take
the offsets and the mask as strided views, which ``dcnv4``'s launchers use on the fused tensor.
They run on CUDA tensors, and on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``
set before Triton is imported), which is how the tests run them.

float16/bfloat16/float32 run here with float32 accumulation (float64 goes to the pure-PyTorch
path). The forward and the offset/mask gradients are deterministic; the input gradient
scatters with atomics, and under ``torch.use_deterministic_algorithms(True)`` comes from
``torch_kernels`` instead.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

import triton

from ... import dispatch
from ...triton import spec
from .. import torch_kernels
from ..torch_kernels import Geometry
from . import kernels
from .kernels import (
    BLOCK_M_GPU,
    BLOCK_M_GPU_BWD,
    GPU_BLOCKS_C,
    GPU_BWD_BLOCK_C,
    GPU_BWD_MAXNREG,
    GPU_BWD_WARPS,
)

# The interpreter (CPU tensors): small blocks, so tiny test shapes span several tiles.
INTERPRETER_BLOCKS = {"BLOCK_M": 8, "BLOCK_C": 4}
# Fill outputs that kernels must write completely with NaN first (tests set it).
DEBUG_FILL_NAN = False


def _blocks(t: Tensor, Cg: int, backward: bool = False):
    """Block sizes (and warps on a GPU) of the forward or the backward kernel."""
    if not t.is_cuda:
        return dict(INTERPRETER_BLOCKS)
    if backward:
        return dict(BLOCK_M=BLOCK_M_GPU_BWD, BLOCK_C=GPU_BWD_BLOCK_C, num_warps=GPU_BWD_WARPS,
                    maxnreg=GPU_BWD_MAXNREG)
    bc = min(max(triton.next_power_of_2(Cg), GPU_BLOCKS_C[0]), GPU_BLOCKS_C[-1])
    return dict(BLOCK_M=BLOCK_M_GPU, BLOCK_C=bc, num_warps=4)


def new(shape, like: Tensor, dtype=None) -> Tensor:
    """An output buffer the kernels write completely (NaN-filled in the tests)."""
    t = torch.empty(shape, dtype=dtype or like.dtype, device=like.device)
    return t.fill_(float("nan")) if DEBUG_FILL_NAN else t


def _args(input: Tensor, off: Tensor, msk: Tensor, g: Geometry):
    """Scalar keyword arguments of both kernels; ``off``/``msk`` are the kernels' strided
    views (N, oH, oW, G, P, 2) / (N, oH, oW, G, P) with unit innermost strides."""
    N, H, W, C = input.shape
    oH, oW = off.shape[1:3]
    biggest = max(input.numel(), N * oH * oW * off.stride(2), N * oH * oW * msk.stride(2),
                  N * oH * oW * C)
    return dict(M=N * oH * oW, H=H, W=W, C=C, Cg=g.group_channels, oH=oH, oW=oW,
                KH=g.kernel_h, KW=g.kernel_w, P=g.points, sh=g.stride_h, sw=g.stride_w,
                ph=g.pad_h, pw=g.pad_w, dh=g.dilation_h, dw=g.dilation_w,
                offset_scale=float(g.offset_scale), OFF_ROW=off.stride(2),
                OFF_GROUP=off.stride(3), MASK_ROW=msk.stride(2), MASK_GROUP=msk.stride(3),
                REMOVE_CENTER=g.remove_center, INDEX_64=spec.index_64(biggest))


def _layout_ok(off: Tensor, msk: Tensor) -> bool:
    """Positions are rows of one stride (N, oH, oW flatten) with unit-stride pairs/points."""
    N, oH, oW = off.shape[:3]
    return (off.stride(5) == 1 and off.stride(4) == 2 and msk.stride(4) == 1
            and all(t.stride(1) == oW * t.stride(2) and t.stride(0) == oH * t.stride(1)
                    for t in (off, msk)))


def launch_fwd(input: Tensor, off: Tensor, msk: Tensor, g: Geometry) -> Tensor:
    """Output (N, oH, oW, C); ``off``/``msk`` views as ``torch_kernels.forward`` takes."""
    if input.dtype == torch.float64 or not _layout_ok(off, msk):
        return torch_kernels.forward(input, off, msk, g)
    x = input.contiguous()
    N, H, W, C = x.shape
    oH, oW = off.shape[1:3]
    out = new((N, oH, oW, C), x)
    if out.numel() == 0:
        return out
    a = _args(x, off, msk, g)
    bl = _blocks(x, g.group_channels)
    grid = (triton.cdiv(a["M"], bl["BLOCK_M"]), g.group, triton.cdiv(g.group_channels,
                                                                      bl["BLOCK_C"]))
    with spec.on_device(x):
        kernels._dcnv3_fwd_kernel[grid](x_ptr=x, off_ptr=off, mask_ptr=msk, out_ptr=out, **a,
                                        **bl)
    return out


def launch_bwd(grad_out: Tensor, input: Tensor, off: Tensor, msk: Tensor, g: Geometry,
               need_in: bool, need_om: bool, goff: Tensor, gmsk: Tensor) -> Tensor:
    """Input gradient (or None), and the offset/mask gradients written into ``goff``/``gmsk``
    (views with the strides of ``off``/``msk``) when ``need_om``."""
    x = input.contiguous()
    go = grad_out.contiguous()
    deterministic_in = need_in and dispatch.deterministic()
    run_in = need_in and not deterministic_in
    g_in = None
    if go.numel() and (run_in or need_om):
        gin = torch.zeros(x.shape, dtype=torch.float32, device=x.device) if run_in else x
        bl = _blocks(x, g.group_channels, backward=True)
        grid = (triton.cdiv(go.shape[0] * go.shape[1] * go.shape[2], bl["BLOCK_M"]), g.group)
        with spec.on_device(x):
            kernels._dcnv3_bwd_kernel[grid](
                x_ptr=x, off_ptr=off, mask_ptr=msk, gout_ptr=go, gin_ptr=gin,
                goff_ptr=goff if need_om else off, gmask_ptr=gmsk if need_om else msk,
                **_args(x, off, msk, g), NEED_IN=run_in, NEED_OM=need_om, **bl)
        g_in = gin.to(input.dtype) if run_in else None
    elif need_om:
        goff.zero_()
        gmsk.zero_()
    if need_in and g_in is None:
        g_in = (torch_kernels.backward(grad_out, input, off, msk, g, True, False)[0]
                if deterministic_in else torch.zeros_like(input))
    return g_in


def dcnv3_fwd(input: Tensor, offset: Tensor, mask: Tensor, *params) -> Tensor:
    g = Geometry(*params)
    return launch_fwd(input, *torch_kernels.offset_mask_views(offset.contiguous(),
                                                              mask.contiguous(), g), g)


def dcnv3_bwd(grad_out: Tensor, input: Tensor, offset: Tensor, mask: Tensor, *params_and_mask
              ) -> Tuple[Tensor, Tensor, Tensor]:
    *params, (need_in, need_om) = params_and_mask
    g = Geometry(*params)
    if input.dtype == torch.float64:
        return torch_kernels.dcnv3_bwd(grad_out, input, offset, mask, *params_and_mask)
    off, msk = torch_kernels.offset_mask_views(offset.contiguous(), mask.contiguous(), g)
    goff = new(offset.shape, offset) if need_om else None
    gmsk = new(mask.shape, mask) if need_om else None
    views = torch_kernels.offset_mask_views(goff, gmsk, g) if need_om else (None, None)
    g_in = launch_bwd(grad_out, input, off, msk, g, need_in, need_om, *views)
    empty = input.new_empty(0)
    return (g_in if need_in else empty, goff if need_om else empty,
            gmsk if need_om else empty)
