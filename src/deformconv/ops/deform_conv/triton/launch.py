"""Launchers of the 2-D Triton kernels: layouts, allocation, grids, block sizes.

``deform_conv_fwd`` and ``deform_conv_bwd`` have the signatures and returns of their namesakes
in ``torch_kernels`` (``stride``, ``padding``, ``dilation``: pairs) and assume validated
arguments of float16, bfloat16 or float32 (``dispatch`` sends float64, and the backward under
deterministic mode, to the pure-PyTorch kernels). ``input`` and ``weight`` share one dtype;
``offset``, ``mask`` and ``bias`` may be float32 beside half precision data (the CUDA autocast
rule, ``ops/autocast.py``); every result has the dtype of its argument, the output the
input's. They run on CUDA tensors, and on CPU tensors when the kernels were compiled by the
Triton interpreter (``TRITON_INTERPRET=1`` set before ``kernels`` was imported).

Dots: float16/bfloat16 on tensor cores with float32 accumulation; float32 follows the one TF32
rule of every launcher, ``triton.spec.input_precision``.

CUDA graphs: on the GPU every kernel is autotuned on its first call per key (channel counts,
kernel size, a coarse size bucket of the map, dtypes), and the weight gradient's channel-block
table is built and copied to the device once per shape and cached. A warm-up step (one
forward and backward of every shape the graph will see) before capture leaves nothing to
tune, compile or copy inside the capture.
"""

from __future__ import annotations

import functools
import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

import triton

from ... import geometry
from ...triton import spec
from . import kernels

# Functions whose results depend on the order of atomic additions (see dispatch).
NONDETERMINISTIC = ("deform_conv_bwd",)
PARTIAL_BYTES = 16 << 20  # cap of the float32 split-sum buffers (forward and weight gradient)
_AUTOTUNE_KEY = ["C", "Cg", "Og", "G", "KH", "KW", "HAS_MASK", "SIZE_BUCKET"]


index_64 = spec.index_64  # the one rule (tests replace it here to force a width)


# Block sizes per kernel on CPU tensors (the interpreter does not autotune): small, as the
# shapes it runs are. Every launcher module names them so; tests may change them.
INTERPRETER_BLOCKS: Dict[str, Dict[str, int]] = {
    "fwd": dict(BLOCK_M=16, BLOCK_N=16, BLOCK_C=16),
    "bwd_data": dict(BLOCK_M=16, BLOCK_O=16, BLOCK_C=16),
    "bwd_weight": dict(BLOCK_M=16, BLOCK_N=16, BLOCK_C=16),
}


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 elsewhere)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def size_bucket(pixels: int) -> int:
    """A coarse size class of the map (log4 of the pixel count): an autotune key, so FPN
    levels of different sizes tune separately while nearby sizes share one choice."""
    return max(0, pixels.bit_length() - 1) // 2


@functools.lru_cache(maxsize=None)
def _tuned(name: str, family: str):
    fn, configs, zero = {
        "fwd": (kernels._deform_conv2d_fwd_kernel, kernels.FWD_CONFIGS, None),
        "bwd_data": (kernels._deform_conv2d_bwd_data_kernel, kernels.BWD_DATA_CONFIGS,
                     ["gin_ptr"]),
        "bwd_weight": (kernels._deform_conv2d_bwd_weight_kernel, kernels.BWD_WEIGHT_CONFIGS,
                       None),
    }[name]
    return triton.autotune(configs[family], key=_AUTOTUNE_KEY, reset_to_zero=zero)(fn)


def _launch(name: str, fn, grid, device: torch.device, warps: int = 4, **kwargs) -> None:
    """``fn[grid](**kwargs)``: autotuned on a GPU, the interpreter's blocks on the CPU.
    ``grid`` maps the block sizes to the grid."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            key = spec.family(kwargs["x_ptr"].dtype, kwargs["INDEX_64"])
            _tuned(name, key)[grid](**kwargs)
    else:
        blocks = dict(INTERPRETER_BLOCKS[name])
        fn[grid(blocks)](**kwargs, **blocks, num_warps=warps)


def _layouts(input: Tensor, weight: Tensor, groups: int) -> Tuple[Tensor, Tensor]:
    """Channels-last input (N, H, W, C) (free when the input is channels-last already) and the
    weight as (groups, K, Cg, Og) in the input's dtype."""
    O, Cg, kH, kW = weight.shape
    x = input.permute(0, 2, 3, 1).contiguous()
    w = weight.to(input.dtype).reshape(groups, O // groups, Cg, kH * kW).permute(0, 3, 2, 1)
    return x, w.contiguous()


def _common(input: Tensor, weight: Tensor, offset: Tensor, mask: Optional[Tensor], params):
    sh, sw, ph, pw, dh, dw = params
    N, C, H, W = input.shape
    O, _, kH, kW = weight.shape
    gr = geometry.groups_of(C, weight.shape, offset.shape[1])
    oH, oW = geometry.out_size((H, W), (kH, kW), (sh, sw), (ph, pw), (dh, dw))
    shape = dict(N=N, C=C, H=H, W=W, oH=oH, oW=oW, Cg=gr.in_per_group, Og=gr.out_per_group,
                 G=gr.offset_groups, O=O, sh=sh, sw=sw, ph=ph, pw=pw, dh=dh, dw=dw,
                 SIZE_BUCKET=size_bucket(N * oH * oW))
    # DOT_UPCAST: the interpreter (CPU tensors) multiplies bfloat16 blocks wrongly.
    consts = dict(KH=kH, KW=kW, HAS_MASK=mask is not None,
                  INPUT_PRECISION=spec.input_precision(input.dtype),
                  DOT_UPCAST=not input.is_cuda and input.dtype == torch.bfloat16)
    return gr, shape, consts


def _splits(device: torch.device, programs: int, most: int, partial_numel: int) -> int:
    """Splits of a sum over ``programs`` programs (the forward's taps, the weight gradient's
    pixel tiles): enough programs for two waves over the device's SMs when the map is small,
    at most ``most``, with the float32 partial sums within PARTIAL_BYTES."""
    want = math.ceil(2 * sm_count(device) / max(1, programs))
    by_mem = max(1, PARTIAL_BYTES // (4 * max(1, partial_numel)))
    return max(1, min(most, want, by_mem))


def deform_conv_fwd(input: Tensor, weight: Tensor, offset: Tensor, mask: Optional[Tensor],
                    bias: Optional[Tensor], stride, padding, dilation) -> Tensor:
    """Forward, see ``torch_kernels.deform_conv_fwd``: (N, C, H, W) -> (N, O, oH, oW)."""
    gr, shape, consts = _common(input, weight, offset, mask, (*stride, *padding, *dilation))
    N, O, oH, oW = shape["N"], shape["O"], shape["oH"], shape["oW"]
    P = N * oH * oW
    if P * O == 0:
        return input.new_empty(N, O, oH, oW)
    # Tiles of a nominal 64 x 64 decide the split, so it does not depend on the tuned config.
    nominal = triton.cdiv(P, 64) * triton.cdiv(gr.out_per_group, 64) * gr.groups
    split = (_splits(input.device, nominal, gr.taps, P * O) if input.is_cuda
             else min(2, gr.taps))
    out = spec.empty((split, N, O, oH, oW), input.dtype if split == 1 else torch.float32,
                input.device)
    x, w = _layouts(input, weight, gr.groups)
    off = offset.contiguous()
    msk = mask.contiguous() if mask is not None else off
    b = bias.contiguous() if bias is not None else off
    big = index_64(x, off, out)
    grid = lambda m: (triton.cdiv(P, m["BLOCK_M"]), triton.cdiv(gr.out_per_group, m["BLOCK_N"]),
                      gr.groups * split)
    _launch("fwd", kernels._deform_conv2d_fwd_kernel, grid, input.device,
            x_ptr=x, w_ptr=w, off_ptr=off, mask_ptr=msk, bias_ptr=b, out_ptr=out,
            Cpg=gr.in_per_offset_group, SPLIT=split, **shape, **consts,
            HAS_BIAS=bias is not None, INDEX_64=big)
    if split == 1:
        return out[0]
    return out.sum(0, dtype=torch.float32).to(input.dtype)


@functools.lru_cache(maxsize=64)
def _channel_blocks(C: int, Cg: int, Cpg: int, block_c: int, device: torch.device) -> Tensor:
    """Rows (c_lo, c_hi, conv group, offset group): blocks inside one conv and offset group.
    Cached per shape and device, so a warmed-up step copies nothing to the device."""
    cuts = sorted(set(range(0, C + 1, Cg)) | set(range(0, C + 1, Cpg)))
    rows = [(c0, min(hi, c0 + block_c), lo // Cg, lo // Cpg)
            for lo, hi in zip(cuts[:-1], cuts[1:]) for c0 in range(lo, hi, block_c)]
    return torch.tensor(rows, dtype=torch.int32, device=device)


def deform_conv_bwd(grad_out: Tensor, input: Tensor, weight: Tensor, offset: Tensor,
                    mask: Optional[Tensor], bias: Optional[Tensor], stride, padding, dilation,
                    output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of (input, weight, offset, mask, bias), see ``torch_kernels.deform_conv_bwd``;
    those not asked for come back empty. The input gradient scatters with atomics
    (``NONDETERMINISTIC``)."""
    need_in, need_w, need_om, need_b = output_mask
    gr, shape, consts = _common(input, weight, offset, mask, (*stride, *padding, *dilation))
    N, C, H, W = input.shape
    O, Cg, kH, kW = weight.shape
    K, Og = gr.taps, gr.out_per_group
    P = N * shape["oH"] * shape["oW"]
    dev, dt = input.device, input.dtype
    empty0 = input.new_empty(0)
    gi, gw, g_off, g_mask = empty0, empty0, empty0, empty0
    if need_om:
        g_off = spec.empty(offset.shape, offset.dtype, dev)
        g_mask = spec.empty(mask.shape, mask.dtype, dev) if mask is not None else empty0
    if need_in:
        gi = torch.zeros(input.shape, dtype=dt, device=dev)  # stays so when P == 0
    if need_w:
        gw = torch.zeros(weight.shape, dtype=weight.dtype, device=dev)
    if P > 0 and (need_in or need_w or need_om):
        x, w = _layouts(input, weight, gr.groups)
        off = offset.contiguous()
        msk = mask.contiguous() if mask is not None else off
        go = grad_out.to(dt).contiguous()
        big = index_64(x, off, go)
        if need_in or need_om:
            # float32 atomics; channels-last like the gathers (coalesced scatter).
            g_in = torch.zeros((N, H, W, C), dtype=torch.float32, device=dev) if need_in else x
            grid = lambda m: (triton.cdiv(P, m["BLOCK_M"]), gr.offset_groups * K)
            _launch("bwd_data", kernels._deform_conv2d_bwd_data_kernel, grid, dev,
                    x_ptr=x, w_ptr=w, off_ptr=off, mask_ptr=msk, gout_ptr=go, gin_ptr=g_in,
                    goff_ptr=g_off if need_om else x,
                    gmask_ptr=g_mask if (need_om and mask is not None) else x,
                    Cpg=gr.in_per_offset_group, **shape, **consts, NEED_IN=need_in,
                    NEED_OM=need_om, INDEX_64=big)
            if need_in:
                gi.copy_(g_in.permute(0, 3, 1, 2))  # one pass: layout and dtype
                del g_in
        if need_w:
            block_c = (kernels.WEIGHT_BLOCK_C if dev.type == "cuda"
                       else INTERPRETER_BLOCKS["bwd_weight"]["BLOCK_C"])
            blocks = _channel_blocks(C, Cg, gr.in_per_offset_group, block_c, dev)
            nominal = blocks.shape[0] * K * triton.cdiv(Og, 64)
            split = (_splits(dev, nominal, triton.cdiv(P, 32), weight.numel())
                     if dev.type == "cuda" else min(2, triton.cdiv(P, 16)))
            part = spec.empty((split, gr.groups, K, Cg, Og), torch.float32, dev)
            grid = lambda m: (blocks.shape[0] * K, triton.cdiv(Og, m["BLOCK_N"]), split)
            _launch("bwd_weight", kernels._deform_conv2d_bwd_weight_kernel, grid, dev,
                    x_ptr=x, off_ptr=off, mask_ptr=msk, gout_ptr=go, blk_ptr=blocks,
                    gw_ptr=part, groups=gr.groups, SPLIT=split, **shape, **consts,
                    INDEX_64=big or index_64(part))
            # (groups, K, Cg, Og) -> (O, Cg, kH, kW), contiguous as the fake promises.
            gw.copy_(part.sum(0).permute(0, 3, 2, 1).reshape(O, Cg, kH, kW))
    gb = empty0
    if need_b and bias is not None:
        gb = grad_out.sum((0, 2, 3), dtype=torch.float32).to(bias.dtype)
    return gi, gw, g_off, g_mask, gb

