"""Pure-PyTorch deformable convolution for ``R = 1, 2, 3`` spatial dimensions, any device.

One kernel for every dimensionality, built on the shared sampler ``deformconv.ops.bilinear``:

- The input is copied once to channels-last with a one-sample zero border in every spatial
  dimension (``bilinear.bordered_source``), rows ``(N * prod(S + 2) * G, C/G)``. Every corner of
  a position inside ``[-1, S_d)`` then has a row and corners beyond the input read the zero
  border: no per-corner test and no clamping.
- A plan gives, per (position, tap, offset group), the ``2^R`` corner rows and their
  multilinear weights times the mask; ``embedding_bag`` gathers and blends them in one pass.
  Rows are ordered ``(b, o_1, k_1, .., o_R, k_R, G)``, so the sampled columns are, in memory,
  the channels-last "tap volume" ``T`` of shape ``(b, o_1*k_1, .., o_R*k_R, C)`` whose
  ``k_1 x .. x k_R`` blocks are the taps of each output position: the deformable convolution
  is ``conv{R}d(T, weight, stride=kernel, groups=groups)``, which runs on oneDNN (measured
  faster than a plain GEMM of the same size in 2-D when a chunk holds more columns than
  weights; 1-D runs as 2-D of height 1, which reads ``T`` channels-last without a copy). When
  the weight outweighs a chunk's columns (one conv group), the plan's rows are ordered
  ``(b, o_1..o_R, k_1..k_R, G)`` instead and the columns multiply the weight as a plain GEMM
  (``_gemm_chunk``).
- Backward: the column gradient is the input gradient of that convolution; it is scattered to
  the input by a stably sorted gather (deterministic, no atomics); the weight gradient is a
  GEMM per image and conv group on recomputed columns, gathered straight into the GEMM's
  position-major order from the plan's reordered tables (oneDNN's weight gradient of the
  tap-volume convolution was measured 1.1-1.4x slower per 2-D training step on 2 threads); the
  offset and mask gradients come from the ``2^R`` dot products ``<column gradient, corner
  value>``.

Work is cut into chunks of whole samples or of slabs along the first output dimension so that
the columns of one chunk stay near ``COLUMN_BUDGET_BYTES`` (no whole-batch column buffer).
float16/bfloat16 compute in float32. Arguments of mixed floating dtypes (the CUDA autocast
rule: input and weight in half precision, offsets and mask in float32) are computed in the
input's compute dtype; the output has the input's dtype and each gradient its argument's.
Arguments are assumed valid (``functional.py`` checks them).
"""

from __future__ import annotations

import functools
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import bilinear, geometry

# Target size of the sampled columns of one chunk: big enough that the GEMMs run at full speed
# and per-op overheads vanish, small enough to stay in the last-level cache.
COLUMN_BUDGET_BYTES = 8 << 20
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_Grads = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 are computed in float32; float32/float64 in their own precision."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _chunks(N: int, o1: int, row_bytes: int):
    """Yield (n0, n1, r0, r1): whole samples when several fit the budget, else slabs of the
    first output dimension (``row_bytes``: the columns of one slab row)."""
    rows = max(1, COLUMN_BUDGET_BYTES // max(1, row_bytes))
    if rows >= o1:
        per = max(1, rows // o1)
        for n0 in range(0, N, per):
            yield n0, min(N, n0 + per), 0, o1
    else:
        for n in range(N):
            for r0 in range(0, o1, rows):
                yield n, n + 1, r0, min(o1, r0 + rows)


def _row_order(R: int, gemm: bool = False) -> Tuple[int, ...]:
    """Permutation (b, G, k_1..k_R, o_1..o_R) -> the plan's rows: (b, o_1, k_1, .., o_R, k_R,
    G), the tap volume's order, or with ``gemm`` (b, o_1..o_R, k_1..k_R, G), the columns of a
    plain GEMM (each position's taps contiguous)."""
    if gemm:
        return (0, *range(2 + R, 2 + 2 * R), *range(2, 2 + R), 1)
    order = [0]
    for d in range(R):
        order += [2 + R + d, 2 + d]
    return tuple(order + [1])


def _inverse(order: Sequence[int]) -> Tuple[int, ...]:
    back = [0] * len(order)
    for i, o in enumerate(order):
        back[o] = i
    return tuple(back)


def _gemm_chunk(groups: int, column_bytes: int, weight_bytes: int) -> bool:
    """Whether a chunk multiplies its columns (``column_bytes``) with a plain GEMM rather than
    with the tap-volume convolution: when there is one conv group and the weight is at least as
    big as the columns, oneDNN's per-call handling of the weight makes the convolution the
    slower (measured at 512 channels, 1 thread: forward 8% and training 6% faster as a GEMM;
    at 128 channels and 1600 positions the GEMM is 16% slower)."""
    return groups == 1 and weight_bytes >= column_bytes


class _Plan:
    """Sampling plan of one chunk: the corner plan ``c`` (its shape is the row order), the row
    shape (``(b, o_1, k_1, .., o_R, k_R, G)``, or ``(b, o_1..o_R, k_1..k_R, G)`` when ``gemm``)
    and the permutation ``order`` from the offsets' layout to it (``_row_order``)."""

    __slots__ = ("c", "gemm", "order", "rows")

    def __init__(self, c: bilinear.Corners, rows: Tuple[int, ...], gemm: bool,
                 order: Tuple[int, ...]):
        self.c, self.rows, self.gemm, self.order = c, rows, gemm, order


def _plan(offset: Tensor, mask: Optional[Tensor], n0: int, n1: int, r0: int, r1: int,
          size: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
          padding: Sequence[int], dilation: Sequence[int], G: int, dtype: torch.dtype,
          index_dtype: torch.dtype, gemm: bool) -> _Plan:
    R = len(size)
    b = n1 - n0
    dev = offset.device
    o = [r1 - r0] + list(offset.shape[3:])
    order = _row_order(R, gemm)
    off = offset[n0:n1, :, r0:r1].view(b, G, *kernel, R, *o).to(dtype)
    row_shape = [(b, G, *kernel, *o)[i] for i in order]
    positions = []
    for d in range(R):
        first = r0 if d == 0 else 0
        grid = ((torch.arange(first, first + o[d], device=dev) * stride[d] - padding[d])
                .view(-1, 1) + (torch.arange(kernel[d], device=dev) * dilation[d]).view(1, -1))
        view = [1] * (2 * R + 2)
        view[order.index(2 + R + d)], view[order.index(2 + d)] = o[d], kernel[d]
        # Logical (row-major) order from here on, whatever the offsets' strides: written
        # straight into a contiguous tensor (an add's own output would follow the offsets'
        # strides and need a copy).
        pos = torch.empty(row_shape, dtype=dtype, device=dev)
        positions.append(torch.add(grid.to(dtype).view(view),
                                   off.select(R + 2, d).permute(*order), out=pos))
    msk = None
    if mask is not None:
        msk = mask[n0:n1, :, r0:r1].view(b, G, *kernel, *o).permute(*order).to(dtype)
        msk = msk.contiguous()
    cells = math.prod(s + 2 for s in size)
    base = (torch.arange(n0, n1, device=dev) * (cells * G)).view([b] + [1] * (2 * R + 1))
    base = base + torch.arange(G, device=dev)
    c = bilinear.corner_plan(positions, size, scale=msk, base=base, rows_per_cell=G,
                             index_dtype=index_dtype)
    return _Plan(c, tuple(row_shape), gemm, order)


def _tap_volume(cols: Tensor, rows: Sequence[int]) -> Tensor:
    """Columns (M, C/G) as the N-C-spatial view of the channels-last tap volume."""
    R = (len(rows) - 2) // 2
    vol = [rows[1 + 2 * d] * rows[2 + 2 * d] for d in range(R)]
    return cols.view(rows[0], *vol, -1).permute(0, R + 1, *range(1, R + 1))


def _tap_conv(T: Tensor, w: Tensor, b: Optional[Tensor], kernel: Sequence[int],
              groups: int) -> Tensor:
    """``conv{R}d(T, w, b, stride=kernel)`` of the channels-last tap volume ``T``. In 1-D it
    runs as a 2-D convolution of height 1: oneDNN then reads ``T`` channels-last as it is,
    whereas conv1d first copies it to channels-first (measured 2.9x slower, 1 thread)."""
    if len(kernel) == 1:
        return F.conv2d(T.unsqueeze(2), w.unsqueeze(2), b, stride=(1, kernel[0]),
                        groups=groups).squeeze(2)
    return _CONV[len(kernel)](T, w, b, stride=tuple(kernel), groups=groups)


def _tap_conv_input_grad(go: Tensor, T: Tensor, w: Tensor, kernel: Sequence[int],
                         groups: int) -> Tensor:
    """The gradient of ``_tap_conv`` with respect to ``T`` (of ``T``'s shape), for the output
    gradient ``go``; 1-D as 2-D, as there."""
    R = len(kernel)
    if R == 1:
        go, T, w, kernel = go.unsqueeze(2), T.unsqueeze(2), w.unsqueeze(2), [1, kernel[0]]
    g_T, _, _ = torch.ops.aten.convolution_backward(
        go, T, w, None, list(kernel), [0] * len(kernel), [1] * len(kernel), False,
        [0] * len(kernel), groups, [True, False, False])
    return g_T.squeeze(2) if R == 1 else g_T


def _source(input: Tensor, G: int, dtype: torch.dtype) -> Tensor:
    """(N, C, *S) -> bordered channels-last rows (N*prod(S+2)*G, C/G) in ``dtype``."""
    return bilinear.bordered_source(input.movedim(1, -1), dtype).view(-1, input.shape[1] // G)


def deform_conv_fwd(input: Tensor, weight: Tensor, offset: Tensor, mask: Optional[Tensor],
                    bias: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
                    dilation: Sequence[int]) -> Tensor:
    """Forward of ``deform_conv{R}d``: Tensor[N, O, *o] of the input's dtype."""
    N, C, *size = input.shape
    O, _, *kernel = weight.shape
    groups = geometry.groups_of(C, weight.shape, offset.shape[1])
    out_sz = geometry.out_size(size, kernel, stride, padding, dilation)
    ct = _compute_dtype(input.dtype)
    if N == 0:
        return input.new_empty(N, O, *out_sz)
    out = torch.empty(N, O, *out_sz, dtype=ct, device=input.device)
    src = _source(input, groups.offset_groups, ct)
    it = bilinear.index_dtype(src.shape[0])
    w = weight.to(ct)
    b_ = bias.to(ct) if bias is not None else None
    row_bytes = math.prod(out_sz[1:]) * groups.taps * C * src.element_size()
    chunks = list(_chunks(N, out_sz[0], row_bytes))
    wm = _gemm_weight(w, groups.groups, chunks[0], row_bytes)
    for n0, n1, r0, r1 in chunks:
        p = _plan(offset, mask, n0, n1, r0, r1, size, kernel, stride, padding, dilation,
                  groups.offset_groups, ct, it, wm is not None)
        out[n0:n1, :, r0:r1] = _columns_times_weight(bilinear.sample(src, p.c), p, w, wm, b_,
                                                     groups.groups)
    return out.to(input.dtype)


def _columns_times_weight(cols: Tensor, p: _Plan, w: Tensor, wm: Optional[Tensor],
                          b: Optional[Tensor], groups: int) -> Tensor:
    """The output ``(b, O, *o)`` of a chunk from its sampled columns (rows of ``p``): the
    tap-volume convolution with ``w``, or when the plan is in GEMM order the GEMM with ``wm``
    (``_gemm_weight``)."""
    if not p.gemm:
        return _tap_conv(_tap_volume(cols, p.rows), w, b, w.shape[2:], groups)
    y = cols.view(-1, wm.shape[1]) @ wm.t()
    if b is not None:
        y += b
    R = len(w.shape) - 2
    return y.view(p.rows[0], *p.rows[1:1 + R], -1).movedim(-1, 1)


def _column_grad(go: Tensor, p: _Plan, w: Tensor, wm: Optional[Tensor], groups: int) -> Tensor:
    """The gradient of a chunk's columns (rows of ``p``, ``(M, C/G)``) from its output
    gradient ``go`` ``(b, O, *o)``; ``w``, ``wm`` as for ``_columns_times_weight``."""
    O, Cg, *kernel = w.shape
    G = p.rows[-1]
    if p.gemm:  # grad_out (P, O) @ weight (O, K*C)
        return (go.movedim(1, -1).reshape(-1, O) @ wm).view(-1, Cg // G)
    # The input gradient of conv{R}d(T, weight, stride=kernel, groups=groups).
    rows = p.rows
    vol = [rows[1 + 2 * d] * rows[2 + 2 * d] for d in range(len(kernel))]
    T = torch.empty(rows[0], *vol, Cg * groups, dtype=go.dtype, device=go.device)
    g_T = _tap_conv_input_grad(go, T.movedim(-1, 1), w, kernel, groups)
    return g_T.movedim(1, -1).reshape(-1, Cg * groups // G)


def _gemm_weight(w: Tensor, groups: int, chunk: Tuple[int, int, int, int],
                 row_bytes: int) -> Optional[Tensor]:
    """When the chunks run as plain GEMMs (``_gemm_chunk`` of the first chunk; the others are
    no bigger), the weight (O, C, *k) as the matrix (O, K*C) of the GEMM-ordered columns
    (taps major), made once per call; else None."""
    n0, n1, r0, r1 = chunk
    if not _gemm_chunk(groups, (n1 - n0) * (r1 - r0) * row_bytes, w.numel() * w.element_size()):
        return None
    return w.movedim(1, -1).reshape(w.shape[0], -1)


def _group_cols(cols: Tensor, K: int, groups: int, j: int) -> Tensor:
    """Columns of conv group j, (P, K*Cg); a view when there is one group."""
    if groups == 1:
        return cols
    P, KC = cols.shape
    Cg = KC // K // groups
    return cols.view(P, K, groups, Cg)[:, :, j].reshape(P, K * Cg)


def _gemm_order(t: Tensor, rows: Sequence[int]) -> Tensor:
    """Per-sample tables ``t`` (M, ...) in row order (b, o_1, k_1, .., o_R, k_R, G) -> the same
    rows in GEMM order (b, o_1..o_R, k_1..k_R, G), contiguous."""
    R = (len(rows) - 2) // 2
    perm = ([0] + [1 + 2 * d for d in range(R)] + [2 + 2 * d for d in range(R)]
            + list(range(2 * R + 1, 2 * R + 2 + t.dim() - 1)))
    return t.view(*rows, *t.shape[1:]).permute(*perm).reshape(t.shape)


def _weight_grad(g_w: Tensor, src: Tensor, p: _Plan, go: Tensor, C: int,
                 grp: geometry.Groups) -> None:
    """``g_w (O, K*Cg) += grad_out (O, P) @ columns (P, K*C)`` per image and conv group, the
    columns tap-major per position: sampled straight into that order from the plan's tables
    reordered (``2^R`` indices and weights per sample instead of ``C`` column values)."""
    c, rows = p.c, p.rows
    if p.gemm:
        cols = bilinear.sample(src, c)
    else:
        cols = F.embedding_bag(_gemm_order(c.index, rows), src,
                               per_sample_weights=_gemm_order(c.weight, rows), mode="sum")
    cols = cols.view(go.shape[0], -1, grp.taps * C)
    Og = grp.out_per_group
    for n in range(go.shape[0]):
        go_n = go[n].reshape(go.shape[1], -1)
        for j in range(grp.groups):
            sl = slice(j * Og, (j + 1) * Og)
            g_w[sl].addmm_(go_n[sl], _group_cols(cols[n], grp.taps, grp.groups, j))


def deform_conv_bwd(grad_out: Tensor, input: Tensor, weight: Tensor, offset: Tensor,
                    mask: Optional[Tensor], bias: Optional[Tensor], stride: Sequence[int],
                    padding: Sequence[int], dilation: Sequence[int],
                    output_mask: List[bool]) -> _Grads:
    """Gradients of (input, weight, offset, mask, bias); those not asked for come back empty.

    ``output_mask`` = [input, weight, offset and mask, bias], as in aten's
    convolution_backward.
    """
    need_in, need_w, need_om, need_b = output_mask
    N, C, *size = input.shape
    O, Cg, *kernel = weight.shape
    R = len(size)
    grp = geometry.groups_of(C, weight.shape, offset.shape[1])
    G = grp.offset_groups
    out_sz = tuple(grad_out.shape[2:])
    ct = _compute_dtype(input.dtype)
    dev = input.device
    padded = [s + 2 for s in size]

    zeros = functools.partial(torch.zeros, dtype=ct, device=dev)
    g_src = zeros(N * math.prod(padded) * G, C // G) if need_in else None
    g_w = zeros(O, grp.taps * Cg) if need_w else None  # columns ordered (tap, channel)
    g_off = zeros(offset.shape) if need_om else None
    g_mask = zeros(mask.shape) if need_om and mask is not None else None

    if N > 0 and (need_in or need_w or need_om):
        src = _source(input, G, ct)
        w, go_all = weight.to(ct), grad_out.to(ct)
        it = bilinear.index_dtype(src.shape[0])
        row_bytes = math.prod(out_sz[1:]) * grp.taps * C * src.element_size()
        chunks = list(_chunks(N, out_sz[0], row_bytes))
        wm = _gemm_weight(w, grp.groups, chunks[0], row_bytes)
        for n0, n1, r0, r1 in chunks:
            go = go_all[n0:n1, :, r0:r1]
            p = _plan(offset, mask, n0, n1, r0, r1, size, kernel, stride, padding, dilation,
                      G, ct, it, wm is not None)
            if need_w:
                _weight_grad(g_w, src, p, go, C, grp)
            if not (need_in or need_om):
                continue
            gcol = _column_grad(go, p, w, wm, grp.groups)
            if need_om:
                dots = bilinear.corner_dots(gcol, src, p.c)
                _offset_mask_grad(dots, p, g_off, g_mask, n0, n1, r0, r1)
            if need_in:
                bilinear.scatter_rows(g_src, gcol, p.c)

    def out(g: Optional[Tensor], like: Optional[Tensor]) -> Tensor:
        return input.new_empty(0) if g is None else g.to(like.dtype).contiguous()

    g_in = None
    if need_in:  # the interior of the padded channels-last gradient, back to (N, C, *S)
        g_in = bilinear.bordered_interior(g_src, N, size, C).movedim(-1, 1)
    if need_w:
        g_w = g_w.view(O, *kernel, Cg).movedim(-1, 1)
    g_b = (grad_out.to(ct).sum([0, *range(2, R + 2)])
           if need_b and bias is not None else None)
    return (out(g_in, input), out(g_w, weight), out(g_off, offset), out(g_mask, mask),
            out(g_b, bias))


def _offset_mask_grad(s: Tensor, p: _Plan, g_off: Tensor, g_mask: Optional[Tensor],
                      n0: int, n1: int, r0: int, r1: int) -> None:
    """d/d(offsets, mask) from ``s = corner_dots(...)``, back in the offsets' layout."""
    R = (len(p.rows) - 2) // 2
    back = _inverse(p.order)
    b, G, *kernel_and_o = (p.rows[i] for i in back)  # the rows in the offsets' layout
    kernel, o = kernel_and_o[:R], kernel_and_o[R:]
    g_view = g_off[n0:n1, :, r0:r1].view(b, G, *kernel, R, *o)
    for d, g in enumerate(bilinear.position_grad(s, p.c)):
        g_view.select(R + 2, d).copy_(g.permute(*back))
    if g_mask is not None:
        g_mask[n0:n1, :, r0:r1].view(b, G, *kernel, *o).copy_(
            bilinear.scale_grad(s, p.c).permute(*back))
