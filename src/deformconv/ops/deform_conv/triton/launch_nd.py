"""Launchers of the N-D Triton kernels (``kernels_nd.py``): layouts, allocation, grids. The
library runs them for 1-D and 3-D; they take 2-D too (the GPU benchmark's contender against the
specialised 2-D kernels).

``deform_conv_fwd`` and ``deform_conv_bwd`` have the signatures and returns of their
namesakes in ``torch_kernels`` and assume validated arguments. They run on CUDA tensors, and on
CPU tensors when the kernels were compiled by the Triton interpreter (``TRITON_INTERPRET=1``
set before this module was imported), which is how the tests run them.

float16/bfloat16/float32 run here with float32 accumulation (``dispatch`` sends float64 to the
pure-PyTorch kernels). The forward, the offset/mask gradients and the weight gradient (split
partial sums added here) are deterministic; the input gradient scatters with atomics
(``NONDETERMINISTIC``: ``dispatch`` runs the backward on PyTorch under deterministic mode).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

import triton

from ... import geometry
from ...triton import spec
from . import kernels_nd as nd_kernels
from .kernels_nd import gpu_blocks

# The interpreter (CPU tensors): small blocks, so tiny test shapes span several tiles.
INTERPRETER_BLOCKS: Dict[str, Dict[str, int]] = {
    "fwd": {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_C": 16},
    "bwd_data": {"BLOCK_M": 16, "BLOCK_O": 16, "BLOCK_C": 16},
    "bwd_weight": {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_C": 16},
}
# Functions whose results depend on the order of atomic additions (see dispatch).
NONDETERMINISTIC = ("deform_conv_bwd",)


_LABELS = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def _blocks(name: str, t: Tensor, consts: Dict) -> Dict[str, int]:
    """Blocks (and, on a GPU, warps and stages) of kernel ``name`` for data like ``t``."""
    if not t.is_cuda:
        return dict(INTERPRETER_BLOCKS[name])
    label = _LABELS.get(t.dtype, "tf32" if consts["INPUT_PRECISION"] == "tf32" else "fp32")
    return gpu_blocks(name, consts["R"], label, consts["INDEX_64"])


def _new(shape, like: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    return spec.empty(shape, dtype or like.dtype, like.device)


def _as_3d(v: Sequence[int], fill: int) -> List[int]:
    """A 1-D or 2-D tuple as 3-D, ``fill`` in front (unit depth and height, or unit depth);
    3-D unchanged."""
    return [fill] * (3 - len(v)) + list(v)


def _setup(input: Tensor, weight: Tensor, offset: Tensor, stride, padding, dilation):
    """Channels-last input (N, D, H, W, C), weight (groups, K, Cg, Og), sizes and kwargs."""
    N, C, *size = input.shape
    O, Cg, *kernel = weight.shape
    R = len(size)
    grp = geometry.groups_of(C, weight.shape, offset.shape[1])
    out = geometry.out_size(size, kernel, stride, padding, dilation)
    D, H, W = _as_3d(size, 1)
    x = input.permute(0, *range(2, R + 2), 1).reshape(N, D, H, W, C).contiguous()
    w = (weight.to(input.dtype).reshape(grp.groups, grp.out_per_group, Cg, grp.taps)
         .permute(0, 3, 2, 1).contiguous())
    oD, oH, oW = _as_3d(out, 1)
    kD, kH, kW = _as_3d(kernel, 1)
    (sd, sh, sw), (pd, ph, pw), (dd, dh, dw) = (_as_3d(stride, 1), _as_3d(padding, 0),
                                                _as_3d(dilation, 1))
    sizes = dict(P=N * oD * oH * oW, C=C, D=D, H=H, W=W, oD=oD, oH=oH, oW=oW, Cg=Cg,
                 Og=grp.out_per_group, Cpg=grp.in_per_offset_group, G=grp.offset_groups, O=O,
                 sd=sd, sh=sh, sw=sw, pd=pd, ph=ph, pw=pw, dd=dd, dh=dh, dw=dw)
    consts = dict(KD=kD, KH=kH, KW=kW, R=R,
                  INDEX_64=spec.index_64(x, offset, N * O * oD * oH * oW, w),
                  INPUT_PRECISION=spec.input_precision(input.dtype),
                  DOT_UPCAST=not input.is_cuda and input.dtype == torch.bfloat16)
    return x, w, grp, tuple(out), sizes, consts


def deform_conv_fwd(input: Tensor, weight: Tensor, offset: Tensor, mask: Optional[Tensor],
                       bias: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
                       dilation: Sequence[int]) -> Tensor:
    """Forward, see ``torch_kernels.deform_conv_fwd``: (N, C, *S) -> (N, O, *o)."""
    x, w, grp, out_sz, sizes, consts = _setup(input, weight, offset, stride, padding, dilation)
    out = _new((input.shape[0], weight.shape[0], *out_sz), input)
    if out.numel() == 0:
        return out
    off = offset.contiguous()
    msk = mask.contiguous() if mask is not None else off
    b = bias.contiguous() if bias is not None else off
    bl = _blocks("fwd", input, consts)
    grid = (triton.cdiv(sizes["P"], bl["BLOCK_M"]), triton.cdiv(sizes["Og"], bl["BLOCK_N"]),
            grp.groups)
    with spec.on_device(input):
        nd_kernels._deform_conv_nd_fwd_kernel[grid](
            x_ptr=x, w_ptr=w, off_ptr=off, mask_ptr=msk, bias_ptr=b, out_ptr=out, **sizes,
            HAS_MASK=mask is not None, HAS_BIAS=bias is not None, **consts, **bl)
    return out


def deform_conv_bwd(grad_out: Tensor, input: Tensor, weight: Tensor, offset: Tensor,
                       mask: Optional[Tensor], bias: Optional[Tensor], stride: Sequence[int],
                       padding: Sequence[int], dilation: Sequence[int],
                       output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of (input, weight, offset, mask, bias), as ``torch_kernels``'s."""
    need_in, need_w, need_om, need_b = output_mask
    x, w, grp, _, sizes, consts = _setup(input, weight, offset, stride, padding, dilation)
    N, C, *size = input.shape
    go = grad_out.contiguous()
    off = offset.contiguous()
    msk = mask.contiguous() if mask is not None else off
    empty = input.new_empty(0)
    g_in = g_w = g_off = g_mask = g_b = empty
    if sizes["P"] > 0 and (need_in or need_om):
        gin = torch.zeros(x.shape, dtype=torch.float32, device=x.device) if need_in else x
        goff = _new(offset.shape, offset) if need_om else off
        gmask = _new(mask.shape, mask) if need_om and mask is not None else off
        bl = _blocks("bwd_data", input, consts)
        with spec.on_device(input):
            nd_kernels._deform_conv_nd_bwd_data_kernel[(triton.cdiv(sizes["P"],
                                                                    bl["BLOCK_M"]),)](
                x_ptr=x, w_ptr=w, off_ptr=off, mask_ptr=msk, gout_ptr=go, gin_ptr=gin,
                goff_ptr=goff, gmask_ptr=gmask, **sizes, HAS_MASK=mask is not None,
                NEED_IN=need_in, NEED_OM=need_om, **consts, **bl)
        if need_in:
            R = len(size)
            g_in = (gin.view(N, *size, C).permute(0, R + 1, *range(1, R + 1))
                    .to(input.dtype).contiguous())
        if need_om:
            g_off = goff
            g_mask = gmask if mask is not None else empty
    elif need_om:
        g_off = torch.zeros_like(offset)
        g_mask = torch.zeros_like(mask) if mask is not None else empty
    if need_in and sizes["P"] == 0:
        g_in = torch.zeros_like(input)
    if need_w:
        g_w = _weight_grad(x, off, msk, go, weight, grp, sizes, consts, mask is not None)
    if need_b and bias is not None:
        g_b = grad_out.float().sum([0, *range(2, grad_out.dim())]).to(input.dtype)
    return g_in, g_w, g_off, g_mask, g_b


def _weight_grad(x, off, msk, go, weight, grp, sizes, consts, has_mask) -> Tensor:
    """Split partial sums over position tiles, added here: (O, Cg, *k)."""
    bl = _blocks("bwd_weight", x, consts)
    tiles = triton.cdiv(sizes["P"], bl["BLOCK_M"])
    if tiles == 0:
        return torch.zeros_like(weight)
    # Enough programs to fill the device, at least 4 tiles per split.
    split = max(1, min(tiles // 4, 64))
    K = grp.taps
    part = _new((split, grp.groups, K, sizes["Cg"], sizes["Og"]), x, torch.float32)
    grid = (grp.groups * K, triton.cdiv(sizes["Og"], bl["BLOCK_N"]), split)
    with spec.on_device(x):
        nd_kernels._deform_conv_nd_bwd_weight_kernel[grid](
            x_ptr=x, off_ptr=off, mask_ptr=msk, gout_ptr=go, gw_ptr=part, **sizes,
            groups=grp.groups, SPLIT=split, HAS_MASK=has_mask, **consts, **bl)
    gw = part.sum(0)  # (groups, K, Cg, Og) -> (O, Cg, K) -> (O, Cg, *k)
    gw = gw.permute(0, 3, 2, 1).reshape(weight.shape[0], sizes["Cg"], K)
    return gw.reshape(weight.shape).to(weight.dtype)
