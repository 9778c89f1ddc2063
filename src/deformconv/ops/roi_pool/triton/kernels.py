"""Triton kernels of deformable RoI pooling (``@triton.jit`` only; launchers in
``launch.py``).

One program per (region, bin) and block of ``BLOCK_C`` channels. Layouts (all contiguous):

- input ``x``: channels-last ``(N, H, W, C)``, so one bilinear corner is a contiguous run of
  channels that share the sample's weights;
- rois ``(R, 5)``, offset ``(R, 2, PH, PW)``, output / output gradient ``(R, C, PH, PW)``;
- input gradient: float32 channels-last ``(N, H, W, C)``, accumulated with atomics;
- offset gradient partial sums: float32 ``(n_channel_blocks, R, 2, PH, PW)``, one row per
  channel block, summed by the launcher (no atomics, deterministic).

Positions are computed in float32 exactly as ``roi_pool_torch`` computes them; the sample
window (which samples can lie in ``[-1, H] x [-1, W]``) in float64, as there. Hostile values:
non-finite positions are outside (comparisons are False for NaN), corner indices are clamped
into the image before any address is formed, every load and atomic is masked, the batch index
is clamped to 0 when it is outside ``[0, N)`` (that region then pools to 0), and the window
bounds the loops whatever the region's size. ``INDEX_64`` switches the address arithmetic to
64 bits; the launcher sets it only when an element index can exceed 2**31 - 1.
"""

import triton.language as tl

import triton

from ...triton.spec import ELEMENT, KernelSpec

GRID_LIMIT = tl.constexpr(16777216.0)  # 2**24, roi_pool_torch.GRID_LIMIT
WINDOW_MARGIN = tl.constexpr(2.0)      # roi_pool_torch.WINDOW_MARGIN
EPS32 = tl.constexpr(1.1920928955078125e-07)  # float32 machine epsilon
# Channel blocks on a GPU: the launcher takes the next power of two of C, clamped to these.
GPU_BLOCKS_C = (32, 64, 128, 256)


def num_warps(block_c: int) -> int:
    """One channel per thread: with two, ptxas spills in the backward (sm_80, BLOCK_C 256)."""
    return max(1, block_c // 32)


@triton.jit
def _grid(extent, sampling_ratio):
    """Samples per bin along one axis (int32 scalar), roi_pool_torch.grid_size."""
    g = tl.ceil(extent)
    ok = (g > 0.0) & (g < float("inf"))        # False for NaN
    g = tl.where(ok, tl.minimum(g, GRID_LIMIT), 0.0).to(tl.int32)
    return tl.where(sampling_ratio > 0, sampling_ratio, g)


@triton.jit
def _window(start, step, grid, size):
    """(first index, count) of the samples that may lie in [-1, size]; see
    roi_pool_torch.sample_window (the same superset, in float64)."""
    a = start.to(tl.float64)
    s = step.to(tl.float64)
    gmax = grid.to(tl.float64)
    finite = (a == a) & (tl.abs(a) < float("inf")) & (s == s) & (tl.abs(s) < float("inf"))
    flat = s == 0.0
    s_safe = tl.where(flat | (finite == 0), 1.0, tl.abs(s))
    a_safe = tl.where(finite, a, 0.0)
    sgn = tl.where(s < 0.0, -1.0, 1.0)
    t1 = sgn * (-1.0 - a_safe) / s_safe - 0.5
    t2 = sgn * (size - a_safe) / s_safe - 0.5
    bound = GRID_LIMIT + 2.0 * WINDOW_MARGIN
    margin = tl.minimum(EPS32 * (tl.abs(a_safe) + s_safe * gmax + size) / s_safe, bound)
    margin = tl.ceil(margin) + WINDOW_MARGIN
    lo = tl.minimum(tl.maximum(tl.ceil(tl.minimum(t1, t2)), -bound), bound) - margin
    hi = tl.minimum(tl.maximum(tl.floor(tl.maximum(t1, t2)), -bound), bound) + margin
    lo = tl.where(flat, 0.0, tl.maximum(lo, 0.0))
    hi = tl.where(flat, gmax - 1.0, tl.minimum(hi, gmax - 1.0))
    n = tl.where(finite, tl.maximum(hi - lo + 1.0, 0.0), 0.0)
    return lo.to(tl.int32), n.to(tl.int32)


@triton.jit
def _axis(start, bin_size, grid_f, k, size):
    """One sample coordinate: (unclamped value, in range, low index, high index, weight of
    the high index), roi_pool_torch._axis."""
    v = start + ((k.to(tl.float32) + 0.5) * bin_size) / grid_f
    ok = (v >= -1.0) & (v <= size)               # False for NaN
    vc = tl.maximum(tl.where(ok, v, 0.0), 0.0)
    low = tl.floor(vc)
    edge = low >= size - 1
    low = tl.where(edge, (size - 1).to(tl.float32), low)
    vc = tl.where(edge, low, vc)
    high = tl.where(edge, low, low + 1.0)
    return v, ok, low, high, vc - low


@triton.jit
def _region(rois_ptr,    # rois (R, 5)
            off_ptr,     # offset (R, 2, PH, PW); unused without HAS_OFFSET
            r, i, j, N, H, W, spatial_scale, gamma,
            PH: tl.constexpr, PW: tl.constexpr, sampling_ratio,
            HAS_OFFSET: tl.constexpr):
    """Geometry of bin (i, j) of region r (float32 scalars), as roi_pool_torch.Geometry."""
    row = rois_ptr + r * 5
    bf = tl.load(row).to(tl.float32)
    bt = tl.where(bf < 0.0, tl.ceil(bf), tl.floor(bf))    # truncation
    valid = (bt >= 0.0) & (bt < N)                          # False for NaN
    b = tl.where(valid, bt, 0.0).to(tl.int32)
    xs = tl.load(row + 1).to(tl.float32) * spatial_scale - 0.5
    ys = tl.load(row + 2).to(tl.float32) * spatial_scale - 0.5
    roi_w = (tl.load(row + 3).to(tl.float32) * spatial_scale - 0.5) - xs
    roi_h = (tl.load(row + 4).to(tl.float32) * spatial_scale - 0.5) - ys
    bin_w = roi_w / PW
    bin_h = roi_h / PH
    gh = tl.where(valid, _grid(roi_h / PH, sampling_ratio), 0)
    gw = tl.where(valid, _grid(roi_w / PW, sampling_ratio), 0)
    count = tl.maximum(gh.to(tl.float32) * gw.to(tl.float32), 1.0)
    if HAS_OFFSET:
        o = off_ptr + r * (2 * PH * PW) + i * PW + j
        xs = xs + gamma * roi_w * tl.load(o).to(tl.float32)
        ys = ys + gamma * roi_h * tl.load(o + PH * PW).to(tl.float32)
    y0 = ys + i.to(tl.float32) * bin_h
    x0 = xs + j.to(tl.float32) * bin_w
    ghf = tl.maximum(gh, 1).to(tl.float32)
    gwf = tl.maximum(gw, 1).to(tl.float32)
    lo_y, n_y = _window(y0, bin_h / ghf, gh, H)
    lo_x, n_x = _window(x0, bin_w / gwf, gw, W)
    return b, valid, roi_w, roi_h, bin_w, bin_h, ghf, gwf, count, y0, x0, lo_y, n_y, lo_x, n_x


@triton.jit
def _and(vec, flag):
    """``vec & flag`` for a boolean block and a boolean scalar (written as a product: the
    interpreter's ``&`` rejects that broadcast)."""
    return (vec.to(tl.int32) * flag.to(tl.int32)) != 0


@triton.jit
def _sample_row(y0, bin_h, ghf, k, H, W, b):
    """Sample row k of a bin: (unclamped y, in range, low row, high row, weight of the high
    row, flat pixel index of the low row's start, of the high row's start)."""
    y, oky, yl, yh, ly = _axis(y0, bin_h, ghf, k, H)
    return y, oky, yl, yh, ly, (b * H + yl.to(tl.int32)) * W, (b * H + yh.to(tl.int32)) * W


@triton.jit
def _sample_corners(x0, bin_w, gwf, k, W, oky, valid, row_l, row_h, C, cc, c_ok):
    """Sample k of a bin row: (unclamped x, in range, load mask of channels cc, low column,
    high column, weight of the high column, and the channels-last addresses of the four
    corners (low row low column, low high, high low, high high))."""
    x, okx, xl, xh, lx = _axis(x0, bin_w, gwf, k, W)
    ok = oky & okx & valid
    xli = xl.to(tl.int32)
    xhi = xh.to(tl.int32)
    return (x, ok, _and(c_ok, ok), xl, xh, lx, (row_l + xli) * C + cc, (row_l + xhi) * C + cc,
            (row_h + xli) * C + cc, (row_h + xhi) * C + cc)


@triton.jit
def _program(N, C, PH: tl.constexpr, PW: tl.constexpr, BLOCK_C: tl.constexpr,
             INDEX_64: tl.constexpr):
    """(region, bin row, bin column, channels of this block, their mask, channel block)."""
    pid = tl.program_id(0)
    cb = tl.program_id(1)
    if INDEX_64:
        pid = pid.to(tl.int64)
        cb = cb.to(tl.int64)
    r = pid // (PH * PW)
    rem = pid % (PH * PW)
    cc = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    return r, rem // PW, rem % PW, cc, cc < C, cb


@triton.jit
def _bin(rois_ptr, off_ptr, N, C, H, W, spatial_scale, gamma, sampling_ratio,
         PH: tl.constexpr, PW: tl.constexpr, HAS_OFFSET: tl.constexpr,
         INDEX_64: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's bin and channels (``_program``) and the bin's geometry (``_region``),
    the image index widened to 64 bits with INDEX_64."""
    r, i, j, cc, c_ok, cb = _program(N, C, PH, PW, BLOCK_C, INDEX_64)
    b, valid, roi_w, roi_h, bin_w, bin_h, ghf, gwf, count, y0, x0, lo_y, n_y, lo_x, n_x = \
        _region(rois_ptr, off_ptr, r, i, j, N, H, W, spatial_scale, gamma, PH, PW,
                sampling_ratio, HAS_OFFSET)
    if INDEX_64:
        b = b.to(tl.int64)
    return (r, i, j, cc, c_ok, cb, b, valid, roi_w, roi_h, bin_w, bin_h, ghf, gwf, count,
            y0, x0, lo_y, n_y, lo_x, n_x)


@triton.jit
def _deform_roi_pool_fwd_kernel(
        x_ptr,       # input, channels-last (N, H, W, C)
        rois_ptr,    # rois (R, 5)
        off_ptr,     # offset (R, 2, PH, PW); unused without HAS_OFFSET
        out_ptr,     # output (R, C, PH, PW), every element written
        N, C, H, W, spatial_scale, gamma, sampling_ratio,
        PH: tl.constexpr, PW: tl.constexpr,
        HAS_OFFSET: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_C: tl.constexpr):
    r, i, j, cc, c_ok, cb, b, valid, roi_w, roi_h, bin_w, bin_h, ghf, gwf, count, y0, x0, \
        lo_y, n_y, lo_x, n_x = _bin(rois_ptr, off_ptr, N, C, H, W, spatial_scale, gamma,
                                    sampling_ratio, PH, PW, HAS_OFFSET, INDEX_64, BLOCK_C)
    acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for ty in range(n_y):
        y, oky, yl, yh, ly, row_l, row_h = _sample_row(y0, bin_h, ghf, lo_y + ty, H, W, b)
        for tx in range(n_x):
            x, ok, m, xl, xh, lx, a00, a01, a10, a11 = _sample_corners(
                x0, bin_w, gwf, lo_x + tx, W, oky, valid, row_l, row_h, C, cc, c_ok)
            v00 = tl.load(x_ptr + a00, mask=m, other=0.0).to(tl.float32)
            v01 = tl.load(x_ptr + a01, mask=m, other=0.0).to(tl.float32)
            v10 = tl.load(x_ptr + a10, mask=m, other=0.0).to(tl.float32)
            v11 = tl.load(x_ptr + a11, mask=m, other=0.0).to(tl.float32)
            hy = 1.0 - ly
            hx = 1.0 - lx
            acc += (hy * hx) * v00 + (hy * lx) * v01 + (ly * hx) * v10 + (ly * lx) * v11
    out = out_ptr + (r * C + cc) * (PH * PW) + i * PW + j
    tl.store(out, (acc / count).to(out_ptr.dtype.element_ty), mask=c_ok)


@triton.jit
def _deform_roi_pool_bwd_kernel(
        x_ptr,       # input, channels-last (N, H, W, C)
        rois_ptr,    # rois (R, 5)
        off_ptr,     # offset (R, 2, PH, PW); unused without HAS_OFFSET
        go_ptr,      # output gradient (R, C, PH, PW)
        gin_ptr,     # float32 input gradient, channels-last (N, H, W, C), atomically added to
        goff_ptr,    # float32 offset-gradient partials (n_channel_blocks, R, 2, PH, PW)
        N, C, H, W, R, spatial_scale, gamma, sampling_ratio,
        PH: tl.constexpr, PW: tl.constexpr,
        HAS_OFFSET: tl.constexpr, NEED_INPUT: tl.constexpr, NEED_OFFSET: tl.constexpr,
        INDEX_64: tl.constexpr, BLOCK_C: tl.constexpr):
    r, i, j, cc, c_ok, cb, b, valid, roi_w, roi_h, bin_w, bin_h, ghf, gwf, count, y0, x0, \
        lo_y, n_y, lo_x, n_x = _bin(rois_ptr, off_ptr, N, C, H, W, spatial_scale, gamma,
                                    sampling_ratio, PH, PW, HAS_OFFSET, INDEX_64, BLOCK_C)
    g = tl.load(go_ptr + (r * C + cc) * (PH * PW) + i * PW + j, mask=c_ok,
                other=0.0).to(tl.float32) / count
    sx = 0.0
    sy = 0.0
    hit = 0.0
    for ty in range(n_y):
        y, oky, yl, yh, ly, row_l, row_h = _sample_row(y0, bin_h, ghf, lo_y + ty, H, W, b)
        for tx in range(n_x):
            x, ok, m, xl, xh, lx, a00, a01, a10, a11 = _sample_corners(
                x0, bin_w, gwf, lo_x + tx, W, oky, valid, row_l, row_h, C, cc, c_ok)
            if NEED_INPUT:
                hy = 1.0 - ly
                hx = 1.0 - lx
                tl.atomic_add(gin_ptr + a00, g * (hy * hx), mask=m, sem="relaxed")
                tl.atomic_add(gin_ptr + a01, g * (hy * lx), mask=m, sem="relaxed")
                tl.atomic_add(gin_ptr + a10, g * (ly * hx), mask=m, sem="relaxed")
                tl.atomic_add(gin_ptr + a11, g * (ly * lx), mask=m, sem="relaxed")
            if NEED_OFFSET:
                # mmcv's rule: the unclamped y, x against the clamped corner indices
                v00 = tl.sum(g * tl.load(x_ptr + a00, mask=m, other=0.0).to(tl.float32))
                v01 = tl.sum(g * tl.load(x_ptr + a01, mask=m, other=0.0).to(tl.float32))
                v10 = tl.sum(g * tl.load(x_ptr + a10, mask=m, other=0.0).to(tl.float32))
                v11 = tl.sum(g * tl.load(x_ptr + a11, mask=m, other=0.0).to(tl.float32))
                dx = (yh - y) * (v01 - v00) + (y - yl) * (v11 - v10)
                dy = (xh - x) * (v10 - v00) + (x - xl) * (v11 - v01)
                sx += tl.where(ok, dx, 0.0)
                sy += tl.where(ok, dy, 0.0)
                hit = tl.maximum(hit, ok.to(tl.float32))
    if NEED_OFFSET:
        # where no sample is in range the region may be infinite: 0, not inf * 0
        gx = tl.where(hit > 0.0, gamma * roi_w * sx, 0.0)
        gy = tl.where(hit > 0.0, gamma * roi_h * sy, 0.0)
        p = goff_ptr + ((cb * R + r) * 2) * (PH * PW) + i * PW + j
        tl.store(p, gx)
        tl.store(p + PH * PW, gy)


def _report_signature(pointers, flags):
    """Signature builder of the report (``spec.KernelSpec``): 7x7 bins with offsets, as the
    launcher calls the kernel on a GPU; float32 gradients, the other tensors in the input's
    dtype."""
    def build(label, index_64=False):
        e = "*" + ELEMENT[label]
        types = {p: e for p in pointers}
        types.update(gin_ptr="*fp32", goff_ptr="*fp32", spatial_scale="fp32", gamma="fp32")
        consts = dict(PH=7, PW=7, HAS_OFFSET=True, INDEX_64=index_64, **flags)
        return types, consts
    return build


# What the ``deformconv kernels`` report compiles offline: both kernels at every GPU channel
# block (with its warps), float32/float16/bfloat16, 32- and 64-bit indices. No tl.dot here,
# so no TF32 variant.
_GPU_CONFIGS = [triton.Config({"BLOCK_C": bc}, num_warps=num_warps(bc), num_stages=1)
                for bc in GPU_BLOCKS_C]
KERNEL_SPECS = [
    KernelSpec(name, fn, {f + i: _GPU_CONFIGS for f in ("half", "float32") for i in ("", "_i64")},
               _report_signature(pointers, flags), dtypes=("fp32", "fp16", "bf16"),
               aligned=("C",))
    for name, fn, pointers, flags in (
        ("deform_roi_pool_fwd", _deform_roi_pool_fwd_kernel,
         ("x_ptr", "rois_ptr", "off_ptr", "out_ptr"), {}),
        ("deform_roi_pool_bwd", _deform_roi_pool_bwd_kernel,
         ("x_ptr", "rois_ptr", "off_ptr", "go_ptr"), dict(NEED_INPUT=True, NEED_OFFSET=True)))
]
