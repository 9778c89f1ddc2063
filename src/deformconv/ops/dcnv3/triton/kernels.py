"""Triton kernels of DCNv3 (``@triton.jit`` only; launchers in ``launch.py``). ``dcnv4`` runs
the same kernels on its fused offset/mask tensor through the strides below.

Layouts (channels last; no GEMM: a group's channels are sampled with the group's offsets):

- input ``x`` (N, H, W, C) contiguous, ``C = G * Cg``; output / output gradient likewise at
  (N, oH, oW, C);
- offsets: for output position ``m`` (flat over N, oH, oW), group ``g`` and tap slot ``p``,
  ``dx`` at ``off_ptr + m*OFF_ROW + g*OFF_GROUP + 2*p`` and ``dy`` one further; the mask at
  ``mask_ptr + m*MASK_ROW + g*MASK_GROUP + p``. DCNv3: ``OFF_ROW = 2*G*P, OFF_GROUP = 2*P,
  MASK_ROW = G*P, MASK_GROUP = P``; DCNv4: ``OFF_ROW = MASK_ROW`` = the fused width,
  ``OFF_GROUP = MASK_GROUP = 3*P`` and the mask pointer ``2*P`` further. The gradients use the
  same addresses in their own buffers;
- input gradient: float32 (N, H, W, C), accumulated with atomics (the launcher takes the
  deterministic pure-PyTorch path under ``torch.use_deterministic_algorithms``).

Sampling is the shared ``corners_2d`` with the strict cut-off (``-1 < y < H``): non-finite
positions are outside and every load and atomic is masked by its corner's validity, so no
offset addresses memory outside the input. Positions are computed in float32 as the CUDA kernel
does: ``(wo*stride - pad + c - c*s) + (i*dil + dx)*s``. ``INDEX_64`` switches address arithmetic
to 64 bits.
"""

import triton.language as tl

import triton

from ...triton.bilinear import corner_weights, corners_2d, position_grad_2d
from ...triton.spec import ELEMENT, KernelSpec


@triton.jit
def _tap(p, KH, KW, REMOVE_CENTER: tl.constexpr):
    """Kernel column ``i`` and row ``j`` of tap slot ``p`` (x outer, y inner), the centre
    skipped with ``REMOVE_CENTER``."""
    t = p
    if REMOVE_CENTER:
        t = tl.where(p >= (KH * KW - 1) // 2, p + 1, p)
    return t // KH, t % KH


@triton.jit
def _tap_corners(off_ptr, mask_ptr, rows, g, p, row_ok, H, W, C, oH, oW, KH, KW, sh, sw, ph, pw,
                 dh, dw, offset_scale, OFF_ROW, OFF_GROUP, MASK_ROW, MASK_GROUP,
                 REMOVE_CENTER: tl.constexpr):
    """Tap slot ``p`` of the output positions ``rows``: ``corners_2d``'s lower corner, steps,
    validities and fractions (channels-last steps), and the mask (0 outside the cut-off)."""
    i, j = _tap(p, KH, KW, REMOVE_CENTER)
    wo = rows % oW
    ho = (rows // oW) % oH
    o = off_ptr + rows * OFF_ROW + g * OFF_GROUP + 2 * p
    dx = tl.load(o, mask=row_ok, other=0.0).to(tl.float32)
    dy = tl.load(o + 1, mask=row_ok, other=0.0).to(tl.float32)
    m = tl.load(mask_ptr + rows * MASK_ROW + g * MASK_GROUP + p, mask=row_ok,
                other=0.0).to(tl.float32)
    c_w = (dw * (KW - 1)) // 2
    c_h = (dh * (KH - 1)) // 2
    x0 = (wo * sw - pw + c_w).to(tl.float32) - c_w * offset_scale
    y0 = (ho * sh - ph + c_h).to(tl.float32) - c_h * offset_scale
    x = x0 + ((i * dw).to(tl.float32) + dx) * offset_scale
    y = y0 + ((j * dh).to(tl.float32) + dy) * offset_scale
    y0, x0, dx, dy, ok00, ok01, ok10, ok11, ly, lx, inside = corners_2d(
        y, x, H, W, row_ok, C, W * C, True)
    return y0, x0, dx, dy, ok00, ok01, ok10, ok11, ly, lx, tl.where(inside, m, 0.0)


@triton.jit
def _block_rows(M, oH, oW, INDEX_64: tl.constexpr, BLOCK_M: tl.constexpr):
    """This program's output positions (flat over N, oH, oW; int64 with INDEX_64), their
    validity and their sample index ``n``."""
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    return rows, rows < M, rows // (oH * oW)


@triton.jit
def _load_corners(ptr, a, dx, dy, ok00, ok01, ok10, ok11, cm):
    """The four corner tiles at addresses ``ptr + a`` (+ steps), float32, 0 where invalid."""
    v00 = tl.load(ptr + a, mask=ok00[:, None] & cm, other=0.0).to(tl.float32)
    v01 = tl.load(ptr + a + dx[:, None], mask=ok01[:, None] & cm, other=0.0).to(tl.float32)
    v10 = tl.load(ptr + a + dy[:, None], mask=ok10[:, None] & cm, other=0.0).to(tl.float32)
    v11 = tl.load(ptr + a + (dx + dy)[:, None], mask=ok11[:, None] & cm,
                  other=0.0).to(tl.float32)
    return v00, v01, v10, v11


@triton.jit
def _dcnv3_fwd_kernel(
    x_ptr,     # input (N, H, W, C), channels last
    off_ptr,   # offsets, addressed by OFF_ROW / OFF_GROUP (module docstring)
    mask_ptr,  # mask, addressed by MASK_ROW / MASK_GROUP
    out_ptr,   # output (N, oH, oW, C)
    M, H, W, C, Cg, oH, oW, KH, KW, P, sh, sw, ph, pw, dh, dw, offset_scale,
    OFF_ROW, OFF_GROUP, MASK_ROW, MASK_GROUP,
    REMOVE_CENTER: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One program: BLOCK_M output positions x BLOCK_C channels of group ``program_id(1)``."""
    rows, row_ok, n = _block_rows(M, oH, oW, INDEX_64, BLOCK_M)
    g = tl.program_id(1)
    ch = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    ch_ok = ch < Cg
    img = n[:, None] * (H * W * C) + (g * Cg + ch)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for p in range(P):
        y0, x0, dx, dy, ok00, ok01, ok10, ok11, ly, lx, m = _tap_corners(
            off_ptr, mask_ptr, rows, g, p, row_ok, H, W, C, oH, oW, KH, KW, sh, sw, ph, pw, dh,
            dw, offset_scale, OFF_ROW, OFF_GROUP, MASK_ROW, MASK_GROUP, REMOVE_CENTER)
        w00, w01, w10, w11 = corner_weights(ly, lx, m)
        a = img + ((y0 * W + x0).to(n.dtype) * C)[:, None]
        v00, v01, v10, v11 = _load_corners(x_ptr, a, dx, dy, ok00, ok01, ok10, ok11,
                                           ch_ok[None, :])
        acc += (w00[:, None] * v00 + w01[:, None] * v01 + w10[:, None] * v10
                + w11[:, None] * v11)
    o = out_ptr + rows[:, None] * C + (g * Cg + ch)[None, :]
    tl.store(o, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & ch_ok[None, :])


@triton.jit
def _dcnv3_bwd_kernel(
    x_ptr,      # input (N, H, W, C)
    off_ptr,    # offsets (module docstring)
    mask_ptr,   # mask
    gout_ptr,   # output gradient (N, oH, oW, C)
    gin_ptr,    # input gradient, float32 (N, H, W, C), atomics; unused without NEED_IN
    goff_ptr,   # offset gradient, the offsets' addressing; unused without NEED_OM
    gmask_ptr,  # mask gradient, the mask's addressing; unused without NEED_OM
    M, H, W, C, Cg, oH, oW, KH, KW, P, sh, sw, ph, pw, dh, dw, offset_scale,
    OFF_ROW, OFF_GROUP, MASK_ROW, MASK_GROUP,
    REMOVE_CENTER: tl.constexpr, NEED_IN: tl.constexpr, NEED_OM: tl.constexpr,
    INDEX_64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One program: BLOCK_M output positions of group ``program_id(1)``, all its channels in
    blocks of BLOCK_C (the offset and mask gradients sum over them, written once, no
    atomics)."""
    rows, row_ok, n = _block_rows(M, oH, oW, INDEX_64, BLOCK_M)
    g = tl.program_id(1)
    for p in range(P):
        y0, x0, dx, dy, ok00, ok01, ok10, ok11, ly, lx, m = _tap_corners(
            off_ptr, mask_ptr, rows, g, p, row_ok, H, W, C, oH, oW, KH, KW, sh, sw, ph, pw, dh,
            dw, offset_scale, OFF_ROW, OFF_GROUP, MASK_ROW, MASK_GROUP, REMOVE_CENTER)
        w00, w01, w10, w11 = corner_weights(ly, lx, m)
        corner = n * (H * W * C) + (y0 * W + x0).to(n.dtype) * C + g * Cg
        s00 = tl.zeros((BLOCK_M,), dtype=tl.float32)
        s01 = tl.zeros((BLOCK_M,), dtype=tl.float32)
        s10 = tl.zeros((BLOCK_M,), dtype=tl.float32)
        s11 = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for c0 in range(0, Cg, BLOCK_C):
            ch = c0 + tl.arange(0, BLOCK_C)
            cm = (ch < Cg)[None, :]
            go = tl.load(gout_ptr + rows[:, None] * C + (g * Cg + ch)[None, :],
                         mask=row_ok[:, None] & cm, other=0.0).to(tl.float32)
            a = corner[:, None] + ch[None, :]
            if NEED_OM:
                v00, v01, v10, v11 = _load_corners(x_ptr, a, dx, dy, ok00, ok01, ok10, ok11, cm)
                s00 += tl.sum(go * v00, axis=1)
                s01 += tl.sum(go * v01, axis=1)
                s10 += tl.sum(go * v10, axis=1)
                s11 += tl.sum(go * v11, axis=1)
            if NEED_IN:
                tl.atomic_add(gin_ptr + a, w00[:, None] * go, mask=ok00[:, None] & cm)
                tl.atomic_add(gin_ptr + a + dx[:, None], w01[:, None] * go,
                              mask=ok01[:, None] & cm)
                tl.atomic_add(gin_ptr + a + dy[:, None], w10[:, None] * go,
                              mask=ok10[:, None] & cm)
                tl.atomic_add(gin_ptr + a + (dx + dy)[:, None], w11[:, None] * go,
                              mask=ok11[:, None] & cm)
        if NEED_OM:
            gy, gx = position_grad_2d(s00, s01, s10, s11, ly, lx, m * offset_scale)
            # the dot products are 0 outside the cut-off (every corner load masked)
            u00, u01, u10, u11 = corner_weights(ly, lx, 1.0)
            gm = u00 * s00 + u01 * s01 + u10 * s10 + u11 * s11
            o = goff_ptr + rows * OFF_ROW + g * OFF_GROUP + 2 * p
            tl.store(o, gx.to(goff_ptr.dtype.element_ty), mask=row_ok)
            tl.store(o + 1, gy.to(goff_ptr.dtype.element_ty), mask=row_ok)
            tl.store(gmask_ptr + rows * MASK_ROW + g * MASK_GROUP + p,
                     gm.to(gmask_ptr.dtype.element_ty), mask=row_ok)


# GPU configurations. Forward: one per channel block (the launcher takes the next power of
# two of Cg, clamped to these). Backward: channel blocks of 16 only (it loops over a group's
# channels; 32 and 64 spill on sm_80 with the four corner loads and atomics live). Every
# dtype; no tl.dot, so no TF32 variant.
GPU_BLOCKS_C = (16, 32, 64)
GPU_BWD_BLOCK_C = 16
GPU_BWD_WARPS = 8
BLOCK_M_GPU_BWD = 64  # 32 rows with 4 or 8 warps, and 16 rows with 4, spill a few bytes
# A register budget for ptxas: without one, Triton 3.6's ptxas aimed at 80 registers for the
# backward and spilled (float16/bfloat16, sm_80); Triton 3.9 uses up to ~200 either way.
GPU_BWD_MAXNREG = 255
BLOCK_M_GPU = 32
_FWD_CONFIGS = [triton.Config({"BLOCK_M": BLOCK_M_GPU, "BLOCK_C": bc}, num_warps=4,
                              num_stages=1) for bc in GPU_BLOCKS_C]
_BWD_CONFIGS = [triton.Config({"BLOCK_M": BLOCK_M_GPU_BWD, "BLOCK_C": GPU_BWD_BLOCK_C},
                              num_warps=GPU_BWD_WARPS, num_stages=1, maxnreg=GPU_BWD_MAXNREG)]


def _report_signature(pointers, flags):
    """Signature of the report (``spec.KernelSpec``): 3x3, float32 positions and gradients of
    the positions (as under autocast), the data in the label's dtype."""
    def build(label, index_64=False):
        e = "*" + ELEMENT[label]
        types = {p: e for p in pointers}
        types.update(off_ptr="*fp32", mask_ptr="*fp32", gin_ptr="*fp32", goff_ptr="*fp32",
                     gmask_ptr="*fp32", offset_scale="fp32")
        return types, dict(REMOVE_CENTER=False, INDEX_64=index_64, **flags)
    return build


KERNEL_SPECS = [
    KernelSpec(name, fn, {f + i: configs for f in ("half", "float32") for i in ("", "_i64")},
               _report_signature(pointers, flags), dtypes=("fp32", "fp16", "bf16"),
               aligned=("C", "Cg"))
    for name, fn, configs, pointers, flags in (
        ("dcnv3_fwd", _dcnv3_fwd_kernel, _FWD_CONFIGS, ("x_ptr", "out_ptr"), {}),
        ("dcnv3_bwd", _dcnv3_bwd_kernel, _BWD_CONFIGS, ("x_ptr", "gout_ptr"),
         dict(NEED_IN=True, NEED_OM=True)))
]
