"""Triton kernels of multi-scale deformable attention (``@triton.jit`` only; launchers in
``launch.py``).

One program per tile of ``BLOCK_Q`` queries of one batch element and one head, holding all
``D`` channels of the head (``BLOCK_D``, the next power of two). Layouts (all contiguous):

- value ``(N, S, M, D)``: one bilinear corner of one head is a contiguous run of ``D`` values;
- spatial_shapes ``(L, 2)`` (H, W) rows and level_start_index ``(L,)``, read in the kernel (no
  host synchronisation);
- sampling_locations ``(N, Q, M, L, P, 2)`` (x, y), attention_weights ``(N, Q, M, L, P)``,
  read in float32 whatever their dtype (the autocast rule passes them as float32);
- output / output gradient ``(N, Q, M*D)``; value gradient float32 ``(N, S, M, D)``,
  accumulated with atomics; location and attention-weight gradients written once per sample
  (no atomics, deterministic).

Numerics are the conventions of ``docs/ms_deform_attn.md``: ``h = y*H - 0.5``, ``w = x*W -
0.5``, corners from the shared ``corners_2d`` with the strict cut-off ``-1 < h < H``,
``-1 < w < W``; NaN, infinite or huge locations are outside, their corners are clamped into
the map before any address is formed and every load and atomic is masked, so they read and
write nothing and weigh 0 (an infinite attention weight of a skipped sample included).
``INDEX_64`` switches the address arithmetic to 64 bits; the launcher sets it only when an
element index can exceed 2**31 - 1.
"""

import triton.language as tl

import triton

from ...triton.bilinear import corner_weights, corners_2d, position_grad_2d
from ...triton.spec import ELEMENT, KernelSpec


@triton.jit
def _tile(Q, D, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, INDEX_64: tl.constexpr):
    """This program's batch element ``n``, head ``m``, tile of queries (validity and the flat
    (batch, query) row ``n*Q + q``) and channels ``d`` (validity); grid (query tiles, N, M)."""
    pid_q = tl.program_id(0)
    n = tl.program_id(1)
    m = tl.program_id(2)
    if INDEX_64:
        n = n.to(tl.int64)
    q = tl.zeros((BLOCK_Q,), dtype=tl.int64 if INDEX_64 else tl.int32) + pid_q
    q = q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    d = tl.arange(0, BLOCK_D)
    return n, m, q < Q, n * Q + q, d, d < D


@triton.jit
def _sample(shapes_ptr,  # spatial_shapes (L, 2): (H, W) per level
            starts_ptr,  # level_start_index (L,)
            loc_ptr,     # sampling_locations (N, Q, M, L, P, 2)
            att_ptr,     # attention_weights (N, Q, M, L, P)
            q_ok, nq, n, m, lvl, p, S, M: tl.constexpr, D: tl.constexpr, L: tl.constexpr,
            P: tl.constexpr):
    """Plan of point ``p`` of level ``lvl`` for a tile of queries: the address of corner
    (y0, x0) into ``value`` (element index of channel 0), the steps to the other corners,
    their validity, the fractional parts, the attention weight (0 where skipped), the
    sample's index into the location / weight tensors, whether it is inside, and H, W."""
    H = tl.load(shapes_ptr + 2 * lvl).to(tl.int32)
    W = tl.load(shapes_ptr + 2 * lvl + 1).to(tl.int32)
    start = tl.load(starts_ptr + lvl)
    s = ((nq * M + m) * L + lvl) * P + p
    x = tl.load(loc_ptr + 2 * s, mask=q_ok, other=0.0).to(tl.float32)
    y = tl.load(loc_ptr + 2 * s + 1, mask=q_ok, other=0.0).to(tl.float32)
    a = tl.load(att_ptr + s, mask=q_ok, other=0.0).to(tl.float32)
    # Pixel centres at integers; the strict cut-off of this operator.
    y0, x0, dx, dy, ok00, ok01, ok10, ok11, ly, lx, inside = corners_2d(
        y * H - 0.5, x * W - 0.5, H, W, q_ok, M * D, W * (M * D), True)
    a = tl.where(inside, a, 0.0)
    base = ((n * S + start + y0 * W + x0) * M + m) * D
    return base, dx, dy, ok00, ok01, ok10, ok11, ly, lx, a, s, inside, H, W


@triton.jit
def _corner(value_ptr, addr, ok, d, d_ok):
    """One corner's (BLOCK_Q, BLOCK_D) tile of ``value`` in float32 (0 where not valid)."""
    return tl.load(value_ptr + addr[:, None] + d[None, :], mask=ok[:, None] & d_ok[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _ms_deform_attn_fwd_kernel(
        value_ptr,   # value (N, S, M, D)
        shapes_ptr,  # spatial_shapes (L, 2)
        starts_ptr,  # level_start_index (L,)
        loc_ptr,     # sampling_locations (N, Q, M, L, P, 2)
        att_ptr,     # attention_weights (N, Q, M, L, P)
        out_ptr,     # output (N, Q, M*D), value's dtype
        Q, S,
        M: tl.constexpr, D: tl.constexpr, L: tl.constexpr, P: tl.constexpr,
        BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, INDEX_64: tl.constexpr):
    n, m, q_ok, nq, d, d_ok = _tile(Q, D, BLOCK_Q, BLOCK_D, INDEX_64)
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
    for lvl in range(L):
        for p in range(P):
            base, dx, dy, ok00, ok01, ok10, ok11, ly, lx, a, s, inside, H, W = _sample(
                shapes_ptr, starts_ptr, loc_ptr, att_ptr, q_ok, nq, n, m, lvl, p, S, M, D, L,
                P)
            w00, w01, w10, w11 = corner_weights(ly, lx, a)
            acc += w00[:, None] * _corner(value_ptr, base, ok00, d, d_ok)
            acc += w01[:, None] * _corner(value_ptr, base + dx, ok01, d, d_ok)
            acc += w10[:, None] * _corner(value_ptr, base + dy, ok10, d, d_ok)
            acc += w11[:, None] * _corner(value_ptr, base + dx + dy, ok11, d, d_ok)
    o = (nq * M + m) * D
    tl.store(out_ptr + o[:, None] + d[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=q_ok[:, None] & d_ok[None, :])


@triton.jit
def _scatter(gval_ptr, addr, ok, d, d_ok, wg):
    tl.atomic_add(gval_ptr + addr[:, None] + d[None, :], wg, mask=ok[:, None] & d_ok[None, :])


@triton.jit
def _ms_deform_attn_bwd_kernel(
        value_ptr, shapes_ptr, starts_ptr, loc_ptr, att_ptr,  # the forward kernel's inputs
        gout_ptr,    # output gradient (N, Q, M*D)
        gval_ptr,    # value gradient, float32 (N, S, M, D), zeroed; unused without NEED_VALUE
        gloc_ptr,    # location gradient, float32 (N, Q, M, L, P, 2); unused without NEED_LOC
        gatt_ptr,    # attention-weight gradient, float32 (N, Q, M, L, P); same
        Q, S,
        M: tl.constexpr, D: tl.constexpr, L: tl.constexpr, P: tl.constexpr,
        NEED_VALUE: tl.constexpr, NEED_LOC: tl.constexpr,
        BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, INDEX_64: tl.constexpr):
    n, m, q_ok, nq, d, d_ok = _tile(Q, D, BLOCK_Q, BLOCK_D, INDEX_64)
    o = (nq * M + m) * D
    g = tl.load(gout_ptr + o[:, None] + d[None, :], mask=q_ok[:, None] & d_ok[None, :],
                other=0.0).to(tl.float32)
    for lvl in range(L):
        for p in range(P):
            base, dx, dy, ok00, ok01, ok10, ok11, ly, lx, a, s, inside, H, W = _sample(
                shapes_ptr, starts_ptr, loc_ptr, att_ptr, q_ok, nq, n, m, lvl, p, S, M, D, L,
                P)
            if NEED_VALUE:
                w00, w01, w10, w11 = corner_weights(ly, lx, a)
                _scatter(gval_ptr, base, ok00, d, d_ok, w00[:, None] * g)
                _scatter(gval_ptr, base + dx, ok01, d, d_ok, w01[:, None] * g)
                _scatter(gval_ptr, base + dy, ok10, d, d_ok, w10[:, None] * g)
                _scatter(gval_ptr, base + dx + dy, ok11, d, d_ok, w11[:, None] * g)
            if NEED_LOC:
                # <output gradient, corner value> of the four corners.
                s00 = tl.sum(g * _corner(value_ptr, base, ok00, d, d_ok), axis=1)
                s01 = tl.sum(g * _corner(value_ptr, base + dx, ok01, d, d_ok), axis=1)
                s10 = tl.sum(g * _corner(value_ptr, base + dy, ok10, d, d_ok), axis=1)
                s11 = tl.sum(g * _corner(value_ptr, base + dx + dy, ok11, d, d_ok), axis=1)
                b00, b01, b10, b11 = corner_weights(ly, lx, 1.0)
                g_att = tl.where(inside, b00 * s00 + b01 * s01 + b10 * s10 + b11 * s11, 0.0)
                gy, gx = position_grad_2d(s00, s01, s10, s11, ly, lx, a)
                # Through h = y*H - 0.5, w = x*W - 0.5.
                tl.store(gatt_ptr + s, g_att, mask=q_ok)
                tl.store(gloc_ptr + 2 * s, tl.where(inside, gx * W, 0.0), mask=q_ok)
                tl.store(gloc_ptr + 2 * s + 1, tl.where(inside, gy * H, 0.0), mask=q_ok)


def gpu_config(D: int, role: str = "fwd") -> dict:
    """Blocks of a GPU launch for head dimension ``D``: 64 queries x D channels per program in
    the forward, 16 in the backward (which holds the output gradient and the four corner tiles
    at once; 64 spilled up to 500 bytes per thread, 32 up to 64 with 64-bit indices), fewer
    for wide heads."""
    block_d = triton.next_power_of_2(max(1, D))
    budget = 2048 if role == "fwd" else 512  # BLOCK_Q * BLOCK_D per program
    block_q = max(8, min(64, budget // block_d))
    return dict(BLOCK_Q=block_q, BLOCK_D=block_d, num_warps=4)


def _report_signature(pointers, flags):
    """Signature builder of the report (``spec.KernelSpec``): Deformable DETR's shape (8 heads
    of 32 channels, 4 levels, 4 points); locations and weights in the data dtype, gradients
    in float32."""
    def build(label, index_64=False):
        e = "*" + ELEMENT[label]
        types = {p: e for p in pointers}
        types.update(shapes_ptr="*i64", starts_ptr="*i64", gval_ptr="*fp32", gloc_ptr="*fp32",
                     gatt_ptr="*fp32")
        consts = dict(M=8, D=32, L=4, P=4, INDEX_64=index_64, **flags)
        return types, consts
    return build


def _configs(D: int, role: str):
    c = gpu_config(D, role)
    return [triton.Config({"BLOCK_Q": c["BLOCK_Q"], "BLOCK_D": c["BLOCK_D"]},
                          num_warps=c["num_warps"], num_stages=1)]


# What the ``deformconv kernels`` report compiles offline: both kernels at Deformable DETR's
# head size, float32/float16/bfloat16, 32- and 64-bit indices. No tl.dot, so no TF32 variant.
KERNEL_SPECS = [
    KernelSpec(f"ms_deform_attn_{role}", fn,
               {f + i: _configs(32, role) for f in ("half", "float32") for i in ("", "_i64")},
               _report_signature(pointers, flags), dtypes=("fp32", "fp16", "bf16"),
               aligned=())
    for role, fn, pointers, flags in (
        ("fwd", _ms_deform_attn_fwd_kernel, ("value_ptr", "loc_ptr", "att_ptr", "out_ptr"), {}),
        ("bwd", _ms_deform_attn_bwd_kernel, ("value_ptr", "loc_ptr", "att_ptr", "gout_ptr"),
         dict(NEED_VALUE=True, NEED_LOC=True)))
]
