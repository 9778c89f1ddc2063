"""Pure-PyTorch multi-scale deformable attention: forward and explicit backward, any device.

The conventions are those of ``docs/ms_deform_attn.md``: pixel coordinates ``w = x*W - 0.5``,
``h = y*H - 0.5``, the strict cut-off ``-1 < h < H``, ``-1 < w < W``, bilinear with corners
outside the map reading 0, the floor-based one-sided location derivative.

Layout. ``value`` (N, S, M, D) is read in place as rows ``(N * S * M, D)`` (pixel ``(y, x)`` of
level ``l``, head ``m`` of batch element ``n`` at row ``(n*S + start_l + y*W + x) * M + m``):
no copy, no zero border. Every sample reads two rows by two columns starting at a base pixel
``(yb, xb)`` clamped into the map (``0 <= yb <= max(H - 2, 0)``, the same for ``xb``), so the
four rows sit at fixed steps from the first one (``M`` along x, ``W*M`` along y; 0 along an
axis of size 1) and never leave the level. Per axis, the bilinear weights ``1 - f`` of
``floor`` and ``f`` of ``floor + 1`` move onto those two slots; a neighbour outside the map
gets weight 0 (where the floor is -1 the base is 0 and the weights trade places, likewise at
the far edge), so an inside sample's slots are exactly its in-map corners, and the slot
weights' derivatives in ``f`` are the one-sided derivative of the convention.

Work is cut into chunks of (batch, query) rows whose plans stay near ``PLAN_BUDGET_BYTES``;
nothing of size ``N x Q x M x L x P x D`` is ever built. Per chunk, all levels at once:

1. ``_plan``: the slots' rows and weights (bilinear times attention weight, 0 for a sample
   outside the cut-off), computed laid out ``(4, L, P, B)`` with the chunk's ``B`` (query,
   head) bags innermost, so per-level constants broadcast over long runs; the rows are then
   transposed to ``(B, 4*L*P)`` (a blocked transpose), each bag one contiguous run.
2. Forward: one ``embedding_bag`` whose bags are the (query, head) pairs gathers and blends
   them; its ``(rows * M, D)`` result is the output's head-major channels as they lie in memory.
3. Backward: the four dot products of each sample's slots with its output-gradient row come
   from one sampled matrix product (``torch.sparse.sampled_addmm`` on CPU: the dots are never
   materialised as rows); the location and attention-weight gradients are sums of those dots
   with the slot weights or their derivatives. The value gradient is a deterministic scatter
   per level (samples sorted stably by their first slot's row, one ``embedding_bag`` per slot,
   no atomics) into the gradient itself: no bordered buffer, no copy back.

Arguments are assumed valid (``functional.py`` checks them). float16 and bfloat16 are computed
in float32; results come back in each argument's dtype.
"""

from __future__ import annotations

import warnings
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

# Target size of one chunk's plan and its temporaries. Large enough that per-call overheads
# vanish, small enough that the temporaries are reused from the allocator's heap between chunks
# rather than mapped fresh each time (zeroing 35 MB of fresh pages was measured at 15 times the
# cost of zeroing them again).
PLAN_BUDGET_BYTES = 24 << 20
# Bytes of plan and temporaries per sample in the backward (index and weights of 4 slots,
# dots, per-axis terms), used to size the chunks.
SAMPLE_BYTES = 160

# Rows of a table from which indices need 64 bits.
INDEX_64_FROM = 2 ** 31 - 1

# Devices where the value gradient's rows are updated by ``index_add_`` (measured 15x faster than
# a gather, add and put on CPU); CUDA's ``index_add_`` refuses deterministic mode, in which the
# Triton backward calls this kernel for the value gradient, so elsewhere gather, add and put.
INDEX_ADD_DEVICES = ("cpu",)

# Devices whose dot products come from ``torch.sparse.sampled_addmm`` (its CPU kernel takes
# duplicate and unsorted column indices); elsewhere a gather in sub-chunks and a batched
# product.
SDDMM_DEVICES = ("cpu",)


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


class _Levels:
    """The live levels (``H*W > 0``) as ``(L, 1, 1)`` tensors that broadcast against samples
    laid out ``(L, P, B)``, ``B`` the chunk's (row, head) bags innermost: a per-level constant
    then varies only along outer dimensions and the elementwise kernels stay vectorised (with
    the levels inside, their innermost run would be ``P`` elements). Sizes are in the compute
    dtype, rows in the index dtype."""

    def __init__(self, spatial_shapes: Tensor, M: int, ct: torch.dtype, it: torch.dtype,
                 device):
        shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
        starts, s = [], 0
        for h, w in shapes:
            starts.append(s)
            s += h * w
        self.S = s
        self.live = [i for i, (h, w) in enumerate(shapes) if h * w > 0]
        self.all_live = len(self.live) == len(shapes)
        H = [shapes[i][0] for i in self.live]
        W = [shapes[i][1] for i in self.live]

        def col(values, dtype):
            return torch.tensor(values, dtype=dtype, device=device).view(-1, 1, 1)

        self.H, self.W = col(H, ct), col(W, ct)
        # Largest base pixel, and the last floor whose upper neighbour is inside the map.
        self.yb_max, self.xb_max = col([max(h - 2, 0) for h in H], ct), col(
            [max(w - 2, 0) for w in W], ct)
        self.y_hi, self.x_hi = col([h - 2 for h in H], ct), col([w - 2 for w in W], ct)
        self.zero = torch.zeros((), dtype=ct, device=device)
        self.row_y = col([w * M for w in W], it)
        self.start = col([starts[i] * M for i in self.live], it)
        # Slot steps (along y, along x) in rows: 0 along an axis of one pixel.
        self.steps = [(w * M if h > 1 else 0, M if w > 1 else 0) for h, w in zip(H, W)]
        sy, sx = col([s[0] for s in self.steps], it), col([s[1] for s in self.steps], it)
        self.step_cols = (sx, sy, sx + sy)


def _axis(p: Tensor, b_max: Tensor, hi_last: Tensor, grads: bool):
    """One axis of the slots of pixel coordinates ``p`` (0 where outside): the base pixel and
    the two slot weights, and with ``grads`` their derivatives in ``p``."""
    low = torch.floor(p)
    f = p - low
    base = torch.clamp(low, torch.zeros_like(b_max), b_max)
    lo_in = low >= 0
    hi_in = low <= hi_last
    lo = torch.rsub(f, 1.0).mul_(lo_in)
    hi = f.mul_(hi_in)
    swap = low != base  # floor -1 (base 0) or the last pixel (base one before): trade places
    a, b = torch.where(swap, hi, lo), torch.where(swap, lo, hi)
    if not grads:
        return base, a, b, None, None
    d_lo = lo_in.to(p.dtype).neg_()
    d_hi = hi_in.to(p.dtype)
    return base, a, b, torch.where(swap, d_hi, d_lo), torch.where(swap, d_lo, d_hi)


def _transposed(t: Tensor) -> Tensor:
    """(K, B) -> (B, K) contiguous (PyTorch's blocked transpose copy on CPU)."""
    return torch.empty(t.shape[1], t.shape[0], dtype=t.dtype, device=t.device).copy_(t.t())


class _Plan:
    """The slots of the samples of one chunk of ``B`` (row, head) bags, slot order (y0, x0),
    (y0, x1), (y1, x0), (y1, x1) of the base pixel. ``rows`` and ``weight``: (4, L, P, B);
    ``index``: the same rows by bag, (B, 4*L*P). ``inside``, the attention weight ``att`` (0
    outside) and the per-axis slot weights and derivatives ``ay``, ``ax``: (L, P, B)."""

    __slots__ = ("rows", "weight", "index", "inside", "att", "ax", "ay")


def _plan(loc: Tensor, att: Tensor, r0: int, r1: int, Q: int, M: int, lv: _Levels,
          ct: torch.dtype, it: torch.dtype, grads: bool) -> _Plan:
    B = (r1 - r0) * M
    L = len(lv.live)
    P = att.shape[-1]
    xy = _transposed(loc[r0:r1].reshape(B, -1).to(ct)).view(L, P, 2, B)
    w = (xy[:, :, 0] * lv.W).sub_(0.5)  # pixel centres at integers (rounded as x*W - 0.5)
    h = (xy[:, :, 1] * lv.H).sub_(0.5)
    inside = (h > -1) & (h < lv.H) & (w > -1) & (w < lv.W)  # NaN fails every comparison
    h = torch.where(inside, h, lv.zero)
    w = torch.where(inside, w, lv.zero)
    yb, ay0, ay1, dy0, dy1 = _axis(h, lv.yb_max, lv.y_hi, grads)
    xb, ax0, ax1, dx0, dx1 = _axis(w, lv.xb_max, lv.x_hi, grads)
    # An infinite weight of a sample outside is 0 (not inf * 0).
    a = torch.where(inside, _transposed(att[r0:r1].reshape(B, -1).to(ct)).view(L, P, B),
                    lv.zero)
    # Row of bag b = (row r, head m): (n*S + start + y*W + x) * M + m, n = r // Q.
    bag = torch.arange(r0 * M, r1 * M, dtype=it, device=a.device)
    bag_row = torch.div(bag, Q * M, rounding_mode="floor").mul_(lv.S * M).add_(bag % M)
    idx = torch.empty(4, L, P, B, dtype=it, device=a.device)
    first = idx[0]
    torch.mul(yb.to(it), lv.row_y, out=first)
    first.add_(xb.to(it), alpha=M).add_(lv.start).add_(bag_row)
    for c, step in enumerate(lv.step_cols, 1):
        torch.add(first, step, out=idx[c])
    weight = torch.empty(4, L, P, B, dtype=ct, device=a.device)
    wy0, wy1 = a * ay0, a * ay1
    for c, (wy, wx) in enumerate(((wy0, ax0), (wy0, ax1), (wy1, ax0), (wy1, ax1))):
        torch.mul(wy, wx, out=weight[c])
    p = _Plan()
    p.rows, p.weight, p.inside, p.att = idx, weight, inside, a
    p.index = _transposed(idx.view(4 * L * P, B))
    p.ay, p.ax = (ay0, ay1, dy0, dy1), (ax0, ax1, dx0, dx1)
    return p


def _chunks(rows: int, per_row: int):
    step = max(1, PLAN_BUDGET_BYTES // max(1, per_row * SAMPLE_BYTES))
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


def _inputs(value, spatial_shapes, sampling_locations, attention_weights):
    """Compute dtype, the value rows, the live levels and the (N*Q)-row views of the
    locations and weights (only the live levels)."""
    N, S, M, D = value.shape
    Q, _, L, P = sampling_locations.shape[1:5]
    ct = _compute_dtype(value, sampling_locations, attention_weights)
    it = torch.int32 if N * S * M < INDEX_64_FROM else torch.int64
    lv = _Levels(spatial_shapes, M, ct, it, value.device)
    src = value.to(ct).reshape(N * S * M, D)  # a view when contiguous in the compute dtype
    loc = sampling_locations.reshape(N * Q, M, L, P, 2)
    att = attention_weights.reshape(N * Q, M, L, P)
    if not lv.all_live:
        keep = torch.tensor(lv.live, dtype=torch.long, device=value.device)
        loc, att = loc.index_select(2, keep), att.index_select(2, keep)
    return N, Q, M, D, P, ct, it, lv, src, loc.contiguous(), att.contiguous()


def ms_deform_attn_fwd(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                       sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Output (N, Q, M*D) in ``value``'s dtype (``level_start_index`` follows from the shapes
    and is not read)."""
    N, Q, M, D, P, ct, it, lv, src, loc, att = _inputs(
        value, spatial_shapes, sampling_locations, attention_weights)
    L = len(lv.live)
    if N * Q * M * D == 0 or L * P == 0:
        return value.new_zeros(N, Q, M * D)
    chunks = list(_chunks(N * Q, M * L * P))
    out = None if len(chunks) == 1 else torch.empty(N * Q, M * D, dtype=ct, device=value.device)
    for r0, r1 in chunks:
        p = _plan(loc, att, r0, r1, Q, M, lv, ct, it, grads=False)
        res = F.embedding_bag(p.index, src, mode="sum",
                              per_sample_weights=_transposed(p.weight.view(p.index.shape[1], -1)))
        if out is None:
            out = res
        else:
            out[r0:r1] = res.view(r1 - r0, M * D)
    return out.view(N, Q, M * D).to(value.dtype)


def _dots(gcol: Tensor, src: Tensor, index: Tensor) -> Tensor:
    """``(bags, K)``: ``<gcol[b], src[index[b, k]]>`` for every entry of ``index`` (bags, K)."""
    bags, K = index.shape
    if src.device.type in SDDMM_DEVICES:
        crow = torch.arange(0, bags * K + 1, K, dtype=index.dtype, device=index.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            pattern = torch.sparse_csr_tensor(
                crow, index.reshape(-1), src.new_zeros(bags * K), (bags, src.shape[0]),
                check_invariants=False)
        return torch.sparse.sampled_addmm(pattern, gcol, src.t(), beta=0.0).values().view(
            bags, K)
    out = src.new_empty(bags, K)
    step = max(1, PLAN_BUDGET_BYTES // max(1, K * src.shape[1] * src.element_size()))
    for b0 in range(0, bags, step):
        b1 = min(bags, b0 + step)
        rows = src.index_select(0, index[b0:b1].reshape(-1)).view(b1 - b0, K, -1)
        torch.bmm(rows, gcol[b0:b1].unsqueeze(-1), out=out[b0:b1].unsqueeze(-1))
    return out


def _scatter_level(g_rows: Tensor, gcol: Tensor, p: _Plan, lvl: int, steps) -> None:
    """``g_rows[row of slot c of s] += weight[c, s] * gcol[bag of s]`` for the inside samples
    ``s`` of level ``lvl`` (in place), deterministic: samples sorted stably by their first
    slot's row, for each slot one ``embedding_bag`` sums in that fixed order the gradient rows
    of the samples sharing a first row, and the sums land at the slot's fixed step from it."""
    B = gcol.shape[0]
    sel = p.inside[lvl].view(-1).nonzero().squeeze(1)  # samples as (point, bag)
    if sel.numel() == 0:
        return
    keys, order = torch.sort(p.rows[0, lvl].view(-1)[sel], stable=True)
    sel = sel[order]
    weights = p.weight[:, lvl].reshape(4, -1).index_select(1, sel)
    owner = sel.remainder_(B)
    firsts, counts = torch.unique_consecutive(keys, return_counts=True)
    bounds = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    firsts = firsts.long()
    sy, sx = steps
    for c, step in enumerate((0, sx, sy, sx + sy)):
        sums = F.embedding_bag(owner, gcol, bounds, mode="sum", per_sample_weights=weights[c],
                               include_last_offset=True)
        rows = firsts + step  # distinct: each row is updated once, so in a fixed order
        if g_rows.device.type in INDEX_ADD_DEVICES:
            g_rows.index_add_(0, rows, sums)
        else:
            g_rows[rows] += sums


def _sample_grads(d: Tensor, p: _Plan, lv: _Levels) -> Tuple[Tensor, Tensor]:
    """From the dots ``d`` (4, L, P, B) of every sample's slots with its output-gradient row:
    the gradients of its location (L, P, 2, B) (x, y) and attention weight (L, P, B)."""
    ay0, ay1, dy0, dy1 = p.ay
    ax0, ax1, dx0, dx1 = p.ax
    d00, d01, d10, d11 = d
    L, P, B = p.att.shape
    g_xy = torch.empty(L, P, 2, B, dtype=d.dtype, device=d.device)
    # Outside samples read real rows (their position is 0) but have no gradients.
    u0 = torch.addcmul(ax0 * d00, ax1, d01)  # x-blends of the y0 and y1 slot rows
    u1 = torch.addcmul(ax0 * d10, ax1, d11)
    g_a = torch.where(p.inside, torch.addcmul(ay0 * u0, ay1, u1), lv.zero)
    gy = torch.addcmul(dy0 * u0, dy1, u1).mul_(p.att).mul_(lv.H)  # d/dy = d/dh * H
    torch.where(p.inside, gy, lv.zero, out=g_xy[:, :, 1])
    v0 = torch.addcmul(dx0 * d00, dx1, d01)
    v1 = torch.addcmul(dx0 * d10, dx1, d11)
    gx = torch.addcmul(ay0 * v0, ay1, v1).mul_(p.att).mul_(lv.W)
    torch.where(p.inside, gx, lv.zero, out=g_xy[:, :, 0])
    return g_xy, g_a


def _put(dst: Tensor, r0: int, r1: int, live, g: Tensor) -> None:
    """Write the chunk's (K, B) gradients ``g`` (levels outermost) into rows ``r0:r1`` of
    ``dst`` (rows, M, L, ...), only the live levels."""
    B = g.shape[-1]
    if live is None:
        dst[r0:r1].view(B, -1).copy_(g.view(-1, B).t())  # a blocked transpose on CPU
    else:
        dst[r0:r1, :, live] = _transposed(g.view(-1, B)).view(dst[r0:r1, :, live].shape)


def ms_deform_attn_bwd(grad_out: Tensor, value: Tensor, spatial_shapes: Tensor,
                       level_start_index: Tensor, sampling_locations: Tensor,
                       attention_weights: Tensor, output_mask: Sequence[bool]
                       ) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of (value, sampling_locations, attention_weights), each in its argument's
    dtype; an empty tensor where ``output_mask`` says it is not needed."""
    need_v, need_loc, need_att = output_mask
    N, Q, M, D, P, ct, it, lv, src, loc, att = _inputs(
        value, spatial_shapes, sampling_locations, attention_weights)
    L = len(lv.live)
    dev = value.device
    work = N * Q * M * D > 0 and L * P > 0
    g_val = torch.zeros(value.shape, dtype=ct, device=dev) if need_v else None
    # Every location and weight gradient is written below unless a level is empty.
    new = torch.empty if work and lv.all_live else torch.zeros
    g_loc = new(sampling_locations.shape, dtype=ct, device=dev) if need_loc else None
    g_att = new(attention_weights.shape, dtype=ct, device=dev) if need_att else None
    if work:
        g_rows = g_val.view(-1, D) if need_v else None
        go = grad_out.reshape(N * Q * M, D).to(ct)
        gl = g_loc.view(N * Q, M, -1, P, 2) if need_loc else None
        ga_all = g_att.view(N * Q, M, -1, P) if need_att else None
        for r0, r1 in _chunks(N * Q, M * L * P):
            p = _plan(loc, att, r0, r1, Q, M, lv, ct, it, grads=need_loc or need_att)
            gcol = go[r0 * M:r1 * M]
            if need_v:
                for lvl in range(L):
                    _scatter_level(g_rows, gcol, p, lvl, lv.steps[lvl])
            if not (need_loc or need_att):
                continue
            B = (r1 - r0) * M
            d = _transposed(_dots(gcol, src, p.index)).view(4, L, P, B)
            g_xy, g_a = _sample_grads(d, p, lv)
            live = None if lv.all_live else lv.live
            if need_loc:
                _put(gl, r0, r1, live, g_xy)
            if need_att:
                _put(ga_all, r0, r1, live, g_a)
    empty = value.new_empty(0)
    gv = g_val.to(value.dtype) if need_v else empty
    gl_out = g_loc.to(sampling_locations.dtype) if need_loc else empty
    ga_out = g_att.to(attention_weights.dtype) if need_att else empty
    return gv, gl_out, ga_out


__all__: List[str] = ["ms_deform_attn_bwd", "ms_deform_attn_fwd"]
