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

Hostile offsets: a position is "inside" only when ``-1 < y < H`` and ``-1 < x < W``, which is
False for NaN; outside positions are replaced by 0 before the float -> int conversion, corner
indices are clamped into the image, and every load and atomic is masked by corner validity.
So NaN, inf or 1e30 offsets can neither form nor use an out-of-bounds address; such samples
contribute 0 and get zero offset/mask gradients (CONVENTIONS.md, ``torch_impl._plan``).
"""

import triton
import triton.language as tl


@triton.jit
def _sample_plan(off_ptr,   # offset (N, 2*G*K, oH, oW)
                 mask_ptr,  # mask (N, G*K, oH, oW); unused without HAS_MASK
                 n, rem, oy, ox, pix_ok, g, k, G, H, W, C, oHW, sh, sw, ph, pw, dh, dw,
                 KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr):
    """Bilinear plan of one (tap, offset group) for a tile of pixels.

    Returns the four corner addresses into the channels-last input (element offsets of
    channel 0), their validity (inside the image, pixel valid), the fractional parts ``ly``,
    ``lx`` and the factor ``mm`` = inside * mask that multiplies every sample.
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
    # Comparisons are False for NaN: non-finite positions are outside.
    inside = pix_ok & (y >= -1.0) & (y < H) & (x >= -1.0) & (x < W)
    y = tl.where(inside, y, 0.0)
    x = tl.where(inside, x, 0.0)
    y0f = tl.floor(y)
    x0f = tl.floor(x)
    ly = y - y0f
    lx = x - x0f
    y0 = y0f.to(tl.int64)  # in [-1, H-1] once clamped to the inside
    x0 = x0f.to(tl.int64)
    vy0 = inside & (y0 >= 0)
    vy1 = inside & (y0 < H - 1)
    vx0 = x0 >= 0
    vx1 = x0 < W - 1
    y0c = tl.maximum(y0, 0)
    y1c = tl.minimum(y0 + 1, H - 1)
    x0c = tl.maximum(x0, 0)
    x1c = tl.minimum(x0 + 1, W - 1)
    r0 = (n * H + y0c) * W
    r1 = (n * H + y1c) * W
    a00 = (r0 + x0c) * C
    a01 = (r0 + x1c) * C
    a10 = (r1 + x0c) * C
    a11 = (r1 + x1c) * C
    mm = inside.to(tl.float32)
    if HAS_MASK:
        mv = tl.load(mask_ptr + n * (G * K) * oHW + ch * oHW + rem, mask=pix_ok, other=0.0)
        mm = mm * mv.to(tl.float32)
    return (a00, a01, a10, a11, vy0 & vx0, vy0 & vx1, vy1 & vx0, vy1 & vx1, ly, lx, mm)


@triton.jit
def _gather_columns(x_ptr,  # input, channels-last (N, H, W, C)
                    a00, a01, a10, a11, ok00, ok01, ok10, ok11, w00, w01, w10, w11, cc, c_ok):
    """Blend the four corners of channels ``cc`` into a float32 [BLOCK_M, BLOCK_C] tile."""
    cm = c_ok[None, :]
    cols = w00[:, None] * tl.load(x_ptr + a00[:, None] + cc[None, :], mask=ok00[:, None] & cm,
                                  other=0.0).to(tl.float32)
    cols += w01[:, None] * tl.load(x_ptr + a01[:, None] + cc[None, :], mask=ok01[:, None] & cm,
                                   other=0.0).to(tl.float32)
    cols += w10[:, None] * tl.load(x_ptr + a10[:, None] + cc[None, :], mask=ok10[:, None] & cm,
                                   other=0.0).to(tl.float32)
    cols += w11[:, None] * tl.load(x_ptr + a11[:, None] + cc[None, :], mask=ok11[:, None] & cm,
                                   other=0.0).to(tl.float32)
    return cols


@triton.jit
def _dot(a, b, acc, INPUT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr):
    """acc + a @ b. DOT_UPCAST computes in float32 (the interpreter's bfloat16 dot is wrong)."""
    if DOT_UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


@triton.jit
def _pixels(pid_m, P, oHW, oW, BLOCK_M: tl.constexpr):
    pix = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n = pix // oHW
    rem = pix % oHW
    return pix < P, n, rem, rem // oW, rem % oW


@triton.jit
def _deform_conv2d_fwd_kernel(
        x_ptr,     # input, channels-last (N, H, W, C)
        w_ptr,     # weight (groups, K, Cg, Og)
        off_ptr,   # offset (N, 2*G*K, oH, oW)
        mask_ptr,  # mask (N, G*K, oH, oW); unused without HAS_MASK
        bias_ptr,  # bias (O,); unused without HAS_BIAS
        out_ptr,   # output (N, O, oH, oW), every element written
        P, C, H, W, oH, oW, Cg, Og, Cpg, G, O, sh, sw, ph, pw, dh, dw,
        KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr,
        INPUT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_C: tl.constexpr):
    """Implicit GEMM: out tile [BLOCK_M pixels, BLOCK_N channels of conv group pid 2]."""
    K = KH * KW
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    grp = tl.program_id(2).to(tl.int64)
    oHW = oH * oW
    pix_ok, n, rem, oy, ox = _pixels(pid_m, P, oHW, oW, BLOCK_M)
    oc = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channel within the conv group
    oc_ok = oc < Og
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    c_begin = grp * Cg
    c_end = c_begin + Cg
    for g in range(c_begin // Cpg, (c_end - 1) // Cpg + 1):
        lo = tl.maximum(c_begin, g * Cpg)
        hi = tl.minimum(c_end, g * Cpg + Cpg)
        for k in range(K):
            a00, a01, a10, a11, ok00, ok01, ok10, ok11, ly, lx, mm = _sample_plan(
                off_ptr, mask_ptr, n, rem, oy, ox, pix_ok, g, k, G, H, W, C, oHW,
                sh, sw, ph, pw, dh, dw, KH, KW, HAS_MASK)
            hy = 1.0 - ly
            hx = 1.0 - lx
            w00 = hy * hx * mm
            w01 = hy * lx * mm
            w10 = ly * hx * mm
            w11 = ly * lx * mm
            w_row = (grp * K + k) * Cg - c_begin
            for c0 in range(lo, hi, BLOCK_C):
                cc = c0 + tl.arange(0, BLOCK_C)
                c_ok = cc < hi
                cols = _gather_columns(x_ptr, a00, a01, a10, a11, ok00, ok01, ok10, ok11,
                                       w00, w01, w10, w11, cc, c_ok)
                wt = tl.load(w_ptr + (w_row + cc)[:, None] * Og + oc[None, :],
                             mask=c_ok[:, None] & oc_ok[None, :], other=0.0)
                acc = _dot(cols.to(wt.dtype), wt, acc, INPUT_PRECISION, DOT_UPCAST)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + grp * Og + oc, mask=oc_ok, other=0.0).to(tl.float32)[None, :]
    out_off = n[:, None] * O * oHW + (grp * Og + oc)[None, :] * oHW + rem[:, None]
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty),
             mask=pix_ok[:, None] & oc_ok[None, :])


@triton.jit
def _deform_conv2d_bwd_data_kernel(
        x_ptr,      # input, channels-last (N, H, W, C)
        w_ptr,      # weight (groups, K, Cg, Og)
        off_ptr,    # offset (N, 2*G*K, oH, oW)
        mask_ptr,   # mask (N, G*K, oH, oW); unused without HAS_MASK
        gout_ptr,   # output gradient (N, O, oH, oW)
        gin_ptr,    # float32 input gradient, channels-last (N, H, W, C), zeroed, atomics
        goff_ptr,   # offset gradient (N, 2*G*K, oH, oW), every element written if NEED_OM
        gmask_ptr,  # mask gradient (N, G*K, oH, oW), written if NEED_OM and HAS_MASK
        P, C, H, W, oH, oW, Cg, Og, Cpg, G, O, sh, sw, ph, pw, dh, dw,
        KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr, NEED_IN: tl.constexpr,
        NEED_OM: tl.constexpr, INPUT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr):
    """Input, offset and mask gradients of a tile of BLOCK_M pixels.

    For each (offset group, tap, channel block) the column gradient tile
    ``grad_out[pixels, Og] @ weight[Og, channels]`` is recomputed, scattered to the four corners
    (atomics) and reduced over the channels of the offset group against the corner values,
    which gives the offset and mask gradients of the tile without atomics.
    """
    K = KH * KW
    pid_m = tl.program_id(0).to(tl.int64)
    oHW = oH * oW
    pix_ok, n, rem, oy, ox = _pixels(pid_m, P, oHW, oW, BLOCK_M)
    go_base = n * O * oHW + rem
    for g in range(G):
        g_begin = g * Cpg
        g_end = g_begin + Cpg
        for k in range(K):
            a00, a01, a10, a11, ok00, ok01, ok10, ok11, ly, lx, mm = _sample_plan(
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
                    if NEED_OM:
                        v = tl.load(x_ptr + a00[:, None] + cc[None, :], mask=ok00[:, None] & cm,
                                    other=0.0)
                        s00 += tl.sum(gcol * v.to(tl.float32), axis=1)
                        v = tl.load(x_ptr + a01[:, None] + cc[None, :], mask=ok01[:, None] & cm,
                                    other=0.0)
                        s01 += tl.sum(gcol * v.to(tl.float32), axis=1)
                        v = tl.load(x_ptr + a10[:, None] + cc[None, :], mask=ok10[:, None] & cm,
                                    other=0.0)
                        s10 += tl.sum(gcol * v.to(tl.float32), axis=1)
                        v = tl.load(x_ptr + a11[:, None] + cc[None, :], mask=ok11[:, None] & cm,
                                    other=0.0)
                        s11 += tl.sum(gcol * v.to(tl.float32), axis=1)
                    if NEED_IN:
                        tl.atomic_add(gin_ptr + a00[:, None] + cc[None, :],
                                      gcol * (hy * hx * mm)[:, None], mask=ok00[:, None] & cm,
                                      sem="relaxed")
                        tl.atomic_add(gin_ptr + a01[:, None] + cc[None, :],
                                      gcol * (hy * lx * mm)[:, None], mask=ok01[:, None] & cm,
                                      sem="relaxed")
                        tl.atomic_add(gin_ptr + a10[:, None] + cc[None, :],
                                      gcol * (ly * hx * mm)[:, None], mask=ok10[:, None] & cm,
                                      sem="relaxed")
                        tl.atomic_add(gin_ptr + a11[:, None] + cc[None, :],
                                      gcol * (ly * lx * mm)[:, None], mask=ok11[:, None] & cm,
                                      sem="relaxed")
            if NEED_OM:
                ch = g * K + k
                gy = mm * (hx * (s10 - s00) + lx * (s11 - s01))
                gx = mm * (hy * (s01 - s00) + ly * (s11 - s10))
                o_base = n * (2 * G * K) * oHW + rem
                tl.store(goff_ptr + o_base + (2 * ch) * oHW,
                         gy.to(goff_ptr.dtype.element_ty), mask=pix_ok)
                tl.store(goff_ptr + o_base + (2 * ch + 1) * oHW,
                         gx.to(goff_ptr.dtype.element_ty), mask=pix_ok)
                if HAS_MASK:
                    # mm / mask = inside: the mask gradient uses the unmasked sample.
                    ins = (ok00 | ok01 | ok10 | ok11).to(tl.float32)
                    gm = ins * (hy * hx * s00 + hy * lx * s01 + ly * hx * s10 + ly * lx * s11)
                    tl.store(gmask_ptr + n * (G * K) * oHW + ch * oHW + rem,
                             gm.to(gmask_ptr.dtype.element_ty), mask=pix_ok)


@triton.jit
def _deform_conv2d_bwd_weight_kernel(
        x_ptr,     # input, channels-last (N, H, W, C)
        off_ptr,   # offset (N, 2*G*K, oH, oW)
        mask_ptr,  # mask (N, G*K, oH, oW); unused without HAS_MASK
        gout_ptr,  # output gradient (N, O, oH, oW)
        blk_ptr,   # int32 (n_blocks, 4): channel blocks (c_lo, c_hi, conv group, offset group)
        gw_ptr,    # float32 partial weight gradients (SPLIT, groups, K, Cg, Og), all written
        P, C, H, W, oH, oW, Cg, Og, G, O, groups, SPLIT, sh, sw, ph, pw, dh, dw,
        KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr,
        INPUT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_C: tl.constexpr):
    """Weight gradient tile [channel block, BLOCK_N] of one tap over pixel tiles s, s+SPLIT, ...

    The sampled columns are recomputed per pixel tile; each split writes its own partial sum
    (no atomics, deterministic); the launcher adds the SPLIT partials.
    """
    K = KH * KW
    pid0 = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2).to(tl.int64)
    blk = pid0 // K
    k = pid0 % K
    c_lo = tl.load(blk_ptr + blk * 4).to(tl.int64)
    c_hi = tl.load(blk_ptr + blk * 4 + 1).to(tl.int64)
    grp = tl.load(blk_ptr + blk * 4 + 2).to(tl.int64)
    g = tl.load(blk_ptr + blk * 4 + 3).to(tl.int64)
    cc = c_lo + tl.arange(0, BLOCK_C)
    c_ok = cc < c_hi
    oc = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    oc_ok = oc < Og
    oHW = oH * oW
    acc = tl.zeros((BLOCK_C, BLOCK_N), dtype=tl.float32)
    for t in range(split, tl.cdiv(P, BLOCK_M), SPLIT):
        pix_ok, n, rem, oy, ox = _pixels(t, P, oHW, oW, BLOCK_M)
        a00, a01, a10, a11, ok00, ok01, ok10, ok11, ly, lx, mm = _sample_plan(
            off_ptr, mask_ptr, n, rem, oy, ox, pix_ok, g, k, G, H, W, C, oHW,
            sh, sw, ph, pw, dh, dw, KH, KW, HAS_MASK)
        hy = 1.0 - ly
        hx = 1.0 - lx
        cols = _gather_columns(x_ptr, a00, a01, a10, a11, ok00, ok01, ok10, ok11,
                               hy * hx * mm, hy * lx * mm, ly * hx * mm, ly * lx * mm, cc, c_ok)
        go = tl.load(gout_ptr + (n * O * oHW + rem)[:, None] + (grp * Og + oc)[None, :] * oHW,
                     mask=pix_ok[:, None] & oc_ok[None, :], other=0.0)
        acc = _dot(tl.trans(cols.to(go.dtype)), go, acc, INPUT_PRECISION, DOT_UPCAST)
    row = ((split * groups + grp) * K + k) * Cg + (cc - grp * Cg)
    tl.store(gw_ptr + row[:, None] * Og + oc[None, :], acc,
             mask=c_ok[:, None] & oc_ok[None, :])
