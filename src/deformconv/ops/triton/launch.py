"""Launchers of the Triton kernels: layouts, allocation, grids, block sizes.

``deform_conv2d_fwd`` and ``deform_conv2d_bwd`` have the signatures and returns of their
namesakes in ``torch_impl`` and assume validated arguments. They run on CUDA tensors, and on
CPU tensors when the kernels were compiled by the Triton interpreter (``TRITON_INTERPRET=1``
set before ``kernels`` was imported), which is how the tests run them.

Dtypes: float16/bfloat16/float32 inputs run here with float32 accumulation (the sampled
columns are rounded to the input dtype before ``tl.dot``, as in any half-precision GEMM);
float32 dots use TF32 only when ``torch.backends.cuda.matmul.allow_tf32`` is set. float64 goes
to the pure-PyTorch path (``torch_impl``).

Determinism: the forward, the offset/mask gradients and the weight gradient (split-K partial
sums added by the launcher) are deterministic. The input gradient scatters with atomics; under
``torch.use_deterministic_algorithms(True)`` it is computed by ``torch_impl`` instead, whose
scatter is a stably sorted gather (fixed summation order, no atomics), while the other
gradients still come from Triton.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Dict, List, Optional, Tuple

import torch
import triton
from torch import Tensor

from .. import geometry, torch_impl
from . import kernels

# Block sizes for CPU tensors (the interpreter): small, so tiny test shapes still run several
# tiles and loop iterations. Tests may change them.
INTERPRETER_BLOCKS: Dict[str, int] = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_C": 16}
# Fill outputs that kernels must write completely with NaN first (tests set it), so a tile a
# kernel forgot fails loudly instead of holding stale memory.
DEBUG_FILL_NAN = False

_GPU_FWD_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_C": 32}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_C": 32}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_C": 32}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_C": 64}, num_warps=8, num_stages=2),
]
_fwd_tuned = None


def _fwd_kernel_gpu():
    global _fwd_tuned
    if _fwd_tuned is None:
        _fwd_tuned = triton.autotune(_GPU_FWD_CONFIGS, key=["Cg", "Og", "Cpg", "KH", "KW"])(
            kernels._deform_conv2d_fwd_kernel)
    return _fwd_tuned


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _dot_upcast(t: Tensor) -> bool:
    """The interpreter (CPU tensors) multiplies bfloat16 blocks wrongly: upcast there only."""
    return not t.is_cuda and t.dtype == torch.bfloat16


def _new(shape, like: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    t = torch.empty(shape, dtype=dtype or like.dtype, device=like.device)
    return t.fill_(float("nan")) if DEBUG_FILL_NAN else t


def _layouts(input: Tensor, weight: Tensor, groups: int):
    """Channels-last input (N, H, W, C) and weight as (groups, K, Cg, Og)."""
    O, Cg, kH, kW = weight.shape
    x = input.permute(0, 2, 3, 1).contiguous()
    w = weight.to(input.dtype).reshape(groups, O // groups, Cg, kH * kW).permute(0, 3, 2, 1)
    return x, w.contiguous()


def deform_conv2d_fwd(input: Tensor, weight: Tensor, offset: Tensor, mask: Optional[Tensor],
                      bias: Optional[Tensor], sh: int, sw: int, ph: int, pw: int, dh: int,
                      dw: int) -> Tensor:
    """Forward, see ``torch_impl.deform_conv2d_fwd``: (N, C, H, W) -> (N, O, oH, oW)."""
    if input.dtype == torch.float64:
        return torch_impl.deform_conv2d_fwd(input, weight, offset, mask, bias, sh, sw, ph, pw,
                                            dh, dw)
    N, C, H, W = input.shape
    O, Cg, kH, kW = weight.shape
    groups = C // Cg
    G = offset.shape[1] // (2 * kH * kW)
    oH, oW = geometry.out_size((H, W), (kH, kW), (sh, sw), (ph, pw), (dh, dw))
    out = _new((N, O, oH, oW), input)
    P = N * oH * oW
    if out.numel() == 0:
        return out
    x, w = _layouts(input, weight, groups)
    off = offset.contiguous()
    msk = mask.contiguous() if mask is not None else off
    b = bias.contiguous() if bias is not None else off
    args = (x, w, off, msk, b, out, P, C, H, W, oH, oW, Cg, O // groups, C // G, G, O,
            sh, sw, ph, pw, dh, dw)
    consts = dict(KH=kH, KW=kW, HAS_MASK=mask is not None, HAS_BIAS=bias is not None,
                  INPUT_PRECISION=_precision(input.dtype),
                  DOT_UPCAST=_dot_upcast(input))
    Og = O // groups
    if input.is_cuda:
        with torch.cuda.device(input.device):
            grid = lambda meta: (triton.cdiv(P, meta["BLOCK_M"]), triton.cdiv(Og, meta["BLOCK_N"]),
                                 groups)
            _fwd_kernel_gpu()[grid](*args, **consts)
    else:
        bl = INTERPRETER_BLOCKS
        grid = (triton.cdiv(P, bl["BLOCK_M"]), triton.cdiv(Og, bl["BLOCK_N"]), groups)
        kernels._deform_conv2d_fwd_kernel[grid](*args, **consts, **bl)
    return out


@functools.lru_cache(maxsize=64)
def _channel_blocks(C: int, Cg: int, Cpg: int, block_c: int, device: torch.device) -> Tensor:
    """Rows (c_lo, c_hi, conv group, offset group): blocks inside one conv and offset group."""
    cuts = sorted(set(range(0, C + 1, Cg)) | set(range(0, C + 1, Cpg)))
    rows = []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        for c0 in range(lo, hi, block_c):
            rows.append((c0, min(hi, c0 + block_c), lo // Cg, lo // Cpg))
    return torch.tensor(rows, dtype=torch.int32, device=device)


def _gpu_bwd_blocks(Og: int, dtype: torch.dtype) -> Tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N or BLOCK_O, BLOCK_C) of the backward kernels on a GPU. float32 tiles
    are capped lower to stay within the shared memory of pre-Hopper GPUs."""
    cap = 64 if dtype == torch.float32 else 128
    return 64, min(cap, max(16, triton.next_power_of_2(Og))), 32


def deform_conv2d_bwd(grad_out: Tensor, input: Tensor, weight: Tensor, offset: Tensor,
                      mask: Optional[Tensor], bias: Optional[Tensor], sh: int, sw: int,
                      ph: int, pw: int, dh: int, dw: int,
                      output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of (input, weight, offset, mask, bias), see ``torch_impl.deform_conv2d_bwd``."""
    need_in, need_w, need_om, need_b = output_mask
    if input.dtype == torch.float64:
        return torch_impl.deform_conv2d_bwd(grad_out, input, weight, offset, mask, bias, sh, sw,
                                            ph, pw, dh, dw, output_mask)
    gi_det = None
    if need_in and torch.are_deterministic_algorithms_enabled():
        # The Triton input gradient uses atomics; the pure-PyTorch one is deterministic.
        gi_det = torch_impl.deform_conv2d_bwd(grad_out, input, weight, offset, mask, bias, sh,
                                              sw, ph, pw, dh, dw, [True, False, False, False])[0]
        need_in = False
    N, C, H, W = input.shape
    O, Cg, kH, kW = weight.shape
    K = kH * kW
    groups = C // Cg
    Og = O // groups
    G = offset.shape[1] // (2 * K)
    oH, oW = grad_out.shape[2], grad_out.shape[3]
    P = N * oH * oW
    dt = input.dtype
    empty = input.new_empty(0)
    g_in = torch.zeros((N, H, W, C), dtype=torch.float32, device=input.device) if need_in else None
    g_off = _new(offset.shape, offset, dt) if need_om else empty
    g_mask = _new(mask.shape, mask, dt) if need_om and mask is not None else empty
    g_w = empty
    cuda = input.is_cuda
    if cuda:
        bm, bn, bc = _gpu_bwd_blocks(Og, dt)
    else:
        bm, bn, bc = (INTERPRETER_BLOCKS[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_C"))
    warps = 4
    if need_w:
        g_w = torch.zeros(weight.shape, dtype=dt, device=input.device)  # when P == 0
    if P > 0 and (need_in or need_w or need_om):
        x, w = _layouts(input, weight, groups)
        off = offset.contiguous()
        msk = mask.contiguous() if mask is not None else off
        go = grad_out.to(dt).contiguous()
        prec = _precision(dt)
        shape_args = (sh, sw, ph, pw, dh, dw)
        guard = torch.cuda.device(input.device) if cuda else contextlib.nullcontext()
        with guard:
            if need_in or need_om:
                grid = (triton.cdiv(P, bm),)
                kernels._deform_conv2d_bwd_data_kernel[grid](
                    x, w, off, msk, go, g_in if need_in else x, g_off if need_om else x,
                    g_mask if (need_om and mask is not None) else x,
                    P, C, H, W, oH, oW, Cg, Og, C // G, G, O, *shape_args,
                    KH=kH, KW=kW, HAS_MASK=mask is not None, NEED_IN=need_in, NEED_OM=need_om,
                    INPUT_PRECISION=prec, DOT_UPCAST=_dot_upcast(input),
                    BLOCK_M=bm, BLOCK_O=bn, BLOCK_C=bc, num_warps=warps,
                    num_stages=2)
            if need_w:
                blocks = _channel_blocks(C, Cg, C // G, bc, input.device)
                n_tiles = triton.cdiv(P, bm)
                split = _split(n_tiles, blocks.shape[0] * K * triton.cdiv(Og, bn),
                               groups * K * Cg * Og, cuda)
                part = _new((split, groups, K, Cg, Og), input, torch.float32)
                grid = (blocks.shape[0] * K, triton.cdiv(Og, bn), split)
                kernels._deform_conv2d_bwd_weight_kernel[grid](
                    x, off, msk, go, blocks, part, P, C, H, W, oH, oW, Cg, Og, G, O, groups,
                    split, *shape_args, KH=kH, KW=kW, HAS_MASK=mask is not None,
                    INPUT_PRECISION=prec, DOT_UPCAST=_dot_upcast(input),
                    BLOCK_M=bm, BLOCK_N=bn, BLOCK_C=bc, num_warps=warps,
                    num_stages=2)
                # (groups, K, Cg, Og) -> (O, Cg, kH, kW)
                # (contiguous: the registered fake promises contiguous gradients)
                g_w = part.sum(0).permute(0, 3, 2, 1).reshape(O, Cg, kH, kW).to(dt).contiguous()
    if gi_det is not None:
        gi = gi_det
    elif need_in:
        gi = g_in.permute(0, 3, 1, 2).to(dt).contiguous()
    else:
        gi = empty
    gb = grad_out.float().sum((0, 2, 3)).to(dt) if need_b and bias is not None else empty
    return gi, g_w, g_off, g_mask, gb


def _split(n_tiles: int, n_programs: int, weight_numel: int, cuda: bool) -> int:
    """Pixel-tile splits of the weight gradient: enough programs to fill the GPU, with the
    float32 partial sums kept under 64 MiB."""
    if not cuda:
        return min(2, n_tiles)
    target = 4 * 132  # a few waves of an H100's SMs
    by_mem = max(1, (64 << 20) // (4 * max(1, weight_numel)))
    return max(1, min(n_tiles, math.ceil(target / max(1, n_programs)), by_mem))
