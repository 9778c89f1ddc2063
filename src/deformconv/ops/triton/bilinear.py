"""Shared ``@triton.jit`` helpers for 2-D bilinear sampling of a channels-last map.

The same conventions as the pure-PyTorch ``deformconv.ops.bilinear`` (see
``docs/conventions.md``): positions are pixel coordinates; a sample is inside when
``lower < y < H`` and ``lower < x < W`` hold, where the lower cut-off is ``>= -1``
(``STRICT=False``, deformable convolution: at exactly -1 the value is 0 but the one-sided
derivative is not) or ``> -1`` (``STRICT=True``, multi-scale deformable attention and DCNv3:
neither value nor gradient at -1). Comparisons are False for NaN, so non-finite positions are
outside; outside positions are replaced by 0 before the float -> int conversion, so no input
can form an out-of-range corner.

``corners_2d`` returns the clamped lower corner (always a valid address), the steps to the
other corners (0 where the clamped corners coincide, so every step stays inside the map) and
the validity of the four corners; every load or atomic of a corner must be masked by its
validity. Corner order: (y0, x0), (y0, x1), (y1, x0), (y1, x1).
"""

import triton.language as tl

import triton


@triton.jit
def corners_2d(y, x, H, W, ok, step_x, step_y, STRICT: tl.constexpr):
    """Bilinear corners of float32 positions ``(y, x)`` (tiles of one shape) in an ``H x W``
    map, for lanes where ``ok`` holds.

    Args:
        y, x: float32 pixel coordinates.
        H, W: the map's size.
        ok: bool tile; lanes where it is False are outside.
        step_x, step_y: the address step of one column and of one row (e.g. ``C`` and
            ``W * C`` for a channels-last ``(H, W, C)`` map).
        STRICT: the lower cut-off (module docstring).

    Returns:
        ``(y0, x0, dx, dy, ok00, ok01, ok10, ok11, ly, lx, inside)``: the lower corner clamped
        into the map (int32, in ``[0, H-1] x [0, W-1]``); the steps to the corners (y0, x1) and
        (y1, x0) (``step_x``/``step_y`` or 0); the corners' validity; the fractional parts;
        whether the sample is inside. The address of corner (y0, x0) is
        ``y0 * step_y + x0 * step_x`` (plus the caller's base); (y1, x1) adds ``dx + dy``.
    """
    if STRICT:
        inside = ok & (y > -1.0) & (y < H) & (x > -1.0) & (x < W)
    else:
        inside = ok & (y >= -1.0) & (y < H) & (x >= -1.0) & (x < W)
    y = tl.where(inside, y, 0.0)
    x = tl.where(inside, x, 0.0)
    y0f = tl.floor(y)
    x0f = tl.floor(x)
    ly = y - y0f
    lx = x - x0f
    y0 = y0f.to(tl.int32)  # in [-1, H-1] once clamped to the inside
    x0 = x0f.to(tl.int32)
    vy0 = inside & (y0 >= 0)
    vy1 = inside & (y0 < H - 1)
    vx0 = x0 >= 0
    vx1 = x0 < W - 1
    # y0 = -1 clamps to row 0, which is also row y0 + 1: step 0. y0 = H - 1 has no row below
    # (that corner is masked): step 0 keeps its address inside. Likewise for columns.
    dx = tl.where((x0 >= 0) & vx1, step_x, 0)
    dy = tl.where((y0 >= 0) & (y0 < H - 1), step_y, 0)
    return (tl.maximum(y0, 0), tl.maximum(x0, 0), dx, dy, vy0 & vx0, vy0 & vx1, vy1 & vx0,
            vy1 & vx1, ly, lx, inside)


@triton.jit
def corner_weights(ly, lx, scale):
    """The four bilinear weights times ``scale``, in corner order."""
    hy = 1.0 - ly
    hx = 1.0 - lx
    return hy * hx * scale, hy * lx * scale, ly * hx * scale, ly * lx * scale


@triton.jit
def position_grad_2d(s00, s01, s10, s11, ly, lx, scale):
    """``(d/dy, d/dx)`` of ``scale * sum_c w_c * s_c`` with the floor held constant (the
    one-sided derivative of the conventions), ``s_c`` the corner values (or dot products)."""
    gy = scale * ((1.0 - lx) * (s10 - s00) + lx * (s11 - s01))
    gx = scale * ((1.0 - ly) * (s01 - s00) + ly * (s11 - s10))
    return gy, gx
