"""Triton kernels of 1-D, 2-D and 3-D deformable convolution (``@triton.jit`` only; launchers
in ``launch_nd.py``).

One set of kernels serves every dimensionality: ``R`` (1, 2 or 3) is a compile-time constant
and a problem of fewer dimensions is laid out as 3-D with unit leading sizes: 1-D with unit
depth and height (kernel ``1 x 1 x kW``), 2-D with unit depth (kernel ``1 x kH x kW``). The
offsets hold ``R`` displacements per tap in the order of the axes (1-D ``dx``; 2-D ``dy, dx``;
3-D ``dz, dy, dx``), the missing ones are 0, and only the ``2**R`` corners along the sampled
axes are visited (2 linear, 4 bilinear, 8 trilinear). The library's 2-D operator runs the
specialised kernels of ``kernels.py``; R=2 here lets the GPU benchmark time one family for
every dimensionality against them.

Layouts (all contiguous):

- input ``x``: channels-last ``(N, D, H, W, C)``: one corner of one position is a contiguous
  run of channels sharing the offset of their offset group;
- weight ``w``: ``(groups, K, Cg, Og)``, rows ordered (tap, channel);
- offset ``(N, R*G*K, oD, oH, oW)``, mask ``(N, G*K, oD, oH, oW)``, output / output gradient
  ``(N, O, oD, oH, oW)``: the caller's layouts (1-D: the same with unit oD, oH; 2-D: with
  unit oD).

Positions are flattened over ``(n, oz, oy, ox)`` into ``P``. Channel blocks run inside the
intersection of one conv group and one offset group, so every row of a gathered tile uses one
offset. ``INDEX_64`` selects 64-bit address arithmetic; the launcher sets it by the one rule of
``spec.index_64``, otherwise indices stay 32-bit.

Hostile offsets: a position is inside only when ``-1 <= p_d < S_d`` in every dimension (False
for NaN); outside positions are replaced by 0 before the float -> int conversion, corner
indices are clamped, and every load and atomic is masked by corner validity, so no offset can
form an out-of-bounds address; such samples contribute 0 and get zero offset/mask gradients.
"""

import triton.language as tl

import triton

from ...triton.spec import KernelSpec, conv_signature
from .kernels import _dot  # acc + a @ b, the 2-D kernels' helper

# The configuration of each kernel on the GPU (no autotuning: the no-spill report compiles
# exactly these). Small tiles and no software pipelining: with the 8 trilinear corners'
# addresses, validity and weights live, larger tiles or num_stages > 1 spilled (measured offline
# with the wheel's ptxas: 64x64x32 tiles spilled up to 2.8 KB of stack on sm_80/sm_90a).
GPU_BLOCKS = {
    "fwd": {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_C": 16, "num_warps": 4, "num_stages": 1},
    "bwd_data": {"BLOCK_M": 16, "BLOCK_O": 32, "BLOCK_C": 16, "num_warps": 4,
                 "num_stages": 1},
    "bwd_weight": {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_C": 16, "num_warps": 4,
                   "num_stages": 1},
}
# Where ptxas spilled a few bytes with GPU_BLOCKS (its register targets move with the dtype,
# dimension, index width and Triton version), other blocks, warps or a register budget
# (``maxnreg``: without one, ptxas of Triton 3.6 aimed at a register count it could not keep),
# found with ``deformconv kernels`` under Triton 3.6 and 3.9:
# (role, R, dtype label of ``spec.DTYPES``, INDEX_64) -> changes to GPU_BLOCKS[role].
GPU_BLOCKS_OVERRIDES = {
    ("fwd", 1, "fp32", False): {"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 4},
    ("fwd", 1, "fp16", False): {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4},
    ("fwd", 1, "fp16", True): {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4},
    ("fwd", 2, "fp32", False): {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "maxnreg": 255},
    ("fwd", 2, "fp32", True): {"maxnreg": 255},
    ("fwd", 2, "fp16", False): {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4},
    ("fwd", 2, "fp16", True): {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 8},
    ("fwd", 2, "bf16", True): {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 8},
    ("fwd", 3, "fp32", False): {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4},
    ("fwd", 3, "fp32", True): {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "maxnreg": 168},
    ("fwd", 3, "tf32", True): {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "maxnreg": 168},
    ("bwd_data", 1, "fp32", True): {"BLOCK_M": 16, "BLOCK_O": 16, "num_warps": 8},
    ("bwd_data", 1, "tf32", True): {"BLOCK_M": 16, "BLOCK_O": 16, "num_warps": 4},
    ("bwd_data", 3, "fp32", False): {"BLOCK_M": 32, "BLOCK_O": 16, "num_warps": 4},
    ("bwd_data", 3, "fp32", True): {"BLOCK_M": 16, "BLOCK_O": 32, "num_warps": 8},
    ("bwd_data", 3, "tf32", True): {"BLOCK_M": 16, "BLOCK_O": 32, "num_warps": 8},
    ("bwd_data", 3, "fp16", False): {"BLOCK_M": 16, "BLOCK_O": 32, "num_warps": 8},
    ("bwd_data", 3, "bf16", False): {"BLOCK_M": 16, "BLOCK_O": 32, "num_warps": 8},
    ("bwd_data", 3, "fp16", True): {"BLOCK_M": 16, "BLOCK_O": 16, "num_warps": 4},
    ("bwd_data", 3, "bf16", True): {"BLOCK_M": 16, "BLOCK_O": 16, "num_warps": 4},
    ("bwd_weight", 1, "fp32", True): {"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 4},
    ("bwd_weight", 1, "tf32", True): {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 8},
    ("bwd_weight", 1, "fp16", True): {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 8},
    ("bwd_weight", 1, "bf16", True): {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 8},
    ("bwd_weight", 2, "fp32", True): {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 8},
    ("bwd_weight", 3, "fp32", True): {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4},
    ("bwd_weight", 3, "tf32", False): {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4},
    ("bwd_weight", 3, "tf32", True): {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4},
    ("bwd_weight", 3, "fp16", False): {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4},
    ("bwd_weight", 3, "bf16", False): {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4},
    ("bwd_weight", 2, "fp32", False): {"maxnreg": 255},
    # R=2 input gradient: Triton 3.9's ptxas aimed at 168 registers and spilled
    **{("bwd_data", 2, label, idx64): {"maxnreg": 255} for label in ("fp32", "tf32", "fp16", "bf16")
       for idx64 in (False, True)},
}


def gpu_blocks(role, R, label, idx64):
    """Blocks, warps, stages (and ``maxnreg`` where set) of kernel ``role`` on the GPU for ``R``
    dimensions (1, 2, 3), dtype label ``label`` (``spec.DTYPES``) and index width."""
    return dict(GPU_BLOCKS[role], **GPU_BLOCKS_OVERRIDES.get((role, R, label, idx64), {}))


@triton.jit
def _program_ids(INDEX_64: tl.constexpr):
    """The three program ids, as int64 when INDEX_64 (addresses may pass 2**31)."""
    p0 = tl.program_id(0)
    p1 = tl.program_id(1)
    p2 = tl.program_id(2)
    if INDEX_64:
        p0 = p0.to(tl.int64)
        p1 = p1.to(tl.int64)
        p2 = p2.to(tl.int64)
    return p0, p1, p2


@triton.jit
def _overlap(begin, end, other, width):
    """The channel range shared by [begin, end) and group ``other`` of ``width`` channels."""
    return tl.maximum(begin, other * width), tl.minimum(end, other * width + width)


@triton.jit
def _column_grad(gout_ptr,  # output gradient (N, O, oD, oH, oW)
                 w_ptr,     # weight (groups, K, Cg, Og)
                 go_base, pos_ok, grp, Og, w_row, cc, c_ok, o_vol,
                 INPUT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr):
    """The column gradient tile grad_out[positions, Og of grp] @ weight[Og, channels cc]."""
    oo = tl.arange(0, BLOCK_O)
    g_ptrs = gout_ptr + go_base[:, None] + ((grp * Og + oo) * o_vol)[None, :]
    w_ptrs = w_ptr + ((w_row + cc) * Og)[None, :] + oo[:, None]
    gcol = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for o0 in range(0, Og, BLOCK_O):
        keep = (o0 + oo) < Og
        gcol = _dot(tl.load(g_ptrs, mask=pos_ok[:, None] & keep[None, :], other=0.0),
                    tl.load(w_ptrs, mask=keep[:, None] & c_ok[None, :], other=0.0),
                    gcol, INPUT_PRECISION, DOT_UPCAST)
        g_ptrs += BLOCK_O * o_vol
        w_ptrs += BLOCK_O
    return gcol


@triton.jit
def _positions(pid, P, oD, oH, oW, BLOCK_M: tl.constexpr):
    """A tile of flattened output positions: validity, sample n, spatial rest, oz, oy, ox."""
    pos = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    o_vol = oD * oH * oW
    n = pos // o_vol
    rem = pos % o_vol
    ox = rem % oW
    oy = (rem // oW) % oH
    oz = rem // (oW * oH)
    return pos < P, n, rem, oz, oy, ox


@triton.jit
def _plan(off_ptr,   # offset (N, R*G*K, oD, oH, oW)
          mask_ptr,  # mask (N, G*K, oD, oH, oW); unused without HAS_MASK
          n, rem, oz, oy, ox, pos_ok, g, k, G, D, H, W, o_vol, sd, sh, sw, pd, ph, pw, dd, dh,
          dw, KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, R: tl.constexpr,
          HAS_MASK: tl.constexpr):
    """Sampling plan of one (tap, offset group) for a tile of positions: the lower corner
    ``(z0, y0, x0)``, the fractions, ``inside`` and ``mm`` = inside * mask."""
    K = KD * KH * KW
    a = k // (KH * KW)
    i = (k // KW) % KH
    j = k % KW
    ch = g * K + k
    base = n * (R * G * K) * o_vol + rem
    z = (oz * sd - pd + a * dd).to(tl.float32)
    y = (oy * sh - ph + i * dh).to(tl.float32)
    x = (ox * sw - pw + j * dw).to(tl.float32)
    if R == 3:
        z += tl.load(off_ptr + base + (3 * ch) * o_vol, mask=pos_ok, other=0.0).to(tl.float32)
        y += tl.load(off_ptr + base + (3 * ch + 1) * o_vol, mask=pos_ok,
                     other=0.0).to(tl.float32)
        x += tl.load(off_ptr + base + (3 * ch + 2) * o_vol, mask=pos_ok,
                     other=0.0).to(tl.float32)
    elif R == 2:
        y += tl.load(off_ptr + base + (2 * ch) * o_vol, mask=pos_ok, other=0.0).to(tl.float32)
        x += tl.load(off_ptr + base + (2 * ch + 1) * o_vol, mask=pos_ok,
                     other=0.0).to(tl.float32)
    else:
        x += tl.load(off_ptr + base + ch * o_vol, mask=pos_ok, other=0.0).to(tl.float32)
    # Comparisons are False for NaN: non-finite positions are outside.
    inside = (pos_ok & (z >= -1.0) & (z < D) & (y >= -1.0) & (y < H) & (x >= -1.0)
              & (x < W))
    z = tl.where(inside, z, 0.0)
    y = tl.where(inside, y, 0.0)
    x = tl.where(inside, x, 0.0)
    zf = tl.floor(z)
    yf = tl.floor(y)
    xf = tl.floor(x)
    mm = inside.to(tl.float32)
    if HAS_MASK:
        mv = tl.load(mask_ptr + n * (G * K) * o_vol + ch * o_vol + rem, mask=pos_ok, other=0.0)
        mm = mm * mv.to(tl.float32)
    return (zf.to(tl.int32), yf.to(tl.int32), xf.to(tl.int32), z - zf, y - yf, x - xf,
            inside, mm)


@triton.jit
def _corner(c: tl.constexpr, n, z0, y0, x0, fz, fy, fx, inside, D, H, W, C):
    """Corner ``c`` (bits z, y, x): channel-0 address in the channels-last input, validity,
    its multilinear weight and the weight's partial derivatives along z, y and x."""
    bz: tl.constexpr = (c >> 2) & 1
    by: tl.constexpr = (c >> 1) & 1
    bx: tl.constexpr = c & 1
    zc = z0 + bz
    yc = y0 + by
    xc = x0 + bx
    ok = inside & (zc >= 0) & (zc < D) & (yc >= 0) & (yc < H) & (xc >= 0) & (xc < W)
    zc = tl.minimum(tl.maximum(zc, 0), D - 1)
    yc = tl.minimum(tl.maximum(yc, 0), H - 1)
    xc = tl.minimum(tl.maximum(xc, 0), W - 1)
    addr = (((n * D + zc) * H + yc) * W + xc) * C
    wz = fz * bz + (1.0 - fz) * (1 - bz)
    wy = fy * by + (1.0 - fy) * (1 - by)
    wx = fx * bx + (1.0 - fx) * (1 - bx)
    sz = 2.0 * bz - 1.0
    sy = 2.0 * by - 1.0
    sx = 2.0 * bx - 1.0
    return addr, ok, wz * wy * wx, sz * wy * wx, wz * sy * wx, wz * wy * sx


@triton.jit
def _gather(x_ptr,  # input, channels-last (N, D, H, W, C)
            n, z0, y0, x0, fz, fy, fx, inside, mm, D, H, W, C, cc, c_ok,
            NCORNER: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """The sampled columns of channels ``cc``: a float32 [BLOCK_M, BLOCK_C] tile."""
    cols = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for c in tl.static_range(NCORNER):
        addr, ok, wgt, _, _, _ = _corner(c, n, z0, y0, x0, fz, fy, fx, inside, D, H, W, C)
        v = tl.load(x_ptr + addr[:, None] + cc[None, :], mask=ok[:, None] & c_ok[None, :],
                    other=0.0)
        cols += (wgt * mm)[:, None] * v.to(tl.float32)
    return cols


@triton.jit
def _times_weight(w_ptr,  # weight (groups, K, Cg, Og)
                  cols, acc, w_row, cc, c_ok, oc, oc_ok, Og,
                  INPUT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr):
    """acc + cols @ weight[rows w_row + cc, output channels oc]."""
    wt = tl.load(w_ptr + (w_row + cc)[:, None] * Og + oc[None, :],
                 mask=c_ok[:, None] & oc_ok[None, :], other=0.0)
    return _dot(cols.to(wt.dtype), wt, acc, INPUT_PRECISION, DOT_UPCAST)


@triton.jit
def _deform_conv_nd_fwd_kernel(
        x_ptr,     # input, channels-last (N, D, H, W, C)
        w_ptr,     # weight (groups, K, Cg, Og)
        off_ptr,   # offset (N, R*G*K, oD, oH, oW)
        mask_ptr,  # mask (N, G*K, oD, oH, oW); unused without HAS_MASK
        bias_ptr,  # bias (O,); unused without HAS_BIAS
        out_ptr,   # output (N, O, oD, oH, oW), every element written
        P, C, D, H, W, oD, oH, oW, Cg, Og, Cpg, G, O, sd, sh, sw, pd, ph, pw, dd, dh, dw,
        KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, R: tl.constexpr,
        HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, INDEX_64: tl.constexpr,
        INPUT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Implicit GEMM: output tile [BLOCK_M positions, BLOCK_N channels of conv group pid 2]."""
    K = KD * KH * KW
    NCORNER: tl.constexpr = 2 ** R
    pid_m, pid_n, grp = _program_ids(INDEX_64)
    o_vol = oD * oH * oW
    pos_ok, n, rem, oz, oy, ox = _positions(pid_m, P, oD, oH, oW, BLOCK_M)
    c_begin = grp * Cg
    c_end = c_begin + Cg
    oc = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channel within the conv group
    oc_ok = oc < Og
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(c_begin // Cpg, (c_end - 1) // Cpg + 1):  # offset groups of the conv group
        lo, hi = _overlap(c_begin, c_end, g, Cpg)
        for k in range(K):
            z0, y0, x0, fz, fy, fx, inside, mm = _plan(
                off_ptr, mask_ptr, n, rem, oz, oy, ox, pos_ok, g, k, G, D, H, W, o_vol,
                sd, sh, sw, pd, ph, pw, dd, dh, dw, KD, KH, KW, R, HAS_MASK)
            w_row = (grp * K + k) * Cg - c_begin
            for c0 in range(lo, hi, BLOCK_C):
                cc = c0 + tl.arange(0, BLOCK_C)
                c_ok = cc < hi
                cols = _gather(x_ptr, n, z0, y0, x0, fz, fy, fx, inside, mm, D, H, W, C, cc,
                               c_ok, NCORNER, BLOCK_M, BLOCK_C)
                acc = _times_weight(w_ptr, cols, acc, w_row, cc, c_ok, oc, oc_ok, Og,
                                    INPUT_PRECISION, DOT_UPCAST)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + grp * Og + oc, mask=oc_ok, other=0.0).to(tl.float32)[None, :]
    # (N, O, *o): position tile rows, output channels columns
    dst = out_ptr + (n * O * o_vol + rem)[:, None] + ((grp * Og + oc) * o_vol)[None, :]
    tl.store(dst, acc.to(out_ptr.dtype.element_ty), mask=pos_ok[:, None] & oc_ok[None, :])


@triton.jit
def _deform_conv_nd_bwd_data_kernel(
        gout_ptr,   # output gradient (N, O, oD, oH, oW)
        w_ptr,      # weight (groups, K, Cg, Og)
        x_ptr,      # input, channels-last (N, D, H, W, C)
        off_ptr,    # offset (N, R*G*K, oD, oH, oW)
        mask_ptr,   # mask (N, G*K, oD, oH, oW); unused without HAS_MASK
        gin_ptr,    # float32 input gradient, channels-last (N, D, H, W, C), zeroed, atomics
        goff_ptr,   # offset gradient (N, R*G*K, oD, oH, oW), every element written if NEED_OM
        gmask_ptr,  # mask gradient (N, G*K, oD, oH, oW), written if NEED_OM and HAS_MASK
        P, C, D, H, W, oD, oH, oW, Cg, Og, Cpg, G, O, sd, sh, sw, pd, ph, pw, dd, dh, dw,
        KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, R: tl.constexpr,
        HAS_MASK: tl.constexpr, NEED_IN: tl.constexpr, NEED_OM: tl.constexpr,
        INDEX_64: tl.constexpr, INPUT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr):
    """Input, offset and mask gradients of a tile of BLOCK_M positions.

    Per (offset group, tap, channel block) the column gradient ``grad_out @ weight`` is
    recomputed, scattered to the corners (atomics) and reduced against the corner values:
    the offset and mask gradients are linear in those dot products, so four running sums
    (d/dz, d/dy, d/dx, d/dmask) replace per-corner storage.
    """
    K = KD * KH * KW
    NCORNER: tl.constexpr = 2 ** R
    pid_m, _, _ = _program_ids(INDEX_64)
    o_vol = oD * oH * oW
    pos_ok, n, rem, oz, oy, ox = _positions(pid_m, P, oD, oH, oW, BLOCK_M)
    go_base = n * O * o_vol + rem
    for g in range(G):
        g_begin = g * Cpg
        g_end = g_begin + Cpg
        for k in range(K):
            z0, y0, x0, fz, fy, fx, inside, mm = _plan(
                off_ptr, mask_ptr, n, rem, oz, oy, ox, pos_ok, g, k, G, D, H, W, o_vol,
                sd, sh, sw, pd, ph, pw, dd, dh, dw, KD, KH, KW, R, HAS_MASK)
            t_z = tl.zeros((BLOCK_M,), dtype=tl.float32)
            t_y = tl.zeros((BLOCK_M,), dtype=tl.float32)
            t_x = tl.zeros((BLOCK_M,), dtype=tl.float32)
            t_m = tl.zeros((BLOCK_M,), dtype=tl.float32)
            for grp in range(g_begin // Cg, (g_end - 1) // Cg + 1):
                lo, hi = _overlap(g_begin, g_end, grp, Cg)
                w_row = (grp * K + k) * Cg - grp * Cg
                for c0 in range(lo, hi, BLOCK_C):
                    cc = c0 + tl.arange(0, BLOCK_C)
                    c_ok = cc < hi
                    gcol = _column_grad(gout_ptr, w_ptr, go_base, pos_ok, grp, Og, w_row, cc,
                                        c_ok, o_vol, INPUT_PRECISION, DOT_UPCAST, BLOCK_M,
                                        BLOCK_O, BLOCK_C)
                    for c in tl.static_range(NCORNER):
                        addr, ok, wgt, dz, dy, dx = _corner(c, n, z0, y0, x0, fz, fy, fx,
                                                            inside, D, H, W, C)
                        ptrs = addr[:, None] + cc[None, :]
                        okc = ok[:, None] & c_ok[None, :]
                        if NEED_OM:
                            v = tl.load(x_ptr + ptrs, mask=okc, other=0.0).to(tl.float32)
                            s = tl.sum(gcol * v, axis=1)
                            t_z += dz * s
                            t_y += dy * s
                            t_x += dx * s
                            t_m += wgt * s
                        if NEED_IN:
                            tl.atomic_add(gin_ptr + ptrs, gcol * (wgt * mm)[:, None], mask=okc,
                                          sem="relaxed")
            if NEED_OM:
                ch = g * K + k
                o_base = n * (R * G * K) * o_vol + rem
                ty = goff_ptr.dtype.element_ty
                if R == 3:
                    tl.store(goff_ptr + o_base + (3 * ch) * o_vol, (mm * t_z).to(ty),
                             mask=pos_ok)
                    tl.store(goff_ptr + o_base + (3 * ch + 1) * o_vol, (mm * t_y).to(ty),
                             mask=pos_ok)
                    tl.store(goff_ptr + o_base + (3 * ch + 2) * o_vol, (mm * t_x).to(ty),
                             mask=pos_ok)
                elif R == 2:
                    tl.store(goff_ptr + o_base + (2 * ch) * o_vol, (mm * t_y).to(ty),
                             mask=pos_ok)
                    tl.store(goff_ptr + o_base + (2 * ch + 1) * o_vol, (mm * t_x).to(ty),
                             mask=pos_ok)
                else:
                    tl.store(goff_ptr + o_base + ch * o_vol, (mm * t_x).to(ty), mask=pos_ok)
                if HAS_MASK:
                    # The mask gradient uses the unmasked sample: inside, not mm.
                    tl.store(gmask_ptr + n * (G * K) * o_vol + ch * o_vol + rem,
                             (inside.to(tl.float32) * t_m).to(gmask_ptr.dtype.element_ty),
                             mask=pos_ok)


@triton.jit
def _deform_conv_nd_bwd_weight_kernel(
        x_ptr,     # input, channels-last (N, D, H, W, C)
        off_ptr,   # offset (N, R*G*K, oD, oH, oW)
        mask_ptr,  # mask (N, G*K, oD, oH, oW); unused without HAS_MASK
        gout_ptr,  # output gradient (N, O, oD, oH, oW)
        gw_ptr,    # float32 partial weight gradients (SPLIT, groups, K, Cg, Og), all written
        P, C, D, H, W, oD, oH, oW, Cg, Og, Cpg, G, O, groups, SPLIT, sd, sh, sw, pd, ph, pw,
        dd, dh, dw,
        KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, R: tl.constexpr,
        HAS_MASK: tl.constexpr, INDEX_64: tl.constexpr, INPUT_PRECISION: tl.constexpr,
        DOT_UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Weight gradient of tap ``k`` of conv group ``grp`` (pid 0 = grp*K + k), output
    channels of block pid 1, over position tiles split, split + SPLIT, ...; each split writes
    its own partial sums (no atomics, deterministic), which the launcher adds."""
    K = KD * KH * KW
    NCORNER: tl.constexpr = 2 ** R
    pid0, pid_n, split = _program_ids(INDEX_64)
    grp = pid0 // K
    k = pid0 % K
    oc = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    oc_ok = oc < Og
    o_vol = oD * oH * oW
    c_begin = grp * Cg
    c_end = c_begin + Cg
    for g in range(c_begin // Cpg, (c_end - 1) // Cpg + 1):
        lo, hi = _overlap(c_begin, c_end, g, Cpg)
        for c0 in range(lo, hi, BLOCK_C):
            cc = c0 + tl.arange(0, BLOCK_C)
            c_ok = cc < hi
            acc = tl.zeros((BLOCK_C, BLOCK_N), dtype=tl.float32)
            for t in range(split, tl.cdiv(P, BLOCK_M), SPLIT):
                pos_ok, n, rem, oz, oy, ox = _positions(t, P, oD, oH, oW, BLOCK_M)
                z0, y0, x0, fz, fy, fx, inside, mm = _plan(
                    off_ptr, mask_ptr, n, rem, oz, oy, ox, pos_ok, g, k, G, D, H, W, o_vol,
                    sd, sh, sw, pd, ph, pw, dd, dh, dw, KD, KH, KW, R, HAS_MASK)
                cols = _gather(x_ptr, n, z0, y0, x0, fz, fy, fx, inside, mm, D, H, W, C, cc,
                               c_ok, NCORNER, BLOCK_M, BLOCK_C)
                go = tl.load(gout_ptr + (n * O * o_vol + rem)[:, None]
                             + (grp * Og + oc)[None, :] * o_vol,
                             mask=pos_ok[:, None] & oc_ok[None, :], other=0.0)
                acc = _dot(tl.trans(cols.to(go.dtype)), go, acc, INPUT_PRECISION, DOT_UPCAST)
            row = ((split * groups + grp) * K + k) * Cg + (cc - c_begin)
            tl.store(gw_ptr + row[:, None] * Og + oc[None, :], acc,
                     mask=c_ok[:, None] & oc_ok[None, :])


def _gpu_configs(role, R, label):
    """``gpu_blocks`` as the report's config lists (``spec.family`` keys) for one dtype."""
    def config(idx64):
        b = gpu_blocks(role, R, label, idx64)
        return triton.Config({k: v for k, v in b.items() if k.startswith("BLOCK_")},
                             num_warps=b["num_warps"], num_stages=b["num_stages"],
                             maxnreg=b.get("maxnreg"))
    return {f + i: [config(i == "_i64")] for f in ("half", "float32") for i in ("", "_i64")}


def report_name(role, R):
    """The report's name of kernel ``role`` at ``R`` dimensions: ``deform_conv1d_fwd``, ...;
    at R=2 ``deform_conv2d_nd_fwd``, beside the specialised 2-D kernels' ``deform_conv2d_*``."""
    return f"deform_conv{R}d_{'nd_' if R == 2 else ''}{role}"


# What the ``deformconv kernels`` report compiles offline: each kernel with its GPU blocks,
# for the 1-D case (R=1, kernel 1x1x3), the 2-D case (R=2, 1x3x3) and the 3-D case (R=3,
# 3x3x3), with a mask, for float32 (FMA and TF32 dots), float16 and bfloat16, with 32- and
# 64-bit indices (one spec per dtype, as the blocks may depend on it).
KERNEL_SPECS = [
    KernelSpec(report_name(role, R), fn, _gpu_configs(role, R, label),
               conv_signature(dict(KD=kd, KH=kh, KW=kw, R=R, **flags),
                              {"gin_ptr": "*fp32", "gw_ptr": "*fp32"}), dtypes=(label,))
    for R, kd, kh, kw in ((1, 1, 1, 3), (2, 1, 3, 3), (3, 3, 3, 3))
    for role, fn, flags in (("fwd", _deform_conv_nd_fwd_kernel, dict(HAS_BIAS=True)),
                            ("bwd_data", _deform_conv_nd_bwd_data_kernel,
                             dict(NEED_IN=True, NEED_OM=True)),
                            ("bwd_weight", _deform_conv_nd_bwd_weight_kernel, {}))
    for label in ("fp32", "tf32", "fp16", "bf16")
]
