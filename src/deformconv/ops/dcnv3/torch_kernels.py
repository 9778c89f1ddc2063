"""Pure-PyTorch DCNv3 kernels: forward and explicit backward, on any device.

The design of the deformable convolution's CPU path (``torch_impl``), for DCNv3's layout:

- The input is copied once to a channels-last source with a one-pixel zero border,
  ``src[((n*(H+2) + y+1)*(W+2) + x+1)*G + g]`` a row of the group's ``Cg`` channels. Every
  corner of a position inside ``-1 < y < H``, ``-1 < x < W`` has a row; corners off the image
  read the border: no per-corner test. Positions outside (or not finite) are clamped into
  the bordered map and weigh 0.
- Per chunk of output rows (``_taps``): each sample's first corner row (int32 where the rows
  fit), its fractions, and the mask times ``inside``; the four corners are the first one
  plus fixed steps (``G`` across, ``(W+2)*G`` down). The forward builds the ``4*P`` corner
  rows and weights of each (output position, group) and one ``embedding_bag`` gathers and
  sums them: its ``(N*oH*oW*G, Cg)`` result is the channels-last output itself. Nothing the
  size of InternImage's ``(N*G, Cg, oH*oW, P)`` sample tensor is built: work runs in chunks
  of ``torch_impl.COLUMN_BUDGET_BYTES`` of plan.
- Backward, input: the output gradient is scattered to the source without atomics
  (``_scatter``): one stable sort of the samples by their first corner row, then per corner
  one ``embedding_bag`` summing, for each source row of the touched band, the gradient rows
  of the samples there, in a fixed order: deterministic, bitwise repeatable.
- Backward, offsets and mask (``_grads``): the output gradient row dotted with three blends
  of each sample's corners (two y-blends, bags of two, and one x-blended difference), with the
  floor held constant: the one-sided derivative.

The kernels take the offsets as a (N, oH, oW, G, P, 2) and the mask as a (N, oH, oW, G, P)
view of any strides, so ``dcnv4`` runs them on its fused tensor without copies. Arguments are
assumed valid (``functional.py``).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import bilinear
from ..deform_conv.torch_kernels import _chunks, _compute_dtype


class Geometry(NamedTuple):
    """The scalar arguments of one call, in InternImage's order."""

    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dilation_h: int
    dilation_w: int
    group: int
    group_channels: int
    offset_scale: float
    remove_center: bool

    @property
    def points(self) -> int:
        return self.kernel_h * self.kernel_w - int(self.remove_center)

    def out_size(self, H: int, W: int) -> Tuple[int, int]:
        """(oH, oW): ``(H + 2*pad_h - (dilation_h*(kernel_h-1) + 1)) // stride_h + 1``."""
        return ((H + 2 * self.pad_h - (self.dilation_h * (self.kernel_h - 1) + 1))
                // self.stride_h + 1,
                (W + 2 * self.pad_w - (self.dilation_w * (self.kernel_w - 1) + 1))
                // self.stride_w + 1)

    def taps(self) -> Tuple[List[int], List[int]]:
        """Kernel column ``i`` and row ``j`` of each tap slot: x outer, y inner, the centre
        skipped when ``remove_center``."""
        cols, rows = [], []
        for i in range(self.kernel_w):
            for j in range(self.kernel_h):
                if self.remove_center and i == self.kernel_w // 2 and j == self.kernel_h // 2:
                    continue
                cols.append(i)
                rows.append(j)
        return cols, rows


def offset_mask_views(offset: Tensor, mask: Tensor, g: Geometry) -> Tuple[Tensor, Tensor]:
    """DCNv3's offset and mask as the kernels' (N, oH, oW, G, P, 2) and (N, oH, oW, G, P)."""
    return (offset.unflatten(-1, (g.group, g.points, 2)),
            mask.unflatten(-1, (g.group, g.points)))


# PyTorch sorts integer keys on CPU with a radix sort from this many keys (its parallel grain
# size); shorter key lists go through a comparison sort.
RADIX_SORT_FROM = 32768


class _Taps(NamedTuple):
    """The samples of one chunk, (b, R, oW, G, P) flattened row-major to ``S`` samples.

    ``first`` is the row of each sample's (y0, x0) corner in the bordered source (rows of
    ``Cg`` channels); its four corners are at ``first + steps[c]``, in the order (y0, x0),
    (y0, x1), (y1, x0), (y1, x1). ``fx``/``fy`` are the fractions and ``inside`` is 1.0 where
    the sample contributes: every sample, inside or not, has fractions in [0, 1] and corners
    inside the source (a hostile position is clamped first), and only ``inside`` (also folded
    into ``scaled``, the mask times ``inside``) separates them.
    """

    first: Tensor
    fx: Tensor
    fy: Tensor
    inside: Tensor
    scaled: Tensor
    steps: Tuple[int, int, int, int]

    def corners(self, which: Sequence[int] = (0, 1, 2, 3)) -> Tensor:
        """(S, len(which)): the rows of the corners ``which``."""
        index = self.first.new_empty(self.first.shape[0], len(which))
        for col, c in enumerate(which):
            torch.add(self.first, self.steps[c], out=index[:, col])
        return index


def _weights(fx: Tensor, fy: Tensor, scaled: Tensor, out: Optional[Tensor] = None
             ) -> List[Tensor]:
    """The four corner weights ``scaled * (1 - fy or fy) * (1 - fx or fx)`` in corner order,
    written into the columns of ``out`` (S, 4) when given."""
    hi_y = scaled * fy
    lo_y = scaled - hi_y
    cols = [None] * 4 if out is None else list(out.unbind(1))
    for wy, c in ((lo_y, 1), (hi_y, 3)):
        cols[c] = torch.mul(wy, fx, out=cols[c])
        cols[c - 1] = torch.sub(wy, cols[c], out=cols[c - 1])
    return cols


def _taps(off: Tensor, msk: Tensor, n0: int, n1: int, r0: int, r1: int, H: int, W: int,
          g: Geometry, dtype: torch.dtype, index_dtype: torch.dtype) -> _Taps:
    """The first corner rows and the fractions of one chunk's samples (see ``_Taps``)."""
    dev = off.device
    oW, G = off.shape[2], g.group
    s = g.offset_scale
    cols, rows = g.taps()
    c_h = g.dilation_h * (g.kernel_h - 1) // 2
    c_w = g.dilation_w * (g.kernel_w - 1) // 2
    # The CUDA kernel's grid, the spread about the centre scaled by s:
    # x = (wo*stride - pad + c - c*s) + (i*dil + dx)*s, likewise y.
    x0 = (torch.arange(oW, device=dev, dtype=dtype) * g.stride_w - g.pad_w + c_w) - c_w * s
    y0 = (torch.arange(r0, r1, device=dev, dtype=dtype) * g.stride_h - g.pad_h + c_h) - c_h * s
    ix = torch.tensor(cols, device=dev, dtype=dtype) * g.dilation_w
    jy = torch.tensor(rows, device=dev, dtype=dtype) * g.dilation_h
    o = off[n0:n1, r0:r1]
    pos = []
    for d, (start, tap, view) in enumerate(((y0, jy, (1, -1, 1, 1, 1)),
                                           (x0, ix, (1, 1, -1, 1, 1)))):
        # Written into row-major buffers whatever the offsets' strides.
        p = torch.add(o[..., 1 - d], tap, out=torch.empty(o.shape[:-1], dtype=dtype, device=dev))
        if s != 1:
            p.mul_(s)
        pos.append(p.add_(start.view(view)))
    y, x = pos
    inside = ((y > -1) & (y < H) & (x > -1) & (x < W)).to(dtype)
    # Clamped into the bordered source (NaN to -1): every corner has a row, the fraction is
    # in [0, 1]; samples not inside have weight 0 whatever their clamped position.
    fr, lo = [], []
    for p, size in ((y, H), (x, W)):
        p.clamp_(-1, size).nan_to_num_(-1.0)
        f = torch.floor(p).clamp_(max=size - 1)
        fr.append(p.sub_(f).view(-1))
        lo.append(f.to(index_dtype))
    W2 = W + 2
    cell = torch.add(lo[1], lo[0], alpha=W2)  # (y0 + 1)*W2 + (x0 + 1) - (W2 + 1)
    base = ((torch.arange(n0, n1, device=dev, dtype=index_dtype) * ((H + 2) * W2 * G)
             + (W2 + 1) * G).view(-1, 1, 1, 1, 1)
            + torch.arange(G, device=dev, dtype=index_dtype).view(1, 1, 1, G, 1))
    first = torch.add(base, cell, alpha=G).view(-1)
    scaled = torch.mul(inside, msk[n0:n1, r0:r1], out=torch.empty_like(inside))
    return _Taps(first, fr[1], fr[0], inside.view(-1), scaled.view(-1),
                 (0, G, W2 * G, W2 * G + G))


def _scatter(g_src: Tensor, rows: Tensor, t: _Taps, P: int) -> None:
    """``g_src[corner c of s] += weight[s, c] * rows[s // P]`` without atomics: the samples are
    sorted stably by their first corner's row, so each source row sums its contributions in
    a fixed order (bitwise repeatable); per corner one ``embedding_bag`` sums, for every row
    of the touched band, the gradient rows of the samples whose first corner is there, and
    the band is added at the corner's step."""
    keys = t.first
    if keys.dtype != torch.int32 and g_src.shape[0] < bilinear.INDEX_64_FROM:
        keys = keys.to(torch.int32)
    S = keys.shape[0]
    if S < RADIX_SORT_FROM and keys.device.type == "cpu":
        # Below this size the CPU sort compares (measured 0.65 ms for 14k keys, more than
        # the radix sort of 70k): pad to it with keys past every row, kept last (stable).
        pad = keys.new_full((RADIX_SORT_FROM - S,), g_src.shape[0])
        keys, order = torch.sort(torch.cat([keys, pad]), stable=True)
        keys, order = keys[:S], order[:S]
    else:
        keys, order = torch.sort(keys, stable=True)
    lo, hi = int(keys[0]), int(keys[-1]) + 1
    bounds = torch.zeros(hi - lo + 1, dtype=torch.int64, device=keys.device)
    torch.cumsum(torch.bincount(keys - lo, minlength=hi - lo), 0, out=bounds[1:])
    owner = torch.div(order, P, rounding_mode="floor")
    weights = _weights(*(v.index_select(0, order) for v in (t.fx, t.fy, t.scaled)))
    for step, w in zip(t.steps, weights):
        g_src[lo + step:hi + step] += F.embedding_bag(
            owner, rows, bounds, mode="sum", include_last_offset=True, per_sample_weights=w)


def _grads(rows: Tensor, src: Tensor, t: _Taps, P: int, s: float
           ) -> Tuple[Tensor, Tensor, Tensor]:
    """(d/dx, d/dy, d/dmask) of ``<rows[m], out sample>`` per sample (S,), with the floor held
    constant. Three ``embedding_bag`` blends of corner values dotted with the gradient rows:
    ``L`` and ``R`` the y-blends of the x0 and x1 corners (bags of two: the x1 corners are the
    x0 ones in the source shifted by ``G`` rows) and ``D`` the x-blended difference of the y1
    and y0 corners; then d/dx = scaled*(R - L), d/dmask = inside*(L + fx*(R - L)) and d/dy =
    scaled*D, times ``s`` for the positions. One blend is alive at a time."""
    S = t.fx.shape[0]
    G = t.steps[1]
    Cg = rows.shape[1]
    gr = rows.view(-1, Cg, 1)

    def dot(idx: Tensor, source: Tensor, w: Tensor) -> Tensor:
        blend = F.embedding_bag(idx, source, per_sample_weights=w, mode="sum")
        return torch.bmm(blend.view(-1, P, Cg), gr).view(-1)

    pair = t.corners((0, 2))
    wy = torch.empty(S, 2, dtype=src.dtype, device=src.device)
    torch.sub(1, t.fy, out=wy[:, 0])
    wy[:, 1] = t.fy
    d_l = dot(pair, src, wy)
    diff = dot(pair, src[G:], wy).sub_(d_l)
    del pair, wy
    wx = torch.empty(S, 4, dtype=src.dtype, device=src.device)
    torch.sub(t.fx, 1, out=wx[:, 0])
    torch.neg(t.fx, out=wx[:, 1])
    torch.neg(wx[:, 0], out=wx[:, 2])
    wx[:, 3] = t.fx
    d_d = dot(t.corners(), src, wx)
    del wx
    g_mask = torch.addcmul(d_l, t.fx, diff).mul_(t.inside)
    scale = t.scaled * s if s != 1 else t.scaled
    return diff.mul_(scale), d_d.mul_(scale), g_mask


def _row_bytes(oW: int, g: Geometry, dtype: torch.dtype) -> int:
    """Plan bytes of one output row (index + weight per corner, and the per-tap temporaries)."""
    return oW * g.group * g.points * (4 * (8 + torch.finfo(dtype).bits // 8) + 64)


def forward(input: Tensor, off: Tensor, msk: Tensor, g: Geometry) -> Tensor:
    """Output (N, oH, oW, G*Cg) in the input's dtype, from the kernels' offset/mask views."""
    N, H, W, C = input.shape
    oH, oW = off.shape[1:3]
    ct = _compute_dtype(input.dtype)
    out = torch.empty(N, oH, oW, C, dtype=ct, device=input.device)
    if out.numel() == 0:
        return out.to(input.dtype)
    src = bilinear.bordered_source(input, ct).view(-1, g.group_channels)
    it = bilinear.index_dtype(src.shape[0])
    for n0, n1, r0, r1 in _chunks(N, oH, _row_bytes(oW, g, ct)):
        t = _taps(off, msk, n0, n1, r0, r1, H, W, g, ct, it)
        weight = torch.empty(t.fx.shape[0], 4, dtype=ct, device=input.device)
        _weights(t.fx, t.fy, t.scaled, out=weight)
        out[n0:n1, r0:r1] = F.embedding_bag(
            t.corners().view(-1, 4 * g.points), src, mode="sum",
            per_sample_weights=weight.view(-1, 4 * g.points)).view(n1 - n0, r1 - r0, oW, C)
    return out.to(input.dtype)


def backward(grad_out: Tensor, input: Tensor, off: Tensor, msk: Tensor, g: Geometry,
             need_input: bool, need_offset_mask: bool
             ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of (input, offsets, mask) in their dtypes and the views' shapes (offsets
    (N, oH, oW, G, P, 2), mask (N, oH, oW, G, P)); None for those not asked for."""
    N, H, W, C = input.shape
    oH, oW = off.shape[1:3]
    Cg = g.group_channels
    ct = _compute_dtype(input.dtype)
    dev = input.device
    g_src = torch.zeros(N * (H + 2) * (W + 2) * g.group, Cg, dtype=ct, device=dev) \
        if need_input else None
    g_off = torch.zeros(off.shape, dtype=ct, device=dev) if need_offset_mask else None
    g_msk = torch.zeros(msk.shape, dtype=ct, device=dev) if need_offset_mask else None
    if grad_out.numel() and (need_input or need_offset_mask):
        src = bilinear.bordered_source(input, ct).view(-1, Cg)
        it = bilinear.index_dtype(src.shape[0])
        for n0, n1, r0, r1 in _chunks(N, oH, _row_bytes(oW, g, ct)):
            t = _taps(off, msk, n0, n1, r0, r1, H, W, g, ct, it)
            rows = grad_out[n0:n1, r0:r1].to(ct).reshape(-1, Cg)
            if need_input:
                _scatter(g_src, rows, t, g.points)
            if need_offset_mask:
                gx, gy, gm = _grads(rows, src, t, g.points, g.offset_scale)
                shape = g_msk[n0:n1, r0:r1].shape
                g_off[n0:n1, r0:r1, ..., 0] = gx.view(shape)
                g_off[n0:n1, r0:r1, ..., 1] = gy.view(shape)
                g_msk[n0:n1, r0:r1] = gm.view(shape)
    g_in = None
    if need_input:
        g_in = bilinear.bordered_interior(g_src.view(-1, C), N, (H, W)).to(input.dtype)
    return (g_in, g_off.to(off.dtype) if g_off is not None else None,
            g_msk.to(msk.dtype) if g_msk is not None else None)


def dcnv3_fwd(input: Tensor, offset: Tensor, mask: Tensor, *params) -> Tensor:
    """``dcnv3`` forward; ``params`` in InternImage's order after the tensors."""
    g = Geometry(*params)
    return forward(input, *offset_mask_views(offset, mask, g), g)


def dcnv3_bwd(grad_out: Tensor, input: Tensor, offset: Tensor, mask: Tensor, *params_and_mask
              ) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of (input, offset, mask); ``params_and_mask`` ends with ``[need input, need
    offset and mask]``. Those not asked for come back empty."""
    *params, (need_in, need_om) = params_and_mask
    g = Geometry(*params)
    g_in, g_off, g_msk = backward(grad_out, input, *offset_mask_views(offset, mask, g), g,
                                  need_in, need_om)
    empty = input.new_empty(0)
    return (g_in.contiguous() if need_in else empty,
            g_off.reshape(offset.shape) if need_om else empty,
            g_msk.reshape(mask.shape) if need_om else empty)
