"""Triton kernels of deformable convolution (``@triton.jit`` only; launchers in ``launch.py``).

Layouts the kernels read and write (all contiguous):

- input ``x``: channels-last ``(N, H, W, C)``, so one bilinear corner of one pixel is a
  contiguous run of channels that all share the offset of their offset group;
- weight ``w``: ``(groups, K, Cg, Og)``, rows ordered (tap, channel) like the columns;
- offset ``(N, 2*G*K, oH, oW)``, mask ``(N, G*K, oH, oW)`` and output / output gradient
  ``(N, O, oH, oW)``: the caller's NCHW layouts, read a pixel tile at a time.

Pixels are flattened over ``(n, oy, ox)`` into ``P = N*oH*oW``. Channel blocks never span two
offset groups nor two conv groups: a block runs over the intersection of one conv group and
one offset group (a "segment"), so every row of a gathered ``[BLOCK_M, BLOCK_C]`` tile uses
one offset. Any ``C``, ``groups`` and ``G`` work; a segment narrower than ``BLOCK_C`` wastes
part of the tile (masked), it is not an error.

Index width: with ``INDEX_64=False`` every address is computed in 32-bit integers, which the
launcher chooses when every tensor has fewer than 2**31 elements (registers are the scarce
resource of these kernels: 64-bit address tiles cost twice as many); ``INDEX_64=True`` casts
the program ids and pixel indices to int64 first, so all address arithmetic is 64-bit.

Hostile offsets: corners come from ``bilinear.corner_flags_2d`` with the inclusive lower cut-off: a
position is "inside" only when ``y >= -1``, ``y < H``, ``x >= -1`` and ``x < W`` hold, which is
False for NaN; outside positions are replaced by 0 before the float -> int conversion, corner
indices are clamped into the image, and every load and atomic is masked by corner validity.
So NaN, inf or 1e30 offsets can neither form nor use an
out-of-bounds address; such samples contribute 0 and get zero offset/mask gradients.

Shape integers that change from batch to batch (``N``, ``H``, ``W``, ``oH``, ``oW``, the split
counts and the size bucket) are not specialised, so multi-scale inputs reuse one binary;
channel counts, groups and stride/padding/dilation are (they are fixed by the model).

Autotune configurations sit beside each kernel (``*_CONFIGS``); ``KERNEL_SPECS`` at the end
feeds the offline resource report (``report.py``).
"""

import triton.language as tl

import triton

from ...triton.bilinear import corner_flags_2d, position_grad_2d
from ...triton.spec import KernelSpec, conv_signature

_DYNAMIC = ["N", "H", "W", "oH", "oW", "SPLIT", "SIZE_BUCKET"]


@triton.jit
def _pixels(pid_m, N, oH, oW, BLOCK_M: tl.constexpr, INDEX_64: tl.constexpr):
    """Pixel tile ``pid_m``: validity, image, flat output position, row and column."""
    oHW = oH * oW
    # Widen before multiplying (pid_m may be a program id or a loop counter).
    pix = tl.zeros((BLOCK_M,), dtype=tl.int64 if INDEX_64 else tl.int32) + pid_m
    pix = pix * BLOCK_M + tl.arange(0, BLOCK_M)
    n = pix // oHW
    rem = pix % oHW
    return pix < N * oHW, n, rem, rem // oW, rem % oW


@triton.jit
def _sample_plan(off_ptr,   # offset (N, 2*G*K, oH, oW)
                 mask_ptr,  # mask (N, G*K, oH, oW); unused without HAS_MASK
                 n, rem, oy, ox, pix_ok, g, k, G, H, W, C, oHW, sh, sw, ph, pw, dh, dw,
                 KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr):
    """Bilinear plan of one (tap, offset group) for a tile of pixels.

    Returns the address ``a00`` of corner (y0, x0) into the channels-last input (element
    offset of channel 0), the steps ``dx``/``dy`` to the corners (y0, x0+1) and (y0+1, x0)
    (one column / row, or 0 where the clamped corners coincide), the validity of the four
    corners, the fractional parts ``ly``, ``lx`` and the factor ``mm`` = inside * mask that
    multiplies every sample. Every corner address lies inside the image, valid or not.
    """
    K = KH * KW
    i = k // KW
    j = k % KW
    ch = g * K + k
    off_base = n * (2 * G * K) * oHW + rem
    dy = tl.load(off_ptr + off_base + (2 * ch) * oHW, mask=pix_ok, other=0.0).to(tl.float32)
    dx = tl.load(off_ptr + off_base + (2 * ch + 1) * oHW, mask=pix_ok, other=0.0).to(tl.float32)
    y = (oy * sh - ph + i * dh).to(tl.float32) + dy
    x = (ox * sw - pw + j * dw).to(tl.float32) + dx
    # The inclusive lower cut-off of deformable convolution (y >= -1).
    y0c, x0c, has_dx, has_dy, ok00, ok01, ok10, ok11, ly, lx, inside = corner_flags_2d(
        y, x, H, W, pix_ok, False)
    a00 = ((n * H + y0c) * W + x0c) * C
    dx = tl.where(has_dx, C, 0)
    dy = tl.where(has_dy, W * C, 0)
    mm = inside.to(tl.float32)
    if HAS_MASK:
        mv = tl.load(mask_ptr + n * (G * K) * oHW + ch * oHW + rem, mask=pix_ok, other=0.0)
        mm = mm * mv.to(tl.float32)
    return a00, dx, dy, ok00, ok01, ok10, ok11, ly, lx, mm


@triton.jit
def _gather_columns(x_ptr,  # input, channels-last (N, H, W, C)
                    a00, dx, dy, ok00, ok01, ok10, ok11, w00, w01, w10, w11, cc, c_ok):
    """Blend the four corners of channels ``cc`` into a float32 [BLOCK_M, BLOCK_C] tile.

    One pointer tile, shifted by a row vector per corner, keeps a single [BLOCK_M, BLOCK_C]
    address tile live instead of four.
    """
    cm = c_ok[None, :]
    p = x_ptr + (a00[:, None] + cc[None, :])
    cols = w00[:, None] * tl.load(p, mask=ok00[:, None] & cm, other=0.0).to(tl.float32)
    cols += w01[:, None] * tl.load(p + dx[:, None], mask=ok01[:, None] & cm,
                                   other=0.0).to(tl.float32)
    cols += w10[:, None] * tl.load(p + dy[:, None], mask=ok10[:, None] & cm,
                                   other=0.0).to(tl.float32)
    cols += w11[:, None] * tl.load(p + (dx + dy)[:, None], mask=ok11[:, None] & cm,
                                   other=0.0).to(tl.float32)
    return cols


@triton.jit
def _dot(a, b, acc, INPUT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr):
    """acc + a @ b. DOT_UPCAST computes in float32 (the interpreter's bfloat16 dot is wrong)."""
    if DOT_UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


def config_table(names, rows_by_family, num_stages=2):
    """Autotune config lists by family (``spec.family``: float16/bfloat16 ("half") or float32
    data, with 32-bit or 64-bit ("_i64") indices) from rows of block sizes (in the order of
    ``names``) followed by ``num_warps`` and, optionally, the row's stages (default
    ``num_stages``) and its register budget ``maxnreg`` (ptxas' own choice otherwise). Each
    kernel's table follows the kernel; each list is the set that compiles without register
    spills for sm_90a and sm_80 under Triton 3.6 and 3.9 (``deformconv kernels``; results in
    ``benchmarks/results/kernels-triton-*.json``)."""
    n = len(names)
    return {fam: [triton.Config(dict(zip(names, row[:n])), num_warps=row[n],
                                num_stages=row[n + 1] if len(row) > n + 1 else num_stages,
                                maxnreg=row[n + 2] if len(row) > n + 2 else None)
                  for row in rows]
            for fam, rows in rows_by_family.items()}


@triton.jit(do_not_specialize=_DYNAMIC)
def _deform_conv2d_fwd_kernel(
        x_ptr,     # input, channels-last (N, H, W, C)
        w_ptr,     # weight (groups, K, Cg, Og)
        off_ptr,   # offset (N, 2*G*K, oH, oW)
        mask_ptr,  # mask (N, G*K, oH, oW); unused without HAS_MASK
        bias_ptr,  # bias (O,); unused without HAS_BIAS
        out_ptr,   # output (SPLIT, N, O, oH, oW): the output when SPLIT == 1, else float32
                   # partial sums over the taps k = split, split + SPLIT, ...; all written
        N, C, H, W, oH, oW, Cg, Og, Cpg, G, O, sh, sw, ph, pw, dh, dw, SPLIT, SIZE_BUCKET,
        KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr,
        INPUT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr, INDEX_64: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Implicit GEMM: out tile [BLOCK_M pixels, BLOCK_N channels of one conv group], grid
    ``(pixel tiles, output-channel tiles, groups * SPLIT)``. ``SIZE_BUCKET`` is only an
    autotune key."""
    K = KH * KW
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    grp = tl.program_id(2) // SPLIT
    split = tl.program_id(2) % SPLIT
    oHW = oH * oW
    pix_ok, n, rem, oy, ox = _pixels(pid_m, N, oH, oW, BLOCK_M, INDEX_64)
    oc = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channel within the conv group
    oc_ok = oc < Og
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    c_begin = grp * Cg
    c_end = c_begin + Cg
    for g in range(c_begin // Cpg, (c_end - 1) // Cpg + 1):
        lo = tl.maximum(c_begin, g * Cpg)
        hi = tl.minimum(c_end, g * Cpg + Cpg)
        for k in range(split, K, SPLIT):
            a00, dx, dy, ok00, ok01, ok10, ok11, ly, lx, mm = _sample_plan(
                off_ptr, mask_ptr, n, rem, oy, ox, pix_ok, g, k, G, H, W, C, oHW,
                sh, sw, ph, pw, dh, dw, KH, KW, HAS_MASK)
            hy = 1.0 - ly
            hx = 1.0 - lx
            w_row = (grp * K + k) * Cg - c_begin
            for c0 in range(lo, hi, BLOCK_C):
                cc = c0 + tl.arange(0, BLOCK_C)
                c_ok = cc < hi
                cols = _gather_columns(x_ptr, a00, dx, dy, ok00, ok01, ok10, ok11,
                                       hy * hx * mm, hy * lx * mm, ly * hx * mm, ly * lx * mm,
                                       cc, c_ok)
                wt = tl.load(w_ptr + (w_row + cc)[:, None] * Og + oc[None, :],
                             mask=c_ok[:, None] & oc_ok[None, :], other=0.0)
                acc = _dot(cols.to(wt.dtype), wt, acc, INPUT_PRECISION, DOT_UPCAST)
    if HAS_BIAS:
        b = tl.load(bias_ptr + grp * Og + oc, mask=oc_ok, other=0.0).to(tl.float32)
        acc += tl.where(split == 0, b, 0.0)[None, :]  # the bias once, in split 0
    out_off = ((split * N + n[:, None]) * O + (grp * Og + oc)[None, :]) * oHW + rem[:, None]
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty),
             mask=pix_ok[:, None] & oc_ok[None, :])


# Forward: [BLOCK_M pixels, BLOCK_N output channels] tiles. Small maps split the taps over
# SPLIT programs (the launcher chooses SPLIT from the device's SM count) instead of using
# smaller tiles, so every config below stays a valid choice for every map. float32 (FMA or
# TF32 dots) needs narrower channel blocks than float16/bfloat16 to stay within registers, and
# no software pipelining (one stage): with two, Triton 3.6's code spilled on sm_80/sm_90a. A
# sixth entry is a register budget (maxnreg): without one, ptxas aimed at fewer registers than
# the tile needs under one Triton version or the other and spilled.
FWD_CONFIGS = config_table(("BLOCK_M", "BLOCK_N", "BLOCK_C"), {
    "half": [(64, 64, 32, 4), (64, 128, 32, 4), (128, 128, 32, 8)],
    "float32": [(64, 64, 16, 8, 1), (128, 64, 16, 8, 1, 255)],
    "half_i64": [(64, 64, 32, 8)],
    "float32_i64": [(32, 64, 16, 8, 2, 255)],
})


@triton.jit(do_not_specialize=_DYNAMIC)
def _deform_conv2d_bwd_data_kernel(
        x_ptr, w_ptr, off_ptr, mask_ptr,  # the forward kernel's inputs, same layouts
        gout_ptr,   # output gradient (N, O, oH, oW)
        gin_ptr,    # float32 input gradient, channels-last (N, H, W, C), zeroed, atomics
        goff_ptr,   # offset gradient (N, 2*G*K, oH, oW), every element written if NEED_OM
        gmask_ptr,  # mask gradient (N, G*K, oH, oW), written if NEED_OM and HAS_MASK
        N, C, H, W, oH, oW, Cg, Og, Cpg, G, O, sh, sw, ph, pw, dh, dw, SIZE_BUCKET,
        KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr, NEED_IN: tl.constexpr,
        NEED_OM: tl.constexpr, INPUT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
        INDEX_64: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr):
    """Input, offset and mask gradients of one (pixel tile, offset group g, tap k), grid
    ``(pixel tiles, G * K)``.

    For each channel block of the offset group the column gradient tile
    ``grad_out[pixels, Og] @ weight[Og, channels]`` is recomputed, scattered to the four corners
    (atomics) and reduced over the channels against the corner values, which gives the offset
    and mask gradients of (g, k) for the tile without atomics.
    """
    K = KH * KW
    pid_m = tl.program_id(0)
    g = tl.program_id(1) // K
    k = tl.program_id(1) % K
    oHW = oH * oW
    pix_ok, n, rem, oy, ox = _pixels(pid_m, N, oH, oW, BLOCK_M, INDEX_64)
    go_base = n * O * oHW + rem
    g_begin = g * Cpg
    g_end = g_begin + Cpg
    a00, dx, dy, ok00, ok01, ok10, ok11, ly, lx, mm = _sample_plan(
        off_ptr, mask_ptr, n, rem, oy, ox, pix_ok, g, k, G, H, W, C, oHW,
        sh, sw, ph, pw, dh, dw, KH, KW, HAS_MASK)
    hy = 1.0 - ly
    hx = 1.0 - lx
    s00 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    s01 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    s10 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    s11 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for grp in range(g_begin // Cg, (g_end - 1) // Cg + 1):
        lo = tl.maximum(grp * Cg, g_begin)
        hi = tl.minimum(grp * Cg + Cg, g_end)
        w_row = (grp * K + k) * Cg - grp * Cg
        for c0 in range(lo, hi, BLOCK_C):
            cc = c0 + tl.arange(0, BLOCK_C)
            c_ok = cc < hi
            gcol = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
            for o0 in range(0, Og, BLOCK_O):
                oo = o0 + tl.arange(0, BLOCK_O)
                o_ok = oo < Og
                go = tl.load(gout_ptr + go_base[:, None] + (grp * Og + oo)[None, :] * oHW,
                             mask=pix_ok[:, None] & o_ok[None, :], other=0.0)
                wt = tl.load(w_ptr + (w_row + cc)[None, :] * Og + oo[:, None],
                             mask=o_ok[:, None] & c_ok[None, :], other=0.0)
                gcol = _dot(go, wt, gcol, INPUT_PRECISION, DOT_UPCAST)
            cm = c_ok[None, :]
            off = a00[:, None] + cc[None, :]
            if NEED_OM:
                p = x_ptr + off
                v = tl.load(p, mask=ok00[:, None] & cm, other=0.0)
                s00 += tl.sum(gcol * v.to(tl.float32), axis=1)
                v = tl.load(p + dx[:, None], mask=ok01[:, None] & cm, other=0.0)
                s01 += tl.sum(gcol * v.to(tl.float32), axis=1)
                v = tl.load(p + dy[:, None], mask=ok10[:, None] & cm, other=0.0)
                s10 += tl.sum(gcol * v.to(tl.float32), axis=1)
                v = tl.load(p + (dx + dy)[:, None], mask=ok11[:, None] & cm, other=0.0)
                s11 += tl.sum(gcol * v.to(tl.float32), axis=1)
            if NEED_IN:
                q = gin_ptr + off
                tl.atomic_add(q, gcol * (hy * hx * mm)[:, None], mask=ok00[:, None] & cm,
                              sem="relaxed")
                tl.atomic_add(q + dx[:, None], gcol * (hy * lx * mm)[:, None],
                              mask=ok01[:, None] & cm, sem="relaxed")
                tl.atomic_add(q + dy[:, None], gcol * (ly * hx * mm)[:, None],
                              mask=ok10[:, None] & cm, sem="relaxed")
                tl.atomic_add(q + (dx + dy)[:, None], gcol * (ly * lx * mm)[:, None],
                              mask=ok11[:, None] & cm, sem="relaxed")
    if NEED_OM:
        ch = g * K + k
        gy, gx = position_grad_2d(s00, s01, s10, s11, ly, lx, mm)
        o_base = n * (2 * G * K) * oHW + rem
        tl.store(goff_ptr + o_base + (2 * ch) * oHW, gy.to(goff_ptr.dtype.element_ty),
                 mask=pix_ok)
        tl.store(goff_ptr + o_base + (2 * ch + 1) * oHW, gx.to(goff_ptr.dtype.element_ty),
                 mask=pix_ok)
        if HAS_MASK:
            # mm / mask = inside: the mask gradient uses the unmasked sample.
            ins = (ok00 | ok01 | ok10 | ok11).to(tl.float32)
            gm = ins * (hy * hx * s00 + hy * lx * s01 + ly * hx * s10 + ly * lx * s11)
            tl.store(gmask_ptr + n * (G * K) * oHW + ch * oHW + rem,
                     gm.to(gmask_ptr.dtype.element_ty), mask=pix_ok)


# Input/offset/mask gradients: one program per (pixel tile, offset group x tap). Rows as in
# FWD_CONFIGS (blocks, warps, optional stages and register budget).
BWD_DATA_CONFIGS = config_table(("BLOCK_M", "BLOCK_O", "BLOCK_C"), {
    "half": [(32, 64, 32, 8), (32, 32, 32, 4, 2, 255), (64, 32, 32, 8)],
    "float32": [(32, 16, 16, 4), (32, 32, 16, 8, 2, 255)],
    "half_i64": [(32, 32, 32, 8, 2, 255), (64, 32, 32, 8)],
    "float32_i64": [(32, 32, 16, 8, 2, 255)],
})


# Weight gradient: [BLOCK_C, BLOCK_N] tiles. BLOCK_C is fixed at WEIGHT_BLOCK_C on the GPU
# because the launcher's channel-block table (built once per shape) depends on it.
WEIGHT_BLOCK_C = 32


_W = WEIGHT_BLOCK_C
BWD_WEIGHT_CONFIGS = config_table(("BLOCK_M", "BLOCK_N", "BLOCK_C"), {
    "half": [(32, 128, _W, 4), (64, 128, _W, 8)],
    "float32": [(32, 64, _W, 4)],
    "half_i64": [(32, 128, _W, 4), (64, 128, _W, 8)],
    "float32_i64": [(32, 32, _W, 4), (32, 64, _W, 8)],
})


@triton.jit(do_not_specialize=_DYNAMIC)
def _deform_conv2d_bwd_weight_kernel(
        x_ptr,     # input, channels-last (N, H, W, C)
        off_ptr,   # offset (N, 2*G*K, oH, oW)
        mask_ptr,  # mask (N, G*K, oH, oW); unused without HAS_MASK
        gout_ptr,  # output gradient (N, O, oH, oW)
        blk_ptr,   # int32 (n_blocks, 4): channel blocks (c_lo, c_hi, conv group, offset group)
        gw_ptr,    # float32 partial weight gradients (SPLIT, groups, K, Cg, Og), all written
        N, C, H, W, oH, oW, Cg, Og, G, O, groups, sh, sw, ph, pw, dh, dw, SPLIT, SIZE_BUCKET,
        KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr,
        INPUT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr, INDEX_64: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Weight gradient tile [channel block, BLOCK_N] of one tap over pixel tiles s, s+SPLIT, ...

    Grid ``(channel blocks * K, output-channel tiles, SPLIT)``. The sampled columns are
    recomputed per pixel tile; each split writes its own partial sum (no atomics,
    deterministic; a split without pixel tiles writes zeros); the launcher adds the partials.
    """
    K = KH * KW
    pid0 = tl.program_id(0)
    pid_n = tl.program_id(1)
    split = tl.program_id(2)
    blk = pid0 // K
    k = pid0 % K
    c_lo = tl.load(blk_ptr + blk * 4)
    c_hi = tl.load(blk_ptr + blk * 4 + 1)
    grp = tl.load(blk_ptr + blk * 4 + 2)
    g = tl.load(blk_ptr + blk * 4 + 3)
    cc = c_lo + tl.arange(0, BLOCK_C)
    c_ok = cc < c_hi
    oc = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    oc_ok = oc < Og
    oHW = oH * oW
    acc = tl.zeros((BLOCK_C, BLOCK_N), dtype=tl.float32)
    for t in range(split, tl.cdiv(N * oHW, BLOCK_M), SPLIT):
        pix_ok, n, rem, oy, ox = _pixels(t, N, oH, oW, BLOCK_M, INDEX_64)
        a00, dx, dy, ok00, ok01, ok10, ok11, ly, lx, mm = _sample_plan(
            off_ptr, mask_ptr, n, rem, oy, ox, pix_ok, g, k, G, H, W, C, oHW,
            sh, sw, ph, pw, dh, dw, KH, KW, HAS_MASK)
        hy = 1.0 - ly
        hx = 1.0 - lx
        cols = _gather_columns(x_ptr, a00, dx, dy, ok00, ok01, ok10, ok11,
                               hy * hx * mm, hy * lx * mm, ly * hx * mm, ly * lx * mm, cc, c_ok)
        go = tl.load(gout_ptr + (n * O * oHW + rem)[:, None] + (grp * Og + oc)[None, :] * oHW,
                     mask=pix_ok[:, None] & oc_ok[None, :], other=0.0)
        acc = _dot(tl.trans(cols.to(go.dtype)), go, acc, INPUT_PRECISION, DOT_UPCAST)
    row = ((split * groups + grp) * K + k) * Cg + (cc - grp * Cg)
    tl.store(gw_ptr + row[:, None] * Og + oc[None, :], acc,
             mask=c_ok[:, None] & oc_ok[None, :])


KERNEL_SPECS = [
    KernelSpec("deform_conv2d_fwd", _deform_conv2d_fwd_kernel, FWD_CONFIGS,
               conv_signature(dict(KH=3, KW=3, HAS_BIAS=True))),
    KernelSpec("deform_conv2d_bwd_data", _deform_conv2d_bwd_data_kernel, BWD_DATA_CONFIGS,
               conv_signature(dict(KH=3, KW=3, NEED_IN=True, NEED_OM=True),
                              {"gin_ptr": "*fp32"})),
    KernelSpec("deform_conv2d_bwd_weight", _deform_conv2d_bwd_weight_kernel, BWD_WEIGHT_CONFIGS,
               conv_signature(dict(KH=3, KW=3), {"gw_ptr": "*fp32", "blk_ptr": "*i32"})),
]
