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
the validity of the four corners; ``corner_flags_2d`` is the same with the steps as flags
(what the deformable-convolution kernels use: measured to keep their shipped configurations
free of register spills). Every load or atomic of a corner must be masked by its validity.
Corner order: (y0, x0), (y0, x1), (y1, x0), (y1, x1).
"""

import triton.language as tl

import triton


@triton.jit
def corner_flags_2d(y, x, H, W, ok, STRICT: tl.constexpr):
    """Bilinear corners of float32 positions ``(y, x)`` (tiles of one shape) in an ``H x W``
    map, for lanes where ``ok`` holds.

    Args:
        y, x: float32 pixel coordinates.
        H, W: the map's size.
        ok: bool tile; lanes where it is False are outside.
        STRICT: the lower cut-off (module docstring).

    Returns:
        ``(y0, x0, has_dx, has_dy, ok00, ok01, ok10, ok11, ly, lx, inside)``: the lower corner
        clamped into the map (int32, in ``[0, H-1] x [0, W-1]``); whether the corners (y0, x1)
        and (y1, x0) are one column / one row away from it (False where the clamped corners
        coincide: the step is then 0, which keeps every address inside the map); the corners'
        validity; the fractional parts; whether the sample is inside. For a channels-last
        ``(H, W, C)`` map the caller forms ``a00 = (y0 * W + x0) * C``,
        ``dx = tl.where(has_dx, C, 0)``, ``dy = tl.where(has_dy, W * C, 0)``; corner (y1, x1)
        is at ``a00 + dx + dy``.
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
    return (tl.maximum(y0, 0), tl.maximum(x0, 0), (x0 >= 0) & vx1, (y0 >= 0) & (y0 < H - 1),
            vy0 & vx0, vy0 & vx1, vy1 & vx0, vy1 & vx1, ly, lx, inside)


@triton.jit
def corners_2d(y, x, H, W, ok, step_x, step_y, STRICT: tl.constexpr):
    """``corner_flags_2d`` with the steps as addresses.

    Args:
        y, x, H, W, ok, STRICT: as ``corner_flags_2d``.
        step_x, step_y: the address step of one column and of one row (e.g. ``C`` and
            ``W * C`` for a channels-last ``(H, W, C)`` map).

    Returns:
        ``(y0, x0, dx, dy, ok00, ok01, ok10, ok11, ly, lx, inside)``: as ``corner_flags_2d``
        with ``dx = step_x`` or 0 and ``dy = step_y`` or 0. The address of corner (y0, x0) is
        ``y0 * step_y + x0 * step_x`` (plus the caller's base); (y1, x1) adds ``dx + dy``.
    """
    y0, x0, has_dx, has_dy, ok00, ok01, ok10, ok11, ly, lx, inside = corner_flags_2d(
        y, x, H, W, ok, STRICT)
    return (y0, x0, tl.where(has_dx, step_x, 0), tl.where(has_dy, step_y, 0), ok00, ok01,
            ok10, ok11, ly, lx, inside)


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
